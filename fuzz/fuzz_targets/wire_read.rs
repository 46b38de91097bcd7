//! The wire's read-ahead. Input: one byte giving where the plan ends, the plan (what the
//! socket returns per read, and the read sizes asked for), then the bytes on the socket.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let (plan, bytes) = rest.split_at(usize::from(n).min(rest.len()));
    axum_ws_proxy::__fuzz::wire_read(bytes, plan);
});
