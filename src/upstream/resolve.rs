//! Turning a member's host name into addresses.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

/// The future a [`Resolve`] returns.
///
/// ```
/// use std::net::SocketAddr;
/// use axum_ws_proxy::upstream::{Resolve, Resolving};
///
/// /// Every name resolves to the same two addresses (a test double, or a discovery cache).
/// struct Fixed(Vec<SocketAddr>);
///
/// impl Resolve for Fixed {
///     fn resolve(&self, _host: String, port: u16) -> Resolving {
///         let addrs = self.0.iter().map(|a| SocketAddr::new(a.ip(), port)).collect();
///         Box::pin(async move { Ok(addrs) })
///     }
/// }
/// let pool: axum_ws_proxy::upstream::UpstreamPool = "ws://chat.internal:3000".parse()?;
/// let pool = pool.resolver(Fixed(vec!["10.0.0.1:0".parse().unwrap(), "10.0.0.2:0".parse().unwrap()]));
/// # let _ = pool;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
pub type Resolving = Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send>>;

/// Resolves a pool member's host name to the addresses to dial; each address becomes a
/// separately balanced endpoint. The default uses the system resolver (`getaddrinfo`).
///
/// Any `Fn(String, u16) -> impl Future<Output = io::Result<Vec<SocketAddr>>>` is a resolver,
/// which is how tests and service-discovery glue plug in:
///
/// ```
/// use std::net::SocketAddr;
/// use axum_ws_proxy::upstream::UpstreamPool;
///
/// let pool: UpstreamPool = "ws://chat.internal:3000".parse()?;
/// let pool = pool.resolver(|_host: String, port: u16| async move {
///     Ok(vec![SocketAddr::from(([10, 0, 0, 1], port)), SocketAddr::from(([10, 0, 0, 2], port))])
/// });
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
pub trait Resolve: Send + Sync + 'static {
    /// The addresses of `host`, with `port` applied.
    fn resolve(&self, host: String, port: u16) -> Resolving;
}

impl<F, Fut> Resolve for F
where
    F: Fn(String, u16) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'static,
{
    fn resolve(&self, host: String, port: u16) -> Resolving {
        Box::pin(self(host, port))
    }
}

/// The system resolver, through tokio's `lookup_host`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: String, port: u16) -> Resolving {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), port))
                .await?
                .collect())
        })
    }
}

/// Debug output for a boxed resolver.
pub(crate) struct ResolverName;

impl fmt::Debug for ResolverName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Resolve")
    }
}
