//! One live session as the registry holds it, and the shards that hold them.

use std::borrow::Cow;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::{Context, Poll, Waker};

use futures_util::task::AtomicWaker;
use tokio::time::Instant;

use crate::identity::Identity;
use crate::upstream::Endpoint;

/// Why the proxy asks a healthy session to close.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cause {
    /// Shutdown, or an operator's drain.
    Drain,
    /// Rebalancing after members were added to its pool.
    Rebalance,
    /// Its identity's expiry came (and was not extended).
    Expired,
    /// Its subject or token id was revoked.
    Revoked,
    /// The session API (an operator, or the application) closed it.
    Closed,
}

impl Cause {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Drain => "drain",
            Self::Rebalance => "rebalance",
            Self::Expired => "expired",
            Self::Revoked => "revoked",
            Self::Closed => "closed",
        }
    }
}

/// A close the proxy asks of a session: the code and reason the client gets; the upstream
/// gets 1001 "going away" with the same reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct CloseRequest {
    pub(crate) cause: Cause,
    pub(crate) client_code: u16,
    /// Fixed for the proxy's own causes; the session API's caller may choose one (at most
    /// 123 bytes, checked there).
    pub(crate) reason: Cow<'static, str>,
}

impl CloseRequest {
    /// 1012 Service Restart: the client should reconnect, after a backoff with jitter.
    pub(crate) const DRAIN: Self = Self {
        cause: Cause::Drain,
        client_code: 1012,
        reason: Cow::Borrowed("proxy draining, reconnect"),
    };
    pub(crate) const REBALANCE: Self = Self {
        cause: Cause::Rebalance,
        client_code: 1012,
        reason: Cow::Borrowed("rebalancing, reconnect"),
    };
    /// 1008 Policy Violation: the credential the session was opened with has expired; the
    /// client reconnects with a fresh one.
    pub(crate) const EXPIRED: Self = Self {
        cause: Cause::Expired,
        client_code: 1008,
        reason: Cow::Borrowed("token expired"),
    };
    /// 1008: the subject or token was revoked.
    pub(crate) const REVOKED: Self = Self {
        cause: Cause::Revoked,
        client_code: 1008,
        reason: Cow::Borrowed("revoked"),
    };
}

/// One live session.
#[derive(Debug)]
pub(crate) struct Entry {
    id: u64,
    /// The member's address the session was dialled to.
    endpoint: Arc<Endpoint>,
    /// The balancing key, when its pool hashes.
    hash_key: Option<Box<[u8]>>,
    /// Whom the session belongs to, when the identity phase said.
    identity: Option<Arc<Identity>>,
    /// When it started (listings show its age).
    started: Instant,
    /// Time from the registry's epoch to the last data message either way (or to the
    /// session's start), as `seconds << 30 | nanoseconds`: ordered as the times are, and
    /// made with a shift instead of a division on every message.
    last_active: AtomicU64,
    epoch: Instant,
    /// Set once, by whoever asks first.
    close: OnceLock<CloseRequest>,
    /// Cleared when the session ends: a drain's or a rebalancing's list may still hold it.
    live: AtomicBool,
    /// Set once the session has a deadline in the registry's expiry queue.
    expiring: AtomicBool,
    /// The session's task, woken when `close` is set.
    waker: AtomicWaker,
}

impl Entry {
    pub(super) fn new(
        id: u64,
        endpoint: Arc<Endpoint>,
        hash_key: Option<Box<[u8]>>,
        identity: Option<Arc<Identity>>,
        epoch: Instant,
    ) -> Self {
        let now = Instant::now();
        Self {
            id,
            endpoint,
            hash_key,
            identity,
            started: now,
            last_active: AtomicU64::new(stamp(epoch, now)),
            epoch,
            close: OnceLock::new(),
            live: AtomicBool::new(true),
            expiring: AtomicBool::new(false),
            waker: AtomicWaker::new(),
        }
    }

    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.endpoint
    }

    pub(crate) fn hash_key(&self) -> Option<&[u8]> {
        self.hash_key.as_deref()
    }

    pub(crate) fn identity(&self) -> Option<&Arc<Identity>> {
        self.identity.as_ref()
    }

    pub(crate) fn started(&self) -> Instant {
        self.started
    }

    /// Time since the last data message (or the start).
    pub(crate) fn idle(&self) -> std::time::Duration {
        let last = self.last_active.load(Ordering::Relaxed);
        let at = std::time::Duration::new(last >> 30, (last & ((1 << 30) - 1)) as u32);
        Instant::now().saturating_duration_since(self.epoch + at)
    }

    /// A data message passed at `now` (the session calls this at most every 100 ms). One
    /// relaxed store: only the session's task writes.
    pub(crate) fn touch(&self, now: Instant) {
        self.last_active
            .store(stamp(self.epoch, now), Ordering::Relaxed);
    }

    /// When the session last carried a data message (comparable between sessions only).
    pub(crate) fn last_active(&self) -> u64 {
        self.last_active.load(Ordering::Relaxed)
    }

    /// The order a drain and rebalancing take sessions in: least recently active first,
    /// among equals the oldest.
    pub(crate) fn idle_first(entries: &mut [Arc<Entry>]) {
        entries.sort_by_key(|e| (e.last_active(), e.id()));
    }

    /// The session has a deadline in the expiry queue (removed when it ends).
    // SeqCst here and in `ended`/`is_live`: an extension (`expiring` set, then `live` read)
    // and the session's end (`live` cleared, then `expiring` read) must not both read the old
    // value, or a deadline would stay queued for an ended session.
    pub(crate) fn set_expiring(&self) {
        self.expiring.store(true, Ordering::SeqCst);
    }

    pub(crate) fn is_expiring(&self) -> bool {
        self.expiring.load(Ordering::SeqCst)
    }

    /// Whether the session is still running.
    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::SeqCst)
    }

    /// The session has ended.
    pub(super) fn ended(&self) {
        self.live.store(false, Ordering::SeqCst);
    }

    /// Asks the session to close; `false` if it had been asked already, or has ended.
    pub(super) fn request_close(&self, request: CloseRequest) -> bool {
        if !self.is_live() {
            return false;
        }
        let asked = self.close.set(request).is_ok();
        if asked {
            self.waker.wake();
        }
        asked
    }

    /// Whether the session has been asked to close.
    pub(crate) fn close_requested(&self) -> bool {
        self.close.get().is_some()
    }

    /// What the session polls to learn it was asked to close.
    pub(crate) fn closing(&self) -> Closing<'_> {
        Closing {
            entry: self,
            registered: None,
        }
    }
}

fn stamp(epoch: Instant, now: Instant) -> u64 {
    let since = now.saturating_duration_since(epoch);
    // Nanoseconds are below 2^30; 34 bits of seconds last 500 years.
    (since.as_secs() << 30) | u64::from(since.subsec_nanos())
}

/// A session's view of its close request. The session's task polls it on every wake-up, so
/// while nothing is asked it costs one atomic load and a waker comparison: the waker is
/// registered again only when the task's changes.
pub(crate) struct Closing<'a> {
    entry: &'a Entry,
    registered: Option<Waker>,
}

impl Closing<'_> {
    pub(crate) fn poll(&mut self, cx: &mut Context<'_>) -> Poll<CloseRequest> {
        if let Some(request) = self.entry.close.get() {
            return Poll::Ready(request.clone());
        }
        // The only wake() takes the waker after setting the request, which this sees first.
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        self.entry.waker.register(cx.waker());
        self.registered = Some(cx.waker().clone());
        // A request set before the registration woke nothing: look again.
        match self.entry.close.get() {
            Some(request) => Poll::Ready(request.clone()),
            None => Poll::Pending,
        }
    }
}

/// Session ids are unique and sequential: multiplied by an odd constant they spread over the
/// table (a bijection), without SipHash's cost.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type Shard = HashMap<u64, Arc<Entry>, BuildHasherDefault<IdHasher>>;

/// Enough that two workers rarely meet on one lock, and a walk of all of them stays cheap.
const SHARDS: usize = 16;

/// The live sessions' entries, by id, in shards chosen by id.
#[derive(Debug)]
pub(super) struct Shards(Box<[Mutex<Shard>]>);

impl Default for Shards {
    fn default() -> Self {
        Self((0..SHARDS).map(|_| Mutex::default()).collect())
    }
}

impl std::fmt::Debug for IdHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("IdHasher")
    }
}

impl Shards {
    fn shard(&self, id: u64) -> MutexGuard<'_, Shard> {
        // Nothing under these locks can panic halfway; take them regardless.
        self.0[(id % SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn insert(&self, entry: &Arc<Entry>) {
        self.shard(entry.id).insert(entry.id, entry.clone());
    }

    pub(super) fn remove(&self, entry: &Entry) {
        self.shard(entry.id).remove(&entry.id);
    }

    pub(super) fn get(&self, id: u64) -> Option<Arc<Entry>> {
        self.shard(id).get(&id).cloned()
    }

    /// The entries `keep` selects, one shard's lock at a time (never all at once).
    pub(super) fn select(&self, mut keep: impl FnMut(&Entry) -> bool) -> Vec<Arc<Entry>> {
        let mut out = Vec::new();
        for shard in self.0.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            out.extend(shard.values().filter(|e| keep(e)).cloned());
        }
        out
    }

    pub(super) fn snapshot(&self) -> Vec<Arc<Entry>> {
        let mut all = Vec::new();
        for shard in self.0.iter() {
            let shard = shard.lock().unwrap_or_else(|e| e.into_inner());
            all.extend(shard.values().cloned());
        }
        all
    }
}
