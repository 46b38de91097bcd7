use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use crate::config::Config;
use crate::control::SessionControl;
use crate::handshake;
use crate::handshake::forwarded::TrustedProxies;
use crate::handshake::identify::{Identify, IdentifyHook};
use crate::handshake::origin::Origins;
use crate::handshake::redact::Redact;
use crate::handshake::request::EscapedSlashes;
use crate::handshake::route::{Refusal, RouteHook, RouteRequest};
use crate::registry::ShutdownHandle;
use crate::service::WsProxy;
use crate::session::hooks::{
    AsyncMessageFn, Direction, Message, MessageContext, MessageHook, SessionInfo, SessionSummary,
    Verdict,
};
use crate::session::{self, Mode};
use crate::upstream::UpstreamPool;

/// Proxies WebSocket upgrade requests to an upstream; every other request goes to the inner
/// service.
///
/// See the [crate documentation](crate) for what is forwarded and what each failure produces.
///
/// ```
/// use std::time::Duration;
/// use axum::{routing::get, Router};
/// use axum_ws_proxy::WsProxyLayer;
///
/// # fn main() -> Result<(), axum_ws_proxy::upstream::ParseUpstreamError> {
/// let app: Router = Router::new()
///     .route("/api/health", get(|| async { "ok" }))
///     .layer(
///         WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
///             .connect_timeout(Duration::from_secs(3))
///             .max_message_size(1 << 20),
///     );
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct WsProxyLayer {
    pub(crate) config: Arc<Config>,
}

impl WsProxyLayer {
    /// Forwards upgrades to `upstreams` with the default settings.
    ///
    /// `"ws://host:port".parse()?` makes a pool of one; see [`UpstreamPool`] for several
    /// members, balancing and failover. Keep a clone of the pool to change its members later.
    pub fn new(upstreams: UpstreamPool) -> Self {
        Self {
            config: Arc::new(Config::new(upstreams)),
        }
    }

    fn handshake(mut self, f: impl FnOnce(&mut handshake::Settings)) -> Self {
        f(&mut Arc::make_mut(&mut self.config).handshake);
        self
    }

    fn session(mut self, f: impl FnOnce(&mut session::Settings)) -> Self {
        f(Arc::make_mut(&mut Arc::make_mut(&mut self.config).session));
        self
    }

    /// Sets the one message hook of a direction; a second one is a mistake that would
    /// silently replace the first, so it panics, naming both.
    fn message_hook(self, way: Direction, hook: MessageHook, setter: &str) -> Self {
        self.session(|s| {
            let slot = if way == Direction::ToUpstream {
                &mut s.hooks.on_client_message
            } else {
                &mut s.hooks.on_upstream_message
            };
            if slot.is_some() {
                panic!(
                    "WsProxyLayer::{setter}: this direction already has a message hook \
                     (on_{}_message or its _async form); set one per direction and do both \
                     jobs in it",
                    if way == Direction::ToUpstream {
                        "client"
                    } else {
                        "upstream"
                    }
                );
            }
            *slot = Some(hook);
        })
    }

    /// Time allowed for the TCP connect plus the upstream's answer to the upgrade (its body
    /// included, when it refuses), failover to other pool members included. Past it the client
    /// gets **504**. Default: 10 s.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .connect_timeout(Duration::from_secs(3))
    ///     .close_timeout(Duration::from_secs(2))
    ///     .preserve_host(false);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.handshake(|h| h.connect_timeout = timeout)
    }

    /// Time each leg gets to answer a close frame before its socket is dropped. Default: 5 s.
    pub fn close_timeout(self, timeout: Duration) -> Self {
        self.session(|s| s.close_timeout = timeout)
    }

    /// `true` (the default) sends the client's `Host` upstream, like nginx's
    /// `proxy_set_header Host $host`, so origin checks behind the proxy keep working; `false`
    /// sends the chosen member's own `host:port`.
    pub fn preserve_host(self, preserve: bool) -> Self {
        self.handshake(|h| h.preserve_host = preserve)
    }

    /// Largest message accepted from either side, in bytes. A client that sends more is closed
    /// with **1009**; an upstream that does gets 1009 and the client **1011**. Default: 16 MiB.
    ///
    /// Frames stream through the proxy as they arrive (at most 256 KiB of a direction is held,
    /// and only while the other leg is not taking bytes), so this limit does not set memory per
    /// session; with message hooks set, each message is assembled whole for the hook, and then
    /// it does.
    ///
    /// ```
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// // A chat: small messages, many idle sessions.
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .max_message_size(64 << 10)
    ///     .max_frame_size(64 << 10)
    ///     .read_buffer_size(2 << 10)
    ///     .write_buffer_size(4 << 10)
    ///     .max_response_body_size(4 << 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_message_size(self, bytes: usize) -> Self {
        self.session(|s| s.max_message_size = bytes)
    }

    /// Largest single frame accepted from either side, in bytes; beyond it, as for
    /// [`max_message_size`](Self::max_message_size). Default: 16 MiB.
    pub fn max_frame_size(self, bytes: usize) -> Self {
        self.session(|s| s.max_frame_size = bytes)
    }

    /// With message hooks, tungstenite's read buffer per leg, held for the whole session: small
    /// keeps idle sessions cheap; once a read fills it the proxy reads up to 64 KiB at a time
    /// into a buffer that exists only while the burst lasts. Without message hooks it is not
    /// used: frames stream, read up to 256 KiB at a time into a per-thread buffer, and the
    /// proxy answers control frames itself. Default: 1 KiB.
    pub fn read_buffer_size(self, bytes: usize) -> Self {
        self.session(|s| s.read_buffer_size = bytes)
    }

    /// With message hooks, bytes collected per leg before a write is issued while messages
    /// keep coming (a write is also issued whenever the source has nothing more ready); without
    /// them, each read's frames leave in one write as they arrive. Default: 8 KiB.
    pub fn write_buffer_size(self, bytes: usize) -> Self {
        self.session(|s| s.write_buffer_size = bytes)
    }

    /// How long a leg may be quiet before the proxy pings it; zero turns keepalive off.
    /// Default: 30 s. Quiet but healthy sessions live indefinitely.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// // Behind a load balancer that drops flows idle for 60 s: ping after 20 s of quiet.
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .ping_interval(Duration::from_secs(20))
    ///     .ping_timeout(Duration::from_secs(10))
    ///     .idle_timeout(Duration::from_secs(3600));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn ping_interval(self, every: Duration) -> Self {
        self.session(|s| s.timeouts.ping_interval = (!every.is_zero()).then_some(every))
    }

    /// How long a pinged leg has to answer (with anything). A client that does not is dropped
    /// and the upstream gets **1001**; an upstream that does not is dropped and the client gets
    /// **1011**. Default: 30 s.
    pub fn ping_timeout(self, timeout: Duration) -> Self {
        self.session(|s| s.timeouts.ping_timeout = timeout)
    }

    /// Ends a session with **1001** on both legs after this long without a data message
    /// either way (pings do not count). Default: off; zero turns it off.
    pub fn idle_timeout(self, timeout: Duration) -> Self {
        self.session(|s| s.timeouts.idle_timeout = (!timeout.is_zero()).then_some(timeout))
    }

    /// Ends every session with **1001** on both legs once it is this old (e.g. to rebalance
    /// or rotate credentials). Each session's own limit is shortened by a random part of
    /// [`max_lifetime_jitter`](Self::max_lifetime_jitter) (10 % by default), never lengthened,
    /// so that sessions opened together do not end together. Default: off; zero turns it off.
    pub fn max_lifetime(self, lifetime: Duration) -> Self {
        self.session(|s| s.timeouts.max_lifetime = (!lifetime.is_zero()).then_some(lifetime))
    }

    /// The largest part of [`max_lifetime`](Self::max_lifetime) a session's own lifetime is
    /// shortened by, chosen at random per session: `0.1` (the default) ends sessions between
    /// 90 % and 100 % of it; `0.0` ends them exactly at it. Values are clamped to 0 to 1 (NaN is 0).
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// // Rotate credentials hourly; sessions end between 45 and 60 minutes old.
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .max_lifetime(Duration::from_secs(3600))
    ///     .max_lifetime_jitter(0.25);
    /// # let _ = layer;
    /// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
    /// ```
    pub fn max_lifetime_jitter(self, jitter: f64) -> Self {
        // NaN would make every lifetime NaN: it counts as no jitter.
        let jitter = if jitter.is_nan() {
            0.0
        } else {
            jitter.clamp(0.0, 1.0)
        };
        self.session(|s| s.timeouts.max_lifetime_jitter = jitter)
    }

    /// Most sessions at once (upgrades being dialled included); beyond it new upgrades get
    /// **503** with a spread `Retry-After` (see [`retry_after`](Self::retry_after)) before any
    /// upstream is dialled. Default: no limit (0).
    /// See [`UpstreamPool::max_sessions`] for a limit per member.
    ///
    /// ```
    /// use axum_ws_proxy::{WsProxyLayer, upstream::UpstreamPool};
    ///
    /// let pool = UpstreamPool::from_urls(["ws://10.0.0.1:3000", "ws://10.0.0.2:3000"])?
    ///     .max_sessions(5_000); // per member
    /// let layer = WsProxyLayer::new(pool).max_sessions(8_000); // in all
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn max_sessions(self, max: usize) -> Self {
        self.handshake(|h| h.max_sessions = max)
    }

    /// Paces new upgrades: at most `per_second` a second on average, at most `burst` at once;
    /// the others get **503** with a spread `Retry-After` (cause `upgrade_rate`) before any
    /// upstream is dialled. A replica that starts into a reconnect storm then passes it on at
    /// a rate its upstreams can take. Zero `per_second` turns pacing off (the default); a zero
    /// `burst` counts as one. Copies of a layer share one pace; a reload starts a new one.
    ///
    /// ```
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// // 200 new sessions a second, up to 50 at once.
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).max_upgrade_rate(200, 50);
    /// # let _ = layer;
    /// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
    /// ```
    pub fn max_upgrade_rate(self, per_second: u32, burst: u32) -> Self {
        let pacing = (per_second > 0)
            .then(|| Arc::new(crate::handshake::pacing::Pacing::new(per_second, burst)));
        self.handshake(|h| h.pacing = pacing)
    }

    /// The `Retry-After` of every **503** (session limits, shutting down, the proxy out of
    /// resources): at least `least`, plus a random part of `spread`, in whole seconds, so that
    /// clients refused in one burst come back spread out. Default: 1 s plus up to 4 s (values
    /// 1 to 5; each at most a day). A browser's WebSocket API never shows a refused handshake's headers: browsers
    /// need their own backoff with jitter.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .max_sessions(10_000)
    ///     .retry_after(Duration::from_secs(2), Duration::from_secs(10));
    /// # let _ = layer;
    /// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
    /// ```
    pub fn retry_after(self, least: Duration, spread: Duration) -> Self {
        // A day each at most: beyond, no client waits anyway, and the arithmetic stays finite.
        let day = Duration::from_secs(86_400);
        self.handshake(|h| h.retry_after = (least.min(day), spread.min(day)))
    }

    /// Browser origins allowed to open sessions; other `Origin`s get **403** before the
    /// upstream is contacted (against cross-site WebSocket hijacking). Exact origins
    /// (`https://app.example.com`, port included if not the default) and wildcard hosts
    /// (`https://*.example.com`, or `*.example.com` for any scheme; a wildcard is one or more
    /// labels). Case-insensitive. Default: every origin.
    ///
    /// ```
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .allowed_origins(["https://app.example.com", "https://*.example.com"])
    ///     .allow_missing_origin(false); // browsers only
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn allowed_origins<I>(self, origins: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        self.handshake(|h| {
            let allow_missing = h.origins.allow_missing;
            h.origins = Origins::new(origins.into_iter().map(Into::into), allow_missing);
        })
    }

    /// Peers whose `X-Forwarded-For`, `X-Forwarded-Proto` and `X-Forwarded-Host` are believed
    /// (nginx's `set_real_ip_from`, Envoy's trusted hops, Caddy's `trusted_proxies`).
    ///
    /// From a trusted peer, the incoming `X-Forwarded-For` chain is kept with the peer
    /// appended, its `X-Forwarded-Proto`/`-Host` pass unchanged, and the client (for
    /// `hash:ip`, hooks and logs) is the rightmost address in the chain that is not trusted.
    /// From any other peer, client-sent `X-Forwarded-For`, `X-Forwarded-Proto`,
    /// `X-Forwarded-Host`, `X-Real-IP` and `Forwarded` are dropped and replaced with what the
    /// proxy saw. Default: no peer is trusted.
    ///
    /// ```
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// // Behind a cloud load balancer in 10.0.0.0/8.
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .trusted_proxies(["10.0.0.0/8".parse()?, "fd00::/8".parse()?]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn trusted_proxies(self, networks: impl IntoIterator<Item = ipnet::IpNet>) -> Self {
        let trusted = TrustedProxies::new(networks);
        self.handshake(|h| h.trusted_proxies = trusted)
    }

    /// Query parameters (case-insensitive names) whose values are logged as `REDACTED`, in
    /// every log line and span the proxy writes. The upstream and the hooks still get the
    /// request as sent. Default: `token`, `access_token`, `auth`, `key`, `password`; an empty
    /// list logs queries verbatim.
    ///
    /// ```
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// // Logged as /live?room=7&sig=REDACTED.
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .redact_query(["sig", "token"]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn redact_query<I>(self, names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        // The identity hook's credential parameters stay redacted whatever is set here.
        let secrets = self.config.handshake.identify.as_ref().map(|h| h.1.clone());
        let names = names.into_iter().map(Into::into);
        let redact = Redact::new(names.chain(secrets.iter().flat_map(|s| s.iter().cloned())));
        self.handshake(|h| h.redact = redact)
    }

    /// Sends each session's id (the one in its log lines, span and
    /// [`SessionInfo::id`](crate::hooks::SessionInfo::id)) upstream in this request header, so the
    /// upstream's logs can be joined with the proxy's (like nginx's
    /// `proxy_set_header X-Request-Id $request_id`). A client-sent header of that name is
    /// replaced. Default: not sent.
    ///
    /// ```
    /// use axum_ws_proxy::WsProxyLayer;
    /// use http::HeaderName;
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .session_id_header(HeaderName::from_static("x-request-id"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn session_id_header(self, name: http::HeaderName) -> Self {
        self.handshake(|h| h.session_id_header = Some(name))
    }

    /// Whether an upgrade without an `Origin` header passes the origin check. Browsers always
    /// send one, so only non-browser clients (services, CLIs) lack it. Default: `true`.
    /// `false` applies on its own too: without [`allowed_origins`](Self::allowed_origins), any
    /// origin passes but one is required (**403** `an Origin header is required` otherwise).
    pub fn allow_missing_origin(self, allow: bool) -> Self {
        self.handshake(|h| h.origins.allow_missing = allow)
    }

    /// How `wss://` upstreams are verified. Default: [`UpstreamTls::webpki_roots`] (public
    /// CAs, host name checked, SNI set). A failed TLS handshake is a **502** naming the reason.
    ///
    /// [`UpstreamTls::webpki_roots`]: crate::tls::UpstreamTls::webpki_roots
    ///
    /// ```no_run
    /// use axum_ws_proxy::{WsProxyLayer, tls::UpstreamTls};
    ///
    /// let ca = std::fs::read("/etc/ssl/internal-ca.pem")?;
    /// let tls = UpstreamTls::with_root_certificates_pem(&ca)?;
    /// let layer = WsProxyLayer::new("wss://chat.internal".parse()?).upstream_tls(tls);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[cfg(feature = "tls")]
    pub fn upstream_tls(self, tls: crate::upstream::tls::UpstreamTls) -> Self {
        self.handshake(|h| h.tls = Some(tls))
    }

    /// How sessions cross the proxy: [`Mode::Frames`] (default) or [`Mode::Tunnel`].
    ///
    /// ```
    /// use axum_ws_proxy::{Mode, WsProxyLayer};
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).mode(Mode::Tunnel);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn mode(self, mode: Mode) -> Self {
        self.session(|s| s.mode = mode)
    }

    /// Shorthand for [`mode(Mode::Tunnel)`](Self::mode): splice bytes after a validated 101.
    ///
    /// The tunnel opens only on a 101 whose `Sec-WebSocket-Accept` matches the key the proxy
    /// sent and whose `Upgrade`/`Connection` are right (otherwise 502), so a forged 101 cannot
    /// smuggle requests. `Sec-WebSocket-Extensions` is forwarded and relayed, so
    /// permessage-deflate works end to end. Limits, balancing, failover, origin checks,
    /// keepalive pings, timers, graceful shutdown and metrics keep working; message size limits
    /// and protocol checks are left to the two peers, and per-message hooks do not apply.
    ///
    /// ```
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// // permessage-deflate between browser and backend, bytes spliced.
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).tunnel();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn tunnel(self) -> Self {
        self.mode(Mode::Tunnel)
    }

    /// permessage-deflate (RFC 7692) in frame mode: [`Deflate::Auto`](crate::Deflate::Auto)
    /// (the default) compresses the client leg when the upstream accepted the client's offer,
    /// passing compressed frames as they came; [`Deflate::Always`](crate::Deflate::Always)
    /// also compresses toward clients in front of an upstream that cannot;
    /// [`Deflate::Off`](crate::Deflate::Off) strips the offer. Tunnel mode passes the extension
    /// end to end whatever this says.
    ///
    /// ```
    /// use axum_ws_proxy::{Deflate, WsProxyLayer};
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).deflate(Deflate::Off);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn deflate(self, deflate: crate::session::deflate::Deflate) -> Self {
        self.session(|s| s.deflate.mode = deflate)
    }

    /// How the proxy compresses where it chooses how: toward clients at the edge
    /// ([`Deflate::Always`](crate::Deflate::Always)) and toward a leg whose messages a message
    /// hook read. Window, `memLevel`, level and context takeover; see
    /// [`Compression`](crate::Compression) for the defaults and what each costs.
    ///
    /// ```
    /// use axum_ws_proxy::{Compression, Deflate, WsProxyLayer};
    ///
    /// // No compressor held by quiet sessions; small messages compress less.
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .deflate(Deflate::Always)
    ///     .compression(Compression::default().context_takeover(false));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn compression(self, compression: crate::session::deflate::Compression) -> Self {
        self.session(|s| s.deflate.compression = compression)
    }

    /// What to do with encoded slashes (`%2F`, `%5C`) in a request path: keep them (default),
    /// refuse the upgrade with 400, or decode them into `/` before dot-segment removal,
    /// routing and forwarding. A dot-segment hidden behind one (`/..%2Fadmin`) is refused with
    /// 400 whatever this says. See [`EscapedSlashes`](crate::EscapedSlashes).
    ///
    /// ```
    /// use axum_ws_proxy::{EscapedSlashes, WsProxyLayer};
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000/rooms".parse()?)
    ///     .escaped_slashes(EscapedSlashes::Decode);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn escaped_slashes(self, action: EscapedSlashes) -> Self {
        self.handshake(|h| h.escaped_slashes = action)
    }

    /// Called when a session starts (the client has its 101 and the upstream leg is open), on
    /// the session's task. See [`SessionInfo`].
    ///
    /// ```
    /// use axum_ws_proxy::{WsProxyLayer, hooks::ClosedBy};
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
    ///     .on_open(|s| println!("session {} from {:?} to {}", s.id, s.client, s.upstream))
    ///     .on_close(|s| {
    ///         if s.closed_by == ClosedBy::Upstream {
    ///             eprintln!("session {} ended by the upstream with {}", s.session.id, s.client_close_code);
    ///         }
    ///     });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_open<F>(self, hook: F) -> Self
    where
        F: Fn(&SessionInfo) + Send + Sync + 'static,
    {
        self.session(|s| s.hooks.on_open = Some(Arc::new(hook)))
    }

    /// Called when a session has ended, with its [`SessionSummary`]: duration, messages and
    /// bytes each way, who closed it and with which codes.
    pub fn on_close<F>(self, hook: F) -> Self
    where
        F: Fn(&SessionSummary) + Send + Sync + 'static,
    {
        self.session(|s| s.hooks.on_close = Some(Arc::new(hook)))
    }

    /// Sees every data message from the client before it goes upstream (frame mode; tunnels do
    /// not parse messages) and decides: forward, replace, drop, or close the session. Runs on
    /// the session's task, so it should be quick; see
    /// [`on_client_message_async`](Self::on_client_message_async) for hooks that wait.
    /// Without a hook a message costs nothing extra.
    ///
    /// ```
    /// use axum_ws_proxy::{WsProxyLayer, hooks::{CloseCode, Verdict}};
    ///
    /// // At most 100 messages per session, then close with 1008 Policy Violation.
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).on_client_message(|ctx, _msg| {
    ///     if ctx.state.get::<u32>().is_none() {
    ///         ctx.state.insert(0u32);
    ///     }
    ///     let count = ctx.state.get_mut::<u32>().map_or(0, |c| { *c += 1; *c });
    ///     if count > 100 {
    ///         Verdict::close(CloseCode::POLICY_VIOLATION, "message limit reached")
    ///     } else {
    ///         Verdict::Forward
    ///     }
    /// });
    /// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
    /// ```
    pub fn on_client_message<F>(self, hook: F) -> Self
    where
        F: Fn(&mut MessageContext<'_>, &Message) -> Verdict + Send + Sync + 'static,
    {
        self.message_hook(
            Direction::ToUpstream,
            MessageHook::Sync(Arc::new(hook)),
            "on_client_message",
        )
    }

    /// As [`on_client_message`](Self::on_client_message), for messages from the upstream to
    /// the client.
    ///
    /// ```
    /// use axum_ws_proxy::{WsProxyLayer, hooks::{Message, Verdict}};
    ///
    /// // Redact a field before it reaches browsers.
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).on_upstream_message(|_ctx, msg| {
    ///     match msg.as_text() {
    ///         Some(t) if t.contains("\"ssn\"") => Verdict::Replace(Message::text("{\"redacted\":true}")),
    ///         _ => Verdict::Forward,
    ///     }
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_upstream_message<F>(self, hook: F) -> Self
    where
        F: Fn(&mut MessageContext<'_>, &Message) -> Verdict + Send + Sync + 'static,
    {
        self.message_hook(
            Direction::ToClient,
            MessageHook::Sync(Arc::new(hook)),
            "on_upstream_message",
        )
    }

    /// A client-message hook that can wait (call a service, write to a database). The verdict
    /// is awaited before the next message from the client is read, so order is kept and a slow
    /// hook slows that client instead of queueing. It gets the session as an `Arc` and the
    /// message by value; keep per-session state keyed by `session.id` if you need it.
    ///
    /// # Panics
    ///
    /// If the client's messages already have a hook (this or
    /// [`on_client_message`](Self::on_client_message)): one hook per direction, rather than one
    /// silently replacing the other.
    ///
    /// ```should_panic
    /// use axum_ws_proxy::{WsProxyLayer, hooks::Verdict};
    ///
    /// let _ = WsProxyLayer::new("ws://127.0.0.1:3000".parse().unwrap())
    ///     .on_client_message(|_, _| Verdict::Forward)
    ///     .on_client_message_async(|_, _| async { Verdict::Forward }); // panics
    /// ```
    ///
    /// ```
    /// use axum_ws_proxy::{WsProxyLayer, hooks::{CloseCode, Verdict}};
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).on_client_message_async(
    ///     |session, msg| async move {
    ///         // e.g. ask a moderation service; here: refuse empty messages.
    ///         if msg.is_empty() {
    ///             Verdict::close(
    ///                 CloseCode::POLICY_VIOLATION,
    ///                 format!("session {}: empty messages are not allowed", session.id),
    ///             )
    ///         } else {
    ///             Verdict::Forward
    ///         }
    ///     },
    /// );
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn on_client_message_async<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(Arc<SessionInfo>, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Verdict> + Send + 'static,
    {
        let hook: Arc<AsyncMessageFn> = Arc::new(move |s, m| Box::pin(hook(s, m)));
        self.message_hook(
            Direction::ToUpstream,
            MessageHook::Async(hook),
            "on_client_message_async",
        )
    }

    /// As [`on_client_message_async`](Self::on_client_message_async), for messages from the
    /// upstream to the client.
    pub fn on_upstream_message_async<F, Fut>(self, hook: F) -> Self
    where
        F: Fn(Arc<SessionInfo>, Message) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Verdict> + Send + 'static,
    {
        let hook: Arc<AsyncMessageFn> = Arc::new(move |s, m| Box::pin(hook(s, m)));
        self.message_hook(
            Direction::ToClient,
            MessageHook::Async(hook),
            "on_upstream_message_async",
        )
    }

    /// A hook run for every upgrade before the upstream is dialled (after the origin check,
    /// the client handshake and the session limit): it can pick the pool, rewrite the path and
    /// query, change the headers sent upstream, or refuse with a status and body. See
    /// [`RouteRequest`].
    ///
    /// ```
    /// use axum_ws_proxy::{WsProxyLayer, hooks::Refusal, upstream::UpstreamPool};
    /// use http::StatusCode;
    ///
    /// let eu: UpstreamPool = "ws://10.1.0.1:3000".parse()?;
    /// let layer = WsProxyLayer::new("ws://10.0.0.1:3000".parse()?).route(move |req| {
    ///     match req.headers().get("x-tenant").and_then(|v| v.to_str().ok()) {
    ///         Some("eu") => req.set_pool(eu.clone()),
    ///         Some(_) => return Err(Refusal::new(StatusCode::FORBIDDEN, "unknown tenant")),
    ///         None => {}
    ///     }
    ///     req.upstream_headers().remove("authorization");
    ///     Ok(())
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn route<F>(self, hook: F) -> Self
    where
        F: Fn(&mut RouteRequest<'_>) -> Result<(), Refusal> + Send + Sync + 'static,
    {
        self.handshake(|h| h.route = Some(RouteHook(Arc::new(hook))))
    }

    /// The identity phase: `hook` finds whom each upgrade belongs to before the session
    /// limit, the routing hook and any dial, or refuses it (a [`Refusal`], **401** with
    /// [`Refusal::unauthorized`]). The [`Identity`](crate::Identity) it returns goes with the
    /// session: its expiry closes it (1008 "token expired", the upstream 1001), its subject,
    /// tenant and tags select it in the [`SessionControl`], revocations refuse it, and hooks
    /// see it ([`SessionInfo::identity`](crate::hooks::SessionInfo::identity)). See
    /// [`Identify`] (the built-in JWT check is one: feature `jwt`). The hook has the
    /// [`connect_timeout`](Self::connect_timeout) to answer; past it the client gets **504**
    /// ([`ProxyError::IdentityTimeout`](crate::ProxyError::IdentityTimeout)).
    ///
    /// ```
    /// use axum_ws_proxy::{AuthFailure, Identity, WsProxyLayer, hooks::Refusal};
    /// use axum_ws_proxy::http::request::Parts;
    ///
    /// #[derive(Clone)]
    /// struct User(String); // what the app's auth layer inserts
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?).identify(|parts: &mut Parts| {
    ///     let user = parts.extensions.get::<User>().cloned();
    ///     async move {
    ///         let user = user.ok_or(Refusal::unauthorized(AuthFailure::Missing))?;
    ///         Ok(Some(Identity::new(user.0)))
    ///     }
    /// });
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn identify(self, hook: impl Identify) -> Self {
        let secrets: Arc<[String]> = hook.secret_query_params().into();
        let names = self.config.handshake.redact.names().to_vec();
        self.handshake(|h| h.identify = Some(IdentifyHook(Arc::new(hook), secrets)))
            .redact_query(names)
    }

    /// The session API on this layer's live sessions (and those of its clones and
    /// reloads): list, close, extend, revoke. See [`SessionControl`].
    pub fn session_control(&self) -> SessionControl {
        SessionControl::new(self.config.sessions.clone())
    }

    /// Most revocations in force at once (see [`SessionControl::revoke`]); beyond it a
    /// revocation is refused until entries lapse. Default: 100 000. It is the registry's, so
    /// it applies to this layer's clones too and is kept across reloads.
    pub fn max_revocations(self, max: usize) -> Self {
        self.config.sessions.revoked.set_cap(max);
        self
    }

    /// A handle that drains this layer's sessions (and those of its clones) on shutdown.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(self.config.sessions.clone())
    }

    /// Most bytes of a refusing upstream's body (401, 403, ...) relayed to the client; the rest
    /// is cut. Default: 64 KiB.
    pub fn max_response_body_size(self, bytes: usize) -> Self {
        self.handshake(|h| h.max_response_body_size = bytes)
    }

    /// `path_and_query` as this layer writes it in logs: the values of the
    /// [`redact_query`](Self::redact_query) parameters replaced by `REDACTED`. For an app's
    /// own access log, so it redacts what the proxy redacts.
    ///
    /// ```
    /// use axum_ws_proxy::WsProxyLayer;
    ///
    /// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?);
    /// assert_eq!(layer.log_path("/ws?room=1&token=abc"), "/ws?room=1&token=REDACTED");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn log_path<'a>(&self, path_and_query: &'a str) -> std::borrow::Cow<'a, str> {
        self.config.handshake.redact.apply(path_and_query)
    }

    /// The pool upgrades are forwarded to.
    pub fn pool(&self) -> &UpstreamPool {
        &self.config.handshake.pool
    }
}

/// For [`Serve::direct_upgrades`](crate::serve::Serve::direct_upgrades).
#[cfg(feature = "serve")]
impl From<&WsProxyLayer> for crate::serve::DirectUpgrades {
    fn from(layer: &WsProxyLayer) -> Self {
        crate::service::Source::Fixed(layer.config.clone()).into()
    }
}

impl<S> Layer<S> for WsProxyLayer {
    type Service = WsProxy<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WsProxy::from_parts(inner, self.config.clone())
    }
}
