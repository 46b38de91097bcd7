//! The reconnect peak (`--rows reconnect`): what a second replica sees when the first one
//! drains on SIGTERM, unpaced (`--drain-window 0`, every session closed at once, as nginx and
//! HAProxy close theirs) against paced (`--drain-window 10s`), in the same run.
//!
//! For each case: two fresh `ws-proxy` replicas, A and B (both pinned to CPU 0, both with
//! `--shutdown-grace 15s`), in front of one echo upstream (a process of its own on CPU 1).
//! 1000 idle sessions are opened to A, 100 at a time. Each client waits on its session; when
//! a Close frame arrives (or the stream ends) it connects to B at once, with no backoff (the
//! worst case: a load balancer that sends every reconnect to the replica that stays), and
//! notes when B's 101 arrived. Then SIGTERM to A, and the row waits (30 s at most, or the run
//! fails) until all 1000 are on B. From the 1000 instants: the most new sessions B got in any
//! 100 ms (a sliding window), that as a rate, and the time from the first to the last.
//!
//! The echo upstream listens with a backlog of 4096: with tokio's 128, B's burst of upstream
//! dials in the unpaced case overflows it, and about a quarter of the sessions wait a second
//! for a retransmitted SYN (which says more about the upstream than about B).
//!
//! One measurement per case (`--rounds` and `--quick` do not apply), and `--only` does not
//! filter it: it always measures `ws-proxy`.

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use super::{connect, echo_process, pinned_to, wait_for_quiet_cpu, ws_proxy_bin, Endpoint, Ws};

/// Sessions drained from A.
const SESSIONS: usize = 1000;
/// Sessions opened to A at once.
const BATCH: usize = 100;
/// Both replicas' `--shutdown-grace`.
const GRACE: &str = "15s";
/// The cases: a label and A's `--drain-window`.
const CASES: [(&str, &str); 2] = [
    ("unpaced (--drain-window 0)", "0"),
    ("paced (--drain-window 10s)", "10s"),
];
/// From SIGTERM until every client must be on B.
const TIMEOUT: Duration = Duration::from_secs(30);
/// The window of the peak.
const WINDOW: Duration = Duration::from_millis(100);
/// Failed connects to B a client tries again at once before it gives up.
const RETRIES: u32 = 20;
/// The echo upstream's listen backlog (the kernel caps it at `net.core.somaxconn`).
const ECHO_BACKLOG: u32 = 4096;

/// Measures both cases and prints the table; a case that fails ends the run (exit 1).
pub(crate) async fn run() {
    let mut measured = Vec::new();
    for (label, window) in CASES {
        eprintln!("== reconnect: {label}");
        wait_for_quiet_cpu(0).await;
        match case(window).await {
            Ok(m) => {
                eprintln!(
                    "   A closed the sessions from {:.3} to {:.3} s after SIGTERM (peak {} per 100 ms); \
                     B got them from {:.3} to {:.3} s; close to 101 p50 {:.1} ms, p99 {:.1} ms; \
                     {} retried connects; {} closes without 1012; {} SYNs retransmitted \
                     (whole machine)",
                    m.closes.0.as_secs_f64(),
                    m.closes.1.as_secs_f64(),
                    m.close_peak,
                    m.first.as_secs_f64(),
                    m.last.as_secs_f64(),
                    m.p50_ms,
                    m.p99_ms,
                    m.retries,
                    m.not_1012,
                    m.syn_retransmits
                        .map_or_else(|| "?".to_owned(), |n| n.to_string()),
                );
                measured.push((label, m));
            }
            Err(e) => {
                eprintln!("bench: reconnect row, {label}: {e}");
                std::process::exit(1);
            }
        }
    }
    print_table(&measured);
}

/// One case's figures; times are from the SIGTERM to A.
struct Measured {
    /// The most sessions B established in any 100 ms.
    peak: usize,
    /// B's first and last new session.
    first: Duration,
    last: Duration,
    /// From the Close frame (or the end of the stream) from A to the 101 from B, p50 and p99.
    p50_ms: f64,
    p99_ms: f64,
    /// The first and last Close frame from A, and the most in any 100 ms: what B is offered.
    closes: (Duration, Duration),
    close_peak: usize,
    /// Connects to B that failed and were tried again.
    retries: u32,
    /// Sessions A ended without a Close frame carrying 1012.
    not_1012: usize,
    /// SYNs the kernel sent again from the SIGTERM until every client was on B (the whole
    /// machine's count: anything else running adds to it): a listen queue overflowed.
    syn_retransmits: Option<u64>,
}

/// What a client saw: A's close, B's 101, A's close code, its failed connects to B, and the
/// session to B (held until both replicas are gone).
struct Reconnect {
    closed: Instant,
    established: Instant,
    code: Option<u16>,
    retries: u32,
    _session: Ws,
}

async fn case(drain_window: &str) -> Result<Measured, String> {
    let (mut echo, upstream) = echo_process(Some(ECHO_BACKLOG))?;
    let result = async {
        let drain = ["--shutdown-grace", GRACE, "--drain-window", drain_window];
        let a = Replica::start("A", upstream, &drain)?;
        let b = Replica::start("B", upstream, &drain)?;
        let (to_a, to_b) = (a.endpoint(), b.endpoint());
        let mut sessions = Vec::with_capacity(SESSIONS);
        while sessions.len() < SESSIONS {
            let batch: Vec<_> = (0..BATCH.min(SESSIONS - sessions.len()))
                .map(|_| {
                    let to_a = to_a.clone();
                    tokio::spawn(async move { connect(&to_a).await })
                })
                .collect();
            for task in batch {
                let (ws, ()) = task
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| format!("session {} to A: {e}", sessions.len() + 1))?;
                sessions.push(ws);
            }
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let done = Arc::new(AtomicUsize::new(0));
        let clients: Vec<_> = sessions
            .into_iter()
            .map(|ws| tokio::spawn(client(ws, to_b.clone(), done.clone())))
            .collect();
        // Every client waiting on its session before A is told to go.
        tokio::task::yield_now().await;
        let syns = syn_retransmits();
        let term = Instant::now();
        a.terminate()?;
        let all = tokio::time::timeout(TIMEOUT, futures_util::future::join_all(clients))
            .await
            .map_err(|_| {
                format!(
                    "only {} of {SESSIONS} clients were on B {TIMEOUT:?} after the SIGTERM to A",
                    done.load(Ordering::Relaxed)
                )
            })?;
        let mut got = Vec::with_capacity(SESSIONS);
        for r in all {
            got.push(r.map_err(|e| e.to_string())??);
        }
        let syns = syn_retransmits()
            .zip(syns)
            .map(|(after, before)| after - before);
        drop(a);
        drop(b);
        Ok(Measured {
            syn_retransmits: syns,
            ..measure(term, &got)
        })
    }
    .await;
    let _ = echo.kill();
    let _ = echo.wait();
    result
}

/// A client of A: waits for A to end its session, then connects to B at once.
async fn client(mut a: Ws, b: Endpoint, done: Arc<AtomicUsize>) -> Result<Reconnect, String> {
    let code = loop {
        match a.next().await {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => break None,
        }
    };
    let closed = Instant::now();
    // The close handshake with A ends on the side (the reply goes out on the next read); the
    // reconnect does not wait for it.
    tokio::spawn(async move { while let Some(Ok(_)) = a.next().await {} });
    let mut retries = 0;
    let session = loop {
        match connect(&b).await {
            Ok((ws, ())) => break ws,
            Err(_) if retries < RETRIES => retries += 1,
            Err(e) => return Err(format!("no session to B after {retries} retries: {e}")),
        }
    };
    let established = Instant::now();
    done.fetch_add(1, Ordering::Relaxed);
    Ok(Reconnect {
        closed,
        established,
        code,
        retries,
        _session: session,
    })
}

fn measure(term: Instant, got: &[Reconnect]) -> Measured {
    let since = |at: &[Instant]| -> Vec<Duration> {
        let mut d: Vec<Duration> = at.iter().map(|t| t.duration_since(term)).collect();
        d.sort();
        d
    };
    let established = since(&got.iter().map(|r| r.established).collect::<Vec<_>>());
    let closed = since(&got.iter().map(|r| r.closed).collect::<Vec<_>>());
    let mut latency: Vec<f64> = got
        .iter()
        .map(|r| r.established.duration_since(r.closed).as_secs_f64() * 1e3)
        .collect();
    latency.sort_by(f64::total_cmp);
    let pct = |p: f64| latency[((latency.len() as f64 * p) as usize).min(latency.len() - 1)];
    Measured {
        peak: peak(&established),
        first: established[0],
        last: established[established.len() - 1],
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        closes: (closed[0], closed[closed.len() - 1]),
        close_peak: peak(&closed),
        retries: got.iter().map(|r| r.retries).sum(),
        not_1012: got.iter().filter(|r| r.code != Some(1012)).count(),
        syn_retransmits: None,
    }
}

/// `TcpExt: TCPSynRetrans` from `/proc/net/netstat`: SYNs retransmitted, machine-wide.
fn syn_retransmits() -> Option<u64> {
    let netstat = std::fs::read_to_string("/proc/net/netstat").ok()?;
    let mut tcp_ext = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (tcp_ext.next()?, tcp_ext.next()?);
    let at = names
        .split_whitespace()
        .position(|n| n == "TCPSynRetrans")?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// The most of the sorted instants `at` in any window of [`WINDOW`] (a window that holds the
/// most starts at one of them).
fn peak(at: &[Duration]) -> usize {
    at.iter()
        .enumerate()
        .map(|(i, start)| at[i..].partition_point(|t| *t < *start + WINDOW))
        .max()
        .unwrap_or(0)
}

fn print_table(rows: &[(&str, Measured)]) {
    println!(
        "\nReconnect peak at a second replica ({SESSIONS} sessions drained from the first; \
         clients reconnect at once, no backoff):\n"
    );
    println!(
        "| drain | peak new sessions / 100 ms | peak rate /s | spread (first..last) | close to 101 p99 |"
    );
    println!("|---|---|---|---|---|");
    for (label, m) in rows {
        println!(
            "| {label} | {} | {} | {:.2} s | {:.1} ms |",
            m.peak,
            m.peak * 10,
            (m.last - m.first).as_secs_f64(),
            m.p99_ms
        );
    }
    let retries: u32 = rows.iter().map(|(_, m)| m.retries).sum();
    let not_1012: usize = rows.iter().map(|(_, m)| m.not_1012).sum();
    println!(
        "\nPeak: the most new sessions on B in any 100 ms (sliding); close to 101: from A's \
         Close frame to B's 101, per client. {retries} connects to B failed and were retried; \
         {not_1012} sessions ended without 1012."
    );
}

/// A `ws-proxy` replica on 127.0.0.1:0 (killed on drop), and the address it logged.
/// A `ws-proxy` of the bench's own build, pinned to CPU 0.
pub(crate) struct Replica {
    pub(crate) child: Child,
    addr: SocketAddr,
}

impl Replica {
    /// Started with `extra` flags; ready once it logged its address.
    pub(crate) fn start(
        name: &'static str,
        upstream: SocketAddr,
        extra: &[&str],
    ) -> Result<Self, String> {
        Self::start_on(name, "0", upstream, extra)
    }

    /// The same, on the CPUs `cpus` names (`taskset -c`).
    pub(crate) fn start_on(
        name: &'static str,
        cpus: &str,
        upstream: SocketAddr,
        extra: &[&str],
    ) -> Result<Self, String> {
        let mut cmd = pinned_to(cpus);
        cmd.arg(ws_proxy_bin()?)
            .args(["--listen", "127.0.0.1:0"])
            .args(["--upstream", &format!("ws://{upstream}")])
            .args(extra)
            // The binary's own lines (listening, draining), not a line per session.
            .env("RUST_LOG", "warn,ws_proxy=info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| format!("{name}: spawn: {e}"))?;
        let Some(stderr) = child.stderr.take() else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("{name}: no stderr"));
        };
        // The listening line, then the rest of the log read on (the drain's lines shown).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let listen = line
                    .split("listen=")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|a| a.parse::<SocketAddr>().ok());
                if let Some(addr) = listen {
                    let _ = tx.send(addr);
                } else if ["shutting down", "shutdown complete", "WARN", "ERROR"]
                    .iter()
                    .any(|s| line.contains(s))
                {
                    eprintln!("   {name}: {line}");
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(addr) => Ok(Self { child, addr }),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{name}: no listen= line within 60 s"))
            }
        }
    }

    pub(crate) fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.addr,
            tls: None,
            bearer: None,
        }
    }

    /// SIGTERM: the drain starts. A system call rather than `kill -TERM`: waiting for a
    /// process would hold up this runtime's only thread, and the first Close frames with it.
    fn terminate(&self) -> Result<(), String> {
        let pid = libc::pid_t::try_from(self.child.id()).map_err(|e| e.to_string())?;
        #[allow(unsafe_code)]
        // SAFETY: kill(2) takes no pointers; `pid` is our child, not yet waited for.
        let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
        if sent == 0 {
            Ok(())
        } else {
            Err(format!(
                "SIGTERM to {pid}: {}",
                std::io::Error::last_os_error()
            ))
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
