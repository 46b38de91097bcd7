//! Memory given back (`--rows memory`; opt-in, only when named): what `ws-proxy` still holds
//! 10 s after a spike, against what it held before it, for each mode.
//!
//! Two spikes, one after the other, on one fresh `ws-proxy` (pinned to CPU 0,
//! `--header-timeout 1s`) in front of an echo upstream (a process of its own):
//! 1. a flood of 15 000 connections that never send a byte, opened 500 at a time and held
//!    until the proxy closes each at its header deadline;
//! 2. 9 000 idle sessions, opened 200 at a time, held, then all dropped at once (the clients
//!    vanish, as a load balancer's restart would make them).
//!
//! (The counts fit a descriptor limit of 20 000, this machine's hard limit: the proxy holds two
//! per session.) After each, 10 s without traffic, then the proxy's RSS. The proxy's own binary decides the
//! allocator: run the bench from a directory holding each build to compare them. One
//! measurement per mode (`--rounds` and `--quick` do not apply).

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use super::reconnect::Replica;
use super::{connect, echo_process, idle, wait_for_quiet_cpu};

/// Silent connections in the flood.
const FLOOD: usize = 15_000;
/// Idle sessions in the second spike.
const SESSIONS: usize = 9_000;
/// Quiet time after each spike before the proxy's RSS is read.
const SETTLE: Duration = Duration::from_secs(10);

/// What one mode held: before, at each spike's peak and 10 s after it (KiB).
struct Held {
    baseline: u64,
    flood_peak: u64,
    after_flood: u64,
    sessions_peak: u64,
    after_sessions: u64,
}

/// Measures both modes and prints the table; a mode that fails ends the run (exit 1).
pub(crate) async fn run() {
    let mut measured = Vec::new();
    for mode in ["frames", "tunnel"] {
        eprintln!("== memory given back: {mode}");
        wait_for_quiet_cpu(0).await;
        match spikes(mode).await {
            Ok(held) => measured.push((mode, held)),
            Err(e) => {
                eprintln!("bench: memory row, {mode}: {e}");
                std::process::exit(1);
            }
        }
    }
    let mb = |kib: u64| kib as f64 / 1024.0;
    println!();
    println!("memory given back (ws-proxy RSS, MB; 10 s after each spike)");
    println!(
        "| mode | baseline | 15 000 silent connections: peak | 10 s after | 9 000 idle sessions: peak | 10 s after | after / baseline |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (mode, h) in measured {
        println!(
            "| {mode} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2}x, {:.2}x |",
            mb(h.baseline),
            mb(h.flood_peak),
            mb(h.after_flood),
            mb(h.sessions_peak),
            mb(h.after_sessions),
            h.after_flood as f64 / h.baseline as f64,
            h.after_sessions as f64 / h.baseline as f64,
        );
    }
}

async fn spikes(mode: &str) -> Result<Held, String> {
    let (mut echo, upstream) = echo_process(Some(4096))?;
    let result = async {
        let proxy = Replica::start(
            "ws-proxy",
            upstream,
            &["--mode", mode, "--header-timeout", "1s"],
        )?;
        let pid = proxy.child.id();
        let ep = proxy.endpoint();
        tokio::time::sleep(Duration::from_millis(500)).await;
        let baseline = rss_kib(pid)?;
        let mut held = Vec::with_capacity(FLOOD);
        while held.len() < FLOOD {
            let batch: Vec<_> = (0..500.min(FLOOD - held.len()))
                .map(|_| tokio::spawn(TcpStream::connect(ep.addr)))
                .collect();
            for c in batch {
                held.push(
                    c.await
                        .map_err(|e| e.to_string())?
                        .map_err(|e| format!("flood: {e}"))?,
                );
            }
        }
        // A session proves the accept queue has been drained: every connection is in the
        // proxy.
        let (mut ws, ()) = connect(&ep)
            .await
            .map_err(|e| format!("after the flood: {e}"))?;
        let _ = ws.close(None).await;
        let flood_peak = rss_kib(pid)?;
        // Every one closed by the proxy at its deadline.
        let closing: Vec<_> = held
            .into_iter()
            .map(|mut tcp| {
                tokio::spawn(async move {
                    let mut rest = Vec::new();
                    let _ =
                        tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut rest))
                            .await;
                })
            })
            .collect();
        for c in closing {
            let _ = c.await;
        }
        tokio::time::sleep(SETTLE).await;
        let after_flood = rss_kib(pid)?;
        eprintln!(
            "   flood: {} -> {} -> {} KiB",
            baseline, flood_peak, after_flood
        );
        let sessions = idle(&ep, SESSIONS).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let sessions_peak = rss_kib(pid)?;
        drop(sessions);
        tokio::time::sleep(SETTLE).await;
        let after_sessions = rss_kib(pid)?;
        eprintln!("   sessions: {sessions_peak} -> {after_sessions} KiB");
        Ok(Held {
            baseline,
            flood_peak,
            after_flood,
            sessions_peak,
            after_sessions,
        })
    }
    .await;
    let _ = echo.kill();
    let _ = echo.wait();
    result
}

fn rss_kib(pid: u32) -> Result<u64, String> {
    let status =
        std::fs::read_to_string(format!("/proc/{pid}/status")).map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS for {pid}"))
}
