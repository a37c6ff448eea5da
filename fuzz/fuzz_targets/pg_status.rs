//! What PostgreSQL and its tools print and vigil reads: pg_controldata's
//! output, timeline history files, LSNs, and the `primary_conninfo` read
//! back from the server.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::engine::postgres::{conninfo_target, ControlData};
use vigil::position::{parse_timeline_history, Lsn};

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else { return };
    if let Ok(c) = ControlData::parse(t) {
        let _ = c.was_primary();
    }
    let _ = parse_timeline_history(t);
    if let Ok(l) = Lsn::parse(t) {
        assert_eq!(Lsn::parse(&l.to_string()), Ok(l), "parse . format is the identity");
    }
    let _ = conninfo_target(t);
});
