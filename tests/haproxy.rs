//! HAProxy (Debian's package) with the shipped `contrib/haproxy/haproxy.cfg`
//! follows the primary through a switchover and a crash, and its read port
//! keeps serving replicas.

mod common;

use common::{out, TestLab};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The shipped config with the lab's addresses and two free listen ports.
fn render(t: &TestLab, write_port: u16, read_port: u16) -> String {
    let mut cfg = include_str!("../contrib/haproxy/haproxy.cfg").replace("bind *:5000", &format!("bind 127.0.0.1:{write_port}"));
    cfg = cfg.replace("bind *:5001", &format!("bind 127.0.0.1:{read_port}"));
    for (i, n) in t.lab.nodes.iter().enumerate() {
        let ip = format!("10.0.0.2{}", i + 1);
        cfg = cfg.replace(
            &format!("{ip}:5432 maxconn 100 check addr {ip} port 8008"),
            &format!("127.0.0.1:{} maxconn 100 check addr 127.0.0.1 port {}", n.db_port, n.api_port),
        );
    }
    assert!(!cfg.contains("10.0.0."), "every address rewritten");
    cfg
}

/// Which server a new connection through `port` reaches, and whether it is
/// a replica (over TLS in a TLS lab: HAProxy passes it through).
fn through(t: &TestLab, port: u16) -> Option<(u16, bool)> {
    let tls = t.lab.db_tls();
    t.rt.block_on(async {
        let mut conf = tokio_postgres::Config::new();
        conf.host("127.0.0.1").port(port).user("postgres").connect_timeout(Duration::from_secs(2)).ssl_mode(tls.pg_ssl_mode("127.0.0.1"));
        let (c, conn) = tokio::time::timeout(Duration::from_secs(3), conf.connect(tls.pg_connector().ok()?)).await.ok()?.ok()?;
        tokio::spawn(conn);
        let row = c.query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[]).await.ok()?;
        Some((row.get::<_, i32>(0) as u16, row.get::<_, bool>(1)))
    })
}

/// A replica through the read port, once HAProxy's checks have settled:
/// six new connections in a row reach a replica other than `not`. (HAProxy
/// starts every server up; the primary is marked down after `fall` failed
/// checks, so the time this takes depends on the config, not on vigil.)
fn wait_replica(t: &TestLab, port: u16, not: u16) {
    let start = Instant::now();
    let mut in_a_row = 0;
    while in_a_row < 6 {
        let (p, replica) = through(t, port).expect("read port answers");
        in_a_row = if replica && p != not { in_a_row + 1 } else { 0 };
        assert!(start.elapsed() < Duration::from_secs(15), "read port reached {p} (replica: {replica}) after {:?}", start.elapsed());
        if in_a_row == 0 {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn wait_route(t: &TestLab, port: u16, want: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if through(t, port).map(|r| r.0) == Some(want) {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "HAProxy did not route port {port} to {want} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts HAProxy on `cfg`; stopped (by its handle) when the guard drops.
fn start_haproxy(t: &TestLab, cfg: &str) -> common::Stop {
    let cfg_path = t.lab.dir.join("haproxy.cfg");
    std::fs::write(&cfg_path, cfg).unwrap();
    let check = Command::new("haproxy").arg("-c").arg("-f").arg(&cfg_path).output().expect("haproxy installed");
    assert!(check.status.success(), "config check: {}", out(&check));
    let log = std::fs::File::create(t.lab.dir.join("haproxy.log")).unwrap();
    common::Stop(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg_path)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The sidecars serve HTTPS (`vigil lab up --tls`): HAProxy checks them with
/// `check-ssl` against the lab's CA and still follows the primary.
#[test]
fn haproxy_follows_the_primary_with_https_checks() {
    let t = TestLab::up("haproxy-tls", |s| {
        s.tls = true;
        s.with_sync = false;
        s.on_primary_crash = "failover".into();
    });
    let base = vigil::lab::free_base_port(3);
    let (wp, rp) = (base, base + 1);
    let ca = t.lab.ca_file();
    let cfg = render(&t, wp, rp).replace(
        "default-server inter 500ms fall 2 rise 1",
        &format!("default-server inter 500ms fall 2 rise 1 check-ssl verify required ca-file {}", ca.display()),
    );
    let _haproxy = start_haproxy(&t, &cfg);
    let pg1 = t.port("pg1");
    wait_route(&t, wp, pg1, Duration::from_secs(10));
    wait_replica(&t, rp, pg1);
    t.lab.kill_db(0).unwrap();
    let new = t.wait_new_primary("pg1", Duration::from_secs(20));
    let took = wait_route(&t, wp, t.port(&new), Duration::from_secs(10));
    eprintln!("write port reached {new} {took:?} after it was elected (HTTPS checks)");
}

#[test]
fn haproxy_follows_the_primary() {
    let t = TestLab::up("haproxy", |s| s.on_primary_crash = "failover".into());
    let base = vigil::lab::free_base_port(3);
    let (wp, rp) = (base, base + 1);
    let _haproxy = start_haproxy(&t, &render(&t, wp, rp));

    let (pg1, pg2) = (t.port("pg1"), t.port("pg2"));
    wait_route(&t, wp, pg1, Duration::from_secs(10));
    wait_replica(&t, rp, pg1);

    let o = t.vigil(&["switchover", "--to", "pg2"]);
    assert!(o.status.success(), "{}", out(&o));
    let took = wait_route(&t, wp, pg2, Duration::from_secs(10));
    eprintln!("write port reached pg2 {took:?} after the switchover completed");
    t.wait_streaming("pg1", Duration::from_secs(30));
    wait_replica(&t, rp, pg2);

    // Any sidecar, replica or not, tells who the primary is.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let who: serde_json::Value = rt
        .block_on(async {
            reqwest::get(format!("http://127.0.0.1:{}/cluster/primary", t.lab.nodes[2].api_port)).await.unwrap().json().await
        })
        .unwrap();
    assert_eq!(who["primary"], "pg2", "{who}");
    assert_eq!(who["port"], pg2, "{who}");
    assert!(who["term"].as_i64().is_some() && who["since"].as_str().is_some(), "{who}");

    // A crash of the new primary: HAProxy moves to whoever takes over.
    t.lab.kill_db(t.index("pg2")).unwrap();
    let new = t.wait_new_primary("pg2", Duration::from_secs(20));
    let took = wait_route(&t, wp, t.port(&new), Duration::from_secs(10));
    eprintln!("write port reached {new} {took:?} after it was elected");
}

/// HAProxy configured as Patroni's documentation configures it
/// (`option httpchk OPTIONS /master` and `OPTIONS /replica`, `http-check
/// expect status 200`, `on-marked-down shutdown-sessions`, checks on the
/// REST API port), only the addresses, ports and the check interval made
/// the lab's: vigil's sidecars answer those checks as Patroni's would.
#[test]
fn patronis_documented_haproxy_checks_work_unchanged() {
    let t = TestLab::up("haproxy-patroni", |s| s.with_sync = false);
    let base = vigil::lab::free_base_port(2);
    let (wp, rp) = (base, base + 1);
    let listen = |name: &str, port: u16, check: &str| {
        let mut l = format!(
            "listen {name}\n    bind 127.0.0.1:{port}\n    option httpchk OPTIONS {check}\n    http-check expect status 200\n    \
             default-server inter 500ms fall 3 rise 2 on-marked-down shutdown-sessions\n"
        );
        for n in &t.lab.nodes {
            l += &format!("    server postgresql_127.0.0.1_{p} 127.0.0.1:{p} maxconn 100 check port {a}\n", p = n.db_port, a = n.api_port);
        }
        l
    };
    let cfg = format!(
        "global\n    maxconn 100\n\ndefaults\n    log global\n    mode tcp\n    retries 2\n    timeout client 30m\n    timeout connect 4s\n    \
         timeout server 30m\n    timeout check 5s\n\n{}\n{}",
        listen("master", wp, "/master"),
        listen("replicas", rp, "/replica"),
    );
    let _haproxy = start_haproxy(&t, &cfg);
    let pg1 = t.port("pg1");
    wait_route(&t, wp, pg1, Duration::from_secs(10));
    wait_replica(&t, rp, pg1);
}
