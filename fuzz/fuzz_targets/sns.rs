//! An SNS HTTPS message: envelope, signature (against the fixture certificate), inner event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sever::intake::fuzz;

/// The certificate the SNS seeds are signed for.
const CERT: &[u8] = include_bytes!("../fixtures/sns-signing-cert.pem");

fuzz_target!(|data: &[u8]| {
    let _ = fuzz::sns(data, CERT);
});
