//! What etcd holds cannot stop the cluster, on the real lab (etcd 3.4,
//! PostgreSQL 15, three sidecars):
//! - garbage or impersonating values are named and ignored key by key,
//!   and a failover still works while they are there;
//! - a sidecar restarted with another ttl moves the leader key it adopts
//!   onto a lease of the configured ttl (the key no longer outlives the
//!   node by the old ttl);
//! - the API: the members' token exactly (no longer one), checked before the
//!   body is read, for the failsafe question and a fresh look too; a flood
//!   of fresh looks changes no one's candidacy; silent connections are
//!   closed and the API answers again.

mod common;

use common::TestLab;
use std::time::{Duration, Instant};

fn etcd(t: &TestLab) -> etcd_client::Client {
    t.rt.block_on(etcd_client::Client::connect([t.lab.etcd_url()], None)).expect("connect to the lab's etcd")
}

fn put(t: &TestLab, c: &mut etcd_client::Client, key: &str, value: &str) {
    t.rt.block_on(c.put(format!("/vigil/lab/{key}"), value, None)).expect("put");
}

fn del(t: &TestLab, c: &mut etcd_client::Client, key: &str) {
    t.rt.block_on(c.delete(format!("/vigil/lab/{key}"), None)).expect("delete");
}

#[test]
fn bad_values_in_etcd_are_ignored_alone_and_named() {
    // Hooks in both forms write what they are given; the hostile names put
    // in etcd below must never reach them, let alone run as shell code.
    let mut t = TestLab::up("bad-values", |s| {
        *s = s.clone().fast();
        s.with_sync = false;
        let (argv_out, shell_out) = (s.dir.join("hook-argv.out"), s.dir.join("hook-shell.out"));
        s.extra_config = format!(
            "\n[hooks]\npost_failover = [\"sh\", \"-c\", \"printf '%s\\\\n' \\\"$@\\\" >> {}\", \"hook\", \"{{old_primary}}\", \"{{new_primary}}\", \"{{reason}}\"]\n\
             on_role_change = \"echo {{event}} {{old_primary}} {{new_primary}} >> {}\"\n",
            argv_out.display(),
            shell_out.display()
        );
    });
    let leader = t.leader().expect("a leader");
    let term = t.state().term;
    let mut c = etcd(&t);
    put(&t, &mut c, "pause", "{not json");
    put(&t, &mut c, "switchover", r#"{"to": 3}"#);
    put(&t, &mut c, "sync", r#"{"leader": "x{reason};touch CANARY;", "standbys": []}"#);
    put(
        &t,
        &mut c,
        "incident",
        r#"{"node": "x{reason};touch CANARY;", "reason": "$(touch CANARY)", "failure_seen_ms": 1, "released_ms": 2}"#,
    );
    // A record under another node's name: it must not speak for pg1.
    let mut fake = serde_json::to_value(t.state().members.get(&leader).expect("leader record")).unwrap();
    fake["db_host"] = serde_json::json!("127.0.0.1\nprimary_conninfo = 'host=evil'");
    put(&t, &mut c, "members/pg9", &fake.to_string());

    // Three ttls (3 s each): the primary keeps its key and its term, every
    // member key stays, and the database takes writes at every poll.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(9) {
        let st = t.state();
        assert_eq!(st.leader.as_ref().map(|l| l.node.as_str()), Some(leader.as_str()), "the leader changed");
        assert_eq!(st.term, term, "the term changed");
        assert_eq!(st.members.len(), 3, "member keys lapsed: {:?}", st.members.keys().collect::<Vec<_>>());
        assert_eq!(t.writable(t.port(&leader)), Some(true));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Named, key by key, in what vigil reads and in `vigil status`.
    let mut bad: Vec<String> = t.state().bad_values.iter().map(|b| b.key.clone()).collect();
    bad.sort();
    assert_eq!(bad, vec!["incident", "members/pg9", "pause", "switchover", "sync"]);
    let status = common::out(&t.vigil(&["status"]));
    for key in ["incident", "pause", "switchover", "sync", "members/pg9"] {
        assert!(status.contains(&format!("IGNORED etcd key {key}:")), "vigil status does not name {key}:\n{status}");
    }
    // A failover still works while the values are there.
    let l = t.index(&leader);
    t.lab.kill_sidecar(l);
    t.lab.kill_db(l);
    let new = t.wait_new_primary(&leader, Duration::from_secs(30));
    eprintln!("new primary {new} with garbage in etcd");
    // The new primary's hooks ran with plain names; no value ran as code.
    let argv_out = t.lab.dir.join("hook-argv.out");
    let got = t.wait_file(&argv_out, Duration::from_secs(30));
    let args: Vec<&str> = got.lines().take(2).collect();
    assert_eq!(args, vec![leader.as_str(), new.as_str()], "the argv hook's arguments: {got:?}");
    let shell = t.wait_file(&t.lab.dir.join("hook-shell.out"), Duration::from_secs(30));
    assert!(!shell.contains("CANARY") && !got.contains("CANARY"), "a hostile value reached a hook: {shell:?} {got:?}");
    for dir in [std::env::current_dir().unwrap(), t.lab.dir.clone()] {
        assert!(!dir.join("CANARY").exists() && !dir.join("CANARY;").exists(), "a value ran as shell code in {}", dir.display());
    }
    for key in ["incident", "pause", "switchover", "sync", "members/pg9"] {
        del(&t, &mut c, key);
    }
    t.lab.start_sidecar(l).expect("restart the old primary's sidecar");
    t.wait_streaming(&leader, Duration::from_secs(60));
    t.wait_for("the bad values gone from the view", Duration::from_secs(10), |c| c.bad_values.is_empty());
}

#[test]
fn an_adopted_leader_lease_moves_to_the_configured_ttl() {
    let mut t = TestLab::up("adopt-ttl", |s| s.with_sync = false);
    let leader = t.leader().expect("a leader");
    let l = t.index(&leader);
    let st = t.state();
    let (term, old_lease) = (st.term, st.leader_lease.expect("a lease"));
    let mut c = etcd(&t);
    let granted = |c: &mut etcd_client::Client, id: i64| t.rt.block_on(c.lease_time_to_live(id, None)).map(|r| r.granted_ttl()).ok();
    assert_eq!(granted(&mut c, old_lease), Some(10));

    // Restart the leader's sidecar with ttl 3 s (the fast profile).
    let cfg = t.lab.nodes[l].config.clone();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let fast = text
        .replace("loop = \"1s\"", "loop = \"500ms\"")
        .replace("ttl = \"10s\"", "ttl = \"3s\"")
        .replace("retry = \"2s\"", "retry = \"1s\"")
        .replace("safety_margin = \"2s\"", "safety_margin = \"1s\"");
    assert_ne!(fast, text, "the lab config's timing lines changed; update this test");
    std::fs::write(&cfg, fast).unwrap();
    t.lab.kill_sidecar(l);
    t.lab.start_sidecar(l).unwrap();

    let st = t.wait_for("the leader key on a new lease", Duration::from_secs(20), |s| {
        s.leader.as_ref().is_some_and(|x| x.node == leader) && s.leader_lease.is_some_and(|id| id != old_lease)
    });
    assert_eq!(st.term, term, "the key kept its term (same key, new lease)");
    assert_eq!(granted(&mut c, st.leader_lease.unwrap()), Some(3), "the new lease has the configured ttl");
    assert_eq!(t.writable(t.port(&leader)), Some(true));
}

/// The hardening issue's reproduction: as `postgres`, a link from the data
/// directory's `standby.signal` to a root-owned file, then a switchover
/// (which writes `standby.signal` as root). The link is replaced, its
/// target keeps its content, owner and mode, and the old primary rejoins.
#[test]
fn a_link_planted_in_the_data_directory_is_replaced_not_followed() {
    use std::os::unix::fs::MetadataExt;
    let t = TestLab::up("planted-link", |s| s.with_sync = false);
    let leader = t.leader().expect("a leader");
    let l = t.index(&leader);
    let outside = tempfile::tempdir().unwrap();
    let target = outside.path().join("root-owned");
    std::fs::write(&target, "precious").unwrap();
    let before = std::fs::metadata(&target).unwrap();
    let link = t.lab.nodes[l].data_dir.join("standby.signal");
    let o =
        std::process::Command::new("runuser").args(["-u", "postgres", "--", "ln", "-s"]).arg(&target).arg(&link).output().expect("runuser");
    assert!(o.status.success(), "plant the link as postgres: {}", common::out(&o));
    let to = t.lab.nodes.iter().map(|n| n.name.clone()).find(|n| *n != leader).unwrap();
    let o = t.vigil(&["switchover", "--to", &to]);
    assert!(o.status.success(), "switchover: {}", common::out(&o));
    t.wait_for("the switchover", Duration::from_secs(30), |c| c.leader.as_ref().is_some_and(|x| x.node == to));
    t.wait_streaming(&leader, Duration::from_secs(60));
    let after = std::fs::metadata(&target).unwrap();
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious", "written through the link");
    assert_eq!((after.uid(), after.gid(), after.mode()), (before.uid(), before.gid(), before.mode()), "the target changed hands");
    assert!(!std::fs::symlink_metadata(&link).map(|m| m.file_type().is_symlink()).unwrap_or(false), "the link is still there");
}

/// One HTTP/1.1 request on a new connection: (status, body).
fn http(port: u16, method: &str, path: &str, token: Option<&[u8]>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to the API");
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n", body.len()).into_bytes();
    if let Some(t) = token {
        req.extend_from_slice(b"Authorization: Bearer ");
        req.extend_from_slice(t);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"\r\n");
    req.extend_from_slice(body.as_bytes());
    c.write_all(&req).unwrap();
    let mut out = String::new();
    let _ = c.read_to_string(&mut out);
    let status = out.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, out.split("\r\n\r\n").nth(1).unwrap_or("").to_string())
}

#[test]
fn the_api_needs_the_members_token_and_stays_up_under_abuse() {
    let t = TestLab::up("api-abuse", |s| s.with_sync = false);
    let leader = t.leader().expect("a leader");
    let replica = t.lab.nodes.iter().find(|n| n.name != leader).unwrap();
    let (lport, rport) = (t.lab.nodes[t.index(&leader)].api_port, replica.api_port);
    let token = std::fs::read_to_string(t.lab.dir.join("api-token")).unwrap().trim().as_bytes().to_vec();

    // The right token followed by more bytes, a prefix, another token, none:
    // 401, and the body is not even parsed (a malformed one is not a 400).
    // The right token passes authentication (412: no such candidate).
    let target = r#"{"candidate":"pg9"}"#;
    for extra in [1usize, 255, 256, 512] {
        let mut longer = token.clone();
        longer.extend(std::iter::repeat_n(b'x', extra));
        assert_eq!(http(lport, "POST", "/switchover", Some(&longer), target).0, 401, "the token plus {extra} bytes");
    }
    assert_eq!(http(lport, "POST", "/switchover", Some(&token[..token.len() - 1]), target).0, 401);
    assert_eq!(http(lport, "POST", "/switchover", Some(b"lab-0"), "{not json").0, 401);
    assert_eq!(http(lport, "POST", "/switchover", None, target).0, 401);
    assert_eq!(http(lport, "POST", "/switchover", Some(&token), "{not json").0, 400);
    let (code, body) = http(lport, "POST", "/switchover", Some(&token), target);
    assert_eq!(code, 412, "{body}");
    assert_eq!(t.leader().as_deref(), Some(leader.as_str()));

    // The failsafe question: members only (a "yes" keeps a primary writing
    // without etcd). With the token, this member reaches etcd: 409.
    let ask = format!(r#"{{"leader":"{leader}","term":1}}"#);
    assert_eq!(http(rport, "POST", "/failsafe", None, &ask).0, 401);
    assert_eq!(http(rport, "POST", "/failsafe", Some(&token), &ask).0, 409);
    assert_eq!(http(rport, "POST", "/failsafe", Some(&token), r#"{"leader":"a b"}"#).0, 400);

    // A flood of fresh looks, with and without the token: nobody's
    // candidacy changes, the replica keeps streaming.
    t.wait_for("the replica streaming and a candidate", Duration::from_secs(60), |c| {
        c.members.get(&replica.name).is_some_and(|m| m.eligible && m.streaming)
    });
    std::thread::scope(|s| {
        for i in 0..8 {
            let tok = (i % 2 == 0).then_some(token.as_slice());
            s.spawn(move || {
                for _ in 0..50 {
                    assert_eq!(http(rport, "GET", "/member?fresh=1", tok, "").0, 200);
                }
            });
        }
    });
    let st = t.state();
    let m = st.members.get(&replica.name).expect("the replica's record");
    assert!(m.eligible && m.streaming, "after the flood: {m:?}");

    // 300 connections that never send a request: those above the cap are
    // closed at once, the rest once the header deadline passes; then the
    // API answers again.
    let idle: Vec<std::net::TcpStream> = (0..300).filter_map(|_| std::net::TcpStream::connect(("127.0.0.1", rport)).ok()).collect();
    for mut c in idle {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = [0u8; 64];
        match c.read(&mut buf) {
            Ok(0) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            other => panic!("a silent connection was kept open: {other:?}"),
        }
    }
    assert_eq!(http(rport, "GET", "/replica", None, "").0, 200);
}
