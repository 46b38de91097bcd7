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

/// Found in review: a read holding the end of a large frame, a ping and a message, while the
/// upstream takes bytes slowly. The large frame's end is written only in part, the ping is
/// answered, and the message after it must wait behind that part (it was written over it).
/// The upstream's buffers are filled first, and eight such groups follow, so that some read
/// ends a frame with more than the upstream has room for, wherever the reads fall.
#[tokio::test]
async fn a_message_after_a_ping_waits_behind_a_frame_the_upstream_has_not_taken() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let payload = |len: usize, seed: usize| -> Vec<u8> {
        (0..len).map(|i| ((i + seed) % 251) as u8).collect()
    };
    let mut sent = vec![(0x2, payload(12 << 20, 0))];
    for group in 0..8 {
        sent.push((0x2, payload(300 << 10, group + 1)));
        sent.push((0x1, format!("after {group}").into_bytes()));
    }
    // An upstream that reads 16 KiB a millisecond until it has the last text message, then
    // hands back every byte it got.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let (tx, got) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut tcp, _) = listener.accept().await.unwrap();
        assert!(answer_upgrade(&mut tcp).await);
        let (mut bytes, mut next_frame, mut texts) = (Vec::new(), 0, 0);
        let mut chunk = vec![0u8; 16 << 10];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap();
            assert!(
                n > 0,
                "the proxy closed the upstream after {} bytes",
                bytes.len()
            );
            bytes.extend_from_slice(&chunk[..n]);
            // Frame by frame, as far as the bytes go: done at the last text frame's end.
            while let Some((first, len, head_len)) = bytes.get(next_frame..).and_then(frame_at) {
                let end = next_frame + head_len + len;
                if end > bytes.len() {
                    break;
                }
                next_frame = end;
                texts += usize::from(first == 0x81);
                if texts == 8 {
                    let _ = tx.send(bytes);
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, _, tcp, mut pending) =
        raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101);
    let (mut rd, mut wr) = tcp.into_split();
    // One write: the large frame, then each group's frame, a ping and a text message.
    let mut frames = masked(0x82, &sent[0].1);
    for (group, pair) in sent[1..].chunks(2).enumerate() {
        frames.extend_from_slice(&masked(0x82, &pair[0].1));
        frames.extend_from_slice(&client_frame(0x89, &[group as u8]));
        frames.extend_from_slice(&masked(0x81, &pair[1].1));
    }
    tokio::spawn(async move {
        wr.write_all(&frames).await.unwrap();
        // The client's side stays open: its end would close the session.
        std::future::pending::<()>().await;
        drop(wr);
    });
    let bytes = within("the upstream's bytes", got).await.unwrap();
    // The upstream's frames, unmasked, as messages (a large one arrives in pieces).
    let (mut at, mut messages, mut current) = (0, Vec::new(), None::<(u8, Vec<u8>)>);
    while let Some((first, len, head_len)) = bytes.get(at..).and_then(frame_at) {
        let mask = &bytes[at + head_len - 4..at + head_len];
        let payload = &bytes[at + head_len..at + head_len + len];
        let message = current.get_or_insert_with(|| (first & 0x0f, Vec::new()));
        message
            .1
            .extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        if first & 0x80 != 0 {
            messages.extend(current.take());
        }
        at += head_len + len;
    }
    let summary: Vec<(u8, usize)> = messages.iter().map(|(op, m)| (*op, m.len())).collect();
    assert_eq!(messages.len(), sent.len(), "{summary:?}");
    for (i, (got, want)) in messages.iter().zip(&sent).enumerate() {
        assert!(got == want, "message {i} changed: {summary:?}");
    }
    // And the client got its eight pongs, in order.
    let mut chunk = [0u8; 64];
    while pending.len() < 8 * 3 {
        let n = within("the pongs", rd.read(&mut chunk)).await.unwrap();
        assert!(n > 0, "the proxy closed the client");
        pending.extend_from_slice(&chunk[..n]);
    }
    for group in 0..8u8 {
        let at = usize::from(group) * 3;
        assert_eq!(&pending[at..at + 3], &[0x8a, 0x01, group]);
    }
}

/// A masked client frame of any size.
fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
    let key = [0x21, 0x43, 0x65, 0x87];
    let mut frame = vec![first];
    match payload.len() {
        n if n < 126 => frame.push(0x80 | n as u8),
        n if n <= 0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&key);
    frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    frame
}

/// A masked frame's first byte, payload length and header length (mask key included), when
/// its header is all in `bytes` (its payload need not be).
fn frame_at(bytes: &[u8]) -> Option<(u8, usize, usize)> {
    let second = *bytes.get(1)?;
    let (len, ext) = match second & 0x7f {
        126 => (
            u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            2,
        ),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 8),
        n => (u64::from(n), 0),
    };
    let head_len = 2 + ext + 4;
    (bytes.len() >= head_len).then_some((bytes[0], len as usize, head_len))
}
