//! A Vault event notification's CloudEvents envelope (`POST /v1/events/vault` body).
#![no_main]

use libfuzzer_sys::fuzz_target;
use sever::intake::fuzz;

fuzz_target!(|data: &[u8]| {
    let _ = fuzz::vault_event(data);
});
