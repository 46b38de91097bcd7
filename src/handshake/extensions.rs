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
    /// As the client wrote it, to be forwarded as it is.
    text: String,
}

/// One element of an extension list: its name and parameters, as written.
struct Element<'a> {
    name: &'a str,
    params: Vec<(&'a str, Option<&'a str>)>,
    text: &'a str,
}

/// The elements of `Sec-WebSocket-Extensions` values (RFC 6455 section 9.1): comma-separated
/// extensions with `;`-separated parameters, a value a token or a quoted string. `None` if a
/// value is not a list of that shape.
fn elements<'a>(values: &[&'a str]) -> Option<Vec<Element<'a>>> {
    let mut out = Vec::new();
    for value in values {
        for text in split_outside_quotes(value, ',') {
            let text = text.trim();
            if text.is_empty() {
                continue;
            }
            let mut parts = split_outside_quotes(text, ';').into_iter().map(str::trim);
            let name = parts.next().filter(|n| is_token(n))?;
            let mut params = Vec::new();
            for part in parts {
                let (key, value) = match part.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(unquote(v.trim())?)),
                    None => (part, None),
                };
                if !is_token(key) {
                    return None;
                }
                params.push((key, value));
            }
            out.push(Element { name, params, text });
        }
    }
    Some(out)
}

fn split_outside_quotes(s: &str, sep: char) -> Vec<&str> {
    let (mut parts, mut start, mut quoted, mut escaped) = (Vec::new(), 0, false, false);
    for (i, c) in s.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            c if c == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A token, or a quoted string's content (escapes are not needed by any value here: refused).
fn unquote(v: &str) -> Option<&str> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if !inner.contains(['"', '\\']) => Some(inner),
        Some(_) => None,
        None => is_token(v).then_some(v),
    }
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

/// The client's valid `permessage-deflate` offers, in its order of preference. An offer with
/// an unknown parameter, a repeated one, or a bad value is declined (skipped), as section 7
/// asks; other extensions are not for frame mode and are dropped.
pub(crate) fn offers(headers: &HeaderMap) -> Vec<Offer> {
    let values: Vec<&str> = headers
        .get_all(SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let Some(elements) = elements(&values) else {
        return Vec::new();
    };
    elements
        .into_iter()
        .filter(|e| e.name.eq_ignore_ascii_case(NAME))
        .filter_map(|e| offer(&e))
        .collect()
}

fn offer(e: &Element<'_>) -> Option<Offer> {
    let mut offer = Offer {
        server_no_context_takeover: false,
        client_no_context_takeover: false,
        server_max_window_bits: None,
        client_max_window_bits: None,
        text: e.text.to_owned(),
    };
    for &(key, value) in &e.params {
        match (key.to_ascii_lowercase().as_str(), value) {
            ("server_no_context_takeover", None) if !offer.server_no_context_takeover => {
                offer.server_no_context_takeover = true;
            }
            ("client_no_context_takeover", None) if !offer.client_no_context_takeover => {
                offer.client_no_context_takeover = true;
            }
            ("server_max_window_bits", Some(v)) if offer.server_max_window_bits.is_none() => {
                offer.server_max_window_bits = Some(window_bits(v)?);
            }
            ("client_max_window_bits", v) if offer.client_max_window_bits.is_none() => {
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

/// The `Sec-WebSocket-Extensions` to send upstream: the offers as the client wrote them.
pub(crate) fn upstream_offer(offers: &[Offer]) -> Option<HeaderValue> {
    if offers.is_empty() {
        return None;
    }
    let joined: Vec<&str> = offers.iter().map(|o| o.text.as_str()).collect();
    HeaderValue::from_str(&joined.join(", ")).ok()
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
    let values: Vec<&HeaderValue> = headers.get_all(SEC_WEBSOCKET_EXTENSIONS).iter().collect();
    if values.is_empty() {
        return Ok(None);
    }
    if offers.is_empty() {
        return Err("an extension was accepted but none was offered");
    }
    let texts: Vec<&str> = values
        .iter()
        .map(|v| {
            v.to_str()
                .map_err(|_| "Sec-WebSocket-Extensions is not text")
        })
        .collect::<Result<_, _>>()?;
    let elements = elements(&texts).ok_or("Sec-WebSocket-Extensions is malformed")?;
    let [answer] = elements.as_slice() else {
        return match elements.len() {
            0 => Ok(None),
            _ => Err("more than one extension was accepted"),
        };
    };
    if !answer.name.eq_ignore_ascii_case(NAME) {
        return Err("an extension was accepted that was not offered");
    }
    let params = answer_params(answer)?;
    if !offers.iter().any(|o| answers(o, &params)) {
        return Err("permessage-deflate was accepted with parameters no offer allows");
    }
    let value =
        HeaderValue::from_str(answer.text).map_err(|_| "Sec-WebSocket-Extensions is malformed")?;
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
    for &(key, value) in &e.params {
        let bits = |v: Option<&str>| {
            v.and_then(window_bits)
                .ok_or("a window size in permessage-deflate is not 8 to 15")
        };
        match key.to_ascii_lowercase().as_str() {
            "server_no_context_takeover" if value.is_none() => {
                if std::mem::replace(&mut a.server_no_context_takeover, true) {
                    return Err(repeated);
                }
            }
            "client_no_context_takeover" if value.is_none() => {
                if std::mem::replace(&mut a.client_no_context_takeover, true) {
                    return Err(repeated);
                }
            }
            "server_max_window_bits" => {
                if a.server_max_window_bits.replace(bits(value)?).is_some() {
                    return Err(repeated);
                }
            }
            "client_max_window_bits" => {
                if a.client_max_window_bits.replace(bits(value)?).is_some() {
                    return Err(repeated);
                }
            }
            _ => return Err("permessage-deflate was accepted with an unknown parameter"),
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

    fn texts(offers: &[Offer]) -> Vec<&str> {
        offers.iter().map(|o| o.text.as_str()).collect()
    }

    #[test]
    fn offers_are_read_as_rfc_7692_and_6455_write_them() {
        // What browsers send, several offers, quoted values, other extensions dropped.
        let o = offers(&headers(&[
            "permessage-deflate; client_max_window_bits",
            "x-webkit-deflate-frame, permessage-deflate; server_max_window_bits=\"10\"; \
             client_no_context_takeover,permessage-deflate",
        ]));
        assert_eq!(
            texts(&o),
            [
                "permessage-deflate; client_max_window_bits",
                "permessage-deflate; server_max_window_bits=\"10\"; client_no_context_takeover",
                "permessage-deflate"
            ]
        );
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
        assert_eq!(
            upstream_offer(&o).unwrap(),
            "permessage-deflate; client_max_window_bits, permessage-deflate; \
             server_max_window_bits=\"10\"; client_no_context_takeover, permessage-deflate"
        );
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
