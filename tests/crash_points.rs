//! A sidecar dies at the worst moments of a failover (fault points built
//! with the `fault-injection` feature, which scripts/test.sh enables): right
//! after taking the leader key, right after promoting, in the middle of a
//! rejoin. Its restart (as systemd would do it) and the other sidecars bring
//! the cluster back to exactly one writable primary with every other node
//! streaming, and no two databases accept writes at one poll meanwhile.

mod common;

use common::TestLab;
use std::time::{Duration, Instant};
use vigil::config::EngineKind;
use vigil::workload::SplitBrainChecker;

fn lab(name: &str) -> TestLab {
    lab_of(name, EngineKind::Postgres)
}

fn lab_of(name: &str, engine: EngineKind) -> TestLab {
    TestLab::up(name, |s| {
        *s = s.clone().fast();
        s.engine = engine;
        s.with_sync = false;
        s.on_primary_crash = "failover".into();
    })
}

/// Restarts sidecar `i` with the fault point armed, and waits until it is a
/// candidate again (a restarted sidecar must see `rise` good checks and
/// streaming first; killing the primary before that tests something else).
///
/// The member record must be one the restarted sidecar wrote: the killed
/// one's last record says "eligible" too, and a test that read it killed
/// the primary before the restarted replicas had streamed (they then, and
/// rightly, refused to take the key).
fn arm(t: &mut TestLab, i: usize, point: &str) {
    t.lab.kill_sidecar(i);
    let restarted_ms = vigil::dcs::now_ms();
    t.lab.start_sidecar_with(i, &[("VIGIL_FAULT", point)]).unwrap();
    t.lab.wait_healthy(Duration::from_secs(30)).unwrap();
    let name = t.lab.nodes[i].name.clone();
    t.wait_for(&format!("{name} eligible"), Duration::from_secs(30), |c| {
        c.members.get(&name).is_some_and(|m| m.eligible && m.updated_ms > restarted_ms)
    });
}

/// Waits until one of the sidecars `of` exits; returns its index and status.
fn wait_exit(t: &mut TestLab, of: &[usize]) -> (usize, i32) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        for &i in of {
            if let Some(code) = t.lab.sidecar_exited(i) {
                return (i, code);
            }
        }
        assert!(Instant::now() < deadline, "the armed sidecar never reached its fault point");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn converged(t: &TestLab) -> String {
    let c = t.lab.wait_healthy(Duration::from_secs(60)).expect("one writable primary, every other node streaming");
    c.leader.unwrap().node
}

fn checker(t: &TestLab) -> SplitBrainChecker {
    let (db, eps) = (t.db(), t.eps());
    t.rt.block_on(async { SplitBrainChecker::start_db(db, eps, Duration::from_millis(50)) })
}

/// Both replicas are armed, so whichever wins the race dies at the point.
fn after_taking_the_key_before_promoting(name: &str, engine: EngineKind) {
    let mut t = lab_of(name, engine);
    assert_eq!(t.leader().as_deref(), Some(t.lab.nodes[0].name.as_str()));
    arm(&mut t, 1, "after_acquire");
    arm(&mut t, 2, "after_acquire");
    let check = checker(&t);
    t.lab.kill_db(0).expect("kill the primary");
    let (winner, code) = wait_exit(&mut t, &[1, 2]);
    assert_eq!(code, 86);
    let name = t.lab.nodes[winner].name.clone();
    assert_eq!(t.leader().as_deref(), Some(name.as_str()), "{name} holds the key it took, unpromoted");
    // Restarted as systemd would: it finishes the promotion it started.
    t.lab.start_sidecar(winner).unwrap();
    let leader = converged(&t);
    eprintln!("converged on {leader}");
    let report = t.rt.block_on(check.stop());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
}

#[test]
fn killed_after_taking_the_key_before_promoting() {
    after_taking_the_key_before_promoting("crash-acquire", EngineKind::Postgres);
}

#[test]
fn mariadb_killed_after_taking_the_key_before_promoting() {
    after_taking_the_key_before_promoting("crash-acquire-mdb", EngineKind::Mariadb);
}

fn after_promoting_before_publishing(name: &str, engine: EngineKind) {
    let mut t = lab_of(name, engine);
    assert_eq!(t.leader().as_deref(), Some(t.lab.nodes[0].name.as_str()));
    arm(&mut t, 1, "after_promote");
    arm(&mut t, 2, "after_promote");
    let check = checker(&t);
    t.lab.kill_db(0).expect("kill the primary");
    let (winner, code) = wait_exit(&mut t, &[1, 2]);
    assert_eq!(code, 86);
    let name = t.lab.nodes[winner].name.clone();
    // The winner is writable with no sidecar: its lease runs out (ttl 3s),
    // and the other replica must not promote while it accepts writes.
    std::thread::sleep(Duration::from_secs(6));
    let other = 3 - winner;
    assert!(t.lab.sidecar_exited(other).is_none(), "the other replica did not even try: it saw a writable peer");
    t.lab.start_sidecar(winner).unwrap();
    let leader = converged(&t);
    assert_eq!(leader, name, "the promoted node keeps the role");
    let report = t.rt.block_on(check.stop());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
}

#[test]
fn killed_after_promoting_before_publishing() {
    after_promoting_before_publishing("crash-promote", EngineKind::Postgres);
}

#[test]
fn mariadb_killed_after_promoting_before_publishing() {
    after_promoting_before_publishing("crash-promote-mdb", EngineKind::Mariadb);
}

#[test]
fn killed_in_the_middle_of_a_rejoin() {
    let mut t = lab("crash-rejoin");
    arm(&mut t, 0, "during_rejoin");
    let check = checker(&t);
    t.lab.kill_db(0).expect("kill pg1");
    let new = t.wait_new_primary("pg1", Duration::from_secs(20));
    assert_eq!(wait_exit(&mut t, &[0]), (0, 86));
    t.lab.start_sidecar(0).unwrap();
    let leader = converged(&t);
    assert_eq!(leader, new);
    let st = t.state();
    assert_eq!(st.members["pg1"].role, Some(vigil::core::DbRole::Replica));
    let report = t.rt.block_on(check.stop());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
}
