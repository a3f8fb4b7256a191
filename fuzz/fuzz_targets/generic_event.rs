//! The generic rotation event (`POST /v1/events` body), parsed and planned.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sever::intake::fuzz;

fuzz_target!(|data: &[u8]| {
    let _ = fuzz::generic_event(data);
});
