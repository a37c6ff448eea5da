//! A MySQL or MariaDB replica status row and server version string: each
//! input line is the value of the next column (cycling through the columns
//! vigil reads), the whole input is also tried as `SELECT VERSION()`.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeMap;
use vigil::engine::mysql::dialect::{Flavor, ReplicaStatus};

const COLUMNS: [&str; 6] = ["Master_Port", "Seconds_Behind_Master", "Last_SQL_Errno", "Gtid_IO_Pos", "Using_Gtid", "Auto_Position"];

fuzz_target!(|data: &[u8]| {
    let t = String::from_utf8_lossy(data);
    let mut cols = BTreeMap::new();
    for (i, part) in t.split('\n').enumerate() {
        let value = (part != "NULL").then(|| part.to_string());
        cols.insert(COLUMNS[i % COLUMNS.len()].to_string(), value);
    }
    let st = ReplicaStatus::from_columns(&cols);
    let _ = (st.error(), st.source(), Flavor::from_version(&t));
});
