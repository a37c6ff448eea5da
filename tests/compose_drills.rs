//! The docker-compose lab, started for real and drilled across containers.
//!
//! `scripts/compose-lab.sh up` installs Docker when it is missing, starts
//! dockerd when it is not running, builds the base image offline, builds
//! the lab's images from Debian packages, the database nodes installing
//! vigil's own package made from the binary this test was built with
//! (`scripts/package-deb.sh`), and waits for a leader and two streaming
//! replicas. Then,
//! one after another, on the PostgreSQL cluster (synchronous mode):
//!
//! - `kill`: the primary's container is killed (database and sidecar: a
//!   lost node), then started again;
//! - `pause`: the primary's container is frozen (`docker pause`), then
//!   resumed once another node is primary;
//! - `cut-primary`: the primary's container is disconnected from both
//!   networks (cut from etcd, its peers and its clients), then connected
//!   again;
//! - `cut-replica`: a replica is disconnected from the lab network (cut
//!   from the primary, its peers and the clients; it still reaches etcd):
//!   no failover may follow, and it streams again once connected.
//!
//! During each, three writers insert a row every 50 ms (1 s timeout), each
//! finding the primary its own way for every new connection: `GET
//! /primary` on the sidecars, HAProxy's primary port, and the DNS record at
//! BIND (asked anew each time, no cache). A checker polls every node for
//! writability every 50 ms through the ports published on the host. Each
//! drill reports detection (the leader key seen gone, from the history
//! record in etcd), switch (the checker's first poll at which another node
//! accepted writes), the client-view recovery of each writer (fault to the
//! first write acknowledged on a new connection), the longest stretch
//! without an acknowledged write, the acknowledged writes lost, the polls
//! with two writable nodes, and the time until the old node streams again. The test fails (never skips)
//! when the lab does not come up, when a write acknowledged is lost, when
//! two nodes accept writes at one poll, or when a node does not come back.
//! The lab is removed at the end, and dockerd stopped if the script
//! started it. About 5 minutes on two cores.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use vigil::clock::now_ms;
use vigil::workload::{lost_writes_db, Db, Discovery, Endpoint, Lane, SplitBrainChecker, Writer};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn out(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

const NODES: [&str; 3] = ["pg1", "pg2", "pg3"];
const BIND: &str = "172.28.0.53:53";
const HAPROXY_PRIMARY: u16 = 15000;

/// pgN's address on the lab network (`default`) and on the etcd network.
fn lab_ip(node: &str) -> String {
    format!("172.28.0.1{}", &node[2..])
}
fn dcs_ip(node: &str) -> String {
    format!("172.29.0.1{}", &node[2..])
}

/// The lab, up; removed (with its volumes, and the dockerd the script
/// started, if it did) when dropped.
struct ComposeLab {
    rt: tokio::runtime::Runtime,
}

impl ComposeLab {
    fn script(args: &[&str]) -> Output {
        // The nodes install the Debian package made from this test's binary.
        Command::new("bash")
            .arg(root().join("scripts/compose-lab.sh"))
            .args(args)
            .env("VIGIL_BINARY", env!("CARGO_BIN_EXE_vigil"))
            .stdin(Stdio::null())
            .output()
            .expect("bash")
    }

    fn up() -> ComposeLab {
        // A lab left behind by an interrupted run would be reused with its
        // old data: start from nothing.
        let _ = Self::script(&["down"]);
        let t0 = Instant::now();
        let o = Self::script(&["up"]);
        eprintln!("{}", out(&o));
        assert!(o.status.success(), "the compose lab did not come up (scripts/compose-lab.sh up)");
        eprintln!("compose lab up in {:.0}s", t0.elapsed().as_secs_f64());
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        ComposeLab { rt }
    }

    fn compose(&self, args: &[&str]) -> Output {
        let mut a = vec!["compose"];
        a.extend_from_slice(args);
        Self::script(&a)
    }

    fn docker(&self, args: &[&str]) {
        let o = Command::new("docker").args(args).stdin(Stdio::null()).output().expect("docker");
        assert!(o.status.success(), "docker {}: {}", args.join(" "), out(&o));
    }

    fn container(&self, node: &str) -> String {
        let o = self.compose(&["ps", "-q", node]);
        let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
        assert!(!id.is_empty(), "no container for {node}: {}", out(&o));
        id
    }

    /// `vigil status --json`, asked inside the first node not in `avoid`.
    fn status(&self, avoid: &[&str]) -> Option<Value> {
        let node = NODES.iter().find(|n| !avoid.contains(n))?;
        let o = self.compose(&["exec", "-T", node, "vigil", "status", "--json"]);
        serde_json::from_slice(&o.stdout).ok()
    }

    /// Waits until a leader accepts writes and both other nodes stream
    /// from it; returns the leader.
    fn wait_healthy(&self, limit: Duration) -> String {
        let t0 = Instant::now();
        loop {
            if let Some(s) = self.status(&[]) {
                let leader = s["leader"].as_str().unwrap_or("").to_string();
                let members = s["members"].as_array().cloned().unwrap_or_default();
                let ok = !leader.is_empty()
                    && members.iter().any(|m| m["node"] == leader.as_str() && m["role"] == "primary")
                    && members.iter().filter(|m| m["node"] != leader.as_str() && m["streaming"] == true).count() == 2;
                if ok {
                    return leader;
                }
            }
            assert!(t0.elapsed() < limit, "the compose lab is not healthy after {limit:?}: {}", out(&self.compose(&["ps"])));
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn disconnect(&self, node: &str, networks: &[&str]) {
        let c = self.container(node);
        for n in networks {
            self.docker(&["network", "disconnect", &format!("vigil_{n}"), &c]);
        }
    }

    fn connect(&self, node: &str, networks: &[&str]) {
        let c = self.container(node);
        for n in networks {
            let ip = if *n == "default" { lab_ip(node) } else { dcs_ip(node) };
            self.docker(&["network", "connect", "--ip", &ip, "--alias", node, &format!("vigil_{n}"), &c]);
        }
    }
}

impl Drop for ComposeLab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", out(&self.compose(&["ps"])));
            eprintln!("{}", out(&self.compose(&["logs", "--tail=60", "pg1", "pg2", "pg3"])));
        }
        let o = Self::script(&["down"]);
        eprintln!("{}", out(&o));
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Fault {
    Kill,
    Pause,
    CutPrimary,
    CutReplica,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill",
            Fault::Pause => "pause",
            Fault::CutPrimary => "cut-primary",
            Fault::CutReplica => "cut-replica",
        }
    }
}

#[derive(Debug)]
struct Report {
    fault: Fault,
    old: String,
    new: String,
    detection: Option<f64>,
    switch: Option<f64>,
    /// Client view per writer: /primary, HAProxy, DNS.
    rto: [Option<f64>; 3],
    /// The longest time any writer went without an acknowledged write.
    gap: Option<f64>,
    acked: usize,
    lost: usize,
    split_polls: usize,
    polls: u64,
    back: Option<f64>,
}

fn db() -> Db {
    Db::Postgres { user: "postgres".into(), password: Some("vigil-compose-db".into()), tls: Default::default() }
}

fn endpoints() -> Vec<Endpoint> {
    NODES.iter().map(|n| Endpoint { host: lab_ip(n), port: 5432 }).collect()
}

/// The nodes' databases through the ports published on the host
/// (15432-15434): one port per node, so the checker's report tells them
/// apart; a node cut from the lab network is unreachable there too.
fn published(node: &str) -> Endpoint {
    Endpoint { host: "127.0.0.1".into(), port: 15431 + node[2..].parse::<u16>().unwrap() }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 100.0).round() / 100.0
}

fn drill(lab: &ComposeLab, fault: Fault) -> Report {
    let old = lab.wait_healthy(Duration::from_secs(180));
    let old_term = lab.status(&[]).and_then(|s| s["term"].as_i64()).unwrap_or(0);
    let replica = NODES.iter().find(|n| **n != old).unwrap().to_string();
    let target = if fault == Fault::CutReplica { replica.clone() } else { old.clone() };
    let apis: Vec<String> = NODES.iter().map(|n| format!("http://{}:8008", lab_ip(n))).collect();
    let ways = [
        Discovery::Api(apis),
        Discovery::ReadWrite,
        Discovery::Dns { server: BIND.parse().unwrap(), name: "pg.lab.test".into(), port: 5432 },
    ];
    let eps_for = |i: usize| if i == 1 { vec![Endpoint { host: "127.0.0.1".into(), port: HAPROXY_PRIMARY }] } else { endpoints() };
    let (writers, checker) = lab.rt.block_on(async {
        let mut ws = vec![];
        for (i, how) in ways.iter().enumerate() {
            let lane = Lane { index: i as i64, of: 3 };
            ws.push(Writer::start_in_lane(db(), eps_for(i), how.clone(), Duration::from_millis(50), lane).await.expect("writer"));
        }
        let polled = NODES.iter().map(|n| published(n)).collect();
        (ws, SplitBrainChecker::start_db(db(), polled, Duration::from_millis(50)))
    });
    std::thread::sleep(Duration::from_secs(2));
    let conn_before: Vec<u64> = writers.iter().map(|w| w.acks().last().map(|a| a.conn).unwrap_or(0)).collect();
    eprintln!("[{}] {} is the primary; fault on {target}", fault.name(), old);
    let (t0, t0_ms) = (Instant::now(), now_ms());
    match fault {
        Fault::Kill => lab.docker(&["kill", &lab.container(&old)]),
        Fault::Pause => lab.docker(&["pause", &lab.container(&old)]),
        Fault::CutPrimary => lab.disconnect(&old, &["default", "dcs"]),
        Fault::CutReplica => lab.disconnect(&replica, &["default"]),
    }

    // Until another node is the primary and every writer has written on a
    // new connection (a failover), or for 20 s (a cut replica: nothing may
    // change but its absence).
    let mut new = old.clone();
    let deadline = t0 + Duration::from_secs(90);
    loop {
        if fault == Fault::CutReplica {
            if t0.elapsed() > Duration::from_secs(20) {
                break;
            }
        } else {
            if let Some(s) = lab.status(&[old.as_str()]) {
                let leader = s["leader"].as_str().unwrap_or("");
                if !leader.is_empty() && leader != old {
                    new = leader.to_string();
                }
            }
            let recovered = writers.iter().zip(&conn_before).all(|(w, c)| w.acks().iter().any(|a| a.conn > *c && a.at > t0));
            if new != old && recovered {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("[{}] no recovery within 90s (leader {new})", fault.name());
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let rto: Vec<Option<f64>> = writers
        .iter()
        .zip(&conn_before)
        .map(|(w, c)| w.acks().iter().find(|a| a.conn > *c && a.at > t0).map(|a| secs(a.at.duration_since(t0))))
        .collect();
    let status = lab.status(&[old.as_str(), target.as_str()]);
    let history = status.as_ref().map(|s| s["last_change"].clone()).filter(|h| h["term"].as_i64().unwrap_or(0) > old_term);
    let step = |pred: &dyn Fn(&str) -> bool| {
        history
            .as_ref()
            .and_then(|h| h["steps"].as_array()?.iter().find(|s| pred(s["name"].as_str().unwrap_or(""))).and_then(|s| s["at_ms"].as_u64()))
    };
    let at = |ms: Option<u64>| ms.map(|ms| secs(Duration::from_millis(ms.saturating_sub(t0_ms))));
    let detection = at(step(&|n| n.contains("expired") || n.contains("vacant")));

    // Undo the fault; the old node (or the cut replica) must stream again.
    if fault == Fault::Pause {
        std::thread::sleep(Duration::from_secs(2));
    }
    let restored = Instant::now();
    match fault {
        Fault::Kill => lab.docker(&["start", &lab.container(&old)]),
        Fault::Pause => lab.docker(&["unpause", &lab.container(&old)]),
        Fault::CutPrimary => lab.connect(&old, &["default", "dcs"]),
        Fault::CutReplica => lab.connect(&replica, &["default"]),
    }
    let mut back = None;
    while restored.elapsed() < Duration::from_secs(120) {
        if let Some(s) = lab.status(&[]) {
            let leader = s["leader"].as_str().unwrap_or("");
            let streams = s["members"]
                .as_array()
                .is_some_and(|ms| ms.iter().any(|m| m["node"] == target.as_str() && m["streaming"] == true && m["upstream"].is_string()));
            if streams && leader != target {
                back = Some(secs(restored.elapsed()));
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (acks, report, writers_gap) = lab.rt.block_on(async {
        let (mut acks, mut gaps) = (vec![], vec![]);
        for w in writers {
            let a = w.stop().await;
            gaps.push(secs(vigil::workload::longest_gap(&a, t0).0));
            acks.extend(a);
        }
        (acks, checker.stop().await, gaps)
    });
    let lost = lab.rt.block_on(lost_writes_db(&db(), &endpoints(), &acks)).expect("a writable primary to count the writes on");
    // Switch: the first poll at which another node accepted writes.
    let old_port = published(&old).port;
    let switch = report
        .became_writable
        .iter()
        .filter(|(p, at)| *p != old_port && *at > t0)
        .map(|(_, at)| secs(at.duration_since(t0)))
        .reduce(f64::min);
    // The longest stretch without an acknowledged write, any writer.
    let gap = writers_gap.iter().copied().reduce(f64::max);
    if !lost.is_empty() {
        eprintln!("[{}] acknowledged but missing: {lost:?}", fault.name());
    }
    let r = Report {
        fault,
        old,
        new,
        detection,
        switch,
        rto: [rto[0], rto[1], rto[2]],
        gap,
        acked: acks.len(),
        lost: lost.len(),
        split_polls: report.violations.len(),
        polls: report.polls,
        back,
    };
    eprintln!("[{}] {r:?}", fault.name());
    r
}

fn show(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.2}s")).unwrap_or_else(|| "-".into())
}

#[test]
fn the_compose_lab_comes_up_and_survives_the_drills() {
    if std::env::var("VIGIL_SKIP_COMPOSE").as_deref() == Ok("1") {
        eprintln!("VIGIL_SKIP_COMPOSE=1: the compose lab is not started");
        return;
    }
    let lab = ComposeLab::up();
    let mut reports = vec![];
    for fault in [Fault::Kill, Fault::Pause, Fault::CutPrimary, Fault::CutReplica] {
        reports.push(drill(&lab, fault));
    }
    let mut table = String::from(
        "\ncompose lab drills (PostgreSQL 15, synchronous mode, ttl 10s; seconds after the fault)\n\
         drill        old  new  detection  switch  client /primary  client HAProxy  client DNS  longest gap  acked  lost  two-writable polls  back after restore\n",
    );
    for r in &reports {
        table.push_str(&format!(
            "{:<12} {:<4} {:<4} {:<10} {:<7} {:<16} {:<15} {:<11} {:<12} {:<6} {:<5} {:<19} {}\n",
            r.fault.name(),
            r.old,
            r.new,
            show(r.detection),
            show(r.switch),
            show(r.rto[0]),
            show(r.rto[1]),
            show(r.rto[2]),
            show(r.gap),
            r.acked,
            r.lost,
            format!("{}/{}", r.split_polls, r.polls),
            show(r.back),
        ));
    }
    eprintln!("{table}");
    for r in &reports {
        let name = r.fault.name();
        assert_eq!(r.lost, 0, "{name}: acknowledged writes lost in synchronous mode");
        assert_eq!(r.split_polls, 0, "{name}: two nodes accepted writes at one poll");
        assert!(r.back.is_some(), "{name}: the node did not stream again within 120s of the restore");
        if r.fault == Fault::CutReplica {
            assert_eq!(r.new, r.old, "{name}: a replica cut from its primary changed the primary");
        } else {
            assert_ne!(r.new, r.old, "{name}: no failover");
            assert!(r.rto.iter().all(Option::is_some), "{name}: a writer never wrote again: {:?}", r.rto);
        }
    }
}
