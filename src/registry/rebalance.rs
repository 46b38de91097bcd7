//! Rebalancing after scale-out: the registry's side of
//! [`UpstreamPool::rebalance`](crate::upstream::UpstreamPool::rebalance). One task per pool
//! watches its membership; once a change that only added members has settled, it picks the
//! sessions to move and asks them to close (1012) at the pool's rate.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::registry::entry::{CloseRequest, Entry};
use crate::registry::sessions::Sessions;
use crate::upstream::{Endpoint, RebalanceView, UpstreamPool, WeakPool};

/// How often the membership is looked at, at most and at least.
const MIN_TICK: Duration = Duration::from_millis(10);
const MAX_TICK: Duration = Duration::from_secs(1);

/// Follows `pool` for the sessions of `sessions` until either is gone; `serving` is the
/// membership the pool had when its first session started.
pub(crate) async fn run(pool: WeakPool, sessions: Weak<Sessions>, serving: Vec<Arc<Endpoint>>) {
    // The membership sessions were balanced over, and the one seen last (since when).
    let mut settled = serving.clone();
    let mut seen = serving;
    let mut since = Instant::now();
    loop {
        let tick = {
            let (Some(pool), Some(sessions)) = (pool.upgrade(), sessions.upgrade()) else {
                return;
            };
            match pool.rebalance_view() {
                // Turned off by a reload: look again later.
                None => MAX_TICK,
                Some(view) => {
                    let tick = (view.settings.delay / 4).clamp(MIN_TICK, MAX_TICK);
                    if !view.same_members(&seen) {
                        seen = view.members();
                        since = Instant::now();
                    } else if since.elapsed() >= view.settings.delay.max(view.ramp)
                        && !view.same_members(&settled)
                    {
                        let before = std::mem::replace(&mut settled, seen.clone());
                        settle(&pool, &sessions, &view, &before).await;
                    }
                    tick
                }
            }
        };
        tokio::time::sleep(tick).await;
    }
}

/// A membership change has settled: moves sessions if it only added members.
async fn settle(
    pool: &UpstreamPool,
    sessions: &Sessions,
    view: &RebalanceView,
    before: &[Arc<Endpoint>],
) {
    pool.record_rebalance(|r| r.settled_changes += 1);
    let now = view.members();
    let kept = before.iter().all(|b| now.iter().any(|e| Arc::ptr_eq(b, e)));
    let added: Vec<_> = now
        .iter()
        .filter(|e| !before.iter().any(|b| Arc::ptr_eq(b, e)))
        .cloned()
        .collect();
    if before.is_empty() || !kept || added.is_empty() {
        tracing::info!(
            members = now.len(),
            "rebalance: membership changed without only adding members; nothing moves"
        );
        return;
    }
    let movers = if view.hashed {
        moved_keys(sessions, view, &added)
    } else {
        over_share(sessions, view)
    };
    tracing::info!(
        sessions = movers.len(),
        added = added.len(),
        per_second = view.settings.per_second,
        "rebalance: moving sessions to added members"
    );
    pool.record_rebalance(|r| r.rebalances += 1);
    let every = Duration::from_secs(1) / view.settings.per_second;
    let mut due = Instant::now();
    for entry in movers {
        tokio::time::sleep_until(due).await;
        // Only the membership this plan was made for: a change stops it.
        if !pool.rebalance_view().is_some_and(|v| v.same_members(&now)) {
            tracing::info!("rebalance: membership changed again; stopped");
            return;
        }
        if sessions.request_close(&entry, CloseRequest::REBALANCE) {
            pool.record_rebalance(|r| r.sessions_moved += 1);
            // From now if this task was held up: late, it does not catch up in a burst.
            due = due.max(Instant::now()) + every;
        }
    }
}

/// This pool's live sessions not yet asked to close, the least recently active first.
fn pool_sessions(sessions: &Sessions, view: &RebalanceView) -> Vec<Arc<Entry>> {
    let mut entries: Vec<_> = sessions
        .entries()
        .into_iter()
        .filter(|e| view.weight(e.endpoint()) > 0 && !e.close_requested())
        .collect();
    Entry::idle_first(&mut entries);
    entries
}

/// Hash pools: the sessions whose key an added member now owns.
fn moved_keys(
    sessions: &Sessions,
    view: &RebalanceView,
    added: &[Arc<Endpoint>],
) -> Vec<Arc<Entry>> {
    pool_sessions(sessions, view)
        .into_iter()
        .filter(|e| {
            e.hash_key()
                .and_then(|key| view.owner(key))
                .is_some_and(|owner| {
                    !Arc::ptr_eq(owner, e.endpoint()) && added.iter().any(|a| Arc::ptr_eq(a, owner))
                })
        })
        .collect()
}

/// Least-conn and round-robin: from each member above its weighted fair share, the excess,
/// capped at `max_fraction` of its sessions.
fn over_share(sessions: &Sessions, view: &RebalanceView) -> Vec<Arc<Entry>> {
    let entries = pool_sessions(sessions, view);
    let total = entries.len() as f64;
    let weights: u64 = view.endpoints.iter().map(|(_, w)| u64::from(*w)).sum();
    let mut movers = Vec::new();
    for (endpoint, weight) in &view.endpoints {
        let on: Vec<_> = entries
            .iter()
            .filter(|e| Arc::ptr_eq(e.endpoint(), endpoint))
            .collect();
        let fair = (total * f64::from(*weight) / weights.max(1) as f64).ceil() as usize;
        let cap = (on.len() as f64 * view.settings.max_fraction).floor() as usize;
        let excess = on.len().saturating_sub(fair).min(cap);
        movers.extend(on.into_iter().take(excess).cloned());
    }
    // Spread over the members: idle first across all of them.
    Entry::idle_first(&mut movers);
    movers
}
