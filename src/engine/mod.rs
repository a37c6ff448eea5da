//! The database behind the sidecar. Each engine (PostgreSQL in
//! `postgres`, MariaDB and MySQL in `mysql`) implements [`Engine`]; the HA
//! loop only speaks this trait.

pub mod mysql;
pub mod postgres;

use crate::core::{LocalObs, PeerDb};
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
    /// MariaDB/MySQL: the leader's GTID history (`gtid_binlog_state` or
    /// `gtid_executed`) and server uuid, to find errant transactions.
    pub gtid_state: Option<String>,
    pub server_uuid: Option<String>,
}

/// MariaDB/MySQL replication details, published in the member key and
/// shown by `vigil status` and `/cluster`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GtidStatus {
    /// `mariadb`, `mysql-8.0` or `mysql-8.4`.
    pub flavor: String,
    pub server_id: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_uuid: Option<String>,
    /// Applied transactions (MariaDB GTID list / MySQL GTID set).
    pub executed: String,
    /// Received transactions (applied included).
    pub received: String,
    /// The server's own GTID history: MariaDB `gtid_binlog_state`, MySQL
    /// `gtid_executed`.
    pub binlog_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_running: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sql_running: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds_behind: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Transactions this replica has that the primary never had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errant: Option<String>,
    /// MariaDB semi-synchronous replication: on a primary, whether commits
    /// wait for a replica's acknowledgement; on a replica, whether it
    /// acknowledges.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub semi_sync: bool,
    /// Primary: the server_ids of the replicas connected to it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connected_replicas: Vec<u32>,
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
    /// MariaDB/MySQL replication details.
    pub gtid: Option<GtidStatus>,
    /// Primary: connected replicas by name and the position each flushed.
    pub standbys: Vec<(String, Lsn)>,
}

impl Observation {
    /// Nothing seen yet: no server process. Engines fill in what they find.
    pub fn down() -> Self {
        Observation {
            local: LocalObs {
                health: crate::core::DbHealth::Down,
                failed_checks: 0,
                good_checks: 0,
                role: None,
                position: None,
                streaming: false,
                last_streamed_ago: None,
                data_age: None,
                replica_caught_up: false,
                blocker: None,
                primary_at_rest: false,
                starting_writable: false,
                promote_pending: false,
            },
            receive_lsn: None,
            replay_lsn: None,
            upstream: None,
            lag_seconds: None,
            timeline_history: vec![],
            error: None,
            gtid: None,
            standbys: vec![],
        }
    }
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
    /// Returns true when the running server process exits; false at once
    /// when none runs. Waits on a pidfd, so an idle sidecar does not poll.
    fn wait_server_exit(&self) -> impl Future<Output = bool> + Send {
        let pid = self.server_pid();
        async move {
            match pid {
                Some(pid) => {
                    crate::proc::wait_exit(pid).await;
                    true
                }
                None => false,
            }
        }
    }
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
    /// Stops writes (planned switchover; PostgreSQL shuts down cleanly and
    /// is marked to come back only as a replica, MariaDB/MySQL turn
    /// read-only) and returns the position the target must reach
    /// (received position ≥ it) before it may take over.
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
    /// Synchronous mode: makes a commit wait until one of `standbys` has
    /// flushed it (an empty list: asynchronous). Idempotent.
    fn set_synchronous(&self, standbys: &[String]) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Synchronous mode, on a replica: whether it is a member of the
    /// leader's synchronous set. Engines where the replica itself decides
    /// to acknowledge (MariaDB semi-sync) turn acknowledgements on only
    /// while it is, so that every acknowledgement comes from a member of
    /// the set; PostgreSQL's primary names its standbys and ignores this.
    fn set_sync_member(&self, _member: bool) -> impl Future<Output = anyhow::Result<()>> + Send {
        async { Ok(()) }
    }
    /// Does the database at host:port accept writes? A probe that gets no
    /// answer says whether anything took the connection ([`no_answer`]).
    fn probe_writable(&self, host: &str, port: u16) -> impl Future<Output = PeerDb> + Send;
}

/// A connection failed before anything took it: refused (no server
/// listens) or no route to the host (an `io::Error` in the chain).
pub(crate) fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    use std::io::ErrorKind::{AddrNotAvailable, ConnectionRefused, HostUnreachable, NetworkUnreachable};
    crate::net::io_error_in_chain(e, &[ConnectionRefused, HostUnreachable, NetworkUnreachable, AddrNotAvailable])
}

/// What a probe of a peer's database that got no answer ran into: a server
/// that takes connections and says nothing (frozen, hung, starting,
/// overloaded) or nothing at all (no server listens, the host is gone).
/// Asked only after a failed probe, with a bare TCP connection, because the
/// drivers' errors do not say reliably which step failed.
pub(crate) async fn no_answer(host: &str, port: u16) -> PeerDb {
    const WITHIN: std::time::Duration = std::time::Duration::from_millis(500);
    match tokio::time::timeout(WITHIN, tokio::net::TcpStream::connect((host, port))).await {
        Ok(Ok(_)) => PeerDb::Silent,
        _ => PeerDb::Unreachable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MariaDB/MySQL probe tells "nothing listens" from silence by the
    /// driver's error chain: a refusal is found however deep it sits, a
    /// timeout is not one.
    #[tokio::test]
    async fn a_refusal_is_told_apart_from_silence() {
        #[derive(Debug)]
        struct Wrapped(std::io::Error);
        impl std::fmt::Display for Wrapped {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                write!(f, "driver: {}", self.0)
            }
        }
        impl std::error::Error for Wrapped {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = free.local_addr().unwrap().port();
        drop(free);
        let e = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap_err();
        assert!(refused(&Wrapped(e)));
        assert!(!refused(&Wrapped(std::io::Error::new(std::io::ErrorKind::TimedOut, "connection timed out"))));
        assert_eq!(no_answer("127.0.0.1", port).await, PeerDb::Unreachable);
        let mute = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(no_answer("127.0.0.1", mute.local_addr().unwrap().port()).await, PeerDb::Silent);
    }
}
