//! The session API: list a layer's live sessions by whom they belong to, close them, extend
//! them, and revoke subjects and tokens. See [`SessionControl`].

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::identity::Identity;
use crate::registry::entry::{Cause, CloseRequest, Entry};
use crate::registry::revoked::{RevocationsFull, Revoked};
use crate::registry::sessions::{instant_of, Sessions};
use crate::session::close_code::CloseCode;

/// The most sessions (or revocations) one page holds.
pub const MAX_PAGE: usize = 1000;

/// A layer's live sessions, by whom they belong to; from
/// [`WsProxyLayer::session_control`](crate::WsProxyLayer::session_control). Clones share the
/// registry (kept across reloads, like the [`ShutdownHandle`](crate::ShutdownHandle)'s).
///
/// Every call takes the registry's shard locks one at a time: sessions opening and closing
/// meanwhile wait at most for one shard's walk (a sixteenth of the sessions), never for a
/// whole listing; sorting and paging happen outside the locks.
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use axum_ws_proxy::{Revoked, SessionControl, SessionFilter, WsProxyLayer};
/// use axum_ws_proxy::hooks::CloseCode;
///
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?);
/// let sessions: SessionControl = layer.session_control();
///
/// // A page of user-42's sessions, then the next from where it ended.
/// let page = sessions.list(&SessionFilter::default().subject("user-42"), None, 100);
/// let _more = page.next.map(|after| sessions.list(&SessionFilter::default(), Some(after), 100));
///
/// // Close a tenant's sessions with a code and reason of your choice.
/// let closed = sessions.close(&SessionFilter::default().tenant("acme"), CloseCode::POLICY_VIOLATION, "plan ended")?;
///
/// // Log a user out everywhere: live sessions close (1008 "revoked"), and reconnects with
/// // any of their tokens are refused (401) for the next hour.
/// let closed = sessions.revoke(Revoked::Subject("user-42".into()), SystemTime::now() + Duration::from_secs(3600))?;
/// # let _ = closed;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct SessionControl {
    sessions: Arc<Sessions>,
}

impl fmt::Debug for SessionControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionControl")
            .field("live", &self.sessions.live())
            .finish()
    }
}

/// Which sessions a call is about: all of those given must match (none given: every session).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[must_use]
pub struct SessionFilter {
    id: Option<u64>,
    subject: Option<String>,
    tenant: Option<String>,
    tag: Option<String>,
}

impl SessionFilter {
    /// The session with this id.
    pub fn id(mut self, id: u64) -> Self {
        self.id = Some(id);
        self
    }

    /// Sessions of this subject.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sessions of this tenant.
    pub fn tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Sessions with this tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tag = Some(tag.into());
        self
    }

    /// Whether no criterion is set (every session matches).
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    fn matches(&self, entry: &Entry) -> bool {
        if self.id.is_some_and(|id| id != entry.id()) {
            return false;
        }
        if self.subject.is_none() && self.tenant.is_none() && self.tag.is_none() {
            return true;
        }
        let Some(identity) = entry.identity() else {
            return false;
        };
        self.subject
            .as_deref()
            .is_none_or(|s| identity.subject() == s)
            && self
                .tenant
                .as_deref()
                .is_none_or(|t| identity.tenant_name() == Some(t))
            && self.tag.as_deref().is_none_or(|t| identity.has_tag(t))
    }
}

/// One live session, as listed.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionView {
    /// The session's id (in its logs, hooks and, if set, its upstream request header).
    pub id: u64,
    /// Whom it belongs to, if the identity phase said.
    pub identity: Option<Arc<Identity>>,
    /// When it will be closed for expiry (its identity's, or as extended since).
    pub expires_at: Option<SystemTime>,
    /// The upstream address it was dialled to.
    pub upstream: SocketAddr,
    /// How long it has been open.
    pub age: Duration,
    /// Time since its last data message.
    pub idle: Duration,
    /// Whether it has been asked to close (and is closing).
    pub closing: bool,
}

/// A page of sessions, in id order.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct SessionPage {
    /// At most the page size asked for (and never more than [`MAX_PAGE`]).
    pub sessions: Vec<SessionView>,
    /// Pass as `after` for the next page; `None` on the last.
    pub next: Option<u64>,
}

/// A page of revocations in force, in order.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RevocationPage {
    /// Each revocation and when it lapses.
    pub revocations: Vec<(Revoked, SystemTime)>,
    /// How many are in force in all.
    pub total: usize,
}

/// A close reason longer than a close frame carries (123 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CloseReasonTooLong(pub usize);

impl fmt::Display for CloseReasonTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a close reason is at most 123 bytes; this one is {}",
            self.0
        )
    }
}

impl std::error::Error for CloseReasonTooLong {}

impl SessionControl {
    pub(crate) fn new(sessions: Arc<Sessions>) -> Self {
        Self { sessions }
    }

    /// The sessions `filter` selects with an id above `after`, at most `limit` (capped at
    /// [`MAX_PAGE`]), in id order.
    pub fn list(&self, filter: &SessionFilter, after: Option<u64>, limit: usize) -> SessionPage {
        let limit = limit.clamp(1, MAX_PAGE);
        let after = after.unwrap_or(0);
        let mut entries = self
            .sessions
            .select(|e| e.id() > after && filter.matches(e));
        entries.sort_unstable_by_key(|e| e.id());
        let next = (entries.len() > limit).then(|| entries[limit - 1].id());
        entries.truncate(limit);
        SessionPage {
            sessions: entries.iter().map(|e| self.view(e)).collect(),
            next,
        }
    }

    /// One session, if it is live.
    pub fn get(&self, id: u64) -> Option<SessionView> {
        self.sessions.entry(id).map(|e| self.view(&e))
    }

    fn view(&self, entry: &Entry) -> SessionView {
        let now = tokio::time::Instant::now();
        let expires_at = self
            .sessions
            .expiries
            .deadline(entry.id())
            .map(|at| SystemTime::now() + at.saturating_duration_since(now));
        SessionView {
            id: entry.id(),
            identity: entry.identity().cloned(),
            expires_at,
            upstream: entry.endpoint().addr,
            age: now.saturating_duration_since(entry.started()),
            idle: entry.idle(),
            closing: entry.close_requested(),
        }
    }

    /// Asks the sessions `filter` selects to close: the client gets `code` and `reason`, the
    /// upstream 1001 with the same reason. Returns how many were asked (not those already
    /// closing). Counted as `closed` in `ws_proxy_sessions_shed_total`.
    pub fn close(
        &self,
        filter: &SessionFilter,
        code: CloseCode,
        reason: &str,
    ) -> Result<usize, CloseReasonTooLong> {
        if reason.len() > 123 {
            return Err(CloseReasonTooLong(reason.len()));
        }
        let request = CloseRequest {
            cause: Cause::Closed,
            client_code: code.get(),
            reason: Cow::Owned(reason.to_owned()),
        };
        Ok(self.ask(filter, &request))
    }

    fn ask(&self, filter: &SessionFilter, request: &CloseRequest) -> usize {
        match filter.id {
            Some(id) => self
                .sessions
                .entry(id)
                .filter(|e| filter.matches(e))
                .is_some_and(|e| self.sessions.request_close(&e, request.clone()))
                as usize,
            None => self
                .sessions
                .select(|e| filter.matches(e))
                .iter()
                .filter(|e| self.sessions.request_close(e, request.clone()))
                .count(),
        }
    }

    /// Moves session `id`'s expiry to `until` (an application that received a fresh
    /// credential in-band, verified it, and extends the session to its expiry). `false` if
    /// no such session is live, or it has already been asked to close (its expiry came
    /// first, say): it closes anyway. Works the same in both modes.
    pub fn extend(&self, id: u64, until: SystemTime) -> bool {
        match self.sessions.entry(id) {
            Some(entry) if entry.is_live() && !entry.close_requested() => {
                self.sessions.expiries.set(&entry, instant_of(until));
                // Ended meanwhile: its end may have looked before the deadline was set.
                if !entry.is_live() {
                    self.sessions.expiries.remove(id);
                }
                // Asked to close meanwhile (its old deadline, a revocation): it closes.
                !entry.close_requested()
            }
            _ => false,
        }
    }

    /// Refuses `what` until `until`: new upgrades it names get **401** (`token_revoked`), and
    /// its live sessions are closed now (1008 "revoked"; the upstream 1001). Returns how many
    /// were closed. The list is bounded
    /// ([`WsProxyLayer::max_revocations`](crate::WsProxyLayer::max_revocations)): when it is
    /// full of entries still in force, the revocation is refused and nothing is closed.
    pub fn revoke(&self, what: Revoked, until: SystemTime) -> Result<usize, RevocationsFull> {
        self.sessions.revoked.revoke(what.clone(), until)?;
        let revoked = self
            .sessions
            .select(|e| e.identity().is_some_and(|i| what.matches(i)));
        Ok(revoked
            .iter()
            .filter(|e| self.sessions.request_close(e, CloseRequest::REVOKED))
            .count())
    }

    /// Lifts a revocation before its time; `false` if there was none.
    pub fn lift(&self, what: &Revoked) -> bool {
        self.sessions.revoked.lift(what)
    }

    /// The revocations in force after `after`, at most `limit` (capped at [`MAX_PAGE`]).
    pub fn revocations(&self, after: Option<&Revoked>, limit: usize) -> RevocationPage {
        let (revocations, total) = self.sessions.revoked.page(after, limit.clamp(1, MAX_PAGE));
        RevocationPage { revocations, total }
    }
}
