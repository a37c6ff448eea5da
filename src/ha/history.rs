//! The history record of each change of primary: written before the
//! promotion (no record, no promotion), completed after it.

use super::Ha;
use crate::alerts::Severity;
use crate::core::{Decision, PeerObs};
use crate::dcs::{now_ms, CandidateRecord, ClusterState, Dcs, HistoryKind, HistoryRecord, RequestRecord, Step};
use crate::engine::{Engine, Observation};
use crate::peers::PeerApi;
use crate::publish::hooks::HookEvent;

/// What this node's promotion in `term` is, for its history record.
pub(super) fn history_kind(cluster: Option<&ClusterState>, me: &str, term: i64) -> HistoryKind {
    // Written when the key was won (by this process or an earlier one).
    if let Some(h) = cluster.and_then(|c| c.last_history.as_ref()).filter(|h| h.term == term) {
        return h.kind;
    }
    if cluster.and_then(|c| c.last_history.as_ref()).is_some_and(|h| h.new_primary == me) {
        return HistoryKind::Retake;
    }
    match cluster.and_then(|c| c.request.as_ref()).filter(|r| r.to == me && r.refused.is_none()).map(|r| r.kind) {
        Some(crate::core::RequestKind::Switchover) => HistoryKind::Switchover,
        Some(crate::core::RequestKind::Failover) => HistoryKind::ManualFailover,
        // The cluster's first primary (MariaDB servers all start read-only,
        // so even a cold start promotes): not a failover, and it starts no
        // hold_down.
        None if cluster.is_some_and(|c| c.last_history.is_none()) => HistoryKind::Bootstrap,
        None => HistoryKind::Failover,
    }
}

impl<E: Engine, D: Dcs, P: PeerApi> Ha<E, D, P> {
    /// Deletes the history record written when this node won the key,
    /// after it gave the key back without promoting. A term in which the
    /// database did promote keeps its record, whatever a later attempt in
    /// the same term does (the 30-minute simulation run, seed 7408361: a
    /// primary that fenced itself under a slow etcd adopted its own key
    /// again, that promotion hung, and deleting the record made the
    /// replicas judge the real last primary, the freshest node, stale).
    pub(super) async fn forget_history_of_this_term(&self) {
        if let Some(term) = self.term.filter(|t| self.promoted_term != Some(*t)) {
            if let Err(e) = self.dcs.delete_history(term).await {
                tracing::warn!(error = %format!("{e:#}"), "could not delete the history record of an abandoned promotion");
            }
        }
    }

    pub(super) async fn record_retake(&mut self, cluster: Option<&ClusterState>, term: i64) {
        if cluster.is_some_and(|c| c.last_history.is_none()) {
            let rec = HistoryRecord {
                term,
                kind: HistoryKind::Bootstrap,
                reason: "first leader of the cluster".into(),
                old_primary: None,
                new_primary: self.cfg.node.clone(),
                at_ms: now_ms(),
                steps: vec![Step { name: "leader key acquired".into(), at_ms: now_ms(), detail: None }],
                candidates: vec![],
                old_position: None,
                new_position: None,
                new_primary_at: Some(self.address()),
                promoted: false,
            };
            if let Err(e) = self.dcs.put_history(&rec).await {
                tracing::warn!(error = %format!("{e:#}"), "could not write history");
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn record_promotion(
        &mut self,
        obs: &Observation,
        cluster: Option<&ClusterState>,
        peers: &[PeerObs],
        d: &Decision,
        term: i64,
        acquired_ms: u64,
        promoted_ms: u64,
        writable_ms: u64,
    ) {
        let req: Option<RequestRecord> = cluster.and_then(|c| c.request.clone()).filter(|r| r.to == self.cfg.node);
        let kind = history_kind(cluster, &self.cfg.node, term);
        let mut steps = req.as_ref().map(|r| r.steps.clone()).unwrap_or_default();
        let incident = cluster.and_then(|c| c.incident.clone()).filter(|i| i.released_ms.max(i.created_ms) + 600_000 > now_ms());
        if let Some(i) = &incident {
            steps.extend(i.notes.iter().cloned());
        }
        match incident.as_ref().filter(|i| !i.node.is_empty()) {
            Some(i) => {
                steps.push(Step { name: format!("failure seen by {}", i.node), at_ms: i.failure_seen_ms, detail: Some(i.reason.clone()) });
                steps.push(Step { name: format!("leader key released by {}", i.node), at_ms: i.released_ms, detail: None });
            }
            None if req.is_none() => {
                if let Some(ms) = self.leader_lost_ms {
                    steps.push(Step { name: "leader key expired (old primary gone)".into(), at_ms: ms, detail: None });
                }
            }
            None => {}
        }
        if let Some(ms) = self.leader_lost_ms {
            steps.push(Step { name: "leader key seen vacant".into(), at_ms: ms, detail: None });
        }
        steps.push(Step { name: "leader key acquired".into(), at_ms: acquired_ms, detail: Some(format!("term {term}")) });
        steps.push(Step { name: "promoted".into(), at_ms: promoted_ms, detail: None });
        steps.push(Step { name: "accepting writes".into(), at_ms: writable_ms, detail: None });
        steps.push(Step { name: "published (/primary answers 200)".into(), at_ms: writable_ms, detail: None });
        steps.sort_by_key(|s| s.at_ms);
        let mut candidates = vec![CandidateRecord {
            node: self.cfg.node.clone(),
            position: obs.local.position,
            eligible: d.eligibility.eligible,
            reason: d.eligibility.reason.clone(),
        }];
        for p in peers {
            let known = self.known.get(&p.node);
            candidates.push(CandidateRecord {
                node: p.node.clone(),
                position: p.candidate.as_ref().and_then(|c| c.position),
                eligible: p.candidate.as_ref().is_some_and(|c| c.eligible),
                reason: match (&p.candidate, p.db) {
                    (None, _) => Some("sidecar unreachable".into()),
                    (_, crate::core::PeerDb::Unreachable) => Some("database unreachable".into()),
                    (_, crate::core::PeerDb::Silent) => Some("database did not answer".into()),
                    _ => known.and_then(|k| k.ineligible_reason.clone()),
                },
            });
        }
        let reason = match kind {
            HistoryKind::Switchover => format!("planned switchover from {}", req.as_ref().and_then(|r| r.from.clone()).unwrap_or_default()),
            HistoryKind::ManualFailover => format!("manual failover to {}", self.cfg.node),
            HistoryKind::Bootstrap => "first leader of the cluster".into(),
            HistoryKind::Retake => format!("{} took its own leader key back and promoted again", self.cfg.node),
            _ => match incident.as_ref().filter(|i| !i.node.is_empty()) {
                Some(i) => format!("{}: {}", i.node, i.reason),
                None => format!("leader key of {} expired: node or sidecar lost", self.last_leader.clone().unwrap_or_else(|| "?".into())),
            },
        };
        let rec = HistoryRecord {
            term,
            kind,
            reason,
            old_primary: self.last_leader.clone().filter(|l| *l != self.cfg.node),
            new_primary: self.cfg.node.clone(),
            at_ms: writable_ms,
            steps,
            candidates,
            old_position: self.last_primary_position,
            new_position: obs.local.position,
            new_primary_at: Some(self.address()),
            promoted: true,
        };
        if let Err(e) = self.dcs.put_history(&rec).await {
            tracing::warn!(error = %format!("{e:#}"), "could not write the history record");
        }
        if req.is_some() {
            let _ = self.dcs.set_request(None).await;
        }
        if incident.is_some() {
            let _ = self.dcs.set_incident(None).await;
        }
        let mut summary = format!("{} is the new primary (term {term}, {kind}): {}", self.cfg.node, rec.reason);
        if let (Some(o), Some(n)) = (rec.old_position, rec.new_position) {
            summary += &format!("; old primary last at {o}, new at {n}");
        }
        let ev = self.evaluator.event(
            "FailoverSucceeded",
            Severity::Critical,
            now_ms(),
            summary,
            Some(term),
            rec.old_primary.clone(),
            Some(self.cfg.node.clone()),
        );
        let mut ev = ev;
        ev.labels.insert("kind".into(), kind.as_str().into());
        self.notifier.notify(&ev);
        let hook = HookEvent {
            event: kind.as_str().into(),
            role: "primary".into(),
            term: Some(term),
            old_primary: rec.old_primary.clone(),
            new_primary: Some(self.cfg.node.clone()),
            reason: rec.reason.clone(),
        };
        self.hooks.fire("on_role_change", hook.clone());
        self.hooks.fire("post_failover", hook);
        self.my_history = Some(rec.clone());
        self.pending_history = Some(rec);
        self.publish_dns(term);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(term: i64, kind: HistoryKind, new_primary: &str) -> HistoryRecord {
        HistoryRecord {
            term,
            kind,
            reason: String::new(),
            old_primary: None,
            new_primary: new_primary.into(),
            at_ms: 1,
            steps: vec![],
            candidates: vec![],
            old_position: None,
            new_position: None,
            new_primary_at: None,
            promoted: false,
        }
    }

    /// What a promotion is recorded as: the record written when the key
    /// was won decides; the last primary taking its own key back is a
    /// retake, which starts no hold-down (seed 7441453); an operator's
    /// request names a switchover or a manual failover; the first primary
    /// is the bootstrap; anything else is an automatic failover.
    #[test]
    fn a_promotion_is_recorded_as_what_it_is() {
        let with = |last: Option<HistoryRecord>, to: Option<(&str, crate::core::RequestKind)>| ClusterState {
            last_history: last,
            request: to.map(|(to, kind)| RequestRecord {
                kind,
                from: None,
                to: to.into(),
                allow_data_loss: false,
                requested_ms: 1,
                steps: vec![],
                refused: None,
            }),
            ..ClusterState::default()
        };
        use crate::core::RequestKind::{Failover, Switchover};
        let table = [
            (with(Some(record(9, HistoryKind::Switchover, "pg2")), None), HistoryKind::Switchover),
            (with(Some(record(5, HistoryKind::Failover, "pg2")), None), HistoryKind::Retake),
            (with(Some(record(5, HistoryKind::Failover, "pg1")), Some(("pg2", Switchover))), HistoryKind::Switchover),
            (with(Some(record(5, HistoryKind::Failover, "pg1")), Some(("pg2", Failover))), HistoryKind::ManualFailover),
            (with(None, None), HistoryKind::Bootstrap),
            (with(Some(record(5, HistoryKind::Failover, "pg1")), None), HistoryKind::Failover),
            (with(Some(record(5, HistoryKind::Failover, "pg1")), Some(("pg3", Switchover))), HistoryKind::Failover),
        ];
        for (cluster, kind) in table {
            assert_eq!(history_kind(Some(&cluster), "pg2", 9), kind, "{cluster:?}");
        }
        assert!(!record(9, HistoryKind::Retake, "pg2").is_automatic_failover());
    }
}
