//! Step 1, before anything is dialled: the parts of the client's request the proxy acts on,
//! made strict. Dot-segments are removed from the path (so `/../admin` cannot leave an
//! upstream's prefix or a route), a dot-segment hidden behind an encoded slash (`..%2F`) is
//! refused, encoded slashes are kept, refused or decoded ([`EscapedSlashes`]), `Host` must be
//! one valid authority, and an upgrade carries no body.

use http::header::{CONTENT_LENGTH, HOST, TRANSFER_ENCODING};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Request, Uri, Version};

use crate::error::ProxyError;

/// What the proxy does with encoded slashes (`%2F`, `%5C`, either case) in a request path, as
/// Envoy's `path_with_escaped_slashes_action`. Whatever the setting, a path that would hold a
/// dot-segment once they are decoded (`/..%2Fadmin`, `/a%2F..`, `/.%5Cx`, also double-encoded
/// as `%252F`) is refused with 400 (`cause="encoded_dot_segment"`): a server that decodes
/// `%2F` before resolving dot-segments would otherwise serve a path above the upstream's
/// prefix.
///
/// ```
/// use axum_ws_proxy::{EscapedSlashes, WsProxyLayer};
///
/// assert_eq!(EscapedSlashes::default(), EscapedSlashes::Keep);
/// assert_eq!("decode".parse::<EscapedSlashes>(), Ok(EscapedSlashes::Decode));
/// let layer = WsProxyLayer::new("ws://127.0.0.1:3000".parse()?)
///     .escaped_slashes(EscapedSlashes::Reject);
/// # let _ = layer;
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EscapedSlashes {
    /// Forward them byte for byte (the default): `/rooms/42%2F` reaches the upstream as it
    /// came, as nginx, HAProxy and Envoy do by default.
    #[default]
    Keep,
    /// Refuse any path holding one with **400** (`cause="escaped_slash"`).
    Reject,
    /// Take them as separators: `/a%2Fb` is `/a/b` for dot-segment removal, for the routes the
    /// proxy matches (the routing hook, `ws-proxy`'s `[[routes]]`) and for the upstream, so all
    /// see the same path. Inside an axum app, the app's `Router` has matched its routes before
    /// the layer runs: this governs the proxy's routing and forwarding, not the app's.
    Decode,
}

impl EscapedSlashes {
    /// The setting's name: `keep`, `reject` or `decode`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Keep => "keep",
            Self::Reject => "reject",
            Self::Decode => "decode",
        }
    }
}

impl std::fmt::Display for EscapedSlashes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for EscapedSlashes {
    type Err = ParseEscapedSlashesError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "keep" => Ok(Self::Keep),
            "reject" => Ok(Self::Reject),
            "decode" => Ok(Self::Decode),
            _ => Err(ParseEscapedSlashesError(s.to_owned())),
        }
    }
}

/// A text that is not `keep`, `reject` or `decode`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseEscapedSlashesError(String);

impl ParseEscapedSlashesError {
    /// The text that did not parse.
    pub fn input(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for ParseEscapedSlashesError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "invalid escaped-slashes action {:?} (expected keep, reject or decode)",
            self.0
        )
    }
}

impl std::error::Error for ParseEscapedSlashesError {}

/// Checks `req` and rewrites its path without dot-segments (RFC 3986 §5.2.4), its encoded
/// slashes as `escaped` says, and its `Host` to the target's authority for an absolute-form
/// request (RFC 9112 §3.2.2).
pub(crate) fn check<B>(req: &mut Request<B>, escaped: EscapedSlashes) -> Result<(), ProxyError> {
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
        if let Some(normal) = normalize(pq, escaped)? {
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
        if !is_host(value.as_bytes()) {
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

/// Whether `value` is a `host[:port]` (RFC 9112 §3.2, RFC 3986 §3.2.2): what `http`'s
/// `Authority` accepts, without userinfo and with a host. Checked on the bytes: parsing an
/// `Authority` copies the value (an allocation per upgrade). `tests::is_host_is_http_s_authority`
/// compares the two on every short string of the characters that matter.
fn is_host(value: &[u8]) -> bool {
    let (mut colons, mut open, mut close, mut percent) = (0u32, false, false, false);
    for &b in value {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' => {}
            b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+'
            | b',' | b';' | b'=' => {}
            b':' => {
                colons += 1;
                // An IPv6 literal has at most 8 (`http`'s bound, counted up to the `]`).
                if colons > 8 {
                    return false;
                }
            }
            // A zone identifier inside an IPv6 literal (RFC 6874); anywhere else, refused.
            b'%' => percent = true,
            b'[' if !percent && !open => open = true,
            b']' if open && !close => {
                close = true;
                colons = 0;
                percent = false;
            }
            // Userinfo (`@`), a path, query or fragment, anything else.
            _ => return false,
        }
    }
    let host_empty = match value.first() {
        None => true,
        Some(b'[') => false,
        Some(_) => value.first() == Some(&b':'),
    };
    open == close && colons <= 1 && !percent && !host_empty
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

/// The path with encoded slashes dealt with as `escaped` says and without `.` and `..`
/// segments (`%2e` counting as a dot and `\` as a separator); `None` when nothing changes (the
/// path is then forwarded byte for byte).
pub(crate) fn normalize(
    pq: &PathAndQuery,
    escaped: EscapedSlashes,
) -> Result<Option<PathAndQuery>, ProxyError> {
    let path = pq.path();
    // Neither a dot nor a percent sign: no dot segment and nothing encoded (most paths).
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return Ok(None);
    }
    if escaped != EscapedSlashes::Keep && encoded_slash(path).is_some() {
        if escaped == EscapedSlashes::Reject {
            return Err(ProxyError::EscapedSlash);
        }
        let decoded = with_query(&decode_slashes(path), pq.query());
        let decoded: PathAndQuery = decoded.parse().map_err(|_| ProxyError::InvalidTarget)?;
        let normal = remove_dot_segments(&decoded)?;
        return Ok(Some(normal.unwrap_or(decoded)));
    }
    remove_dot_segments(pq)
}

/// Where the first `%2F` or `%5C` (either case) starts in `path`.
fn encoded_slash(path: &str) -> Option<usize> {
    path.as_bytes().windows(3).position(|w| {
        w[0] == b'%' && (w[1..].eq_ignore_ascii_case(b"2f") || w[1..].eq_ignore_ascii_case(b"5c"))
    })
}

/// `path` with every `%2F` and `%5C` (either case) written as `/`.
fn decode_slashes(mut path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    while let Some(at) = encoded_slash(path) {
        out.push_str(&path[..at]);
        out.push('/');
        path = &path[at + 3..];
    }
    out.push_str(path);
    out
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

/// `bytes` with each `%XX` escape decoded (an invalid one is kept as it is).
pub(crate) fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| Some((hex(*bytes.get(i + 1)?)?, hex(*bytes.get(i + 2)?)?)))
            .flatten();
        match escape {
            Some((hi, lo)) => {
                out.push(hi << 4 | lo);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

/// Whether `segment` (no `/` or `\` in it) hides a `.` or `..` segment that a server decoding
/// it once or twice would see: behind an encoded slash (`..%2F`, `%2F..`, `.%5C`), or
/// double-encoded (`%252E%252E`). A segment that is a dot-segment as it stands is not hidden:
/// it is removed.
fn hides_dot_segment(segment: &str) -> bool {
    if !segment.contains('%') || dots(segment) > 0 {
        return false;
    }
    let is_dots = |part: &[u8]| part == b"." || part == b"..";
    let once = percent_decode(segment.as_bytes());
    let twice = percent_decode(&once);
    [once, twice]
        .iter()
        .any(|decoded| decoded.split(|b| *b == b'/' || *b == b'\\').any(is_dots))
}

/// The path without `.` and `..` segments, `%2e` counting as a dot and `\` as a separator;
/// `None` when there are none. A dot-segment hidden behind an encoded slash is refused.
fn remove_dot_segments(pq: &PathAndQuery) -> Result<Option<PathAndQuery>, ProxyError> {
    let path = pq.path();
    if !path.bytes().any(|b| b == b'.' || b == b'%') {
        return Ok(None);
    }
    let segments: Vec<&str> = path.split(['/', '\\']).skip(1).collect();
    if segments.iter().any(|s| hides_dot_segment(s)) {
        return Err(ProxyError::EncodedDotSegment);
    }
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
    use http::uri::Authority;

    fn norm_with(p: &str, escaped: EscapedSlashes) -> Result<String, &'static str> {
        match normalize(&p.parse().unwrap(), escaped) {
            Ok(Some(n)) => Ok(n.as_str().to_owned()),
            Ok(None) => Ok(p.to_owned()),
            Err(ProxyError::PathAboveRoot) => Err("above root"),
            Err(e) => Err(e.cause()),
        }
    }

    fn norm(p: &str) -> Result<String, &'static str> {
        norm_with(p, EscapedSlashes::Keep)
    }

    #[test]
    fn dot_segments_are_removed_and_climbing_refused() {
        assert_eq!(norm("/a/b/../c?x=/../y"), Ok("/a/c?x=/../y".into()));
        assert_eq!(norm("/a/./b/."), Ok("/a/b/".into()));
        assert_eq!(norm("/a/%2e%2E/b"), Ok("/b".into()));
        assert_eq!(norm("/a/.%2e/b"), Ok("/b".into()));
        assert_eq!(norm("/a/b/..\\c"), Ok("/a/c".into()));
        assert_eq!(norm("/a/b/..%5cc"), Err("encoded_dot_segment"));
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

    /// A dot-segment behind an encoded slash is refused whatever the setting (but `decode`,
    /// where it is a plain dot-segment once decoded); encoded slashes elsewhere are kept,
    /// refused or decoded as the setting says.
    #[test]
    fn encoded_slashes_follow_the_setting_and_never_hide_a_dot_segment() {
        use EscapedSlashes::{Decode, Keep, Reject};
        let hidden = [
            "/..%2fadmin",
            "/..%2Fadmin",
            "/rooms/..%2f..%2fadmin",
            "/a%2f..",
            "/a%2F../b",
            "/.%2fx",
            "/a/%2e%2e%2fb",
            "/a/%2E%2e%5Cb",
            "/..%5cadmin",
            "/a/..%252fb",
            "/a/%252e%252e/b",
            "/a/%25%32%65%25%32%65/b",
            "/a/..%255cb",
        ];
        for path in hidden {
            assert_eq!(norm_with(path, Keep), Err("encoded_dot_segment"), "{path}");
        }
        for path in &hidden[..9] {
            assert_eq!(norm_with(path, Reject), Err("escaped_slash"), "{path}");
        }
        for path in &hidden[9..] {
            assert_eq!(
                norm_with(path, Reject),
                Err("encoded_dot_segment"),
                "{path}"
            );
        }
        // Decoded, they are plain dot-segments: removed, or refused above the root.
        assert_eq!(norm_with("/..%2fadmin", Decode), Err("above root"));
        assert_eq!(
            norm_with("/rooms/x/..%2fadmin", Decode),
            Ok("/rooms/admin".into())
        );
        assert_eq!(norm_with("/a%2F../b?q=%2F", Decode), Ok("/b?q=%2F".into()));
        assert_eq!(norm_with("/a/..%252fb", Decode), Err("encoded_dot_segment"));
        // Encoded slashes with no dot-segment: kept byte for byte, refused, or decoded.
        for path in ["/rooms/42%2F", "/a%2fb", "/a%5Cb/c", "/x%2F.y/z"] {
            assert_eq!(norm_with(path, Keep), Ok(path.to_owned()), "{path}");
            assert_eq!(norm_with(path, Reject), Err("escaped_slash"), "{path}");
        }
        assert_eq!(norm_with("/rooms/42%2F", Decode), Ok("/rooms/42/".into()));
        assert_eq!(
            norm_with("/a%5Cb/c?x=%2f", Decode),
            Ok("/a/b/c?x=%2f".into())
        );
        // Percent signs that hide nothing, and queries, are left alone in every mode.
        for escaped in [Keep, Reject, Decode] {
            for path in [
                "/100%25",
                "/a%2e/b",
                "/a/%2525",
                "/a?x=..%2f..",
                "/%2e%2ex/b",
            ] {
                assert_eq!(norm_with(path, escaped), Ok(path.to_owned()), "{path}");
            }
        }
    }

    fn req(target: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut b = Request::get(target);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    /// `is_host` decides as `http`'s `Authority` parse (plus no userinfo, a host) on every
    /// string of up to four of the characters that steer it, and on longer random ones.
    #[test]
    fn is_host_is_http_s_authority() {
        let reference = |s: &str| {
            s.parse::<Authority>()
                .is_ok_and(|a| !a.as_str().contains('@') && !a.host().is_empty())
        };
        const ALPHABET: &[u8] = b"a1.:[]%@/?# -~!";
        let mut checked = 0;
        let mut each = |s: &[u8]| {
            let text = std::str::from_utf8(s).unwrap();
            assert_eq!(is_host(s), reference(text), "{text:?}");
            checked += 1;
        };
        let mut word = Vec::new();
        fn all(word: &mut Vec<u8>, left: usize, each: &mut dyn FnMut(&[u8])) {
            each(word);
            if left == 0 {
                return;
            }
            for &c in ALPHABET {
                word.push(c);
                all(word, left - 1, each);
                word.pop();
            }
        }
        all(&mut word, 4, &mut each);
        // Longer ones: IPv6 literals with zones and ports, colons past the bound.
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for _ in 0..200_000 {
            let mut s = Vec::new();
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let len = (seed % 24) as usize;
            let mut x = seed;
            for _ in 0..len {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                s.push(ALPHABET[((x >> 33) % ALPHABET.len() as u64) as usize]);
            }
            each(&s);
        }
        for s in [
            "[fe80::1%25eth0]:8080",
            "[::1]",
            "[1:2:3:4:5:6:7:8]:80",
            "[1:2:3:4:5:6:7:8:9]",
            "example.com:99999",
            "example.com:",
            "[]",
        ] {
            each(s.as_bytes());
        }
        assert!(checked > 250_000, "{checked}");
    }

    #[test]
    fn host_is_strict() {
        let cause = |mut r: Request<()>| {
            check(&mut r, EscapedSlashes::Keep)
                .err()
                .map(|e| e.to_string())
        };
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
        check(&mut r, EscapedSlashes::Keep).unwrap();
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
