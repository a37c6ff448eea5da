//! Network partitions of the primary's node, made with nftables on the
//! loopback addresses of the lab (each node reaches etcd through its own
//! address 127.0.1.N; the sidecar reaches its own database through the
//! unix socket, as on a real partitioned host). A checker polls every
//! database and fails the test if two accept writes at one poll.

mod common;

use common::{Cut, TestLab};
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
    })
}

fn checker(t: &TestLab) -> SplitBrainChecker {
    let (db, eps) = (t.db(), t.eps());
    t.rt.block_on(async { SplitBrainChecker::start_db(db, eps, Duration::from_millis(50)) })
}

/// Becomes read-only: seconds after `since`, polled every 50 ms.
fn read_only_after(t: &TestLab, node: &str, since: Instant, limit: Duration) -> Duration {
    let port = t.port(node);
    loop {
        if t.writable(port) != Some(true) {
            return since.elapsed();
        }
        assert!(since.elapsed() < limit, "{node} still writable after {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The primary loses etcd only; its peers still reach etcd, so they refuse
/// its failsafe question: it fences itself before its lease can expire (ttl
/// 3 s, safety margin 1 s), and a replica takes over after the lease.
fn cut_off_from_etcd_only(name: &str, engine: EngineKind) {
    let t = lab_of(name, engine);
    let old = t.leader().expect("a leader");
    let check = checker(&t);
    let cut = Cut::new(name.replace('-', "_").as_str());
    let at = Instant::now();
    cut.drop_port(Some(&t.lab.node_etcd_addr(t.index(&old))), t.lab.etcd_port);
    let fenced = read_only_after(&t, &old, at, Duration::from_secs(10));
    let new = t.wait_new_primary(&old, Duration::from_secs(20));
    let switched = at.elapsed();
    eprintln!("{old} read-only after {fenced:?}; {new} writable leader after {switched:?}");
    assert!(fenced < Duration::from_secs(3), "fenced at {fenced:?}, after the lease could have expired");
    drop(cut);
    t.wait_streaming(&old, Duration::from_secs(40));
    let report = t.rt.block_on(check.stop());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
}

#[test]
fn primary_cut_off_from_etcd_only_fences_and_a_replica_takes_over() {
    cut_off_from_etcd_only("part-etcd", EngineKind::Postgres);
}

#[test]
fn mariadb_primary_cut_off_from_etcd_only_fences_and_a_replica_takes_over() {
    cut_off_from_etcd_only("part-etcd-mdb", EngineKind::Mariadb);
}

/// The primary loses its peers only (its database and API ports dropped)
/// but keeps etcd: it keeps the key and stays the only writable node; the
/// replicas wait (they cannot stream) and nobody is promoted.
#[test]
fn primary_cut_off_from_its_peers_only_keeps_leading() {
    let t = lab("part-peers");
    let check = checker(&t);
    let cut = Cut::new("peers");
    cut.drop_port(None, t.lab.nodes[0].db_port);
    cut.drop_port(None, t.lab.nodes[0].api_port);
    std::thread::sleep(Duration::from_secs(10));
    let st = t.state();
    assert_eq!(st.leader.as_ref().map(|l| l.node.as_str()), Some("pg1"), "pg1 keeps the key while it reaches etcd");
    assert!(st.members.get("pg2").is_some_and(|m| !m.streaming), "pg2 cannot stream from pg1");
    drop(cut);
    t.wait_streaming("pg2", Duration::from_secs(30));
    assert_eq!(t.leader().as_deref(), Some("pg1"));
    let report = t.rt.block_on(check.stop());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
}

/// The primary loses everything (etcd, peers, clients): fenced before the
/// lease expires, a replica takes over, and the node rejoins afterwards.
#[test]
fn primary_cut_off_from_everything_is_replaced() {
    let t = lab("part-all");
    let check = checker(&t);
    let cut = Cut::new("all");
    let at = Instant::now();
    cut.drop_port(None, t.lab.nodes[0].db_port);
    cut.drop_port(None, t.lab.nodes[0].api_port);
    cut.drop_port(Some(&t.lab.node_etcd_addr(0)), t.lab.etcd_port);
    let new = t.wait_new_primary("pg1", Duration::from_secs(20));
    eprintln!("{new} writable leader after {:?}", at.elapsed());
    // pg1's own sidecar reaches it through the socket: it was fenced.
    let sock = t.lab.dir.join("run");
    let ro = t.rt.block_on(async {
        let conf = format!("host={} port={} user=postgres", sock.display(), t.port("pg1"));
        let (c, conn) = tokio_postgres::connect(&conf, tokio_postgres::NoTls).await.ok()?;
        tokio::spawn(conn);
        c.query_one("SELECT pg_is_in_recovery()", &[]).await.ok().map(|r| r.get::<_, bool>(0))
    });
    assert_ne!(ro, Some(false), "the cut-off pg1 must not be writable");
    drop(cut);
    t.wait_streaming("pg1", Duration::from_secs(40));
    let report = t.rt.block_on(check.stop());
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
}
