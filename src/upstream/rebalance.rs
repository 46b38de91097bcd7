//! Rebalancing after scale-out, as a pool's setting: what it moves, how fast, and when. The
//! moving itself is the registry's (it knows the live sessions): see
//! [`UpstreamPool::rebalance`](super::UpstreamPool::rebalance).

use std::time::Duration;

/// Default share of a member's sessions one rebalancing may close.
const DEFAULT_MAX_FRACTION: f64 = 0.5;
/// Default time the membership must stay unchanged before sessions move.
const DEFAULT_DELAY: Duration = Duration::from_secs(60);

/// How a pool moves live sessions to members added to it, for
/// [`UpstreamPool::rebalance`](super::UpstreamPool::rebalance).
///
/// ```
/// use std::time::Duration;
/// use axum_ws_proxy::upstream::Rebalance;
///
/// // 20 sessions a second, at most a quarter of a member's, once the members have been
/// // the same for two minutes.
/// let rebalance = Rebalance::per_second(20)
///     .max_fraction(0.25)
///     .delay(Duration::from_secs(120));
/// # let _ = rebalance;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct Rebalance {
    pub(crate) per_second: u32,
    pub(crate) max_fraction: f64,
    pub(crate) delay: Duration,
}

impl Rebalance {
    /// Closes at most `rate` sessions a second (at least 1), each with **1012**, so that its
    /// client reconnects and is balanced again. Up to half of a member's sessions, after 60 s
    /// of unchanged membership, unless set.
    pub fn per_second(rate: u32) -> Self {
        Self {
            per_second: rate.max(1),
            max_fraction: DEFAULT_MAX_FRACTION,
            delay: DEFAULT_DELAY,
        }
    }

    /// The largest share of one member's sessions a rebalancing closes (0 to 1; out of range
    /// values are clamped). Hash pools move every session whose key moved, whatever this is.
    pub fn max_fraction(mut self, fraction: f64) -> Self {
        self.max_fraction = if fraction.is_nan() {
            DEFAULT_MAX_FRACTION
        } else {
            fraction.clamp(0.0, 1.0)
        };
        self
    }

    /// How long the membership must stay unchanged (no member or address added or removed)
    /// before sessions move: longer than one step of an upstream's rolling update, which adds
    /// a pod before it removes one and must not move sessions.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }
}

/// What a pool's rebalancing has done, from
/// [`UpstreamPool::rebalance_status`](super::UpstreamPool::rebalance_status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RebalanceStatus {
    /// Changes of membership that settled (stayed for the delay) and were looked at.
    pub settled_changes: u64,
    /// Of those, the ones that only added members, and moved sessions.
    pub rebalances: u64,
    /// Sessions asked to close (1012) to move.
    pub sessions_moved: u64,
}
