//! Soak test: random faults, one after another, on a synchronous-mode lab
//! with a writer and a split-brain checker running the whole time. Not part
//! of the test suite (it takes about 10 minutes); run it with
//! `cargo bench --bench soak`. `VIGIL_SOAK_FAULTS` (default 30) and
//! `VIGIL_SOAK_SEED` choose how many faults and which;
//! `VIGIL_SOAK_ENGINE=mariadb` soaks a MariaDB (semi-sync) lab instead of
//! PostgreSQL.
//!
//! It reports every fault with its recovery time, then the acknowledged
//! writes lost (synchronous mode: must be 0) and the polls at which two
//! databases accepted writes (must be 0), and exits non-zero otherwise.

use std::time::{Duration, Instant};
use vigil::lab::{free_base_port, Lab, LabSpec};
use vigil::workload::{lost_writes_db, Endpoint, SplitBrainChecker, Writer};

#[derive(Debug, Clone, Copy)]
enum Fault {
    KillPrimaryDb,
    KillPrimaryNode,
    KillReplicaDb,
    HangPrimary,
    Switchover,
    EtcdRestart,
    CutPrimaryFromEtcd,
}

const FAULTS: [Fault; 7] = [
    Fault::KillPrimaryDb,
    Fault::KillPrimaryNode,
    Fault::KillReplicaDb,
    Fault::HangPrimary,
    Fault::Switchover,
    Fault::EtcdRestart,
    Fault::CutPrimaryFromEtcd,
];

#[path = "rng.rs"]
mod rng;
use rng::Rng;

/// Stops the lab's processes (by PID) however the run ends, keeping its
/// directory for the logs unless the run passed.
struct LabGuard {
    lab: Lab,
    keep: bool,
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        if self.keep {
            println!("lab kept in {}", self.lab.dir.display());
        }
        let _ = self.lab.down(self.keep);
    }
}

fn nft(args: &str) {
    let _ = std::process::Command::new("nft").args(args.split_whitespace()).status();
}

fn main() {
    let faults: usize = std::env::var("VIGIL_SOAK_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let seed: u64 = std::env::var("VIGIL_SOAK_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_1234);
    let tmp = tempfile::Builder::new().prefix("vigil-soak-").tempdir().expect("a private temporary directory");
    std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).expect("chmod");
    // Kept after the run: a failed soak leaves its lab's logs there.
    let dir = tmp.keep().join("lab");
    let mut spec = LabSpec::new(&dir, free_base_port(30), env!("CARGO_BIN_EXE_vigil")).fast();
    spec.synchronous = true;
    spec.with_sync = false;
    if std::env::var("VIGIL_SOAK_ENGINE").as_deref() == Ok("mariadb") {
        spec.engine = vigil::config::EngineKind::Mariadb;
    }
    let mut guard = LabGuard { lab: Lab::up(&spec, &|m| eprintln!("lab: {m}")).expect("lab up"), keep: true };
    let lab = &mut guard.lab;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let eps: Vec<Endpoint> = lab.nodes.iter().map(|n| Endpoint { host: "127.0.0.1".into(), port: n.db_port }).collect();
    let db = lab.workload_db();
    let writer = rt.block_on(Writer::start_db(db.clone(), eps.clone(), Duration::from_millis(10))).expect("writer");
    let checker = rt.block_on(async { SplitBrainChecker::start_db(db.clone(), eps.clone(), Duration::from_millis(50)) });
    let mut rng = Rng(seed);
    let table = format!("vigil_soak_{}", std::process::id());
    let started = Instant::now();
    let mut failures = vec![];
    // "healthy" = a writable leader and every other node streaming again,
    // counted from the fault (including the fault's own duration and a 2 s
    // settle); failover times are measured by `cargo bench --bench failover`.
    println!("{:>3}  {:<20} {:<6} {:>9}", "#", "fault", "on", "healthy");
    for n in 1..=faults {
        let c = lab.wait_healthy(Duration::from_secs(120)).expect("healthy before the fault");
        let leader = c.leader.unwrap().node;
        let l = lab.nodes.iter().position(|x| x.name == leader).unwrap();
        let r = (l + 1 + (rng.next() % 2) as usize) % lab.nodes.len();
        let fault = FAULTS[(rng.next() % FAULTS.len() as u64) as usize];
        let at = Instant::now();
        let on = match fault {
            Fault::KillReplicaDb => lab.nodes[r].name.clone(),
            _ => leader.clone(),
        };
        match fault {
            Fault::KillPrimaryDb => {
                lab.kill_db(l);
            }
            Fault::KillPrimaryNode => {
                lab.kill_sidecar(l);
                lab.kill_db(l);
                std::thread::sleep(Duration::from_secs(4));
                lab.start_sidecar(l).unwrap();
            }
            Fault::KillReplicaDb => {
                lab.kill_db(r);
            }
            Fault::HangPrimary => {
                if let Some(pid) = lab.db_pid(l) {
                    let _ = vigil::proc::signal_tree(pid, rustix::process::Signal::STOP);
                    std::thread::sleep(Duration::from_secs(5));
                    let _ = vigil::proc::signal_tree(pid, rustix::process::Signal::CONT);
                }
            }
            Fault::Switchover => {
                let o = std::process::Command::new(&lab.vigil_bin).arg("switchover").arg("-c").arg(&lab.nodes[0].config).output().unwrap();
                if !o.status.success() {
                    failures.push(format!("fault {n}: switchover failed: {}", String::from_utf8_lossy(&o.stderr)));
                }
            }
            Fault::EtcdRestart => {
                lab.kill_etcd();
                std::thread::sleep(Duration::from_secs(5));
                lab.start_etcd().unwrap();
            }
            Fault::CutPrimaryFromEtcd => {
                nft(&format!("add table inet {table}"));
                nft(&format!("add chain inet {table} out {{ type filter hook output priority 0 ; }}"));
                nft(&format!("add rule inet {table} out ip daddr {} tcp dport {} drop", lab.node_etcd_addr(l), lab.etcd_port));
                std::thread::sleep(Duration::from_secs(6));
                nft(&format!("delete table inet {table}"));
            }
        }
        // Let the fault show in etcd before waiting for health again.
        std::thread::sleep(Duration::from_secs(2));
        match lab.wait_healthy(Duration::from_secs(120)) {
            Ok(_) => println!("{n:>3}  {:<20} {on:<6} {:>8.2}s", format!("{fault:?}"), at.elapsed().as_secs_f64()),
            Err(e) => {
                println!("{n:>3}  {:<20} {on:<6}   NOT RECOVERED: {e:#}", format!("{fault:?}"));
                failures.push(format!("fault {n} ({fault:?}) did not recover: {e:#}"));
                break;
            }
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let limit = Duration::from_secs(30);
    let report = rt.block_on(async { tokio::time::timeout(limit, checker.stop()).await }).expect("the checker stops");
    let acks = rt.block_on(async { tokio::time::timeout(limit, writer.stop()).await }).expect("the writer stops");
    let lost = rt
        .block_on(async { tokio::time::timeout(limit, lost_writes_db(&db, &eps, &acks)).await })
        .map_err(|_| anyhow::anyhow!("no answer within {limit:?}"))
        .and_then(|r| r)
        .unwrap_or_else(|e| {
            failures.push(format!("cannot verify writes: {e:#}"));
            vec![]
        });
    println!(
        "\nsoak: {faults} faults in {:.0}s (seed {seed}); writes acknowledged {}, lost {} (synchronous mode: must be 0); \
         split-brain polls {} of {} (must be 0)",
        started.elapsed().as_secs_f64(),
        acks.len(),
        lost.len(),
        report.violations.len(),
        report.polls
    );
    let ok = failures.is_empty() && lost.is_empty() && report.violations.is_empty();
    for f in &failures {
        println!("FAILED: {f}");
    }
    guard.keep = !ok;
    drop(guard);
    if !ok {
        std::process::exit(1);
    }
}
