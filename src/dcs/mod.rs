//! The distributed configuration store: what vigil keeps in etcd, and the
//! trait the HA loop and the CLI use to read and write it.
//!
//! Keyspace under `<prefix>/<cluster>/`:
//! `leader` (bound to the leader's lease; its create revision is the term),
//! `members/<node>` (bound to each sidecar's own lease), `history/<term>`,
//! `pause`, `switchover` (a pending operator request), `incident` (what the
//! old primary saw before it released the key).

pub mod decode;
pub mod etcd;
pub mod memory;

use crate::core::{DbHealth, DbRole, RequestKind};
use crate::position::{Lsn, Position, TimelineSwitch};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::future::Future;

pub use decode::BadValue;
pub use etcd::EtcdDcs;

pub use crate::clock::now_ms;

/// Value of the `leader` key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LeaderRecord {
    pub node: String,
    pub since_ms: u64,
}

/// Value of `members/<node>`: one sidecar's view of its own node, refreshed
/// every loop.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MemberRecord {
    pub node: String,
    pub api_url: String,
    pub db_host: String,
    pub db_port: u16,
    pub health: DbHealth,
    pub role: Option<DbRole>,
    pub position: Option<Position>,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub streaming: bool,
    /// The host:port this replica streams from.
    pub upstream: Option<String>,
    /// Heartbeat lag in seconds (replicas).
    pub lag_seconds: Option<f64>,
    /// Bytes behind the primary's last published position (replicas).
    pub lag_bytes: Option<u64>,
    /// Primary: its timeline history, so that followers can tell whether
    /// they diverged.
    #[serde(default)]
    pub timeline_history: Vec<TimelineSwitch>,
    pub priority: u32,
    pub eligible: bool,
    pub ineligible_reason: Option<String>,
    /// What the HA loop is doing, in words.
    pub state: String,
    /// The last refusal to fail over, with its reason.
    pub refusal: Option<String>,
    /// Its kind, for metrics and alerts (never parsed from the text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal_kind: Option<crate::core::RefusalKind>,
    /// The term this node leads in, if it leads.
    pub term: Option<i64>,
    pub paused: bool,
    pub updated_ms: u64,
    pub version: String,
    /// File, session and configuration sync status.
    #[serde(default)]
    pub sync: Option<crate::sync::SyncReport>,
    /// MariaDB/MySQL: GTID positions, thread states, errant transactions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gtid: Option<crate::engine::GtidStatus>,
}

/// One step of a failover or switchover, with when it happened.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Step {
    pub name: String,
    pub at_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// A candidate as the new primary saw it when it took over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CandidateRecord {
    pub node: String,
    pub position: Option<Position>,
    pub eligible: bool,
    pub reason: Option<String>,
}

/// What a change of primary was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistoryKind {
    /// Automatic: the old primary was lost or gave up its key.
    Failover,
    /// Planned, by an operator.
    Switchover,
    /// An operator named the new primary.
    ManualFailover,
    /// The cluster's first primary.
    Bootstrap,
    /// The last recorded primary took its own key back and promoted again
    /// (it had fenced itself, say when its lease looked lapsed under a slow
    /// etcd): no change of primary, so no hold-down. Recorded as a failover,
    /// it held every replica down for `hold_down` while the retaking node
    /// deferred to one of them (the 30-minute simulation run, seed 7441453).
    Retake,
}

impl HistoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            HistoryKind::Failover => "failover",
            HistoryKind::Switchover => "switchover",
            HistoryKind::ManualFailover => "manual_failover",
            HistoryKind::Bootstrap => "bootstrap",
            HistoryKind::Retake => "retake",
        }
    }
}

impl std::fmt::Display for HistoryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Value of `history/<term>`: the incident record of one change of primary.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HistoryRecord {
    pub term: i64,
    pub kind: HistoryKind,
    pub reason: String,
    pub old_primary: Option<String>,
    pub new_primary: String,
    pub at_ms: u64,
    pub steps: Vec<Step>,
    pub candidates: Vec<CandidateRecord>,
    /// The old primary's last published position and the new primary's position.
    pub old_position: Option<Position>,
    pub new_position: Option<Position>,
    /// Where the new primary's database and sidecar answer. Its member key
    /// lapses with its sidecar; this record does not, so a sidecar that
    /// started after both can still look at the last primary before it
    /// promotes (the 15-minute simulation run, seed 7232913).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_primary_at: Option<Address>,
    /// The new primary's database did promote: set in the record written
    /// after the promotion, not in the one written when the key was won.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promoted: bool,
}

/// Where a node's sidecar API and database answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Address {
    pub api_url: String,
    pub db_host: String,
    pub db_port: u16,
}

impl HistoryRecord {
    /// Automatic failovers count for hold-down; switchovers, manual
    /// failovers and bootstraps do not.
    pub fn is_automatic_failover(&self) -> bool {
        self.kind == HistoryKind::Failover
    }
}

/// Value of the `switchover` key: an operator's pending request.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RequestRecord {
    pub kind: RequestKind,
    pub from: Option<String>,
    pub to: String,
    pub allow_data_loss: bool,
    pub requested_ms: u64,
    /// Steps the old primary already took (switchover), handed to the new
    /// primary for the history record.
    #[serde(default)]
    pub steps: Vec<Step>,
    /// Set when the target refused the request, with the reason; the
    /// requester reads it and clears the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// Value of the `sync` key (synchronous mode): the replicas named in the
/// primary's `synchronous_standby_names` (`ANY 1 (...)`). One of them
/// flushed every acknowledged commit. The primary adds a replica here
/// before it names it in PostgreSQL, and drops one only once another
/// member of the set has all the WAL the dropped one could have.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SyncRecord {
    pub leader: String,
    pub standbys: Vec<String>,
    pub updated_ms: u64,
    /// Members named before they had everything the leader had when it
    /// named them, with that position (the leader's, then): until one has
    /// it, commits acknowledged before it joined may be on the leader
    /// alone, so it may not take over.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub joining: std::collections::BTreeMap<String, crate::position::Position>,
}

/// Value of the `status` key, written by the leader each time it writes
/// its heartbeat row, on no lease: it outlives its leader, so that a
/// replica can tell how old its data is against the last primary's last
/// moment, whenever its own sidecar started (`core::stale_replica`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatusRecord {
    pub leader: String,
    /// When the heartbeat row was written (the leader node's clock, as the
    /// row's own time is).
    pub heartbeat_ms: u64,
    pub position: Option<crate::position::Position>,
}

/// Value of the `incident` key: what the old primary saw before it gave
/// up the key, for the new primary's history record.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IncidentRecord {
    /// The old primary that released the key ("" when it did not: lost).
    pub node: String,
    pub reason: String,
    pub failure_seen_ms: u64,
    pub released_ms: u64,
    /// Further events of the same incident (e.g. a vetoed promotion).
    #[serde(default)]
    pub notes: Vec<Step>,
    #[serde(default)]
    pub created_ms: u64,
}

/// Value of the `pause` key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PauseRecord {
    pub paused_ms: u64,
    pub by: String,
}

/// Everything one read of the cluster's keys returns.
#[derive(Debug, Clone, Default)]
pub struct ClusterState {
    pub leader: Option<LeaderRecord>,
    /// The leader key's create revision.
    pub term: Option<i64>,
    /// The lease the leader key is bound to.
    pub leader_lease: Option<i64>,
    pub members: BTreeMap<String, MemberRecord>,
    pub pause: Option<PauseRecord>,
    pub request: Option<RequestRecord>,
    /// The newest history record.
    pub last_history: Option<HistoryRecord>,
    pub incident: Option<IncidentRecord>,
    pub sync: Option<SyncRecord>,
    /// The last leader's last heartbeat (`status` key).
    pub status: Option<StatusRecord>,
    /// The `sync` key exists but cannot be read: the synchronous set is
    /// unknown (not absent), so nobody may be promoted automatically.
    pub sync_unreadable: bool,
    /// Values that were read and ignored, each with its key and why
    /// (`decode.rs`); logged, shown by `vigil status` and alerted.
    pub bad_values: Vec<BadValue>,
}

/// The coordination store as the HA loop and the CLI see it. Every call
/// has a deadline; none blocks longer than the configured request timeout
/// times the number of endpoints.
pub trait Dcs: Send + Sync + 'static {
    /// Reads leader, members, pause, pending request and the last history record.
    fn load(&self) -> impl Future<Output = anyhow::Result<ClusterState>> + Send;
    /// Writes this node's member key (on its own lease, renewed here).
    fn put_member(&self, rec: &MemberRecord) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Renews the leader lease. Ok(false) when the lease is gone.
    fn renew_leader(&self) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Creates the leader key if absent. Returns the term when won.
    fn acquire_leader(&self, rec: &LeaderRecord) -> impl Future<Output = anyhow::Result<Option<i64>>> + Send;
    /// Takes over the lease of a leader key written by an earlier process
    /// of this node (term = the key's create revision). A lease granted
    /// with another ttl than the configured one is replaced by one of the
    /// configured ttl, keeping the key's value and term.
    fn adopt_leader(&self, lease: i64, term: i64) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Deletes the leader key (revokes its lease).
    fn release_leader(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Forgets the leader lease locally without touching etcd.
    fn forget_leader(&self);
    fn holds_leader(&self) -> bool;

    fn history(&self) -> impl Future<Output = anyhow::Result<Vec<HistoryRecord>>> + Send;
    /// Writes (Some) or deletes (None) a plain key under the cluster's
    /// prefix, without a lease; the record setters below go through it.
    fn set_or_delete(&self, name: &str, value: Option<Vec<u8>>) -> impl Future<Output = anyhow::Result<()>> + Send;
    fn put_history(&self, rec: &HistoryRecord) -> impl Future<Output = anyhow::Result<()>> + Send {
        let (name, value) = (format!("history/{:020}", rec.term), serde_json::to_vec(rec));
        async move { self.set_or_delete(&name, Some(value?)).await }
    }
    /// Deletes `history/<term>` (a promotion abandoned before it happened).
    fn delete_history(&self, term: i64) -> impl Future<Output = anyhow::Result<()>> + Send {
        async move { self.set_or_delete(&format!("history/{term:020}"), None).await }
    }
    fn set_pause(&self, pause: Option<PauseRecord>) -> impl Future<Output = anyhow::Result<()>> + Send {
        let value = pause.map(|p| serde_json::to_vec(&p)).transpose();
        async move { self.set_or_delete("pause", value?).await }
    }
    fn set_request(&self, req: Option<RequestRecord>) -> impl Future<Output = anyhow::Result<()>> + Send {
        let value = req.map(|r| serde_json::to_vec(&r)).transpose();
        async move { self.set_or_delete("switchover", value?).await }
    }
    fn set_incident(&self, rec: Option<IncidentRecord>) -> impl Future<Output = anyhow::Result<()>> + Send {
        let value = rec.map(|r| serde_json::to_vec(&r)).transpose();
        async move { self.set_or_delete("incident", value?).await }
    }
    fn set_sync(&self, rec: &SyncRecord) -> impl Future<Output = anyhow::Result<()>> + Send {
        let value = serde_json::to_vec(rec);
        async move { self.set_or_delete("sync", Some(value?)).await }
    }
    fn set_status(&self, rec: &StatusRecord) -> impl Future<Output = anyhow::Result<()>> + Send {
        let value = serde_json::to_vec(rec);
        async move { self.set_or_delete("status", Some(value?)).await }
    }

    /// Takes (or confirms it holds) the lock `locks/<name>`, bound to this
    /// sidecar's member lease, so it lapses with the sidecar.
    fn try_lock(&self, name: &str) -> impl Future<Output = anyhow::Result<bool>> + Send;
    /// Deletes this node's member key (clean shutdown).
    fn remove_member(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
}
