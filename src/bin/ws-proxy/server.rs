//! The accept loop: HTTP/1.1 and h2c (prior knowledge) on one port, a deadline for request
//! headers, and graceful shutdown of the HTTP side.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use http::header::{HeaderValue, CONNECTION};
use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::Request;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::Service;

/// Largest request head accepted from a client (hyper's minimum is 8 KiB).
const MAX_HEAD: usize = 64 << 10;

/// Serves `app` until `shutdown` resolves, then lets in-flight HTTP requests finish (up to
/// `grace`). Upgraded connections are not HTTP any more: the layer drains those.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    header_timeout: Duration,
    grace: Duration,
    shutdown: impl Future<Output = ()>,
) {
    let (stop_tx, stop_rx) = watch::channel(());
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Small messages must not wait for Nagle's algorithm; the bridge batches writes.
        let _ = tcp.set_nodelay(true);
        let app = app.clone();
        let mut stop = stop_rx.clone();
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                req.extensions_mut()
                    .insert(ConnectInfo::<SocketAddr>(remote));
                let mut app = app.clone();
                async move {
                    if head_size(&req) > MAX_HEAD {
                        return Ok(head_too_large());
                    }
                    app.call(req).await
                }
            });
            let accepted = tokio::time::Instant::now();
            let Ok(h2) = tokio::time::timeout(header_timeout, opens_with_h2_preface(&tcp)).await
            else {
                return; // Nothing decisive within the header deadline.
            };
            // The head's deadline counts from the accept, not from the first byte.
            let header_timeout = header_timeout.saturating_sub(accepted.elapsed());
            if h2 {
                let conn = http2::Builder::new(TokioExecutor::new())
                    .timer(TokioTimer::new())
                    .enable_connect_protocol()
                    .serve_connection(TokioIo::new(tcp), service);
                until_stopped(conn, &mut stop, |c| c.graceful_shutdown()).await;
            } else {
                // hyper gets the socket itself, so an upgraded connection can be downcast back
                // to it and a tunnel can splice it (hyper-util's `auto` builder wraps it).
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .max_buf_size(MAX_HEAD)
                    .serve_connection(TokioIo::new(tcp), service)
                    .with_upgrades();
                until_stopped(conn, &mut stop, |c| c.graceful_shutdown()).await;
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop_tx.send(());
    let drained = tokio::time::timeout(grace, async {
        while connections.join_next().await.is_some() {}
    });
    if drained.await.is_err() {
        tracing::warn!("HTTP connections still open after {grace:?}; closing them");
    }
}

/// Whether the client opened with the HTTP/2 connection preface (h2c with prior knowledge).
/// Peeks, so that whichever protocol serves the connection gets the socket untouched.
async fn opens_with_h2_preface(tcp: &TcpStream) -> bool {
    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let n = match tcp.peek(&mut buf).await {
            Ok(n) => n,
            Err(_) => return false,
        };
        if n == 0 || buf[..n] != PREFACE[..n] {
            return false;
        }
        if n == PREFACE.len() {
            return true;
        }
        // Part of the preface so far: peeking again would return the same bytes at once.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Serves `conn` until it ends, or until shutdown asks it to finish what it is doing.
async fn until_stopped<C: Future>(
    conn: C,
    stop: &mut watch::Receiver<()>,
    graceful_shutdown: fn(Pin<&mut C>),
) {
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        _ = stop.changed() => {
            graceful_shutdown(conn.as_mut());
            let _ = conn.await;
        }
    }
}

/// The request head's size as received, near enough: hyper bounds its buffer only while a head
/// is incomplete, so a large head that arrives in one read would pass.
fn head_size(req: &Request<Incoming>) -> usize {
    let uri = req.uri();
    // Without formatting the URI (this runs for every request): origin-form is path and
    // query; absolute-form adds a scheme and an authority.
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 8);
    let line = req.method().as_str().len() + target + 12;
    let fields: usize = req
        .headers()
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    line + fields
}

fn head_too_large() -> Response<Body> {
    let mut res = Response::new(Body::from(format!(
        "request head larger than {} KiB\n",
        MAX_HEAD >> 10
    )));
    *res.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    res.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    res
}
