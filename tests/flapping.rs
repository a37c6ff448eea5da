//! A primary whose database keeps dying does not cause a ping-pong of
//! failovers: after one automatic failover, `hold_down` keeps the new
//! primary in place (it restarts its database instead of giving the key
//! away), and nothing is lost meanwhile.

mod common;

use common::{out, TestLab};
use std::time::Duration;
use vigil::config::EngineKind;
use vigil::workload::{lost_writes_db, SplitBrainChecker, Writer};

fn flapping_primary(name: &str, engine: EngineKind) {
    let t = TestLab::up(name, |s| {
        *s = s.clone().fast();
        s.engine = engine;
        s.with_sync = false;
        s.on_primary_crash = "failover".into();
        s.hold_down = "60s".into();
    });
    let (db, eps) = (t.db(), t.eps());
    let (writer, checker) = t.rt.block_on(async {
        let w = Writer::start_db(db.clone(), eps.clone(), Duration::from_millis(20)).await.expect("writer");
        (w, SplitBrainChecker::start_db(db, eps, Duration::from_millis(50)))
    });
    let old = t.leader().expect("a leader");
    // The replicas must be candidates (rise, streaming) before the first crash.
    t.wait_for("every replica eligible", Duration::from_secs(30), |c| c.members.values().all(|m| m.eligible));
    t.lab.kill_db(t.index(&old)).expect("kill the primary");
    let first = t.wait_new_primary(&old, Duration::from_secs(20));
    t.lab.wait_healthy(Duration::from_secs(60)).unwrap();
    let i = t.index(&first);
    for round in 1..=3 {
        t.lab.kill_db(i).unwrap_or_else(|| panic!("kill {first}, round {round}"));
        std::thread::sleep(Duration::from_secs(3));
        let c = t.wait_for(&format!("{first} writable again (round {round})"), Duration::from_secs(30), |c| {
            c.leader.as_ref().is_some_and(|l| l.node == first) && c.members.get(&first).is_some_and(|m| m.term.is_some())
        });
        assert_eq!(c.leader.unwrap().node, first, "round {round}: the key moved");
    }
    let acks = t.rt.block_on(writer.stop());
    let report = t.rt.block_on(checker.stop());
    let lost = t.rt.block_on(lost_writes_db(&t.db(), &t.eps(), &acks)).unwrap();
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
    let h: serde_json::Value = serde_json::from_str(&out(&t.vigil(&["history", "--json"]))).unwrap_or_default();
    let failovers = h.as_array().map(|a| a.iter().filter(|r| r["kind"] == "failover").count()).unwrap_or(0);
    eprintln!("failovers recorded: {failovers}; writes acknowledged {}, lost {}", acks.len(), lost.len());
    assert_eq!(failovers, 1, "one automatic failover, then restarts in place");
    // Restarts in place recover everything the crashed server had committed.
    let after_first: Vec<i64> = lost.clone();
    assert!(after_first.len() <= 5, "restarts in place lose nothing beyond the first failover's async window: {after_first:?}");
}

#[test]
fn a_flapping_primary_does_not_ping_pong() {
    flapping_primary("flap", EngineKind::Postgres);
}

#[test]
fn a_flapping_mariadb_primary_does_not_ping_pong() {
    flapping_primary("flap-mdb", EngineKind::Mariadb);
}
