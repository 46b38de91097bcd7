//! Step 2: pick an upstream endpoint and dial it, failing over to the next one before the 101.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use tokio::io::{AsyncRead, AsyncWrite};

use crate::config::Config;
use crate::upstream::{Lease, NoPick};
use crate::{Member, ProxyError, UpstreamPool};

/// Largest upstream answer head accepted.
const MAX_ANSWER_HEAD: usize = 64 << 10;

/// An upstream that answered the upgrade request (with a 101 or anything else).
pub(crate) struct Dialed {
    pub(crate) response: Response<Incoming>,
    pub(crate) conn: Connection,
    pub(crate) lease: Lease,
}

/// Dials the pool: picks an endpoint, connects, sends the upgrade request built for that
/// member, and on a failure to connect or to get an answer tries the next endpoint, up to the
/// pool's `max_tries`. Each try's TCP connect gets an equal share of the time left until
/// `deadline`; the caller bounds the whole dial by the deadline (then 504).
pub(crate) async fn dial(
    config: &Config,
    pool: &UpstreamPool,
    key: Option<&[u8]>,
    deadline: Instant,
    request: impl Fn(&Member) -> Request<Empty<Bytes>>,
) -> Result<Dialed, ProxyError> {
    pool.ensure_resolved().await;
    let max_tries = pool.tries();
    let mut tried = Vec::with_capacity(max_tries);
    let mut last = None;
    while tried.len() < max_tries {
        let lease = match pool.pick(key, &tried) {
            Ok(lease) => lease,
            Err(NoPick::Full(max)) => return Err(ProxyError::MembersFull(max)),
            Err(NoPick::Exhausted) => break,
        };
        let endpoint = lease.endpoint().clone();
        tried.push(endpoint.clone());
        let tries_left = (max_tries - tried.len() + 1) as u32;
        let budget = deadline.saturating_duration_since(Instant::now()) / tries_left;
        let attempt = async {
            let tcp = match tokio::time::timeout(budget, connect(endpoint.addr)).await {
                Ok(tcp) => tcp?,
                Err(_) => {
                    return Err(ProxyError::Connect {
                        addr: endpoint.addr,
                        source: io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("no TCP answer within {budget:?}"),
                        ),
                    })
                }
            };
            let upstream = endpoint.member.upstream();
            if upstream.is_tls() {
                let tls = secure(config, upstream.host(), endpoint.addr, tcp).await?;
                send_upgrade(tls, request(&endpoint.member)).await
            } else {
                send_upgrade(tcp, request(&endpoint.member)).await
            }
        };
        match attempt.await {
            Ok((response, conn)) => {
                pool.report(&endpoint, true);
                return Ok(Dialed {
                    response,
                    conn,
                    lease,
                });
            }
            Err(ProxyError::Connect { addr, source }) if is_local(&source) => {
                // The proxy's own shortage, not the upstream's fault: no health penalty, and
                // no point in trying the next member now.
                tracing::warn!(%addr, "cannot dial: local resources exhausted: {source}");
                return Err(ProxyError::LocalResources { source });
            }
            Err(e) => {
                pool.report(&endpoint, false);
                tracing::debug!(member = %endpoint.member.upstream(), addr = %endpoint.addr, "dial failed: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| pool.nothing_to_dial()))
}

/// Errors that say the proxy ran out of something, not that the upstream failed.
fn is_local(e: &io::Error) -> bool {
    // EMFILE, ENFILE (descriptors), ENOMEM, ENOBUFS (memory), EADDRNOTAVAIL (local ports).
    #[cfg(target_os = "linux")]
    const LOCAL: [i32; 5] = [24, 23, 12, 105, 99];
    #[cfg(not(target_os = "linux"))]
    const LOCAL: [i32; 0] = [];
    e.kind() == io::ErrorKind::OutOfMemory || e.raw_os_error().is_some_and(|c| LOCAL.contains(&c))
}

/// Connects to one endpoint. Refused or unreachable: 502 (after any failover).
async fn connect(addr: SocketAddr) -> Result<TcpStream, ProxyError> {
    let tcp = TcpStream::connect(addr)
        .await
        .map_err(|source| ProxyError::Connect { addr, source })?;
    // Messages are batched by the bridge already; Nagle would only add latency.
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// The TLS handshake with a `wss://` member: SNI and verification for its host name.
#[cfg(feature = "tls")]
async fn secure(
    config: &Config,
    host: &str,
    addr: SocketAddr,
    tcp: TcpStream,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ProxyError> {
    let tls = config
        .tls
        .as_ref()
        .unwrap_or_else(|| crate::UpstreamTls::default_shared());
    tls.connect(host, tcp)
        .await
        .map_err(|source| ProxyError::Tls { addr, source })
}

#[cfg(not(feature = "tls"))]
async fn secure(
    _: &Config,
    _: &str,
    _: SocketAddr,
    tcp: TcpStream,
) -> Result<TcpStream, ProxyError> {
    // Unreachable: `wss://` does not parse without the `tls` feature.
    Ok(tcp)
}

/// The HTTP/1.1 connection task of one upstream handshake. It is aborted when dropped, so a
/// handshake that times out or is refused leaves nothing running.
pub(crate) struct Connection(JoinHandle<()>);

impl Drop for Connection {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends the upgrade request over `tcp` and returns the upstream's answer. Keep the returned
/// [`Connection`] alive until the upgrade (or the answer's body) has been taken.
async fn send_upgrade<T>(
    io: T,
    request: Request<Empty<Bytes>>,
) -> Result<(Response<Incoming>, Connection), ProxyError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // Bounds the upstream's answer head (hyper's minimum is 8 KiB).
        .max_buf_size(MAX_ANSWER_HEAD)
        .handshake(TokioIo::new(io))
        .await
        .map_err(ProxyError::Handshake)?;
    // Boxed, as the server's connection tasks are (see `serve`): only a pointer moves.
    let task: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> =
        Box::pin(async move {
            // An error here also surfaces through `send_request`, where it is reported.
            let _ = conn.with_upgrades().await;
        });
    let conn = Connection(tokio::spawn(task));
    let response = sender
        .send_request(request)
        .await
        .map_err(ProxyError::Handshake)?;
    // hyper checks its buffer limit only while a head is incomplete: a large head that arrives
    // in one read passes. Bound what is relayed here.
    if crate::handshake::headers::fields_size(response.headers()) > MAX_ANSWER_HEAD {
        return Err(ProxyError::AnswerTooLarge(MAX_ANSWER_HEAD));
    }
    Ok((response, conn))
}
