//! Patroni's health endpoints, as an HAProxy or keepalived check written
//! for Patroni uses them: each name, with GET, HEAD and OPTIONS, answers
//! the status code Patroni would on a primary, a synchronous standby and
//! an asynchronous one (the README's endpoint table).

mod common;

use common::TestLab;
use std::time::{Duration, Instant};

/// The status code of `method path` on a node's API.
fn code(t: &TestLab, node: usize, method: &str, path: &str) -> u16 {
    let url = format!("http://127.0.0.1:{}{path}", t.lab.nodes[node].api_port);
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    t.rt.block_on(async { reqwest::Client::new().request(method, &url).send().await.map(|r| r.status().as_u16()) }).unwrap()
}

/// Waits until every (node, path, code) holds with GET, HEAD and OPTIONS
/// alike (a sidecar's view is one loop old), then returns; panics with
/// the codes seen when they do not within `limit`.
fn expect_codes(t: &TestLab, want: &[(usize, &str, u16)], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let seen: Vec<(usize, &str, &str, u16, u16)> = want
            .iter()
            .flat_map(|(node, path, want)| ["GET", "HEAD", "OPTIONS"].map(|m| (*node, *path, m, *want, code(t, *node, m, path))))
            .filter(|(_, _, _, want, got)| want != got)
            .collect();
        if seen.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "wrong status codes (node, path, method, want, got): {seen:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn asynchronous_cluster_answers_as_patroni_would() {
    let t = TestLab::up("patroni-async", |_| {});
    assert_eq!(t.leader().as_deref(), Some("pg1"));
    for n in ["pg2", "pg3"] {
        t.wait_streaming(n, Duration::from_secs(30));
    }
    let mut want = vec![];
    for path in ["/", "/primary", "/master", "/read-write", "/leader", "/read-only", "/health", "/liveness", "/readiness"] {
        want.push((0, path, 200));
    }
    for path in ["/replica", "/sync", "/synchronous", "/async", "/asynchronous", "/standby-leader"] {
        want.push((0, path, 503));
    }
    for path in ["/replica", "/replica?lag=16MB", "/async", "/asynchronous?lag=10s", "/read-only", "/health", "/liveness", "/readiness"] {
        want.push((1, path, 200));
    }
    for path in ["/", "/primary", "/read-write", "/leader", "/sync", "/synchronous", "/standby-leader"] {
        want.push((1, path, 503));
    }
    expect_codes(&t, &want, Duration::from_secs(10));
    // A malformed lag is the client's error, not a failed check.
    assert_eq!(code(&t, 1, "GET", "/async?lag=soon"), 400);
}

#[test]
fn synchronous_cluster_answers_as_patroni_would() {
    let t = TestLab::up("patroni-sync", |s| {
        s.with_sync = false;
        s.synchronous = true;
    });
    t.wait_for("the synchronous set recorded", Duration::from_secs(20), |c| c.sync.as_ref().is_some_and(|s| s.standbys.len() == 2));
    let mut want = vec![(0, "/primary", 200), (0, "/sync", 503), (0, "/async", 503)];
    for node in [1, 2] {
        want.extend([(node, "/sync", 200), (node, "/synchronous", 200), (node, "/async", 503), (node, "/asynchronous", 503)]);
    }
    expect_codes(&t, &want, Duration::from_secs(10));
}
