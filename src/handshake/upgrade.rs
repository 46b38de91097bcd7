//! The path of one upgrade request: validate it, dial the upstream, hand back its answer and,
//! on a 101, hand the session everything it starts from.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use http::header::{
    HeaderMap, HeaderValue, HOST, ORIGIN, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY,
    SEC_WEBSOCKET_PROTOCOL,
};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::error::{AuthFailure, ProxyError};
use crate::handshake::detect::Upgrade;
use crate::handshake::extensions::{self, Offers, Upstream};
use crate::handshake::headers::{Forwarded, UpstreamHeaders};
use crate::handshake::identify::IdentifyHook;
use crate::handshake::origin::OriginCheck;
use crate::handshake::route::{Refusal, RouteRequest};
use crate::handshake::{answer, client, detect, dial, request, Settings};
use crate::identity::Identity;
use crate::metrics;
use crate::registry::{rebalance, NotAdmitted, Permit, Sessions};
use crate::session::deflate::{Deflate, Params};
use crate::session::{self, Handoff, Mode, Negotiated, RequestInfo};
use crate::transport::{ClientLeg, HeldBySession, Transport};
use crate::upstream::{Lease, Member, UpstreamPool};

/// Answers one upgrade request (already detected as such). The phases below each return a
/// [`ProxyError`] for the client; this is the one place it becomes a response (and a log line
/// and a metric).
///
/// `kind` is what [`detect::upgrade`] found; `leg` how the client's connection will reach the
/// session (hyper's upgrade, taken from the request, or the server's own entry); `session` is
/// handed on to the session, and `sessions` admits it. `peer` is the client's address when the
/// caller knows it (otherwise the request's `ConnectInfo`, if any).
pub(crate) async fn upgrade<B>(
    config: &Settings,
    session: &Arc<session::Settings>,
    sessions: &Arc<Sessions>,
    mut req: Request<B>,
    (kind, leg): (Upgrade, Option<ClientLeg>),
    peer: Option<SocketAddr>,
) -> Response<Body> {
    let mut refusal = Refusing {
        client: peer.or_else(|| {
            req.extensions()
                .get::<ConnectInfo<SocketAddr>>()
                .map(|ci| ci.0)
        }),
        path: None,
        identity: None,
    };
    let checked = request::check(&mut req, config.escaped_slashes);
    // As normalised, once it is (a clone shares the request's bytes).
    refusal.path = req.uri().path_and_query().cloned();
    let stage = Stage {
        config,
        session,
        sessions,
    };
    match proceed(&stage, req, (kind, leg), checked, &mut refusal).await {
        Ok(res) => res,
        Err(e) => {
            // Logs never carry secrets from the query.
            let raw = refusal.path.as_ref().map_or("/", PathAndQuery::as_str);
            refuse(config, e, refusal.client, &config.redact.apply(raw))
        }
    }
}

/// What an upgrade is handled with: this stage's settings, the session stage's (handed on to
/// the session), and the registry that admits it.
struct Stage<'a> {
    config: &'a Settings,
    session: &'a Arc<session::Settings>,
    sessions: &'a Arc<Sessions>,
}

/// What a refusal's log line names: the client (the forwarded one behind trusted proxies,
/// once known) and the path (redacted when logged); and the identity on its way to the
/// session.
struct Refusing {
    client: Option<SocketAddr>,
    path: Option<PathAndQuery>,
    /// The session's identity, once found, until the session takes it.
    identity: Option<Arc<Identity>>,
}

/// Every phase, in order; the first error ends the upgrade.
async fn proceed<B>(
    stage: &Stage<'_>,
    req: Request<B>,
    (kind, leg): (Upgrade, Option<ClientLeg>),
    checked: Result<(), ProxyError>,
    refusal: &mut Refusing,
) -> Result<Response<Body>, ProxyError> {
    let config = stage.config;
    checked?;
    check_origin(config, &req)?;
    let client = detect::client_handshake(&req, kind, leg)?;
    // Identity first, then limits, then routing (ARCHITECTURE.md): an unauthenticated
    // client never takes a session slot or an upgrade-rate token.
    let mut req = req;
    let identity = match &config.identify {
        Some(hook) => {
            // A hook waiting on a service that stopped answering must not hold the client
            // forever, before any limit counts it: it has the dial's time.
            let found = identify(hook, req, stage.sessions);
            let (same, identity) = tokio::time::timeout(config.connect_timeout, found)
                .await
                .map_err(|_| ProxyError::IdentityTimeout {
                    after: config.connect_timeout,
                })??;
            req = same;
            identity
        }
        None => None,
    };
    let permit = stage
        .sessions
        .admit(config.max_sessions)
        .map_err(|r| match r {
            NotAdmitted::ShuttingDown => ProxyError::ShuttingDown,
            NotAdmitted::Full(n) => ProxyError::TooManySessions(n),
        })?;
    if let Some(pacing) = &config.pacing {
        if !pacing.admit() {
            return Err(ProxyError::Paced {
                per_second: pacing.per_second(),
            });
        }
    }
    // Every admitted upgrade gets an id: in its logs, its hooks and (if asked) upstream.
    let id = permit.sessions().next_id();
    let peer = refusal.client;
    let mut upstream = UpstreamRequest::new(stage, req, id, peer, client.accept.as_ref());
    refusal.client = upstream.client;
    // Kept beside the request's log fields, out of this future's state across the dial.
    refusal.identity = identity.map(|mut identity| {
        upstream.forward_identity(identity.take_forwarded());
        Arc::new(identity)
    });
    upstream.route(config)?;
    let dialled = Instant::now();
    let deadline = dialled + config.connect_timeout;
    let exchange = upstream.exchange(config, deadline, client.accept.as_ref());
    let answer = tokio::time::timeout_at(deadline.into(), exchange)
        .await
        .map_err(|_| ProxyError::Timeout {
            after: config.connect_timeout,
        })??;
    metrics::upstream_answered(dialled.elapsed());
    // Nothing is refused from here on: the session (or the relayed answer) takes the path.
    let info = upstream.info(id, config, refusal.identity.take());
    Ok(match answer {
        Answer::Relayed(res, lease) => {
            lease.refused();
            metrics::handshake_failed("upstream_refused");
            tracing::info!(
                id,
                client = info.client.map(tracing::field::display),
                upstream = %lease.endpoint().member.upstream(),
                path = %info.log_path(),
                status = res.status().as_u16(),
                "upstream refused the upgrade; relaying its answer"
            );
            res
        }
        Answer::Switched(switched) => {
            // The pool's first session starts its rebalancing, when that is on.
            if let Some(serving) = upstream.pool.claim_rebalancer() {
                tokio::spawn(rebalance::run(
                    upstream.pool.downgrade(),
                    Arc::downgrade(stage.sessions),
                    serving,
                ));
            }
            switched.hand_over(stage.session, &upstream.extensions, client, permit, info)
        }
    })
}

/// The identity phase: the hook's identity, refused if it has expired or is revoked.
async fn identify<B>(
    hook: &IdentifyHook,
    req: Request<B>,
    sessions: &Sessions,
) -> Result<(Request<B>, Option<Identity>), ProxyError> {
    let (mut parts, body) = req.into_parts();
    let found = hook.0.identify(&mut parts);
    let req = Request::from_parts(parts, body);
    let Some(identity) = found.await.map_err(Refusal::into_error)? else {
        return Ok((req, None));
    };
    if identity
        .expiry()
        .is_some_and(|at| at <= std::time::SystemTime::now())
    {
        return Err(ProxyError::Unauthorized(AuthFailure::Expired));
    }
    if sessions.revoked.refuses(&identity) {
        return Err(ProxyError::Unauthorized(AuthFailure::Revoked));
    }
    Ok((req, Some(identity)))
}

/// Whether `peer` is a trusted proxy, and the client as logs, hooks and hashing see it: behind
/// trusted proxies, the one they name (`X-Forwarded-For` still gets the peer appended).
fn client_behind(
    config: &Settings,
    peer: Option<SocketAddr>,
    headers: &HeaderMap,
) -> (bool, Option<SocketAddr>) {
    let trusted = peer.is_some_and(|a| config.trusted_proxies.contains(a.ip()));
    let client = match peer {
        Some(a) if trusted => Some(SocketAddr::new(
            config.trusted_proxies.client_ip(a.ip(), headers),
            0,
        )),
        other => other,
    };
    (trusted, client)
}

/// The origin check, where origins are restricted.
fn check_origin<B>(config: &Settings, req: &Request<B>) -> Result<(), ProxyError> {
    if !config.origins.is_restricted() {
        return Ok(());
    }
    match config.origins.check(req.headers().get(ORIGIN)) {
        OriginCheck::Allowed => Ok(()),
        OriginCheck::Refused(origin) => Err(ProxyError::OriginNotAllowed(origin)),
        OriginCheck::Missing => Err(ProxyError::MissingOrigin),
    }
}

/// The request the upstream gets, built from the client's: headers rewritten, the pool and
/// path (perhaps chosen by the routing hook), the balancing key, and what the session keeps.
struct UpstreamRequest {
    parts: http::request::Parts,
    /// The client as logs, hooks and hashing see it (the forwarded one behind trusted proxies).
    client: Option<SocketAddr>,
    path: Option<PathAndQuery>,
    /// As sent, for hooks.
    hook_path: PathAndQuery,
    forwarded: UpstreamHeaders,
    keep_client_host: bool,
    /// The `Sec-WebSocket-Accept` the upstream must answer the key it was sent with, when the
    /// proxy made that key (`None`: the client's, answered as the client is).
    accept: Option<HeaderValue>,
    offered: Vec<HeaderValue>,
    extensions: Extensions,
    pool: UpstreamPool,
    hash_key: Option<Vec<u8>>,
    h2: bool,
    over_tls: bool,
    hook_headers: Option<HeaderMap>,
    hook_extensions: Option<http::Extensions>,
    held: Option<Box<dyn std::any::Any + Send + Sync>>,
}

impl UpstreamRequest {
    /// Takes the client's request apart once. Long (about 90 lines) for a reason: the order
    /// is forced (what hooks, hashing and routing read is taken before the headers move into
    /// the upstream request), and pieces split out would pass the half-taken parts around.
    fn new<B>(
        stage: &Stage<'_>,
        req: Request<B>,
        id: u64,
        peer: Option<SocketAddr>,
        client_accept: Option<&HeaderValue>,
    ) -> Self {
        let config = stage.config;
        let (mut parts, _body) = req.into_parts();
        let path = parts.uri.path_and_query().cloned();
        let hook_path = path
            .clone()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        let held = parts
            .extensions
            .remove::<HeldBySession>()
            .and_then(|slot| slot.take());
        let h2 = parts.version == http::Version::HTTP_2;
        let over_tls = came_over_tls(&parts.extensions);
        // Kept for the hooks only: copying them costs nothing when no hook is set.
        let (hook_headers, hook_extensions) = if stage.session.hooks.any() {
            (Some(parts.headers.clone()), Some(parts.extensions.clone()))
        } else {
            (None, None)
        };
        let (key, accept) = upstream_key(&parts.headers, client_accept);
        let offered: Vec<HeaderValue> = parts
            .headers
            .get_all(SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .cloned()
            .collect();
        let extensions = Extensions::of(stage.session, &parts.headers);
        // HTTP/2 carries the host as the `:authority` pseudo-header, not `Host`.
        let client_host = parts.headers.get(HOST).cloned().or_else(|| {
            parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
        });
        let keep_client_host = config.preserve_host && client_host.is_some();
        let (trusted, client) = client_behind(config, peer, &parts.headers);
        // Balancing reads the client's own headers. Without a routing hook (which may pick
        // another pool) the key is taken now, before the headers move into the upstream
        // request.
        let hash_key = config
            .route
            .is_none()
            .then(|| config.pool.hash_key())
            .flatten()
            .and_then(|k| k.extract(&parts.headers, &parts.uri, client));
        // The routing hook reads the client's headers after they are rewritten: keep a copy
        // then.
        let client_headers = match config.route {
            Some(_) => parts.headers.clone(),
            None => std::mem::take(&mut parts.headers),
        };
        let forwarded = UpstreamHeaders::new(
            client_headers,
            Forwarded {
                host: client_host.clone(),
                client_host,
                client_ip: peer.map(|a| a.ip()),
                trusted,
                proto: if over_tls { "https" } else { "http" },
                key,
                keep_extensions: extensions.as_sent(),
                extensions: extensions.rewritten(),
                session_id: config.session_id_header.clone().map(|name| (name, id)),
            },
        );
        Self {
            parts,
            client,
            path,
            hook_path,
            forwarded,
            keep_client_host,
            accept,
            offered,
            extensions,
            pool: config.pool.clone(),
            hash_key,
            h2,
            over_tls,
            hook_headers,
            hook_extensions,
            held,
        }
    }

    /// The routing hook, if any: it may refuse, pick the pool, rewrite the path and headers.
    fn route(&mut self, config: &Settings) -> Result<(), ProxyError> {
        let Some(route) = &config.route else {
            return Ok(());
        };
        let mut request = RouteRequest {
            parts: &self.parts,
            client: self.client,
            upstream_headers: self.forwarded.edit(),
            pool: None,
            path: None,
        };
        (route.0)(&mut request).map_err(Refusal::into_error)?;
        let (chosen, rewritten) = (request.pool, request.path);
        if let Some(pool) = chosen {
            self.pool = pool;
        }
        self.path = rewritten.or(self.path.take());
        self.hash_key = self
            .pool
            .hash_key()
            .and_then(|k| k.extract(&self.parts.headers, &self.parts.uri, self.client));
        Ok(())
    }

    /// The identity's headers, set on the upstream request in place of any the client sent.
    fn forward_identity(&mut self, headers: HeaderMap) {
        // `edit` writes the whole header map out: only when there is something to set.
        if headers.is_empty() {
            return;
        }
        // `extend` replaces each name's values with the identity's.
        self.forwarded.edit().extend(headers);
    }

    /// What the session span and hooks keep of the request.
    fn info(&mut self, id: u64, config: &Settings, identity: Option<Arc<Identity>>) -> RequestInfo {
        let path = self.hook_path.clone();
        // Kept apart only when redaction changed it.
        let log_path = match config.redact.apply(path.as_str()) {
            std::borrow::Cow::Owned(redacted) => Some(redacted),
            std::borrow::Cow::Borrowed(_) => None,
        };
        RequestInfo {
            id,
            http: if self.h2 { "h2" } else { "h1" },
            tls: self.over_tls,
            client: self.client,
            path,
            log_path,
            headers: self.hook_headers.take(),
            extensions: self.hook_extensions.take(),
            held: self.held.take(),
            hash_key: self.hash_key.take().map(Vec::into_boxed_slice),
            identity,
        }
    }

    /// Dials the pool (with failover), sends the upgrade, and returns the upstream's
    /// connection past a valid 101 (what it agreed to checked against what the client
    /// offered), or its refusal to relay.
    async fn exchange(
        &self,
        config: &Settings,
        deadline: Instant,
        client_accept: Option<&HeaderValue>,
    ) -> Result<Answer, ProxyError> {
        // Target and (unless the client's is kept) Host depend on the member each try dials.
        let request_for = |member: &Member| {
            let upstream = member.upstream();
            let host = (!self.keep_client_host).then(|| upstream.host_header());
            client::request_head(
                &upstream.request_target(self.path.as_ref()),
                host,
                &self.forwarded,
            )
        };
        let dial::Dialed {
            answer: res,
            mut conn,
            lease,
        } = dial::dial(
            config,
            &self.pool,
            self.hash_key.as_deref(),
            deadline,
            request_for,
        )
        .await?;
        if res.status() != StatusCode::SWITCHING_PROTOCOLS {
            let limit = config.max_response_body_size;
            let (body, cut) = client::read_body(&mut conn, &res, limit).await?;
            return Ok(Answer::Relayed(answer::relay(res, body, cut, limit), lease));
        }
        let expected = self.accept.as_ref().or(client_accept);
        let protocol = answer::verify_switch(res.headers(), expected, &self.offered)?;
        let deflate = self.extensions.accepted(res.headers())?;
        Ok(Answer::Switched(Switched {
            conn,
            protocol,
            deflate,
            headers: res.into_parts().0.headers,
            lease,
        }))
    }
}

/// The key sent upstream and, when the proxy made it, the accept value its 101 must carry.
/// The client's key goes on, as nginx, HAProxy and Envoy forward it: the upstream must then
/// answer with the accept value the proxy gives the client, computed once (`None` here). An
/// HTTP/2 client (RFC 8441) sends no key: the proxy makes one.
fn upstream_key(
    client: &HeaderMap,
    client_accept: Option<&HeaderValue>,
) -> (HeaderValue, Option<HeaderValue>) {
    if let (Some(key), Some(_)) = (client.get(SEC_WEBSOCKET_KEY), client_accept) {
        return (key.clone(), None);
    }
    // base64 of 16 random bytes, and of a SHA-1: always valid header values.
    let key = HeaderValue::try_from(generate_key()).expect("base64 is a valid header value");
    let accept = HeaderValue::try_from(derive_accept_key(key.as_bytes()))
        .expect("base64 is a valid header value");
    (key, Some(accept))
}

/// Whether [`serve`](crate::serve()) accepted the connection over TLS.
fn came_over_tls(extensions: &http::Extensions) -> bool {
    #[cfg(all(feature = "serve", feature = "tls"))]
    return extensions.get::<crate::transport::TlsInfo>().is_some();
    #[cfg(not(all(feature = "serve", feature = "tls")))]
    {
        let _ = extensions;
        false
    }
}

/// The upstream's answer to the upgrade.
enum Answer {
    /// A valid 101.
    Switched(Switched),
    /// Anything else, to relay to the client.
    Relayed(Response<Body>, Lease),
}

/// What the client offered of extensions, as the session's mode forwards it.
enum Extensions {
    /// Tunnel mode: the client's header goes upstream as it is, `offered` if there was one.
    EndToEnd { offered: bool },
    /// Frame mode: the client's valid permessage-deflate offers, forwarded as written (none
    /// with `Deflate::Off`, or without the `deflate` feature).
    Deflate(Offers),
}

impl Extensions {
    fn of(session: &session::Settings, headers: &HeaderMap) -> Self {
        if session.mode == Mode::Tunnel {
            return Self::EndToEnd {
                offered: headers.contains_key(SEC_WEBSOCKET_EXTENSIONS),
            };
        }
        let on = cfg!(feature = "deflate") && session.deflate.mode != Deflate::Off;
        Self::Deflate(if on {
            extensions::offers(headers)
        } else {
            Offers::default()
        })
    }

    /// Whether the client's `Sec-WebSocket-Extensions` goes upstream as it is: always in a
    /// tunnel; in frame mode when every element of it is an offer the proxy can bridge.
    fn as_sent(&self) -> bool {
        match self {
            Self::EndToEnd { .. } => true,
            Self::Deflate(offers) => *offers.upstream() == Upstream::AsSent,
        }
    }

    /// The `Sec-WebSocket-Extensions` the upstream gets in frame mode in place of the
    /// client's, when some of it was dropped.
    fn rewritten(&self) -> Option<HeaderValue> {
        match self {
            Self::Deflate(offers) => match offers.upstream() {
                Upstream::Rewritten(value) => Some(value.clone()),
                _ => None,
            },
            Self::EndToEnd { .. } => None,
        }
    }

    /// The upstream's extensions, checked against what it was offered: in frame mode, the
    /// permessage-deflate it accepted.
    fn accepted(&self, answer: &HeaderMap) -> Result<Option<(Params, HeaderValue)>, ProxyError> {
        match self {
            Self::EndToEnd { offered } => {
                if answer.contains_key(SEC_WEBSOCKET_EXTENSIONS) && !offered {
                    return Err(ProxyError::InvalidUpgrade(
                        "an extension was accepted but none was offered",
                    ));
                }
                Ok(None)
            }
            Self::Deflate(offers) => {
                extensions::accepted(answer, offers).map_err(ProxyError::InvalidUpgrade)
            }
        }
    }
}

/// An upstream that switched protocols: its connection (past the head), chosen subprotocol and
/// headers, and the lease on its member.
struct Switched {
    conn: Transport,
    protocol: Option<HeaderValue>,
    /// The permessage-deflate the upstream accepted (frame mode), and its answer as written.
    deflate: Option<(Params, HeaderValue)>,
    headers: HeaderMap,
    lease: Lease,
}

impl Switched {
    /// Answers the client with its own acceptance and hands the session everything it starts
    /// from; the session runs once the client has its answer.
    fn hand_over(
        self,
        session: &Arc<session::Settings>,
        offers: &Extensions,
        client: detect::ClientHandshake,
        permit: Permit,
        request: RequestInfo,
    ) -> Response<Body> {
        let Switched {
            conn,
            protocol,
            deflate,
            headers,
            lease,
        } = self;
        let negotiated = match offers {
            // A tunnel passes the extensions' frames on unread: both legs agree as they did.
            Extensions::EndToEnd { .. } => {
                let extensions = headers.get(SEC_WEBSOCKET_EXTENSIONS).cloned();
                Negotiated {
                    protocol,
                    client_extensions: extensions.clone(),
                    upstream_extensions: extensions,
                    client_deflate: None,
                    upstream_deflate: None,
                }
            }
            Extensions::Deflate(offers) => {
                let upstream = deflate.as_ref().map(|(params, _)| *params);
                // The client agrees what the upstream agreed; or, compressing at the edge,
                // what the proxy answers it.
                let client = deflate.or_else(|| {
                    let config = &session.deflate;
                    (config.mode == Deflate::Always)
                        .then(|| extensions::edge_answer(offers, &config.compression))
                        .flatten()
                });
                let (client_deflate, client_extensions) = client.unzip();
                Negotiated {
                    protocol,
                    client_extensions,
                    upstream_extensions: headers.get(SEC_WEBSOCKET_EXTENSIONS).cloned(),
                    client_deflate,
                    upstream_deflate: upstream,
                }
            }
        };
        let res = answer::accepted(
            client.accept,
            negotiated.protocol.clone(),
            headers,
            negotiated.client_extensions.clone(),
        );
        lease.opened();
        session::spawn(
            session.clone(),
            Handoff {
                client: client.leg,
                upstream: conn,
                negotiated,
                lease,
                permit,
                request,
            },
        );
        res
    }
}

fn refuse(
    config: &Settings,
    error: ProxyError,
    client: Option<SocketAddr>,
    path: &str,
) -> Response<Body> {
    let status = error.status().as_u16();
    metrics::handshake_failed(error.cause());
    if error.status().is_server_error() {
        tracing::warn!(client = client.map(tracing::field::display), upstream = %config.pool, path, status, cause = error.cause(), "upgrade failed: {error}");
    } else {
        tracing::info!(client = client.map(tracing::field::display), upstream = %config.pool, path, status, cause = error.cause(), "upgrade refused: {error}");
    }
    let mut res = error.into_response();
    if res.status() == http::StatusCode::SERVICE_UNAVAILABLE {
        // Spread, so that the clients refused in one burst do not come back in one.
        res.headers_mut()
            .insert(http::header::RETRY_AFTER, config.retry_after().into());
    }
    res
}
