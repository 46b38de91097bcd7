//! `ws-proxy --proxy-protocol`: behind an L4 load balancer the PROXY header's address is the
//! client's; a connection without a valid header is closed without being served.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;

use axum::extract::ws::{Message as AxMessage, WebSocketUpgrade};
use axum::Router;
use common::*;
use http::HeaderMap;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// An upstream that sends the `X-Forwarded-For` it was given as its first message.
async fn xff_upstream() -> SocketAddr {
    let app = Router::new().fallback(|headers: HeaderMap, ws: WebSocketUpgrade| async move {
        let xff = headers
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        ws.on_upgrade(move |mut socket| async move {
            let _ = socket.send(AxMessage::text(xff)).await;
        })
    });
    serve(app).await
}

/// Sends `prefix` (in two writes, split at `split`) and then an upgrade request; returns the
/// status and the first text message.
async fn through(proxy: SocketAddr, prefix: &[u8], split: usize) -> (u16, String) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&prefix[..split]).await.unwrap();
    tcp.flush().await.unwrap();
    tokio::task::yield_now().await;
    tcp.write_all(&prefix[split..]).await.unwrap();
    tcp.write_all(upgrade_request(proxy, "/", &[]).as_bytes())
        .await
        .unwrap();
    let head = within("the answer", read_head(&mut tcp))
        .await
        .expect("an answer");
    let status: u16 = head[9..12].parse().unwrap();
    let mut pending = Vec::new();
    let (_, payload) = within("the first message", read_frame(&mut tcp, &mut pending)).await;
    (status, String::from_utf8(payload).unwrap())
}

async fn start() -> (tokio::process::Child, SocketAddr) {
    let up = xff_upstream().await;
    let (child, proxy, _) = start_ws_proxy(&[
        "--upstream",
        &format!("ws://{up}"),
        "--proxy-protocol",
        "--header-timeout",
        "1s",
    ])
    .await;
    (child, proxy)
}

#[tokio::test]
async fn a_v1_header_names_the_client() {
    let (_child, proxy) = start().await;
    let header = b"PROXY TCP4 198.51.100.7 10.0.0.1 50000 8080\r\n";
    assert_eq!(
        through(proxy, header, 10).await,
        (101, "198.51.100.7".into())
    );
}

#[tokio::test]
async fn a_v2_header_names_the_client() {
    let (_child, proxy) = start().await;
    let client: SocketAddr = "[2001:db8::7]:443".parse().unwrap();
    let header = ppp::v2::Builder::with_addresses(
        ppp::v2::Version::Two | ppp::v2::Command::Proxy,
        ppp::v2::Protocol::Stream,
        (client, "[2001:db8::1]:8080".parse::<SocketAddr>().unwrap()),
    )
    .write_tlv(ppp::v2::Type::NoOp, &[0; 20])
    .unwrap()
    .build()
    .unwrap();
    assert_eq!(
        through(proxy, &header, 5).await,
        (101, "2001:db8::7".into())
    );
}

/// A load balancer's health check (v2 LOCAL, v1 UNKNOWN) is served as the TCP peer.
#[tokio::test]
async fn local_and_unknown_headers_keep_the_peer() {
    let (_child, proxy) = start().await;
    assert_eq!(
        through(proxy, b"PROXY UNKNOWN\r\n", 3).await,
        (101, "127.0.0.1".into())
    );
    let local = ppp::v2::Builder::new(
        ppp::v2::Version::Two | ppp::v2::Command::Local,
        ppp::v2::AddressFamily::Unspecified | ppp::v2::Protocol::Unspecified,
    )
    .build()
    .unwrap();
    assert_eq!(through(proxy, &local, 16).await, (101, "127.0.0.1".into()));
}

/// Without a header (a client that bypassed the balancer), with a broken one, or with one
/// that never ends: closed, nothing served.
#[tokio::test]
async fn connections_without_a_valid_header_are_closed_unserved() {
    let (_child, proxy) = start().await;
    for prefix in [
        &b""[..],
        b"PROXY TCP4 not-an-address 10.0.0.1 1 2\r\n",
        b"PROXY TCP4 198.51.100.7 10.0.0.1 50000",
    ] {
        let mut tcp = TcpStream::connect(proxy).await.unwrap();
        // The proxy may close (or reset) as soon as it has seen an invalid header, so a write
        // after it can fail: what counts is that nothing is ever answered.
        let _ = tcp.write_all(prefix).await;
        if !prefix.ends_with(b"50000") {
            let _ = tcp
                .write_all(upgrade_request(proxy, "/", &[]).as_bytes())
                .await;
        }
        let mut got = Vec::new();
        // Closed (a reset counts) at the header deadline at the latest, with nothing sent.
        let _ = within("the close", tcp.read_to_end(&mut got)).await;
        assert!(got.is_empty(), "served {:?}", String::from_utf8_lossy(&got));
    }
}
