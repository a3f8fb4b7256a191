//! Standard Webhooks verification of a raw request (headers, blank line, body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sever::intake::fuzz;

fuzz_target!(|data: &[u8]| {
    let _ = fuzz::webhook(data);
});
