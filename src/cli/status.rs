//! `vigil status` and `/cluster`: the cluster as a table or as JSON.

use crate::core::{DbHealth, DbRole};
use crate::dcs::{now_ms, ClusterState, HistoryRecord, MemberRecord};
use crate::units::format_size;
use serde_json::{json, Value};

pub fn cluster_json(cluster: &str, c: &ClusterState) -> Value {
    json!({
        "cluster": cluster,
        "leader": c.leader.as_ref().map(|l| l.node.clone()),
        "term": c.term,
        "leader_since_ms": c.leader.as_ref().map(|l| l.since_ms),
        "paused": c.pause.is_some(),
        "pending_request": c.request,
        "members": c.members.values().collect::<Vec<&MemberRecord>>(),
        "last_change": c.last_history,
        "config_drift": drifted(c),
        "synchronous": c.sync,
        "ignored_etcd_values": c.bad_values,
    })
}

fn role(m: &MemberRecord, leader: Option<&str>) -> String {
    match (m.role, m.health) {
        (_, DbHealth::Down) => "down".into(),
        (_, DbHealth::Starting) => "starting".into(),
        (_, DbHealth::Unresponsive) => "unresponsive".into(),
        (Some(DbRole::Primary), _) if leader == Some(m.node.as_str()) => "primary".into(),
        (Some(DbRole::Primary), _) => "primary (no key!)".into(),
        (Some(DbRole::Replica), _) => "replica".into(),
        (None, _) => "?".into(),
    }
}

/// Renders rows as a left-aligned text table.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells.iter().enumerate().map(|(i, c)| format!("{:w$}", c, w = widths[i])).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let mut out = vec![line(header.iter().map(|s| s.to_string()).collect())];
    out.push(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("  "));
    for r in rows {
        out.push(line(r.clone()));
    }
    out.join("\n") + "\n"
}

pub fn render(cluster: &str, c: &ClusterState) -> String {
    let leader = c.leader.as_ref().map(|l| l.node.as_str());
    let mut out = format!(
        "cluster {cluster} · leader {} · term {} · {}{}\n\n",
        leader.unwrap_or("NONE"),
        c.term.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
        if c.pause.is_some() { "PAUSED" } else { "automatic failover on" },
        match &c.sync {
            Some(s) if s.standbys.is_empty() => " · synchronous set: (none)".to_string(),
            Some(s) => format!(" · synchronous set: {}", s.standbys.join(", ")),
            None => String::new(),
        }
    );
    // MariaDB/MySQL members show their GTID position, and lag in
    // transactions rather than bytes.
    let gtid = c.members.values().any(|m| m.gtid.is_some());
    let behind = |b: u64| if gtid { format!("{b} trx") } else { format_size(b) };
    let rows: Vec<Vec<String>> = c
        .members
        .values()
        .map(|m| {
            let lag = match (m.lag_seconds, m.lag_bytes) {
                (Some(s), Some(b)) => format!("{s:.1}s / {}", behind(b)),
                (Some(s), None) => format!("{s:.1}s"),
                (None, Some(b)) => behind(b),
                _ => "-".into(),
            };
            if gtid {
                let g = m.gtid.as_ref();
                let eligible =
                    if m.eligible { "yes".to_string() } else { format!("no: {}", m.ineligible_reason.clone().unwrap_or_default()) };
                return vec![
                    m.node.clone(),
                    role(m, leader),
                    format!("{}:{}", m.db_host, m.db_port),
                    g.map(|g| if g.executed.is_empty() { "-".into() } else { g.executed.clone() }).unwrap_or_else(|| "-".into()),
                    if m.role == Some(DbRole::Replica) { lag } else { "-".into() },
                    eligible,
                    m.state.clone(),
                ];
            }
            let eligible = if m.eligible { "yes".to_string() } else { format!("no: {}", m.ineligible_reason.clone().unwrap_or_default()) };
            vec![
                m.node.clone(),
                role(m, leader),
                format!("{}:{}", m.db_host, m.db_port),
                m.position.map(|p| p.timeline.to_string()).unwrap_or_else(|| "-".into()),
                m.position.map(|p| p.lsn.to_string()).unwrap_or_else(|| "-".into()),
                if m.role == Some(DbRole::Replica) { lag } else { "-".into() },
                eligible,
                m.state.clone(),
            ]
        })
        .collect();
    if gtid {
        out += &table(&["MEMBER", "ROLE", "DATABASE", "GTID EXECUTED", "LAG", "ELIGIBLE", "STATE"], &rows);
        let before = out.len();
        for m in c.members.values() {
            let Some(g) = &m.gtid else { continue };
            if let Some(e) = &g.errant {
                out += &format!("\n{} ERRANT TRANSACTIONS: {e}", m.node);
            }
            if let Some(e) = &g.last_error {
                out += &format!("\n{} replication error: {e}", m.node);
            }
            if m.role == Some(DbRole::Replica)
                && g.io_running.is_some()
                && (g.io_running.as_deref() != Some("Yes") || g.sql_running.as_deref() != Some("Yes"))
            {
                out += &format!(
                    "\n{} threads: IO {}, SQL {}",
                    m.node,
                    g.io_running.clone().unwrap_or_default(),
                    g.sql_running.clone().unwrap_or_default()
                );
            }
        }
        if out.len() > before {
            out += "\n";
        }
    } else {
        out += &table(&["MEMBER", "ROLE", "DATABASE", "TL", "POSITION", "LAG", "ELIGIBLE", "STATE"], &rows);
    }
    out += &render_sync(c);
    for b in &c.bad_values {
        out += &format!("\nIGNORED etcd key {}: {}", b.key, b.problem);
    }
    if !c.bad_values.is_empty() {
        out += "\n";
    }
    if let Some(r) = &c.request {
        let what = format!("{:?} {} -> {}", r.kind, r.from.clone().unwrap_or_else(|| "-".into()), r.to).to_lowercase();
        match &r.refused {
            Some(why) => out += &format!("\n{what} REFUSED: {why}\n"),
            None => out += &format!("\npending {what}\n"),
        }
    }
    for m in c.members.values() {
        if let Some(r) = &m.refusal {
            out += &format!("\n{} refuses to fail over: {r}", m.node);
        }
        let age = now_ms().saturating_sub(m.updated_ms);
        if age > 5_000 {
            out += &format!("\n{}: member key not refreshed for {:.0}s", m.node, age as f64 / 1000.0);
        }
    }
    if let Some(h) = &c.last_history {
        out += &format!(
            "\nlast change: {} (term {}) {} -> {}, {}\n",
            h.kind,
            h.term,
            h.old_primary.clone().unwrap_or_else(|| "-".into()),
            h.new_primary,
            ago(h.at_ms)
        );
    }
    out
}

/// Members whose shared-configuration hash differs from the leader's.
pub fn drifted(c: &ClusterState) -> Vec<String> {
    let Some(reference) = c.leader.as_ref().and_then(|l| c.members.get(&l.node)).and_then(|m| m.sync.as_ref()) else { return vec![] };
    c.members
        .values()
        .filter(|m| {
            m.sync.as_ref().is_some_and(|s| {
                s.config_hash != reference.config_hash
                    || s.config_dir.as_ref().map(|d| &d.hash) != reference.config_dir.as_ref().map(|d| &d.hash)
            })
        })
        .map(|m| m.node.clone())
        .collect()
}

fn render_sync(c: &ClusterState) -> String {
    if c.members.values().all(|m| m.sync.is_none()) {
        return String::new();
    }
    let drift = drifted(c);
    let rows: Vec<Vec<String>> = c
        .members
        .values()
        .map(|m| {
            let s = m.sync.clone().unwrap_or_default();
            let redis = s.redis.map(|r| match r.offset_lag_bytes {
                Some(b) if r.state == "ok" => format!("ok ({b} B behind)"),
                _ => r.state,
            });
            let files = s.files.map(|f| match f.age_seconds {
                Some(a) => format!("{} ({a:.1}s)", f.state),
                None => f.state,
            });
            let cfg = format!(
                "{}{}{}",
                &s.config_hash.chars().take(8).collect::<String>(),
                s.config_dir
                    .as_ref()
                    .and_then(|d| d.git_revision.clone())
                    .map(|r| format!(" git {}", &r[..r.len().min(8)]))
                    .unwrap_or_default(),
                if drift.contains(&m.node) { "  DRIFT" } else { "" }
            );
            vec![m.node.clone(), redis.unwrap_or_else(|| "-".into()), files.unwrap_or_else(|| "-".into()), cfg]
        })
        .collect();
    format!("\n{}", table(&["SYNC", "SESSIONS (REDIS)", "FILES", "CONFIG"], &rows))
}

pub fn ago(ms: u64) -> String {
    let s = now_ms().saturating_sub(ms) / 1000;
    match s {
        0..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        _ => format!("{}h ago", s / 3600),
    }
}

pub fn render_history(h: &[HistoryRecord]) -> String {
    if h.is_empty() {
        return "no failovers or switchovers recorded\n".into();
    }
    let mut out = String::new();
    for r in h {
        out += &format!(
            "term {} · {} · {} -> {} · {}\n  reason: {}\n",
            r.term,
            r.kind,
            r.old_primary.clone().unwrap_or_else(|| "-".into()),
            r.new_primary,
            ago(r.at_ms),
            r.reason
        );
        let t0 = r.steps.first().map(|s| s.at_ms).unwrap_or(r.at_ms);
        for s in &r.steps {
            out += &format!(
                "  +{:>7.3}s  {}{}\n",
                (s.at_ms.saturating_sub(t0)) as f64 / 1000.0,
                s.name,
                s.detail.as_ref().map(|d| format!(" ({d})")).unwrap_or_default()
            );
        }
        for c in &r.candidates {
            out += &format!(
                "  candidate {}: {} at {}\n",
                c.node,
                if c.eligible { "eligible".to_string() } else { format!("not eligible ({})", c.reason.clone().unwrap_or_default()) },
                c.position.map(|p| p.to_string()).unwrap_or_else(|| "?".into())
            );
        }
    }
    out
}
