//! A proxied session: runs detached from the request, bridges, closes, and logs a summary.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use futures_util::future::Either;
use http::HeaderValue;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tracing::field::Empty;
use tracing::Instrument;

use crate::config::Config;
use crate::metrics;
use crate::registry::{Permit, Sessions};
use crate::session::frames::bridge::{self, SessionHooks};
use crate::session::frames::wire::Wire;
use crate::session::keepalive::Keepalive;
use crate::session::leg::{Side, Traffic};
use crate::transport::{Held, Transport};
use crate::upstream::Lease;
use crate::{session::frames::close, session::frames::stream, session::tunnel};

/// The upstream side of a session, already past its handshake.
pub(crate) enum UpstreamLeg {
    /// Message by message. Boxed: the session task keeps the slot it was moved in from, and
    /// inline every tunnel session's task would carry this variant's size too.
    Frames(Box<WebSocketStream<Wire<Transport>>>),
    /// Bytes spliced.
    Tunnel(Transport),
}

/// What the session span records about the request.
pub(crate) struct RequestInfo {
    pub(crate) id: u64,
    pub(crate) client: Option<SocketAddr>,
    /// As sent, for hooks.
    pub(crate) path: String,
    /// With secrets redacted, for the span.
    pub(crate) log_path: String,
    /// How the client came: `h1` (HTTP/1.1 upgrade) or `h2` (RFC 8441 extended CONNECT).
    pub(crate) http: &'static str,
    /// Whether the client's connection is TLS.
    pub(crate) tls: bool,
    pub(crate) protocol: Option<HeaderValue>,
    /// The upgrade request's headers and extensions, kept only when hooks will read them.
    pub(crate) headers: Option<http::HeaderMap>,
    pub(crate) extensions: Option<http::Extensions>,
    /// What the server asked the session to keep while it lives (see [`HeldBySession`]).
    pub(crate) held: Option<Held>,
}

/// Starts the session once the client's 101 has been sent. The task owns both legs and ends on
/// every path: close handshakes are bounded by `close_timeout`.
pub(crate) fn spawn(
    config: Arc<Config>,
    on_upgrade: OnUpgrade,
    upstream: UpstreamLeg,
    lease: Lease,
    permit: Permit,
    info: RequestInfo,
) {
    let span = span(&info, &lease);
    metrics::session_opened(&lease.endpoint().label, info.http, info.tls);
    let hooked = session_info(&config, &info, &lease);
    let held = info.held;
    tokio::spawn(
        async move {
            let _held = held;
            let sessions = permit.sessions().clone();
            let started = Instant::now();
            let mut to_upstream = Traffic::new(Side::Upstream);
            let mut to_client = Traffic::new(Side::Client);
            // Built in place: a `let` first would keep a second copy of it in this task.
            let report = tokio::select! {
                biased;
                report = run(
                    Ctx {
                        config: &config,
                        sessions: &sessions,
                        to_upstream: &mut to_upstream,
                        to_client: &mut to_client,
                        hooked: hooked.as_ref(),
                    },
                    on_upgrade,
                    upstream,
                ) => report,
                // Past the shutdown deadline: drop both sockets where they are.
                () = sessions.aborting() => close::Report::dropped_at_shutdown(),
            };
            let duration = started.elapsed();
            record(&report, duration, &to_upstream, &to_client);
            metrics::session_closed(
                &lease.endpoint().label,
                report.closed_by.as_str(),
                report.client_code,
                report.upstream_code,
            );
            metrics::undeliverable(config.mode.label(), report.undeliverable);
            if let (Some(hook), Some(session)) = (&config.hooks.on_close, hooked) {
                hook(&summary(
                    &session,
                    &report,
                    duration,
                    &to_upstream,
                    &to_client,
                ));
            }
            // The member's and the layer's live counts drop when the session has ended.
            drop(lease);
            drop(permit);
        }
        .instrument(span),
    );
}

/// The session's span: what it is, now; how it went, filled in when it ends.
fn span(info: &RequestInfo, lease: &Lease) -> tracing::Span {
    tracing::info_span!(
        "ws_session",
        id = info.id,
        client = info.client.map(tracing::field::display),
        upstream = %lease.endpoint().member.upstream(),
        upstream_addr = %lease.endpoint().addr,
        path = %info.log_path,
        protocol = info.http,
        tls = info.tls,
        subprotocol = info.protocol.as_ref().and_then(|p| p.to_str().ok()),
        duration_ms = Empty,
        messages_to_upstream = Empty,
        bytes_to_upstream = Empty,
        messages_to_client = Empty,
        bytes_to_client = Empty,
        closed_by = Empty,
        client_close_code = Empty,
        upstream_close_code = Empty,
        close_reason = Empty,
        undeliverable = Empty,
    )
}

/// What hooks see of the session; built only when a hook will read it.
fn session_info(
    config: &Config,
    info: &RequestInfo,
    lease: &Lease,
) -> Option<Arc<crate::SessionInfo>> {
    config.hooks.any().then(|| {
        Arc::new(crate::SessionInfo {
            id: info.id,
            client: info.client,
            path: info.path.clone(),
            upstream: lease.endpoint().member.upstream().clone(),
            upstream_addr: lease.endpoint().addr,
            subprotocol: info
                .protocol
                .as_ref()
                .and_then(|p| p.to_str().ok())
                .map(str::to_owned),
            mode: config.mode,
            request_headers: info.headers.clone().unwrap_or_default(),
            request_extensions: info.extensions.clone().unwrap_or_default(),
        })
    })
}

/// What `on_close` gets.
fn summary(
    session: &crate::SessionInfo,
    report: &close::Report,
    duration: std::time::Duration,
    to_upstream: &Traffic,
    to_client: &Traffic,
) -> crate::SessionSummary {
    crate::SessionSummary {
        session: session.clone(),
        duration,
        messages_to_upstream: to_upstream.messages,
        bytes_to_upstream: to_upstream.bytes,
        messages_to_client: to_client.messages,
        bytes_to_client: to_client.bytes,
        closed_by: report.closed_by,
        client_close_code: report.client_code,
        upstream_close_code: report.upstream_code,
        close_reason: report.reason.clone(),
        undeliverable: report.undeliverable,
    }
}

/// The session's message hooks, if any are set.
fn message_hooks<'a>(
    config: &'a Config,
    session: Option<&Arc<crate::SessionInfo>>,
) -> Option<SessionHooks<'a>> {
    let hooks = &config.hooks;
    if hooks.on_client_message.is_none() && hooks.on_upstream_message.is_none() {
        return None;
    }
    Some(SessionHooks {
        session: session?.clone(),
        to_upstream: hooks.on_client_message.as_ref(),
        to_client: hooks.on_upstream_message.as_ref(),
        state: http::Extensions::new(),
    })
}

/// Records the session's outcome on its span and logs the `session closed` event.
fn record(
    report: &close::Report,
    duration: std::time::Duration,
    to_upstream: &Traffic,
    to_client: &Traffic,
) {
    let span = tracing::Span::current();
    span.record("duration_ms", duration.as_millis() as u64);
    span.record("messages_to_upstream", to_upstream.messages);
    span.record("bytes_to_upstream", to_upstream.bytes);
    span.record("messages_to_client", to_client.messages);
    span.record("bytes_to_client", to_client.bytes);
    span.record("closed_by", report.closed_by.as_str());
    span.record("client_close_code", report.client_code);
    span.record("upstream_close_code", report.upstream_code);
    span.record("close_reason", report.reason.as_str());
    span.record("undeliverable", report.undeliverable);
    tracing::info!("session closed");
}

/// What a session borrows from its task. The traffic counts live in the task so that they
/// survive a session dropped at the shutdown deadline.
struct Ctx<'a> {
    config: &'a Config,
    sessions: &'a Sessions,
    to_upstream: &'a mut Traffic,
    to_client: &'a mut Traffic,
    hooked: Option<&'a Arc<crate::SessionInfo>>,
}

/// The session for its mode. Not an `async fn`: one would keep `upstream` in its state beside
/// the copy each arm moves out, and every idle session would carry both. Each mode's future is
/// boxed so that it takes its own size, not the larger of the two.
fn run<'a>(
    ctx: Ctx<'a>,
    on_upgrade: OnUpgrade,
    upstream: UpstreamLeg,
) -> impl Future<Output = close::Report> + 'a {
    match upstream {
        UpstreamLeg::Tunnel(upstream) => {
            Either::Left(Box::pin(tunnel_session(ctx, on_upgrade, upstream)))
        }
        UpstreamLeg::Frames(upstream) => {
            Either::Right(Box::pin(frames_session(ctx, on_upgrade, upstream)))
        }
    }
}

/// Waits for the client's upgrade and runs `on_open` once it has succeeded.
async fn client_upgrade(
    config: &Config,
    on_upgrade: OnUpgrade,
    hooked: Option<&Arc<crate::SessionInfo>>,
) -> hyper::Result<Upgraded> {
    let upgraded = on_upgrade.await;
    if let (Ok(_), Some(hook), Some(info)) = (&upgraded, &config.hooks.on_open, hooked) {
        hook(info);
    }
    upgraded
}

async fn tunnel_session(ctx: Ctx<'_>, on_upgrade: OnUpgrade, upstream: Transport) -> close::Report {
    match client_upgrade(ctx.config, on_upgrade, ctx.hooked).await {
        Ok(io) => {
            tracing::debug!("tunnel open");
            let mut keepalive = Keepalive::new(ctx.config.timeouts);
            tunnel::run(
                Transport::new(io),
                upstream,
                ctx.to_upstream,
                ctx.to_client,
                &mut keepalive,
                ctx.sessions,
                ctx.config.close_timeout,
            )
            .await
        }
        Err(e) => {
            tracing::debug!("client upgrade failed: {e}");
            drop(upstream);
            close::Report::client_vanished_report()
        }
    }
}

async fn frames_session(
    ctx: Ctx<'_>,
    on_upgrade: OnUpgrade,
    upstream: Box<WebSocketStream<Wire<Transport>>>,
) -> close::Report {
    let config = ctx.config;
    let mut upstream = *upstream;
    let io = match client_upgrade(config, on_upgrade, ctx.hooked).await {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!("client upgrade failed: {e}");
            return Box::pin(close::client_vanished(upstream, config.close_timeout)).await;
        }
    };
    let mut client = WebSocketStream::from_raw_socket(
        Wire::new(TokioIo::new(io)),
        Role::Server,
        Some(config.websocket()),
    )
    .await;
    tracing::debug!("session open");
    let mut keepalive = Keepalive::new(config.timeouts);
    // With message hooks, whole messages are assembled for them; without, frames stream.
    let stopped = match message_hooks(config, ctx.hooked) {
        Some(hooks) => {
            bridge::run(
                &mut client,
                &mut upstream,
                ctx.to_upstream,
                ctx.to_client,
                &mut keepalive,
                ctx.sessions,
                Some(hooks),
            )
            .await
        }
        None => {
            let limits = stream::Limits {
                max_frame: Some(config.max_frame_size),
                max_message: Some(config.max_message_size),
            };
            stream::run(
                &mut client,
                &mut upstream,
                ctx.to_upstream,
                ctx.to_client,
                &mut keepalive,
                ctx.sessions,
                limits,
            )
            .await
        }
    };
    // Boxed: the close phase is short, and inline it would enlarge every idle session.
    Box::pin(close::finish(
        client,
        upstream,
        stopped,
        ctx.to_client,
        ctx.to_upstream,
        config.close_timeout,
    ))
    .await
}
