//! GTID text as MySQL and MariaDB print it (`gtid_executed`,
//! `gtid_current_pos`, `gtid_binlog_state`): what parses prints back to
//! the same value, and set arithmetic on it does not panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::gtid::{mariadb_errant, BinlogState, GtidList, GtidSet};

fuzz_target!(|data: &[u8]| {
    let Ok(t) = std::str::from_utf8(data) else { return };
    if let Ok(s) = GtidSet::parse(t) {
        let again = GtidSet::parse(&s.to_string()).expect("a printed set parses");
        assert_eq!(again, s, "parse . format is the identity");
        let _ = s.subtract(&again).union(&s).count();
        assert!(s.is_subset(&s));
    }
    if let Ok(l) = GtidList::parse(t) {
        assert_eq!(GtidList::parse(&l.to_string()).expect("a printed list parses"), l);
        let _ = (l.total(), l.behind(&l));
        assert!(l.contains(&l));
    }
    if let Ok(b) = BinlogState::parse(t) {
        let _ = mariadb_errant(&b, 1, &b);
    }
});
