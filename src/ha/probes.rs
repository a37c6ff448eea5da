//! Fresh looks at the other members while the leader key is vacant (their
//! databases and sidecars, in parallel) and the background probes of
//! silent members for alerts.

use super::Ha;
use crate::clock::Instant;
use crate::core::{Candidate, PeerDb, PeerObs, PeerSidecar};
use crate::dcs::{ClusterState, Dcs, HistoryRecord};
use crate::engine::Engine;
use crate::peers::PeerApi;
use std::sync::Arc;
use std::time::Duration;

/// A server no known member names, to look at.
struct ExtraTarget {
    /// How the trace and the refusal name it ("pg1 (the last primary)").
    label: String,
    db_host: String,
    db_port: u16,
    /// Its sidecar's API URL and node name, when a history record gives them.
    sidecar: Option<(String, String)>,
}

impl<E: Engine, D: Dcs, P: PeerApi> Ha<E, D, P> {
    /// Fresh looks at every other member: its database (writable?) and its
    /// sidecar (position, eligibility), in parallel.
    ///
    /// Two servers no known member names are looked at too:
    /// - the one this replica streams from: after an etcd outage every
    ///   member key may have lapsed (a sidecar started during the outage
    ///   knows nobody), and a primary kept writable by the failsafe must
    ///   still be seen before a replica promotes (found by the simulation,
    ///   seed 1000092). Its sidecar cannot be asked: nobody knows where it
    ///   answers;
    /// - the last recorded primary, at the address its history record
    ///   gives: a sidecar that started after its member key lapsed, and
    ///   whose own server was restarted without an upstream, knew no peer
    ///   at all and promoted beside it (the 15-minute run, seed 7232913).
    pub(super) async fn probe_peers(&self, upstream: Option<&str>, last: Option<&HistoryRecord>) -> Vec<PeerObs> {
        let known_at = |host: &str, port: u16| self.known.values().any(|m| m.db_host == host && m.db_port == port);
        let mut extra: Vec<ExtraTarget> = vec![];
        if let Some(a) = last
            .filter(|h| h.new_primary != self.cfg.node && !self.known.contains_key(&h.new_primary))
            .and_then(|h| h.new_primary_at.as_ref().map(|a| (h.new_primary.clone(), a)))
        {
            if !known_at(&a.1.db_host, a.1.db_port) {
                extra.push(ExtraTarget {
                    label: format!("{} (the last primary)", a.0),
                    db_host: a.1.db_host.clone(),
                    db_port: a.1.db_port,
                    sidecar: Some((a.1.api_url.clone(), a.0.clone())),
                });
            }
        }
        if let Some((host, port)) =
            upstream.and_then(|u| u.rsplit_once(':')).and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
        {
            if !known_at(&host, port) && !extra.iter().any(|e| e.db_host == host && e.db_port == port) {
                extra.push(ExtraTarget { label: format!("{host}:{port} (the upstream)"), db_host: host, db_port: port, sidecar: None });
            }
        }
        let extra_probes = futures_util::future::join_all(extra.into_iter().map(|t| async move {
            let sidecar = async {
                match &t.sidecar {
                    Some((url, node)) => match self.fetch_member(url).await {
                        // A record for another node says nothing about this one.
                        crate::peers::MemberAnswer::Record(r) if r.node != *node => PeerSidecar::Silent,
                        a => a.sidecar(),
                    },
                    None => PeerSidecar::Unknown,
                }
            };
            let (db, sidecar) = tokio::join!(self.engine.probe_writable(&t.db_host, t.db_port), sidecar);
            PeerObs { node: t.label, db, sidecar, candidate: None }
        }));
        let futs = self.known.values().filter(|m| m.node != self.cfg.node).map(|m| {
            let m = m.clone();
            async move {
                let (db, answer) = tokio::join!(self.engine.probe_writable(&m.db_host, m.db_port), self.fetch_member(&m.api_url));
                // A record for another node (a misconfigured api_url) says
                // nothing about this one.
                let answer = match answer {
                    crate::peers::MemberAnswer::Record(r) if r.node != m.node => {
                        tracing::warn!(member = %m.node, answered = %r.node, api_url = %m.api_url, "a peer's api_url answers for another node; ignored");
                        crate::peers::MemberAnswer::Silent
                    }
                    a => a,
                };
                let sidecar = answer.sidecar();
                let rec = answer.record().or_else(|| self.shared.get().cluster.members.get(&m.node).cloned());
                PeerObs {
                    node: m.node.clone(),
                    db,
                    sidecar,
                    candidate: rec.map(|r| Candidate {
                        position: r.position,
                        priority: r.priority,
                        eligible: r.eligible,
                        is_primary: r.role == Some(crate::core::DbRole::Primary) && r.health == crate::core::DbHealth::Running,
                        held_down: r.refusal_kind == Some(crate::core::RefusalKind::HeldDown),
                    }),
                }
            }
        });
        let (mut peers, extra) = tokio::join!(futures_util::future::join_all(futs), extra_probes);
        peers.extend(extra);
        peers
    }

    pub(super) async fn fetch_member(&self, api_url: &str) -> crate::peers::MemberAnswer {
        self.peers_api.member(api_url).await
    }

    /// Members seen before whose member key is gone, and whether their
    /// database still answers. Only the sidecar that evaluates cluster-wide
    /// alerts asks, and the probes run in the background (at most every
    /// 5 s per peer), so a dead host never slows the loop.
    pub(super) fn silent_peers(&self, cluster: Option<&ClusterState>) -> Vec<(String, PeerDb)> {
        let Some(c) = cluster else { return vec![] };
        let evaluator = c.leader.as_ref().map(|l| l.node.clone()).or_else(|| c.members.keys().next().cloned());
        if evaluator.as_deref() != Some(self.cfg.node.as_str()) {
            return vec![];
        }
        let mut probes = self.silent_probes.lock().unwrap_or_else(|e| e.into_inner());
        probes.retain(|node, _| !c.members.contains_key(node));
        let mut out = vec![];
        for m in self.known.values().filter(|m| m.node != self.cfg.node && !c.members.contains_key(&m.node)) {
            let entry = probes.get(&m.node).copied();
            if let Some((Some(db), _)) = entry {
                out.push((m.node.clone(), db));
            }
            if entry.is_none_or(|(_, started)| started.elapsed() > Duration::from_secs(5)) {
                probes.insert(m.node.clone(), (entry.and_then(|e| e.0), Instant::now()));
                let (engine, cache, wake, m) =
                    (Arc::clone(&self.engine), Arc::clone(&self.silent_probes), Arc::clone(&self.wake), m.clone());
                tokio::spawn(async move {
                    let db = engine.probe_writable(&m.db_host, m.db_port).await;
                    if let Some(e) = cache.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&m.node) {
                        let first = e.0.is_none();
                        e.0 = Some(db);
                        if first {
                            wake.notify_one();
                        }
                    }
                });
            }
        }
        out
    }
}
