//! The PostgreSQL failover paths on a real 3-node lab.
//! Every test runs a writer (acknowledged-write checker) and a checker that
//! fails the test if two nodes accept writes at the same poll.

mod common;

use common::{out, TestLab};
use std::time::{Duration, Instant};
use vigil::workload::{longest_gap, lost_writes, SplitBrainChecker, Writer};

const WRITE_EVERY: Duration = Duration::from_millis(20);

/// Stops the writer and the checker: acknowledged writes, the checker's
/// report, and the acknowledged writes missing on the current primary.
fn stop_traffic(
    t: &TestLab,
    writer: Writer,
    checker: SplitBrainChecker,
) -> (Vec<vigil::workload::Ack>, vigil::workload::CheckerReport, Vec<i64>) {
    let acks = t.rt.block_on(writer.stop());
    let report = t.rt.block_on(checker.stop());
    let lost = t.rt.block_on(lost_writes(&t.eps(), "postgres", &acks)).unwrap();
    (acks, report, lost)
}

fn start_traffic(t: &TestLab) -> (Writer, SplitBrainChecker) {
    let eps = t.eps();
    t.rt.block_on(async {
        let w = Writer::start(eps.clone(), "postgres", WRITE_EVERY).await.expect("writer");
        let c = SplitBrainChecker::start(eps, "postgres", Duration::from_millis(50));
        (w, c)
    })
}

/// (a) The primary's postmaster is SIGKILLed while its sidecar lives, with
/// `on_primary_crash = failover`: the sidecar releases the key at once, the
/// freshest replica wins, and the old primary rejoins as a replica.
#[test]
fn a_primary_crash_fails_over_to_the_freshest_replica() {
    let t = TestLab::up("crash", |s| s.on_primary_crash = "failover".into());
    let (writer, checker) = start_traffic(&t);
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = Instant::now();
    t.lab.kill_db(0).expect("kill pg1's postmaster");
    let new = t.wait_new_primary("pg1", Duration::from_secs(20));
    t.wait_streaming("pg1", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let (acks, report, lost) = stop_traffic(&t, writer, checker);
    let (gap, _) = longest_gap(&acks, killed_at);
    eprintln!("new primary {new}; writes acknowledged {}, lost {} ({lost:?}); longest write gap {gap:?}", acks.len(), lost.len());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
    // Asynchronous replication: a loss is possible, bounded by what the
    // replicas had not received when the primary died (well under a second here).
    let lost_window = acks.iter().filter(|a| lost.contains(&a.id)).map(|a| killed_at.duration_since(a.at)).max().unwrap_or_default();
    assert!(lost_window < Duration::from_secs(1), "lost writes acknowledged up to {lost_window:?} before the crash");
    let history = out(&t.vigil(&["history"]));
    assert!(history.contains("failover") && history.contains(&new), "{history}");
}

/// The default (`auto`) with an asynchronous replica that may miss the
/// last commits: the crashed primary is restarted in place and nothing
/// acknowledged is lost.
#[test]
fn a_primary_crash_in_auto_mode_restarts_in_place_without_loss() {
    let t = TestLab::up("restart", |_| {});
    let (writer, checker) = start_traffic(&t);
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = Instant::now();
    t.lab.kill_db(0).expect("kill pg1's postmaster");
    t.wait_for("pg1 writable again", Duration::from_secs(20), |c| {
        c.members.get("pg1").is_some_and(|m| m.term.is_some() && m.health == vigil::core::DbHealth::Running)
    });
    std::thread::sleep(Duration::from_secs(1));
    let (acks, report, lost) = stop_traffic(&t, writer, checker);
    let (gap, _) = longest_gap(&acks, killed_at);
    eprintln!("leader {:?}; acknowledged {}, lost {}; longest write gap {gap:?}", t.leader(), acks.len(), lost.len());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// (b) Whole node lost (postmaster and sidecar SIGKILLed): the lease
/// expires, the freshest replica confirms the old primary is unreachable
/// and takes over. (e) The old node's sidecar comes back and rejoins it
/// as a replica by itself.
#[test]
fn b_node_loss_then_e_old_primary_rejoins() {
    let t = TestLab::up("nodeloss", |s| *s = s.clone().fast());
    let (writer, checker) = start_traffic(&t);
    std::thread::sleep(Duration::from_secs(1));
    let mut t = t;
    let killed_at = Instant::now();
    t.lab.kill_sidecar(0);
    t.lab.kill_db(0).expect("kill pg1's postmaster");
    let new = t.wait_new_primary("pg1", Duration::from_secs(20));
    let switched = killed_at.elapsed();
    // (e) The node returns: its sidecar starts, sees another leader, rewinds and follows.
    t.lab.start_sidecar(0).unwrap();
    t.wait_streaming("pg1", Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(1));
    let (acks, report, lost) = stop_traffic(&t, writer, checker);
    eprintln!("new primary {new} after {switched:?}; acknowledged {}, lost {}", acks.len(), lost.len());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
    let lost_window = acks.iter().filter(|a| lost.contains(&a.id)).map(|a| killed_at.duration_since(a.at)).max().unwrap_or_default();
    assert!(lost_window < Duration::from_secs(1), "lost writes acknowledged up to {lost_window:?} before the loss");
    let st = t.state();
    assert_eq!(st.members["pg1"].role, Some(vigil::core::DbRole::Replica));
}

/// (c) Planned switchover: zero acknowledged writes lost, a short gap.
#[test]
fn c_switchover_loses_nothing() {
    let t = TestLab::up("switchover", |_| {});
    let (writer, checker) = start_traffic(&t);
    std::thread::sleep(Duration::from_secs(1));
    let at = Instant::now();
    let o = t.vigil(&["switchover", "--to", "pg2"]);
    assert!(o.status.success(), "{}", out(&o));
    t.wait_streaming("pg1", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(1));
    let (acks, report, lost) = stop_traffic(&t, writer, checker);
    let (gap, _) = longest_gap(&acks, at);
    eprintln!("switchover: acknowledged {}, lost {}, longest write gap {gap:?}", acks.len(), lost.len());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
    assert!(lost.is_empty(), "acknowledged writes lost in a switchover: {lost:?}");
    assert_eq!(t.leader().as_deref(), Some("pg2"));
    assert!(acks.last().unwrap().port == t.port("pg2"));
    let h = out(&t.vigil(&["history", "--json"]));
    assert!(h.contains("\"switchover\""), "{h}");
}

/// (d) Manual failover with no leader: a less fresh node is refused
/// without --allow-data-loss, the freshest is accepted; pause keeps the
/// cluster from failing over by itself meanwhile.
#[test]
fn d_manual_failover_refuses_a_less_fresh_node() {
    let t = TestLab::up("manual", |s| *s = s.clone().fast());
    let checker = t.rt.block_on(async { SplitBrainChecker::start(t.eps(), "postgres", Duration::from_millis(50)) });
    let mut t = t;
    assert!(t.vigil(&["pause"]).status.success());
    // Cut pg3 off its upstream, then write more on pg1.
    let pg3 = t.port("pg3");
    let pg1 = t.port("pg1");
    t.rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&format!("host=127.0.0.1 port={pg3} user=postgres"), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c.batch_execute("ALTER SYSTEM SET primary_conninfo = ''").await.unwrap();
        c.batch_execute("SELECT pg_reload_conf()").await.unwrap();
        let (c, conn) = tokio_postgres::connect(&format!("host=127.0.0.1 port={pg1} user=postgres"), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        tokio::time::sleep(Duration::from_millis(500)).await;
        c.batch_execute("CREATE TABLE after_cut AS SELECT generate_series(1, 1000) AS x").await.unwrap();
    });
    std::thread::sleep(Duration::from_secs(2));
    t.lab.kill_sidecar(0);
    t.lab.kill_db(0);
    // Paused: the lease expires and nobody takes over.
    std::thread::sleep(Duration::from_secs(6));
    let st = t.state();
    assert!(st.leader.is_none(), "no automatic failover while paused");
    let status = out(&t.vigil(&["status"]));
    assert!(status.contains("paused"), "{status}");

    let o = t.vigil(&["failover", "--to", "pg3", "--wait", "10s"]);
    assert!(!o.status.success(), "pg3 is behind pg2 and must be refused: {}", out(&o));
    assert!(out(&o).contains("allow-data-loss"), "{}", out(&o));

    let o = t.vigil(&["failover", "--to", "pg2", "--wait", "20s"]);
    assert!(o.status.success(), "{}", out(&o));
    assert_eq!(t.leader().as_deref(), Some("pg2"));
    assert!(t.vigil(&["resume"]).status.success());
    t.wait_streaming("pg3", Duration::from_secs(30));
    let report = t.rt.block_on(checker.stop());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
}

/// (e) with a damaged data directory: pg_rewind cannot work, so the old
/// primary comes back through a fresh base backup, and says so; the old
/// data is kept aside, not deleted.
#[test]
fn e_old_primary_with_damaged_data_rejoins_through_a_base_backup() {
    let mut t = TestLab::up("basebackup", |s| *s = s.clone().fast());
    let checker = t.rt.block_on(async { SplitBrainChecker::start(t.eps(), "postgres", Duration::from_millis(50)) });
    t.lab.kill_sidecar(0);
    t.lab.kill_db(0);
    t.wait_new_primary("pg1", Duration::from_secs(20));
    let data = t.lab.nodes[0].data_dir.clone();
    std::fs::remove_file(data.join("global/pg_control")).unwrap();
    t.lab.start_sidecar(0).unwrap();
    t.wait_streaming("pg1", Duration::from_secs(60));
    let log = std::fs::read_to_string(t.lab.nodes[0].dir.join("vigil.log")).unwrap();
    assert!(log.contains("fresh base backup"), "the log says how it rejoined");
    let kept = std::fs::read_dir(&t.lab.nodes[0].dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with("data.vigil-old-"));
    assert!(kept, "the damaged data directory is kept aside");
    let report = t.rt.block_on(checker.stop());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
}

/// A config error names the file, the line and the field, and exits 2.
#[test]
fn config_errors_name_file_line_and_field() {
    let dir_tmp = tempfile::Builder::new().prefix("vigil-cfg-").tempdir().unwrap();
    let dir = dir_tmp.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("bad.toml");
    std::fs::write(&path, "cluster = \"x\"\nnode = \"n1\"\n[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n[timing]\nttl = \"3s\"\nretry = \"2s\"\n[database]\nport = 5\ndata_dir = \"/x\"\n").unwrap();
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_vigil")).args(["status", "-c"]).arg(&path).output().unwrap();
    let text = out(&o);
    assert_eq!(o.status.code(), Some(2), "{text}");
    assert!(text.contains("bad.toml") && text.contains("line 6") && text.contains("timing.ttl"), "{text}");
    std::fs::remove_dir_all(&dir).unwrap();
}
