//! Publishing the primary: DNS through a real BIND9 (RFC 2136 + TSIG), and
//! the pre_promote hook's veto.

mod common;

use common::{out, Stop, TestLab};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use vigil::publish::dns::{DnsTarget, TsigKey};

/// BIND9 serving `example.test` on 127.0.0.1:`port`, updatable with a key
/// from `tsig-keygen`. Returns the server and the key file.
fn start_bind(dir: &Path, port: u16) -> (Stop, std::path::PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("tsig.key");
    let gen = Command::new("tsig-keygen").args(["-a", "hmac-sha256", "vigil-key"]).output().expect("tsig-keygen (bind9-utils)");
    std::fs::write(&key, &gen.stdout).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::write(
        dir.join("db.example.test"),
        "$TTL 300\n@ IN SOA ns.example.test. admin.example.test. ( 1 3600 600 86400 60 )\n@ IN NS ns.example.test.\nns IN A 127.0.0.1\n",
    )
    .unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("named.conf"),
        format!(
            "options {{ directory \"{d}\"; listen-on port {port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; pid-file \"{d}/named.pid\"; \
             recursion no; dnssec-validation no; }};\ncontrols {{ }};\ninclude \"{d}/tsig.key\";\n\
             zone \"example.test\" {{ type primary; file \"{d}/db.example.test\"; allow-update {{ key \"vigil-key\"; }}; }};\n"
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("named.log")).unwrap();
    let child = Command::new("named")
        .args(["-g", "-n", "1", "-c"])
        .arg(dir.join("named.conf"))
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("named (bind9)");
    let stop = Stop(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while dig(port, "ns.example.test", "A").is_empty() {
        assert!(Instant::now() < deadline, "named did not start: {}", std::fs::read_to_string(dir.join("named.log")).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(100));
    }
    (stop, key)
}

/// `dig +noall +answer` lines.
fn dig(port: u16, name: &str, rtype: &str) -> Vec<String> {
    let o = Command::new("dig")
        .args(["@127.0.0.1", "-p", &port.to_string(), "+noall", "+answer", "+time=1", "+tries=1", name, rtype])
        .output()
        .expect("dig");
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn dns_follows_the_primary_through_a_failover() {
    let mut t = TestLab::up("dns", |s| s.on_primary_crash = "failover".into());
    let port = vigil::lab::free_base_port(2);
    let (_named, key) = start_bind(&t.lab.dir.join("bind"), port);
    let names: Vec<String> = t.lab.nodes.iter().map(|n| n.name.clone()).collect();
    t.reconfigure(|i| {
        format!(
            "\n[dns]\nserver = \"127.0.0.1:{port}\"\nzone = \"example.test.\"\nname = \"db.example.test.\"\nttl = \"30s\"\naddress = \"127.0.0.{}\"\ntsig_key_file = \"{}\"\n",
            11 + i,
            key.display()
        )
    });
    let addr = |node: &str| format!("127.0.0.{}", 11 + names.iter().position(|n| n == node).unwrap());
    let wait_dns = |want: &str| -> (Duration, String) {
        let start = Instant::now();
        loop {
            let a = dig(port, "db.example.test", "A");
            if a.len() == 1 && a[0].ends_with(want) {
                return (start.elapsed(), a[0].clone());
            }
            assert!(start.elapsed() < Duration::from_secs(20), "DNS never named {want}: {a:?}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let old = t.leader().unwrap();
    wait_dns(&addr(&old));
    t.lab.kill_db(t.index(&old)).unwrap();
    let killed = Instant::now();
    let new = t.wait_new_primary(&old, Duration::from_secs(20));
    let (_, line) = wait_dns(&addr(&new));
    eprintln!("dig after the failover ({:?} after the crash): {line}", killed.elapsed());
    let ttl: u32 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    assert!(ttl <= 60, "TTL {ttl}");
    let term = t.state().term.unwrap();
    let txt = dig(port, "_vigil.db.example.test", "TXT");
    assert!(txt.iter().any(|l| l.contains(&format!("term={term}")) && l.contains(&new)), "{txt:?}");
    let h = out(&t.vigil(&["history"]));
    assert!(h.contains("DNS db.example.test. published"), "{h}");

    // Prometheus's own linter judges every sidecar's /metrics, after a
    // failover (so the history, lag and DNS series are all there).
    for n in &t.lab.nodes {
        let url = format!("http://127.0.0.1:{}/metrics", n.api_port);
        let text = t.rt.block_on(async { reqwest::get(&url).await?.text().await }).unwrap();
        assert!(text.contains("# TYPE vigil_promotions_total counter"), "{text}");
        let mut promtool = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("promtool (package prometheus)");
        std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), text.as_bytes()).unwrap();
        let o = promtool.wait_with_output().unwrap();
        assert!(o.status.success(), "promtool check metrics on {url}: {}{}\n{text}", out_text(&o.stdout), out_text(&o.stderr));
    }
}

fn out_text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_wrong_tsig_key_is_reported_clearly() {
    let dir_tmp = tempfile::Builder::new().prefix("vigil-bind-").tempdir().unwrap();
    let dir = dir_tmp.path().to_path_buf();
    let port = vigil::lab::free_base_port(2);
    let (_named, key) = start_bind(&dir, port);
    let mut k = TsigKey::load(&key).unwrap();
    let target = |k: TsigKey| DnsTarget {
        server: format!("127.0.0.1:{port}").parse().unwrap(),
        zone: "example.test.".into(),
        name: "db.example.test.".into(),
        ttl: 30,
        key: k,
        txt_term: true,
        timeout: Duration::from_secs(2),
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(target(k.clone()).publish_verified("127.0.0.77", 5, "n1")).expect("the right key works");
    assert!(dig(port, "db.example.test", "A")[0].ends_with("127.0.0.77"));
    k.secret = b"not the secret at all, not at all".to_vec();
    let e = rt.block_on(target(k.clone()).publish("127.0.0.78", 6, "n2")).unwrap_err();
    eprintln!("wrong key: {e:#}");
    assert!(format!("{e:#}").contains("TSIG signature"), "{e:#}");
    k.name = "other-key".into();
    let e = rt.block_on(target(k).publish("127.0.0.78", 6, "n2")).unwrap_err();
    assert!(format!("{e:#}").contains("TSIG") || format!("{e:#}").contains("NOTAUTH"), "{e:#}");
    // A stale primary never overwrites a newer term.
    let right = TsigKey::load(&key).unwrap();
    let p = rt.block_on(target(right).publish("127.0.0.79", 4, "old")).unwrap();
    assert_eq!(p, vigil::publish::dns::Published::NewerTermOwnsIt(5));
    assert!(dig(port, "db.example.test", "A")[0].ends_with("127.0.0.77"));
    drop(_named);
    let _ = std::fs::remove_dir_all(&dir);
}

/// pre_promote vetoes on pg2: pg2 gives the key back, and pg3 takes over;
/// the veto is in the history record.
#[test]
fn pre_promote_veto_hands_over_to_another_candidate() {
    let t = TestLab::up("veto", |s| {
        s.on_primary_crash = "failover".into();
        s.extra_config = "\n[hooks]\npre_promote = \"echo fencing check on $VIGIL_NODE for term {term}; test \\\"$VIGIL_NODE\\\" != pg2\"\ntimeout = \"5s\"\n".into();
    });
    // Both replicas must be candidates before the primary dies: a replica
    // still counting its `rise` checks stands aside, and pg3 then wins
    // without pg2 ever trying (the veto untested; seen in CI).
    t.wait_for("pg2 and pg3 eligible", Duration::from_secs(30), |c| {
        ["pg2", "pg3"].iter().all(|n| c.members.get(*n).is_some_and(|m| m.eligible))
    });
    t.lab.kill_db(0).unwrap();
    let new = t.wait_new_primary("pg1", Duration::from_secs(30));
    assert_eq!(new, "pg3", "the vetoed pg2 must not lead");
    let h = out(&t.vigil(&["history"]));
    assert!(h.contains("pre_promote hook vetoed promotion of pg2"), "{h}");
    let log = std::fs::read_to_string(t.lab.nodes[1].dir.join("vigil.log")).unwrap();
    assert!(log.contains("fencing check on pg2"), "hook output is in the log");
}

/// A tiny web server on `addr` answering `/health` with `code`.
fn web(rt: &tokio::runtime::Runtime, addr: &str, code: u16) -> tokio::task::JoinHandle<()> {
    let app =
        axum::Router::new().route("/health", axum::routing::get(move || async move { axum::http::StatusCode::from_u16(code).unwrap() }));
    let l = rt.block_on(tokio::net::TcpListener::bind(addr)).unwrap();
    rt.spawn(async move { axum::serve(l, app).await.unwrap() })
}

/// The user's web-server case: three targets in order; the first stops,
/// the name moves past an unhealthy backup to the third after `fall`
/// failed checks; the first comes back and the name returns after `rise`.
#[test]
fn service_dns_failover_and_failback() {
    let mut t = TestLab::up("service", |_| {});
    let port = vigil::lab::free_base_port(2);
    let (_named, key) = start_bind(&t.lab.dir.join("bind"), port);
    let web_port = vigil::lab::free_base_port(2);
    let targets = ["127.0.0.21", "127.0.0.22", "127.0.0.23"];
    let s1 = web(&t.rt, &format!("{}:{web_port}", targets[0]), 200);
    let _s2 = web(&t.rt, &format!("{}:{web_port}", targets[1]), 503);
    let _s3 = web(&t.rt, &format!("{}:{web_port}", targets[2]), 200);
    let k = key.display().to_string();
    t.reconfigure(|_| {
        format!(
            "\n[dns]\nserver = \"127.0.0.1:{port}\"\nzone = \"example.test.\"\nname = \"db.example.test.\"\ntsig_key_file = \"{k}\"\n\n\
             [[service]]\nname = \"www\"\ndns_name = \"www.example.test.\"\nttl = \"20s\"\ntargets = [\"127.0.0.21\", \"127.0.0.22\", \"127.0.0.23\"]\n\
             check = {{ kind = \"http\", port = {web_port}, path = \"/health\", expect = 200 }}\ninterval = \"200ms\"\ntimeout = \"150ms\"\nfall = 3\nrise = 2\n"
        )
    });
    let wait = |want: &str| -> Duration {
        let start = Instant::now();
        loop {
            let a = dig(port, "www.example.test", "A");
            if a.len() == 1 && a[0].ends_with(want) {
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(20), "www never pointed at {want}: {a:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    wait(targets[0]);
    s1.abort();
    let moved = wait(targets[2]);
    eprintln!("first target stopped: www moved to {} after {moved:?} (fall 3 x 200ms, skipping the unhealthy backup)", targets[2]);
    let _s1 = web(&t.rt, &format!("{}:{web_port}", targets[0]), 200);
    let back = wait(targets[0]);
    eprintln!("first target back: www returned after {back:?} (rise 2 x 200ms)");
    let owners: Vec<_> = (0..3)
        .filter(|i| std::fs::read_to_string(t.lab.nodes[*i].dir.join("vigil.log")).unwrap().contains("checking this service"))
        .collect();
    assert_eq!(owners.len(), 1, "exactly one sidecar checks the service");
}

/// A DNS server that does not answer: the failover completes anyway, and
/// the failed publication is in the history record while retries go on.
#[test]
fn dns_server_down_does_not_block_the_failover() {
    let mut t = TestLab::up("dnsdown", |s| s.on_primary_crash = "failover".into());
    use std::os::unix::fs::PermissionsExt;
    let key = t.lab.dir.join("tsig.key");
    let gen = Command::new("tsig-keygen").args(["-a", "hmac-sha256", "vigil-key"]).output().unwrap();
    std::fs::write(&key, &gen.stdout).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let dead = vigil::lab::free_base_port(2);
    t.reconfigure(|_| format!("\n[dns]\nserver = \"127.0.0.1:{dead}\"\nzone = \"example.test.\"\nname = \"db.example.test.\"\ntimeout = \"500ms\"\ntsig_key_file = \"{}\"\n", key.display()));
    let old = t.leader().unwrap();
    let killed = Instant::now();
    t.lab.kill_db(t.index(&old)).unwrap();
    let new = t.wait_new_primary(&old, Duration::from_secs(20));
    eprintln!("{new} leads {:?} after the crash with the DNS server down", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let h = out(&t.vigil(&["history"]));
        if h.contains("publication failed") {
            break;
        }
        assert!(Instant::now() < deadline, "no failed publication recorded: {h}");
        std::thread::sleep(Duration::from_millis(300));
    }
}
