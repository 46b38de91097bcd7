//! Deploys without a reconnect storm: SIGTERM and an operator's request drain sessions at an
//! even rate over a window, idle ones first, with 1012 to the client and 1001 upstream.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Close frames an upstream received from the proxy, counted by (code, reason).
type Closes = Arc<Mutex<HashMap<(u16, String), usize>>>;

/// An echo upstream that counts the close frames it gets.
async fn counting_upstream() -> (SocketAddr, Closes) {
    let closes: Closes = Arc::default();
    let seen = closes.clone();
    let addr = tt_upstream(move |mut ws: Server| {
        let seen = seen.clone();
        async move {
            while let Some(Ok(m)) = ws.next().await {
                match m {
                    Message::Close(Some(f)) => {
                        let key = (u16::from(f.code), f.reason.to_string());
                        *seen.lock().unwrap().entry(key).or_default() += 1;
                    }
                    m if m.is_text() => {
                        let _ = ws.send(m).await;
                    }
                    _ => {}
                }
            }
        }
    })
    .await;
    (addr, closes)
}

/// When a client got its close frame, and which.
#[derive(Debug)]
struct Closed {
    at: Instant,
    code: u16,
    reason: String,
    busy: bool,
}

/// Runs a client until its session ends: a busy one sends a message every 50 ms. Reports
/// its close frame (and answers it, by reading on).
async fn client(mut ws: Client, busy: bool, closed: Arc<AtomicUsize>, wake: Arc<Notify>) -> Closed {
    let mut tick = tokio::time::interval(Duration::from_millis(50));
    let mut got = None;
    loop {
        tokio::select! {
            m = ws.next() => match m {
                Some(Ok(Message::Close(Some(f)))) if got.is_none() => {
                    got = Some(Closed {
                        at: Instant::now(),
                        code: u16::from(f.code),
                        reason: f.reason.to_string(),
                        busy,
                    });
                    closed.fetch_add(1, Ordering::AcqRel);
                    wake.notify_waiters();
                }
                Some(Ok(_)) => {}
                _ => break,
            },
            _ = tick.tick(), if busy && got.is_none() => {
                if ws.send(Message::text("busy")).await.is_err() {
                    break;
                }
            }
        }
    }
    got.expect("the session ended without a close frame")
}

/// Waits until `n` clients have their close frame.
async fn until_closed(closed: &AtomicUsize, wake: &Notify, n: usize) {
    loop {
        let woken = wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        if closed.load(Ordering::Acquire) >= n {
            return;
        }
        woken.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_1000_sessions_evenly_over_the_window_idle_first() {
    const SESSIONS: usize = 1000;
    const BUSY: usize = 100;
    const WINDOW: Duration = Duration::from_secs(10);
    raise_fd_limit();
    let (up, upstream_closes) = counting_upstream().await;
    let (mut child, addr, metrics) = start_ws_proxy(&[
        "--upstream",
        &format!("ws://{up}"),
        "--drain-window",
        "10s",
        "--shutdown-grace",
        "15s",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await;
    let metrics = metrics.expect("the metrics address");
    let closed = Arc::new(AtomicUsize::new(0));
    let wake = Arc::new(Notify::new());
    // Busy sessions first: by id and start they would be drained first, so the order seen
    // can only come from their activity.
    let mut sockets = Vec::new();
    for batch in 0..SESSIONS / 100 {
        let opened = futures_util::future::join_all((0..100).map(|_| connect(addr, "/"))).await;
        sockets.extend(opened.into_iter().map(|ws| (ws, batch * 100 < BUSY)));
    }
    // Every busy session has carried a message after every idle one registered.
    for (ws, busy) in &mut sockets {
        if *busy {
            ws.send(Message::text("hello")).await.unwrap();
            assert_eq!(next_message(ws).await, Message::text("hello"));
        }
    }
    let clients: Vec<_> = sockets
        .into_iter()
        .map(|(ws, busy)| tokio::spawn(client(ws, busy, closed.clone(), wake.clone())))
        .collect();

    let sent = Instant::now();
    signal(&child, "TERM");

    // Halfway: the status page and the metrics follow the drain.
    within(
        "half the closes",
        until_closed(&closed, &wake, SESSIONS / 2),
    )
    .await;
    let (status, _, body) = http_request(metrics, "/status", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(report["shutting_down"], true);
    assert_eq!(report["drain"]["sessions_at_start"], SESSIONS);
    assert_eq!(report["drain"]["window_ms"], 10_000);
    let asked = report["drain"]["asked_to_close"].as_u64().unwrap();
    assert!((400..700).contains(&asked), "{report}");
    let (_, _, body) = http_request(metrics, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&body);
    let shed = text
        .lines()
        .find_map(|l| l.strip_prefix("ws_proxy_sessions_shed_total{reason=\"drain\"} "))
        .and_then(|v| v.parse::<u64>().ok())
        .expect("the drain's counter");
    assert!((400..750).contains(&shed), "{shed}");

    let mut closes = Vec::new();
    for c in clients {
        closes.push(within("every client's close", c).await.unwrap());
    }
    let status = within("the exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));

    for c in &closes {
        assert_eq!(
            (c.code, c.reason.as_str()),
            (1012, "proxy draining, reconnect")
        );
    }
    assert_eq!(
        *upstream_closes.lock().unwrap(),
        HashMap::from([((1001, "proxy draining, reconnect".to_owned()), SESSIONS)])
    );
    closes.sort_by_key(|c| c.at);
    let (first, last) = (closes[0].at, closes[SESSIONS - 1].at);
    // Spread over the window, the last within it (plus delivery).
    assert!(last - first >= WINDOW * 9 / 10, "{:?}", last - first);
    assert!(
        last - sent <= WINDOW + Duration::from_millis(500),
        "{:?}",
        last - sent
    );
    // No second holds more than twice its share (the mean is 100). Measured as the clients
    // see the closes: a test process starved for a moment under CI load reads a backlog at
    // once (250 ms steps saw 61 and 73 closes against a mean of 25 that way), so the step is
    // long enough for such a stall to stay under the bound; a drain that sends in bursts still
    // fails it (and the spread check above).
    let step = Duration::from_secs(1);
    let mean = SESSIONS as f64 * step.as_secs_f64() / WINDOW.as_secs_f64();
    let busiest = (0..SESSIONS)
        .map(|i| {
            closes[i..]
                .iter()
                .take_while(|c| c.at < closes[i].at + step)
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest as f64 <= 2.0 * mean,
        "{busiest} closes in one 250 ms (mean {mean})"
    );
    // Idle sessions before busy ones (as the clients saw them: 10 ms apart, so a 50 ms margin
    // for delivery; busy ones first would come 9 s early).
    let last_idle = closes
        .iter()
        .filter(|c| !c.busy)
        .map(|c| c.at)
        .max()
        .unwrap();
    let first_busy = closes
        .iter()
        .filter(|c| c.busy)
        .map(|c| c.at)
        .min()
        .unwrap();
    assert!(
        last_idle <= first_busy + Duration::from_millis(50),
        "a busy session was closed before an idle one"
    );
}

/// Starts the binary with an admin listener; returns it, its address and the admin address.
async fn start_with_admin(args: &[&str]) -> (tokio::process::Child, SocketAddr, SocketAddr) {
    let mut cmd = tokio::process::Command::new(ws_proxy_binary());
    cmd.args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info");
    let (child, addrs, mut lines) = spawn_logging(cmd).await;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, addrs["listen"], addrs["admin"])
}

/// An admin request without a body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (StatusCode, http::HeaderMap, Vec<u8>) {
    admin_request(addr, method, path, token, None).await
}

const TOKEN: &str = "s3cret-admin-token-0123456789";

#[tokio::test]
async fn a_requested_drain_closes_sessions_without_exit_and_needs_the_token() {
    let up = echo_upstream().await;
    let token_file = write_config("admin-token", &format!("{TOKEN}\n"));
    let (mut child, addr, admin) = start_with_admin(&[
        "--upstream",
        &format!("ws://{up}"),
        "--admin-token-file",
        token_file.to_str().unwrap(),
        "--drain-window",
        "300ms",
    ])
    .await;
    let mut sessions = Vec::new();
    for _ in 0..3 {
        sessions.push(connect(addr, "/").await);
    }

    // Without the token, or with another: 401, and nothing happens.
    for token in [None, Some("s3cret-admin-token-012345678X"), Some("short")] {
        let (status, headers, body) = request(admin, "POST", "/drain", token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(
            headers["www-authenticate"],
            "Bearer realm=\"ws-proxy admin\""
        );
        assert_eq!(&body[..], b"missing or wrong bearer token\n");
    }
    let (status, _, _) = request(admin, "GET", "/drain", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _, body) = http_request(addr, "/healthz", &[]).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));
    // Not on the public listener.
    let (status, _, _) = request(addr, "POST", "/drain", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = request(admin, "GET", "/drain", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], br#"{"drain":null}"#);

    let (status, _, body) = request(admin, "POST", "/drain", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["started"], true, "{answer}");
    assert_eq!(answer["drain"]["window_ms"], 300);
    for ws in &mut sessions {
        assert_eq!(
            next_close(ws).await,
            (1012, "proxy draining, reconnect".into())
        );
        while let Some(Ok(_)) = within("the close handshake", ws.next()).await {}
    }
    // Still running: readiness fails, new upgrades are refused, and asking again changes
    // nothing.
    let (status, _, body) = http_request(addr, "/healthz", &[]).await;
    assert_eq!(
        (status, &body[..]),
        (StatusCode::SERVICE_UNAVAILABLE, &b"shutting down\n"[..])
    );
    let (status, _, _) = http_request(addr, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _, body) = request(admin, "POST", "/drain", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let answer: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(answer["started"], false);
    assert_eq!(answer["drain"]["sessions_at_start"], 3);
    assert_eq!(answer["drain"]["asked_to_close"], 3);
    assert!(
        child.try_wait().unwrap().is_none(),
        "a requested drain does not exit"
    );

    // SIGTERM afterwards: the drain is done, so it exits at once, with 0.
    signal(&child, "TERM");
    let status = within("the exit", child.wait()).await.unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test]
async fn a_reload_that_adds_a_member_moves_half_the_sessions_with_the_rebalance_keys() {
    let (a, b) = (named("A").await, named("B").await);
    let config = |members: &str| {
        format!(
            "upstream = [{members}]\n[pools.chat]\nupstream = [\"ws://{a}\"]\n\
             rebalance_rate = 100\nrebalance_delay = \"100ms\"\nrebalance_max_fraction = 50\n"
        )
    };
    let file = write_config("rebalance.toml", &config(&format!("\"ws://{a}\"")));
    let (child, addr, metrics) = start_ws_proxy(&[
        "--config",
        file.to_str().unwrap(),
        "--metrics-listen",
        "127.0.0.1:0",
        "--rebalance-rate",
        "100",
        "--rebalance-delay",
        "100ms",
    ])
    .await;
    let metrics = metrics.unwrap();
    let mut sessions = Vec::new();
    for _ in 0..20 {
        let mut ws = connect(addr, "/").await;
        assert_eq!(next_message(&mut ws).await, Message::text("A"));
        sessions.push(ws);
    }
    write_config(
        "rebalance.toml",
        &config(&format!("\"ws://{a}\", \"ws://{b}\"")),
    );
    signal(&child, "HUP");
    // Ten of A's twenty are asked to move; the others stay.
    let mut moved = 0;
    for ws in &mut sessions[..] {
        let closed = tokio::time::timeout(Duration::from_secs(3), ws.next()).await;
        if let Ok(Some(Ok(Message::Close(Some(f))))) = closed {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1012, "rebalancing, reconnect")
            );
            moved += 1;
            if moved == 10 {
                break;
            }
        }
    }
    assert_eq!(moved, 10);
    // The others stay (the plan was ten: A's excess over its fair share).
    for ws in &mut sessions[10..] {
        ws.send(Message::text("still here")).await.unwrap();
        assert_eq!(next_message(ws).await, Message::text("still here"));
    }
    let (_, _, body) = http_request(metrics, "/status", &[]).await;
    let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        report["rebalance"]["(default)"]["sessions_moved"], 10,
        "{report}"
    );
    assert_eq!(report["rebalance"]["(default)"]["rebalances"], 1);
    assert_eq!(report["rebalance"]["chat"]["sessions_moved"], 0);
    let (_, _, body) = http_request(metrics, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("ws_proxy_sessions_shed_total{reason=\"rebalance\"} 10"),
        "{text}"
    );
}
