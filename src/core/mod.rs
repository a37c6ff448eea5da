//! The decision core: observations in, actions out, no I/O.
//!
//! `decide` is called once per HA loop iteration with everything the loop
//! observed (its own database, the cluster as etcd shows it, its own lease,
//! and, when the leader key is vacant, fresh probes of every peer). It
//! returns the actions to take, in order, and the reason for each. Every
//! failover rule of the design lives here, so every rule is a table test
//! (`core/tests.rs`) and the safety invariants are property tests.
//!
//! Invariants this function keeps (see ARCHITECTURE.md):
//! 1. A node promotes only after winning the leader key (`AcquireLeader`
//!    always precedes `Promote`).
//! 2. It never takes the key while an eligible peer is fresher, or while
//!    any peer's database still accepts writes.
//! 3. Nothing automatic happens while paused or held down.
//! 4. A leader whose lease was not renewed within `ttl - safety_margin`
//!    fences its own database.
//! 5. A writable database whose sidecar does not hold the key is fenced.

use crate::config::OnPrimaryCrash;
use crate::position::Position;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub mod event_age;
pub mod failsafe;
pub mod lease;
pub mod members;
pub mod promotion;
pub mod rejoin;
pub mod sync_set;
#[cfg(test)]
mod tests;
pub mod watchdog;

/// The thresholds `decide` applies, taken from the config.
#[derive(Debug, Clone)]
pub struct Policy {
    pub ttl: Duration,
    /// The loop's period (`timing.loop`).
    pub loop_wait: Duration,
    pub safety_margin: Duration,
    pub hold_down: Duration,
    pub fall: u32,
    pub priority: u32,
    pub max_lag_on_failover: u64,
    pub on_primary_crash: OnPrimaryCrash,
    pub restart_budget: Duration,
    pub switchover_timeout: Duration,
    /// Synchronous mode: only a member of the synchronous set that has
    /// every acknowledged commit may be promoted automatically.
    pub synchronous: bool,
    /// Good checks in a row before a recovered database is a candidate.
    pub rise: u32,
    /// PostgreSQL: a promotion opens a new timeline, numbered one past the
    /// one it promoted from. (MariaDB and MySQL positions have none.)
    pub promotion_opens_timeline: bool,
}

/// Is the local database process up, and does it answer?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbHealth {
    /// Answers queries.
    Running,
    /// Process exists but is still starting or recovering.
    Starting,
    /// No server process.
    Down,
    /// A process exists but queries fail or time out.
    Unresponsive,
}

/// Consecutive good and failed checks of the local database, carried from
/// one loop iteration to the next: `rise` good ones before a database that
/// came back is trusted, `fall` failed ones before a primary is given up.
/// Only the loop's own look counts; a peer's `GET /member?fresh=1` looks
/// without counting, so no client can push a member towards "not a
/// candidate" by asking often. A database still starting keeps its count
/// of failures; one with no process, or a new server process, starts again
/// from nothing: the failures of the server a rejoin replaced are not the
/// new one's (the 15-minute simulation run, seed 7122216: a node frozen
/// just after its rejoin restarted its server resumed with the old count,
/// and one slow check after the resume stopped the new server to rejoin a
/// leader whose node was gone).
pub fn count_checks(health: DbHealth, same_process: bool, (good, failed): (u32, u32)) -> (u32, u32) {
    let (good, failed) = if same_process { (good, failed) } else { (0, 0) };
    match health {
        DbHealth::Running => (good.saturating_add(1), 0),
        DbHealth::Unresponsive => (0, failed.saturating_add(1)),
        DbHealth::Starting => (0, failed),
        DbHealth::Down => (0, 0),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DbRole {
    Primary,
    Replica,
}

/// What the sidecar saw of its own database this iteration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LocalObs {
    pub health: DbHealth,
    /// Consecutive failed checks (0 when the last check succeeded).
    pub failed_checks: u32,
    /// Consecutive good checks (0 while it fails); a database that just
    /// came back is not a candidate until `rise` of them.
    #[serde(default)]
    pub good_checks: u32,
    pub role: Option<DbRole>,
    /// Primary: current WAL position. Replica: max(received, replayed),
    /// received counting only once the WAL receiver streamed since start.
    pub position: Option<Position>,
    /// Replica: the WAL receiver is streaming now.
    pub streaming: bool,
    /// Replica: how long ago the WAL receiver was last seen streaming.
    pub last_streamed_ago: Option<Duration>,
    /// Replica: the age of the newest heartbeat row it holds, if another
    /// node wrote it (a primary writes it each loop, in its own clock), that
    /// is how old its data is. It outlives the sidecar, where
    /// `last_streamed_ago` does not. A former primary's own rows say
    /// nothing about what its successors wrote.
    #[serde(default)]
    pub data_age: Option<Duration>,
    /// Primary: at the last observation some replica had flushed all WAL,
    /// so failing over now loses no acknowledged write.
    pub replica_caught_up: bool,
    /// A reason the engine found why this replica must not be promoted
    /// automatically (errant transactions, applier stopped, position
    /// unreadable). A forced manual failover overrides it.
    #[serde(default)]
    pub blocker: Option<String>,
    /// Read-only and replicating from nobody: a MariaDB/MySQL primary at
    /// rest (vigil starts those servers read-only) or a fenced one. Its data
    /// is its own, so not streaming does not make it ineligible.
    #[serde(default)]
    pub primary_at_rest: bool,
    /// Starting: the server will open for writes once it is up (PostgreSQL
    /// without `standby.signal`: a crash recovery that ends as a primary).
    #[serde(default)]
    pub starting_writable: bool,
    /// Replica: a promotion was asked of this server and has not finished
    /// (PostgreSQL: `promote.signal` in the data directory during
    /// recovery). The request outlives the sidecar that made it: the server
    /// may finish it at any time and open for writes.
    #[serde(default)]
    pub promote_pending: bool,
}

impl LocalObs {
    pub fn writable(&self) -> bool {
        self.health == DbHealth::Running && self.role == Some(DbRole::Primary)
    }
}

/// Who holds the leader key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderKey {
    pub node: String,
    /// The key's etcd create revision: the fencing token.
    pub term: i64,
}

/// An operator's request: planned switchover or manual failover.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub kind: RequestKind,
    /// Leader expected to hand over (switchover); None for failover.
    pub from: Option<String>,
    /// The node that must become primary.
    pub to: String,
    pub allow_data_loss: bool,
    /// How long ago it was made.
    #[serde(skip)]
    pub age: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RequestKind {
    Switchover,
    Failover,
}

/// The cluster as etcd shows it.
#[derive(Debug, Clone, Default)]
pub struct View {
    pub leader: Option<LeaderKey>,
    pub paused: bool,
    pub request: Option<Request>,
    /// Age of the last automatic failover (from history), for hold-down.
    pub last_failover_age: Option<Duration>,
    /// The primary the newest history record names (the last legitimate one).
    pub last_primary: Option<String>,
    /// The old primary that released the key on purpose (the incident
    /// record), until the new primary records its promotion.
    pub released_by: Option<String>,
    /// The last position the primary published, for `max_lag_on_failover`.
    pub last_primary_position: Option<Position>,
    /// Where the primary the newest history record names stood when it
    /// promoted, once that record says its database did promote (it can be
    /// fenced before its member record ever shows it primary). None while
    /// only the record written when the key was won exists: a node lost in
    /// the middle of its promotion must not hold the cluster without a
    /// primary until it returns.
    pub last_promoted_from: Option<Position>,
    /// Synchronous mode: the replicas one of which flushed every
    /// acknowledged commit (the `sync` key), if recorded.
    pub sync_standbys: Option<Vec<String>>,
    /// The leader that recorded that set.
    pub sync_leader: Option<String>,
    /// Members of that set still joining it, with the leader's position
    /// when it named them (see `sync_set`).
    pub sync_joining: std::collections::BTreeMap<String, Position>,
    /// Synchronous mode: the `sync` key exists but could not be read, so
    /// the set is unknown (not absent: that would mean "none recorded").
    pub sync_unreadable: bool,
    /// How long ago this node first saw the leader key vacant (None while a
    /// leader holds it). Windows about the leader's loss are measured from
    /// this event, not from now.
    pub leader_lost_ago: Option<Duration>,
    /// How long ago the last leader last wrote its heartbeat row (the
    /// `status` key): the last moment it could take writes, whoever saw
    /// it and whenever this sidecar started.
    pub leader_heartbeat_ago: Option<Duration>,
}

/// What the loop knows about its own hold on the leader key.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeaseState {
    /// This process holds the leader key.
    pub held: bool,
    /// Time since the leader lease was last renewed.
    pub renewed_ago: Option<Duration>,
    /// This process gave the current leader key up (`ReleaseLeader`), and
    /// the key is still there: etcd did not carry the revoke out in time.
    pub given_up: bool,
}

/// A fresh look at one peer, taken only when the leader key is vacant.
#[derive(Debug, Clone, PartialEq)]
pub struct PeerObs {
    pub node: String,
    /// A direct look at its database.
    pub db: PeerDb,
    /// What its sidecar reports, if the sidecar answers or its member key lives.
    pub candidate: Option<Candidate>,
    /// How its sidecar answered the fresh look; `candidate` comes from its
    /// member key (which can be a loop old) unless it answered.
    pub sidecar: PeerSidecar,
}

impl PeerObs {
    /// Its database accepts writes.
    pub fn writable(&self) -> bool {
        self.db == PeerDb::Writable
    }

    /// The candidate came from the peer's sidecar just now.
    pub fn answered(&self) -> bool {
        self.sidecar == PeerSidecar::Answered
    }
}

/// What a direct connection to a peer's database found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerDb {
    /// It accepts writes.
    Writable,
    /// It answered and is read-only (a standby, or fenced).
    ReadOnly,
    /// Nothing accepted the connection: no server listens, or the host is
    /// gone.
    Unreachable,
    /// Something accepted the connection but did not say in time whether
    /// it accepts writes: a frozen, hung, starting or overloaded server.
    Silent,
}

/// How a peer's sidecar answered the fresh look (`GET /member`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerSidecar {
    Answered,
    /// No answer in time: its node may be lost, frozen or cut off.
    Silent,
    /// No answer in time, and the last look found no sidecar running there,
    /// with no sign of one since (its member record not rewritten): a
    /// silent node nobody will fence when it resumes.
    SilentAfterNotRunning,
    /// Its host refused the connection: no sidecar runs there.
    NotRunning,
    /// Not asked: a server known only as the upstream this replica streams
    /// from (its member key lapsed before this sidecar started), so nobody
    /// knows where its sidecar would answer.
    Unknown,
}

impl PeerSidecar {
    /// Nothing says a sidecar runs beside that database to fence it.
    pub fn none_known(self) -> bool {
        matches!(self, PeerSidecar::NotRunning | PeerSidecar::SilentAfterNotRunning | PeerSidecar::Unknown)
    }
}

/// A peer as a promotion candidate.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub position: Option<Position>,
    pub priority: u32,
    /// Its own verdict on whether it may be promoted.
    pub eligible: bool,
    pub is_primary: bool,
    /// Its last decision refused because of hold_down. Each node times
    /// hold_down from its own first read of the history record, so a
    /// sidecar that restarted late can be held down while this one is not.
    pub held_down: bool,
}

/// Crash-handling memory kept by the loop between iterations.
#[derive(Debug, Clone, Copy, Default)]
pub struct CrashState {
    /// When the loop began restarting the crashed primary in place.
    pub restart_started_ago: Option<Duration>,
}

/// Everything `decide` looks at.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub me: String,
    pub policy: Policy,
    pub local: LocalObs,
    /// None when etcd could not be read this iteration.
    pub view: Option<View>,
    pub lease: LeaseState,
    pub peers: Vec<PeerObs>,
    pub crash: CrashState,
    /// How long ago this node's `pre_promote` hook vetoed its promotion.
    pub vetoed_ago: Option<Duration>,
    /// How long ago this member last vouched for a leader in a failsafe
    /// round (it said it cannot reach etcd either). The vouch stands in
    /// for the leader's lease, so it is kept for `ttl`.
    pub vouched_ago: Option<Duration>,
    /// This process tried to take the vacant key back for its writable
    /// database and failed (the request timed out or another node won),
    /// with the same server process still writable: it is fenced rather
    /// than tried again.
    pub retake_failed: bool,
}

/// One step for the loop to carry out, in order. When a step fails the
/// loop stops executing this decision and the next iteration decides anew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// The key names this node but belongs to an earlier process of it: take
    /// over its lease.
    AdoptLeader,
    /// Keep the write-right visible: write the heartbeat row with the term.
    WriteHeartbeat,
    /// Create the leader key if absent, bound to a fresh lease.
    AcquireLeader,
    /// Promote the local replica (only after AcquireLeader or AdoptLeader).
    Promote,
    /// Delete the leader key so that a replica can take over.
    ReleaseLeader { reason: String },
    /// Make the local database read-only (demote to a standby with no upstream).
    Fence { reason: String },
    /// Restart a crashed primary in place (crash recovery loses nothing).
    RestartInPlace,
    /// Start the stopped database in the role its data directory has (no
    /// leader exists to follow). A former primary that comes up writable
    /// then either takes the key or is fenced on the next iteration.
    Start,
    /// Start the stopped database as a replica without an upstream (its
    /// data directory may say primary, but a later primary exists).
    StartReplica,
    /// Start a stopped database as a replica of `leader` (rewinding it when
    /// its timeline diverged).
    Rejoin { leader: String },
    /// Make sure the local replica streams from `leader`.
    Follow { leader: String },
    /// Planned switchover: stop writes, wait for `to` to have everything,
    /// release the key to it.
    HandOver { to: String },
    /// Drop an operator request that need not be carried out (done or expired).
    ClearRequest { reason: String },
    /// Mark an operator request as refused, with the reason, for the
    /// operator to read.
    RefuseRequest { reason: String },
}

impl Action {
    /// The action's name as a metric label (`vigil_action_running`).
    pub fn name(&self) -> &'static str {
        self.words().0
    }

    /// What the node is doing while the action runs, for `vigil status`
    /// ("promoting since 12 s").
    pub fn doing(&self) -> &'static str {
        self.words().1
    }

    /// One table for both, so that they stay in step.
    fn words(&self) -> (&'static str, &'static str) {
        match self {
            Action::AdoptLeader => ("adopt_leader", "adopting the leader key"),
            Action::WriteHeartbeat => ("write_heartbeat", "writing the heartbeat"),
            Action::AcquireLeader => ("acquire_leader", "taking the leader key"),
            Action::Promote => ("promote", "promoting"),
            Action::ReleaseLeader { .. } => ("release_leader", "releasing the leader key"),
            Action::Fence { .. } => ("fence", "fencing"),
            Action::RestartInPlace => ("restart_in_place", "restarting in place"),
            Action::Start => ("start", "starting the database"),
            Action::StartReplica => ("start_replica", "starting the database as a replica"),
            Action::Rejoin { .. } => ("rejoin", "rejoining"),
            Action::Follow { .. } => ("follow", "following"),
            Action::HandOver { .. } => ("hand_over", "handing over"),
            Action::ClearRequest { .. } => ("clear_request", "clearing the request"),
            Action::RefuseRequest { .. } => ("refuse_request", "refusing the request"),
        }
    }
}

/// Why a node refused to take the leader key, for the code that reacts to
/// it; the words for people are in `Decision::refusal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// The cluster is paused.
    Paused,
    /// Within `hold_down` of the last automatic failover.
    HeldDown,
    /// This node is not eligible (the reason says why).
    NotEligible,
    /// Another node's database still accepts writes.
    PeerWritable,
    /// Another node's database takes connections but did not say whether
    /// it accepts writes, and no sidecar runs beside it.
    PeerUnsupervised,
    /// Synchronous mode cannot rule out a lost acknowledged commit.
    Synchronous,
    /// A manual failover to a less fresh node without `--allow-data-loss`.
    LessFresh,
    /// This node vouched for the leader in a failsafe round less than
    /// `ttl` ago.
    Vouched,
}

/// Whether this node may become primary now, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eligibility {
    pub eligible: bool,
    pub reason: Option<String>,
}

impl Eligibility {
    fn yes() -> Self {
        Eligibility { eligible: true, reason: None }
    }
    fn no(reason: impl Into<String>) -> Self {
        Eligibility { eligible: false, reason: Some(reason.into()) }
    }
}

/// The outcome of one iteration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    /// One line on what the node is doing, for `vigil status`.
    pub state: String,
    /// A failover or promotion that was refused, and why.
    pub refusal: Option<String>,
    /// What kind of refusal it is, for the code that reacts to it (alerts,
    /// metrics); the text above is for people.
    pub refusal_kind: Option<RefusalKind>,
    pub eligibility: Eligibility,
}

impl Decision {
    fn new(state: impl Into<String>, eligibility: &Eligibility) -> Self {
        Decision { actions: vec![], state: state.into(), refusal: None, refusal_kind: None, eligibility: eligibility.clone() }
    }
    fn act(mut self, a: Action) -> Self {
        self.actions.push(a);
        self
    }
    fn refuse(mut self, kind: RefusalKind, why: impl Into<String>) -> Self {
        self.refusal = Some(why.into());
        self.refusal_kind = Some(kind);
        self
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// Decides what to do this iteration. Pure: same inputs, same decision.
/// The leader lease held by this process was not renewed for `ttl -
/// safety_margin` (or never was): its database must stop taking writes
/// before anyone else can take the key. One rule for the loop's decision,
/// the lease watchdog and the cancellation of a long action.
pub fn lease_lapsing(lease: &LeaseState, p: &Policy) -> bool {
    let fence_at = p.ttl.saturating_sub(p.safety_margin);
    lease.held && lease.renewed_ago.is_none_or(|a| a >= fence_at)
}

/// The database may be opened for writes (promoted, or started again as
/// primary) only under a held lease that is not lapsing: checked again
/// right before the step, since a node frozen in the middle of an action
/// resumes with the action's next step before anything else runs (the
/// 30-minute simulation run, seed 7555058: a hand-over abandoned after a
/// freeze started the old primary writable beside the new one).
pub fn may_open_for_writes(lease: &LeaseState, p: &Policy) -> bool {
    lease.held && !lease_lapsing(lease, p)
}

pub fn decide(i: &Inputs) -> Decision {
    let elig = eligibility(i);
    let p = &i.policy;

    // Lease safety comes before everything: a leader that could not renew
    // its lease in time makes its database read-only before anyone else
    // can take the key.
    let fence_at = p.ttl.saturating_sub(p.safety_margin);
    let lease_lapsing = lease_lapsing(&i.lease, p);
    let paused = i.view.as_ref().is_some_and(|v| v.paused);

    let Some(view) = &i.view else {
        if i.lease.held {
            if lease_lapsing {
                let reason = format!(
                    "etcd unreachable and the leader lease was last renewed {} ago (fencing at ttl - safety_margin = {})",
                    i.lease.renewed_ago.map(secs).unwrap_or_else(|| "never".into()),
                    secs(fence_at)
                );
                return Decision::new("fencing: leader lease lapsing", &elig).act(Action::Fence { reason });
            }
            let mut d = Decision::new("leading; etcd unreachable, lease still valid", &elig);
            if i.local.writable() {
                d = d.act(Action::WriteHeartbeat);
            }
            return d;
        }
        if i.local.writable() {
            return Decision::new("fencing: writable without the leader key", &elig).act(Action::Fence {
                reason: "database accepts writes but this node does not hold the leader key (etcd unreachable)".into(),
            });
        }
        return Decision::new("etcd unreachable: no failover decisions until it answers", &elig);
    };

    if lease_lapsing && !paused {
        let reason = format!(
            "leader lease last renewed {} ago (fencing at ttl - safety_margin = {})",
            i.lease.renewed_ago.map(secs).unwrap_or_else(|| "never".into()),
            secs(fence_at)
        );
        return Decision::new("fencing: leader lease lapsing", &elig).act(Action::Fence { reason });
    }

    match &view.leader {
        Some(l) if l.node == i.me => lead(i, view, &elig),
        Some(l) => follow(i, view, &l.node, &elig),
        None => race(i, view, &elig),
    }
}

/// This node holds (or held, in an earlier process) the leader key.
fn lead(i: &Inputs, view: &View, elig: &Eligibility) -> Decision {
    let p = &i.policy;
    if !i.lease.held && i.lease.given_up {
        return given_up(i, elig);
    }
    let mut d = Decision::new("leading", elig);
    if !i.lease.held {
        d = d.act(Action::AdoptLeader);
    }
    if view.paused {
        d.state = "leading (paused: no automatic actions)".into();
        if i.local.writable() {
            d = d.act(Action::WriteHeartbeat);
        }
        return d;
    }
    match (i.local.health, i.local.role) {
        (DbHealth::Running, Some(DbRole::Primary)) => {
            if let Some(r) = &view.request {
                if r.to != i.me && r.from.as_deref().is_none_or(|f| f == i.me) {
                    if r.age > p.switchover_timeout {
                        return d.act(Action::ClearRequest { reason: format!("request to hand over to {} expired", r.to) });
                    }
                    d.state = format!("handing over to {}", r.to);
                    return d.act(Action::HandOver { to: r.to.clone() });
                }
                if r.to == i.me {
                    d = d.act(Action::ClearRequest { reason: format!("{} is already the primary", i.me) });
                }
            }
            d.act(Action::WriteHeartbeat)
        }
        (DbHealth::Running, Some(DbRole::Replica)) => {
            // Holds the key but not promoted yet (its sidecar died between
            // the two steps, or it fenced itself when its lease looked
            // lapsed while etcd had kept it): finish the promotion, under
            // the same rule as any promotion. A peer that accepts writes
            // meanwhile (a frozen old primary resumed without its sidecar)
            // holds it up (the 30-minute simulation run, seed 7338080).
            if let Some((kind, why)) = peer_writer_refusal(i) {
                d.state = "leader key held; not promoting beside a writable peer".into();
                return d.refuse(kind, why);
            }
            d.state = "leader key held; promoting".into();
            d.act(Action::Promote)
        }
        (DbHealth::Starting, _) => {
            d.state = "leading; database starting".into();
            if let Some(ago) = i.crash.restart_started_ago {
                if ago >= p.restart_budget {
                    let reason = format!("primary restart did not finish within restart_budget ({})", secs(p.restart_budget));
                    d.state = "releasing leader key".into();
                    return d.act(Action::ReleaseLeader { reason });
                }
            }
            d
        }
        (DbHealth::Unresponsive, _) if i.local.failed_checks < p.fall => {
            d.state = format!("leading; database check failed {}/{}", i.local.failed_checks, p.fall);
            d
        }
        _ => crashed_primary(i, d),
    }
}

/// DESIGN §4: the primary's database died while its sidecar lives.
fn crashed_primary(i: &Inputs, mut d: Decision) -> Decision {
    let p = &i.policy;
    let what = match i.local.health {
        DbHealth::Down => "primary database process is gone".to_string(),
        _ => format!("primary database failed {} checks in a row", i.local.failed_checks),
    };
    // Within hold_down of the last automatic failover nobody may take over
    // automatically, so giving the key up would leave the cluster without
    // a primary: restart in place instead (a flapping node stays put).
    let held_down = i.view.as_ref().and_then(|v| v.last_failover_age).is_some_and(|a| a < p.hold_down);
    let fail_over_now = !held_down
        && match p.on_primary_crash {
            OnPrimaryCrash::Failover => true,
            OnPrimaryCrash::Restart => false,
            OnPrimaryCrash::Auto => i.local.replica_caught_up,
        };
    if fail_over_now {
        d.state = "primary database down: releasing leader key".into();
        let why = if p.on_primary_crash == OnPrimaryCrash::Failover {
            "on_primary_crash = failover"
        } else {
            "a replica had received all WAL, so no acknowledged write is lost"
        };
        return d.act(Action::ReleaseLeader { reason: format!("{what}; {why}") });
    }
    match i.crash.restart_started_ago {
        None => {
            d.state = if held_down {
                "primary database down: restarting in place (held down: no failover within hold_down)".into()
            } else {
                "primary database down: restarting in place".into()
            };
            d.act(Action::RestartInPlace)
        }
        Some(ago) if held_down && ago < p.restart_budget => {
            d.state = "primary database down: restart in progress (held down: no failover within hold_down)".into();
            d
        }
        Some(_) if held_down => {
            // Nobody may take over, so a restart that did not succeed is
            // tried again, once per restart_budget, until hold_down ends.
            // Waiting instead left a server hung right after its restart
            // holding the key, unanswered, for the rest of hold_down (the
            // 30-minute simulation run, seed 8273255: 24 s).
            d.state = format!(
                "primary database down: restart did not succeed within restart_budget ({}); restarting in place again (held down: no failover within hold_down)",
                secs(p.restart_budget)
            );
            d.act(Action::RestartInPlace)
        }
        Some(ago) if ago < p.restart_budget => {
            d.state = format!("primary database down: restart in progress ({} of {})", secs(ago), secs(p.restart_budget));
            d
        }
        Some(_) => {
            d.state = "primary database down: releasing leader key".into();
            d.act(Action::ReleaseLeader {
                reason: format!("{what}; restart in place did not succeed within restart_budget ({})", secs(p.restart_budget)),
            })
        }
    }
}

/// The key still names this node after this process gave it up: the
/// revoke did not reach etcd in time. Adopting the key again, only to try
/// the revoke once more, renews its lease (adoption is a keep-alive): when
/// etcd's writes are slow and its keep-alives are not (its disk stalls), a
/// crashed primary kept its key for as long as the stall lasted and no
/// replica could take over (seen in CI: 20 s). Left alone, the key lapses
/// within ttl of its last renewal.
fn given_up(i: &Inputs, elig: &Eligibility) -> Decision {
    if i.local.writable() {
        return Decision::new("fencing: writable after giving the leader key up", elig)
            .act(Action::Fence { reason: "database accepts writes but this node gave the leader key up".into() });
    }
    Decision::new("leader key given up; waiting for it to lapse (not renewed)", elig)
}

/// Another node holds the key.
fn follow(i: &Inputs, view: &View, leader: &str, elig: &Eligibility) -> Decision {
    if i.local.writable() {
        // Two writable primaries must never coexist, paused or not.
        return Decision::new(format!("fencing: {leader} holds the leader key"), elig)
            .act(Action::Fence { reason: format!("{leader} holds the leader key but this database accepts writes") });
    }
    if i.local.health == DbHealth::Starting && i.local.starting_writable {
        // A primary restarting in place whose sidecar died on the way: its
        // crash recovery ends writable beside the new leader unless it is
        // fenced first (the 30-minute simulation run, seed 7030328).
        return Decision::new(format!("fencing: {leader} holds the leader key"), elig)
            .act(Action::Fence { reason: format!("{leader} holds the leader key but this database is starting as a primary") });
    }
    if i.local.promote_pending {
        // A promotion asked by an earlier process of this sidecar, which
        // died waiting for it: the server would finish it beside the leader
        // (the 15-minute simulation run, seed 7208661, 60 s later). The
        // restart as a replica withdraws it.
        return Decision::new(format!("fencing: {leader} holds the leader key"), elig)
            .act(Action::Fence { reason: format!("{leader} holds the leader key but a promotion of this database is still pending") });
    }
    if view.paused {
        return Decision::new(format!("replica of {leader} (paused)"), elig);
    }
    match i.local.health {
        DbHealth::Down => Decision::new(format!("rejoining {leader}"), elig).act(Action::Rejoin { leader: leader.into() }),
        DbHealth::Starting => Decision::new("database starting", elig),
        // A server that stopped answering (a node frozen and resumed
        // leaves dead-end backends behind) is stopped, escalating to
        // SIGKILL, and rejoined: waiting for it to recover by itself took
        // a minute.
        DbHealth::Unresponsive if i.local.failed_checks >= i.policy.fall => {
            Decision::new(format!("rejoining {leader}: database did not answer {} checks", i.local.failed_checks), elig)
                .act(Action::Rejoin { leader: leader.into() })
        }
        DbHealth::Unresponsive => Decision::new(format!("database check failed {}x", i.local.failed_checks), elig),
        DbHealth::Running => {
            let state =
                if i.local.streaming { format!("streaming from {leader}") } else { format!("following {leader} (not streaming yet)") };
            Decision::new(state, elig).act(Action::Follow { leader: leader.into() })
        }
    }
}

/// The leader key is vacant: take it, or say why not.
fn race(i: &Inputs, view: &View, elig: &Eligibility) -> Decision {
    let d = race_outcome(i, view, elig);
    // A writable database that is not about to hold the key must not stay
    // writable: fence it (unless paused, where the operator owns the node).
    if i.local.writable() && !d.actions.contains(&Action::AcquireLeader) && !view.paused {
        let why = d.refusal.clone().unwrap_or_else(|| d.state.clone());
        let mut d = d;
        d.state = "fencing: writable without the leader key".into();
        return d.act(Action::Fence { reason: format!("database accepts writes but cannot take the leader key ({why})") });
    }
    // One attempt to take the key back, not a series: while the request
    // hangs (etcd's disk stalled) the database takes writes without a key,
    // and a replica's request queued before it wins once etcd answers. The
    // 30-minute run, seed 7877744: a primary's restarted sidecar retried
    // its retake for 3 s and fenced 0.6 s after the replica had promoted.
    if i.local.writable() && i.retake_failed && !view.paused {
        return Decision::new("fencing: writable without the leader key", elig).act(Action::Fence {
            reason: "database accepts writes but taking the leader key back failed; not retrying while it stays writable".into(),
        });
    }
    if i.local.promote_pending && !d.actions.contains(&Action::AcquireLeader) && !view.paused {
        let why = d.refusal.clone().unwrap_or_else(|| d.state.clone());
        let mut d = d;
        d.state = "fencing: a promotion is pending without the leader key".into();
        return d
            .act(Action::Fence { reason: format!("a promotion of this database is pending but it cannot take the leader key ({why})") });
    }
    d
}

fn race_outcome(i: &Inputs, view: &View, elig: &Eligibility) -> Decision {
    let p = &i.policy;
    let mut d = Decision::new("no leader", elig);
    if i.local.health == DbHealth::Down && !view.paused {
        // A former primary that another node succeeded (history names a
        // later one) must not come up writable: it lacks what its
        // successors acknowledged (found by the simulation, seed 870).
        let released = view.released_by.as_deref() == Some(i.me.as_str());
        // A switchover or failover to another node is under way (this old
        // primary stopped and handed over): it comes back as a replica.
        let handing_over = view.request.as_ref().is_some_and(|r| r.to != i.me && r.age <= p.switchover_timeout);
        if view.last_primary.as_deref().is_some_and(|lp| lp != i.me) || released || handing_over {
            d.state = "no leader; starting the database as a replica".into();
            return d.act(Action::StartReplica);
        }
        if view.last_primary.as_deref() == Some(i.me.as_str()) {
            // The last primary, down (its node was lost and is back): it
            // takes its key back before it starts writable, so it never
            // accepts writes beside a replica that won the key meanwhile
            // (found by the simulation, seed 1002616).
            d.state = "no leader; taking the key back, then starting the database".into();
            return d.act(Action::AcquireLeader).act(Action::Start);
        }
        // A new cluster (no history): its first start.
        d.state = "no leader; starting the database".into();
        return d.act(Action::Start);
    }
    if i.local.health == DbHealth::Unresponsive && i.local.failed_checks >= p.fall && !view.paused {
        // A hung server (dead-end backends after a freeze, a wedged
        // postmaster) answers nobody, and while the key is vacant no leader
        // will have it rejoined: fence it (stopped, escalating to SIGKILL,
        // and started read-only). Its role and position are then known
        // again and it can take part in the race; the last primary hung
        // kept the cluster leaderless for good (found by the simulation,
        // seed 877).
        d.state = format!("no leader; database did not answer {} checks: restarting it read-only", i.local.failed_checks);
        return d.act(Action::Fence { reason: format!("the database did not answer {} checks in a row", i.local.failed_checks) });
    }
    let me_primary = i.local.role == Some(DbRole::Primary) && i.local.health == DbHealth::Running;

    let request = view.request.as_ref().filter(|r| r.age <= p.switchover_timeout);
    if let Some(r) = view.request.as_ref().filter(|r| r.age > p.switchover_timeout) {
        d = d.act(Action::ClearRequest { reason: format!("request for {} expired after {}", r.to, secs(p.switchover_timeout)) });
    }
    let manual = match request {
        Some(r) if r.to != i.me => {
            d.state = format!("waiting for {} to take over ({:?} requested)", r.to, r.kind).to_lowercase();
            return d;
        }
        Some(r) => Some(r),
        None => None,
    };

    // A running primary retaking its own key (its sidecar restarted, or the
    // cluster is new) is not a failover: pause and hold-down do not apply.
    if manual.is_none() && !me_primary {
        if view.paused {
            d.state = "no leader; paused".into();
            return d.refuse(RefusalKind::Paused, "cluster is paused: no automatic failover");
        }
        // Hold-down stops a *second* node taking over. The last recorded
        // primary taking its own key back (it fenced itself when its lease
        // lapsed, e.g. etcd slow) is no failover: without this the cluster
        // stayed leaderless for all of hold_down (found by the simulation).
        let last_primary = view.last_primary.as_deref() == Some(i.me.as_str());
        if let Some(age) = view.last_failover_age.filter(|_| !last_primary) {
            if age < p.hold_down {
                d.state = "no leader; held down".into();
                return d.refuse(
                    RefusalKind::HeldDown,
                    format!(
                        "held down: the last failover was {} ago (hold_down {}); a second one needs a human: `vigil failover --to NODE`",
                        secs(age),
                        secs(p.hold_down)
                    ),
                );
            }
        }
    }
    let allow_data_loss = manual.is_some_and(|r| r.allow_data_loss);

    // A member that vouched for a leader in a failsafe round kept it
    // writable without a lease; that leader fences only `ttl -
    // safety_margin` after its last confirmed round. Taking the key before
    // `ttl` has passed since the vouch could make two primaries when etcd
    // returns while the leader is out of this node's reach (found by the
    // simulation, seed 1001200).
    if !me_primary {
        if let Some(ago) = i.vouched_ago.filter(|a| *a < p.ttl) {
            d.state = "no leader; vouched for the leader during the etcd outage".into();
            return d.refuse(
                RefusalKind::Vouched,
                format!(
                    "vouched for the leader {} ago while etcd was unreachable (failsafe); not taking the key before ttl ({})",
                    secs(ago),
                    secs(p.ttl)
                ),
            );
        }
    }

    // A manual failover may take an ineligible node, but one the engine
    // blocked (errant transactions, stopped applier) only with
    // --allow-data-loss.
    let forced = manual.is_some() && eligible_when_forced(i) && (i.local.blocker.is_none() || allow_data_loss);
    if !(elig.eligible || forced) {
        d.state = "no leader; not eligible".into();
        let why = format!("not taking the leader key: {}", elig.reason.clone().unwrap_or_default());
        if manual.is_some() {
            d = d.act(Action::RefuseRequest { reason: why.clone() });
        }
        return d.refuse(RefusalKind::NotEligible, why);
    }

    // The old primary must really be gone: no peer's database may still
    // accept writes. (A running primary competes with writable peers on
    // freshness instead, below.)
    if !me_primary {
        if let Some((kind, why)) = peer_writer_refusal(i) {
            d.state = match kind {
                RefusalKind::PeerWritable => "no leader; a peer is still writable",
                _ => "no leader; a peer's database without a sidecar did not answer",
            }
            .into();
            return d.refuse(kind, why);
        }
    }

    if p.synchronous && !me_primary && !allow_data_loss {
        if let Some(why) = synchronous_refusal(i, view) {
            d.state = "no leader; synchronous mode forbids this promotion".into();
            if manual.is_some() {
                d = d.act(Action::RefuseRequest { reason: why.clone() });
            }
            return d.refuse(RefusalKind::Synchronous, why);
        }
    }

    let mine = i.local.position;
    // Synchronous mode: the last primary or the set's recorder may take
    // the key whatever the others' synchronous rules say, so it defers on
    // a tie to nobody: an equally fresh member it deferred to refused while
    // another member was out of reach, and nobody led (the second
    // 30-minute simulation run, seed 7042239).
    let i_may_retake = p.synchronous
        && manual.is_none()
        && (view.sync_leader.as_deref() == Some(i.me.as_str()) || view.last_primary.as_deref() == Some(i.me.as_str()));
    for peer in &i.peers {
        let Some(c) = &peer.candidate else { continue };
        let is_primary = c.is_primary || peer.writable();
        // Automatic: only peers that could be promoted themselves compete.
        // Manual: any fresher peer means data would be lost, whatever its
        // eligibility, so it counts.
        if !c.eligible && !is_primary && manual.is_none() {
            continue;
        }
        // Within hold_down only the last primary may take the key
        // automatically: a held-down peer that is merely preferred (equally
        // fresh) would refuse, so deferring to it left the cluster
        // leaderless (found by the simulation, seed 67). A strictly fresher
        // one is still waited for: it has writes this node lacks.
        // Likewise in synchronous mode with the set unknown (unreadable, or
        // missing after the cluster had a primary): only the last primary
        // or the set's leader may take the key, so nobody else is deferred
        // to on a tie (found by the simulation, seed 3011479).
        let last_or_sync_leader =
            view.last_primary.as_deref() == Some(peer.node.as_str()) || view.sync_leader.as_deref() == Some(peer.node.as_str());
        let set_unknown = p.synchronous && (view.sync_unreadable || (view.sync_standbys.is_none() && view.last_primary.is_some()));
        // A peer is held down by this node's reading of hold_down or by its
        // own: a sidecar restarted after the failover times hold_down from
        // its first read of the record, later than the others, and deferring
        // to it on a tie left the cluster leaderless until its hold_down
        // ended (the 30-minute simulation run, seed 8166613).
        let held_down = (view.last_failover_age.is_some_and(|a| a < p.hold_down) || c.held_down || set_unknown)
            && !is_primary
            && manual.is_none()
            && !last_or_sync_leader;
        // Synchronous mode: a peer outside the synchronous set cannot be
        // promoted automatically, so it must not make a member defer (both
        // would wait for each other); what it has beyond the set was never
        // acknowledged.
        let outside_set = p.synchronous && view.sync_standbys.as_ref().is_some_and(|s| !s.contains(&peer.node));
        if outside_set && !is_primary && manual.is_none() {
            continue;
        }
        let better = match (c.position, mine) {
            (Some(theirs), Some(ours)) => {
                theirs > ours
                    || (theirs == ours
                        && !held_down
                        && !i_may_retake
                        && (is_primary, c.priority, std::cmp::Reverse(&peer.node)) > (me_primary, p.priority, std::cmp::Reverse(&i.me)))
            }
            (Some(_), None) => true,
            _ => false,
        };
        if !better {
            continue;
        }
        if manual.is_none() {
            d.state = format!("no leader; {} is fresher or preferred", peer.node);
            return d;
        }
        if !allow_data_loss && c.position > mine {
            d.state = "no leader; manual failover refused".into();
            let why = format!(
                "{} is fresher ({} vs {}); promoting {} would lose data: use --allow-data-loss to force it",
                peer.node,
                fmt_pos(c.position),
                fmt_pos(mine),
                i.me
            );
            return d.act(Action::RefuseRequest { reason: why.clone() }).refuse(RefusalKind::LessFresh, why);
        }
    }

    d.state = if me_primary { "taking the leader key".into() } else { "promoting".into() };
    d = d.act(Action::AcquireLeader);
    if me_primary {
        d.act(Action::WriteHeartbeat)
    } else {
        d.act(Action::Promote)
    }
}

/// Synchronous mode: every acknowledged commit was flushed by at least one
/// replica of the synchronous set, and WAL is linear, so the freshest
/// member of the set has them all. This node may take over only if it is
/// in the set and knows every other member's position to be no fresher.
fn synchronous_refusal(i: &Inputs, view: &View) -> Option<String> {
    let hint = "`vigil failover --to NODE --allow-data-loss` overrides";
    // The primary that recorded the set, or the last recorded primary,
    // made (or had) every acknowledged commit itself: taking its key back
    // after a fence loses nothing, whatever the sync key holds (a bad
    // value there kept a fenced last primary from retaking its key: the
    // 30-minute simulation run, seed 7000511).
    if view.sync_leader.as_deref() == Some(i.me.as_str()) || view.last_primary.as_deref() == Some(i.me.as_str()) {
        return None;
    }
    if view.sync_unreadable {
        return Some(format!(
            "synchronous mode: the sync key cannot be read, so it is unknown which members may hold acknowledged commits; {hint}"
        ));
    }
    // The leader records the set before its database waits for any
    // member's acknowledgement: with no set recorded, no commit was ever
    // acknowledged synchronously (a new cluster), and the ordinary rules
    // choose.
    let Some(set) = &view.sync_standbys else {
        // No set recorded: safe only for a cluster that never had a
        // primary. Once it had one, a missing key was deleted (by hand, or
        // with a bad value) and nobody can say who holds the acknowledged
        // commits (found by the simulation, seed 1023462).
        if let Some(lp) = &view.last_primary {
            return Some(format!(
                "synchronous mode: no synchronous set is recorded although {lp} was primary (was the sync key deleted?), so it is unknown which members may hold acknowledged commits; {hint}"
            ));
        }
        return None;
    };
    if !set.contains(&i.me) {
        return Some(format!(
            "synchronous mode: {} is not in the synchronous set [{}], so it may lack acknowledged commits; {hint}",
            i.me,
            set.join(", ")
        ));
    }
    let mine = i.local.position?;
    // Named by a leader before it had all that leader had: commits
    // acknowledged before it joined may be on the leader alone (seed
    // 7084923: a leader whose promotion hung named a replica 13 commits
    // behind it; the replica took over when the leader was lost).
    if let Some(mark) = view.sync_joining.get(&i.me).filter(|mark| mine < **mark) {
        return Some(format!(
            "synchronous mode: {} joined the synchronous set when {} was at {mark} and has only {mine}, so it may lack commits acknowledged before it joined; {hint}",
            i.me,
            view.sync_leader.as_deref().unwrap_or("the leader"),
        ));
    }
    for n in set.iter().filter(|n| **n != i.me) {
        // Only a position the peer's sidecar reported just now counts.
        let peer = i.peers.iter().find(|p| &p.node == n).filter(|p| p.answered());
        match peer.and_then(|p| p.candidate.as_ref()).and_then(|c| c.position) {
            Some(theirs) if theirs <= mine => {}
            // A fresher eligible member wins the race below; an ineligible
            // one may hold commits nobody else has.
            Some(_) if peer.and_then(|p| p.candidate.as_ref()).is_some_and(|c| c.eligible) => {}
            Some(theirs) => {
                return Some(format!(
                    "synchronous mode: {n} is fresher ({} vs {}) but cannot be promoted; it may hold acknowledged commits; {hint}",
                    theirs, mine
                ))
            }
            None => {
                return Some(format!(
                "synchronous mode: {n} (in the synchronous set) is unreachable and may hold acknowledged commits this node lacks; {hint}"
            ))
            }
        }
    }
    None
}

fn fmt_pos(p: Option<Position>) -> String {
    p.map(|p| p.to_string()).unwrap_or_else(|| "unknown".into())
}

/// A forced manual failover still needs a running database.
fn eligible_when_forced(i: &Inputs) -> bool {
    i.local.health == DbHealth::Running && i.policy.priority > 0
}

/// May this node become primary if the leader key were vacant now?
pub fn eligibility(i: &Inputs) -> Eligibility {
    let l = &i.local;
    let p = &i.policy;
    if p.priority == 0 {
        return Eligibility::no("priority 0: never promoted");
    }
    if l.health != DbHealth::Running {
        return Eligibility::no(format!("database {}", format!("{:?}", l.health).to_lowercase()));
    }
    if let Some(ago) = i.vetoed_ago.filter(|a| *a < p.ttl) {
        return Eligibility::no(format!("pre_promote hook vetoed this node's promotion {} ago (backing off for ttl)", secs(ago)));
    }
    let Some(mine) = l.position else {
        return Eligibility::no("position unknown");
    };
    if let Some(why) = &l.blocker {
        return Eligibility::no(why.clone());
    }
    if l.role == Some(DbRole::Primary) {
        // A running primary retaking its own key is not a failover, unless
        // history names a later primary: then it is a former one that came
        // back writable, and taking the key would lose its successors'
        // writes.
        if let Some(lp) = i.view.as_ref().and_then(|v| v.last_primary.as_deref()).filter(|lp| *lp != i.me) {
            return Eligibility::no(format!("a former primary: {lp} led after it, so it must rejoin as a replica"));
        }
        return Eligibility::yes();
    }
    if l.good_checks < p.rise {
        return Eligibility::no(format!(
            "database healthy for {} of the {} checks in a row a candidate needs (rise)",
            l.good_checks, p.rise
        ));
    }
    let was_last_primary = i.view.as_ref().is_some_and(|v| v.last_primary.as_deref() == Some(i.me.as_str()));
    // In synchronous mode the recorded set, not the clock, says who holds
    // every acknowledged commit: a member of it is a candidate however
    // long ago it last streamed, and the synchronous rules below promote
    // only the freshest member. (A fenced primary stops sending WAL; a
    // member that saw the key vacant only once etcd answered again was
    // refused for good as stale: the 30-minute simulation run, seed
    // 7000207.)
    let sync_member =
        p.synchronous && i.view.as_ref().is_some_and(|v| !v.sync_unreadable && v.sync_standbys.as_ref().is_some_and(|s| s.contains(&i.me)));
    let lost = LeaderLoss {
        seen_vacant_ago: i.view.as_ref().and_then(|v| v.leader_lost_ago),
        last_heartbeat_ago: i.view.as_ref().and_then(|v| v.leader_heartbeat_ago),
    };
    if let Some(why) = stale_replica(l, p, lost, was_last_primary || sync_member) {
        return Eligibility::no(why);
    }
    if let Some(view) = &i.view {
        if let Some(last) = view.last_primary_position {
            if last.timeline > mine.timeline {
                return Eligibility::no(format!("timeline {} is behind the primary's {}", mine.timeline, last.timeline));
            }
            if last.timeline == mine.timeline {
                let lag = last.lsn.0.saturating_sub(mine.lsn.0);
                if lag > p.max_lag_on_failover {
                    return Eligibility::no(format!(
                        "lag {} exceeds max_lag_on_failover {}",
                        crate::units::format_size(lag),
                        crate::units::format_size(p.max_lag_on_failover)
                    ));
                }
            }
        }
    }
    if let Some(why) = behind_last_promotion(i, mine, was_last_primary) {
        return Eligibility::no(why);
    }
    let newest = i.peers.iter().filter_map(|p| p.candidate.as_ref()?.position).map(|p| p.timeline).max();
    if let Some(t) = newest {
        if t > mine.timeline {
            return Eligibility::no(format!("timeline {} is behind a peer's {}", mine.timeline, t));
        }
    }
    Eligibility::yes()
}

/// A node still on the timeline the last recorded primary promoted from
/// lacks what that primary wrote after it promoted, and its own promotion
/// would open a timeline with the same number: two different timeline 3s,
/// which (timeline, LSN) comparisons can no longer tell apart. In the
/// 30-minute simulation run (seed 8211379) pg2 promoted from timeline 2 and
/// was fenced before its member record ever showed it primary; pg1, still
/// on timeline 2, promoted into its own timeline 3 and acknowledged writes
/// with pg3; after the hold-down pg2's divergent timeline 3 compared higher
/// and won, and those writes were lost. The history record written after
/// the promotion bounds the last primary's timeline even when no member
/// record does. The record written before it is not used: a node frozen
/// in the middle of its promotion then kept every replica from taking
/// over (the next 30-minute run, seed 8411053). So a node lost between
/// asking its database to promote and recording that it did can still
/// leave a twin timeline behind: telling twins apart needs each node's
/// timeline switch point, which replicas do not publish yet. The last
/// primary itself is the reference.
fn behind_last_promotion(i: &Inputs, mine: Position, was_last_primary: bool) -> Option<String> {
    if !i.policy.promotion_opens_timeline || was_last_primary {
        return None;
    }
    let view = i.view.as_ref()?;
    let from = view.last_promoted_from?;
    let opened = from.timeline.saturating_add(1);
    (mine.timeline < opened).then(|| {
        format!(
            "timeline {} is behind timeline {opened}, which {} opened when it promoted from {from} (history)",
            mine.timeline,
            view.last_primary.as_deref().unwrap_or("the last primary")
        )
    })
}

/// What a replica knows of the leader's loss.
#[derive(Debug, Clone, Copy, Default)]
pub struct LeaderLoss {
    /// How long ago this node first saw the leader key vacant.
    pub seen_vacant_ago: Option<Duration>,
    /// How long ago the last leader last wrote its heartbeat row.
    pub last_heartbeat_ago: Option<Duration>,
}

/// The stale-replica trap: a replica that stopped streaming long before the
/// leader was lost may lack much of what the leader had. It is a candidate
/// only if its data is at most `2 * ttl` older than the leader's last
/// moment. Measured, in this order of preference:
/// - by the data: the newest heartbeat row it holds against the last one
///   the leader wrote (the `status` key). Both were stamped by the
///   leader's clock and both ages are read on this node's, so clock skew
///   cancels; it holds whenever this sidecar started and however late it
///   saw the key vacant (an etcd outage, a hung leader: the second
///   30-minute simulation run);
/// - else by when the WAL receiver last streamed (or the heartbeat row's
///   age, for a sidecar that never saw it stream), measured from the moment
///   this node first saw the leader key vacant, not from now, so waiting
///   for an election never makes a replica ineligible (defect 1c). While a
///   leader holds the key, from now.
///
/// The last recorded primary, fenced to a read-only standby, never
/// streamed: its data is its own, like a MariaDB primary at rest.
pub fn stale_replica(l: &LocalObs, p: &Policy, lost: LeaderLoss, was_last_primary: bool) -> Option<String> {
    if l.streaming || l.primary_at_rest || was_last_primary {
        return None;
    }
    let window = p.ttl * 2;
    if let (Some(data), Some(leader)) = (l.data_age, lost.last_heartbeat_ago) {
        let behind = data.saturating_sub(leader);
        return (behind > window).then(|| {
            format!(
                "its newest heartbeat row is {} older than the last primary's last one (more than 2 × ttl = {})",
                secs(behind),
                secs(window)
            )
        });
    }
    let Some(stopped_ago) = l.last_streamed_ago.or(l.data_age) else {
        return Some(
            "has not streamed from a primary since its sidecar started and holds no heartbeat row from another primary, so its position cannot be trusted".into(),
        );
    };
    match lost.seen_vacant_ago {
        Some(lost) => {
            let before_loss = stopped_ago.saturating_sub(lost);
            (before_loss > window).then(|| {
                format!("stopped streaming {} before the leader was lost (more than 2 × ttl = {})", secs(before_loss), secs(window))
            })
        }
        None => (stopped_ago > window).then(|| format!("has not streamed from a primary in the last {}", secs(window))),
    }
}

/// Whether this loop needs fresh looks at the peers: in a race for the
/// vacant key, and when this node holds the key with its database still a
/// replica (it is about to finish a promotion, which must not happen
/// beside a writable peer either). The last recorded primary, still
/// writable, retakes its own key: no peer can be fresher and none is
/// waited for, so it must not wait for probes of peers that may be out of
/// reach while its database takes writes without a key (the simulation's
/// seed 1001113).
pub fn needs_peer_probes(local: &LocalObs, key_holder: Option<&str>, last_primary: Option<&str>, me: &str) -> bool {
    match key_holder {
        None => !(local.writable() && last_primary == Some(me)),
        Some(holder) => holder == me && local.role == Some(DbRole::Replica),
    }
}

/// A peer beside which no node may be promoted: its database accepts
/// writes, or takes connections without saying whether it does while no
/// sidecar runs beside it to fence it.
fn peer_writer_refusal(i: &Inputs) -> Option<(RefusalKind, String)> {
    if let Some(w) = i.peers.iter().find(|p| p.writable()) {
        return Some((RefusalKind::PeerWritable, format!("{} still accepts writes; not promoting while it does", w.node)));
    }
    // A server that takes connections but did not say whether it accepts
    // writes, with no sidecar beside it, may be a primary nobody will fence
    // (its sidecar died after promoting it): one slow answer under load is
    // not proof that it is gone (seen in CI: a replica promoted beside such
    // a server). A silent server whose sidecar is silent too is a frozen or
    // lost node, fenced by its own sidecar's lease watchdog on resuming, so
    // it does not hold up the failover that exists for it, unless its
    // sidecar was last found not running (seed 8687433: a node frozen
    // after its sidecar died resumed writable, with nobody to fence it,
    // beside the replica promoted in the meantime). A server known
    // only as this replica's upstream has no sidecar anyone can ask: it is
    // treated as unsupervised (the 15-minute run, seeds 7212407 and
    // 7217998: a sidecar restarted while the key was vacant knew the dead
    // leader's server only from `primary_conninfo`, and promoted beside it
    // when it was slow to take connections).
    i.peers.iter().find(|p| p.db == PeerDb::Silent && p.sidecar.none_known()).map(|w| {
        (
            RefusalKind::PeerUnsupervised,
            format!(
                "{}'s database takes connections but did not say whether it accepts writes, and no sidecar runs beside it to fence it; not promoting until it answers or is gone",
                w.node
            ),
        )
    })
}
