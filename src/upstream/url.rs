//! One upstream URL: `ws://host:port[/prefix]`.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use http::header::HeaderValue;
use http::uri::PathAndQuery;

/// A WebSocket server upgrades are forwarded to, parsed from `ws://host:port[/prefix]`.
///
/// - `http://` is accepted and means `ws://`; the port defaults to 80.
/// - `wss://` (or `https://`) reaches the upstream over TLS (with the `tls` feature, on by
///   default); the port defaults to 443. See [`UpstreamTls`](crate::tls::UpstreamTls).
/// - The host may be a name (resolved before the first dial, then again in the background
///   every [`UpstreamPool::resolve_every`](crate::upstream::UpstreamPool::resolve_every), 30 s by default,
///   so DNS changes are picked up without a dial waiting on them), an IPv4
///   address, or a bracketed IPv6 address (`ws://[::1]:3000`).
/// - The optional path prefix is prepended to the client's path and query: with
///   `ws://chat:3000/rooms`, a client request for `/42?x=1` goes upstream as `/rooms/42?x=1`.
///   A trailing `/` on the prefix is dropped so the two never join as `//`.
/// - User info, a query and a fragment are refused: they have no meaning for a proxy target.
///
/// ```
/// use axum_ws_proxy::upstream::Upstream;
///
/// let up: Upstream = "ws://127.0.0.1:3000/rooms".parse()?;
/// assert_eq!(up.host(), "127.0.0.1");
/// assert_eq!(up.port(), 3000);
/// assert_eq!(up.path_prefix(), "/rooms");
///
/// let err = "ws//x".parse::<Upstream>().unwrap_err();
/// assert_eq!(err.to_string(), r#"invalid upstream URL "ws//x": missing "://" after the scheme (expected ws://host:port[/prefix])"#);
/// # Ok::<(), axum_ws_proxy::upstream::ParseUpstreamError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Upstream {
    /// Host as it is dialled: IPv6 without brackets.
    host: String,
    port: u16,
    /// `wss://` (or `https://`): TLS to the upstream.
    tls: bool,
    /// `host[:port]` as it goes in a `Host` header: brackets kept, the default port omitted.
    authority: String,
    /// `authority` ready for a `Host` header.
    host_header: HeaderValue,
    /// Empty, or starts with `/` and does not end with one.
    prefix: String,
}

impl Upstream {
    /// The host to dial (an IPv6 address without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the upstream is reached over TLS (`wss://`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `host[:port]`, as sent in `Host` when [`preserve_host(false)`] is set.
    ///
    /// [`preserve_host(false)`]: crate::WsProxyLayer::preserve_host
    pub fn authority(&self) -> &str {
        &self.authority
    }

    pub(crate) fn host_header(&self) -> &HeaderValue {
        &self.host_header
    }

    /// The path prepended to every forwarded request: empty or `/segment[/segment...]`.
    pub fn path_prefix(&self) -> &str {
        &self.prefix
    }

    /// The request target sent upstream, in the pieces it is written from (no string is built
    /// per dial): the prefix followed by the client's path and query, byte for byte
    /// (percent-encoding is kept). Both parts were validated (the prefix when parsed, the
    /// client's path as a `PathAndQuery`: no spaces, no control bytes), so their concatenation
    /// is a valid target, written into the request line as it is.
    pub(crate) fn request_target<'a>(&'a self, client: Option<&'a PathAndQuery>) -> [&'a str; 3] {
        let tail = client.map_or("/", PathAndQuery::as_str);
        // A client request for "*" or with an empty path: keep the target well formed.
        let slash = if tail.starts_with('/') { "" } else { "/" };
        [&self.prefix, slash, tail]
    }
}

impl fmt::Display for Upstream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = if self.tls { "wss" } else { "ws" };
        write!(f, "{scheme}://{}{}", self.authority, self.prefix)
    }
}

impl FromStr for Upstream {
    type Err = ParseUpstreamError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        parse(url).map_err(|kind| ParseUpstreamError {
            url: url.to_owned(),
            kind,
        })
    }
}

impl TryFrom<&str> for Upstream {
    type Error = ParseUpstreamError;

    fn try_from(url: &str) -> Result<Self, Self::Error> {
        url.parse()
    }
}

fn parse(url: &str) -> Result<Upstream, ParseUpstreamErrorKind> {
    use ParseUpstreamErrorKind as E;

    let (scheme, rest) = url.split_once("://").ok_or(E::MissingScheme)?;
    let tls = match scheme.to_ascii_lowercase().as_str() {
        "ws" | "http" => false,
        "wss" | "https" if cfg!(feature = "tls") => true,
        "wss" | "https" => return Err(E::TlsNotSupported),
        "" => return Err(E::MissingScheme),
        other => return Err(E::UnsupportedScheme(other.to_owned())),
    };
    let default_port = if tls { 443 } else { 80 };

    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if path.contains('?') {
        return Err(E::QueryNotAllowed);
    }
    if path.contains('#') {
        return Err(E::FragmentNotAllowed);
    }
    if authority.contains('@') {
        return Err(E::UserInfoNotAllowed);
    }

    let (host, port) = split_host_port(authority)?;
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 => n,
            _ => return Err(E::InvalidPort(p.to_owned())),
        },
    };

    let prefix = path.trim_end_matches('/');
    if !prefix.is_empty() && PathAndQuery::from_str(prefix).is_err() {
        return Err(E::InvalidPath(prefix.to_owned()));
    }

    let bracketed = host.contains(':');
    let authority = match (bracketed, port == default_port) {
        (false, true) => host.to_owned(),
        (false, false) => format!("{host}:{port}"),
        (true, true) => format!("[{host}]"),
        (true, false) => format!("[{host}]:{port}"),
    };
    let host_header =
        HeaderValue::from_str(&authority).map_err(|_| E::InvalidHost(host.to_owned()))?;
    Ok(Upstream {
        host: host.to_owned(),
        port,
        tls,
        authority,
        host_header,
        prefix: prefix.to_owned(),
    })
}

/// Splits `host[:port]` / `[v6][:port]`, validating the host.
fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), ParseUpstreamErrorKind> {
    use ParseUpstreamErrorKind as E;

    if authority.is_empty() {
        return Err(E::MissingHost);
    }
    if let Some(inner) = authority.strip_prefix('[') {
        let (v6, after) = inner
            .split_once(']')
            .ok_or_else(|| E::InvalidHost(authority.to_owned()))?;
        if v6.parse::<Ipv6Addr>().is_err() {
            return Err(E::InvalidHost(authority.to_owned()));
        }
        return match after {
            "" => Ok((v6, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((v6, Some(port))),
                None => Err(E::InvalidHost(authority.to_owned())),
            },
        };
    }
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err(E::MissingHost);
    }
    let valid = host
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if !valid {
        return Err(E::InvalidHost(host.to_owned()));
    }
    Ok((host, port))
}

/// An upstream URL that could not be parsed; the message names the URL and the problem.
///
/// ```
/// use axum_ws_proxy::upstream::{ParseUpstreamErrorKind, UpstreamPool};
///
/// let err = "ws://10.0.0.1:3000?token=x".parse::<UpstreamPool>().unwrap_err();
/// assert_eq!(err.url(), "ws://10.0.0.1:3000?token=x");
/// assert_eq!(err.kind(), &ParseUpstreamErrorKind::UnknownOption("token=x".into()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParseUpstreamError {
    url: String,
    kind: ParseUpstreamErrorKind,
}

impl ParseUpstreamError {
    pub(crate) fn new(url: &str, kind: ParseUpstreamErrorKind) -> Self {
        Self {
            url: url.to_owned(),
            kind,
        }
    }

    /// What was wrong with the URL.
    pub fn kind(&self) -> &ParseUpstreamErrorKind {
        &self.kind
    }

    /// The URL as it was given.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl fmt::Display for ParseUpstreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid upstream URL {:?}: {}", self.url, self.kind)
    }
}

impl std::error::Error for ParseUpstreamError {}

/// The problem found in an upstream URL.
///
/// ```
/// use axum_ws_proxy::upstream::{ParseUpstreamErrorKind, Upstream};
///
/// let kind = |url: &str| url.parse::<Upstream>().unwrap_err().kind().clone();
/// assert_eq!(kind("localhost:3000"), ParseUpstreamErrorKind::MissingScheme);
/// assert_eq!(kind("ws://10.0.0.1:99999"), ParseUpstreamErrorKind::InvalidPort("99999".into()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ParseUpstreamErrorKind {
    /// No `scheme://` at the start (e.g. `ws//x`, `localhost:3000`).
    MissingScheme,
    /// A scheme other than `ws` or `http`.
    UnsupportedScheme(String),
    /// `wss://` or `https://` in a build without the `tls` feature.
    TlsNotSupported,
    /// Nothing between `://` and the path.
    MissingHost,
    /// The host is neither a DNS name, an IPv4 address nor a bracketed IPv6 address.
    InvalidHost(String),
    /// The port is not a number from 1 to 65535.
    InvalidPort(String),
    /// The path prefix has characters a request target cannot carry.
    InvalidPath(String),
    /// `user:password@` is not supported in an upstream URL.
    UserInfoNotAllowed,
    /// A `?query`: the client's query is forwarded, the upstream URL cannot add one.
    QueryNotAllowed,
    /// A `#fragment` has no meaning for a proxy target.
    FragmentNotAllowed,
    /// A pool member's `?weight=` is not a number from 1 to 1000.
    InvalidWeight(String),
    /// A pool member's query has something other than `weight=N`.
    UnknownOption(String),
    /// The same member appears twice in a pool.
    Duplicate,
}

impl fmt::Display for ParseUpstreamErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MissingScheme => {
                f.write_str("missing \"://\" after the scheme (expected ws://host:port[/prefix])")
            }
            Self::UnsupportedScheme(s) => {
                write!(
                    f,
                    "unsupported scheme {s:?} (use ws://, wss://, http:// or https://)"
                )
            }
            Self::TlsNotSupported => f.write_str(
                "wss:// and https:// need the crate's `tls` feature (this build has no TLS)",
            ),
            Self::MissingHost => f.write_str("missing host"),
            Self::InvalidHost(h) => write!(f, "invalid host {h:?}"),
            Self::InvalidPort(p) => write!(f, "invalid port {p:?} (expected 1-65535)"),
            Self::InvalidPath(p) => write!(f, "invalid path prefix {p:?}"),
            Self::UserInfoNotAllowed => f.write_str("user info (user@host) is not supported"),
            Self::QueryNotAllowed => {
                f.write_str("a query is not allowed (the client's query is forwarded)")
            }
            Self::FragmentNotAllowed => f.write_str("a #fragment is not allowed"),
            Self::InvalidWeight(w) => write!(f, "invalid weight {w:?} (expected 1-1000)"),
            Self::UnknownOption(o) => {
                write!(f, "unknown option {o:?} (only ?weight=N is supported)")
            }
            Self::Duplicate => f.write_str("listed more than once in the pool"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(url: &str) -> ParseUpstreamErrorKind {
        url.parse::<Upstream>().unwrap_err().kind
    }

    #[test]
    fn parses_forms() {
        let up: Upstream = "ws://example.com".parse().unwrap();
        assert_eq!(
            (up.host(), up.port(), up.authority()),
            ("example.com", 80, "example.com")
        );
        let up: Upstream = "http://10.0.0.1:8080/api/".parse().unwrap();
        assert_eq!(up.authority(), "10.0.0.1:8080");
        assert_eq!(up.path_prefix(), "/api");
        assert_eq!(up.to_string(), "ws://10.0.0.1:8080/api");
        let up: Upstream = "WS://[::1]:3000".parse().unwrap();
        assert_eq!((up.host(), up.authority()), ("::1", "[::1]:3000"));
    }

    #[test]
    fn names_each_problem() {
        use ParseUpstreamErrorKind as E;
        assert_eq!(kind("ws//x"), E::MissingScheme);
        assert_eq!(kind("ftp://x"), E::UnsupportedScheme("ftp".into()));
        #[cfg(feature = "tls")]
        {
            let wss: Upstream = "wss://x".parse().unwrap();
            assert_eq!(
                (wss.is_tls(), wss.port(), wss.authority()),
                (true, 443, "x")
            );
            assert_eq!(wss.to_string(), "wss://x");
        }
        #[cfg(not(feature = "tls"))]
        assert_eq!(kind("wss://x"), E::TlsNotSupported);
        assert_eq!(kind("ws://"), E::MissingHost);
        assert_eq!(kind("ws://:80"), E::MissingHost);
        assert_eq!(kind("ws://h:0"), E::InvalidPort("0".into()));
        assert_eq!(kind("ws://h:99999"), E::InvalidPort("99999".into()));
        assert_eq!(kind("ws://h:"), E::InvalidPort("".into()));
        assert_eq!(kind("ws://a b"), E::InvalidHost("a b".into()));
        assert_eq!(kind("ws://[zz]:1"), E::InvalidHost("[zz]:1".into()));
        assert_eq!(kind("ws://u@h"), E::UserInfoNotAllowed);
        assert_eq!(kind("ws://h/?q"), E::QueryNotAllowed);
        assert_eq!(kind("ws://h/#f"), E::FragmentNotAllowed);
    }

    #[test]
    fn request_target_joins_prefix_and_client_path() {
        let up: Upstream = "ws://h/rooms/".parse().unwrap();
        let pq = PathAndQuery::from_static("/a%20b/c?x=1&y=%2F");
        assert_eq!(
            up.request_target(Some(&pq)).concat(),
            "/rooms/a%20b/c?x=1&y=%2F"
        );
        let bare: Upstream = "ws://h".parse().unwrap();
        assert_eq!(
            bare.request_target(Some(&pq)).concat(),
            "/a%20b/c?x=1&y=%2F"
        );
        assert_eq!(bare.request_target(None).concat(), "/");
    }
}
