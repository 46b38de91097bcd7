//! The public handle on a layer's sessions: shutdown and the paced drain.

use std::sync::Arc;
use std::time::Duration;

use crate::registry::drain::DrainProgress;
use crate::registry::sessions::Sessions;

/// Drains a [`WsProxyLayer`](crate::WsProxyLayer)'s sessions, from
/// [`WsProxyLayer::shutdown_handle`](crate::WsProxyLayer::shutdown_handle).
///
/// `axum::serve(..).with_graceful_shutdown(..)` stops accepting and waits for HTTP requests,
/// but upgraded connections are no longer its business: this handle is how they end cleanly,
/// without sending every client back at the same instant. A drain refuses new upgrades with
/// **503**, then asks live sessions to close one after another at an even rate over the
/// [drain window](Self::drain_window), the least recently active first: each client gets
/// **1012** (Service Restart) "proxy draining, reconnect", its upstream **1001**.
///
/// With `axum::serve`, drain beside the server, not after it: a connection that carries
/// WebSocket streams (HTTP/2) keeps it waiting until they close. (`axum_ws_proxy::serve`
/// does this itself: [`Serve::drain_sessions`](crate::serve::Serve::drain_sessions).)
///
/// ```no_run
/// # async fn run(app: axum::Router, listener: tokio::net::TcpListener, layer: axum_ws_proxy::WsProxyLayer) {
/// use std::time::Duration;
/// let shutdown = layer.shutdown_handle().drain_window(Duration::from_secs(20));
/// let (stop, stopped) = tokio::sync::watch::channel(false);
/// tokio::spawn(async move {
///     tokio::signal::ctrl_c().await.ok();
///     let _ = stop.send(true);
/// });
/// let mut signal = stopped.clone();
/// let server = axum::serve(listener, app).with_graceful_shutdown(async move {
///     let _ = signal.wait_for(|s| *s).await;
/// });
/// let mut signal = stopped;
/// let sessions = async move {
///     let _ = signal.wait_for(|s| *s).await;
///     // Closed over 20 s; 10 s more for the last close handshakes.
///     shutdown.shutdown(Duration::from_secs(30)).await
/// };
/// let (_, dropped) = tokio::join!(server, sessions);
/// println!("{dropped} sessions did not close in time");
/// # }
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct ShutdownHandle {
    sessions: Arc<Sessions>,
    window: Option<Duration>,
}

impl ShutdownHandle {
    pub(crate) fn new(sessions: Arc<Sessions>) -> Self {
        Self {
            sessions,
            window: None,
        }
    }

    /// How long a drain takes to ask every live session to close: the first at once, the
    /// last one window later, evenly in between. Default: half the grace given to
    /// [`shutdown`](Self::shutdown) (the other half is for the last close handshakes), and
    /// 10 s for [`drain`](Self::drain). Zero closes them all at once.
    pub fn drain_window(mut self, window: Duration) -> Self {
        self.window = Some(window);
        self
    }

    /// Drains (see above), waits up to `grace` from now for the sessions to end, then drops
    /// what remains. The window is cut to the grace. Returns the number of sessions dropped
    /// at the deadline (0 when all closed).
    ///
    /// A drain already running (from [`drain`](Self::drain)) goes on at its pace, unless
    /// its end would come after this one's window: the sessions it has left are then spread
    /// over what remains of this window.
    pub async fn shutdown(&self, grace: Duration) -> usize {
        let window = self.window.unwrap_or(grace / 2).min(grace);
        self.sessions.shut_down(window, grace).await
    }

    /// Starts a drain without ending anything else: new upgrades are refused from now on,
    /// and live sessions are asked to close over the drain window (10 s unless set). Returns
    /// at once; [`drain_progress`](Self::drain_progress) follows it. For an operator's
    /// "drain this replica" before maintenance; there is no undoing it, short of a restart.
    /// Returns `false` if a drain was already running (it goes on unchanged).
    pub fn drain(&self) -> bool {
        let window = self.window.unwrap_or(DEFAULT_DRAIN_WINDOW);
        self.sessions.start_drain(window)
    }

    /// Where the drain stands, once one has started.
    pub fn drain_progress(&self) -> Option<DrainProgress> {
        self.sessions.drain_progress()
    }

    /// Sessions open now (and upgrades being dialled).
    pub fn live_sessions(&self) -> usize {
        self.sessions.live()
    }
}

/// [`ShutdownHandle::drain`]'s window unless one is set.
const DEFAULT_DRAIN_WINDOW: Duration = Duration::from_secs(10);
