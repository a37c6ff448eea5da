//! `vigil doctor` finds each misconfiguration planted in a real lab.

mod common;

use common::{out, TestLab};
use serde_json::Value;
use vigil::dcs::{Dcs, EtcdDcs};
use vigil::doctor::{DrillRecord, DRILL_KEY};

fn doctor(t: &TestLab) -> (i32, Vec<Value>) {
    let o = t.vigil(&["doctor", "--json"]);
    let v: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(&o)));
    (o.status.code().unwrap(), v)
}

fn has(f: &[Value], check: &str, node: Option<&str>, level: &str) -> bool {
    f.iter().any(|x| x["check"] == check && x["level"] == level && node.is_none_or(|n| x["node"] == n))
}

fn sql(t: &TestLab, node: &str, stmt: &str) {
    let port = t.port(node);
    t.rt.block_on(async {
        let (c, conn) = tokio_postgres::connect(&format!("host=127.0.0.1 port={port} user=postgres"), tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        c.batch_execute(stmt).await.unwrap();
    });
}

fn restart(t: &TestLab, node: &str) {
    let n = &t.lab.nodes[t.index(node)];
    let o = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--", "/usr/lib/postgresql/15/bin/pg_ctl", "-D"])
        .arg(&n.data_dir)
        .arg("-l")
        .arg(n.dir.join("data.log"))
        .args(["-m", "fast", "-w", "-o", &format!("-p {}", t.port(node)), "restart"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", out(&o));
}

#[test]
fn doctor_finds_each_planted_misconfiguration() {
    let mut t = TestLab::up("doctor", |s| s.with_sync = false);
    let put_drill = |t: &TestLab, at_ms: u64| {
        t.rt.block_on(async {
            let dcs = EtcdDcs::new(&t.lab.etcd_config(), &t.lab.cluster, "test", std::time::Duration::from_secs(10)).await.unwrap();
            dcs.put_json(DRILL_KEY, &DrillRecord { at_ms, scenarios: vec!["kill-db".into()], missed: 0 }).await.unwrap();
        })
    };

    // No sync checks, no drill yet: warnings.
    let (code, f) = doctor(&t);
    assert_eq!(code, 1, "{f:?}");
    assert!(has(&f, "sync", None, "warning") && has(&f, "drill", None, "warning"), "{f:?}");
    for n in ["pg1", "pg2", "pg3"] {
        assert!(has(&f, "database", Some(n), "ok") && has(&f, "clock", Some(n), "ok"), "{f:?}");
    }

    // A drill 100 days ago is too old; yesterday's is fine.
    put_drill(&t, vigil::dcs::now_ms() - 100 * 86_400_000);
    let (_, f) = doctor(&t);
    assert!(f.iter().any(|x| x["check"] == "drill" && x["message"].as_str().unwrap().contains("100 days ago")), "{f:?}");
    put_drill(&t, vigil::dcs::now_ms() - 86_400_000);
    assert!(has(&doctor(&t).1, "drill", None, "ok"));

    // Planted while paused, so that the sidecars leave the restarts alone.
    assert!(t.vigil(&["pause"]).status.success());
    sql(&t, "pg2", "ALTER SYSTEM SET wal_log_hints = off");
    restart(&t, "pg2");
    let (_, f) = doctor(&t);
    assert!(has(&f, "wal_log_hints", Some("pg2"), "warning"), "{f:?}");

    sql(&t, "pg3", "ALTER SYSTEM SET hot_standby = off");
    restart(&t, "pg3");
    let (_, f) = doctor(&t);
    assert!(has(&f, "hot_standby", Some("pg3"), "warning"), "{f:?}");

    sql(&t, "pg1", "ALTER SYSTEM SET max_wal_senders = 2");
    restart(&t, "pg1");
    let (code, f) = doctor(&t);
    assert!(has(&f, "max_wal_senders", Some("pg1"), "critical"), "{f:?}");
    assert_eq!(code, 2);

    t.lab.kill_etcd();
    let (code, f) = doctor(&t);
    assert!(has(&f, "etcd", None, "critical"), "{f:?}");
    assert_eq!(code, 2);
}

/// A member whose clock is 5 s ahead (its sidecar's member record says so)
/// and a DNS name published with a 300 s TTL.
#[test]
fn doctor_finds_a_clock_out_of_step_and_a_long_dns_ttl() {
    let t = TestLab::up("doctor-clock", |s| s.with_sync = false);
    // A sidecar API whose member record is stamped 5 s in the future.
    let listener = t.rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let api_port = listener.local_addr().unwrap().port();
    let mut rec = t.state().members["pg3"].clone();
    rec.node = "pg9".into();
    rec.api_url = format!("http://127.0.0.1:{api_port}");
    let fake = rec.clone();
    t.rt.spawn(async move {
        let app = axum::Router::new().route(
            "/member",
            axum::routing::get(move || {
                let mut r = fake.clone();
                async move {
                    r.updated_ms = vigil::dcs::now_ms() + 5_000;
                    axum::Json(r)
                }
            }),
        );
        axum::serve(listener, app).await.unwrap();
    });
    t.rt.block_on(async {
        let dcs = EtcdDcs::new(&t.lab.etcd_config(), &t.lab.cluster, "pg9", std::time::Duration::from_secs(10)).await.unwrap();
        dcs.put_member(&rec).await.unwrap();
        let (_, f) = doctor(&t);
        assert!(has(&f, "clock", Some("pg9"), "warning"), "{f:?}");
        assert!(has(&f, "clock", Some("pg1"), "ok"), "{f:?}");
    });

    // The published name's TTL, from the configuration.
    let key = t.lab.dir.join("tsig.key");
    let gen = std::process::Command::new("tsig-keygen").args(["-a", "hmac-sha256", "vigil-key"]).output().expect("tsig-keygen");
    std::fs::write(&key, &gen.stdout).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let cfg = t.lab.dir.join("doctor-dns.toml");
    let text = std::fs::read_to_string(&t.lab.nodes[0].config).unwrap()
        + &format!(
            "\n[dns]\nserver = \"127.0.0.1:9\"\nzone = \"example.test.\"\nname = \"db.example.test.\"\nttl = \"300s\"\nallow_long_ttl = true\ntimeout = \"300ms\"\ntsig_key_file = \"{}\"\n",
            key.display()
        );
    std::fs::write(&cfg, text).unwrap();
    let o = t.vigil(&["doctor", "--json", "-c", cfg.to_str().unwrap()]);
    let f: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", out(&o)));
    assert!(
        f.iter().any(|x| x["check"] == "dns" && x["level"] == "warning" && x["message"].as_str().unwrap().contains("TTL 300s")),
        "{f:?}"
    );
}

/// MariaDB: each GTID-replication setting a failover depends on.
#[test]
fn doctor_finds_mariadb_misconfigurations() {
    let t = TestLab::up("doctor-mdb", |s| {
        s.engine = vigil::config::EngineKind::Mariadb;
        s.with_sync = false;
    });
    let (_, f) = doctor(&t);
    for n in ["mdb1", "mdb2", "mdb3"] {
        assert!(has(&f, "database", Some(n), "ok"), "{f:?}");
    }
    assert!(t.vigil(&["pause"]).status.success());
    let node = |name: &str| t.lab.nodes[t.index(name)].clone();
    t.lab.root_sql(&node("mdb2"), "SET GLOBAL gtid_strict_mode = OFF; SET GLOBAL slave_net_timeout = 120").unwrap();
    t.lab.root_sql(&node("mdb3"), "SET GLOBAL binlog_format = 'STATEMENT'; SET GLOBAL server_id = 1").unwrap();
    let (code, f) = doctor(&t);
    assert!(has(&f, "gtid_strict_mode", Some("mdb2"), "warning"), "{f:?}");
    assert!(has(&f, "slave_net_timeout", Some("mdb2"), "warning"), "{f:?}");
    assert!(has(&f, "binlog_format", Some("mdb3"), "warning"), "{f:?}");
    assert!(f.iter().any(|x| x["check"] == "server_id" && x["level"] == "critical"), "{f:?}");
    assert_eq!(code, 2);
}
