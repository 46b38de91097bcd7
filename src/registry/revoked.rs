//! Subjects and token ids refused until a time: the registry's revocation list, bounded.
//!
//! An entry leaves when its time passes (swept whenever the list is written, and skipped when
//! read); the list holds at most its cap, and a revocation beyond it is refused, never one
//! already there dropped. It lives in the registry, so it survives a reload.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use crate::identity::Identity;

/// What a revocation names: every credential of a subject, or one credential by its id.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Revoked {
    /// Every session and credential of this subject.
    Subject(Arc<str>),
    /// The credential with this token id (a JWT's `jti`).
    TokenId(Arc<str>),
}

impl Revoked {
    /// Whether `identity` is what this names.
    pub fn matches(&self, identity: &Identity) -> bool {
        match self {
            Self::Subject(s) => identity.subject() == &**s,
            Self::TokenId(t) => identity.jti() == Some(&**t),
        }
    }
}

/// The revocation list is at its cap: nothing more can be revoked until entries expire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RevocationsFull {
    /// The cap.
    pub cap: usize,
}

impl fmt::Display for RevocationsFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the revocation list is full ({} entries); revoke for a shorter time, or wait for entries to expire",
            self.cap
        )
    }
}

impl std::error::Error for RevocationsFull {}

/// Default cap: about 10 MB at most, with ids of 64 bytes.
pub(crate) const DEFAULT_CAP: usize = 100_000;

#[derive(Debug)]
pub(crate) struct Revocations {
    list: Mutex<HashMap<Revoked, SystemTime>>,
    cap: std::sync::atomic::AtomicUsize,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            list: Mutex::default(),
            cap: DEFAULT_CAP.into(),
        }
    }
}

impl Revocations {
    fn lock(&self) -> MutexGuard<'_, HashMap<Revoked, SystemTime>> {
        self.list.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_cap(&self, cap: usize) {
        self.cap.store(cap, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Refuses `what` until `until` (a later time replaces an earlier one, never the reverse).
    pub(crate) fn revoke(&self, what: Revoked, until: SystemTime) -> Result<(), RevocationsFull> {
        let now = SystemTime::now();
        let cap = self.cap();
        let mut list = self.lock();
        if let Some(at) = list.get_mut(&what) {
            *at = (*at).max(until);
            return Ok(());
        }
        if list.len() >= cap {
            list.retain(|_, at| *at > now);
            if list.len() >= cap {
                return Err(RevocationsFull { cap });
            }
        }
        list.insert(what, until);
        Ok(())
    }

    /// Lifts a revocation; `false` if there was none.
    pub(crate) fn lift(&self, what: &Revoked) -> bool {
        self.lock().remove(what).is_some()
    }

    /// Whether `identity` (its subject or token id) is revoked now.
    pub(crate) fn refuses(&self, identity: &Identity) -> bool {
        let list = self.lock();
        if list.is_empty() {
            return false;
        }
        let now = SystemTime::now();
        let live = |what: Revoked| list.get(&what).is_some_and(|at| *at > now);
        live(Revoked::Subject(identity.subject().into()))
            || identity
                .jti()
                .is_some_and(|t| live(Revoked::TokenId(t.into())))
    }

    /// The revocations in force, in order, from after `after`, at most `limit`.
    pub(crate) fn page(
        &self,
        after: Option<&Revoked>,
        limit: usize,
    ) -> (Vec<(Revoked, SystemTime)>, usize) {
        let now = SystemTime::now();
        let list = self.lock();
        let mut live: Vec<(Revoked, SystemTime)> = list
            .iter()
            .filter(|(what, at)| **at > now && after.is_none_or(|a| *what > a))
            .map(|(what, at)| (what.clone(), *at))
            .collect();
        let total = list.values().filter(|at| **at > now).count();
        live.sort();
        live.truncate(limit);
        (live, total)
    }
}
