//! Executing the core's actions on the database and in etcd: take, adopt
//! or release the key, promote, fence, start, follow, rejoin (pg_rewind or
//! a base backup, with backoff), hand over in a switchover.

use super::history::history_kind;
use super::Ha;
use crate::alerts::Severity;
use crate::clock::Instant;
use crate::core::{self, Action, Decision, PeerObs};
use crate::dcs::{now_ms, ClusterState, Dcs, HistoryRecord, IncidentRecord, LeaderRecord, Step};
use crate::engine::{Engine, FollowOutcome, Observation, Upstream};
use crate::peers::PeerApi;
use crate::position::Lsn;
use crate::publish::hooks::HookEvent;
use anyhow::{bail, Context, Result};
use std::time::Duration;

impl<E: Engine, D: Dcs, P: PeerApi> Ha<E, D, P> {
    pub(super) async fn execute(
        &mut self,
        action: &Action,
        obs: &Observation,
        cluster: Option<&ClusterState>,
        peers: &[PeerObs],
        d: &Decision,
    ) -> Result<()> {
        let node = self.cfg.node.clone();
        match action {
            Action::AdoptLeader => {
                let lease = cluster.and_then(|c| c.leader_lease).context("leader key has no lease")?;
                let term = cluster.and_then(|c| c.term).context("leader key has no term")?;
                let sent = Instant::now();
                if !self.dcs.adopt_leader(lease, term).await? {
                    bail!("the leader key's lease expired before it could be adopted");
                }
                self.term = cluster.and_then(|c| c.term);
                self.set_renewal(Some(sent));
                tracing::info!(term = ?self.term, "adopted the leader key of an earlier process of this node");
                if let (Some(t), true) = (self.term, obs.local.writable()) {
                    self.publish_dns(t);
                }
            }
            Action::WriteHeartbeat => {
                let term = self.term.or(cluster.and_then(|c| c.term)).unwrap_or(0);
                let at = now_ms();
                self.engine.write_heartbeat(&node, term).await?;
                self.heartbeat_ok = true;
                self.publish_status(at, obs.local.position).await;
            }
            Action::AcquireLeader => {
                let rec = LeaderRecord { node: node.clone(), since_ms: now_ms() };
                let sent = Instant::now();
                match self.dcs.acquire_leader(&rec).await? {
                    Some(term) => {
                        self.term = Some(term);
                        self.set_renewal(Some(sent));
                        tracing::info!(term, "took the leader key");
                        crate::faults::point("after_acquire");
                        if !d.actions.contains(&Action::Promote) && !obs.local.writable() {
                            // The last primary took its key back to start its
                            // stopped database: no change of primary.
                            tracing::info!(term, "took the leader key back; starting the database");
                        } else if obs.local.writable() {
                            self.record_retake(cluster, term).await;
                            self.publish_dns(term);
                        } else {
                            let old = self.last_leader.clone().filter(|l| *l != node);
                            self.event(
                                "FailoverStarted",
                                Severity::Critical,
                                format!(
                                    "{node} took the leader key (term {term}) after {} lost it; promoting",
                                    old.clone().unwrap_or_else(|| "the primary".into())
                                ),
                                old,
                                Some(node.clone()),
                            );
                        }
                    }
                    None => bail!("another node took the leader key first"),
                }
            }
            Action::Promote => {
                let acquired_ms = now_ms();
                // Decided on a view read before the key was won: read it
                // again now that nobody else can change it, and go on only
                // if nothing the decision rested on moved.
                let fresh = self.dcs.load().await.context("read the cluster again before promoting")?;
                let decided = cluster.map(|c| self.view(c)).unwrap_or_default();
                if let Some(why) = core::promotion::promotion_basis_changed(&decided, &self.view(&fresh)) {
                    tracing::warn!(reason = %why, "not promoting; giving the leader key back");
                    self.forget_history_of_this_term().await;
                    let _ = self.give_up_leader_key().await;
                    bail!("not promoting: {why}");
                }
                let cluster = Some(&fresh);
                let ev = HookEvent {
                    event: "pre_promote".into(),
                    role: "primary".into(),
                    term: self.term,
                    old_primary: self.last_leader.clone().filter(|l| *l != node),
                    new_primary: Some(node.clone()),
                    reason: d.state.clone(),
                };
                if let Err(why) = self.hooks.pre_promote(&ev).await {
                    self.vetoed_at = Some(Instant::now());
                    tracing::error!(reason = %why, "pre_promote hook vetoed the promotion; giving the leader key back");
                    let mut inc = cluster.and_then(|c| c.incident.clone()).unwrap_or(IncidentRecord {
                        node: String::new(),
                        reason: String::new(),
                        failure_seen_ms: 0,
                        released_ms: 0,
                        notes: vec![],
                        created_ms: now_ms(),
                    });
                    inc.notes.push(Step {
                        name: format!("pre_promote hook vetoed promotion of {node}"),
                        at_ms: now_ms(),
                        detail: Some(why.clone()),
                    });
                    let _ = self.dcs.set_incident(Some(inc)).await;
                    self.forget_history_of_this_term().await;
                    let _ = self.give_up_leader_key().await;
                    self.event(
                        "FailoverVetoed",
                        Severity::Warning,
                        format!("pre_promote hook vetoed promotion of {node}: {why}"),
                        ev.old_primary.clone(),
                        Some(node.clone()),
                    );
                    bail!("pre_promote hook vetoed the promotion: {why}");
                }
                // History names the new primary before it promotes: the
                // rules about the last primary (hold-down, starting in its
                // own role, synchronous mode) must never see an older one
                // while this node's timeline is the newest. No record, no
                // promotion (the simulation, seed 3012237: a record lost to
                // a slow etcd held the new primary down).
                let term = self.term.or(cluster.and_then(|c| c.term)).unwrap_or(0);
                if cluster.and_then(|c| c.last_history.as_ref()).is_none_or(|h| h.term != term || h.new_primary != node) {
                    let rec = HistoryRecord {
                        term,
                        kind: history_kind(cluster, &node, term),
                        reason: "leader key won; promoting".into(),
                        old_primary: self.last_leader.clone().filter(|l| *l != node),
                        new_primary: node.clone(),
                        at_ms: now_ms(),
                        steps: vec![Step { name: "leader key acquired".into(), at_ms: acquired_ms, detail: Some(format!("term {term}")) }],
                        candidates: vec![],
                        old_position: self.last_primary_position,
                        new_position: obs.local.position,
                        new_primary_at: Some(self.address()),
                        promoted: false,
                    };
                    if let Err(e) = self.dcs.put_history(&rec).await {
                        let _ = self.give_up_leader_key().await;
                        return Err(e).context("write the history record before promoting (the leader key was given back)");
                    }
                }
                // Synchronous mode: name the standbys before the database
                // accepts its first write (allowed during recovery).
                self.manage_sync(super::sync::SyncMoment::Promoting { at: obs.local.position }, cluster)
                    .await
                    .context("set the synchronous standbys before promotion")?;
                if !self.may_open_for_writes() {
                    self.forget_history_of_this_term().await;
                    bail!("the leader lease lapsed before the promotion could start; not promoting");
                }
                let t0 = Instant::now();
                self.promote_sent = true;
                if let Err(e) = self.engine.promote().await {
                    tracing::error!(error = %format!("{e:#}"), "promotion failed; releasing the leader key");
                    self.event(
                        "FailoverFailed",
                        Severity::Critical,
                        format!("promotion of {node} failed: {e:#}"),
                        self.last_leader.clone(),
                        Some(node.clone()),
                    );
                    self.hooks.fire(
                        "on_failover_failed",
                        HookEvent {
                            event: "failover_failed".into(),
                            role: "replica".into(),
                            term: self.term,
                            old_primary: self.last_leader.clone(),
                            new_primary: Some(node.clone()),
                            reason: format!("{e:#}"),
                        },
                    );
                    // The server may still finish a promotion it was asked
                    // for: it is fenced before the key goes, or it could
                    // come up writable beside the next primary (found by
                    // the simulation, seed 1001457). Should the fence fail,
                    // the key stays until the lease lapses and the watchdog
                    // fences.
                    if let Err(f) = self.engine.fence().await {
                        tracing::error!(error = %format!("{f:#}"), "could not fence after a failed promotion; keeping the key until the lease lapses");
                        return Err(e);
                    }
                    self.forget_history_of_this_term().await;
                    let _ = self.give_up_leader_key().await;
                    return Err(e);
                }
                self.promoted_term = self.term;
                crate::faults::point("after_promote");
                let promoted_ms = now_ms();
                let term = self.term.unwrap_or(0);
                self.engine.write_heartbeat(&node, term).await.context("first write after promotion")?;
                self.heartbeat_ok = true;
                self.publish_status(promoted_ms, obs.local.position).await;
                let writable_ms = now_ms();
                tracing::info!(term, promote_ms = t0.elapsed().as_millis() as u64, "promoted; accepting writes");
                self.shared.update(|s| {
                    s.writable_leader = true;
                    s.promotions += 1;
                });
                self.record_promotion(obs, cluster, peers, d, term, acquired_ms, promoted_ms, writable_ms).await;
            }
            Action::ReleaseLeader { reason } => {
                tracing::warn!(%reason, "releasing the leader key");
                let incident = IncidentRecord {
                    node: node.clone(),
                    reason: reason.clone(),
                    failure_seen_ms: self.failure_seen_ms.unwrap_or_else(now_ms),
                    released_ms: now_ms(),
                    notes: vec![],
                    created_ms: now_ms(),
                };
                if let Err(e) = self.dcs.set_incident(Some(incident)).await {
                    tracing::warn!(error = %format!("{e:#}"), "could not record the incident");
                }
                self.event(
                    "FailoverStarted",
                    Severity::Critical,
                    format!("{node} releases the leader key: {reason}"),
                    Some(node.clone()),
                    None,
                );
                self.shared.update(|s| s.writable_leader = false);
                if obs.local.health != crate::core::DbHealth::Running {
                    // It must not come back as a primary: the key is going to
                    // a replica. A hung server, or one still starting (crash
                    // recovery ends writable), is killed so that it cannot
                    // wake up writable.
                    if matches!(obs.local.health, crate::core::DbHealth::Unresponsive | crate::core::DbHealth::Starting) {
                        self.engine.kill_server().await?;
                    }
                    if let Err(e) = self.engine.mark_replica() {
                        tracing::warn!(error = %format!("{e:#}"), "could not mark the data directory as a replica");
                    }
                }
                self.give_up_leader_key().await?;
            }
            Action::Fence { reason } => {
                tracing::error!(%reason, "fencing the local database (read-only)");
                self.hooks.fire(
                    "on_role_change",
                    HookEvent {
                        event: "fenced".into(),
                        role: "replica".into(),
                        term: self.term,
                        reason: reason.clone(),
                        ..Default::default()
                    },
                );
                self.shared.update(|s| s.writable_leader = false);
                self.dcs.forget_leader();
                self.set_renewal(None);
                self.engine.fence().await?;
            }
            Action::Start => {
                tracing::info!("starting the database");
                if self.dcs.holds_leader() {
                    // Leading with a stopped database: as a restart in
                    // place, the key goes if it does not come up within
                    // restart_budget.
                    self.restart_started = Some(Instant::now());
                }
                self.engine.start().await?;
            }
            Action::StartReplica => {
                tracing::info!("starting the database as a replica (a later primary exists)");
                self.engine.mark_replica()?;
                self.engine.start().await?;
            }
            Action::RestartInPlace => {
                tracing::warn!("primary database is down; restarting it in place");
                self.restart_started = Some(Instant::now());
                self.engine.restart_in_place().await?;
            }
            Action::Rejoin { leader } => {
                let up = self.upstream(leader)?;
                tracing::info!(%leader, "rejoining as a replica");
                let what = self.rejoin(&up).await?;
                tracing::info!(%leader, "{what}");
            }
            Action::Follow { leader } => {
                let up = self.upstream(leader)?;
                match self.engine.follow(&up, obs).await? {
                    FollowOutcome::Unchanged => {}
                    FollowOutcome::Repointed => tracing::info!(%leader, "re-pointed replication to the new primary"),
                    FollowOutcome::Diverged => {
                        tracing::warn!(%leader, "timeline diverged from the new primary; rewinding");
                        let what = self.rejoin(&up).await?;
                        tracing::info!(%leader, "{what}");
                    }
                }
                self.check_stuck_replica(&up, obs).await?;
            }
            Action::HandOver { to } => self.hand_over(to, cluster).await?,
            Action::RefuseRequest { reason } => {
                tracing::warn!(%reason, "refusing the operator's request");
                if let Some(mut req) = cluster.and_then(|c| c.request.clone()) {
                    req.refused = Some(reason.clone());
                    self.dcs.set_request(Some(req)).await?;
                }
            }
            Action::ClearRequest { reason } => {
                tracing::info!(%reason, "clearing the switchover/failover request");
                self.dcs.set_request(None).await?;
            }
        }
        Ok(())
    }

    /// Gives the leader key back (revoking its lease deletes it). From here
    /// on the key of this term counts as given up whether or not etcd
    /// carries the revoke out in time: it is left to lapse, never adopted
    /// again (`core::LeaseState::given_up`).
    async fn give_up_leader_key(&mut self) -> Result<()> {
        self.released_term = self.term;
        let res = self.dcs.release_leader().await;
        self.set_renewal(None);
        res
    }

    /// `core::may_open_for_writes`, asked right before the step.
    fn may_open_for_writes(&self) -> bool {
        let lease = core::LeaseState { held: self.dcs.holds_leader(), renewed_ago: self.renewal().map(|t| t.elapsed()), given_up: false };
        core::may_open_for_writes(&lease, &self.policy)
    }

    pub(super) fn upstream(&self, leader: &str) -> Result<Upstream> {
        let m = self.known.get(leader).with_context(|| format!("no member record for leader {leader}"))?;
        Ok(Upstream {
            node: m.node.clone(),
            host: m.db_host.clone(),
            port: m.db_port,
            timeline: m.position.filter(|_| m.role == Some(crate::core::DbRole::Primary)).map(|p| p.timeline),
            history: m.timeline_history.clone(),
            gtid_state: m.gtid.as_ref().map(|g| g.binlog_state.clone()),
            server_uuid: m.gtid.as_ref().and_then(|g| g.server_uuid.clone()),
        })
    }

    /// Rejoins through the engine, no sooner than `core::rejoin::rejoin_backoff`
    /// allows after failed attempts.
    pub(super) async fn rejoin(&mut self, up: &Upstream) -> Result<String> {
        let wait = core::rejoin::rejoin_backoff(self.rejoin_failures);
        if let Some(left) = self.last_rejoin_failure.map(|t| wait.saturating_sub(t.elapsed())).filter(|l| !l.is_zero()) {
            bail!("rejoin failed {} times in a row; next attempt in {:.0?}", self.rejoin_failures, left);
        }
        self.rejoin_attempts += 1;
        match self.engine.rejoin(up, self.rejoin_attempts).await {
            Ok(what) => {
                self.rejoin_failures = 0;
                self.last_rejoin_failure = None;
                Ok(what)
            }
            Err(e) => {
                self.rejoin_failures += 1;
                self.last_rejoin_failure = Some(Instant::now());
                Err(e)
            }
        }
    }

    /// The stuck-replica rule (`core::rejoin::stuck_replica`): the shell
    /// only measures how long the replica has not streamed and how long ago
    /// the leader's record last changed.
    pub(super) async fn check_stuck_replica(&mut self, up: &Upstream, obs: &Observation) -> Result<()> {
        let pointed = obs.upstream.as_deref() == Some(&format!("{}:{}", up.host, up.port));
        if obs.local.streaming || !pointed {
            self.not_streaming_since = None;
        } else {
            self.not_streaming_since.get_or_insert_with(Instant::now);
        }
        let leader_refreshed_ago = self.leader_watch.refreshed_ago(&up.node);
        let mut s = core::rejoin::StuckInputs {
            streaming: obs.local.streaming,
            pointed_at_leader: pointed,
            leader_refreshed_ago,
            not_streaming_for: self.not_streaming_since.map(|t| t.elapsed()),
            leader_db: None,
        };
        if core::rejoin::needs_leader_probe(&self.policy, &s) {
            s.leader_db = Some(self.engine.probe_writable(&up.host, up.port).await);
        }
        if core::rejoin::stuck_replica(&self.policy, &s) {
            tracing::warn!(leader = %up.node, "not streaming from a live primary for {:?}; rewinding", s.not_streaming_for.unwrap_or_default());
            self.not_streaming_since = None;
            let what = self.rejoin(up).await?;
            tracing::info!(leader = %up.node, "{what}");
        }
        Ok(())
    }

    /// Planned switchover on the leader: stop writes (clean shutdown, which
    /// sends all WAL to connected replicas), check the target has all of
    /// it, then release the key to the target. Any doubt: start again as
    /// primary and keep the key.
    pub(super) async fn hand_over(&mut self, to: &str, cluster: Option<&ClusterState>) -> Result<()> {
        let c = cluster.context("no cluster view")?;
        let target = c.members.get(to).cloned();
        let ready = target
            .as_ref()
            .is_some_and(|t| t.health == crate::core::DbHealth::Running && t.role == Some(crate::core::DbRole::Replica) && t.streaming);
        if !ready {
            tracing::warn!(%to, "switchover refused: target is not a streaming replica");
            let why = format!("switchover to {to} refused: it is not a healthy streaming replica");
            self.refuse_request(c, &why).await?;
            bail!(why);
        }
        let target = target.expect("checked");
        let mut steps = vec![Step { name: "switchover started".into(), at_ms: now_ms(), detail: None }];
        self.shared.update(|s| s.writable_leader = false);
        let checkpoint = self.engine.stop_for_switchover().await?;
        steps.push(Step { name: "writes stopped".into(), at_ms: now_ms(), detail: Some(format!("shutdown checkpoint {checkpoint}")) });
        let deadline = Instant::now() + self.cfg.failover.switchover_timeout;
        loop {
            let caught_up = self
                .fetch_member(&target.api_url)
                .await
                .record()
                .and_then(|m| m.receive_lsn.max(m.replay_lsn))
                .is_some_and(|l: Lsn| l >= checkpoint);
            if caught_up {
                break;
            }
            if Instant::now() > deadline {
                if !self.may_open_for_writes() {
                    bail!("switchover to {to} abandoned, and the leader lease lapsed meanwhile: not starting again as primary");
                }
                tracing::error!(%to, "switchover abandoned: target did not receive the shutdown checkpoint; starting again as primary");
                self.engine.resume_as_primary().await?;
                let why = format!("switchover to {to} abandoned: it did not receive all WAL within switchover_timeout");
                self.refuse_request(c, &why).await?;
                bail!(why);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        steps.push(Step { name: "target has all WAL".into(), at_ms: now_ms(), detail: None });
        if let Some(mut req) = c.request.clone() {
            steps.push(Step { name: "leader key released".into(), at_ms: now_ms(), detail: None });
            req.steps = steps;
            // Hand the steps to the target for its history record; then release.
            let _ = self.dcs.set_request(Some(req)).await;
        }
        self.give_up_leader_key().await?;
        tracing::info!(%to, "switchover: leader key released to the target");
        Ok(())
    }

    /// Marks the operator's pending request as refused, with the reason,
    /// for `vigil switchover` to print.
    async fn refuse_request(&self, c: &ClusterState, why: &str) -> Result<()> {
        if let Some(mut req) = c.request.clone() {
            req.refused = Some(why.to_string());
            self.dcs.set_request(Some(req)).await?;
        }
        Ok(())
    }
}
