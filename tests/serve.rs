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
    echo_large_on(&mut connect(proxy, "/").await, n, size).await;
}

/// Echoes `n` messages of `size` bytes over `ws`, checking every byte, and closes it.
async fn echo_large_on<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, n: usize, size: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for i in 0..n {
        let payload: Vec<u8> = (0..size).map(|b| (b * 7 + i) as u8).collect();
        within("a large send", ws.send(Message::binary(payload.clone())))
            .await
            .unwrap();
        match next_message(ws).await {
            Message::Binary(got) => assert!(got[..] == payload[..], "message {i} changed"),
            other => panic!("expected the echo, got {other:?}"),
        }
    }
    close_and_wait(ws, 1000, "").await;
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

/// An echo upstream that reports each upgrade's `X-Forwarded-For`.
async fn forwarded_for_upstream() -> (SocketAddr, mpsc::UnboundedReceiver<Option<String>>) {
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let upstream_app = Router::new().fallback(move |headers: HeaderMap, ws: WebSocketUpgrade| {
        let forwarded = headers
            .get("x-forwarded-for")
            .map(|v| v.to_str().unwrap_or("").to_owned());
        let _ = seen_tx.send(forwarded);
        async move { ws.on_upgrade(echo) }
    });
    (serve(upstream_app).await, seen)
}

#[tokio::test]
async fn the_layer_gets_the_client_address_for_x_forwarded_for() {
    let (up, mut seen) = forwarded_for_upstream().await;
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

/// The library's server with the direct entry on for `layer`, in front of an app that counts
/// the requests it sees (`/http` answers "inner route").
async fn serve_direct(layer: WsProxyLayer) -> (SocketAddr, Arc<AtomicU64>) {
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    let app = Router::new()
        .route("/http", get(|| async { "inner route" }))
        .layer(axum::middleware::from_fn(
            move |req: axum::extract::Request, next: axum::middleware::Next| {
                count.fetch_add(1, Ordering::Relaxed);
                next.run(req)
            },
        ))
        .layer(layer.clone());
    (serve_direct_app(app, layer).await, seen)
}

/// A raw upgrade for `/` with `host` and `extra` lines, and `after` in the same write.
fn upgrade_then(proxy: SocketAddr, extra: &[&str], after: &[u8]) -> Vec<u8> {
    let mut bytes = upgrade_request(proxy, "/", extra).into_bytes();
    bytes.extend_from_slice(after);
    bytes
}

/// Reads one response head off `tcp`: its status and the bytes read past it.
async fn response_head(tcp: &mut TcpStream, pending: &mut Vec<u8>) -> (u16, String) {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
            pending.drain(..end + 4);
            return (head[9..12].parse().unwrap(), head);
        }
        read_more(tcp, pending, "a response head").await;
    }
}

/// One read's bytes off `tcp` onto `pending`; the peer must not have closed.
async fn read_more(tcp: &mut TcpStream, pending: &mut Vec<u8>, what: &str) {
    let mut chunk = [0u8; 4096];
    let n = within(what, tcp.read(&mut chunk)).await.unwrap();
    assert!(
        n > 0,
        "closed before {what}: {}",
        String::from_utf8_lossy(pending)
    );
    pending.extend_from_slice(&chunk[..n]);
}

#[tokio::test]
async fn a_direct_upgrade_skips_the_app_and_the_session_works() {
    let (proxy, seen) = serve_direct(WsProxyLayer::new(upstream(echo_upstream().await))).await;
    let mut ws = connect(proxy, "/").await;
    ws.send(Message::text("through")).await.unwrap();
    assert_eq!(next_message(&mut ws).await, Message::text("through"));
    assert_eq!(seen.load(Ordering::Relaxed), 0, "the app saw the upgrade");
    close_and_wait(&mut ws, 1000, "").await;
    // Plain HTTP still goes through the app.
    let (status, _, body) = http_request(proxy, "/http", &[]).await;
    assert_eq!((status.as_u16(), &body[..]), (200, &b"inner route"[..]));
    assert_eq!(seen.load(Ordering::Relaxed), 1);
}

/// Frames sent in the same write as the head reach the upstream, in both modes.
#[tokio::test]
async fn frames_sent_with_a_direct_upgrade_head_reach_the_upstream() {
    let echo = echo_upstream().await;
    for layer in [
        WsProxyLayer::new(upstream(echo)),
        WsProxyLayer::new(upstream(echo)).tunnel(),
    ] {
        let (proxy, _) = serve_direct(layer).await;
        let mut early = client_frame(0x81, b"early");
        early.extend(client_frame(0x82, &[1, 2, 3]));
        let mut tcp = TcpStream::connect(proxy).await.unwrap();
        tcp.write_all(&upgrade_then(proxy, &[], &early))
            .await
            .unwrap();
        let mut pending = Vec::new();
        let (status, head) = response_head(&mut tcp, &mut pending).await;
        assert_eq!(status, 101, "{head}");
        assert_eq!(
            read_frame(&mut tcp, &mut pending).await,
            (1, b"early".to_vec())
        );
        assert_eq!(read_frame(&mut tcp, &mut pending).await, (2, vec![1, 2, 3]));
    }
}

/// A keep-alive connection that upgrades on its second request goes through hyper, and a
/// tunnel still splices it (the bytes the entry read first are handed over with the socket).
#[tokio::test]
async fn a_keep_alive_connection_that_upgrades_later_still_splices() {
    let echo = echo_upstream().await;
    let (proxy, seen) = serve_direct(WsProxyLayer::new(upstream(echo)).tunnel()).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    let get = format!("GET /http HTTP/1.1\r\nhost: {proxy}\r\n\r\n");
    tcp.write_all(get.as_bytes()).await.unwrap();
    let mut pending = Vec::new();
    let (status, head) = response_head(&mut tcp, &mut pending).await;
    assert_eq!(status, 200, "{head}");
    let body = b"inner route".len();
    while pending.len() < body {
        read_more(&mut tcp, &mut pending, "the body").await;
    }
    pending.drain(..body);
    let before = spliced();
    tcp.write_all(&upgrade_then(proxy, &[], &[])).await.unwrap();
    let (status, head) = response_head(&mut tcp, &mut pending).await;
    assert_eq!(status, 101, "{head}");
    assert_eq!(
        seen.load(Ordering::Relaxed),
        1,
        "only the GET reached the app"
    );
    assert!(pending.is_empty());
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        tcp,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    const MIB: usize = 1 << 20;
    echo_large_on(&mut ws, 4, MIB).await;
    let moved = spliced() - before;
    assert!(moved >= 6 * MIB as u64, "only {moved} bytes spliced");
}

/// An upgrade the layer refuses is answered through hyper, body and all, and the connection
/// serves its next request.
#[tokio::test]
async fn a_refused_direct_upgrade_is_answered_and_the_connection_goes_on() {
    let layer =
        WsProxyLayer::new(upstream(echo_upstream().await)).allowed_origins(["https://app.example"]);
    let (proxy, seen) = serve_direct(layer).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&upgrade_then(proxy, &["origin: https://evil.example"], &[]))
        .await
        .unwrap();
    let mut pending = Vec::new();
    let (status, head) = response_head(&mut tcp, &mut pending).await;
    assert_eq!(status, 403, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: "),
        "{head}"
    );
    let get = format!("GET /http HTTP/1.1\r\nhost: {proxy}\r\n\r\n");
    tcp.write_all(get.as_bytes()).await.unwrap();
    loop {
        let text = String::from_utf8_lossy(&pending).into_owned();
        if text.contains("inner route") {
            // The refusal's body (naming the cause), then the next request's answer.
            assert!(text.contains("origin"), "{text}");
            assert!(text.contains("HTTP/1.1 200 "), "{text}");
            break;
        }
        read_more(&mut tcp, &mut pending, "the next answer").await;
    }
    assert_eq!(
        seen.load(Ordering::Relaxed),
        1,
        "only the GET reached the app"
    );
}

/// Heads the entry does not take whole are hyper's, answered as without the entry: too
/// large (431), announcing a body (400 from the layer), HTTP/2 with prior knowledge.
#[tokio::test]
async fn heads_the_direct_entry_leaves_are_answered_as_without_it() {
    let (proxy, _) = serve_direct(WsProxyLayer::new(upstream(echo_upstream().await))).await;
    let pad = format!("x-pad: {}", "a".repeat(70_000));
    let answer = until_closed(proxy, &upgrade_then(proxy, &[&pad], &[])).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    let body = upgrade_then(proxy, &["content-length: 5"], b"hello");
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&body).await.unwrap();
    let (status, head) = response_head(&mut tcp, &mut Vec::new()).await;
    assert_eq!(status, 400, "{head}");
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(TcpStream::connect(proxy).await.unwrap()),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(format!("http://{proxy}/http"))
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let res = within("an HTTP/2 answer", h2.send_request(req))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// A client that closes while the upstream is being dialled ends the handshake at once, as
/// through hyper: no 101 or 504 for it a dial timeout later.
#[tokio::test]
async fn a_client_that_leaves_during_a_direct_handshake_ends_it() {
    // An upstream that accepts and never answers: the dial waits for its 101.
    let silent = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = silent.local_addr().unwrap();
    let (accepted_tx, mut accepted) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = silent.accept().await {
            held.push(tcp);
            let _ = accepted_tx.send(());
        }
    });
    let layer = WsProxyLayer::new(upstream(up)).connect_timeout(Duration::from_secs(60));
    let (proxy, _) = serve_direct(layer).await;
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(&upgrade_then(proxy, &[], &[])).await.unwrap();
    within("the upstream dial", accepted.recv()).await.unwrap();
    tcp.shutdown().await.unwrap();
    let mut answer = Vec::new();
    within("the proxy to close", tcp.read_to_end(&mut answer))
        .await
        .unwrap();
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));
}

/// Through either entry, the upstream gets the client in `X-Forwarded-For`, and a routing hook
/// finds it in the request's extensions as `ConnectInfo` (the direct entry puts it there only
/// when a hook may read it).
#[tokio::test]
async fn both_entries_give_the_client_address_to_the_upstream_and_to_hooks() {
    let (up, mut seen) = forwarded_for_upstream().await;
    let (hook_tx, mut hooked) = mpsc::unbounded_channel();
    let routed = WsProxyLayer::new(upstream(up)).route(move |req| {
        let info = req
            .extensions()
            .get::<axum::extract::ConnectInfo<SocketAddr>>()
            .map(|ci| ci.0.ip());
        let _ = hook_tx.send((info, req.client().map(|c| c.ip())));
        Ok(())
    });
    let local = Some(std::net::IpAddr::from([127, 0, 0, 1]));
    for layer in [WsProxyLayer::new(upstream(up)), routed] {
        for proxy in proxy_both(layer).await {
            let mut ws = connect(proxy, "/").await;
            let forwarded = within("the upstream's request", seen.recv()).await.unwrap();
            assert_eq!(forwarded.as_deref(), Some("127.0.0.1"));
            close_and_wait(&mut ws, 1000, "").await;
        }
    }
    for _ in 0..2 {
        let (info, client) = within("the hook", hooked.recv()).await.unwrap();
        assert_eq!((info, client), (local, local));
    }
}
