//! Keepalive pings and session timers, with short intervals so the tests stay quick.

mod common;

use std::time::{Duration, Instant};

use axum_ws_proxy::WsProxyLayer;
use bytes::Bytes;
use common::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

const PING: &[u8] = b"axum-ws-proxy";

fn fast(layer: WsProxyLayer) -> WsProxyLayer {
    layer
        .ping_interval(Duration::from_millis(50))
        .ping_timeout(Duration::from_millis(150))
}

#[tokio::test]
async fn quiet_healthy_sessions_are_pinged_and_live_on() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(fast(WsProxyLayer::new(upstream(up)))).await;
    let mut ws = connect(proxy, "/").await;
    // Stay quiet (but read, so pings get answered) for several ping timeouts.
    let mut pings = 0;
    let quiet = tokio::time::timeout(Duration::from_millis(600), async {
        while let Some(Ok(m)) = ws.next().await {
            assert_eq!(
                m,
                Message::Ping(Bytes::from_static(PING)),
                "only pings while quiet"
            );
            pings += 1;
        }
    })
    .await;
    assert!(quiet.is_err(), "the session ended while quiet");
    assert!(pings >= 4, "expected pings every 50 ms, got {pings}");
    ws.send(Message::text("still alive")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("still alive"));
    // The upstream was pinged too, and answered.
    let mut upstream_pings = 0;
    while let Some(m) = seen.next().await {
        match m {
            Message::Ping(p) => {
                assert_eq!(&p[..], PING);
                upstream_pings += 1;
            }
            Message::Text(t) => {
                assert_eq!(t.as_str(), "still alive");
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(upstream_pings >= 4, "upstream pings: {upstream_pings}");
}

#[tokio::test]
async fn a_client_that_stops_answering_is_dropped_and_the_upstream_gets_1001() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy = proxy(fast(WsProxyLayer::new(upstream(up)))).await;
    // A raw client that completes the handshake, then never reads: its pings go unanswered.
    let started = Instant::now();
    let (status, _, _tcp, _) = raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101);
    let close = loop {
        match seen.next().await {
            Some(Message::Ping(_)) => continue,
            Some(Message::Close(Some(f))) => break (u16::from(f.code), f.reason.to_string()),
            other => panic!("expected a close, got {other:?}"),
        }
    };
    assert_eq!(
        close,
        (1001, "client did not answer a ping within 150ms".into())
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn an_upstream_that_stops_answering_gives_the_client_1011() {
    let proxy = proxy(fast(WsProxyLayer::new(upstream(hung_upstream().await)))).await;
    let mut ws = connect(proxy, "/").await;
    let started = Instant::now();
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(u16::from(f.code), 1011);
            assert_eq!(
                f.reason.as_str(),
                "upstream did not answer a ping within 150ms"
            );
        }
        other => panic!("expected close 1011, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn keepalive_can_be_turned_off() {
    let proxy =
        proxy(WsProxyLayer::new(upstream(hung_upstream().await)).ping_interval(Duration::ZERO))
            .await;
    let mut ws = connect(proxy, "/").await;
    // With keepalive off nothing ends the session on its own.
    let waited = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(waited.is_err(), "the session ended: {waited:?}");
}

#[tokio::test]
async fn idle_timeout_closes_with_1001_on_both_legs() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy =
        proxy(WsProxyLayer::new(upstream(up)).idle_timeout(Duration::from_millis(200))).await;
    let mut ws = connect(proxy, "/").await;
    // Data resets the clock.
    for i in 0..3 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        ws.send(Message::text(format!("{i}"))).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text(format!("{i}")));
    }
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => assert_eq!(
            (u16::from(f.code), f.reason.as_str()),
            (1001, "idle timeout")
        ),
        other => panic!("expected close 1001, got {other:?}"),
    }
    for i in 0..3 {
        assert_eq!(seen.next().await, Some(Message::text(format!("{i}"))));
    }
    match seen.next().await {
        Some(Message::Close(Some(f))) => assert_eq!(
            (u16::from(f.code), f.reason.as_str()),
            (1001, "idle timeout")
        ),
        other => panic!("expected close 1001 upstream, got {other:?}"),
    }
}

#[tokio::test]
async fn max_lifetime_closes_with_1001_on_both_legs() {
    let (up, mut seen) = reporting_upstream().await;
    let proxy =
        proxy(WsProxyLayer::new(upstream(up)).max_lifetime(Duration::from_millis(200))).await;
    let mut ws = connect(proxy, "/").await;
    let started = Instant::now();
    match next_message(&mut ws).await {
        Message::Close(Some(f)) => {
            assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1001, "session lifetime reached")
            )
        }
        other => panic!("expected close 1001, got {other:?}"),
    }
    assert!(started.elapsed() >= Duration::from_millis(150));
    match seen.next().await {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001 upstream, got {other:?}"),
    }
}

/// Opens `n` sessions at once and returns, for each, how long after its handshake the first
/// frame `pick` accepts arrived.
async fn times_until(
    proxy: std::net::SocketAddr,
    n: usize,
    pick: fn(&Message) -> bool,
) -> Vec<Duration> {
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            tokio::spawn(async move {
                let mut ws = connect(proxy, "/").await;
                let opened = Instant::now();
                loop {
                    // Pings too: `next_message` skips them.
                    let m = match within("a frame", ws.next()).await {
                        Some(Ok(m)) => m,
                        other => panic!("expected a frame, got {other:?}"),
                    };
                    if pick(&m) {
                        return (opened.elapsed(), m);
                    }
                }
            })
        })
        .collect();
    let mut times = Vec::new();
    for task in tasks {
        let (elapsed, m) = task.await.unwrap();
        if let Message::Close(frame) = &m {
            let code = frame.as_ref().map(|f| u16::from(f.code));
            assert_eq!(code, Some(1001), "{m:?}");
        }
        times.push(elapsed);
    }
    times.sort();
    times
}

/// Sessions opened together end spread over `max_lifetime_jitter`, none after `max_lifetime`.
#[tokio::test]
async fn max_lifetime_ends_are_spread_and_never_late() {
    let lifetime = Duration::from_millis(800);
    let layer = WsProxyLayer::new(upstream(echo_upstream().await))
        .ping_interval(Duration::ZERO)
        .max_lifetime(lifetime)
        .max_lifetime_jitter(0.5);
    let ends = times_until(proxy(layer).await, 20, |m| matches!(m, Message::Close(_))).await;
    let (first, last) = (ends[0], ends[ends.len() - 1]);
    // The client's clock starts after the proxy's: a session can only look younger.
    assert!(
        last <= lifetime + Duration::from_millis(100),
        "late: {ends:?}"
    );
    assert!(
        first >= lifetime / 2 - Duration::from_millis(50),
        "too early: {ends:?}"
    );
    assert!(
        last - first >= Duration::from_millis(150),
        "not spread: {ends:?}"
    );
}

/// The first pings of sessions opened together come spread over the second half of
/// `ping_interval`, not in one burst.
#[tokio::test]
async fn first_pings_of_a_burst_are_spread() {
    let every = Duration::from_millis(600);
    let layer = WsProxyLayer::new(upstream(echo_upstream().await)).ping_interval(every);
    let pings = times_until(proxy(layer).await, 20, |m| matches!(m, Message::Ping(_))).await;
    let (first, last) = (pings[0], pings[pings.len() - 1]);
    assert!(
        first >= every / 2 - Duration::from_millis(50),
        "too early: {pings:?}"
    );
    assert!(
        last <= every + Duration::from_millis(100),
        "late: {pings:?}"
    );
    assert!(
        last - first >= Duration::from_millis(100),
        "not spread: {pings:?}"
    );
}
