//! Close frames cross with code and reason, and every way a session can end gives each leg a
//! defined close code.

mod common;

use axum_ws_proxy::WsProxyLayer;
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

/// The close frame the client receives next, then the end of its stream (the close handshake
/// completed and the proxy closed the TCP connection).
async fn client_close(ws: &mut Client) -> (u16, String) {
    let frame = match next_message(ws).await {
        Message::Close(Some(f)) => (u16::from(f.code), f.reason.to_string()),
        other => panic!("expected a close frame, got {other:?}"),
    };
    if let Some(Ok(m)) = within("the end of the client stream", ws.next()).await {
        panic!("data after the close frame: {m:?}");
    }
    frame
}

/// The close frame the upstream reads next, then the end of its stream.
async fn upstream_close(seen: &mut Reported) -> Option<(u16, String)> {
    let frame = match seen.next().await {
        Some(Message::Close(f)) => f.map(|f| (u16::from(f.code), f.reason.to_string())),
        other => panic!("expected the upstream to read a close frame, got {other:?}"),
    };
    assert_eq!(
        seen.next().await,
        None,
        "the upstream's stream should end after the close"
    );
    frame
}

#[tokio::test]
async fn a_client_close_reaches_the_upstream_with_code_and_reason() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect(proxy, "/").await;
    assert_eq!(
        close_and_wait(&mut ws, 4001, "bye now").await,
        Some((4001, "bye now".into()))
    );
    assert_eq!(
        upstream_close(&mut seen).await,
        Some((4001, "bye now".into()))
    );
}

#[tokio::test]
async fn a_close_without_a_code_is_forwarded_without_one() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::Close(None)).await.unwrap();
    assert_eq!(upstream_close(&mut seen).await, None);
}

#[tokio::test]
async fn an_upstream_close_reaches_the_client_with_code_and_reason() {
    let (tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    let up = tt_upstream(move |mut ws: Server| {
        let tx = tx.clone();
        async move {
            ws.send(Message::text("last words")).await.unwrap();
            ws.send(close(4000, "done here")).await.unwrap();
            // The proxy answers the close on this leg itself.
            while let Some(Ok(m)) = ws.next().await {
                let _ = tx.send(m);
            }
        }
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect(proxy, "/").await;
    assert_eq!(next_message(&mut ws).await, Message::text("last words"));
    assert_eq!(client_close(&mut ws).await, (4000, "done here".into()));
    assert_eq!(
        within("upstream's close answer", got.recv()).await,
        Some(close(4000, "done here"))
    );
}

#[tokio::test]
async fn an_upstream_dropping_without_a_close_frame_gives_the_client_1011() {
    let up = tt_upstream(|mut ws: Server| async move {
        ws.send(Message::text("about to crash")).await.unwrap();
        drop(ws); // TCP closed, no close frame
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect(proxy, "/").await;
    assert_eq!(next_message(&mut ws).await, Message::text("about to crash"));
    let (code, reason) = client_close(&mut ws).await;
    assert_eq!(code, 1011);
    assert_eq!(reason, "upstream went away without a close frame");
}

#[tokio::test]
async fn a_client_dropping_gives_the_upstream_1001() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hi"));
    assert_eq!(seen.next().await, Some(Message::text("hi")));
    drop(ws); // TCP closed, no close frame
    assert_eq!(
        upstream_close(&mut seen).await,
        Some((1001, "client went away".into()))
    );
}

#[tokio::test]
async fn invalid_utf8_from_the_client_is_1007_and_the_upstream_gets_1001() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect(proxy, "/").await;
    let bad = Frame::message(
        Bytes::from_static(&[0x68, 0xff, 0xfe]),
        OpCode::Data(Data::Text),
        true,
    );
    ws.send(Message::Frame(bad)).await.unwrap();
    let (code, _) = client_close(&mut ws).await;
    assert_eq!(code, 1007);
    let (code, reason) = upstream_close(&mut seen).await.unwrap();
    assert_eq!(code, 1001);
    assert!(
        reason.starts_with("client failed: invalid UTF-8"),
        "{reason}"
    );
}

#[tokio::test]
async fn an_unmasked_client_frame_is_1002_and_the_upstream_gets_1001() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, head, mut tcp, mut pending) =
        raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101, "{head}");
    tcp.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap(); // FIN + text, no mask bit
    let (opcode, payload) = read_frame(&mut tcp, &mut pending).await;
    assert_eq!(opcode, 0x8, "expected a close frame");
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
    let (code, _) = upstream_close(&mut seen).await.unwrap();
    assert_eq!(code, 1001);
}

#[tokio::test]
async fn a_client_message_over_the_limit_is_1009_and_the_upstream_gets_1001() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).max_message_size(1024)).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::binary(vec![7u8; 1024])).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::binary(vec![7u8; 1024]),
        "the limit itself is allowed"
    );
    ws.send(Message::binary(vec![7u8; 1025])).await.unwrap();
    let (code, _) = client_close(&mut ws).await;
    assert_eq!(code, 1009);
    assert_eq!(seen.next().await, Some(Message::binary(vec![7u8; 1024])));
    let (code, _) = upstream_close(&mut seen).await.unwrap();
    assert_eq!(code, 1001);
}

#[tokio::test]
async fn an_upstream_message_over_the_limit_is_1009_upstream_and_1011_to_the_client() {
    let (tx, mut got) = tokio::sync::mpsc::unbounded_channel();
    let up = tt_upstream(move |mut ws: Server| {
        let tx = tx.clone();
        async move {
            ws.send(Message::binary(vec![1u8; 4096])).await.unwrap();
            while let Some(Ok(m)) = ws.next().await {
                let _ = tx.send(m);
            }
        }
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).max_message_size(1024)).await;
    let mut ws = connect(proxy, "/").await;
    let (code, reason) = client_close(&mut ws).await;
    assert_eq!(code, 1011);
    assert!(reason.starts_with("upstream failed"), "{reason}");
    match within("upstream's close", got.recv()).await {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1009),
        other => panic!("expected a 1009 close upstream, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_protocol_error_still_delivers_what_the_upstream_sent_first() {
    let up = tt_upstream(|mut ws: Server| async move {
        if let Some(Ok(m)) = ws.next().await {
            // Answer late, so the reply is in flight when the proxy sees the violation.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            let _ = ws
                .send(Message::text(format!("reply to {}", m.to_text().unwrap())))
                .await;
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, _, mut tcp, mut pending) =
        raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101);
    let mut bytes = client_frame(0x81, b"hello");
    bytes.extend_from_slice(&[0x81, 0x01, b'x']); // unmasked: a protocol violation
    tcp.write_all(&bytes).await.unwrap();
    assert_eq!(
        read_frame(&mut tcp, &mut pending).await,
        (0x1, b"reply to hello".to_vec())
    );
    let (opcode, payload) = read_frame(&mut tcp, &mut pending).await;
    assert_eq!(
        (opcode, u16::from_be_bytes([payload[0], payload[1]])),
        (0x8, 1002)
    );
}

/// A client's close frame is checked the same way by both frame bridges: the streaming one
/// (no message hooks) reads it itself, the message bridge through tungstenite. Each case: the
/// close payload the client sends, the close the client is answered with, the upstream's.
#[tokio::test]
async fn both_frame_bridges_check_a_client_close_alike() {
    let cases: [(&[u8], u16, &str, u16, &str); 5] = [
        (b"\x0f\xa0fine", 4000, "fine", 4000, "fine"),
        (b"", 0, "", 0, ""),
        // 1005 may not be sent: answered and passed on as 1002, as tungstenite does.
        (
            b"\x03\xed",
            1002,
            "Protocol violation",
            1002,
            "Protocol violation",
        ),
        // One byte is no code: the client broke the protocol.
        (b"\x03", 1002, "", 1001, "client failed"),
        // A reason that is not UTF-8.
        (
            b"\x03\xe8\xff",
            1007,
            "",
            1001,
            "client failed: invalid UTF-8",
        ),
    ];
    for hooked in [false, true] {
        for (payload, client_code, client_reason, upstream_code, upstream_reason) in cases {
            let case = format!("hooks {hooked}, payload {payload:?}");
            let (up, mut seen) = reporting_upstream().await;
            let mut layer = WsProxyLayer::new(upstream(up));
            if hooked {
                layer = layer.on_client_message(|_, _| axum_ws_proxy::hooks::Verdict::Forward);
            }
            let proxy = proxy(layer).await;
            let (status, _, mut tcp, mut pending) =
                raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
            assert_eq!(status, 101, "{case}");
            tcp.write_all(&client_frame(0x88, payload)).await.unwrap();
            let (opcode, answer) = read_frame(&mut tcp, &mut pending).await;
            assert_eq!(opcode, 0x8, "{case}");
            let code = match answer.as_slice() {
                [] => 0,
                [a, b, ..] => u16::from_be_bytes([*a, *b]),
                [_] => panic!("{case}: a one-byte close payload"),
            };
            let reason = String::from_utf8_lossy(answer.get(2..).unwrap_or_default());
            assert_eq!(code, client_code, "{case}: {reason}");
            assert!(reason.starts_with(client_reason), "{case}: {reason}");
            let told = upstream_close(&mut seen)
                .await
                .unwrap_or((0, String::new()));
            assert_eq!(told.0, upstream_code, "{case}: {told:?}");
            assert!(told.1.starts_with(upstream_reason), "{case}: {told:?}");
        }
    }
}

/// Panics anywhere in this test binary (a session's task included: tokio catches those).
static PANICS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn count_panics() {
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        prev(info);
    }));
}

/// Reads one server frame of any size (unmasked): (first byte, payload).
async fn read_any_frame(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> Option<(u8, Vec<u8>)> {
    async fn fill(tcp: &mut TcpStream, pending: &mut Vec<u8>, n: usize) -> bool {
        let mut chunk = vec![0u8; 64 << 10];
        while pending.len() < n {
            let got = within("frame bytes", tcp.read(&mut chunk))
                .await
                .unwrap_or(0);
            if got == 0 {
                return false;
            }
            pending.extend_from_slice(&chunk[..got]);
        }
        true
    }
    if !fill(tcp, pending, 2).await {
        return None;
    }
    let (len, header) = match pending[1] & 0x7f {
        126 => {
            fill(tcp, pending, 4).await;
            (u16::from_be_bytes([pending[2], pending[3]]) as usize, 4)
        }
        127 => {
            fill(tcp, pending, 10).await;
            (
                u64::from_be_bytes(pending[2..10].try_into().unwrap()) as usize,
                10,
            )
        }
        n => (n as usize, 2),
    };
    if !fill(tcp, pending, header + len).await {
        return None;
    }
    let first = pending[0];
    let payload = pending[header..header + len].to_vec();
    pending.drain(..header + len);
    Some((first, payload))
}

/// Found in review: a ping the proxy could not answer yet (the client was not reading) stayed
/// in the walker's header buffer when the session ended, and the close phase walked on from
/// it: the client's close answer was never recognised, and 133 bytes later the walker indexed
/// past its buffer (a panic, the session lost without a report).
#[tokio::test]
async fn a_ping_still_unanswered_when_the_session_ends_is_dropped() {
    count_panics();
    // An upstream that sends 32 MiB to the client at once, then reads (and drops) forever.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        assert!(answer_upgrade(&mut tcp).await);
        let len: u64 = 32 << 20;
        let mut frame = vec![0x82, 127];
        frame.extend_from_slice(&len.to_be_bytes());
        frame.resize(frame.len() + len as usize, 7);
        let (mut rd, mut wr) = tcp.into_split();
        tokio::spawn(async move {
            let _ = wr.write_all(&frame).await;
            std::future::pending::<()>().await;
            drop(wr);
        });
        let mut sink = vec![0u8; 64 << 10];
        while rd.read(&mut sink).await.unwrap_or(0) > 0 {}
    });
    let layer = WsProxyLayer::new(upstream(up))
        .max_frame_size(64 << 20)
        .max_message_size(64 << 20)
        .max_lifetime(Duration::from_secs(2))
        .max_lifetime_jitter(0.0)
        .close_timeout(Duration::from_secs(5));
    let proxy = proxy(layer).await;
    let (status, _, mut tcp, mut pending) =
        raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101);
    // Not reading: the proxy's writes to the client back up. Then a ping.
    tokio::time::sleep(Duration::from_millis(700)).await;
    tcp.write_all(&client_frame(0x89, b"")).await.unwrap();
    // The session's lifetime ends meanwhile.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    // Now read: the data, then (maybe a pong, then) the proxy's close.
    loop {
        let Some((first, _)) = read_any_frame(&mut tcp, &mut pending).await else {
            panic!("the stream ended before the proxy's close frame");
        };
        if first & 0x0f == 0x8 {
            break;
        }
    }
    // Answer as a client would, after a last message of 200 bytes.
    let mut frame = vec![0x82, 0x80 | 126, 0, 200, 1, 2, 3, 4];
    frame.extend(std::iter::repeat_n(0u8, 200));
    tcp.write_all(&frame).await.unwrap();
    tcp.write_all(&client_frame(0x88, b"\x03\xe8"))
        .await
        .unwrap();
    let started = Instant::now();
    let mut rest = Vec::new();
    let _ = within("the end of the client stream", tcp.read_to_end(&mut rest)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        PANICS.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the proxy panicked"
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the client's close answer was not seen"
    );
}

/// Found in review: the client closes; the upstream never answers. The client leg's close
/// handshake is done once the echo is sent, and the proxy (the server there) closes the TCP
/// connection at once, not when the upstream's ending is over (both frame bridges).
#[tokio::test]
async fn the_client_connection_is_closed_after_its_echo_even_while_the_upstream_hangs() {
    for hooked in [true, false] {
        let up = hung_upstream().await;
        let (mut tcp, mut pending) = raw_client(up, hooked).await;
        tcp.write_all(&client_frame(0x88, b"\x03\xe8bye"))
            .await
            .unwrap();
        let started = Instant::now();
        let (op, _) = read_frame(&mut tcp, &mut pending).await;
        assert_eq!(op, 0x8);
        let mut rest = Vec::new();
        let _ = within("client EOF", tcp.read_to_end(&mut rest)).await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "hooks {hooked}: the client's TCP stayed open {:?} after the close handshake",
            started.elapsed()
        );
    }
}

/// Found in review: the client breaks the protocol; the upstream answers its close but keeps
/// its TCP open for 2 s, as a server may. As the upstream's client, the proxy waits for the
/// server to close first, in both frame bridges (up to `close_timeout`).
#[tokio::test]
async fn in_the_relay_the_proxy_waits_for_the_upstream_to_close_tcp() {
    for hooked in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let up = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            assert!(answer_upgrade(&mut tcp).await);
            // Read until a close frame (masked) arrives.
            let mut got = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                let n = tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0);
                got.extend_from_slice(&chunk[..n]);
                if got.len() >= 2 && got[0] == 0x88 && got.len() >= 6 + (got[1] & 0x7f) as usize {
                    break;
                }
            }
            tcp.write_all(&[0x88, 2, 0x03, 0xe9]).await.unwrap();
            let answered = Instant::now();
            let eof = tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut chunk)).await;
            let _ = tx.send((eof.is_ok(), answered.elapsed()));
        });
        let (mut tcp, mut pending) = raw_client(up, hooked).await;
        // An unmasked frame from the client: a protocol error.
        tcp.write_all(&[0x81, 2, b'h', b'i']).await.unwrap();
        let (op, _) = read_frame(&mut tcp, &mut pending).await;
        assert_eq!(op, 0x8);
        drop(tcp);
        let (proxy_closed_first, after) = within("upstream", rx).await.unwrap();
        assert!(
            !proxy_closed_first,
            "hooks {hooked}: the proxy closed the upstream's TCP {after:?} after its answer"
        );
    }
}

/// A raw client through a proxy to `up` (4 s `close_timeout`; the message bridge when
/// `hooked`, else the streaming one), past its 101, with any bytes read past it.
async fn raw_client(up: std::net::SocketAddr, hooked: bool) -> (TcpStream, Vec<u8>) {
    let mut layer = WsProxyLayer::new(upstream(up)).close_timeout(Duration::from_secs(4));
    if hooked {
        layer = layer.on_client_message(|_, _| axum_ws_proxy::hooks::Verdict::Forward);
    }
    let proxy = proxy(layer).await;
    let (status, head, tcp, pending) = raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101, "{head}");
    (tcp, pending)
}
