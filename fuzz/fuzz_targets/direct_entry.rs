//! The server's own upgrade entry against hyper's parser: the same decision on the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, head)) = data.split_first() else {
        return;
    };
    axum_ws_proxy::__fuzz::direct_entry(head, usize::from(cut) * 8);
});
