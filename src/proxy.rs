//! The path of one upgrade request: validate it, dial the upstream, hand back its answer and,
//! on a 101, start the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use bytes::Bytes;
use http::header::{
    HeaderMap, HeaderValue, HOST, ORIGIN, SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_PROTOCOL,
};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use crate::wire::Wire;

use crate::config::{Config, Mode};
use crate::headers::{self, Forwarded};
use crate::metrics;
use crate::origin::Verdict;
use crate::route::RouteRequest;
use crate::session::{self, RequestInfo, UpstreamLeg};
use crate::sessions::Refusal;
use crate::upstream::Lease;
use crate::{answer, detect, dial, Member, ProxyError, UpstreamPool};

/// Answers one upgrade request (already detected as such).
pub(crate) async fn upgrade<B>(config: Arc<Config>, mut req: Request<B>) -> Response<Body> {
    let client_addr = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0);
    if let Err(e) = crate::request::check(&mut req) {
        let raw = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        let log_path = config.redact.apply(raw).into_owned();
        return refuse(&config, e, client_addr, &log_path);
    }
    let path = req.uri().path_and_query().cloned();
    let raw_path = path.as_ref().map_or("/", PathAndQuery::as_str);
    // Logs never carry secrets from the query; hooks get the path as sent.
    let log_path = config.redact.apply(raw_path).into_owned();
    let hook_path = raw_path.to_owned();

    if config.origins.is_restricted() {
        let refusal = match config.origins.check(req.headers().get(ORIGIN)) {
            Verdict::Allowed => None,
            Verdict::Refused(origin) => Some(ProxyError::OriginNotAllowed(origin)),
            Verdict::Missing => Some(ProxyError::MissingOrigin),
        };
        if let Some(e) = refusal {
            return refuse(&config, e, client_addr, &log_path);
        }
    }
    let client = match detect::client_handshake(&mut req) {
        Ok(client) => client,
        Err(e) => return refuse(&config, e, client_addr, &log_path),
    };
    let permit = match config.sessions.admit(config.max_sessions) {
        Ok(permit) => permit,
        Err(Refusal::ShuttingDown) => {
            return refuse(&config, ProxyError::ShuttingDown, client_addr, &log_path)
        }
        Err(Refusal::Full(n)) => {
            return refuse(
                &config,
                ProxyError::TooManySessions(n),
                client_addr,
                &log_path,
            )
        }
    };
    // Every admitted upgrade gets an id: in its logs, its hooks and (if asked) upstream.
    let id = permit.sessions().next_id();
    let (mut parts, _body) = req.into_parts();
    let held = parts
        .extensions
        .remove::<session::HeldBySession>()
        .and_then(|slot| slot.take());
    let h2 = parts.version == http::Version::HTTP_2;
    let over_tls = came_over_tls(&parts.extensions);
    // Kept for the hooks only: copying them costs nothing when no hook is set.
    let (hook_headers, hook_extensions) = if config.hooks.any() {
        (Some(parts.headers.clone()), Some(parts.extensions.clone()))
    } else {
        (None, None)
    };

    // base64 of 16 random bytes: always a valid header value.
    let key = HeaderValue::try_from(generate_key()).expect("base64 is a valid header value");
    let offered: Vec<HeaderValue> = parts
        .headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .cloned()
        .collect();
    let tunnel = config.mode == Mode::Tunnel;
    let extensions_offered = tunnel && parts.headers.contains_key(SEC_WEBSOCKET_EXTENSIONS);
    // HTTP/2 carries the host as the `:authority` pseudo-header, not `Host`.
    let client_host = parts.headers.get(HOST).cloned().or_else(|| {
        parts
            .uri
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let keep_client_host = config.preserve_host && client_host.is_some();
    // Behind trusted proxies the client is who they say it is: hashing, hooks and logs use
    // that address; `X-Forwarded-For` still gets the peer appended.
    let peer = client_addr;
    let trusted = peer.is_some_and(|a| config.trusted_proxies.contains(a.ip()));
    let client_addr = match peer {
        Some(a) if trusted => Some(SocketAddr::new(
            config.trusted_proxies.client_ip(a.ip(), &parts.headers),
            0,
        )),
        other => other,
    };
    // Balancing reads the client's own headers. Without a routing hook (which may pick another
    // pool) the key is taken now, before the headers move into the upstream request.
    let early_hash_key = match config.route {
        Some(_) => None,
        None => config
            .pool
            .hash_key()
            .and_then(|k| k.extract(&parts.headers, &parts.uri, client_addr)),
    };
    // The routing hook reads the client's headers after they are rewritten: keep a copy then.
    let client_headers = match config.route {
        Some(_) => parts.headers.clone(),
        None => std::mem::take(&mut parts.headers),
    };
    let mut forwarded = headers::upstream_request(
        client_headers,
        Forwarded {
            host: client_host.clone(),
            client_host,
            client_ip: peer.map(|a| a.ip()),
            trusted,
            proto: if over_tls { "https" } else { "http" },
            key: key.clone(),
            keep_extensions: tunnel,
        },
    );
    if let Some(name) = &config.session_id_header {
        forwarded.insert(name.clone(), HeaderValue::from(id));
    }
    let mut pool = config.pool.clone();
    let mut path = path;
    if let Some(route) = &config.route {
        let mut request = RouteRequest {
            parts: &parts,
            client: client_addr,
            upstream_headers: &mut forwarded,
            pool: None,
            path: None,
        };
        if let Err(refusal) = (route.0)(&mut request) {
            let e = ProxyError::Refused(refusal.status, refusal.body);
            return refuse(&config, e, client_addr, &log_path);
        }
        let (chosen, rewritten) = (request.pool, request.path);
        pool = chosen.unwrap_or(pool);
        path = rewritten.or(path);
    }
    let hash_key = match config.route {
        Some(_) => pool
            .hash_key()
            .and_then(|k| k.extract(&parts.headers, &parts.uri, client_addr)),
        None => early_hash_key,
    };
    // Target and (unless the client's is kept) Host depend on the member each try dials.
    let request_for = |member: &Member| {
        let upstream = member.upstream();
        let mut request = Request::new(Empty::<Bytes>::new());
        *request.uri_mut() = upstream.request_uri(path.as_ref());
        *request.headers_mut() = forwarded.clone();
        if !keep_client_host {
            request
                .headers_mut()
                .insert(HOST, upstream.host_header().clone());
        }
        request
    };

    let dialled = Instant::now();
    let deadline = dialled + config.connect_timeout;
    let offer = Offer {
        key: &key,
        protocols: &offered,
        extensions: extensions_offered,
    };
    let handshake = handshake(
        &config,
        &pool,
        hash_key.as_deref(),
        deadline,
        request_for,
        offer,
    );
    match tokio::time::timeout_at(deadline.into(), handshake).await {
        Err(_) => refuse(
            &config,
            ProxyError::Timeout {
                after: config.connect_timeout,
            },
            client_addr,
            &log_path,
        ),
        Ok(Err(e)) => refuse(&config, e, client_addr, &log_path),
        Ok(Ok(Answer::Relayed(res, lease))) => {
            lease.refused();
            metrics::upstream_answered(dialled.elapsed());
            metrics::handshake_failed("upstream_refused");
            tracing::info!(
                id,
                client = client_addr.map(tracing::field::display),
                upstream = %lease.endpoint().member.upstream(),
                path = %log_path,
                status = res.status().as_u16(),
                "upstream refused the upgrade; relaying its answer"
            );
            res
        }
        Ok(Ok(Answer::Switched {
            leg,
            protocol,
            headers,
            lease,
        })) => {
            let res = answer::accepted(client.accept, protocol.clone(), headers, tunnel);
            let info = RequestInfo {
                id,
                http: if h2 { "h2" } else { "h1" },
                tls: over_tls,
                client: client_addr,
                path: hook_path,
                log_path,
                protocol,
                headers: hook_headers,
                extensions: hook_extensions,
                held,
            };
            lease.opened();
            metrics::upstream_answered(dialled.elapsed());
            session::spawn(config, client.on_upgrade, leg, lease, permit, info);
            res
        }
    }
}

/// Whether [`serve`](crate::serve) accepted the connection over TLS.
fn came_over_tls(extensions: &http::Extensions) -> bool {
    #[cfg(all(feature = "serve", feature = "tls"))]
    return extensions.get::<crate::TlsInfo>().is_some();
    #[cfg(not(all(feature = "serve", feature = "tls")))]
    {
        let _ = extensions;
        false
    }
}

enum Answer {
    Switched {
        leg: UpstreamLeg,
        protocol: Option<HeaderValue>,
        headers: HeaderMap,
        lease: Lease,
    },
    Relayed(Response<Body>, Lease),
}

/// What the upstream's 101 is checked against: the key the proxy sent, and what the client
/// offered.
struct Offer<'a> {
    key: &'a HeaderValue,
    protocols: &'a [HeaderValue],
    extensions: bool,
}

/// Dial (with failover), send the upgrade, and either open the upstream leg or collect the
/// refusal.
async fn handshake(
    config: &Config,
    pool: &UpstreamPool,
    hash_key: Option<&[u8]>,
    deadline: Instant,
    request_for: impl Fn(&Member) -> Request<Empty<Bytes>>,
    offer: Offer<'_>,
) -> Result<Answer, ProxyError> {
    let dial::Dialed {
        response: mut res,
        conn,
        lease,
    } = dial::dial(config, pool, hash_key, deadline, request_for).await?;
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        let relayed = answer::relay(res, config.max_response_body_size).await?;
        return Ok(Answer::Relayed(relayed, lease));
    }
    let protocol =
        answer::verify_switch(res.headers(), offer.key, offer.protocols, offer.extensions)?;
    let headers = std::mem::take(res.headers_mut());
    let upgraded = hyper::upgrade::on(&mut res)
        .await
        .map_err(ProxyError::Handshake)?;
    drop(conn);
    let leg = match config.mode {
        Mode::Tunnel => UpstreamLeg::Tunnel(upgraded),
        _ => UpstreamLeg::Frames(Box::new(
            WebSocketStream::from_raw_socket(
                Wire::new(TokioIo::new(upgraded)),
                Role::Client,
                Some(config.websocket()),
            )
            .await,
        )),
    };
    Ok(Answer::Switched {
        leg,
        protocol,
        headers,
        lease,
    })
}

fn refuse(
    config: &Config,
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
    error.into_response()
}
