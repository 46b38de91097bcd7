//! Whom a session belongs to: what the identity phase of an upgrade finds, and what the
//! registry keeps of it while the session lives.

use std::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};

/// Whom a session belongs to, found before anything is dialled: by the identity hook
/// ([`WsProxyLayer::identify`](crate::WsProxyLayer::identify)), or by the built-in JWT check.
///
/// The registry keeps it for the session's life: the session API lists and closes sessions
/// by [`subject`](Self::subject), [`tenant`](Self::tenant), tag or id, revokes subjects and
/// token ids, and the session ends at [`expires_at`](Self::expires_at) (the client gets
/// **1008** "token expired", the upstream **1001**) unless it is extended first
/// ([`SessionControl::extend`](crate::SessionControl::extend)).
///
/// ```
/// use std::time::{Duration, SystemTime};
/// use axum_ws_proxy::Identity;
/// use axum_ws_proxy::http::HeaderValue;
///
/// let identity = Identity::new("user-42")
///     .tenant("acme")
///     .tag("beta")
///     .token_id("4f1c")
///     .expires_at(SystemTime::now() + Duration::from_secs(900))
///     // Replaces any copy the client sent.
///     .forward_header("x-user".parse()?, HeaderValue::from_static("user-42"));
/// assert_eq!(identity.subject(), "user-42");
/// assert_eq!(identity.tags().collect::<Vec<_>>(), ["beta"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[must_use]
pub struct Identity {
    subject: Arc<str>,
    tenant: Option<Arc<str>>,
    tags: Box<[Arc<str>]>,
    token_id: Option<Arc<str>>,
    expires_at: Option<SystemTime>,
    /// Set on the upstream request (replacing the client's); not kept past the handshake.
    forward: HeaderMap,
}

impl Identity {
    /// An identity for `subject` (a user, a service account), without tenant, tags or expiry.
    pub fn new(subject: impl Into<Arc<str>>) -> Self {
        Self {
            subject: subject.into(),
            tenant: None,
            tags: Box::default(),
            token_id: None,
            expires_at: None,
            forward: HeaderMap::new(),
        }
    }

    /// The tenant (organisation, workspace) the subject acts for.
    pub fn tenant(mut self, tenant: impl Into<Arc<str>>) -> Self {
        self.tenant = Some(tenant.into());
        self
    }

    /// Adds a tag (a role, a plan, a client version): sessions can be listed and closed by
    /// tag.
    pub fn tag(mut self, tag: impl Into<Arc<str>>) -> Self {
        let mut tags = std::mem::take(&mut self.tags).into_vec();
        tags.push(tag.into());
        self.tags = tags.into_boxed_slice();
        self
    }

    /// The credential's own id (a JWT's `jti`): revoking it refuses the credential and
    /// closes its sessions.
    pub fn token_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.token_id = Some(id.into());
        self
    }

    /// When the credential expires: the session is closed then (1008 "token expired").
    /// An identity that has already expired is refused (**401**).
    pub fn expires_at(mut self, at: SystemTime) -> Self {
        self.expires_at = Some(at);
        self
    }

    /// A header the upstream request carries, set by the proxy (any copy the client sent is
    /// replaced).
    pub fn forward_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.forward.insert(name, value);
        self
    }

    /// Whom the session belongs to.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// The tenant, if one was given.
    pub fn tenant_name(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    /// The tags, in the order they were added.
    pub fn tags(&self) -> impl Iterator<Item = &str> {
        self.tags.iter().map(|t| &**t)
    }

    /// Whether `tag` is one of the tags.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| &**t == tag)
    }

    /// The credential's id (`jti`), if it has one.
    pub fn jti(&self) -> Option<&str> {
        self.token_id.as_deref()
    }

    /// When the credential expires, if it does.
    pub fn expiry(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The headers to set on the upstream request, taken out (the registry keeps the rest).
    pub(crate) fn take_forwarded(&mut self) -> HeaderMap {
        std::mem::take(&mut self.forward)
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Forwarded header values may carry claims: names only.
        f.debug_struct("Identity")
            .field("subject", &self.subject)
            .field("tenant", &self.tenant)
            .field("tags", &self.tags)
            .field("token_id", &self.token_id)
            .field("expires_at", &self.expires_at)
            .field("forward", &self.forward.keys().collect::<Vec<_>>())
            .finish()
    }
}
