//! The HA loop: once per `loop` (or at once when etcd's leader key changes
//! or the local database process dies) it observes, asks the decision core
//! what to do, does it, and publishes the result.
//!
//! ```text
//! observe own db ─┐
//! read etcd ──────┼─> core::decide ─> execute actions ─> put member key
//! renew lease ────┤                                   └> status snapshot (API)
//! probe peers* ───┘        (* only while the leader key is vacant)
//! ```
//!
//! This file holds the loop itself (observe, read etcd, decide, remember
//! what was seen); the rooms around it:
//! - `leadership`: the lease, renewed by the loop and beside long actions,
//!   the watchdog that fences when it lapses, the etcd failsafe;
//! - `executor`: each action the core decides, on the database and in etcd;
//! - `probes`: fresh looks at the peers while the key is vacant;
//! - `failover_age`: how long ago the last automatic failover was, on
//!   this node's monotonic clock (for hold_down);
//! - `leader_watch`: whether the leader's member record keeps changing;
//! - `history`: the record of each change of primary;
//! - `sync`: the synchronous set (synchronous mode);
//! - `publishing`: alerts, hooks, DNS, the member record, the snapshot.

mod dead_sidecars;
mod executor;
mod failover_age;
mod history;
mod leader_watch;
mod leadership;
mod probes;
mod publishing;
mod sync;

use crate::alerts::{Evaluator, Notifier};
use crate::clock::Instant;
use crate::config::Config;
use crate::core::{self, CrashState, Decision, Inputs, LeaderKey, LeaseState, PeerObs, Policy, Request, View};
use crate::dcs::{now_ms, ClusterState, Dcs, HistoryRecord, MemberRecord, Step};
use crate::engine::{Engine, Observation};
use crate::peers::{HttpPeers, PeerApi};
use crate::position::{Lsn, Position};
use crate::publish::dns::{DnsTarget, Published};
use crate::publish::hooks::Hooks;
use crate::status::Shared;
use anyhow::Result;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A finished DNS publication: term, outcome, when (ms).
type DnsResult = (i64, Result<Published, String>, u64);

/// Per silent peer: what the last look at its database found (None: not
/// yet known) and when that probe began.
type SilentProbes = std::collections::HashMap<String, (Option<crate::core::PeerDb>, Instant)>;

pub struct Ha<E: Engine, D: Dcs, P: PeerApi = HttpPeers> {
    cfg: Config,
    policy: Policy,
    engine: Arc<E>,
    dcs: Arc<D>,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    peers_api: P,
    /// Consecutive (good, failed) checks of the local database.
    checks: (u32, u32),
    /// The server process those checks were of.
    checked_pid: Option<i32>,
    /// A retake of the vacant key for the writable database failed, with
    /// the same server process (`core::Inputs::retake_failed`).
    retake_failed: bool,
    /// etcd is unreachable and every member vouched for this leader in the
    /// last failsafe round.
    failsafe_active: bool,
    /// Every member seen, so that a vanished leader can still be probed,
    /// with when its record was last in etcd (`core::members`: a departed
    /// member is forgotten after an hour).
    known: BTreeMap<String, MemberRecord>,
    known_seen: BTreeMap<String, Instant>,
    last_leader: Option<String>,
    last_primary_position: Option<Position>,
    /// When the leader lease was last renewed; shared with the lease
    /// watchdog and the renewals beside long actions; drives the node
    /// watchdog device.
    renewals: Arc<leadership::Renewals>,
    paused: Arc<std::sync::atomic::AtomicBool>,
    term: Option<i64>,
    leader_lost_ms: Option<u64>,
    /// When this node first saw the leader key vacant (monotonic clock).
    leader_lost_at: Option<Instant>,
    /// Whether the leader's member record keeps changing.
    leader_watch: leader_watch::LeaderWatch,
    /// Peers whose sidecar last refused connections (`dead_sidecars`).
    dead_sidecars: dead_sidecars::DeadSidecars,
    /// How long ago the last automatic failover was (for hold_down).
    failover_age: failover_age::FailoverAge,
    /// Rejoins that failed in a row, and when the last one ended (backoff).
    rejoin_failures: u32,
    last_rejoin_failure: Option<Instant>,
    /// Bad etcd values already logged, so each is logged once.
    bad_values_logged: Vec<crate::dcs::BadValue>,
    restart_started: Option<Instant>,
    not_streaming_since: Option<Instant>,
    last_state: String,
    last_refusal: Option<String>,
    /// The heartbeat write of this iteration succeeded (leader only).
    heartbeat_ok: bool,
    /// Rejoins since this node last streamed; escalates rewind to base backup.
    rejoin_attempts: u32,
    /// Silent peers' databases as last probed in the background: answer
    /// (None: not yet known) and when the probe started.
    silent_probes: Arc<std::sync::Mutex<SilentProbes>>,
    notifier: Notifier,
    evaluator: Evaluator,
    dcs_down_since: Option<u64>,
    last_resend: Instant,
    /// When this leader first saw its database fail (for the incident record).
    failure_seen_ms: Option<u64>,
    /// The history record of this node's promotion, until every replica follows.
    pending_history: Option<HistoryRecord>,
    /// The newest history record this node wrote (later steps are appended).
    my_history: Option<HistoryRecord>,
    hooks: Hooks,
    dns: Option<DnsTarget>,
    dns_results: (tokio::sync::mpsc::UnboundedSender<DnsResult>, tokio::sync::mpsc::UnboundedReceiver<DnsResult>),
    vetoed_at: Option<Instant>,
    /// Held while anything drives the database (the loop's actions, the
    /// lease watchdog's fence): one actor at a time.
    db_owner: Arc<tokio::sync::Mutex<()>>,
    /// Synchronous mode: departed members and the primary's position when
    /// each was first seen disconnected (see `core::sync_set`).
    sync_marks: BTreeMap<String, Lsn>,
    /// The `sync` key as this leader last wrote it, while it leads: the
    /// set it keeps when the key reads as garbage or vanishes.
    sync_written: Option<crate::dcs::SyncRecord>,
    /// Sets written to the `sync` key since the last confirmed write whose
    /// writes failed: any may still be applied (`core::sync_set::plan_recording`).
    sync_unconfirmed: Vec<std::collections::BTreeSet<String>>,
    /// The action under way asked the database to promote.
    promote_sent: bool,
    /// The term in which the database was last promoted by this process.
    promoted_term: Option<i64>,
    /// The term whose leader key this process last gave up (`core::LeaseState::given_up`).
    released_term: Option<i64>,
}

impl<E: Engine, D: Dcs, P: PeerApi> Ha<E, D, P> {
    pub fn new(cfg: Config, engine: Arc<E>, dcs: Arc<D>, peers_api: P, shared: Arc<Shared>, wake: Arc<Notify>, notifier: Notifier) -> Self {
        let evaluator = Evaluator::new(&cfg.cluster, &cfg.node, crate::alerts::rules::Thresholds::from_config(&cfg.alerts));
        let policy = Policy {
            ttl: cfg.timing.ttl,
            loop_wait: cfg.timing.loop_wait,
            safety_margin: cfg.timing.safety_margin,
            hold_down: cfg.timing.hold_down,
            fall: cfg.timing.fall,
            priority: cfg.failover.priority,
            max_lag_on_failover: cfg.failover.max_lag_on_failover,
            on_primary_crash: cfg.failover.on_primary_crash,
            restart_budget: cfg.failover.restart_budget,
            switchover_timeout: cfg.failover.switchover_timeout,
            synchronous: cfg.failover.synchronous,
            rise: cfg.timing.rise,
            promotion_opens_timeline: cfg.engine == crate::config::EngineKind::Postgres,
        };
        let (cfg_hooks, cfg_cluster, cfg_node) = (cfg.hooks.clone(), cfg.cluster.clone(), cfg.node.clone());
        let dns_target = cfg.dns.as_ref().map(DnsTarget::from_config);
        let node_watchdog =
            crate::watchdog::NodeWatchdog::new(&cfg.watchdog, cfg.timing.ttl, cfg.timing.safety_margin, cfg.timing.loop_wait);
        Ha {
            cfg,
            policy,
            engine,
            dcs,
            shared,
            wake,
            peers_api,
            checks: (0, 0),
            checked_pid: None,
            retake_failed: false,
            failsafe_active: false,
            known: BTreeMap::new(),
            known_seen: BTreeMap::new(),
            last_leader: None,
            last_primary_position: None,
            renewals: Arc::new(leadership::Renewals::new(node_watchdog)),
            paused: Arc::default(),
            term: None,
            leader_lost_ms: None,
            leader_lost_at: None,
            leader_watch: leader_watch::LeaderWatch::default(),
            dead_sidecars: dead_sidecars::DeadSidecars::default(),
            failover_age: failover_age::FailoverAge::default(),
            rejoin_failures: 0,
            last_rejoin_failure: None,
            bad_values_logged: vec![],
            restart_started: None,
            not_streaming_since: None,
            last_state: String::new(),
            last_refusal: None,
            heartbeat_ok: false,
            rejoin_attempts: 0,
            silent_probes: Arc::default(),
            notifier,
            evaluator,
            dcs_down_since: None,
            last_resend: Instant::now(),
            failure_seen_ms: None,
            pending_history: None,
            my_history: None,
            hooks: Hooks::new(cfg_hooks, &cfg_cluster, &cfg_node),
            dns: dns_target,
            dns_results: tokio::sync::mpsc::unbounded_channel(),
            vetoed_at: None,
            sync_marks: BTreeMap::new(),
            sync_written: None,
            sync_unconfirmed: vec![],
            promote_sent: false,
            promoted_term: None,
            released_term: None,
            db_owner: Arc::default(),
        }
    }

    /// Drives `watchdog` instead of the device the config names (the
    /// simulation's model of a watchdog device).
    pub fn with_node_watchdog(mut self, watchdog: crate::watchdog::NodeWatchdog) -> Self {
        self.renewals = Arc::new(leadership::Renewals::new(watchdog));
        self
    }

    /// Runs until the process is told to stop.
    ///
    /// The helper tasks (process watcher, lease watchdog) belong to this
    /// future: when it is dropped (the process stops, or the simulation
    /// crashes this sidecar) they end with it.
    pub async fn run(self) {
        let mut helpers = tokio::task::JoinSet::new();
        helpers.spawn(self.process_watch());
        helpers.spawn(self.lease_watchdog());
        self.run_loop().await
    }

    /// The same loop and helpers as [`run`](Self::run), polled together
    /// as one future instead of as separate tasks: the simulation freezes
    /// (SIGSTOP) and crashes a whole sidecar by holding or dropping it.
    pub async fn run_joined(self) {
        let (watch, watchdog) = (self.process_watch(), self.lease_watchdog());
        tokio::join!(watch, watchdog, self.run_loop());
    }

    async fn run_loop(mut self) {
        loop {
            let started = Instant::now();
            if let Err(e) = self.iterate().await {
                tracing::warn!(error = %format!("{e:#}"), "loop iteration failed");
            }
            // systemd's watchdog (`WatchdogSec=`): the loop went round.
            crate::watchdog::sd_notify("WATCHDOG=1");
            // While the database is starting (restart in place, rejoin), look
            // again soon, so that /primary turns 200 as soon as it can.
            let busy = self.shared.get().me.as_ref().is_some_and(|m| m.health == crate::core::DbHealth::Starting);
            let wait = if busy { Duration::from_millis(100) } else { self.cfg.timing.loop_wait };
            let rest = wait.saturating_sub(started.elapsed());
            // `biased`: a fixed order, so that a seed of the simulation
            // replays exactly (an unbiased select picks at random when both
            // are ready); a pending wake-up is consumed, not kept for an
            // extra iteration.
            tokio::select! {
                biased;
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(rest) => {}
            }
        }
    }

    async fn iterate(&mut self) -> Result<()> {
        self.heartbeat_ok = false;
        let mut obs = self.engine.observe().await;
        let pid = self.engine.server_pid();
        let same_process = std::mem::replace(&mut self.checked_pid, pid) == pid;
        self.checks = crate::core::count_checks(obs.local.health, same_process, self.checks);
        (obs.local.good_checks, obs.local.failed_checks) = self.checks;
        if !same_process || !obs.local.writable() || self.dcs.holds_leader() {
            self.retake_failed = false;
        }
        let loaded = self.dcs.load().await;
        let (cluster, dcs_error) = match loaded {
            Ok(c) => (Some(c), None),
            Err(e) => (None, Some(format!("{e:#}"))),
        };
        if cluster.is_some() {
            self.dcs_down_since = None;
        } else if self.dcs_down_since.is_none() {
            self.dcs_down_since = Some(now_ms());
        }
        let leading = cluster.as_ref().and_then(|c| c.leader.as_ref()).is_some_and(|l| l.node == self.cfg.node);
        if leading && matches!(obs.local.health, crate::core::DbHealth::Down | crate::core::DbHealth::Unresponsive) {
            self.failure_seen_ms.get_or_insert_with(now_ms);
        } else if obs.local.health == crate::core::DbHealth::Running {
            self.failure_seen_ms = None;
        }
        if let Some(c) = &cluster {
            self.remember(c);
            self.dead_sidecars.read(&c.members);
        }
        if let Some(c) = &cluster {
            self.paused.store(c.pause.is_some(), std::sync::atomic::Ordering::Relaxed);
            self.renew_lease(c).await;
            self.failsafe_active = false;
        } else if self.cfg.failover.failsafe && self.renewal().is_some() && obs.local.writable() {
            self.failsafe_round().await;
        }

        let vacant = cluster.as_ref().is_some_and(|c| c.leader.is_none());
        if vacant && self.leader_lost_ms.is_none() {
            self.leader_lost_ms = Some(now_ms());
            self.leader_lost_at = Some(Instant::now());
        }
        if cluster.as_ref().is_some_and(|c| c.leader.is_some()) {
            self.leader_lost_ms = None;
            self.leader_lost_at = None;
        }
        let last_primary = cluster.as_ref().and_then(|c| c.last_history.as_ref()).map(|h| h.new_primary.as_str());
        let holder = cluster.as_ref().and_then(|c| c.leader.as_ref()).map(|l| l.node.as_str());
        let probe = cluster.is_some() && core::needs_peer_probes(&obs.local, holder, last_primary, &self.cfg.node);
        let last = cluster.as_ref().and_then(|c| c.last_history.as_ref());
        let mut peers = if probe { self.probe_peers(obs.upstream.as_deref(), last).await } else { vec![] };
        if let Some(c) = &cluster {
            self.dead_sidecars.look(&mut peers, &c.members);
        }
        let inputs = self.inputs(&obs, cluster.as_ref(), peers.clone());
        let decision = core::decide(&inputs);
        self.log_decision(&decision);

        let mut outcome = Ok(());
        let owner = Arc::clone(&self.db_owner);
        let owner_guard = if decision.actions.is_empty() { None } else { Some(owner.lock().await) };
        for action in &decision.actions {
            // Long actions never hold up the lease and the member record:
            // they are renewed beside the action, and a lease that lapses
            // anyway cancels it (the database is fenced next).
            self.promote_sent = false;
            let under_way = crate::status::ActionUnderWay { name: action.name(), since: Instant::now() };
            self.shared.update(|s| s.action = Some(under_way));
            let beside = self.keep_alive_beside(action);
            let (result, cancelled) = tokio::select! {
                biased;
                r = self.execute(action, &obs, cluster.as_ref(), &peers, &decision) => (r, false),
                why = beside => (Err(anyhow::anyhow!(why)), true),
            };
            self.shared.update(|s| s.action = None);
            if cancelled && *action == core::Action::Promote && !self.promote_sent {
                // Cancelled before the database was asked to promote: the
                // history record written when the key was won names a
                // primary that never was. Left in place, it held every
                // replica down for hold_down after a promotion cancelled
                // by a lapsing lease under a slow etcd (the 30-minute
                // simulation run, seed 7344143). Once the database was
                // asked, it may have promoted: the record stays, or the
                // rules about the last primary would see an older one
                // while this node's timeline is the newest (seed 7441453).
                self.forget_history_of_this_term().await;
            }
            if let Err(e) = result {
                tracing::warn!(action = ?action, error = %format!("{e:#}"), "action failed");
                if *action == core::Action::AcquireLeader && obs.local.writable() {
                    // Decide again at once: the database takes writes
                    // without a key until it is fenced.
                    self.retake_failed = true;
                    self.wake.notify_one();
                }
                outcome = Err(e);
                break;
            }
        }
        drop(owner_guard);
        if obs.local.health == crate::core::DbHealth::Running {
            self.restart_started = None;
        }
        if obs.local.streaming || obs.local.writable() {
            self.rejoin_attempts = 0;
        }
        if self.dcs.holds_leader() && obs.local.writable() {
            if let Err(e) = self.manage_sync(sync::SyncMoment::Leading(&obs), cluster.as_ref()).await {
                tracing::warn!(error = %format!("{e:#}"), "could not update the synchronous standbys");
            }
        } else if self.cfg.failover.synchronous && obs.local.role == Some(crate::core::DbRole::Replica) {
            // A replica acknowledges commits only while the current leader
            // names it in the synchronous set.
            let member = cluster.as_ref().is_some_and(|c| {
                c.leader.as_ref().zip(c.sync.as_ref()).is_some_and(|(l, s)| s.leader == l.node && s.standbys.contains(&self.cfg.node))
            });
            if let Err(e) = self.engine.set_sync_member(member).await {
                tracing::warn!(error = %format!("{e:#}"), "could not change this replica's synchronous acknowledgements");
            }
        }
        let silent = self.silent_peers(cluster.as_ref());
        self.publish(&obs, cluster, dcs_error, &decision).await;
        self.raise_alerts(&decision, silent);
        self.drain_dns().await;
        self.track_following().await;
        outcome
    }

    /// The cluster as the core sees it, from one read of etcd.
    fn view(&self, c: &ClusterState) -> View {
        View {
            leader: c.leader.as_ref().map(|l| LeaderKey { node: l.node.clone(), term: c.term.unwrap_or(0) }),
            paused: c.pause.is_some(),
            request: c.request.as_ref().filter(|r| r.refused.is_none()).map(|r| Request {
                kind: r.kind,
                from: r.from.clone(),
                to: r.to.clone(),
                allow_data_loss: r.allow_data_loss,
                age: Duration::from_millis(now_ms().saturating_sub(r.requested_ms)),
            }),
            last_failover_age: self.failover_age.age(),
            last_primary: c.last_history.as_ref().map(|h| h.new_primary.clone()),
            released_by: c.incident.as_ref().map(|i| i.node.clone()).filter(|n| !n.is_empty()),
            last_primary_position: self.last_primary_position,
            last_promoted_from: c.last_history.as_ref().filter(|h| h.promoted).and_then(|h| h.new_position),
            sync_standbys: c.sync.as_ref().map(|s| s.standbys.clone()),
            sync_leader: c.sync.as_ref().map(|s| s.leader.clone()),
            sync_joining: c.sync.as_ref().map(|s| s.joining.clone()).unwrap_or_default(),
            sync_unreadable: c.sync_unreadable,
            leader_lost_ago: self.leader_lost_at.map(|t| t.elapsed()),
            leader_heartbeat_ago: c.status.as_ref().map(|s| Duration::from_millis(now_ms().saturating_sub(s.heartbeat_ms))),
        }
    }

    fn inputs(&self, obs: &Observation, cluster: Option<&ClusterState>, peers: Vec<PeerObs>) -> Inputs {
        let view = cluster.map(|c| self.view(c));
        Inputs {
            me: self.cfg.node.clone(),
            policy: self.policy.clone(),
            local: obs.local.clone(),
            view,
            lease: LeaseState {
                held: self.dcs.holds_leader(),
                renewed_ago: self.renewal().map(|t| t.elapsed()),
                given_up: self.released_term.is_some() && cluster.and_then(|c| c.term) == self.released_term,
            },
            peers,
            crash: CrashState { restart_started_ago: self.restart_started.map(|t| t.elapsed()) },
            vetoed_ago: self.vetoed_at.map(|t| t.elapsed()),
            vouched_ago: self.shared.get().last_vouch.map(|t| t.elapsed()),
            retake_failed: self.retake_failed,
        }
    }

    fn log_decision(&mut self, d: &Decision) {
        if d.state != self.last_state {
            tracing::info!(state = %d.state, "state");
            self.last_state = d.state.clone();
        }
        if d.refusal != self.last_refusal {
            if let Some(r) = &d.refusal {
                tracing::warn!(reason = %r, "refusing to fail over");
            }
            self.last_refusal = d.refusal.clone();
        }
    }

    fn remember(&mut self, c: &ClusterState) {
        let now = Instant::now();
        for (name, m) in &c.members {
            self.known.insert(name.clone(), m.clone());
            self.known_seen.insert(name.clone(), now);
        }
        let seen = &self.known_seen;
        let forget: Vec<String> = self
            .known
            .keys()
            .filter(|n| {
                let absent_for = (!c.members.contains_key(*n)).then(|| seen.get(*n).map_or(Duration::MAX, |t| now.duration_since(*t)));
                !core::members::keep_member(absent_for)
            })
            .cloned()
            .collect();
        for name in forget {
            tracing::info!(member = %name, "forgetting a member absent from etcd for an hour");
            self.known.remove(&name);
            self.known_seen.remove(&name);
        }
        let leader_rec = c
            .leader
            .as_ref()
            .and_then(|l| c.members.get(&l.node))
            .filter(|m| m.health == crate::core::DbHealth::Running && m.role == Some(crate::core::DbRole::Primary));
        self.leader_watch.read(leader_rec, now, self.cfg.timing.loop_wait * 3);
        self.failover_age.read(c.last_history.as_ref(), now, now_ms(), self.cfg.timing.loop_wait * 3);
        for b in &c.bad_values {
            if !self.bad_values_logged.contains(b) {
                tracing::error!(key = %b.key, problem = %b.problem, "ignoring a bad value in etcd (only this key; everything else goes on)");
            }
        }
        self.bad_values_logged = c.bad_values.clone();
        if let Some(l) = &c.leader {
            self.last_leader = Some(l.node.clone());
            if let Some(m) = c.members.get(&l.node) {
                if m.role == Some(crate::core::DbRole::Primary) && m.position.is_some() {
                    self.last_primary_position = m.position;
                }
            }
        } else if self.last_leader.is_none() {
            // This sidecar started after the leader key went away: the old
            // leader is the node that recorded the incident, or else the
            // primary the newest history record names.
            self.last_leader = c
                .incident
                .as_ref()
                .map(|i| i.node.clone())
                .filter(|n| !n.is_empty())
                .or_else(|| c.last_history.as_ref().map(|h| h.new_primary.clone()));
        }
    }

    /// Completes the history record of this node's promotion with the
    /// moment every other live member streams from it.
    async fn track_following(&mut self) {
        let Some(rec) = self.pending_history.take() else { return };
        let snap = self.shared.get();
        let me = format!("{}:{}", self.cfg.database.host, self.cfg.database.port);
        let others: Vec<&MemberRecord> = snap.cluster.members.values().filter(|m| m.node != self.cfg.node).collect();
        let all = !others.is_empty() && others.iter().all(|m| m.streaming && m.upstream.as_deref() == Some(me.as_str()));
        if !all {
            if now_ms().saturating_sub(rec.at_ms) < 600_000 {
                self.pending_history = Some(rec);
            }
            return;
        }
        let step = Step {
            name: "all replicas following".into(),
            at_ms: now_ms(),
            detail: Some(others.iter().map(|m| m.node.clone()).collect::<Vec<_>>().join(", ")),
        };
        let mut rec = self.my_history.clone().filter(|r| r.term == rec.term).unwrap_or(rec);
        rec.steps.push(step);
        self.my_history = Some(rec.clone());
        if let Err(e) = self.dcs.put_history(&rec).await {
            tracing::warn!(error = %format!("{e:#}"), "could not update the history record");
        }
    }

    /// Watches the local server process and wakes the loop the moment it
    /// dies, so a crash is handled in milliseconds rather than after polls.
    /// It waits on a pidfd (readable when the process exits), so an idle
    /// sidecar does not poll; without pidfd support it polls every 50 ms.
    fn process_watch(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let engine = Arc::clone(&self.engine);
        let wake = Arc::clone(&self.wake);
        async move {
            loop {
                if engine.wait_server_exit().await {
                    wake.notify_one();
                } else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}
