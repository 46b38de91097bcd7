//! Multi-core, measured once (`--rows cores`; opt-in, only when named): tokio's one shared
//! worker pool against one runtime per core, each with a listener of its own (nginx's
//! `reuseport`), with the proxy and the load on the same two CPUs.
//!
//! - shared: one `ws-proxy` on CPUs 0 and 1 (two workers, one listener);
//! - per core: two `ws-proxy` processes, one on CPU 0 and one on CPU 1 (one worker each), each
//!   with its own listener; each load process talks to one of them, as `SO_REUSEPORT` spreads
//!   connections over its listeners.
//!
//! The load: two processes of this benchmark (`--load`), on both CPUs, each opening and closing
//! sessions 20 at a time; the echo upstream, a process of its own, on both CPUs too. The figures
//! are handshakes per second of the whole machine and the proxies' CPU per handshake; the
//! ratio is what this row reports (absolute rates on a 2-vCPU VM say nothing of larger ones).

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::reconnect::Replica;
use super::{echo_process, handshakes, process_cpu_ns, wait_for_quiet_cpu, Endpoint};

/// Handshakes per load process.
const PER_LOAD: u64 = 6000;

/// `--load ADDR TOTAL CONCURRENCY`: opens and closes `TOTAL` sessions to `ADDR`, prints the
/// seconds it took.
pub(crate) fn load(args: &[String]) {
    let (Some(Ok(addr)), Some(Ok(total)), Some(Ok(concurrency))) = (
        args.first().map(|a| a.parse()),
        args.get(1).map(|a| a.parse::<u64>()),
        args.get(2).map(|a| a.parse::<u64>()),
    ) else {
        eprintln!("bench: --load takes ADDR TOTAL CONCURRENCY");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let took = rt.block_on(async {
        let started = Instant::now();
        handshakes(
            &Endpoint {
                addr,
                tls: None,
                bearer: None,
            },
            total,
            concurrency,
        )
        .await;
        started.elapsed()
    });
    println!("{}", took.as_secs_f64());
}

pub(crate) async fn run() {
    eprintln!("== multi-core: a shared worker pool against a runtime per core");
    let mut measured = Vec::new();
    for per_core in [false, true] {
        wait_for_quiet_cpu(0).await;
        match case(per_core).await {
            Ok(m) => measured.push(m),
            Err(e) => {
                eprintln!("bench: cores row: {e}");
                std::process::exit(1);
            }
        }
    }
    let [(shared_rate, shared_cpu), (core_rate, core_cpu)] = [measured[0], measured[1]];
    println!();
    println!(
        "Multi-core (2 CPUs, proxy and load on both; {} handshakes):",
        2 * PER_LOAD
    );
    println!("| | shared pool (one process, 2 workers) | a runtime per core (2 processes, 1 worker each) | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| handshakes per second | {shared_rate:.0} | {core_rate:.0} | {:.2}x |",
        core_rate / shared_rate
    );
    println!(
        "| proxy CPU per handshake | {shared_cpu:.1} us | {core_cpu:.1} us | {:.2}x |",
        core_cpu / shared_cpu
    );
}

/// Handshakes per second and the proxies' CPU per handshake (µs) for one layout.
async fn case(per_core: bool) -> Result<(f64, f64), String> {
    let (mut echo, upstream) = echo_process(Some(4096))?;
    let result = async {
        // The echo upstream pinned itself to CPU 1: let it run on both.
        let _ = Command::new("taskset")
            .args(["-a", "-p", "-c", "0,1", &echo.id().to_string()])
            .stdout(Stdio::null())
            .status();
        let proxies = if per_core {
            vec![
                Replica::start_on("ws-proxy 0", "0", upstream, &[])?,
                Replica::start_on("ws-proxy 1", "1", upstream, &[])?,
            ]
        } else {
            vec![Replica::start_on("ws-proxy", "0,1", upstream, &[])?]
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let cpu = |ps: &[Replica]| -> u64 { ps.iter().map(|p| process_cpu_ns(p.child.id())).sum() };
        let before = cpu(&proxies);
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let loads: Vec<_> = (0..2)
            .map(|i| {
                let addr = proxies[i % proxies.len()].endpoint().addr;
                Command::new("taskset")
                    .args(["-c", "0,1"])
                    .arg(&exe)
                    .args(["--load", &addr.to_string(), &PER_LOAD.to_string(), "20"])
                    .stdout(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("load: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let mut slowest: f64 = 0.0;
        for load in loads {
            let out = load.wait_with_output().map_err(|e| e.to_string())?;
            let took: f64 = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .map_err(|_| "a load process failed".to_owned())?;
            slowest = slowest.max(took);
        }
        let used = cpu(&proxies) - before;
        let n = 2 * PER_LOAD;
        let rate = n as f64 / slowest;
        let per = used as f64 / n as f64 / 1e3;
        eprintln!(
            "   {}: {n} handshakes in {slowest:.2} s ({rate:.0}/s), proxy CPU {per:.1} us each",
            if per_core {
                "a runtime per core"
            } else {
                "shared pool"
            }
        );
        Ok((rate, per))
    }
    .await;
    let _ = echo.kill();
    let _ = echo.wait();
    result
}
