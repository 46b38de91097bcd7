//! The streaming frame bridge's parser. Input: a byte choosing the direction (odd: from the
//! client), a byte giving where the cut plan ends, the cut plan, then the leg's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let [dir, n, rest @ ..] = data else {
        return;
    };
    let (cuts, stream) = rest.split_at(usize::from(*n).min(rest.len()));
    axum_ws_proxy::__fuzz::stream_walk(stream, cuts, dir % 2 == 1);
});
