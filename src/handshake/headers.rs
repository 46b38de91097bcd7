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
    SEC_WEBSOCKET_EXTENSIONS, SEC_WEBSOCKET_KEY, SEC_WEBSOCKET_VERSION, UPGRADE,
};

pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(crate) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

fn is_hop_by_hop(name: &HeaderName) -> bool {
    class(name) == Class::HopByHop
}

/// What the forwarding rules make of a header, by its name.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Describes one connection: never forwarded.
    HopByHop,
    /// Per leg (`Host`, the handshake's key and version, a body's length): the proxy sets its own.
    PerLeg,
    /// `Sec-WebSocket-Extensions`: as the mode says.
    Extensions,
    /// What a client says about itself (`X-Forwarded-*`, `X-Real-IP`, `Forwarded`): kept from
    /// trusted proxies only.
    ClientSays,
    Other,
}

/// One string match per header (names are lower case): a comparison with each special name in
/// turn cost about 20 comparisons per header forwarded (callgrind).
fn class(name: &HeaderName) -> Class {
    match name.as_str() {
        "connection"
        | "upgrade"
        | "keep-alive"
        | "proxy-connection"
        | "te"
        | "trailer"
        | "transfer-encoding"
        | "proxy-authorization"
        | "proxy-authenticate" => Class::HopByHop,
        "host"
        | "content-length"
        | "sec-websocket-key"
        | "sec-websocket-version"
        | "sec-websocket-accept" => Class::PerLeg,
        "sec-websocket-extensions" => Class::Extensions,
        "x-forwarded-for" | "x-forwarded-proto" | "x-forwarded-host" | "x-real-ip"
        | "forwarded" => Class::ClientSays,
        _ => Class::Other,
    }
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
    // On the stack: an upstream's 101 has a few to drop (`Upgrade`, `Connection`,
    // `Sec-WebSocket-Accept`, ...).
    let doomed: smallvec::SmallVec<[HeaderName; 8]> = headers
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
    /// Frame mode's offer in place of the client's, when some of it was dropped.
    pub(crate) extensions: Option<HeaderValue>,
    /// The header that carries the session's id, and the id: it replaces any field of that
    /// name.
    pub(crate) session_id: Option<(HeaderName, u64)>,
}

/// The upstream request's header fields: the client's headers and the rules that turn them
/// into the upstream's, applied as the head is written (no second map, no removals), or, once
/// a routing hook has edited them, a map.
///
/// End-to-end headers (`Origin`, `Cookie`, `Authorization`, `Sec-WebSocket-Protocol`, custom
/// ones) pass unchanged; `Sec-WebSocket-Extensions` only as [`Forwarded::keep_extensions`]
/// says (or frame mode's offer in its place).
// Not boxed: one per handshake, made once and never moved far; a box is an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum UpstreamHeaders {
    Rewritten { client: HeaderMap, fwd: Forwarded },
    Edited(HeaderMap),
}

/// One field's value as the rules produce it.
enum Value<'a> {
    Header(&'a HeaderValue),
    /// The session id.
    Id(u64),
    /// `X-Forwarded-For`: the client's chain (when kept) with `ip` appended.
    ForwardedFor(Option<http::header::GetAll<'a, HeaderValue>>, IpAddr),
}

impl UpstreamHeaders {
    pub(crate) fn new(client: HeaderMap, fwd: Forwarded) -> Self {
        Self::Rewritten { client, fwd }
    }

    /// The fields as a map, for a routing hook to edit (made once, on the first call).
    pub(crate) fn edit(&mut self) -> &mut HeaderMap {
        if let Self::Rewritten { client, fwd } = self {
            let mut map = HeaderMap::with_capacity(client.len() + 8);
            each(client, fwd, |name, value| {
                let value = match value {
                    Value::Header(v) => v.clone(),
                    Value::Id(id) => HeaderValue::from(id),
                    Value::ForwardedFor(prior, ip) => {
                        let mut chain = Vec::new();
                        forwarded_for(&mut chain, prior, ip);
                        match HeaderValue::try_from(chain) {
                            Ok(v) => v,
                            Err(_) => return,
                        }
                    }
                };
                map.append(name.clone(), value);
            });
            *self = Self::Edited(map);
        }
        match self {
            Self::Edited(map) => map,
            Self::Rewritten { .. } => unreachable!("made a map just above"),
        }
    }

    /// Writes every field as `name: value\r\n`, `host` (when given) in place of any `Host`.
    pub(crate) fn write(&self, host: Option<&HeaderValue>, head: &mut Vec<u8>) {
        fn start(head: &mut Vec<u8>, name: &HeaderName) {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
        }
        fn field(head: &mut Vec<u8>, name: &HeaderName, value: &[u8]) {
            start(head, name);
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n");
        }
        if let Some(host) = host {
            field(head, &HOST, host.as_bytes());
        }
        match self {
            Self::Edited(map) => {
                for (name, value) in map {
                    if host.is_none() || name != HOST {
                        field(head, name, value.as_bytes());
                    }
                }
            }
            Self::Rewritten { client, fwd } => each(client, fwd, |name, value| {
                if host.is_some() && name == HOST {
                    return;
                }
                match value {
                    Value::Header(v) => field(head, name, v.as_bytes()),
                    Value::Id(id) => field(head, name, itoa(id, &mut [0; 20])),
                    Value::ForwardedFor(prior, ip) => {
                        start(head, name);
                        forwarded_for(head, prior, ip);
                        head.extend_from_slice(b"\r\n");
                    }
                }
            }),
        }
    }

    /// About the size of what [`write`](Self::write) writes: what its buffer is sized for.
    pub(crate) fn size(&self) -> usize {
        match self {
            Self::Edited(map) => fields_size(map),
            // The fields the proxy adds: the handshake's, `X-Forwarded-*` (an IPv6 address),
            // a session id.
            Self::Rewritten { client, fwd } => {
                fields_size(client)
                    + 256
                    + fwd.host.as_ref().map_or(0, HeaderValue::len)
                    + fwd.extensions.as_ref().map_or(0, HeaderValue::len)
            }
        }
    }
}

/// The rules: every field the upstream gets, in the order it is written.
fn each(client: &HeaderMap, fwd: &Forwarded, mut emit: impl FnMut(&HeaderName, Value<'_>)) {
    let named = connection_named(client);
    let replaced = |name: &HeaderName| fwd.session_id.as_ref().is_some_and(|(n, _)| n == name);
    let kept = |name: &HeaderName| {
        let by_class = match class(name) {
            Class::HopByHop | Class::PerLeg => false,
            Class::Extensions => fwd.keep_extensions,
            Class::ClientSays => fwd.trusted,
            Class::Other => true,
        };
        by_class && !replaced(name) && !named.has(name)
    };
    let mut set = |name: &HeaderName, value: Value<'_>| {
        if !replaced(name) {
            emit(name, value);
        }
    };
    if let Some(host) = &fwd.host {
        set(&HOST, Value::Header(host));
    }
    // The client's chain goes out whole, the peer appended, where the proxy writes it.
    let appended = fwd.client_ip.is_some();
    for (name, value) in client {
        if kept(name) && !(appended && *name == X_FORWARDED_FOR) {
            set(name, Value::Header(value));
        }
    }
    set(&UPGRADE, Value::Header(&WEBSOCKET));
    set(&CONNECTION, Value::Header(&UPGRADE_TOKEN));
    set(&SEC_WEBSOCKET_KEY, Value::Header(&fwd.key));
    set(&SEC_WEBSOCKET_VERSION, Value::Header(&VERSION_13));
    if let Some(ip) = fwd.client_ip {
        let prior = kept(&X_FORWARDED_FOR).then(|| client.get_all(&X_FORWARDED_FOR));
        set(&X_FORWARDED_FOR, Value::ForwardedFor(prior, ip));
    }
    let has = |name: &HeaderName| client.contains_key(name) && kept(name);
    let proto = HeaderValue::from_static(fwd.proto);
    if !has(&X_FORWARDED_PROTO) {
        set(&X_FORWARDED_PROTO, Value::Header(&proto));
    }
    if !has(&X_FORWARDED_HOST) {
        if let Some(host) = &fwd.client_host {
            set(&X_FORWARDED_HOST, Value::Header(host));
        }
    }
    if let Some(offer) = &fwd.extensions {
        set(&SEC_WEBSOCKET_EXTENSIONS, Value::Header(offer));
    }
    if let Some((name, id)) = &fwd.session_id {
        emit(name, Value::Id(*id));
    }
}

const WEBSOCKET: HeaderValue = HeaderValue::from_static("websocket");
const UPGRADE_TOKEN: HeaderValue = HeaderValue::from_static("Upgrade");
const VERSION_13: HeaderValue = HeaderValue::from_static("13");

/// The names a message's `Connection` header lists (besides the hop-by-hop ones, dropped
/// anyway): none, usually, and then nothing is allocated.
struct Named(Vec<HeaderName>);

fn connection_named(headers: &HeaderMap) -> Named {
    let mut named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(list_items)
        .filter_map(|t| HeaderName::from_bytes(t).ok())
        .filter(|name| !is_hop_by_hop(name))
        .collect();
    // A client may list thousands: looked up by halving, not compared with each field.
    named.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
    Named(named)
}

impl Named {
    fn has(&self, name: &HeaderName) -> bool {
        !self.0.is_empty()
            && self
                .0
                .binary_search_by(|n| n.as_str().cmp(name.as_str()))
                .is_ok()
    }
}

/// `X-Forwarded-For`: the `prior` chain (several fields folded into one, each trimmed, empty
/// ones and any that are not visible ASCII left out) with `ip` appended.
fn forwarded_for(
    out: &mut Vec<u8>,
    prior: Option<http::header::GetAll<'_, HeaderValue>>,
    ip: IpAddr,
) {
    for prior in prior.into_iter().flatten() {
        if let Ok(s) = prior.to_str() {
            let s = s.trim();
            if !s.is_empty() {
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b", ");
            }
        }
    }
    push_ip(out, ip);
}

/// `n` in decimal, in `buf`.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[at..];
        }
    }
}

/// Writes `ip` as `Display` does; IPv4 without the formatting machinery (one per handshake,
/// and `core::fmt` costs about a thousand instructions for four octets).
fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                if octet >= 100 {
                    out.push(b'0' + octet / 100);
                }
                if octet >= 10 {
                    out.push(b'0' + octet / 10 % 10);
                }
                out.push(b'0' + octet % 10);
            }
        }
        IpAddr::V6(v6) => {
            use std::io::Write;
            // Writing to a `Vec` cannot fail.
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
    use http::header::{
        PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, SEC_WEBSOCKET_ACCEPT, TE, TRAILER,
        TRANSFER_ENCODING,
    };

    const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
    const FORWARDED: HeaderName = HeaderName::from_static("forwarded");

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
            let mut out = Vec::new();
            push_ip(&mut out, ip);
            assert_eq!(String::from_utf8(out).unwrap(), ip.to_string());
        }
    }

    #[test]
    fn forwarded_for_is_appended() {
        let h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", " 2.2.2.2 "),
            ("x-forwarded-for", ""),
        ]);
        let mut out = Vec::new();
        forwarded_for(
            &mut out,
            Some(h.get_all(X_FORWARDED_FOR)),
            "::1".parse().unwrap(),
        );
        assert_eq!(out, b"1.1.1.1, 2.2.2.2, ::1");
    }

    #[test]
    fn ids_are_written_in_decimal() {
        for n in [0, 7, 10, 99, 12345, u64::MAX] {
            assert_eq!(itoa(n, &mut [0; 20]), n.to_string().as_bytes());
        }
    }

    /// The rules as they were written before the head was written straight from them: a map
    /// rewritten by removals and inserts. The writer must produce the same fields.
    fn reference(mut headers: HeaderMap, fwd: &Forwarded) -> HeaderMap {
        let hop_by_hop = [
            CONNECTION,
            UPGRADE,
            HeaderName::from_static("keep-alive"),
            HeaderName::from_static("proxy-connection"),
            TE,
            TRAILER,
            TRANSFER_ENCODING,
            PROXY_AUTHORIZATION,
            PROXY_AUTHENTICATE,
        ];
        let dropped = |name: &HeaderName| {
            hop_by_hop.contains(name)
                || [
                    HOST,
                    CONTENT_LENGTH,
                    SEC_WEBSOCKET_KEY,
                    SEC_WEBSOCKET_VERSION,
                    SEC_WEBSOCKET_ACCEPT,
                ]
                .contains(name)
                || (!fwd.keep_extensions && *name == SEC_WEBSOCKET_EXTENSIONS)
                || (!fwd.trusted
                    && [
                        X_FORWARDED_FOR,
                        X_FORWARDED_PROTO,
                        X_FORWARDED_HOST,
                        X_REAL_IP,
                        FORWARDED,
                    ]
                    .contains(name))
        };
        remove_where(&mut headers, dropped);
        if let Some(host) = &fwd.host {
            headers.insert(HOST, host.clone());
        }
        headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
        headers.insert(SEC_WEBSOCKET_KEY, fwd.key.clone());
        headers.insert(SEC_WEBSOCKET_VERSION, HeaderValue::from_static("13"));
        if let Some(ip) = fwd.client_ip {
            let mut chain = Vec::new();
            forwarded_for(&mut chain, Some(headers.get_all(X_FORWARDED_FOR)), ip);
            headers.insert(X_FORWARDED_FOR, HeaderValue::try_from(chain).unwrap());
        }
        if !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(fwd.proto));
        }
        if !headers.contains_key(X_FORWARDED_HOST) {
            if let Some(host) = &fwd.client_host {
                headers.insert(X_FORWARDED_HOST, host.clone());
            }
        }
        if let Some(offer) = &fwd.extensions {
            headers.insert(SEC_WEBSOCKET_EXTENSIONS, offer.clone());
        }
        if let Some((name, id)) = &fwd.session_id {
            headers.insert(name.clone(), HeaderValue::from(*id));
        }
        headers
    }

    /// Each name's values in order, names sorted: what a receiver can tell apart.
    fn fields(map: &HeaderMap) -> Vec<(String, Vec<Vec<u8>>)> {
        let mut names: Vec<String> = map.keys().map(|n| n.to_string()).collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let values = map
                    .get_all(&n)
                    .iter()
                    .map(|v| v.as_bytes().to_vec())
                    .collect();
                (n, values)
            })
            .collect()
    }

    fn written(headers: &UpstreamHeaders, host: Option<&HeaderValue>) -> HeaderMap {
        let mut head = Vec::new();
        headers.write(host, &mut head);
        let text = String::from_utf8(head).unwrap();
        let mut map = HeaderMap::new();
        for line in text.split_terminator("\r\n") {
            let (name, value) = line.split_once(": ").unwrap();
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    #[test]
    fn the_written_fields_are_the_rewritten_map_s() {
        let clients = [
            map(&[
                ("host", "a.example"),
                ("origin", "https://a.example"),
                ("cookie", "c=1"),
            ]),
            map(&[
                ("host", "a.example"),
                ("connection", "Upgrade, X-Secret, x-forwarded-proto"),
                ("upgrade", "websocket"),
                ("x-secret", "1"),
                ("x-secret", "2"),
                ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
                ("sec-websocket-version", "13"),
                ("sec-websocket-extensions", "permessage-deflate"),
                ("sec-websocket-protocol", "chat"),
                ("sec-websocket-protocol", "superchat"),
                ("x-forwarded-for", "1.1.1.1"),
                ("x-forwarded-for", "2.2.2.2, 3.3.3.3"),
                ("x-forwarded-proto", "https"),
                ("x-forwarded-host", "front.example"),
                ("x-real-ip", "9.9.9.9"),
                ("forwarded", "for=9.9.9.9"),
                ("content-length", "0"),
                ("keep-alive", "timeout=5"),
                ("te", "trailers"),
                ("proxy-authorization", "Basic x"),
                ("proxy-authenticate", "Basic"),
                ("proxy-connection", "keep-alive"),
                ("trailer", "x-t"),
                ("transfer-encoding", "chunked"),
                ("sec-websocket-accept", "x"),
                ("x-request-id", "client-made"),
            ]),
            map(&[
                ("connection", "x-forwarded-for"),
                ("x-forwarded-for", "1.1.1.1"),
            ]),
        ];
        let id = HeaderName::from_static("x-request-id");
        for client in &clients {
            for trusted in [false, true] {
                for (keep_extensions, extensions) in [
                    (true, None),
                    (false, None),
                    (false, Some("permessage-deflate")),
                ] {
                    for (host, ip, session_id) in [
                        (Some("a.example"), Some("10.0.0.1"), None),
                        (None, None, Some((id.clone(), 42))),
                        (Some("a.example"), Some("::1"), Some((id.clone(), 7))),
                    ] {
                        let fwd = || Forwarded {
                            host: host.map(HeaderValue::from_static),
                            client_host: host.map(HeaderValue::from_static),
                            client_ip: ip.map(|ip| ip.parse().unwrap()),
                            trusted,
                            proto: "http",
                            key: HeaderValue::from_static("eHh4eHh4eHh4eHh4eHh4eA=="),
                            keep_extensions,
                            extensions: extensions.map(HeaderValue::from_static),
                            session_id: session_id.clone(),
                        };
                        let expected = reference(client.clone(), &fwd());
                        let mut rules = UpstreamHeaders::new(client.clone(), fwd());
                        let case = format!("{client:?} trusted {trusted} {extensions:?} {ip:?}");
                        assert_eq!(fields(&written(&rules, None)), fields(&expected), "{case}");
                        // A member's host in place of the client's.
                        let member = HeaderValue::from_static("up:3000");
                        let mut with_member = expected.clone();
                        with_member.insert(HOST, member.clone());
                        let got = written(&rules, Some(&member));
                        assert_eq!(fields(&got), fields(&with_member), "{case}");
                        // The map a routing hook edits holds the same fields.
                        assert_eq!(fields(rules.edit()), fields(&expected), "{case}");
                        assert_eq!(fields(&written(&rules, None)), fields(&expected), "{case}");
                    }
                }
            }
        }
    }
}
