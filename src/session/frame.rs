//! The WebSocket frame format (RFC 6455 section 5.2) as both modes read and write it: a
//! header's length and payload length, writing one, and masking.

/// A frame header: `first` is FIN, RSV and opcode; the length in its shortest form; the mask
/// bit and key when `mask` is given. Returns the bytes and how many of them are used.
pub(crate) fn frame_head(first: u8, len: usize, mask: Option<[u8; 4]>) -> ([u8; 14], usize) {
    let mut head = [0u8; 14];
    head[0] = first;
    let mut used = if len < 126 {
        head[1] = len as u8;
        2
    } else if let Ok(short) = u16::try_from(len) {
        head[1] = 126;
        head[2..4].copy_from_slice(&short.to_be_bytes());
        4
    } else {
        head[1] = 127;
        head[2..10].copy_from_slice(&(len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        head[1] |= 0x80;
        head[used..used + 4].copy_from_slice(&key);
        used += 4;
    }
    (head, used)
}

/// Largest control frame the proxy writes: a short header, a mask key, 125 bytes of payload.
pub(crate) const MAX_CONTROL_FRAME: usize = 2 + 4 + 125;

/// A whole control frame (`opcode` 0x8 close, 0x9 ping, 0xA pong) carrying `payload` (at most
/// 125 bytes; longer is cut), masked with a fresh key when `mask` (toward the upstream, where
/// the proxy is the client). Returns the bytes and how many of them are used.
pub(crate) fn control_frame(
    opcode: u8,
    payload: &[u8],
    mask: bool,
) -> ([u8; MAX_CONTROL_FRAME], usize) {
    let payload = &payload[..payload.len().min(125)];
    let key = mask.then(rand::random::<[u8; 4]>);
    let (head, head_len) = frame_head(0x80 | opcode, payload.len(), key);
    let mut frame = [0u8; MAX_CONTROL_FRAME];
    frame[..head_len].copy_from_slice(&head[..head_len]);
    let end = head_len + payload.len();
    frame[head_len..end].copy_from_slice(payload);
    if let Some(key) = key {
        apply_mask(&mut frame[head_len..end], key);
    }
    (frame, end)
}

/// A whole control frame's payload (at most 125 bytes; its header was checked), unmasked, in a
/// copy.
pub(crate) fn control_payload(frame: &[u8]) -> ([u8; 125], usize) {
    let start = head_len(frame[1]);
    let mut payload = [0u8; 125];
    let len = (frame.len() - start).min(125);
    payload[..len].copy_from_slice(&frame[start..start + len]);
    if frame[1] & 0x80 != 0 {
        let k = &frame[start - 4..start];
        apply_mask(&mut payload[..len], [k[0], k[1], k[2], k[3]]);
    }
    (payload, len)
}

/// A close frame's payload: the code, big-endian, then the reason (at most 123 bytes: the
/// caller cuts it on a character boundary); empty for a close without a code.
pub(crate) fn close_payload(code_and_reason: Option<(u16, &str)>) -> ([u8; 125], usize) {
    let mut payload = [0u8; 125];
    let Some((code, reason)) = code_and_reason else {
        return (payload, 0);
    };
    debug_assert!(
        reason.len() <= 123,
        "a close reason longer than a control frame"
    );
    let reason = &reason.as_bytes()[..reason.len().min(123)];
    payload[..2].copy_from_slice(&code.to_be_bytes());
    payload[2..2 + reason.len()].copy_from_slice(reason);
    (payload, 2 + reason.len())
}

/// A frame header's length from its second byte (length form and mask bit).
pub(crate) fn head_len(second: u8) -> usize {
    let ext = match second & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    2 + ext + if second & 0x80 != 0 { 4 } else { 0 }
}

/// A frame's payload length from its header's first bytes; `None` while the extended length
/// is not all there.
pub(crate) fn payload_len(head: &[u8]) -> Option<u64> {
    Some(match *head.get(1)? & 0x7f {
        126 => u64::from(u16::from_be_bytes(head.get(2..4)?.try_into().ok()?)),
        127 => u64::from_be_bytes(head.get(2..10)?.try_into().ok()?),
        n => u64::from(n),
    })
}

/// A frame's mask key as it applies from `offset` bytes into the payload (for a piece that
/// starts there, to be masked with [`apply_mask`]).
pub(crate) fn key_at(key: [u8; 4], offset: u64) -> [u8; 4] {
    let phase = (offset % 4) as usize;
    [
        key[phase],
        key[(phase + 1) % 4],
        key[(phase + 2) % 4],
        key[(phase + 3) % 4],
    ]
}

/// XORs `data` with the repeating 4-byte `key` (RFC 6455 section 5.3).
pub(crate) fn apply_mask(data: &mut [u8], key: [u8; 4]) {
    let wide = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(word) ^ wide).to_ne_bytes());
    }
    // The remainder starts at a multiple of 8, so the key's phase is 0 again.
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= key[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_frames_are_framed_and_masked() {
        let (frame, len) = control_frame(0x9, b"hi", false);
        assert_eq!(&frame[..len], &[0x89, 2, b'h', b'i']);
        let (mut frame, len) = control_frame(0xA, b"hi", true);
        assert_eq!((frame[0], frame[1], len), (0x8A, 0x82, 8));
        let (payload, plen) = control_payload(&frame[..len]);
        assert_eq!(&payload[..plen], b"hi", "read back, unmasked");
        let key = [frame[2], frame[3], frame[4], frame[5]];
        apply_mask(&mut frame[6..8], key);
        assert_eq!(&frame[6..8], b"hi");
        let (payload, len) = close_payload(Some((1001, "bye")));
        assert_eq!(&payload[..len], b"\x03\xe9bye");
        assert_eq!(close_payload(None).1, 0);
    }

    #[test]
    fn mask_matches_the_bytewise_definition() {
        let key = [0x12, 0x34, 0x56, 0x78];
        for len in [0, 1, 3, 7, 8, 9, 15, 16, 17, 100] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 7) as u8).collect();
            let mut fast = plain.clone();
            apply_mask(&mut fast, key);
            let slow: Vec<u8> = plain
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ key[i % 4])
                .collect();
            assert_eq!(fast, slow, "len {len}");
        }
    }
}
