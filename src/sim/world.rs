//! The simulated databases, their replication, the network between the
//! nodes, a client that writes, and the safety checks that watch them.
//!
//! A database's data is its log of write ids: a primary appends, a replica
//! copies its upstream's log while its own is a prefix of it (otherwise it
//! has diverged, as a PostgreSQL replica with WAL past the new timeline's
//! switch point has). Positions are (timeline, log length). Everything is
//! driven by the paused tokio clock and one seeded RNG, so a seed replays.

use super::rng::Rng;
use crate::clock::Instant;
use crate::position::{Lsn, Position, TimelineSwitch};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::Notify;

/// A database server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    Stopped,
    /// Running; accepts connections from `ready_at` (before: starting).
    Running {
        pid: u32,
        ready_at: Instant,
    },
}

/// One node's database.
#[derive(Debug)]
pub struct Db {
    pub name: String,
    pub port: u16,
    pub proc: Proc,
    /// The whole node is frozen (SIGSTOP), or the server alone hangs: it
    /// answers nothing.
    pub frozen: bool,
    /// The server alone hangs (`frozen` with its sidecar running): only a
    /// kill ends it.
    pub hung: bool,
    /// New connections wait past a probe's timeout (an overloaded node, its
    /// connection slots full); open sessions, its sidecar's among them,
    /// carry on.
    pub slow_connects: bool,
    /// `standby.signal`: the server starts (and stays) a replica.
    pub standby: bool,
    /// `promote.signal`: a promotion was asked and has not finished; it
    /// outlives the sidecar that asked, and the postmaster removes it when
    /// it starts.
    pub promote_requested: bool,
    /// The node `primary_conninfo` names.
    pub conninfo: Option<usize>,
    pub log: Vec<u64>,
    /// The newest heartbeat row in this data: when it was written (ms of
    /// the writer's clock) and by which node. Replication and base backups
    /// carry it, a rewind forgets it.
    pub heartbeat: Option<(u64, usize)>,
    pub timeline: u32,
    pub history: Vec<TimelineSwitch>,
    /// `synchronous_standby_names` (ANY 1 of these).
    pub sync_names: Vec<String>,
    /// The WAL receiver streams now.
    pub streaming: bool,
    /// Notified when the server process exits.
    pub exit: Arc<Notify>,
    /// When the node was last resumed from a freeze.
    pub resumed_at: Option<Instant>,
    /// Costly actions run on this data directory (for the bounded-retry check).
    pub rewinds: u32,
    pub base_backups: u32,
}

impl Db {
    pub fn running(&self) -> bool {
        matches!(self.proc, Proc::Running { .. })
    }

    pub fn ready(&self, now: Instant) -> bool {
        matches!(self.proc, Proc::Running { ready_at, .. } if ready_at <= now)
    }

    /// Takes client writes now (a synchronous one may still wait for its
    /// acknowledgement).
    pub fn accepts_writes(&self, now: Instant) -> bool {
        self.ready(now) && !self.frozen && !self.standby
    }

    pub fn position(&self) -> Position {
        Position { timeline: self.timeline, lsn: Lsn(self.log.len() as u64) }
    }
}

/// A write the client saw acknowledged, and by which node.
#[derive(Debug, Clone)]
pub struct Ack {
    pub id: u64,
    pub node: usize,
}

/// A write accepted but not yet acknowledged (synchronous mode).
#[derive(Debug, Clone)]
struct Pending {
    id: u64,
    node: usize,
    index: usize,
}

pub struct WorldInner {
    pub dbs: Vec<Db>,
    /// Directed links that drop everything (from, to).
    pub cut: BTreeSet<(usize, usize)>,
    /// When each directed link was last healed after a cut.
    pub healed_at: std::collections::BTreeMap<(usize, usize), Instant>,
    /// Nodes whose host is down (node lost): nothing reaches them.
    pub host_down: Vec<bool>,
    /// Since when each down host is down.
    pub host_down_since: Vec<Option<Instant>>,
    pub rng: Rng,
    next_pid: u32,
    next_write: u64,
    pending: Vec<Pending>,
    pub acks: Vec<Ack>,
    pub synchronous: bool,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub start: Instant,
    /// Nodes whose next long action crashes their sidecar part-way.
    pub crash_in_action: Vec<bool>,
    /// Set by the fake engine: crash this node's sidecar now.
    pub crash_requests: Vec<bool>,
    /// How long a hung action hangs.
    pub hang: Duration,
    /// Actions may hang now (the `ActionsHang` fault).
    pub hangs: bool,
    /// When the last hung action ends (liveness is measured from then).
    pub hang_until: Instant,
    /// Acknowledged writes that a later primary did not have (async mode
    /// allows them; counted for the report).
    pub lost_async: usize,
    /// Checks that saw a resumed frozen node still writable beside the
    /// primary, within `RESUME_GRACE` of its resume.
    pub resume_window: usize,
    /// Writes acknowledged while another node acknowledged too (inside
    /// those windows), not counted as acknowledged.
    pub watchdog_acks: usize,
    /// Checks that saw a writable primary whose sidecar is dead beside
    /// another writable one (a double fault only the node watchdog covers).
    pub orphan_window: usize,
    /// Which nodes' sidecars run (kept by the harness).
    pub sidecar_up: Vec<bool>,
    pub sidecar_started: Vec<Option<Instant>>,
    /// A sidecar stopped (crashed) and not shown alive to its peers since:
    /// its member key's value when it stopped (None inside: it had none).
    /// A peer that reached it, or a member key rewritten since, proves it
    /// alive again (`ha::dead_sidecars` is the shell's side of this).
    pub sidecar_unproven: Vec<Option<Option<Vec<u8>>>>,
    /// Each node's watchdog device (the `watchdog` option): it counts on
    /// the simulated clock whatever its sidecar does, frozen or gone.
    pub watchdogs: Vec<SimWatchdog>,
    /// Who held the leader key at the last tick.
    pub key_holder: Option<String>,
    /// Nodes the watchdog reset.
    pub watchdog_resets: usize,
    /// The faults in force (bad values in etcd aside), by their index in
    /// the schedule, with what each impairs.
    pub in_force: BTreeMap<usize, Impairs>,
    /// When the faults in force last changed, or a sidecar stopped or
    /// started, or a node was reset: the liveness checks while faults run
    /// give the cluster a bound from then.
    pub changed_at: Instant,
    /// The last promotion, or a new node winning the leader key: within
    /// `hold_down` of it a second automatic failover needs a human, by
    /// design.
    pub promoted_at: Option<Instant>,
}

/// What a fault in force impairs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impairs {
    /// These nodes (one, or both ends of a one-way cut).
    Nodes(usize, usize),
    /// The whole cluster (etcd down or slow, actions that hang).
    Cluster,
    /// Nothing a healthy cluster needs (an operator's switchover).
    Nothing,
}

impl WorldInner {
    pub fn set_host_down(&mut self, i: usize, down: bool) {
        self.host_down[i] = down;
        self.host_down_since[i] = down.then(Instant::now);
    }

    /// The nodes impaired by the faults in force, or None while one
    /// impairs the whole cluster.
    pub fn impaired(&self) -> Option<BTreeSet<usize>> {
        let mut nodes = BTreeSet::new();
        for f in self.in_force.values() {
            match *f {
                Impairs::Nodes(a, b) => {
                    nodes.insert(a);
                    nodes.insert(b);
                }
                Impairs::Cluster => return None,
                Impairs::Nothing => {}
            }
        }
        Some(nodes)
    }
}

/// A node's watchdog device, as the harness sees it.
#[derive(Debug, Clone, Default)]
pub struct SimWatchdog {
    /// Counting: opened, not stopped by a magic close.
    pub counting: bool,
    pub timeout: Duration,
    pub last_feed: Option<Instant>,
    /// A magic character came: the next close stops it.
    magic: bool,
}

impl SimWatchdog {
    /// Counting and not fed for its timeout: the node resets now.
    pub fn expired(&self, now: Instant) -> bool {
        self.counting && self.last_feed.is_some_and(|t| now.duration_since(t) >= self.timeout)
    }
}

/// The watchdog device one sidecar opens: a view on its node's
/// `SimWatchdog` in the world (so that a sidecar crash or freeze does not
/// stop it, as a real device is not stopped).
pub struct SimWatchdogDevice {
    pub world: Arc<World>,
    pub node: usize,
}

impl crate::watchdog::WatchdogDevice for SimWatchdogDevice {
    fn open(&mut self, timeout_s: u32) -> anyhow::Result<()> {
        let mut w = self.world.lock();
        let d = &mut w.watchdogs[self.node];
        d.counting = true;
        d.magic = false;
        d.timeout = Duration::from_secs(timeout_s as u64);
        d.last_feed = Some(Instant::now());
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut w = self.world.lock();
        let d = &mut w.watchdogs[self.node];
        for b in bytes {
            match b {
                b'V' => d.magic = true,
                _ => {
                    d.magic = false;
                    d.last_feed = Some(Instant::now());
                }
            }
        }
        Ok(())
    }

    fn close(&mut self) {
        let mut w = self.world.lock();
        let d = &mut w.watchdogs[self.node];
        if d.magic {
            d.counting = false;
        }
    }
}

/// How long a restarted sidecar may take to fence a writable primary it
/// finds without a key: two looks (a server resumed from a freeze answers
/// a moment after its sidecar, so the first look can find it unresponsive),
/// each up to a query timeout and an etcd request timeout (1 s each), a
/// loop between them (1 s by default), and the fence (the 30-minute run,
/// seed 7577612: fenced 3.2 s after a resume; until then such a primary is
/// an orphan, the node watchdog's to reset).
pub const START_GRACE: Duration = Duration::from_millis(5500);

/// How long a healed link must have been up before a promotion counts as
/// made "within reach" of a writer behind it: the decision rests on probes
/// sent up to a probe timeout (1 s) before it, and the key is taken with
/// an etcd request (up to 2 s when etcd is slow) before the promotion
/// (the 15-minute run, seeds 7124933, 7194085, 7218401, 7218561: probes
/// sent during a cut, the promotion 0.2 to 0.9 s after it healed).
pub const REACH_GRACE: Duration = Duration::from_secs(3);

/// How long a node resumed from a freeze may stay writable before its
/// sidecar fences it (watchdog tick 100 ms, immediate shutdown).
pub const RESUME_GRACE: Duration = Duration::from_secs(1);

pub struct World {
    inner: Mutex<WorldInner>,
    /// Wakes the harness when a sidecar must crash.
    pub crash_wake: Notify,
}

impl World {
    pub fn new(names: &[String], synchronous: bool, rng: Rng) -> Arc<World> {
        let n = names.len();
        let dbs = names
            .iter()
            .enumerate()
            .map(|(i, name)| Db {
                name: name.clone(),
                port: 5432 + i as u16,
                proc: Proc::Stopped,
                frozen: false,
                slow_connects: false,
                promote_requested: false,
                hung: false,
                // The first node was the primary; the others its replicas.
                standby: i != 0,
                conninfo: (i != 0).then_some(0),
                log: vec![],
                heartbeat: None,
                timeline: 1,
                history: vec![],
                sync_names: vec![],
                streaming: false,
                exit: Arc::new(Notify::new()),
                resumed_at: None,
                rewinds: 0,
                base_backups: 0,
            })
            .collect();
        Arc::new(World {
            inner: Mutex::new(WorldInner {
                dbs,
                cut: BTreeSet::new(),
                healed_at: Default::default(),
                host_down: vec![false; n],
                host_down_since: vec![None; n],
                rng,
                next_pid: 1000,
                next_write: 1,
                pending: vec![],
                acks: vec![],
                synchronous,
                violations: vec![],
                trace: vec![],
                start: Instant::now(),
                crash_in_action: vec![false; n],
                crash_requests: vec![false; n],
                hang: Duration::from_secs(60),
                hangs: false,
                hang_until: Instant::now(),
                lost_async: 0,
                resume_window: 0,
                watchdog_acks: 0,
                orphan_window: 0,
                sidecar_up: vec![false; n],
                sidecar_started: vec![None; n],
                sidecar_unproven: vec![None; n],
                key_holder: None,
                watchdogs: vec![SimWatchdog::default(); n],
                watchdog_resets: 0,
                in_force: BTreeMap::new(),
                changed_at: Instant::now(),
                promoted_at: None,
            }),
            crash_wake: Notify::new(),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, WorldInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl WorldInner {
    pub fn t(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    pub fn note(&mut self, what: impl AsRef<str>) {
        let line = format!("{:9.3}s  {}", self.t(), what.as_ref());
        self.trace.push(line);
    }

    pub fn violation(&mut self, what: impl AsRef<str>) {
        let line = format!("{:9.3}s  VIOLATION: {}", self.t(), what.as_ref());
        self.trace.push(line.clone());
        self.violations.push(line);
    }

    /// Can `a` and `b` talk (TCP needs both directions)?
    pub fn link(&self, a: usize, b: usize) -> bool {
        a == b || (!self.host_down[a] && !self.host_down[b] && !self.cut.contains(&(a, b)) && !self.cut.contains(&(b, a)))
    }

    pub fn start_process(&mut self, i: usize, ready_in: Duration) {
        if self.dbs[i].running() {
            return;
        }
        self.next_pid += 1;
        let pid = self.next_pid;
        self.dbs[i].proc = Proc::Running { pid, ready_at: Instant::now() + ready_in };
        self.dbs[i].promote_requested = false;
        self.dbs[i].streaming = false;
        let what = if self.dbs[i].standby { "as a replica" } else { "AS A PRIMARY" };
        self.note(format!("{} started {what} (pid {pid})", self.dbs[i].name));
        self.check_writers();
        if !self.dbs[i].standby {
            self.check_has_acked(i);
        }
    }

    pub fn stop_process(&mut self, i: usize, how: &str) {
        if !self.dbs[i].running() {
            return;
        }
        self.dbs[i].proc = Proc::Stopped;
        self.dbs[i].streaming = false;
        if std::mem::take(&mut self.dbs[i].hung) {
            self.dbs[i].frozen = false;
        }
        self.dbs[i].exit.notify_waiters();
        self.dbs[i].exit.notify_one();
        self.pending.retain(|p| p.node != i);
        self.note(format!("{} stopped ({how})", self.dbs[i].name));
    }

    pub fn promote(&mut self, i: usize) {
        self.promoted_at = Some(Instant::now());
        let db = &mut self.dbs[i];
        db.history.push(TimelineSwitch { timeline: db.timeline, switch_lsn: Lsn(db.log.len() as u64) });
        db.timeline += 1;
        db.standby = false;
        db.promote_requested = false;
        db.conninfo = None;
        db.streaming = false;
        let msg = format!("{} PROMOTED to timeline {} at {}", db.name, db.timeline, db.log.len());
        self.note(msg);
        self.check_promoted_beside_a_writer(i);
        self.check_writers();
        self.check_has_acked(i);
    }

    /// Would acknowledge a client's write now: takes writes, and in
    /// synchronous mode has a named standby streaming from it.
    pub fn acknowledges(&self, i: usize, now: Instant) -> bool {
        let d = &self.dbs[i];
        d.accepts_writes(now)
            && (d.sync_names.is_empty() || self.dbs.iter().any(|r| d.sync_names.contains(&r.name) && r.conninfo == Some(i) && r.streaming))
    }

    /// Safety: never two nodes that acknowledge client writes. A node just
    /// resumed from a freeze (SIGSTOP of the whole node) is writable until
    /// its sidecar, resumed with it, fences it: that window is the node
    /// watchdog's to close, so it is counted (`resume_window`), not a
    /// violation, for `RESUME_GRACE`.
    pub fn check_writers(&mut self) {
        let now = Instant::now();
        let w: Vec<usize> = (0..self.dbs.len()).filter(|i| self.acknowledges(*i, now)).collect();
        if w.len() < 2 {
            return;
        }
        // A primary whose sidecar is dead is out of vigil's reach (the node
        // watchdog resets such a node); counted, not a violation.
        // A sidecar that just started has not had its first look yet (up
        // to an etcd request timeout, and a loop).
        let orphan = |i: &usize| !self.sidecar_up[*i] || self.sidecar_started[*i].is_some_and(|t| now.duration_since(t) < START_GRACE);
        if w.iter().filter(|i| !orphan(i)).count() < 2 {
            self.orphan_window += 1;
            return;
        }
        let w: Vec<usize> = w.into_iter().filter(|i| !orphan(i)).collect();
        let fresh = |i: &usize| self.just_resumed(*i, now);
        if w.iter().filter(|i| !fresh(i)).count() > 1 || w.iter().all(fresh) {
            let names: Vec<String> = w.iter().map(|i| self.dbs[*i].name.clone()).collect();
            self.violation(format!("two nodes acknowledge client writes: {}", names.join(", ")));
        } else {
            self.resume_window += 1;
        }
    }

    /// Node `i`'s server resumed from a freeze within `RESUME_GRACE`: the
    /// window its own sidecar (or the node watchdog) has to fence it.
    fn just_resumed(&self, i: usize, now: Instant) -> bool {
        self.dbs[i].resumed_at.is_some_and(|t| now.duration_since(t) < RESUME_GRACE)
    }

    /// Safety: a node is never promoted while another node's database within
    /// its reach accepts writes, whether or not a sidecar runs beside that
    /// one (its direct probe can see it; `check_writers` counts a writer
    /// without a sidecar apart, as the node watchdog's case, but promoting
    /// beside one is vigil's own doing). A node just resumed from a freeze
    /// is the watchdog's window, as in `check_writers`.
    fn check_promoted_beside_a_writer(&mut self, i: usize) {
        let now = Instant::now();
        let writer = (0..self.dbs.len()).find(|&j| {
            j != i
                && self.link(i, j)
                && [(i, j), (j, i)].iter().all(|p| self.healed_at.get(p).is_none_or(|t| now.duration_since(*t) >= REACH_GRACE))
                && self.acknowledges(j, now)
                && !self.just_resumed(j, now)
        });
        if let Some(j) = writer {
            let (a, b) = (self.dbs[i].name.clone(), self.dbs[j].name.clone());
            self.violation(format!("{a} was promoted while {b}, within its reach, accepted writes"));
        }
    }

    /// How many writes node `g` acknowledged that no other node has.
    pub fn acked_only_on(&self, g: usize) -> usize {
        let others: std::collections::HashSet<u64> =
            self.dbs.iter().enumerate().filter(|(i, _)| *i != g).flat_map(|(_, d)| d.log.iter().copied()).collect();
        self.acks.iter().filter(|a| a.node == g && !others.contains(&a.id)).count()
    }

    /// Synchronous mode: a node that starts accepting writes has every
    /// acknowledged write.
    fn check_has_acked(&mut self, i: usize) {
        let have: std::collections::HashSet<u64> = self.dbs[i].log.iter().copied().collect();
        let missing: Vec<u64> = self.acks.iter().filter(|a| !have.contains(&a.id)).map(|a| a.id).collect();
        if missing.is_empty() {
            return;
        }
        if self.synchronous {
            let name = self.dbs[i].name.clone();
            self.violation(format!(
                "synchronous mode: {name} accepts writes without {} acknowledged write(s) (first: {})",
                missing.len(),
                missing[0]
            ));
        } else {
            self.lost_async += missing.len();
            // Forget them: they are counted once.
            self.acks.retain(|a| have.contains(&a.id));
        }
    }

    /// One replication step: every replica streams from its upstream if it
    /// can, and waiting synchronous commits are acknowledged.
    pub fn replicate(&mut self) {
        let now = Instant::now();
        for r in 0..self.dbs.len() {
            let (ok, up) = {
                let d = &self.dbs[r];
                match d.conninfo {
                    Some(u) if d.ready(now) && !d.frozen && d.standby && u != r => (true, u),
                    _ => (false, 0),
                }
            };
            if !ok {
                if self.dbs[r].running() && !self.dbs[r].frozen {
                    self.dbs[r].streaming = false;
                }
                continue;
            }
            let can = {
                let (d, u) = (&self.dbs[r], &self.dbs[up]);
                u.ready(now) && !u.frozen && self.link(r, up) && u.log.len() >= d.log.len() && u.log[..d.log.len()] == d.log[..]
            };
            if can {
                let (log, tl, hist) = (self.dbs[up].log.clone(), self.dbs[up].timeline, self.dbs[up].history.clone());
                let heartbeat = self.dbs[up].heartbeat;
                let d = &mut self.dbs[r];
                d.log = log;
                d.heartbeat = heartbeat;
                d.timeline = tl;
                d.history = hist;
                d.streaming = true;
            } else {
                self.dbs[r].streaming = false;
            }
        }
        // Acknowledge synchronous commits some named standby has.
        let mut acked: Vec<Ack> = vec![];
        self.pending.retain(|p| {
            let primary = &self.dbs[p.node];
            let by = self.dbs.iter().any(|d| {
                primary.sync_names.contains(&d.name) && d.conninfo == Some(p.node) && d.streaming && d.log.get(p.index) == Some(&p.id)
            });
            if by {
                acked.push(Ack { id: p.id, node: p.node });
            }
            !by
        });
        for a in acked {
            self.record_ack(a);
        }
    }

    /// Records an acknowledged write, unless it was acknowledged in one of
    /// the windows the split-brain check leaves to the node watchdog: such
    /// writes are counted apart. Those are: another node acknowledges
    /// writes at the same moment; a deposed primary (another node has been
    /// promoted to a later timeline since) acknowledges it within
    /// `RESUME_GRACE` of its resume (a synchronous commit waiting on a
    /// frozen primary, acknowledged when it resumes by a standby still
    /// attached to it: seed 7067387); a primary whose sidecar is dead
    /// acknowledges it without the leader key (nothing vouches for it any
    /// more: a replica that cannot reach it promotes, seed 7091099; a node
    /// watchdog resets such a node before its lease ends).
    fn record_ack(&mut self, a: Ack) {
        let now = Instant::now();
        let d = &self.dbs[a.node];
        let deposed_resumed =
            d.resumed_at.is_some_and(|t| now.duration_since(t) < RESUME_GRACE) && self.dbs.iter().any(|o| o.timeline > d.timeline);
        // An orphan as `check_writers` counts one: its sidecar is dead, or
        // started less than START_GRACE ago and has not fenced it yet. Its
        // acknowledgements are the node watchdog's to prevent. Counting
        // only a dead sidecar flagged the 20 writes a primary cut off from
        // a stopped etcd took in the second its restarted sidecar's first
        // etcd read timed out (the 30-minute run on 3acf0d4, seed 8541023).
        // (A restart: at the cluster's first start nobody holds the key
        // yet, and the first primary's writes are the cluster's own.)
        let started_late = self.sidecar_started[a.node].is_some_and(|t| t > self.start && now.duration_since(t) < START_GRACE);
        let orphan_without_key = (!self.sidecar_up[a.node] || started_late) && self.key_holder.as_deref() != Some(d.name.as_str());
        if deposed_resumed || orphan_without_key || (0..self.dbs.len()).any(|j| j != a.node && self.acknowledges(j, now)) {
            self.watchdog_acks += 1;
        } else {
            self.acks.push(a);
        }
    }

    /// The client: one write to every node that accepts writes.
    pub fn write(&mut self) {
        let now = Instant::now();
        for i in 0..self.dbs.len() {
            if !self.dbs[i].accepts_writes(now) {
                continue;
            }
            let id = self.next_write;
            self.next_write += 1;
            let index = self.dbs[i].log.len();
            self.dbs[i].log.push(id);
            if self.dbs[i].sync_names.is_empty() {
                self.record_ack(Ack { id, node: i });
            } else {
                self.pending.push(Pending { id, node: i, index });
            }
        }
        self.check_writers();
    }

    /// A random duration between `lo` and `hi` ms; while actions hang, a
    /// good chance of `hang` instead.
    pub fn action_time(&mut self, lo: u64, hi: u64) -> Duration {
        if self.hangs && self.rng.chance(0.3) {
            self.hang_until = self.hang_until.max(Instant::now() + self.hang);
            let msg = format!("an action hangs for {:?}", self.hang);
            self.note(msg);
            return self.hang;
        }
        Duration::from_millis(self.rng.range(lo, hi))
    }
}
