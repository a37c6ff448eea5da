//! What the sidecar knows right now, shared between the HA loop (which
//! writes it once per iteration) and the HTTP API (which only reads it).

use crate::dcs::{ClusterState, MemberRecord};
use std::sync::RwLock;

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// This node's member record as last published.
    pub me: Option<MemberRecord>,
    /// The cluster as last read from etcd.
    pub cluster: ClusterState,
    /// The last etcd read succeeded.
    pub dcs_ok: bool,
    pub dcs_error: Option<String>,
    /// When the last etcd read succeeded, wall clock (shown and exported).
    pub dcs_last_ok_ms: u64,
    /// The same, monotonic: what "does this node reach etcd?" is measured
    /// by, so that a wall-clock jump cannot make a member that reaches etcd
    /// vouch for a leader in a failsafe round.
    pub dcs_last_ok: Option<crate::clock::Instant>,
    /// This sidecar holds the leader key and its database took the last
    /// heartbeat write: the only state in which `/primary` says 200.
    pub writable_leader: bool,
    pub holds_leader: bool,
    pub term: Option<i64>,
    pub last_loop_ms: u64,
    /// Failovers this process took part in as the new primary.
    pub promotions: u64,
    /// Keys of the alerts firing now.
    pub alerts_firing: Vec<String>,
    /// Alert notifications delivered, failed after retries, dropped.
    pub alert_deliveries: (u64, u64, u64),
    /// The term this node last published in DNS.
    pub dns_published_term: Option<i64>,
    pub dns_failures: u64,
    /// When this member last vouched for a leader in a failsafe round.
    pub last_vouch: Option<crate::clock::Instant>,
    /// The latest sync report of the background collector.
    pub sync: Option<crate::sync::SyncReport>,
    /// The action the loop is executing now, if any.
    pub action: Option<ActionUnderWay>,
}

/// An action of the loop under way: its name and since when.
#[derive(Debug, Clone, Copy)]
pub struct ActionUnderWay {
    /// `core::Action::name`, the metric label.
    pub name: &'static str,
    pub since: crate::clock::Instant,
}

/// The snapshot behind an `Arc`: readers (the API, the simulation's
/// checks, each loop) take a reference, not a copy of the whole cluster
/// view; a writer copies only while a reader still holds the old one.
#[derive(Default)]
pub struct Shared {
    snapshot: RwLock<std::sync::Arc<Snapshot>>,
}

impl crate::sync::RoleSource for Shared {
    fn leading_term(&self) -> Option<i64> {
        let s = self.get();
        s.writable_leader.then_some(s.term).flatten()
    }
}

impl Shared {
    pub fn get(&self) -> std::sync::Arc<Snapshot> {
        std::sync::Arc::clone(&self.snapshot.read().unwrap_or_else(|e| e.into_inner()))
    }
    pub fn update(&self, f: impl FnOnce(&mut Snapshot)) {
        f(std::sync::Arc::make_mut(&mut self.snapshot.write().unwrap_or_else(|e| e.into_inner())));
    }
}
