//! An in-memory [`Dcs`](super::Dcs) with etcd's semantics, for the
//! deterministic simulation (`sim/`).
//!
//! [`MemoryStore`] is the cluster's etcd: keys with create and mod
//! revisions, leases with a granted TTL that expire on the (paused) tokio
//! clock and take their keys with them, compare-and-create for the leader
//! key, and a watch that wakes the sidecars when a key other than a member
//! key or `status` changes. [`MemoryDcs`] is one sidecar's client of it, mirroring
//! `EtcdDcs` call by call (the same leases held, the same decode boundary
//! for every value read), with faults a test can set: the store down or
//! slow for everyone, or one sidecar's link to it cut.
//!
//! A call that is slower than the request timeout fails on the client's
//! side but may still have taken effect on the store, as with a real etcd.

use super::decode::{self, RawCluster, RawKv};
use super::*;
use crate::clock::Instant;
use crate::core::{self, lease::AdoptLease};
use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

#[derive(Debug, Clone)]
struct Kv {
    value: Vec<u8>,
    create_revision: i64,
    lease: i64,
}

#[derive(Debug, Clone)]
struct LeaseRec {
    granted_secs: i64,
    expires: Instant,
}

#[derive(Default)]
struct Inner {
    revision: i64,
    kvs: BTreeMap<String, Kv>,
    leases: BTreeMap<i64, LeaseRec>,
    next_lease: i64,
}

impl Inner {
    /// Drops expired leases and the keys bound to them.
    fn expire(&mut self, now: Instant) -> bool {
        let dead: Vec<i64> = self.leases.iter().filter(|(_, l)| l.expires <= now).map(|(id, _)| *id).collect();
        let mut changed = false;
        for id in dead {
            self.leases.remove(&id);
            changed |= self.drop_keys_of(id);
        }
        changed
    }

    fn drop_keys_of(&mut self, lease: i64) -> bool {
        let before = self.kvs.len();
        self.kvs.retain(|_, kv| kv.lease != lease);
        if self.kvs.len() != before {
            self.revision += 1;
            return true;
        }
        false
    }

    fn put(&mut self, key: &str, value: Vec<u8>, lease: i64) {
        self.revision += 1;
        let create_revision = self.kvs.get(key).map(|k| k.create_revision).unwrap_or(self.revision);
        self.kvs.insert(key.to_string(), Kv { value, create_revision, lease });
    }
}

/// The faults of the whole store.
#[derive(Debug, Default)]
pub struct StoreFaults {
    /// Every call fails (etcd down, or its quorum lost).
    pub down: AtomicBool,
    /// Every call takes this long (ms) before it is answered.
    pub latency_ms: AtomicU64,
    /// etcd's disk stalls: a call that writes (a put, a transaction, a
    /// lease granted or revoked) gets no answer and is carried out only
    /// when the stall ends, while reads and lease keep-alives, which do not
    /// touch the disk, answer as usual. See [`MemoryStore::stall_writes`].
    writes_stalled: AtomicBool,
}

/// The cluster's etcd, in memory.
#[derive(Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    pub faults: StoreFaults,
    /// Watchers: each sidecar's wake, with whether its link is cut.
    watchers: Mutex<Vec<(Arc<Notify>, Arc<AtomicBool>)>>,
    /// Calls served (for the scale figures).
    pub calls: AtomicU64,
    /// The writes proposed during a disk stall, in order.
    stalled: Mutex<Vec<StalledWrite>>,
}

/// A write waiting for etcd's disk (see [`StoreFaults`]).
type StalledWrite = Box<dyn FnOnce(&mut Inner) + Send>;

impl MemoryStore {
    pub fn new() -> Arc<Self> {
        Arc::new(MemoryStore::default())
    }

    fn with<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> T {
        let mut g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if g.expire(Instant::now()) {
            drop(g);
            self.notify_watchers();
            g = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        }
        f(&mut g)
    }

    /// Starts or ends a stall of etcd's disk. At its end the writes
    /// proposed meanwhile are carried out in order, as etcd applies a
    /// proposal whose client gave up on it.
    pub fn stall_writes(&self, on: bool) {
        self.faults.writes_stalled.store(on, Ordering::Relaxed);
        if !on {
            let queued = std::mem::take(&mut *self.stalled.lock().unwrap_or_else(|e| e.into_inner()));
            if !queued.is_empty() {
                self.with(|i| queued.into_iter().for_each(|w| w(i)));
                self.notify_watchers();
            }
        }
    }

    /// Expires leases now (the simulation calls it every tick, so that a
    /// lapsed leader key disappears on time even when nobody reads).
    pub fn tick(&self) {
        self.with(|_| ());
    }

    /// etcd elected a new leader of its own: like etcd's lessor, the new
    /// leader renews every lease for its full TTL from now, so a key can
    /// outlive a dead holder by up to twice its TTL.
    pub fn elect_new_leader(&self) {
        self.with(|i| {
            let now = Instant::now();
            for l in i.leases.values_mut() {
                l.expires = now + Duration::from_secs(l.granted_secs.max(0) as u64);
            }
        });
    }

    fn notify_watchers(&self) {
        for (wake, cut) in self.watchers.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if !cut.load(Ordering::Relaxed) && !self.faults.down.load(Ordering::Relaxed) {
                wake.notify_one();
            }
        }
    }

    /// Test access: writes a raw value (garbage included), no lease.
    pub fn put_raw(&self, key: &str, value: &[u8]) {
        self.with(|i| i.put(key, value.to_vec(), 0));
        self.notify_watchers();
    }

    /// Test access: deletes a key.
    pub fn delete(&self, key: &str) {
        let changed = self.with(|i| {
            let had = i.kvs.remove(key).is_some();
            if had {
                i.revision += 1;
            }
            had
        });
        if changed {
            self.notify_watchers();
        }
    }

    /// Test access: the value of a key.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.with(|i| i.kvs.get(key).map(|k| k.value.clone()))
    }

    /// Test access: the leader key's holder as written (if readable).
    pub fn leader(&self) -> Option<String> {
        self.get("leader").and_then(|v| serde_json::from_slice::<LeaderRecord>(&v).ok()).map(|l| l.node)
    }

    fn raw(i: &Inner, key: &str) -> Option<RawKv> {
        i.kvs.get(key).map(|k| RawKv { key: key.to_string(), value: k.value.clone(), create_revision: k.create_revision, lease: k.lease })
    }
}

/// One sidecar's client of the [`MemoryStore`].
pub struct MemoryDcs {
    store: Arc<MemoryStore>,
    node: String,
    ttl_secs: i64,
    timeout: Duration,
    /// This sidecar's link to the store is cut (a partition).
    pub cut: Arc<AtomicBool>,
    member_lease: AtomicI64,
    leader_lease: AtomicI64,
}

impl MemoryDcs {
    pub fn new(store: Arc<MemoryStore>, node: &str, ttl: Duration, timeout: Duration, wake: Arc<Notify>, cut: Arc<AtomicBool>) -> Self {
        {
            let mut w = store.watchers.lock().unwrap_or_else(|e| e.into_inner());
            if !w.iter().any(|(x, _)| Arc::ptr_eq(x, &wake)) {
                w.push((wake, Arc::clone(&cut)));
            }
        }
        MemoryDcs {
            store,
            node: node.to_string(),
            ttl_secs: ttl.as_secs().max(2) as i64,
            timeout,
            cut,
            member_lease: AtomicI64::new(0),
            leader_lease: AtomicI64::new(0),
        }
    }

    /// Runs one call against the store as the network lets it: a cut link
    /// or a down store fails after the request timeout; a slow store
    /// answers after its latency, and a call slower than the timeout fails
    /// on this side, though the store may have applied it half-way.
    async fn call<T>(&self, f: impl FnOnce(&mut Inner) -> T) -> Result<T> {
        self.store.calls.fetch_add(1, Ordering::Relaxed);
        if self.cut.load(Ordering::Relaxed) || self.store.faults.down.load(Ordering::Relaxed) {
            tokio::time::sleep(self.timeout).await;
            bail!("etcd unreachable (simulated)");
        }
        let latency = Duration::from_millis(self.store.faults.latency_ms.load(Ordering::Relaxed));
        let half = latency / 2;
        if half > self.timeout {
            tokio::time::sleep(self.timeout).await;
            bail!("no answer within {:?} (simulated)", self.timeout);
        }
        tokio::time::sleep(half).await;
        if self.store.faults.down.load(Ordering::Relaxed) {
            bail!("etcd unreachable (simulated)");
        }
        let out = self.store.with(f);
        if latency > self.timeout {
            tokio::time::sleep(self.timeout - half).await;
            bail!("no answer within {:?} (simulated; applied)", self.timeout);
        }
        tokio::time::sleep(latency - half).await;
        Ok(out)
    }

    /// A call that writes: as [`call`](Self::call), except during a disk
    /// stall, when it is queued to be carried out at the stall's end and
    /// this side gives up after the request timeout.
    async fn write<T>(&self, f: impl FnOnce(&mut Inner) -> T + Send + 'static) -> Result<T> {
        let faults = &self.store.faults;
        let reachable = !self.cut.load(Ordering::Relaxed) && !faults.down.load(Ordering::Relaxed);
        if reachable && faults.writes_stalled.load(Ordering::Relaxed) {
            self.store.calls.fetch_add(1, Ordering::Relaxed);
            self.store.stalled.lock().unwrap_or_else(|e| e.into_inner()).push(Box::new(move |i| {
                f(i);
            }));
            tokio::time::sleep(self.timeout).await;
            bail!("no answer within {:?} (simulated: etcd's disk stalled)", self.timeout);
        }
        self.call(f).await
    }

    async fn grant(&self) -> Result<i64> {
        let ttl = self.ttl_secs;
        self.write(move |i| {
            i.next_lease += 1;
            let id = i.next_lease;
            i.leases.insert(id, LeaseRec { granted_secs: ttl, expires: Instant::now() + Duration::from_secs(ttl as u64) });
            id
        })
        .await
    }

    /// Keep-alive: Ok(false) when the lease is gone.
    async fn keep_alive(&self, id: i64) -> Result<bool> {
        self.call(move |i| match i.leases.get_mut(&id) {
            Some(l) => {
                l.expires = Instant::now() + Duration::from_secs(l.granted_secs as u64);
                true
            }
            None => false,
        })
        .await
    }

    async fn revoke(&self, id: i64) -> Result<()> {
        let changed = self
            .write(move |i| {
                i.leases.remove(&id);
                i.drop_keys_of(id)
            })
            .await?;
        if changed {
            self.store.notify_watchers();
        }
        Ok(())
    }

    async fn write_key(&self, key: &str, value: Option<Vec<u8>>) -> Result<()> {
        // As the etcd watch: the leader's `status` (every loop) wakes nobody.
        let wakes = key != "status";
        let key = key.to_string();
        self.write(move |i| match value {
            Some(v) => i.put(&key, v, 0),
            None => {
                if i.kvs.remove(&key).is_some() {
                    i.revision += 1;
                }
            }
        })
        .await?;
        if wakes {
            self.store.notify_watchers();
        }
        Ok(())
    }
}

impl Dcs for MemoryDcs {
    async fn set_or_delete(&self, name: &str, value: Option<Vec<u8>>) -> Result<()> {
        self.write_key(name, value).await
    }

    async fn load(&self) -> Result<ClusterState> {
        let raw = self
            .call(|i| RawCluster {
                leader: MemoryStore::raw(i, "leader"),
                members: i
                    .kvs
                    .range("members/".to_string().."members0".to_string())
                    .map(|(k, v)| RawKv { key: k.clone(), value: v.value.clone(), create_revision: v.create_revision, lease: v.lease })
                    .collect(),
                pause: MemoryStore::raw(i, "pause"),
                request: MemoryStore::raw(i, "switchover"),
                history: i
                    .kvs
                    .range("history/".to_string().."history0".to_string())
                    .rev()
                    .take(3)
                    .map(|(k, v)| RawKv { key: k.clone(), value: v.value.clone(), create_revision: v.create_revision, lease: v.lease })
                    .collect(),
                incident: MemoryStore::raw(i, "incident"),
                sync: MemoryStore::raw(i, "sync"),
                status: MemoryStore::raw(i, "status"),
            })
            .await?;
        let me = decode::Reader {
            node: &self.node,
            leader_lease: self.leader_lease.load(Ordering::Relaxed),
            member_lease: self.member_lease.load(Ordering::Relaxed),
        };
        Ok(decode::decode(raw, me))
    }

    async fn put_member(&self, rec: &MemberRecord) -> Result<()> {
        let mut id = self.member_lease.load(Ordering::Relaxed);
        if id == 0 || !self.keep_alive(id).await? {
            id = self.grant().await?;
            self.member_lease.store(id, Ordering::Relaxed);
        }
        let (key, value) = (format!("members/{}", self.node), serde_json::to_vec(rec)?);
        self.write(move |i| {
            if i.leases.contains_key(&id) {
                i.put(&key, value, id);
                Ok(())
            } else {
                Err(anyhow::anyhow!("lease not found"))
            }
        })
        .await?
    }

    async fn renew_leader(&self) -> Result<bool> {
        let id = self.leader_lease.load(Ordering::Relaxed);
        if id == 0 {
            return Ok(false);
        }
        let alive = self.keep_alive(id).await?;
        if !alive {
            self.leader_lease.store(0, Ordering::Relaxed);
        }
        Ok(alive && self.leader_lease.load(Ordering::Relaxed) == id)
    }

    async fn acquire_leader(&self, rec: &LeaderRecord) -> Result<Option<i64>> {
        let id = self.grant().await?;
        let value = serde_json::to_vec(rec)?;
        let won = self
            .write(move |i| {
                if i.kvs.contains_key("leader") || !i.leases.contains_key(&id) {
                    // A retried attempt that had in fact won carries our lease.
                    return i.kvs.get("leader").filter(|k| k.lease == id).map(|k| k.create_revision);
                }
                i.put("leader", value, id);
                Some(i.revision)
            })
            .await;
        match won {
            Ok(Some(term)) => {
                self.leader_lease.store(id, Ordering::Relaxed);
                self.store.notify_watchers();
                Ok(Some(term))
            }
            Ok(None) => {
                let _ = self.revoke(id).await;
                Ok(None)
            }
            Err(e) => {
                let _ = self.revoke(id).await;
                Err(e)
            }
        }
    }

    async fn adopt_leader(&self, lease: i64, term: i64) -> Result<bool> {
        let granted = self.call(move |i| i.leases.get(&lease).map(|l| (l.granted_secs, l.expires))).await?;
        let remaining = granted.map(|(_, expires)| expires.saturating_duration_since(Instant::now()).as_secs_f64().ceil() as i64);
        let id = match core::lease::adopt_lease(remaining, granted.map_or(0, |g| g.0), self.ttl_secs) {
            AdoptLease::Expired => return Ok(false),
            AdoptLease::Keep => lease,
            AdoptLease::MoveToNewLease => {
                let new = self.grant().await?;
                let moved = self
                    .write(move |i| match i.kvs.get_mut("leader") {
                        Some(k) if k.create_revision == term && k.lease == lease && i.leases.contains_key(&new) => {
                            k.lease = new;
                            i.revision += 1;
                            true
                        }
                        _ => false,
                    })
                    .await?;
                if !moved {
                    let _ = self.revoke(new).await;
                    return Ok(false);
                }
                let _ = self.revoke(lease).await;
                new
            }
        };
        if self.keep_alive(id).await? {
            self.leader_lease.store(id, Ordering::Relaxed);
            return Ok(true);
        }
        Ok(false)
    }

    async fn release_leader(&self) -> Result<()> {
        let id = self.leader_lease.swap(0, Ordering::Relaxed);
        if id != 0 {
            self.revoke(id).await?;
        }
        Ok(())
    }

    fn forget_leader(&self) {
        self.leader_lease.store(0, Ordering::Relaxed);
    }

    fn holds_leader(&self) -> bool {
        self.leader_lease.load(Ordering::Relaxed) != 0
    }

    async fn history(&self) -> Result<Vec<HistoryRecord>> {
        let raw: Vec<Vec<u8>> =
            self.call(|i| i.kvs.range("history/".to_string().."history0".to_string()).map(|(_, v)| v.value.clone()).collect()).await?;
        Ok(raw.iter().filter_map(|v| serde_json::from_slice(v).ok()).collect())
    }

    async fn try_lock(&self, name: &str) -> Result<bool> {
        let id = self.member_lease.load(Ordering::Relaxed);
        if id == 0 {
            return Ok(false);
        }
        let (key, me) = (format!("locks/{name}"), self.node.clone());
        self.write(move |i| match i.kvs.get(&key) {
            Some(k) => k.lease == id && k.value == me.as_bytes(),
            None => {
                i.put(&key, me.into_bytes(), id);
                true
            }
        })
        .await
    }

    async fn remove_member(&self) -> Result<()> {
        let id = self.member_lease.swap(0, Ordering::Relaxed);
        if id != 0 {
            self.revoke(id).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(store: &Arc<MemoryStore>, node: &str) -> MemoryDcs {
        MemoryDcs::new(Arc::clone(store), node, Duration::from_secs(3), Duration::from_secs(1), Arc::default(), Arc::default())
    }

    #[tokio::test(start_paused = true)]
    async fn the_leader_key_is_created_once_and_expires_with_its_lease() {
        let store = MemoryStore::new();
        let (a, b) = (client(&store, "a"), client(&store, "b"));
        let term = a.acquire_leader(&LeaderRecord { node: "a".into(), since_ms: 0 }).await.unwrap();
        assert!(term.is_some());
        assert_eq!(b.acquire_leader(&LeaderRecord { node: "b".into(), since_ms: 0 }).await.unwrap(), None);
        assert_eq!(b.load().await.unwrap().term, term);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(a.renew_leader().await.unwrap());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(store.leader().as_deref(), Some("a"), "renewed: still held");
        tokio::time::sleep(Duration::from_secs(2)).await;
        store.tick();
        assert_eq!(store.leader(), None, "expired 3 s after the last renewal");
        assert!(!a.renew_leader().await.unwrap());
        assert!(b.acquire_leader(&LeaderRecord { node: "b".into(), since_ms: 0 }).await.unwrap() > term);
    }

    #[tokio::test(start_paused = true)]
    async fn an_adopted_lease_of_another_ttl_is_replaced_keeping_the_term() {
        let store = MemoryStore::new();
        let old = MemoryDcs::new(Arc::clone(&store), "a", Duration::from_secs(10), Duration::from_secs(1), Arc::default(), Arc::default());
        let term = old.acquire_leader(&LeaderRecord { node: "a".into(), since_ms: 0 }).await.unwrap().unwrap();
        let st = old.load().await.unwrap();
        let new = client(&store, "a");
        assert!(new.adopt_leader(st.leader_lease.unwrap(), term).await.unwrap());
        let st = new.load().await.unwrap();
        assert_eq!(st.term, Some(term));
        assert_ne!(st.leader_lease, Some(1), "moved to a new lease");
        tokio::time::sleep(Duration::from_secs(4)).await;
        store.tick();
        assert_eq!(store.leader(), None, "the key now lapses after the configured 3 s, not the old 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_garbage_value_is_reported_and_the_rest_is_read() {
        let store = MemoryStore::new();
        let a = client(&store, "a");
        a.acquire_leader(&LeaderRecord { node: "a".into(), since_ms: 0 }).await.unwrap();
        store.put_raw("pause", b"{not json");
        let st = a.load().await.unwrap();
        assert_eq!(st.leader.unwrap().node, "a");
        assert!(st.pause.is_none());
        assert_eq!(st.bad_values[0].key, "pause");
    }

    #[tokio::test(start_paused = true)]
    async fn a_cut_link_fails_after_the_timeout() {
        let store = MemoryStore::new();
        let a = client(&store, "a");
        a.cut.store(true, Ordering::Relaxed);
        let t0 = Instant::now();
        assert!(a.load().await.is_err());
        assert_eq!(t0.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_disk_stall_holds_writes_until_it_ends_while_keep_alives_answer() {
        let store = MemoryStore::new();
        let a = client(&store, "a");
        a.acquire_leader(&LeaderRecord { node: "a".into(), since_ms: 0 }).await.unwrap();
        store.stall_writes(true);
        assert!(a.renew_leader().await.unwrap(), "a keep-alive does not touch the disk");
        assert_eq!(a.load().await.unwrap().leader.unwrap().node, "a", "nor does a read");
        assert!(a.release_leader().await.is_err(), "the revoke gets no answer");
        store.tick();
        assert_eq!(store.leader().as_deref(), Some("a"), "and is not carried out yet");
        store.stall_writes(false);
        assert_eq!(store.leader(), None, "the revoke is carried out when the stall ends");
    }
}
