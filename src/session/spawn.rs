//! A proxied session: what the handshake hands over ([`Handoff`]), then a task detached from
//! the request that bridges or tunnels, closes, and logs a summary.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::HeaderValue;
use tracing::field::Empty;
use tracing::Instrument;

use crate::identity::Identity;
use crate::metrics;
use crate::registry::sessions::Registered;
use crate::registry::{Entry, Permit};
use crate::session::close_policy::Report;
use crate::session::deflate::Params;
use crate::session::frames::{self, SessionHooks};
use crate::session::hooks::{SessionInfo, SessionSummary};
use crate::session::keepalive::Keepalive;
use crate::session::leg::{Side, Traffic};
use crate::session::mode::Mode;
use crate::session::settings::Settings;
use crate::session::tunnel;
use crate::transport::{ClientLeg, Held, Transport};
use crate::upstream::Lease;

/// Everything a session starts from, handed over by the handshake once the upstream switched
/// protocols and the client's answer is on its way: both legs, what each negotiated, the lease
/// on the member, the admission permit, and what the session keeps of the request. The session
/// builds its legs for its mode from it.
pub(crate) struct Handoff {
    /// Resolves to the client's connection (or HTTP/2 stream) once its answer has been sent.
    pub(crate) client: ClientLeg,
    /// The upstream's connection, past its 101 (bytes read past it are kept in it).
    pub(crate) upstream: Transport,
    pub(crate) negotiated: Negotiated,
    pub(crate) lease: Lease,
    pub(crate) permit: Permit,
    pub(crate) request: RequestInfo,
}

/// What the handshake agreed on each leg.
pub(crate) struct Negotiated {
    /// The subprotocol the upstream chose, as the client was answered.
    pub(crate) protocol: Option<HeaderValue>,
    /// `Sec-WebSocket-Extensions` as the client was answered (logged with the session), and
    /// as the upstream accepted them. Only a tunnel carries extensions today, the same value on
    /// both legs, so the upstream's is not read yet.
    pub(crate) client_extensions: Option<HeaderValue>,
    #[allow(dead_code)]
    pub(crate) upstream_extensions: Option<HeaderValue>,
    /// permessage-deflate as each leg agreed it (frame mode; a tunnel's passes unread).
    pub(crate) client_deflate: Option<Params>,
    pub(crate) upstream_deflate: Option<Params>,
}

/// What the session span and hooks keep of the request.
pub(crate) struct RequestInfo {
    pub(crate) id: u64,
    pub(crate) client: Option<SocketAddr>,
    /// As sent, for hooks (copied for them; it shares the request head's buffer, so the
    /// session task does not keep it).
    pub(crate) path: http::uri::PathAndQuery,
    /// With secrets redacted, for the span, where redaction changed it (see
    /// [`log_path`](Self::log_path)).
    pub(crate) log_path: Option<String>,
    /// How the client came: `h1` (HTTP/1.1 upgrade) or `h2` (RFC 8441 extended CONNECT).
    pub(crate) http: &'static str,
    /// Whether the client's connection is TLS.
    pub(crate) tls: bool,
    /// The upgrade request's headers and extensions, kept only when hooks will read them.
    pub(crate) headers: Option<http::HeaderMap>,
    pub(crate) extensions: Option<http::Extensions>,
    /// What the server asked the session to keep while it lives (see
    /// [`HeldBySession`](crate::transport::HeldBySession)).
    pub(crate) held: Option<Held>,
    /// The balancing key, when the pool hashes (the registry keeps it for rebalancing).
    pub(crate) hash_key: Option<Box<[u8]>>,
    /// Whom the session belongs to, when the identity phase said.
    pub(crate) identity: Option<Arc<Identity>>,
}

impl RequestInfo {
    /// The path as logs show it: with secrets redacted.
    pub(crate) fn log_path(&self) -> &str {
        self.log_path.as_deref().unwrap_or(self.path.as_str())
    }
}

/// Starts the session. The task owns both legs and ends on every path: close handshakes are
/// bounded by `close_timeout`.
pub(crate) fn spawn(settings: Arc<Settings>, handoff: Handoff) {
    let Handoff {
        client,
        upstream,
        negotiated,
        lease,
        permit,
        request,
    } = handoff;
    let span = span(&request, &negotiated, &lease);
    metrics::session_opened(&lease.endpoint().live_gauge, request.http, request.tls);
    let hooked = session_info(&settings, &request, &negotiated, &lease);
    // Only these go into the task: the header values may share the upstream's read buffer.
    let (client_deflate, upstream_deflate) =
        (negotiated.client_deflate, negotiated.upstream_deflate);
    drop(negotiated);
    let held = request.held;
    let registered = permit.sessions().register(
        request.id,
        lease.endpoint().clone(),
        request.hash_key,
        request.identity,
    );
    let task = Task {
        settings,
        held,
        registered,
        hooked,
        client_deflate,
        upstream_deflate,
        client,
        upstream,
        lease,
        permit,
    };
    // One task type per mode: each session's task is the size of its own mode's. Boxed where
    // it is made: a task's future is moved as the task is made and finished, and these are
    // kilobytes (copying the tunnel's 2.1 KB cost more than the box, callgrind).
    match task.settings.mode {
        Mode::Tunnel => tokio::spawn(Box::pin(task.run::<TunnelSession>()).instrument(span)),
        Mode::Frames => tokio::spawn(Box::pin(task.run::<FramesSession>()).instrument(span)),
    };
}

/// What a session's task owns.
struct Task {
    settings: Arc<Settings>,
    held: Option<Held>,
    registered: Registered,
    hooked: Option<Arc<SessionInfo>>,
    client_deflate: Option<Params>,
    upstream_deflate: Option<Params>,
    client: ClientLeg,
    upstream: Transport,
    lease: Lease,
    permit: Permit,
}

impl Task {
    async fn run<M: ModeSession>(self) {
        let _held = self.held;
        let (settings, registered, hooked) = (self.settings, self.registered, self.hooked);
        let sessions = registered.sessions().clone();
        let started = Instant::now();
        let mut to_upstream = Traffic::new(Side::Upstream);
        let mut to_client = Traffic::new(Side::Client);
        // Built in place: a `let` first would keep a second copy of it in this task.
        let report = tokio::select! {
            biased;
            report = M::run(
                Ctx {
                    settings: &settings,
                    entry: registered.entry(),
                    to_upstream: &mut to_upstream,
                    to_client: &mut to_client,
                    hooked: hooked.as_ref(),
                    client_deflate: self.client_deflate,
                    upstream_deflate: self.upstream_deflate,
                },
                self.client,
                self.upstream,
            ) => report,
            // Past the shutdown deadline: drop both sockets where they are.
            () = sessions.aborting() => Report::dropped_at_shutdown(),
        };
        let duration = started.elapsed();
        record(&report, duration, &to_upstream, &to_client);
        metrics::session_closed(
            &self.lease.endpoint().live_gauge,
            report.closed_by.as_str(),
            report.client_code,
            report.upstream_code,
        );
        metrics::undeliverable(settings.mode.label(), report.undeliverable);
        if let (Some(hook), Some(session)) = (&settings.hooks.on_close, hooked) {
            hook(&summary(
                &session,
                &report,
                duration,
                &to_upstream,
                &to_client,
            ));
        }
        // The member's and the layer's live counts drop when the session has ended.
        drop(registered);
        drop(self.lease);
        drop(self.permit);
    }
}

/// The session's span: what it is, now; how it went, filled in when it ends.
fn span(request: &RequestInfo, negotiated: &Negotiated, lease: &Lease) -> tracing::Span {
    tracing::info_span!(
        "ws_session",
        id = request.id,
        client = request.client.map(tracing::field::display),
        upstream = %lease.endpoint().member.upstream(),
        upstream_addr = %lease.endpoint().addr,
        path = %request.log_path(),
        subject = request.identity.as_ref().map(|i| i.subject()),
        tenant = request.identity.as_ref().and_then(|i| i.tenant_name()),
        protocol = request.http,
        tls = request.tls,
        subprotocol = negotiated.protocol.as_ref().and_then(|p| p.to_str().ok()),
        extensions = negotiated.client_extensions.as_ref().and_then(|e| e.to_str().ok()),
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
    settings: &Settings,
    request: &RequestInfo,
    negotiated: &Negotiated,
    lease: &Lease,
) -> Option<Arc<SessionInfo>> {
    settings.hooks.any().then(|| {
        Arc::new(SessionInfo {
            id: request.id,
            client: request.client,
            path: request.path.as_str().to_owned(),
            upstream: lease.endpoint().member.upstream().clone(),
            upstream_addr: lease.endpoint().addr,
            subprotocol: negotiated
                .protocol
                .as_ref()
                .and_then(|p| p.to_str().ok())
                .map(str::to_owned),
            mode: settings.mode,
            request_headers: request.headers.clone().unwrap_or_default(),
            request_extensions: request.extensions.clone().unwrap_or_default(),
            identity: request.identity.clone(),
        })
    })
}

/// What `on_close` gets.
fn summary(
    session: &SessionInfo,
    report: &Report,
    duration: std::time::Duration,
    to_upstream: &Traffic,
    to_client: &Traffic,
) -> SessionSummary {
    SessionSummary {
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
    settings: &'a Settings,
    session: Option<&Arc<SessionInfo>>,
) -> Option<SessionHooks<'a>> {
    let hooks = &settings.hooks;
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
    report: &Report,
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
    settings: &'a Settings,
    entry: &'a Arc<Entry>,
    to_upstream: &'a mut Traffic,
    to_client: &'a mut Traffic,
    hooked: Option<&'a Arc<SessionInfo>>,
    client_deflate: Option<Params>,
    upstream_deflate: Option<Params>,
}

/// A mode's session, as a type: the task is made for one mode at a time.
trait ModeSession {
    fn run<'a>(
        ctx: Ctx<'a>,
        client: ClientLeg,
        upstream: Transport,
    ) -> impl Future<Output = Report> + Send + 'a;
}

struct TunnelSession;

impl ModeSession for TunnelSession {
    fn run<'a>(
        ctx: Ctx<'a>,
        client: ClientLeg,
        upstream: Transport,
    ) -> impl Future<Output = Report> + Send + 'a {
        tunnel_session(ctx, client, upstream)
    }
}

struct FramesSession;

impl ModeSession for FramesSession {
    fn run<'a>(
        ctx: Ctx<'a>,
        client: ClientLeg,
        upstream: Transport,
    ) -> impl Future<Output = Report> + Send + 'a {
        frames_session(ctx, client, upstream)
    }
}

/// Waits for the client's upgrade and runs `on_open` once it has succeeded.
async fn client_upgrade(ctx: &Ctx<'_>, client: ClientLeg) -> Result<Transport, String> {
    let upgraded = client.connected().await;
    if let (Ok(_), Some(hook), Some(info)) = (&upgraded, &ctx.settings.hooks.on_open, ctx.hooked) {
        hook(info);
    }
    upgraded
}

async fn tunnel_session(ctx: Ctx<'_>, client: ClientLeg, upstream: Transport) -> Report {
    match client_upgrade(&ctx, client).await {
        Ok(io) => {
            tracing::debug!("tunnel open");
            let mut keepalive = Keepalive::new(ctx.settings.timeouts, Some(ctx.entry.clone()));
            tunnel::run(
                io,
                upstream,
                ctx.to_upstream,
                ctx.to_client,
                &mut keepalive,
                ctx.entry,
                ctx.settings.close_timeout,
            )
            .await
        }
        Err(e) => {
            tracing::debug!("client upgrade failed: {e}");
            drop(upstream);
            Report::client_vanished_report()
        }
    }
}

async fn frames_session(ctx: Ctx<'_>, client: ClientLeg, upstream: Transport) -> Report {
    let settings = ctx.settings;
    let io = match client_upgrade(&ctx, client).await {
        Ok(io) => io,
        Err(e) => {
            tracing::debug!("client upgrade failed: {e}");
            return Box::pin(frames::client_vanished(upstream, settings)).await;
        }
    };
    frames::run(
        io,
        upstream,
        frames::Run {
            settings,
            entry: ctx.entry,
            to_upstream: ctx.to_upstream,
            to_client: ctx.to_client,
            hooks: message_hooks(settings, ctx.hooked),
            client_deflate: ctx.client_deflate,
            upstream_deflate: ctx.upstream_deflate,
        },
    )
    .await
}
