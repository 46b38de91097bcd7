//! One direction's permessage-deflate work: inflating what the source leg compressed, and
//! compressing what the proxy sends the destination leg.
//!
//! A codec that keeps its context between messages (context takeover) belongs to its session
//! and is made on the first compressed message. One that does not is taken from a small
//! per-thread pool for one message and given back at its end, so a session that agreed to no
//! context takeover holds none while it is quiet.

use std::cell::RefCell;

use super::zlib::{CodecError, Deflater, Inflater, TAIL};
use super::{Config, Params, Role};

/// Plaintext is handed on in pieces of at most this many bytes.
pub(crate) const CHUNK: usize = 16 << 10;
/// A last piece at most this long is joined to the trailer on the stack.
const JOIN: usize = 512;
/// Codecs kept per thread for messages without context takeover.
const POOL: usize = 16;

thread_local! {
    static INFLATERS: RefCell<Vec<Inflater>> = const { RefCell::new(Vec::new()) };
    static DEFLATERS: RefCell<Vec<(DeflaterKind, Deflater)>> = const { RefCell::new(Vec::new()) };
    /// Where inflated plaintext lands before it is handed on ([`CHUNK`] bytes), then room
    /// for a small last piece joined to the trailer.
    static PLAIN: RefCell<Box<[u8]>> =
        RefCell::new(vec![0; CHUNK + JOIN + TAIL.len()].into_boxed_slice());
}

/// What a deflater was made with (a pooled one is reused only for the same).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct DeflaterKind {
    level: u8,
    window_bits: u8,
    mem_level: u8,
}

/// What the source compresses with.
#[derive(Debug)]
struct Receive {
    window_bits: u8,
    /// The source keeps its context between messages: so does the inflater.
    keep: bool,
    inflater: Option<Inflater>,
}

/// What the proxy compresses toward the destination with.
#[derive(Debug)]
struct Send {
    kind: DeflaterKind,
    keep: bool,
    deflater: Option<Deflater>,
}

/// One direction's permessage-deflate.
#[derive(Debug)]
pub(crate) struct Codec {
    receive: Option<Receive>,
    /// Both legs agreed the same: compressed messages pass as they came (and are inflated only
    /// to be checked).
    pass: bool,
    send: Option<Send>,
}

/// Why a compressed message could not be inflated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InflateError {
    /// Not valid DEFLATE (or an inflater could not be made).
    Data,
    /// The caller refused a piece of plaintext (a limit).
    Refused,
}

impl Codec {
    /// The direction from a leg that agreed `source` (the proxy being `source_role` there) to
    /// one that agreed `destination`; `None` when neither compresses. Compressed messages pass
    /// as they came when both agreed the same and `pass_allowed` (no message hook reads them).
    pub(crate) fn new(
        source: Option<(Params, Role)>,
        destination: Option<(Params, Role)>,
        pass_allowed: bool,
        config: &Config,
    ) -> Option<Box<Self>> {
        if source.is_none() && destination.is_none() {
            return None;
        }
        let pass =
            pass_allowed && matches!((source, destination), (Some((a, _)), Some((b, _))) if a == b);
        let receive = source.map(|(params, role)| {
            let (window_bits, keep) = params.peer_sends(role);
            Receive {
                window_bits,
                keep,
                inflater: None,
            }
        });
        let send = destination.filter(|_| !pass).map(|(params, role)| {
            let (allowed, keep) = params.proxy_sends(role);
            let c = &config.compression;
            Send {
                kind: DeflaterKind {
                    level: c.level,
                    // A leg that allowed 8 still gets 9: zlib's deflate never reaches back
                    // past the window less its 262-byte lookahead (250 bytes at 9).
                    window_bits: allowed.min(c.window_bits).max(9),
                    mem_level: c.mem_level,
                },
                // Dropping the context is always allowed to the sender.
                keep: keep && c.context_takeover,
                deflater: None,
            }
        });
        Some(Box::new(Self {
            receive,
            pass,
            send,
        }))
    }

    /// Whether the source may send compressed messages (RSV1 on a first frame).
    pub(crate) fn accepts_compressed(&self) -> bool {
        self.receive.is_some()
    }

    /// Whether a compressed message from the source passes as it came.
    pub(crate) fn passes(&self) -> bool {
        self.pass
    }

    /// Whether what goes to the destination is compressed by the proxy.
    pub(crate) fn compresses(&self) -> bool {
        self.send.is_some()
    }

    /// Inflates `input`, a piece of the source's compressed message (unmasked), handing the
    /// plaintext to `plain` in pieces of at most [`CHUNK`] bytes; `plain` answers whether to go
    /// on (`Ok(false)`: stop for now, output is full). At `end` (the message's last piece) the
    /// message is finished. Returns how much of `input` was taken: all of it, unless `plain`
    /// stopped with input left (call again with the rest); once all of `input` is taken, all
    /// of its plaintext has been handed on.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        end: bool,
        mut plain: impl FnMut(&[u8]) -> Result<bool, ()>,
    ) -> Result<usize, InflateError> {
        let Some(receive) = self.receive.as_mut() else {
            return Err(InflateError::Data);
        };
        if receive.inflater.is_none() {
            receive.inflater = Some(inflater(receive.keep, receive.window_bits)?);
        }
        let Some(inflater) = receive.inflater.as_mut() else {
            return Err(InflateError::Data);
        };
        let taken = PLAIN.with(|cell| {
            let buffer = &mut *cell.borrow_mut();
            let (out, joined) = buffer.split_at_mut(CHUNK);
            // A small last piece goes to zlib with the trailer, in one call instead of two
            // (most messages are one small piece).
            let (feed, tail_after) = if end && input.len() <= JOIN {
                joined[..input.len()].copy_from_slice(input);
                joined[input.len()..input.len() + TAIL.len()].copy_from_slice(&TAIL);
                (&joined[..input.len() + TAIL.len()], false)
            } else {
                (input, end)
            };
            let mut taken = 0;
            // The input, then (at the end) the trailer the sender left off.
            let mut tail_taken = 0;
            loop {
                let (rest, in_tail) = if taken < feed.len() {
                    (&feed[taken..], false)
                } else if tail_after {
                    (&TAIL[tail_taken..], true)
                } else {
                    (&[][..], false)
                };
                let (used, made) = inflater
                    .inflate(rest, out)
                    .map_err(|_: CodecError| InflateError::Data)?;
                if in_tail {
                    tail_taken += used;
                } else {
                    taken += used;
                }
                // Asked to stop: only where input is left to take up later. Once all of it is
                // taken what zlib still holds is drained now (bounded: zlib takes input only
                // as it has room to write, so what remains is what its last few bytes make),
                // for nothing would call it back for the rest.
                if made > 0
                    && !plain(&out[..made]).map_err(|()| InflateError::Refused)?
                    && taken < input.len()
                {
                    return Ok((taken, false));
                }
                // All taken and all given out (zlib stopped short of the room it had).
                let done_input = taken == feed.len() && (!tail_after || tail_taken == TAIL.len());
                if done_input && made < out.len() {
                    break;
                }
                if used == 0 && made == 0 {
                    // No progress with input left: the data ends in the middle of a block that
                    // needs more than this message has.
                    if done_input {
                        break;
                    }
                    return Err(InflateError::Data);
                }
            }
            Ok((taken.min(input.len()), true))
        })?;
        let (taken, finished) = taken;
        if end && finished {
            release_inflater(receive);
        }
        Ok(taken)
    }

    /// Compresses `plain` toward the destination, appending to `out`; `end` finishes the
    /// message.
    pub(crate) fn compress(
        &mut self,
        plain: &[u8],
        end: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let Some(send) = self.send.as_mut() else {
            return Err(CodecError::Setup);
        };
        if send.deflater.is_none() {
            send.deflater = Some(deflater(send.keep, send.kind)?);
        }
        let Some(deflater) = send.deflater.as_mut() else {
            return Err(CodecError::Setup);
        };
        deflater.compress(plain, end, out)?;
        if end && !send.keep {
            if let Some(mut d) = send.deflater.take() {
                d.reset();
                let kind = send.kind;
                DEFLATERS.with(|pool| {
                    let mut pool = pool.borrow_mut();
                    if pool.len() < POOL {
                        pool.push((kind, d));
                    }
                });
            }
        }
        Ok(())
    }
}

/// An inflater for the source's window: the session's own when it keeps its context, else one
/// from the pool (a 2^15 window reads any other).
fn inflater(keep: bool, window_bits: u8) -> Result<Inflater, InflateError> {
    let pooled = (!keep)
        .then(|| INFLATERS.with(|pool| pool.borrow_mut().pop()))
        .flatten();
    match pooled {
        Some(i) => Ok(i),
        None => Inflater::new(if keep { window_bits } else { 15 }).map_err(|_| InflateError::Data),
    }
}

/// At a message's end: the context is kept, or the inflater goes back to the pool.
fn release_inflater(receive: &mut Receive) {
    if receive.keep {
        return;
    }
    if let Some(mut i) = receive.inflater.take() {
        i.reset();
        INFLATERS.with(|pool| {
            let mut pool = pool.borrow_mut();
            if pool.len() < POOL {
                pool.push(i);
            }
        });
    }
}

fn deflater(keep: bool, kind: DeflaterKind) -> Result<Deflater, CodecError> {
    let pooled = (!keep)
        .then(|| {
            DEFLATERS.with(|pool| {
                let mut pool = pool.borrow_mut();
                let at = pool.iter().position(|(k, _)| *k == kind)?;
                Some(pool.swap_remove(at).1)
            })
        })
        .flatten();
    match pooled {
        Some(d) => Ok(d),
        None => Deflater::new(kind.level, kind.window_bits, kind.mem_level),
    }
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Inflater")
    }
}

impl std::fmt::Debug for Deflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Deflater")
    }
}

#[cfg(test)]
mod tests {
    use super::super::Compression;
    use super::*;

    fn params(no_context: bool, bits: u8) -> Params {
        Params {
            server_no_context_takeover: no_context,
            client_no_context_takeover: no_context,
            server_max_window_bits: bits,
            client_max_window_bits: bits,
        }
    }

    /// Compressed toward a leg by one direction, inflated from it by another: the same
    /// messages come out, with and without context takeover, however the pieces are cut.
    #[test]
    fn what_one_direction_compresses_another_inflates() {
        let config = Config::default();
        for no_context in [false, true] {
            let p = params(no_context, 12);
            let mut sender = Codec::new(None, Some((p, Role::Server)), true, &config).unwrap();
            let mut receiver = Codec::new(Some((p, Role::Client)), None, true, &config).unwrap();
            assert!(sender.compresses() && receiver.accepts_compressed());
            assert!(!receiver.passes());
            for message in [&b"hello hello hello"[..], &[7u8; 100_000], b""] {
                let mut wire = Vec::new();
                for piece in message.chunks(4096) {
                    sender.compress(piece, false, &mut wire).unwrap();
                }
                sender.compress(&[], true, &mut wire).unwrap();
                let mut plain = Vec::new();
                let mut pieces = wire.chunks(333).peekable();
                if pieces.peek().is_none() {
                    receiver
                        .inflate(&[], true, |p| {
                            plain.extend_from_slice(p);
                            Ok(true)
                        })
                        .unwrap();
                }
                while let Some(piece) = pieces.next() {
                    let end = pieces.peek().is_none();
                    let taken = receiver
                        .inflate(piece, end, |p| {
                            assert!(p.len() <= CHUNK);
                            plain.extend_from_slice(p);
                            Ok(true)
                        })
                        .unwrap();
                    assert_eq!(taken, piece.len());
                }
                assert_eq!(plain, message, "no context: {no_context}");
            }
        }
    }

    /// The proxy drops its own context when told to, even where the leg lets it keep one: a
    /// repeated message costs as much the second time.
    #[test]
    fn the_proxys_context_setting_holds_where_the_leg_allows_more() {
        let p = params(false, 15);
        let message = br#"{"type":"chat","room":"general","text":"the same words again"}"#;
        let second_size = |config: &Config| {
            let mut sender = Codec::new(None, Some((p, Role::Server)), true, config).unwrap();
            let mut wire = Vec::new();
            sender.compress(message, true, &mut wire).unwrap();
            let first = wire.len();
            sender.compress(message, true, &mut wire).unwrap();
            (first, wire.len() - first)
        };
        let (first, kept) = second_size(&Config::default());
        assert!(kept * 3 < first, "with context: {first} then {kept} bytes");
        let dropped = Config {
            compression: Compression::default().context_takeover(false),
            ..Config::default()
        };
        let (first, again) = second_size(&dropped);
        assert_eq!(
            again, first,
            "without context the same message costs the same"
        );
    }

    /// A consumer that always asks to stop, fed as the bridge feeds (8 KiB pieces, the rest of
    /// a piece again until it is taken): every byte of plaintext still arrives, and the pooled
    /// inflater goes back clean for the next message. (Stopping after the last piece was
    /// taken once lost what zlib still held, and left the inflater mid-stream.)
    #[test]
    fn a_stop_after_the_last_input_loses_nothing() {
        let config = Config::default();
        for no_context in [true, false] {
            let p = params(no_context, 15);
            let mut sender = Codec::new(None, Some((p, Role::Server)), true, &config).unwrap();
            let mut receiver = Codec::new(Some((p, Role::Client)), None, true, &config).unwrap();
            for round in 0..3u32 {
                let message: Vec<u8> = (0..300_000u32)
                    .map(|i| ((i * 7 + round) % 251) as u8 ^ (i / 1000) as u8)
                    .collect();
                let mut wire = Vec::new();
                sender.compress(&message, true, &mut wire).unwrap();
                let mut plain = Vec::new();
                let pieces: Vec<&[u8]> = wire.chunks(8 << 10).collect();
                for (k, piece) in pieces.iter().enumerate() {
                    let end = k + 1 == pieces.len();
                    let mut at = 0;
                    loop {
                        at += receiver
                            .inflate(&piece[at..], end, |p| {
                                plain.extend_from_slice(p);
                                Ok(false)
                            })
                            .unwrap();
                        if at == piece.len() {
                            break;
                        }
                    }
                }
                assert_eq!(plain.len(), message.len(), "no context: {no_context}");
                assert!(plain == message, "no context {no_context}, round {round}");
            }
        }
    }

    /// A consumer that stops takes the rest later: nothing is lost or repeated.
    #[test]
    fn inflating_stops_where_the_output_is_full_and_goes_on() {
        let config = Config::default();
        let p = params(false, 15);
        let mut sender = Codec::new(None, Some((p, Role::Server)), true, &config).unwrap();
        let mut receiver = Codec::new(Some((p, Role::Client)), None, true, &config).unwrap();
        let message: Vec<u8> = (0..300_000u32).map(|i| (i % 7) as u8).collect();
        let mut wire = Vec::new();
        sender.compress(&message, true, &mut wire).unwrap();
        let (mut plain, mut at, mut rounds) = (Vec::new(), 0, 0);
        while plain.len() < message.len() {
            rounds += 1;
            let budget = plain.len() + 20_000;
            at += receiver
                .inflate(&wire[at..], true, |p| {
                    plain.extend_from_slice(p);
                    Ok(plain.len() < budget)
                })
                .unwrap();
        }
        assert_eq!(plain, message);
        assert!(rounds > 5, "stopped {rounds} times");
    }

    #[test]
    fn refusals_and_bad_data_are_errors() {
        let config = Config::default();
        let p = params(true, 15);
        let mut receiver = Codec::new(Some((p, Role::Client)), None, true, &config).unwrap();
        assert_eq!(
            receiver.inflate(&[0xff, 0xff, 0xff], true, |_| Ok(true)),
            Err(InflateError::Data)
        );
        let mut sender = Codec::new(None, Some((p, Role::Server)), true, &config).unwrap();
        let mut wire = Vec::new();
        sender.compress(b"some text", true, &mut wire).unwrap();
        let mut receiver = Codec::new(Some((p, Role::Client)), None, true, &config).unwrap();
        assert_eq!(
            receiver.inflate(&wire, true, |_| Err(())),
            Err(InflateError::Refused)
        );
        // The same parameters on both legs, and nothing reads the messages: they pass.
        let both = Codec::new(
            Some((p, Role::Server)),
            Some((p, Role::Client)),
            true,
            &config,
        )
        .unwrap();
        assert!(both.passes() && !both.compresses());
        let hooked = Codec::new(
            Some((p, Role::Server)),
            Some((p, Role::Client)),
            false,
            &config,
        )
        .unwrap();
        assert!(!hooked.passes() && hooked.compresses());
        assert!(Codec::new(None, None, true, &config).is_none());
    }
}
