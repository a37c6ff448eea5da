//! Synchronous mode on a real PostgreSQL 15 lab (`failover.synchronous =
//! true`): no acknowledged write is ever lost, only a replica that provably
//! has every acknowledged commit is promoted automatically, and a promotion
//! that could lose one is refused and explained until an operator forces it.

mod common;

use common::{out, TestLab};
use std::time::{Duration, Instant};
use vigil::workload::{lost_writes, SplitBrainChecker, Writer};

fn sync_lab(name: &str) -> TestLab {
    TestLab::up(name, |s| {
        s.on_primary_crash = "failover".into();
        s.with_sync = false;
        s.synchronous = true;
    })
}

fn traffic(t: &TestLab) -> (Writer, SplitBrainChecker) {
    let eps = t.eps();
    t.rt.block_on(async {
        let w = Writer::start(eps.clone(), "postgres", Duration::from_millis(10)).await.expect("writer");
        (w, SplitBrainChecker::start(eps, "postgres", Duration::from_millis(50)))
    })
}

fn sync_set(t: &TestLab) -> Vec<String> {
    t.state().sync.map(|s| s.standbys).unwrap_or_default()
}

/// The primary's database is killed: a member of the synchronous set takes
/// over and not one acknowledged write is lost.
#[test]
fn a_crash_in_synchronous_mode_loses_no_acknowledged_write() {
    let t = sync_lab("sync-crash");
    t.wait_for("the synchronous set recorded", Duration::from_secs(20), |c| c.sync.as_ref().is_some_and(|s| s.standbys.len() == 2));
    let (writer, checker) = traffic(&t);
    std::thread::sleep(Duration::from_secs(2));
    let killed_at = Instant::now();
    t.lab.kill_db(0).expect("kill pg1");
    let new = t.wait_new_primary("pg1", Duration::from_secs(20));
    eprintln!("new primary {new} after {:?}", killed_at.elapsed());
    t.wait_streaming("pg1", Duration::from_secs(40));
    std::thread::sleep(Duration::from_secs(1));
    let acks = t.rt.block_on(writer.stop());
    let report = t.rt.block_on(checker.stop());
    let lost = t.rt.block_on(lost_writes(&t.eps(), "postgres", &acks)).unwrap();
    eprintln!("acknowledged {}, lost {}", acks.len(), lost.len());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
    assert!(lost.is_empty(), "synchronous mode lost acknowledged writes: {lost:?}");
    let set = sync_set(&t);
    assert!(!set.contains(&new) && set.contains(&"pg1".to_string()), "the new primary's set: {set:?}");
}

/// The primary and a member of the synchronous set die together: the
/// survivor cannot know whether the dead replica acknowledged commits it
/// lacks, so it refuses, says why, and takes over only when forced.
#[test]
fn b_losing_the_primary_and_a_set_member_together_needs_a_human() {
    let mut t = sync_lab("sync-double");
    t.wait_for("the synchronous set recorded", Duration::from_secs(20), |c| c.sync.as_ref().is_some_and(|s| s.standbys.len() == 2));
    let (writer, checker) = traffic(&t);
    std::thread::sleep(Duration::from_secs(1));
    for i in [0, 2] {
        t.lab.kill_sidecar(i);
        t.lab.kill_db(i);
    }
    let c = t.wait_for("pg2 refuses", Duration::from_secs(30), |c| {
        c.leader.is_none() && c.members.get("pg2").and_then(|m| m.refusal.as_ref()).is_some_and(|r| r.contains("synchronous"))
    });
    let why = c.members["pg2"].refusal.clone().unwrap();
    assert!(why.contains("pg3 (in the synchronous set) is unreachable"), "{why}");
    let status = out(&t.vigil(&["status"]));
    assert!(
        status.contains("synchronous set: pg2, pg3") && status.contains("is unreachable"),
        "vigil status shows the set and the refusal: {status}"
    );
    let o = t.vigil(&["failover", "--to", "pg2", "--allow-data-loss", "--wait", "20s"]);
    assert!(o.status.success(), "{}", out(&o));
    t.wait_new_primary("pg1", Duration::from_secs(20));
    let _ = t.rt.block_on(writer.stop());
    let report = t.rt.block_on(checker.stop());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
}

/// A replica that leaves is dropped from the synchronous set once the other
/// member has all the WAL; the next crash then fails over automatically.
#[test]
fn c_a_departed_replica_is_dropped_and_the_next_failover_is_automatic() {
    let mut t = sync_lab("sync-shrink");
    t.wait_for("the synchronous set recorded", Duration::from_secs(20), |c| c.sync.as_ref().is_some_and(|s| s.standbys.len() == 2));
    let (writer, checker) = traffic(&t);
    t.lab.kill_sidecar(2);
    t.lab.kill_db(2);
    t.wait_for("pg3 dropped from the set", Duration::from_secs(40), |c| {
        c.sync.as_ref().is_some_and(|s| s.standbys == vec!["pg2".to_string()])
    });
    std::thread::sleep(Duration::from_secs(1));
    let killed_at = Instant::now();
    t.lab.kill_db(0).expect("kill pg1");
    let new = t.wait_new_primary("pg1", Duration::from_secs(20));
    assert_eq!(new, "pg2");
    eprintln!("automatic failover to {new} after {:?}", killed_at.elapsed());
    std::thread::sleep(Duration::from_secs(1));
    let acks = t.rt.block_on(writer.stop());
    let report = t.rt.block_on(checker.stop());
    let lost = t.rt.block_on(lost_writes(&t.eps(), "postgres", &acks)).unwrap();
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
    assert!(lost.is_empty(), "synchronous mode lost acknowledged writes: {lost:?}");
}
