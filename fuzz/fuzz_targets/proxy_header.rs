//! The PROXY protocol v1/v2 header parser at the start of a connection.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    axum_ws_proxy::__fuzz::proxy_header(data);
});
