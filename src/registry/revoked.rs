//! Subjects and token ids refused until a time: the registry's revocation list, bounded.
//!
//! An entry stops counting when its time passes (skipped when read, dropped when the list
//! reaches its cap); the list holds at most its cap of entries in force, and a revocation beyond it
//! is refused, never one in force dropped. It lives in the registry, so it survives a reload.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
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

/// Default cap: about 20 MB at most, with ids of 64 bytes.
pub(crate) const DEFAULT_CAP: usize = 100_000;

/// Subjects and token ids apart, so that a handshake looks its identity up by `&str`, without
/// making a key.
#[derive(Debug, Default)]
struct List {
    subjects: HashMap<Arc<str>, SystemTime>,
    tokens: HashMap<Arc<str>, SystemTime>,
}

impl List {
    fn len(&self) -> usize {
        self.subjects.len() + self.tokens.len()
    }

    fn map<'a>(
        &'a mut self,
        what: &'a Revoked,
    ) -> (&'a mut HashMap<Arc<str>, SystemTime>, &'a Arc<str>) {
        match what {
            Revoked::Subject(s) => (&mut self.subjects, s),
            Revoked::TokenId(t) => (&mut self.tokens, t),
        }
    }

    /// Drops what has lapsed.
    fn purge(&mut self, now: SystemTime) {
        self.subjects.retain(|_, at| *at > now);
        self.tokens.retain(|_, at| *at > now);
    }
}

/// The list, read by every handshake with an identity (a shared lock, only while the list is
/// not empty) and written by revocations.
#[derive(Debug)]
pub(crate) struct Revocations {
    list: RwLock<List>,
    /// Whether the list holds anything: handshakes skip the lock while it does not.
    any: AtomicBool,
    cap: AtomicUsize,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            list: RwLock::default(),
            any: AtomicBool::new(false),
            cap: DEFAULT_CAP.into(),
        }
    }
}

impl Revocations {
    fn read(&self) -> RwLockReadGuard<'_, List> {
        // Nothing under this lock can panic halfway.
        self.list.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, List> {
        self.list.write().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap.load(Ordering::Relaxed)
    }

    /// Refuses `what` until `until` (a later time replaces an earlier one, never the reverse).
    /// At the cap, lapsed entries leave first: only revocations in force count against it.
    pub(crate) fn revoke(&self, what: Revoked, until: SystemTime) -> Result<(), RevocationsFull> {
        let now = SystemTime::now();
        let cap = self.cap();
        let mut list = self.write();
        // Lapsed entries are dropped when they would stand in the way: a scan per revocation
        // would hold the lock handshakes read for the whole list each time.
        if list.len() >= cap {
            list.purge(now);
        }
        let full = list.len() >= cap;
        let (map, key) = list.map(&what);
        if let Some(at) = map.get_mut(&**key) {
            *at = (*at).max(until);
            return Ok(());
        }
        if full {
            return Err(RevocationsFull { cap });
        }
        map.insert(key.clone(), until);
        self.any.store(true, Ordering::Release);
        Ok(())
    }

    /// Lifts a revocation; `false` if there was none.
    pub(crate) fn lift(&self, what: &Revoked) -> bool {
        let mut list = self.write();
        let (map, key) = list.map(what);
        let lifted = map.remove(&**key).is_some();
        if list.len() == 0 {
            self.any.store(false, Ordering::Release);
        }
        lifted
    }

    /// Whether `identity` (its subject or token id) is revoked now.
    pub(crate) fn refuses(&self, identity: &Identity) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let now = SystemTime::now();
        let list = self.read();
        let live = |map: &HashMap<Arc<str>, SystemTime>, key: &str| {
            map.get(key).is_some_and(|at| *at > now)
        };
        live(&list.subjects, identity.subject())
            || identity.jti().is_some_and(|t| live(&list.tokens, t))
    }

    /// The revocations in force, in order, from after `after`, at most `limit`; and how many
    /// are in force in all. Copied out under the shared lock; sorted outside it.
    pub(crate) fn page(
        &self,
        after: Option<&Revoked>,
        limit: usize,
    ) -> (Vec<(Revoked, SystemTime)>, usize) {
        let now = SystemTime::now();
        let mut live: Vec<(Revoked, SystemTime)> = {
            let list = self.read();
            let subjects = list
                .subjects
                .iter()
                .map(|(s, at)| (Revoked::Subject(s.clone()), *at));
            let tokens = list
                .tokens
                .iter()
                .map(|(t, at)| (Revoked::TokenId(t.clone()), *at));
            subjects.chain(tokens).filter(|(_, at)| *at > now).collect()
        };
        let total = live.len();
        live.retain(|(what, _)| after.is_none_or(|a| what > a));
        live.sort();
        live.truncate(limit);
        (live, total)
    }
}
