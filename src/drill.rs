//! `vigil drill`: the user's failover test protocol as one command.
//!
//! 1. Baseline: every member healthy, replicas streaming, sync fresh.
//! 2. Start a writer (numbered rows through every node, read-write
//!    sessions only, as applications connect) and a checker that polls every
//!    node for writability through its unix socket (which also sees a
//!    partitioned node).
//! 3. Inject one fault into the primary, measure detection (fault → first
//!    sign in etcd), switch (→ a primary accepting writes again), RTO (→
//!    first write acknowledged on a new connection), DNS published (when
//!    configured), writes lost, moments with two writable nodes.
//! 4. Restore the primary and measure until it rejoins as a replica.
//!
//! Faults are injected by PID (SIGKILL, SIGSTOP, pg_ctl) or with an
//! nftables table of its own (partition), which restore removes again.

use crate::core::{DbHealth, DbRole};
use crate::dcs::ClusterState;
use crate::lab::Lab;
use crate::workload::{lost_writes_db, Endpoint, SplitBrainChecker, Writer};
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// SIGKILL the primary's postmaster.
    KillDb,
    /// Stop the primary's database cleanly (pg_ctl stop -m fast).
    StopDb,
    /// SIGSTOP the primary's postmaster (a hung server).
    Hang,
    /// SIGKILL the primary's postmaster and its sidecar (node lost).
    KillNode,
    /// Cut the primary off the network (its database and API ports, and
    /// its sidecar's etcd address) with nftables.
    Partition,
    /// Planned switchover to the freshest replica.
    Switchover,
}

impl Scenario {
    pub fn all() -> [Scenario; 6] {
        [Scenario::KillDb, Scenario::StopDb, Scenario::Hang, Scenario::KillNode, Scenario::Partition, Scenario::Switchover]
    }
    pub fn name(&self) -> &'static str {
        match self {
            Scenario::KillDb => "kill-db",
            Scenario::StopDb => "stop-db",
            Scenario::Hang => "hang",
            Scenario::KillNode => "kill-node",
            Scenario::Partition => "partition",
            Scenario::Switchover => "switchover",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Targets {
    pub detection: Duration,
    pub switch: Duration,
    pub rto: Duration,
}

/// The outcome of one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub scenario: Scenario,
    pub old_primary: String,
    pub new_primary: Option<String>,
    /// "failover to pg2", "restarted in place", ...
    pub outcome: String,
    pub detection_s: Option<f64>,
    pub switch_s: Option<f64>,
    pub rto_s: Option<f64>,
    pub dns_published_s: Option<f64>,
    /// For a partition: when the isolated primary stopped accepting writes,
    /// and when the new primary started to (seconds after the fault).
    pub old_primary_read_only_s: Option<f64>,
    pub new_primary_writable_s: Option<f64>,
    pub writes_acknowledged: usize,
    pub writes_lost: usize,
    pub split_brain_polls: usize,
    pub checker_polls: u64,
    pub rejoin_s: Option<f64>,
    pub missed: Vec<String>,
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// What a fault changed that Ctrl-C must undo.
static PENDING: std::sync::Mutex<(Option<String>, Option<i32>)> = std::sync::Mutex::new((None, None));

/// Installs a Ctrl-C handler that removes the drill's firewall table and
/// resumes a stopped process before exiting.
pub fn restore_on_interrupt() {
    std::thread::spawn(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        rt.block_on(async {
            let _ = tokio::signal::ctrl_c().await;
        });
        let (table, pid) = PENDING.lock().map(|g| g.clone()).unwrap_or_default();
        Restore { nft_table: table, stopped_pid: pid }.undo();
        eprintln!("\ninterrupted: fault removed; check the cluster with `vigil status` (runbooks/failover-happened.md)");
        std::process::exit(130);
    });
}

/// Restores what a fault changed. Dropped on every exit path, so an
/// error or a panic in the middle of a drill still removes the firewall
/// table and resumes a stopped process.
struct Restore {
    nft_table: Option<String>,
    stopped_pid: Option<i32>,
}

impl Restore {
    fn remember(&self) {
        if let Ok(mut g) = PENDING.lock() {
            *g = (self.nft_table.clone(), self.stopped_pid);
        }
    }

    fn undo(&mut self) {
        if let Ok(mut g) = PENDING.lock() {
            *g = (None, None);
        }
        if let Some(t) = self.nft_table.take() {
            let _ = std::process::Command::new("nft").args(["delete", "table", "inet", &t]).status();
        }
        if let Some(pid) = self.stopped_pid.take() {
            let _ = crate::proc::signal_tree(pid, rustix::process::Signal::CONT);
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        self.undo();
    }
}

fn nft(args: &str) -> Result<()> {
    let o = std::process::Command::new("nft")
        .args(args.split_whitespace())
        .output()
        .context("nft (Debian package nftables) is needed for the partition scenario")?;
    if !o.status.success() {
        bail!("nft {args}: {}", String::from_utf8_lossy(&o.stderr));
    }
    Ok(())
}

fn leader_of(c: &ClusterState) -> Option<String> {
    c.leader.as_ref().map(|l| l.node.clone())
}

/// A primary that took its writes: leader key, role primary, term published.
fn writable_leader(c: &ClusterState) -> Option<(String, i64)> {
    let l = c.leader.as_ref()?;
    let m = c.members.get(&l.node)?;
    (m.role == Some(DbRole::Primary) && m.health == DbHealth::Running && m.term.is_some()).then(|| (l.node.clone(), c.term.unwrap_or(0)))
}

/// Runs one drill on the lab. `say` shows progress.
pub fn run_once(lab: &mut Lab, scenario: Scenario, targets: Targets, say: &dyn Fn(&str)) -> Result<RunReport> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    say("baseline: waiting for a healthy cluster");
    let base = lab.wait_healthy(Duration::from_secs(60)).context("cluster not healthy at the start; not injecting a fault")?;
    if lab.redis.len() == 2 {
        lab.wait_sync(Duration::from_secs(30)).context("sync not fresh at the start")?;
    }
    let old = leader_of(&base).context("no leader")?;
    let old_term = base.term.unwrap_or(0);
    let i = lab.nodes.iter().position(|n| n.name == old).context("leader is not a lab node")?;
    let tcp: Vec<Endpoint> = lab.nodes.iter().map(|n| Endpoint { host: "127.0.0.1".into(), port: n.db_port }).collect();
    let socket: Vec<Endpoint> =
        lab.nodes.iter().map(|n| Endpoint { host: lab.socket_dir().display().to_string(), port: n.db_port }).collect();
    let (writer, checker) = rt.block_on(async {
        let w = Writer::start_db(lab.workload_db(), tcp.clone(), Duration::from_millis(20)).await?;
        anyhow::Ok((w, SplitBrainChecker::start(socket.clone(), "postgres", Duration::from_millis(50))))
    })?;
    std::thread::sleep(Duration::from_millis(800));
    let conn_before = writer.acks().last().map(|a| a.conn).unwrap_or(0);
    let mut restore = Restore { nft_table: None, stopped_pid: None };

    say(&format!("injecting {} into the primary {old}", scenario.name()));
    let t0 = Instant::now();
    match scenario {
        Scenario::KillDb => {
            lab.kill_db(i).context("no postmaster to kill")?;
        }
        Scenario::StopDb => {
            let mut c = std::process::Command::new("runuser");
            // -W: do not wait; the sidecar may restart it before pg_ctl would see it gone.
            c.args(["-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D"])
                .arg(&lab.nodes[i].data_dir)
                .args(["-m", "fast", "-W", "stop"]);
            c.output()?;
        }
        Scenario::Hang => {
            // Freeze the whole server: the postmaster and every backend.
            let pid = lab.db_pid(i).context("no postmaster")?;
            crate::proc::signal_tree(pid, rustix::process::Signal::STOP)?;
            restore.stopped_pid = Some(pid);
            restore.remember();
        }
        Scenario::KillNode => {
            lab.kill_sidecar(i);
            lab.kill_db(i);
        }
        Scenario::Partition => {
            let table = format!("vigil_drill_{}", std::process::id());
            let n = &lab.nodes[i];
            nft(&format!("add table inet {table}"))?;
            restore.nft_table = Some(table.clone());
            restore.remember();
            nft(&format!("add chain inet {table} out {{ type filter hook output priority 0 ; }}"))?;
            for port in [n.db_port, n.api_port] {
                nft(&format!("add rule inet {table} out tcp dport {port} drop"))?;
            }
            nft(&format!("add rule inet {table} out ip daddr {} tcp dport {} drop", lab.node_etcd_addr(i), lab.etcd_port))?;
        }
        Scenario::Switchover => {
            let o = std::process::Command::new(&lab.vigil_bin).arg("switchover").arg("--config").arg(&lab.nodes[0].config).output()?;
            if !o.status.success() {
                bail!("switchover failed: {}", String::from_utf8_lossy(&o.stderr));
            }
        }
    }

    // Watch etcd and the writer until a primary accepts writes again. A
    // restart in place can be over before etcd ever shows the database
    // down, so the writer's first write on a new connection counts too.
    let mut detection = None;
    let mut switch = None;
    let mut new_primary = None;
    let mut rto = None;
    let deadline = t0 + targets.rto.max(Duration::from_secs(120));
    loop {
        if rto.is_none() {
            rto = writer.acks().iter().find(|a| a.conn > conn_before && a.at > t0).map(|a| a.at.duration_since(t0));
            if let Some(r) = rto {
                say(&format!("first acknowledged write after {:.2}s", r.as_secs_f64()));
            }
        }
        if let Ok(c) = lab.cluster_state() {
            let seen = match c.members.get(&old) {
                _ if c.term != Some(old_term) || c.leader.is_none() => true,
                Some(m) => m.health != DbHealth::Running || m.term.is_none(),
                None => true,
            };
            if seen && detection.is_none() {
                detection = Some(t0.elapsed());
                say(&format!("detected after {:.2}s", t0.elapsed().as_secs_f64()));
            }
            if let Some((node, term)) = writable_leader(&c) {
                let settled = rto.is_some_and(|r| t0.elapsed() > r + Duration::from_millis(300));
                if term != old_term || (node == old && (detection.is_some() || settled)) {
                    switch = Some(t0.elapsed());
                    new_primary = Some(node.clone());
                    say(&format!("{node} accepts writes (seen in etcd after {:.2}s, term {term})", t0.elapsed().as_secs_f64()));
                    if rto.is_some() {
                        break;
                    }
                }
            }
        }
        if Instant::now() > deadline {
            say("no writable primary before the deadline");
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));

    say("restoring the old primary");
    restore.undo();
    if scenario == Scenario::KillNode && lab.nodes[i].sidecar_pid.is_none() {
        lab.start_sidecar(i)?;
    }
    let restored = Instant::now();
    let mut rejoin = None;
    while restored.elapsed() < Duration::from_secs(90) {
        if let Ok(c) = lab.cluster_state() {
            let ok = c.members.get(&old).is_some_and(|m| {
                (m.role == Some(DbRole::Replica) && m.streaming) || leader_of(&c).as_deref() == Some(old.as_str()) && m.term.is_some()
            });
            if ok {
                rejoin = Some(restored.elapsed());
                say(&format!("{old} is back after {:.2}s", restored.elapsed().as_secs_f64()));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let acks = rt.block_on(writer.stop());
    let report = rt.block_on(checker.stop());
    let lost = rt.block_on(lost_writes_db(&lab.workload_db(), &tcp, &acks)).map(|l| l.len()).unwrap_or(usize::MAX);
    let old_port = lab.nodes[i].db_port;
    let new_writable =
        report.became_writable.iter().filter(|(p, at)| *p != old_port && *at > t0).map(|(_, at)| at.duration_since(t0)).min();
    let c = lab.cluster_state().ok();
    let history = c.as_ref().and_then(|c| c.last_history.clone());
    let dns = history
        .as_ref()
        .and_then(|h| h.steps.iter().find(|s| s.name.starts_with("DNS") && s.name.ends_with("published")).map(|s| s.at_ms))
        .map(|ms| Duration::from_millis(ms.saturating_sub(crate::dcs::now_ms() - t0.elapsed().as_millis() as u64)));
    // The checker polls every node every 50 ms: it sees the first write
    // acceptance earlier than etcd shows it.
    let first_writable = report.became_writable.iter().filter(|(_, at)| *at > t0).map(|(_, at)| at.duration_since(t0)).min();
    // The checker saw the old primary stop accepting writes: that is when
    // the failure was visible from outside.
    let old_port_lost =
        report.became_read_only.iter().filter(|(p, at)| *p == lab.nodes[i].db_port && *at > t0).map(|(_, at)| at.duration_since(t0)).min();
    let detection = match (detection, old_port_lost) {
        (Some(d), Some(c)) => Some(d.min(c)),
        (d, c) => d.or(c),
    };
    let switch = match (switch, first_writable) {
        (Some(s), Some(w)) => Some(s.min(w)),
        (s, w) => s.or(w),
    };
    let outcome = match new_primary.as_deref() {
        Some(n) if n == old => "restarted in place".to_string(),
        Some(n) => format!("{} to {n}", if scenario == Scenario::Switchover { "switchover" } else { "failover" }),
        None => "no writable primary".to_string(),
    };
    let mut r = RunReport {
        scenario,
        old_primary: old,
        new_primary,
        outcome,
        detection_s: detection.map(secs),
        switch_s: switch.map(secs),
        rto_s: rto.map(secs),
        dns_published_s: dns.map(secs),
        old_primary_read_only_s: None,
        new_primary_writable_s: new_writable.map(secs),
        writes_acknowledged: acks.len(),
        writes_lost: lost,
        split_brain_polls: report.violations.len(),
        checker_polls: report.polls,
        rejoin_s: rejoin.map(secs),
        missed: vec![],
    };
    if scenario == Scenario::Partition {
        r.old_primary_read_only_s =
            report.became_read_only.iter().filter(|(p, at)| *p == old_port && *at > t0).map(|(_, at)| secs(at.duration_since(t0))).next();
    }
    let check = |name: &str, v: Option<f64>, t: Duration, missed: &mut Vec<String>| match v {
        Some(x) if x <= t.as_secs_f64() => {}
        Some(x) => missed.push(format!("{name} {x:.2}s > target {:.0}s", t.as_secs_f64())),
        None => missed.push(format!("{name}: never")),
    };
    let mut missed = vec![];
    if scenario != Scenario::Switchover {
        check("detection", r.detection_s, targets.detection, &mut missed);
    }
    check("switch", r.switch_s, targets.switch, &mut missed);
    check("RTO", r.rto_s, targets.rto, &mut missed);
    if r.split_brain_polls > 0 {
        missed.push(format!("{} polls with two writable nodes", r.split_brain_polls));
    }
    if scenario == Scenario::Switchover && r.writes_lost > 0 {
        missed.push(format!("{} acknowledged writes lost in a switchover", r.writes_lost));
    }
    if r.rejoin_s.is_none() {
        missed.push(format!("{} did not come back within 90s: see runbooks/old-primary-will-not-rejoin.md", r.old_primary));
    }
    r.missed = missed;
    Ok(r)
}

/// min / median / max of a figure over runs.
pub fn spread(xs: &[Option<f64>]) -> Option<(f64, f64, f64)> {
    let mut v: Vec<f64> = xs.iter().flatten().copied().collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Some((v[0], v[v.len() / 2], v[v.len() - 1]))
}

/// The summary table of several runs.
pub fn render(runs: &[RunReport], targets: Targets) -> String {
    let f = |x: Option<(f64, f64, f64)>| x.map(|(a, b, c)| format!("{a:.2} / {b:.2} / {c:.2}")).unwrap_or_else(|| "-".into());
    let mut rows = vec![];
    for sc in Scenario::all() {
        let rs: Vec<&RunReport> = runs.iter().filter(|r| r.scenario == sc).collect();
        if rs.is_empty() {
            continue;
        }
        rows.push(vec![
            sc.name().to_string(),
            rs.len().to_string(),
            f(spread(&rs.iter().map(|r| r.detection_s).collect::<Vec<_>>())),
            f(spread(&rs.iter().map(|r| r.switch_s).collect::<Vec<_>>())),
            f(spread(&rs.iter().map(|r| r.rto_s).collect::<Vec<_>>())),
            f(spread(&rs.iter().map(|r| r.rejoin_s).collect::<Vec<_>>())),
            rs.iter().map(|r| r.writes_lost).sum::<usize>().to_string(),
            rs.iter().map(|r| r.split_brain_polls).sum::<usize>().to_string(),
            rs.last().map(|r| r.outcome.clone()).unwrap_or_default(),
        ]);
    }
    let mut out = crate::cli::status::table(
        &["SCENARIO", "RUNS", "DETECTION s (min/med/max)", "SWITCH s", "RTO s", "REJOIN s", "LOST", "SPLIT-BRAIN", "OUTCOME (last)"],
        &rows,
    );
    out += &format!(
        "\ntargets: detection < {}s, switch < {}s, RTO < {}s; 0 split-brain polls; 0 lost in a switchover\n",
        targets.detection.as_secs(),
        targets.switch.as_secs(),
        targets.rto.as_secs()
    );
    for r in runs.iter().filter(|r| !r.missed.is_empty()) {
        out += &format!("MISSED ({}): {}\n", r.scenario.name(), r.missed.join("; "));
    }
    if let Some(p) = runs.iter().find(|r| r.scenario == Scenario::Partition) {
        out += &format!(
            "partition: isolated primary read-only at {:?}s, new primary writable at {:?}s\n",
            p.old_primary_read_only_s, p.new_primary_writable_s
        );
    }
    out
}

/// A markdown report for the post-incident log.
pub fn markdown(runs: &[RunReport], targets: Targets) -> String {
    let mut md = format!("# Failover drill, {}\n\n", humantime::format_rfc3339_seconds(std::time::SystemTime::now()));
    md += "| scenario | old → new | detection s | switch s | RTO s | rejoin s | lost | split-brain polls | missed |\n|---|---|---|---|---|---|---|---|---|\n";
    let o = |v: Option<f64>| v.map(|x| format!("{x:.2}")).unwrap_or_else(|| "-".into());
    for r in runs {
        md += &format!(
            "| {} | {} → {} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario.name(),
            r.old_primary,
            r.new_primary.clone().unwrap_or_else(|| "-".into()),
            o(r.detection_s),
            o(r.switch_s),
            o(r.rto_s),
            o(r.rejoin_s),
            r.writes_lost,
            r.split_brain_polls,
            if r.missed.is_empty() { "none".to_string() } else { r.missed.join("; ") }
        );
    }
    md += &format!(
        "\nTargets: detection < {}s, switch < {}s, RTO < {}s. Writes lost are acknowledged writes missing afterwards (possible in asynchronous failover, never in a switchover).\n",
        targets.detection.as_secs(),
        targets.switch.as_secs(),
        targets.rto.as_secs()
    );
    md
}
