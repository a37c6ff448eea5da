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
    for m in cluster.members.values() {
        out.extend(check_database(cfg, &m.node, &m.db_host, m.db_port, members).await);
        out.push(check_clock(&m.node, &m.api_url).await);
    }
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
    let client = match tokio::time::timeout(Duration::from_secs(3), c.connect(tokio_postgres::NoTls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(conn);
            client
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

/// Clock offset of a member, from its sidecar's fresh member record.
async fn check_clock(node: &str, api_url: &str) -> Finding {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(2)).build().expect("http client");
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
