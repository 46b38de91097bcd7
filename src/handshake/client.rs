//! Step 3: the upgrade request to the upstream and its answer, over the connection just dialled.
//!
//! The request head is written in one buffer straight from the headers the proxy keeps (no
//! request value, no HTTP client task), and the answer head is parsed with `httparse`, as
//! tungstenite's own client does. After a `101` the connection is the upstream leg, with any
//! bytes read past the head passed on first; any other answer's body is read, bounded, to be
//! relayed.

use std::io;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{Response, StatusCode};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::error::ProxyError;
use crate::handshake::headers::UpstreamHeaders;
use crate::transport::Transport;

/// Largest upstream answer head accepted.
pub(crate) const MAX_ANSWER_HEAD: usize = 64 << 10;
/// Most header fields in an answer head (hyper's default too).
const MAX_ANSWER_FIELDS: usize = 100;
/// Most informational (`1xx`) answers skipped before the real one: an upstream that sends
/// them without end would otherwise keep the proxy parsing until the dial deadline.
const MAX_INFORMATIONAL: usize = 8;
/// Longest chunk-size line of a chunked refusal body.
const MAX_CHUNK_LINE: usize = 4 << 10;

/// The upgrade request's head: `GET <target> HTTP/1.1` (the target given in pieces), `host`
/// (if given) in place of the client's `Host`, then the fields `headers` makes. Header values
/// cannot hold CR or LF (`HeaderValue` refuses them), and the target is a validated path, so
/// nothing here can split the request.
pub(crate) fn request_head(
    target: &[&str],
    host: Option<&HeaderValue>,
    headers: &UpstreamHeaders,
) -> Vec<u8> {
    let target_len: usize = target.iter().map(|piece| piece.len()).sum();
    let host_len = host.map_or(0, HeaderValue::len);
    let mut head = Vec::with_capacity(target_len + host_len + headers.size() + 32);
    head.extend_from_slice(b"GET ");
    for piece in target {
        head.extend_from_slice(piece.as_bytes());
    }
    head.extend_from_slice(b" HTTP/1.1\r\n");
    headers.write(host, &mut head);
    head.extend_from_slice(b"\r\n");
    head
}

/// Sends `head` and reads the answer's head (up to [`MAX_INFORMATIONAL`] informational answers
/// other than `101` are skipped, as they precede the real one).
pub(crate) async fn exchange(
    mut conn: Transport,
    head: &[u8],
) -> Result<(Response<()>, Transport), ProxyError> {
    conn.write_all(head).await.map_err(ProxyError::Handshake)?;
    conn.flush().await.map_err(ProxyError::Handshake)?;
    // A 101 is a few hundred bytes: a buffer glibc hands out from its per-thread cache (up to
    // 1 KiB); a 4 KiB one cost ~1 k instructions to allocate and free (callgrind). It grows
    // for longer answers.
    let mut buf = BytesMut::with_capacity(1 << 10);
    let mut informational = 0;
    // Bytes of `buf` already looked at: the head is parsed again only once a line has ended
    // since (a malformed line is still refused as soon as it is whole), not on every read of
    // a head trickled in small pieces, which made the parsing quadratic in the head's size.
    let mut searched = 0;
    loop {
        let parsed = if buf[searched..].contains(&b'\n') {
            parse_head(&mut buf)?
        } else {
            None
        };
        searched = buf.len();
        if let Some(answer) = parsed {
            // `buf` now holds what followed the head.
            searched = 0;
            if answer.status().is_informational()
                && answer.status() != StatusCode::SWITCHING_PROTOCOLS
            {
                informational += 1;
                if informational > MAX_INFORMATIONAL {
                    return Err(ProxyError::Handshake(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("more than {MAX_INFORMATIONAL} informational answers"),
                    )));
                }
                continue;
            }
            // Copied out: a slice would keep the whole read buffer for the session's life.
            conn.put_back(Bytes::copy_from_slice(&buf));
            return Ok((answer, conn));
        }
        if buf.len() >= MAX_ANSWER_HEAD {
            return Err(ProxyError::AnswerTooLarge(MAX_ANSWER_HEAD));
        }
        if buf.len() == buf.capacity() {
            buf.reserve(4 << 10);
        }
        if conn
            .read_buf(&mut buf)
            .await
            .map_err(ProxyError::Handshake)?
            == 0
        {
            return Err(ProxyError::Handshake(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the upstream closed the connection before its answer was complete",
            )));
        }
    }
}

/// The answer head at the start of `buf`, once it is all there, taken off `buf`. Its values
/// share one buffer with the head's bytes (one allocation, not one per field); the session
/// keeps none of them (what it keeps of the subprotocol is a copy).
fn parse_head(buf: &mut BytesMut) -> Result<Option<Response<()>>, ProxyError> {
    let malformed =
        |why: String| ProxyError::Handshake(io::Error::new(io::ErrorKind::InvalidData, why));
    let mut fields = [httparse::EMPTY_HEADER; MAX_ANSWER_FIELDS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(malformed(format!(
                "the answer has more than {MAX_ANSWER_FIELDS} header fields"
            )))
        }
        Err(e) => return Err(malformed(format!("the answer is not HTTP/1.1: {e}"))),
    };
    if len > MAX_ANSWER_HEAD {
        return Err(ProxyError::AnswerTooLarge(MAX_ANSWER_HEAD));
    }
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| malformed("the answer's status is not a valid code".into()))?;
    // Names now, values once the head is its own buffer: where each lies in it.
    let start = buf.as_ptr() as usize;
    let mut named = smallvec::SmallVec::<[(HeaderName, usize, usize); 16]>::new();
    for field in parsed.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes())
            .map_err(|_| malformed(format!("invalid header name {:?}", field.name)))?;
        let at = field.value.as_ptr() as usize - start;
        named.push((name, at, at + field.value.len()));
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(named.len());
    for (name, from, to) in named {
        let value = HeaderValue::from_maybe_shared(head.slice(from..to))
            .map_err(|_| malformed(format!("invalid value for {name}")))?;
        headers.append(name, value);
    }
    let mut answer = Response::new(());
    *answer.status_mut() = status;
    *answer.headers_mut() = headers;
    Ok(Some(answer))
}

/// How a refusal's body ends (RFC 9112 §6.3).
#[derive(Debug, PartialEq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn framing(answer: &Response<()>) -> Result<Framing, ProxyError> {
    let status = answer.status();
    if status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::None);
    }
    let headers = answer.headers();
    if let Some(last) = headers.get_all(TRANSFER_ENCODING).iter().next_back() {
        let chunked = crate::handshake::headers::list_items(last)
            .next_back()
            .is_some_and(|coding| coding.eq_ignore_ascii_case(b"chunked"));
        return Ok(if chunked {
            Framing::Chunked
        } else {
            Framing::UntilClose
        });
    }
    let mut lengths = headers
        .get_all(CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.to_str().ok().unwrap_or("x").split(','))
        .map(|v| v.trim().parse::<u64>());
    match lengths.next() {
        None => Ok(Framing::UntilClose),
        Some(Ok(n)) if lengths.all(|other| other.as_ref() == Ok(&n)) => Ok(Framing::Length(n)),
        Some(_) => Err(ProxyError::Handshake(io::Error::new(
            io::ErrorKind::InvalidData,
            "the answer's Content-Length is invalid",
        ))),
    }
}

/// A refusal's body, up to `limit` bytes, and whether it was cut there. Read through a buffer:
/// a chunked body's size lines are not read a byte per system call.
pub(crate) async fn read_body(
    conn: &mut Transport,
    answer: &Response<()>,
    limit: usize,
) -> Result<(Bytes, bool), ProxyError> {
    let mut body = BytesMut::new();
    let mut reader = BufReader::with_capacity(8 << 10, conn);
    let cut = match framing(answer)? {
        Framing::None => false,
        Framing::Length(n) => read_up_to(&mut reader, &mut body, n, limit, true).await?,
        Framing::UntilClose => read_up_to(&mut reader, &mut body, u64::MAX, limit, false).await?,
        Framing::Chunked => read_chunked(&mut reader, &mut body, limit).await?,
    };
    Ok((body.freeze(), cut))
}

fn broken(kind: io::ErrorKind, why: &'static str) -> ProxyError {
    ProxyError::Handshake(io::Error::new(kind, why))
}

/// Appends up to `n` more bytes to `body`, stopping at `limit`; returns whether it stopped
/// there with bytes left. The end of the stream ends the body unless `exact`.
async fn read_up_to<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    body: &mut BytesMut,
    n: u64,
    limit: usize,
    exact: bool,
) -> Result<bool, ProxyError> {
    let mut left = n;
    while left > 0 {
        let room = limit - body.len();
        if room == 0 {
            return Ok(true);
        }
        let available = reader.fill_buf().await.map_err(ProxyError::Handshake)?;
        if available.is_empty() {
            if exact {
                return Err(broken(
                    io::ErrorKind::UnexpectedEof,
                    "the upstream closed the connection in the middle of its answer's body",
                ));
            }
            return Ok(false);
        }
        let take = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(room)
            .min(available.len());
        body.extend_from_slice(&available[..take]);
        reader.consume(take);
        left -= take as u64;
    }
    Ok(false)
}

async fn read_chunked<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    body: &mut BytesMut,
    limit: usize,
) -> Result<bool, ProxyError> {
    loop {
        let line = read_line(reader).await?;
        let size = line.split(|&b| b == b';').next().unwrap_or_default();
        let size = std::str::from_utf8(size)
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
            .ok_or_else(|| {
                broken(
                    io::ErrorKind::InvalidData,
                    "the answer's body has an invalid chunk size",
                )
            })?;
        if size == 0 {
            // Trailers, if any, are not relayed; the connection is closed after this.
            return Ok(false);
        }
        if read_up_to(reader, body, size, limit, true).await? {
            return Ok(true);
        }
        if !read_line(reader).await?.is_empty() {
            return Err(broken(
                io::ErrorKind::InvalidData,
                "a chunk of the answer's body does not end where its size says",
            ));
        }
    }
}

/// One line, without its CRLF (or LF), of at most [`MAX_CHUNK_LINE`] bytes.
async fn read_line<R: AsyncBufRead + Unpin>(reader: &mut R) -> Result<Vec<u8>, ProxyError> {
    let mut line = Vec::new();
    let limit = (MAX_CHUNK_LINE + 2) as u64;
    (&mut *reader)
        .take(limit)
        .read_until(b'\n', &mut line)
        .await
        .map_err(ProxyError::Handshake)?;
    if line.pop() != Some(b'\n') {
        return Err(broken(
            io::ErrorKind::InvalidData,
            "a chunk-size line of the answer's body is too long or cut off",
        ));
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;

    fn answer(head: &str) -> Response<()> {
        parse_head(&mut BytesMut::from(head)).unwrap().unwrap()
    }

    #[test]
    fn the_request_head_puts_the_members_host_in_place_of_the_clients() {
        let mut headers = HeaderMap::new();
        headers.insert(HOST, HeaderValue::from_static("client.example"));
        headers.append("x-a", HeaderValue::from_static("1"));
        headers.append("x-a", HeaderValue::from_static("2"));
        let host = HeaderValue::from_static("up:3000");
        let headers = UpstreamHeaders::Edited(headers);
        let head = request_head(&["/p", "?q=1"], Some(&host), &headers);
        assert_eq!(
            String::from_utf8(head).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: up:3000\r\nx-a: 1\r\nx-a: 2\r\n\r\n"
        );
        let kept = request_head(&["/"], None, &headers);
        assert!(String::from_utf8(kept)
            .unwrap()
            .contains("host: client.example\r\n"));
    }

    #[test]
    fn a_partial_head_waits_and_a_complete_one_keeps_repeated_fields() {
        let head = "HTTP/1.1 403 Forbidden\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\r\nbody";
        assert!(parse_head(&mut BytesMut::from(&head[..20]))
            .unwrap()
            .is_none());
        let mut buf = BytesMut::from(head);
        let res = parse_head(&mut buf).unwrap().unwrap();
        assert_eq!(res.status(), StatusCode::FORBIDDEN);
        let cookies: Vec<_> = res.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(&buf[..], b"body");
    }

    #[test]
    fn refusal_bodies_end_as_rfc_9112_says() {
        assert_eq!(
            framing(&answer(
                "HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n"
            ))
            .unwrap(),
            Framing::None
        );
        assert_eq!(
            framing(&answer(
                "HTTP/1.1 403 x\r\ntransfer-encoding: gzip, chunked\r\ncontent-length: 5\r\n\r\n"
            ))
            .unwrap(),
            Framing::Chunked
        );
        assert_eq!(
            framing(&answer("HTTP/1.1 403 x\r\ntransfer-encoding: gzip\r\n\r\n")).unwrap(),
            Framing::UntilClose
        );
        assert_eq!(
            framing(&answer("HTTP/1.1 403 x\r\ncontent-length: 7, 7\r\n\r\n")).unwrap(),
            Framing::Length(7)
        );
        assert_eq!(
            framing(&answer("HTTP/1.1 403 x\r\n\r\n")).unwrap(),
            Framing::UntilClose
        );
        assert!(framing(&answer(
            "HTTP/1.1 403 x\r\ncontent-length: 7\r\ncontent-length: 8\r\n\r\n"
        ))
        .is_err());
        assert!(framing(&answer("HTTP/1.1 403 x\r\ncontent-length: -1\r\n\r\n")).is_err());
    }
}
