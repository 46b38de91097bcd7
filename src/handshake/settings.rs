//! What the handshake stage is told, with the defaults and why: where upgrades go (the pool,
//! TLS to upstreams), how long a dial may take, which requests and origins pass, what is
//! rewritten and logged, and the routing hook.

use std::time::Duration;

use http::HeaderName;

use crate::handshake::forwarded::TrustedProxies;
use crate::handshake::identify::IdentifyHook;
use crate::handshake::origin::Origins;
use crate::handshake::redact::Redact;
use crate::handshake::request::EscapedSlashes;
use crate::handshake::route::RouteHook;
use crate::upstream::UpstreamPool;

/// TCP connect plus upstream handshake; nginx's `proxy_connect_timeout` is 60 s, but a user
/// waiting on a dead backend should hear about it sooner.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bodies of relayed refusals (401, 403, 404...) are short; this bounds a hostile one.
const DEFAULT_MAX_RESPONSE_BODY_SIZE: usize = 64 << 10;

/// A refused client may come back after 1 s at the earliest, and the clients of one burst come
/// back spread over the next 4 s, not all after the same second.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);
const DEFAULT_RETRY_AFTER_SPREAD: Duration = Duration::from_secs(4);

impl Settings {
    /// A `Retry-After` value, in whole seconds: the least plus a random part of the spread.
    pub(crate) fn retry_after(&self) -> u64 {
        let (least, spread) = self.retry_after;
        let extra = spread.mul_f64(rand::random::<f64>());
        (least + extra)
            .as_secs_f64()
            .round()
            .max(least.as_secs_f64().ceil()) as u64
    }
}

/// The handshake stage's settings; one value per layer.
#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) pool: UpstreamPool,
    pub(crate) connect_timeout: Duration,
    pub(crate) preserve_host: bool,
    pub(crate) max_response_body_size: usize,
    pub(crate) origins: Origins,
    /// 0: no limit.
    pub(crate) max_sessions: usize,
    /// `Retry-After` on a 503: the least, and the range above it a value is drawn from.
    pub(crate) retry_after: (Duration, Duration),
    /// New upgrades a second, shared by every copy of this configuration; `None`: no pacing.
    pub(crate) pacing: Option<std::sync::Arc<crate::handshake::pacing::Pacing>>,
    pub(crate) trusted_proxies: TrustedProxies,
    /// Query parameters logged as `REDACTED`.
    pub(crate) redact: Redact,
    /// Sends the session id upstream in this header.
    pub(crate) session_id_header: Option<HeaderName>,
    pub(crate) escaped_slashes: EscapedSlashes,
    pub(crate) route: Option<RouteHook>,
    /// The identity phase, first of those that decide whether a session opens.
    pub(crate) identify: Option<IdentifyHook>,
    /// `None`: the shared default (webpki roots).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<crate::upstream::tls::UpstreamTls>,
}

impl Settings {
    pub(crate) fn new(pool: UpstreamPool) -> Self {
        Self {
            pool,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            preserve_host: true,
            max_response_body_size: DEFAULT_MAX_RESPONSE_BODY_SIZE,
            origins: Origins::new([], true),
            max_sessions: 0,
            retry_after: (DEFAULT_RETRY_AFTER, DEFAULT_RETRY_AFTER_SPREAD),
            pacing: None,
            trusted_proxies: TrustedProxies::default(),
            redact: Redact::default(),
            session_id_header: None,
            escaped_slashes: EscapedSlashes::Keep,
            route: None,
            identify: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }
}
