//! The request-head bound: a head's measured size against the bytes sent.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    axum_ws_proxy::__fuzz::head_size(data);
});
