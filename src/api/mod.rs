//! The application-facing HTTP API of one sidecar, with Patroni's
//! semantics so that HAProxy and keepalived setups work as they are:
//! health endpoints answer 200 or 503 (HEAD and OPTIONS too), `/cluster`,
//! `/history`, `/metrics` describe the cluster, and the POST endpoints need
//! the bearer token. `auth` says who may ask what, `input` turns request
//! bytes into typed values, `serve` accepts connections within limits.

pub mod auth;
pub mod input;
pub mod serve;

pub use input::FailsafeAsk;

use crate::config::Config;
use crate::core::{DbHealth, DbRole};
use crate::dcs::{now_ms, Dcs, MemberRecord};
use crate::engine::Engine;
use crate::status::{Shared, Snapshot};
use crate::units::LagLimit;
use auth::authorized;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::{Json, Router};
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

pub struct ApiState<E: Engine, D: Dcs> {
    pub cfg: Config,
    pub shared: Arc<Shared>,
    pub engine: Arc<E>,
    pub dcs: Arc<D>,
}

type St<E, D> = State<Arc<ApiState<E, D>>>;

pub fn router<E: Engine, D: Dcs>(state: Arc<ApiState<E, D>>) -> Router {
    Router::new()
        .route("/", any(primary::<E, D>))
        .route("/primary", any(primary::<E, D>))
        .route("/read-write", any(primary::<E, D>))
        .route("/master", any(primary::<E, D>))
        .route("/leader", any(leader::<E, D>))
        .route("/replica", any(replica::<E, D>))
        .route("/read-only", any(read_only::<E, D>))
        .route("/health", any(health::<E, D>))
        .route("/liveness", any(liveness::<E, D>))
        .route("/readiness", any(readiness::<E, D>))
        .route("/member", get(member::<E, D>))
        .route("/sync", any(synchronous::<E, D>))
        .route("/synchronous", any(synchronous::<E, D>))
        .route("/async", any(asynchronous::<E, D>))
        .route("/asynchronous", any(asynchronous::<E, D>))
        .route("/standby-leader", any(standby_leader))
        .route("/standby_leader", any(standby_leader))
        .route("/sync-status", get(sync_status::<E, D>))
        .route("/cluster", get(cluster::<E, D>))
        .route("/cluster/primary", get(who_is_primary::<E, D>))
        .route("/history", get(history::<E, D>))
        .route("/metrics", get(metrics::<E, D>))
        .route("/switchover", post(switchover::<E, D>))
        .route("/failover", post(failover::<E, D>))
        .route("/pause", post(pause::<E, D>))
        .route("/failsafe", post(failsafe::<E, D>))
        .route("/resume", post(resume::<E, D>))
        .with_state(state)
}

/// A health answer: the code, and for GET a JSON body describing the node.
fn check(method: &Method, ok: bool, snap: &Snapshot, why: Option<String>) -> Response {
    let code = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    if method != Method::GET {
        return code.into_response();
    }
    let me = snap.me.as_ref();
    let body = json!({
        "node": me.map(|m| m.node.clone()),
        "role": me.and_then(|m| m.role),
        "health": me.map(|m| m.health),
        "state": me.map(|m| m.state.clone()),
        "term": snap.term,
        "leader": snap.cluster.leader.as_ref().map(|l| l.node.clone()),
        "position": me.and_then(|m| m.position.map(|p| p.to_string())),
        "lag_seconds": me.and_then(|m| m.lag_seconds),
        "lag_bytes": me.and_then(|m| m.lag_bytes),
        "reason": why,
    });
    (code, Json(body)).into_response()
}

fn is_running(m: Option<&MemberRecord>, role: DbRole) -> bool {
    m.is_some_and(|m| m.health == DbHealth::Running && m.role == Some(role))
}

async fn primary<E: Engine, D: Dcs>(State(s): St<E, D>, method: Method) -> Response {
    let snap = s.shared.get();
    let why = (!snap.writable_leader).then(|| "not the leader with a writable database".to_string());
    check(&method, snap.writable_leader, &snap, why)
}

async fn leader<E: Engine, D: Dcs>(State(s): St<E, D>, method: Method) -> Response {
    let snap = s.shared.get();
    check(&method, snap.holds_leader, &snap, None)
}

fn lag_ok(m: &MemberRecord, q: &HashMap<String, String>) -> Result<bool, String> {
    Ok(match input::lag_limit(q)? {
        None => true,
        Some(LagLimit::Bytes(b)) => m.lag_bytes.is_some_and(|l| l <= b),
        Some(LagLimit::Time(t)) => m.lag_seconds.is_some_and(|l| l <= t.as_secs_f64()),
    })
}

async fn replica<E: Engine, D: Dcs>(State(s): St<E, D>, method: Method, Query(q): Query<HashMap<String, String>>) -> Response {
    let snap = s.shared.get();
    let me = snap.me.as_ref();
    if !is_running(me, DbRole::Replica) {
        return check(&method, false, &snap, Some("not a running replica".into()));
    }
    match lag_ok(me.expect("checked"), &q) {
        Ok(ok) => check(&method, ok, &snap, (!ok).then(|| "lag above the limit".into())),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

/// Whether this node is a running replica the leader counts in its
/// synchronous set (the `sync` key), and within `?lag=` if given.
fn synchronous_standby(snap: &Snapshot, node: &str, q: &HashMap<String, String>) -> Result<(bool, bool), String> {
    let me = snap.me.as_ref();
    if !is_running(me, DbRole::Replica) {
        return Ok((false, false));
    }
    let in_set = snap.cluster.sync.as_ref().is_some_and(|s| s.standbys.iter().any(|n| n == node));
    Ok((in_set, lag_ok(me.expect("checked"), q)?))
}

/// Patroni's `/sync` and `/synchronous`: 200 only on a running replica in
/// the synchronous set (the one HAProxy may send reads that must see
/// every acknowledged commit to).
async fn synchronous<E: Engine, D: Dcs>(State(s): St<E, D>, method: Method, Query(q): Query<HashMap<String, String>>) -> Response {
    let snap = s.shared.get();
    match synchronous_standby(&snap, &s.cfg.node, &q) {
        Ok((true, true)) => check(&method, true, &snap, None),
        Ok((true, false)) => check(&method, false, &snap, Some("lag above the limit".into())),
        Ok(_) => check(&method, false, &snap, Some("not a running synchronous standby".into())),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

/// Patroni's `/async` and `/asynchronous`: 200 only on a running replica
/// outside the synchronous set.
async fn asynchronous<E: Engine, D: Dcs>(State(s): St<E, D>, method: Method, Query(q): Query<HashMap<String, String>>) -> Response {
    let snap = s.shared.get();
    let running = is_running(snap.me.as_ref(), DbRole::Replica);
    match synchronous_standby(&snap, &s.cfg.node, &q) {
        Ok((false, true)) if running => check(&method, true, &snap, None),
        Ok((false, false)) if running => check(&method, false, &snap, Some("lag above the limit".into())),
        Ok(_) => check(&method, false, &snap, Some("not a running asynchronous standby".into())),
        Err(e) => (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response(),
    }
}

/// Patroni's `/standby-leader`: the leader of a standby cluster, which
/// vigil does not run; always 503, so a check written for Patroni never
/// sends traffic here by mistake.
async fn standby_leader(method: Method) -> Response {
    if method != Method::GET {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "reason": "vigil runs no standby cluster" }))).into_response()
}

async fn read_only<E: Engine, D: Dcs>(State(s): St<E, D>, method: Method) -> Response {
    let snap = s.shared.get();
    let ok = snap.writable_leader || is_running(snap.me.as_ref(), DbRole::Replica);
    check(&method, ok, &snap, None)
}

/// 200 only when the node is fully operational: the database answers,
/// and the configured checks (disk space, Redis, file sync on a backup)
/// pass. The body names every failing check.
async fn health<E: Engine, D: Dcs>(State(s): St<E, D>, method: Method) -> Response {
    let snap = s.shared.get();
    let mut failing: Vec<String> = vec![];
    if !snap.me.as_ref().is_some_and(|m| m.health == DbHealth::Running) {
        failing.push(format!(
            "database: {}",
            snap.me.as_ref().map(|m| format!("{:?}", m.health).to_lowercase()).unwrap_or_else(|| "not observed yet".into())
        ));
    }
    if let Some(rep) = &snap.sync {
        for (check, reason) in rep.problems(&s.cfg.sync, snap.writable_leader) {
            failing.push(format!("{check}: {reason}"));
        }
    }
    let why = (!failing.is_empty()).then(|| failing.join("; "));
    check(&method, failing.is_empty(), &snap, why)
}

/// vigil's file, session and configuration sync report (JSON, always 200).
async fn sync_status<E: Engine, D: Dcs>(State(s): St<E, D>) -> Response {
    let snap = s.shared.get();
    let leader_hash = snap
        .cluster
        .leader
        .as_ref()
        .and_then(|l| snap.cluster.members.get(&l.node))
        .and_then(|m| m.sync.as_ref())
        .map(|r| r.config_hash.clone());
    let drift = match (&snap.sync, &leader_hash) {
        (Some(r), Some(h)) => r.config_hash != *h,
        _ => false,
    };
    let problems = snap.sync.as_ref().map(|r| r.problems(&s.cfg.sync, snap.writable_leader)).unwrap_or_default();
    Json(json!({
        "node": s.cfg.node,
        "sync": snap.sync,
        "config_drift_from_leader": drift,
        "problems": problems.iter().map(|(c, r)| json!({"check": c, "reason": r})).collect::<Vec<_>>(),
    }))
    .into_response()
}

async fn liveness<E: Engine, D: Dcs>(State(s): St<E, D>, method: Method) -> Response {
    let snap = s.shared.get();
    let limit = s.cfg.timing.ttl.as_millis() as u64 * if snap.holds_leader { 1 } else { 2 };
    let ok = now_ms().saturating_sub(snap.last_loop_ms) <= limit;
    check(&method, ok, &snap, (!ok).then(|| "HA loop stalled".into()))
}

async fn readiness<E: Engine, D: Dcs>(State(s): St<E, D>, method: Method, Query(q): Query<HashMap<String, String>>) -> Response {
    let snap = s.shared.get();
    if snap.writable_leader {
        return check(&method, true, &snap, None);
    }
    let me = snap.me.as_ref();
    let ok = is_running(me, DbRole::Replica) && me.is_some_and(|m| m.streaming) && me.is_some_and(|m| lag_ok(m, &q).unwrap_or(false));
    check(&method, ok, &snap, (!ok).then(|| "not a streaming replica within lag".into()))
}

/// Did this sidecar read etcd within the last `2 * loop + retry`?
fn reaches_etcd(cfg: &Config, snap: &Snapshot) -> bool {
    // Monotonic: a wall-clock jump here (or, in the simulation, the asking
    // node's clock, whose task runs this handler) once made a member that
    // reaches etcd vouch for a leader cut off from it (the second 30-minute
    // run, seed 7067823: the leader stayed writable without its key).
    let age = snap.dcs_last_ok.map_or(Duration::MAX, |t| t.elapsed());
    crate::core::failsafe::reaches_etcd(snap.dcs_ok, age, cfg.timing.loop_wait, cfg.timing.retry)
}

/// This node's member record as a racing peer needs it (`GET /member`),
/// shared by the HTTP handler and the simulation. `fresh` first looks at
/// the database again, which is what a peer needs after the leader vanished.
pub async fn member_answer<E: Engine>(cfg: &Config, shared: &crate::status::Shared, engine: &E, fresh: bool) -> Option<MemberRecord> {
    let snap = shared.get();
    let mut me = snap.me.clone()?;
    if let Some(why) = crate::core::failsafe::candidacy_without_etcd(reaches_etcd(cfg, &snap), me.eligible) {
        me.eligible = false;
        me.ineligible_reason = Some(why);
    }
    if fresh {
        let obs = engine.observe().await;
        me.health = obs.local.health;
        me.role = obs.local.role;
        me.position = obs.local.position;
        me.receive_lsn = obs.receive_lsn;
        me.replay_lsn = obs.replay_lsn;
        me.streaming = obs.local.streaming;
        me.updated_ms = now_ms();
    }
    Some(me)
}

/// etcd failsafe, member side, shared by the HTTP handler and the
/// simulation: Ok when this member cannot reach etcd either.
pub fn failsafe_answer(cfg: &Config, shared: &crate::status::Shared, ask: &FailsafeAsk) -> Result<(), String> {
    let snap = shared.get();
    // What this member's last successful read of etcd said of the leader key.
    let known = snap.dcs_last_ok.map(|_| (snap.cluster.leader.as_ref().map(|l| l.node.as_str()), snap.cluster.term));
    if let Err(why) = crate::core::failsafe::vouch(reaches_etcd(cfg, &snap), known, &ask.leader, ask.term) {
        tracing::info!(leader = %ask.leader, reason = %why, "not vouching for a leader asking for the failsafe");
        return Err(format!("{}: {why}", cfg.node));
    }
    tracing::info!(leader = %ask.leader, "etcd unreachable here too: confirmed the leader may keep serving (failsafe)");
    // The vouch is a promise: this node takes no key for ttl (core rule).
    shared.update(|s| s.last_vouch = Some(crate::clock::Instant::now()));
    Ok(())
}

/// This node's member record. `?fresh=1` from a member (with the token)
/// first looks at the database again; from anyone else it is the loop's
/// last record, so that no client can make this sidecar query its database.
async fn member<E: Engine, D: Dcs>(State(s): St<E, D>, headers: HeaderMap, Query(q): Query<HashMap<String, String>>) -> Response {
    let fresh = q.contains_key("fresh") && authorized(&s.cfg, &headers).is_ok();
    match member_answer(&s.cfg, &s.shared, s.engine.as_ref(), fresh).await {
        Some(me) => Json(me).into_response(),
        None => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": "not observed yet"}))).into_response(),
    }
}

async fn cluster<E: Engine, D: Dcs>(State(s): St<E, D>) -> Response {
    let snap = s.shared.get();
    Json(crate::cli::status::cluster_json(&s.cfg.cluster, &snap.cluster)).into_response()
}

/// Who is primary, from any sidecar: host, port, term, since when.
async fn who_is_primary<E: Engine, D: Dcs>(State(s): St<E, D>) -> Response {
    let snap = s.shared.get();
    let c = &snap.cluster;
    let Some(l) = &c.leader else {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"cluster": s.cfg.cluster, "primary": null, "error": "no leader"})))
            .into_response();
    };
    let m = c.members.get(&l.node);
    Json(json!({
        "cluster": s.cfg.cluster,
        "primary": l.node,
        "host": m.map(|m| m.db_host.clone()),
        "port": m.map(|m| m.db_port),
        "term": c.term,
        "since_ms": l.since_ms,
        "since": humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(l.since_ms)).to_string(),
        "accepting_writes": m.is_some_and(|m| m.term.is_some() && m.role == Some(DbRole::Primary)),
        "api_url": m.map(|m| m.api_url.clone()),
    }))
    .into_response()
}

async fn history<E: Engine, D: Dcs>(State(s): St<E, D>) -> Response {
    match s.dcs.history().await {
        Ok(h) => Json(h).into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": format!("{e:#}")}))).into_response(),
    }
}

async fn metrics<E: Engine, D: Dcs>(State(s): St<E, D>) -> Response {
    let snap = s.shared.get();
    let body = crate::metrics::render(&s.cfg, &snap);
    ([("content-type", "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

fn outcome<T: serde::Serialize>(r: anyhow::Result<T>) -> Response {
    match r {
        Ok(v) => (StatusCode::ACCEPTED, Json(json!({ "accepted": v }))).into_response(),
        Err(e) => (StatusCode::PRECONDITION_FAILED, Json(json!({ "error": format!("{e:#}") }))).into_response(),
    }
}

fn bad_request(e: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": e }))).into_response()
}

async fn switchover<E: Engine, D: Dcs>(State(s): St<E, D>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = authorized(&s.cfg, &headers) {
        return r.into_response();
    }
    match input::switchover(&bytes) {
        Ok(b) => outcome(crate::ops::switchover(&*s.dcs, b.leader.as_deref(), b.candidate.as_deref()).await),
        Err(e) => bad_request(e),
    }
}

async fn failover<E: Engine, D: Dcs>(State(s): St<E, D>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = authorized(&s.cfg, &headers) {
        return r.into_response();
    }
    match input::failover(&bytes) {
        Ok(b) => outcome(crate::ops::failover(&*s.dcs, &b.candidate, b.allow_data_loss).await),
        Err(e) => bad_request(e),
    }
}

/// etcd failsafe, member side: "may I keep serving?" Yes only while this
/// member cannot reach etcd either, so that no leader can be elected
/// behind the asking primary's back; a member that reaches etcd answers
/// 409 and the primary fences itself on time.
/// Only members (with the token) may ask: a "yes" lets a primary keep
/// writing without etcd.
async fn failsafe<E: Engine, D: Dcs>(State(s): St<E, D>, headers: HeaderMap, bytes: axum::body::Bytes) -> Response {
    if let Err(r) = authorized(&s.cfg, &headers) {
        return r.into_response();
    }
    let ask = match input::failsafe(&bytes) {
        Ok(a) => a,
        Err(e) => return bad_request(e),
    };
    match failsafe_answer(&s.cfg, &s.shared, &ask) {
        Ok(()) => Json(json!({"ok": true, "node": s.cfg.node})).into_response(),
        Err(why) => (StatusCode::CONFLICT, Json(json!({"error": why}))).into_response(),
    }
}

async fn pause<E: Engine, D: Dcs>(State(s): St<E, D>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s.cfg, &headers) {
        return r.into_response();
    }
    outcome(crate::ops::pause(&*s.dcs, "api").await.map(|_| "paused"))
}

async fn resume<E: Engine, D: Dcs>(State(s): St<E, D>, headers: HeaderMap) -> Response {
    if let Err(r) = authorized(&s.cfg, &headers) {
        return r.into_response();
    }
    outcome(crate::ops::resume(&*s.dcs).await.map(|_| "resumed"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member that reaches etcd never vouches in a failsafe round, even
    /// after its wall clock jumped: reaching etcd is measured on the
    /// monotonic clock (seed 7067823: both members vouched for a leader cut
    /// off from etcd, which stayed writable without its key for 20 s).
    #[test]
    fn a_member_that_reaches_etcd_refuses_to_vouch_whatever_its_wall_clock_says() {
        let text = "cluster = \"t\"\nnode = \"pg1\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n[database]\nhost = \"127.0.0.1\"\nport = 5432\ndata_dir = \"/var/lib/postgresql/15/main\"\n";
        let cfg = Config::parse(std::path::Path::new("t.toml"), text).expect("a valid config");
        let shared = crate::status::Shared::default();
        let ask = FailsafeAsk { leader: "pg2".into(), term: Some(4) };
        // The last read succeeded just now; the wall clock says an hour ago.
        shared.update(|s| {
            s.dcs_ok = true;
            s.dcs_last_ok = Some(crate::clock::Instant::now());
            s.dcs_last_ok_ms = crate::dcs::now_ms().saturating_sub(3_600_000);
        });
        assert!(failsafe_answer(&cfg, &shared, &ask).is_err());
        // No read for longer than a loop and a retry: etcd is out of reach.
        shared.update(|s| s.dcs_last_ok = None);
        assert!(failsafe_answer(&cfg, &shared, &ask).is_ok());
    }
}
