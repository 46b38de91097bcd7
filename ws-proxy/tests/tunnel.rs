//! Tunnel mode: bytes spliced after a validated 101, with the proxy's own frames (pings,
//! close 1001/1011) placed between frames.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use axum_ws_proxy::WsProxyLayer;
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

fn close(code: u16, reason: &str) -> Message {
    Message::Close(Some(CloseFrame {
        code: code.into(),
        reason: reason.into(),
    }))
}

#[tokio::test]
async fn messages_and_close_codes_cross_a_tunnel() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).tunnel()).await;
    let mut ws = connect(proxy, "/").await;
    let big = Message::binary(vec![7u8; 300_000]);
    for m in [
        Message::text("héllo"),
        Message::binary(vec![1, 2, 3]),
        Message::text(""),
        big.clone(),
    ] {
        ws.send(m.clone()).await.unwrap();
        assert_eq!(next_message(&mut ws).await, m);
        assert_eq!(seen.next().await, Some(m));
    }
    assert_eq!(
        close_and_wait(&mut ws, 4001, "tunnel bye").await,
        Some((4001, "tunnel bye".into()))
    );
    assert_eq!(seen.next().await, Some(close(4001, "tunnel bye")));
    assert_eq!(seen.next().await, None);
}

/// A hand-written upstream: accepts the upgrade with `extensions` in its 101, then sends
/// `frame` raw and reports what it reads.
async fn raw_tunnel_upstream(
    extensions: &'static str,
    frame: &'static [u8],
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let head = read_head(&mut tcp).await.unwrap();
        assert_eq!(
            head_header(&head, "sec-websocket-extensions").as_deref(),
            Some("permessage-deflate; client_max_window_bits")
        );
        let accept = accept_for(&head);
        let res = format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: {accept}\r\nsec-websocket-extensions: {extensions}\r\n\r\n");
        tcp.write_all(res.as_bytes()).await.unwrap();
        tcp.write_all(frame).await.unwrap();
        let mut sink = [0u8; 1024];
        while tcp.read(&mut sink).await.unwrap_or(0) > 0 {}
    });
    addr
}

#[tokio::test]
async fn extensions_and_their_frames_pass_end_to_end() {
    // A compressed text frame ("Hello" deflated, RSV1 set): a frame bridge would refuse it.
    const DEFLATED: &[u8] = &[0xc1, 0x07, 0xf2, 0x48, 0xcd, 0xc9, 0xc9, 0x07, 0x00];
    let up = raw_tunnel_upstream("permessage-deflate", DEFLATED).await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).tunnel()).await;
    let req = upgrade_request(
        proxy,
        "/",
        &["sec-websocket-extensions: permessage-deflate; client_max_window_bits"],
    );
    let (status, head, mut tcp, mut rest) = raw_exchange(proxy, &req).await;
    assert_eq!(status, 101, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("sec-websocket-extensions: permessage-deflate\r\n"),
        "{head}"
    );
    while rest.len() < DEFLATED.len() {
        let mut b = [0u8; 64];
        let n = within("the compressed frame", tcp.read(&mut b))
            .await
            .unwrap();
        rest.extend_from_slice(&b[..n]);
    }
    assert_eq!(
        &rest[..DEFLATED.len()],
        DEFLATED,
        "bytes must pass unchanged"
    );
}

#[tokio::test]
async fn a_forged_101_never_opens_a_tunnel() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        let mut b = [0u8; 2048];
        let _ = tcp.read(&mut b).await;
        let forged = "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\nsec-websocket-accept: Zm9yZ2VkIGFjY2VwdCBrZXk=\r\n\r\n";
        tcp.write_all(forged.as_bytes()).await.unwrap();
        let _ = tcp.read(&mut b).await;
    });
    let proxy = proxy(WsProxyLayer::new(upstream(up)).tunnel()).await;
    let (status, _, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(&body).contains("Sec-WebSocket-Accept does not match"),
        "{body:?}"
    );
}

#[tokio::test]
async fn an_upstream_dropping_gives_the_client_1011_through_a_tunnel() {
    let up = tt_upstream(|mut ws: Server| async move {
        ws.send(Message::text("about to crash")).await.unwrap();
        drop(ws);
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).tunnel()).await;
    let mut ws = connect(proxy, "/").await;
    assert_eq!(next_message(&mut ws).await, Message::text("about to crash"));
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1011, "upstream went away without a close frame")
            )
        }
        other => panic!("expected close 1011, got {other:?}"),
    }
}

#[tokio::test]
async fn a_client_dropping_gives_the_upstream_1001_through_a_tunnel() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).tunnel()).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::text("hi")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("hi"));
    assert_eq!(seen.next().await, Some(Message::text("hi")));
    drop(ws);
    assert_eq!(
        seen.next().await,
        Some(close(1001, "client went away without a close frame"))
    );
}

#[tokio::test]
async fn shutdown_closes_tunnels_with_1012_to_the_client_and_1001_upstream() {
    let (up, mut seen) = reporting_upstream().await;
    let layer = WsProxyLayer::new(upstream(up)).tunnel();
    let handle = layer.shutdown_handle();
    let proxy = proxy(layer).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("x"));
    let draining = tokio::spawn(async move { handle.shutdown(Duration::from_secs(5)).await });
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(
            (u16::from(f.code), f.reason.as_str()),
            (1012, "proxy draining, reconnect")
        ),
        other => panic!("expected close 1012, got {other:?}"),
    }
    while let Some(Ok(_)) = within("the close handshake", ws.next()).await {}
    assert_eq!(seen.next().await, Some(Message::text("x")));
    assert_eq!(
        seen.next().await,
        Some(close(1001, "proxy draining, reconnect"))
    );
    assert_eq!(within("the drain", draining).await.unwrap(), 0);
}

#[tokio::test]
async fn tunnels_get_keepalive_pings_between_frames() {
    let (up, mut seen) = reporting_upstream().await;
    let layer = WsProxyLayer::new(upstream(up))
        .tunnel()
        .ping_interval(Duration::from_millis(50));
    let proxy = proxy(layer).await;
    let mut ws = connect(proxy, "/").await;
    match within("a ping", ws.next()).await {
        Some(Ok(Message::Ping(p))) => assert_eq!(&p[..], b"axum-ws-proxy"),
        other => panic!("expected a ping, got {other:?}"),
    }
    match seen.next().await {
        Some(Message::Ping(p)) => assert_eq!(p, Bytes::from_static(b"axum-ws-proxy")),
        other => panic!("expected the upstream to be pinged, got {other:?}"),
    }
    // Data still flows in order around the pings.
    for i in 0..20 {
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text(format!("{i}")));
    }
}

#[tokio::test]
async fn a_client_that_keeps_its_socket_after_the_close_does_not_hold_the_tunnel() {
    let layer = WsProxyLayer::new(upstream(echo_upstream().await))
        .tunnel()
        .close_timeout(Duration::from_millis(200));
    let handle = layer.shutdown_handle();
    let proxy = proxy(layer).await;
    let mut ws = connect(proxy, "/").await;
    assert_eq!(
        close_and_wait(&mut ws, 1000, "").await,
        Some((1000, String::new()))
    );
    // `ws` is still held: its socket stays open. The session must end anyway.
    within("the tunnel to end", async {
        while handle.live_sessions() > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    drop(ws);
}

#[tokio::test]
async fn a_tunnel_upstream_that_stops_answering_pings_gives_the_client_1011() {
    let up = hung_upstream().await;
    let layer = WsProxyLayer::new(upstream(up))
        .tunnel()
        .ping_interval(Duration::from_millis(50))
        .ping_timeout(Duration::from_millis(150));
    let proxy = proxy(layer).await;
    let mut ws = connect(proxy, "/").await;
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(
            (u16::from(f.code), f.reason.as_str()),
            (1011, "upstream did not answer a ping within 150ms")
        ),
        other => panic!("expected close 1011, got {other:?}"),
    }
}

/// The proxy's `ws_proxy_spliced_bytes_total`, from its metrics endpoint.
async fn spliced_bytes(metrics: std::net::SocketAddr) -> f64 {
    let (_, _, body) = http_request(metrics, "/metrics", &[]).await;
    String::from_utf8_lossy(&body)
        .lines()
        .find_map(|l| l.strip_prefix("ws_proxy_spliced_bytes_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// `ws-proxy` hands hyper the socket itself, so both legs of its tunnels are plain sockets and
/// large payloads are spliced. Every byte must still arrive, in order, with the proxy's pings
/// placed between frames (a 20 ms interval keeps them coming).
#[tokio::test]
async fn the_binary_splices_large_payloads_and_keeps_every_byte() {
    let up = echo_upstream().await;
    let (_child, addr, metrics) = start_ws_proxy(&[
        "--upstream",
        &format!("ws://{up}"),
        "--mode",
        "tunnel",
        "--ping-interval",
        "20ms",
        "--metrics-listen",
        "127.0.0.1:0",
    ])
    .await;
    let metrics = metrics.expect("the metrics address");
    let mut ws = connect(addr, "/").await;
    let mut sent = Vec::new();
    let mut large = 0;
    for i in 0..6u32 {
        let bytes: Vec<u8> = (0..(1 << 20) + i * 7919)
            .map(|b| (b % 241) as u8 ^ i as u8)
            .collect();
        large += bytes.len();
        sent.push(Message::binary(bytes));
        sent.push(Message::text(format!("small {i}")));
        let text: String = "splicé✓".chars().cycle().take(100_000).collect();
        large += text.len();
        sent.push(Message::text(text));
    }
    for m in &sent {
        ws.feed(m.clone()).await.unwrap();
    }
    ws.flush().await.unwrap();
    for (i, want) in sent.iter().enumerate() {
        let got = next_message(&mut ws).await;
        assert!(&got == want, "message {i} ({} bytes) changed", want.len());
    }
    // Each large payload crossed twice (there and back); all but the first frame each way
    // (read whole before the tunnel knew frames were large) should have been spliced.
    let spliced = spliced_bytes(metrics).await;
    assert!(
        spliced >= large as f64,
        "only {spliced} of {} large-payload bytes were spliced",
        2 * large
    );
}

/// A client that stops reading: spliced bytes wait in the session's pipe (and the sockets'
/// buffers), the upstream is held back, and once the client reads, all of it arrives in order.
#[tokio::test]
async fn a_spliced_tunnel_to_a_paused_reader_loses_and_reorders_nothing() {
    const COUNT: usize = 24; // 24 MiB: more than the socket buffers and the pipe hold
    let (progress_tx, mut progress) = tokio::sync::mpsc::unbounded_channel();
    let up = tt_upstream(move |mut ws| {
        let progress = progress_tx.clone();
        async move {
            for i in 0..COUNT {
                let payload = vec![i as u8; 1 << 20];
                if ws.send(Message::binary(payload)).await.is_err() {
                    return;
                }
                let _ = progress.send(i);
            }
            let _ = ws.send(Message::text("done")).await;
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
    let (_child, addr, _) =
        start_ws_proxy(&["--upstream", &format!("ws://{up}"), "--mode", "tunnel"]).await;
    let mut ws = connect(addr, "/").await;
    // Read nothing until the upstream has got a few messages out: the rest is then queued
    // somewhere between it and this client.
    for _ in 0..4 {
        within("the upstream's progress", progress.recv()).await;
    }
    for i in 0..COUNT {
        match next_message(&mut ws).await {
            Message::Binary(b) => {
                assert_eq!(b.len(), 1 << 20, "message {i}");
                assert!(b.iter().all(|&x| x == i as u8), "message {i} changed");
            }
            other => panic!("message {i}: expected binary, got {other:?}"),
        }
    }
    assert_eq!(next_message(&mut ws).await, Message::text("done"));
}
