//! Origin checks against cross-site WebSocket hijacking: which browser pages may open sessions.

use std::fmt;

use http::HeaderValue;

/// Origins allowed to open sessions: exact origins (`https://app.example.com`) and wildcard
/// hosts (`https://*.example.com`, or `*.example.com` for any scheme). A wildcard stands for one
/// or more labels, so `*.example.com` matches `a.example.com` and `a.b.example.com` but not
/// `example.com`. Ports must match as written (`https://app.example.com:8443`). Comparison is
/// case-insensitive; the `null` origin matches only an explicit `null`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Origins {
    patterns: Vec<Pattern>,
    pub(crate) allow_missing: bool,
}

#[derive(Clone, Debug)]
struct Pattern {
    /// `None`: any scheme.
    scheme: Option<String>,
    /// Lower-cased `host[:port]`; for wildcards, the part after `*.` with a leading dot.
    host: String,
    wildcard: bool,
}

/// What an origin check decided.
pub(crate) enum OriginCheck {
    Allowed,
    Refused(String),
    Missing,
}

impl Origins {
    pub(crate) fn new(patterns: impl IntoIterator<Item = String>, allow_missing: bool) -> Self {
        let patterns = patterns.into_iter().map(|p| Pattern::parse(&p)).collect();
        Self {
            patterns,
            allow_missing,
        }
    }

    /// Whether any upgrade can fail the check: origins are listed, or an `Origin` is required.
    pub(crate) fn is_restricted(&self) -> bool {
        !self.patterns.is_empty() || !self.allow_missing
    }

    pub(crate) fn check(&self, origin: Option<&HeaderValue>) -> OriginCheck {
        let Some(origin) = origin else {
            return if self.allow_missing {
                OriginCheck::Allowed
            } else {
                OriginCheck::Missing
            };
        };
        if self.patterns.is_empty() {
            return OriginCheck::Allowed; // Any origin, as long as there is one.
        }
        let text = String::from_utf8_lossy(origin.as_bytes()).to_ascii_lowercase();
        if self.patterns.iter().any(|p| p.matches(&text)) {
            OriginCheck::Allowed
        } else {
            OriginCheck::Refused(text)
        }
    }
}

impl Pattern {
    fn parse(pattern: &str) -> Self {
        let p = pattern.trim().trim_end_matches('/').to_ascii_lowercase();
        let (scheme, rest) = match p.split_once("://") {
            Some((s, r)) => (Some(s.to_owned()), r.to_owned()),
            None => (None, p),
        };
        match rest.strip_prefix("*.") {
            Some(suffix) => Self {
                scheme,
                host: format!(".{suffix}"),
                wildcard: true,
            },
            None => Self {
                scheme,
                host: rest,
                wildcard: false,
            },
        }
    }

    fn matches(&self, origin: &str) -> bool {
        let Some((scheme, host)) = origin.split_once("://") else {
            // `null` and other opaque origins.
            return self.scheme.is_none() && !self.wildcard && self.host == origin;
        };
        if self.scheme.as_deref().is_some_and(|s| s != scheme) {
            return false;
        }
        if self.wildcard {
            host.len() > self.host.len() && host.ends_with(&self.host)
        } else {
            host == self.host
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = &self.scheme {
            write!(f, "{s}://")?;
        }
        if self.wildcard {
            write!(f, "*{}", self.host)
        } else {
            f.write_str(&self.host)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn allowed(patterns: &[&str], origin: &str) -> bool {
        let o = Origins::new(patterns.iter().map(|s| s.to_string()), true);
        matches!(
            o.check(Some(&HeaderValue::from_str(origin).unwrap())),
            OriginCheck::Allowed
        )
    }

    #[test]
    fn exact_and_wildcard() {
        let p = [
            "https://app.example.com",
            "https://*.example.org",
            "*.dev.test",
        ];
        assert!(allowed(&p, "https://app.example.com"));
        assert!(allowed(&p, "HTTPS://App.Example.com"));
        assert!(!allowed(&p, "http://app.example.com"));
        assert!(!allowed(&p, "https://app.example.com:8443"));
        assert!(!allowed(&p, "https://evil-app.example.com"));
        assert!(allowed(&p, "https://a.example.org"));
        assert!(allowed(&p, "https://a.b.example.org"));
        assert!(!allowed(&p, "https://example.org"));
        assert!(!allowed(&p, "https://a.example.org.evil.com"));
        assert!(!allowed(&p, "https://aexample.org"));
        assert!(allowed(&p, "http://x.dev.test"));
        assert!(allowed(&p, "https://x.dev.test"));
        assert!(!allowed(&p, "null"));
        assert!(allowed(&["null"], "null"));
    }

    #[test]
    fn missing_origin_follows_the_setting() {
        let strict = Origins::new(["https://a.example".to_string()], false);
        assert!(matches!(strict.check(None), OriginCheck::Missing));
        let lenient = Origins::new(["https://a.example".to_string()], true);
        assert!(matches!(lenient.check(None), OriginCheck::Allowed));
    }
}
