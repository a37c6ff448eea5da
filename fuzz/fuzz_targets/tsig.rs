//! The TSIG key file (BIND's `key "name" { algorithm ...; secret "..."; };`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else { return };
    let _ = vigil::publish::dns::TsigKey::parse(t);
});
