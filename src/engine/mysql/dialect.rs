//! What differs between MariaDB and the MySQL generations, as pure
//! functions: which statements to send, and how to read `SHOW … STATUS`
//! rows whatever their column spelling. Everything here is unit-tested on
//! recorded server output, so the MySQL dialect is covered without a MySQL
//! server.

use std::collections::BTreeMap;

/// The server family and statement generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    /// MariaDB 10.5+: `SLAVE` statements, domain-server-seq GTIDs.
    MariaDb,
    /// MySQL 8.0.23 – 8.3: `REPLICA`/`SOURCE` statements (the old ones
    /// still exist but are deprecated).
    MySql80,
    /// MySQL 8.4+: the `SLAVE`/`MASTER` statements are gone.
    MySql84,
}

impl Flavor {
    /// Reads `SELECT @@version`.
    pub fn from_version(version: &str) -> Result<Flavor, String> {
        if version.to_ascii_lowercase().contains("mariadb") {
            let (major, minor, _) = numbers(version).ok_or_else(|| format!("cannot read the MariaDB version {version:?}"))?;
            if (major, minor) < (10, 5) {
                return Err(format!("MariaDB {version} is not supported (10.5 or later)"));
            }
            return Ok(Flavor::MariaDb);
        }
        let (major, minor, patch) = numbers(version).ok_or_else(|| format!("unknown server version {version:?}"))?;
        match (major, minor, patch) {
            (8, 0, p) if p >= 23 => Ok(Flavor::MySql80),
            (8, 1..=3, _) => Ok(Flavor::MySql80),
            (m, n, _) if (m, n) >= (8, 4) => Ok(Flavor::MySql84),
            _ => Err(format!("MySQL {version} is not supported (8.0.23 or later)")),
        }
    }

    pub fn is_mariadb(self) -> bool {
        self == Flavor::MariaDb
    }

    pub fn name(self) -> &'static str {
        match self {
            Flavor::MariaDb => "mariadb",
            Flavor::MySql80 => "mysql-8.0",
            Flavor::MySql84 => "mysql-8.4",
        }
    }

    pub fn replica_status(self) -> &'static str {
        match self {
            Flavor::MariaDb => "SHOW SLAVE STATUS",
            _ => "SHOW REPLICA STATUS",
        }
    }

    pub fn stop_replica(self) -> &'static str {
        match self {
            Flavor::MariaDb => "STOP SLAVE",
            _ => "STOP REPLICA",
        }
    }

    pub fn stop_io_thread(self) -> &'static str {
        match self {
            Flavor::MariaDb => "STOP SLAVE IO_THREAD",
            _ => "STOP REPLICA IO_THREAD",
        }
    }

    pub fn start_replica(self) -> &'static str {
        match self {
            Flavor::MariaDb => "START SLAVE",
            _ => "START REPLICA",
        }
    }

    pub fn reset_replica_all(self) -> &'static str {
        match self {
            Flavor::MariaDb => "RESET SLAVE ALL",
            _ => "RESET REPLICA ALL",
        }
    }

    /// Statements that make the server read-only (`on`) or writable.
    /// MySQL's `super_read_only` also stops administrative users.
    pub fn set_read_only(self, on: bool) -> Vec<&'static str> {
        match (self, on) {
            (Flavor::MariaDb, true) => vec!["SET GLOBAL read_only = ON"],
            (Flavor::MariaDb, false) => vec!["SET GLOBAL read_only = OFF"],
            (_, true) => vec!["SET GLOBAL super_read_only = ON"],
            (_, false) => vec!["SET GLOBAL super_read_only = OFF", "SET GLOBAL read_only = OFF"],
        }
    }

    /// Points replication at `host:port` with GTID auto-positioning.
    /// `demote`: this server wrote its own transactions (a former primary);
    /// MariaDB folds them into its replication position first.
    pub fn change_source(self, host: &str, port: u16, user: &str, password: &str, demote: bool) -> String {
        match self {
            Flavor::MariaDb => format!(
                "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {port}, MASTER_USER = {}, MASTER_PASSWORD = {}, \
                 MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, MASTER_HEARTBEAT_PERIOD = 1{}",
                sql_string(host),
                sql_string(user),
                sql_string(password),
                if demote { ", MASTER_DEMOTE_TO_SLAVE = 1" } else { "" }
            ),
            _ => format!(
                "CHANGE REPLICATION SOURCE TO SOURCE_HOST = {}, SOURCE_PORT = {port}, SOURCE_USER = {}, SOURCE_PASSWORD = {}, \
                 SOURCE_AUTO_POSITION = 1, SOURCE_CONNECT_RETRY = 1, SOURCE_HEARTBEAT_PERIOD = 1, GET_SOURCE_PUBLIC_KEY = 1",
                sql_string(host),
                sql_string(user),
                sql_string(password),
            ),
        }
    }

    /// Waits until the applier has executed `position`; the statement
    /// returns 0 when done and -1 (MariaDB) or 1 (MySQL) on timeout.
    pub fn wait_applied(self, position: &str, timeout_secs: f64) -> String {
        match self {
            Flavor::MariaDb => format!("SELECT MASTER_GTID_WAIT({}, {timeout_secs:.3})", sql_string(position)),
            _ => format!("SELECT WAIT_FOR_EXECUTED_GTID_SET({}, {timeout_secs:.3})", sql_string(position)),
        }
    }

    /// The variables one observation reads, in the order `Vars` expects.
    /// MariaDB's built-in semi-synchronous replication, as synchronous
    /// mode uses it on the primary: commits wait for a replica's
    /// acknowledgement after the binary log is synced (AFTER_SYNC, so no
    /// other session sees a commit before a replica has it), and never give
    /// up waiting (the longest timeout the server takes, about 49 days: no
    /// silent fallback to asynchronous commits). Off: asynchronous.
    pub fn semi_sync_primary(self, on: bool) -> Vec<String> {
        if on {
            vec![
                "SET GLOBAL rpl_semi_sync_master_wait_point = 'AFTER_SYNC'".into(),
                "SET GLOBAL rpl_semi_sync_master_timeout = 4294967295".into(),
                "SET GLOBAL rpl_semi_sync_master_wait_no_slave = ON".into(),
                "SET GLOBAL rpl_semi_sync_master_enabled = ON".into(),
            ]
        } else {
            vec!["SET GLOBAL rpl_semi_sync_master_enabled = OFF".into()]
        }
    }

    /// A replica's receiver reads `rpl_semi_sync_slave_enabled` when it
    /// connects: restart it after changing the setting.
    pub fn semi_sync_replica_restart(self) -> Vec<String> {
        vec!["STOP SLAVE IO_THREAD".into(), "START SLAVE IO_THREAD".into()]
    }

    pub fn observe_vars(self) -> &'static str {
        match self {
            Flavor::MariaDb => {
                "SELECT @@global.read_only, 0, @@server_id, @@version, @@global.gtid_binlog_pos, @@global.gtid_slave_pos, \
                 @@global.gtid_current_pos, @@global.gtid_binlog_state, '', @@global.rpl_semi_sync_master_enabled, \
                 @@global.rpl_semi_sync_slave_enabled"
            }
            _ => {
                "SELECT @@global.read_only, @@global.super_read_only, @@server_id, @@version, @@global.gtid_executed, \
                 @@global.gtid_executed, @@global.gtid_executed, @@global.gtid_executed, @@server_uuid, 0, 0"
            }
        }
    }
}

/// The leading numbers of a version string: `10.11.19-MariaDB-0+deb12u1` → (10, 11, 19).
fn numbers(version: &str) -> Option<(u32, u32, u32)> {
    let head: String = version.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let mut it = head.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next().flatten().unwrap_or(0)))
}

/// A SQL string literal. Our sessions run without NO_BACKSLASH_ESCAPES
/// (see `SESSION_SETUP`), so backslashes are escaped along with quotes.
pub fn sql_string(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    out.push('\'');
    for c in v.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            '\0' => out.push_str("\\0"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\x1a' => out.push_str("\\Z"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// A quoted identifier (database, table, user name part).
pub fn sql_ident(v: &str) -> String {
    format!("`{}`", v.replace('`', "``"))
}

/// Run first on every vigil session: backslash escapes mean what
/// `sql_string` assumes, whatever the server's sql_mode.
pub const SESSION_SETUP: &str = "SET SESSION sql_mode = REPLACE(@@session.sql_mode, 'NO_BACKSLASH_ESCAPES', '')";

/// One row of `SHOW SLAVE STATUS` / `SHOW REPLICA STATUS`, read by column
/// name so that MariaDB's `Slave_*`/`Master_*` and MySQL 8's
/// `Replica_*`/`Source_*` spellings both work.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaStatus {
    pub source_host: String,
    pub source_port: u16,
    /// `Yes`, `No`, `Connecting` or `Preparing`.
    pub io_running: String,
    pub sql_running: String,
    pub last_io_errno: u32,
    pub last_io_error: String,
    pub last_sql_errno: u32,
    pub last_sql_error: String,
    pub seconds_behind: Option<u64>,
    /// MariaDB `Gtid_IO_Pos` / MySQL `Retrieved_Gtid_Set`.
    pub received: String,
    /// MySQL `Executed_Gtid_Set` (MariaDB: `Gtid_Slave_Pos`).
    pub executed: String,
    /// MariaDB `Using_Gtid` (`Slave_Pos`, `Current_Pos`, `No`) / MySQL
    /// `Auto_Position` (`1` → `Auto_Position`).
    pub gtid_mode: String,
}

impl ReplicaStatus {
    pub fn from_columns(cols: &BTreeMap<String, Option<String>>) -> ReplicaStatus {
        let get = |names: &[&str]| -> String { names.iter().find_map(|n| cols.get(*n).cloned().flatten()).unwrap_or_default() };
        let num = |names: &[&str]| -> Option<u64> { get(names).trim().parse().ok() };
        ReplicaStatus {
            source_host: get(&["Master_Host", "Source_Host"]),
            source_port: num(&["Master_Port", "Source_Port"]).unwrap_or(0) as u16,
            io_running: get(&["Slave_IO_Running", "Replica_IO_Running"]),
            sql_running: get(&["Slave_SQL_Running", "Replica_SQL_Running"]),
            last_io_errno: num(&["Last_IO_Errno"]).unwrap_or(0) as u32,
            last_io_error: get(&["Last_IO_Error"]),
            last_sql_errno: num(&["Last_SQL_Errno"]).unwrap_or(0) as u32,
            last_sql_error: get(&["Last_SQL_Error"]),
            seconds_behind: num(&["Seconds_Behind_Master", "Seconds_Behind_Source"]),
            received: get(&["Gtid_IO_Pos", "Retrieved_Gtid_Set"]),
            executed: get(&["Gtid_Slave_Pos", "Executed_Gtid_Set"]),
            gtid_mode: match get(&["Using_Gtid"]) {
                s if !s.is_empty() => s,
                _ if get(&["Auto_Position"]) == "1" => "Auto_Position".into(),
                _ => "No".into(),
            },
        }
    }

    pub fn source(&self) -> String {
        format!("{}:{}", self.source_host, self.source_port)
    }

    /// The IO thread is connected and receiving.
    pub fn io_streaming(&self) -> bool {
        self.io_running == "Yes"
    }

    pub fn sql_running(&self) -> bool {
        self.sql_running == "Yes"
    }

    pub fn uses_gtid(&self) -> bool {
        matches!(self.gtid_mode.as_str(), "Slave_Pos" | "Current_Pos" | "Auto_Position")
    }

    /// The replication error, if a thread stopped with one.
    pub fn error(&self) -> Option<String> {
        if self.last_sql_errno != 0 {
            return Some(format!("SQL thread error {}: {}", self.last_sql_errno, self.last_sql_error));
        }
        if self.last_io_errno != 0 {
            return Some(format!("IO thread error {}: {}", self.last_io_errno, self.last_io_error));
        }
        None
    }
}

/// MariaDB's strict-mode stop: an out-of-order GTID, the mark of an
/// errant transaction on the replica.
pub const ER_GTID_STRICT_OUT_OF_ORDER: u32 = 1950;

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, &str)]) -> BTreeMap<String, Option<String>> {
        pairs.iter().map(|(k, v)| (k.to_string(), if *v == "NULL" { None } else { Some(v.to_string()) })).collect()
    }

    #[test]
    fn versions_pick_the_dialect() {
        assert_eq!(Flavor::from_version("10.11.19-MariaDB-0+deb12u1-log"), Ok(Flavor::MariaDb));
        assert_eq!(Flavor::from_version("8.0.36"), Ok(Flavor::MySql80));
        assert_eq!(Flavor::from_version("8.0.23-commercial"), Ok(Flavor::MySql80));
        assert_eq!(Flavor::from_version("8.3.0"), Ok(Flavor::MySql80));
        assert_eq!(Flavor::from_version("8.4.3"), Ok(Flavor::MySql84));
        assert_eq!(Flavor::from_version("9.1.0"), Ok(Flavor::MySql84));
        assert!(Flavor::from_version("8.0.22").unwrap_err().contains("8.0.23 or later"));
        assert!(Flavor::from_version("5.7.44-log").unwrap_err().contains("not supported"));
        assert!(Flavor::from_version("10.4.32-MariaDB").unwrap_err().contains("10.5 or later"));
        assert!(Flavor::from_version("garbage").unwrap_err().contains("unknown server version"));
    }

    #[test]
    fn mysql_84_never_gets_removed_statements() {
        let f = Flavor::MySql84;
        let all = [f.replica_status(), f.stop_replica(), f.start_replica(), f.reset_replica_all(), f.stop_io_thread()].join(";")
            + &f.change_source("db2", 3306, "repl", "pw", true);
        for removed in ["SLAVE", "MASTER"] {
            assert!(!all.contains(removed), "{all}");
        }
        assert!(all.contains("SOURCE_AUTO_POSITION = 1"));
        assert_eq!(f.set_read_only(true), vec!["SET GLOBAL super_read_only = ON"]);
        assert_eq!(f.wait_applied("uuid:1-5", 2.0), "SELECT WAIT_FOR_EXECUTED_GTID_SET('uuid:1-5', 2.000)");
    }

    #[test]
    fn mariadb_statements() {
        let f = Flavor::MariaDb;
        let s = f.change_source("127.0.0.1", 25511, "repl", "pw", true);
        assert_eq!(
            s,
            "CHANGE MASTER TO MASTER_HOST = '127.0.0.1', MASTER_PORT = 25511, MASTER_USER = 'repl', MASTER_PASSWORD = 'pw', \
             MASTER_USE_GTID = slave_pos, MASTER_CONNECT_RETRY = 1, MASTER_HEARTBEAT_PERIOD = 1, MASTER_DEMOTE_TO_SLAVE = 1"
        );
        assert!(!f.change_source("h", 1, "u", "p", false).contains("DEMOTE"));
        assert_eq!(f.wait_applied("0-1-42", 1.5), "SELECT MASTER_GTID_WAIT('0-1-42', 1.500)");
    }

    #[test]
    fn hosts_users_and_passwords_are_quoted() {
        let s = Flavor::MySql80.change_source("db'; DROP TABLE x; --", 3306, "re\\pl", "p'w\n", false);
        assert!(s.contains("SOURCE_HOST = 'db''; DROP TABLE x; --'"), "{s}");
        assert!(s.contains("SOURCE_USER = 're\\\\pl'"), "{s}");
        assert!(s.contains("SOURCE_PASSWORD = 'p''w\\n'"), "{s}");
        assert_eq!(sql_ident("we`ird"), "`we``ird`");
    }

    /// Recorded from MariaDB 10.11.19 (`SHOW SLAVE STATUS`, abridged).
    #[test]
    fn mariadb_status_row() {
        let st = ReplicaStatus::from_columns(&row(&[
            ("Master_Host", "127.0.0.1"),
            ("Master_Port", "25510"),
            ("Slave_IO_Running", "Yes"),
            ("Slave_SQL_Running", "No"),
            ("Last_SQL_Errno", "1950"),
            ("Last_SQL_Error", "An attempt was made to binlog GTID 0-1-12 which would create an out-of-order sequence number"),
            ("Last_IO_Errno", "0"),
            ("Last_IO_Error", ""),
            ("Seconds_Behind_Master", "NULL"),
            ("Using_Gtid", "Slave_Pos"),
            ("Gtid_IO_Pos", "0-1-14"),
            ("Gtid_Slave_Pos", "0-1-11"),
        ]));
        assert_eq!(st.source(), "127.0.0.1:25510");
        assert!(st.io_streaming() && !st.sql_running() && st.uses_gtid());
        assert_eq!(st.seconds_behind, None);
        assert_eq!(st.received, "0-1-14");
        assert!(st.error().unwrap().starts_with("SQL thread error 1950"));
        assert_eq!(st.last_sql_errno, ER_GTID_STRICT_OUT_OF_ORDER);
    }

    /// Recorded from MySQL 8.0.36 and 8.4.3 (`SHOW REPLICA STATUS`, abridged).
    #[test]
    fn mysql_status_row() {
        let st = ReplicaStatus::from_columns(&row(&[
            ("Replica_IO_State", "Waiting for source to send event"),
            ("Source_Host", "db1.example"),
            ("Source_Port", "3306"),
            ("Replica_IO_Running", "Yes"),
            ("Replica_SQL_Running", "Yes"),
            ("Last_IO_Errno", "0"),
            ("Last_SQL_Errno", "0"),
            ("Seconds_Behind_Source", "3"),
            ("Retrieved_Gtid_Set", "3e11fa47-71ca-11e1-9e33-c80aa9429562:6-10"),
            ("Executed_Gtid_Set", "3e11fa47-71ca-11e1-9e33-c80aa9429562:1-9,\nb9b4712a-df64-11e3-b391-60672090eb04:1-2"),
            ("Auto_Position", "1"),
        ]));
        assert_eq!(st.source(), "db1.example:3306");
        assert!(st.io_streaming() && st.sql_running() && st.uses_gtid());
        assert_eq!(st.seconds_behind, Some(3));
        assert_eq!(st.error(), None);
        let executed = crate::gtid::GtidSet::parse(&st.executed).unwrap();
        assert_eq!(executed.count(), 11);
        // A replica set up by file and position (no auto-positioning).
        let old = ReplicaStatus::from_columns(&row(&[("Auto_Position", "0"), ("Replica_IO_Running", "Connecting")]));
        assert!(!old.uses_gtid() && !old.io_streaming());
    }
}
