//! The server's own upgrade entry, an opt-in
//! ([`Serve::direct_upgrades`](crate::serve::Serve::direct_upgrades)): on a plain HTTP/1.1
//! connection whose first request is a WebSocket upgrade, the head is parsed
//! here, on the socket, and handed to the layer's handshake; hyper's connection and the app
//! never see it. Everything else goes to hyper with the bytes read so far, read again from
//! them: an HTTP/2 preface, any other request, and any head this entry does not take whole
//! (incomplete at its bound, unparsable, too many fields, a body announced, larger than the
//! server's head limit), so that hyper answers those exactly as it does without this entry.
//!
//! The request this entry builds is the one hyper would build from the same bytes (the same
//! parser, `httparse`, and the same conversions); the layer then applies the same checks to it
//! as to any other. `fuzz::direct_entry` compares the two on any input.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use axum::body::Body;
use bytes::{BufMut, Bytes, BytesMut};
use http::header::{CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::handshake::detect::{self, Upgrade};
use crate::handshake::headers;
use crate::transport::{ClientLeg, Transport};

/// Where [`Serve::direct_upgrades`](crate::serve::Serve::direct_upgrades) sends the upgrades it takes:
/// the handshake of a [`WsProxyLayer`](crate::WsProxyLayer) or a
/// [`ReloadableLayer`](crate::ReloadableLayer) (made with `From` from a reference to either).
#[derive(Clone)]
pub struct DirectUpgrades(pub(crate) Arc<dyn Entry>);

impl std::fmt::Debug for DirectUpgrades {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectUpgrades").finish_non_exhaustive()
    }
}

/// An upgrade's answer, on its way.
pub(crate) type Answering = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// The layer's handshake, as the entry calls it.
pub(crate) trait Entry: Send + Sync + 'static {
    /// Answers `req` (already found to be an upgrade of `kind`); the session gets the client's
    /// connection through `leg` once a `101` has been written.
    /// `peer` is the client's address (in the extensions only where hooks may read it).
    fn upgrade(
        &self,
        req: Request<()>,
        kind: Upgrade,
        leg: ClientLeg,
        peer: SocketAddr,
    ) -> Answering;
}

/// Fields a head this entry takes may have (a browser's upgrade has about 15); hyper takes
/// heads with more, up to its own limit of 100.
const MAX_FIELDS: usize = 32;

/// The HTTP/2 connection preface (h2c with prior knowledge).
pub(super) const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection opened with.
// Moved once and never kept: a box would cost an allocation per handshake.
#[allow(clippy::large_enum_variant)]
pub(crate) enum First {
    /// A WebSocket upgrade, whole, with the bytes read past its head (early frames).
    Upgrade {
        req: Request<()>,
        kind: Upgrade,
        /// Everything read: the head, then what followed it.
        read: Bytes,
        head: usize,
    },
    /// For hyper, with these bytes first; `h2`: they open with the HTTP/2 preface.
    Other { read: Bytes, h2: bool },
    /// The peer closed (or failed) before sending anything.
    Nothing,
}

/// Reads a connection's first bytes until they decide: a whole upgrade head, or anything
/// else. `buffer` bounds what is read (hyper's own read buffer: heads that do not fit are
/// hyper's to refuse); `max_head` is the server's head limit, as its handler measures it;
/// `first_byte` is set when the first bytes arrive.
pub(crate) async fn read_first(
    tcp: &mut TcpStream,
    buffer: usize,
    max_head: usize,
    first_byte: &mut tokio::time::Instant,
) -> io::Result<First> {
    // No buffer until the first bytes: a connection that sends nothing holds none (a flood
    // of 15 000 silent connections took 170 MB with one each).
    tcp.readable().await?;
    *first_byte = tokio::time::Instant::now();
    // A browser's upgrade head is under 2 KiB; early frames may follow it in the same read.
    let mut buf = BytesMut::with_capacity(4096.min(buffer));
    loop {
        let scanned = buf.len();
        // Never more than the bound, whatever the buffer's capacity grew to.
        let n = tcp
            .read_buf(&mut (&mut buf).limit(buffer - scanned))
            .await?;
        if n == 0 {
            return Ok(match buf.is_empty() {
                true => First::Nothing,
                false => First::Other {
                    read: buf.freeze(),
                    h2: false,
                },
            });
        }
        match decide(buf, scanned, buffer, max_head) {
            Decided::First(first) => return Ok(first),
            Decided::More(partial) => buf = partial,
        }
    }
}

/// What the bytes read so far decide: what the connection opened with, or read more.
#[allow(clippy::large_enum_variant)] // as `First`
pub(crate) enum Decided {
    First(First),
    More(BytesMut),
}

/// What the bytes read so far decide (`More`: not yet). `scanned`: bytes an earlier call saw
/// (only those after it are searched for the head's end, as hyper does: a head trickled in a
/// byte at a time is not parsed again from its start on every read).
pub(crate) fn decide(buf: BytesMut, scanned: usize, buffer: usize, max_head: usize) -> Decided {
    if buf.len() < PREFACE.len() && PREFACE.starts_with(&buf) {
        return Decided::More(buf);
    }
    if buf.len() < buffer && !buf.starts_with(PREFACE) && !ends_a_head(&buf, scanned) {
        return Decided::More(buf);
    }
    let read = buf.freeze();
    if read.starts_with(PREFACE) {
        return Decided::First(First::Other { read, h2: true });
    }
    // Uninitialised: a zeroed array would cost more than parsing a browser's head.
    let mut fields = [const { std::mem::MaybeUninit::uninit() }; MAX_FIELDS];
    let mut head = httparse::Request::new(&mut []);
    // hyper's parser configuration: the default.
    let parsed = httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut head,
        &read,
        &mut fields,
    );
    let taken = match parsed {
        Ok(httparse::Status::Complete(len)) => {
            upgrade_request(&read, &head, max_head).map(|r| (r, len))
        }
        Ok(httparse::Status::Partial) if read.len() < buffer => {
            // Nothing shares the bytes yet: back to a buffer to read more into, no copy.
            return match read.try_into_mut() {
                Ok(buf) => Decided::More(buf),
                Err(read) => Decided::More(BytesMut::from(&read[..])),
            };
        }
        // Incomplete at the bound, unparsable, or more fields than this entry takes.
        Ok(httparse::Status::Partial) | Err(_) => None,
    };
    match taken {
        Some(((req, kind), head)) => Decided::First(First::Upgrade {
            req,
            kind,
            read,
            head,
        }),
        None => Decided::First(First::Other { read, h2: false }),
    }
}

/// Whether the bytes from `scanned` on (with the three before, where an end may have begun)
/// hold the blank line that ends a head.
fn ends_a_head(buf: &[u8], scanned: usize) -> bool {
    // Most heads arrive whole, alone in their read: the end is the last bytes.
    if buf.ends_with(b"\r\n\r\n") {
        return true;
    }
    let from = scanned.saturating_sub(3);
    // Each line feed, then what precedes it: one comparison per byte otherwise.
    buf.iter()
        .enumerate()
        .skip(from + 1)
        .filter(|(_, b)| **b == b'\n')
        .any(|(at, _)| buf[at - 1] == b'\n' || (at >= 3 && &buf[at - 3..at] == b"\r\n\r"))
}

/// The request hyper would build from this head, if it is a WebSocket upgrade this entry
/// takes: HTTP/1.1, no body announced, within the head limit. `None` leaves it to hyper.
fn upgrade_request(
    read: &Bytes,
    head: &httparse::Request<'_, '_>,
    max_head: usize,
) -> Option<(Request<()>, Upgrade)> {
    let (Some(method), Some(target), Some(1)) = (head.method, head.path, head.version) else {
        return None;
    };
    let method = Method::from_bytes(method.as_bytes()).ok()?;
    let uri = Uri::from_maybe_shared(read.slice_ref(target.as_bytes())).ok()?;
    let mut headers = HeaderMap::with_capacity(head.headers.len());
    for field in head.headers.iter() {
        let name = HeaderName::from_bytes(field.name.as_bytes()).ok()?;
        let value = HeaderValue::from_maybe_shared(read.slice_ref(field.value)).ok()?;
        headers.append(name, value);
    }
    // A body's framing is hyper's to read (and the layer's to refuse): never taken here.
    if headers.contains_key(CONTENT_LENGTH) || headers.contains_key(TRANSFER_ENCODING) {
        return None;
    }
    let mut req = Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    *req.version_mut() = http::Version::HTTP_11;
    *req.headers_mut() = headers;
    let kind = detect::upgrade(&req)?;
    (head_size(&req) <= max_head).then_some((req, kind))
}

/// What became of a connection the entry read first.
#[allow(clippy::large_enum_variant)] // as `First`
pub(super) enum Served {
    /// The entry answered it (a 101 handed on, or the connection is gone).
    Done,
    /// For hyper: the connection with the bytes read first, whether they open with the
    /// HTTP/2 preface, and, for a refused upgrade, the answer to its first request.
    Hyper {
        io: Transport,
        h2: bool,
        answer: Option<Response<Body>>,
    },
}

/// Answers the upgrade the connection opened with, for `remote`: a 101 is written here and
/// the connection handed to the session (with the bytes read past the head); any other answer
/// is hyper's to write, so that its body and the connection's keep-alive are as always.
pub(super) async fn answer(
    entry: &DirectUpgrades,
    tcp: TcpStream,
    remote: SocketAddr,
    first: (Request<()>, Upgrade, Bytes, usize),
) -> Served {
    let (req, kind, read, head) = first;
    let (handed, leg) = tokio::sync::oneshot::channel();
    let upgrade = entry.0.upgrade(req, kind, ClientLeg::Handed(leg), remote);
    // A client that closes while the upstream is dialled ends the handshake, as hyper's
    // connection does (it notices the end of the stream mid-request).
    let res = if read.len() == head {
        tokio::pin!(upgrade);
        tokio::select! {
            res = &mut upgrade => res,
            gone = closed(&tcp) => match gone {
                true => return Served::Done,
                false => upgrade.await,
            },
        }
    } else {
        upgrade.await
    };
    if res.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Served::Hyper {
            io: Transport::Tcp { tcp, pre: read },
            h2: false,
            answer: Some(res),
        };
    }
    let mut tcp = tcp;
    // Dropped unsent if the write fails: the session then closes the upstream's leg.
    if tcp.write_all(&switching(res.headers())).await.is_ok() {
        let mut leg = Transport::tcp(tcp);
        leg.put_back(read.slice(head..));
        let _ = handed.send(leg);
    }
    Served::Done
}

/// Whether the peer closed (`true`) before sending anything more (`false`: bytes came).
async fn closed(tcp: &TcpStream) -> bool {
    let mut byte = [0u8; 1];
    !matches!(tcp.peek(&mut byte).await, Ok(n) if n > 0)
}

/// A 101's head, as hyper writes one (lower-case names), without `Date`.
fn switching(headers: &HeaderMap) -> Vec<u8> {
    const STATUS: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\n";
    let size = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum::<usize>();
    let mut head = Vec::with_capacity(STATUS.len() + size + 2);
    head.extend_from_slice(STATUS);
    for (name, value) in headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The request head's size as received, near enough.
pub(crate) fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    // Without formatting the URI (this runs for every request): origin-form is path and
    // query; absolute-form adds a scheme and an authority.
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len() + 8);
    req.method().as_str().len() + target + 12 + headers::fields_size(req.headers())
}
