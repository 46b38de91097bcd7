//! A layer's live sessions: admission (`max_sessions`), the shutdown phase, the entries'
//! shards, and the drain started on them.
//!
//! Entries live in shards, each behind its own lock taken twice per session (registered,
//! removed) and by whoever walks the sessions (a drain, rebalancing). A session learns that it
//! was asked to close from its own entry: one atomic load per wake-up of its task.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::identity::Identity;
use crate::registry::drain::{self, Drain, DrainProgress};
use crate::registry::entry::{CloseRequest, Entry, Shards};
use crate::registry::expiry::Expiries;
use crate::registry::revoked::Revocations;
use crate::upstream::Endpoint;

const RUNNING: u8 = 0;
const DRAINING: u8 = 1;
const ABORTING: u8 = 2;

/// Counts a layer's sessions (and dials in progress), holds their entries and carries the
/// shutdown phase.
#[derive(Debug)]
pub(crate) struct Sessions {
    live: AtomicUsize,
    /// Live sessions' entries.
    shards: Shards,
    /// What last-activity times count from.
    epoch: Instant,
    /// The drain, once one has started.
    drain: Drain,
    /// The last session id handed out.
    ids: AtomicU64,
    phase: AtomicU8,
    /// Woken when the phase changes.
    phase_changed: Notify,
    /// Woken when a session ends.
    ended: Notify,
    /// Sessions' expiries (their identities').
    pub(crate) expiries: Arc<Expiries>,
    /// Subjects and token ids refused until a time.
    pub(crate) revoked: Revocations,
}

impl Default for Sessions {
    fn default() -> Self {
        Self {
            live: AtomicUsize::new(0),
            shards: Shards::default(),
            epoch: Instant::now(),
            drain: Drain::default(),
            ids: AtomicU64::new(0),
            phase: AtomicU8::new(RUNNING),
            phase_changed: Notify::new(),
            ended: Notify::new(),
            expiries: Arc::default(),
            revoked: Revocations::default(),
        }
    }
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

impl Drop for Permit {
    fn drop(&mut self) {
        // Nobody waits for sessions to end before a drain begins, and the `Notify` is a lock
        // every session's end would take. (SeqCst: this load and the drain's phase store, this
        // decrement and its count's load, are each seen in one order.)
        self.0.live.fetch_sub(1, Ordering::SeqCst);
        if self.0.phase.load(Ordering::SeqCst) != RUNNING {
            self.0.ended.notify_waiters();
        }
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
        self.live.load(Ordering::SeqCst)
    }

    /// Enters a session that has started; it leaves when the guard drops. A session that
    /// starts while a drain runs (its dial began before) is asked to close at once; one whose
    /// identity expires is closed then.
    pub(crate) fn register(
        self: &Arc<Self>,
        id: u64,
        endpoint: Arc<Endpoint>,
        hash_key: Option<Box<[u8]>>,
        identity: Option<Arc<Identity>>,
    ) -> Registered {
        let expires = identity.as_ref().and_then(|i| i.expiry());
        let entry = Arc::new(Entry::new(id, endpoint, hash_key, identity, self.epoch));
        self.shards.insert(&entry);
        if let Some(at) = expires {
            self.expiries.set(&entry, instant_of(at));
        }
        // A revocation made while this session was dialled reaches it here.
        if entry
            .identity()
            .is_some_and(|identity| self.revoked.refuses(identity))
        {
            self.request_close(&entry, CloseRequest::REVOKED);
        }
        // After the insert: a drain that began before it either saw the entry or set the
        // phase this reads (the shard's lock orders the two).
        if self.phase.load(Ordering::Acquire) != RUNNING
            && self.request_close(&entry, CloseRequest::DRAIN)
        {
            self.drain.asked_one();
        }
        Registered::new(self.clone(), entry)
    }

    /// Every live session's entry, at one moment.
    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.shards.snapshot()
    }

    /// One live session's entry.
    pub(crate) fn entry(&self, id: u64) -> Option<Arc<Entry>> {
        self.shards.get(id)
    }

    /// The live sessions' entries `keep` selects, a shard at a time.
    pub(crate) fn select(&self, keep: impl FnMut(&Entry) -> bool) -> Vec<Arc<Entry>> {
        self.shards.select(keep)
    }

    /// Asks a session to close; `false` if it had been asked already. Counted by reason.
    pub(crate) fn request_close(&self, entry: &Entry, request: CloseRequest) -> bool {
        let cause = request.cause.label();
        let asked = entry.request_close(request);
        if asked {
            crate::metrics::session_shed(cause);
        }
        asked
    }

    fn remove(&self, entry: &Entry) {
        self.shards.remove(entry);
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
        self.phase.fetch_max(phase, Ordering::SeqCst);
        // Sessions wait only for the deadline (a drain reaches each through its entry):
        // waking every session's task when a drain begins would queue the drain's first
        // close behind a thousand polls.
        if phase == ABORTING {
            self.phase_changed.notify_waiters();
        }
    }

    /// Drains over `window`, waits up to `grace` for the sessions to end, then drops the
    /// rest. Returns how many had to be dropped.
    pub(crate) async fn shut_down(self: &Arc<Self>, window: Duration, grace: Duration) -> usize {
        let deadline = Instant::now() + grace;
        if !self.start_drain(window) {
            self.drain.end_by(Instant::now() + window);
        }
        if self.wait_until_empty(Some(deadline)).await {
            return 0;
        }
        let dropped = self.live();
        self.set_phase(ABORTING);
        // Dropping is immediate; this only waits for the tasks to notice.
        self.wait_until_empty(None).await;
        dropped
    }

    /// Starts the paced drain, unless one runs already (`false`).
    pub(crate) fn start_drain(self: &Arc<Self>, window: Duration) -> bool {
        if !self.drain.begin(window) {
            return false;
        }
        self.set_phase(DRAINING);
        let sessions = self.clone();
        let paced = async move {
            let live = sessions.entries();
            let ask = |entry: &Entry| sessions.request_close(entry, CloseRequest::DRAIN);
            drain::run(&sessions.drain, live, ask).await;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn(paced)),
            // No runtime to pace on: every session is asked at once.
            Err(_) => {
                for entry in self.entries() {
                    if self.request_close(&entry, CloseRequest::DRAIN) {
                        self.drain.asked_one();
                    }
                }
                self.drain.finished();
            }
        }
        true
    }

    pub(crate) fn drain_progress(&self) -> Option<DrainProgress> {
        self.drain.progress(self.live())
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

/// A session's place in the registry, held by its task: it leaves when this drops.
#[derive(Debug)]
pub(crate) struct Registered {
    sessions: Arc<Sessions>,
    entry: Arc<Entry>,
}

impl Registered {
    fn new(sessions: Arc<Sessions>, entry: Arc<Entry>) -> Self {
        Self { sessions, entry }
    }

    pub(crate) fn entry(&self) -> &Arc<Entry> {
        &self.entry
    }

    pub(crate) fn sessions(&self) -> &Arc<Sessions> {
        &self.sessions
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.entry.ended();
        self.sessions.remove(&self.entry);
        // After `ended`: an extension racing this end sees the entry gone, or is undone here.
        if self.entry.is_expiring() {
            self.sessions.expiries.remove(self.entry.id());
        }
    }
}

/// The monotonic instant of a wall-clock time (the past is now).
pub(crate) fn instant_of(at: std::time::SystemTime) -> Instant {
    let now = Instant::now();
    match at.duration_since(std::time::SystemTime::now()) {
        Ok(ahead) => now
            .checked_add(ahead)
            .unwrap_or(now + Duration::from_secs(30 * 365 * 86_400)),
        Err(_) => now,
    }
}
