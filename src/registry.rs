//! The registry of a layer's live sessions: ids, the `max_sessions` limit and graceful
//! shutdown.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

/// Counts a layer's sessions (and dials in progress) and carries the shutdown phase.
#[derive(Debug, Default)]
pub(crate) struct Sessions {
    live: AtomicUsize,
    /// The last session id handed out.
    ids: AtomicU64,
    phase: AtomicU8,
    /// Woken when the phase changes.
    phase_changed: Notify,
    /// Woken when a session ends.
    ended: Notify,
}

pin_project_lite::pin_project! {
    /// Resolves once the shutdown phase reaches `phase`. A session polls it on every wake-up
    /// of its task, so after the first poll it costs one atomic load: the notification is
    /// polled again (it takes the `Notify`'s lock, shared by all sessions) only when the task's
    /// waker is not the one it holds.
    pub(crate) struct PhaseReached<'a> {
        sessions: &'a Sessions,
        phase: u8,
        // The waker the notification was last polled with, and the phase then.
        registered: Option<(Waker, u8)>,
        // Made before the phase is first read: a change after that wakes it.
        #[pin]
        changed: Notified<'a>,
    }
}

impl Future for PhaseReached<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            let now = this.sessions.phase.load(Ordering::Acquire);
            if now >= *this.phase {
                return Poll::Ready(());
            }
            // Still registered: same waker, and no change since (a change consumes the
            // registration, and draining is not yet aborting).
            if let Some((waker, seen)) = this.registered.as_ref() {
                if *seen == now && waker.will_wake(cx.waker()) {
                    return Poll::Pending;
                }
            }
            match this.changed.as_mut().poll(cx) {
                Poll::Pending => {
                    *this.registered = Some((cx.waker().clone(), now));
                    return Poll::Pending;
                }
                // The phase changed, though not far enough (draining, waiting for aborting):
                // wait for the next change.
                Poll::Ready(()) => {
                    this.changed.set(this.sessions.phase_changed.notified());
                    *this.registered = None;
                }
            }
        }
    }
}

/// Why a new session was not admitted.
pub(crate) enum NotAdmitted {
    ShuttingDown,
    Full(usize),
}

/// One admitted session; the count drops when this does.
#[derive(Debug)]
pub(crate) struct Permit(Arc<Sessions>);

impl Permit {
    pub(crate) fn sessions(&self) -> &Arc<Sessions> {
        &self.0
    }
}

/// Drains a [`WsProxyLayer`](crate::WsProxyLayer)'s sessions, from
/// [`WsProxyLayer::shutdown_handle`](crate::WsProxyLayer::shutdown_handle).
///
/// `axum::serve(..).with_graceful_shutdown(..)` stops accepting and waits for HTTP requests,
/// but upgraded connections are no longer its business: this handle is how they end cleanly.
///
/// ```no_run
/// # async fn run(app: axum::Router, listener: tokio::net::TcpListener, layer: axum_ws_proxy::WsProxyLayer) {
/// use std::time::Duration;
/// let shutdown = layer.shutdown_handle();
/// let signal = async { tokio::signal::ctrl_c().await.ok(); };
/// axum::serve(listener, app).with_graceful_shutdown(signal).await.ok();
/// let dropped = shutdown.shutdown(Duration::from_secs(10)).await;
/// println!("{dropped} sessions did not close in time");
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ShutdownHandle(pub(crate) Arc<Sessions>);

impl ShutdownHandle {
    /// Refuses new upgrades with **503**, sends close **1001** "proxy shutting down" to every
    /// live client and upstream, waits up to `grace` for the close handshakes, then drops what
    /// remains. Returns the number of sessions dropped at the deadline (0 when all closed).
    pub async fn shutdown(&self, grace: Duration) -> usize {
        self.0.shut_down(grace).await
    }

    /// Sessions open now (and upgrades being dialled).
    pub fn live_sessions(&self) -> usize {
        self.0.live()
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::AcqRel);
        self.0.ended.notify_waiters();
    }
}

impl Sessions {
    /// Admits a session unless shutting down or at `max` (0: no limit).
    pub(crate) fn admit(self: &Arc<Self>, max: usize) -> Result<Permit, NotAdmitted> {
        if self.phase.load(Ordering::Acquire) != RUNNING {
            return Err(NotAdmitted::ShuttingDown);
        }
        let mut live = self.live.load(Ordering::Acquire);
        loop {
            if max > 0 && live >= max {
                return Err(NotAdmitted::Full(max));
            }
            match self.live.compare_exchange_weak(
                live,
                live + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Ok(Permit(self.clone())),
                Err(now) => live = now,
            }
        }
    }

    /// A new session id, unique per layer.
    pub(crate) fn next_id(&self) -> u64 {
        self.ids.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
    }

    /// Resolves once shutdown has begun (sessions then close with 1001).
    pub(crate) fn draining(&self) -> PhaseReached<'_> {
        self.phase_reached(DRAINING)
    }

    /// Resolves once the shutdown deadline has passed (sessions are then dropped).
    pub(crate) fn aborting(&self) -> PhaseReached<'_> {
        self.phase_reached(ABORTING)
    }

    fn phase_reached(&self, phase: u8) -> PhaseReached<'_> {
        PhaseReached {
            sessions: self,
            phase,
            registered: None,
            changed: self.phase_changed.notified(),
        }
    }

    fn set_phase(&self, phase: u8) {
        self.phase.fetch_max(phase, Ordering::AcqRel);
        self.phase_changed.notify_waiters();
    }

    /// Refuses new sessions, closes live ones with 1001, waits up to `grace` for them to end,
    /// then drops the rest. Returns how many had to be dropped.
    pub(crate) async fn shut_down(&self, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        self.set_phase(DRAINING);
        if self.wait_until_empty(Some(deadline)).await {
            return 0;
        }
        let dropped = self.live();
        self.set_phase(ABORTING);
        // Dropping is immediate; this only waits for the tasks to notice.
        self.wait_until_empty(None).await;
        dropped
    }

    /// Waits for no live sessions; `false` if `deadline` came first.
    async fn wait_until_empty(&self, deadline: Option<Instant>) -> bool {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.live() == 0 {
                return true;
            }
            match deadline {
                Some(d) => {
                    if tokio::time::timeout_at(d, ended).await.is_err() {
                        return self.live() == 0;
                    }
                }
                None => ended.await,
            }
        }
    }
}
