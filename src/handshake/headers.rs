//! Header rewriting in both directions: what is forwarded, what is dropped, what is set.
//!
//! Hop-by-hop headers describe one connection, not the message, so they never cross the proxy:
//! `Connection`, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Transfer-Encoding`,
//! `Upgrade`, `Proxy-Authorization`, `Proxy-Authenticate`, and every header named in
//! `Connection`. The WebSocket handshake headers are per leg too: the proxy sends its own
//! `Sec-WebSocket-Key`/`Version` upstream and its own `Sec-WebSocket-Accept` to the client.

use std::net::IpAddr;

use http::header::{
    AsHeaderName, HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST,
    PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_EXTENSIONS,
    SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE,
};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

/// Compared name by name against the constants (a const array would be built and dropped at
/// every use, per header checked).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == CONNECTION
        || *name == UPGRADE
        || *name == KEEP_ALIVE
        || *name == PROXY_CONNECTION
        || *name == TE
        || *name == TRAILER
        || *name == TRANSFER_ENCODING
        || *name == PROXY_AUTHORIZATION
        || *name == PROXY_AUTHENTICATE
}

/// Whether any `name` header holds `token` in its comma-separated list (case-insensitive).
pub(crate) fn has_token(headers: &HeaderMap, name: impl AsHeaderName, token: &str) -> bool {
    let token = token.as_bytes();
    headers.get_all(name).iter().any(|value| {
        // The usual value is the token alone (`Upgrade`, `websocket`).
        value.as_bytes().eq_ignore_ascii_case(token)
            || list_items(value).any(|t| t.eq_ignore_ascii_case(token))
    })
}

/// The items of a comma-separated header value, trimmed, on the bytes: a value with bytes
/// other than visible ASCII and tabs is no list (as `HeaderValue::to_str` has it) and has
/// none. On bytes because the `str` way (validation, pattern search, Unicode trimming) cost
/// ~450 instructions per token check, four of them per handshake (callgrind).
pub(crate) fn list_items(value: &HeaderValue) -> impl DoubleEndedIterator<Item = &[u8]> {
    let bytes = value.as_bytes();
    let is_list = bytes
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    bytes
        .split(|&b| b == b',')
        .filter(move |_| is_list)
        .map(<[u8]>::trim_ascii)
}

/// Removes the hop-by-hop headers (those the `Connection` header names included) and those
/// `also` picks. The fixed names are found in one pass over the headers present instead of a
/// hashed removal per name that might be there: most are not, and those removals were a tenth
/// of a handshake's instructions (callgrind).
fn remove_where(headers: &mut HeaderMap, also: impl Fn(&HeaderName) -> bool) {
    // Names listed in `Connection` are removed by name: a client may list thousands, and a
    // check of every header against every listed name would cost their product.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(list_items)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        // `Upgrade`, `keep-alive`: removed below anyway (and no Vec is allocated for them).
        .filter(|name| !is_hop_by_hop(name))
        .collect();
    for name in named {
        headers.remove(name);
    }
    let doomed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| is_hop_by_hop(name) || also(name))
        .cloned()
        .collect();
    for name in doomed {
        headers.remove(name);
    }
}

/// What the proxy adds about the client when forwarding.
pub(crate) struct Forwarded {
    /// `Host` for the upstream request, when known before a member is chosen.
    pub(crate) host: Option<HeaderValue>,
    /// The client's own `Host`, sent as `X-Forwarded-Host`.
    pub(crate) client_host: Option<HeaderValue>,
    /// The TCP peer, appended to `X-Forwarded-For`.
    pub(crate) client_ip: Option<IpAddr>,
    /// The peer is a trusted proxy: its `X-Forwarded-*` headers are kept.
    pub(crate) trusted: bool,
    /// `X-Forwarded-Proto` when the peer is not trusted to say: `http` or `https`.
    pub(crate) proto: &'static str,
    /// `Sec-WebSocket-Key` for the upstream leg (the client's, or one made for an HTTP/2 client).
    pub(crate) key: HeaderValue,
    /// The client's `Sec-WebSocket-Extensions` goes upstream as it is (tunnel mode, or frame
    /// mode when all of it is permessage-deflate offers the proxy can bridge).
    pub(crate) keep_extensions: bool,
}

/// Turns the client's upgrade request headers into the upstream's.
///
/// End-to-end headers (`Origin`, `Cookie`, `Authorization`, `Sec-WebSocket-Protocol`, custom
/// ones) pass unchanged; `Sec-WebSocket-Extensions` only as `keep_extensions` says (the caller
/// puts back the part of it that frame mode can bridge).
pub(crate) fn upstream_request(mut headers: HeaderMap, fwd: Forwarded) -> HeaderMap {
    // Per leg, and (unless the client is a trusted proxy) what a client says about itself.
    let dropped = |name: &HeaderName| {
        *name == HOST
            || *name == CONTENT_LENGTH
            || *name == SEC_WEBSOCKET_KEY
            || *name == SEC_WEBSOCKET_VERSION
            || *name == SEC_WEBSOCKET_ACCEPT
            || (!fwd.keep_extensions && *name == SEC_WEBSOCKET_EXTENSIONS)
            || (!fwd.trusted
                && (*name == X_FORWARDED_FOR
                    || *name == X_FORWARDED_PROTO
                    || *name == X_FORWARDED_HOST
                    || *name == X_REAL_IP
                    || *name == FORWARDED))
    };
    remove_where(&mut headers, dropped);
    // The inserts below at most: one growth of the table, not one per insert.
    headers.reserve(8);
    if let Some(host) = fwd.host {
        headers.insert(HOST, host);
    }
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(SEC_WEBSOCKET_KEY, fwd.key);
    headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));

    if let Some(ip) = fwd.client_ip {
        append_forwarded_for(&mut headers, ip);
    }
    if !headers.contains_key(X_FORWARDED_PROTO) {
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
    }
    if !headers.contains_key(X_FORWARDED_HOST) {
        if let Some(host) = fwd.client_host {
            headers.insert(X_FORWARDED_HOST, host);
        }
    }
    headers
}

/// Appends `ip` to the client's `X-Forwarded-For` chain (several headers folded into one).
fn append_forwarded_for(headers: &mut HeaderMap, ip: IpAddr) {
    // Room for the chain a proxy or two in front leave and an IPv6 address: one allocation,
    // where growing from empty took two or three.
    let prior: usize = headers
        .get_all(&X_FORWARDED_FOR)
        .iter()
        .map(|v| v.len() + 2)
        .sum();
    let mut chain = String::with_capacity(prior + 39);
    for prior in headers.get_all(&X_FORWARDED_FOR) {
        if let Ok(s) = prior.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                chain.push_str(s);
                chain.push_str(", ");
            }
        }
    }
    push_ip(&mut chain, ip);
    // From the String itself: no copy.
    if let Ok(value) = HeaderValue::try_from(chain) {
        headers.insert(X_FORWARDED_FOR, value);
    }
}

/// Writes `ip` as `Display` does; IPv4 without the formatting machinery (one per handshake,
/// and `core::fmt` costs about a thousand instructions for four octets).
fn push_ip(out: &mut String, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                if octet >= 100 {
                    out.push(char::from(b'0' + octet / 100));
                }
                if octet >= 10 {
                    out.push(char::from(b'0' + octet / 10 % 10));
                }
                out.push(char::from(b'0' + octet % 10));
            }
        }
        IpAddr::V6(v6) => {
            use std::fmt::Write;
            let _ = write!(out, "{v6}");
        }
    }
}

/// The size of `headers` as they are sent (`name: value\r\n` each): what the upstream request's
/// buffer is sized for, and (`serve`) what bounds a client's head, which hyper bounds only while
/// it is incomplete.
pub(crate) fn fields_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum()
}

/// The upstream's 101 headers that go on to the client: end-to-end ones only (e.g.
/// `Set-Cookie`), without hop-by-hop and `Sec-WebSocket-*` headers, which are per leg.
pub(crate) fn switching_response(mut headers: HeaderMap) -> HeaderMap {
    remove_where(&mut headers, |name| {
        name == CONTENT_LENGTH || name.as_str().starts_with("sec-websocket-")
    });
    headers
}

/// The headers of a non-101 upstream answer relayed to the client: everything end-to-end
/// (`WWW-Authenticate`, `Retry-After`, `Set-Cookie`, ...). `Content-Length` is recomputed.
pub(crate) fn relayed_response(mut headers: HeaderMap) -> HeaderMap {
    remove_where(&mut headers, |name| name == CONTENT_LENGTH);
    headers
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn tokens_are_case_insensitive_lists() {
        let h = map(&[("connection", "keep-alive, Upgrade")]);
        assert!(has_token(&h, CONNECTION, "upgrade"));
        assert!(!has_token(&h, CONNECTION, "close"));
        let h = map(&[("connection", "keep-alive"), ("connection", "UPGRADE")]);
        assert!(has_token(&h, CONNECTION, "upgrade"));
        let h = map(&[("connection", "\tkeep-alive ,\t upgrade\t")]);
        assert!(has_token(&h, CONNECTION, "upgrade"));
        // Whole tokens only, and no list in a value with opaque bytes.
        let h = map(&[("connection", "upgrades, x-upgrade, up grade, ,")]);
        assert!(!has_token(&h, CONNECTION, "upgrade"));
        let mut h = HeaderMap::new();
        let opaque = HeaderValue::from_bytes(b"upgrade, caf\xc3\xa9").unwrap();
        h.insert(CONNECTION, opaque);
        assert!(!has_token(&h, CONNECTION, "upgrade"));
    }

    #[test]
    fn strips_named_and_listed_hop_by_hop() {
        let mut h = map(&[
            ("connection", "Upgrade, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "trailers"),
            ("cookie", "a=b"),
        ]);
        remove_where(&mut h, |_| false);
        assert_eq!(h.len(), 1);
        assert_eq!(h["cookie"], "a=b");
    }

    #[test]
    fn addresses_are_written_as_display_writes_them() {
        let v4 = (0..=255u8).map(|o| IpAddr::from([o, o / 2, 255 - o, 7]));
        let v6 = ["::1", "2001:db8::8a2e:370:7334", "::ffff:10.0.0.1"].map(|a| a.parse().unwrap());
        for ip in v4.chain(v6) {
            let mut out = String::new();
            push_ip(&mut out, ip);
            assert_eq!(out, ip.to_string());
        }
    }

    #[test]
    fn forwarded_for_is_appended() {
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        append_forwarded_for(&mut h, "::1".parse().unwrap());
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, ::1");
    }
}
