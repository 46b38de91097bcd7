//! Step 1, before anything is dialled: the parts of the client's request the proxy acts on,
//! made strict. Dot-segments are removed from the path (so `/../admin` cannot leave an
//! upstream's prefix or a route), `Host` must be one valid authority, and an upgrade carries
//! no body.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::{Authority, PathAndQuery};
use http::{HeaderMap, HeaderValue, Request, Uri, Version};

use crate::ProxyError;

/// Checks `req` and rewrites its path without dot-segments (RFC 3986 §5.2.4), and its `Host`
/// to the target's authority for an absolute-form request (RFC 9112 §3.2.2).
pub(crate) fn check<B>(req: &mut Request<B>) -> Result<(), ProxyError> {
    if has_body(req.headers()) {
        return Err(ProxyError::UpgradeWithBody);
    }
    // Origin-form (`/path`) or absolute-form (`http://host/path`); not `*` (found by fuzzing:
    // it was forwarded as a path).
    let path = req.uri().path();
    if !path.is_empty() && !path.starts_with('/') {
        return Err(ProxyError::InvalidTarget);
    }
    let host = host(req.version(), req.uri(), req.headers())?;
    if let Some(host) = host {
        req.headers_mut().insert(HOST, host);
    }
    if let Some(pq) = req.uri().path_and_query() {
        if let Some(normal) = remove_dot_segments(pq)? {
            let mut parts = req.uri().clone().into_parts();
            parts.path_and_query = Some(normal);
            *req.uri_mut() = Uri::from_parts(parts).map_err(|_| ProxyError::PathAboveRoot)?;
        }
    }
    Ok(())
}

fn has_body(headers: &HeaderMap) -> bool {
    headers.contains_key(TRANSFER_ENCODING)
        || headers
            .get_all(CONTENT_LENGTH)
            .iter()
            .any(|v| v.as_bytes() != b"0")
}

/// The `Host` to forward: `None` to keep the request's as it is.
fn host(
    version: Version,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<HeaderValue>, ProxyError> {
    let mut hosts = headers.get_all(HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::InvalidHost("more than one Host header"));
    }
    if let Some(value) = first {
        let valid = value
            .to_str()
            .ok()
            .and_then(|v| v.parse::<Authority>().ok())
            .is_some_and(|a| !a.as_str().contains('@') && !a.host().is_empty());
        if !valid {
            return Err(ProxyError::InvalidHost("not a host[:port]"));
        }
    }
    // Absolute form (`GET http://host/path`): the target's authority wins over `Host`.
    if let Some(authority) = uri.authority().filter(|_| version == Version::HTTP_11) {
        if authority.as_str().contains('@') {
            return Err(ProxyError::InvalidHost("userinfo in the request target"));
        }
        let value = HeaderValue::from_str(authority.as_str())
            .map_err(|_| ProxyError::InvalidHost("not a host[:port]"))?;
        return Ok(Some(value));
    }
    if first.is_none() && version == Version::HTTP_11 {
        return Err(ProxyError::InvalidHost("HTTP/1.1 requires one"));
    }
    Ok(None)
}

/// A segment's dots: 1 for `.`, 2 for `..` (`%2e` counting as a dot, in either case), else 0.
fn dots(segment: &str) -> usize {
    let mut rest = segment.as_bytes();
    let mut n = 0;
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[..3].eq_ignore_ascii_case(b"%2e") {
            rest = &rest[3..];
        } else {
            return 0;
        }
        n += 1;
    }
    if n <= 2 {
        n
    } else {
        0
    }
}

/// The path without `.` and `..` segments, `%2e` counting as a dot and `\` as a separator;
/// `None` when there are none (the path is then forwarded byte for byte).
pub(crate) fn remove_dot_segments(pq: &PathAndQuery) -> Result<Option<PathAndQuery>, ProxyError> {
    let path = pq.path();
    // Neither a dot nor a percent sign: no dot segment and no encoded separator (most paths).
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return Ok(None);
    }
    let segments: Vec<&str> = path.split(['/', '\\']).collect();
    if !segments.iter().any(|s| dots(s) > 0) && !path.contains("%5c") && !path.contains("%5C") {
        return Ok(None);
    }
    // Percent-encoded backslashes separate segments too, for this purpose.
    let path = path.replace("%5c", "/").replace("%5C", "/");
    let segments: Vec<&str> = path.split(['/', '\\']).skip(1).collect();
    if !segments.iter().any(|s| dots(s) > 0) {
        return Ok(None);
    }
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    let last = segments.len().saturating_sub(1);
    for (i, seg) in segments.iter().enumerate() {
        match dots(seg) {
            1 => {}
            2 => {
                if out.pop().is_none() {
                    return Err(ProxyError::PathAboveRoot);
                }
            }
            _ => out.push(seg),
        }
        // `/a/b/..` is `/a/`: a trailing dot-segment leaves a directory.
        if i == last && dots(seg) > 0 {
            out.push("");
        }
    }
    let mut normal = String::with_capacity(pq.as_str().len());
    for seg in &out {
        normal.push('/');
        normal.push_str(seg);
    }
    if normal.is_empty() {
        normal.push('/');
    }
    if let Some(q) = pq.query() {
        normal.push('?');
        normal.push_str(q);
    }
    normal
        .parse()
        .map(Some)
        .map_err(|_| ProxyError::PathAboveRoot)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(p: &str) -> Result<String, &'static str> {
        match remove_dot_segments(&p.parse().unwrap()) {
            Ok(Some(n)) => Ok(n.as_str().to_owned()),
            Ok(None) => Ok(p.to_owned()),
            Err(_) => Err("above root"),
        }
    }

    #[test]
    fn dot_segments_are_removed_and_climbing_refused() {
        assert_eq!(norm("/a/b/../c?x=/../y"), Ok("/a/c?x=/../y".into()));
        assert_eq!(norm("/a/./b/."), Ok("/a/b/".into()));
        assert_eq!(norm("/a/%2e%2E/b"), Ok("/b".into()));
        assert_eq!(norm("/a/.%2e/b"), Ok("/b".into()));
        assert_eq!(norm("/a/b/..\\c"), Ok("/a/c".into()));
        assert_eq!(norm("/a/b/..%5cc"), Ok("/a/c".into()));
        assert_eq!(norm("/a/b/.."), Ok("/a/".into()));
        assert_eq!(norm("/../admin"), Err("above root"));
        assert_eq!(norm("/public/../../etc"), Err("above root"));
        assert_eq!(norm("/%2e%2e/x"), Err("above root"));
        assert_eq!(norm("/..\\x"), Err("above root"));
        // Untouched: byte for byte, encoding kept.
        assert_eq!(norm("/rooms/42%2F?x=%2F"), Ok("/rooms/42%2F?x=%2F".into()));
        assert_eq!(norm("/a..b/.c/c."), Ok("/a..b/.c/c.".into()));
        assert_eq!(norm("/a/.../%2e%2e%2E/b"), Ok("/a/.../%2e%2e%2E/b".into()));
        assert_eq!(norm("/a/%2E/b"), Ok("/a/b".into()));
        assert_eq!(norm("/a/%2e./b"), Ok("/b".into()));
    }

    fn req(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn host_is_strict() {
        let cause = |mut r: Request<()>| check(&mut r).err().map(|e| e.to_string());
        assert_eq!(cause(req("/", &[("host", "a.example")])), None);
        assert_eq!(
            cause(req("/", &[("host", "a.example"), ("host", "b.example")])),
            Some("invalid Host: more than one Host header".into())
        );
        assert_eq!(
            cause(req("/", &[])),
            Some("invalid Host: HTTP/1.1 requires one".into())
        );
        for bad in ["evil.example/../x", "user@evil.example", "", "a b"] {
            assert!(cause(req("/", &[("host", bad)])).is_some(), "{bad:?}");
        }
        let mut r = req("http://target.example:8080/x", &[("host", "other.example")]);
        check(&mut r).unwrap();
        assert_eq!(r.headers()["host"], "target.example:8080");
        assert_eq!(
            cause(req("/", &[("host", "a.example"), ("content-length", "5")])),
            Some("an upgrade request cannot have a body".into())
        );
        assert_eq!(
            cause(req("/", &[("host", "a.example"), ("content-length", "0")])),
            None
        );
    }
}
