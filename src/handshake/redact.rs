//! Query parameters that never reach a log line: `?token=SECRET` is logged as
//! `?token=REDACTED`. Hooks and the upstream still get the request as sent.

use std::borrow::Cow;
use std::sync::Arc;

/// What nginx users put in `$request` and regret: credentials in WebSocket URLs (browsers
/// cannot set headers on a WebSocket, so tokens travel in the query).
pub(crate) const DEFAULT_REDACTED: [&str; 5] = ["token", "access_token", "auth", "key", "password"];

/// Query parameter names (case-insensitive) whose values are replaced in logs.
#[derive(Clone, Debug)]
pub(crate) struct Redact(Arc<[String]>);

impl Default for Redact {
    fn default() -> Self {
        Self::new(DEFAULT_REDACTED)
    }
}

impl Redact {
    pub(crate) fn new<I>(names: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self(names.into_iter().map(Into::into).collect())
    }

    /// The parameters' names.
    pub(crate) fn names(&self) -> &[String] {
        &self.0
    }

    /// `path?query` with the named parameters' values replaced by `REDACTED`.
    pub(crate) fn apply<'a>(&self, path_and_query: &'a str) -> Cow<'a, str> {
        let Some((path, query)) = path_and_query.split_once('?') else {
            return Cow::Borrowed(path_and_query);
        };
        let secret = |pair: &str| {
            let name = pair.split_once('=').map_or(pair, |(n, _)| n);
            self.0.iter().any(|r| r.eq_ignore_ascii_case(name))
        };
        if !query.split('&').any(|p| p.contains('=') && secret(p)) {
            return Cow::Borrowed(path_and_query);
        }
        let mut out = String::with_capacity(path_and_query.len());
        out.push_str(path);
        for (i, pair) in query.split('&').enumerate() {
            out.push(if i == 0 { '?' } else { '&' });
            match pair.split_once('=') {
                Some((name, _)) if secret(pair) => {
                    out.push_str(name);
                    out.push_str("=REDACTED");
                }
                _ => out.push_str(pair),
            }
        }
        Cow::Owned(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_values_are_replaced_and_the_rest_kept() {
        let r = Redact::default();
        assert_eq!(
            r.apply("/ws?room=7&Token=s3cr3t&x&password=p"),
            "/ws?room=7&Token=REDACTED&x&password=REDACTED"
        );
        assert!(matches!(r.apply("/ws?room=7"), Cow::Borrowed(_)));
        assert_eq!(r.apply("/plain"), "/plain");
        assert_eq!(
            Redact::new(["sig"]).apply("/a?sig=1&token=2"),
            "/a?sig=REDACTED&token=2"
        );
    }
}
