//! Entry points for the fuzz targets in `fuzz/` (feature `__fuzz`), not part of the API: each
//! drives one parser or state machine of the proxy's own and asserts what must hold for any
//! input. `cargo test` runs some of them on fixed inputs (below).
#![cfg_attr(not(feature = "__fuzz"), allow(dead_code, unreachable_pub))]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::handshake::request::{self, EscapedSlashes};
use crate::session::frame;
use crate::session::frames::stream::{Flow, Limits, Output, Walk};
use crate::session::frames::wire::{Wire, AHEAD};
use crate::session::leg::{Side, Traffic};
use crate::session::tunnel::track::{Frames, Tally};

/// The request checks (path normalisation, encoded slashes, `Host`, body) on a request
/// with this target and these header lines, under each [`EscapedSlashes`] action; must
/// never panic.
pub fn request(target: &[u8], headers: &[(&[u8], &[u8])]) {
    let Ok(uri) = http::Uri::try_from(target) else {
        return;
    };
    for escaped in [
        EscapedSlashes::Keep,
        EscapedSlashes::Reject,
        EscapedSlashes::Decode,
    ] {
        let mut req = http::Request::new(());
        *req.uri_mut() = uri.clone();
        for (name, value) in headers {
            if let (Ok(n), Ok(v)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(value),
            ) {
                req.headers_mut().append(n, v);
            }
        }
        if request::check(&mut req, escaped).is_ok() {
            let path = req.uri().path();
            assert!(path.starts_with('/') || path.is_empty(), "{path:?}");
            // What passes cannot leave the upstream's prefix, even for a server that
            // decodes it once or twice before resolving dot-segments.
            let once = percent_decode(path.as_bytes());
            for decoded in [path.as_bytes().to_vec(), percent_decode(&once), once] {
                assert!(
                    !decoded
                        .split(|b| *b == b'/' || *b == b'\\')
                        .any(|s| s == b".." || s == b"."),
                    "{escaped:?}: a dot-segment in {path:?} once decoded"
                );
            }
            if escaped == EscapedSlashes::Reject {
                let lower = path.to_ascii_lowercase();
                assert!(!lower.contains("%2f") && !lower.contains("%5c"), "{path:?}");
            }
        }
    }
}

/// `%XX` escapes decoded; written apart from the proxy's own decoder, so that a mistake
/// there is not repeated here.
fn percent_decode(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok())
            .filter(|_| bytes[i] == b'%' && bytes[i + 1].is_ascii_hexdigit());
        match hex {
            Some(b) => {
                out.push(b);
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

/// The request head's measured size (what `Serve::max_head_size` bounds) for a head parsed as
/// hyper parses it: never less than the bytes sent, less optional whitespace, the final
/// CRLF and at most a scheme's length (the URI is not formatted again to measure it).
pub fn head_size(raw: &[u8]) {
    let mut fields = [httparse::EMPTY_HEADER; 100];
    let mut parsed = httparse::Request::new(&mut fields);
    let Ok(httparse::Status::Complete(len)) = parsed.parse(raw) else {
        return;
    };
    let (Some(method), Some(target)) = (parsed.method, parsed.path) else {
        return;
    };
    let (Ok(method), Ok(uri)) = (
        http::Method::from_bytes(method.as_bytes()),
        http::Uri::try_from(target),
    ) else {
        return;
    };
    let mut req = http::Request::new(());
    *req.method_mut() = method;
    *req.uri_mut() = uri;
    for field in parsed.headers.iter() {
        let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(field.name.as_bytes()),
            http::HeaderValue::from_bytes(field.value),
        ) else {
            return;
        };
        req.headers_mut().append(name, value);
    }
    let size = crate::serve::direct::head_size(&req);
    let whitespace = raw[..len]
        .iter()
        .filter(|b| matches!(b, b' ' | b'\t'))
        .count();
    // A fragment is not part of the request (the `http` crate drops it, so it is never
    // forwarded) and is not counted; hyper's read buffer bounds it. Found by this target.
    let fragment = target.find('#').map_or(0, |at| target.len() - at);
    // Empty lines before the request line are skipped (RFC 9112 section 2.2).
    let leading = raw
        .iter()
        .take_while(|b| matches!(b, b'\r' | b'\n'))
        .count();
    assert!(
        size + whitespace + fragment + leading + 2 + 64 >= len,
        "head of {len} bytes measured as {size} ({whitespace} bytes of whitespace)"
    );
}

/// The tunnel's frame tracking: feeding a byte stream in any pieces, with data payloads
/// sometimes passed unread (spliced), ends in the same state as feeding it whole.
pub fn tunnel_frames(data: &[u8], cuts: &[u8]) {
    let (mut whole, mut whole_traffic) = (Frames::default(), Traffic::new(Side::Upstream));
    let whole_done = whole.feed(data, &mut Tally::Forwarded(&mut whole_traffic));
    let (mut split, mut split_traffic) = (Frames::default(), Traffic::new(Side::Upstream));
    let mut split_done = 0;
    let (mut at, mut cut) = (0, cuts.iter().cycle());
    while at < data.len() {
        let c = cut.next().copied().unwrap_or(255);
        let n = (usize::from(c) + 1).min(data.len() - at);
        let unread = split.unread_payload();
        if c % 2 == 1 && unread > 0 {
            let n = n.min(usize::try_from(unread).unwrap_or(usize::MAX));
            if let Some(payload) = split.skip(n as u64) {
                split_traffic.add(payload);
                split_done += 1;
            }
            at += n;
        } else {
            split_done += split.feed(&data[at..at + n], &mut Tally::Forwarded(&mut split_traffic));
            at += n;
        }
        assert!(split.position().0 < 14);
    }
    assert_eq!(split_done, whole_done);
    assert_eq!(split_traffic.messages, whole_traffic.messages);
    assert_eq!(split_traffic.bytes, whole_traffic.bytes);
    assert_eq!(split.closed, whole.closed);
    assert_eq!(split.at_boundary(), whole.at_boundary());
    assert_eq!(split.mid_message(), whole.mid_message());
    assert_eq!(split.position(), whole.position());
}

/// The wire's read-ahead and put-back bytes: whatever the sizes of reads asked for and
/// of what the socket returns, and whatever is put back, the bytes come out unchanged and
/// in order, and a session waiting for bytes holds no read-ahead buffer.
pub fn wire_read(data: &[u8], plan: &[u8]) {
    struct Socket<'a> {
        data: &'a [u8],
        plan: std::iter::Cycle<std::slice::Iter<'a, u8>>,
    }
    impl AsyncRead for Socket<'_> {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let step = self.plan.next().copied().unwrap_or(1);
            if step % 4 == 0 {
                return Poll::Pending;
            }
            let n = (usize::from(step) * 300)
                .min(buf.remaining())
                .min(self.data.len());
            buf.put_slice(&self.data[..n]);
            self.data = &self.data[n..];
            Poll::Ready(Ok(()))
        }
    }
    let socket = Socket {
        data,
        plan: plan.iter().cycle(),
    };
    let mut wire = Wire::new(socket);
    let (mut out, mut sizes) = (Vec::with_capacity(data.len()), plan.iter().rev().cycle());
    let waker = std::task::Waker::noop();
    let (mut pending_in_a_row, mut put_back) = (0, 0);
    while out.len() < data.len() {
        let size = match sizes.next().copied().unwrap_or(0) % 6 {
            0 => 14,
            1 => 256,
            2 => 1000,
            3 => 4096,
            4 => AHEAD,
            _ => 2 * AHEAD,
        };
        let mut space = vec![0; size];
        let mut buf = ReadBuf::new(&mut space);
        match Pin::new(&mut wire).poll_read(&mut Context::from_waker(waker), &mut buf) {
            Poll::Ready(Ok(())) => {
                assert!(!buf.filled().is_empty(), "no bytes before the end");
                out.extend_from_slice(buf.filled());
                pending_in_a_row = 0;
                // Sometimes put the tail back, as the streaming bridge does: it must be read
                // again next, before anything read ahead.
                let step = usize::from(sizes.next().copied().unwrap_or(0));
                if step % 7 == 3 && put_back < 64 {
                    put_back += 1;
                    let back = step.min(out.len());
                    wire.unread(&out[out.len() - back..]);
                    out.truncate(out.len() - back);
                }
            }
            Poll::Ready(Err(e)) => panic!("{e}"),
            Poll::Pending => {
                assert_eq!(wire.ahead_capacity(), 0, "a waiting session holds a buffer");
                pending_in_a_row += 1;
                if pending_in_a_row > plan.len() + 1 {
                    return; // a plan of only pauses
                }
            }
        }
    }
    assert!(out == data, "bytes changed on the way through");
}

/// The streaming frame bridge's parser: a leg's bytes walked whole and in pieces give the
/// same control frames, messages and verdict; what it writes is framed and masked right.
pub fn stream_walk(data: &[u8], cuts: &[u8], from_client: bool) {
    let (from, to) = if from_client {
        (Side::Client, Side::Upstream)
    } else {
        (Side::Upstream, Side::Client)
    };
    let limits = Limits {
        max_frame: Some(1 << 16),
        max_message: Some(1 << 17),
    };
    let run = |pieces: &mut dyn Iterator<Item = usize>| {
        let mut flow = Flow::new(from, to, limits, None);
        let mut traffic = Traffic::new(Side::Upstream);
        let (mut written, mut controls, mut input) = (Vec::new(), Vec::new(), data.to_vec());
        let mut out = Output::default();
        let mut at = 0;
        let mut violated = None;
        'feed: while at < input.len() {
            let end = (at + pieces.next().unwrap_or(usize::MAX)).min(input.len());
            while at < end {
                out.clear();
                let (used, walked) = flow.walk(&mut input, at, end, &mut out, &mut traffic);
                for slice in out.slices(&input) {
                    written.extend_from_slice(slice);
                }
                assert!(used > 0 && at + used <= end, "no progress or past the end");
                at += used;
                match walked {
                    Walk::Done | Walk::Full => {}
                    Walk::Control => {
                        controls.push(flow.take_control().to_vec());
                    }
                    Walk::Violation(e) => {
                        violated = Some(std::mem::discriminant(&e));
                        break 'feed;
                    }
                }
            }
        }
        (
            messages(&written, to),
            controls,
            violated,
            traffic.messages,
            traffic.bytes,
        )
    };
    let whole = run(&mut std::iter::empty());
    let mut cut = cuts.iter().cycle().map(|c| usize::from(*c) + 1);
    let split = run(&mut cut);
    assert_eq!(whole, split);
}

/// The data messages in `out`, a stream of frames as the walk writes them for `to`.
fn messages(out: &[u8], to: Side) -> Vec<(bool, Vec<u8>)> {
    let (mut done, mut current, mut at) = (Vec::new(), None::<(bool, Vec<u8>)>, 0);
    while at < out.len() {
        let (first, second) = (out[at], out[at + 1]);
        assert_eq!(
            second & 0x80 != 0,
            to == Side::Upstream,
            "masked only toward the upstream"
        );
        let head = frame::head_len(second);
        let len = frame::payload_len(&out[at..])
            .and_then(|n| usize::try_from(n).ok())
            .unwrap_or(0);
        let mut payload = out[at + head..at + head + len].to_vec();
        if second & 0x80 != 0 {
            let k = &out[at + head - 4..at + head];
            frame::apply_mask(&mut payload, [k[0], k[1], k[2], k[3]]);
        }
        at += head + len;
        let message = current.get_or_insert_with(|| (first & 0x0f == 1, Vec::new()));
        message.1.extend_from_slice(&payload);
        if first & 0x80 != 0 {
            done.extend(current.take());
        }
    }
    done
}

/// The PROXY protocol header parser; must never panic, and a complete header's length is
/// within the input.
pub fn proxy_header(input: &[u8]) {
    if let crate::serve::proxy_header::Parsed::Complete { len, .. } =
        crate::serve::proxy_header::parse(input)
    {
        assert!(len <= input.len() && len > 0);
    }
}

/// The server's own upgrade entry against hyper, on the same bytes: whatever the entry takes
/// as an upgrade, hyper parses too, into the same request (method, target, version, every
/// field in order, an upgrade hyper would hand over), within the head limit; everything else
/// the entry leaves to hyper with every byte it read. The entry's decision does not depend on
/// how the bytes arrive (`cut` splits them into two reads).
pub fn direct_entry(data: &[u8], cut: usize) {
    use crate::serve::direct::{decide, Decided, First};
    const BUFFER: usize = 8 << 10;
    const MAX_HEAD: usize = 4 << 10;
    let cut = cut.min(data.len());
    // As `read_first` feeds it: a first read of `cut` bytes, then the rest, searched from
    // where the first left off.
    let decided = match decide(bytes::BytesMut::from(&data[..cut]), 0, BUFFER, MAX_HEAD) {
        Decided::More(_) => decide(bytes::BytesMut::from(data), cut, BUFFER, MAX_HEAD),
        first => first,
    };
    let whole = decide(bytes::BytesMut::from(data), 0, BUFFER, MAX_HEAD);
    let first = match (decided, whole) {
        (
            Decided::First(First::Upgrade {
                req, read, head, ..
            }),
            Decided::First(First::Upgrade { req: again, .. }),
        ) => {
            assert_eq!(
                format!("{req:?}"),
                format!("{again:?}"),
                "decided differently in two reads"
            );
            assert!(head <= read.len() && read.len() <= data.len());
            assert!(crate::serve::direct::head_size(&req) <= MAX_HEAD);
            Some((req, head))
        }
        (Decided::First(First::Other { read, .. }), Decided::First(First::Other { .. })) => {
            assert_eq!(&read[..], &data[..read.len()], "bytes for hyper changed");
            None
        }
        (Decided::More(_), Decided::More(_)) => {
            // Waiting for more only while the head is incomplete, or ends as hyper's quick check
            // does not see (`\n\r\n`: hyper waits for more bytes too).
            let mut fields = [httparse::EMPTY_HEADER; 100];
            if let Ok(httparse::Status::Complete(len)) =
                httparse::Request::new(&mut fields).parse(data)
            {
                let head = &data[..len];
                assert!(
                    !(head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n")),
                    "a whole head left waiting for more bytes"
                );
            }
            None
        }
        (Decided::First(First::Nothing), _) | (_, Decided::First(First::Nothing)) => None,
        // An unparsable head is found by a parse, which runs once a blank line shows up in the
        // new bytes, as in hyper: whether a read sees one depends on the cut, and hyper's own
        // reads would wait the same way. Never so for a head the entry takes (found by the
        // fuzzer: 71 empty lines, then `PRI * HTT8`, cut after the 80th byte).
        (Decided::More(_), Decided::First(First::Other { .. })) => None,
        (two_reads, one) => panic!(
            "the cut decided: {} in two reads, {} in one",
            variant(&two_reads),
            variant(&one)
        ),
    };
    let Some((req, head)) = first else {
        return;
    };
    let seen = hyper_reads(&data[..head]).expect("the entry took a head hyper refuses");
    assert_eq!(seen.method, *req.method());
    assert_eq!(seen.uri, *req.uri());
    assert_eq!(seen.version, req.version());
    assert!(
        seen.upgradable,
        "the entry took an upgrade hyper would not hand over"
    );
    let fields = |h: &http::HeaderMap| {
        h.iter()
            .map(|(n, v)| (n.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(fields(&seen.headers), fields(req.headers()));
}

fn variant(d: &crate::serve::direct::Decided) -> &'static str {
    use crate::serve::direct::{Decided, First};
    match d {
        Decided::More(_) => "more",
        Decided::First(First::Upgrade { .. }) => "upgrade",
        Decided::First(First::Other { .. }) => "other",
        Decided::First(First::Nothing) => "nothing",
    }
}

/// What hyper's HTTP/1.1 server made of a head.
struct Seen {
    method: http::Method,
    uri: http::Uri,
    version: http::Version,
    headers: http::HeaderMap,
    upgradable: bool,
}

/// The first request hyper's server parses from `head`, if any.
fn hyper_reads(head: &[u8]) -> Option<Seen> {
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    thread_local! {
        static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime for the fuzz target");
    }
    let seen = Arc::new(Mutex::new(None));
    let store = seen.clone();
    let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let mut slot = store.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(Seen {
                method: req.method().clone(),
                uri: req.uri().clone(),
                version: req.version(),
                headers: req.headers().clone(),
                upgradable: req
                    .extensions()
                    .get::<hyper::upgrade::OnUpgrade>()
                    .is_some(),
            });
        }
        async {
            Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<
                bytes::Bytes,
            >::new()))
        }
    });
    RUNTIME.with(|rt| {
        rt.block_on(async {
            let (mut client, server) = tokio::io::duplex(64 << 10);
            let conn = hyper::server::conn::http1::Builder::new()
                .max_buf_size(8 << 10)
                .serve_connection(hyper_util::rt::TokioIo::new(server), service)
                .with_upgrades();
            let talk = async move {
                let _ = client.write_all(head).await;
                let _ = client.shutdown().await;
                let mut answer = Vec::new();
                let _ = client.read_to_end(&mut answer).await;
            };
            let _ = tokio::join!(conn, talk);
        });
    });
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).take();
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The entry and hyper agree on heads at the edges of what the entry takes.
    #[test]
    fn the_direct_entry_takes_what_hyper_takes() {
        let upgrade = "GET /chat?x=1 HTTP/1.1\r\nHost: a.example\r\nUpgrade: websocket\r\n\
                       Connection: keep-alive, Upgrade\r\nSec-WebSocket-Version: 13\r\n\
                       Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nX-Custom: o\tv\r\n\r\n";
        let mut inputs: Vec<Vec<u8>> = vec![
            upgrade.as_bytes().to_vec(),
            format!("\r\n{upgrade}early frame bytes").into_bytes(),
            upgrade.replace("HTTP/1.1", "HTTP/1.0").into_bytes(),
            upgrade
                .replace("GET /chat", "GET http://b.example/chat")
                .into_bytes(),
            upgrade.replace("GET /chat", "GET *").into_bytes(),
            upgrade.replace("Host:", "Host :").into_bytes(),
            upgrade.replace("X-Custom", "X Custom").into_bytes(),
            upgrade
                .replace("\r\n\r\n", "\r\nContent-Length: 0\r\n\r\n")
                .into_bytes(),
            upgrade
                .replace("\r\n\r\n", "\r\n folded\r\n\r\n")
                .into_bytes(),
            upgrade.replace("\r\n", "\n").into_bytes(),
            upgrade.replace("v\r\n", "v\x7f\r\n").into_bytes(),
            upgrade
                .replace("v\r\n", &format!("{}\r\n", "v".repeat(5000)))
                .into_bytes(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec(),
        ];
        // obs-text in a value: taken by both.
        let mut obs_text = upgrade.as_bytes().to_vec();
        if let Some(at) = upgrade.find("o\tv") {
            obs_text[at] = 0xff;
        }
        inputs.push(obs_text);
        for input in &inputs {
            for cut in [0, 5, 40, input.len()] {
                direct_entry(input, cut);
            }
        }
        // Found by the fuzzer: empty lines, then a request line that does not parse, cut so
        // that the first read sees a blank line and the second none.
        let mut lines = vec![b'\n'; 71];
        lines.extend_from_slice(b"PRI * HTT8");
        direct_entry(&lines, 80);
        // The browser's head cut at every byte, the blank line that ends it included, alone
        // and with early frames after it.
        for input in &inputs[..2] {
            for cut in 0..=input.len() {
                direct_entry(input, cut);
            }
        }
    }

    fn frame(first: u8, payload: &[u8], key: Option<[u8; 4]>) -> Vec<u8> {
        let (head, len) = frame::frame_head(first, payload.len(), key);
        let mut f = head[..len].to_vec();
        let at = f.len();
        f.extend_from_slice(payload);
        if let Some(key) = key {
            frame::apply_mask(&mut f[at..], key);
        }
        f
    }

    /// Headers whole in a read are taken at once, split ones byte by byte: both must give the
    /// same messages, control frames and verdicts, from either leg.
    #[test]
    fn frames_are_walked_the_same_however_the_reads_cut_them() {
        for key in [Some([7, 1, 9, 3]), None] {
            let mut stream = Vec::new();
            stream.extend(frame(0x81, b"hello", key));
            stream.extend(frame(0x02, &[0xaa; 300], key)); // a fragmented binary message...
            stream.extend(frame(0x89, b"ping", key)); // ...a ping between its fragments...
            stream.extend(frame(0x80, &[0xbb; 70], key)); // ...and its last fragment
            stream.extend(frame(0x82, &[], key));
            stream.extend(frame(0x81, "grüße".as_bytes(), key));
            stream.extend(frame(0x88, &[0x03, 0xe8], key));
            let from_client = key.is_some();
            for cuts in [&[255u8][..], &[0], &[2, 0, 5, 1], &[6, 3], &[13, 1, 0]] {
                stream_walk(&stream, cuts, from_client);
            }
            // Invalid UTF-8 is found the same way too.
            let mut bad = frame(0x81, b"ok", key);
            bad.extend(frame(0x81, &[b'a', 0xff, b'b'], key));
            for cuts in [&[255u8][..], &[0], &[3, 1]] {
                stream_walk(&bad, cuts, from_client);
            }
        }
    }
}
