//! `vigil doctor` finds each misconfiguration planted in a real lab.

mod common;

use common::{out, TestLab};
use serde_json::Value;
use vigil::dcs::EtcdDcs;
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
            let dcs = EtcdDcs::new(
                &[t.lab.etcd_url()],
                "/vigil",
                &t.lab.cluster,
                "test",
                std::time::Duration::from_secs(10),
                std::time::Duration::from_secs(1),
            )
            .await
            .unwrap();
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
