//! An EventBridge event, as an API destination or SNS delivers it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sever::intake::fuzz;

fuzz_target!(|data: &[u8]| {
    let _ = fuzz::eventbridge(data);
});
