//! Sessions that end when their credential does: one queue of deadlines per registry, and one
//! task that sleeps until the first and asks that session to close (1008 "token expired").
//!
//! The task runs only while the queue holds something: a registry whose sessions carry no
//! expiry has no task and no timer, and a session's own task polls nothing more for this (the
//! close reaches it through its entry, like a drain's). A deadline moves when the session is
//! extended; it leaves the queue when the session ends.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use tokio::time::Instant;

use crate::registry::entry::{CloseRequest, Entry};

/// The deadlines of a registry's sessions.
#[derive(Debug, Default)]
pub(crate) struct Expiries {
    queue: Mutex<Queue>,
    /// Woken when a deadline earlier than every other is queued.
    earlier: Notify,
}

#[derive(Debug, Default)]
struct Queue {
    by_time: BTreeSet<(Instant, u64)>,
    by_id: HashMap<u64, (Instant, Arc<Entry>)>,
    /// A task is sweeping the queue (it ends when the queue is empty).
    sweeping: bool,
}

impl Expiries {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // Nothing under this lock can panic halfway.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets (or moves) `entry`'s deadline to `at`. Starts the sweeping task when none runs.
    pub(crate) fn set(self: &Arc<Self>, entry: &Arc<Entry>, at: Instant) {
        entry.set_expiring();
        let (first, start) = {
            let mut q = self.lock();
            if let Some((old, _)) = q.by_id.insert(entry.id(), (at, entry.clone())) {
                q.by_time.remove(&(old, entry.id()));
            }
            q.by_time.insert((at, entry.id()));
            let first = q.by_time.first() == Some(&(at, entry.id()));
            let start = !q.sweeping;
            q.sweeping = true;
            (first, start)
        };
        if start {
            // Made here and moved into the task: dropped unpolled (its runtime shutting
            // down), it still lets the next deadline start another.
            let sweeper = Sweeper {
                expiries: self.clone(),
                armed: true,
            };
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => drop(runtime.spawn(sweeper.run())),
                // No runtime, no timer: the deadline is kept for listings only.
                Err(_) => drop(sweeper),
            }
        } else if first {
            self.earlier.notify_one();
        }
    }

    /// `id`'s deadline, if it has one.
    pub(crate) fn deadline(&self, id: u64) -> Option<Instant> {
        self.lock().by_id.get(&id).map(|(at, _)| *at)
    }

    /// The session has ended: its deadline leaves the queue.
    pub(crate) fn remove(&self, id: u64) {
        let mut q = self.lock();
        if let Some((at, _)) = q.by_id.remove(&id) {
            q.by_time.remove(&(at, id));
        }
    }
}

/// The task that closes sessions at their deadlines; however it ends, `sweeping` is cleared.
struct Sweeper {
    expiries: Arc<Expiries>,
    /// Cleared when the task clears `sweeping` itself, under the queue's lock.
    armed: bool,
}

impl Drop for Sweeper {
    fn drop(&mut self) {
        if self.armed {
            self.expiries.lock().sweeping = false;
        }
    }
}

impl Sweeper {
    /// Closes each session at its deadline, until the queue is empty.
    async fn run(mut self) {
        loop {
            let next = {
                let mut q = self.expiries.lock();
                let now = Instant::now();
                while let Some(&(at, id)) = q.by_time.first() {
                    if at > now {
                        break;
                    }
                    q.by_time.pop_first();
                    if let Some((_, entry)) = q.by_id.remove(&id) {
                        if entry.request_close(CloseRequest::EXPIRED) {
                            crate::metrics::session_shed(CloseRequest::EXPIRED.cause.label());
                        }
                    }
                }
                match q.by_time.first() {
                    Some(&(at, _)) => at,
                    // Under the lock: a deadline set from now on starts a new task.
                    None => {
                        q.sweeping = false;
                        drop(q);
                        self.armed = false;
                        return;
                    }
                }
            };
            let earlier = self.expiries.earlier.notified();
            tokio::select! {
                () = tokio::time::sleep_until(next) => {}
                () = earlier => {}
            }
        }
    }
}
