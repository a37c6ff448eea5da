//! Replies from a Redis server (RESP bulk strings, errors, INFO text) as
//! the session-sync check reads them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vigil::sync::redis::parse_bulk(data);
});
