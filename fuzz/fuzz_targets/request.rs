//! The request checks before any dial: path normalisation (dot-segments, `%2e`, `\`), `Host`
//! rules and the body check. Input: the request target, a newline, then `name: value` lines.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|b| *b == b'\n');
    let target = lines.next().unwrap_or_default();
    let headers: Vec<(&[u8], &[u8])> = lines
        .filter_map(|l| {
            let colon = l.iter().position(|b| *b == b':')?;
            Some((&l[..colon], l[colon + 1..].trim_ascii()))
        })
        .collect();
    axum_ws_proxy::__fuzz::request(target, &headers);
});
