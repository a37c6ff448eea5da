//! The deterministic simulation of a whole cluster.
//!
//! N real sidecars (the production [`Ha`] loop, decision core, lease
//! watchdog, process watcher, member API handlers) run in one thread on a
//! paused tokio clock, against the in-memory etcd of `dcs/memory.rs`, fake
//! PostgreSQL servers (`engine.rs`) and a network model (`world.rs`). A seed
//! drives everything: the fault schedule, action durations, which sidecar
//! crashes where. The same seed gives the same run.
//!
//! Faults: database killed; node lost and back; node frozen and resumed
//! (SIGSTOP of sidecar and server); sidecar crash at a random moment or in
//! the middle of a long action; etcd down; etcd slow (up to 2 s); a node cut
//! from etcd; a node cut from its peers (one-way too); garbage in any key;
//! clock jumps; long actions that hang; an election inside etcd (every lease
//! renewed for its TTL); operator switchovers; a database server that hangs
//! until it is killed.
//!
//! Checks, at every step: never two nodes that accept client writes; in
//! synchronous mode every acknowledged write is on any node that starts
//! accepting writes; no destructive step while a server runs in that data
//! directory; no running replica stopped to rejoin a leader whose node is
//! gone; every ineligible member says why. While faults run: a leader
//! keeps its key when nothing is wrong, and a cluster with one node down
//! keeps serving (`serving_while_one_node_is_down`). After the faults stop: one
//! writable primary holding the key within `bounds().primary`, every other
//! node streaming from it within `bounds().streaming`, and no more than a
//! few rebuilds per node on the way.
//!
//! Replay a seed: `VIGIL_SIM_SEED=<seed> cargo test --test sim` (add
//! `VIGIL_SIM_PROFILE=fast` and `VIGIL_SIM_SYNC=1` as the failure printed).

pub mod engine;
pub mod rng;
pub mod world;

use crate::clock::{Instant, NODE_OFFSET_MS};
use crate::config::Config;
use crate::dcs::memory::{MemoryDcs, MemoryStore};
use crate::ha::Ha;
use crate::peers::{MemberAnswer, PeerApi};
use crate::status::Shared;
use engine::FakePostgres;
use rng::Rng;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::sync::Notify;
use world::World;

/// Timing profile of the simulated cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// loop 1 s, ttl 10 s (the shipped defaults).
    Default,
    /// loop 500 ms, ttl 3 s (the documented fast profile).
    Fast,
}

#[derive(Debug, Clone)]
pub struct SimOptions {
    pub nodes: usize,
    pub profile: Profile,
    pub synchronous: bool,
    /// At most this many faults per seed (at least one).
    pub max_faults: usize,
    /// Faults start within this window after the cluster came up.
    pub fault_window: Duration,
    /// Faults added after the first version of the harness, by
    /// generation: 1 operator switchovers, 2 elections inside etcd, 3 a
    /// database server that hangs until it is killed, 4 a database slow to
    /// take new connections, 5 etcd's disk stalling under its writes
    /// ([`EXTRA_GENERATIONS`] is the newest). They are drawn from a second
    /// stream so that the main stream, and with it every kept seed's
    /// scenario, stays as it was; a kept seed runs with the generations
    /// it was found with (0 for none).
    pub extra_faults: u8,
    /// Every node has a watchdog device (`[watchdog] mode = "automatic"`),
    /// modelled in the world: it resets a node not fed for its timeout.
    pub watchdog: bool,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            nodes: 3,
            profile: Profile::Default,
            synchronous: false,
            max_faults: 4,
            fault_window: Duration::from_secs(60),
            extra_faults: EXTRA_GENERATIONS,
            watchdog: false,
        }
    }
}

/// The newest generation of faults added to the harness after its first
/// version (see [`SimOptions::extra_faults`]).
pub const EXTRA_GENERATIONS: u8 = 6;

/// The kinds of fault a seed can schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    DatabaseKilled,
    NodeLost,
    NodeFrozen,
    SidecarCrash,
    SidecarCrashInAction,
    DcsDown,
    DcsSlow,
    CutFromDcs,
    CutFromPeers,
    OneWayCut,
    Garbage,
    ClockJump,
    ActionsHang,
    /// An operator's planned switchover to `other` (written as `vigil
    /// switchover` writes it).
    Switchover,
    /// etcd elects a new leader of its own, which renews every lease for
    /// its full TTL: a dead holder's key lives up to twice its TTL.
    EtcdElection,
    /// The database server alone stops answering (its postmaster
    /// SIGSTOPped, a wedged server), the sidecar running, and stays so
    /// until it is killed: the fault "ends" at once, and what is left is
    /// for vigil to notice and repair.
    DatabaseHung,
    /// New connections to the node's database wait past a probe's timeout
    /// (an overloaded node, its connection slots full) while open sessions
    /// carry on: other sidecars' direct looks at it get no answer.
    DatabaseSlowToConnect,
    /// etcd's disk stalls (its log cannot be synced): writes get no answer
    /// and are carried out when the stall ends; reads and lease
    /// keep-alives answer as usual.
    DcsWritesStall,
}

/// The kinds drawn from the seed's main stream (their order and number
/// are part of what a seed means: kept seeds replay with them).
const KINDS: [FaultKind; 13] = [
    FaultKind::DatabaseKilled,
    FaultKind::NodeLost,
    FaultKind::NodeFrozen,
    FaultKind::SidecarCrash,
    FaultKind::SidecarCrashInAction,
    FaultKind::DcsDown,
    FaultKind::DcsSlow,
    FaultKind::CutFromDcs,
    FaultKind::CutFromPeers,
    FaultKind::OneWayCut,
    FaultKind::Garbage,
    FaultKind::ClockJump,
    FaultKind::ActionsHang,
];

/// One scheduled fault: what, on which node, when and for how long.
#[derive(Debug, Clone)]
pub struct Fault {
    pub kind: FaultKind,
    pub node: usize,
    pub other: usize,
    pub at: Duration,
    pub lasts: Duration,
    /// Garbage: which key; clock jump: by how much (ms); slow etcd: latency (ms).
    pub param: i64,
}

/// The liveness bounds, derived from the timing (printed with a failure).
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// After the last fault ends: one writable primary holding the key.
    pub primary: Duration,
    /// After that: every other node streaming from it.
    pub streaming: Duration,
    /// After a promotion, a second automatic failover waits this long.
    pub hold_down: Duration,
    /// The leader key's TTL.
    pub ttl: Duration,
}

/// What one seed did.
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub seed: u64,
    pub faults: usize,
    pub simulated: Duration,
    pub violations: Vec<String>,
    pub trace: Vec<String>,
    pub acknowledged: usize,
    pub lost_async: usize,
    /// Checks that saw a resumed frozen primary, or one whose sidecar was
    /// dead, writable beside the primary, and writes such a node
    /// acknowledged (the node watchdog's cases).
    pub watchdog_windows: usize,
    /// Nodes reset by their watchdog (the `watchdog` option).
    pub watchdog_resets: usize,
    /// Seconds from the end of the faults to a writable primary.
    pub recovered_in: Option<f64>,
}

struct Slot {
    cfg: Config,
    shared: Arc<Shared>,
    engine: Arc<FakePostgres>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The cluster under simulation: the world, etcd, and each node's sidecar.
struct Cluster {
    opts: SimOptions,
    names: Vec<String>,
    world: Arc<World>,
    store: Arc<MemoryStore>,
    slots: Mutex<Vec<Slot>>,
    dcs_cut: Vec<Arc<AtomicBool>>,
    wakes: Vec<Arc<Notify>>,
    offsets: Vec<Arc<AtomicI64>>,
    freeze: Vec<Arc<Freeze>>,
    /// A sidecar whose restart fell in its node's freeze: started at resume.
    sidecar_due: Vec<AtomicBool>,
    /// Node `i`'s sidecar runs with the other profile's timing: the
    /// cluster ran so before an operator changed `ttl` (fault generation 6,
    /// until the rolling restart onto the seed's profile).
    earlier_timing: Vec<AtomicBool>,
    /// The liveness bounds, from the timing (computed once: a config parse).
    bounds: Bounds,
}

fn timing(p: Profile) -> (&'static str, &'static str, &'static str, &'static str) {
    match p {
        Profile::Default => ("1s", "10s", "2s", "2s"),
        Profile::Fast => ("500ms", "3s", "1s", "1s"),
    }
}

fn api_url(name: &str) -> String {
    format!("http://{name}.sim:8008")
}

impl Cluster {
    fn config(&self, i: usize) -> Config {
        let profile = match (self.opts.profile, self.earlier_timing[i].load(Ordering::Relaxed)) {
            (p, false) => p,
            (Profile::Default, true) => Profile::Fast,
            (Profile::Fast, true) => Profile::Default,
        };
        let (lp, ttl, retry, margin) = timing(profile);
        let text = format!(
            r#"cluster = "sim"
node = "{name}"
[etcd]
endpoints = ["http://etcd.sim:2379"]
request_timeout = "1s"
[database]
host = "{host}"
port = {port}
data_dir = "/sim/{name}"
query_timeout = "1s"
[timing]
loop = "{lp}"
ttl = "{ttl}"
retry = "{retry}"
safety_margin = "{margin}"
hold_down = "30s"
[failover]
synchronous = {sync}
restart_budget = "5s"
promote_timeout = "20s"
switchover_timeout = "10s"
[api]
listen = "127.0.0.1:8008"
advertise_url = "{url}"
"#,
            name = self.names[i],
            host = engine::db_host(&self.names[i]),
            port = 5432 + i,
            sync = self.opts.synchronous,
            url = api_url(&self.names[i]),
        );
        Config::parse(std::path::Path::new("sim.toml"), &text).expect("the simulation's config is valid")
    }

    fn bounds(&self) -> Bounds {
        self.bounds
    }

    /// Starts (or restarts) node `i`'s sidecar: a new process with an
    /// empty memory, as after a crash.
    fn start_sidecar(self: &Arc<Self>, i: usize) {
        let cfg = self.config(i);
        let engine = Arc::new(FakePostgres::new(
            Arc::clone(&self.world),
            i,
            cfg.database.query_timeout,
            cfg.failover.promote_timeout,
            cfg.timing.loop_wait,
        ));
        let dcs = Arc::new(MemoryDcs::new(
            Arc::clone(&self.store),
            &self.names[i],
            cfg.timing.ttl,
            cfg.etcd.request_timeout,
            Arc::clone(&self.wakes[i]),
            Arc::clone(&self.dcs_cut[i]),
        ));
        let shared = Arc::new(Shared::default());
        let peers = SimPeers { cluster: Arc::downgrade(self), me: i };
        let ha = Ha::new(
            cfg.clone(),
            Arc::clone(&engine),
            dcs,
            peers,
            Arc::clone(&shared),
            Arc::clone(&self.wakes[i]),
            crate::alerts::Notifier::none(),
        );
        let ha = if self.opts.watchdog {
            let device = world::SimWatchdogDevice { world: Arc::clone(&self.world), node: i };
            let t = &cfg.timing;
            ha.with_node_watchdog(crate::watchdog::NodeWatchdog::with_device(
                crate::config::WatchdogMode::Automatic,
                format!("{}:/dev/watchdog", self.names[i]),
                Box::new(device),
                t.ttl,
                t.safety_margin,
                t.loop_wait,
            ))
        } else {
            ha
        };
        let fut = NODE_OFFSET_MS
            .scope(Arc::clone(&self.offsets[i]), Frozen { inner: Box::pin(ha.run_joined()), freeze: Arc::clone(&self.freeze[i]) });
        let task = tokio::spawn(fut);
        {
            let mut w = self.world.lock();
            w.sidecar_up[i] = true;
            w.sidecar_started[i] = Some(Instant::now());
            w.changed_at = Instant::now();
        }
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let slot = Slot { cfg, shared, engine, task: Some(task) };
        if i < slots.len() {
            if let Some(old) = slots[i].task.take() {
                old.abort();
            }
            slots[i] = slot;
        } else {
            slots.push(slot);
        }
    }

    fn stop_sidecar(&self, i: usize) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = slots[i].task.take() {
            t.abort();
        }
        let record = self.store.get(&format!("members/{}", self.names[i]));
        let mut w = self.world.lock();
        w.sidecar_up[i] = false;
        w.sidecar_unproven[i] = Some(record);
        w.changed_at = Instant::now();
    }

    fn sidecar_up(&self, i: usize) -> bool {
        self.slots.lock().unwrap_or_else(|e| e.into_inner())[i].task.is_some()
    }

    fn note(&self, what: impl AsRef<str>) {
        self.world.lock().note(what);
    }
}

/// Holds a whole sidecar still while its node is frozen (SIGSTOP): its
/// timers run out meanwhile, and it sees that when it is resumed.
struct Freeze {
    frozen: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl Freeze {
    fn is_set(&self) -> bool {
        self.frozen.load(Ordering::Relaxed)
    }

    fn set(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::Relaxed);
        if !frozen {
            if let Some(w) = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take() {
                w.wake();
            }
        }
    }
}

struct Frozen<F> {
    inner: Pin<Box<F>>,
    freeze: Arc<Freeze>,
}

impl<F: Future> Future for Frozen<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        if self.freeze.frozen.load(Ordering::Relaxed) {
            *self.freeze.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            return Poll::Pending;
        }
        self.inner.as_mut().poll(cx)
    }
}

/// The peers' APIs, answered in memory by the production handlers
/// (`api::member_answer`, `api::failsafe_answer`) of the target node's
/// current sidecar, as the network lets the call through.
struct SimPeers {
    cluster: std::sync::Weak<Cluster>,
    me: usize,
}

impl SimPeers {
    /// The target's config, snapshot and engine if the call gets through;
    /// otherwise how it failed: silence after the time a client would wait
    /// (node lost, frozen or cut off), or a refusal at once (no sidecar).
    async fn reach(&self, api_url_: &str) -> Result<(Config, Arc<Shared>, Arc<FakePostgres>), MemberAnswer> {
        let c = self.cluster.upgrade().ok_or(MemberAnswer::Silent)?;
        let t = c.names.iter().position(|n| api_url(n) == api_url_).ok_or(MemberAnswer::Silent)?;
        let (reach, frozen) = {
            let w = c.world.lock();
            (w.link(self.me, t), c.freeze[t].frozen.load(Ordering::Relaxed))
        };
        if !reach || frozen {
            tokio::time::sleep(Duration::from_millis(700)).await;
            return Err(MemberAnswer::Silent);
        }
        let target = {
            let slots = c.slots.lock().unwrap_or_else(|e| e.into_inner());
            let s = &slots[t];
            s.task.as_ref().ok_or(MemberAnswer::NotRunning)?;
            (s.cfg.clone(), Arc::clone(&s.shared), Arc::clone(&s.engine))
        };
        c.world.lock().sidecar_unproven[t] = None;
        Ok(target)
    }
}

impl PeerApi for SimPeers {
    async fn member(&self, api_url: &str) -> MemberAnswer {
        let (cfg, shared, engine) = match self.reach(api_url).await {
            Ok(target) => target,
            Err(failed) => return failed,
        };
        match tokio::time::timeout(Duration::from_millis(700), crate::api::member_answer(&cfg, &shared, engine.as_ref(), true)).await {
            Ok(Some(rec)) => MemberAnswer::Record(Box::new(rec)),
            _ => MemberAnswer::Silent,
        }
    }

    async fn failsafe(&self, api_url: &str, ask: &crate::api::FailsafeAsk) -> Result<(), String> {
        match self.reach(api_url).await {
            Ok((cfg, shared, _)) => crate::api::failsafe_answer(&cfg, &shared, ask),
            Err(_) => Err("no answer".into()),
        }
    }
}

/// Runs one seed to the end and reports what it saw.
pub fn run_seed(seed: u64, opts: &SimOptions) -> SeedReport {
    // A seed whose virtual clock stops (some task never waits, so the paused
    // clock never advances) would hang the run silently: after 5 minutes
    // of real time it is named and the process ends.
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let done = Arc::clone(&done);
        let (profile, sync, extra) = (opts.profile, opts.synchronous, opts.extra_faults);
        std::thread::spawn(move || {
            let deadline = std::time::Instant::now() + Duration::from_secs(300);
            while !done.load(Ordering::Relaxed) {
                if std::time::Instant::now() > deadline {
                    eprintln!(
                        "seed {seed} hung (its virtual clock stopped): VIGIL_SIM_SEED={seed} VIGIL_SIM_PROFILE={} VIGIL_SIM_SYNC={} VIGIL_SIM_EXTRA={extra} cargo test --test sim -- --nocapture",
                        if profile == Profile::Fast { "fast" } else { "default" },
                        u8::from(sync)
                    );
                    std::process::exit(1);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        });
    }
    let report = run_seed_inner(seed, opts);
    done.store(true, Ordering::Relaxed);
    report
}

fn run_seed_inner(seed: u64, opts: &SimOptions) -> SeedReport {
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().expect("a runtime");
    let opts = opts.clone();
    rt.block_on(async move {
        crate::clock::set_virtual(Some(1_800_000_000_000 + (seed % 1_000_000) * 1_000));
        let r = Sim::new(seed, opts).run().await;
        crate::clock::set_virtual(None);
        r
    })
}

struct Sim {
    seed: u64,
    c: Arc<Cluster>,
}

impl Sim {
    fn new(seed: u64, opts: SimOptions) -> Sim {
        let names: Vec<String> = (1..=opts.nodes).map(|i| format!("pg{i}")).collect();
        let n = names.len();
        let world = World::new(&names, opts.synchronous, Rng::new(seed));
        let mut cluster = Cluster {
            opts,
            names,
            world,
            store: MemoryStore::new(),
            slots: Mutex::new(vec![]),
            dcs_cut: (0..n).map(|_| Arc::default()).collect(),
            wakes: (0..n).map(|_| Arc::new(Notify::new())).collect(),
            offsets: (0..n).map(|_| Arc::default()).collect(),
            freeze: (0..n).map(|_| Arc::new(Freeze { frozen: AtomicBool::new(false), waker: Mutex::new(None) })).collect(),
            sidecar_due: (0..n).map(|_| AtomicBool::new(false)).collect(),
            earlier_timing: (0..n).map(|_| AtomicBool::new(false)).collect(),
            bounds: Bounds { primary: Duration::ZERO, streaming: Duration::ZERO, hold_down: Duration::ZERO, ttl: Duration::ZERO },
        };
        let cfg = cluster.config(0);
        let t = &cfg.timing;
        let primary = t.ttl * 2 + t.loop_wait * (t.rise + 6) + cfg.etcd.request_timeout * 4 + Duration::from_secs(5);
        cluster.bounds = Bounds { primary, streaming: t.ttl * 2 + Duration::from_secs(45), hold_down: t.hold_down, ttl: t.ttl };
        Sim { seed, c: Arc::new(cluster) }
    }

    fn schedule(&self) -> Vec<Fault> {
        let mut w = self.c.world.lock();
        let n = self.c.opts.nodes;
        let count = w.rng.range(1, self.c.opts.max_faults as u64) as usize;
        let window = self.c.opts.fault_window.as_millis() as u64;
        let faults = (0..count)
            .map(|_| {
                let kind = KINDS[w.rng.pick(KINDS.len())];
                let node = w.rng.pick(n);
                let other = (node + 1 + w.rng.pick(n - 1)) % n;
                let at = Duration::from_millis(w.rng.range(0, window));
                let lasts = Duration::from_millis(w.rng.range(500, 40_000));
                let param = match kind {
                    FaultKind::Garbage => w.rng.range(0, 6) as i64,
                    FaultKind::ClockJump => w.rng.range(0, 240_000) as i64 - 120_000,
                    FaultKind::DcsSlow => w.rng.range(200, 2_000) as i64,
                    _ => 0,
                };
                Fault { kind, node, other, at, lasts, param }
            })
            .collect::<Vec<_>>();
        drop(w);
        let mut faults = faults;
        let mut extra = Rng::new(self.seed ^ 0x5157_C0DE_5EED);
        if self.c.opts.extra_faults >= 1 && extra.chance(0.3) {
            let node = extra.pick(n);
            let other = (node + 1 + extra.pick(n - 1)) % n;
            let at = Duration::from_millis(extra.range(0, window));
            faults.push(Fault { kind: FaultKind::Switchover, node, other, at, lasts: Duration::from_millis(500), param: 0 });
        }
        if self.c.opts.extra_faults >= 2 && extra.chance(0.3) {
            let at = Duration::from_millis(extra.range(0, window + 20_000));
            faults.push(Fault { kind: FaultKind::EtcdElection, node: 0, other: 0, at, lasts: Duration::from_millis(100), param: 0 });
        }
        if self.c.opts.extra_faults >= 3 && extra.chance(0.3) {
            let (node, at) = (extra.pick(n), Duration::from_millis(extra.range(0, window)));
            faults.push(Fault { kind: FaultKind::DatabaseHung, node, other: node, at, lasts: Duration::from_millis(100), param: 0 });
        }
        if self.c.opts.extra_faults >= 4 && extra.chance(0.3) {
            let (node, at) = (extra.pick(n), Duration::from_millis(extra.range(0, window)));
            let lasts = Duration::from_millis(extra.range(2_000, 30_000));
            faults.push(Fault { kind: FaultKind::DatabaseSlowToConnect, node, other: node, at, lasts, param: 0 });
        }
        if self.c.opts.extra_faults >= 5 && extra.chance(0.3) {
            let at = Duration::from_millis(extra.range(0, window));
            let lasts = Duration::from_millis(extra.range(2_000, 30_000));
            faults.push(Fault { kind: FaultKind::DcsWritesStall, node: 0, other: 0, at, lasts, param: 0 });
        }
        faults
    }

    /// Fault generation 6: in some seeds the cluster first runs with the
    /// other profile's timing (`ttl` 3 s instead of 10 s, or the reverse)
    /// and every sidecar is then restarted, one after the other, onto the
    /// seed's profile, as an operator changing `ttl` would. The leader's
    /// new process adopts a key whose lease was granted with the old TTL
    /// (defect 1a). Drawn from its own stream: earlier seeds keep their
    /// scenario.
    fn ttl_changed(&self) -> Option<Vec<usize>> {
        let mut r = Rng::new(self.seed ^ 0x0071_1C4A_4E6E);
        if self.c.opts.extra_faults < 6 || !r.chance(0.3) {
            return None;
        }
        let mut order: Vec<usize> = (0..self.c.opts.nodes).collect();
        for k in (1..order.len()).rev() {
            order.swap(k, r.pick(k + 1));
        }
        Some(order)
    }

    async fn run(self) -> SeedReport {
        let c = Arc::clone(&self.c);
        let ttl_change = self.ttl_changed();
        let ttl_changed = ttl_change.is_some();
        for i in 0..c.opts.nodes {
            c.earlier_timing[i].store(ttl_change.is_some(), Ordering::Relaxed);
            c.start_sidecar(i);
        }
        let ticker = tokio::spawn(tick(Arc::clone(&c)));
        let t0 = Instant::now();
        let mut up = self.wait_until(Duration::from_secs(60), |c| healthy(c).is_ok()).await;
        if let (true, Some(order)) = (up, ttl_change) {
            for i in order {
                tokio::time::sleep(Duration::from_secs(2)).await;
                c.earlier_timing[i].store(false, Ordering::Relaxed);
                c.stop_sidecar(i);
                c.start_sidecar(i);
                c.note(format!("{}'s sidecar restarted with a new ttl ({:?})", c.names[i], c.bounds.ttl));
            }
            up = self.wait_until(Duration::from_secs(60), |c| healthy(c).is_ok()).await;
        }
        if !up {
            let why = healthy(&c).err().unwrap_or_default();
            let after = if ttl_changed { " (after the rolling restart onto a new ttl)" } else { "" };
            c.world.lock().violation(format!("the cluster did not come up within 60 s{after}: {why}"));
        }
        let faults = if up { self.schedule() } else { vec![] };
        let started = Instant::now();
        // Apply and revert in time order.
        let mut events: Vec<(Duration, bool, usize)> = vec![];
        for (k, f) in faults.iter().enumerate() {
            events.push((f.at, true, k));
            events.push((f.at + f.lasts, false, k));
        }
        events.sort_by_key(|e| (e.0, e.1, e.2));
        for (at, apply, k) in events {
            tokio::time::sleep_until(started + at).await;
            self.fault(k, &faults[k], apply);
        }
        let healed = Instant::now();
        c.note("faults over; every node up and connected");
        let bounds = c.bounds();
        let mut recovered_in = None;
        if up {
            // Measured from the end of the faults, of the last hung action,
            // or of the hold-down after the last promotion: within it a
            // second automatic failover needs a human, by design (the
            // 30-minute run, seed 7895165: under a slow etcd three
            // promotions were each fenced at once, and the last primary's
            // timeline was behind a held-down peer's).
            let from = {
                let w = c.world.lock();
                healed.max(w.hang_until).max(w.promoted_at.map_or(healed, |t| t + bounds.hold_down))
            };
            let ok = self.wait_until_instant(from + bounds.primary, |c| writable_leader(c).is_some()).await;
            if ok {
                recovered_in = Some(healed.elapsed().as_secs_f64());
                let hang_end = c.world.lock().hang_until;
                let ok = self.wait_until_instant(Instant::now().max(hang_end) + bounds.streaming, |c| healthy(c).is_ok()).await;
                if !ok {
                    let why = healthy(&c).err().unwrap_or_default();
                    c.world.lock().violation(format!(
                        "not every node streams {:?} after a primary was back (bound: ttl*2 + 45s): {why}",
                        bounds.streaming
                    ));
                }
            } else {
                c.world.lock().violation(format!(
                    "no writable primary holding the leader key {:?} after the faults stopped (bound: 2*ttl + (rise+6)*loop + 4*request_timeout + 5s = {:?}, from the end of the faults, of a hung action or of the hold-down after the last promotion)",
                    healed.elapsed(),
                    bounds.primary
                ));
            }
            let mut w = c.world.lock();
            for k in 0..c.opts.nodes {
                let (r, b) = (w.dbs[k].rewinds, w.dbs[k].base_backups);
                if b > 4 || r + b > 12 {
                    let name = w.dbs[k].name.clone();
                    w.violation(format!("{name} was rebuilt {r} times by pg_rewind and {b} times by base backup: unbounded retries"));
                }
            }
        }
        ticker.abort();
        for i in 0..c.opts.nodes {
            c.stop_sidecar(i);
        }
        let w = c.world.lock();
        SeedReport {
            seed: self.seed,
            faults: faults.len(),
            simulated: t0.elapsed(),
            violations: w.violations.clone(),
            trace: w.trace.clone(),
            acknowledged: w.acks.len(),
            lost_async: w.lost_async,
            watchdog_windows: w.resume_window + w.orphan_window + w.watchdog_acks,
            watchdog_resets: w.watchdog_resets,
            recovered_in,
        }
    }

    async fn wait_until(&self, limit: Duration, pred: impl Fn(&Cluster) -> bool) -> bool {
        self.wait_until_instant(Instant::now() + limit, pred).await
    }

    async fn wait_until_instant(&self, deadline: Instant, pred: impl Fn(&Cluster) -> bool) -> bool {
        loop {
            if pred(&self.c) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn fault(&self, k: usize, f: &Fault, apply: bool) {
        let c = &self.c;
        if f.kind != FaultKind::Garbage {
            let mut w = c.world.lock();
            if apply {
                let what = match f.kind {
                    FaultKind::DcsDown | FaultKind::DcsSlow | FaultKind::DcsWritesStall | FaultKind::ActionsHang => world::Impairs::Cluster,
                    FaultKind::OneWayCut => world::Impairs::Nodes(f.node, f.other),
                    FaultKind::Switchover | FaultKind::EtcdElection => world::Impairs::Nothing,
                    _ => world::Impairs::Nodes(f.node, f.node),
                };
                w.in_force.insert(k, what);
            } else {
                w.in_force.remove(&k);
            }
            w.changed_at = Instant::now();
        }
        let (name, other) = (c.names[f.node].clone(), c.names[f.other].clone());
        let verb = if apply { "FAULT" } else { "heal " };
        c.note(format!(
            "{verb} {:?} {name}{}",
            f.kind,
            if matches!(f.kind, FaultKind::OneWayCut | FaultKind::CutFromPeers) { format!(" (other {other})") } else { String::new() }
        ));
        match f.kind {
            FaultKind::DatabaseKilled => {
                if apply {
                    c.world.lock().stop_process(f.node, "SIGKILL");
                }
            }
            FaultKind::NodeLost => {
                if apply {
                    c.stop_sidecar(f.node);
                    let mut w = c.world.lock();
                    w.stop_process(f.node, "node lost");
                    w.set_host_down(f.node, true);
                    // Power gone: the watchdog device with it.
                    w.watchdogs[f.node] = world::SimWatchdog::default();
                    c.dcs_cut[f.node].store(true, Ordering::Relaxed);
                } else {
                    {
                        let mut w = c.world.lock();
                        w.set_host_down(f.node, false);
                    }
                    c.dcs_cut[f.node].store(false, Ordering::Relaxed);
                    if !c.sidecar_up(f.node) {
                        c.start_sidecar(f.node);
                    }
                }
            }
            FaultKind::NodeFrozen => {
                if apply {
                    c.freeze[f.node].set(true);
                    c.world.lock().dbs[f.node].frozen = true;
                } else {
                    // The sidecar resumes first; the server a moment later
                    // (the reverse order is the node watchdog's job).
                    c.freeze[f.node].set(false);
                    // A sidecar that crashed while the node was frozen is
                    // restarted now: nothing runs on a frozen node, its
                    // service manager included (seed 7234544: a sidecar
                    // "started" during the freeze had used up its first-look
                    // grace before it could run at all).
                    if !c.sidecar_up(f.node) && c.sidecar_due[f.node].swap(false, Ordering::Relaxed) {
                        c.start_sidecar(f.node);
                    }
                    let (world, i) = (Arc::clone(&c.world), f.node);
                    tokio::spawn(async move {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        let mut w = world.lock();
                        // A hung server stays hung: only a kill ends it.
                        w.dbs[i].frozen = w.dbs[i].hung;
                        w.dbs[i].resumed_at = Some(Instant::now());
                        w.check_writers();
                    });
                }
            }
            FaultKind::SidecarCrash => {
                if apply {
                    c.stop_sidecar(f.node);
                } else if c.freeze[f.node].is_set() {
                    c.sidecar_due[f.node].store(true, Ordering::Relaxed);
                } else if !c.sidecar_up(f.node) && !c.world.lock().host_down[f.node] {
                    c.start_sidecar(f.node);
                }
            }
            FaultKind::SidecarCrashInAction => {
                c.world.lock().crash_in_action[f.node] = apply;
            }
            FaultKind::DcsDown => c.store.faults.down.store(apply, Ordering::Relaxed),
            FaultKind::DcsSlow => c.store.faults.latency_ms.store(if apply { f.param as u64 } else { 0 }, Ordering::Relaxed),
            FaultKind::CutFromDcs => c.dcs_cut[f.node].store(apply, Ordering::Relaxed),
            FaultKind::CutFromPeers | FaultKind::OneWayCut => {
                let mut w = c.world.lock();
                let others: Vec<usize> =
                    if f.kind == FaultKind::OneWayCut { vec![f.other] } else { (0..c.opts.nodes).filter(|o| *o != f.node).collect() };
                for o in others {
                    let pairs = if f.kind == FaultKind::OneWayCut { vec![(f.node, o)] } else { vec![(f.node, o), (o, f.node)] };
                    for p in pairs {
                        if apply {
                            w.cut.insert(p);
                        } else if w.cut.remove(&p) {
                            w.healed_at.insert(p, Instant::now());
                        }
                    }
                }
            }
            FaultKind::Garbage => {
                let keys = ["pause", "switchover", "sync", "incident", "history/99999999999999999999"];
                let key = match f.param {
                    p if (p as usize) < keys.len() => keys[p as usize].to_string(),
                    _ => format!("members/{other}"),
                };
                if apply {
                    let garbage: &[u8] = if f.node.is_multiple_of(2) { b"{not json" } else { br#"{"node": 7, "to": ["x"]}"# };
                    c.store.put_raw(&key, garbage);
                } else if c.store.get(&key).is_some_and(|v| {
                    serde_json::from_slice::<serde_json::Value>(&v).map_or(true, |j| j.get("node") == Some(&serde_json::json!(7)))
                }) {
                    c.store.delete(&key);
                }
            }
            FaultKind::ClockJump => c.offsets[f.node].store(if apply { f.param } else { 0 }, Ordering::Relaxed),
            FaultKind::ActionsHang => {
                let mut w = c.world.lock();
                w.hangs = apply;
            }
            FaultKind::DatabaseSlowToConnect => c.world.lock().dbs[f.node].slow_connects = apply,
            FaultKind::DcsWritesStall => c.store.stall_writes(apply),
            FaultKind::DatabaseHung => {
                let mut w = c.world.lock();
                if apply && w.dbs[f.node].running() {
                    w.dbs[f.node].frozen = true;
                    w.dbs[f.node].hung = true;
                }
            }
            FaultKind::EtcdElection => {
                if apply {
                    c.store.elect_new_leader();
                }
            }
            FaultKind::Switchover => {
                if apply {
                    let rec = crate::dcs::RequestRecord {
                        kind: crate::core::RequestKind::Switchover,
                        from: c.store.leader(),
                        to: other.clone(),
                        allow_data_loss: false,
                        requested_ms: crate::clock::now_ms(),
                        steps: vec![],
                        refused: None,
                    };
                    c.store.put_raw("switchover", &serde_json::to_vec(&rec).expect("a request"));
                }
            }
        }
    }
}

/// The world's clockwork: replication, the client's writes, lease expiry,
/// the safety check, leader changes for the trace, crash requests.
/// A node's watchdog device went unfed for its timeout: the machine
/// resets (database and sidecar gone at once, the device stopped) and
/// boots again 5 s later (its sidecar starts; the database with it).
fn watchdog_reset(c: &Arc<Cluster>, i: usize) {
    c.note(format!("{} reset by its watchdog", c.names[i]));
    c.stop_sidecar(i);
    {
        let mut w = c.world.lock();
        w.stop_process(i, "watchdog reset");
        w.dbs[i].frozen = false;
        w.dbs[i].hung = false;
        w.set_host_down(i, true);
        w.watchdogs[i] = world::SimWatchdog::default();
        w.watchdog_resets += 1;
        w.changed_at = Instant::now();
    }
    c.freeze[i].set(false);
    c.dcs_cut[i].store(true, Ordering::Relaxed);
    let c2 = Arc::clone(c);
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        {
            let mut w = c2.world.lock();
            w.set_host_down(i, false);
            w.changed_at = Instant::now();
        }
        c2.dcs_cut[i].store(false, Ordering::Relaxed);
        if !c2.sidecar_up(i) {
            c2.start_sidecar(i);
        }
    });
}

async fn tick(c: Arc<Cluster>) {
    let mut last_leader = None;
    let mut last_holder: Option<String> = None;
    let mut states = vec![String::new(); c.opts.nodes];
    let mut reported = Reported::default();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        c.store.tick();
        let crash: Vec<usize> = {
            let mut w = c.world.lock();
            // Who holds the key is known before this tick's writes are
            // acknowledged: the lease may have just expired (seed 7358950:
            // an orphan primary's write acknowledged in the tick its key
            // expired counted as acknowledged under the key).
            let leader = c.store.leader();
            w.key_holder = leader.clone();
            w.replicate();
            w.write();
            w.check_writers();
            if leader != last_leader {
                w.note(format!("leader key: {}", leader.clone().unwrap_or_else(|| "(vacant)".into())));
                // Liveness while faults run: a leader keeps its key unless
                // something happened to it (a fault in force, or one that
                // ended less than `quiet` ago). Bad values in etcd do not
                // count: they must cost nothing.
                let now = Instant::now();
                let quiet = c.bounds().primary;
                // (A hung action still running is a fault in force.)
                let quiet_for = now.saturating_duration_since(w.changed_at.max(w.hang_until));
                if let Some(old) = &last_leader {
                    if w.in_force.is_empty() && quiet_for > quiet {
                        w.violation(format!(
                            "{old} lost the leader key with no fault in force for {quiet_for:?} (bad values in etcd aside)"
                        ));
                    }
                }
                // A new node winning the key starts the hold-down (vigil
                // records the failover then, before it promotes).
                if leader.is_some() && leader != last_holder {
                    w.promoted_at = Some(now);
                    last_holder = leader.clone();
                }
                last_leader = leader;
            }
            (0..c.opts.nodes).filter(|i| std::mem::take(&mut w.crash_requests[*i])).collect()
        };
        let now = Instant::now();
        let expired: Vec<usize> = {
            let w = c.world.lock();
            (0..c.opts.nodes).filter(|i| w.watchdogs[*i].expired(now) && !w.host_down[*i]).collect()
        };
        for i in expired {
            watchdog_reset(&c, i);
        }
        for i in crash {
            c.note(format!("{} sidecar crashed", c.names[i]));
            c.stop_sidecar(i);
            let c2 = Arc::clone(&c);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !c2.sidecar_up(i) && !c2.world.lock().host_down[i] {
                    c2.start_sidecar(i);
                }
            });
        }
        serving_while_one_node_is_down(&c, &mut reported);
        // Every ineligible member says why; state changes go to the trace.
        let slots = c.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut silent = vec![];
        let mut changes = vec![];
        for (i, s) in slots.iter().enumerate().filter(|(_, s)| s.task.is_some()) {
            if let Some(m) = &s.shared.get().me {
                if !m.eligible && m.ineligible_reason.as_deref().is_none_or(str::is_empty) {
                    silent.push(m.node.clone());
                }
                let line = format!("{}: {}{}", m.node, m.state, m.refusal.as_ref().map(|r| format!(" [refusal: {r}]")).unwrap_or_default());
                // Ages change every loop; a change of words is news.
                let words: String = line.chars().filter(|ch| !ch.is_ascii_digit()).collect();
                if states[i] != words {
                    states[i] = words;
                    changes.push(line);
                }
            }
        }
        drop(slots);
        let mut w = c.world.lock();
        for line in changes {
            w.note(line);
        }
        for n in silent {
            w.violation(format!("{n} is not eligible and does not say why"));
        }
    }
}

/// Which liveness-while-faults checks already failed in this seed (each
/// is reported once, with the first moment it failed).
#[derive(Default)]
struct Reported {
    no_primary: bool,
    not_streaming: bool,
    sync_names_departed: bool,
    /// Whether the node down holds more acknowledged writes than a stale
    /// replica may lack, and for which state of the logs.
    stale_primary_lost: Option<(usize, bool)>,
}

/// Liveness while faults run: a cluster of three with one node down (lost,
/// frozen, its database killed, its sidecar crashed, cut off, its clock
/// jumped) and etcd healthy must keep serving. Once the faults in force
/// have stayed the same for `bounds().primary` (measured from that change,
/// from the end of a hung action, or from the end of the hold-down after
/// the last promotion, within which a second failover needs a human, by
/// design), one writable primary holds the key;
/// `bounds().streaming` later every node not down streams from it; and in
/// synchronous mode a lost node is no longer one the primary waits for
/// (a synchronous set that never shrinks would refuse the next failover).
fn serving_while_one_node_is_down(c: &Cluster, reported: &mut Reported) {
    let b = c.bounds();
    let (down, quiet_for) = {
        let w = c.world.lock();
        let Some(down) = w.impaired() else { return };
        let held_down_until = w.promoted_at.map_or(w.start, |t| t + b.hold_down);
        (down, Instant::now().saturating_duration_since(w.changed_at.max(w.hang_until).max(held_down_until)))
    };
    if down.len() > 1 || quiet_for <= b.primary {
        return;
    }
    // A primary whose sidecar is dead takes writes out of vigil's reach:
    // no replica may promote beside it. Only a node watchdog ends that.
    // The same holds while such a server does not answer (hung, or slow to
    // take connections), even a standby: nobody can tell whether it is a
    // primary whose open sessions still write (a fence made while etcd was
    // down is in no record), so the replicas refuse by design, with the
    // reason, until it answers or is gone (the 15-minute run, seeds
    // 7114297, 7139209, 7177397). A frozen node whose sidecar died and was
    // not shown alive to its peers since (none reached it, its member key
    // not rewritten) is such a server too, even if the sidecar was
    // restarted unseen: the replicas that found it not running refuse
    // until it answers or is gone (seeds 8687433, 9122627). Whether they
    // saw the sidecar dead first is not checked here, so a liveness miss
    // while such a node is frozen goes unreported (lenient, never unsafe).
    if !c.opts.watchdog {
        let w = c.world.lock();
        let now = Instant::now();
        let unproven = |i: usize| {
            w.sidecar_unproven[i].as_ref().is_some_and(|at_stop| {
                let record = c.store.get(&format!("members/{}", c.names[i]));
                record.is_none() || record == *at_stop
            })
        };
        let unsupervised = |i: usize| {
            let d = &w.dbs[i];
            (!w.sidecar_up[i] && (d.accepts_writes(now) || (d.running() && (d.hung || d.slow_connects || d.frozen))))
                || (d.running() && d.frozen && unproven(i))
        };
        if (0..c.opts.nodes).any(unsupervised) {
            return;
        }
    }
    let names = |set: &std::collections::BTreeSet<usize>| set.iter().map(|i| c.names[*i].clone()).collect::<Vec<_>>().join(", ");
    let Some(p) = writable_leader(c) else {
        // Asynchronous mode: when the node down holds more acknowledged
        // writes than the others lack after `2 * ttl` of writing (one write
        // each 50 ms), the others stopped streaming long before it went
        // down, and refusing to promote them is the stale-replica rule at
        // work, not a lost liveness.
        if reported.no_primary {
            return;
        }
        // Synchronous mode refuses by design while the set is unknown (the
        // `sync` key absent or unreadable after a bad value) or one of its
        // members is out of reach: either may hold acknowledged commits
        // nobody else has.
        if c.opts.synchronous {
            let set = c.store.get("sync").and_then(|v| serde_json::from_slice::<crate::dcs::SyncRecord>(&v).ok());
            match set {
                None => return,
                Some(s) if down.iter().any(|g| s.standbys.contains(&c.names[*g])) => return,
                // An empty set: the leader that recorded it acknowledged
                // commits alone, so only it may take over (the 30-minute
                // run on 8794cd0, seed 8783919: the lone leader cut off
                // from etcd, and refusing the others was the rule at work).
                Some(s) if s.standbys.is_empty() && down.iter().any(|g| c.names[*g] == s.leader) => return,
                Some(_) => {}
            }
        }
        let stale_limit = (b.ttl * 2).as_millis() as usize / 50;
        let stale = {
            // Counted again only when a log or the acknowledged writes changed.
            let w = c.world.lock();
            let key = w.acks.len() + w.dbs.iter().map(|d| d.log.len()).sum::<usize>();
            match reported.stale_primary_lost {
                Some((k, v)) if k == key => v,
                _ => {
                    let v = down.iter().any(|g| w.acked_only_on(*g) > stale_limit);
                    reported.stale_primary_lost = Some((key, v));
                    v
                }
            }
        };
        if stale {
            return;
        }
        if !std::mem::replace(&mut reported.no_primary, true) {
            let key = c.store.leader();
            c.world.lock().violation(format!(
                "no writable primary holding the leader key (key: {key:?}) {quiet_for:?} into a fault on one node only ({}), etcd up (bound: {:?})",
                names(&down),
                b.primary
            ));
        }
        return;
    };
    let w = c.world.lock();
    if w.synchronous {
        let lost: Vec<usize> = down.iter().copied().filter(|g| w.host_down[*g] && w.dbs[p].sync_names.contains(&w.dbs[*g].name)).collect();
        if !lost.is_empty() && !std::mem::replace(&mut reported.sync_names_departed, true) {
            let (who, primary) = (names(&lost.into_iter().collect()), w.dbs[p].name.clone());
            drop(w);
            c.world.lock().violation(format!(
                "synchronous mode: {primary} still waits for {who}, lost {quiet_for:?} ago or more (bound: {:?})",
                b.primary
            ));
            return;
        }
    }
    if quiet_for <= b.primary + b.streaming {
        return;
    }
    let stray = (0..c.opts.nodes).find(|i| *i != p && !down.contains(i) && !(w.dbs[*i].streaming && w.dbs[*i].conninfo == Some(p)));
    if let Some(i) = stray {
        if !std::mem::replace(&mut reported.not_streaming, true) {
            let (d, primary) = (&w.dbs[i], w.dbs[p].name.clone());
            let msg = format!(
                "{} does not stream from {primary} {quiet_for:?} into a fault on {} only (bound: {:?}): {:?}, standby {}, upstream {:?}",
                d.name,
                if down.is_empty() { "no node".to_string() } else { names(&down) },
                b.primary + b.streaming,
                d.proc,
                d.standby,
                d.conninfo
            );
            drop(w);
            c.world.lock().violation(msg);
        }
    }
}

/// The node that accepts writes and whose sidecar holds the leader key.
fn writable_leader(c: &Cluster) -> Option<usize> {
    let leader = c.store.leader()?;
    let w = c.world.lock();
    let now = Instant::now();
    let writers: Vec<usize> = (0..c.opts.nodes).filter(|i| w.dbs[*i].accepts_writes(now)).collect();
    match writers[..] {
        [i] if w.dbs[i].name == leader => Some(i),
        _ => None,
    }
}

/// One writable primary holding the key, every other node streaming from it.
fn healthy(c: &Cluster) -> Result<(), String> {
    let Some(p) = writable_leader(c) else {
        return Err(format!("no single writable primary holding the key (key: {:?})", c.store.leader()));
    };
    let w = c.world.lock();
    for (i, d) in w.dbs.iter().enumerate() {
        if i != p && !(d.streaming && d.conninfo == Some(p)) {
            return Err(format!(
                "{} is not streaming from {} ({:?}, standby {}, upstream {:?})",
                d.name, w.dbs[p].name, d.proc, d.standby, d.conninfo
            ));
        }
    }
    Ok(())
}
