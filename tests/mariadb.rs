//! MariaDB GTID replication on a real 3-node lab (mariadbd processes of
//! their own, `gtid_strict_mode=ON`): failover to the freshest replica,
//! a lagging replica passed over, errant transactions found and excluded,
//! the old primary rejoining, and a switchover that loses nothing. Every
//! test runs a writer (as an application user, which `read_only` stops) and
//! a checker that fails the test if two servers have `read_only=OFF` at
//! the same poll.

mod common;

use common::{out, TestLab};
use std::time::{Duration, Instant};
use vigil::config::EngineKind;
use vigil::core::DbRole;
use vigil::workload::{longest_gap, lost_writes_db, Ack, CheckerReport, SplitBrainChecker, Writer};

const WRITE_EVERY: Duration = Duration::from_millis(20);

fn mariadb_lab(name: &str, on_crash: &str) -> TestLab {
    TestLab::up(name, |s| {
        s.engine = EngineKind::Mariadb;
        s.with_sync = false;
        s.on_primary_crash = on_crash.into();
    })
}

fn start_traffic(t: &TestLab) -> (Writer, SplitBrainChecker) {
    let (eps, db) = (t.eps(), t.db());
    t.rt.block_on(async {
        let w = Writer::start_db(db.clone(), eps.clone(), WRITE_EVERY).await.expect("writer");
        let c = SplitBrainChecker::start_db(db, eps, Duration::from_millis(50));
        (w, c)
    })
}

fn stop_traffic(t: &TestLab, writer: Writer, checker: SplitBrainChecker) -> (Vec<Ack>, CheckerReport, Vec<i64>) {
    let acks = t.rt.block_on(writer.stop());
    let report = t.rt.block_on(checker.stop());
    let lost = t.rt.block_on(lost_writes_db(&t.db(), &t.eps(), &acks)).unwrap();
    (acks, report, lost)
}

/// Asynchronous replication may lose what no replica had received when the
/// primary died: it must be well under a second old.
fn assert_loss_bounded(acks: &[Ack], lost: &[i64], at: Instant) {
    let window = acks.iter().filter(|a| lost.contains(&a.id)).map(|a| at.duration_since(a.at)).max().unwrap_or_default();
    assert!(window < Duration::from_secs(1), "lost writes acknowledged up to {window:?} before the failure");
}

fn upstream_is(t: &TestLab, node: &str, leader: &str) -> bool {
    let want = format!("127.0.0.1:{}", t.port(leader));
    t.state().members.get(node).is_some_and(|m| m.streaming && m.upstream.as_deref() == Some(want.as_str()))
}

/// mdb3's SQL thread is stopped: its lag grows past 30 s in `/cluster` and
/// `/metrics`, it is not eligible, and when the primary's mariadbd is
/// killed the fresher mdb2 is promoted, mdb3 follows mdb2 with GTID, and
/// the old primary rejoins.
#[test]
fn a_primary_killed_freshest_replica_promoted_lagging_one_follows() {
    let t = mariadb_lab("mdb-crash", "failover");
    assert_eq!(t.leader().as_deref(), Some("mdb1"), "the lab's first node leads");
    let (writer, checker) = start_traffic(&t);
    t.wait_for("mdb3 measures its lag", Duration::from_secs(10), |c| c.members.get("mdb3").is_some_and(|m| m.lag_seconds.is_some()));
    t.lab.root_sql(&t.lab.nodes[2], "STOP SLAVE SQL_THREAD").unwrap();
    let c = t.wait_for("mdb3's lag past 30 s", Duration::from_secs(50), |c| {
        c.members.get("mdb3").and_then(|m| m.lag_seconds).is_some_and(|l| l > 30.0)
    });
    let m3 = &c.members["mdb3"];
    assert!(!m3.eligible && m3.ineligible_reason.as_deref().unwrap_or("").contains("SQL thread"), "{:?}", m3.ineligible_reason);
    // The sidecar's API serves its view of the last loop: poll it.
    let api = format!("http://127.0.0.1:{}", t.lab.nodes[2].api_port);
    let deadline = Instant::now() + Duration::from_secs(5);
    let (lag, metric, alert) = loop {
        let (cluster, metrics) =
            t.rt.block_on(async {
                let c: serde_json::Value = reqwest::get(format!("{api}/cluster")).await?.json().await?;
                let m = reqwest::get(format!("{api}/metrics")).await?.text().await?;
                Ok::<_, reqwest::Error>((c, m))
            })
            .unwrap();
        let lag = cluster["members"].as_array().unwrap().iter().find(|m| m["node"] == "mdb3").unwrap()["lag_seconds"].as_f64().unwrap();
        let line = metrics.lines().find(|l| l.starts_with("vigil_replication_lag_seconds")).expect("lag metric").to_string();
        let metric = line.rsplit(' ').next().unwrap().parse::<f64>().unwrap();
        let alert = metrics.contains("vigil_replication_lag_alert 1");
        if (lag > 30.0 && metric > 30.0 && alert) || Instant::now() > deadline {
            break (lag, metric, alert);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(lag > 30.0 && metric > 30.0 && alert, "/cluster lag {lag}, /metrics lag {metric}, alert gauge {alert}");

    let killed_at = Instant::now();
    t.lab.kill_db(0).expect("kill mdb1's mariadbd");
    let new = t.wait_new_primary("mdb1", Duration::from_secs(20));
    let switched = killed_at.elapsed();
    assert_eq!(new, "mdb2", "the lagging mdb3 must not be promoted");
    t.wait_for("mdb3 replicating from mdb2", Duration::from_secs(30), |_| upstream_is(&t, "mdb3", "mdb2"));
    t.wait_for("mdb1 rejoined as a replica of mdb2", Duration::from_secs(60), |_| upstream_is(&t, "mdb1", "mdb2"));
    std::thread::sleep(Duration::from_secs(1));
    let (acks, report, lost) = stop_traffic(&t, writer, checker);
    let (gap, _) = longest_gap(&acks, killed_at);
    eprintln!(
        "new primary {new} after {switched:?}; acknowledged {}, lost {} ({lost:?}); longest write gap {gap:?}",
        acks.len(),
        lost.len()
    );
    assert!(report.violations.is_empty(), "two writable servers: {:?}", report.violations);
    assert_loss_bounded(&acks, &lost, killed_at);
    let st = t.state();
    assert_eq!(st.members["mdb1"].role, Some(DbRole::Replica));
    assert!(st.members["mdb3"].gtid.as_ref().unwrap().sql_running.as_deref() == Some("Yes"), "mdb3 applies again");
    let history = out(&t.vigil(&["history"]));
    assert!(history.contains("failover") && history.contains("mdb2"), "{history}");
}

/// A transaction written directly on mdb3 (as an administrator, whom
/// `read_only` does not stop) is errant: shown, alerted through the member
/// record, and mdb3 is never promoted; the primary's crash goes to mdb2.
#[test]
fn b_errant_transaction_is_detected_and_excludes_its_replica() {
    let t = mariadb_lab("mdb-errant", "failover");
    let (writer, checker) = start_traffic(&t);
    t.lab
        .root_sql(&t.lab.nodes[2], "CREATE TABLE IF NOT EXISTS app.local_only (id INT PRIMARY KEY); INSERT INTO app.local_only VALUES (1)")
        .unwrap();
    let c = t.wait_for("mdb3 flagged errant", Duration::from_secs(20), |c| {
        c.members
            .get("mdb3")
            .is_some_and(|m| m.gtid.as_ref().and_then(|g| g.errant.as_ref()).is_some_and(|e| e.contains("-3-")) && !m.eligible)
    });
    let errant = c.members["mdb3"].gtid.as_ref().unwrap().errant.clone().unwrap();
    assert!(errant.contains("-3-"), "the GTID carries mdb3's server_id: {errant}");
    let status = out(&t.vigil(&["status"]));
    assert!(status.contains("ERRANT TRANSACTIONS") && status.contains("no: errant transactions"), "{status}");
    let refused = out(&t.vigil(&["failover", "--to", "mdb3", "--wait", "5s"]));
    assert!(refused.contains("errant"), "a manual failover without --allow-data-loss is refused: {refused}");

    let killed_at = Instant::now();
    t.lab.kill_db(0).expect("kill mdb1's mariadbd");
    let new = t.wait_new_primary("mdb1", Duration::from_secs(20));
    assert_eq!(new, "mdb2", "the errant mdb3 must not be promoted");
    t.wait_for("mdb1 rejoined", Duration::from_secs(60), |_| upstream_is(&t, "mdb1", "mdb2"));
    std::thread::sleep(Duration::from_secs(1));
    let (acks, report, lost) = stop_traffic(&t, writer, checker);
    assert!(report.violations.is_empty(), "two writable servers: {:?}", report.violations);
    assert_loss_bounded(&acks, &lost, killed_at);
    // The errant replica stays flagged until an operator re-clones it.
    assert!(t.state().members["mdb3"].gtid.as_ref().unwrap().errant.is_some());
}

/// Planned switchover: zero acknowledged writes lost; the old primary
/// follows the new one with GTID.
#[test]
fn c_switchover_loses_nothing() {
    let t = mariadb_lab("mdb-switch", "auto");
    let (writer, checker) = start_traffic(&t);
    std::thread::sleep(Duration::from_secs(1));
    let at = Instant::now();
    let o = t.vigil(&["switchover", "--to", "mdb2"]);
    assert!(o.status.success(), "{}", out(&o));
    t.wait_new_primary("mdb1", Duration::from_secs(20));
    t.wait_for("mdb1 follows mdb2", Duration::from_secs(30), |_| upstream_is(&t, "mdb1", "mdb2"));
    t.wait_for("mdb3 follows mdb2", Duration::from_secs(30), |_| upstream_is(&t, "mdb3", "mdb2"));
    std::thread::sleep(Duration::from_secs(1));
    let (acks, report, lost) = stop_traffic(&t, writer, checker);
    let (gap, _) = longest_gap(&acks, at);
    eprintln!("switchover: acknowledged {}, lost {}, longest write gap {gap:?}", acks.len(), lost.len());
    assert!(report.violations.is_empty(), "two writable servers: {:?}", report.violations);
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");
}

/// The whole primary node is lost (mariadbd and sidecar): the lease
/// expires, a replica takes over; the node's sidecar comes back, starts its
/// server read-only and rejoins it (re-cloning it if its last transactions
/// never left it).
#[test]
fn d_node_loss_then_old_primary_rejoins() {
    let mut t = TestLab::up("mdb-nodeloss", |s| {
        *s = s.clone().fast();
        s.engine = EngineKind::Mariadb;
        s.with_sync = false;
    });
    let (writer, checker) = start_traffic(&t);
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = Instant::now();
    t.lab.kill_sidecar(0);
    t.lab.kill_db(0).expect("kill mdb1's mariadbd");
    let new = t.wait_new_primary("mdb1", Duration::from_secs(20));
    let switched = killed_at.elapsed();
    t.lab.start_sidecar(0).unwrap();
    t.wait_for("mdb1 rejoined", Duration::from_secs(60), |_| upstream_is(&t, "mdb1", &new));
    std::thread::sleep(Duration::from_secs(1));
    let (acks, report, lost) = stop_traffic(&t, writer, checker);
    eprintln!("new primary {new} after {switched:?}; acknowledged {}, lost {}", acks.len(), lost.len());
    assert!(report.violations.is_empty(), "two writable servers: {:?}", report.violations);
    assert_loss_bounded(&acks, &lost, killed_at);
}

/// The primary wrote transactions no replica received (their receivers
/// were stopped) and crashed; a replica is promoted without them. The old
/// primary's history has diverged: on rejoin it is re-cloned from the new
/// primary by a logical dump, its old binary logs kept aside once, and it
/// streams again without the lost rows.
#[test]
fn e_former_primary_with_an_unreplicated_tail_is_recloned() {
    let t = mariadb_lab("mdb-reclone", "failover");
    t.wait_for("every replica eligible", Duration::from_secs(30), |c| c.members.values().all(|m| m.eligible));
    let old = t.leader().expect("a leader");
    let (o, n) = (t.index(&old), t.lab.nodes.len());
    for i in (0..n).filter(|i| *i != o) {
        t.lab.root_sql(&t.lab.nodes[i], "STOP SLAVE IO_THREAD").unwrap();
    }
    let primary = &t.lab.nodes[o];
    t.lab.root_sql(primary, "CREATE TABLE IF NOT EXISTS app.tail (id INT PRIMARY KEY); INSERT INTO app.tail VALUES (1), (2), (3)").unwrap();
    t.lab.kill_db(o).expect("kill the primary");
    let new = t.wait_new_primary(&old, Duration::from_secs(30));
    t.wait_streaming(&old, Duration::from_secs(90));
    let rows = t
        .lab
        .root_sql(primary, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = 'app' AND table_name = 'tail'")
        .unwrap();
    assert_eq!(rows.trim(), "0", "{old} still has the table the cluster never saw (new primary {new})");
    let kept: Vec<_> =
        std::fs::read_dir(&primary.dir).unwrap().flatten().filter(|e| e.file_name().to_string_lossy().contains("vigil-errant-")).collect();
    assert_eq!(kept.len(), 1, "the old binary logs are kept aside exactly once");
    let log = std::fs::read_to_string(primary.dir.join("vigil.log")).unwrap();
    assert!(log.contains("re-cloned from"), "{old} says it was re-cloned");
}
