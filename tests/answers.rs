//! The upstream's answer and every failure before the 101.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Router;
use axum_ws_proxy::WsProxyLayer;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// A hand-written upstream: reads the request head, answers `answer(key)`, holds the socket.
async fn raw_upstream(answer: fn(&str) -> String) -> SocketAddr {
    scripted_upstream(move |key| answer(key).into_bytes(), false).await
}

/// Reads each request head and writes `answer(key)`; then holds the socket until the proxy
/// closes it, or (`close`) closes its side at once (a body that ends with the connection).
async fn scripted_upstream<F>(answer: F, close: bool) -> SocketAddr
where
    F: Fn(&str) -> Vec<u8> + Copy + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Some(head) = read_head(&mut tcp).await else {
                    return;
                };
                let key = head_header(&head, "sec-websocket-key").unwrap_or_default();
                let _ = tcp.write_all(&answer(&key)).await;
                if close {
                    let _ = tcp.shutdown().await;
                    return;
                }
                let mut sink = [0u8; 1024];
                while tcp.read(&mut sink).await.unwrap_or(0) > 0 {}
            });
        }
    });
    addr
}

async fn upgrade_via_hyper(proxy: SocketAddr) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    http_request(proxy, "/", &UPGRADE_HEADERS).await
}

#[tokio::test]
async fn an_upstream_403_is_relayed_with_its_headers_and_body() {
    let up = Router::new().fallback(|| async {
        (
            StatusCode::FORBIDDEN,
            [
                ("www-authenticate", "Bearer realm=\"chat\""),
                ("x-reason", "token"),
            ],
            "forbidden: bad token",
        )
            .into_response()
    });
    let proxy = proxy(WsProxyLayer::new(upstream(serve(up).await))).await;
    let (status, headers, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"chat\"");
    assert_eq!(headers["x-reason"], "token");
    assert_eq!(&body[..], b"forbidden: bad token");
    assert!(!headers.contains_key("upgrade"));
}

#[tokio::test]
async fn a_relayed_body_is_cut_at_max_response_body_size() {
    let up = Router::new().fallback(|| async { (StatusCode::NOT_FOUND, "x".repeat(100_000)) });
    let proxy =
        proxy(WsProxyLayer::new(upstream(serve(up).await)).max_response_body_size(1000)).await;
    let (status, headers, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body.len(), 1000);
    assert_eq!(headers["content-length"], "1000");
}

#[tokio::test]
async fn a_refused_connection_is_502() {
    let proxy = proxy(WsProxyLayer::new(upstream(closed_port().await))).await;
    let (status, _, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("refused the connection"), "{body}");
}

#[tokio::test]
async fn an_unresolvable_host_is_502() {
    let proxy = proxy(WsProxyLayer::new(
        "ws://no-such-host.invalid:80".parse().unwrap(),
    ))
    .await;
    let (status, _, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.contains("\"no-such-host.invalid\" did not resolve"),
        "{body}"
    );
}

#[tokio::test]
async fn a_silent_upstream_is_504_after_the_connect_timeout() {
    // Accepts TCP, never answers the upgrade.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = listener.accept().await {
            held.push(tcp);
        }
    });
    let proxy =
        proxy(WsProxyLayer::new(upstream(up)).connect_timeout(Duration::from_millis(300))).await;
    let started = Instant::now();
    let (status, _, body) = upgrade_via_hyper(proxy).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT);
    assert!(
        String::from_utf8_lossy(&body).contains("within 300ms"),
        "{body:?}"
    );
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn an_upstream_closing_without_an_answer_is_502() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            let mut b = [0u8; 1024];
            let _ = tcp.read(&mut b).await;
            drop(tcp);
        }
    });
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, _, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(&body).contains("broke the handshake"),
        "{body:?}"
    );
}

fn switching(accept: &str, extra: &str) -> String {
    format!("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: {accept}\r\n{extra}\r\n")
}

async fn assert_502_for(answer: fn(&str) -> String, why: &str) {
    assert_502_from(raw_upstream(answer).await, why).await;
}

async fn assert_502_from(up: SocketAddr, why: &str) {
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, _, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains(why), "{body}");
}

#[tokio::test]
async fn a_101_with_a_wrong_accept_is_502_and_opens_nothing() {
    assert_502_for(
        |_| switching("AAAAAAAAAAAAAAAAAAAAAAAAAAA=", ""),
        "Sec-WebSocket-Accept does not match",
    )
    .await;
}

#[tokio::test]
async fn a_101_without_upgrade_websocket_is_502() {
    assert_502_for(
        |_| {
            "HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n".into()
        },
        "no `Upgrade: websocket`",
    )
    .await;
}

/// An axum upstream whose otherwise valid 101 also carries `name: value`.
async fn upstream_adding_to_101(name: &'static str, value: &'static str) -> SocketAddr {
    use axum::extract::ws::WebSocketUpgrade;
    let up = Router::new().fallback(move |ws: WebSocketUpgrade| async move {
        let mut res = ws.on_upgrade(echo);
        res.headers_mut().insert(name, value.parse().unwrap());
        res
    });
    serve(up).await
}

#[tokio::test]
async fn a_subprotocol_the_client_did_not_offer_is_502() {
    let up = upstream_adding_to_101("sec-websocket-protocol", "admin").await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let mut headers = UPGRADE_HEADERS.to_vec();
    headers.push(("sec-websocket-protocol", "chat"));
    let (status, _, body) = http_request(proxy, "/", &headers).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("subprotocol was not offered"), "{body}");
}

#[tokio::test]
async fn an_extension_that_was_not_offered_is_502() {
    let up = upstream_adding_to_101("sec-websocket-extensions", "permessage-deflate").await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, _, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(&body);
    assert!(body.contains("extension was accepted"), "{body}");
}

#[tokio::test]
async fn an_unsupported_version_is_426_before_any_upstream_is_dialled() {
    // The upstream port is closed: dialling it would give 502, so 426 proves the order.
    let proxy = proxy(WsProxyLayer::new(upstream(closed_port().await))).await;
    let headers = [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-version", "8"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let (status, h, body) = http_request(proxy, "/", &headers).await;
    assert_eq!(status, StatusCode::UPGRADE_REQUIRED);
    assert_eq!(h["sec-websocket-version"], "13");
    assert!(
        String::from_utf8_lossy(&body).contains("Sec-WebSocket-Version"),
        "{body:?}"
    );
}

#[tokio::test]
async fn a_missing_key_is_400() {
    let proxy = proxy(WsProxyLayer::new(upstream(closed_port().await))).await;
    let headers = [
        ("upgrade", "websocket"),
        ("connection", "upgrade"),
        ("sec-websocket-version", "13"),
    ];
    let (status, _, body) = http_request(proxy, "/", &headers).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        String::from_utf8_lossy(&body).contains("Sec-WebSocket-Key"),
        "{body:?}"
    );
}

#[tokio::test]
async fn a_valid_hand_written_101_opens_the_session() {
    // The control for the refusals above: the same upstream with a correct answer works.
    let proxy = proxy(WsProxyLayer::new(upstream(
        raw_upstream(|key| switching(&derive_accept_key(key.as_bytes()), "")).await,
    )))
    .await;
    let (status, head, ..) = raw_exchange(proxy, &upgrade_request(proxy, "/", &[])).await;
    assert_eq!(status, 101, "{head}");
}

#[tokio::test]
async fn an_oversized_upstream_answer_head_is_502() {
    // 100 KiB of headers in the answer: past the proxy's 64 KiB bound for an answer head.
    let up = raw_upstream(|_| {
        let mut head = String::from("HTTP/1.1 403 Forbidden\r\n");
        // Two long headers: the size bound refuses them, not hyper's limit on their count.
        for i in 0..2 {
            head.push_str(&format!("x-filler-{i}: {}\r\n", "y".repeat(50 << 10)));
        }
        head.push_str("content-length: 0\r\n\r\n");
        head
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, _, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(
        String::from_utf8_lossy(&body).contains("answer head is larger than 64 KiB"),
        "{body:?}"
    );
}

/// A layer outside the proxy sees why an upgrade failed: the response carries the
/// `ProxyError` in its extensions (here a closed upstream port: `connect`, 502).
#[tokio::test]
async fn an_outer_layer_sees_the_proxy_error() {
    use std::sync::Arc;
    let layer = WsProxyLayer::new(upstream(closed_port().await));
    let app = Router::new()
        .layer(layer)
        .layer(axum::middleware::map_response(
            |mut res: axum::response::Response| async move {
                let cause = res
                    .extensions()
                    .get::<Arc<axum_ws_proxy::ProxyError>>()
                    .map_or("none", |e| e.cause());
                res.headers_mut()
                    .insert("x-cause", http::HeaderValue::from_static(cause));
                res
            },
        ));
    let proxy = serve(app).await;
    let (status, headers, _) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(headers["x-cause"], "connect");
}

/// An upstream that answers `answer` and then closes its side.
async fn closing_upstream(answer: fn(&str) -> String) -> SocketAddr {
    scripted_upstream(move |key| answer(key).into_bytes(), true).await
}

#[tokio::test]
async fn a_chunked_refusal_is_relayed_whole() {
    let up = raw_upstream(|_| {
        "HTTP/1.1 401 Unauthorized\r\ntransfer-encoding: chunked\r\nx-reason: token\r\n\r\n\
         5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nx-trailer: t\r\n\r\n"
            .into()
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, headers, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(headers["x-reason"], "token");
    assert_eq!(&body[..], b"hello, world");
    assert!(
        !headers.contains_key("transfer-encoding") || headers["transfer-encoding"] == "chunked"
    );
}

#[tokio::test]
async fn a_chunked_refusal_is_cut_at_max_response_body_size() {
    let up = raw_upstream(|_| {
        let mut answer =
            String::from("HTTP/1.1 404 Not Found\r\ntransfer-encoding: chunked\r\n\r\n");
        for _ in 0..100 {
            answer.push_str("a\r\n0123456789\r\n");
        }
        answer + "0\r\n\r\n"
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up)).max_response_body_size(25)).await;
    let (status, _, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(&body[..], b"0123456789012345678901234");
}

#[tokio::test]
async fn a_refusal_without_a_length_ends_with_the_connection() {
    let up = closing_upstream(|_| "HTTP/1.1 503 Service Unavailable\r\n\r\ncome back later".into())
        .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, _, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(&body[..], b"come back later");
}

#[tokio::test]
async fn an_informational_answer_before_the_refusal_is_skipped() {
    let up = raw_upstream(|_| {
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\ncontent-length: 2\r\n\r\nno".into()
    })
    .await;
    let proxy = proxy(WsProxyLayer::new(upstream(up))).await;
    let (status, _, body) = upgrade_via_hyper(proxy).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(&body[..], b"no");
}

#[tokio::test]
async fn endless_informational_answers_are_502() {
    // Eight are skipped; the ninth is refused rather than parsed until the dial deadline.
    assert_502_for(
        |_| "HTTP/1.1 100 Continue\r\n\r\n".repeat(9) + "HTTP/1.1 403 Forbidden\r\n\r\n",
        "more than 8 informational answers",
    )
    .await;
}

#[tokio::test]
async fn a_broken_refusal_body_is_502() {
    // A chunk longer than its size says, and a body shorter than its Content-Length.
    assert_502_for(
        |_| {
            "HTTP/1.1 403 Forbidden\r\ntransfer-encoding: chunked\r\n\r\n2\r\nabc\r\n0\r\n\r\n"
                .into()
        },
        "does not end where its size says",
    )
    .await;
    let up =
        closing_upstream(|_| "HTTP/1.1 403 Forbidden\r\ncontent-length: 10\r\n\r\nshort".into())
            .await;
    assert_502_from(up, "in the middle of its answer's body").await;
}

#[tokio::test]
async fn a_malformed_answer_is_502() {
    assert_502_for(|_| "HTTP/1.1 abc Nope\r\n\r\n".into(), "is not HTTP/1.1").await;
}

/// Frames the upstream sends in the same write as its 101 are read with the answer's head:
/// they must still reach the client first, in both modes.
#[tokio::test]
async fn frames_sent_with_the_101_reach_the_client() {
    for tunnel in [false, true] {
        let up = scripted_upstream(
            |key| {
                let mut answer = switching(&derive_accept_key(key.as_bytes()), "").into_bytes();
                answer.extend_from_slice(b"\x81\x05early");
                answer
            },
            false,
        )
        .await;
        let layer = WsProxyLayer::new(upstream(up));
        let proxy = proxy(if tunnel { layer.tunnel() } else { layer }).await;
        let mut ws = connect(proxy, "/").await;
        let got = next_message(&mut ws).await;
        assert_eq!(
            got.into_text().unwrap().as_str(),
            "early",
            "tunnel: {tunnel}"
        );
    }
}
