//! What etcd holds cannot stop the cluster, on the real lab (etcd 3.4,
//! PostgreSQL 15, three sidecars):
//! - garbage or impersonating values are named and ignored key by key,
//!   and a failover still works while they are there;
//! - a sidecar restarted with another ttl moves the leader key it adopts
//!   onto a lease of the configured ttl (the key no longer outlives the
//!   node by the old ttl).

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
    let mut t = TestLab::up("bad-values", |s| {
        *s = s.clone().fast();
        s.with_sync = false;
    });
    let leader = t.leader().expect("a leader");
    let term = t.state().term;
    let mut c = etcd(&t);
    put(&t, &mut c, "pause", "{not json");
    put(&t, &mut c, "switchover", r#"{"to": 3}"#);
    put(&t, &mut c, "sync", r#"{"leader": "x{reason};touch CANARY;", "standbys": []}"#);
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
    assert_eq!(bad, vec!["members/pg9", "pause", "switchover", "sync"]);
    let status = common::out(&t.vigil(&["status"]));
    for key in ["pause", "switchover", "sync", "members/pg9"] {
        assert!(status.contains(&format!("IGNORED etcd key {key}:")), "vigil status does not name {key}:\n{status}");
    }
    // A failover still works while the values are there.
    let l = t.index(&leader);
    t.lab.kill_sidecar(l);
    t.lab.kill_db(l);
    let new = t.wait_new_primary(&leader, Duration::from_secs(30));
    eprintln!("new primary {new} with garbage in etcd");
    for key in ["pause", "switchover", "sync", "members/pg9"] {
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
