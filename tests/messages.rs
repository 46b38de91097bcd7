//! Messages cross unchanged, pings stay per hop, many sessions stay independent, and a slow
//! reader slows its upstream instead of growing the proxy.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum_ws_proxy::WsProxyLayer;
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpSocket;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn text_binary_and_empty_messages_cross_unchanged() {
    let proxy = echo_proxy().await;
    let mut ws = connect(proxy, "/").await;
    let big: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let sent = [
        Message::text("héllo ✓"),
        Message::binary(vec![0u8, 255, 1, 254]),
        Message::text(""),
        Message::binary(Vec::new()),
        Message::binary(big),
    ];
    for m in &sent {
        ws.send(m.clone()).await.unwrap();
    }
    for m in &sent {
        assert_eq!(&next_message(&mut ws).await, m);
    }
}

#[tokio::test]
async fn a_fragmented_client_message_reaches_the_upstream_whole() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"hello "),
        OpCode::Data(Data::Text),
        false,
    )))
    .await
    .unwrap();
    ws.send(Message::Frame(Frame::message(
        Bytes::from_static(b"world"),
        OpCode::Data(Data::Continue),
        true,
    )))
    .await
    .unwrap();
    assert_eq!(seen.next().await, Some(Message::text("hello world")));
    assert_eq!(next_message(&mut ws).await, Message::text("hello world"));
}

#[tokio::test]
async fn a_fragmented_upstream_message_reaches_the_client_whole() {
    let up = tt_upstream(|mut ws: Server| async move {
        for (data, op, fin) in [
            (&b"ab"[..], Data::Binary, false),
            (b"cd", Data::Continue, false),
            (b"ef", Data::Continue, true),
        ] {
            ws.send(Message::Frame(Frame::message(
                Bytes::from_static(data),
                OpCode::Data(op),
                fin,
            )))
            .await
            .unwrap();
        }
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect(proxy, "/").await;
    assert_eq!(
        next_message(&mut ws).await,
        Message::binary(b"abcdef".to_vec())
    );
}

#[tokio::test]
async fn client_pings_are_answered_once_by_the_proxy_and_not_forwarded() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::Ping(Bytes::from_static(b"p1")))
        .await
        .unwrap();
    ws.send(Message::text("marker")).await.unwrap();
    // Everything the client receives up to the marker's echo: exactly one pong.
    let mut got = Vec::new();
    loop {
        let m = within("client messages", ws.next()).await.unwrap().unwrap();
        let done = m == Message::text("marker");
        got.push(m);
        if done {
            break;
        }
    }
    assert_eq!(
        got,
        [
            Message::Pong(Bytes::from_static(b"p1")),
            Message::text("marker")
        ]
    );
    // The upstream saw the marker and no ping.
    assert_eq!(seen.next().await, Some(Message::text("marker")));
    assert!(seen.nothing_more());
}

#[tokio::test]
async fn upstream_pings_are_answered_by_the_proxy_and_not_forwarded() {
    let (tx, mut seen) = mpsc::unbounded_channel();
    let up = tt_upstream(move |mut ws: Server| {
        let tx = tx.clone();
        async move {
            ws.send(Message::Ping(Bytes::from_static(b"u1")))
                .await
                .unwrap();
            ws.send(Message::text("after ping")).await.unwrap();
            while let Some(Ok(m)) = ws.next().await {
                let _ = tx.send(m);
            }
        }
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut ws = connect(proxy, "/").await;
    let first = within("client message", ws.next()).await.unwrap().unwrap();
    assert_eq!(
        first,
        Message::text("after ping"),
        "the ping must not reach the client"
    );
    assert_eq!(
        within("pong", seen.recv()).await.unwrap(),
        Message::Pong(Bytes::from_static(b"u1"))
    );
    ws.send(Message::text("x")).await.unwrap();
    assert_eq!(
        within("upstream message", seen.recv()).await.unwrap(),
        Message::text("x")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_hundred_concurrent_sessions_lose_and_reorder_nothing() {
    const SESSIONS: usize = 300;
    const MESSAGES: usize = 20;
    let proxy = echo_proxy().await;
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        tasks.push(tokio::spawn(async move {
            let mut ws = connect(proxy, &format!("/s/{s}")).await;
            for m in 0..MESSAGES {
                ws.feed(Message::text(format!("{s}:{m}"))).await.unwrap();
            }
            ws.flush().await.unwrap();
            for m in 0..MESSAGES {
                assert_eq!(
                    next_message(&mut ws).await,
                    Message::text(format!("{s}:{m}"))
                );
            }
            assert_eq!(
                close_and_wait(&mut ws, 1000, "done").await,
                Some((1000, "done".into()))
            );
            MESSAGES
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += within("a session", t).await.unwrap();
    }
    assert_eq!(total, SESSIONS * MESSAGES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_slows_the_upstream_and_loses_nothing() {
    const MSG: usize = 64 << 10;
    const COUNT: u64 = 768; // 48 MiB in all
                            // Kernel buffers on the proxy's two sockets plus the proxy's own (one message and a write
                            // buffer per direction) hold a few MiB; unbounded buffering would take all 48.
    const BOUND: u64 = 256; // 16 MiB
                            // The upstream pushes numbered 64 KiB messages as fast as it can; small kernel buffers on
                            // the test's own sockets make the proxy's share of the buffering visible.
    let sent = Arc::new(AtomicU64::new(0));
    let listener = {
        let s = TcpSocket::new_v4().unwrap();
        s.set_send_buffer_size(64 << 10).unwrap();
        s.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        s.listen(64).unwrap()
    };
    let counter = sent.clone();
    let up = tt_upstream_on(listener, move |mut ws: Server| {
        let counter = counter.clone();
        async move {
            for i in 0..COUNT {
                let mut payload = vec![(i % 251) as u8; MSG];
                payload[..8].copy_from_slice(&i.to_be_bytes());
                if ws.send(Message::binary(payload)).await.is_err() {
                    return;
                }
                counter.fetch_add(1, Ordering::SeqCst);
            }
            while let Some(Ok(_)) = ws.next().await {}
        }
    });
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(64 << 10).unwrap();
    let tcp = socket.connect(proxy).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{proxy}/"), tcp)
        .await
        .unwrap();

    // The client reads nothing; wait until the upstream can no longer make progress. A stall is
    // the absence of an event, so this one wait polls.
    let mut last = u64::MAX;
    let stalled_at = loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = sent.load(Ordering::SeqCst);
        if now == last {
            break now;
        }
        last = now;
    };
    let stalled_mib = (stalled_at * MSG as u64) >> 20;
    println!(
        "upstream stalled after {stalled_at} messages ({stalled_mib} MiB of {} MiB)",
        (COUNT * MSG as u64) >> 20
    );
    assert!(
        stalled_at < BOUND,
        "the proxy buffered without bound: {stalled_mib} MiB went out unread"
    );

    // Resume: every message arrives, in order, intact.
    for i in 0..COUNT {
        let Message::Binary(data) = next_message(&mut ws).await else {
            panic!("expected binary")
        };
        assert_eq!(data.len(), MSG);
        assert_eq!(
            u64::from_be_bytes(data[..8].try_into().unwrap()),
            i,
            "out of order"
        );
        assert!(
            data[8..].iter().all(|b| *b == (i % 251) as u8),
            "message {i} corrupted"
        );
    }
    assert_eq!(sent.load(Ordering::SeqCst), COUNT);
}

/// Sizes on both sides of the proxy's own frame writer (8 KiB and up) and of each length form
/// (126 = 16-bit, 127 = 64-bit), mixed with small messages and pings, sent as one burst. The
/// upstream (a tungstenite server) rejects unmasked frames and the client rejects masked ones,
/// so a wrong header or mask fails the test as surely as a wrong byte.
#[tokio::test]
async fn large_and_small_messages_cross_intact_and_in_order_both_ways() {
    let proxy = echo_proxy().await;
    let mut ws = connect(proxy, "/").await;
    let bytes = |len: usize, seed: u8| -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    };
    let text = |len: usize| -> String { "é✓a".chars().cycle().take(len).collect() };
    let mut sent = Vec::new();
    for (i, len) in [8191, 8192, 65_535, 65_536, 300_000, 2 << 20]
        .into_iter()
        .enumerate()
    {
        sent.push(Message::binary(bytes(len, i as u8)));
        sent.push(Message::text(format!("small {i}")));
        sent.push(Message::text(text(len / 3)));
        sent.push(Message::binary(bytes(3, i as u8)));
    }
    // Everything goes out before anything is read back: the echoes meet the client's own
    // writes on the same sockets.
    for m in &sent {
        ws.feed(m.clone()).await.unwrap();
        ws.feed(Message::Ping(Bytes::from_static(b"p")))
            .await
            .unwrap();
    }
    ws.flush().await.unwrap();
    let mut received = Vec::new();
    while received.len() < sent.len() {
        match within("the echoes", ws.next()).await {
            Some(Ok(Message::Pong(p))) => assert_eq!(&p[..], b"p"),
            Some(Ok(m)) => received.push(m),
            other => panic!("expected an echo, got {other:?}"),
        }
    }
    for (i, (got, want)) in received.iter().zip(&sent).enumerate() {
        assert!(got == want, "message {i} ({} bytes) changed", want.len());
    }
}

/// A client that stops reading while a large echo is being written to it, then pings: the pong
/// waits behind the frame instead of landing in the middle of it.
#[tokio::test]
async fn a_pong_waits_behind_a_large_frame_still_being_written() {
    let proxy = echo_proxy().await;
    let mut ws = connect(proxy, "/").await;
    // Far more than the socket buffers hold, so the proxy's write stalls part-way.
    let big: Vec<u8> = (0..16_000_000u32).map(|i| (i % 253) as u8).collect();
    ws.send(Message::binary(big.clone())).await.unwrap();
    ws.send(Message::Ping(Bytes::from_static(b"mid-frame")))
        .await
        .unwrap();
    ws.send(Message::text("after")).await.unwrap();
    let mut pong = false;
    let mut data = Vec::new();
    while data.len() < 2 {
        match within("the echoes", ws.next()).await {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"mid-frame");
                pong = true;
            }
            Some(Ok(m)) => data.push(m),
            other => panic!("expected an echo or a pong, got {other:?}"),
        }
    }
    assert!(data[0] == Message::binary(big), "the large echo changed");
    assert_eq!(data[1], Message::text("after"));
    assert!(pong, "the ping was not answered");
}
