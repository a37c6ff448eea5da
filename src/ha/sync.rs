//! Synchronous mode: the set of replicas that must acknowledge commits,
//! kept by the leader (`core::sync_set` decides).

use super::Ha;
use crate::core::{self};
use crate::dcs::{now_ms, ClusterState, Dcs, SyncRecord};
use crate::engine::{Engine, Observation};
use crate::peers::PeerApi;
use crate::position::{Lsn, Position};
use anyhow::{Context, Result};

/// When the leader keeps the synchronous set.
pub(super) enum SyncMoment<'a> {
    /// Leading, each loop: what this loop observed.
    Leading(&'a Observation),
    /// Just before a promotion: nothing is connected yet, and every member
    /// joins at the position the database is promoted at.
    Promoting { at: Option<Position> },
}

#[derive(Clone, Copy)]
enum MomentKind {
    Leading,
    Promoting,
}

impl<E: Engine, D: Dcs, P: PeerApi> Ha<E, D, P> {
    /// Synchronous mode, on the leader: keeps the `sync` key and the
    /// database's synchronous standbys in step. A replica is added to the
    /// key before the database counts its acknowledgements; one that left
    /// the cluster is dropped only once a remaining member of the set has
    /// flushed all the WAL the primary has now (so it has everything the
    /// dropped one could have acknowledged).
    pub(super) async fn manage_sync(&mut self, moment: SyncMoment<'_>, cluster: Option<&ClusterState>) -> Result<()> {
        let (obs, primary_position, moment_kind) = match moment {
            SyncMoment::Leading(o) => (Some(o), o.local.position, MomentKind::Leading),
            SyncMoment::Promoting { at } => (None, at, MomentKind::Promoting),
        };
        use std::collections::{BTreeMap, BTreeSet};
        if !self.cfg.failover.synchronous {
            return Ok(());
        }
        let Some(c) = cluster else { return Ok(()) };
        let me = self.cfg.node.clone();
        let desired: BTreeSet<String> = c.members.values().filter(|m| m.node != me && m.priority > 0).map(|m| m.node.clone()).collect();
        // Another leader since, or a new promotion: what this node wrote
        // as leader before says nothing now.
        if matches!(moment_kind, MomentKind::Promoting) || c.leader.as_ref().is_some_and(|l| l.node != me) {
            self.sync_written = None;
            self.sync_unconfirmed.clear();
        }
        // This leader is the key's only writer: when the key reads as
        // garbage or vanished, the set it last wrote is still the set. Read
        // as "no set", every member became joining at the primary's current
        // position, which none could reach while cut off, and none could
        // take over when the leader was lost (the 30-minute simulation run,
        // seed 7390367).
        // The set read back as this leader's counts as written too: a
        // sidecar restarted under a leader key it adopted had written
        // nothing yet, and a garbage value then read as "no set" (the
        // 30-minute simulation run, seed 8431567).
        if let (MomentKind::Leading, Some(s)) = (moment_kind, c.sync.as_ref().filter(|s| s.leader == me)) {
            self.sync_written = Some(s.clone());
        }
        let written = self.sync_written.clone();
        let mine = c.sync.as_ref().filter(|s| s.leader == me).or_else(|| written.as_ref().filter(|_| c.sync.is_none()));
        let current: BTreeSet<String> = mine.map(|s| s.standbys.iter().cloned().collect()).unwrap_or_default();
        let mut connected: BTreeMap<&str, Lsn> =
            obs.map(|o| o.standbys.iter().map(|(n, l)| (n.as_str(), *l)).collect()).unwrap_or_default();
        // MariaDB names its connected replicas by server_id only, and any
        // of them that has semi-sync on may acknowledge: map them to
        // members (also departed ones, whose last record is kept), with
        // the received position of their latest record (never ahead of
        // what they have now).
        if let Some(ids) = obs.and_then(|o| o.gtid.as_ref()).map(|g| &g.connected_replicas) {
            for m in self.known.values().filter(|m| m.node != me) {
                if m.gtid.as_ref().is_some_and(|g| ids.contains(&g.server_id)) {
                    let latest = c.members.get(&m.node).unwrap_or(m);
                    connected.insert(m.node.as_str(), latest.receive_lsn.unwrap_or(Lsn(0)));
                }
            }
        }
        let step = core::sync_set::next_sync_set(&core::sync_set::SyncSetInputs {
            current: current.clone(),
            desired,
            connected: connected.into_iter().map(|(n, l)| (n.to_string(), l)).collect(),
            primary_position,
            marks: std::mem::take(&mut self.sync_marks),
            joining: mine.map(|s| s.joining.clone()).unwrap_or_default(),
        });
        self.sync_marks = step.marks;
        let plan = core::sync_set::plan_recording(&current, &self.sync_unconfirmed, &step.next);
        for gone in step.dropped.iter().filter(|g| !plan.record.contains(*g)) {
            tracing::info!(node = %gone, "dropping a departed replica from the synchronous set (another member has all it could have acknowledged)");
        }
        let next = plan.record;
        let recorded = c.sync.as_ref().is_some_and(|s| s.leader == me);
        // A write that failed is superseded only by one confirmed after it.
        let unconfirmed = !self.sync_unconfirmed.is_empty();
        if !recorded || next != current || unconfirmed || mine.is_some_and(|s| s.joining != step.joining) {
            // Before the key changes (a no-op when the database already
            // counts `meanwhile`).
            self.engine.set_synchronous(&plan.meanwhile.into_iter().collect::<Vec<_>>()).await?;
            let rec = SyncRecord { leader: me, standbys: next.iter().cloned().collect(), updated_ms: now_ms(), joining: step.joining };
            if let Err(e) = self.dcs.set_sync(&rec).await {
                // Only a write confirmed later settles it: reading a value
                // back proves nothing (the same set may have been written
                // before, and a stalled write may still land after the read).
                if !self.sync_unconfirmed.contains(&next) {
                    self.sync_unconfirmed.push(next);
                }
                return Err(e).context("write the sync key");
            }
            self.sync_unconfirmed.clear();
            self.sync_written = Some(rec);
        }
        self.engine.set_synchronous(&next.into_iter().collect::<Vec<_>>()).await
    }
}
