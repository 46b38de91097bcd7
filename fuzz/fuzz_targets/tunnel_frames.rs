//! The tunnel's frame-header tracking. Input: one byte giving where the cut plan ends, the cut
//! plan (piece sizes; odd ones pass data payloads unread), then the byte stream.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (cuts, stream) = rest.split_at(usize::from(n).min(rest.len()));
    axum_ws_proxy::__fuzz::tunnel_frames(stream, cuts);
});
