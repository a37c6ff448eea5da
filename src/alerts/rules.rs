//! The alert rules: facts in, notifications out (pure apart from the
//! clock passed in), so each rule is a unit test.

use super::{Alert, Severity, Status};
use crate::core::{DbHealth, DbRole, PeerDb};
use crate::dcs::{ClusterState, MemberRecord};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

/// What one loop iteration knows, for the rules.
#[derive(Debug, Clone)]
pub struct Facts<'a> {
    pub now_ms: u64,
    pub me: &'a MemberRecord,
    /// None when etcd could not be read.
    pub cluster: Option<&'a ClusterState>,
    /// Since when etcd has been unreachable (ms), if it is.
    pub dcs_down_since_ms: Option<u64>,
    /// Peers whose member key vanished, with what a look at their
    /// database found.
    pub silent_peers: Vec<(String, PeerDb)>,
    /// A failover was refused, and why (this node's decision).
    pub refusal: Option<&'a str>,
    /// Hold-down is active with no leader.
    pub held_down: bool,
    /// Sync problems: (check, reason, how long before alerting).
    pub sync_problems: Vec<(String, String, Duration)>,
}

/// Rule thresholds, from `[alerts]`.
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub lag_alert: Duration,
    pub broken_for: Duration,
    pub dcs_for: Duration,
    pub runbook_base: String,
}

impl Thresholds {
    pub fn from_config(a: &crate::config::AlertsConfig) -> Thresholds {
        Thresholds { lag_alert: a.lag_alert, broken_for: a.broken_for, dcs_for: a.etcd_for, runbook_base: a.runbook_base.clone() }
    }
}

/// A condition being tracked: since when it holds, whether it fired.
#[derive(Debug, Clone)]
struct Tracked {
    since_ms: u64,
    fired: Option<Alert>,
}

pub struct Evaluator {
    cluster: String,
    node: String,
    t: Thresholds,
    state: HashMap<String, Tracked>,
}

/// One condition as a rule states it.
struct Cond {
    name: &'static str,
    node: String,
    severity: Severity,
    for_: Duration,
    summary: String,
    description: String,
    runbook: &'static str,
    labels: BTreeMap<String, String>,
}

impl Evaluator {
    pub fn new(cluster: &str, node: &str, t: Thresholds) -> Self {
        Evaluator { cluster: cluster.into(), node: node.into(), t, state: HashMap::new() }
    }

    fn alert(&self, c: &Cond, status: Status, starts_ms: u64, ends_ms: Option<u64>, term: Option<i64>) -> Alert {
        Alert {
            name: c.name.into(),
            status,
            severity: c.severity,
            cluster: self.cluster.clone(),
            node: c.node.clone(),
            reported_by: self.node.clone(),
            summary: c.summary.clone(),
            description: c.description.clone(),
            runbook: format!("{}/{}", self.t.runbook_base.trim_end_matches('/'), c.runbook),
            term,
            new_primary: None,
            old_primary: None,
            starts_ms,
            ends_ms,
            labels: c.labels.clone(),
        }
    }

    /// Evaluates every rule; returns the notifications to send (firing
    /// when a condition has held for its `for`, resolved when it cleared).
    pub fn evaluate(&mut self, f: &Facts) -> Vec<Alert> {
        let conds = self.conditions(f);
        let term = f.cluster.and_then(|c| c.term);
        let mut out = vec![];
        let active: BTreeSet<String> = conds.iter().map(|c| format!("{}/{}", c.name, c.node)).collect();
        for c in &conds {
            let key = format!("{}/{}", c.name, c.node);
            let tr = self.state.entry(key).or_insert(Tracked { since_ms: f.now_ms, fired: None });
            if tr.fired.is_none() && f.now_ms.saturating_sub(tr.since_ms) >= c.for_.as_millis() as u64 {
                let since = tr.since_ms;
                let a = self.alert(c, Status::Firing, since, None, term);
                self.state.get_mut(&format!("{}/{}", c.name, c.node)).expect("inserted").fired = Some(a.clone());
                out.push(a);
            }
        }
        let gone: Vec<String> = self.state.keys().filter(|k| !active.contains(*k)).cloned().collect();
        for k in gone {
            if let Some(Tracked { fired: Some(mut a), .. }) = self.state.remove(&k) {
                a.status = Status::Resolved;
                a.ends_ms = Some(f.now_ms);
                out.push(a);
            }
        }
        out
    }

    /// Alerts currently firing (for re-sending to Alertmanager).
    pub fn firing(&self) -> Vec<Alert> {
        self.state.values().filter_map(|t| t.fired.clone()).collect()
    }

    fn conditions(&self, f: &Facts) -> Vec<Cond> {
        let mut v = vec![];
        let me = f.me;
        let node = me.node.clone();
        let leader = f.cluster.and_then(|c| c.leader.as_ref()).map(|l| l.node.clone());
        let i_lead = leader.as_deref() == Some(node.as_str());

        if me.role == Some(DbRole::Replica) {
            if let Some(lag) = me.lag_seconds {
                if lag > self.t.lag_alert.as_secs_f64() {
                    v.push(Cond {
                        name: "ReplicationLag",
                        node: node.clone(),
                        severity: Severity::Warning,
                        for_: Duration::ZERO,
                        summary: format!("replication lag of {node} is {lag:.0}s (alert above {}s)", self.t.lag_alert.as_secs()),
                        description: format!(
                            "heartbeat lag {lag:.1}s; {} bytes behind the primary's last position",
                            me.lag_bytes.unwrap_or(0)
                        ),
                        runbook: "lag.md",
                        labels: BTreeMap::new(),
                    });
                }
            }
            if let Some(errant) = me.gtid.as_ref().and_then(|g| g.errant.as_ref()) {
                v.push(Cond {
                    name: "ErrantTransactions",
                    node: node.clone(),
                    severity: Severity::Critical,
                    for_: Duration::ZERO,
                    summary: format!("{node} has transactions the primary never had; it will not be promoted"),
                    description: format!("errant GTIDs: {errant}"),
                    runbook: "errant-transactions.md",
                    labels: BTreeMap::new(),
                });
            }
            if leader.is_some() && !me.streaming && me.health == DbHealth::Running {
                v.push(Cond {
                    name: "ReplicationBroken",
                    node: node.clone(),
                    severity: Severity::Critical,
                    for_: self.t.broken_for,
                    summary: format!("{node} does not stream from {}", leader.clone().unwrap_or_default()),
                    description: format!("WAL receiver not streaming; state: {}", me.state),
                    runbook: "old-primary-will-not-rejoin.md",
                    labels: BTreeMap::new(),
                });
            }
        }
        if i_lead && matches!(me.health, DbHealth::Down | DbHealth::Unresponsive) {
            v.push(Cond {
                name: "PrimaryDatabaseDown",
                node: node.clone(),
                severity: Severity::Critical,
                for_: Duration::ZERO,
                summary: format!("primary database on {node} is {:?}", me.health).to_lowercase(),
                description: me.state.clone(),
                runbook: "failover-happened.md",
                labels: BTreeMap::new(),
            });
        }
        if let Some(since) = f.dcs_down_since_ms {
            if f.now_ms.saturating_sub(since) >= self.t.dcs_for.as_millis() as u64 {
                v.push(Cond {
                    name: "EtcdUnreachable",
                    node: node.clone(),
                    severity: Severity::Critical,
                    for_: Duration::ZERO,
                    summary: format!("{node} cannot reach etcd"),
                    description: "no failover decisions without etcd; the leader fences itself before its lease expires".into(),
                    runbook: "etcd-down.md",
                    labels: BTreeMap::new(),
                });
            }
        }
        if let Some(r) = f.refusal {
            let mut labels = BTreeMap::new();
            labels.insert("reason".to_string(), r.to_string());
            v.push(Cond {
                name: "FailoverRefused",
                node: node.clone(),
                severity: Severity::Warning,
                for_: Duration::ZERO,
                summary: format!("{node} refuses to fail over"),
                description: r.to_string(),
                runbook: "no-leader.md",
                labels,
            });
        }
        for (check, reason, for_) in &f.sync_problems {
            let mut labels = BTreeMap::new();
            labels.insert("check".to_string(), check.clone());
            let name = match check.as_str() {
                "redis" => "SessionSyncStale",
                "file_sync" => "FileSyncStale",
                "disk" => "DiskSpaceLow",
                _ => "SyncStale",
            };
            v.push(Cond {
                name,
                node: node.clone(),
                severity: Severity::Warning,
                for_: *for_,
                summary: format!("{check} on {node} is not current"),
                description: reason.clone(),
                runbook: "sync.md",
                labels,
            });
        }
        // Cluster-wide rules: one evaluator only.
        let evaluator = leader.clone().or_else(|| f.cluster.and_then(|c| c.members.keys().next().cloned()));
        if evaluator.as_deref() == Some(node.as_str()) {
            for b in f.cluster.map(|c| c.bad_values.as_slice()).unwrap_or_default() {
                let mut labels = BTreeMap::new();
                labels.insert("key".to_string(), b.key.clone());
                v.push(Cond {
                    name: "BadEtcdValue",
                    node: b.key.clone(),
                    severity: Severity::Warning,
                    for_: Duration::ZERO,
                    summary: format!("etcd key {} holds a value vigil cannot use; it is ignored", b.key),
                    description: b.problem.clone(),
                    runbook: "bad-etcd-value.md",
                    labels,
                });
            }
            for (peer, db) in &f.silent_peers {
                let desc = match db {
                    PeerDb::Writable | PeerDb::ReadOnly => {
                        "its member key vanished while its database still answers: the sidecar is down".to_string()
                    }
                    PeerDb::Silent => {
                        "its member key vanished and its database takes connections but does not answer: frozen, hung or overloaded"
                            .to_string()
                    }
                    PeerDb::Unreachable => "its member key vanished and its database does not answer: node down?".to_string(),
                };
                let answers = matches!(db, PeerDb::Writable | PeerDb::ReadOnly);
                v.push(Cond {
                    name: "PeerSilent",
                    node: peer.clone(),
                    severity: if answers { Severity::Warning } else { Severity::Critical },
                    for_: Duration::ZERO,
                    summary: format!("sidecar of {peer} has gone silent"),
                    description: desc,
                    runbook: "failover-happened.md",
                    labels: BTreeMap::new(),
                });
            }
            if f.held_down {
                v.push(Cond {
                    name: "HoldDownActive",
                    node: node.clone(),
                    severity: Severity::Critical,
                    for_: Duration::ZERO,
                    summary: "no primary, and automatic failover is held down after a recent failover: a human must decide".into(),
                    description: "run `vigil status`, then `vigil failover --to NODE`".into(),
                    runbook: "no-leader.md",
                    labels: BTreeMap::new(),
                });
            }
        }
        v
    }

    /// A one-shot event (failover started/succeeded/failed).
    #[allow(clippy::too_many_arguments)]
    pub fn event(
        &self,
        name: &str,
        severity: Severity,
        now_ms: u64,
        summary: String,
        term: Option<i64>,
        old: Option<String>,
        new: Option<String>,
    ) -> Alert {
        Alert {
            name: name.into(),
            status: Status::Firing,
            severity,
            cluster: self.cluster.clone(),
            node: new.clone().unwrap_or_else(|| self.node.clone()),
            reported_by: self.node.clone(),
            description: summary.clone(),
            summary,
            runbook: format!("{}/failover-happened.md", self.t.runbook_base.trim_end_matches('/')),
            term,
            new_primary: new,
            old_primary: old,
            starts_ms: now_ms,
            ends_ms: Some(now_ms + 5 * 60_000),
            labels: BTreeMap::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dcs::LeaderRecord;
    use crate::position::Position;

    fn member(node: &str, role: DbRole, lag: Option<f64>, streaming: bool) -> MemberRecord {
        MemberRecord {
            node: node.into(),
            api_url: String::new(),
            db_host: "127.0.0.1".into(),
            db_port: 5432,
            health: DbHealth::Running,
            role: Some(role),
            position: Some(Position::new(1, 1)),
            receive_lsn: None,
            replay_lsn: None,
            streaming,
            upstream: None,
            lag_seconds: lag,
            lag_bytes: Some(0),
            timeline_history: vec![],
            priority: 100,
            eligible: true,
            ineligible_reason: None,
            state: String::new(),
            refusal: None,
            refusal_kind: None,
            term: None,
            paused: false,
            updated_ms: 0,
            version: String::new(),
            sync: None,
            gtid: None,
        }
    }

    #[test]
    fn errant_transactions_are_alerted_once() {
        let mut e = eval();
        let c = cluster("mdb1");
        let mut m = member("mdb3", DbRole::Replica, Some(1.0), true);
        m.gtid = Some(crate::engine::GtidStatus { errant: Some("0-3-51".into()), ..Default::default() });
        let a = e.evaluate(&facts(0, &m, &c));
        assert_eq!((a[0].name.as_str(), a[0].status), ("ErrantTransactions", Status::Firing));
        assert!(a[0].description.contains("0-3-51"));
        assert!(e.evaluate(&facts(1000, &m, &c)).is_empty(), "deduplicated");
    }

    fn eval() -> Evaluator {
        Evaluator::new(
            "lab",
            "pg2",
            Thresholds {
                lag_alert: Duration::from_secs(30),
                broken_for: Duration::from_secs(10),
                dcs_for: Duration::from_secs(5),
                runbook_base: "runbooks".into(),
            },
        )
    }

    fn cluster(leader: &str) -> ClusterState {
        ClusterState { leader: Some(LeaderRecord { node: leader.into(), since_ms: 0 }), term: Some(9), ..Default::default() }
    }

    fn facts<'a>(now: u64, me: &'a MemberRecord, c: &'a ClusterState) -> Facts<'a> {
        Facts {
            now_ms: now,
            me,
            cluster: Some(c),
            dcs_down_since_ms: None,
            silent_peers: vec![],
            refusal: None,
            held_down: false,
            sync_problems: vec![],
        }
    }

    #[test]
    fn lag_alert_fires_above_30s_once_and_resolves() {
        let mut e = eval();
        let c = cluster("pg1");
        let ok = member("pg2", DbRole::Replica, Some(29.0), true);
        assert!(e.evaluate(&facts(0, &ok, &c)).is_empty());
        let bad = member("pg2", DbRole::Replica, Some(31.0), true);
        let a = e.evaluate(&facts(1000, &bad, &c));
        assert_eq!(a.len(), 1);
        assert_eq!((a[0].name.as_str(), a[0].status), ("ReplicationLag", Status::Firing));
        assert!(a[0].runbook.ends_with("lag.md"));
        assert!(e.evaluate(&facts(2000, &bad, &c)).is_empty(), "deduplicated");
        let a = e.evaluate(&facts(3000, &ok, &c));
        assert_eq!((a.len(), a[0].status), (1, Status::Resolved));
    }

    #[test]
    fn broken_replication_waits_for_its_for_duration() {
        let mut e = eval();
        let c = cluster("pg1");
        let m = member("pg2", DbRole::Replica, Some(1.0), false);
        assert!(e.evaluate(&facts(0, &m, &c)).is_empty());
        assert!(e.evaluate(&facts(9_000, &m, &c)).is_empty());
        assert_eq!(e.evaluate(&facts(10_000, &m, &c))[0].name, "ReplicationBroken");
    }

    #[test]
    fn peer_silent_is_raised_by_the_leader_only() {
        let c = cluster("pg2");
        let me = member("pg2", DbRole::Primary, None, false);
        let mut e = eval();
        let mut f = facts(0, &me, &c);
        f.silent_peers = vec![("pg3".into(), PeerDb::ReadOnly)];
        let a = e.evaluate(&f);
        assert_eq!((a[0].name.as_str(), a[0].node.as_str()), ("PeerSilent", "pg3"));
        let c = cluster("pg1");
        let mut f = facts(0, &me, &c);
        f.silent_peers = vec![("pg3".into(), PeerDb::ReadOnly)];
        assert!(eval().evaluate(&f).is_empty(), "a replica leaves it to the leader");
    }

    #[test]
    fn a_bad_etcd_value_is_alerted_by_one_member_with_its_key() {
        let mut c = cluster("pg2");
        c.bad_values = vec![crate::dcs::BadValue { key: "pause".into(), problem: "not a valid value".into() }];
        let me = member("pg2", DbRole::Primary, None, false);
        let a = eval().evaluate(&facts(0, &me, &c));
        assert_eq!((a[0].name.as_str(), a[0].node.as_str()), ("BadEtcdValue", "pause"));
        let me = member("pg1", DbRole::Replica, Some(1.0), true);
        assert!(eval().evaluate(&facts(0, &me, &c)).iter().all(|a| a.name != "BadEtcdValue"), "the leader alone reports it");
    }

    #[test]
    fn etcd_unreachable_after_its_for() {
        let mut e = eval();
        let me = member("pg2", DbRole::Replica, Some(1.0), true);
        let f = Facts {
            now_ms: 6000,
            me: &me,
            cluster: None,
            dcs_down_since_ms: Some(0),
            silent_peers: vec![],
            refusal: None,
            held_down: false,
            sync_problems: vec![],
        };
        assert_eq!(e.evaluate(&f)[0].name, "EtcdUnreachable");
    }
}
