//! The etcd implementation of [`Dcs`](super::Dcs).
//!
//! Two things etcd-client does not do for us:
//! - it round-robins over endpoints without retrying a dead one, so we keep
//!   one client per endpoint and move to the next on any transport error;
//! - its calls can hang on a slow server, so every call runs under the
//!   configured request deadline.

use super::*;
use crate::config::EtcdConfig;
use crate::core::{self, lease::AdoptLease};
use anyhow::{anyhow, bail, Context, Result};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper, PutOptions, SortOrder,
    SortTarget, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};

/// A lease this process keeps alive, with its open keep-alive stream.
struct Lease {
    id: i64,
    stream: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
}

pub struct EtcdDcs {
    clients: Vec<(String, Client)>,
    current: AtomicUsize,
    base: String,
    node: String,
    ttl_secs: i64,
    timeout: Duration,
    member_lease: Mutex<Option<Lease>>,
    leader_lease: Mutex<Option<Lease>>,
    /// Mirror of the leader lease id for synchronous reads (0 = none).
    leader_id: AtomicI64,
}

impl EtcdDcs {
    /// Builds clients for every endpoint. Connecting is lazy: a dead
    /// endpoint shows up on the first call, not here.
    pub async fn new(etcd: &EtcdConfig, cluster: &str, node: &str, ttl: Duration) -> Result<Self> {
        let (endpoints, prefix, timeout) = (&etcd.endpoints, &etcd.prefix, etcd.request_timeout);
        let tls = etcd.tls()?;
        let mut clients = Vec::new();
        for ep in endpoints {
            let mut opts =
                ConnectOptions::new().with_connect_timeout(timeout).with_timeout(timeout).with_keep_alive(Duration::from_secs(2), timeout);
            if let Some(t) = &tls {
                opts = opts.with_tls(t.clone());
            }
            let c = Client::connect([ep.as_str()], Some(opts)).await.with_context(|| format!("etcd endpoint {ep}"))?;
            clients.push((ep.clone(), c));
        }
        Ok(EtcdDcs {
            clients,
            current: AtomicUsize::new(0),
            base: format!("{}/{}/", prefix.trim_end_matches('/'), cluster),
            node: node.to_string(),
            ttl_secs: ttl.as_secs().max(2) as i64,
            timeout,
            member_lease: Mutex::new(None),
            leader_lease: Mutex::new(None),
            leader_id: AtomicI64::new(0),
        })
    }

    /// The key prefix of this cluster, e.g. `/vigil/lab/`.
    pub fn base(&self) -> &str {
        &self.base
    }

    fn key(&self, rest: &str) -> String {
        format!("{}{rest}", self.base)
    }

    /// Runs `f` against the current endpoint and, on a transport failure
    /// or timeout, against each other endpoint in turn.
    async fn call<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.clients.len();
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        for attempt in 0..n {
            let idx = (start + attempt) % n;
            let (ep, client) = &self.clients[idx];
            match tokio::time::timeout(self.timeout, f(client.clone())).await {
                Ok(Ok(v)) => {
                    if attempt > 0 {
                        self.current.store(idx, Ordering::Relaxed);
                    }
                    return Ok(v);
                }
                Ok(Err(e)) if !is_transient(&e) => return Err(anyhow!("etcd {what} at {ep}: {e}")),
                Ok(Err(e)) => last = Some(format!("{ep}: {e}")),
                Err(_) => last = Some(format!("{ep}: no answer within {:?}", self.timeout)),
            }
        }
        self.current.store((start + 1) % n, Ordering::Relaxed);
        bail!("etcd {what} failed on every endpoint (last: {})", last.unwrap_or_default())
    }

    async fn grant(&self) -> Result<i64> {
        let ttl = self.ttl_secs;
        let r = self.call("lease grant", |mut c| async move { c.lease_grant(ttl, None).await }).await?;
        Ok(r.id())
    }

    /// Sends one keep-alive for `lease`. Ok(false) if etcd says it expired.
    async fn keep_alive(&self, lease: &mut Lease) -> Result<bool> {
        for _ in 0..2 {
            if lease.stream.is_none() {
                let id = lease.id;
                match self.call("lease keep-alive", |mut c| async move { c.lease_keep_alive(id).await }).await {
                    Ok(st) => lease.stream = Some(st),
                    Err(e) if format!("{e:#}").contains("lease not found") => return Ok(false),
                    Err(e) => return Err(e),
                }
            }
            let (keeper, stream) = lease.stream.as_mut().expect("set above");
            let res = tokio::time::timeout(self.timeout, async {
                keeper.keep_alive().await?;
                stream.message().await
            })
            .await;
            match res {
                Ok(Ok(Some(resp))) => return Ok(resp.ttl() > 0),
                // etcd answers a keep-alive for an expired lease with NotFound.
                Ok(Err(e)) if e.to_string().contains("lease not found") => {
                    lease.stream = None;
                    return Ok(false);
                }
                _ => {
                    // Broken stream: open a new one (on the next endpoint if need be).
                    lease.stream = None;
                    self.current.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        bail!("etcd lease keep-alive failed")
    }

    /// Starts a background watch on the cluster's keys and pokes `wake`
    /// whenever the leader, pause or switchover key changes. Member-key
    /// updates (every loop on every node) and the leader's `status` (every
    /// loop, and a wake would run the leader's loop again at once, writing
    /// it again) do not wake anyone.
    pub fn spawn_watch(self: &Arc<Self>, wake: Arc<Notify>) {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let (members, status) = (me.key("members/"), me.key("status"));
            let mut attempt = 0usize;
            loop {
                let (_, client) = &me.clients[attempt % me.clients.len()];
                attempt += 1;
                let mut client = client.clone();
                let stream = tokio::time::timeout(me.timeout, client.watch(me.base.clone(), Some(WatchOptions::new().with_prefix()))).await;
                let Ok(Ok(mut stream)) = stream else {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                };
                // Something may have changed while we were not watching.
                wake.notify_one();
                while let Ok(Some(resp)) = stream.message().await {
                    let relevant = resp.events().iter().any(|e| {
                        let key = e.kv().and_then(|kv| kv.key_str().ok()).unwrap_or("");
                        key != status && (!key.starts_with(&members) || e.event_type() == EventType::Delete)
                    });
                    if relevant {
                        wake.notify_one();
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
    }
}

/// How many of the newest history records a load reads (the newest
/// readable one counts).
const HISTORY_READ: i64 = 3;

fn is_transient(e: &etcd_client::Error) -> bool {
    use etcd_client::Error::*;
    match e {
        GRpcStatus(s) => matches!(
            s.code(),
            tonic_code::Unavailable | tonic_code::DeadlineExceeded | tonic_code::Unknown | tonic_code::Aborted | tonic_code::Internal
        ),
        TransportError(_) | IoError(_) | LeaseKeepAliveError(_) | WatchError(_) => true,
        _ => false,
    }
}

mod tonic_code {
    pub use tonic::Code::*;
}

fn parse<T: serde::de::DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).with_context(|| format!("etcd key {key} holds invalid JSON"))
}

impl Dcs for EtcdDcs {
    async fn set_or_delete(&self, name: &str, value: Option<Vec<u8>>) -> Result<()> {
        self.write_key(name, value).await
    }

    async fn load(&self) -> Result<ClusterState> {
        let (sync, status) = (self.key("sync"), self.key("status"));
        let (leader, members, pause, request, history, incident) = (
            self.key("leader"),
            self.key("members/"),
            self.key("pause"),
            self.key("switchover"),
            self.key("history/"),
            self.key("incident"),
        );
        let txn = Txn::new().and_then([
            TxnOp::get(leader.clone(), None),
            TxnOp::get(members.clone(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(pause.clone(), None),
            TxnOp::get(request.clone(), None),
            TxnOp::get(
                history.clone(),
                Some(GetOptions::new().with_prefix().with_sort(SortTarget::Key, SortOrder::Descend).with_limit(HISTORY_READ)),
            ),
            TxnOp::get(incident.clone(), None),
            TxnOp::get(sync.clone(), None),
            TxnOp::get(status.clone(), None),
        ]);
        let resp = self
            .call("load", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        let gets: Vec<_> = resp
            .op_responses()
            .into_iter()
            .map(|r| match r {
                TxnOpResponse::Get(g) => g,
                _ => unreachable!("only gets in the load transaction"),
            })
            .collect();
        let raw_kv = |kv: &etcd_client::KeyValue| decode::RawKv {
            key: kv.key_str().unwrap_or_default().strip_prefix(self.base.as_str()).unwrap_or_default().to_string(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            lease: kv.lease(),
        };
        let first = |i: usize| gets[i].kvs().first().map(raw_kv);
        let raw = decode::RawCluster {
            leader: first(0),
            members: gets[1].kvs().iter().map(raw_kv).collect(),
            pause: first(2),
            request: first(3),
            history: gets[4].kvs().iter().map(raw_kv).collect(),
            incident: first(5),
            sync: first(6),
            status: first(7),
        };
        // The member lease is read without waiting: a renewal in flight
        // holds it, and then this one read skips the duplicate-name check.
        let member_lease = self.member_lease.try_lock().ok().and_then(|g| g.as_ref().map(|l| l.id)).unwrap_or(0);
        let me = decode::Reader { node: &self.node, leader_lease: self.leader_id.load(Ordering::Relaxed), member_lease };
        let st = decode::decode(raw, me);
        Ok(st)
    }

    async fn put_member(&self, rec: &MemberRecord) -> Result<()> {
        let mut guard = self.member_lease.lock().await;
        let alive = match guard.as_mut() {
            Some(l) => self.keep_alive(l).await?,
            None => false,
        };
        if !alive {
            *guard = Some(Lease { id: self.grant().await?, stream: None });
        }
        let id = guard.as_ref().expect("set above").id;
        let key = self.key(&format!("members/{}", self.node));
        let value = serde_json::to_vec(rec)?;
        self.call("put member", |mut c| {
            let (key, value) = (key.clone(), value.clone());
            async move { c.put(key, value, Some(PutOptions::new().with_lease(id))).await }
        })
        .await?;
        Ok(())
    }

    async fn renew_leader(&self) -> Result<bool> {
        let mut guard = self.leader_lease.lock().await;
        if self.leader_id.load(Ordering::Relaxed) == 0 {
            // Forgotten (fenced) while a call was in flight.
            *guard = None;
            return Ok(false);
        }
        let Some(l) = guard.as_mut() else { return Ok(false) };
        let alive = self.keep_alive(l).await?;
        if !alive {
            *guard = None;
            self.leader_id.store(0, Ordering::Relaxed);
        }
        Ok(alive)
    }

    async fn acquire_leader(&self, rec: &LeaderRecord) -> Result<Option<i64>> {
        let id = self.grant().await?;
        let key = self.key("leader");
        let value = serde_json::to_vec(rec)?;
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), value, Some(PutOptions::new().with_lease(id)))])
            .or_else([TxnOp::get(key.clone(), None)]);
        let resp = self
            .call("acquire leader", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await;
        let won = match resp {
            Ok(r) if r.succeeded() => r.header().map(|h| h.revision()),
            Ok(r) => {
                // Lost, or a retried attempt that had in fact won: the key
                // then carries our lease.
                r.op_responses().into_iter().find_map(|op| match op {
                    TxnOpResponse::Get(g) => g.kvs().first().filter(|kv| kv.lease() == id).map(|kv| kv.create_revision()),
                    _ => None,
                })
            }
            Err(e) => {
                let _ = self.call("lease revoke", |mut c| async move { c.lease_revoke(id).await }).await;
                return Err(e);
            }
        };
        match won {
            Some(term) => {
                *self.leader_lease.lock().await = Some(Lease { id, stream: None });
                self.leader_id.store(id, Ordering::Relaxed);
                Ok(Some(term))
            }
            None => {
                let _ = self.call("lease revoke", |mut c| async move { c.lease_revoke(id).await }).await;
                Ok(None)
            }
        }
    }

    async fn adopt_leader(&self, lease: i64, term: i64) -> Result<bool> {
        let granted = self.call("lease time-to-live", |mut c| async move { c.lease_time_to_live(lease, None).await }).await?;
        let id = match core::lease::adopt_lease(Some(granted.ttl()), granted.granted_ttl(), self.ttl_secs) {
            AdoptLease::Expired => return Ok(false),
            AdoptLease::Keep => lease,
            // The earlier process ran with another ttl: move the key to a
            // lease of the configured ttl, in one transaction that keeps
            // the value and the term.
            AdoptLease::MoveToNewLease => {
                let new = self.grant().await?;
                let key = self.key("leader");
                let txn = Txn::new()
                    .when([
                        Compare::create_revision(key.clone(), CompareOp::Equal, term),
                        Compare::lease(key.clone(), CompareOp::Equal, lease),
                    ])
                    .and_then([TxnOp::put(key.clone(), vec![], Some(PutOptions::new().with_lease(new).with_ignore_value()))]);
                let moved = self
                    .call("move the leader key to a new lease", |mut c| {
                        let txn = txn.clone();
                        async move { c.txn(txn).await }
                    })
                    .await
                    .map(|r| r.succeeded());
                if !matches!(moved, Ok(true)) {
                    let _ = self.call("lease revoke", |mut c| async move { c.lease_revoke(new).await }).await;
                    return moved.map(|_| false);
                }
                tracing::warn!(
                    old_ttl = granted.granted_ttl(),
                    ttl = self.ttl_secs,
                    "adopted the leader key on a new lease of the configured ttl"
                );
                let _ = self.call("lease revoke", |mut c| async move { c.lease_revoke(lease).await }).await;
                new
            }
        };
        let mut l = Lease { id, stream: None };
        if self.keep_alive(&mut l).await? {
            *self.leader_lease.lock().await = Some(l);
            self.leader_id.store(id, Ordering::Relaxed);
            return Ok(true);
        }
        Ok(false)
    }

    async fn release_leader(&self) -> Result<()> {
        let taken = self.leader_lease.lock().await.take();
        self.leader_id.store(0, Ordering::Relaxed);
        if let Some(l) = taken {
            let id = l.id;
            // Revoking the lease deletes the key bound to it, atomically.
            self.call("lease revoke", |mut c| async move { c.lease_revoke(id).await }).await?;
        }
        Ok(())
    }

    fn forget_leader(&self) {
        self.leader_id.store(0, Ordering::Relaxed);
        if let Ok(mut g) = self.leader_lease.try_lock() {
            *g = None;
        }
    }

    fn holds_leader(&self) -> bool {
        self.leader_id.load(Ordering::Relaxed) != 0
    }

    async fn history(&self) -> Result<Vec<HistoryRecord>> {
        let key = self.key("history/");
        let r = self
            .call("read history", |mut c| {
                let key = key.clone();
                async move { c.get(key, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        // A bad record is skipped (and named), not a reason to show none.
        Ok(r.kvs()
            .iter()
            .filter_map(|kv| {
                let key = kv.key_str().unwrap_or_default();
                parse(key, kv.value()).map_err(|e| tracing::warn!("{e:#}")).ok()
            })
            .collect())
    }

    async fn try_lock(&self, name: &str) -> Result<bool> {
        let Some(id) = self.member_lease.lock().await.as_ref().map(|l| l.id) else { return Ok(false) };
        let key = self.key(&format!("locks/{name}"));
        let me = self.node.clone();
        let txn = Txn::new()
            .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key.clone(), me.clone(), Some(PutOptions::new().with_lease(id)))])
            .or_else([TxnOp::get(key.clone(), None)]);
        let r = self
            .call("lock", |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if r.succeeded() {
            return Ok(true);
        }
        Ok(r.op_responses().into_iter().any(|op| match op {
            TxnOpResponse::Get(g) => g.kvs().first().is_some_and(|kv| kv.value() == me.as_bytes() && kv.lease() == id),
            _ => false,
        }))
    }

    async fn remove_member(&self) -> Result<()> {
        if let Some(l) = self.member_lease.lock().await.take() {
            let id = l.id;
            self.call("lease revoke", |mut c| async move { c.lease_revoke(id).await }).await?;
        }
        Ok(())
    }
}

impl EtcdDcs {
    /// Reads a JSON value stored under the cluster's prefix.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, name: &str) -> Result<Option<T>> {
        let key = self.key(name);
        let r = self
            .call("get", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        r.kvs().first().map(|kv| parse(&key, kv.value())).transpose()
    }

    /// Stores a JSON value under the cluster's prefix.
    pub async fn put_json<T: serde::Serialize>(&self, name: &str, value: &T) -> Result<()> {
        self.write_key(name, Some(serde_json::to_vec(value)?)).await
    }

    async fn write_key(&self, name: &str, value: Option<Vec<u8>>) -> Result<()> {
        let key = self.key(name);
        match value {
            Some(v) => {
                self.call(&format!("put {name}"), |mut c| {
                    let (key, v) = (key.clone(), v.clone());
                    async move { c.put(key, v, None).await }
                })
                .await?;
            }
            None => {
                self.call(&format!("delete {name}"), |mut c| {
                    let key = key.clone();
                    async move { c.delete(key, None).await }
                })
                .await?;
            }
        }
        Ok(())
    }
}
