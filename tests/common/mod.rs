//! Shared set-up for the integration tests: a real lab (etcd, PostgreSQL
//! 15, vigil sidecars) on free high ports under /tmp, torn down by PID when
//! the test ends. A failed test keeps its directory and says where.

#![allow(dead_code)]

use std::process::Output;
use std::time::{Duration, Instant};
use vigil::dcs::ClusterState;
use vigil::lab::{free_base_port, Lab, LabSpec};
use vigil::workload::Endpoint;

pub struct TestLab {
    pub lab: Lab,
    pub rt: tokio::runtime::Runtime,
    /// The lab's private directory (mktemp): removed with the lab, kept
    /// when the test fails.
    tmp: Option<tempfile::TempDir>,
    /// etcd's data, in memory where the machine has /dev/shm (mktemp).
    etcd_tmp: Option<tempfile::TempDir>,
}

impl TestLab {
    pub fn up(name: &str, customize: impl FnOnce(&mut LabSpec)) -> TestLab {
        // An unpredictable directory that only root can list; the database
        // users may pass through it to their own directories inside.
        let tmp = tempfile::Builder::new().prefix(&format!("vigil-test-{name}-")).tempdir().expect("a private temporary directory");
        std::fs::set_permissions(tmp.path(), std::os::unix::fs::PermissionsExt::from_mode(0o711)).expect("chmod");
        let dir = tmp.path().join("lab");
        let mut spec = LabSpec::new(&dir, free_base_port(30), env!("CARGO_BIN_EXE_vigil"));
        // What these tests judge is vigil, not the CI machine's disk: with
        // three lanes and Docker builds beside it, etcd's fsync on /tmp took
        // seconds. The simulation covers a stalling etcd disk.
        let etcd_tmp = tempfile::Builder::new().prefix(&format!("vigil-test-{name}-etcd-")).tempdir_in("/dev/shm").ok();
        spec.etcd_data = etcd_tmp.as_ref().map(|t| t.path().join("etcd"));
        customize(&mut spec);
        let t0 = Instant::now();
        let lab = Lab::up(&spec, &|m| eprintln!("[{name} {:5.1}s] {m}", t0.elapsed().as_secs_f64())).expect("lab up");
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        TestLab { lab, rt, tmp: Some(tmp), etcd_tmp }
    }

    pub fn eps(&self) -> Vec<Endpoint> {
        self.lab.nodes.iter().map(|n| Endpoint { host: "127.0.0.1".into(), port: n.db_port }).collect()
    }

    /// The test traffic's database and user (see `Lab::workload_db`).
    pub fn db(&self) -> vigil::workload::Db {
        self.lab.workload_db()
    }

    /// Does the database on `port` accept writes? None: unreachable.
    /// Asks as the lab's administrator over TCP, as an application would.
    pub fn writable(&self, port: u16) -> Option<bool> {
        self.rt.block_on(async {
            match self.lab.engine {
                vigil::config::EngineKind::Postgres => {
                    let conf = format!("host=127.0.0.1 port={port} user=postgres connect_timeout=1");
                    let (c, conn) = tokio_postgres::connect(&conf, tokio_postgres::NoTls).await.ok()?;
                    tokio::spawn(conn);
                    let r = c.query_one("SELECT NOT pg_is_in_recovery()", &[]).await.ok()?;
                    Some(r.get(0))
                }
                _ => {
                    use mysql_async::prelude::Queryable;
                    let opts = mysql_async::OptsBuilder::default()
                        .ip_or_hostname("127.0.0.1")
                        .tcp_port(port)
                        .user(Some(vigil::lab::mariadb::VIGIL_USER))
                        .pass(Some(vigil::lab::mariadb::VIGIL_PASSWORD))
                        .prefer_socket(false);
                    let mut c = tokio::time::timeout(Duration::from_secs(1), mysql_async::Conn::new(opts)).await.ok()?.ok()?;
                    let ro: i64 = c.query_first("SELECT @@global.read_only").await.ok()??;
                    let _ = c.disconnect().await;
                    Some(ro == 0)
                }
            }
        })
    }

    pub fn index(&self, node: &str) -> usize {
        self.lab.nodes.iter().position(|n| n.name == node).expect("node")
    }

    pub fn port(&self, node: &str) -> u16 {
        self.lab.nodes[self.index(node)].db_port
    }

    pub fn state(&self) -> ClusterState {
        self.lab.cluster_state().expect("read etcd")
    }

    pub fn leader(&self) -> Option<String> {
        self.state().leader.map(|l| l.node)
    }

    /// Polls etcd until `pred` holds.
    pub fn wait_for(&self, what: &str, limit: Duration, pred: impl Fn(&ClusterState) -> bool) -> ClusterState {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(c) = self.lab.cluster_state() {
                if pred(&c) {
                    return c;
                }
                if Instant::now() > deadline {
                    let members: Vec<String> = c.members.values().map(|m| format!("{}: {} / {:?}", m.node, m.state, m.refusal)).collect();
                    panic!("timed out waiting for {what}: leader {:?}; {}", c.leader.map(|l| l.node), members.join("; "));
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// A new leader other than `old` that accepts writes.
    pub fn wait_new_primary(&self, old: &str, limit: Duration) -> String {
        let c = self.wait_for("a new writable primary", limit, |c| {
            c.leader.as_ref().is_some_and(|l| l.node != old && c.members.get(&l.node).is_some_and(|m| m.term.is_some()))
        });
        c.leader.unwrap().node
    }

    /// `node` streams from the current leader.
    /// Waits for a file to exist with content; returns the content.
    pub fn wait_file(&self, path: &std::path::Path, limit: Duration) -> String {
        let started = Instant::now();
        loop {
            match std::fs::read_to_string(path) {
                Ok(s) if !s.is_empty() => return s,
                _ if started.elapsed() > limit => panic!("{} did not appear within {limit:?}", path.display()),
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
    }

    pub fn wait_streaming(&self, node: &str, limit: Duration) {
        self.wait_for(&format!("{node} streaming"), limit, |c| c.members.get(node).is_some_and(|m| m.streaming));
    }

    /// Appends `extra(node index)` to every sidecar's config and restarts
    /// the sidecars (they read their config at start).
    pub fn reconfigure(&mut self, extra: impl Fn(usize) -> String) {
        for i in 0..self.lab.nodes.len() {
            let cfg = self.lab.nodes[i].config.clone();
            let text = std::fs::read_to_string(&cfg).unwrap() + &extra(i);
            std::fs::write(&cfg, text).unwrap();
            self.lab.kill_sidecar(i);
            self.lab.start_sidecar(i).unwrap();
        }
        self.lab.wait_healthy(Duration::from_secs(30)).unwrap();
    }

    /// Runs the vigil CLI against this lab.
    pub fn vigil(&self, args: &[&str]) -> Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args(args)
            .env("VIGIL_CONFIG", &self.lab.nodes[0].config)
            .output()
            .expect("run vigil")
    }
}

impl Drop for TestLab {
    fn drop(&mut self) {
        let keep = std::thread::panicking();
        if keep {
            eprintln!("test failed; lab kept in {} (logs: */vigil.log, */data.log, etcd.log)", self.lab.dir.display());
            // CI keeps only this output: the ends of the sidecars' logs and
            // etcd's complaints about its own latency say what happened.
            for n in &self.lab.nodes {
                print_tail(&format!("{}/vigil.log", n.name), &n.dir.join("vigil.log"), 20, |_| true);
            }
            print_tail("etcd.log (slow requests and disk syncs)", &self.lab.dir.join("etcd.log"), 10, |l| {
                l.contains("took too long") || l.contains("slow fdatasync") || l.contains("failed to send out heartbeat")
            });
            if let Some(t) = self.tmp.take() {
                let _ = t.keep();
            }
        }
        let _ = self.lab.down(keep);
    }
}

/// Prints the last `n` lines of `path` that `keep` selects, each cut to
/// 400 characters.
fn print_tail(title: &str, path: &std::path::Path, n: usize, keep: impl Fn(&str) -> bool) {
    let Ok(text) = std::fs::read_to_string(path) else { return };
    let lines: Vec<&str> = text.lines().filter(|l| keep(l)).collect();
    eprintln!("--- {title}: last {} of {} lines ---", n.min(lines.len()), lines.len());
    for l in &lines[lines.len().saturating_sub(n)..] {
        eprintln!("{}", l.chars().take(400).collect::<String>());
    }
}

pub fn out(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Stops a child process this test started (by its handle, so by PID).
pub struct Stop(pub std::process::Child);

impl Drop for Stop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub type Inbox = std::sync::Arc<std::sync::Mutex<Vec<serde_json::Value>>>;

/// A webhook receiver on a free port collecting every JSON body POSTed to /hook.
pub fn webhook_receiver(rt: &tokio::runtime::Runtime) -> (u16, Inbox) {
    use axum::{extract::State, routing::post, Json, Router};
    let inbox: Inbox = Default::default();
    let app = Router::new()
        .route(
            "/hook",
            post(|State(i): State<Inbox>, Json(v): Json<serde_json::Value>| async move {
                i.lock().unwrap().push(v);
                "ok"
            }),
        )
        .with_state(std::sync::Arc::clone(&inbox));
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, inbox)
}

/// An nftables table of this test's own that drops loopback traffic, for
/// partitions; deleted (by its name) when dropped.
pub struct Cut {
    table: String,
}

impl Cut {
    pub fn new(name: &str) -> Cut {
        let table = format!("vigil_test_{name}_{}", std::process::id());
        nft(&format!("add table inet {table}"));
        nft(&format!("add chain inet {table} out {{ type filter hook output priority 0 ; }}"));
        Cut { table }
    }

    /// Drops TCP to `port` (on any loopback address, or on `addr` only).
    pub fn drop_port(&self, addr: Option<&str>, port: u16) {
        match addr {
            Some(a) => nft(&format!("add rule inet {} out ip daddr {a} tcp dport {port} drop", self.table)),
            None => nft(&format!("add rule inet {} out tcp dport {port} drop", self.table)),
        }
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        let _ = std::process::Command::new("nft").args(["delete", "table", "inet", &self.table]).status();
    }
}

fn nft(args: &str) {
    let o = std::process::Command::new("nft").args(args.split_whitespace()).output().expect("nft (package nftables)");
    assert!(o.status.success(), "nft {args}: {}", String::from_utf8_lossy(&o.stderr));
}
