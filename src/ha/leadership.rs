//! Holding the right to write: the leader lease renewed by the loop and
//! beside every long action, the watchdog that fences a database whose
//! lease lapsed, and the etcd failsafe round. The lease's age is always
//! counted from when a renewal was sent.

use super::Ha;
use crate::clock::Instant;
use crate::core::{self, Action};
use crate::dcs::{now_ms, ClusterState, Dcs, MemberRecord};
use crate::engine::Engine;
use crate::peers::PeerApi;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// When the leader lease was last known renewed (always the moment the
/// request was sent), shared by the loop, the renewals beside long actions
/// and the lease watchdog. Each renewal feeds, and each loss disarms, the
/// node watchdog device (`core::watchdog` decides).
pub(super) struct Renewals {
    last: Mutex<Option<Instant>>,
    device: Mutex<crate::watchdog::NodeWatchdog>,
}

impl Renewals {
    pub(super) fn new(device: crate::watchdog::NodeWatchdog) -> Renewals {
        Renewals { last: Mutex::new(None), device: Mutex::new(device) }
    }

    /// A renewal sent at `sent` succeeded (its answer is in now).
    pub(super) fn renewed(&self, sent: Instant) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(sent);
        let event = core::watchdog::LeaseEvent::Renewed { answer_delay: sent.elapsed() };
        self.device.lock().unwrap_or_else(|e| e.into_inner()).on(event);
    }

    /// This node no longer holds the lease.
    pub(super) fn dropped(&self) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = None;
        self.device.lock().unwrap_or_else(|e| e.into_inner()).on(core::watchdog::LeaseEvent::Dropped);
    }

    pub(super) fn last(&self) -> Option<Instant> {
        *self.last.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The lease this process holds (`held`) is lapsing (`core::lease_lapsing`).
    pub(super) fn lapsing(&self, held: bool, policy: &core::Policy) -> bool {
        core::lease_lapsing(&core::LeaseState { held, renewed_ago: self.last().map(|t| t.elapsed()), given_up: false }, policy)
    }
}

impl<E: Engine, D: Dcs, P: PeerApi> Ha<E, D, P> {
    /// Runs beside a long action: every `loop` it renews the leader lease
    /// (if held) and the member record, showing the action and how long it
    /// has run ("promoting since 12 s"). Returns (so cancelling the action)
    /// only if the leader lease expires or was not renewed within
    /// `ttl - safety_margin`: the database must then be fenced, not left
    /// to finish promoting or handing over without a lease.
    pub(super) fn keep_alive_beside(&self, action: &Action) -> impl std::future::Future<Output = String> + Send + 'static {
        let (dcs, shared, renewal, paused) =
            (Arc::clone(&self.dcs), Arc::clone(&self.shared), Arc::clone(&self.renewals), Arc::clone(&self.paused));
        let (every, limit) = (self.cfg.timing.loop_wait, self.cfg.timing.ttl.saturating_sub(self.cfg.timing.safety_margin));
        let what = action.doing();
        let started = Instant::now();
        // The lapse is watched every 100 ms, apart from the renewals, which
        // can each wait for an etcd deadline: a node resumed from a freeze
        // must not finish an action for a loop and a deadline before it
        // fences (found by the simulation, seed 5012989).
        let lapsed = {
            let (dcs, renewal, paused, policy) = (Arc::clone(&dcs), Arc::clone(&renewal), Arc::clone(&paused), self.policy.clone());
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    if !paused.load(std::sync::atomic::Ordering::Relaxed) && renewal.lapsing(dcs.holds_leader(), &policy) {
                        return format!("the leader lease was not renewed for {limit:?} while {what}; cancelled");
                    }
                }
            }
        };
        let renew = async move {
            loop {
                tokio::time::sleep(every).await;
                if dcs.holds_leader() {
                    let sent = Instant::now();
                    match dcs.renew_leader().await {
                        Ok(true) => renewal.renewed(sent),
                        Ok(false) => return format!("the leader lease expired while {what}; cancelled"),
                        Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not renew the leader lease while {what}"),
                    }
                }
                // systemd's watchdog: the sidecar is alive beside the action.
                crate::watchdog::sd_notify("WATCHDOG=1");
                if let Some(mut me) = shared.get().me.clone() {
                    me.state = format!("{what} since {:.0}s", started.elapsed().as_secs_f64());
                    me.updated_ms = now_ms();
                    if dcs.put_member(&me).await.is_ok() {
                        shared.update(|s| s.me = Some(me));
                    }
                }
            }
        };
        async move {
            // `biased`: the lapse first, and a fixed order for replay.
            tokio::select! {
                biased;
                why = lapsed => why,
                why = renew => why,
            }
        }
    }

    /// When the lease was last known renewed: always the moment the
    /// request was *sent*, never when its answer came. The lease's TTL runs
    /// on etcd from (about) the send; an answer that arrives late (a slow
    /// etcd, a node frozen between request and answer) must not make a
    /// lapsed lease look fresh (found by the simulation, seed 5012989,
    /// once its replay no longer depended on a random `select!` order).
    pub(super) fn set_renewal(&self, at: Option<Instant>) {
        match at {
            Some(sent) => self.renewals.renewed(sent),
            None => self.renewals.dropped(),
        }
    }

    pub(super) fn renewal(&self) -> Option<Instant> {
        self.renewals.last()
    }

    /// The lease watchdog: the loop can be slowed by etcd calls running
    /// into their deadlines, so a separate task checks every 100 ms and
    /// fences the database once the lease was last renewed more than
    /// `ttl - safety_margin` ago. The decision core applies the same rule;
    /// this is what keeps it on time.
    ///
    /// It drives the database only through `db_owner`, the lock the loop
    /// holds while it executes an action, so the two never act on the
    /// database at once (a fence racing the loop's own fence, then a
    /// rewind under the server the watchdog had just started, was seen).
    /// Having waited for the lock it looks again: the loop may have
    /// renewed or released the lease meanwhile.
    pub(super) fn lease_watchdog(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let (engine, dcs, shared) = (Arc::clone(&self.engine), Arc::clone(&self.dcs), Arc::clone(&self.shared));
        let (renewal, paused, owner) = (Arc::clone(&self.renewals), Arc::clone(&self.paused), Arc::clone(&self.db_owner));
        let limit = self.cfg.timing.ttl.saturating_sub(self.cfg.timing.safety_margin);
        let renewals = Arc::clone(&renewal);
        let policy = self.policy.clone();
        let lapsed = move || !paused.load(std::sync::atomic::Ordering::Relaxed) && renewal.lapsing(dcs.holds_leader(), &policy);
        let dcs = Arc::clone(&self.dcs);
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                if !lapsed() {
                    continue;
                }
                let _owner = owner.lock().await;
                if !lapsed() {
                    continue;
                }
                tracing::error!("leader lease not renewed for {limit:?} (ttl - safety_margin): fencing the database");
                shared.update(|s| s.writable_leader = false);
                dcs.forget_leader();
                match engine.fence().await {
                    // Fenced: the node watchdog need not reset the node.
                    Ok(()) => renewals.dropped(),
                    // Not fenced: an armed node watchdog resets the node
                    // before the lease can expire.
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "fencing failed"),
                }
            }
        }
    }

    pub(super) async fn renew_lease(&mut self, c: &ClusterState) {
        if !self.dcs.holds_leader() {
            return;
        }
        // The key names someone else: our lease no longer guards anything.
        if c.leader.as_ref().is_some_and(|l| l.node != self.cfg.node) || c.leader.is_none() {
            tracing::warn!("leader key is no longer ours; dropping the lease");
            self.dcs.forget_leader();
            self.set_renewal(None);
            return;
        }
        let sent = Instant::now();
        match self.dcs.renew_leader().await {
            Ok(true) => self.set_renewal(Some(sent)),
            Ok(false) => {
                tracing::error!("leader lease expired");
                self.set_renewal(None);
            }
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "could not renew the leader lease"),
        }
    }

    /// etcd failsafe, leader side: etcd is unreachable. Ask every member
    /// known from etcd whether it may keep serving; if all say yes (none
    /// can reach etcd, so none can elect a leader), count it as a lease
    /// renewal. One missing or refusing answer and the lease lapses as
    /// usual: the watchdog fences at `ttl - safety_margin`.
    pub(super) async fn failsafe_round(&mut self) {
        let peers: Vec<MemberRecord> = self.known.values().filter(|m| m.node != self.cfg.node).cloned().collect();
        let ask = crate::api::FailsafeAsk { leader: self.cfg.node.clone(), term: self.term };
        let sent = Instant::now();
        let api = &self.peers_api;
        let asks = peers.iter().map(|m| {
            let ask = &ask;
            async move { (m.node.clone(), api.failsafe(&m.api_url, ask).await) }
        });
        let answers = futures_util::future::join_all(asks).await;
        let verdict = core::failsafe::failsafe_verdict(&answers);
        if verdict.is_ok() {
            if !self.failsafe_active {
                tracing::warn!(
                    members = peers.len(),
                    "etcd unreachable; every member confirmed it cannot reach etcd either: keeping the primary (failsafe)"
                );
            }
            self.set_renewal(Some(sent));
            self.failsafe_active = true;
        } else {
            let refusals = verdict.err().unwrap_or_default();
            tracing::warn!(refusals = %refusals.join("; "), "etcd unreachable and failsafe not confirmed by every member; the lease will lapse");
            self.failsafe_active = false;
        }
    }
}
