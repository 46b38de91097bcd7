//! Raw DEFLATE (RFC 1951) through C zlib, the codec permessage-deflate is specified with.
//!
//! zlib, not a Rust port, because of memory: a compressor that keeps its context between
//! messages (context takeover) costs what zlib's `memLevel` and window make it, so a small one
//! (window 2^10, `memLevel` 1) holds about 11 KiB once warm, where zlib-rs and miniz_oxide keep
//! a fixed 128 KiB hash table or more whatever the settings (measured: `BENCHMARKS.md`).
//!
//! This is the one file with `unsafe` code: the calls into zlib. Each keeps to zlib's contract:
//! a stream is initialised once and never moved (it is boxed: zlib keeps a pointer to it), its
//! input and output pointers point into live slices only for the length of one call, and
//! `*End` frees it once, on drop.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_uint, c_void};
use std::fmt;

use libz_sys as z;

/// zlib could not be set up (out of memory), or the data is not valid DEFLATE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CodecError {
    /// The stream could not be made.
    Setup,
    /// The compressed data is not valid.
    Data,
}

impl fmt::Display for CodecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CodecError::Setup => "compression could not be set up",
            CodecError::Data => "invalid compressed data",
        })
    }
}

/// zlib's memory comes from `malloc` and goes back with `free`, as its own defaults do.
unsafe extern "C" fn zalloc(_: *mut c_void, items: c_uint, size: c_uint) -> *mut c_void {
    match (items as usize).checked_mul(size as usize) {
        // SAFETY: `malloc` with any size is sound; null is handled by zlib as out of memory.
        Some(bytes) => unsafe { libc::malloc(bytes) },
        None => std::ptr::null_mut(),
    }
}

unsafe extern "C" fn zfree(_: *mut c_void, address: *mut c_void) {
    // SAFETY: zlib frees only what `zalloc` gave it.
    unsafe { libc::free(address) }
}

/// A stream before zlib initialises it.
fn blank() -> Box<z::z_stream> {
    Box::new(z::z_stream {
        next_in: std::ptr::null_mut(),
        avail_in: 0,
        total_in: 0,
        next_out: std::ptr::null_mut(),
        avail_out: 0,
        total_out: 0,
        msg: std::ptr::null_mut(),
        state: std::ptr::null_mut(),
        zalloc,
        zfree,
        opaque: std::ptr::null_mut(),
        data_type: 0,
        adler: 0,
        reserved: 0,
    })
}

const STREAM_SIZE: c_int = std::mem::size_of::<z::z_stream>() as c_int;

/// zlib cannot compress with a 256-byte window (it uses 512 bytes, which a peer that asked for
/// 8 bits cannot read), and inflates a window of 8 bits with 9: 9 is the least either takes.
fn usable(window_bits: u8) -> c_int {
    c_int::from(window_bits.clamp(9, 15))
}

/// Decompresses one leg's messages.
pub(crate) struct Inflater {
    stream: Box<z::z_stream>,
}

// SAFETY: the stream is owned by this value and used by one thread at a time (`&mut self`).
unsafe impl Send for Inflater {}

impl Inflater {
    /// A raw inflater with a window of 2^`window_bits` bytes (9 to 15; 8 is taken as 9).
    pub(crate) fn new(window_bits: u8) -> Result<Self, CodecError> {
        let mut stream = blank();
        // SAFETY: a blank stream with allocation functions; negative bits: raw DEFLATE.
        let ret = unsafe {
            z::inflateInit2_(
                &mut *stream,
                -usable(window_bits),
                z::zlibVersion(),
                STREAM_SIZE,
            )
        };
        if ret != z::Z_OK {
            return Err(CodecError::Setup);
        }
        Ok(Self { stream })
    }

    /// Inflates what it can of `input` into `out`: how many bytes of each it used.
    pub(crate) fn inflate(
        &mut self,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), CodecError> {
        let s = &mut *self.stream;
        s.next_in = input.as_ptr().cast_mut();
        s.avail_in = c_uint::try_from(input.len()).unwrap_or(c_uint::MAX);
        s.next_out = out.as_mut_ptr();
        s.avail_out = c_uint::try_from(out.len()).unwrap_or(c_uint::MAX);
        let (avail_in, avail_out) = (s.avail_in, s.avail_out);
        // SAFETY: the pointers are into `input` and `out`, valid for the lengths given, for this
        // call; zlib reads only `next_in` and writes only `next_out`.
        let ret = unsafe { z::inflate(s, z::Z_SYNC_FLUSH) };
        let used = (avail_in - s.avail_in) as usize;
        let made = (avail_out - s.avail_out) as usize;
        s.next_in = std::ptr::null_mut();
        s.next_out = std::ptr::null_mut();
        match ret {
            // A raw stream that says it ended (a final block) is fine: nothing may follow in
            // the message, and the next message starts a new block anyway.
            z::Z_OK | z::Z_BUF_ERROR | z::Z_STREAM_END => Ok((used, made)),
            _ => Err(CodecError::Data),
        }
    }

    /// Forgets the context: the next message starts with an empty window.
    pub(crate) fn reset(&mut self) {
        // SAFETY: the stream was initialised by `inflateInit2_`.
        unsafe { z::inflateReset(&mut *self.stream) };
    }
}

impl Drop for Inflater {
    fn drop(&mut self) {
        // SAFETY: initialised once, ended once.
        unsafe { z::inflateEnd(&mut *self.stream) };
    }
}

/// Compresses messages for one leg.
pub(crate) struct Deflater {
    stream: Box<z::z_stream>,
}

// SAFETY: as for `Inflater`.
unsafe impl Send for Deflater {}

/// The trailer a sync flush ends with, which permessage-deflate leaves off (RFC 7692 7.2.1).
pub(crate) const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

impl Deflater {
    /// A raw deflater at `level` (1-9) with a window of 2^`window_bits` (9 to 15) and
    /// `mem_level` (1-9: zlib's hash table and block buffer, 2^(m+7) and 2^(m+6) entries).
    pub(crate) fn new(level: u8, window_bits: u8, mem_level: u8) -> Result<Self, CodecError> {
        let mut stream = blank();
        // SAFETY: a blank stream with allocation functions; negative bits: raw DEFLATE.
        let ret = unsafe {
            z::deflateInit2_(
                &mut *stream,
                c_int::from(level.clamp(1, 9)),
                z::Z_DEFLATED,
                -usable(window_bits),
                c_int::from(mem_level.clamp(1, 9)),
                z::Z_DEFAULT_STRATEGY,
                z::zlibVersion(),
                STREAM_SIZE,
            )
        };
        if ret != z::Z_OK {
            return Err(CodecError::Setup);
        }
        Ok(Self { stream })
    }

    /// Compresses all of `input`, appending to `out`; with `end`, the message ends: what zlib
    /// holds is flushed, and the flush's trailer left off.
    pub(crate) fn compress(
        &mut self,
        input: &[u8],
        end: bool,
        out: &mut Vec<u8>,
    ) -> Result<(), CodecError> {
        let flush = if end { z::Z_SYNC_FLUSH } else { z::Z_NO_FLUSH };
        let mut rest = input;
        loop {
            // Room for what zlib may hand out now: compressed data is rarely larger than its
            // input, plus block headers; the loop takes more rounds if it is.
            out.reserve(rest.len() + 64);
            let s = &mut *self.stream;
            let spare = out.spare_capacity_mut();
            s.next_in = rest.as_ptr().cast_mut();
            s.avail_in = c_uint::try_from(rest.len()).unwrap_or(c_uint::MAX);
            s.next_out = spare.as_mut_ptr().cast();
            s.avail_out = c_uint::try_from(spare.len()).unwrap_or(c_uint::MAX);
            let (avail_in, avail_out) = (s.avail_in, s.avail_out);
            // SAFETY: `next_in` points into `rest`, `next_out` into the vector's spare capacity,
            // each valid for the length given, for this call.
            let ret = unsafe { z::deflate(s, flush) };
            let used = (avail_in - s.avail_in) as usize;
            let made = (avail_out - s.avail_out) as usize;
            let room_left = s.avail_out > 0;
            s.next_in = std::ptr::null_mut();
            s.next_out = std::ptr::null_mut();
            if ret != z::Z_OK && ret != z::Z_BUF_ERROR {
                return Err(CodecError::Data);
            }
            // SAFETY: zlib wrote `made` bytes at the start of the spare capacity.
            unsafe { out.set_len(out.len() + made) };
            rest = &rest[used..];
            // Done once the input is in and zlib stopped short of the room it had (a flush
            // that filled the room may have more to give).
            if rest.is_empty() && room_left {
                break;
            }
        }
        if end && out.ends_with(&TAIL) {
            out.truncate(out.len() - TAIL.len());
        }
        Ok(())
    }

    /// Forgets the context: the next message is compressed as if it were the first.
    pub(crate) fn reset(&mut self) {
        // SAFETY: the stream was initialised by `deflateInit2_`.
        unsafe { z::deflateReset(&mut *self.stream) };
    }
}

impl Drop for Deflater {
    fn drop(&mut self) {
        // SAFETY: initialised once, ended once.
        unsafe { z::deflateEnd(&mut *self.stream) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A message compressed as permessage-deflate sends it, inflated as it receives it.
    fn round_trip(d: &mut Deflater, i: &mut Inflater, message: &[u8]) -> (Vec<u8>, usize) {
        let mut wire = Vec::new();
        for piece in message.chunks(1000) {
            d.compress(piece, false, &mut wire).unwrap();
        }
        d.compress(&[], true, &mut wire).unwrap();
        let size = wire.len();
        wire.extend_from_slice(&TAIL);
        let mut plain = Vec::new();
        let mut at = 0;
        let mut out = [0u8; 700];
        loop {
            let (used, made) = i.inflate(&wire[at..], &mut out).unwrap();
            at += used;
            plain.extend_from_slice(&out[..made]);
            if at == wire.len() && made < out.len() {
                break;
            }
        }
        (plain, size)
    }

    #[test]
    fn messages_round_trip_with_and_without_context() {
        let chat = br#"{"type":"chat","room":"general","text":"hello, hello everyone"}"#;
        let big: Vec<u8> = (0..200_000u32)
            .map(|i| (i % 251) as u8 ^ (i / 977) as u8)
            .collect();
        for (bits, mem) in [(15, 8), (12, 4), (10, 1), (9, 1), (8, 1)] {
            let mut d = Deflater::new(6, bits, mem).unwrap();
            let mut i = Inflater::new(bits).unwrap();
            let (first, first_size) = round_trip(&mut d, &mut i, chat);
            assert_eq!(first, chat);
            // With the context kept, the same message again costs a few bytes.
            let (again, again_size) = round_trip(&mut d, &mut i, chat);
            assert_eq!(again, chat);
            assert!(
                again_size * 3 < first_size,
                "{bits}/{mem}: {again_size} vs {first_size}"
            );
            assert_eq!(round_trip(&mut d, &mut i, &big).0, big);
            assert_eq!(round_trip(&mut d, &mut i, b"").0, b"");
            // Reset on both sides: as without context takeover.
            d.reset();
            i.reset();
            let (fresh, fresh_size) = round_trip(&mut d, &mut i, chat);
            assert_eq!((fresh, fresh_size), (chat.to_vec(), first_size));
        }
    }

    #[test]
    fn invalid_data_is_an_error_not_a_panic() {
        let mut i = Inflater::new(15).unwrap();
        let mut out = [0u8; 64];
        // Block type 3 is reserved.
        assert_eq!(
            i.inflate(&[0xff, 0xff, 0xff], &mut out),
            Err(CodecError::Data)
        );
        // A message that reaches back into a context the inflater does not have (a peer that
        // agreed to no context takeover and kept it anyway).
        let mut d = Deflater::new(6, 15, 8).unwrap();
        let mut wire = Vec::new();
        d.compress(b"abcdefghijabcdefghij", true, &mut wire)
            .unwrap();
        let mut second = Vec::new();
        d.compress(b"abcdefghijabcdefghij", true, &mut second)
            .unwrap();
        second.extend_from_slice(&TAIL);
        let mut fresh = Inflater::new(15).unwrap();
        assert_eq!(fresh.inflate(&second, &mut out), Err(CodecError::Data));
    }
}
