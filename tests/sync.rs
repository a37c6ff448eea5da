//! File, session and configuration sync status against a real Redis pair
//! and a real rsync loop, as the lab runs them.

mod common;

use common::{out, webhook_receiver, TestLab};
use serde_json::Value;
use std::time::{Duration, Instant};

fn get(url: &str) -> (u16, Value) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let r = reqwest::get(url).await.unwrap();
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(Value::Null))
    })
}

fn wait(what: &str, limit: Duration, f: impl Fn() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
    start.elapsed()
}

fn redis_cli(port: u16, args: &[&str]) {
    let o = std::process::Command::new("redis-cli").args(["-p", &port.to_string()]).args(args).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn redis_session_sync_is_reported_alerted_and_recovers() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (hook, inbox) = webhook_receiver(&rt);
    let t = TestLab::up("redis", |s| {
        s.sync_max_age = "2s".into();
        s.extra_config = format!("\n[[alerts.webhook]]\nurl = \"http://127.0.0.1:{hook}/hook\"\n");
    });
    let sync = format!("http://127.0.0.1:{}/sync-status", t.lab.nodes[1].api_port);
    let redis = |v: &Value| v["sync"]["redis"].clone();
    wait("redis ok", Duration::from_secs(20), || redis(&get(&sync).1)["state"] == "ok");
    let r = redis(&get(&sync).1);
    assert!(r["offset_lag_bytes"].as_u64().unwrap() < 1024 && r["link_up"] == true, "{r}");

    let (primary, replica) = (t.lab.redis[0].0, t.lab.redis[1].0);
    let before = inbox.lock().unwrap().len();
    redis_cli(replica, &["REPLICAOF", "NO", "ONE"]);
    let cut = Instant::now();
    wait("link down reported", Duration::from_secs(10), || redis(&get(&sync).1)["link_up"] == false);
    let state = redis(&get(&sync).1)["state"].clone();
    eprintln!("after REPLICAOF NO ONE: {state} ({:?})", cut.elapsed());
    let alerted = wait("SyncStale alert", Duration::from_secs(15), || {
        inbox.lock().unwrap()[before..].iter().any(|v| v["name"] == "SessionSyncStale" && v["status"] == "firing")
    });
    eprintln!("SyncStale (redis) alerted {:?} after the cut (max_age 2s)", cut.elapsed());
    assert!(cut.elapsed() >= Duration::from_secs(2), "alerted before max_age ({alerted:?})");
    let (code, body) = get(&format!("http://127.0.0.1:{}/health", t.lab.nodes[1].api_port));
    assert_eq!(code, 503, "{body}");
    assert!(body["reason"].as_str().unwrap().contains("redis"), "{body}");

    let before = inbox.lock().unwrap().len();
    redis_cli(replica, &["REPLICAOF", "127.0.0.1", &primary.to_string()]);
    wait("redis ok again", Duration::from_secs(20), || redis(&get(&sync).1)["state"] == "ok");
    wait("SessionSyncStale resolved", Duration::from_secs(10), || {
        inbox.lock().unwrap()[before..].iter().any(|v| v["name"] == "SessionSyncStale" && v["status"] == "resolved")
    });
}

#[test]
fn stopped_file_sync_makes_the_backup_unhealthy_until_it_resumes() {
    let mut t = TestLab::up("files", |s| s.sync_max_age = "3s".into());
    let health = format!("http://127.0.0.1:{}/health", t.lab.nodes[1].api_port);
    wait("backup healthy", Duration::from_secs(20), || get(&health).0 == 200);
    t.lab.stop_file_sync();
    let stopped = Instant::now();
    wait("backup unhealthy", Duration::from_secs(15), || get(&health).0 == 503);
    let (_, body) = get(&health);
    eprintln!("/health on the backup turned 503 {:?} after the sync stopped: {}", stopped.elapsed(), body["reason"]);
    assert!(body["reason"].as_str().unwrap().contains("file_sync: stale"), "{body}");
    let age = get(&format!("http://127.0.0.1:{}/sync-status", t.lab.nodes[1].api_port)).1["sync"]["files"]["age_seconds"].as_f64().unwrap();
    assert!(age > 3.0, "age {age}");
    t.lab.start_file_sync().unwrap();
    let back = wait("backup healthy again", Duration::from_secs(15), || get(&health).0 == 200);
    eprintln!("healthy again {back:?} after the sync resumed");
}

#[test]
fn configuration_drift_is_flagged() {
    let mut t = TestLab::up("drift", |_| {});
    let cfg = t.lab.nodes[2].config.clone();
    let text = std::fs::read_to_string(&cfg).unwrap().replace("hold_down = \"0s\"", "hold_down = \"1m\"");
    std::fs::write(&cfg, text).unwrap();
    t.lab.kill_sidecar(2);
    t.lab.start_sidecar(2).unwrap();
    wait("drift shown", Duration::from_secs(20), || {
        out(&t.vigil(&["status"])).lines().any(|l| l.starts_with("pg3") && l.contains("DRIFT"))
    });
    let status = out(&t.vigil(&["status"]));
    assert!(!status.lines().any(|l| l.starts_with("pg2") && l.contains("DRIFT")), "{status}");
    let url = format!("http://127.0.0.1:{}/cluster", t.lab.nodes[0].api_port);
    wait("drift in /cluster", Duration::from_secs(10), || get(&url).1["config_drift"] == serde_json::json!(["pg3"]));
}
