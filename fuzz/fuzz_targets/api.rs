//! What an API client sends: the first byte chooses the endpoint's body
//! (switchover, failover, failsafe) or a query string (`/replica?...`),
//! the rest is the body or the query. Every input is a typed value whose
//! names pass the name check, or an error message.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use vigil::api::input;
use vigil::dcs::decode::valid_name;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 4 {
        0 => {
            if let Ok(b) = input::switchover(rest) {
                assert!(b.leader.iter().chain(b.candidate.iter()).all(|n| valid_name(n)));
            }
        }
        1 => {
            if let Ok(b) = input::failover(rest) {
                assert!(valid_name(&b.candidate));
            }
        }
        2 => {
            if let Ok(b) = input::failsafe(rest) {
                assert!(valid_name(&b.leader));
            }
        }
        _ => {
            let Ok(q) = std::str::from_utf8(rest) else { return };
            let Ok(uri) = format!("/replica?{q}").parse::<axum::http::Uri>() else { return };
            if let Ok(axum::extract::Query(params)) = axum::extract::Query::<HashMap<String, String>>::try_from_uri(&uri) {
                let _ = input::lag_limit(&params);
            }
        }
    }
});
