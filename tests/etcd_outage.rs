//! etcd unreachable: vigil never promotes; the leader keeps serving only
//! while every member confirms it cannot reach etcd either (failsafe), and
//! otherwise fences itself before its lease could have expired; the API
//! keeps answering, and everything recovers when etcd returns.

mod common;

use common::TestLab;
use std::time::{Duration, Instant};
use vigil::config::EngineKind;

fn code(url: &str) -> Option<u16> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { reqwest::Client::new().get(url).timeout(Duration::from_secs(2)).send().await.ok().map(|r| r.status().as_u16()) })
}

/// Waits until the leader's own view (its `/cluster`) lists every member:
/// the failsafe asks the members the leader has read from etcd.
fn leader_sees_everyone(api: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = rt.block_on(async {
            let v: serde_json::Value = reqwest::get(format!("{api}/cluster")).await.ok()?.json().await.ok()?;
            v["members"].as_array().map(|m| m.len())
        });
        if n == Some(3) {
            return;
        }
        assert!(Instant::now() < deadline, "the leader's view lists {n:?} members, not 3");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn outage_lab(name: &str, engine: EngineKind) -> TestLab {
    TestLab::up(name, |s| {
        *s = s.clone().fast();
        s.engine = engine;
        s.with_sync = false;
    })
}

/// The whole etcd cluster is down and every sidecar still answers: nobody
/// can elect a leader, so the primary keeps serving (failsafe) instead of
/// turning a coordination outage into a database outage.
fn every_member_confirming_keeps_the_primary(name: &str, engine: EngineKind) {
    let mut t = outage_lab(name, engine);
    let leader = t.leader().expect("a leader");
    let l = t.index(&leader);
    let api = format!("http://127.0.0.1:{}", t.lab.nodes[l].api_port);
    assert_eq!(code(&format!("{api}/primary")), Some(200));
    leader_sees_everyone(&api);
    let cut = Instant::now();
    t.lab.kill_etcd();
    // Three times the lease (ttl 3s): the primary must accept writes at every poll.
    while cut.elapsed() < Duration::from_secs(9) {
        assert_eq!(t.writable(t.port(&leader)), Some(true), "{leader} stopped accepting writes {:?} into the outage", cut.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(code(&format!("{api}/primary")), Some(200), "HAProxy keeps sending writes to {leader}");
    for n in t.lab.nodes.iter().filter(|n| n.name != leader) {
        assert_eq!(t.writable(n.db_port), Some(false), "replicas stay replicas");
    }
    t.lab.start_etcd().unwrap();
    let c = t.wait_for("a writable leader after etcd returns", Duration::from_secs(30), |c| {
        c.leader.as_ref().is_some_and(|l| c.members.get(&l.node).is_some_and(|m| m.term.is_some()))
    });
    assert_eq!(c.leader.unwrap().node, leader, "the same primary, no failover");
}

#[test]
fn etcd_outage_with_every_member_confirming_keeps_the_primary() {
    every_member_confirming_keeps_the_primary("etcd-failsafe", EngineKind::Postgres);
}

#[test]
fn etcd_outage_with_every_member_confirming_keeps_the_mariadb_primary() {
    every_member_confirming_keeps_the_primary("etcd-failsafe-mdb", EngineKind::Mariadb);
}

/// etcd down and one sidecar silent: the primary cannot prove that nobody
/// elects another leader, so it fences before its lease could expire.
fn without_every_member_fences_the_leader(name: &str, engine: EngineKind) {
    let mut t = outage_lab(name, engine);
    let leader = t.leader().expect("a leader");
    let l = t.index(&leader);
    let silent = (l + 2) % 3;
    let ports: Vec<u16> = t.lab.nodes.iter().map(|n| n.api_port).collect();
    let api = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    assert_eq!(code(&format!("{}/primary", api(l))), Some(200));
    leader_sees_everyone(&api(l));
    t.lab.kill_sidecar(silent);
    let cut = Instant::now();
    t.lab.kill_etcd();
    // ttl 3s, safety margin 1s: the primary must be read-only within ~2s (+ a loop).
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.writable(t.port(&leader)) == Some(true) {
        assert!(Instant::now() < deadline, "{leader} still writable 10s into the etcd outage");
        std::thread::sleep(Duration::from_millis(50));
    }
    let fenced_after = cut.elapsed();
    eprintln!("{leader} read-only {fenced_after:?} after etcd went away (ttl 3s)");
    assert!(fenced_after < Duration::from_secs(3), "fenced only after the lease could have expired: {fenced_after:?}");
    std::thread::sleep(Duration::from_secs(3));
    for i in (0..3).filter(|i| *i != silent) {
        assert_eq!(code(&format!("{}/primary", api(i))), Some(503), "node {i} /primary");
        assert_eq!(code(&format!("{}/liveness", api(i))), Some(200), "node {i} API keeps answering");
        assert_eq!(t.writable(t.lab.nodes[i].db_port), Some(false), "nobody writable without etcd");
    }
    t.lab.start_etcd().unwrap();
    t.lab.start_sidecar(silent).unwrap();
    t.wait_for("a writable leader after etcd returns", Duration::from_secs(30), |c| {
        c.leader.as_ref().is_some_and(|l| c.members.get(&l.node).is_some_and(|m| m.term.is_some()))
    });
}

#[test]
fn etcd_outage_without_every_member_fences_the_leader_and_never_promotes() {
    without_every_member_fences_the_leader("etcd", EngineKind::Postgres);
}

#[test]
fn etcd_outage_without_every_member_fences_the_mariadb_leader_and_never_promotes() {
    without_every_member_fences_the_leader("etcd-mdb", EngineKind::Mariadb);
}

#[test]
fn sidecar_started_without_etcd_serves_503_and_does_nothing() {
    let dir_tmp = tempfile::Builder::new().prefix("vigil-noetcd-").tempdir().unwrap();
    let dir = dir_tmp.path().to_path_buf();
    std::fs::create_dir_all(&dir).unwrap();
    let base = vigil::lab::free_base_port(3);
    let cfg = dir.join("vigil.toml");
    std::fs::write(
        &cfg,
        format!(
            "cluster = \"x\"\nnode = \"n1\"\n[etcd]\nendpoints = [\"http://127.0.0.1:{base}\"]\n[database]\nport = {}\ndata_dir = \"{}/data\"\n[api]\nlisten = \"127.0.0.1:{}\"\n",
            base + 1,
            dir.display(),
            base + 2
        ),
    )
    .unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["run", "-c"])
        .arg(&cfg)
        .stderr(std::fs::File::create(dir.join("vigil.log")).unwrap())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let api = format!("http://127.0.0.1:{}", base + 2);
    let results = (code(&format!("{api}/primary")), code(&format!("{api}/health")), code(&format!("{api}/liveness")));
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.join("vigil.log")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(results, (Some(503), Some(503), Some(200)), "{log}");
    assert!(log.contains("etcd"), "the log says etcd is unreachable: {log}");
    assert!(!log.contains("starting the database"), "{log}");
}
