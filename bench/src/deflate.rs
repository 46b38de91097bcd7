//! The compression rows (`--rows deflate`): permessage-deflate (RFC 7692) through each target,
//! with clients that compress as browsers do. Client and compressing upstream are Python's
//! `websockets` (`tests/common/ws_tool.py`: `load` and `echo deflate`), on CPU 1 with the rest
//! of the load; the upstream that cannot compress is the bench's own tokio-tungstenite echo.
//!
//! Workloads, each echoed message checked by the client:
//!
//! - chat: 50 sessions echo 20 000 JSON messages of about 125 bytes (the chat workload of
//!   issue 26): bytes on the client's wire per message, proxy CPU per 1 000 messages;
//! - 256 KiB JSON: 4 sessions echo 200 messages of 256 KiB of JSON records (50 MiB): the
//!   compression ratio on the client's wire, proxy CPU per MB;
//! - idle: 1 000 sessions each echo one chat message and stay open: proxy RSS per session
//!   (after minus before), what a quiet compressed session holds.
//!
//! `always ...` rows are the proxy compressing at the edge with the `--deflate-*` settings
//! named (`w`: window bits, `m`: memLevel, `nc`: no context takeover): the table the defaults
//! of `Compression` were picked from.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use super::{
    free_port, nginx_conf, pinned, start_echo, wait_ready, which, ws_proxy_bin, Counts, Kind,
    Target,
};

/// The client and the compressing upstream, as the tests use them.
const TOOL: &str = include_str!("../../tests/common/ws_tool.py");
/// The `websockets` the tests install (`tests/common/python.rs`).
const WEBSOCKETS: &str = "websockets==17.4";

/// Which upstream a target is in front of.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Upstream {
    /// Python's `websockets`, compressing with its defaults (windows of 2^12).
    Compressing,
    /// tokio-tungstenite, which cannot compress.
    Plain,
}

/// A compression target: a name, how it runs, and in front of what.
struct Spec {
    name: &'static str,
    how: How,
    upstream: Upstream,
}

enum How {
    /// The upstream, with no proxy.
    Direct,
    /// `ws-proxy` with these flags.
    WsProxy(&'static [&'static str]),
    /// The library with a message hook (every message inflated, handed to the hook and
    /// compressed again): `--serve-hooked`.
    Hooked,
    Nginx,
}

fn specs() -> Vec<Spec> {
    use How::*;
    use Upstream::*;
    let always = |name, flags| Spec {
        name,
        how: WsProxy(flags),
        upstream: Plain,
    };
    vec![
        Spec {
            name: "direct",
            how: Direct,
            upstream: Compressing,
        },
        Spec {
            name: "ws-proxy",
            how: WsProxy(&[]),
            upstream: Compressing,
        },
        Spec {
            name: "ws-proxy hooks",
            how: Hooked,
            upstream: Compressing,
        },
        Spec {
            name: "ws-proxy off",
            how: WsProxy(&["--deflate", "off"]),
            upstream: Compressing,
        },
        Spec {
            name: "ws-proxy tunnel",
            how: WsProxy(&["--mode", "tunnel"]),
            upstream: Compressing,
        },
        Spec {
            name: "nginx",
            how: Nginx,
            upstream: Compressing,
        },
        always("always (w10 m1)", &["--deflate", "always"]),
        always(
            "always w15 m8",
            &[
                "--deflate",
                "always",
                "--deflate-window-bits",
                "15",
                "--deflate-mem-level",
                "8",
            ],
        ),
        always(
            "always w15 m1",
            &["--deflate", "always", "--deflate-window-bits", "15"],
        ),
        always(
            "always w12 m1",
            &["--deflate", "always", "--deflate-window-bits", "12"],
        ),
        always(
            "always w9 m1",
            &["--deflate", "always", "--deflate-window-bits", "9"],
        ),
        always(
            "always w10 m1 nc",
            &["--deflate", "always", "--deflate-context-takeover=false"],
        ),
        always(
            "always w15 m8 nc",
            &[
                "--deflate",
                "always",
                "--deflate-window-bits",
                "15",
                "--deflate-mem-level",
                "8",
                "--deflate-context-takeover=false",
            ],
        ),
    ]
}

/// One target's numbers in one round.
#[derive(Default, Clone)]
struct Measured {
    extensions: String,
    chat_wire_per_msg: Option<f64>,
    chat_ms_per_1000: Option<f64>,
    json_ratio: Option<f64>,
    json_ms_per_mb: Option<f64>,
    idle_kib: Option<f64>,
}

/// Python with `websockets`, and the tool written where it can run.
struct Python {
    python: PathBuf,
    site: PathBuf,
    tool: PathBuf,
}

impl Python {
    fn find() -> Result<Self, String> {
        // target/release/bench -> target/tmp/python-websockets
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let home = exe
            .ancestors()
            .nth(2)
            .ok_or("cannot locate target/")?
            .join("tmp/python-websockets");
        let python = PathBuf::from(std::env::var_os("PYTHON3").unwrap_or("python3".into()));
        let py = Python {
            site: home.join("site"),
            tool: home.join("bench_tool.py"),
            python,
        };
        std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
        std::fs::write(&py.tool, TOOL).map_err(|e| e.to_string())?;
        let done = home.join("installed");
        if std::fs::read_to_string(&done).ok().as_deref() != Some(WEBSOCKETS) {
            eprintln!("installing {WEBSOCKETS} into {}", home.display());
            let ok = Command::new(&py.python)
                .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
                .args(["--upgrade", "--target"])
                .arg(&py.site)
                .arg(WEBSOCKETS)
                .status()
                .map_err(|e| format!("cannot run pip: {e}"))?;
            if !ok.success() {
                return Err(format!("pip could not install {WEBSOCKETS}"));
            }
            std::fs::write(&done, WEBSOCKETS).map_err(|e| e.to_string())?;
        }
        Ok(py)
    }

    /// The tool with `args`, on CPU 1.
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("taskset");
        cmd.args(["-c", "1"])
            .arg(&self.python)
            .arg(&self.tool)
            .args(args)
            .env("PYTHONPATH", &self.site);
        cmd
    }

    /// The compressing echo upstream and its address.
    fn echo(&self) -> Result<(Child, SocketAddr), String> {
        let mut child = self
            .command(&["echo", "deflate"])
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start the Python echo: {e}"))?;
        let mut line = String::new();
        let stdout = child.stdout.take().ok_or("no stdout")?;
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        let port: u16 = line
            .trim()
            .parse()
            .map_err(|_| format!("the Python echo printed {line:?}"))?;
        Ok((child, SocketAddr::from(([127, 0, 0, 1], port))))
    }
}

/// Runs the load client to the end; its JSON summary.
async fn load(py: &Python, at: SocketAddr, kind: &str, sessions: u64, count: u64) -> Summary {
    let url = format!("ws://{at}/");
    let (sessions, count) = (sessions.to_string(), count.to_string());
    let mut cmd = py.command(&["load", &url, kind, &sessions, &count]);
    let out = tokio::task::spawn_blocking(move || cmd.stderr(Stdio::inherit()).output())
        .await
        .expect("the load client's thread")
        .expect("run the load client");
    Summary::parse(&String::from_utf8_lossy(&out.stdout))
}

struct Summary {
    extensions: String,
    echoed: f64,
    plain_bytes: f64,
    wire_bytes: f64,
}

impl Summary {
    fn parse(text: &str) -> Self {
        let v: serde_json::Value = serde_json::from_str(text.trim()).unwrap_or_else(|_| {
            eprintln!("bench: the load client printed {text:?}");
            std::process::exit(1);
        });
        let n = |k: &str| v[k].as_f64().unwrap_or(0.0);
        Summary {
            extensions: v["extensions"].as_str().unwrap_or("none").to_owned(),
            echoed: n("echoed"),
            plain_bytes: n("plain_bytes"),
            wire_bytes: n("wire_bytes"),
        }
    }
}

async fn measure(t: &Target, py: &Python, c: &Counts) -> Measured {
    let at = t.addr;
    load(py, at, "chat", 4, 200).await; // warm-up
    let mut m = Measured::default();

    let before = t.cpu_ns();
    let chat = load(py, at, "chat", 50, c.deflate_chat).await;
    m.extensions = chat.extensions;
    m.chat_wire_per_msg = Some(chat.wire_bytes / chat.echoed);
    m.chat_ms_per_1000 = t
        .cpu_since(before)
        .map(|ns| ns as f64 / 1e6 / (chat.echoed / 1000.0));

    let before = t.cpu_ns();
    let json = load(py, at, "json256k", 4, c.deflate_json).await;
    m.json_ratio = Some(json.plain_bytes / json.wire_bytes);
    m.json_ms_per_mb = t
        .cpu_since(before)
        .map(|ns| ns as f64 / 1e6 / (json.plain_bytes / (1u64 << 20) as f64));

    if t.kind != Kind::Direct {
        m.idle_kib = Some(idle(t, py, c.deflate_idle).await);
    }
    m
}

/// Proxy RSS per session while `n` sessions that each echoed one chat message stay open.
async fn idle(t: &Target, py: &Python, n: u64) -> f64 {
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let before = t.rss_kib();
    let url = format!("ws://{}/", t.addr);
    let n_text = n.to_string();
    let mut child = py
        .command(&["load", &url, "chat", &n_text, &n_text, "hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the idle client");
    let stdout = child.stdout.take().expect("stdout");
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        line
    })
    .await
    .expect("the idle client's thread");
    let held = Summary::parse(&line);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let after = t.rss_kib();
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"\n");
    }
    let _ = tokio::task::spawn_blocking(move || child.wait()).await;
    after.saturating_sub(before) as f64 * 1.024 / held.echoed
}

/// `--serve-hooked LISTEN UPSTREAM`: the library with a message hook that forwards every
/// message, so each one is inflated for it and compressed again. The runtime is built as
/// `ws-proxy` builds its own.
pub(crate) fn serve_hooked(args: &[String]) {
    let (Some(Ok(listen)), Some(Ok(upstream))) = (
        args.first().map(|a| a.parse::<SocketAddr>()),
        args.get(1).map(|a| a.parse::<SocketAddr>()),
    ) else {
        eprintln!("bench: --serve-hooked takes LISTEN UPSTREAM (two socket addresses)");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let Ok(pool) = format!("ws://{upstream}").parse() else {
            eprintln!("bench: bad upstream {upstream}");
            std::process::exit(2);
        };
        let layer = axum_ws_proxy::WsProxyLayer::new(pool)
            .on_client_message(|_, _| axum_ws_proxy::hooks::Verdict::Forward);
        let app = axum::Router::new().layer(layer);
        let listener = tokio::net::TcpListener::bind(listen).await.expect("bind");
        axum::serve(listener, app).await.expect("serve");
    });
}

/// Starts one target in front of `upstream`.
fn start(spec: &Spec, upstream: SocketAddr) -> Result<Target, String> {
    if let How::Direct = spec.how {
        return Ok(Target::direct(upstream));
    }
    let port = free_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let up = format!("ws://{upstream}");
    let mut cmd = pinned();
    let mut dir = None;
    match spec.how {
        How::WsProxy(flags) => {
            cmd.arg(ws_proxy_bin()?)
                .args(["--listen", &addr.to_string(), "--upstream", &up])
                .args(flags)
                .env("RUST_LOG", "warn");
        }
        How::Hooked => {
            cmd.arg(std::env::current_exe().map_err(|e| e.to_string())?)
                .args(["--serve-hooked", &addr.to_string(), &upstream.to_string()]);
        }
        How::Nginx => {
            let d =
                std::env::temp_dir().join(format!("ws-bench-{}-deflate-nginx", std::process::id()));
            std::fs::create_dir_all(&d).map_err(|e| e.to_string())?;
            let conf = d.join("nginx.conf");
            std::fs::write(&conf, nginx_conf(port, upstream, &d, None))
                .map_err(|e| e.to_string())?;
            cmd.arg(which("nginx").ok_or("nginx not installed")?)
                .arg("-p")
                .arg(&d)
                .arg("-c")
                .arg(&conf);
            dir = Some(d);
        }
        How::Direct => unreachable!(),
    }
    let kind = if matches!(spec.how, How::Nginx) {
        Kind::Nginx
    } else {
        Kind::Frames
    };
    Target::spawn(kind, addr, cmd, dir, None)
}

/// The compression section: every target in each round, medians, the table and its targets.
pub(crate) async fn run(c: &Counts, rounds: usize, only: &Option<Vec<String>>) {
    let py = match Python::find() {
        Ok(py) => py,
        Err(e) => {
            eprintln!("bench: compression rows need Python 3 with pip: {e}");
            return;
        }
    };
    let (mut echo, compressing) = match py.echo() {
        Ok(e) => e,
        Err(e) => {
            eprintln!("bench: {e}");
            return;
        }
    };
    let plain = start_echo().await;
    let mut specs = specs();
    if which("nginx").is_none() {
        eprintln!("nginx not installed: its compression row skipped");
        specs.retain(|s| !matches!(s.how, How::Nginx));
    }
    if let Some(only) = only {
        specs.retain(|s| s.name == "direct" || only.iter().any(|o| s.name.starts_with(o.as_str())));
    }
    let mut results: Vec<Vec<Measured>> = vec![Vec::new(); specs.len()];
    for round in 1..=rounds {
        for (i, spec) in specs.iter().enumerate() {
            eprintln!("== deflate: {} (round {round} of {rounds})", spec.name);
            let upstream = match spec.upstream {
                Upstream::Compressing => compressing,
                Upstream::Plain => plain,
            };
            let target = match start(spec, upstream) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{}: could not start ({e}); skipped", spec.name);
                    continue;
                }
            };
            if let Err(e) = wait_ready(&target.endpoint()).await {
                eprintln!("{}: not ready ({e}); skipped", spec.name);
                continue;
            }
            results[i].push(measure(&target, &py, c).await);
        }
    }
    let _ = echo.kill();
    let _ = echo.wait();
    let medians: Vec<Option<Measured>> = results.iter().map(|r| median(r)).collect();
    print_table(&specs, &medians, rounds);
    print_targets(&specs, &medians);
}

fn median(rounds: &[Measured]) -> Option<Measured> {
    let first = rounds.first()?;
    let of = |f: fn(&Measured) -> Option<f64>| {
        let mut v: Vec<f64> = rounds.iter().filter_map(f).collect();
        v.sort_by(f64::total_cmp);
        match v.len() {
            0 => None,
            n if n % 2 == 1 => Some(v[n / 2]),
            n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
        }
    };
    Some(Measured {
        extensions: first.extensions.clone(),
        chat_wire_per_msg: of(|m| m.chat_wire_per_msg),
        chat_ms_per_1000: of(|m| m.chat_ms_per_1000),
        json_ratio: of(|m| m.json_ratio),
        json_ms_per_mb: of(|m| m.json_ms_per_mb),
        idle_kib: of(|m| m.idle_kib),
    })
}

fn print_table(specs: &[Spec], rows: &[Option<Measured>], rounds: usize) {
    println!("\npermessage-deflate (client offers as browsers do; medians of {rounds} round(s))\n");
    println!(
        "| target | upstream | extension the client got | chat: bytes on the client's wire per message | chat: proxy CPU per 1000 messages | 256 KiB JSON: ratio on the client's wire | 256 KiB JSON: proxy CPU per MB | RSS per idle session |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let fmt = |v: Option<f64>, unit: &str, digits: usize| {
        v.map_or("-".to_owned(), |v| format!("{v:.digits$} {unit}"))
    };
    for (spec, row) in specs.iter().zip(rows) {
        let Some(r) = row else { continue };
        let upstream = match spec.upstream {
            Upstream::Compressing => "websockets (deflate)",
            Upstream::Plain => "tungstenite (none)",
        };
        println!(
            "| {} | {upstream} | `{}` | {} | {} | {} | {} | {} |",
            spec.name,
            r.extensions,
            fmt(r.chat_wire_per_msg, "B", 1),
            fmt(r.chat_ms_per_1000, "ms", 1),
            fmt(r.json_ratio, "x", 2),
            fmt(r.json_ms_per_mb, "ms", 2),
            fmt(r.idle_kib, "KiB", 1),
        );
    }
}

fn print_targets(specs: &[Spec], rows: &[Option<Measured>]) {
    let get = |name: &str| {
        specs
            .iter()
            .position(|s| s.name == name)
            .and_then(|i| rows[i].as_ref())
    };
    type Field = fn(&Measured) -> Option<f64>;
    let checks: [(&str, &str, Field, &str, f64); 5] = [
        (
            "ws-proxy",
            "chat bytes on the wire vs direct",
            |m| m.chat_wire_per_msg,
            "direct",
            1.1,
        ),
        (
            "ws-proxy hooks",
            "chat bytes on the wire vs direct",
            |m| m.chat_wire_per_msg,
            "direct",
            1.1,
        ),
        (
            "always (w10 m1)",
            "chat bytes on the wire vs direct",
            |m| m.chat_wire_per_msg,
            "direct",
            1.1,
        ),
        (
            "ws-proxy",
            "chat CPU per message vs ws-proxy off",
            |m| m.chat_ms_per_1000,
            "ws-proxy off",
            1.3,
        ),
        (
            "ws-proxy",
            "chat bytes on the wire vs nginx",
            |m| m.chat_wire_per_msg,
            "nginx",
            1.1,
        ),
    ];
    println!("\nCompression targets (same run):");
    for (ours, what, field, anchor, target) in checks {
        match (get(ours).and_then(field), get(anchor).and_then(field)) {
            (Some(v), Some(a)) if a > 0.0 => {
                let ratio = v / a;
                let verdict = if ratio <= target { "met" } else { "NOT met" };
                println!("  {ours:<16} {what:<38} {ratio:>5.2}x (target <= {target}x): {verdict}");
            }
            _ => println!("  {ours:<16} {what:<38} not measured in this run"),
        }
    }
    if let Some(m) = get("always (w10 m1)").and_then(|m| m.idle_kib) {
        let off = get("ws-proxy off").and_then(|m| m.idle_kib).unwrap_or(0.0);
        let added = m - off;
        let verdict = if added <= 16.0 { "met" } else { "NOT met" };
        println!(
            "  {:<16} {:<38} {added:>5.1} KiB (target <= 16 KiB): {verdict}",
            "always (w10 m1)", "RSS added per idle compressed session"
        );
    }
}
