//! The tunnel's frame tracking: where frames begin and end in one direction's byte stream,
//! read from their headers as the bytes pass (never the payloads, but for a close code's two
//! bytes), and where each data message's last byte went: forwarded, held, or lost.

use crate::session::frame;
use crate::session::leg::Traffic;

/// Follows frame boundaries in one direction's byte stream.
#[derive(Clone, Debug, Default)]
pub(crate) struct Frames {
    head: [u8; 14],
    have: usize,
    remaining: u64,
    opcode: u8,
    fin: bool,
    mask: Option<[u8; 4]>,
    offset: u64,
    code: [u8; 2],
    /// The close code sent in this direction (1005: a close frame without one).
    pub(crate) closed: Option<u16>,
    /// Payload bytes of the data message in progress.
    payload: u64,
    /// A data message has begun and not ended.
    open: bool,
}

/// Where the data messages a tracker sees end are counted: the bytes that carried them were
/// written to the destination, wait in the pipe's held buffer (counted when written, by that
/// buffer's own tracker), or were discarded.
pub(crate) enum Tally<'a> {
    Forwarded(&'a mut Traffic),
    Held,
    Lost(&'a mut u64),
}

impl Tally<'_> {
    fn count(&mut self, payload: u64) {
        match self {
            Tally::Forwarded(traffic) => traffic.add(payload),
            Tally::Held => {}
            Tally::Lost(lost) => **lost += 1,
        }
    }
}

impl Frames {
    /// Header bytes held of a frame not yet begun, and payload bytes its frame still needs.
    #[cfg(any(test, feature = "__fuzz"))]
    pub(crate) fn position(&self) -> (usize, u64) {
        (self.have, self.remaining)
    }

    pub(crate) fn at_boundary(&self) -> bool {
        self.have == 0 && self.remaining == 0
    }

    /// Some of a data message's bytes have passed and its end has not.
    pub(crate) fn mid_message(&self) -> bool {
        self.open || (self.have > 0 && self.head[0] & 0x0f <= 0x2)
    }

    /// Walks `data`, counting completed data messages into `tally`; returns how many.
    pub(crate) fn feed(&mut self, data: &[u8], tally: &mut Tally<'_>) -> u64 {
        let mut completed = 0;
        let mut ended = |payload: Option<u64>, tally: &mut Tally<'_>| {
            if let Some(payload) = payload {
                tally.count(payload);
                completed += 1;
            }
        };
        let mut i = 0;
        while i < data.len() {
            if self.remaining == 0 && self.have == 0 {
                // The usual case: whole frames, header and payload, within this read.
                if let Some((wire_len, payload, fin, opcode)) = whole_frame(&data[i..]) {
                    i += wire_len;
                    self.opcode = opcode;
                    if opcode <= 0x2 {
                        self.payload += payload;
                        self.open = !fin;
                        ended(fin.then(|| std::mem::take(&mut self.payload)), tally);
                    }
                    continue;
                }
            }
            if self.remaining == 0 {
                // A whole header within this read, parsed where it lies.
                let rest = &data[i..];
                if self.have == 0 && rest.len() >= 2 {
                    let n = frame::head_len(rest[1]);
                    if let Some(head) = rest.get(..n) {
                        // Parsed where it lies: no copy into `head`.
                        self.start(head);
                        i += n;
                        if self.remaining == 0 {
                            ended(self.end(), tally);
                        }
                        continue;
                    }
                }
                self.head[self.have] = data[i];
                self.have += 1;
                i += 1;
                if self.have >= 2 && self.have == frame::head_len(self.head[1]) {
                    let head = self.head;
                    self.start(&head[..self.have]);
                    if self.remaining == 0 {
                        ended(self.end(), tally);
                    }
                }
            } else {
                let take = self.remaining.min((data.len() - i) as u64) as usize;
                if self.opcode == 0x8 && self.offset < 2 {
                    for (k, b) in data[i..i + take].iter().take(2).enumerate() {
                        let at = (self.offset as usize) + k;
                        if at < 2 {
                            self.code[at] = b ^ self.mask.map_or(0, |m| m[at % 4]);
                        }
                    }
                }
                if self.opcode <= 0x2 {
                    self.payload += take as u64;
                }
                self.remaining -= take as u64;
                self.offset += take as u64;
                i += take;
                if self.remaining == 0 {
                    ended(self.end(), tally);
                }
            }
        }
        completed
    }

    /// The payload bytes a frame needs before it ends, when they may pass unread: a data frame
    /// whose header is complete. Zero otherwise.
    pub(crate) fn unread_payload(&self) -> u64 {
        if self.have == 0 && self.opcode <= 0x2 {
            self.remaining
        } else {
            0
        }
    }

    /// `n` payload bytes of the current data frame passed without being read (spliced);
    /// returns the message's payload length if that completed a data message.
    pub(crate) fn skip(&mut self, n: u64) -> Option<u64> {
        let n = n.min(self.remaining);
        self.payload += n;
        self.remaining -= n;
        self.offset += n;
        if self.remaining == 0 {
            self.end()
        } else {
            None
        }
    }

    /// A frame begins with header `h` (exactly [`frame::head_len`] bytes).
    fn start(&mut self, h: &[u8]) {
        self.fin = h[0] & 0x80 != 0;
        self.opcode = h[0] & 0x0f;
        // The key is the header's last four bytes.
        let n = h.len();
        self.mask = (h[1] & 0x80 != 0).then(|| [h[n - 4], h[n - 3], h[n - 2], h[n - 1]]);
        self.remaining = frame::payload_len(h).unwrap_or_default();
        self.offset = 0;
        self.have = 0;
        self.code = [0; 2];
        if self.opcode <= 0x2 {
            self.open = true;
        }
    }

    /// A frame ended; returns the payload length of the data message it completed, if any.
    fn end(&mut self) -> Option<u64> {
        if self.opcode == 0x8 {
            self.closed = Some(if self.offset >= 2 {
                u16::from_be_bytes(self.code)
            } else {
                1005
            });
        }
        if self.fin && self.opcode <= 0x2 {
            self.open = false;
            return Some(std::mem::take(&mut self.payload));
        }
        None
    }
}

/// A frame that lies whole at the start of `data`, header and payload, and is not a close
/// (whose code is read on the way): its length on the wire, its payload's, FIN bit and opcode.
fn whole_frame(data: &[u8]) -> Option<(usize, u64, bool, u8)> {
    let (&first, &second) = (data.first()?, data.get(1)?);
    let opcode = first & 0x0f;
    if opcode == 0x8 {
        return None;
    }
    let len = frame::payload_len(data)?;
    let total = frame::head_len(second).checked_add(usize::try_from(len).ok()?)?;
    (total <= data.len()).then_some((total, len, first & 0x80 != 0, opcode))
}

/// A frame as a peer would send it, with a key of its own when `mask` (a mask taken from the
/// wrong header bytes shows); `payload` padded with `x` to `len`.
#[cfg(test)]
pub(crate) fn test_frame(first: u8, len: usize, mask: bool, payload: &[u8]) -> Vec<u8> {
    let m = if mask { 0x80 } else { 0 };
    let mut f = vec![first];
    match len {
        0..=125 => f.push(m | len as u8),
        126..=0xffff => {
            f.push(m | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(m | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    // A key of each frame's own: a mask taken from the wrong header bytes shows.
    let key = [first, len as u8, 0x33, 0x44];
    if mask {
        f.extend_from_slice(&key);
    }
    let body = (0..len).map(|i| {
        let b = payload.get(i).copied().unwrap_or(b'x');
        if mask {
            b ^ key[i % 4]
        } else {
            b
        }
    });
    f.extend(body);
    f
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::leg::Side;

    /// Whole frames in one read take the fast path, whole headers the parse-in-place one,
    /// headers split across reads the byte-by-byte one. All must end the same.
    #[test]
    fn frames_are_followed_the_same_however_the_reads_cut_them() {
        let mut stream = Vec::new();
        stream.extend(test_frame(0x81, 5, true, b"hello"));
        stream.extend(test_frame(0x82, 200, false, &[]));
        stream.extend(test_frame(0x01, 3, true, b"abc")); // a fragmented text message...
        stream.extend(test_frame(0x89, 0, true, &[])); // ...a ping between its fragments...
        stream.extend(test_frame(0x80, 70_000, true, &[])); // ...and its last fragment
        stream.extend(test_frame(0x82, 0, false, &[]));
        stream.extend(test_frame(0x88, 4, true, &[0x03, 0xe9, b'o', b'k']));
        let feed = |cuts: &mut dyn Iterator<Item = usize>| {
            let (mut frames, mut traffic) = (Frames::default(), Traffic::new(Side::Upstream));
            let (mut at, mut done) = (0, 0);
            while at < stream.len() {
                let n = cuts.next().unwrap_or(1).clamp(1, stream.len() - at);
                done += frames.feed(&stream[at..at + n], &mut Tally::Forwarded(&mut traffic));
                at += n;
            }
            (
                done,
                traffic.messages,
                traffic.bytes,
                frames.closed,
                frames.at_boundary(),
            )
        };
        let whole = feed(&mut std::iter::once(stream.len()));
        assert_eq!(whole, (4, 4, 5 + 200 + 70_003, Some(1001), true));
        assert_eq!(feed(&mut std::iter::repeat(1)), whole);
        assert_eq!(feed(&mut (1..=17).cycle()), whole);
        assert_eq!(feed(&mut [3, 1, 2, 7, 5].into_iter().cycle()), whole);
    }

    /// A message counts where its last byte went (forwarded or lost), and one whose end never
    /// came is cut, whichever frame or header its stream stopped in.
    #[test]
    fn messages_count_where_their_last_byte_went() {
        let hello = test_frame(0x81, 5, true, b"hello");
        let (first, last) = (
            test_frame(0x01, 3, true, b"abc"),
            test_frame(0x80, 3, true, b"def"),
        );
        let binary = test_frame(0x82, 4, true, b"wxyz");
        let stream = [hello.clone(), first.clone(), last, binary].concat();
        let mut frames = Frames::default();
        let (mut traffic, mut lost) = (Traffic::new(Side::Upstream), 0);
        // The greeting and the first fragment go, then two bytes of the next header.
        let sent = hello.len() + first.len() + 2;
        frames.feed(&stream[..sent], &mut Tally::Forwarded(&mut traffic));
        assert!(frames.mid_message());
        frames.feed(&stream[sent..], &mut Tally::Lost(&mut lost));
        assert_eq!((traffic.messages, traffic.bytes, lost), (1, 5, 2));
        assert!(!frames.mid_message());
        for cut in 1..stream.len() {
            let mut frames = Frames::default();
            frames.feed(&stream[..cut], &mut Tally::Held);
            let ends = [hello.len(), stream.len() - 10, stream.len()];
            let expected = !ends.contains(&cut);
            assert_eq!(frames.mid_message(), expected, "cut at {cut}");
        }
        // A ping between fragments neither ends nor starts a message.
        let mut frames = Frames::default();
        let ping = test_frame(0x89, 0, true, &[]);
        frames.feed(&[first, ping].concat(), &mut Tally::Held);
        assert!(frames.mid_message());
    }
}
