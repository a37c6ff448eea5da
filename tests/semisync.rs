//! Synchronous mode on a real MariaDB 10.11 lab: semi-synchronous
//! replication managed by vigil. The primary waits for an acknowledgement
//! (AFTER_SYNC, no timeout fallback); only replicas in the leader's
//! synchronous set acknowledge; a crash loses no acknowledged write; a
//! replica whose sidecar died but whose server still replicates (and may
//! still acknowledge) is kept in the set until it is really gone.

mod common;

use common::TestLab;
use std::time::{Duration, Instant};
use vigil::workload::{lost_writes_db, SplitBrainChecker, Writer};

fn semisync_lab(name: &str) -> TestLab {
    TestLab::up(name, |s| {
        s.engine = vigil::config::EngineKind::Mariadb;
        s.on_primary_crash = "failover".into();
        s.with_sync = false;
        s.synchronous = true;
    })
}

fn traffic(t: &TestLab) -> (Writer, SplitBrainChecker) {
    let db = t.db();
    t.rt.block_on(async {
        let w = Writer::start_db(db.clone(), t.eps(), Duration::from_millis(10)).await.expect("writer");
        (w, SplitBrainChecker::start_db(db, t.eps(), Duration::from_millis(50)))
    })
}

fn sync_set(t: &TestLab) -> Vec<String> {
    t.state().sync.map(|s| s.standbys).unwrap_or_default()
}

/// A global status or variable of one node's server.
fn server_value(t: &TestLab, node: &str, sql: &str) -> String {
    let n = &t.lab.nodes[t.index(node)];
    t.lab.root_sql(n, sql).unwrap_or_default().split_whitespace().last().unwrap_or_default().to_string()
}

/// Waits until the primary counts `clients` acknowledging replicas.
fn wait_semisync_clients(t: &TestLab, primary: &str, clients: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let on = server_value(t, primary, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_status'");
        let n = server_value(t, primary, "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_master_clients'");
        if on == "ON" && n == clients.to_string() {
            return;
        }
        assert!(Instant::now() < deadline, "{primary}: semi-sync status {on:?} with {n:?} clients, want ON with {clients}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_crash_with_semisync_loses_no_acknowledged_write() {
    let t = semisync_lab("semisync-crash");
    let first = t.leader().expect("leader");
    t.wait_for("the synchronous set recorded", Duration::from_secs(30), |c| c.sync.as_ref().is_some_and(|s| s.standbys.len() == 2));
    wait_semisync_clients(&t, &first, 2);
    for n in t.lab.nodes.iter().filter(|n| n.name != first) {
        assert_eq!(server_value(&t, &n.name, "SELECT @@global.rpl_semi_sync_slave_enabled"), "1", "{} acknowledges", n.name);
    }
    let (writer, checker) = traffic(&t);
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    t.lab.kill_db(t.index(&first)).expect("kill the primary's mariadbd");
    let new = t.wait_new_primary(&first, Duration::from_secs(30));
    eprintln!("new primary {new} after {:?}", killed.elapsed());
    t.wait_streaming(&first, Duration::from_secs(60));
    // The new primary names the others and they acknowledge it.
    t.wait_for("the new set", Duration::from_secs(30), |c| {
        c.sync.as_ref().is_some_and(|s| s.leader == new && s.standbys.len() == 2 && !s.standbys.contains(&new))
    });
    wait_semisync_clients(&t, &new, 2);
    assert_eq!(server_value(&t, &new, "SELECT @@global.rpl_semi_sync_slave_enabled"), "0", "the new primary stopped acknowledging");
    std::thread::sleep(Duration::from_secs(1));
    let acks = t.rt.block_on(writer.stop());
    let report = t.rt.block_on(checker.stop());
    let lost = t.rt.block_on(lost_writes_db(&t.db(), &t.eps(), &acks)).unwrap();
    eprintln!("acknowledged {}, lost {}", acks.len(), lost.len());
    assert!(acks.len() > 100, "the writer barely wrote: {}", acks.len());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
    assert!(lost.is_empty(), "synchronous mode lost acknowledged writes: {lost:?}");
}

/// A replica's sidecar dies but its server keeps replicating, so it may
/// still acknowledge commits: it stays in the set. Once its server is gone
/// too (and the other member has everything), it is dropped, and the next
/// crash fails over automatically without losing anything.
#[test]
fn b_a_departed_replica_leaves_the_set_only_when_it_cannot_acknowledge() {
    let mut t = semisync_lab("semisync-shrink");
    let first = t.leader().expect("leader");
    t.wait_for("the synchronous set recorded", Duration::from_secs(30), |c| c.sync.as_ref().is_some_and(|s| s.standbys.len() == 2));
    wait_semisync_clients(&t, &first, 2);
    let others: Vec<String> = t.lab.nodes.iter().map(|n| n.name.clone()).filter(|n| *n != first).collect();
    let (stays, goes) = (others[0].clone(), others[1].clone());
    let (writer, checker) = traffic(&t);
    let gi = t.index(&goes);
    t.lab.kill_sidecar(gi);
    t.wait_for("its member key expires", Duration::from_secs(30), |c| !c.members.contains_key(&goes));
    // Two more ttls: its server is still connected, so it must stay.
    std::thread::sleep(Duration::from_secs(20));
    assert!(sync_set(&t).contains(&goes), "{goes} left the set while its server could still acknowledge: {:?}", sync_set(&t));
    t.lab.kill_db(gi);
    t.wait_for("the departed replica dropped", Duration::from_secs(40), |c| {
        c.sync.as_ref().is_some_and(|s| s.standbys == vec![stays.clone()])
    });
    std::thread::sleep(Duration::from_secs(1));
    let killed = Instant::now();
    t.lab.kill_db(t.index(&first)).expect("kill the primary");
    let new = t.wait_new_primary(&first, Duration::from_secs(30));
    assert_eq!(new, stays);
    eprintln!("automatic failover to {new} after {:?}", killed.elapsed());
    t.wait_streaming(&first, Duration::from_secs(60));
    std::thread::sleep(Duration::from_secs(1));
    let acks = t.rt.block_on(writer.stop());
    let report = t.rt.block_on(checker.stop());
    let lost = t.rt.block_on(lost_writes_db(&t.db(), &t.eps(), &acks)).unwrap();
    eprintln!("acknowledged {}, lost {}", acks.len(), lost.len());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
    assert!(lost.is_empty(), "synchronous mode lost acknowledged writes: {lost:?}");
}
