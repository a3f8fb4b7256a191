//! The rotation Lambda hook's body (`POST /v1/events/aws`).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sever::intake::fuzz;

fuzz_target!(|data: &[u8]| {
    let _ = fuzz::aws_hook(data);
});
