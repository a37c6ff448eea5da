//! A fake PostgreSQL behind the production [`Engine`] trait, acting on the
//! simulated [`World`]: the same observations the real engine makes (the
//! stale-replica rule, failed checks, "starting"), and actions that take
//! simulated time, can hang, fail when the network says so, and can have
//! their sidecar crash part-way.

use super::world::{Proc, World};
use crate::clock::Instant;
use crate::core::{DbHealth, DbRole, PeerDb};
use crate::engine::{Engine, FollowOutcome, Observation, Upstream};
use crate::position::Lsn;
use anyhow::{bail, Result};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the real engine keeps in memory between observations.
#[derive(Default)]
struct Mem {
    pid: Option<u32>,
    streamed_since_start: bool,
    last_streamed: Option<Instant>,
}

pub struct FakePostgres {
    world: Arc<World>,
    me: usize,
    query_timeout: Duration,
    promote_timeout: Duration,
    loop_wait: Duration,
    mem: Mutex<Mem>,
}

/// The address a node's database is reached at.
pub fn db_host(name: &str) -> String {
    format!("{name}.sim")
}

impl FakePostgres {
    pub fn new(world: Arc<World>, me: usize, query_timeout: Duration, promote_timeout: Duration, loop_wait: Duration) -> Self {
        FakePostgres { world, me, query_timeout, promote_timeout, loop_wait, mem: Mutex::new(Mem::default()) }
    }

    fn mem(&self) -> std::sync::MutexGuard<'_, Mem> {
        self.mem.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A long action begins: if this node was armed to crash during one,
    /// its sidecar is crashed at a random moment within `span`.
    fn maybe_crash_during(&self, span: Duration) {
        let mut w = self.world.lock();
        if !std::mem::take(&mut w.crash_in_action[self.me]) {
            return;
        }
        let at = Duration::from_millis(w.rng.range(0, span.as_millis() as u64));
        let name = w.dbs[self.me].name.clone();
        w.note(format!("{name}: sidecar will crash {:?} into its action", at));
        drop(w);
        let (world, me) = (Arc::clone(&self.world), self.me);
        tokio::spawn(async move {
            tokio::time::sleep(at).await;
            world.lock().crash_requests[me] = true;
            world.crash_wake.notify_one();
        });
    }

    /// Stops the server. A frozen one does not answer `pg_ctl stop`: the
    /// stop waits until it is resumed or the shutdown times out and the
    /// escalation kills it (8 s fast, 5 s immediate, as `stop_server`).
    async fn stop(&self, fast: bool) {
        if !self.world.lock().dbs[self.me].running() {
            return;
        }
        if !fast {
            // A fence kills the server's processes outright (SIGKILL works
            // on a frozen or hung server too).
            self.world.lock().stop_process(self.me, "killed (fence)");
            return;
        }
        let limit = Instant::now() + Duration::from_millis(if fast { 8_000 } else { 5_000 });
        while self.world.lock().dbs[self.me].frozen && Instant::now() < limit {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let frozen = self.world.lock().dbs[self.me].frozen;
        if !frozen {
            // A hung shutdown ends in SIGKILL: `stop_server` waits at most
            // 8 s (fast) + 5 s (immediate) + 5 s for the processes to go.
            let cap = Duration::from_secs(if fast { 18 } else { 10 });
            let wait = self.world.lock().action_time(20, if fast { 400 } else { 100 }).min(cap);
            tokio::time::sleep(wait).await;
        }
        let mut w = self.world.lock();
        if fast && !w.dbs[self.me].frozen {
            // A clean shutdown sends all WAL to the connected standbys.
            w.replicate();
        }
        w.stop_process(self.me, if frozen { "killed after its shutdown timed out" } else { "shut down" });
    }

    async fn start_now(&self) {
        let mut w = self.world.lock();
        let ready = w.action_time(100, 1500);
        w.start_process(self.me, ready);
    }

    /// The node that listens on `host:port`, if any.
    fn node_at(&self, host: &str, port: u16) -> Option<usize> {
        let w = self.world.lock();
        w.dbs.iter().position(|d| d.port == port && db_host(&d.name) == host)
    }

    /// Checks the destructive-step invariant before a rewind or a swap.
    fn destructive(&self, step: &str) -> Result<()> {
        let mut w = self.world.lock();
        if w.dbs[self.me].running() {
            let name = w.dbs[self.me].name.clone();
            w.violation(format!("{step} on {name} while its server runs"));
            bail!("server running");
        }
        Ok(())
    }

    /// Copies what it needs from `up`, taking simulated time; fails when
    /// `up` cannot be reached.
    async fn rebuild(&self, up: usize, base_backup: bool) -> Result<String> {
        let t = {
            let mut w = self.world.lock();
            if base_backup {
                w.action_time(1_000, 10_000)
            } else {
                w.action_time(300, 3_000)
            }
        };
        self.maybe_crash_during(t);
        tokio::time::sleep(t).await;
        let what = if base_backup { "the base-backup swap" } else { "pg_rewind" };
        self.destructive(what)?;
        let mut w = self.world.lock();
        let now = Instant::now();
        if !(w.link(self.me, up) && w.dbs[up].ready(now) && !w.dbs[up].frozen) {
            bail!("{what}: could not connect to the source server");
        }
        let (log, tl, hist) = (w.dbs[up].log.clone(), w.dbs[up].timeline, w.dbs[up].history.clone());
        let heartbeat = w.dbs[up].heartbeat;
        let me = &mut w.dbs[self.me];
        if base_backup {
            me.log = log;
            me.heartbeat = heartbeat;
            me.base_backups += 1;
        } else {
            let common = me.log.iter().zip(&log).take_while(|(a, b)| a == b).count();
            me.log.truncate(common);
            me.heartbeat = None;
            me.rewinds += 1;
        }
        me.timeline = tl;
        me.history = hist;
        let name = me.name.clone();
        let src = w.dbs[up].name.clone();
        w.note(format!("{name}: {what} from {src}"));
        Ok(if base_backup { "took a fresh base backup".into() } else { "rewound with pg_rewind".into() })
    }

    fn up_index(&self, up: &Upstream) -> Result<usize> {
        match self.node_at(&up.host, up.port) {
            Some(i) => Ok(i),
            None => bail!("no database at {}:{}", up.host, up.port),
        }
    }

    fn ready_or_fail(&self) -> Result<()> {
        let w = self.world.lock();
        let d = &w.dbs[self.me];
        if !d.ready(Instant::now()) || d.frozen {
            bail!("database not available");
        }
        Ok(())
    }
}

impl Engine for FakePostgres {
    async fn observe(&self) -> Observation {
        let mut obs = Observation::down();
        let (proc, frozen) = {
            let w = self.world.lock();
            (w.dbs[self.me].proc, w.dbs[self.me].frozen)
        };
        let pid = match proc {
            Proc::Running { pid, .. } => Some(pid),
            Proc::Stopped => None,
        };
        {
            let mut m = self.mem();
            if m.pid != pid {
                m.pid = pid;
                m.streamed_since_start = false;
            }
            obs.local.last_streamed_ago = m.last_streamed.map(|t| t.elapsed());
            if pid.is_none() {
                return obs;
            }
        }
        if frozen {
            tokio::time::sleep(self.query_timeout).await;
            obs.local.health = DbHealth::Unresponsive;
            obs.error = Some("query timed out".into());
            return obs;
        }
        let w = self.world.lock();
        let now = Instant::now();
        let d = &w.dbs[self.me];
        if !d.ready(now) {
            obs.local.health = DbHealth::Starting;
            obs.local.starting_writable = !d.standby;
            return obs;
        }
        let mut m = self.mem();
        obs.local.health = DbHealth::Running;
        let pos = d.position();
        obs.receive_lsn = Some(pos.lsn);
        obs.replay_lsn = Some(pos.lsn);
        obs.local.position = Some(pos);
        if d.standby {
            obs.local.role = Some(DbRole::Replica);
            // Only a row another primary wrote says how old this data is.
            obs.local.data_age =
                d.heartbeat.filter(|(_, by)| *by != self.me).map(|(t, _)| Duration::from_millis(crate::clock::now_ms().saturating_sub(t)));
            if d.streaming {
                m.streamed_since_start = true;
                m.last_streamed = Some(now);
                obs.local.last_streamed_ago = Some(Duration::ZERO);
            }
            obs.local.streaming = d.streaming;
            obs.local.promote_pending = d.promote_requested;
            obs.upstream = d.conninfo.map(|u| format!("{}:{}", db_host(&w.dbs[u].name), w.dbs[u].port));
        } else {
            obs.local.role = Some(DbRole::Primary);
            let replicas: Vec<&super::world::Db> = w.dbs.iter().filter(|r| r.conninfo == Some(self.me) && r.streaming).collect();
            obs.local.replica_caught_up = replicas.iter().any(|r| r.log.len() == d.log.len());
            obs.standbys = replicas.iter().map(|r| (r.name.clone(), Lsn(r.log.len() as u64))).collect();
            obs.timeline_history = d.history.clone();
        }
        obs
    }

    fn server_pid(&self) -> Option<i32> {
        match self.world.lock().dbs[self.me].proc {
            Proc::Running { pid, .. } => Some(pid as i32),
            Proc::Stopped => None,
        }
    }

    async fn wait_server_exit(&self) -> bool {
        let (pid, exit) = {
            let w = self.world.lock();
            (w.dbs[self.me].proc, Arc::clone(&w.dbs[self.me].exit))
        };
        if pid == Proc::Stopped {
            return false;
        }
        loop {
            let notified = exit.notified();
            if self.world.lock().dbs[self.me].proc != pid {
                return true;
            }
            notified.await;
        }
    }

    async fn write_heartbeat(&self, _node: &str, _term: i64) -> Result<()> {
        let mut w = self.world.lock();
        let now = Instant::now();
        if !w.dbs[self.me].accepts_writes(now) {
            bail!("heartbeat: database does not accept writes");
        }
        w.dbs[self.me].heartbeat = Some((crate::clock::now_ms(), self.me));
        Ok(())
    }

    /// `pg_promote` is a request: the server finishes on its own time
    /// (`t`), and the engine waits for it at most `promote_timeout`.
    async fn promote(&self) -> Result<()> {
        self.ready_or_fail()?;
        let (t, pid) = {
            let mut w = self.world.lock();
            w.dbs[self.me].promote_requested = true;
            let msg = format!("{}: promotion requested", w.dbs[self.me].name);
            w.note(msg);
            (w.action_time(50, 300), w.dbs[self.me].proc)
        };
        self.maybe_crash_during(t);
        let (world, me) = (Arc::clone(&self.world), self.me);
        tokio::spawn(async move {
            tokio::time::sleep(t).await;
            let mut w = world.lock();
            let d = &w.dbs[me];
            if d.proc == pid && d.standby && d.promote_requested && !d.frozen {
                w.promote(me);
            }
        });
        let waited = t.min(self.promote_timeout);
        tokio::time::sleep(waited + Duration::from_millis(1)).await;
        let w = self.world.lock();
        let d = &w.dbs[self.me];
        if d.standby || !d.ready(Instant::now()) {
            bail!("promotion did not finish within {:?}", self.promote_timeout);
        }
        Ok(())
    }

    async fn fence(&self) -> Result<()> {
        self.maybe_crash_during(Duration::from_millis(500));
        self.stop(false).await;
        // The killed server's processes exit and `pg_ctl start` launches the
        // new one: not instantaneous, and another actor driving the same
        // database could act in between (defect 5 of the trust issue).
        tokio::time::sleep(Duration::from_millis(100)).await;
        {
            let mut w = self.world.lock();
            w.dbs[self.me].standby = true;
            w.dbs[self.me].conninfo = None;
        }
        self.start_now().await;
        Ok(())
    }

    async fn restart_in_place(&self) -> Result<()> {
        self.kill_server().await?;
        self.start_now().await;
        Ok(())
    }

    async fn follow(&self, up: &Upstream, obs: &Observation) -> Result<FollowOutcome> {
        let ui = self.up_index(up)?;
        let want = format!("{}:{}", up.host, up.port);
        let pointed = obs.upstream.as_deref() == Some(want.as_str());
        if let (false, Some(leader_tli), Some(mine)) = (pointed, up.timeline, obs.local.position) {
            if crate::position::diverged(mine, leader_tli, &up.history) {
                return Ok(FollowOutcome::Diverged);
            }
        }
        self.ready_or_fail()?;
        let mut w = self.world.lock();
        if w.dbs[self.me].conninfo == Some(ui) {
            return Ok(FollowOutcome::Unchanged);
        }
        w.dbs[self.me].conninfo = Some(ui);
        let (a, b) = (w.dbs[self.me].name.clone(), w.dbs[ui].name.clone());
        w.note(format!("{a} re-pointed to {b}"));
        Ok(FollowOutcome::Repointed)
    }

    async fn rejoin(&self, up: &Upstream, attempt: u32) -> Result<String> {
        let ui = self.up_index(up)?;
        {
            // A replica that answers is not stopped to be rebuilt from a
            // leader whose node is gone (its key can outlive it): that
            // rebuild cannot succeed and leaves the replica stopped when
            // the failover needs it (defect 1b of the trust issue). The
            // leader's member record says it is alive for up to three loops
            // after its node went down (and a loop to act on it).
            let mut w = self.world.lock();
            let gone_for = w.host_down_since[ui].map(|t| t.elapsed());
            // (A former primary on an older timeline must be rewound anyway;
            // trying early costs nothing it could have served.)
            let same_timeline = w.dbs[self.me].timeline == w.dbs[ui].timeline;
            if gone_for.is_some_and(|d| d > self.loop_wait * 4) && same_timeline && w.dbs[self.me].running() && !w.dbs[self.me].frozen {
                let (me, them) = (w.dbs[self.me].name.clone(), w.dbs[ui].name.clone());
                w.violation(format!("{me}'s running server stopped to rejoin {them}, whose node has been down for {gone_for:?}"));
            }
        }
        self.maybe_crash_during(Duration::from_secs(2));
        self.stop(true).await;
        let what = if attempt >= 3 {
            self.rebuild(ui, true).await?
        } else {
            let (was_primary, tl) = {
                let w = self.world.lock();
                (!w.dbs[self.me].standby, w.dbs[self.me].timeline)
            };
            let needs_rewind = was_primary || up.timeline.is_some_and(|t| t != tl) || attempt >= 2;
            if needs_rewind {
                match self.rebuild(ui, false).await {
                    Ok(w) => w,
                    Err(_) => self.rebuild(ui, true).await?,
                }
            } else {
                "restarted as a replica".into()
            }
        };
        {
            let mut w = self.world.lock();
            w.dbs[self.me].standby = true;
            w.dbs[self.me].conninfo = Some(ui);
        }
        self.start_now().await;
        Ok(what)
    }

    async fn stop_for_switchover(&self) -> Result<Lsn> {
        self.ready_or_fail()?;
        self.maybe_crash_during(Duration::from_millis(500));
        self.stop(true).await;
        let mut w = self.world.lock();
        w.dbs[self.me].standby = true;
        w.dbs[self.me].conninfo = None;
        Ok(Lsn(w.dbs[self.me].log.len() as u64))
    }

    async fn resume_as_primary(&self) -> Result<()> {
        self.world.lock().dbs[self.me].standby = false;
        self.start_now().await;
        Ok(())
    }

    async fn start(&self) -> Result<()> {
        self.start_now().await;
        Ok(())
    }

    async fn kill_server(&self) -> Result<()> {
        self.world.lock().stop_process(self.me, "killed");
        Ok(())
    }

    fn mark_replica(&self) -> Result<()> {
        let mut w = self.world.lock();
        if w.dbs[self.me].running() {
            bail!("the database is running; fence it instead");
        }
        w.dbs[self.me].standby = true;
        Ok(())
    }

    async fn set_synchronous(&self, standbys: &[String]) -> Result<()> {
        self.ready_or_fail()?;
        self.world.lock().dbs[self.me].sync_names = standbys.to_vec();
        Ok(())
    }

    async fn probe_writable(&self, host: &str, port: u16) -> PeerDb {
        let Some(t) = self.node_at(host, port) else { return PeerDb::Unreachable };
        let (reach, running, frozen, slow, ready, standby) = {
            let w = self.world.lock();
            let d = &w.dbs[t];
            (w.link(self.me, t), d.running(), d.frozen, d.slow_connects, d.ready(Instant::now()), d.standby)
        };
        if !reach {
            // The connect timeout runs out.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return PeerDb::Unreachable;
        }
        if !running {
            // Connection refused.
            return PeerDb::Unreachable;
        }
        if frozen || slow {
            // Its kernel takes the connection; the server never answers.
            tokio::time::sleep(Duration::from_secs(1)).await;
            return PeerDb::Silent;
        }
        match (ready, standby) {
            // "the database system is starting up"
            (false, _) => PeerDb::Silent,
            (true, true) => PeerDb::ReadOnly,
            (true, false) => PeerDb::Writable,
        }
    }
}
