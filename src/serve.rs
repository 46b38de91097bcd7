//! The server a connection arrives at (feature `serve`), for apps that want what `ws-proxy`
//! gets: splicing tunnels, a request-head deadline and bound, the client address, h2c and
//! PROXY protocol. [`serve()`] is a drop-in for `axum::serve`.
//!
//! ```no_run
//! use std::time::Duration;
//! use axum::{routing::get, Router};
//! use axum_ws_proxy::WsProxyLayer;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let app = Router::new()
//!     .route("/api/health", get(|| async { "ok" }))
//!     .layer(WsProxyLayer::new("ws://127.0.0.1:3000".parse()?));
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! axum_ws_proxy::serve(listener, app)
//!     .header_timeout(Duration::from_secs(5))
//!     .await?;
//! # Ok(()) }
//! ```

use std::convert::Infallible;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE};
use http::{Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt;

use self::app::{App, BoxApp};
use self::streams::{OpenBody, Streams};
use crate::registry::ShutdownHandle;
use crate::transport::Transport;

mod app;
pub(crate) mod direct;
pub(crate) mod proxy_header;
mod streams;
#[cfg(feature = "tls")]
pub(crate) mod tls;
pub use self::app::{AppMarker, IntoApp, MakeAppMarker};
pub(crate) use self::direct::head_size;
pub use self::direct::DirectUpgrades;
#[cfg(feature = "tls")]
pub(crate) use self::tls::ServerTls;
#[cfg(feature = "tls")]
use crate::transport::TlsInfo;

const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_GRACE: Duration = Duration::from_secs(10);
const DEFAULT_MAX_HEAD: usize = 64 << 10;

type Signal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves `app` on `listener`; `.await` it.
///
/// ```no_run
/// use axum::{routing::get, Router};
/// use axum_ws_proxy::WsProxyLayer;
/// use std::time::Duration;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).tunnel();
/// let sessions = layer.shutdown_handle();
/// let app = Router::new()
///     .route("/api/health", get(|| async { "ok" }))
///     .layer(layer);
///
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// axum_ws_proxy::serve(listener, app)
///     .header_timeout(Duration::from_secs(10))
///     // On shutdown, the WebSocket sessions too: closed with 1012 over half the grace, what
///     // is left dropped at its end.
///     .drain_sessions(sessions, Duration::from_secs(10))
///     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok(); })
///     .await?;
/// # Ok(()) }
/// ```
///
/// [`serve`] is a drop-in for `axum::serve(listener, app.into_make_service_with_connect_info())`:
/// it takes the same make-service, or the app alone (see [`IntoApp`]), and differs where a
/// proxy cares:
///
/// - **Splicing.** hyper's HTTP/1.1 connection gets the socket itself, so an upgraded
///   connection can be taken back as a `TcpStream` and a tunnel moves large payloads with
///   `splice(2)` (see [`WsProxyLayer::tunnel`](crate::WsProxyLayer::tunnel)). `axum::serve`
///   wraps the socket in a private type, so behind it the tunnel copies through a buffer.
/// - **A deadline for the request head** ([`Serve::header_timeout`], 10 s by default, counted
///   from the accept): `axum::serve` sets none, so a client that sends half a head holds a
///   connection forever. On expiry the connection is closed without an answer.
/// - **A bound on the request head** ([`Serve::max_head_size`], 64 KiB): larger heads get
///   `431 Request Header Fields Too Large` and `Connection: close`. hyper bounds its buffer only
///   while a head is incomplete; this also catches a head that arrives in one read. A
///   fragment in the request target (`/path#...`) is not counted: it is dropped, never
///   forwarded, and hyper's read buffer (about 400 KiB) bounds it.
/// - **The client address** is in every request as `ConnectInfo<SocketAddr>`, so the layer
///   appends it to `X-Forwarded-For`.
///
/// HTTP/2 with prior knowledge (h2c, RFC 8441 WebSocket) is served on the same port with the
/// `http2` feature: the first bytes are peeked, never consumed (waiting for more bytes by
/// readiness, never by polling). An HTTP/2 connection must send its preface and its first
/// request within [`Serve::header_timeout`] (a preface alone, half a preface or half a HEADERS
/// block is closed then); with no stream open (a WebSocket stream counts until its session
/// ends) for [`Serve::header_timeout`], as long as an idle HTTP/1.1 connection may wait, it
/// gets GOAWAY, and is closed as soon as the client acknowledges it, or one more
/// `header_timeout` later with still nothing open (a stream opened meanwhile is served, and a
/// WebSocket stream is never cut by this); it gets a PING after 30 s without frames and is closed if that
/// is not answered within 20 s (so dead peers under long WebSocket streams are found); and it
/// may have 128 streams open at once. Accept errors (such as running
/// out of file descriptors) are logged and retried after 50 ms.
///
/// `app` is a `Router` (or any app service), or a make-service as `axum::serve` takes, such as
/// `app.into_make_service_with_connect_info::<SocketAddr>()`: see [`IntoApp`].
pub fn serve<A, M>(listener: TcpListener, app: A) -> Serve
where
    A: IntoApp<M>,
{
    Serve {
        listener,
        app: app.into_app(),
        header_timeout: DEFAULT_HEADER_TIMEOUT,
        max_head: DEFAULT_MAX_HEAD,
        grace: DEFAULT_GRACE,
        backlog: None,
        proxy_protocol: false,
        #[cfg(feature = "tls")]
        tls: None,
        shutdown: None,
        sessions: None,
        direct: None,
    }
}

/// A server being set up; made by [`serve`], run by `.await`.
///
/// ```no_run
/// use std::time::Duration;
/// use axum::Router;
/// use axum_ws_proxy::WsProxyLayer;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let app = Router::new().layer(WsProxyLayer::new("ws://127.0.0.1:3000".parse()?));
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
/// axum_ws_proxy::serve(listener, app)
///     .header_timeout(Duration::from_secs(5))
///     .max_head_size(16 << 10)
///     .listen_backlog(4096)
///     .with_graceful_shutdown(async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await?;
/// # Ok(())
/// # }
/// ```
#[must_use = "a server does nothing until it is awaited"]
pub struct Serve {
    listener: TcpListener,
    app: App,
    header_timeout: Duration,
    max_head: usize,
    grace: Duration,
    backlog: Option<u32>,
    proxy_protocol: bool,
    #[cfg(feature = "tls")]
    tls: Option<ServerTls>,
    shutdown: Option<Signal>,
    /// The layer's sessions, drained on shutdown, and their deadline.
    sessions: Option<(ShutdownHandle, Duration)>,
    direct: Option<DirectUpgrades>,
}

impl std::fmt::Debug for Serve {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("header_timeout", &self.header_timeout)
            .field("max_head_size", &self.max_head)
            .field("grace", &self.grace)
            .field("listen_backlog", &self.backlog)
            .field("proxy_protocol", &self.proxy_protocol)
            .field("graceful_shutdown", &self.shutdown.is_some())
            .field("drain_sessions", &self.sessions.is_some())
            .field("direct_upgrades", &self.direct.is_some())
            .finish_non_exhaustive()
    }
}

impl Serve {
    /// Time a client has, from the accept, to send a whole request head (default 10 s; nginx's
    /// `client_header_timeout` is 60 s). Past it the connection is closed without an answer.
    /// On a keep-alive connection the clock restarts when a response is done, so the next
    /// request's head must come within the same time (an idle connection is closed then, as
    /// nginx's `keepalive_timeout` would).
    pub fn header_timeout(mut self, timeout: Duration) -> Self {
        self.header_timeout = timeout;
        self
    }

    /// Largest request head accepted, request line and fields together (default 64 KiB).
    /// Larger heads get 431 and the connection is closed.
    pub fn max_head_size(mut self, bytes: usize) -> Self {
        self.max_head = bytes;
        self
    }

    /// On shutdown, how long HTTP requests in progress get to finish before their connections
    /// are dropped (default 10 s). Upgraded connections are not HTTP any more: drain them with
    /// the layer's [`ShutdownHandle`](crate::ShutdownHandle). An HTTP/2 connection that
    /// carries the proxy's WebSocket sessions (RFC 8441) is not dropped at the grace: it stays
    /// until those sessions end, as the handle's drain closes them (cutting it would end them
    /// all at once, with 1006).
    pub fn grace(mut self, grace: Duration) -> Self {
        self.grace = grace;
        self
    }

    /// Connections the kernel queues for this server before it accepts them (`listen(2)`'s
    /// backlog; nginx's `listen ... backlog=`, 511 by default there). By default the
    /// listener's own is kept: 1024 for `tokio::net::TcpListener::bind`, 128 for a listener
    /// from `std`. During a reconnect storm every connection past it is dropped or retried by
    /// the client's kernel after a second or more; Linux caps the value at
    /// `net.core.somaxconn` (4096 by default).
    pub fn listen_backlog(mut self, backlog: u32) -> Self {
        self.backlog = Some(backlog);
        self
    }

    /// Every connection starts with a PROXY protocol header, version 1 (text) or 2 (binary),
    /// as an L4 load balancer sends it (HAProxy `send-proxy`, AWS NLB, nginx
    /// `proxy_protocol on`). The address it carries is the client's from then on: in
    /// `ConnectInfo`, so `X-Forwarded-For`, `hash:ip`, hooks and logs see it. A `LOCAL` (v2)
    /// or `UNKNOWN` (v1) header, as load balancers send for health checks, keeps the TCP peer.
    /// A connection whose header is missing, invalid, longer than 4 KiB or not complete
    /// within [`Serve::header_timeout`] is closed without being served. Default: off
    /// (HAProxy's `accept-proxy`; nginx's `listen ... proxy_protocol`).
    ///
    /// ```no_run
    /// # async fn run(app: axum::Router) -> std::io::Result<()> {
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
    /// axum_ws_proxy::serve(listener, app).proxy_protocol(true).await
    /// # }
    /// ```
    pub fn proxy_protocol(mut self, on: bool) -> Self {
        self.proxy_protocol = on;
        self
    }

    /// Serves HTTPS (and `wss://`) instead of plaintext: every connection starts with a TLS
    /// handshake, which must finish within [`Serve::header_timeout`]; ALPN picks HTTP/2 (so
    /// browsers' WebSockets over HTTP/2, RFC 8441) or HTTP/1.1. Requests carry the
    /// handshake's [`TlsInfo`] in their extensions, and the proxy sends
    /// `X-Forwarded-Proto: https`. See [`ServerTls`] for certificates, SNI, client
    /// certificates and rotation. Tunnels over TLS connections do not splice.
    #[cfg(feature = "tls")]
    pub fn tls(mut self, tls: ServerTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// On shutdown, drains the layer's WebSocket sessions as well: `sessions` (from
    /// [`WsProxyLayer::shutdown_handle`](crate::WsProxyLayer::shutdown_handle)) gets
    /// [`ShutdownHandle::shutdown(grace)`](ShutdownHandle::shutdown) when the signal comes:
    /// new upgrades 503, live sessions 1012 one after another over its
    /// [drain window](ShutdownHandle::drain_window), what is left at `grace` dropped. HTTP/2
    /// connections that carry sessions (RFC 8441) are kept past the HTTP requests'
    /// [grace](Self::grace) until their sessions have closed (cutting them would end those
    /// sessions all at once, with 1006); the server's future completes when both are done.
    /// Without it, `serve` leaves sessions to you (call [`ShutdownHandle::shutdown`]) and
    /// closes every connection at its grace.
    pub fn drain_sessions(mut self, sessions: ShutdownHandle, grace: Duration) -> Self {
        self.sessions = Some((sessions, grace));
        self
    }

    /// Takes WebSocket upgrades for `proxy`'s handshake straight off the socket, an opt-in:
    /// on a plain-text HTTP/1.1 connection whose first request is an upgrade, the head is
    /// parsed here (the same parser as hyper's, the same bounds: [header
    /// timeout](Self::header_timeout), [head size](Self::max_head_size), hyper's 100 fields)
    /// and the request goes to `proxy`'s handshake without hyper's connection or the app, which
    /// saves an eighth of the instructions per handshake and 21 of 56 allocations per session
    /// (`BENCHMARKS.md`). The layer checks it as it checks any upgrade. Everything else is served as without it: later requests on the
    /// connection, other requests, HTTP/2, TLS connections, and heads this entry does not take
    /// whole (announcing a body, too large, not parsable), which hyper reads from the bytes
    /// already read. A refused upgrade is answered through hyper as well.
    ///
    /// **What it skips**: whatever the app puts in front of the layer (authentication,
    /// `nest`, `route_layer`, tracing, a `ConnectInfo` of a make-service) for the upgrades it
    /// takes. Use it where the layer is the app's outermost layer, as in `ws-proxy`.
    ///
    /// ```no_run
    /// use axum::Router;
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?);
    /// let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
    /// let app = Router::new().layer(layer.clone());
    /// axum_ws_proxy::serve(listener, app)
    ///     .direct_upgrades(&layer)
    ///     .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub fn direct_upgrades(mut self, proxy: impl Into<DirectUpgrades>) -> Self {
        self.direct = Some(proxy.into());
        self
    }

    /// Stops accepting when `signal` completes, then lets requests in progress finish (up to
    /// [`Serve::grace`]); the server's future completes after that.
    pub fn with_graceful_shutdown<F>(mut self, signal: F) -> Self
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.shutdown = Some(Box::pin(signal));
        self
    }
}

impl IntoFuture for Serve {
    /// Completes only after a graceful shutdown; accept errors are retried, not returned.
    type Output = io::Result<()>;
    type IntoFuture = Pin<Box<dyn Future<Output = io::Result<()>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            if let Some(backlog) = self.backlog {
                // listen(2) again on a listening socket only changes its backlog.
                let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
                socket2::SockRef::from(&self.listener).listen(backlog)?;
            }
            run(self).await
        })
    }
}

async fn run(server: Serve) -> io::Result<()> {
    let Serve {
        listener,
        app,
        header_timeout,
        max_head,
        grace,
        backlog: _,
        proxy_protocol,
        #[cfg(feature = "tls")]
        tls,
        shutdown,
        sessions,
        direct,
    } = server;
    let mut shutdown = shutdown.unwrap_or_else(|| Box::pin(std::future::pending()));
    // Shared: each connection clones the app only when hyper serves it (an upgrade the
    // server's own entry answers needs none), one allocation fewer per handshake.
    let app: app::Shared = Arc::new(std::sync::Mutex::new(app));
    let (stop_tx, stop_rx) = watch::channel(Phase::Serving);
    let mut connections = JoinSet::new();
    loop {
        let (tcp, remote) = tokio::select! {
            () = &mut shutdown => break,
            // Finished connections are freed as they finish, not at the next accept: after a
            // burst, nothing else would free them.
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
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
        let conn = Conn {
            app: Arc::clone(&app),
            remote,
            header_timeout,
            max_head,
            proxy_protocol,
            #[cfg(feature = "tls")]
            tls: tls.clone(),
            direct: direct.clone(),
        };
        // Boxed (in `serve`): a task's future is moved several times as the task is made, run
        // and finished, and this one is kilobytes (hyper's connection, TLS, HTTP/2 states);
        // the copies were a third of the proxy's instructions per handshake (callgrind).
        connections.spawn(conn.serve(tcp, stop_rx.clone()));
    }
    drop(listener);
    let _ = stop_tx.send(Phase::Stopping);
    // The sessions' drain runs beside the connections' (it ends by the same deadline).
    let drained = async {
        match &sessions {
            Some((handle, grace)) => handle.shutdown(*grace).await,
            None => 0,
        }
    };
    let closed = async {
        let in_grace = tokio::time::timeout(grace, async {
            while connections.join_next().await.is_some() {}
        });
        if in_grace.await.is_ok() {
            return;
        }
        if sessions.is_none() {
            tracing::warn!("HTTP connections still open after {grace:?}; closing them");
            connections.shutdown().await;
            return;
        }
        tracing::warn!(
            "HTTP connections still open after {grace:?}; closing those without WebSocket sessions"
        );
        // HTTP/2 connections carrying the proxy's sessions stay until those end: the drain
        // closes them, and drops what is left at its own deadline.
        let _ = stop_tx.send(Phase::PastGrace);
        while connections.join_next().await.is_some() {}
    };
    let (dropped, ()) = tokio::join!(drained, closed);
    if sessions.is_some() {
        tracing::info!(dropped, "sessions drained");
    }
    Ok(())
}

/// A plain connection with the entry on: its first head read here, then answered here (an
/// upgrade) or by hyper, until the connection ends or shutdown asks it to finish.
async fn serve_direct(
    entry: DirectUpgrades,
    mut tcp: TcpStream,
    conn: Unserved,
    accepted: tokio::time::Instant,
    header_timeout: Duration,
    stop: &mut Stop,
) {
    let left = || header_timeout.saturating_sub(accepted.elapsed());
    let buffer = conn.max_head.max(MIN_READ_BUFFER);
    let mut first_byte = accepted;
    let first = tokio::select! {
        biased;
        first = tokio::time::timeout(left(), direct::read_first(&mut tcp, buffer, conn.max_head, &mut first_byte)) => first,
        // As hyper does with a head still arriving when shutdown begins.
        () = stopping(stop) => return,
    };
    let served = match first {
        Ok(Ok(direct::First::Upgrade {
            req,
            kind,
            read,
            head,
        })) => tokio::select! {
            biased;
            served = direct::answer(&entry, tcp, conn.remote, (req, kind, read, head)) => served,
            () = past_grace(stop) => return,
        },
        Ok(Ok(direct::First::Other { read, h2 })) => direct::Served::Hyper {
            io: Transport::Tcp { tcp, pre: read },
            h2,
            answer: None,
        },
        Ok(Ok(direct::First::Nothing)) | Ok(Err(_)) => return,
        Err(_) => {
            tracing::debug!(peer = %conn.remote, "closed: no request head within the header timeout");
            return;
        }
    };
    if let direct::Served::Hyper { io, h2, answer } = served {
        let app = App::for_connection(&conn.app, conn.remote).await;
        let mut service = Handler::new(app, conn.remote, conn.max_head);
        let first = match answer {
            // The refused upgrade is read again by hyper, whose head deadline restarts.
            Some(res) => {
                service.answer_first(res);
                header_timeout
            }
            // As the peeking path does: what was left at the first byte (hyper applies it to
            // every head of the connection).
            None => header_timeout.saturating_sub(first_byte.duration_since(accepted)),
        };
        serve_http(io, h2, service, first, header_timeout, stop).await;
    }
}

/// A plain connection the server's own entry reads first: what its handler is made from, if
/// hyper gets it.
struct Unserved {
    app: app::Shared,
    remote: SocketAddr,
    max_head: usize,
}

/// hyper's read buffer is never smaller than this, whatever the head limit.
const MIN_READ_BUFFER: usize = 8 << 10;

/// Where the server's shutdown is, as each connection sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Serving,
    /// Stop taking requests; finish those in progress.
    Stopping,
    /// The grace is over: close, unless the proxy's sessions are open on the connection.
    PastGrace,
}

type Stop = watch::Receiver<Phase>;

/// Completes once shutdown has begun.
async fn stopping(stop: &mut Stop) {
    if stop.wait_for(|p| *p >= Phase::Stopping).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Completes once the grace is over.
async fn past_grace(stop: &mut Stop) {
    if stop.wait_for(|p| *p >= Phase::PastGrace).await.is_err() {
        // The server is gone: nothing will say so any more.
        std::future::pending::<()>().await;
    }
}

/// One accepted connection.
struct Conn {
    app: app::Shared,
    remote: SocketAddr,
    header_timeout: Duration,
    max_head: usize,
    proxy_protocol: bool,
    #[cfg(feature = "tls")]
    tls: Option<ServerTls>,
    direct: Option<DirectUpgrades>,
}

impl Conn {
    /// Serves the connection. Its future is boxed by the accept loop, so that each kind of
    /// connection costs its own size: one the server's own upgrade entry reads first, or one
    /// hyper (or TLS) takes from the start.
    fn serve(mut self, tcp: TcpStream, mut stop: Stop) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        #[cfg(feature = "tls")]
        let tls = self.tls.is_some();
        #[cfg(not(feature = "tls"))]
        let tls = false;
        match self.direct.take() {
            Some(direct) if !tls => {
                Box::pin(async move { self.serve_with_entry(direct, tcp, &mut stop).await })
            }
            _ => Box::pin(async move { self.serve_hyper(tcp, &mut stop).await }),
        }
    }

    /// The PROXY protocol header, where it is on: the client's address from it, or `None` when
    /// the connection is to be closed (no valid header in time, or the grace ran out).
    async fn proxied(&self, tcp: &mut TcpStream, stop: &mut Stop) -> Option<SocketAddr> {
        if !self.proxy_protocol {
            return Some(self.remote);
        }
        // Each stage before HTTP ends at its deadline, or at the end of the grace.
        let header = tokio::select! {
            biased;
            // Boxed: its buffer is 4 KiB, which inline would enlarge every connection's
            // future, with the protocol off too (5.2 KB against 0.9 KB).
            read = tokio::time::timeout(self.header_timeout, Box::pin(proxy_header::read(tcp))) => read,
            () = past_grace(stop) => return None,
        };
        let remote = self.remote;
        match header {
            Ok(Ok(Some(client))) => Some(client),
            Ok(Ok(None)) => Some(remote), // LOCAL / UNKNOWN: a health check; the peer stays.
            Ok(Err(e)) => {
                tracing::debug!(peer = %remote, "closed: PROXY protocol header: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(peer = %remote, "closed: no PROXY protocol header in time");
                None
            }
        }
    }

    /// A plain connection with the server's own upgrade entry on. The handler is made only
    /// if hyper takes the connection: an upgrade answered here needs none.
    async fn serve_with_entry(self, direct: DirectUpgrades, mut tcp: TcpStream, stop: &mut Stop) {
        let accepted = tokio::time::Instant::now();
        let Some(remote) = self.proxied(&mut tcp, stop).await else {
            return;
        };
        let conn = Unserved {
            app: self.app,
            remote,
            max_head: self.max_head,
        };
        serve_direct(direct, tcp, conn, accepted, self.header_timeout, stop).await;
    }

    /// A connection hyper serves from its first byte (over TLS where that is on).
    async fn serve_hyper(self, mut tcp: TcpStream, stop: &mut Stop) {
        let accepted = tokio::time::Instant::now();
        let Some(remote) = self.proxied(&mut tcp, stop).await else {
            return;
        };
        let Conn {
            app,
            header_timeout,
            max_head,
            #[cfg(feature = "tls")]
            tls,
            ..
        } = self;
        // The head's deadline counts from the accept (PROXY header and TLS handshake included).
        let left = || header_timeout.saturating_sub(accepted.elapsed());
        // Boxed: a TLS handshake's state is kilobytes, and inline it would enlarge every
        // connection's future, plain ones included (each is built, then moved into its box).
        #[cfg(feature = "tls")]
        if let Some(tls) = &tls {
            let conn = Accepted {
                app: App::for_connection(&app, remote).await,
                remote,
                max_head,
                header_timeout,
                left: left(),
            };
            return Box::pin(conn.serve_tls(tcp, tls, stop)).await;
        }
        let service = Handler::new(App::for_connection(&app, remote).await, remote, max_head);
        let peeked = tokio::select! {
            biased;
            peeked = tokio::time::timeout(left(), opens_with_h2_preface(&tcp)) => peeked,
            () = past_grace(stop) => return,
        };
        let Ok(h2) = peeked else {
            return; // Nothing decisive within the header deadline.
        };
        // hyper gets the socket itself, so an upgraded connection can be downcast back to it
        // and a tunnel can splice it.
        serve_http(tcp, h2, service, left(), header_timeout, stop).await;
    }
}

/// A connection past its PROXY header, before its TLS handshake.
#[cfg(feature = "tls")]
struct Accepted {
    app: BoxApp,
    remote: SocketAddr,
    max_head: usize,
    header_timeout: Duration,
    /// What is left of the header timeout.
    left: Duration,
}

#[cfg(feature = "tls")]
impl Accepted {
    async fn serve_tls(self, tcp: TcpStream, tls: &ServerTls, stop: &mut Stop) {
        let Accepted {
            app,
            remote,
            max_head,
            header_timeout,
            left,
        } = self;
        let started = tokio::time::Instant::now();
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let handshake = tokio::select! {
            biased;
            done = tokio::time::timeout(left, acceptor.accept(tcp)) => done,
            () = past_grace(stop) => return,
        };
        let stream = match handshake {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                tracing::debug!(peer = %remote, "closed: TLS handshake failed: {e}");
                return;
            }
            Err(_) => {
                tracing::debug!(peer = %remote, "closed: TLS handshake not done in time");
                return;
            }
        };
        let info = self::tls::info(stream.get_ref().1);
        let h2 = info.alpn.as_deref() == Some(b"h2");
        let service = Handler {
            tls: Some(info),
            ..Handler::new(app, remote, max_head)
        };
        let left = left.saturating_sub(started.elapsed());
        serve_http(stream, h2, service, left, header_timeout, stop).await;
    }
}

/// HTTP/2 keepalive: a PING after this long without frames...
#[cfg(feature = "http2")]
const H2_PING_INTERVAL: Duration = Duration::from_secs(30);
/// ...and the connection is closed if the PING is not answered within this.
#[cfg(feature = "http2")]
const H2_PING_TIMEOUT: Duration = Duration::from_secs(20);
/// Streams (WebSocket sessions included) one HTTP/2 connection may have open at once.
#[cfg(feature = "http2")]
const H2_MAX_STREAMS: u32 = 128;

/// Every request of a connection: connect info (and TLS info) in its extensions, the head's
/// size checked, then the app.
#[derive(Clone)]
struct Handler {
    app: BoxApp,
    remote: SocketAddr,
    max_head: usize,
    #[cfg(feature = "tls")]
    tls: Option<TlsInfo>,
    /// Requests being answered now (HTTP/1.1: at most one), and HTTP/2 WebSocket streams.
    streams: std::sync::Arc<Streams>,
    /// The answer to the connection's first request, already made (an upgrade the direct
    /// entry took and the layer refused).
    answer: Option<std::sync::Arc<std::sync::Mutex<Option<Response<Body>>>>>,
}

impl Handler {
    fn new(app: BoxApp, remote: SocketAddr, max_head: usize) -> Self {
        Handler {
            app,
            remote,
            max_head,
            #[cfg(feature = "tls")]
            tls: None,
            streams: Default::default(),
            answer: None,
        }
    }

    fn answer_first(&mut self, res: Response<Body>) {
        self.answer = Some(std::sync::Arc::new(std::sync::Mutex::new(Some(res))));
    }
}

impl hyper::service::Service<Request<Incoming>> for Handler {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        self.streams.first_request();
        req.extensions_mut()
            .insert(ConnectInfo::<SocketAddr>(self.remote));
        #[cfg(feature = "tls")]
        if let Some(info) = &self.tls {
            req.extensions_mut().insert(info.clone());
        }
        let (app, max_head) = (self.app.clone(), self.max_head);
        let open = self.streams.open();
        // An HTTP/2 WebSocket (extended CONNECT) stays open after its answer: the session
        // keeps a stream of the count, so that the connection is not idle while it lives.
        let slot = (req.method() == Method::CONNECT && req.version() == Version::HTTP_2)
            .then(|| self.streams.slot_for_session());
        if let Some(slot) = &slot {
            req.extensions_mut().insert(slot.clone());
        }
        let streams = self.streams.clone();
        // A poisoned lock still holds a valid `Option`.
        let answered =
            (self.answer.as_ref()).and_then(|a| a.lock().unwrap_or_else(|e| e.into_inner()).take());
        Box::pin(async move {
            if head_size(&req) > max_head {
                return Ok(head_too_large(max_head));
            }
            // Readiness first, as tower asks (a Router is always ready).
            let res = match answered {
                Some(res) => res,
                None => app.oneshot(req).await?,
            };
            if let Some(slot) = slot.filter(|_| res.status().is_success()) {
                streams.stream_not_seen(&slot);
            }
            // Open until its body has been sent, not only until its head is ready.
            Ok(res.map(|body| Body::new(OpenBody::new(body, open))))
        })
    }
}

/// HTTP/2 (`h2`: prior knowledge or ALPN) or HTTP/1.1 with upgrades over `io`, until it ends
/// or shutdown asks it to finish.
///
/// `first` is what is left of the header timeout for the first request; `idle` the whole of
/// it, for HTTP/2 connections with no stream open.
///
/// Each protocol's connection is boxed: kilobytes of state that would otherwise make every
/// connection task that large, and be copied each time the task's future moves.
async fn serve_http<I>(
    io: I,
    h2: bool,
    service: Handler,
    first: Duration,
    idle: Duration,
    stop: &mut Stop,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "http2")]
    if h2 {
        return Box::pin(serve_h2(io, service, first, idle, stop)).await;
    }
    #[cfg(not(feature = "http2"))]
    let _ = (h2, idle); // hyper's HTTP/1 parser answers the preface with 400.
    Box::pin(serve_h1(io, service, first, stop)).await
}

#[cfg(feature = "http2")]
async fn serve_h2<I>(io: I, service: Handler, first: Duration, idle: Duration, stop: &mut Stop)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let streams = service.streams.clone();
    let conn = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(TokioTimer::new())
        .enable_connect_protocol()
        // Dead peers under long-lived WebSocket streams are found by PING.
        .keep_alive_interval(Some(H2_PING_INTERVAL))
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .max_concurrent_streams(H2_MAX_STREAMS)
        .serve_connection(TokioIo::new(io), service);
    // The preface and the first request's HEADERS get the same deadline as an HTTP/1.1
    // head: hyper's HTTP/2 server has none, so a half preface or half a HEADERS block
    // would hold the connection forever. After that, a connection with no stream open
    // for as long as an HTTP/1.1 keep-alive connection may idle is closed (GOAWAY).
    let deadlines = async {
        tokio::time::sleep(first).await;
        if !streams.had_a_request() {
            tracing::debug!("closed: no HTTP/2 request within the header timeout");
            return false;
        }
        streams.idle_for(idle).await;
        tracing::debug!("closing an idle HTTP/2 connection");
        true
    };
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopping(stop) => {
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                () = past_grace(stop) => {
                    // The proxy's sessions on it end as its drain closes them.
                    tokio::select! {
                        _ = conn.as_mut() => {}
                        () = streams.sessions_ended() => {}
                    }
                }
            }
        }
        goaway = deadlines => if goaway {
            conn.as_mut().graceful_shutdown();
            // hyper ends the connection once the client answers the PING sent with the GOAWAY,
            // and waits for that answer up to its keep-alive timeout (20 s, after 30 s of
            // silence): a client that never answers would hold its descriptor ~25 times the
            // deadline. It gets `idle` more with nothing open; a stream opened meanwhile (a
            // WebSocket, RFC 8441) is served and never cut by this.
            tokio::select! {
                _ = conn.as_mut() => {}
                () = streams.idle_for(idle) => {
                    tracing::debug!("closed: an idle HTTP/2 connection did not finish after its GOAWAY");
                }
            }
        },
    }
}

async fn serve_h1<I>(io: I, service: Handler, first: Duration, stop: &mut Stop)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (streams, max_head) = (service.streams.clone(), service.max_head);
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(first)
        .max_buf_size(max_head.max(MIN_READ_BUFFER))
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = stopping(stop) => {
            // No request being answered: an idle keep-alive connection or a head still
            // arriving. Close it now rather than wait for the head (up to the grace).
            if streams.none_open() {
                return;
            }
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                _ = conn.as_mut() => {}
                () = past_grace(stop) => {}
            }
        }
    }
}

/// Whether the client opened with the HTTP/2 connection preface (h2c with prior knowledge).
/// Peeks, so that whichever protocol serves the connection gets the socket untouched.
async fn opens_with_h2_preface(tcp: &TcpStream) -> bool {
    use self::direct::PREFACE;
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
        // Part of the preface so far: peeking again would return the same bytes at once, so
        // mark the socket not readable and wait for new bytes (edge-triggered readiness).
        let _ = tcp.try_io(tokio::io::Interest::READABLE, || {
            Err::<(), _>(io::Error::from(io::ErrorKind::WouldBlock))
        });
        if tcp.readable().await.is_err() {
            return false;
        }
    }
}

fn head_too_large(max_head: usize) -> Response<Body> {
    let limit = if max_head % 1024 == 0 {
        format!("{} KiB", max_head >> 10)
    } else {
        format!("{max_head} bytes")
    };
    let mut res = Response::new(Body::from(format!("request head larger than {limit}\n")));
    *res.status_mut() = StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE;
    let headers = res.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("close"));
    // As every error answer of the proxy's.
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    res
}
