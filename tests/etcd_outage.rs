//! etcd unreachable: vigil never promotes; the leader keeps serving only
//! while every member confirms it cannot reach etcd either (failsafe), and
//! otherwise fences itself before its lease could have expired; the API
//! keeps answering, and everything recovers when etcd returns.

mod common;

use common::TestLab;
use std::time::{Duration, Instant};

fn code(url: &str) -> Option<u16> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async { reqwest::Client::new().get(url).timeout(Duration::from_secs(2)).send().await.ok().map(|r| r.status().as_u16()) })
}

fn writable(t: &TestLab, port: u16) -> Option<bool> {
    t.rt.block_on(async {
        let conf = format!("host=127.0.0.1 port={port} user=postgres connect_timeout=1");
        let (c, conn) = tokio_postgres::connect(&conf, tokio_postgres::NoTls).await.ok()?;
        tokio::spawn(conn);
        let r = c.query_one("SELECT NOT pg_is_in_recovery()", &[]).await.ok()?;
        Some(r.get(0))
    })
}

/// The whole etcd cluster is down and every sidecar still answers: nobody
/// can elect a leader, so the primary keeps serving (failsafe) instead of
/// turning a coordination outage into a database outage.
#[test]
fn etcd_outage_with_every_member_confirming_keeps_the_primary() {
    let mut t = TestLab::up("etcd-failsafe", |s| *s = s.clone().fast());
    let api = format!("http://127.0.0.1:{}", t.lab.nodes[0].api_port);
    assert_eq!(code(&format!("{api}/primary")), Some(200));
    let cut = Instant::now();
    t.lab.kill_etcd();
    // Three times the lease (ttl 3s): pg1 must accept writes at every poll.
    while cut.elapsed() < Duration::from_secs(9) {
        assert_eq!(writable(&t, t.port("pg1")), Some(true), "pg1 stopped accepting writes {:?} into the outage", cut.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(code(&format!("{api}/primary")), Some(200), "HAProxy keeps sending writes to pg1");
    for i in 1..3 {
        assert_eq!(writable(&t, t.lab.nodes[i].db_port), Some(false), "replicas stay replicas");
    }
    t.lab.start_etcd().unwrap();
    let c = t.wait_for("a writable leader after etcd returns", Duration::from_secs(30), |c| {
        c.leader.as_ref().is_some_and(|l| c.members.get(&l.node).is_some_and(|m| m.term.is_some()))
    });
    assert_eq!(c.leader.unwrap().node, "pg1", "the same primary, no failover");
}

/// etcd down and one sidecar silent: the primary cannot prove that nobody
/// elects another leader, so it fences before its lease could expire.
#[test]
fn etcd_outage_without_every_member_fences_the_leader_and_never_promotes() {
    let mut t = TestLab::up("etcd", |s| *s = s.clone().fast());
    let ports: Vec<u16> = t.lab.nodes.iter().map(|n| n.api_port).collect();
    let api = |i: usize| format!("http://127.0.0.1:{}", ports[i]);
    assert_eq!(code(&format!("{}/primary", api(0))), Some(200));
    t.lab.kill_sidecar(2);
    let cut = Instant::now();
    t.lab.kill_etcd();
    // ttl 3s, safety margin 1s: pg1 must be read-only within ~2s (+ a loop).
    let deadline = Instant::now() + Duration::from_secs(10);
    while writable(&t, t.port("pg1")) == Some(true) {
        assert!(Instant::now() < deadline, "pg1 still writable 10s into the etcd outage");
        std::thread::sleep(Duration::from_millis(50));
    }
    let fenced_after = cut.elapsed();
    eprintln!("pg1 read-only {fenced_after:?} after etcd went away (ttl 3s)");
    assert!(fenced_after < Duration::from_secs(3), "fenced only after the lease could have expired: {fenced_after:?}");
    std::thread::sleep(Duration::from_secs(3));
    for i in 0..2 {
        assert_eq!(code(&format!("{}/primary", api(i))), Some(503), "node {i} /primary");
        assert_eq!(code(&format!("{}/liveness", api(i))), Some(200), "node {i} API keeps answering");
        assert_eq!(writable(&t, t.lab.nodes[i].db_port), Some(false), "nobody writable without etcd");
    }
    t.lab.start_etcd().unwrap();
    t.lab.start_sidecar(2).unwrap();
    t.wait_for("a writable leader after etcd returns", Duration::from_secs(30), |c| {
        c.leader.as_ref().is_some_and(|l| c.members.get(&l.node).is_some_and(|m| m.term.is_some()))
    });
}

#[test]
fn sidecar_started_without_etcd_serves_503_and_does_nothing() {
    let dir = std::env::temp_dir().join(format!("vigil-noetcd-{}", std::process::id()));
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
