//! Side-by-side benchmark: this crate's `ws-proxy` (frame and tunnel mode) against a direct
//! connection and, when installed, nginx, HAProxy and Caddy — all in one run.
//!
//! ```text
//! cargo build --release -p ws-proxy
//! cargo run --release -p ws-proxy-bench            # full run (about fifteen minutes)
//! cargo run --release -p ws-proxy-bench -- --quick # smaller counts, for iterating (its RSS per
//!                                                  # idle session reads high: 2000 sessions
//!                                                  # amortise handshake-time memory less)
//! cargo run --release -p ws-proxy-bench -- --only ws-proxy,nginx
//! cargo run --release -p ws-proxy-bench -- --rows handshake,idle   # msg, mb, handshake, idle, rtt, storm, deflate
//! cargo run --release -p ws-proxy-bench -- --rows reconnect  # opt-in: not in the default rows
//! cargo run --release -p ws-proxy-bench -- --rows memory  # opt-in: memory given back after spikes
//! cargo run --release -p ws-proxy-bench -- --rows cores  # opt-in: shared pool vs a runtime per core
//! cargo run --release -p ws-proxy-bench -- --rows handshake,jwt  # opt-in: JWT (HS256, RS256, ES256) per handshake
//! cargo run --release -p ws-proxy-bench -- --rounds 5 # medians of 5 rounds (default 3; quick: 1)
//! cargo run --release -p ws-proxy-bench -- --rows storm --storm 2000  # storm size (default 10 000)
//! cargo run --release -p ws-proxy-bench -- --rows handshake --handshakes 1200  # (default 3000)
//! BENCH_HOLD_IDLE_MS=5000 cargo run --release -p ws-proxy-bench -- --rows idle  # time to profile
//! BENCH_WRAP="valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.%p" \
//!   cargo run --release -p ws-proxy-bench -- --quick --only ws-proxy --rows handshake
//!   (`--only ws-proxy=`: that target alone, not every name starting so)
//! ```
//!
//! Method: each proxy runs pinned to CPU 0 (`taskset`), the echo upstream and this load
//! generator on CPU 1. Proxy CPU is read from `/proc/<pid>/task/*/schedstat` before and after
//! each workload; RSS from `/proc/<pid>/status`. Every echoed message is checked for order and
//! content (a lost or reordered message aborts the run). The load generator reads and writes
//! each session concurrently. Every target is measured in each of 3 rounds (a fresh process
//! each time; all targets in round 1, then all in round 2, ...) and each row is the median of
//! its rounds. Rows:
//!
//! - CPU per 64 B echoed message: 50 sessions, 8 messages in flight each;
//! - CPU per MB: 256 KiB messages, 4 sessions, 2 in flight each;
//! - CPU per handshake: connect, upgrade, close, 20 at a time;
//! - RSS per idle session: 8000 sessions held, against none;
//! - round trip p50: one session, one 64 B message at a time (direct: no proxy);
//! - permessage-deflate (`--rows deflate`, in `deflate.rs`): bytes on the client's wire, CPU
//!   and RSS per idle session with clients that compress as browsers do;
//! - reconnect peak (`--rows reconnect`, in `reconnect.rs`; opt-in, only when named): one
//!   `ws-proxy` replica drains 1000 sessions on SIGTERM and every client reconnects at once to
//!   a second replica; the most new sessions the second gets in any 100 ms, and over how long
//!   they arrive, unpaced (`--drain-window 0`) against paced (`--drain-window 10s`). One
//!   measurement per case; `--only` and `--rounds` do not apply to it.
//! - memory given back (`--rows memory`, in `memory.rs`; opt-in): `ws-proxy`'s RSS before, at
//!   the peak of and 10 s after 15 000 silent connections and 9 000 idle sessions, per mode;
//!   run the bench from a directory holding another build to compare allocators.
//!
//! `BENCH_OFFER_DEFLATE=1` makes the handshake row's client offer permessage-deflate as
//! browsers do (`permessage-deflate; client_max_window_bits`), for the handshake's cost with
//! that offer (the echo upstream declines it).
//!
//! TLS rows (`ws-proxy tls` against `nginx tls`, when nginx is installed): the same CPU per
//! handshake, per MB and RSS per idle session with the client on TLS 1.3
//! (`TLS_AES_128_GCM_SHA256` only, ALPN `http/1.1`, no resumption) and one ECDSA P-256
//! certificate made at start for both servers.
//!
//! nginx runs the usual recipe (`proxy_http_version 1.1`, `Upgrade`/`Connection` mapped, one
//! worker, access log off), HAProxy with `timeout tunnel` and one thread, Caddy with
//! `reverse_proxy`, and `ws-proxy` with `RUST_LOG=warn` (no per-session log line, as the others
//! have their access logs off).
//!
//! `tokio l4` is not a proxy to compare with but the floor under `ws-proxy`: the bench itself
//! as a bare tokio TCP forwarder (accept, dial, `copy_bidirectional`; no HTTP, no frames) on
//! the same runtime. Its rows say what tokio costs before the proxy does any work of its own.

mod cores;
mod deflate;
mod jwt;
mod memory;
mod reconnect;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

type Ws = tokio_tungstenite::WebSocketStream<Stream>;

/// Where the load generator connects: the address, and TLS for the TLS targets.
#[derive(Clone)]
struct Endpoint {
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    /// Sent as `Authorization: Bearer` on every upgrade (the JWT targets).
    bearer: Option<Arc<str>>,
}

/// A client connection, plain or TLS.
enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[derive(Clone, Copy)]
struct Counts {
    /// Each target is measured this many times; rows are medians.
    rounds: usize,
    small: u64,
    bulk_mb: u64,
    handshakes: u64,
    idle: usize,
    rtt: usize,
    storm: usize,
    /// Compression rows: chat messages, 256 KiB JSON messages, idle sessions.
    deflate_chat: u64,
    deflate_json: u64,
    deflate_idle: u64,
}

const FULL: Counts = Counts {
    rounds: 3,
    small: 200_000,
    bulk_mb: 256,
    handshakes: 3000,
    idle: 8000,
    rtt: 3000,
    storm: 10_000,
    deflate_chat: 20_000,
    deflate_json: 200,
    deflate_idle: 1000,
};
const QUICK: Counts = Counts {
    rounds: 1,
    small: 40_000,
    bulk_mb: 64,
    handshakes: 600,
    idle: 2000,
    rtt: 1000,
    storm: 3000,
    deflate_chat: 5000,
    deflate_json: 40,
    deflate_idle: 500,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Direct,
    Frames,
    Tunnel,
    Nginx,
    Haproxy,
    Caddy,
    /// `ws-proxy --tls-cert/--tls-key`, frame mode.
    FramesTls,
    /// nginx with `listen ... ssl http2`, the same certificate.
    NginxTls,
    /// Not a proxy to compare with but the floor under one: a tokio TCP forwarder with no HTTP
    /// (accept, dial, `copy_bidirectional`), on the same runtime as `ws-proxy`. What tokio
    /// itself costs per connection and per byte before any HTTP work.
    TokioL4,
    /// `ws-proxy` (frames) verifying a JWT on every upgrade (`--rows jwt`).
    Jwt(jwt::Alg),
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Frames => "ws-proxy",
            Kind::Tunnel => "ws-proxy tunnel",
            Kind::Nginx => "nginx",
            Kind::Haproxy => "haproxy",
            Kind::Caddy => "caddy",
            Kind::FramesTls => "ws-proxy tls",
            Kind::NginxTls => "nginx tls",
            Kind::TokioL4 => "tokio l4",
            Kind::Jwt(alg) => alg.name(),
        }
    }

    fn is_jwt(self) -> bool {
        matches!(self, Kind::Jwt(_))
    }

    fn is_tls(self) -> bool {
        matches!(self, Kind::FramesTls | Kind::NginxTls)
    }

    /// The targets of the reconnect storm.
    fn in_storm(self) -> bool {
        matches!(
            self,
            Kind::Frames | Kind::Tunnel | Kind::Nginx | Kind::Haproxy | Kind::TokioL4
        )
    }

    /// Anchors of the plaintext rows (the TLS rows compare with nginx tls).
    fn is_anchor(self) -> bool {
        matches!(self, Kind::Nginx | Kind::Haproxy | Kind::Caddy)
    }
}

/// Results for one target; `None` where a row does not apply.
#[derive(Default, Debug)]
struct Row {
    us_per_msg: Option<f64>,
    ms_per_mb: Option<f64>,
    us_per_handshake: Option<f64>,
    kb_per_idle: Option<f64>,
    rtt_p50_us: Option<f64>,
    /// Reconnect storm: seconds until every client was served, handshake latency p50 and p99
    /// (ms), the proxy's CPU for the whole storm (ms), clients that failed.
    storm_s: Option<f64>,
    storm_p50_ms: Option<f64>,
    storm_p99_ms: Option<f64>,
    storm_cpu_ms: Option<f64>,
    storm_failed: Option<f64>,
}

impl Row {
    /// Each field's median over `rounds` (the mean of the middle two for an even count).
    fn median(rounds: &[Row]) -> Row {
        let of = |field: fn(&Row) -> Option<f64>| {
            let mut v: Vec<f64> = rounds.iter().filter_map(field).collect();
            if v.is_empty() {
                return None;
            }
            v.sort_by(f64::total_cmp);
            let mid = v.len() / 2;
            Some(if v.len() % 2 == 1 {
                v[mid]
            } else {
                (v[mid - 1] + v[mid]) / 2.0
            })
        };
        Row {
            us_per_msg: of(|r| r.us_per_msg),
            ms_per_mb: of(|r| r.ms_per_mb),
            us_per_handshake: of(|r| r.us_per_handshake),
            kb_per_idle: of(|r| r.kb_per_idle),
            rtt_p50_us: of(|r| r.rtt_p50_us),
            storm_s: of(|r| r.storm_s),
            storm_p50_ms: of(|r| r.storm_p50_ms),
            storm_p99_ms: of(|r| r.storm_p99_ms),
            storm_cpu_ms: of(|r| r.storm_cpu_ms),
            storm_failed: of(|r| r.storm_failed),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--load") {
        cores::load(&args[1..]);
        return;
    }
    if args.first().map(String::as_str) == Some("--echo-server") {
        // The storm's upstream, in a process of its own: one process cannot hold 10 000
        // client sockets and their 10 000 upstream sockets under a 20 000-descriptor limit.
        // `--echo-server BACKLOG`: with that listen backlog (default: tokio's, 128).
        let backlog = args.get(1).and_then(|a| a.parse::<u32>().ok());
        raise_fd_limit();
        pin_self_to(1);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let addr = match backlog {
                Some(backlog) => start_echo_with_backlog(backlog).await,
                None => start_echo().await,
            };
            println!("{addr}");
            std::future::pending::<()>().await
        });
        return;
    }
    if args.first().map(String::as_str) == Some("--l4-forward") {
        l4_forward(&args[1..]);
        return;
    }
    if args.first().map(String::as_str) == Some("--serve-hooked") {
        deflate::serve_hooked(&args[1..]);
        return;
    }
    let counts = if args.iter().any(|a| a == "--quick") {
        QUICK
    } else {
        FULL
    };
    let value = |flag: &str| -> Option<&String> {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
    };
    let list = |flag: &str| -> Option<Vec<String>> {
        value(flag).map(|s| s.split(',').map(str::to_owned).collect())
    };
    let only = list("--only");
    let rounds = match value("--rounds").map(|v| v.parse::<usize>()) {
        None => counts.rounds,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("bench: --rounds takes a whole number of rounds, at least 1");
            std::process::exit(2);
        }
    };
    let mut counts = counts;
    if let Some(n) = value("--storm").and_then(|v| v.parse().ok()) {
        counts.storm = n;
    }
    // Two runs under callgrind with different counts give the instructions of one handshake,
    // start-up and warm-up excluded.
    if let Some(n) = value("--handshakes").and_then(|v| v.parse().ok()) {
        counts.handshakes = n;
    }
    let rows = list("--rows").unwrap_or_else(|| {
        ["msg", "mb", "handshake", "idle", "rtt", "storm", "deflate"]
            .map(String::from)
            .to_vec()
    });
    raise_fd_limit();
    pin_self_to(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(run(counts, rounds, only, rows));
}

async fn run(counts: Counts, rounds: usize, only: Option<Vec<String>>, rows_wanted: Vec<String>) {
    // Right after `cargo build` the machine is still busy with it (writeback, the kernel's
    // memory scanning), on the proxy's CPU too: the first targets measured read up to 25% high
    // (seen three times). Flush, then wait for CPU 0 to go quiet.
    let _ = Command::new("sync").status();
    wait_for_quiet_cpu(0).await;
    let compression = rows_wanted.iter().any(|r| r == "deflate");
    let reconnect = rows_wanted.iter().any(|r| r == "reconnect");
    let memory = rows_wanted.iter().any(|r| r == "memory");
    if rows_wanted.iter().any(|r| r == "cores") {
        cores::run().await;
    }
    if rows_wanted
        .iter()
        .all(|r| r == "deflate" || r == "reconnect" || r == "memory" || r == "cores")
    {
        if compression {
            deflate::run(&counts, rounds, &only).await;
        }
        if reconnect {
            reconnect::run().await;
        }
        if memory {
            memory::run().await;
        }
        return;
    }
    let upstream = start_echo().await;
    let cert = match BenchCert::new() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench: cannot make the TLS certificate: {e}");
            std::process::exit(1);
        }
    };
    let mut kinds = vec![
        Kind::Direct,
        Kind::Frames,
        Kind::Tunnel,
        Kind::FramesTls,
        Kind::TokioL4,
    ];
    for (kind, bin) in [
        (Kind::Nginx, "nginx"),
        (Kind::Haproxy, "haproxy"),
        (Kind::Caddy, "caddy"),
    ] {
        if which(bin).is_some() {
            kinds.push(kind);
            if kind == Kind::Nginx {
                kinds.push(Kind::NginxTls);
            }
        } else {
            eprintln!("{bin} not installed: skipped (Debian: apt-get install {bin})");
        }
    }
    if rows_wanted.iter().any(|r| r == "jwt") {
        kinds.extend(jwt::Alg::ALL.map(Kind::Jwt));
    }
    if let Some(only) = &only {
        // `name=`: that target alone; otherwise every target whose name starts so.
        kinds.retain(|k| {
            *k == Kind::Direct
                || only.iter().any(|o| match o.strip_suffix('=') {
                    Some(exact) => k.name() == exact,
                    None => k.name().starts_with(o.as_str()),
                })
        });
    }
    // Every target once per round, rounds one after another, so that drift over the run
    // reaches all targets alike; each row is the median of its rounds.
    let mut rounds_of: BTreeMap<&'static str, Vec<Row>> = BTreeMap::new();
    let mut order = Vec::new();
    for round in 1..=rounds {
        for &kind in &kinds {
            eprintln!("== {} (round {round} of {rounds})", kind.name());
            let target = match Target::start(kind, upstream, &cert) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{}: could not start ({e}); skipped", kind.name());
                    continue;
                }
            };
            if let Err(e) = wait_ready(&target.endpoint()).await {
                eprintln!("{}: not ready ({e}); skipped", kind.name());
                continue;
            }
            let mut row = measure(&target, &counts, &rows_wanted).await;
            drop(target);
            if rows_wanted.iter().any(|r| r == "storm") && kind.in_storm() {
                match storm(kind, &cert, counts.storm).await {
                    Ok(storm) => row = storm.merged_into(row),
                    Err(e) => eprintln!("{}: storm not measured: {e}", kind.name()),
                }
            }
            eprintln!("   {row:?}");
            rounds_of.entry(kind.name()).or_default().push(row);
            if !order.contains(&kind) {
                order.push(kind);
            }
        }
    }
    let rows: BTreeMap<&'static str, Row> = rounds_of
        .iter()
        .map(|(name, rows)| (*name, Row::median(rows)))
        .collect();
    if rounds > 1 {
        println!("Medians of {rounds} rounds.\n");
    }
    let (jwt, order): (Vec<Kind>, Vec<Kind>) = order.iter().partition(|k| k.is_jwt());
    let (tls, plain): (Vec<Kind>, Vec<Kind>) = order.iter().partition(|k| k.is_tls());
    print_table(&plain, &rows);
    let storm: Vec<Kind> = plain.iter().copied().filter(|k| k.in_storm()).collect();
    if storm
        .iter()
        .any(|k| rows.get(k.name()).is_some_and(|r| r.storm_s.is_some()))
    {
        print_storm_table(&storm, &rows, counts.storm);
    }
    if !tls.is_empty() {
        print_tls_table(&tls, &rows);
    }
    if !jwt.is_empty() {
        print_jwt_table(&jwt, &rows);
    }
    print_targets(&rows);
    if compression {
        deflate::run(&counts, rounds, &only).await;
    }
    if reconnect {
        reconnect::run().await;
    }
    if memory {
        memory::run().await;
    }
}

async fn measure(t: &Target, c: &Counts, rows: &[String]) -> Row {
    // TLS targets: the rows TLS changes (handshake, bulk crypto, memory per session).
    let tls_row = |r: &str| !t.kind.is_tls() || matches!(r, "mb" | "handshake" | "idle");
    // JWT targets: the handshake alone (what the token's check adds to).
    let want = |r: &str| match t.kind.is_jwt() {
        true => r == "handshake",
        false => rows.iter().any(|x| x == r) && tls_row(r),
    };
    let mut row = Row::default();
    // Warm up: a few sessions, so lazy allocations are not charged to the first workload.
    let ep = &t.endpoint();
    small_messages(ep, 10, 4, 2000).await;

    if want("msg") {
        let before = t.cpu_ns();
        let ticks = t.user_kernel_ticks();
        let n = small_messages(ep, 50, 8, c.small).await;
        row.us_per_msg = t.cpu_since(before).map(|ns| ns as f64 / n as f64 / 1e3);
        t.say_kernel_share("messages", ticks);
    }
    if want("mb") {
        let before = t.cpu_ns();
        let ticks = t.user_kernel_ticks();
        let bytes = bulk(ep, 4, 2, 256 << 10, c.bulk_mb << 20).await;
        t.say_kernel_share("bulk", ticks);
        let mb = bytes as f64 / (1u64 << 20) as f64;
        row.ms_per_mb = t.cpu_since(before).map(|ns| ns as f64 / 1e6 / mb);
    }
    if want("handshake") {
        let before = t.cpu_ns();
        let ticks = t.user_kernel_ticks();
        let n = handshakes(ep, c.handshakes, 20).await;
        row.us_per_handshake = t.cpu_since(before).map(|ns| ns as f64 / n as f64 / 1e3);
        t.say_kernel_share("handshakes", ticks);
    }
    if want("idle") && t.kind != Kind::Direct {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = t.rss_kib();
        let held = idle(ep, c.idle).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let after = t.rss_kib();
        if let Some(ms) = std::env::var("BENCH_HOLD_IDLE_MS")
            .ok()
            .and_then(|v| v.parse().ok())
        {
            // For a heap profiler to snapshot the proxy while the sessions are held.
            eprintln!("holding {} idle sessions for {ms} ms", held.len());
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
        row.kb_per_idle = Some(after.saturating_sub(before) as f64 * 1.024 / held.len() as f64);
    }
    if want("rtt") {
        row.rtt_p50_us = Some(rtt_p50(ep, c.rtt).await);
    }
    row
}

// ---------------------------------------------------------------------------------------
// Targets

struct Target {
    kind: Kind,
    addr: SocketAddr,
    tls: Option<tokio_rustls::TlsConnector>,
    bearer: Option<Arc<str>>,
    child: Option<Child>,
    _dir: Option<PathBuf>,
}

impl Target {
    fn start(kind: Kind, upstream: SocketAddr, cert: &BenchCert) -> Result<Self, String> {
        if kind == Kind::Direct {
            return Ok(Self::direct(upstream));
        }
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let dir = std::env::temp_dir().join(format!(
            "ws-bench-{}-{}",
            std::process::id(),
            kind.name().replace(' ', "-")
        ));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut cmd = pinned();
        match kind {
            Kind::FramesTls => {
                cmd.arg(ws_proxy_bin()?)
                    .args(["--listen", &addr.to_string()])
                    .args(["--upstream", &format!("ws://{upstream}")])
                    .arg("--tls-cert")
                    .arg(&cert.cert)
                    .arg("--tls-key")
                    .arg(&cert.key)
                    .env("RUST_LOG", "warn");
            }
            Kind::NginxTls => {
                let conf = dir.join("nginx.conf");
                std::fs::write(&conf, nginx_conf(port, upstream, &dir, Some(cert)))
                    .map_err(|e| e.to_string())?;
                cmd.arg(which("nginx").unwrap_or_default())
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&conf);
            }
            Kind::Jwt(alg) => {
                cmd.arg(ws_proxy_bin()?)
                    .args(["--listen", &addr.to_string()])
                    .args(["--upstream", &format!("ws://{upstream}")])
                    .args(alg.args(&dir)?)
                    .env("RUST_LOG", "warn");
            }
            Kind::Frames | Kind::Tunnel => {
                let bin = ws_proxy_bin()?;
                let mode = if kind == Kind::Tunnel {
                    "tunnel"
                } else {
                    "frames"
                };
                cmd.arg(bin)
                    .args([
                        "--listen",
                        &addr.to_string(),
                        "--upstream",
                        &format!("ws://{upstream}"),
                        "--mode",
                        mode,
                    ])
                    .env("RUST_LOG", "warn");
            }
            Kind::TokioL4 => {
                cmd.arg(std::env::current_exe().map_err(|e| e.to_string())?)
                    .arg("--l4-forward")
                    .arg(addr.to_string())
                    .arg(upstream.to_string());
            }
            Kind::Nginx => {
                let conf = dir.join("nginx.conf");
                std::fs::write(&conf, nginx_conf(port, upstream, &dir, None))
                    .map_err(|e| e.to_string())?;
                cmd.arg(which("nginx").unwrap_or_default())
                    .arg("-p")
                    .arg(&dir)
                    .arg("-c")
                    .arg(&conf);
            }
            Kind::Haproxy => {
                let conf = dir.join("haproxy.cfg");
                std::fs::write(&conf, haproxy_conf(port, upstream)).map_err(|e| e.to_string())?;
                cmd.arg(which("haproxy").unwrap_or_default())
                    .arg("-db")
                    .arg("-f")
                    .arg(&conf);
            }
            Kind::Caddy => {
                let conf = dir.join("Caddyfile");
                std::fs::write(&conf, caddy_conf(port, upstream)).map_err(|e| e.to_string())?;
                cmd.arg(which("caddy").unwrap_or_default())
                    .args(["run", "--adapter", "caddyfile", "--config"])
                    .arg(&conf)
                    .env("HOME", &dir)
                    .env("XDG_DATA_HOME", &dir)
                    .env("XDG_CONFIG_HOME", &dir);
            }
            Kind::Direct => unreachable!(),
        }
        let tls = kind.is_tls().then(|| cert.connector.clone());
        Self::spawn(kind, addr, cmd, Some(dir), tls)
    }

    /// A target that `cmd` (from [`pinned`]) starts, listening on `addr`.
    fn spawn(
        kind: Kind,
        addr: SocketAddr,
        mut cmd: Command,
        dir: Option<PathBuf>,
        tls: Option<tokio_rustls::TlsConnector>,
    ) -> Result<Self, String> {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("spawn: {e}"))?;
        let bearer = match kind {
            Kind::Jwt(alg) => Some(alg.token()?.into()),
            _ => None,
        };
        Ok(Self {
            kind,
            addr,
            tls,
            bearer,
            child: Some(child),
            _dir: dir,
        })
    }

    /// The upstream itself, measured as a target with no process of its own.
    fn direct(addr: SocketAddr) -> Self {
        Self {
            kind: Kind::Direct,
            addr,
            tls: None,
            bearer: None,
            child: None,
            _dir: None,
        }
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint {
            addr: self.addr,
            tls: self.tls.clone(),
            bearer: self.bearer.clone(),
        }
    }

    /// Every process of the target: the child (taskset execs into it) and its descendants.
    fn pids(&self) -> Vec<u32> {
        let Some(child) = &self.child else {
            return Vec::new();
        };
        let mut pids = vec![child.id()];
        let mut i = 0;
        while i < pids.len() {
            let p = pids[i];
            if let Ok(children) = std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")) {
                pids.extend(
                    children
                        .split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
            i += 1;
        }
        pids
    }

    /// CPU time of every thread of every process, in nanoseconds.
    fn cpu_ns(&self) -> Option<u64> {
        self.child.as_ref()?;
        Some(self.pids().into_iter().map(process_cpu_ns).sum())
    }

    /// User and kernel CPU time of every thread, in clock ticks (`/proc/<pid>/task/*/stat`):
    /// coarse, but it says where a row's cost is.
    fn user_kernel_ticks(&self) -> (u64, u64) {
        let mut total = (0, 0);
        for pid in self.pids() {
            let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
                continue;
            };
            for task in tasks.flatten() {
                let Ok(s) = std::fs::read_to_string(task.path().join("stat")) else {
                    continue;
                };
                // Fields after the command's closing parenthesis: state is the 3rd field,
                // utime the 14th and stime the 15th.
                let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
                let f: Vec<u64> = rest
                    .split_whitespace()
                    .skip(11)
                    .take(2)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                if let [u, k] = f[..] {
                    total.0 += u;
                    total.1 += k;
                }
            }
        }
        total
    }

    /// Prints how much of the proxy's CPU since `before` was spent in the kernel.
    fn say_kernel_share(&self, what: &str, before: (u64, u64)) {
        let after = self.user_kernel_ticks();
        let (user, kernel) = (after.0 - before.0, after.1 - before.1);
        if let Some(share) = (kernel * 100).checked_div(user + kernel) {
            eprintln!(
                "   {what}: {share}% of the proxy's CPU in the kernel ({user} user, {kernel} kernel ticks)"
            );
        }
    }

    fn cpu_since(&self, before: Option<u64>) -> Option<u64> {
        Some(self.cpu_ns()? - before?)
    }

    fn rss_kib(&self) -> u64 {
        self.pids()
            .iter()
            .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
            .filter_map(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .sum()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let tree = self.pids();
        if let Some(child) = &mut self.child {
            if std::env::var_os("BENCH_WRAP").is_some() {
                // A profiler writes its output on a clean exit; a tracer (strace) exits when
                // its tracee does: terminate the whole tree, the innermost process first.
                for pid in tree.iter().rev() {
                    let _ = Command::new("kill").arg(pid.to_string()).status();
                }
            } else {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        for pid in tree.into_iter().skip(1) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
        }
    }
}

/// A command for a target: pinned to CPU 0, and under `BENCH_WRAP` when set (for profiling:
/// `BENCH_WRAP="valgrind --tool=callgrind"`, `strace -f -c` or `perf record` runs each proxy
/// under it; its CPU rows then mean nothing, the profile is the point).
/// CPU time of every thread of process `pid`, in nanoseconds (`/proc/<pid>/task/*/schedstat`).
fn process_cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

fn pinned() -> Command {
    pinned_to("0")
}

/// `taskset -c CPUS`, then `BENCH_WRAP` if set; the program comes next.
fn pinned_to(cpus: &str) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpus);
    if let Ok(wrap) = std::env::var("BENCH_WRAP") {
        cmd.args(wrap.split_whitespace());
    }
    cmd
}

fn nginx_conf(port: u16, up: SocketAddr, dir: &std::path::Path, tls: Option<&BenchCert>) -> String {
    let d = dir.display();
    let listen = match tls {
        Some(c) => format!(
            "127.0.0.1:{port} ssl http2;\n    ssl_certificate {};\n    ssl_certificate_key {};\n    \
             ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_session_cache off;\n    ssl_session_tickets off",
            c.cert.display(),
            c.key.display()
        ),
        None => format!("127.0.0.1:{port}"),
    };
    format!(
        "daemon off;\nmaster_process off;\nworker_processes 1;\nworker_rlimit_nofile 20000;\n\
         pid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
         events {{ worker_connections 19000; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d};\n  proxy_temp_path {d};\n\
           fastcgi_temp_path {d};\n  uwsgi_temp_path {d};\n  scgi_temp_path {d};\n\
           map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}\n\
           server {{\n    listen {listen};\n    location / {{\n\
               proxy_pass http://{up};\n      proxy_http_version 1.1;\n\
               proxy_set_header Upgrade $http_upgrade;\n\
               proxy_set_header Connection $connection_upgrade;\n\
               proxy_set_header Host $host;\n      proxy_read_timeout 3600s;\n    }}\n  }}\n}}\n"
    )
}

/// One certificate for both TLS targets (ECDSA P-256, made at start), and a client that
/// trusts it, offers ALPN `http/1.1` and one cipher suite (TLS 1.3, AES-128-GCM), so both
/// servers do the same handshake; no session resumption (every handshake is a full one).
struct BenchCert {
    cert: PathBuf,
    key: PathBuf,
    connector: tokio_rustls::TlsConnector,
    _dir: PathBuf,
}

impl BenchCert {
    fn new() -> Result<Self, String> {
        use tokio_rustls::rustls;
        let fail = |e: &dyn std::fmt::Display| e.to_string();
        let ca_key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(&e))?;
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).map_err(|e| fail(&e))?;
        let issuer = rcgen::Issuer::new(ca, ca_key);
        let key = rcgen::KeyPair::generate().map_err(|e| fail(&e))?;
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .and_then(|p| p.signed_by(&key, &issuer))
            .map_err(|e| fail(&e))?;
        let dir = std::env::temp_dir().join(format!("ws-bench-{}-cert", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| fail(&e))?;
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, leaf.pem()).map_err(|e| fail(&e))?;
        std::fs::write(&key_path, key.serialize_pem()).map_err(|e| fail(&e))?;
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).map_err(|e| fail(&e))?;
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| fail(&e))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Ok(Self {
            cert: cert_path,
            key: key_path,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            _dir: dir,
        })
    }
}

fn haproxy_conf(port: u16, up: SocketAddr) -> String {
    format!(
        "global\n  maxconn 9000\n  nbthread 1\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 1h\n  timeout server 1h\n  timeout tunnel 1h\n\
         frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
         backend be\n  server s1 {up} maxconn 9000\n"
    )
}

fn caddy_conf(port: u16, up: SocketAddr) -> String {
    format!("{{\n  admin off\n  auto_https off\n}}\nhttp://127.0.0.1:{port} {{\n  reverse_proxy {up}\n}}\n")
}

fn ws_proxy_bin() -> Result<PathBuf, String> {
    // target/release/bench -> target/release/ws-proxy
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let bin = exe
        .parent()
        .map(|p| p.join("ws-proxy"))
        .ok_or("cannot locate target/")?;
    if bin.exists() {
        Ok(bin)
    } else {
        Err(format!(
            "{} not built: run `cargo build --release -p ws-proxy`",
            bin.display()
        ))
    }
}

fn which(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .map(|d| d.join(bin))
            .find(|p| p.exists())
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn wait_ready(ep: &Endpoint) -> Result<(), String> {
    let addr = ep.addr;
    for _ in 0..200 {
        if let Ok((mut ws, _)) = connect(ep).await {
            let _ = ws.close(None).await;
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Err(format!("no WebSocket answer on {addr}"))
}

// ---------------------------------------------------------------------------------------
// The echo upstream and the load generator (both on CPU 1)

/// The `tokio l4` target: `--l4-forward LISTEN UPSTREAM`. The runtime is built as `ws-proxy`
/// builds its own (multi-thread, a worker per CPU it may run on: one under `taskset`).
fn l4_forward(args: &[String]) {
    let (Some(Ok(listen)), Some(Ok(upstream))) = (
        args.first().map(|a| a.parse::<SocketAddr>()),
        args.get(1).map(|a| a.parse::<SocketAddr>()),
    ) else {
        eprintln!("bench: --l4-forward takes LISTEN UPSTREAM (two socket addresses)");
        std::process::exit(2);
    };
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        tokio::spawn(async move {
            let listener = TcpListener::bind(listen).await.expect("bind");
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    // Out of descriptors in a storm: wait for some to close, as servers do.
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(mut up) = TcpStream::connect(upstream).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = up.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                });
            }
        })
        .await
        .expect("forwarder")
    });
}

async fn start_echo() -> SocketAddr {
    serve_echo(TcpListener::bind("127.0.0.1:0").await.expect("bind"))
}

/// The echo upstream with a listen backlog of `backlog` (at most the kernel's somaxconn)
/// instead of tokio's 128: more connects at once than the backlog overflow it, and each one
/// dropped costs its client a SYN retransmitted a second later.
async fn start_echo_with_backlog(backlog: u32) -> SocketAddr {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    serve_echo(socket.listen(backlog).expect("listen"))
}

/// Echoes every text and binary message on each WebSocket session `listener` accepts.
fn serve_echo(listener: TcpListener) -> SocketAddr {
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let cfg = WebSocketConfig::default().max_message_size(Some(64 << 20));
                let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(cfg)).await
                else {
                    return;
                };
                let (mut tx, mut rx) = ws.split();
                while let Some(Ok(m)) = rx.next().await {
                    if (m.is_text() || m.is_binary()) && tx.send(m).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

async fn connect(ep: &Endpoint) -> Result<(Ws, ()), String> {
    let addr = ep.addr;
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let _ = tcp.set_nodelay(true);
    let (stream, url) = match &ep.tls {
        Some(connector) => {
            let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost")
                .map_err(|e| e.to_string())?;
            let tls = connector
                .connect(name, tcp)
                .await
                .map_err(|e| e.to_string())?;
            (
                Stream::Tls(Box::new(tls)),
                format!("wss://localhost:{}/bench", addr.port()),
            )
        }
        None => (Stream::Plain(tcp), format!("ws://{addr}/bench")),
    };
    let cfg = WebSocketConfig::default().max_message_size(Some(64 << 20));
    let mut request = url.into_client_request().map_err(|e| e.to_string())?;
    if let Some(token) = &ep.bearer {
        let value = format!("Bearer {token}");
        request.headers_mut().insert(
            "authorization",
            http::HeaderValue::try_from(value).map_err(|e| e.to_string())?,
        );
    }
    if std::env::var_os("BENCH_OFFER_DEFLATE").is_some_and(|v| v == "1") {
        request.headers_mut().insert(
            "sec-websocket-extensions",
            http::HeaderValue::from_static("permessage-deflate; client_max_window_bits"),
        );
    }
    let (ws, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(cfg))
        .await
        .map_err(|e| e.to_string())?;
    Ok((ws, ()))
}

fn payload(seq: u64, size: usize) -> Vec<u8> {
    let mut p = vec![(seq % 251) as u8; size];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p
}

fn check(data: &[u8], seq: u64, size: usize) {
    assert_eq!(data.len(), size, "message {seq}: wrong length");
    assert_eq!(
        u64::from_be_bytes(data[..8].try_into().unwrap_or_default()),
        seq,
        "lost or reordered message"
    );
    let fill = (seq % 251) as u8;
    assert!(
        data[8..].iter().all(|b| *b == fill),
        "message {seq}: corrupted"
    );
}

/// `sessions` sessions, each with `inflight` messages of `size` bytes outstanding, until
/// `total` messages have been echoed and checked. Returns the count.
async fn echo_load(
    ep: &Endpoint,
    sessions: usize,
    inflight: usize,
    size: usize,
    total: u64,
) -> u64 {
    let per = total / sessions as u64;
    let mut tasks = Vec::new();
    for _ in 0..sessions {
        let ep = ep.clone();
        tasks.push(tokio::spawn(async move {
            let (ws, _) = connect(&ep).await.expect("connect");
            let (mut tx, mut rx) = ws.split();
            let window = Arc::new(Semaphore::new(inflight));
            let w = window.clone();
            let writer = tokio::spawn(async move {
                for seq in 0..per {
                    w.acquire().await.expect("window").forget();
                    tx.send(Message::binary(payload(seq, size)))
                        .await
                        .expect("send");
                }
                tx
            });
            for seq in 0..per {
                match rx.next().await {
                    Some(Ok(Message::Binary(d))) => check(&d, seq, size),
                    other => panic!("expected echo {seq}, got {other:?}"),
                }
                window.add_permits(1);
            }
            let mut tx = writer.await.expect("writer");
            let _ = tx.close().await;
            per
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.expect("session");
    }
    n
}

async fn small_messages(ep: &Endpoint, sessions: usize, inflight: usize, total: u64) -> u64 {
    echo_load(ep, sessions, inflight, 64, total).await
}

async fn bulk(
    ep: &Endpoint,
    sessions: usize,
    inflight: usize,
    size: usize,
    total_bytes: u64,
) -> u64 {
    let n = echo_load(ep, sessions, inflight, size, total_bytes / size as u64).await;
    // Counted once each way through the proxy; CPU per MB is per MB echoed.
    n * size as u64
}

/// A reconnect storm: `clients` connect at once (as after a deploy or a network blip), each
/// sends one message and waits for its echo, then closes. Against a fresh proxy whose echo
/// upstream is a process of its own (descriptor limits).
async fn storm(kind: Kind, cert: &BenchCert, clients: usize) -> Result<Row, String> {
    let (mut echo, upstream) = echo_process(None)?;
    let result = async {
        let target = Target::start(kind, upstream, cert)?;
        wait_ready(&target.endpoint()).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let before = target.cpu_ns();
        let ticks = target.user_kernel_ticks();
        let started = Instant::now();
        let ep = target.endpoint();
        let tasks: Vec<_> = (0..clients)
            .map(|_| {
                let ep = ep.clone();
                tokio::spawn(async move {
                    let begun = Instant::now();
                    let connected = tokio::time::timeout(Duration::from_secs(60), connect(&ep)).await;
                    let Ok(Ok((mut ws, ()))) = connected else {
                        return None;
                    };
                    let handshake = begun.elapsed();
                    ws.send(Message::text("storm")).await.ok()?;
                    let echoed = tokio::time::timeout(Duration::from_secs(60), ws.next()).await;
                    matches!(echoed, Ok(Some(Ok(m))) if m.is_text()).then_some(())?;
                    let _ = ws.close(None).await;
                    Some(handshake)
                })
            })
            .collect();
        let mut latencies = Vec::with_capacity(clients);
        let mut failed = 0;
        for task in tasks {
            match task.await {
                Ok(Some(latency)) => latencies.push(latency.as_secs_f64() * 1e3),
                _ => failed += 1,
            }
        }
        let took = started.elapsed().as_secs_f64();
        let cpu = target.cpu_since(before).map(|ns| ns as f64 / 1e6);
        // Beside the handshake row's split: where a storm's extra CPU per client goes.
        target.say_kernel_share("storm", ticks);
        latencies.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            latencies
                .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
        };
        eprintln!(
            "   storm: {clients} clients in {took:.2} s, handshake p50 {:?} p99 {:?} ms, CPU {cpu:?} ms, {failed} failed",
            pct(0.5),
            pct(0.99)
        );
        Ok(Row {
            storm_s: Some(took),
            storm_p50_ms: pct(0.5),
            storm_p99_ms: pct(0.99),
            storm_cpu_ms: cpu,
            storm_failed: Some(failed as f64),
            ..Row::default()
        })
    }
    .await;
    let _ = echo.kill();
    let _ = echo.wait();
    result
}

/// The echo upstream in a process of its own (`--echo-server`, on CPU 1), with a listen
/// backlog of `backlog` (`None`: tokio's, 128), and the address it listens on. The caller
/// kills the process.
fn echo_process(backlog: Option<u32>) -> Result<(Child, SocketAddr), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut echo = Command::new(exe);
    echo.arg("--echo-server");
    if let Some(backlog) = backlog {
        echo.arg(backlog.to_string());
    }
    let mut echo = echo
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("echo server: {e}"))?;
    let addr = (|| -> Result<SocketAddr, String> {
        use std::io::BufRead;
        let out = echo.stdout.take().ok_or("echo server: no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        line.trim()
            .parse::<SocketAddr>()
            .map_err(|e| format!("echo server said {line:?}: {e}"))
    })();
    match addr {
        Ok(addr) => Ok((echo, addr)),
        Err(e) => {
            let _ = echo.kill();
            let _ = echo.wait();
            Err(e)
        }
    }
}

impl Row {
    /// `self`'s storm fields with `other`'s others.
    fn merged_into(self, other: Row) -> Row {
        Row {
            storm_s: self.storm_s,
            storm_p50_ms: self.storm_p50_ms,
            storm_p99_ms: self.storm_p99_ms,
            storm_cpu_ms: self.storm_cpu_ms,
            storm_failed: self.storm_failed,
            ..other
        }
    }
}

async fn handshakes(ep: &Endpoint, total: u64, concurrency: u64) -> u64 {
    let per = total / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let ep = ep.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                let (mut ws, _) = connect(&ep).await.expect("handshake");
                ws.close(None).await.expect("close");
                while let Some(Ok(_)) = ws.next().await {}
            }
            per
        }));
    }
    let mut n = 0;
    for t in tasks {
        n += t.await.expect("handshakes");
    }
    n
}

async fn idle(ep: &Endpoint, n: usize) -> Vec<Ws> {
    let mut held = Vec::with_capacity(n);
    for chunk in 0..n.div_ceil(200) {
        let mut tasks = Vec::new();
        for _ in 0..200.min(n - chunk * 200) {
            let ep = ep.clone();
            tasks.push(tokio::spawn(async move {
                connect(&ep).await.expect("idle session").0
            }));
        }
        for t in tasks {
            held.push(t.await.expect("idle"));
        }
    }
    held
}

async fn rtt_p50(ep: &Endpoint, n: usize) -> f64 {
    let (mut ws, _) = connect(ep).await.expect("connect");
    let mut samples = Vec::with_capacity(n);
    for seq in 0..n as u64 {
        let started = Instant::now();
        ws.send(Message::binary(payload(seq, 64)))
            .await
            .expect("send");
        match ws.next().await {
            Some(Ok(Message::Binary(d))) => check(&d, seq, 64),
            other => panic!("expected echo, got {other:?}"),
        }
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    let _ = ws.close(None).await;
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

// ---------------------------------------------------------------------------------------
// Output

fn print_table(order: &[Kind], rows: &BTreeMap<&'static str, Row>) {
    let get = |k: Kind, f: fn(&Row) -> Option<f64>| rows.get(k.name()).and_then(f);
    type Field = fn(&Row) -> Option<f64>;
    let lines: [(&str, Field, &str); 5] = [
        ("proxy CPU per 64 B echoed message", |r| r.us_per_msg, "us"),
        ("proxy CPU per MB (256 KiB messages)", |r| r.ms_per_mb, "ms"),
        ("proxy CPU per handshake", |r| r.us_per_handshake, "us"),
        ("proxy RSS per idle session", |r| r.kb_per_idle, "KB"),
        ("1-session round trip p50", |r| r.rtt_p50_us, "us"),
    ];
    println!();
    print!("| per unit |");
    for k in order {
        print!(" {} |", k.name());
    }
    println!();
    print!("|---|");
    for _ in order {
        print!("---|");
    }
    println!();
    let direct_rtt = get(Kind::Direct, |r| r.rtt_p50_us).unwrap_or(0.0);
    for (label, field, unit) in lines {
        let is_rtt = unit == "us" && label.contains("round trip");
        // Lower is better everywhere; latency compares the time added over direct.
        let value = |k: Kind| get(k, field).map(|v| if is_rtt { v - direct_rtt } else { v });
        let best_anchor = order
            .iter()
            .filter(|k| k.is_anchor())
            .filter_map(|k| value(*k))
            .fold(f64::INFINITY, f64::min);
        print!("| {label} |");
        for k in order {
            match get(*k, field) {
                Some(v) if is_rtt && *k == Kind::Direct => print!(" {v:.1} {unit} |"),
                Some(v) if is_rtt => {
                    let added = v - direct_rtt;
                    if k.is_anchor() || !best_anchor.is_finite() {
                        print!(" {v:.1} {unit} (+{added:.1}) |");
                    } else {
                        print!(
                            " {v:.1} {unit} (+{added:.1}; {:.2}x) |",
                            added / best_anchor
                        );
                    }
                }
                Some(v) if k.is_anchor() || !best_anchor.is_finite() => print!(" {v:.2} {unit} |"),
                Some(v) => print!(" {v:.2} {unit} ({:.2}x) |", v / best_anchor),
                None => print!(" - |"),
            }
        }
        println!();
    }
    println!("\nRatios are to the best of nginx, HAProxy and Caddy for the row (latency: time added over direct).");
}

/// The reconnect storm, ratios to nginx.
fn print_storm_table(order: &[Kind], rows: &BTreeMap<&'static str, Row>, clients: usize) {
    type Field = fn(&Row) -> Option<f64>;
    let lines: [(&str, Field, &str); 5] = [
        ("time until all are served", |r| r.storm_s, "s"),
        ("handshake latency p50", |r| r.storm_p50_ms, "ms"),
        ("handshake latency p99", |r| r.storm_p99_ms, "ms"),
        ("proxy CPU for the storm", |r| r.storm_cpu_ms, "ms"),
        ("clients that failed", |r| r.storm_failed, ""),
    ];
    let nginx = rows.get(Kind::Nginx.name());
    println!("\nReconnect storm: {clients} clients connect at once, each sends one message and waits for its echo:\n");
    print!("| storm |");
    for k in order {
        print!(" {} |", k.name());
    }
    println!("\n|---|{}", "---|".repeat(order.len()));
    for (label, field, unit) in lines {
        print!("| {label} |");
        for k in order {
            let anchor = nginx.and_then(field);
            match (rows.get(k.name()).and_then(field), anchor) {
                (Some(v), _) if unit.is_empty() => print!(" {v:.0} |"),
                (Some(v), Some(a)) if *k != Kind::Nginx && a > 0.0 => {
                    print!(" {v:.2} {unit} ({:.2}x) |", v / a)
                }
                (Some(v), _) => print!(" {v:.2} {unit} |"),
                (None, _) => print!(" - |"),
            }
        }
        println!();
    }
}

/// TLS at the edge: ws-proxy against nginx, same certificate, suite and client.
fn print_tls_table(order: &[Kind], rows: &BTreeMap<&'static str, Row>) {
    type Field = fn(&Row) -> Option<f64>;
    let lines: [(&str, Field, &str); 3] = [
        (
            "proxy CPU per TLS handshake (full, + WebSocket upgrade)",
            |r| r.us_per_handshake,
            "us",
        ),
        (
            "proxy CPU per MB over TLS (256 KiB messages)",
            |r| r.ms_per_mb,
            "ms",
        ),
        ("proxy RSS per idle TLS session", |r| r.kb_per_idle, "KB"),
    ];
    let nginx = rows.get(Kind::NginxTls.name());
    println!("\nTLS 1.3 (TLS_AES_128_GCM_SHA256, X25519, ECDSA P-256), no resumption:\n");
    print!("| per unit |");
    for k in order {
        print!(" {} |", k.name());
    }
    println!("\n|---|{}", "---|".repeat(order.len()));
    for (label, field, unit) in lines {
        print!("| {label} |");
        for k in order {
            let anchor = nginx.and_then(field);
            match (rows.get(k.name()).and_then(field), anchor) {
                (Some(v), Some(a)) if *k != Kind::NginxTls && a > 0.0 => {
                    print!(" {v:.2} {unit} ({:.2}x) |", v / a)
                }
                (Some(v), _) => print!(" {v:.2} {unit} |"),
                (None, _) => print!(" - |"),
            }
        }
        println!();
    }
}

/// JWT at the upgrade: CPU per handshake of each algorithm, and what the check adds to plain
/// `ws-proxy`'s in the same run.
fn print_jwt_table(order: &[Kind], rows: &BTreeMap<&'static str, Row>) {
    let plain = rows
        .get(Kind::Frames.name())
        .and_then(|r| r.us_per_handshake);
    println!("\nJWT at the upgrade (frame mode; Authorization: Bearer, aud and exp checked):\n");
    println!("| target | CPU per handshake | added to ws-proxy's |");
    println!("|---|---|---|");
    for k in order {
        match (rows.get(k.name()).and_then(|r| r.us_per_handshake), plain) {
            (Some(v), Some(p)) => println!(
                "| {} | {v:.2} us | +{:.2} us ({:.2}x) |",
                k.name(),
                v - p,
                v / p
            ),
            (Some(v), None) => println!("| {} | {v:.2} us | - |", k.name()),
            (None, _) => println!("| {} | - | - |", k.name()),
        }
    }
}

/// The performance targets (ratios to anchors measured in the same run), each judged met or not.
fn print_targets(rows: &BTreeMap<&'static str, Row>) {
    type Field = fn(&Row) -> Option<f64>;
    let value = |k: Kind, f: Field| rows.get(k.name()).and_then(f);
    let best = |f: &dyn Fn(&Row) -> Option<f64>| {
        [Kind::Nginx, Kind::Haproxy, Kind::Caddy]
            .iter()
            .filter_map(|k| rows.get(k.name()).and_then(f))
            .reduce(f64::min)
    };
    type Check<'a> = (
        Kind,
        &'a str,
        Box<dyn Fn(&Row) -> Option<f64> + 'a>,
        Option<f64>,
        f64,
    );
    let nginx = |f: Field| value(Kind::Nginx, f);
    let checks: Vec<Check<'_>> = vec![
        (
            Kind::Frames,
            "CPU per message vs best",
            Box::new(|r: &Row| r.us_per_msg),
            best(&|r| r.us_per_msg),
            1.0,
        ),
        (
            Kind::Frames,
            "CPU per MB vs best",
            Box::new(|r: &Row| r.ms_per_mb),
            best(&|r| r.ms_per_mb),
            1.0,
        ),
        (
            Kind::Frames,
            "CPU per handshake vs best",
            Box::new(|r: &Row| r.us_per_handshake),
            best(&|r| r.us_per_handshake),
            1.0,
        ),
        (
            Kind::Frames,
            "RSS per idle session vs nginx",
            Box::new(|r: &Row| r.kb_per_idle),
            nginx(|r| r.kb_per_idle),
            0.5,
        ),
        (
            Kind::Frames,
            "storm time vs nginx",
            Box::new(|r: &Row| r.storm_s),
            nginx(|r| r.storm_s),
            1.0,
        ),
        (
            Kind::Frames,
            "storm CPU vs nginx",
            Box::new(|r: &Row| r.storm_cpu_ms),
            nginx(|r| r.storm_cpu_ms),
            1.0,
        ),
        (
            Kind::Tunnel,
            "CPU per message vs best",
            Box::new(|r: &Row| r.us_per_msg),
            best(&|r| r.us_per_msg),
            0.95,
        ),
        (
            Kind::Tunnel,
            "CPU per MB vs best",
            Box::new(|r: &Row| r.ms_per_mb),
            best(&|r| r.ms_per_mb),
            0.8,
        ),
        (
            Kind::Tunnel,
            "CPU per handshake vs best",
            Box::new(|r: &Row| r.us_per_handshake),
            best(&|r| r.us_per_handshake),
            1.0,
        ),
        (
            Kind::Tunnel,
            "RSS per idle session vs HAProxy",
            Box::new(|r: &Row| r.kb_per_idle),
            value(Kind::Haproxy, |r| r.kb_per_idle),
            0.9,
        ),
        (
            Kind::Tunnel,
            "storm time vs nginx",
            Box::new(|r: &Row| r.storm_s),
            nginx(|r| r.storm_s),
            1.0,
        ),
        (
            Kind::Tunnel,
            "storm CPU vs nginx",
            Box::new(|r: &Row| r.storm_cpu_ms),
            nginx(|r| r.storm_cpu_ms),
            1.0,
        ),
        (
            Kind::FramesTls,
            "CPU per TLS handshake vs nginx",
            Box::new(|r: &Row| r.us_per_handshake),
            value(Kind::NginxTls, |r| r.us_per_handshake),
            1.0,
        ),
        (
            Kind::FramesTls,
            "CPU per MB over TLS vs nginx",
            Box::new(|r: &Row| r.ms_per_mb),
            value(Kind::NginxTls, |r| r.ms_per_mb),
            1.0,
        ),
        (
            Kind::FramesTls,
            "RSS per idle TLS session vs nginx",
            Box::new(|r: &Row| r.kb_per_idle),
            value(Kind::NginxTls, |r| r.kb_per_idle),
            1.0,
        ),
    ];
    println!("\nTargets (same run):");
    for (kind, what, field, anchor, target) in checks {
        let ours = rows.get(kind.name()).and_then(&field);
        match (ours, anchor) {
            (Some(v), Some(a)) if a > 0.0 => {
                let ratio = v / a;
                let verdict = if ratio <= target { "met" } else { "NOT met" };
                println!(
                    "  {:<16} {what:<32} {ratio:>5.2}x (target <= {target}x): {verdict}",
                    kind.name()
                );
            }
            _ => println!("  {:<16} {what:<32} not measured in this run", kind.name()),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Process setup

/// Waits (up to a minute) until `cpu` is at most 3% busy over half a second.
async fn wait_for_quiet_cpu(cpu: usize) {
    // (busy, total) jiffies of `cpu` from /proc/stat.
    let sample = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat
            .lines()
            .find(|l| l.starts_with(&format!("cpu{cpu} ")))?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect();
        let idle = v.get(3)? + v.get(4).unwrap_or(&0);
        let total: u64 = v.iter().take(8).sum();
        Some((total - idle, total))
    };
    let started = Instant::now();
    let mut said = false;
    while started.elapsed() < Duration::from_secs(60) {
        let Some((b0, t0)) = sample() else { return };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some((b1, t1)) = sample() else { return };
        let busy = (b1 - b0) as f64 / (t1 - t0).max(1) as f64;
        if busy <= 0.03 {
            return;
        }
        if !said {
            eprintln!(
                "CPU {cpu} is {:.0}% busy with something else; waiting for it to settle",
                busy * 100.0
            );
            said = true;
        }
    }
    eprintln!("CPU {cpu} did not settle within a minute; numbers may read high");
}

fn pin_self_to(cpu: usize) {
    #[allow(unsafe_code)]
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays within its bounds.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("could not pin the load generator to CPU {cpu}; numbers will be noisier");
        }
    }
}

fn raise_fd_limit() {
    #[allow(unsafe_code)]
    // SAFETY: getrlimit/setrlimit with a valid, initialised struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
