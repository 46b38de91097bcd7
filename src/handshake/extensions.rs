//! permessage-deflate negotiation (RFC 7692 section 7) for frame mode, one leg at a time: the
//! client's offers are read, the valid ones forwarded upstream as they were written, the
//! upstream's answer checked against them, and the client answered: with the upstream's answer
//! when it accepted (both legs then agree, and compressed frames can pass as they came), or with
//! the proxy's own when it compresses at the edge (`Deflate::Always`).

use http::header::{HeaderMap, HeaderValue, SEC_WEBSOCKET_EXTENSIONS};

use crate::session::deflate::{Compression, Params};

const NAME: &str = "permessage-deflate";

/// One `permessage-deflate` offer from the client, valid by RFC 7692's rules.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Offer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    /// Present (`Some`), with a value or not: the client can compress with a smaller window.
    client_max_window_bits: Option<Option<u8>>,
}

/// The client's valid `permessage-deflate` offers, in its order of preference, and how they
/// go upstream.
#[derive(Clone, Debug, Default)]
pub(crate) struct Offers {
    /// Inline for what clients send (a browser offers one): no allocation per handshake.
    list: smallvec::SmallVec<[Offer; 2]>,
    upstream: Upstream,
}

/// The `Sec-WebSocket-Extensions` the upstream gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// None: nothing valid was offered.
    #[default]
    Nothing,
    /// The client's header as it is: every element in it is a valid offer (what browsers send).
    AsSent,
    /// The valid offers, as the client wrote them, without the elements that were dropped.
    Rewritten(HeaderValue),
}

impl Offers {
    /// What goes upstream of the client's header.
    pub(crate) fn upstream(&self) -> &Upstream {
        &self.upstream
    }
}

impl std::ops::Deref for Offers {
    type Target = [Offer];

    fn deref(&self) -> &[Offer] {
        &self.list
    }
}

/// A parameter: its name and value (a token or a quoted string's content).
type Param<'a> = (&'a str, Option<&'a str>);

/// One element of an extension list: its name, its first four parameters (no valid
/// permessage-deflate element has more), and all of it as written.
struct Element<'a> {
    name: &'a str,
    params: [Param<'a>; 4],
    count: usize,
    /// It has more than four parameters: well-formed, but no valid permessage-deflate element.
    more: bool,
    text: &'a str,
}

impl<'a> Element<'a> {
    fn params(&self) -> &[Param<'a>] {
        &self.params[..self.count]
    }
}

/// Reads one `Sec-WebSocket-Extensions` value (RFC 6455 section 9.1: comma-separated
/// extensions, each a token with `;`-separated parameters `token[=token|quoted-string]`) in one
/// pass without allocating, calling `each` for every element; `None` if the value is not a
/// list of that shape. Quoted strings with escapes are refused: no value here needs one.
fn parse<'a>(value: &'a str, mut each: impl FnMut(Element<'a>)) -> Option<()> {
    let b = value.as_bytes();
    let ows = |i: &mut usize| {
        while *i < b.len() && matches!(b[*i], b' ' | b'\t') {
            *i += 1;
        }
    };
    let token = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && is_tchar(b[*i]) {
            *i += 1;
        }
        (*i > start).then(|| &value[start..*i])
    };
    let mut i = 0;
    loop {
        ows(&mut i);
        match b.get(i) {
            None => return Some(()),
            Some(b',') => {
                i += 1;
                continue;
            }
            Some(_) => {}
        }
        let start = i;
        let mut e = Element {
            name: token(&mut i)?,
            params: [("", None); 4],
            count: 0,
            more: false,
            text: "",
        };
        let mut end = i;
        loop {
            ows(&mut i);
            if b.get(i) != Some(&b';') {
                break;
            }
            i += 1;
            ows(&mut i);
            let key = token(&mut i)?;
            let mut after = i;
            ows(&mut after);
            let mut param = (key, None);
            if b.get(after) == Some(&b'=') {
                i = after + 1;
                ows(&mut i);
                param.1 = Some(if b.get(i) == Some(&b'"') {
                    let close = i + 1 + b[i + 1..].iter().position(|&c| c == b'"')?;
                    let inner = &value[i + 1..close];
                    if inner.contains('\\') {
                        return None;
                    }
                    i = close + 1;
                    inner
                } else {
                    token(&mut i)?
                });
            }
            end = i;
            match e.params.get_mut(e.count) {
                Some(slot) => {
                    *slot = param;
                    e.count += 1;
                }
                None => e.more = true,
            }
        }
        e.text = &value[start..end];
        each(e);
        match b.get(i) {
            None => return Some(()),
            Some(b',') => i += 1,
            Some(_) => return None,
        }
    }
}

/// A token character (RFC 9110 section 5.6.2).
fn is_tchar(c: u8) -> bool {
    matches!(c, b'!' | b'#'..=b'\'' | b'*' | b'+' | b'-' | b'.' | b'0'..=b'9' | b'A'..=b'Z'
        | b'^'..=b'z' | b'|' | b'~')
}

/// Window bits: 8 to 15, digits only (RFC 7692 section 7.1.2).
fn window_bits(value: &str) -> Option<u8> {
    value
        .bytes()
        .all(|b| b.is_ascii_digit())
        .then(|| value.parse().ok())
        .flatten()
        .filter(|bits| (8..=15).contains(bits))
}

/// Calls `each` with every valid `permessage-deflate` offer in the client's header and its
/// text; `None` if the header is not a well-formed list, otherwise whether every element was a
/// valid offer (so that the header can go on as it is).
fn scan<'a>(headers: &'a HeaderMap, mut each: impl FnMut(Offer, &'a str)) -> Option<bool> {
    let mut every = true;
    for value in headers.get_all(SEC_WEBSOCKET_EXTENSIONS) {
        let Ok(value) = value.to_str() else {
            every = false;
            continue;
        };
        parse(value, |element| {
            match element
                .name
                .eq_ignore_ascii_case(NAME)
                .then(|| offer(&element))
            {
                Some(Some(offer)) => each(offer, element.text),
                _ => every = false,
            }
        })?;
    }
    Some(every)
}

/// The client's valid `permessage-deflate` offers, in its order of preference. An offer with
/// an unknown parameter, a repeated one, or a bad value is declined (skipped), as section 7
/// asks; other extensions are not for frame mode and are dropped; a header that is not a
/// well-formed list offers nothing.
pub(crate) fn offers(headers: &HeaderMap) -> Offers {
    let mut list = smallvec::SmallVec::new();
    let Some(every) = scan(headers, |offer, _| list.push(offer)) else {
        return Offers::default();
    };
    let upstream = if list.is_empty() {
        Upstream::Nothing
    } else if every {
        Upstream::AsSent
    } else {
        let mut joined = String::new();
        scan(headers, |_, text| {
            if !joined.is_empty() {
                joined.push_str(", ");
            }
            joined.push_str(text);
        });
        HeaderValue::from_str(&joined).map_or(Upstream::Nothing, Upstream::Rewritten)
    };
    Offers { list, upstream }
}

fn offer(e: &Element<'_>) -> Option<Offer> {
    let mut offer = Offer {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: None,
        client_max_window_bits: None,
    };
    if e.more {
        return None;
    }
    for &(key, value) in e.params() {
        let is = |name: &str| key.eq_ignore_ascii_case(name);
        match value {
            None if is("server_no_context_takeover") && !offer.server_no_context_takeover => {
                offer.server_no_context_takeover = true;
            }
            None if is("client_no_context_takeover") && !offer.client_no_context_takeover => {
                offer.client_no_context_takeover = true;
            }
            Some(v) if is("server_max_window_bits") && offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(window_bits(v)?);
            }
            v if is("client_max_window_bits") && offer.client_max_window_bits.is_none() => {
                offer.client_max_window_bits = Some(match v {
                    Some(v) => Some(window_bits(v)?),
                    None => None,
                });
            }
            _ => return None,
        }
    }
    Some(offer)
}

/// Why an upstream's extension answer is not valid for what was offered.
pub(crate) type Refused = &'static str;

/// The upstream's extension answer, checked against `offers` as a client checks its server's
/// (RFC 7692 section 7): `None` when it accepted none; its parameters and the value as it was
/// written when it accepted one.
pub(crate) fn accepted(
    headers: &HeaderMap,
    offers: &[Offer],
) -> Result<Option<(Params, HeaderValue)>, Refused> {
    let mut values = headers.get_all(SEC_WEBSOCKET_EXTENSIONS).iter().peekable();
    if values.peek().is_none() {
        return Ok(None);
    }
    if offers.is_empty() {
        return Err("an extension was accepted but none was offered");
    }
    let malformed = "Sec-WebSocket-Extensions is malformed";
    let (mut answer, mut several) = (None, false);
    for value in values {
        let value = value
            .to_str()
            .map_err(|_| "Sec-WebSocket-Extensions is not text")?;
        parse(value, |element| {
            several |= answer.replace(element).is_some()
        })
        .ok_or(malformed)?;
    }
    if several {
        return Err("more than one extension was accepted");
    }
    let Some(answer) = answer else {
        return Ok(None);
    };
    if !answer.name.eq_ignore_ascii_case(NAME) {
        return Err("an extension was accepted that was not offered");
    }
    let params = answer_params(&answer)?;
    if !offers.iter().any(|o| answers(o, &params)) {
        return Err("permessage-deflate was accepted with parameters no offer allows");
    }
    let value = HeaderValue::from_str(answer.text).map_err(|_| malformed)?;
    Ok(Some((params.agreed(), value)))
}

/// A response's parameters, as given (window bits `None` when absent).
#[derive(Clone, Copy, Debug, Default)]
struct Answer {
    server_no_context_takeover: bool,
    client_no_context_takeover: bool,
    server_max_window_bits: Option<u8>,
    client_max_window_bits: Option<u8>,
}

impl Answer {
    fn agreed(self) -> Params {
        Params {
            server_no_context_takeover: self.server_no_context_takeover,
            client_no_context_takeover: self.client_no_context_takeover,
            server_max_window_bits: self.server_max_window_bits.unwrap_or(15),
            client_max_window_bits: self.client_max_window_bits.unwrap_or(15),
        }
    }
}

fn answer_params(e: &Element<'_>) -> Result<Answer, Refused> {
    let mut a = Answer::default();
    let repeated = "a permessage-deflate parameter is repeated";
    if e.more {
        return Err("permessage-deflate was accepted with more parameters than it has");
    }
    for &(key, value) in e.params() {
        let bits = |v: Option<&str>| {
            v.and_then(window_bits)
                .ok_or("a window size in permessage-deflate is not 8 to 15")
        };
        let is = |name: &str| key.eq_ignore_ascii_case(name);
        if is("server_no_context_takeover") && value.is_none() {
            if std::mem::replace(&mut a.server_no_context_takeover, true) {
                return Err(repeated);
            }
        } else if is("client_no_context_takeover") && value.is_none() {
            if std::mem::replace(&mut a.client_no_context_takeover, true) {
                return Err(repeated);
            }
        } else if is("server_max_window_bits") {
            if a.server_max_window_bits.replace(bits(value)?).is_some() {
                return Err(repeated);
            }
        } else if is("client_max_window_bits") {
            if a.client_max_window_bits.replace(bits(value)?).is_some() {
                return Err(repeated);
            }
        } else {
            return Err("permessage-deflate was accepted with an unknown parameter");
        }
    }
    Ok(a)
}

/// Whether `answer` accepts `offer` (RFC 7692 section 7.1): a server may add
/// `server_no_context_takeover`, `client_no_context_takeover` and `server_max_window_bits`
/// unasked, must honour a `server_no_context_takeover` or `server_max_window_bits` that was
/// asked for, and may send `client_max_window_bits` only where the client offered it, no larger.
fn answers(offer: &Offer, answer: &Answer) -> bool {
    let server_window = match (offer.server_max_window_bits, answer.server_max_window_bits) {
        (Some(asked), Some(given)) => given <= asked,
        (Some(_), None) => false,
        (None, _) => true,
    };
    let client_window = match (offer.client_max_window_bits, answer.client_max_window_bits) {
        (None, Some(_)) => false,
        (Some(Some(limit)), Some(given)) => given <= limit,
        _ => true,
    };
    server_window
        && client_window
        && (!offer.server_no_context_takeover || answer.server_no_context_takeover)
}

/// The proxy's own answer to the client, for compression at the edge: the first offer it can
/// honour, with `client_no_context_takeover` (the proxy then keeps no window for what the
/// client sends), the proxy's window announced (`server_max_window_bits`: the client needs no
/// larger one to inflate) and no larger than the client allows, and
/// `server_no_context_takeover` when the client asked for it or the proxy compresses without
/// context. An offer that limits the proxy to a 256-byte window is declined: zlib cannot
/// compress with one.
pub(crate) fn edge_answer(offers: &[Offer], proxy: &Compression) -> Option<(Params, HeaderValue)> {
    let offer = offers
        .iter()
        .find(|o| o.server_max_window_bits.is_none_or(|b| b >= 9))?;
    let mut text = String::from("permessage-deflate; client_no_context_takeover");
    let server_no_context_takeover = offer.server_no_context_takeover || !proxy.context_takeover;
    if server_no_context_takeover {
        text.push_str("; server_no_context_takeover");
    }
    let server_bits = offer
        .server_max_window_bits
        .unwrap_or(15)
        .min(proxy.window_bits);
    // An offer that names the parameter is accepted only by an answer that repeats it.
    if offer.server_max_window_bits.is_some() || server_bits < 15 {
        text.push_str(&format!("; server_max_window_bits={server_bits}"));
    }
    let params = Params {
        server_no_context_takeover,
        client_no_context_takeover: true,
        server_max_window_bits: server_bits,
        client_max_window_bits: 15,
    };
    Some((params, HeaderValue::from_str(&text).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(SEC_WEBSOCKET_EXTENSIONS, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn offers_are_read_as_rfc_7692_and_6455_write_them() {
        // What browsers send, several offers, quoted values, other extensions dropped.
        let o = offers(&headers(&[
            "permessage-deflate; client_max_window_bits",
            "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=\"10\"; \
             client_no_context_takeover,permessage-deflate",
        ]));
        assert_eq!(o.len(), 3);
        assert_eq!(o[0].client_max_window_bits, Some(None));
        assert_eq!(o[1].server_max_window_bits, Some(10));
        assert!(o[1].client_no_context_takeover);
        // Declined: unknown, repeated, out of range or valueless parameters.
        for bad in [
            "permessage-deflate; foo",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=+9",
            "permessage-deflate; server_no_context_takeover=1",
        ] {
            assert!(offers(&headers(&[bad])).is_empty(), "{bad}");
        }
        assert!(offers(&headers(&["permessage-deflate; a=\"unterminated"])).is_empty());
        // The dropped extension is left out of what goes upstream; the offers go as written.
        assert_eq!(
            *o.upstream(),
            Upstream::Rewritten(HeaderValue::from_static(
                "permessage-deflate; client_max_window_bits, permessage-deflate; \
                 server_max_window_bits=\"10\"; client_no_context_takeover, permessage-deflate"
            ))
        );
        // Every element an offer (what browsers send): the header goes on as it is.
        let browser = offers(&headers(&[
            "permessage-deflate; client_max_window_bits",
            "permessage-deflate",
        ]));
        assert_eq!((browser.len(), browser.upstream()), (2, &Upstream::AsSent));
        // One declined offer is enough to rewrite; a malformed list offers nothing.
        let declined = offers(&headers(&["permessage-deflate; foo, permessage-deflate"]));
        assert_eq!(
            *declined.upstream(),
            Upstream::Rewritten(HeaderValue::from_static("permessage-deflate"))
        );
        for nothing in ["x-webkit-deflate-frame", "permessage-deflate; a=\"b", "p d"] {
            assert_eq!(*offers(&headers(&[nothing])).upstream(), Upstream::Nothing);
        }
        // Whitespace around `;` and `=`, quoted commas, elements with many parameters.
        let spaced = offers(&headers(&[
            "permessage-deflate ;\tclient_max_window_bits = 10",
        ]));
        assert_eq!(spaced[0].client_max_window_bits, Some(Some(10)));
        assert_eq!(*spaced.upstream(), Upstream::AsSent);
        let mixed = offers(&headers(&[
            "x-foo; a; b; c; d; e=\"1,2\", permessage-deflate; server_no_context_takeover; \
             client_no_context_takeover; server_max_window_bits=10; client_max_window_bits; x, \
             permessage-deflate",
        ]));
        assert_eq!(
            *mixed.upstream(),
            Upstream::Rewritten(HeaderValue::from_static("permessage-deflate"))
        );
        let split = offers(&headers(&["permessage-deflate;", "permessage-deflate"]));
        assert_eq!(*split.upstream(), Upstream::Nothing, "an empty parameter");
    }

    #[test]
    fn answers_are_checked_against_the_offers() {
        let browser = offers(&headers(&["permessage-deflate; client_max_window_bits"]));
        let ok = |answer: &str| accepted(&headers(&[answer]), &browser);
        // What Python's websockets answers a browser: unasked server window, client window.
        let (params, value) =
            ok("permessage-deflate; server_max_window_bits=12; client_max_window_bits=12")
                .unwrap()
                .unwrap();
        assert_eq!(
            (params.server_max_window_bits, params.client_max_window_bits),
            (12, 12)
        );
        assert_eq!(
            value,
            "permessage-deflate; server_max_window_bits=12; client_max_window_bits=12"
        );
        let (params, _) =
            ok("permessage-deflate; server_no_context_takeover; client_no_context_takeover")
                .unwrap()
                .unwrap();
        assert!(params.server_no_context_takeover && params.client_no_context_takeover);
        assert_eq!(
            ok("permessage-deflate")
                .unwrap()
                .unwrap()
                .0
                .server_max_window_bits,
            15
        );
        assert!(accepted(&HeaderMap::new(), &browser).unwrap().is_none());
        for bad in [
            "x-webkit-deflate-frame",
            "permessage-deflate, permessage-deflate",
            "permessage-deflate; foo",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=20",
            "permessage-deflate; client_max_window_bits=9; client_max_window_bits=9",
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
             server_max_window_bits=10; client_max_window_bits=10; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits=\"1\\0\"",
            "permessage-deflate; client_max_window_bits=10 10",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        // A client window only where the client offered one, no larger than it allowed; a
        // server window no larger than asked; a server context takeover refused when asked.
        let plain = offers(&headers(&["permessage-deflate"]));
        assert!(accepted(
            &headers(&["permessage-deflate; client_max_window_bits=10"]),
            &plain
        )
        .is_err());
        let limited = offers(&headers(&[
            "permessage-deflate; client_max_window_bits=10; server_max_window_bits=11; \
             server_no_context_takeover",
        ]));
        let check = |a: &str| accepted(&headers(&[a]), &limited).is_ok();
        assert!(check(
            "permessage-deflate; server_max_window_bits=11; server_no_context_takeover"
        ));
        assert!(!check(
            "permessage-deflate; server_max_window_bits=12; server_no_context_takeover"
        ));
        assert!(!check("permessage-deflate; server_no_context_takeover"));
        assert!(!check("permessage-deflate; server_max_window_bits=9"));
        assert!(!check(
            "permessage-deflate; server_max_window_bits=9; server_no_context_takeover; \
             client_max_window_bits=11"
        ));
        // Nothing offered, something accepted.
        assert!(accepted(&headers(&["permessage-deflate"]), &[]).is_err());
    }

    #[test]
    fn the_edge_answer_honours_the_client_and_never_a_256_byte_window() {
        let window = |bits| Compression::default().window_bits(bits);
        let o = offers(&headers(&[
            "permessage-deflate; server_max_window_bits=8, permessage-deflate; \
             server_max_window_bits=12; server_no_context_takeover; client_max_window_bits",
        ]));
        let (params, value) = edge_answer(&o, &window(10)).unwrap();
        assert_eq!(
            value,
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover; \
             server_max_window_bits=10"
        );
        assert_eq!(params.server_max_window_bits, 10);
        assert!(params.client_no_context_takeover && params.server_no_context_takeover);
        // The client's limit is below the proxy's window: the answer repeats the limit.
        let (params, value) = edge_answer(&o, &window(15)).unwrap();
        assert!(value
            .to_str()
            .unwrap()
            .ends_with("; server_max_window_bits=12"));
        assert_eq!(params.server_max_window_bits, 12);
        let only_8 = offers(&headers(&["permessage-deflate; server_max_window_bits=8"]));
        assert!(edge_answer(&only_8, &window(15)).is_none());
        // What browsers offer: the proxy's window announced, context kept.
        let browser = offers(&headers(&["permessage-deflate; client_max_window_bits"]));
        let (params, value) = edge_answer(&browser, &window(11)).unwrap();
        assert_eq!(
            value,
            "permessage-deflate; client_no_context_takeover; server_max_window_bits=11"
        );
        assert_eq!(params.server_max_window_bits, 11);
        assert!(!params.server_no_context_takeover);
        // A full window is not announced; a proxy without context says so.
        let (params, value) = edge_answer(&browser, &window(15).context_takeover(false)).unwrap();
        assert_eq!(
            value,
            "permessage-deflate; client_no_context_takeover; server_no_context_takeover"
        );
        assert_eq!(params.server_max_window_bits, 15);
        assert!(params.server_no_context_takeover);
    }
}
