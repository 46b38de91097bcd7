//! The streaming bridge with permessage-deflate (RFC 7692): how a direction's messages are
//! checked, inflated and compressed as they stream.
//!
//! - A compressed message between two legs that agreed the same passes as it came (RSV1 on its
//!   first frame), and is inflated beside, only to be checked: UTF-8 of text, the plaintext's
//!   size against `max_message_size`, and the plaintext counted.
//! - A compressed message whose plaintext goes on (the destination did not agree, or the proxy
//!   compresses toward it with its own parameters) is inflated as it streams, never more than
//!   [`OUT_LIMIT`] ahead of what the destination has taken.
//! - Plaintext toward a leg the proxy compresses for is compressed as it streams.
//!
//! Whatever the path, inflating stops at `max_message_size` of plaintext (1009): a small
//! compressed message cannot make the proxy hold more.

use std::io;

use tokio_tungstenite::tungstenite::Error as WsError;

use super::stream::{invalid_utf8, Flow, Limits, Output, Walk};
use super::wire::{Transform, Violation};
use crate::session::deflate::{Codec, InflateError};
use crate::session::frame;
use crate::session::leg::{Side, Traffic};

/// Plaintext one walk may add to its output before it hands it on (and waits for the
/// destination if it is behind).
pub(crate) const OUT_LIMIT: usize = 256 << 10;
/// Compressed bytes unmasked at a time, for inflating.
const UNMASK: usize = 8 << 10;

/// What a peer sent that does not inflate.
pub(crate) const BAD_COMPRESSED: &str = "invalid compressed data";

fn bad_compressed() -> WsError {
    WsError::Utf8(BAD_COMPRESSED.into())
}

impl Flow {
    /// A compressed message is in progress and its plaintext goes on (is not passed as it
    /// came).
    pub(super) fn inflates(&self) -> bool {
        self.message.as_ref().is_some_and(|m| m.compressed)
            && self.deflate.as_ref().is_some_and(|d| !d.passes())
    }

    /// Counts `plain`, a piece of the message's plaintext, against the size limit and checks it
    /// as text.
    fn check_plain(&mut self, plain: &[u8], end: bool) -> Result<(), WsError> {
        let len = plain.len() as u64;
        self.check_size(len)?;
        if let Some(message) = self.message.as_mut() {
            message.len += len;
        }
        if !self.text_ok(plain, end) {
            return Err(invalid_utf8());
        }
        Ok(())
    }

    /// A piece of a compressed message that passes as it came (unmasked): inflated only to be
    /// checked. `end`: the message's last piece.
    pub(super) fn check_compressed(
        &mut self,
        piece: &[u8],
        end: bool,
        traffic: &mut Traffic,
    ) -> Result<(), WsError> {
        self.count_compressed(piece.len(), traffic);
        let Some(mut codec) = self.deflate.take() else {
            return Err(bad_compressed());
        };
        let mut failed = None;
        let result = codec.inflate(piece, end, |plain| {
            self.check_plain(plain, false)
                .map_err(|e| failed = Some(e))?;
            Ok(true)
        });
        self.deflate = Some(codec);
        match (result, failed) {
            (_, Some(error)) => Err(error),
            (Err(_), None) => Err(bad_compressed()),
            (Ok(_), None) if end => self.check_plain(&[], true),
            (Ok(_), None) => Ok(()),
        }
    }

    /// The payload of the compressed frame in progress, from `input[at..to]`, inflated and
    /// handed on as plaintext (compressed again where the proxy compresses toward the
    /// destination). Returns how many bytes it took, and whether it stopped because `out` is
    /// full.
    pub(super) fn inflate_frame(
        &mut self,
        input: &[u8],
        at: usize,
        to: usize,
        out: &mut Output,
        traffic: &mut Traffic,
    ) -> Result<(usize, bool), WsError> {
        let Some(frame) = self.frame.as_ref() else {
            return Ok((0, false));
        };
        let (fin, mask, offset) = (frame.fin, frame.mask, frame.offset);
        let take = frame.remaining.min((to - at) as u64) as usize;
        let last_piece = frame.remaining == take as u64;
        let Some(mut codec) = self.deflate.take() else {
            return Err(bad_compressed());
        };
        let mut scratch = [0u8; UNMASK];
        let (mut taken, mut full) = (0, false);
        let mut failed = None;
        // At least one round, so that an empty last piece still ends the message.
        loop {
            let n = (take - taken).min(UNMASK);
            let chunk = &mut scratch[..n];
            chunk.copy_from_slice(&input[at + taken..at + taken + n]);
            if let Some(key) = mask {
                frame::apply_mask(chunk, frame::key_at(key, offset + taken as u64));
            }
            let end = fin && last_piece && taken + n == take;
            let result = codec.inflate(chunk, end, |plain| {
                self.check_plain(plain, false)
                    .and_then(|()| self.hand_on(out, plain, false, traffic))
                    .map_err(|e| failed = Some(e))?;
                Ok(out.own_len() < OUT_LIMIT)
            });
            let used = match (result, failed.take()) {
                (_, Some(error)) => {
                    self.deflate = Some(codec);
                    return Err(error);
                }
                (Err(InflateError::Data | InflateError::Refused), None) => {
                    self.deflate = Some(codec);
                    return Err(bad_compressed());
                }
                (Ok(used), None) => used,
            };
            self.count_compressed(used, traffic);
            taken += used;
            if used < n {
                full = true;
                break;
            }
            if taken == take {
                break;
            }
        }
        self.deflate = Some(codec);
        if let Some(frame) = self.frame.as_mut() {
            frame.remaining -= taken as u64;
            frame.offset += taken as u64;
            if frame.remaining == 0 {
                self.frame = None;
                if fin {
                    // The message is whole: the end of its text, and its last frame.
                    self.check_plain(&[], true)?;
                    self.hand_on(out, &[], true, traffic)?;
                    self.finish_message(traffic);
                }
            }
        }
        Ok((taken, full))
    }

    /// `plain`, a piece of the message's plaintext (checked already), handed on: compressed
    /// where the proxy compresses toward the destination, else as it is.
    pub(super) fn hand_on(
        &mut self,
        out: &mut Output,
        plain: &[u8],
        end: bool,
        traffic: &mut Traffic,
    ) -> Result<(), WsError> {
        let compresses = self.deflate.as_ref().is_some_and(|d| d.compresses());
        if !compresses {
            if !plain.is_empty() || end {
                self.emit_bytes(out, plain, end);
            }
            return Ok(());
        }
        let mut compressed = Vec::new();
        if let Some(codec) = self.deflate.as_mut() {
            codec
                .compress(plain, end, &mut compressed)
                .map_err(|_| bad_compressed())?;
        }
        // zlib may keep a small piece for later: a frame only when there is something, or
        // the message ends.
        if !compressed.is_empty() || end {
            self.count_compressed_out(compressed.len(), traffic);
            self.emit_bytes(out, &compressed, end);
        }
        Ok(())
    }

    /// Adds `bytes` to `out` as the next frame of the message in progress (masked toward the
    /// upstream with a fresh key).
    fn emit_bytes(&mut self, out: &mut Output, bytes: &[u8], fin: bool) {
        let Some(message) = self.message.as_mut() else {
            return;
        };
        let first = message.first_byte(fin);
        let key = (self.to == Side::Upstream).then(rand::random::<[u8; 4]>);
        let (head, head_len) = frame::frame_head(first, bytes.len(), key);
        out.copy(&head[..head_len]);
        out.copy_masked(bytes, key);
    }

    /// Compressed payload read from the source that crossed the client's wire: what the
    /// client sent, or what passes to it as it came.
    fn count_compressed(&self, bytes: usize, traffic: &mut Traffic) {
        let passes = self.deflate.as_ref().is_some_and(|d| d.passes());
        if self.from == Side::Client || (self.to == Side::Client && passes) {
            traffic.compressed(bytes as u64);
        }
    }

    /// Compressed payload the proxy made, sent to the client.
    fn count_compressed_out(&self, bytes: usize, traffic: &mut Traffic) {
        if self.to == Side::Client {
            traffic.compressed(bytes as u64);
        }
    }
}

/// What tungstenite reads of a leg that sends compressed messages (tungstenite has no
/// permessage-deflate): the leg's frames walked by a [`Flow`] that inflates them, handing on
/// plaintext frames (masked as the leg's own are) and control frames as they came, in order.
/// The hook bridge reads such a leg through it, and so does its close phase.
pub(crate) struct Inflating {
    flow: Flow,
    traffic: Traffic,
    out: Output,
    /// A protocol error found after plaintext that is still to be read: reported next.
    failed: Option<WsError>,
}

impl Inflating {
    /// A reader of leg `side`, whose compressed messages `deflate` inflates.
    pub(crate) fn new(side: Side, limits: Limits, deflate: Box<Codec>) -> Self {
        let to = match side {
            Side::Client => Side::Upstream,
            Side::Upstream => Side::Client,
        };
        Self {
            flow: Flow::new(side, to, limits, Some(deflate)),
            traffic: Traffic::uncounted(),
            out: Output::default(),
            failed: None,
        }
    }
}

impl Transform for Inflating {
    fn transform(&mut self, raw: &mut [u8], plain: &mut Vec<u8>) -> io::Result<usize> {
        if let Some(error) = self.failed.take() {
            return Err(io::Error::other(Violation(error)));
        }
        let mut at = 0;
        while at < raw.len() {
            self.out.clear();
            let (used, walked) =
                self.flow
                    .walk(raw, at, raw.len(), &mut self.out, &mut self.traffic);
            for slice in self.out.slices(raw) {
                plain.extend_from_slice(slice);
            }
            at += used;
            match walked {
                Walk::Done => {}
                // The rest is read again once this has been.
                Walk::Full => return Ok(at),
                Walk::Control => plain.extend_from_slice(self.flow.take_control()),
                Walk::Violation(error) if plain.is_empty() => {
                    return Err(io::Error::other(Violation(error)));
                }
                Walk::Violation(error) => {
                    // What came before it is read first; the stream cannot be walked further.
                    self.failed = Some(error);
                    return Ok(raw.len());
                }
            }
        }
        Ok(at)
    }
}
