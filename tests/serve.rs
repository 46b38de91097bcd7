//! `axum_ws_proxy::serve`: the library's server, for apps that want what `ws-proxy` gets.
#![cfg(all(feature = "serve", feature = "metrics"))]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::extract::ws::WebSocketUpgrade;
use axum::routing::get;
use axum::Router;
use axum_ws_proxy::{serve::Serve, WsProxyLayer};
use common::*;
use futures_util::SinkExt;
use http::HeaderMap;
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

/// Counts `ws_proxy_spliced_bytes_total` for this test process; every other metric is dropped.
#[derive(Default)]
struct SplicedBytes(Arc<AtomicU64>);

struct Add(Arc<AtomicU64>);

impl CounterFn for Add {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Ordering::Relaxed);
    }
    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Ordering::Relaxed);
    }
}

impl Recorder for SplicedBytes {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        if key.name() == "ws_proxy_spliced_bytes_total" {
            Counter::from_arc(Arc::new(Add(self.0.clone())))
        } else {
            Counter::noop()
        }
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// Bytes spliced in this process so far.
fn spliced() -> u64 {
    static TOTAL: OnceLock<Arc<AtomicU64>> = OnceLock::new();
    TOTAL
        .get_or_init(|| {
            let recorder = SplicedBytes::default();
            let total = recorder.0.clone();
            metrics::set_global_recorder(recorder).expect("the only recorder in this test");
            total
        })
        .load(Ordering::Relaxed)
}

/// Serves `app` with the library's server on 127.0.0.1:0.
async fn serve_lib(app: Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum_ws_proxy::serve(listener, app).await.unwrap() });
    addr
}

/// A one-route app ("ok" at `/`) served by the library's server as `setup` configures it.
async fn hello(setup: fn(Serve) -> Serve) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "ok" }));
    tokio::spawn(async move { setup(axum_ws_proxy::serve(listener, app)).await.unwrap() });
    addr
}

/// Writes `request` on a fresh connection and reads until the server closes it.
async fn until_closed(addr: SocketAddr, request: &[u8]) -> String {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    within("the server to close", tcp.read_to_end(&mut answer))
        .await
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

fn tunnel_app(upstream_addr: SocketAddr) -> Router {
    Router::new().layer(WsProxyLayer::new(upstream(upstream_addr)).tunnel())
}

/// Echoes `n` messages of `size` bytes through `proxy`, checking every byte.
async fn echo_large(proxy: SocketAddr, n: usize, size: usize) {
    let mut ws = connect(proxy, "/").await;
    for i in 0..n {
        let payload: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
        within("a large send", ws.send(Message::binary(payload.clone())))
            .await
            .unwrap();
        match next_message(&mut ws).await {
            Message::Binary(got) => assert!(got[..] == payload[..], "message {i} changed"),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    close_and_wait(&mut ws, 1000, "").await;
}

#[tokio::test]
async fn a_tunnel_behind_serve_splices_where_axum_serve_copies() {
    let echo = echo_upstream().await;
    const MIB: usize = 1 << 20;

    let before = spliced();
    echo_large(serve(tunnel_app(echo)).await, 4, MIB).await;
    assert_eq!(
        spliced() - before,
        0,
        "axum::serve wraps the socket: nothing to splice"
    );

    let before = spliced();
    echo_large(serve_lib(tunnel_app(echo)).await, 4, MIB).await;
    let moved = spliced() - before;
    // 4 MiB each way; the first frame's start may be read before the tunnel knows it is large.
    assert!(moved >= 6 * MIB as u64, "only {moved} bytes spliced");
}

#[tokio::test]
async fn the_layer_gets_the_client_address_for_x_forwarded_for() {
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let upstream_app = Router::new().fallback(move |headers: HeaderMap, ws: WebSocketUpgrade| {
        let forwarded = headers
            .get("x-forwarded-for")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let _ = seen_tx.send(forwarded);
        async move { ws.on_upgrade(echo) }
    });
    let up = serve(upstream_app).await;
    let proxy = serve_lib(Router::new().layer(WsProxyLayer::new(upstream(up)))).await;
    let mut ws = connect(proxy, "/").await;
    let forwarded = within("the upstream's request", seen.recv()).await.unwrap();
    assert_eq!(forwarded.as_deref(), Some("127.0.0.1"));
    close_and_wait(&mut ws, 1000, "").await;
}

#[tokio::test]
async fn a_head_over_the_bound_gets_431_and_connection_close() {
    let addr = hello(|s| s.max_head_size(4096)).await;
    // Within the bound: served.
    let (status, _, _) = http_request(addr, "/", &[("x-pad", &"a".repeat(3000))]).await;
    assert_eq!(status, 200);
    // Over it, all in one write (hyper alone would take it).
    let request = format!(
        "GET / HTTP/1.1\r\nhost: x\r\nx-pad: {}\r\n\r\n",
        "a".repeat(5000)
    );
    let answer = until_closed(addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: text/plain; charset=utf-8"),
        "{answer}"
    );
    assert!(
        answer.ends_with("request head larger than 4 KiB\n"),
        "{answer}"
    );
}

#[tokio::test]
async fn a_half_sent_head_is_cut_at_the_header_timeout() {
    let addr = hello(|s| s.header_timeout(Duration::from_millis(300))).await;
    // Without a deadline the server would wait for the rest forever.
    let answer = until_closed(addr, b"GET / HTTP/1.1\r\nhost: x\r\n").await;
    assert!(!answer.contains(" 200 "), "{answer}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_at_the_header_timeout() {
    let addr = hello(|s| s.header_timeout(Duration::from_millis(300))).await;
    // One answer, then nothing more: the server closes the idle connection.
    let answer = until_closed(addr, b"GET / HTTP/1.1\r\nhost: x\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{answer}");
}

#[tokio::test]
async fn graceful_shutdown_stops_accepting_and_completes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().route("/", get(|| async { "ok" }));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum_ws_proxy::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    let (status, _, _) = http_request(addr, "/", &[]).await;
    assert_eq!(status, 200);
    stop.send(()).unwrap();
    within("the server to finish", server)
        .await
        .unwrap()
        .unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "still accepting");
}

/// `serve` takes what `axum::serve` takes: a make-service with connect info. The app sees the
/// client address (here the PROXY protocol's client, not the peer), and `.await` compiles.
#[tokio::test]
async fn a_make_service_with_connect_info_gets_each_connections_client() {
    use axum::extract::ConnectInfo;
    let app = Router::new().route(
        "/",
        get(|ConnectInfo(client): ConnectInfo<SocketAddr>| async move { client.to_string() }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let make = app.into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move {
        axum_ws_proxy::serve(listener, make)
            .proxy_protocol(true)
            .await
            .unwrap()
    });
    for client in ["203.0.113.7:4242", "198.51.100.9:80"] {
        let (ip, port) = client.split_once(':').unwrap();
        let request = format!(
            "PROXY TCP4 {ip} 127.0.0.1 {port} 80\r\n\
             GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        );
        let answer = until_closed(addr, request.as_bytes()).await;
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.ends_with(&format!("\r\n\r\n{client}")), "{answer}");
    }
}

/// `into_make_service()` is served too: one app for every connection.
#[tokio::test]
async fn a_make_service_is_served() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let make = Router::new()
        .route("/", get(|| async { "made" }))
        .into_make_service();
    tokio::spawn(async move { axum_ws_proxy::serve(listener, make).await.unwrap() });
    let answer = until_closed(
        addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(answer.ends_with("\r\n\r\nmade"), "{answer}");
}
