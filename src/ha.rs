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

use crate::alerts::{Evaluator, Facts, Notifier, Severity};
use crate::clock::Instant;
use crate::config::Config;
use crate::core::{self, Action, Candidate, CrashState, Decision, Inputs, LeaderKey, LeaseState, PeerObs, Policy, Request, View};
use crate::dcs::{
    now_ms, CandidateRecord, ClusterState, Dcs, HistoryKind, HistoryRecord, IncidentRecord, LeaderRecord, MemberRecord, RequestRecord,
    Step, SyncRecord,
};
use crate::engine::{Engine, FollowOutcome, Observation, Upstream};
use crate::peers::{HttpPeers, PeerApi};
use crate::position::{Lsn, Position};
use crate::publish::dns::{DnsTarget, Published};
use crate::publish::hooks::{HookEvent, Hooks};
use crate::status::Shared;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// A finished DNS publication: term, outcome, when (ms).
type DnsResult = (i64, Result<Published, String>, u64);

/// Per silent peer: its database's last answer to "do you accept writes?"
/// (None: not yet known; inner None: unreachable) and when that probe began.
type SilentProbes = std::collections::HashMap<String, (Option<Option<bool>>, Instant)>;

pub struct Ha<E: Engine, D: Dcs, P: PeerApi = HttpPeers> {
    cfg: Config,
    policy: Policy,
    engine: Arc<E>,
    dcs: Arc<D>,
    shared: Arc<Shared>,
    wake: Arc<Notify>,
    peers_api: P,
    /// Consecutive observations with the database running (for `rise`).
    /// Consecutive (good, failed) checks of the local database.
    checks: (u32, u32),
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
    /// When the leader lease was last renewed; shared with the lease watchdog.
    last_renewal: Arc<std::sync::Mutex<Option<Instant>>>,
    paused: Arc<std::sync::atomic::AtomicBool>,
    term: Option<i64>,
    leader_lost_ms: Option<u64>,
    /// When this node first saw the leader key vacant (monotonic clock).
    leader_lost_at: Option<Instant>,
    /// The leader's member record as last seen changing: (node, its
    /// `updated_ms`, when this node saw that value first).
    leader_record_seen: Option<(String, u64, Instant)>,
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
}

/// What this node's promotion in `term` is, for its history record.
fn history_kind(cluster: Option<&ClusterState>, me: &str, term: i64) -> HistoryKind {
    // Written when the key was won (by this process or an earlier one).
    if let Some(h) = cluster.and_then(|c| c.last_history.as_ref()).filter(|h| h.term == term) {
        return h.kind;
    }
    match cluster.and_then(|c| c.request.as_ref()).filter(|r| r.to == me && r.refused.is_none()).map(|r| r.kind) {
        Some(crate::core::RequestKind::Switchover) => HistoryKind::Switchover,
        Some(crate::core::RequestKind::Failover) => HistoryKind::ManualFailover,
        // The cluster's first primary (MariaDB servers all start read-only,
        // so even a cold start promotes): not a failover, and it starts no
        // hold_down.
        None if cluster.is_some_and(|c| c.last_history.is_none()) => HistoryKind::Bootstrap,
        None => HistoryKind::Failover,
    }
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
        };
        let (cfg_hooks, cfg_cluster, cfg_node) = (cfg.hooks.clone(), cfg.cluster.clone(), cfg.node.clone());
        let dns_target = cfg.dns.as_ref().map(DnsTarget::from_config);
        Ha {
            cfg,
            policy,
            engine,
            dcs,
            shared,
            wake,
            peers_api,
            checks: (0, 0),
            failsafe_active: false,
            known: BTreeMap::new(),
            known_seen: BTreeMap::new(),
            last_leader: None,
            last_primary_position: None,
            last_renewal: Arc::default(),
            paused: Arc::default(),
            term: None,
            leader_lost_ms: None,
            leader_lost_at: None,
            leader_record_seen: None,
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
            db_owner: Arc::default(),
        }
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

    /// Runs beside a long action: every `loop` it renews the leader lease
    /// (if held) and the member record, showing the action and how long it
    /// has run ("promoting since 12 s"). Returns (so cancelling the action)
    /// only if the leader lease expires or was not renewed within
    /// `ttl - safety_margin`: the database must then be fenced, not left
    /// to finish promoting or handing over without a lease.
    fn keep_alive_beside(&self, action: &Action) -> impl std::future::Future<Output = String> + Send + 'static {
        let (dcs, shared, renewal, paused) =
            (Arc::clone(&self.dcs), Arc::clone(&self.shared), Arc::clone(&self.last_renewal), Arc::clone(&self.paused));
        let (every, limit) = (self.cfg.timing.loop_wait, self.cfg.timing.ttl.saturating_sub(self.cfg.timing.safety_margin));
        let what = action.doing();
        let started = Instant::now();
        // The lapse is watched every 100 ms, apart from the renewals, which
        // can each wait for an etcd deadline: a node resumed from a freeze
        // must not finish an action for a loop and a deadline before it
        // fences (found by the simulation, seed 5012989).
        let lapsed = {
            let (dcs, renewal, paused) = (Arc::clone(&dcs), Arc::clone(&renewal), Arc::clone(&paused));
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let last = *renewal.lock().unwrap_or_else(|e| e.into_inner());
                    if dcs.holds_leader() && !paused.load(std::sync::atomic::Ordering::Relaxed) && last.is_none_or(|t| t.elapsed() >= limit)
                    {
                        return format!("the leader lease was not renewed for {limit:?} while {what}; cancelled");
                    }
                }
            }
        };
        let renew = async move {
            loop {
                tokio::time::sleep(every).await;
                if dcs.holds_leader() {
                    let sent = Instant::now();
                    match dcs.renew_leader().await {
                        Ok(true) => *renewal.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent),
                        Ok(false) => return format!("the leader lease expired while {what}; cancelled"),
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not renew the leader lease while {what}"),
                    }
                }
                if let Some(mut me) = shared.get().me {
                    me.state = format!("{what} since {:.0}s", started.elapsed().as_secs_f64());
                    me.updated_ms = now_ms();
                    if dcs.put_member(&me).await.is_ok() {
                        shared.update(|s| s.me = Some(me));
                    }
                }
            }
        };
        async move {
            // `biased`: the lapse first, and a fixed order for replay.
            tokio::select! {
                biased;
                why = lapsed => why,
                why = renew => why,
            }
        }
    }

    /// When the lease was last known renewed: always the moment the
    /// request was *sent*, never when its answer came. The lease's TTL runs
    /// on etcd from (about) the send; an answer that arrives late (a slow
    /// etcd, a node frozen between request and answer) must not make a
    /// lapsed lease look fresh (found by the simulation, seed 5012989,
    /// once its replay no longer depended on a random `select!` order).
    fn set_renewal(&self, at: Option<Instant>) {
        *self.last_renewal.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    fn renewal(&self) -> Option<Instant> {
        *self.last_renewal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease watchdog: the loop can be slowed by etcd calls running
    /// into their deadlines, so a separate task checks every 100 ms and
    /// fences the database once the lease was last renewed more than
    /// `ttl - safety_margin` ago. The decision core applies the same rule;
    /// this is what keeps it on time.
    ///
    /// It drives the database only through `db_owner`, the lock the loop
    /// holds while it executes an action, so the two never act on the
    /// database at once (a fence racing the loop's own fence, then a
    /// rewind under the server the watchdog had just started, was seen).
    /// Having waited for the lock it looks again: the loop may have
    /// renewed or released the lease meanwhile.
    fn lease_watchdog(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (engine, dcs, shared) = (Arc::clone(&self.engine), Arc::clone(&self.dcs), Arc::clone(&self.shared));
        let (renewal, paused, owner) = (Arc::clone(&self.last_renewal), Arc::clone(&self.paused), Arc::clone(&self.db_owner));
        let limit = self.cfg.timing.ttl.saturating_sub(self.cfg.timing.safety_margin);
        let lapsed = move || {
            let last = *renewal.lock().unwrap_or_else(|e| e.into_inner());
            dcs.holds_leader() && !paused.load(std::sync::atomic::Ordering::Relaxed) && last.is_none_or(|t| t.elapsed() >= limit)
        };
        let dcs = Arc::clone(&self.dcs);
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !lapsed() {
                    continue;
                }
                let _owner = owner.lock().await;
                if !lapsed() {
                    continue;
                }
                tracing::error!("leader lease not renewed for {limit:?} (ttl - safety_margin): fencing the database");
                shared.update(|s| s.writable_leader = false);
                dcs.forget_leader();
                if let Err(e) = engine.fence().await {
                    tracing::error!(error = %format!("{e:#}"), "fencing failed");
                }
            }
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

    async fn iterate(&mut self) -> Result<()> {
        self.heartbeat_ok = false;
        let mut obs = self.engine.observe().await;
        self.checks = crate::core::count_checks(obs.local.health, self.checks);
        (obs.local.good_checks, obs.local.failed_checks) = self.checks;
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
        let probe = vacant && core::needs_peer_probes(&obs.local, last_primary, &self.cfg.node);
        let peers = if probe { self.probe_peers(obs.upstream.as_deref()).await } else { vec![] };
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
            let beside = self.keep_alive_beside(action);
            let result = tokio::select! {
                biased;
                r = self.execute(action, &obs, cluster.as_ref(), &peers, &decision) => r,
                why = beside => Err(anyhow::anyhow!(why)),
            };
            if let Err(e) = result {
                tracing::warn!(action = ?action, error = %format!("{e:#}"), "action failed");
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
            if let Err(e) = self.manage_sync(Some(&obs), cluster.as_ref()).await {
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

    /// Members seen before whose member key is gone, and whether their
    /// database still answers. Only the sidecar that evaluates cluster-wide
    /// alerts asks, and the probes run in the background (at most every
    /// 5 s per peer), so a dead host never slows the loop.
    fn silent_peers(&self, cluster: Option<&ClusterState>) -> Vec<(String, Option<bool>)> {
        let Some(c) = cluster else { return vec![] };
        let evaluator = c.leader.as_ref().map(|l| l.node.clone()).or_else(|| c.members.keys().next().cloned());
        if evaluator.as_deref() != Some(self.cfg.node.as_str()) {
            return vec![];
        }
        let mut probes = self.silent_probes.lock().unwrap_or_else(|e| e.into_inner());
        probes.retain(|node, _| !c.members.contains_key(node));
        let mut out = vec![];
        for m in self.known.values().filter(|m| m.node != self.cfg.node && !c.members.contains_key(&m.node)) {
            let entry = probes.get(&m.node).copied();
            if let Some((Some(db), _)) = entry {
                out.push((m.node.clone(), db));
            }
            if entry.is_none_or(|(_, started)| started.elapsed() > Duration::from_secs(5)) {
                probes.insert(m.node.clone(), (entry.and_then(|e| e.0), Instant::now()));
                let (engine, cache, wake, m) =
                    (Arc::clone(&self.engine), Arc::clone(&self.silent_probes), Arc::clone(&self.wake), m.clone());
                tokio::spawn(async move {
                    let db = engine.probe_writable(&m.db_host, m.db_port).await;
                    if let Some(e) = cache.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&m.node) {
                        let first = e.0.is_none();
                        e.0 = Some(db);
                        if first {
                            wake.notify_one();
                        }
                    }
                });
            }
        }
        out
    }

    fn raise_alerts(&mut self, d: &Decision, silent: Vec<(String, Option<bool>)>) {
        let snap = self.shared.get();
        let Some(me) = snap.me.as_ref() else { return };
        let held_down = d.refusal_kind == Some(crate::core::RefusalKind::HeldDown);
        let sync_problems = self.sync_problems(&snap);
        let facts = Facts {
            sync_problems,
            now_ms: now_ms(),
            me,
            cluster: snap.dcs_ok.then_some(&snap.cluster),
            dcs_down_since_ms: self.dcs_down_since,
            silent_peers: silent,
            refusal: d.refusal.as_deref(),
            held_down,
        };
        for a in self.evaluator.evaluate(&facts) {
            self.notifier.notify(&a);
        }
        if self.last_resend.elapsed() >= self.cfg.alerts.resend {
            self.last_resend = Instant::now();
            self.notifier.refresh(&self.evaluator.firing());
        }
        let stats = &self.notifier.stats;
        let firing: Vec<String> = self.evaluator.firing().iter().map(|a| a.key()).collect();
        let counts = (
            stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
            stats.failed.load(std::sync::atomic::Ordering::Relaxed),
            stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        );
        self.shared.update(|s| {
            s.alerts_firing = firing;
            s.alert_deliveries = counts;
        });
    }

    /// Sync problems with how long each may last before it is alerted.
    fn sync_problems(&self, snap: &crate::status::Snapshot) -> Vec<(String, String, Duration)> {
        let Some(rep) = &snap.sync else { return vec![] };
        let s = &self.cfg.sync;
        rep.problems(s, snap.writable_leader)
            .into_iter()
            .map(|(check, reason)| {
                let for_ = match check.as_str() {
                    "redis" => s.redis.as_ref().map(|r| r.max_age).unwrap_or_default(),
                    "file_sync" if !reason.starts_with("stale") => s.files.as_ref().map(|f| f.max_age).unwrap_or_default(),
                    _ => Duration::ZERO,
                };
                (check, reason, for_)
            })
            .collect()
    }

    fn event(&self, name: &str, severity: Severity, summary: String, old: Option<String>, new: Option<String>) {
        let a = self.evaluator.event(name, severity, now_ms(), summary, self.term, old, new);
        self.notifier.notify(&a);
    }

    /// Publishes this node in DNS in the background, retrying with backoff
    /// until it works, a newer term owns the record, or two minutes pass.
    fn publish_dns(&self, term: i64) {
        let Some(dns) = self.dns.clone() else { return };
        let address = self.cfg.dns.as_ref().and_then(|d| d.address.clone()).unwrap_or_else(|| self.cfg.database.host.clone());
        let node = self.cfg.node.clone();
        let tx = self.dns_results.0.clone();
        let wake = Arc::clone(&self.wake);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut delay = Duration::from_millis(200);
            loop {
                match dns.publish_verified(&address, term, &node).await {
                    Ok(p) => {
                        tracing::info!(name = %dns.name, %address, term, took_ms = started.elapsed().as_millis() as u64, outcome = ?p, "DNS published");
                        let _ = tx.send((term, Ok(p), now_ms()));
                        break;
                    }
                    Err(e) if started.elapsed() > Duration::from_secs(120) => {
                        tracing::error!(name = %dns.name, error = %format!("{e:#}"), "DNS publication failed; giving up");
                        let _ = tx.send((term, Err(format!("{e:#}")), now_ms()));
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(name = %dns.name, error = %format!("{e:#}"), "DNS publication failed; retrying in {delay:?}");
                        let _ = tx.send((term, Err(format!("{e:#}")), now_ms()));
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
            wake.notify_one();
        });
    }

    /// Folds finished DNS publications into metrics, alerts and history.
    async fn drain_dns(&mut self) {
        while let Ok((term, result, at_ms)) = self.dns_results.1.try_recv() {
            let name = self.cfg.dns.as_ref().map(|d| d.name.clone()).unwrap_or_default();
            let step = match &result {
                Ok(Published::Updated) => {
                    self.shared.update(|s| s.dns_published_term = Some(term));
                    Step { name: format!("DNS {name} published"), at_ms, detail: None }
                }
                Ok(Published::NewerTermOwnsIt(t)) => {
                    Step { name: format!("DNS {name} left alone"), at_ms, detail: Some(format!("term {t} owns it")) }
                }
                Err(e) => {
                    self.shared.update(|s| s.dns_failures += 1);
                    Step { name: format!("DNS {name} publication failed"), at_ms, detail: Some(e.clone()) }
                }
            };
            let failed = result.is_err();
            let first_failure = failed
                && !self
                    .my_history
                    .as_ref()
                    .is_some_and(|r| r.term == term && r.steps.iter().any(|s| s.name.ends_with("publication failed")));
            if first_failure {
                // One alert per term; the retries go on in the background.
                self.event(
                    "DnsPublishFailed",
                    Severity::Critical,
                    format!("could not publish {name} for term {term} (retrying): {}", step.detail.clone().unwrap_or_default()),
                    None,
                    Some(self.cfg.node.clone()),
                );
            }
            for rec in [self.my_history.as_mut(), self.pending_history.as_mut()].into_iter().flatten() {
                if rec.term == term && !(failed && rec.steps.iter().any(|s| s.name.ends_with("publication failed"))) {
                    rec.steps.push(step.clone());
                }
            }
            if let Some(rec) = self.my_history.clone().filter(|r| r.term == term) {
                let _ = self.dcs.put_history(&rec).await;
            }
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
        // A record's `updated_ms` is another node's clock: only whether it
        // changes is used, timed on this node's own clock.
        let leader_rec = c
            .leader
            .as_ref()
            .and_then(|l| c.members.get(&l.node))
            .filter(|m| m.health == crate::core::DbHealth::Running && m.role == Some(crate::core::DbRole::Primary));
        self.leader_record_seen = match (leader_rec, self.leader_record_seen.take()) {
            (Some(m), Some(seen)) if seen.0 == m.node && seen.1 == m.updated_ms => Some(seen),
            (Some(m), _) => Some((m.node.clone(), m.updated_ms, Instant::now())),
            (None, _) => None,
        };
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

    async fn renew_lease(&mut self, c: &ClusterState) {
        if !self.dcs.holds_leader() {
            return;
        }
        // The key names someone else: our lease no longer guards anything.
        if c.leader.as_ref().is_some_and(|l| l.node != self.cfg.node) || c.leader.is_none() {
            tracing::warn!("leader key is no longer ours; dropping the lease");
            self.dcs.forget_leader();
            self.set_renewal(None);
            return;
        }
        let sent = Instant::now();
        match self.dcs.renew_leader().await {
            Ok(true) => self.set_renewal(Some(sent)),
            Ok(false) => {
                tracing::error!("leader lease expired");
                self.set_renewal(None);
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not renew the leader lease"),
        }
    }

    /// Fresh looks at every other member: its database (writable?) and its
    /// sidecar (position, eligibility), in parallel.
    ///
    /// The database this replica streams from is probed too when no known
    /// member has its address: after an etcd outage every member key may
    /// have lapsed (a sidecar started during the outage knows nobody), and
    /// a primary kept writable by the failsafe must still be seen before a
    /// replica promotes (found by the simulation, seed 1000092).
    async fn probe_peers(&self, upstream: Option<&str>) -> Vec<PeerObs> {
        let unknown_upstream = upstream
            .filter(|u| !self.known.values().any(|m| format!("{}:{}", m.db_host, m.db_port) == *u))
            .and_then(|u| u.rsplit_once(':'))
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)));
        let upstream_probe = async {
            match &unknown_upstream {
                Some((host, port)) => Some(PeerObs {
                    node: format!("{host}:{port} (the upstream)"),
                    db_writable: self.engine.probe_writable(host, *port).await,
                    answered: false,
                    candidate: None,
                }),
                None => None,
            }
        };
        let futs = self.known.values().filter(|m| m.node != self.cfg.node).map(|m| {
            let m = m.clone();
            async move {
                let writable = self.engine.probe_writable(&m.db_host, m.db_port).await;
                let fresh = self.fetch_member(&m.api_url).await;
                let answered = fresh.is_some();
                let rec = fresh.or_else(|| self.shared.get().cluster.members.get(&m.node).cloned());
                PeerObs {
                    node: m.node.clone(),
                    db_writable: writable,
                    answered,
                    candidate: rec.map(|r| Candidate {
                        position: r.position,
                        priority: r.priority,
                        eligible: r.eligible,
                        is_primary: r.role == Some(crate::core::DbRole::Primary) && r.health == crate::core::DbHealth::Running,
                    }),
                }
            }
        });
        let (mut peers, up) = tokio::join!(futures_util::future::join_all(futs), upstream_probe);
        peers.extend(up);
        peers
    }

    async fn fetch_member(&self, api_url: &str) -> Option<MemberRecord> {
        self.peers_api.member(api_url).await
    }

    fn inputs(&self, obs: &Observation, cluster: Option<&ClusterState>, peers: Vec<PeerObs>) -> Inputs {
        let view = cluster.map(|c| View {
            leader: c.leader.as_ref().map(|l| LeaderKey { node: l.node.clone(), term: c.term.unwrap_or(0) }),
            paused: c.pause.is_some(),
            request: c.request.as_ref().filter(|r| r.refused.is_none()).map(|r| Request {
                kind: r.kind,
                from: r.from.clone(),
                to: r.to.clone(),
                allow_data_loss: r.allow_data_loss,
                age: Duration::from_millis(now_ms().saturating_sub(r.requested_ms)),
            }),
            last_failover_age: c
                .last_history
                .as_ref()
                .filter(|h| h.is_automatic_failover())
                .map(|h| Duration::from_millis(now_ms().saturating_sub(h.at_ms))),
            last_primary: c.last_history.as_ref().map(|h| h.new_primary.clone()),
            released_by: c.incident.as_ref().map(|i| i.node.clone()).filter(|n| !n.is_empty()),
            last_primary_position: self.last_primary_position,
            sync_standbys: c.sync.as_ref().map(|s| s.standbys.clone()),
            sync_leader: c.sync.as_ref().map(|s| s.leader.clone()),
            sync_unreadable: c.sync_unreadable,
            leader_lost_ago: self.leader_lost_at.map(|t| t.elapsed()),
        });
        Inputs {
            me: self.cfg.node.clone(),
            policy: self.policy.clone(),
            local: obs.local.clone(),
            view,
            lease: LeaseState { held: self.dcs.holds_leader(), renewed_ago: self.renewal().map(|t| t.elapsed()) },
            peers,
            crash: CrashState { restart_started_ago: self.restart_started.map(|t| t.elapsed()) },
            vetoed_ago: self.vetoed_at.map(|t| t.elapsed()),
            vouched_ago: self.shared.get().last_vouch.map(|t| t.elapsed()),
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

    fn upstream(&self, leader: &str) -> Result<Upstream> {
        let m = self.known.get(leader).with_context(|| format!("no member record for leader {leader}"))?;
        Ok(Upstream {
            node: m.node.clone(),
            host: m.db_host.clone(),
            port: m.db_port,
            timeline: m.position.filter(|_| m.role == Some(crate::core::DbRole::Primary)).map(|p| p.timeline),
            history: m.timeline_history.clone(),
            gtid_state: m.gtid.as_ref().map(|g| g.binlog_state.clone()),
            server_uuid: m.gtid.as_ref().and_then(|g| g.server_uuid.clone()),
        })
    }

    async fn execute(
        &mut self,
        action: &Action,
        obs: &Observation,
        cluster: Option<&ClusterState>,
        peers: &[PeerObs],
        d: &Decision,
    ) -> Result<()> {
        let node = self.cfg.node.clone();
        match action {
            Action::AdoptLeader => {
                let lease = cluster.and_then(|c| c.leader_lease).context("leader key has no lease")?;
                let term = cluster.and_then(|c| c.term).context("leader key has no term")?;
                let sent = Instant::now();
                if !self.dcs.adopt_leader(lease, term).await? {
                    bail!("the leader key's lease expired before it could be adopted");
                }
                self.term = cluster.and_then(|c| c.term);
                self.set_renewal(Some(sent));
                tracing::info!(term = ?self.term, "adopted the leader key of an earlier process of this node");
                if let (Some(t), true) = (self.term, obs.local.writable()) {
                    self.publish_dns(t);
                }
            }
            Action::WriteHeartbeat => {
                let term = self.term.or(cluster.and_then(|c| c.term)).unwrap_or(0);
                self.engine.write_heartbeat(&node, term).await?;
                self.heartbeat_ok = true;
            }
            Action::AcquireLeader => {
                let rec = LeaderRecord { node: node.clone(), since_ms: now_ms() };
                let sent = Instant::now();
                match self.dcs.acquire_leader(&rec).await? {
                    Some(term) => {
                        self.term = Some(term);
                        self.set_renewal(Some(sent));
                        tracing::info!(term, "took the leader key");
                        crate::faults::point("after_acquire");
                        if !d.actions.contains(&Action::Promote) && !obs.local.writable() {
                            // The last primary took its key back to start its
                            // stopped database: no change of primary.
                            tracing::info!(term, "took the leader key back; starting the database");
                        } else if obs.local.writable() {
                            self.record_retake(cluster, term).await;
                            self.publish_dns(term);
                        } else {
                            let old = self.last_leader.clone().filter(|l| *l != node);
                            self.event(
                                "FailoverStarted",
                                Severity::Critical,
                                format!(
                                    "{node} took the leader key (term {term}) after {} lost it; promoting",
                                    old.clone().unwrap_or_else(|| "the primary".into())
                                ),
                                old,
                                Some(node.clone()),
                            );
                        }
                    }
                    None => bail!("another node took the leader key first"),
                }
            }
            Action::Promote => {
                let acquired_ms = now_ms();
                let ev = HookEvent {
                    event: "pre_promote".into(),
                    role: "primary".into(),
                    term: self.term,
                    old_primary: self.last_leader.clone().filter(|l| *l != node),
                    new_primary: Some(node.clone()),
                    reason: d.state.clone(),
                };
                if let Err(why) = self.hooks.pre_promote(&ev).await {
                    self.vetoed_at = Some(Instant::now());
                    tracing::error!(reason = %why, "pre_promote hook vetoed the promotion; giving the leader key back");
                    let mut inc = cluster.and_then(|c| c.incident.clone()).unwrap_or(IncidentRecord {
                        node: String::new(),
                        reason: String::new(),
                        failure_seen_ms: 0,
                        released_ms: 0,
                        notes: vec![],
                        created_ms: now_ms(),
                    });
                    inc.notes.push(Step {
                        name: format!("pre_promote hook vetoed promotion of {node}"),
                        at_ms: now_ms(),
                        detail: Some(why.clone()),
                    });
                    let _ = self.dcs.set_incident(Some(inc)).await;
                    self.forget_history_of_this_term().await;
                    let _ = self.dcs.release_leader().await;
                    self.set_renewal(None);
                    self.event(
                        "FailoverVetoed",
                        Severity::Warning,
                        format!("pre_promote hook vetoed promotion of {node}: {why}"),
                        ev.old_primary.clone(),
                        Some(node.clone()),
                    );
                    bail!("pre_promote hook vetoed the promotion: {why}");
                }
                // History names the new primary before it promotes: the
                // rules about the last primary (hold-down, starting in its
                // own role, synchronous mode) must never see an older one
                // while this node's timeline is the newest. No record, no
                // promotion (the simulation, seed 3012237: a record lost to
                // a slow etcd held the new primary down).
                let term = self.term.or(cluster.and_then(|c| c.term)).unwrap_or(0);
                if cluster.and_then(|c| c.last_history.as_ref()).is_none_or(|h| h.term != term || h.new_primary != node) {
                    let rec = HistoryRecord {
                        term,
                        kind: history_kind(cluster, &node, term),
                        reason: "leader key won; promoting".into(),
                        old_primary: self.last_leader.clone().filter(|l| *l != node),
                        new_primary: node.clone(),
                        at_ms: now_ms(),
                        steps: vec![Step { name: "leader key acquired".into(), at_ms: acquired_ms, detail: Some(format!("term {term}")) }],
                        candidates: vec![],
                        old_position: self.last_primary_position,
                        new_position: obs.local.position,
                    };
                    if let Err(e) = self.dcs.put_history(&rec).await {
                        let _ = self.dcs.release_leader().await;
                        self.set_renewal(None);
                        return Err(e).context("write the history record before promoting (the leader key was given back)");
                    }
                }
                // Synchronous mode: name the standbys before the database
                // accepts its first write (allowed during recovery).
                self.manage_sync(None, cluster).await.context("set the synchronous standbys before promotion")?;
                let t0 = Instant::now();
                if let Err(e) = self.engine.promote().await {
                    tracing::error!(error = %format!("{e:#}"), "promotion failed; releasing the leader key");
                    self.event(
                        "FailoverFailed",
                        Severity::Critical,
                        format!("promotion of {node} failed: {e:#}"),
                        self.last_leader.clone(),
                        Some(node.clone()),
                    );
                    self.hooks.fire(
                        "on_failover_failed",
                        HookEvent {
                            event: "failover_failed".into(),
                            role: "replica".into(),
                            term: self.term,
                            old_primary: self.last_leader.clone(),
                            new_primary: Some(node.clone()),
                            reason: format!("{e:#}"),
                        },
                    );
                    // The server may still finish a promotion it was asked
                    // for: it is fenced before the key goes, or it could
                    // come up writable beside the next primary (found by
                    // the simulation, seed 1001457). Should the fence fail,
                    // the key stays until the lease lapses and the watchdog
                    // fences.
                    if let Err(f) = self.engine.fence().await {
                        tracing::error!(error = %format!("{f:#}"), "could not fence after a failed promotion; keeping the key until the lease lapses");
                        return Err(e);
                    }
                    self.forget_history_of_this_term().await;
                    let _ = self.dcs.release_leader().await;
                    self.set_renewal(None);
                    return Err(e);
                }
                crate::faults::point("after_promote");
                let promoted_ms = now_ms();
                let term = self.term.unwrap_or(0);
                self.engine.write_heartbeat(&node, term).await.context("first write after promotion")?;
                self.heartbeat_ok = true;
                let writable_ms = now_ms();
                tracing::info!(term, promote_ms = t0.elapsed().as_millis() as u64, "promoted; accepting writes");
                self.shared.update(|s| {
                    s.writable_leader = true;
                    s.promotions += 1;
                });
                self.record_promotion(obs, cluster, peers, d, term, acquired_ms, promoted_ms, writable_ms).await;
            }
            Action::ReleaseLeader { reason } => {
                tracing::warn!(%reason, "releasing the leader key");
                let incident = IncidentRecord {
                    node: node.clone(),
                    reason: reason.clone(),
                    failure_seen_ms: self.failure_seen_ms.unwrap_or_else(now_ms),
                    released_ms: now_ms(),
                    notes: vec![],
                    created_ms: now_ms(),
                };
                if let Err(e) = self.dcs.set_incident(Some(incident)).await {
                    tracing::warn!(error = %format!("{e:#}"), "could not record the incident");
                }
                self.event(
                    "FailoverStarted",
                    Severity::Critical,
                    format!("{node} releases the leader key: {reason}"),
                    Some(node.clone()),
                    None,
                );
                self.shared.update(|s| s.writable_leader = false);
                if obs.local.health != crate::core::DbHealth::Running {
                    // It must not come back as a primary: the key is going to
                    // a replica. A hung server, or one still starting (crash
                    // recovery ends writable), is killed so that it cannot
                    // wake up writable.
                    if matches!(obs.local.health, crate::core::DbHealth::Unresponsive | crate::core::DbHealth::Starting) {
                        self.engine.kill_server().await?;
                    }
                    if let Err(e) = self.engine.mark_replica() {
                        tracing::warn!(error = %format!("{e:#}"), "could not mark the data directory as a replica");
                    }
                }
                self.dcs.release_leader().await?;
                self.set_renewal(None);
            }
            Action::Fence { reason } => {
                tracing::error!(%reason, "fencing the local database (read-only)");
                self.hooks.fire(
                    "on_role_change",
                    HookEvent {
                        event: "fenced".into(),
                        role: "replica".into(),
                        term: self.term,
                        reason: reason.clone(),
                        ..Default::default()
                    },
                );
                self.shared.update(|s| s.writable_leader = false);
                self.dcs.forget_leader();
                self.set_renewal(None);
                self.engine.fence().await?;
            }
            Action::Start => {
                tracing::info!("starting the database");
                if self.dcs.holds_leader() {
                    // Leading with a stopped database: as a restart in
                    // place, the key goes if it does not come up within
                    // restart_budget.
                    self.restart_started = Some(Instant::now());
                }
                self.engine.start().await?;
            }
            Action::StartReplica => {
                tracing::info!("starting the database as a replica (a later primary exists)");
                self.engine.mark_replica()?;
                self.engine.start().await?;
            }
            Action::RestartInPlace => {
                tracing::warn!("primary database is down; restarting it in place");
                self.restart_started = Some(Instant::now());
                self.engine.restart_in_place().await?;
            }
            Action::Rejoin { leader } => {
                let up = self.upstream(leader)?;
                tracing::info!(%leader, "rejoining as a replica");
                let what = self.rejoin(&up).await?;
                tracing::info!(%leader, "{what}");
            }
            Action::Follow { leader } => {
                let up = self.upstream(leader)?;
                match self.engine.follow(&up, obs).await? {
                    FollowOutcome::Unchanged => {}
                    FollowOutcome::Repointed => tracing::info!(%leader, "re-pointed replication to the new primary"),
                    FollowOutcome::Diverged => {
                        tracing::warn!(%leader, "timeline diverged from the new primary; rewinding");
                        let what = self.rejoin(&up).await?;
                        tracing::info!(%leader, "{what}");
                    }
                }
                self.check_stuck_replica(&up, obs).await?;
            }
            Action::HandOver { to } => self.hand_over(to, cluster).await?,
            Action::RefuseRequest { reason } => {
                tracing::warn!(%reason, "refusing the operator's request");
                if let Some(mut req) = cluster.and_then(|c| c.request.clone()) {
                    req.refused = Some(reason.clone());
                    self.dcs.set_request(Some(req)).await?;
                }
            }
            Action::ClearRequest { reason } => {
                tracing::info!(%reason, "clearing the switchover/failover request");
                self.dcs.set_request(None).await?;
            }
        }
        Ok(())
    }

    /// etcd failsafe, leader side: etcd is unreachable. Ask every member
    /// known from etcd whether it may keep serving; if all say yes (none
    /// can reach etcd, so none can elect a leader), count it as a lease
    /// renewal. One missing or refusing answer and the lease lapses as
    /// usual: the watchdog fences at `ttl - safety_margin`.
    async fn failsafe_round(&mut self) {
        let peers: Vec<MemberRecord> = self.known.values().filter(|m| m.node != self.cfg.node).cloned().collect();
        let ask = crate::api::FailsafeAsk { leader: self.cfg.node.clone(), term: self.term };
        let sent = Instant::now();
        let api = &self.peers_api;
        let asks = peers.iter().map(|m| {
            let ask = &ask;
            async move { (m.node.clone(), api.failsafe(&m.api_url, ask).await) }
        });
        let answers = futures_util::future::join_all(asks).await;
        let verdict = core::failsafe::failsafe_verdict(&answers);
        if verdict.is_ok() {
            if !self.failsafe_active {
                tracing::warn!(
                    members = peers.len(),
                    "etcd unreachable; every member confirmed it cannot reach etcd either: keeping the primary (failsafe)"
                );
            }
            self.set_renewal(Some(sent));
            self.failsafe_active = true;
        } else {
            let refusals = verdict.err().unwrap_or_default();
            tracing::warn!(refusals = %refusals.join("; "), "etcd unreachable and failsafe not confirmed by every member; the lease will lapse");
            self.failsafe_active = false;
        }
    }

    /// Synchronous mode, on the leader: keeps the `sync` key and the
    /// database's synchronous standbys in step. A replica is added to the
    /// key before the database counts its acknowledgements; one that left
    /// the cluster is dropped only once a remaining member of the set has
    /// flushed all the WAL the primary has now (so it has everything the
    /// dropped one could have acknowledged). `obs` is None just before a
    /// promotion (nothing is connected yet).
    async fn manage_sync(&mut self, obs: Option<&Observation>, cluster: Option<&ClusterState>) -> Result<()> {
        use std::collections::{BTreeMap, BTreeSet};
        if !self.cfg.failover.synchronous {
            return Ok(());
        }
        let Some(c) = cluster else { return Ok(()) };
        let me = self.cfg.node.clone();
        let desired: BTreeSet<String> = c.members.values().filter(|m| m.node != me && m.priority > 0).map(|m| m.node.clone()).collect();
        let mine = c.sync.as_ref().filter(|s| s.leader == me);
        let current: BTreeSet<String> = mine.map(|s| s.standbys.iter().cloned().collect()).unwrap_or_default();
        let mut connected: BTreeMap<&str, Lsn> =
            obs.map(|o| o.standbys.iter().map(|(n, l)| (n.as_str(), *l)).collect()).unwrap_or_default();
        // MariaDB names its connected replicas by server_id only, and any
        // of them that has semi-sync on may acknowledge: map them to
        // members (also departed ones, whose last record is kept), with
        // the received position of their latest record (never ahead of
        // what they have now).
        if let Some(ids) = obs.and_then(|o| o.gtid.as_ref()).map(|g| &g.connected_replicas) {
            for m in self.known.values().filter(|m| m.node != me) {
                if m.gtid.as_ref().is_some_and(|g| ids.contains(&g.server_id)) {
                    let latest = c.members.get(&m.node).unwrap_or(m);
                    connected.insert(m.node.as_str(), latest.receive_lsn.unwrap_or(Lsn(0)));
                }
            }
        }
        let step = core::sync_set::next_sync_set(&core::sync_set::SyncSetInputs {
            current: current.clone(),
            desired,
            connected: connected.into_iter().map(|(n, l)| (n.to_string(), l)).collect(),
            primary_position: obs.and_then(|o| o.local.position).map(|p| p.lsn),
            marks: std::mem::take(&mut self.sync_marks),
        });
        for gone in &step.dropped {
            tracing::info!(node = %gone, "dropping a departed replica from the synchronous set (another member has all it could have acknowledged)");
        }
        self.sync_marks = step.marks;
        let next = step.next;
        if mine.is_none() || next != current {
            let rec = SyncRecord { leader: me, standbys: next.iter().cloned().collect(), updated_ms: now_ms() };
            self.dcs.set_sync(&rec).await.context("write the sync key")?;
        }
        self.engine.set_synchronous(&next.into_iter().collect::<Vec<_>>()).await
    }

    /// Rejoins through the engine, no sooner than `core::rejoin::rejoin_backoff`
    /// allows after failed attempts.
    async fn rejoin(&mut self, up: &Upstream) -> Result<String> {
        let wait = core::rejoin::rejoin_backoff(self.rejoin_failures);
        if let Some(left) = self.last_rejoin_failure.map(|t| wait.saturating_sub(t.elapsed())).filter(|l| !l.is_zero()) {
            bail!("rejoin failed {} times in a row; next attempt in {:.0?}", self.rejoin_failures, left);
        }
        self.rejoin_attempts += 1;
        match self.engine.rejoin(up, self.rejoin_attempts).await {
            Ok(what) => {
                self.rejoin_failures = 0;
                self.last_rejoin_failure = None;
                Ok(what)
            }
            Err(e) => {
                self.rejoin_failures += 1;
                self.last_rejoin_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// The stuck-replica rule (`core::rejoin::stuck_replica`): the shell
    /// only measures how long the replica has not streamed and how long ago
    /// the leader's record last changed.
    async fn check_stuck_replica(&mut self, up: &Upstream, obs: &Observation) -> Result<()> {
        let pointed = obs.upstream.as_deref() == Some(&format!("{}:{}", up.host, up.port));
        if obs.local.streaming || !pointed {
            self.not_streaming_since = None;
        } else {
            self.not_streaming_since.get_or_insert_with(Instant::now);
        }
        let leader_refreshed_ago = self.leader_record_seen.as_ref().filter(|(n, _, _)| *n == up.node).map(|(_, _, at)| at.elapsed());
        let s = core::rejoin::StuckInputs {
            streaming: obs.local.streaming,
            pointed_at_leader: pointed,
            leader_refreshed_ago,
            not_streaming_for: self.not_streaming_since.map(|t| t.elapsed()),
        };
        if core::rejoin::stuck_replica(&self.policy, &s) {
            tracing::warn!(leader = %up.node, "not streaming from a live primary for {:?}; rewinding", s.not_streaming_for.unwrap_or_default());
            self.not_streaming_since = None;
            let what = self.rejoin(up).await?;
            tracing::info!(leader = %up.node, "{what}");
        }
        Ok(())
    }

    /// Planned switchover on the leader: stop writes (clean shutdown, which
    /// sends all WAL to connected replicas), check the target has all of
    /// it, then release the key to the target. Any doubt: start again as
    /// primary and keep the key.
    async fn hand_over(&mut self, to: &str, cluster: Option<&ClusterState>) -> Result<()> {
        let c = cluster.context("no cluster view")?;
        let target = c.members.get(to).cloned();
        let ready = target
            .as_ref()
            .is_some_and(|t| t.health == crate::core::DbHealth::Running && t.role == Some(crate::core::DbRole::Replica) && t.streaming);
        if !ready {
            tracing::warn!(%to, "switchover refused: target is not a streaming replica");
            let why = format!("switchover to {to} refused: it is not a healthy streaming replica");
            if let Some(mut req) = c.request.clone() {
                req.refused = Some(why.clone());
                self.dcs.set_request(Some(req)).await?;
            }
            bail!(why);
        }
        let target = target.expect("checked");
        let mut steps = vec![Step { name: "switchover started".into(), at_ms: now_ms(), detail: None }];
        self.shared.update(|s| s.writable_leader = false);
        let checkpoint = self.engine.stop_for_switchover().await?;
        steps.push(Step { name: "writes stopped".into(), at_ms: now_ms(), detail: Some(format!("shutdown checkpoint {checkpoint}")) });
        let deadline = Instant::now() + self.cfg.failover.switchover_timeout;
        loop {
            let caught_up = self
                .fetch_member(&target.api_url)
                .await
                .and_then(|m| m.receive_lsn.max(m.replay_lsn))
                .is_some_and(|l: Lsn| l >= checkpoint);
            if caught_up {
                break;
            }
            if Instant::now() > deadline {
                tracing::error!(%to, "switchover abandoned: target did not receive the shutdown checkpoint; starting again as primary");
                self.engine.resume_as_primary().await?;
                let why = format!("switchover to {to} abandoned: it did not receive all WAL within switchover_timeout");
                if let Some(mut req) = c.request.clone() {
                    req.refused = Some(why.clone());
                    self.dcs.set_request(Some(req)).await?;
                }
                bail!(why);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        steps.push(Step { name: "target has all WAL".into(), at_ms: now_ms(), detail: None });
        if let Some(mut req) = c.request.clone() {
            steps.push(Step { name: "leader key released".into(), at_ms: now_ms(), detail: None });
            req.steps = steps;
            // Hand the steps to the target for its history record; then release.
            let _ = self.dcs.set_request(Some(req)).await;
        }
        self.dcs.release_leader().await?;
        self.set_renewal(None);
        tracing::info!(%to, "switchover: leader key released to the target");
        Ok(())
    }

    /// Deletes the history record written when this node won the key,
    /// after it gave the key back without promoting.
    async fn forget_history_of_this_term(&self) {
        if let Some(term) = self.term {
            if let Err(e) = self.dcs.delete_history(term).await {
                tracing::warn!(error = %format!("{e:#}"), "could not delete the history record of an abandoned promotion");
            }
        }
    }

    async fn record_retake(&mut self, cluster: Option<&ClusterState>, term: i64) {
        if cluster.is_some_and(|c| c.last_history.is_none()) {
            let rec = HistoryRecord {
                term,
                kind: HistoryKind::Bootstrap,
                reason: "first leader of the cluster".into(),
                old_primary: None,
                new_primary: self.cfg.node.clone(),
                at_ms: now_ms(),
                steps: vec![Step { name: "leader key acquired".into(), at_ms: now_ms(), detail: None }],
                candidates: vec![],
                old_position: None,
                new_position: None,
            };
            if let Err(e) = self.dcs.put_history(&rec).await {
                tracing::warn!(error = %format!("{e:#}"), "could not write history");
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn record_promotion(
        &mut self,
        obs: &Observation,
        cluster: Option<&ClusterState>,
        peers: &[PeerObs],
        d: &Decision,
        term: i64,
        acquired_ms: u64,
        promoted_ms: u64,
        writable_ms: u64,
    ) {
        let req: Option<RequestRecord> = cluster.and_then(|c| c.request.clone()).filter(|r| r.to == self.cfg.node);
        let kind = history_kind(cluster, &self.cfg.node, term);
        let mut steps = req.as_ref().map(|r| r.steps.clone()).unwrap_or_default();
        let incident = cluster.and_then(|c| c.incident.clone()).filter(|i| i.released_ms.max(i.created_ms) + 600_000 > now_ms());
        if let Some(i) = &incident {
            steps.extend(i.notes.iter().cloned());
        }
        match incident.as_ref().filter(|i| !i.node.is_empty()) {
            Some(i) => {
                steps.push(Step { name: format!("failure seen by {}", i.node), at_ms: i.failure_seen_ms, detail: Some(i.reason.clone()) });
                steps.push(Step { name: format!("leader key released by {}", i.node), at_ms: i.released_ms, detail: None });
            }
            None if req.is_none() => {
                if let Some(ms) = self.leader_lost_ms {
                    steps.push(Step { name: "leader key expired (old primary gone)".into(), at_ms: ms, detail: None });
                }
            }
            None => {}
        }
        if let Some(ms) = self.leader_lost_ms {
            steps.push(Step { name: "leader key seen vacant".into(), at_ms: ms, detail: None });
        }
        steps.push(Step { name: "leader key acquired".into(), at_ms: acquired_ms, detail: Some(format!("term {term}")) });
        steps.push(Step { name: "promoted".into(), at_ms: promoted_ms, detail: None });
        steps.push(Step { name: "accepting writes".into(), at_ms: writable_ms, detail: None });
        steps.push(Step { name: "published (/primary answers 200)".into(), at_ms: writable_ms, detail: None });
        steps.sort_by_key(|s| s.at_ms);
        let mut candidates = vec![CandidateRecord {
            node: self.cfg.node.clone(),
            position: obs.local.position,
            eligible: d.eligibility.eligible,
            reason: d.eligibility.reason.clone(),
        }];
        for p in peers {
            let known = self.known.get(&p.node);
            candidates.push(CandidateRecord {
                node: p.node.clone(),
                position: p.candidate.as_ref().and_then(|c| c.position),
                eligible: p.candidate.as_ref().is_some_and(|c| c.eligible),
                reason: match (&p.candidate, p.db_writable) {
                    (None, _) => Some("sidecar unreachable".into()),
                    (_, None) => Some("database unreachable".into()),
                    _ => known.and_then(|k| k.ineligible_reason.clone()),
                },
            });
        }
        let reason = match kind {
            HistoryKind::Switchover => format!("planned switchover from {}", req.as_ref().and_then(|r| r.from.clone()).unwrap_or_default()),
            HistoryKind::ManualFailover => format!("manual failover to {}", self.cfg.node),
            HistoryKind::Bootstrap => "first leader of the cluster".into(),
            _ => match incident.as_ref().filter(|i| !i.node.is_empty()) {
                Some(i) => format!("{}: {}", i.node, i.reason),
                None => format!("leader key of {} expired: node or sidecar lost", self.last_leader.clone().unwrap_or_else(|| "?".into())),
            },
        };
        let rec = HistoryRecord {
            term,
            kind: kind.into(),
            reason,
            old_primary: self.last_leader.clone().filter(|l| *l != self.cfg.node),
            new_primary: self.cfg.node.clone(),
            at_ms: writable_ms,
            steps,
            candidates,
            old_position: self.last_primary_position,
            new_position: obs.local.position,
        };
        if let Err(e) = self.dcs.put_history(&rec).await {
            tracing::warn!(error = %format!("{e:#}"), "could not write the history record");
        }
        if req.is_some() {
            let _ = self.dcs.set_request(None).await;
        }
        if incident.is_some() {
            let _ = self.dcs.set_incident(None).await;
        }
        let mut summary = format!("{} is the new primary (term {term}, {kind}): {}", self.cfg.node, rec.reason);
        if let (Some(o), Some(n)) = (rec.old_position, rec.new_position) {
            summary += &format!("; old primary last at {o}, new at {n}");
        }
        let ev = self.evaluator.event(
            "FailoverSucceeded",
            Severity::Critical,
            now_ms(),
            summary,
            Some(term),
            rec.old_primary.clone(),
            Some(self.cfg.node.clone()),
        );
        let mut ev = ev;
        ev.labels.insert("kind".into(), kind.as_str().into());
        self.notifier.notify(&ev);
        let hook = HookEvent {
            event: kind.as_str().into(),
            role: "primary".into(),
            term: Some(term),
            old_primary: rec.old_primary.clone(),
            new_primary: Some(self.cfg.node.clone()),
            reason: rec.reason.clone(),
        };
        self.hooks.fire("on_role_change", hook.clone());
        self.hooks.fire("post_failover", hook);
        self.my_history = Some(rec.clone());
        self.pending_history = Some(rec);
        self.publish_dns(term);
    }

    async fn publish(&mut self, obs: &Observation, cluster: Option<ClusterState>, dcs_error: Option<String>, d: &Decision) {
        let holds = self.dcs.holds_leader();
        // During an etcd outage the leader keeps serving only on the
        // members' word (failsafe).
        let failsafe = cluster.is_none() && self.failsafe_active;
        let leading = holds && (failsafe || cluster.as_ref().and_then(|c| c.leader.as_ref()).is_some_and(|l| l.node == self.cfg.node));
        let lag_bytes = match (self.last_primary_position, obs.local.position, obs.local.role) {
            (Some(p), Some(m), Some(crate::core::DbRole::Replica)) if p.timeline == m.timeline => Some(p.lsn.0.saturating_sub(m.lsn.0)),
            _ => None,
        };
        let rec = MemberRecord {
            node: self.cfg.node.clone(),
            api_url: self.cfg.api.url(),
            db_host: self.cfg.database.host.clone(),
            db_port: self.cfg.database.port,
            health: obs.local.health,
            role: obs.local.role,
            position: obs.local.position,
            receive_lsn: obs.receive_lsn,
            replay_lsn: obs.replay_lsn,
            streaming: obs.local.streaming,
            upstream: obs.upstream.clone(),
            lag_seconds: obs.lag_seconds,
            lag_bytes,
            timeline_history: obs.timeline_history.clone(),
            priority: self.cfg.failover.priority,
            eligible: d.eligibility.eligible,
            ineligible_reason: d.eligibility.reason.clone(),
            state: d.state.clone(),
            refusal: d.refusal.clone(),
            refusal_kind: d.refusal_kind,
            term: if leading { self.term } else { None },
            paused: cluster.as_ref().is_some_and(|c| c.pause.is_some()),
            updated_ms: now_ms(),
            version: env!("CARGO_PKG_VERSION").into(),
            sync: self.shared.get().sync,
            gtid: obs.gtid.clone(),
        };
        let put = if cluster.is_some() { self.dcs.put_member(&rec).await.err().map(|e| format!("{e:#}")) } else { None };
        if let Some(e) = &put {
            tracing::warn!(error = %e, "could not publish the member key");
        }
        let writable = leading && self.heartbeat_ok;
        let ok = cluster.is_some();
        self.shared.update(|s| {
            s.me = Some(rec);
            if let Some(c) = cluster {
                s.cluster = c;
                s.dcs_last_ok_ms = now_ms();
            }
            s.dcs_ok = ok;
            s.dcs_error = dcs_error.or(put);
            s.holds_leader = holds;
            s.term = if leading { self.term } else { s.cluster.term };
            s.writable_leader = writable;
            s.last_loop_ms = now_ms();
        });
    }
}
