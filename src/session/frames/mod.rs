//! Frame mode: each leg a WebSocket of its own. Without message hooks frames are [`stream`]ed
//! piece by piece, on the raw legs; with them whole messages are [`bridge`]d, through
//! tungstenite's protocol ([`socket`]); both run the same [`drive`] loop and read and write
//! through [`wire`]. [`close`] decides each leg's ending and completes the message bridge's
//! close handshakes; [`stream_close`] completes the streaming bridge's.

pub(crate) mod bridge;
pub(crate) mod close;
pub(crate) mod compressed;
pub(crate) mod drive;
pub(crate) mod socket;
pub(crate) mod stream;
pub(crate) mod stream_close;
pub(crate) mod wire;

use std::future::Future;

use futures_util::future::Either;

use self::socket::Socket;
use tokio_tungstenite::tungstenite::protocol::Role;

pub(crate) use self::bridge::SessionHooks;
use self::compressed::Inflating;
use self::drive::Legs;
use self::wire::Wire;
use crate::registry::Entry;
use crate::session::close_policy::Report;
use crate::session::deflate::{self, Codec, Params};
use crate::session::keepalive::Keepalive;
use crate::session::leg::Side;
use crate::session::leg::Traffic;
use crate::session::settings::Settings;
use crate::transport::Transport;

/// What a frame-mode session runs with, besides its two connections.
pub(crate) struct Run<'a> {
    pub(crate) settings: &'a Settings,
    pub(crate) entry: &'a std::sync::Arc<Entry>,
    pub(crate) to_upstream: &'a mut Traffic,
    pub(crate) to_client: &'a mut Traffic,
    /// Set when a message hook is: whole messages are assembled for it.
    pub(crate) hooks: Option<SessionHooks<'a>>,
    /// permessage-deflate as the client's leg and the upstream's agreed it.
    pub(crate) client_deflate: Option<Params>,
    pub(crate) upstream_deflate: Option<Params>,
}

/// The session in frame mode, from the client's upgraded connection to the end of both close
/// handshakes.
pub(crate) fn run<'a>(
    client: Transport,
    upstream: Transport,
    mut run: Run<'a>,
) -> impl Future<Output = Report> + Send + 'a {
    tracing::debug!("session open");
    // Each bridge is a future of its own, and this is not one more around them: the session
    // is the size of the larger bridge.
    match run.hooks.take() {
        None => Either::Left(streamed(client, upstream, run)),
        Some(hooks) => Either::Right(bridged(client, upstream, run, hooks)),
    }
}

/// What both bridges start from: the keepalive, the limits, and each leg's
/// permessage-deflate with its role.
fn start(run: &Run<'_>) -> (Keepalive, stream::Limits, Leg, Leg) {
    let settings = run.settings;
    let keepalive = Keepalive::new(settings.timeouts, Some(run.entry.clone()));
    let limits = stream::Limits {
        max_frame: Some(settings.max_frame_size),
        max_message: Some(settings.max_message_size),
    };
    let client_leg = run.client_deflate.map(|p| (p, deflate::Role::Server));
    let upstream_leg = run.upstream_deflate.map(|p| (p, deflate::Role::Client));
    (keepalive, limits, client_leg, upstream_leg)
}

/// Both legs, with what both directions share while bridging.
fn legs<'a, C, U>(
    client: &'a mut C,
    upstream: &'a mut U,
    run: &'a mut Run<'_>,
    keepalive: &'a mut Keepalive,
) -> Legs<'a, C, U> {
    Legs {
        client,
        upstream,
        to_upstream: run.to_upstream,
        to_client: run.to_client,
        keepalive,
        entry: run.entry,
    }
}

/// A leg's permessage-deflate, as it agreed it, and the proxy's role on it.
type Leg = Option<(Params, deflate::Role)>;

/// Without message hooks: frames streamed on the raw legs, closed by the same walkers.
async fn streamed(client: Transport, upstream: Transport, mut run: Run<'_>) -> Report {
    let (mut keepalive, limits, client_leg, upstream_leg) = start(&run);
    let config = &run.settings.deflate;
    let (mut client, mut upstream) = (Wire::new(client), Wire::new(upstream));
    let mut flows = stream::Flows::new(
        limits,
        Codec::new(client_leg, upstream_leg, true, config),
        Codec::new(upstream_leg, client_leg, true, config),
    );
    let legs = legs(&mut client, &mut upstream, &mut run, &mut keepalive);
    let plan = stream_close::Plan::of(stream::run(legs, &mut flows).await);
    let (to_client, timeout) = (run.to_client, run.settings.close_timeout);
    let (client, upstream) = (&mut client, &mut upstream);
    stream_close::finish(client, upstream, plan, &mut flows, to_client, timeout).await
}

/// With message hooks: whole messages bridged through tungstenite.
async fn bridged(
    client: Transport,
    upstream: Transport,
    mut run: Run<'_>,
    hooks: SessionHooks<'_>,
) -> Report {
    let (mut keepalive, limits, client_leg, upstream_leg) = start(&run);
    let settings = run.settings;
    let config = &settings.deflate;
    let mut client = Socket::new(Wire::new(client), Role::Server, settings.websocket());
    let mut upstream = upstream_leg_socket(upstream, settings);
    // Hooks read whole messages through tungstenite: a compressed leg is read through a
    // reader that inflates it, and what goes to one is compressed by the bridge.
    for (leg, side) in [(client_leg, Side::Client), (upstream_leg, Side::Upstream)] {
        if let Some(inflate) = Codec::new(leg, None, false, config) {
            let reader = Box::new(Inflating::new(side, limits, inflate));
            match side {
                Side::Client => client.get_mut().set_transform(reader),
                Side::Upstream => upstream.get_mut().set_transform(reader),
            }
        }
    }
    let legs = legs(&mut client, &mut upstream, &mut run, &mut keepalive);
    let sends = (
        Codec::new(None, upstream_leg, false, config),
        Codec::new(None, client_leg, false, config),
    );
    let stopped = bridge::run(legs, hooks, sends).await;
    // Boxed: the close phase is short, and inline it would enlarge every idle session.
    Box::pin(close::finish(
        client,
        upstream,
        stopped,
        run.to_client,
        run.to_upstream,
        settings.close_timeout,
    ))
    .await
}

/// Closes the upstream leg when the client never got its connection (its upgrade failed).
pub(crate) async fn client_vanished(upstream: Transport, settings: &Settings) -> Report {
    let upstream = upstream_leg_socket(upstream, settings);
    close::client_vanished(upstream, settings.close_timeout).await
}

/// The upstream's connection as the proxy's client leg to it.
fn upstream_leg_socket(upstream: Transport, settings: &Settings) -> Socket<Wire<Transport>> {
    Socket::new(Wire::new(upstream), Role::Client, settings.websocket())
}
