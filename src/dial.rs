//! Step 2: dial the upstream and send it the upgrade request.

use std::io;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::{lookup_host, TcpStream};
use tokio::task::JoinHandle;

use crate::{ProxyError, Upstream};

/// Resolves the upstream (every time, so DNS changes are seen) and connects to the first
/// address that accepts. Refused everywhere or unresolvable: 502.
pub(crate) async fn connect(upstream: &Upstream) -> Result<TcpStream, ProxyError> {
    let resolve_error = |source| ProxyError::Resolve {
        host: upstream.host().to_owned(),
        source,
    };
    let addrs = lookup_host((upstream.host(), upstream.port()))
        .await
        .map_err(resolve_error)?;
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(tcp) => {
                // Messages are batched by the bridge already; Nagle would only add latency.
                let _ = tcp.set_nodelay(true);
                return Ok(tcp);
            }
            Err(source) => last = Some(ProxyError::Connect { addr, source }),
        }
    }
    Err(last.unwrap_or_else(|| {
        resolve_error(io::Error::new(
            io::ErrorKind::NotFound,
            "no addresses found",
        ))
    }))
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
pub(crate) async fn send_upgrade(
    tcp: TcpStream,
    request: Request<Empty<Bytes>>,
) -> Result<(Response<Incoming>, Connection), ProxyError> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(ProxyError::Handshake)?;
    let conn = Connection(tokio::spawn(async move {
        // An error here also surfaces through `send_request`, where it is reported.
        let _ = conn.with_upgrades().await;
    }));
    let response = sender
        .send_request(request)
        .await
        .map_err(ProxyError::Handshake)?;
    Ok((response, conn))
}
