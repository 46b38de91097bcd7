//! The paced drain: live sessions asked to close one after another at an even rate over a
//! window, the least recently active first, so that their clients do not all come back at the
//! same instant (to the replicas that remain, and their upstreams).

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::registry::entry::Entry;

/// A drain's schedule and progress (none until one begins).
#[derive(Debug, Default)]
pub(super) struct Drain {
    state: Mutex<Option<State>>,
    /// Its end was moved earlier (a shutdown with a shorter window than the running drain's).
    hurried: Notify,
}

#[derive(Debug)]
struct State {
    started: Instant,
    /// When the last session is to be asked.
    end: Instant,
    at_start: usize,
    asked: usize,
    done: bool,
}

/// Where a drain stands, from [`ShutdownHandle::drain_progress`](crate::ShutdownHandle::drain_progress).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct DrainProgress {
    /// Since the drain began.
    pub elapsed: Duration,
    /// Its window: the one it began with, or shorter if a shutdown hurried it.
    pub window: Duration,
    /// Sessions live when it began.
    pub sessions_at_start: usize,
    /// Sessions asked to close so far (1012), those that started during the drain (their
    /// dial was under way) included.
    pub asked_to_close: usize,
    /// Sessions still open (their close handshakes included).
    pub live_sessions: usize,
    /// Every session it found has been asked.
    pub done: bool,
}

impl Drain {
    fn lock(&self) -> MutexGuard<'_, Option<State>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Begins a drain over `window`; `false` if one had begun.
    pub(super) fn begin(&self, window: Duration) -> bool {
        let mut state = self.lock();
        if state.is_some() {
            return false;
        }
        let now = Instant::now();
        *state = Some(State {
            started: now,
            end: now + window,
            at_start: 0,
            asked: 0,
            done: false,
        });
        true
    }

    /// Moves the drain's end to `end` if that is earlier.
    pub(super) fn end_by(&self, end: Instant) {
        if let Some(state) = self.lock().as_mut() {
            if end < state.end {
                state.end = end;
                self.hurried.notify_one();
            }
        }
    }

    fn end(&self) -> Instant {
        self.lock().as_ref().map_or_else(Instant::now, |s| s.end)
    }

    /// A session that started during the drain was asked at once.
    pub(super) fn asked_one(&self) {
        self.update(|s| s.asked += 1);
    }

    pub(super) fn finished(&self) {
        self.update(|s| s.done = true);
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        if let Some(state) = self.lock().as_mut() {
            f(state);
        }
    }

    pub(super) fn progress(&self, live: usize) -> Option<DrainProgress> {
        self.lock().as_ref().map(|s| DrainProgress {
            elapsed: s.started.elapsed(),
            // As it stands: shortened if a shutdown hurried it.
            window: s.end.saturating_duration_since(s.started),
            sessions_at_start: s.at_start,
            asked_to_close: s.asked,
            live_sessions: live,
            done: s.done,
        })
    }
}

/// Asks every session in `order` (those live now) to close with `ask`, evenly over the
/// window, idle ones first. Sessions that end meanwhile are skipped; one that starts later
/// (its dial was under way) is asked as it registers.
pub(super) async fn run(drain: &Drain, mut order: Vec<Arc<Entry>>, ask: impl Fn(&Entry) -> bool) {
    Entry::idle_first(&mut order);
    let n = order.len();
    drain.update(|s| s.at_start = n);
    tracing::info!(sessions = n, "drain: asking sessions to close with 1012");
    // One at once, then each next one after (end - now) / (those left + 1): an even rate
    // (window / n) when on time, and when this task was held up (a busy CPU), the rest spread
    // over what remains of the window rather than sent in a burst to catch up.
    let mut due = Instant::now();
    let mut next = 0;
    while next < n {
        // A session that ended on its own holds no place in the schedule.
        if !order[next].is_live() {
            next += 1;
            continue;
        }
        // Not yet due: wait (a zero window never does: the timer's millisecond would space a
        // thousand closes over a second).
        if due > Instant::now() {
            tokio::select! {
                biased;
                // The end moved earlier: the rest, spread over what is left until it.
                () = drain.hurried.notified() => {
                    due = Instant::now();
                    continue;
                }
                () = tokio::time::sleep_until(due) => {}
            }
        }
        if ask(&order[next]) {
            drain.update(|s| s.asked += 1);
        }
        next += 1;
        let now = Instant::now();
        let left = (n - next) as u32;
        due = now + drain.end().saturating_duration_since(now) / (left + 1);
    }
    drain.update(|s| s.done = true);
    tracing::info!(sessions = n, "drain: every session asked to close");
}
