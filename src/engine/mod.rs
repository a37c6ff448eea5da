//! The database behind the sidecar. Each engine (PostgreSQL now;
//! MySQL/MariaDB later) implements [`Engine`]; the HA loop only speaks
//! this trait.

pub mod postgres;

use crate::core::LocalObs;
use crate::position::{Lsn, TimelineSwitch};
use std::future::Future;

/// The node a replica should stream from.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub node: String,
    pub host: String,
    pub port: u16,
    /// The leader's current timeline and its history, when it published them.
    pub timeline: Option<u32>,
    pub history: Vec<TimelineSwitch>,
}

/// Everything one look at the local database yields.
#[derive(Debug, Clone)]
pub struct Observation {
    /// What the decision core needs.
    pub local: LocalObs,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// host:port the replica is configured to stream from.
    pub upstream: Option<String>,
    /// Heartbeat lag (replicas).
    pub lag_seconds: Option<f64>,
    /// The primary's timeline history (primaries only).
    pub timeline_history: Vec<TimelineSwitch>,
    /// Why the last check failed, if it did.
    pub error: Option<String>,
}

/// What `follow` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FollowOutcome {
    /// Already streaming from the right place.
    Unchanged,
    /// Re-pointed to the new upstream (reload).
    Repointed,
    /// Its timeline diverged from the leader's: it must be rewound.
    Diverged,
}

pub trait Engine: Send + Sync + 'static {
    /// Looks at the local database, within the query timeout.
    fn observe(&self) -> impl Future<Output = Observation> + Send;
    /// The server process, for the watcher that notices a crash at once.
    fn server_pid(&self) -> Option<i32>;
    /// Upserts the heartbeat row with the leader's term.
    fn write_heartbeat(&self, node: &str, term: i64) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Promotes the local replica and returns once it accepts writes.
    fn promote(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Makes the local database read-only: stopped and restarted as a
    /// replica without an upstream.
    fn fence(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Starts the crashed primary again in place (crash recovery).
    fn restart_in_place(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Makes the running replica stream from `up`.
    fn follow(&self, up: &Upstream, obs: &Observation) -> impl Future<Output = anyhow::Result<FollowOutcome>> + Send;
    /// Brings a stopped (or diverged) node back as a replica of `up`:
    /// rewinds it when needed, falls back to a fresh base backup when a
    /// rewind is impossible or `attempt` shows earlier rejoins did not
    /// work. Returns a sentence saying what it did.
    fn rejoin(&self, up: &Upstream, attempt: u32) -> impl Future<Output = anyhow::Result<String>> + Send;
    /// Stops the database cleanly (planned switchover), marks it to come
    /// back only as a replica, and returns the position of its shutdown
    /// checkpoint, which the target must have.
    fn stop_for_switchover(&self) -> impl Future<Output = anyhow::Result<Lsn>> + Send;
    /// Undoes `stop_for_switchover`: starts again as the primary.
    fn resume_as_primary(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Starts the stopped database in the role its data directory has.
    fn start(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// SIGKILLs the server process (a hung primary that gives up its key
    /// must not wake up writable).
    fn kill_server(&self) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Marks a stopped database so that it can only start as a replica
    /// (after it gave up the leader key).
    fn mark_replica(&self) -> anyhow::Result<()>;
    /// Does the database at host:port accept writes? None: unreachable.
    fn probe_writable(&self, host: &str, port: u16) -> impl Future<Output = Option<bool>> + Send;
}
