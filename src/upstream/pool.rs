//! A set of upstream members: picking one per session, passive health, membership that
//! changes at run time, and DNS re-resolution.

use crate::error::ProxyError;
use std::collections::HashMap;
use std::fmt;
use std::future::poll_fn;
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use smallvec::SmallVec;
use std::time::{Duration, Instant};

use tower::discover::{Change, Discover};

use super::balance::{fnv1a, rendezvous_score, Balance, FNV_OFFSET};
use super::rebalance::{Rebalance, RebalanceStatus};
use super::resolve::{Resolve, SystemResolver};
use super::url::{ParseUpstreamError, ParseUpstreamErrorKind, Upstream};
use super::Member;

/// nginx's `max_fails` default.
const DEFAULT_MAX_FAILS: u32 = 1;
/// nginx's `fail_timeout` default.
const DEFAULT_FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// How often host names are looked up again.
const DEFAULT_RESOLVE_EVERY: Duration = Duration::from_secs(30);

/// The upstreams a [`WsProxyLayer`](crate::WsProxyLayer) forwards to: one or more
/// [`Member`]s, a balancing strategy, passive health checks, and membership that can change
/// while the proxy runs.
///
/// A pool is a shared handle: clones see and change the same members, so keep one to
/// [`insert`](Self::insert) and [`remove`](Self::remove) members, or hand it a
/// [`Discover`] stream with [`watch`](Self::watch); those `&self` methods, and
/// [`update_from`](Self::update_from), change the pool for every handle.
///
/// The settings ([`balance`](Self::balance), [`max_fails`](Self::max_fails), ...) are a
/// builder's and have value semantics: they consume the handle and never change what another
/// handle sees. On a handle that has clones, a setter returns a new pool with the same members
/// (and fresh health state) and the new setting; the clones keep the old one:
///
/// ```
/// use axum_ws_proxy::upstream::{Balance, UpstreamPool};
///
/// let base = UpstreamPool::from_urls(["ws://10.0.0.1:3000", "ws://10.0.0.2:3000"])?;
/// let round_robin = base.clone().balance(Balance::RoundRobin);
/// assert!(format!("{base:?}").contains("balance: LeastConn"));
/// assert!(format!("{round_robin:?}").contains("balance: RoundRobin"));
///
/// // Two pools from here on: a member inserted into one is not in the other.
/// round_robin.insert("ws://10.0.0.3:3000".parse::<axum_ws_proxy::upstream::Member>()?);
/// assert_eq!(base.members().len(), 2);
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
///
/// Members are URLs; a member whose host is a name is resolved when first needed and again
/// every [`resolve_every`](Self::resolve_every), and every address it resolves to is balanced
/// as its own endpoint (so a Kubernetes headless Service spreads over its pods).
///
/// ```
/// use std::time::Duration;
/// use axum_ws_proxy::{WsProxyLayer, upstream::{Balance, UpstreamPool}};
///
/// let pool = UpstreamPool::from_urls(["ws://10.0.0.1:3000", "ws://10.0.0.2:3000?weight=2"])?
///     .balance("hash:cookie:sid".parse().unwrap())
///     .max_fails(3)
///     .fail_timeout(Duration::from_secs(30));
/// let layer = WsProxyLayer::new(pool.clone());
///
/// // Later, from a deploy hook or service discovery:
/// pool.insert("ws://10.0.0.3:3000".parse::<axum_ws_proxy::upstream::Member>()?);
/// pool.remove(&"ws://10.0.0.1:3000".parse()?);
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone)]
pub struct UpstreamPool {
    shared: Arc<Mutex<State>>,
}

struct State {
    balance: Balance,
    max_tries: usize,
    max_fails: u32,
    fail_timeout: Duration,
    resolve_every: Duration,
    resolver: Arc<dyn Resolve>,
    members: Vec<Slot>,
    /// Sessions per endpoint; 0: no limit.
    max_sessions: usize,
    /// How long an endpoint that joins or comes back takes to reach its full weight; zero: at
    /// once.
    slow_start: Duration,
    /// The pool's first pick: endpoints there before it started serving do not ramp.
    first_pick: Option<Instant>,
    /// Moving sessions to members added later; off unless set.
    rebalance: Option<Rebalance>,
    /// A registry has taken on this pool's rebalancing.
    rebalancer: bool,
    rebalanced: RebalanceStatus,
    /// Where least-conn's tie-break starts next.
    cursor: usize,
}

/// A member and the endpoints it currently stands for.
struct Slot {
    member: Member,
    /// Set for IP literals: one fixed endpoint, never resolved.
    literal: bool,
    endpoints: Vec<EndpointSlot>,
    resolved_at: Option<Instant>,
    refreshing: bool,
    resolve_error: Option<(io::ErrorKind, String)>,
}

/// Balancing and health state of one endpoint (guarded by the pool's lock).
struct EndpointSlot {
    endpoint: Arc<Endpoint>,
    /// Smooth weighted round-robin's running weight.
    current: i64,
    fails: u32,
    window_start: Instant,
    down_until: Option<Instant>,
    /// When the endpoint joined the pool (slow start counts from here, or from its return).
    joined: Instant,
}

/// One address of one member: what a session is dialled to. Counters are atomic so sessions
/// update them without the pool's lock.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) member: Member,
    pub(crate) addr: SocketAddr,
    /// The sessions' gauge, labelled with `addr`.
    pub(crate) live_gauge: crate::metrics::LiveGauge,
    /// FNV state of `member|addr`, the endpoint's identity for rendezvous hashing.
    seed: u64,
    live: AtomicUsize,
    sessions: AtomicU64,
    failures: AtomicU64,
    refusals: AtomicU64,
}

/// A pool as rebalancing sees it: its endpoints now (with their members' weights), how it
/// balances, and its settings.
pub(crate) struct RebalanceView {
    pub(crate) settings: Rebalance,
    pub(crate) endpoints: Vec<(Arc<Endpoint>, u32)>,
    pub(crate) hashed: bool,
    /// Slow start's ramp: sessions move once a new member has reached its full weight.
    pub(crate) ramp: Duration,
    /// Endpoints out of rotation now: a new session would not be sent there.
    pub(crate) down: Vec<Arc<Endpoint>>,
}

impl RebalanceView {
    /// Whether both name the same endpoints.
    pub(crate) fn same_members(&self, endpoints: &[Arc<Endpoint>]) -> bool {
        self.endpoints.len() == endpoints.len()
            && self
                .endpoints
                .iter()
                .all(|(e, _)| endpoints.iter().any(|o| Arc::ptr_eq(e, o)))
    }

    pub(crate) fn members(&self) -> Vec<Arc<Endpoint>> {
        self.endpoints.iter().map(|(e, _)| e.clone()).collect()
    }

    /// Where a hash pool sends `key` now (the same rendezvous choice a new session gets).
    pub(crate) fn owner(&self, key: &[u8]) -> Option<&Arc<Endpoint>> {
        self.endpoints
            .iter()
            .filter(|(e, _)| !self.down.iter().any(|d| Arc::ptr_eq(d, e)))
            .map(|(e, w)| (e, rendezvous_score(e.seed(), key, *w)))
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(e, _)| e)
    }

    /// The weight of `endpoint`'s member (0 if it left).
    pub(crate) fn weight(&self, endpoint: &Arc<Endpoint>) -> u32 {
        self.endpoints
            .iter()
            .find(|(e, _)| Arc::ptr_eq(e, endpoint))
            .map_or(0, |(_, w)| *w)
    }
}

/// A pool that may be gone.
pub(crate) struct WeakPool(std::sync::Weak<Mutex<State>>);

impl WeakPool {
    pub(crate) fn upgrade(&self) -> Option<UpstreamPool> {
        self.0.upgrade().map(|shared| UpstreamPool { shared })
    }
}

/// Why no endpoint could be picked.
pub(crate) enum NoPick {
    /// Every endpoint was tried already, or there are none.
    Exhausted,
    /// The untried endpoints are all at `max_sessions`.
    Full(usize),
}

/// A claim on an endpoint for one session (or one dial attempt): counted as live while held.
#[derive(Debug)]
pub(crate) struct Lease(Arc<Endpoint>);

impl Lease {
    fn new(endpoint: Arc<Endpoint>) -> Self {
        endpoint.live.fetch_add(1, Ordering::Relaxed);
        Self(endpoint)
    }

    pub(crate) fn endpoint(&self) -> &Arc<Endpoint> {
        &self.0
    }

    /// The upstream answered 101: a session starts.
    pub(crate) fn opened(&self) {
        self.0.sessions.fetch_add(1, Ordering::Relaxed);
    }

    /// The upstream answered something else, relayed to the client.
    pub(crate) fn refused(&self) {
        self.0.refusals.fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A snapshot of one endpoint, from [`UpstreamPool::status`].
///
/// ```
/// use axum_ws_proxy::upstream::UpstreamPool;
///
/// let pool = UpstreamPool::from_urls(["ws://10.0.0.1:3000", "ws://10.0.0.2:3000"])?;
/// for ep in pool.status() {
///     println!("{} {}: {} live, down: {}", ep.member, ep.addr, ep.live_sessions, ep.down);
/// }
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStatus {
    /// The member the endpoint belongs to.
    pub member: Member,
    /// The address dialled.
    pub addr: SocketAddr,
    /// Sessions open now (and dials in progress).
    pub live_sessions: usize,
    /// Sessions opened in all (upstream answered 101).
    pub sessions: u64,
    /// Failed dials: refused, unreachable, timed out or broken before an answer.
    pub failures: u64,
    /// Upgrades the upstream answered with something other than 101 (relayed to the client).
    pub refusals: u64,
    /// Out of rotation after `max_fails` failures, until `fail_timeout` has passed.
    pub down: bool,
}

impl UpstreamPool {
    /// A pool of `members`, each listed once: a duplicate is an error naming it.
    pub fn new(members: impl IntoIterator<Item = Member>) -> Result<Self, ParseUpstreamError> {
        let pool = Self::empty();
        for member in members {
            let text = member.to_string();
            if !pool.insert(member) {
                return Err(ParseUpstreamError::new(
                    &text,
                    ParseUpstreamErrorKind::Duplicate,
                ));
            }
        }
        Ok(pool)
    }

    /// A pool from member URLs (`ws://host:port[/prefix][?weight=N]`); the error names the
    /// first invalid or duplicate one.
    pub fn from_urls<I>(urls: I) -> Result<Self, ParseUpstreamError>
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let members = urls
            .into_iter()
            .map(|u| u.as_ref().parse::<Member>())
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(members)
    }

    /// A pool with no members yet (every upgrade gets 502 until one is inserted).
    pub fn empty() -> Self {
        Self {
            shared: Arc::new(Mutex::new(State {
                balance: Balance::default(),
                max_tries: 0,
                max_fails: DEFAULT_MAX_FAILS,
                fail_timeout: DEFAULT_FAIL_TIMEOUT,
                resolve_every: DEFAULT_RESOLVE_EVERY,
                resolver: Arc::new(SystemResolver),
                members: Vec::new(),
                max_sessions: 0,
                slow_start: Duration::ZERO,
                first_pick: None,
                rebalance: None,
                rebalancer: false,
                rebalanced: RebalanceStatus::default(),
                cursor: 0,
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing under this lock can panic halfway through an update; take it regardless.
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A setter's change, on this handle alone: shared with clones, the state is copied first.
    fn set(self, f: impl FnOnce(&mut State)) -> Self {
        let pool = if Arc::strong_count(&self.shared) == 1 {
            self
        } else {
            self.fork()
        };
        f(&mut pool.lock());
        pool
    }

    /// A new pool with this one's members and settings; endpoints are found and their health
    /// counted afresh.
    fn fork(&self) -> Self {
        let st = self.lock();
        Self {
            shared: Arc::new(Mutex::new(State {
                balance: st.balance.clone(),
                max_tries: st.max_tries,
                max_fails: st.max_fails,
                fail_timeout: st.fail_timeout,
                resolve_every: st.resolve_every,
                resolver: st.resolver.clone(),
                members: st
                    .members
                    .iter()
                    .map(|s| Slot::new(s.member.clone()))
                    .collect(),
                max_sessions: st.max_sessions,
                slow_start: st.slow_start,
                first_pick: None,
                rebalance: st.rebalance,
                rebalancer: false,
                rebalanced: RebalanceStatus::default(),
                cursor: 0,
            })),
        }
    }

    /// The balancing strategy. Default: [`Balance::LeastConn`].
    #[must_use]
    pub fn balance(self, balance: Balance) -> Self {
        self.set(|s| s.balance = balance)
    }

    /// How many endpoints one upgrade may try before it gives up with 502 (all within the
    /// layer's connect timeout). Default (0): every endpoint once. Like nginx's
    /// `proxy_next_upstream_tries`; only failures to connect or to get an answer are retried,
    /// never an answer (a 403 is relayed, not retried), and never after the 101.
    #[must_use]
    pub fn max_tries(self, tries: usize) -> Self {
        self.set(|s| s.max_tries = tries)
    }

    /// Failures within [`fail_timeout`](Self::fail_timeout) that take an endpoint out of
    /// rotation for `fail_timeout`. Default 1, as nginx; 0 never takes one out. When every
    /// endpoint is out, they are all tried anyway.
    #[must_use]
    pub fn max_fails(self, fails: u32) -> Self {
        self.set(|s| s.max_fails = fails)
    }

    /// The window for counting failures and the time out of rotation. Default 10 s, as nginx.
    #[must_use]
    pub fn fail_timeout(self, timeout: Duration) -> Self {
        self.set(|s| s.fail_timeout = timeout)
    }

    /// How often member host names are resolved again; addresses that appear become endpoints
    /// and addresses that disappear take no new sessions. Default 30 s; zero resolves once. A
    /// failed lookup keeps the previous addresses.
    #[must_use]
    pub fn resolve_every(self, every: Duration) -> Self {
        self.set(|s| s.resolve_every = every)
    }

    /// Most live sessions per endpoint (nginx's `server ... max_conns=N`); a full endpoint is
    /// skipped, and when all are full new upgrades get **503** with a spread `Retry-After` before any
    /// is dialled. Default: no limit (0).
    #[must_use]
    pub fn max_sessions(self, max: usize) -> Self {
        self.set(|s| s.max_sessions = max)
    }

    /// Slow start (HAProxy's `slowstart`, Envoy's `slow_start_config`): an endpoint that joins
    /// the pool, or comes back after being out of rotation, takes its share of new sessions
    /// gradually, its weight growing from 5 % to all of it over `ramp`. Under least-conn an
    /// empty new member would otherwise take every new session at once. Least-conn and
    /// round-robin only: hash pools are exempt (a ramp would send the new member's keys
    /// elsewhere first, and move them again). Default: off (zero).
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum_ws_proxy::upstream::UpstreamPool;
    ///
    /// let pool = UpstreamPool::from_urls(["ws://10.0.0.1:3000", "ws://10.0.0.2:3000"])?
    ///     .slow_start(Duration::from_secs(60));
    /// # let _ = pool;
    /// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
    /// ```
    #[must_use]
    pub fn slow_start(self, ramp: Duration) -> Self {
        self.set(|s| s.slow_start = ramp)
    }

    /// Rebalancing after scale-out (Envoy #15283, HAProxy #93): when members are **added**
    /// while the previous ones remain, and the membership has then stayed the same for the
    /// [delay](Rebalance::delay), live sessions move to the new members at a bounded rate:
    /// each is asked to close with **1012** (Service Restart), its upstream gets 1001, and its
    /// client's reconnect is balanced again. Off by default.
    ///
    /// - Least-conn and round-robin: members above their (weighted) fair share shed the
    ///   excess, the least recently active sessions first, never more than
    ///   [`max_fraction`](Rebalance::max_fraction) of one member's sessions.
    /// - Hash pools: exactly the sessions whose key the new members now own move (a chat room
    ///   sharded by room id comes back together on its new member); no others.
    ///
    /// A change that replaces members (an upstream's rolling update: new addresses, old ones
    /// gone) moves nothing, nor does one that removes members. A change during a rebalancing
    /// stops it. With [`slow_start`](Self::slow_start), sessions move once the ramp is over.
    /// The pool's sessions are those of the layer that first proxies through it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use axum_ws_proxy::upstream::{Rebalance, UpstreamPool};
    ///
    /// let pool = UpstreamPool::from_urls(["ws://10.0.0.1:3000"])?
    ///     .rebalance(Rebalance::per_second(50).delay(Duration::from_secs(30)));
    /// // Later: half of 10.0.0.1's sessions move here, 50 a second.
    /// pool.insert("ws://10.0.0.2:3000".parse::<axum_ws_proxy::upstream::Member>()?);
    /// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
    /// ```
    #[must_use]
    pub fn rebalance(self, rebalance: Rebalance) -> Self {
        self.set(|s| s.rebalance = Some(rebalance))
    }

    /// What rebalancing has done so far (all zero when it is off).
    pub fn rebalance_status(&self) -> RebalanceStatus {
        self.lock().rebalanced
    }

    /// Whether the caller should start this pool's rebalancing (once, when it is on): the
    /// endpoints the pool serves with now, which later additions are measured against.
    pub(crate) fn claim_rebalancer(&self) -> Option<Vec<Arc<Endpoint>>> {
        let mut st = self.lock();
        if st.rebalance.is_none() || st.rebalancer {
            return None;
        }
        st.rebalancer = true;
        Some(
            st.members
                .iter()
                .flat_map(|s| s.endpoints.iter().map(|e| e.endpoint.clone()))
                .collect(),
        )
    }

    /// The pool as rebalancing sees it, when rebalancing is on.
    pub(crate) fn rebalance_view(&self) -> Option<RebalanceView> {
        let now = Instant::now();
        let st = self.lock();
        let settings = st.rebalance?;
        Some(RebalanceView {
            settings,
            endpoints: st
                .members
                .iter()
                .flat_map(|s| {
                    s.endpoints
                        .iter()
                        .map(|e| (e.endpoint.clone(), s.member.weight()))
                })
                .collect(),
            hashed: matches!(st.balance, Balance::Hash(_)),
            ramp: st.slow_start,
            down: st
                .members
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.down_until.is_some_and(|d| d > now))
                .map(|e| e.endpoint.clone())
                .collect(),
        })
    }

    pub(crate) fn record_rebalance(&self, f: impl FnOnce(&mut RebalanceStatus)) {
        f(&mut self.lock().rebalanced);
    }

    /// A handle that does not keep the pool alive (rebalancing's task holds one).
    pub(crate) fn downgrade(&self) -> WeakPool {
        WeakPool(Arc::downgrade(&self.shared))
    }

    /// The resolver for member host names. Default: the system resolver.
    #[must_use]
    pub fn resolver(self, resolver: impl Resolve) -> Self {
        self.set(|s| s.resolver = Arc::new(resolver))
    }

    /// Adds a member; it takes new sessions from now on. Returns `false` (and only updates the
    /// weight) if the URL is already a member.
    pub fn insert(&self, member: impl Into<Member>) -> bool {
        let member = member.into();
        let mut st = self.lock();
        if let Some(slot) = st
            .members
            .iter_mut()
            .find(|s| s.member.upstream() == member.upstream())
        {
            // Endpoints (and their live sessions) stay; balancing reads the weight from here.
            slot.member = member;
            return false;
        }
        st.members.push(Slot::new(member));
        true
    }

    /// Removes a member: it takes no new sessions; its live sessions go on until they end.
    /// Returns whether it was a member.
    pub fn remove(&self, upstream: &Upstream) -> bool {
        let mut st = self.lock();
        let before = st.members.len();
        st.members.retain(|s| s.member.upstream() != upstream);
        st.members.len() != before
    }

    /// Takes `other`'s members and settings (balancing, tries, failure policy, resolution,
    /// per-endpoint limit, resolver) in one step, for a configuration reload. Members in
    /// both keep their endpoints, live-session counts and health; members only in `other`
    /// join; members not in `other` take no new sessions, while their live sessions go on
    /// until they end. Every clone of this pool sees the change.
    ///
    /// ```
    /// use axum_ws_proxy::upstream::UpstreamPool;
    ///
    /// let running = UpstreamPool::from_urls(["ws://10.0.0.1:3000", "ws://10.0.0.2:3000"])?;
    /// let reloaded = UpstreamPool::from_urls(["ws://10.0.0.2:3000", "ws://10.0.0.3:3000"])?
    ///     .balance("round-robin".parse().unwrap());
    /// running.update_from(&reloaded);
    /// assert_eq!(running.to_string(), "ws://10.0.0.2:3000, ws://10.0.0.3:3000");
    /// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
    /// ```
    pub fn update_from(&self, other: &UpstreamPool) {
        if Arc::ptr_eq(&self.shared, &other.shared) {
            return;
        }
        let (settings, members) = {
            let o = other.lock();
            (
                (
                    o.balance.clone(),
                    o.max_tries,
                    o.max_fails,
                    o.fail_timeout,
                    o.resolve_every,
                    o.max_sessions,
                    o.slow_start,
                    o.rebalance,
                    o.resolver.clone(),
                ),
                o.members
                    .iter()
                    .map(|s| s.member.clone())
                    .collect::<Vec<_>>(),
            )
        };
        let mut st = self.lock();
        (
            st.balance,
            st.max_tries,
            st.max_fails,
            st.fail_timeout,
            st.resolve_every,
            st.max_sessions,
            st.slow_start,
            st.rebalance,
            st.resolver,
        ) = settings;
        st.members
            .retain(|s| members.iter().any(|m| m.upstream() == s.member.upstream()));
        let mut slots = Vec::with_capacity(members.len());
        for member in members {
            let existing = st
                .members
                .iter()
                .position(|s| s.member.upstream() == member.upstream());
            match existing {
                Some(i) => {
                    let mut slot = st.members.swap_remove(i);
                    slot.member = member;
                    slots.push(slot);
                }
                None => slots.push(Slot::new(member)),
            }
        }
        // In the new file's order, as a fresh start would have them.
        st.members = slots;
        st.cursor = 0;
    }

    /// The current members.
    pub fn members(&self) -> Vec<Member> {
        self.lock()
            .members
            .iter()
            .map(|s| s.member.clone())
            .collect()
    }

    /// Live session counts and outcomes of every endpoint, for dashboards and tests.
    ///
    /// ```
    /// use axum_ws_proxy::upstream::UpstreamPool;
    ///
    /// let pool = UpstreamPool::from_urls(["ws://10.0.0.1:3000"])?;
    /// for e in pool.status() {
    ///     println!("{} {}: {} live, {} failed dials, down: {}", e.member, e.addr, e.live_sessions, e.failures, e.down);
    /// }
    /// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
    /// ```
    pub fn status(&self) -> Vec<EndpointStatus> {
        let now = Instant::now();
        let st = self.lock();
        st.members
            .iter()
            .flat_map(|s| s.endpoints.iter().map(move |ep| (&s.member, ep)))
            .map(|(member, ep)| {
                let e = &ep.endpoint;
                EndpointStatus {
                    member: member.clone(),
                    addr: e.addr,
                    live_sessions: e.live.load(Ordering::Relaxed),
                    sessions: e.sessions.load(Ordering::Relaxed),
                    failures: e.failures.load(Ordering::Relaxed),
                    refusals: e.refusals.load(Ordering::Relaxed),
                    down: ep.down_until.is_some_and(|d| d > now),
                }
            })
            .collect()
    }

    /// Follows a [`Discover`] stream (Kubernetes endpoints, Consul, ...) until it ends:
    /// `Change::Insert(key, member)` inserts (replacing what `key` named before) and
    /// `Change::Remove(key)` removes. Run it in a task of its own.
    ///
    /// ```
    /// use std::convert::Infallible;
    /// use axum_ws_proxy::upstream::{Member, UpstreamPool};
    /// use tower::discover::Change;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let pool = UpstreamPool::empty();
    /// let changes = futures_util::stream::iter([
    ///     Ok::<_, Infallible>(Change::Insert("pod-a", "ws://10.0.0.1:3000".parse::<Member>()?)),
    ///     Ok(Change::Insert("pod-b", "ws://10.0.0.2:3000".parse::<Member>()?)),
    ///     Ok(Change::Remove("pod-a")),
    /// ]);
    /// pool.watch(changes).await?;
    /// assert_eq!(pool.to_string(), "ws://10.0.0.2:3000");
    /// # Ok(()) }
    /// ```
    pub async fn watch<D>(&self, discover: D) -> Result<(), D::Error>
    where
        D: Discover<Service = Member>,
        D::Key: Hash,
    {
        let mut discover = std::pin::pin!(discover);
        let mut named: HashMap<D::Key, Upstream> = HashMap::new();
        while let Some(change) = poll_fn(|cx| discover.as_mut().poll_discover(cx)).await {
            match change? {
                Change::Insert(key, member) => {
                    let upstream = member.upstream().clone();
                    if let Some(old) = named.insert(key, upstream.clone()) {
                        if old != upstream {
                            self.remove(&old);
                        }
                    }
                    self.insert(member);
                }
                Change::Remove(key) => {
                    if let Some(old) = named.remove(&key) {
                        self.remove(&old);
                    }
                }
            }
        }
        Ok(())
    }

    /// Resolves every host-name member now and waits for the answers (e.g. on SIGHUP, or in a
    /// test). Periodic re-resolution happens anyway, lazily, as sessions are dialled.
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use axum_ws_proxy::upstream::UpstreamPool;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_ws_proxy::upstream::ParseUpstreamError> {
    /// let pool = UpstreamPool::from_urls(["ws://chat.service.internal:3000"])?
    ///     .resolver(|_host: String, port: u16| async move {
    ///         Ok(vec![SocketAddr::from(([10, 0, 0, 5], port)), SocketAddr::from(([10, 0, 0, 6], port))])
    ///     });
    /// pool.resolve_now().await;
    /// assert_eq!(pool.status().len(), 2); // every address is an endpoint
    /// # Ok(()) }
    /// ```
    pub async fn resolve_now(&self) {
        let names: Vec<Upstream> = {
            let mut st = self.lock();
            st.members
                .iter_mut()
                .filter(|s| !s.literal)
                .map(|s| {
                    s.refreshing = true;
                    s.member.upstream().clone()
                })
                .collect()
        };
        futures_util::future::join_all(names.into_iter().map(|u| self.resolve_member(u))).await;
    }

    /// Before a dial: members with no addresses yet are resolved now; stale ones are refreshed
    /// in the background while their current addresses keep serving.
    pub(crate) async fn ensure_resolved(&self) {
        let now = Instant::now();
        let mut wait = Vec::new();
        let mut background = Vec::new();
        {
            let mut st = self.lock();
            let every = st.resolve_every;
            for slot in st.members.iter_mut().filter(|s| !s.literal) {
                let stale = slot
                    .resolved_at
                    .is_none_or(|t| !every.is_zero() && now.duration_since(t) >= every);
                if slot.endpoints.is_empty() {
                    wait.push(slot.member.upstream().clone());
                } else if stale && !slot.refreshing {
                    slot.refreshing = true;
                    background.push(slot.member.upstream().clone());
                }
            }
        }
        for upstream in background {
            let pool = self.clone();
            tokio::spawn(async move { pool.resolve_member(upstream).await });
        }
        futures_util::future::join_all(wait.into_iter().map(|u| self.resolve_member(u))).await;
    }

    async fn resolve_member(&self, upstream: Upstream) {
        let resolver = self.lock().resolver.clone();
        let result = resolver
            .resolve(upstream.host().to_owned(), upstream.port())
            .await;
        let mut st = self.lock();
        let Some(slot) = st
            .members
            .iter_mut()
            .find(|s| s.member.upstream() == &upstream)
        else {
            return; // removed meanwhile
        };
        slot.refreshing = false;
        slot.resolved_at = Some(Instant::now());
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                slot.resolve_error = None;
                let mut old = std::mem::take(&mut slot.endpoints);
                for addr in dedup(addrs) {
                    // An address seen before keeps its counters and health.
                    let kept = old.iter().position(|e| e.endpoint.addr == addr);
                    slot.endpoints.push(match kept {
                        Some(i) => old.swap_remove(i),
                        None => EndpointSlot::new(Endpoint::new(slot.member.clone(), addr)),
                    });
                }
            }
            Ok(_) => {
                tracing::warn!(member = %upstream, "host resolved to no addresses; keeping the previous ones");
                slot.resolve_error = Some((io::ErrorKind::NotFound, "no addresses found".into()));
            }
            Err(e) => {
                tracing::warn!(member = %upstream, "host did not resolve ({e}); keeping the previous addresses");
                slot.resolve_error = Some((e.kind(), e.to_string()));
            }
        }
    }

    /// Picks an endpoint for a session, skipping those already `tried` by this request and
    /// those out of rotation (unless every remaining one is).
    pub(crate) fn pick(
        &self,
        key: Option<&[u8]>,
        tried: &[Arc<Endpoint>],
    ) -> Result<Lease, NoPick> {
        let now = Instant::now();
        let mut st = self.lock();
        st.first_pick.get_or_insert(now);
        // On the stack for pools of up to 8 endpoints: one allocation less per dial.
        let mut open = SmallVec::<[(usize, usize); 8]>::new();
        let mut down = SmallVec::<[(usize, usize); 8]>::new();
        let max = st.max_sessions;
        let mut full = false;
        for (m, slot) in st.members.iter().enumerate() {
            for (e, ep) in slot.endpoints.iter().enumerate() {
                if tried.iter().any(|t| Arc::ptr_eq(t, &ep.endpoint)) {
                    continue;
                }
                if max > 0 && ep.endpoint.live.load(Ordering::Relaxed) >= max {
                    full = true;
                    continue;
                }
                if ep.down_until.is_some_and(|d| d > now) {
                    down.push((m, e));
                } else {
                    open.push((m, e));
                }
            }
        }
        let candidates = if open.is_empty() { down } else { open };
        if candidates.is_empty() {
            return Err(if full {
                NoPick::Full(max)
            } else {
                NoPick::Exhausted
            });
        }
        let i = match (&st.balance, key) {
            (Balance::RoundRobin, _) => st.smooth_round_robin(&candidates),
            (Balance::Hash(_), Some(key)) => st.rendezvous(&candidates, key),
            _ => st.least_conn(&candidates),
        };
        let (m, e) = candidates[i];
        Ok(Lease::new(st.members[m].endpoints[e].endpoint.clone()))
    }

    /// Records a dial's outcome for passive health.
    pub(crate) fn report(&self, endpoint: &Arc<Endpoint>, ok: bool) {
        if !ok {
            endpoint.failures.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut st = self.lock();
        let (max_fails, fail_timeout) = (st.max_fails, st.fail_timeout);
        let Some(ep) = st
            .members
            .iter_mut()
            .flat_map(|s| s.endpoints.iter_mut())
            .find(|ep| Arc::ptr_eq(&ep.endpoint, endpoint))
        else {
            return;
        };
        if ok {
            ep.fails = 0;
            return;
        }
        if now.duration_since(ep.window_start) >= fail_timeout {
            ep.fails = 0;
            ep.window_start = now;
        }
        ep.fails += 1;
        if max_fails > 0 && ep.fails >= max_fails {
            ep.fails = 0;
            ep.window_start = now;
            ep.down_until = Some(now + fail_timeout);
            tracing::warn!(
                member = %endpoint.member.upstream(),
                addr = %endpoint.addr,
                "out of rotation for {fail_timeout:?} after {max_fails} failed dial(s)"
            );
        }
    }

    /// How many endpoints one upgrade may try.
    pub(crate) fn tries(&self) -> usize {
        let st = self.lock();
        let endpoints = st.members.iter().map(|s| s.endpoints.len()).sum();
        match st.max_tries {
            0 => endpoints,
            n => n.min(endpoints),
        }
    }

    /// The balancing strategy's hash key, if it uses one.
    pub(crate) fn hash_key(&self) -> Option<super::HashKey> {
        match &self.lock().balance {
            Balance::Hash(key) => Some(key.clone()),
            _ => None,
        }
    }

    /// Why there was nothing to dial: a member that did not resolve, or an empty pool.
    pub(crate) fn nothing_to_dial(&self) -> ProxyError {
        let st = self.lock();
        st.members
            .iter()
            .find_map(|s| {
                s.resolve_error
                    .as_ref()
                    .map(|(kind, msg)| ProxyError::Resolve {
                        host: s.member.upstream().host().to_owned(),
                        source: io::Error::new(*kind, msg.clone()),
                    })
            })
            .unwrap_or(ProxyError::NoMembers)
    }
}

impl State {
    /// An endpoint's weight now: the member's, in thousandths, ramped by slow start.
    fn weight(&self, m: usize, e: usize, now: Instant) -> u64 {
        let slot = &self.members[m];
        let full = u64::from(slot.member.weight()) * 1000;
        if self.slow_start.is_zero() {
            return full;
        }
        let ep = &slot.endpoints[e];
        // Counted from the end of its last time out of rotation, or from joining a pool that
        // was already serving (the endpoints it started with share evenly from the start).
        let came_back = ep.down_until.filter(|back| *back <= now);
        let joined = self
            .first_pick
            .filter(|first| ep.joined > *first)
            .map(|_| ep.joined);
        let since = match (came_back, joined) {
            (Some(back), Some(joined)) => back.max(joined),
            (Some(at), None) | (None, Some(at)) => at,
            (None, None) => return full,
        };
        let share = now.duration_since(since).as_secs_f64() / self.slow_start.as_secs_f64();
        // From 5 % up, so that a joining endpoint is never shut out.
        (full as f64 * share.clamp(0.05, 1.0)) as u64
    }

    /// Fewest live sessions per unit of weight; ties round-robin from `cursor`.
    fn least_conn(&mut self, candidates: &[(usize, usize)]) -> usize {
        let now = Instant::now();
        let load = |&(m, e): &(usize, usize)| {
            let live = self.members[m].endpoints[e]
                .endpoint
                .live
                .load(Ordering::Relaxed) as u64;
            (live, self.weight(m, e, now))
        };
        let n = candidates.len();
        let start = self.cursor % n;
        let (mut best, mut best_load) = (start, load(&candidates[start]));
        for step in 1..n {
            let i = (start + step) % n;
            let (live_i, w_i) = load(&candidates[i]);
            let (live_b, w_b) = best_load;
            if live_i * w_b < live_b * w_i {
                (best, best_load) = (i, (live_i, w_i));
            }
        }
        self.cursor = best + 1;
        best
    }

    /// nginx's smooth weighted round-robin.
    fn smooth_round_robin(&mut self, candidates: &[(usize, usize)]) -> usize {
        let now = Instant::now();
        let mut total = 0i64;
        let mut best = 0;
        let mut best_current = i64::MIN;
        for (i, &(m, e)) in candidates.iter().enumerate() {
            let w = i64::try_from(self.weight(m, e, now)).unwrap_or(i64::MAX);
            let ep = &mut self.members[m].endpoints[e];
            ep.current += w;
            total += w;
            if ep.current > best_current {
                best_current = ep.current;
                best = i;
            }
        }
        let (m, e) = candidates[best];
        self.members[m].endpoints[e].current -= total;
        best
    }

    /// Highest weighted rendezvous score for `key`.
    fn rendezvous(&self, candidates: &[(usize, usize)], key: &[u8]) -> usize {
        let score = |&(m, e): &(usize, usize)| {
            let slot = &self.members[m];
            rendezvous_score(slot.endpoints[e].endpoint.seed, key, slot.member.weight())
        };
        (0..candidates.len())
            .max_by(|&a, &b| score(&candidates[a]).total_cmp(&score(&candidates[b])))
            .unwrap_or(0)
    }
}

impl Endpoint {
    /// Its identity for rendezvous hashing.
    pub(crate) fn seed(&self) -> u64 {
        self.seed
    }

    fn new(member: Member, addr: SocketAddr) -> Self {
        let id = format!("{}|{addr}", member.upstream());
        Self {
            seed: fnv1a(FNV_OFFSET, id.as_bytes()),
            member,
            addr,
            live_gauge: crate::metrics::LiveGauge::new(addr),
            live: AtomicUsize::new(0),
            sessions: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            refusals: AtomicU64::new(0),
        }
    }
}

impl Slot {
    fn new(member: Member) -> Self {
        let literal = literal_addr(member.upstream());
        let endpoints = literal
            .map(|addr| vec![EndpointSlot::new(Endpoint::new(member.clone(), addr))])
            .unwrap_or_default();
        Slot {
            member,
            literal: literal.is_some(),
            endpoints,
            resolved_at: None,
            refreshing: false,
            resolve_error: None,
        }
    }
}

impl EndpointSlot {
    fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint: Arc::new(endpoint),
            current: 0,
            fails: 0,
            window_start: Instant::now(),
            down_until: None,
            joined: Instant::now(),
        }
    }
}

/// The address of a member whose host is an IP literal.
fn literal_addr(upstream: &Upstream) -> Option<SocketAddr> {
    let ip = upstream.host().parse().ok()?;
    Some(SocketAddr::new(ip, upstream.port()))
}

fn dedup(mut addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let mut seen = Vec::with_capacity(addrs.len());
    addrs.retain(|a| {
        let new = !seen.contains(a);
        seen.push(*a);
        new
    });
    addrs
}

impl From<Upstream> for UpstreamPool {
    fn from(upstream: Upstream) -> Self {
        Self::from(Member::new(upstream))
    }
}

impl From<Member> for UpstreamPool {
    fn from(member: Member) -> Self {
        let pool = Self::empty();
        pool.insert(member);
        pool
    }
}

/// One member URL, `ws://host:port[/prefix][?weight=N]`: what `WsProxyLayer::new(url.parse()?)`
/// builds.
impl FromStr for UpstreamPool {
    type Err = ParseUpstreamError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(Self::from(url.parse::<Member>()?))
    }
}

impl fmt::Display for UpstreamPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        for (i, slot) in st.members.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", slot.member)?;
        }
        Ok(())
    }
}

impl fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let st = self.lock();
        f.debug_struct("UpstreamPool")
            .field(
                "members",
                &st.members.iter().map(|s| &s.member).collect::<Vec<_>>(),
            )
            .field("balance", &st.balance)
            .field("max_tries", &st.max_tries)
            .field("max_fails", &st.max_fails)
            .field("fail_timeout", &st.fail_timeout)
            .field("resolve_every", &st.resolve_every)
            .field("max_sessions", &st.max_sessions)
            .field("slow_start", &st.slow_start)
            .field("rebalance", &st.rebalance)
            .field("resolver", &super::resolve::ResolverName)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With slow start, an endpoint back from being out of rotation ramps its weight from 5 %;
    /// one the pool started with, and never lost, keeps all of it.
    #[test]
    fn an_endpoint_back_from_being_down_ramps_its_weight() {
        let pool = UpstreamPool::from_urls(["ws://127.0.0.1:1", "ws://127.0.0.1:2"])
            .unwrap()
            .slow_start(Duration::from_secs(10))
            .fail_timeout(Duration::from_millis(20));
        let Ok(_lease) = pool.pick(None, &[]) else {
            panic!("nothing to pick");
        };
        let back = pool.lock().members[1].endpoints[0].endpoint.clone();
        pool.report(&back, false);
        std::thread::sleep(Duration::from_millis(30));
        let st = pool.lock();
        let now = Instant::now();
        assert_eq!(st.weight(0, 0, now), 1000);
        let ramped = st.weight(1, 0, now);
        assert!((50..=60).contains(&ramped), "{ramped}");
    }
}
