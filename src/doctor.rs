//! `vigil doctor`: what would make a failover fail when it is needed,
//! checked now. Every finding has a severity, the node it concerns, and
//! what to do; the exit status is 0 (all ok), 1 (warnings) or 2
//! (something critical).

use crate::config::Config;
use crate::dcs::{now_ms, Dcs, EtcdDcs};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: String,
    pub node: Option<String>,
    pub level: Level,
    pub message: String,
}

fn f(check: &str, node: Option<&str>, level: Level, message: impl Into<String>) -> Finding {
    Finding { check: check.into(), node: node.map(str::to_string), level, message: message.into() }
}

/// When the last drill ran, as `vigil drill` records it in etcd.
pub const DRILL_KEY: &str = "drills/last";

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct DrillRecord {
    pub at_ms: u64,
    pub scenarios: Vec<String>,
    pub missed: usize,
}

pub async fn run(cfg: &Config, dcs: &EtcdDcs) -> Vec<Finding> {
    let mut out = vec![];
    let cluster = match dcs.load().await {
        Ok(c) => {
            out.push(f("etcd", None, Level::Ok, format!("reachable at {}", cfg.etcd.endpoints.join(", "))));
            c
        }
        Err(e) => {
            out.push(f("etcd", None, Level::Critical, format!("unreachable: {e:#}; no failover can happen without it")));
            return out;
        }
    };
    match &cluster.leader {
        Some(l) => out.push(f("leader", Some(&l.node), Level::Ok, format!("leads in term {}", cluster.term.unwrap_or(0)))),
        None => out.push(f("leader", None, Level::Critical, "no leader: see runbooks/no-leader.md")),
    }
    let members = cluster.members.len();
    let mut server_ids: Vec<(String, u32)> = vec![];
    for m in cluster.members.values() {
        match cfg.engine {
            crate::config::EngineKind::Postgres => out.extend(check_database(cfg, &m.node, &m.db_host, m.db_port, members).await),
            _ => {
                let (findings, id) = check_mysql(cfg, &m.node, &m.db_host, m.db_port, cfg.timing.ttl).await;
                out.extend(findings);
                server_ids.extend(id.map(|id| (m.node.clone(), id)));
            }
        }
        out.push(check_clock(cfg, &m.node, &m.api_url).await);
    }
    out.extend(duplicate_server_ids(&server_ids));
    for node in crate::cli::status::drifted(&cluster) {
        out.push(f("config", Some(&node), Level::Warning, "shared configuration differs from the leader's (vigil status shows DRIFT)"));
    }
    if let Some(d) = &cfg.dns {
        if d.ttl > Duration::from_secs(60) {
            out.push(f(
                "dns",
                None,
                Level::Warning,
                format!("TTL {}s: clients keep the old primary that long after a failover", d.ttl.as_secs()),
            ));
        }
        let t = crate::publish::dns::DnsTarget::from_config(d);
        match t.lookup().await {
            Ok(Some((addr, ttl))) if ttl > 60 => {
                out.push(f("dns", None, Level::Warning, format!("{} answers {addr} with TTL {ttl}s (above 60s)", d.name)))
            }
            Ok(Some((addr, ttl))) => out.push(f("dns", None, Level::Ok, format!("{} answers {addr}, TTL {ttl}s", d.name))),
            Ok(None) => out.push(f("dns", None, Level::Warning, format!("{} has no record yet", d.name))),
            Err(e) => out.push(f("dns", None, Level::Critical, format!("cannot query {}: {e:#}", d.server))),
        }
    }
    if cfg.sync.redis.is_none() && cfg.sync.files.is_none() {
        out.push(f(
            "sync",
            None,
            Level::Warning,
            "no session or file sync checks configured ([sync]): a backup with stale files or sessions would not be noticed",
        ));
    } else {
        out.push(f("sync", None, Level::Ok, "sync checks configured"));
    }
    match dcs.get_json::<DrillRecord>(DRILL_KEY).await {
        Ok(Some(d)) if now_ms().saturating_sub(d.at_ms) > 90 * 86_400_000 => out.push(f(
            "drill",
            None,
            Level::Warning,
            format!("last drill {} days ago; run `vigil drill` (runbooks/drill.md)", now_ms().saturating_sub(d.at_ms) / 86_400_000),
        )),
        Ok(Some(d)) => out.push(f(
            "drill",
            None,
            Level::Ok,
            format!("last drill {} ({} target(s) missed)", crate::cli::status::ago(d.at_ms), d.missed),
        )),
        Ok(None) => out.push(f("drill", None, Level::Warning, "no failover drill recorded; run `vigil drill` (runbooks/drill.md)")),
        Err(e) => out.push(f("drill", None, Level::Warning, format!("cannot read the drill record: {e:#}"))),
    }
    out
}

/// Replication settings that a failover and a rejoin depend on.
async fn check_database(cfg: &Config, node: &str, host: &str, port: u16, members: usize) -> Vec<Finding> {
    let mut c = tokio_postgres::Config::new();
    c.host(host)
        .port(port)
        .user(&cfg.database.user)
        .dbname(&cfg.database.dbname)
        .connect_timeout(Duration::from_secs(2))
        .application_name("vigil-doctor");
    if !cfg.database.password.is_empty() {
        c.password(cfg.database.password.expose());
    }
    let tls = cfg.database.tls();
    c.ssl_mode(tls.pg_ssl_mode(host));
    let connector = match tls.pg_connector() {
        Ok(c) => c,
        Err(e) => return vec![f("database", Some(node), Level::Critical, format!("TLS settings: {e:#}"))],
    };
    let client = match tokio::time::timeout(Duration::from_secs(3), c.connect(connector)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            client
        }
        Ok(Err(e)) if format!("{e:?}").to_lowercase().contains("hot standby") => {
            return vec![f(
                "hot_standby",
                Some(node),
                Level::Warning,
                "hot_standby = off: the replica refuses connections, so vigil cannot see its position or lag",
            )]
        }
        _ => return vec![f("database", Some(node), Level::Critical, format!("cannot connect to {host}:{port}"))],
    };
    let q = "SELECT current_setting('wal_level'), current_setting('max_wal_senders')::int, current_setting('hot_standby'), \
             current_setting('wal_log_hints'), current_setting('data_checksums'), pg_is_in_recovery()";
    let row = match client.query_one(q, &[]).await {
        Ok(r) => r,
        Err(e) => return vec![f("database", Some(node), Level::Critical, format!("query failed: {e}"))],
    };
    let (wal_level, senders, hot, hints, checksums, replica): (String, i32, String, String, String, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4), row.get(5));
    let mut v = vec![];
    if wal_level == "minimal" {
        v.push(f("wal_level", Some(node), Level::Critical, "wal_level = minimal: no streaming replication; set replica"));
    }
    if (senders as usize) < members {
        v.push(f(
            "max_wal_senders",
            Some(node),
            Level::Critical,
            format!("max_wal_senders = {senders} is below the {members} members: a new primary could not serve every replica"),
        ));
    }
    if replica && hot != "on" {
        v.push(f("hot_standby", Some(node), Level::Warning, "hot_standby = off: the replica cannot be checked or read"));
    }
    if hints != "on" && checksums != "on" {
        v.push(f(
            "wal_log_hints",
            Some(node),
            Level::Warning,
            "neither wal_log_hints nor data checksums: pg_rewind cannot run, an old primary rejoins only through a full base backup",
        ));
    }
    if v.is_empty() {
        v.push(f("database", Some(node), Level::Ok, format!("wal_level {wal_level}, max_wal_senders {senders}, rewind possible")));
    }
    v
}

/// The MariaDB/MySQL settings a GTID failover depends on.
#[derive(Debug, Clone, Default)]
pub struct MySqlVars {
    pub mariadb: bool,
    pub log_bin: bool,
    pub log_replica_updates: bool,
    pub binlog_format: String,
    /// MariaDB `gtid_strict_mode`.
    pub gtid_strict_mode: bool,
    /// MySQL `gtid_mode` and `enforce_gtid_consistency`.
    pub gtid_mode: String,
    pub enforce_gtid_consistency: String,
    pub read_only: bool,
    pub replica: bool,
    pub net_timeout: u64,
}

/// Findings for one MariaDB/MySQL server (pure, so every rule has a test).
pub fn mysql_findings(node: &str, v: &MySqlVars, ttl: Duration) -> Vec<Finding> {
    let n = Some(node);
    let mut out = vec![];
    if !v.log_bin {
        out.push(f("log_bin", n, Level::Critical, "binary log off: this server cannot serve replicas once promoted"));
    }
    if !v.log_replica_updates {
        out.push(f(
            "log_slave_updates",
            n,
            Level::Critical,
            "log_slave_updates (log_replica_updates) off: once promoted, the others cannot follow it with GTID",
        ));
    }
    if !v.binlog_format.eq_ignore_ascii_case("ROW") {
        out.push(f("binlog_format", n, Level::Warning, format!("binlog_format = {}: use ROW for deterministic replicas", v.binlog_format)));
    }
    if v.mariadb && !v.gtid_strict_mode {
        out.push(f(
            "gtid_strict_mode",
            n,
            Level::Warning,
            "gtid_strict_mode off: errant transactions on a replica are not stopped at once (runbooks/errant-transactions.md)",
        ));
    }
    if !v.mariadb && !v.gtid_mode.eq_ignore_ascii_case("ON") {
        out.push(f("gtid_mode", n, Level::Critical, format!("gtid_mode = {}: GTID auto-positioning needs ON", v.gtid_mode)));
    }
    if !v.mariadb && !v.enforce_gtid_consistency.eq_ignore_ascii_case("ON") {
        out.push(f("enforce_gtid_consistency", n, Level::Critical, "enforce_gtid_consistency must be ON with gtid_mode = ON"));
    }
    if v.replica && !v.read_only {
        out.push(f("read_only", n, Level::Critical, "a replica accepts writes (read_only = OFF): errant transactions ahead"));
    }
    if v.net_timeout > (ttl * 3).as_secs() {
        out.push(f(
            "slave_net_timeout",
            n,
            Level::Warning,
            format!(
                "slave_net_timeout = {}s: after a failover, replicas of a silently vanished primary wait that long before reconnecting; \
                 use a few seconds",
                v.net_timeout
            ),
        ));
    }
    if out.is_empty() {
        out.push(f(
            "database",
            n,
            Level::Ok,
            format!("binlog on, replica updates logged, {} binlog, {}", v.binlog_format, if v.mariadb { "strict GTID" } else { "GTID on" }),
        ));
    }
    out
}

/// Two members with one server_id: replicas silently skip each other's events.
pub fn duplicate_server_ids(ids: &[(String, u32)]) -> Vec<Finding> {
    let mut out = vec![];
    for (i, (a, id)) in ids.iter().enumerate() {
        if let Some((b, _)) = ids[i + 1..].iter().find(|(_, other)| other == id) {
            out.push(f(
                "server_id",
                Some(b),
                Level::Critical,
                format!("server_id {id} is also {a}'s: replication skips events that carry its own server_id"),
            ));
        }
    }
    out
}

async fn check_mysql(cfg: &Config, node: &str, host: &str, port: u16, ttl: Duration) -> (Vec<Finding>, Option<u32>) {
    use mysql_async::prelude::Queryable;
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host.to_string())
        .tcp_port(port)
        .user(Some(cfg.database.user.clone()))
        .pass((!cfg.database.password.is_empty()).then(|| cfg.database.password.expose().to_string()))
        .ssl_opts(cfg.database.tls().mysql_ssl_opts())
        .prefer_socket(false);
    let mut c = match tokio::time::timeout(Duration::from_secs(3), mysql_async::Conn::new(opts)).await {
        Ok(Ok(c)) => c,
        _ => return (vec![f("database", Some(node), Level::Critical, format!("cannot connect to {host}:{port}"))], None),
    };
    let version: String = c.query_first("SELECT @@version").await.ok().flatten().unwrap_or_default();
    let mariadb = version.to_ascii_lowercase().contains("mariadb");
    let q = if mariadb {
        "SELECT @@log_bin, @@log_slave_updates, @@binlog_format, @@gtid_strict_mode, '', '', @@read_only, @@server_id, @@slave_net_timeout"
    } else {
        "SELECT @@log_bin, @@log_replica_updates, @@binlog_format, 0, @@gtid_mode, @@enforce_gtid_consistency, @@read_only, @@server_id, \
         @@replica_net_timeout"
    };
    type Row = (i64, i64, String, i64, String, String, i64, u32, u64);
    let row: Option<Row> = match c.query_first(q).await {
        Ok(r) => r,
        Err(e) => return (vec![f("database", Some(node), Level::Critical, format!("query failed: {e}"))], None),
    };
    let status: Option<mysql_async::Row> =
        c.query_first(if mariadb { "SHOW SLAVE STATUS" } else { "SHOW REPLICA STATUS" }).await.ok().flatten();
    let _ = c.disconnect().await;
    let Some((log_bin, lru, fmt, strict, gtid_mode, egc, ro, id, net)) = row else { return (vec![], None) };
    let v = MySqlVars {
        mariadb,
        log_bin: log_bin != 0,
        log_replica_updates: lru != 0,
        binlog_format: fmt,
        gtid_strict_mode: strict != 0,
        gtid_mode,
        enforce_gtid_consistency: egc,
        read_only: ro != 0,
        replica: status.is_some(),
        net_timeout: net,
    };
    (mysql_findings(node, &v, ttl), Some(id))
}

/// Clock offset of a member, from its sidecar's fresh member record.
async fn check_clock(cfg: &Config, node: &str, api_url: &str) -> Finding {
    let http = match cfg.api.client(Duration::from_secs(2)) {
        Ok(h) => h,
        Err(e) => return f("clock", Some(node), Level::Warning, format!("cannot build the API client: {e:#}")),
    };
    let before = now_ms();
    let r = http.get(format!("{api_url}/member?fresh=1")).send().await;
    let after = now_ms();
    let rec: Option<crate::dcs::MemberRecord> = match r {
        Ok(r) => r.json().await.ok(),
        Err(_) => None,
    };
    let Some(rec) = rec else { return f("clock", Some(node), Level::Warning, format!("sidecar API {api_url} does not answer")) };
    let mid = (before + after) / 2;
    let skew = rec.updated_ms as i64 - mid as i64;
    let slack = (after - before) as i64 / 2 + 50;
    if skew.abs() > 1000 + slack {
        f(
            "clock",
            Some(node),
            Level::Warning,
            format!("clock differs by {:.1}s: lag and file-sync ages are wrong; check NTP", skew as f64 / 1000.0),
        )
    } else {
        f("clock", Some(node), Level::Ok, format!("in step (±{slack} ms)"))
    }
}

pub fn render(findings: &[Finding]) -> String {
    let rows: Vec<Vec<String>> = findings
        .iter()
        .map(|x| {
            vec![format!("{:?}", x.level).to_uppercase(), x.check.clone(), x.node.clone().unwrap_or_else(|| "-".into()), x.message.clone()]
        })
        .collect();
    crate::cli::status::table(&["LEVEL", "CHECK", "NODE", "FINDING"], &rows)
}

pub fn exit_code(findings: &[Finding]) -> i32 {
    match findings.iter().map(|x| x.level).max() {
        Some(Level::Critical) => 2,
        Some(Level::Warning) => 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> MySqlVars {
        MySqlVars {
            mariadb: true,
            log_bin: true,
            log_replica_updates: true,
            binlog_format: "ROW".into(),
            gtid_strict_mode: true,
            read_only: true,
            replica: true,
            net_timeout: 4,
            ..Default::default()
        }
    }

    fn checks(v: &MySqlVars) -> Vec<(String, Level)> {
        mysql_findings("db2", v, Duration::from_secs(10)).into_iter().map(|x| (x.check, x.level)).collect()
    }

    #[test]
    fn a_correct_mariadb_replica_passes() {
        assert_eq!(checks(&good()), vec![("database".to_string(), Level::Ok)]);
    }

    #[test]
    fn each_mariadb_misconfiguration_is_found() {
        let cases: Vec<(MySqlVars, &str, Level)> = vec![
            (MySqlVars { log_bin: false, ..good() }, "log_bin", Level::Critical),
            (MySqlVars { log_replica_updates: false, ..good() }, "log_slave_updates", Level::Critical),
            (MySqlVars { binlog_format: "STATEMENT".into(), ..good() }, "binlog_format", Level::Warning),
            (MySqlVars { gtid_strict_mode: false, ..good() }, "gtid_strict_mode", Level::Warning),
            (MySqlVars { read_only: false, ..good() }, "read_only", Level::Critical),
            (MySqlVars { net_timeout: 60, ..good() }, "slave_net_timeout", Level::Warning),
        ];
        for (v, check, level) in cases {
            assert_eq!(checks(&v), vec![(check.to_string(), level)], "{check}");
        }
    }

    #[test]
    fn mysql_needs_gtid_mode_and_consistency() {
        let v = MySqlVars { mariadb: false, gtid_mode: "OFF_PERMISSIVE".into(), enforce_gtid_consistency: "WARN".into(), ..good() };
        let c = checks(&v);
        assert!(c.contains(&("gtid_mode".into(), Level::Critical)) && c.contains(&("enforce_gtid_consistency".into(), Level::Critical)));
        let ok = MySqlVars { mariadb: false, gtid_mode: "ON".into(), enforce_gtid_consistency: "ON".into(), ..good() };
        assert_eq!(checks(&ok)[0].1, Level::Ok);
    }

    #[test]
    fn duplicate_server_ids_are_critical() {
        let d = duplicate_server_ids(&[("a".into(), 1), ("b".into(), 2), ("c".into(), 1)]);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].node.as_deref(), d[0].level), (Some("c"), Level::Critical));
        assert!(duplicate_server_ids(&[("a".into(), 1), ("b".into(), 2)]).is_empty());
    }
}
