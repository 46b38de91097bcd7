//! Origin checks, session limits and graceful shutdown.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum_ws_proxy::{upstream::UpstreamPool, WsProxyLayer};
use common::*;
use futures_util::StreamExt;
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

fn upgrade_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut h = UPGRADE_HEADERS.to_vec();
    h.extend_from_slice(extra);
    h
}

/// An echo upstream that counts the sessions it accepted.
async fn counting_upstream() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let addr = tt_upstream(move |mut ws: Server| {
        c.fetch_add(1, Ordering::SeqCst);
        async move {
            while let Some(Ok(m)) = ws.next().await {
                if m.is_text() {
                    let _ = futures_util::SinkExt::send(&mut ws, m).await;
                }
            }
        }
    })
    .await;
    (addr, count)
}

#[tokio::test]
async fn a_foreign_origin_is_403_before_the_upstream_is_contacted() {
    // Dialling this closed port would be a 502: a 403 shows the check came first.
    let layer = WsProxyLayer::new(upstream(closed_port().await))
        .allowed_origins(["https://app.example.com", "https://*.example.org"]);
    let proxy = proxy(layer).await;
    let (status, _, body) = http_request(
        proxy,
        "/",
        &upgrade_with(&[("origin", "https://evil.example")]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        &body[..],
        b"origin \"https://evil.example\" is not allowed\n"
    );
}

#[tokio::test]
async fn allowed_exact_and_wildcard_origins_pass() {
    let layer = WsProxyLayer::new(upstream(echo_upstream().await))
        .allowed_origins(["https://app.example.com", "https://*.example.org"]);
    let proxy = proxy(layer).await;
    for origin in ["https://app.example.com", "https://eu.chat.example.org"] {
        let mut ws = connect_with(proxy, "/", &[("origin", origin)]).await;
        futures_util::SinkExt::send(&mut ws, Message::text(origin))
            .await
            .unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text(origin));
    }
}

#[tokio::test]
async fn a_missing_origin_is_allowed_unless_required() {
    let up = upstream(echo_upstream().await);
    let lenient =
        proxy(WsProxyLayer::new(up.clone()).allowed_origins(["https://app.example.com"])).await;
    let (status, ..) = raw_exchange(lenient, &upgrade_request(lenient, "/", &[])).await;
    assert_eq!(status, 101);
    let strict = proxy(
        WsProxyLayer::new(up)
            .allowed_origins(["https://app.example.com"])
            .allow_missing_origin(false),
    )
    .await;
    let (status, _, body) = http_request(strict, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(&body[..], b"an Origin header is required\n");
}

/// `allow_missing_origin(false)` alone does what it says (before: without `allowed_origins` it
/// was silently ignored): any origin passes, none does not.
#[tokio::test]
async fn an_origin_can_be_required_without_listing_origins() {
    let layer = WsProxyLayer::new(upstream(echo_upstream().await)).allow_missing_origin(false);
    let proxy = proxy(layer).await;
    let (status, _, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(&body[..], b"an Origin header is required\n");
    let mut ws = connect_with(proxy, "/", &[("origin", "https://anything.example")]).await;
    futures_util::SinkExt::send(&mut ws, Message::text("in"))
        .await
        .unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("in"));
}

#[tokio::test]
async fn max_sessions_is_503_with_retry_after_and_no_dial() {
    let (up, accepted) = counting_upstream().await;
    let layer = WsProxyLayer::new(upstream(up)).max_sessions(2);
    let handle = layer.shutdown_handle();
    let proxy = proxy(layer).await;
    let mut first = connect(proxy, "/").await;
    let _second = connect(proxy, "/").await;
    let (status, headers, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_retry_after(&headers);
    assert_eq!(&body[..], b"the proxy is at its limit of 2 sessions\n");
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        2,
        "the third upgrade must not be dialled"
    );

    close_and_wait(&mut first, 1000, "").await;
    within("the slot to free up", async {
        while handle.live_sessions() > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let _third = connect(proxy, "/").await;
    assert_eq!(accepted.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_per_member_limit_skips_full_members_then_503s() {
    let (a, b) = (echo_upstream().await, echo_upstream().await);
    let pool = UpstreamPool::from_urls([format!("ws://{a}"), format!("ws://{b}")])
        .unwrap()
        .max_sessions(1);
    let proxy = proxy(WsProxyLayer::new(pool.clone())).await;
    let _s1 = connect(proxy, "/").await;
    let _s2 = connect(proxy, "/").await;
    assert!(
        pool.status().iter().all(|s| s.live_sessions == 1),
        "one on each member"
    );
    let (status, headers, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_retry_after(&headers);
    assert_eq!(
        &body[..],
        b"every upstream member is at its limit of 1 sessions\n"
    );
}

#[tokio::test]
async fn shutdown_closes_every_session_with_1012_and_refuses_new_ones() {
    let (up, mut seen) = reporting_upstream().await;
    let layer = WsProxyLayer::new(upstream(up));
    let handle = layer.shutdown_handle();
    let proxy = proxy(layer).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(proxy, "/").await);
    }
    assert_eq!(handle.live_sessions(), 3);

    let draining = tokio::spawn({
        let handle = handle.clone();
        async move { handle.shutdown(Duration::from_secs(5)).await }
    });
    for ws in &mut clients {
        match next_message(ws).await {
            Message::Close(Some(f)) => {
                assert_eq!(
                    (u16::from(f.code), f.reason.as_str()),
                    (1012, "proxy draining, reconnect")
                )
            }
            other => panic!("expected close 1012, got {other:?}"),
        }
        // Reading on answers the close; the stream then ends.
        while let Some(Ok(_)) = within("the close handshake", ws.next()).await {}
    }
    for _ in 0..3 {
        match seen.next().await {
            Some(Message::Close(Some(f))) => assert_eq!(
                (u16::from(f.code), f.reason.as_str()),
                (1001, "proxy draining, reconnect")
            ),
            other => panic!("expected close 1001 upstream, got {other:?}"),
        }
        assert_eq!(seen.next().await, None);
    }
    assert_eq!(
        within("the drain", draining).await.unwrap(),
        0,
        "all closed in time"
    );
    assert_eq!(handle.live_sessions(), 0);

    let (status, headers, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_retry_after(&headers);
    assert_eq!(&body[..], b"the proxy is shutting down; retry elsewhere\n");
}

#[tokio::test]
async fn shutdown_drops_sessions_that_do_not_close_by_the_deadline() {
    let (up, mut seen) = reporting_upstream().await;
    let layer = WsProxyLayer::new(upstream(up)).close_timeout(Duration::from_secs(30));
    let handle = layer.shutdown_handle();
    let proxy = proxy(layer).await;
    // A raw client that never reads, so never answers the close frame.
    let (status, _, _silent, _) = raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101);
    within("the session to start", async {
        while handle.live_sessions() == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    let started = Instant::now();
    let dropped = within("the drain", handle.shutdown(Duration::from_millis(300))).await;
    let took = started.elapsed();
    assert_eq!(dropped, 1);
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(handle.live_sessions(), 0);
    match seen.next().await {
        Some(Message::Close(Some(f))) => assert_eq!(u16::from(f.code), 1001),
        other => panic!("expected close 1001 upstream, got {other:?}"),
    }
}

/// A 503's `Retry-After` with the default spread: whole seconds from 1 to 5.
fn assert_retry_after(headers: &http::HeaderMap) {
    let value = headers["retry-after"].to_str().unwrap();
    let secs: u64 = value
        .parse()
        .unwrap_or_else(|_| panic!("Retry-After {value:?}"));
    assert!((1..=5).contains(&secs), "Retry-After {secs} outside 1..=5");
}

/// The clients refused in one burst are told to come back at different times; with no
/// spread, all at the same one.
#[tokio::test]
async fn retry_after_is_spread_over_its_range() {
    let up = echo_upstream().await;
    for (layer, least, most, distinct) in [
        (WsProxyLayer::new(upstream(up)).max_sessions(1), 1, 5, 3),
        (
            WsProxyLayer::new(upstream(up))
                .max_sessions(1)
                .retry_after(Duration::from_secs(2), Duration::ZERO),
            2,
            2,
            1,
        ),
    ] {
        let proxy = proxy(layer).await;
        let _held = connect(proxy, "/").await;
        let mut seen = std::collections::BTreeMap::new();
        for _ in 0..40 {
            let (status, headers, _) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            let secs: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
            *seen.entry(secs).or_insert(0) += 1;
        }
        let (lo, hi) = (*seen.keys().next().unwrap(), *seen.keys().last().unwrap());
        assert!(
            lo >= least && hi <= most,
            "{seen:?} outside {least}..={most}"
        );
        assert!(
            seen.len() >= distinct,
            "{seen:?}: fewer than {distinct} values"
        );
        if distinct == 1 {
            assert_eq!(seen.len(), 1, "{seen:?}");
        }
    }
}

/// With pacing, a burst of upgrades gets the burst and then the steady rate; the rest are 503
/// with a spread `Retry-After`, before any dial.
#[tokio::test]
async fn upgrades_past_the_rate_are_503_until_the_pace_allows() {
    let (up, accepted) = counting_upstream().await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).max_upgrade_rate(20, 5)).await;
    let started = Instant::now();
    let mut admitted = 0;
    for _ in 0..30 {
        let (status, headers, body) = http_request(proxy, "/", &UPGRADE_HEADERS).await;
        if status == StatusCode::SWITCHING_PROTOCOLS {
            admitted += 1;
        } else {
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
            assert_retry_after(&headers);
            assert_eq!(
                &body[..],
                b"the proxy takes new sessions at 20 a second; try again shortly\n"
            );
        }
    }
    // The burst, plus what the rate refilled while the requests ran.
    let refilled = (started.elapsed().as_secs_f64() * 20.0).ceil() as usize;
    assert!(
        (5..=5 + refilled).contains(&admitted),
        "{admitted} admitted in {:?}",
        started.elapsed()
    );
    assert_eq!(
        accepted.load(Ordering::SeqCst),
        admitted,
        "refusals never dial"
    );
}
