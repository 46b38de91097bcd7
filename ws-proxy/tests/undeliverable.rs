//! Messages the proxy reads and cannot deliver (sent after its close, or cut mid-message) are
//! counted as undeliverable in both modes, in the session summary and the metric, and never as
//! forwarded.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum_ws_proxy::{hooks::SessionSummary, Mode, WsProxyLayer};
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Reads frames the proxy sends an upstream (masked) until a close frame.
async fn read_until_close(tcp: &mut TcpStream) {
    let mut pending = Vec::new();
    loop {
        while pending.len() < 2 {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "the proxy's close never came");
            pending.extend_from_slice(&chunk[..n]);
        }
        let (opcode, len) = (pending[0] & 0x0f, usize::from(pending[1] & 0x7f));
        assert!(len < 126, "test frames are small");
        let whole = 2 + 4 + len;
        while pending.len() < whole {
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await.unwrap_or(0);
            assert!(n > 0, "the proxy's close never came");
            pending.extend_from_slice(&chunk[..n]);
        }
        pending.drain(..whole);
        if opcode == 0x8 {
            return;
        }
    }
}

/// An upstream that starts a text message (its first fragment, `par`) and, only once the
/// proxy's close has reached it, sends the message's last fragment, one more message, and its
/// close answer: two messages that can no longer reach the client.
async fn late_upstream() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                if !answer_upgrade(&mut tcp).await {
                    return;
                }
                tcp.write_all(&[0x01, 3, b'p', b'a', b'r']).await.unwrap();
                read_until_close(&mut tcp).await;
                let mut late = vec![0x80, 1, b't', 0x81, 4, b'l', b'a', b't', b'e'];
                late.extend_from_slice(&[0x88, 2, 0x03, 0xe9]);
                tcp.write_all(&late).await.unwrap();
                // As a server does after the close handshake: its side of TCP ends first.
                tcp.shutdown().await.unwrap();
                let mut sink = [0u8; 1024];
                while tcp.read(&mut sink).await.unwrap_or(0) > 0 {}
            });
        }
    });
    addr
}

/// A raw client: takes the upstream's first fragment, then `close` makes the proxy close the
/// session; once its close frame has arrived the client sends three messages and its answer.
async fn late_client(proxy: SocketAddr, close: impl std::future::Future<Output = ()>) {
    let (status, _, mut tcp, mut pending) =
        raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101);
    assert_eq!(
        read_frame(&mut tcp, &mut pending).await,
        (0x1, b"par".to_vec())
    );
    close.await;
    let (opcode, _) = read_frame(&mut tcp, &mut pending).await;
    assert_eq!(opcode, 0x8, "the proxy's close");
    let mut late = Vec::new();
    for m in [b"a", b"b", b"c"] {
        late.extend(client_frame(0x81, m));
    }
    late.extend(client_frame(0x88, &[0x03, 0xe9]));
    tcp.write_all(&late).await.unwrap();
    let mut sink = [0u8; 1024];
    while within("the end of the session", tcp.read(&mut sink))
        .await
        .unwrap_or(0)
        > 0
    {}
}

/// Shutdown closes the session; the client's three late messages and the upstream's two
/// (one of them the end of a message whose start went through) are undeliverable, and none
/// of them is counted as forwarded.
async fn late_messages_are_counted_as_undeliverable(mode: Mode) {
    let (tx, mut summaries) = tokio::sync::mpsc::unbounded_channel::<SessionSummary>();
    let layer = WsProxyLayer::new(upstream(late_upstream().await))
        .mode(mode)
        .on_close(move |s| {
            let _ = tx.send(s.clone());
        });
    let handle = layer.shutdown_handle();
    let proxy = proxy(layer).await;
    let shutdown = async move {
        // A grace well past the close timeout: the close handshakes end the session.
        tokio::spawn(async move { handle.shutdown(Duration::from_secs(30)).await });
    };
    late_client(proxy, shutdown).await;
    let s = within("the session summary", summaries.recv())
        .await
        .unwrap();
    assert_eq!(
        (
            s.undeliverable,
            s.messages_to_client,
            s.messages_to_upstream
        ),
        (5, 0, 0),
        "{mode:?}: undeliverable, forwarded to the client, to the upstream"
    );
    assert_eq!(s.client_close_code, 1012);
}

#[tokio::test]
async fn a_tunnel_counts_what_it_discards_after_its_close_as_undeliverable() {
    late_messages_are_counted_as_undeliverable(Mode::Tunnel).await;
}

#[tokio::test]
async fn frame_mode_counts_what_arrives_after_its_close_as_undeliverable() {
    late_messages_are_counted_as_undeliverable(Mode::Frames).await;
}

/// The proxy's `ws_proxy_undeliverable_messages_total{mode=...}` and its message counters.
async fn counters(metrics: SocketAddr, mode: &str) -> (f64, f64, f64) {
    let (_, _, body) = http_request(metrics, "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&body);
    let value = |prefix: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(prefix))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    };
    (
        value(&format!(
            "ws_proxy_undeliverable_messages_total{{mode=\"{mode}\"}} "
        )),
        value("ws_proxy_messages_total{direction=\"to_client\"} "),
        value("ws_proxy_messages_total{direction=\"to_upstream\"} "),
    )
}

/// The same through the binary, closed by its idle timeout: the session's log line and the
/// metric have the count, with the mode's label.
#[tokio::test]
async fn the_binary_counts_undeliverable_messages_per_mode() {
    for mode in ["tunnel", "frames"] {
        let up = late_upstream().await;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ws-proxy"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &format!("ws://{up}"),
        ])
        .args(["--mode", mode, "--idle-timeout", "300ms"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .env("RUST_LOG", "info");
        let (_child, addr, metrics, mut logs) = spawn_proxy(cmd).await;
        late_client(addr, async {}).await;
        // The counters are recorded as the session's task ends, with its log line.
        let line = within("the session's log line", async {
            loop {
                let line = logs.next_line().await.unwrap().expect("ws-proxy exited");
                if line.contains("session closed") {
                    return line;
                }
            }
        })
        .await;
        assert!(line.contains("undeliverable=5"), "{mode}: {line}");
        let metrics = metrics.expect("the metrics address");
        assert_eq!(counters(metrics, mode).await, (5.0, 0.0, 0.0), "{mode}");
    }
}

/// One client of the load below: sends a text message every few milliseconds until the
/// proxy's close reaches it, reads until its stream ends; returns (sent, echoed).
async fn steady_client(ws: Client) -> (u64, u64) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut stream) = ws.split();
    let closed = std::sync::Arc::new(tokio::sync::Notify::new());
    let sending = {
        let closed = closed.clone();
        tokio::spawn(async move {
            let mut sent = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(3));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = closed.notified() => return sent,
                }
                // Sent once written: a split sink accepts a message into a slot of its own
                // and only hands it to the socket, or refuses it after a close, on flush.
                if sink.send(Message::text(format!("m{sent}"))).await.is_err() {
                    return sent;
                }
                sent += 1;
            }
        })
    };
    let mut echoed = 0;
    while let Some(Ok(m)) = within("the session's end", stream.next()).await {
        match m {
            Message::Text(_) => echoed += 1,
            Message::Close(_) => closed.notify_one(),
            _ => {}
        }
    }
    closed.notify_one();
    (sending.await.unwrap(), echoed)
}

/// SIGTERM while 50 sessions keep sending: every message a client sent and did not get back
/// is in some session's `undeliverable`, in both modes (the tunnel logged 0 while messages went
/// missing).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_lost_without_a_count_at_shutdown() {
    for mode in ["tunnel", "frames"] {
        let up = echo_upstream().await;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_ws-proxy"));
        cmd.args([
            "--listen",
            "127.0.0.1:0",
            "--upstream",
            &format!("ws://{up}"),
        ])
        .args(["--mode", mode])
        .env("RUST_LOG", "info");
        let (child, addr, _, mut logs) = spawn_proxy(cmd).await;
        let mut clients = Vec::new();
        for _ in 0..50 {
            clients.push(tokio::spawn(steady_client(connect(addr, "/").await)));
        }
        // Every session is open; let them carry traffic, then stop the proxy under load.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let pid = child.id().unwrap().to_string();
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        let (mut sent, mut echoed) = (0, 0);
        for client in clients {
            let (s, e) = client.await.unwrap();
            sent += s;
            echoed += e;
        }
        let mut undeliverable = 0;
        let mut closed = 0;
        while let Ok(Some(line)) = within("the logs", logs.next_line()).await {
            if line.contains("session closed") {
                closed += 1;
                let n = line.split("undeliverable=").nth(1).unwrap_or("0");
                let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
                undeliverable += digits.parse::<u64>().unwrap();
            }
        }
        assert_eq!(closed, 50, "{mode}");
        assert!(echoed > 0, "{mode}: no traffic before the shutdown");
        println!("{mode}: sent {sent}, echoed {echoed}, undeliverable {undeliverable}");
        assert_eq!(
            sent - echoed,
            undeliverable,
            "{mode}: messages lost without a count"
        );
    }
}
