//! Operating the `ws-proxy` binary: logs that never stall traffic, reload on SIGHUP, the
//! shutdown delay, JSON logs. Real processes, real sockets.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_ws-proxy");

/// A port nothing listens on right now (for a process that must be told its address).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn signal(child: &Child, sig: &str) {
    let pid = child.id().unwrap().to_string();
    let ok = std::process::Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap();
    assert!(ok.success());
}

async fn first_text(proxy: SocketAddr, path: &str) -> String {
    let mut ws = connect(proxy, path).await;
    match next_message(&mut ws).await {
        Message::Text(t) => t.to_string(),
        other => panic!("expected a name, got {other:?}"),
    }
}

async fn metric(metrics: SocketAddr, line_start: &str) -> Option<String> {
    let (status, _, body) = http_request(metrics, "/metrics", &[]).await;
    assert_eq!(status, StatusCode::OK);
    String::from_utf8_lossy(&body)
        .lines()
        .find(|l| l.starts_with(line_start))
        .map(str::to_owned)
}

/// A stuck log collector: stderr is a pipe nobody reads. Before, a runtime worker blocked in
/// write_config(2) after ~200 sessions and every connection, /healthz included, hung.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unread_log_pipe_does_not_stall_traffic() {
    let up = echo_upstream().await;
    let (listen, metrics) = (free_port(), free_port());
    let mut child = Command::new(BIN)
        .args(["--upstream", &format!("ws://{up}")])
        .args(["--listen", &listen.to_string()])
        .args(["--metrics-listen", &metrics.to_string()])
        .args(["--allow-origin", "https://app.example"])
        // A few lines per session: the pipe's 64 KiB fill within a few hundred sessions.
        .env("RUST_LOG", "debug")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let _unread = child.stderr.take().unwrap();
    within("the proxy to answer /healthz", async {
        loop {
            if tokio::net::TcpStream::connect(listen).await.is_ok() {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for worker in 0..30 {
        let done = done.clone();
        tasks.spawn(async move {
            for i in 0..50 {
                let mut ws = connect(listen, "/").await;
                let text = format!("w{worker}-m{i}");
                ws.send(Message::text(text.clone())).await.unwrap();
                assert_eq!(next_message(&mut ws).await, Message::text(text));
                ws.close(None).await.unwrap();
                while let Some(Ok(_)) = ws.next().await {}
                done.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "stalled after {} sessions",
            done.load(std::sync::atomic::Ordering::Relaxed)
        )
    });
    assert_eq!(done.load(std::sync::atomic::Ordering::Relaxed), 1500);
    let (status, _, body) = http_request(listen, "/healthz", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    // A log flood (refused upgrades log a line each) past the queue's 16 Ki lines: still no
    // stall, and the lines that did not fit are dropped and counted, not queued without bound.
    let mut flood = tokio::task::JoinSet::new();
    for _ in 0..20 {
        flood.spawn(async move {
            let tcp = tokio::net::TcpStream::connect(listen).await.unwrap();
            let io = hyper_util::rt::TokioIo::new(tcp);
            let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            for _ in 0..1000 {
                let mut req = http::Request::get("/").header("host", "proxy");
                for (k, v) in UPGRADE_HEADERS {
                    req = req.header(k, v);
                }
                let req = req
                    .header("origin", "https://evil.example")
                    .body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap();
                let res = sender.send_request(req).await.unwrap();
                assert_eq!(res.status(), StatusCode::FORBIDDEN);
                http_body_util::BodyExt::collect(res.into_body())
                    .await
                    .unwrap();
            }
        });
    }
    tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(r) = flood.join_next().await {
            r.unwrap();
        }
    })
    .await
    .expect("the refused-upgrade flood stalled");
    let (status, _, _) = http_request(listen, "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let dropped = within("the dropped-lines counter", async {
        loop {
            if let Some(line) = metric(metrics, "ws_proxy_log_lines_dropped_total ").await {
                return line;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let count: u64 = dropped.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count > 0, "{dropped}");
}

/// SIGHUP: 100 live sessions stay on the old upstream and keep echoing; new sessions follow
/// the new file; the process keeps running; the reload is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_new_sessions_and_keeps_live_ones() {
    let (old, new) = (named("old").await, named("new").await);
    let metrics = free_port().to_string();
    let file = write_config("reload.toml", &format!("upstream = [\"ws://{old}\"]\n"));
    let (child, proxy, mut logs) = start_logged(
        &[
            "--config",
            file.to_str().unwrap(),
            "--metrics-listen",
            &metrics,
        ],
        &[],
    )
    .await;
    let mut live = Vec::new();
    for _ in 0..100 {
        let mut ws = connect(proxy, "/").await;
        assert_eq!(next_message(&mut ws).await, Message::text("old"));
        live.push(ws);
    }
    // The new file: the default pool moves, and a route to a named pool appears.
    write_config(
        "reload.toml",
        &format!(
            "upstream = [\"ws://{new}\"]\n[pools.chat]\nupstream = [\"ws://{old}\"]\n\
             [[routes]]\nprefix = \"/chat\"\npool = \"chat\"\n"
        ),
    );
    signal(&child, "-HUP");
    let line = line_with(&mut logs, "configuration reloaded").await;
    assert!(line.contains("generation=2"), "{line}");
    assert_eq!(first_text(proxy, "/").await, "new");
    assert_eq!(first_text(proxy, "/chat/1").await, "old");
    for (i, ws) in live.iter_mut().enumerate() {
        ws.send(Message::text(format!("still {i}"))).await.unwrap();
        assert_eq!(next_message(ws).await, Message::text(format!("still {i}")));
    }
    let metrics: SocketAddr = metrics.parse().unwrap();
    assert_eq!(
        metric(metrics, "ws_proxy_config_reloads_total{result=\"ok\"}")
            .await
            .as_deref(),
        Some("ws_proxy_config_reloads_total{result=\"ok\"} 1")
    );
}

/// `escaped_slashes` from the file applies on SIGHUP: `reject` refuses `/chat%2F1` with 400;
/// after a reload to `decode`, the same path is `/chat/1` for the routes (it goes to the chat
/// pool) and for the upstream.
#[tokio::test]
async fn escaped_slashes_follow_a_reload() {
    let (default, chat) = (named("default").await, named("chat").await);
    let config = |action: &str| {
        format!(
            "escaped_slashes = \"{action}\"\nupstream = [\"ws://{default}\"]\n\
             [pools.chat]\nupstream = [\"ws://{chat}\"]\n\
             [[routes]]\nprefix = \"/chat\"\npool = \"chat\"\n"
        )
    };
    let file = write_config("slashes.toml", &config("reject"));
    let (child, proxy, mut logs) = start_logged(&["--config", file.to_str().unwrap()], &[]).await;
    let (status, _, body) = http_request(proxy, "/chat%2F1", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("encoded slashes"));
    write_config("slashes.toml", &config("decode"));
    signal(&child, "-HUP");
    line_with(&mut logs, "configuration reloaded").await;
    assert_eq!(first_text(proxy, "/chat%2F1").await, "chat");
    assert_eq!(first_text(proxy, "/other%2F1").await, "default");
}

/// A broken file on SIGHUP is refused with `file:line: key`, and the running configuration
/// stays.
#[tokio::test]
async fn a_broken_file_on_reload_keeps_the_running_configuration() {
    let up = named("running").await;
    let file = write_config("broken.toml", &format!("upstream = [\"ws://{up}\"]\n"));
    let (child, proxy, mut logs) = start_logged(&["--config", file.to_str().unwrap()], &[]).await;
    write_config(
        "broken.toml",
        "upstream = [\"ws://127.0.0.1:1\"]\nbalance = \"random\"\n",
    );
    signal(&child, "-HUP");
    let line = line_with(&mut logs, "reload refused").await;
    assert!(
        line.contains("broken.toml:2: balance: invalid balancing strategy \"random\""),
        "{line}"
    );
    assert_eq!(first_text(proxy, "/").await, "running");
    // A good file after a bad one applies.
    let other = named("fixed").await;
    write_config("broken.toml", &format!("upstream = [\"ws://{other}\"]\n"));
    signal(&child, "-HUP");
    line_with(&mut logs, "configuration reloaded").await;
    assert_eq!(first_text(proxy, "/").await, "fixed");
}

/// Settings only a restart changes are named in the log, and keep their running values.
#[tokio::test]
async fn a_reload_names_settings_that_need_a_restart() {
    let up = echo_upstream().await;
    let file = write_config(
        "restart-only.toml",
        &format!("upstream = [\"ws://{up}\"]\n"),
    );
    let (child, proxy, mut logs) = start_logged(&["--config", file.to_str().unwrap()], &[]).await;
    write_config(
        "restart-only.toml",
        &format!("upstream = [\"ws://{up}\"]\nheader_timeout = \"3s\"\n"),
    );
    signal(&child, "-HUP");
    let line = line_with(&mut logs, "only with a restart").await;
    assert!(line.contains("header_timeout"), "{line}");
    let (status, _, _) = http_request(proxy, "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK);
}

/// `--shutdown-delay`: after SIGTERM the proxy keeps serving (new sessions included) while
/// /healthz answers 503; then sessions get 1012 and the process exits 0.
#[tokio::test]
async fn the_shutdown_delay_keeps_serving_while_healthz_fails() {
    let up = echo_upstream().await;
    let (mut child, proxy, _logs) = start_logged(
        &[
            "--upstream",
            &format!("ws://{up}"),
            "--shutdown-delay",
            "1s",
            "--shutdown-grace",
            "5s",
        ],
        &[],
    )
    .await;
    let mut before = connect(proxy, "/").await;
    let term = Instant::now();
    signal(&child, "-TERM");
    within("/healthz to fail", async {
        loop {
            let (status, _, body) = http_request(proxy, "/healthz", &[]).await;
            if status == StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(&body[..], b"shutting down\n");
                break;
            }
        }
    })
    .await;
    // Still accepting and proxying during the delay.
    let mut during = connect(proxy, "/").await;
    during.send(Message::text("during")).await.unwrap();
    assert_eq!(next_message(&mut during).await, Message::text("during"));
    assert!(
        term.elapsed() < Duration::from_secs(1),
        "the check ran past the delay"
    );
    for ws in [&mut before, &mut during] {
        match next_message(ws).await {
            Message::Close(Some(f)) => assert_eq!(u16::from(f.code), 1012),
            other => panic!("expected 1012, got {other:?}"),
        }
    }
    assert!(
        term.elapsed() >= Duration::from_secs(1),
        "1012 came before the delay ended"
    );
    let status = within("ws-proxy to exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

/// `--log-format json`: every line is a JSON object; session lines carry the session's fields.
#[tokio::test]
async fn json_logs_parse_and_carry_session_fields() {
    let up = echo_upstream().await;
    let (_child, proxy, mut logs) = start_logged(
        &["--upstream", &format!("ws://{up}"), "--log-format", "json"],
        &[],
    )
    .await;
    let mut ws = connect(proxy, "/room?x=1").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hi"));
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let line = line_with(&mut logs, "session closed").await;
    let v: serde_json::Value =
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["level"], "INFO", "{line}");
    assert_eq!(v["message"], "session closed", "{line}");
    let span = &v["span"];
    assert_eq!(span["name"], "ws_session", "{line}");
    assert_eq!(span["path"], "/room?x=1", "{line}");
    assert_eq!(span["closed_by"], "client", "{line}");
    assert_eq!(span["messages_to_upstream"], 1, "{line}");
    assert!(
        span["upstream"]
            .as_str()
            .is_some_and(|u| u.contains(&up.to_string())),
        "{line}"
    );
}

/// Secrets in queries never reach a log line (sessions, refusals, plain requests); each
/// session's id is in its log line and, with --session-id-header, upstream.
#[tokio::test]
async fn logs_redact_query_secrets_and_carry_the_session_id() {
    let (up, mut seen) = recording_upstream(&[]).await;
    let (_child, proxy, mut logs) = start_logged(
        &[
            "--upstream",
            &format!("ws://{up}"),
            "--log-format",
            "json",
            "--session-id-header",
            "x-request-id",
            "--allow-origin",
            "https://app.example",
        ],
        &[],
    )
    .await;
    let mut ws = connect(proxy, "/live?room=7&token=SECRET1").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hi"));
    ws.close(None).await.unwrap();
    while let Some(Ok(_)) = ws.next().await {}
    let (_, headers) = within("the upstream request", seen.recv()).await.unwrap();
    let sent_id: u64 = headers["x-request-id"].to_str().unwrap().parse().unwrap();

    let (status, ..) = http_request(proxy, "/healthz?password=SECRET2", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let refused: Vec<(&str, &str)> = UPGRADE_HEADERS
        .iter()
        .copied()
        .chain([("origin", "https://evil.example")])
        .collect();
    let (status, ..) = http_request(proxy, "/live?auth=SECRET3", &refused).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // In whatever order they come; every line on the way is checked for secrets.
    let needles = ["session closed", "http request", "upgrade refused"];
    let mut lines = vec![String::new(); 3];
    within("the three log lines", async {
        while lines.iter().any(String::is_empty) {
            let line = logs.recv().await.expect("ws-proxy exited");
            assert!(!line.contains("SECRET"), "a secret was logged: {line}");
            if let Some(i) = needles.iter().position(|n| line.contains(n)) {
                lines[i] = line;
            }
        }
    })
    .await;
    let session: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(session["span"]["path"], "/live?room=7&token=REDACTED");
    assert_eq!(session["span"]["id"], sent_id, "{}", lines[0]);
    let access: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    assert_eq!(access["path"], "/healthz?password=REDACTED");
    assert_eq!(access["method"], "GET");
    assert_eq!(access["status"], 200);
    assert_eq!(
        access["client"]
            .as_str()
            .map(|c| c.starts_with("127.0.0.1:")),
        Some(true)
    );
    let refusal: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    assert_eq!(refusal["path"], "/live?auth=REDACTED");
    assert_eq!(refusal["status"], 403);
}

/// `/status` on the metrics listener: version, generation (following reloads), live
/// sessions, and every member of every pool with its state; build and process metrics.
#[tokio::test]
async fn status_reports_pools_sessions_and_generation() {
    let (a, b) = (named("a").await, named("b").await);
    let metrics = free_port();
    let file = write_config(
        "status.toml",
        &format!(
            "upstream = [\"ws://{a}\"]\n[pools.chat]\nupstream = [\"ws://{b}\"]\n\
             [[routes]]\nprefix = \"/chat\"\npool = \"chat\"\n"
        ),
    );
    let (child, proxy, mut logs) = start_logged(
        &[
            "--config",
            file.to_str().unwrap(),
            "--metrics-listen",
            &metrics.to_string(),
        ],
        &[],
    )
    .await;
    let _ws = connect(proxy, "/chat/1").await;
    let status =
        |body: bytes::Bytes| -> serde_json::Value { serde_json::from_slice(&body).unwrap() };
    let (code, headers, body) = http_request(metrics, "/status", &[]).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(headers["content-type"], "application/json");
    let s = status(body);
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["generation"], 1);
    assert_eq!(s["live_sessions"], 1);
    assert_eq!(s["shutting_down"], false);
    assert_eq!(s["default_pool"][0]["member"], format!("ws://{a}"));
    assert_eq!(s["default_pool"][0]["live_sessions"], 0);
    let chat = &s["pools"]["chat"][0];
    assert_eq!(chat["address"], b.to_string());
    assert_eq!(chat["live_sessions"], 1);
    assert_eq!(chat["in_rotation"], true);

    // After a reload the pools and generation follow; the chat member kept its live session.
    let c = named("c").await;
    write_config(
        "status.toml",
        &format!(
            "upstream = [\"ws://{c}\"]\n[pools.chat]\nupstream = [\"ws://{b}\"]\n\
             [[routes]]\nprefix = \"/chat\"\npool = \"chat\"\n"
        ),
    );
    signal(&child, "-HUP");
    line_with(&mut logs, "configuration reloaded").await;
    let (_, _, body) = http_request(metrics, "/status", &[]).await;
    let s = status(body);
    assert_eq!(s["generation"], 2);
    assert_eq!(s["default_pool"][0]["member"], format!("ws://{c}"));
    assert_eq!(s["pools"]["chat"][0]["live_sessions"], 1);

    let build = metric(metrics, "ws_proxy_build_info").await;
    assert_eq!(
        build.as_deref(),
        Some(
            format!(
                "ws_proxy_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            )
            .as_str()
        )
    );
    assert!(metric(metrics, "process_resident_memory_bytes ")
        .await
        .is_some());
    assert!(metric(metrics, "process_open_fds ").await.is_some());
}

/// One grace period for everything: a session whose upstream never answers the close and an
/// HTTP connection stuck mid-head are both dropped at the same deadline, and the process
/// exits then (before, the HTTP drain and the session drain each took a full grace, in turn).
#[tokio::test]
async fn shutdown_takes_one_grace_period_not_two() {
    let up = hung_upstream().await;
    let (mut child, proxy, _logs) = start_logged(
        &[
            "--upstream",
            &format!("ws://{up}"),
            "--shutdown-grace",
            "2s",
            "--header-timeout",
            "60s",
        ],
        &[],
    )
    .await;
    let _session = connect(proxy, "/").await;
    let mut half = tokio::net::TcpStream::connect(proxy).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut half, b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // The half head is in: an HTTP request in progress, as far as the server knows.
    let (status, ..) = http_request(proxy, "/healthz", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let term = Instant::now();
    signal(&child, "-TERM");
    let status = within("ws-proxy to exit", child.wait()).await.unwrap();
    let took = term.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        took >= Duration::from_millis(1900),
        "exited before the grace: {took:?}"
    );
    assert!(
        took < Duration::from_millis(3500),
        "took more than one grace: {took:?}"
    );
}
