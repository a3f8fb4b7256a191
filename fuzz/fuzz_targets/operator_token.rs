//! An operator API `Authorization` header value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sever::intake::fuzz;

fuzz_target!(|data: &[u8]| {
    let _ = fuzz::operator(data);
});
