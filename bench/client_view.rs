//! Client-view recovery on the local lab (real etcd, PostgreSQL 15, vigil
//! sidecars in release mode), measured as the benchmark rules say: a
//! writer inserts a row every 50 ms with a 1 s timeout; after a failure it
//! finds the primary with `GET /primary` on each sidecar and opens a new
//! connection; recovery = fault to the first write acknowledged on that new
//! connection. min / median / max over the runs, plus runs without
//! failover, acknowledged writes lost, and writes acknowledged by a node
//! after another had become primary.
//!
//! - `node-loss-fast`: fast profile (ttl 3 s, loop 500 ms); the primary's
//!   sidecar and postmaster are SIGKILLed; 20 runs in a row
//!   (`VIGIL_BENCH_RUNS`), the old node restarted and rejoined between runs.
//! - `frozen-resume`: default profile; the primary's node (sidecar,
//!   postmaster and backends) is SIGSTOPped, a replica takes over, and the
//!   node is resumed 2 s later: recovery as above, then the time from the
//!   resume until the old primary streams from the new one, and how many
//!   pg_rewind / base backups that took. 5 runs.
//!
//! Run: `cargo bench --bench client_view [scenario]`.

use std::time::{Duration, Instant};
use vigil::lab::{free_base_port, Lab, LabSpec};
use vigil::workload::{lost_writes_db, Endpoint, Writer};

struct Bench {
    lab: Lab,
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
}

impl Bench {
    fn up(f: impl FnOnce(&mut LabSpec)) -> Bench {
        let dir = tempfile::Builder::new().prefix("vigil-bench-").tempdir().expect("a private temporary directory");
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).expect("chmod");
        let mut spec = LabSpec::new(dir.path().join("lab"), free_base_port(30), env!("CARGO_BIN_EXE_vigil"));
        spec.with_sync = false;
        f(&mut spec);
        let lab = Lab::up(&spec, &|_| {}).expect("lab up");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        Bench { lab, rt, _dir: dir }
    }
    fn eps(&self) -> Vec<Endpoint> {
        self.lab.nodes.iter().map(|n| Endpoint { host: "127.0.0.1".into(), port: n.db_port }).collect()
    }
    fn apis(&self) -> Vec<String> {
        self.lab.nodes.iter().map(|n| format!("http://127.0.0.1:{}", n.api_port)).collect()
    }
    fn leader(&self) -> usize {
        let c = self.lab.wait_healthy(Duration::from_secs(120)).expect("healthy");
        let l = c.leader.expect("leader").node;
        self.lab.nodes.iter().position(|n| n.name == l).unwrap()
    }
    /// Waits until the leader key names another node whose sidecar says it leads.
    fn wait_new_primary(&self, old: &str, limit: Duration) -> Option<String> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Ok(c) = self.lab.cluster_state() {
                if let Some(l) = c.leader.as_ref().filter(|l| l.node != old) {
                    if c.members.get(&l.node).is_some_and(|m| m.term.is_some()) {
                        return Some(l.node.clone());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        let _ = self.lab.down(false);
    }
}

/// Signals a process and its direct children (a postmaster and backends).
fn signal_tree(pid: i32, sig: rustix::process::Signal) {
    let _ = vigil::proc::signal_tree(pid, sig);
}

struct Run {
    recovery: Option<Duration>,
    lost: usize,
    stale: usize,
    extra: Option<(Duration, usize)>,
}

fn stats(name: &str, xs: &[Duration]) {
    if xs.is_empty() {
        println!("{name:<44} no data");
        return;
    }
    let mut v: Vec<f64> = xs.iter().map(|d| d.as_secs_f64()).collect();
    v.sort_by(f64::total_cmp);
    println!("{name:<44} min {:.3}s  median {:.3}s  max {:.3}s  (n={})", v[0], v[v.len() / 2], v[v.len() - 1], v.len());
}

/// One fault with the writer running: `fault` returns the old primary's
/// name; `after` runs once a new primary exists (resume, rejoin).
fn run_once(
    b: &mut Bench,
    fault: impl FnOnce(&mut Bench, usize),
    after: impl FnOnce(&mut Bench, usize, &str) -> Option<(Duration, usize)>,
) -> Run {
    let l = b.leader();
    let old = b.lab.nodes[l].name.clone();
    let old_port = b.lab.nodes[l].db_port;
    let writer = b.rt.block_on(Writer::start_via_api(b.lab.workload_db(), b.eps(), b.apis(), Duration::from_millis(50))).expect("writer");
    std::thread::sleep(Duration::from_millis(1000));
    let conn_before = writer.acks().last().map(|a| a.conn).unwrap_or(0);
    let at = Instant::now();
    fault(b, l);
    let new = b.wait_new_primary(&old, Duration::from_secs(60));
    let promoted = Instant::now();
    let mut recovery = None;
    if new.is_some() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(a) = writer.acks().iter().find(|a| a.at > at && a.conn > conn_before && a.port != old_port) {
                recovery = Some(a.at.duration_since(at));
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    let extra = after(b, l, new.as_deref().unwrap_or(""));
    std::thread::sleep(Duration::from_millis(500));
    let acks = b.rt.block_on(writer.stop());
    let stale = acks.iter().filter(|a| a.port == old_port && a.at > promoted).count();
    let lost = b.rt.block_on(lost_writes_db(&b.lab.workload_db(), &b.eps(), &acks)).map(|l| l.len()).unwrap_or(usize::MAX);
    Run { recovery, lost, stale, extra }
}

fn report(name: &str, runs: &[Run]) {
    let rec: Vec<Duration> = runs.iter().filter_map(|r| r.recovery).collect();
    stats(&format!("{name}: client-view recovery"), &rec);
    let extra: Vec<Duration> = runs.iter().filter_map(|r| r.extra.map(|e| e.0)).collect();
    if !extra.is_empty() {
        stats(&format!("{name}: resumed old primary streaming again"), &extra);
        let rebuilds: Vec<usize> = runs.iter().filter_map(|r| r.extra.map(|e| e.1)).collect();
        println!("{:<44} {:?} (pg_rewind + base backups per rejoin)", format!("{name}: rebuilds"), rebuilds);
    }
    println!(
        "{:<44} runs {}, without failover {}, acknowledged writes lost {}, acknowledged by the old primary after the new one took over {}",
        format!("{name}: totals"),
        runs.len(),
        runs.iter().filter(|r| r.recovery.is_none()).count(),
        runs.iter().map(|r| r.lost).sum::<usize>(),
        runs.iter().map(|r| r.stale).sum::<usize>()
    );
}

fn node_loss_fast(n: usize) {
    let mut b = Bench::up(|s| *s = s.clone().fast());
    let mut runs = vec![];
    for i in 0..n {
        let r = run_once(
            &mut b,
            |b, l| {
                b.lab.kill_sidecar(l);
                b.lab.kill_db(l);
            },
            |b, l, _| {
                b.lab.start_sidecar(l).expect("restart the lost node's sidecar");
                None
            },
        );
        eprintln!("node-loss-fast run {}: {:?}", i + 1, r.recovery);
        runs.push(r);
    }
    report("node loss, fast profile (ttl 3s)", &runs);
}

fn frozen_resume(n: usize) {
    let mut b = Bench::up(|_| {});
    let mut runs = vec![];
    for i in 0..n {
        let r = run_once(
            &mut b,
            |b, l| {
                let sidecar = b.lab.nodes[l].sidecar_pid.expect("sidecar pid");
                let db = b.lab.db_pid(l).expect("postmaster pid");
                signal_tree(db, rustix::process::Signal::STOP);
                signal_tree(sidecar, rustix::process::Signal::STOP);
            },
            |b, l, new| {
                std::thread::sleep(Duration::from_secs(2));
                let log = b.lab.nodes[l].dir.join("vigil.log");
                let before = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
                let sidecar = b.lab.nodes[l].sidecar_pid.expect("sidecar pid");
                let db = b.lab.db_pid(l);
                let resumed = Instant::now();
                signal_tree(sidecar, rustix::process::Signal::CONT);
                if let Some(db) = db {
                    signal_tree(db, rustix::process::Signal::CONT);
                }
                let name = b.lab.nodes[l].name.clone();
                let up = b.lab.nodes.iter().find(|n| n.name == new).map(|n| format!("127.0.0.1:{}", n.db_port));
                let deadline = Instant::now() + Duration::from_secs(120);
                let mut took = None;
                while Instant::now() < deadline {
                    if let Ok(c) = b.lab.cluster_state() {
                        if c.members.get(&name).is_some_and(|m| m.streaming && m.upstream == up) {
                            took = Some(resumed.elapsed());
                            break;
                        }
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                let text = std::fs::read(&log).map(|t| String::from_utf8_lossy(&t[before as usize..]).into_owned()).unwrap_or_default();
                let rebuilds = text.matches("rewound with pg_rewind").count() + text.matches("took a fresh base backup").count();
                took.map(|t| (t, rebuilds))
            },
        );
        eprintln!("frozen-resume run {}: recovery {:?}, rejoin {:?}", i + 1, r.recovery, r.extra);
        runs.push(r);
    }
    report("frozen primary node (SIGSTOP), default profile", &runs);
}

fn main() {
    let which: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let want = |s: &str| which.is_empty() || which.iter().any(|w| s.contains(w.as_str()));
    let runs = |d: usize| std::env::var("VIGIL_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    if want("node-loss-fast") {
        node_loss_fast(runs(20));
    }
    if want("frozen-resume") {
        frozen_resume(runs(5));
    }
}
