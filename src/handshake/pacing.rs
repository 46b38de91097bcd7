//! Admission pacing: at most a number of new upgrades per second, in bursts of at most
//! another, so that a replica that starts into a reconnect storm passes it on to its upstreams
//! at a rate they can take. The generic cell rate algorithm over one atomic: no lock on the
//! handshake path.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// One layer's pace of new upgrades.
#[derive(Debug)]
pub(crate) struct Pacing {
    per_second: u32,
    /// Nanoseconds between two admissions at the steady rate.
    interval: u64,
    /// How far ahead of now the next admission may be booked: what a burst may use.
    tolerance: u64,
    start: Instant,
    /// The theoretical arrival time of the next admission, in nanoseconds since `start`.
    next: AtomicU64,
}

impl Pacing {
    /// `per_second` admissions a second (at least 1), `burst` at once (at least 1).
    pub(crate) fn new(per_second: u32, burst: u32) -> Self {
        let per_second = per_second.max(1);
        let interval = 1_000_000_000 / u64::from(per_second);
        Self {
            per_second,
            interval,
            tolerance: interval * u64::from(burst.max(1) - 1),
            start: Instant::now(),
            next: AtomicU64::new(0),
        }
    }

    pub(crate) fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Takes one admission now, or says there is none to take.
    pub(crate) fn admit(&self) -> bool {
        let now = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut next = self.next.load(Ordering::Relaxed);
        loop {
            let at = next.max(now);
            if at - now > self.tolerance {
                return false;
            }
            match self.next.compare_exchange_weak(
                next,
                at.saturating_add(self.interval),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(seen) => next = seen,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_steady_rate() {
        let pacing = Pacing::new(10, 4);
        let admitted = (0..20).filter(|_| pacing.admit()).count();
        assert_eq!(admitted, 4, "the burst, then nothing until time passes");
        std::thread::sleep(std::time::Duration::from_millis(210));
        let admitted = (0..20).filter(|_| pacing.admit()).count();
        assert!(
            (2..=3).contains(&admitted),
            "{admitted} after 210 ms at 10/s"
        );
        // A burst of 1 is the steady rate alone.
        let strict = Pacing::new(1000, 1);
        assert_eq!((0..5).filter(|_| strict.admit()).count(), 1);
    }
}
