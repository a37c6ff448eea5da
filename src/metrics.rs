//! `/metrics` in the Prometheus text format, rendered from the status
//! snapshot (no registry, no global state).

use crate::config::Config;
use crate::core::{DbHealth, DbRole};
use crate::status::Snapshot;
use std::fmt::Write;

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

pub fn render(cfg: &Config, s: &Snapshot) -> String {
    let mut out = String::new();
    let c = esc(&cfg.cluster);
    let n = esc(&cfg.node);
    // One series labelled with this cluster and node; a counter's name
    // ends in `_total`, a gauge's never does (promtool check metrics).
    let mut series = |kind: &str, name: &str, help: &str, value: f64| {
        debug_assert_eq!(kind == "counter", name.ends_with("_total"), "{name}");
        let _ =
            writeln!(out, "# HELP vigil_{name} {help}\n# TYPE vigil_{name} {kind}\nvigil_{name}{{cluster=\"{c}\",node=\"{n}\"}} {value}");
    };
    let mut gauge = |name: &str, help: &str, value: f64| series("gauge", name, help, value);
    let me = s.me.as_ref();
    gauge("up", "1 while the HA loop runs.", 1.0);
    gauge("primary", "1 if this node is the leader with a writable database.", s.writable_leader as u8 as f64);
    gauge("leader", "1 if this sidecar holds the leader key.", s.holds_leader as u8 as f64);
    gauge("replica", "1 if the local database runs as a replica.", me.is_some_and(|m| m.role == Some(DbRole::Replica)) as u8 as f64);
    gauge("database_running", "1 if the local database answers queries.", me.is_some_and(|m| m.health == DbHealth::Running) as u8 as f64);
    gauge("term", "Term (etcd revision of the leader key) of the current leader.", s.cluster.term.unwrap_or(0) as f64);
    gauge("paused", "1 while the cluster is paused.", s.cluster.pause.is_some() as u8 as f64);
    gauge("dcs_ok", "1 if the last etcd read succeeded.", s.dcs_ok as u8 as f64);
    gauge("dcs_last_seen_seconds", "Unix time of the last successful etcd read.", s.dcs_last_ok_ms as f64 / 1000.0);
    gauge("eligible", "1 if this node may be promoted now.", me.is_some_and(|m| m.eligible) as u8 as f64);
    if let Some(p) = me.and_then(|m| m.position) {
        gauge("wal_position_bytes", "Current (primary) or received/replayed (replica) WAL position.", p.lsn.0 as f64);
        gauge("timeline", "Current timeline.", p.timeline as f64);
    }
    if let Some(l) = me.and_then(|m| m.lag_seconds) {
        gauge("replication_lag_seconds", "Replication lag measured from the heartbeat table.", l);
        gauge(
            "replication_lag_alert",
            "1 if the heartbeat lag exceeds alerts.lag_alert.",
            (l > cfg.alerts.lag_alert.as_secs_f64()) as u8 as f64,
        );
    }
    if let Some(b) = me.and_then(|m| m.lag_bytes) {
        gauge("replication_lag_bytes", "Bytes behind the primary's last published position.", b as f64);
    }
    gauge("members", "Members with a live member key.", s.cluster.members.len() as f64);
    gauge("dns_published_term", "Term this node last published in DNS (0: never).", s.dns_published_term.unwrap_or(0) as f64);
    if let Some(rep) = &s.sync {
        if let Some(r) = &rep.redis {
            gauge("sync_redis_link_up", "1 if the session store's replica link is up.", r.link_up as u8 as f64);
            gauge("sync_redis_lag_bytes", "Replication offset lag of the session store.", r.offset_lag_bytes.unwrap_or(0) as f64);
            gauge("sync_redis_ok", "1 if the session store's replication is ok.", (r.state == "ok") as u8 as f64);
        }
        if let Some(f) = &rep.files {
            gauge("sync_file_age_seconds", "Age of this node's copy of the file-sync marker (-1: unknown).", f.age_seconds.unwrap_or(-1.0));
            gauge("sync_file_ok", "1 if the file sync is current.", (f.state == "ok") as u8 as f64);
        }
        if let Some(free) = rep.disk_free {
            gauge("disk_free_bytes", "Free bytes on the database's file system.", free as f64);
        }
    }
    gauge(
        "config_drift",
        "1 if this node's shared configuration differs from the leader's.",
        crate::cli::status::drifted(&s.cluster).contains(&cfg.node) as u8 as f64,
    );
    gauge("alerts_firing", "Alerts this sidecar has firing now.", s.alerts_firing.len() as f64);
    gauge(
        "hold_down",
        "1 while automatic failover is held down after a recent one.",
        (s.me.as_ref().and_then(|m| m.refusal_kind) == Some(crate::core::RefusalKind::HeldDown)) as u8 as f64,
    );
    series("counter", "promotions_total", "Promotions of this node since the sidecar started.", s.promotions as f64);
    series("counter", "dns_failures_total", "Failed DNS publication attempts since the sidecar started.", s.dns_failures as f64);
    // One series: 1 while this node's last decision refused an automatic
    // failover, its label the kind of refusal ("none" otherwise).
    let refused = s.me.as_ref().and_then(|m| m.refusal_kind);
    let kind =
        refused.and_then(|k| serde_json::to_value(k).ok()).and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_else(|| "none".into());
    let _ = writeln!(
        out,
        "# HELP vigil_failover_refused 1 while this node refuses an automatic failover (kind: why; see vigil status).\n# TYPE vigil_failover_refused gauge\nvigil_failover_refused{{cluster=\"{c}\",node=\"{n}\",kind=\"{kind}\"}} {}",
        refused.is_some() as u8
    );
    // One series whatever runs: its label says which action ("none" when idle).
    let (action, running, for_s) = match s.action {
        Some(a) => (a.name, 1, a.since.elapsed().as_secs_f64()),
        None => ("none", 0, 0.0),
    };
    let _ = writeln!(
        out,
        "# HELP vigil_action_running 1 while the loop executes an action (promote, rejoin, fence, ...).\n# TYPE vigil_action_running gauge"
    );
    let _ = writeln!(out, "vigil_action_running{{cluster=\"{c}\",node=\"{n}\",action=\"{action}\"}} {running}");
    let _ = writeln!(out, "# HELP vigil_action_running_seconds How long the action under way has run (0 when idle).\n# TYPE vigil_action_running_seconds gauge");
    let _ = writeln!(out, "vigil_action_running_seconds{{cluster=\"{c}\",node=\"{n}\",action=\"{action}\"}} {for_s:.3}");
    let (delivered, failed, dropped) = s.alert_deliveries;
    let _ = writeln!(out, "# HELP vigil_alert_notifications_total Alert notifications by outcome (failed: gave up after retries; dropped: queue full).\n# TYPE vigil_alert_notifications_total counter");
    for (outcome, v) in [("delivered", delivered), ("failed", failed), ("dropped", dropped)] {
        let _ = writeln!(out, "vigil_alert_notifications_total{{cluster=\"{c}\",node=\"{n}\",outcome=\"{outcome}\"}} {v}");
    }
    // Per-member figures from etcd, so one scrape of any sidecar shows the cluster.
    let _ = writeln!(
        out,
        "# HELP vigil_member_lag_seconds Heartbeat lag of each replica, as published in etcd.\n# TYPE vigil_member_lag_seconds gauge"
    );
    for m in s.cluster.members.values() {
        if let Some(l) = m.lag_seconds {
            let _ = writeln!(out, "vigil_member_lag_seconds{{cluster=\"{c}\",member=\"{}\"}} {l}", esc(&m.node));
        }
    }
    let _ = writeln!(out, "# HELP vigil_member_lag_bytes Bytes each replica is behind the primary's last published position.\n# TYPE vigil_member_lag_bytes gauge");
    for m in s.cluster.members.values() {
        if let Some(b) = m.lag_bytes {
            let _ = writeln!(out, "vigil_member_lag_bytes{{cluster=\"{c}\",member=\"{}\"}} {b}", esc(&m.node));
        }
    }
    let _ = writeln!(out, "# HELP vigil_member_is_primary 1 for the member that leads.\n# TYPE vigil_member_is_primary gauge");
    for m in s.cluster.members.values() {
        let v = s.cluster.leader.as_ref().is_some_and(|l| l.node == m.node) as u8;
        let _ = writeln!(out, "vigil_member_is_primary{{cluster=\"{c}\",member=\"{}\"}} {v}", esc(&m.node));
    }
    if let Some(h) = &s.cluster.last_history {
        let _ = writeln!(
            out,
            "# HELP vigil_last_change_timestamp_seconds When the primary last changed.\n# TYPE vigil_last_change_timestamp_seconds gauge"
        );
        let _ = writeln!(
            out,
            "vigil_last_change_timestamp_seconds{{cluster=\"{c}\",kind=\"{}\"}} {}",
            h.kind.as_str(),
            h.at_ms as f64 / 1000.0
        );
        if let (Some(first), Some(last)) = (h.steps.first(), h.steps.iter().find(|st| st.name == "accepting writes")) {
            let _ = writeln!(out, "# HELP vigil_last_change_duration_seconds From the first recorded step to the new primary accepting writes.\n# TYPE vigil_last_change_duration_seconds gauge");
            let _ = writeln!(
                out,
                "vigil_last_change_duration_seconds{{cluster=\"{c}\"}} {}",
                last.at_ms.saturating_sub(first.at_ms) as f64 / 1000.0
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_action_under_way_is_one_series_whose_label_names_it() {
        let text = "cluster = \"lab\"\nnode = \"pg1\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[database]\nport = 5432\ndata_dir = \"/var/lib/postgresql/15/main\"\n";
        let cfg = Config::parse(std::path::Path::new("/etc/vigil/test.toml"), text).unwrap();
        let mut s = Snapshot::default();
        let idle = render(&cfg, &s);
        assert!(idle.contains("vigil_action_running{cluster=\"lab\",node=\"pg1\",action=\"none\"} 0\n"), "{idle}");
        s.action = Some(crate::status::ActionUnderWay { name: "rejoin", since: crate::clock::Instant::now() });
        let busy = render(&cfg, &s);
        assert!(busy.contains("vigil_action_running{cluster=\"lab\",node=\"pg1\",action=\"rejoin\"} 1\n"), "{busy}");
        assert!(busy.contains("vigil_action_running_seconds{cluster=\"lab\",node=\"pg1\",action=\"rejoin\"} "), "{busy}");
    }
}
