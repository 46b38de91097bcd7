//! Step 2: pick an upstream endpoint and dial it, failing over to the next one before the 101.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use http::Response;
use tokio::net::TcpStream;

use crate::error::ProxyError;
use crate::handshake::{client, Settings};
use crate::transport::Transport;
use crate::upstream::{Lease, NoPick};
use crate::upstream::{Member, UpstreamPool};

/// An upstream that answered the upgrade request (with a 101 or anything else): the answer's
/// head, and the connection, past the head.
pub(crate) struct Dialed {
    pub(crate) answer: Response<()>,
    pub(crate) conn: Transport,
    pub(crate) lease: Lease,
}

/// Dials the pool: picks an endpoint, connects, sends the upgrade request built for that
/// member, and on a failure to connect or to get an answer tries the next endpoint, up to the
/// pool's `max_tries`. Each try's TCP connect gets an equal share of the time left until
/// `deadline`; the caller bounds the whole dial by the deadline (then 504).
pub(crate) async fn dial(
    config: &Settings,
    pool: &UpstreamPool,
    key: Option<&[u8]>,
    deadline: Instant,
    request_head: impl Fn(&Member) -> Vec<u8>,
) -> Result<Dialed, ProxyError> {
    pool.ensure_resolved().await;
    let max_tries = pool.tries();
    // Endpoints that failed, not to be picked again: filled only after a failure, so that a
    // dial that succeeds at once allocates nothing for it.
    let mut tried = Vec::new();
    let mut last = None;
    for nth in 1..=max_tries {
        let lease = match pool.pick(key, &tried) {
            Ok(lease) => lease,
            Err(NoPick::Full(max)) => return Err(ProxyError::MembersFull(max)),
            Err(NoPick::Exhausted) => break,
        };
        let endpoint = lease.endpoint().clone();
        let tries_left = (max_tries - nth + 1) as u32;
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
            let io = if upstream.is_tls() {
                // Boxed: a TLS handshake's state is a kilobyte, and inline it would enlarge
                // (and make costlier to move) every dial's future, plain ones included.
                Box::pin(secure(config, upstream.host(), endpoint.addr, tcp)).await?
            } else {
                Transport::tcp(tcp)
            };
            client::exchange(io, &request_head(&endpoint.member)).await
        };
        match attempt.await {
            Ok((answer, conn)) => {
                pool.report(&endpoint, true);
                return Ok(Dialed {
                    answer,
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
                tried.push(endpoint.clone());
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
    config: &Settings,
    host: &str,
    addr: SocketAddr,
    tcp: TcpStream,
) -> Result<Transport, ProxyError> {
    let tls = config
        .tls
        .as_ref()
        .unwrap_or_else(|| crate::upstream::tls::UpstreamTls::default_shared());
    let stream = tls
        .connect(host, tcp)
        .await
        .map_err(|source| ProxyError::Tls { addr, source })?;
    Ok(Transport::other(Box::new(stream)))
}

#[cfg(not(feature = "tls"))]
async fn secure(
    _: &Settings,
    _: &str,
    _: SocketAddr,
    tcp: TcpStream,
) -> Result<Transport, ProxyError> {
    // Unreachable: `wss://` does not parse without the `tls` feature.
    Ok(Transport::tcp(tcp))
}
