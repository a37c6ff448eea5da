//! TLS everywhere (`vigil lab up --tls`): etcd with client certificates,
//! databases that refuse TCP without TLS, HTTPS sidecar APIs. A failover
//! must work through all of it: the new primary is elected over TLS to
//! etcd, the replicas re-point with TLS settings the server accepts, the
//! old primary rejoins (pg_rewind / GTID) over TLS, nothing acknowledged
//! is lost, and a client without TLS gets nowhere.

mod common;

use common::{out, TestLab};
use std::time::{Duration, Instant};
use vigil::dcs::{Dcs, EtcdDcs};
use vigil::workload::{lost_writes_db, SplitBrainChecker, Writer};

fn tls_lab(name: &str, engine: vigil::config::EngineKind) -> TestLab {
    TestLab::up(name, |s| {
        s.tls = true;
        s.engine = engine;
        s.on_primary_crash = "failover".into();
        s.with_sync = false;
        // Zero acknowledged writes lost is a guarantee only in synchronous
        // mode: asynchronously, a write acknowledged just before the crash
        // and not yet sent is lost by design (it failed here once).
        s.synchronous = true;
    })
}

/// Every way in without TLS (or without a client certificate) is refused.
fn plain_clients_are_refused(t: &TestLab) {
    let lab = &t.lab;
    // etcd: the CA alone is not enough, a client certificate is required.
    let mut no_cert = lab.etcd_config();
    no_cert.cert_file = None;
    no_cert.key_file = None;
    let r = t.rt.block_on(async { EtcdDcs::new(&no_cert, &lab.cluster, "probe", Duration::from_secs(10)).await?.load().await });
    assert!(r.is_err(), "etcd answered a client without a certificate");
    // The API answers HTTPS only, and its certificate checks out against the CA.
    let api = lab.api_url(0);
    assert!(api.starts_with("https://"), "{api}");
    let plain = t.rt.block_on(async {
        vigil::tls::http_client(Some(Duration::from_secs(2))).get(api.replace("https", "http") + "/health").send().await
    });
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true), "the API answered plain HTTP");
    let verified = vigil::tls::api_client(Some(&lab.ca_file()), Duration::from_secs(2)).unwrap();
    let cluster: serde_json::Value = t.rt.block_on(async { verified.get(format!("{api}/cluster")).send().await?.json().await }).unwrap();
    assert!(cluster["leader"].is_string(), "{cluster}");
    // The database: a session without TLS fails at once.
    let plain_db = match t.lab.workload_db() {
        vigil::workload::Db::Postgres { user, password, .. } => vigil::workload::Db::Postgres { user, password, tls: Default::default() },
        vigil::workload::Db::MySql { user, password, .. } => vigil::workload::Db::MySql { user, password, tls: Default::default() },
    };
    let r = t.rt.block_on(Writer::start_db(plain_db, t.eps(), Duration::from_millis(10)));
    assert!(r.is_err(), "the database accepted a session without TLS");
}

fn failover_over_tls(t: &TestLab, first: &str) -> String {
    let db = t.lab.workload_db();
    let (writer, checker) = t.rt.block_on(async {
        let w = Writer::start_db(db.clone(), t.eps(), Duration::from_millis(10)).await.expect("writer over TLS");
        (w, SplitBrainChecker::start_db(db.clone(), t.eps(), Duration::from_millis(50)))
    });
    std::thread::sleep(Duration::from_secs(2));
    let killed = Instant::now();
    t.lab.kill_db(t.index(first)).expect("kill the primary's database");
    let new = t.wait_new_primary(first, Duration::from_secs(30));
    eprintln!("new primary {new} after {:?}", killed.elapsed());
    t.wait_streaming(first, Duration::from_secs(60));
    t.lab.wait_healthy(Duration::from_secs(60)).expect("every node streaming over TLS");
    std::thread::sleep(Duration::from_secs(1));
    let acks = t.rt.block_on(writer.stop());
    let report = t.rt.block_on(checker.stop());
    let lost = t.rt.block_on(lost_writes_db(&db, &t.eps(), &acks)).unwrap();
    eprintln!("acknowledged {}, lost {}", acks.len(), lost.len());
    assert!(acks.len() > 100, "the writer barely wrote: {}", acks.len());
    assert!(lost.is_empty(), "lost acknowledged writes: {lost:?}");
    assert!(report.violations.is_empty(), "two writable nodes: {:?}", report.violations);
    new
}

/// PostgreSQL: the lab's pg_hba.conf rejects TCP without TLS, so streaming
/// at all proves the replicas' `primary_conninfo` (and pg_rewind's source)
/// carry `sslmode=verify-full`; pg_stat_ssl confirms it.
#[test]
fn postgres_fails_over_with_tls_everywhere() {
    let t = tls_lab("tls-pg", vigil::config::EngineKind::Postgres);
    plain_clients_are_refused(&t);
    let status = t.vigil(&["status"]);
    assert!(status.status.success(), "vigil status through TLS etcd: {}", out(&status));
    // The doctor reaches every database and every sidecar over TLS.
    let doctor = out(&t.vigil(&["doctor"]));
    for bad in ["cannot connect", "TLS settings", "does not answer"] {
        assert!(!doctor.contains(bad), "vigil doctor over TLS: {doctor}");
    }
    let new = failover_over_tls(&t, "pg1");
    let port = t.port(&new);
    let rows = std::process::Command::new("psql")
        .args(["-h", &t.lab.socket_dir().display().to_string(), "-p", &port.to_string(), "-U", "postgres", "-Atc"])
        .arg("SELECT r.application_name || ':' || s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) ORDER BY 1")
        .output()
        .unwrap();
    let rows = String::from_utf8_lossy(&rows.stdout).trim().to_string();
    let mut want: Vec<String> = ["pg1", "pg2", "pg3"].iter().filter(|n| **n != new).map(|n| format!("{n}:true")).collect();
    want.sort();
    assert_eq!(rows.lines().map(str::to_string).collect::<Vec<_>>(), want, "replication connections on {new}");
    let conninfo = std::fs::read_to_string(t.lab.nodes[0].data_dir.join("postgresql.auto.conf")).unwrap();
    assert!(conninfo.contains("sslmode=verify-full"), "pg1's primary_conninfo: {conninfo}");
    // Replication over TCP needs the password here: it is read from the
    // passfile, never written into primary_conninfo (nor ALTER SYSTEM text).
    assert!(conninfo.contains("passfile=") && !conninfo.contains("password="), "pg1's primary_conninfo: {conninfo}");
    let pass = t.lab.nodes[0].data_dir.join(vigil::engine::postgres::PASSFILE);
    let meta = std::fs::metadata(&pass).expect("the passfile");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777, 0o600);
    for n in &t.lab.nodes {
        let log = std::fs::read_to_string(n.dir.join("data.log")).unwrap_or_default();
        let secret = std::fs::read_to_string(t.lab.dir.join("replication-password")).unwrap();
        assert!(!log.contains(secret.trim()), "the replication password is in {}'s server log", n.name);
    }
}

/// MariaDB with `require_secure_transport`: the replicas re-point with
/// `MASTER_SSL=1` and the server certificate verified.
#[test]
fn mariadb_fails_over_with_tls_everywhere() {
    let t = tls_lab("tls-mdb", vigil::config::EngineKind::Mariadb);
    plain_clients_are_refused(&t);
    let first = t.leader().expect("a leader");
    let new = failover_over_tls(&t, &first);
    for n in t.lab.nodes.iter().filter(|n| n.name != new) {
        let o = std::process::Command::new("mariadb")
            .arg(format!("--socket={}", t.lab.mariadb_socket(n).display()))
            .args(["-uroot", "-e", "SHOW SLAVE STATUS\\G"])
            .output()
            .unwrap();
        let s = String::from_utf8_lossy(&o.stdout);
        for want in ["Master_SSL_Allowed: Yes", "Master_SSL_Verify_Server_Cert: Yes", "Slave_IO_Running: Yes"] {
            assert!(s.contains(want), "{}: missing {want:?} in\n{s}", n.name);
        }
    }
}
