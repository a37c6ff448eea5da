//! Telling everybody: alerts, hooks, DNS (in the background, with the
//! term as fencing token), the member record and the status snapshot.

use super::Ha;
use crate::alerts::{Facts, Severity};
use crate::clock::Instant;
use crate::core::Decision;
use crate::dcs::{now_ms, ClusterState, Dcs, MemberRecord, Step};
use crate::engine::{Engine, Observation};
use crate::peers::PeerApi;
use crate::publish::dns::Published;
use std::sync::Arc;
use std::time::Duration;

impl<E: Engine, D: Dcs, P: PeerApi> Ha<E, D, P> {
    /// The leader's last heartbeat (`status` key), after each heartbeat
    /// row it wrote at `at_ms`: replicas measure how old their data is
    /// against it. Waits at most half a loop, so that a slow etcd never
    /// holds the loop; a write that fails is tried again the next loop.
    pub(super) async fn publish_status(&self, at_ms: u64, position: Option<crate::position::Position>) {
        let rec = crate::dcs::StatusRecord { leader: self.cfg.node.clone(), heartbeat_ms: at_ms, position };
        match tokio::time::timeout(self.cfg.timing.loop_wait / 2, self.dcs.set_status(&rec)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %format!("{e:#}"), "could not write the status key"),
            Err(_) => tracing::debug!("writing the status key took more than half a loop; given up until the next loop"),
        }
    }

    pub(super) fn raise_alerts(&mut self, d: &Decision, silent: Vec<(String, crate::core::PeerDb)>) {
        let snap = self.shared.get();
        let Some(me) = snap.me.as_ref() else { return };
        let held_down = d.refusal_kind == Some(crate::core::RefusalKind::HeldDown);
        let sync_problems = self.sync_problems(&snap);
        let facts = Facts {
            sync_problems,
            now_ms: now_ms(),
            me,
            cluster: snap.dcs_ok.then_some(&snap.cluster),
            dcs_down_since_ms: self.dcs_down_since,
            silent_peers: silent,
            refusal: d.refusal.as_deref(),
            held_down,
        };
        for a in self.evaluator.evaluate(&facts) {
            self.notifier.notify(&a);
        }
        if self.last_resend.elapsed() >= self.cfg.alerts.resend {
            self.last_resend = Instant::now();
            self.notifier.refresh(&self.evaluator.firing());
        }
        let stats = &self.notifier.stats;
        let firing: Vec<String> = self.evaluator.firing().iter().map(|a| a.key()).collect();
        let counts = (
            stats.delivered.load(std::sync::atomic::Ordering::Relaxed),
            stats.failed.load(std::sync::atomic::Ordering::Relaxed),
            stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
        );
        self.shared.update(|s| {
            s.alerts_firing = firing;
            s.alert_deliveries = counts;
        });
    }

    /// Sync problems with how long each may last before it is alerted.
    pub(super) fn sync_problems(&self, snap: &crate::status::Snapshot) -> Vec<(String, String, Duration)> {
        let Some(rep) = &snap.sync else { return vec![] };
        let s = &self.cfg.sync;
        rep.problems(s, snap.writable_leader)
            .into_iter()
            .map(|(check, reason)| {
                let for_ = match check.as_str() {
                    "redis" => s.redis.as_ref().map(|r| r.max_age).unwrap_or_default(),
                    "file_sync" if !reason.starts_with("stale") => s.files.as_ref().map(|f| f.max_age).unwrap_or_default(),
                    _ => Duration::ZERO,
                };
                (check, reason, for_)
            })
            .collect()
    }

    pub(super) fn event(&self, name: &str, severity: Severity, summary: String, old: Option<String>, new: Option<String>) {
        let a = self.evaluator.event(name, severity, now_ms(), summary, self.term, old, new);
        self.notifier.notify(&a);
    }

    /// Publishes this node in DNS in the background, retrying with backoff
    /// until it works, a newer term owns the record, or two minutes pass.
    pub(super) fn publish_dns(&self, term: i64) {
        let Some(dns) = self.dns.clone() else { return };
        let address = self.cfg.dns.as_ref().and_then(|d| d.address.clone()).unwrap_or_else(|| self.cfg.database.host.clone());
        let node = self.cfg.node.clone();
        let tx = self.dns_results.0.clone();
        let wake = Arc::clone(&self.wake);
        tokio::spawn(async move {
            let started = Instant::now();
            let mut delay = Duration::from_millis(200);
            loop {
                match dns.publish_verified(&address, term, &node).await {
                    Ok(p) => {
                        tracing::info!(name = %dns.name, %address, term, took_ms = started.elapsed().as_millis() as u64, outcome = ?p, "DNS published");
                        let _ = tx.send((term, Ok(p), now_ms()));
                        break;
                    }
                    Err(e) if started.elapsed() > Duration::from_secs(120) => {
                        tracing::error!(name = %dns.name, error = %format!("{e:#}"), "DNS publication failed; giving up");
                        let _ = tx.send((term, Err(format!("{e:#}")), now_ms()));
                        break;
                    }
                    Err(e) => {
                        tracing::warn!(name = %dns.name, error = %format!("{e:#}"), "DNS publication failed; retrying in {delay:?}");
                        let _ = tx.send((term, Err(format!("{e:#}")), now_ms()));
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
            wake.notify_one();
        });
    }

    /// Folds finished DNS publications into metrics, alerts and history.
    pub(super) async fn drain_dns(&mut self) {
        while let Ok((term, result, at_ms)) = self.dns_results.1.try_recv() {
            let name = self.cfg.dns.as_ref().map(|d| d.name.clone()).unwrap_or_default();
            let step = match &result {
                Ok(Published::Updated) => {
                    self.shared.update(|s| s.dns_published_term = Some(term));
                    Step { name: format!("DNS {name} published"), at_ms, detail: None }
                }
                Ok(Published::NewerTermOwnsIt(t)) => {
                    Step { name: format!("DNS {name} left alone"), at_ms, detail: Some(format!("term {t} owns it")) }
                }
                Err(e) => {
                    self.shared.update(|s| s.dns_failures += 1);
                    Step { name: format!("DNS {name} publication failed"), at_ms, detail: Some(e.clone()) }
                }
            };
            let failed = result.is_err();
            let first_failure = failed
                && !self
                    .my_history
                    .as_ref()
                    .is_some_and(|r| r.term == term && r.steps.iter().any(|s| s.name.ends_with("publication failed")));
            if first_failure {
                // One alert per term; the retries go on in the background.
                self.event(
                    "DnsPublishFailed",
                    Severity::Critical,
                    format!("could not publish {name} for term {term} (retrying): {}", step.detail.clone().unwrap_or_default()),
                    None,
                    Some(self.cfg.node.clone()),
                );
            }
            for rec in [self.my_history.as_mut(), self.pending_history.as_mut()].into_iter().flatten() {
                if rec.term == term && !(failed && rec.steps.iter().any(|s| s.name.ends_with("publication failed"))) {
                    rec.steps.push(step.clone());
                }
            }
            if let Some(rec) = self.my_history.clone().filter(|r| r.term == term) {
                let _ = self.dcs.put_history(&rec).await;
            }
        }
    }

    /// Where this node's sidecar API and database answer, as published in
    /// its member record and in the history record of its promotion.
    pub(super) fn address(&self) -> crate::dcs::Address {
        crate::dcs::Address { api_url: self.cfg.api.url(), db_host: self.cfg.database.host.clone(), db_port: self.cfg.database.port }
    }

    pub(super) async fn publish(&mut self, obs: &Observation, cluster: Option<ClusterState>, dcs_error: Option<String>, d: &Decision) {
        let holds = self.dcs.holds_leader();
        // During an etcd outage the leader keeps serving only on the
        // members' word (failsafe).
        let failsafe = cluster.is_none() && self.failsafe_active;
        let leading = holds && (failsafe || cluster.as_ref().and_then(|c| c.leader.as_ref()).is_some_and(|l| l.node == self.cfg.node));
        let lag_bytes = match (self.last_primary_position, obs.local.position, obs.local.role) {
            (Some(p), Some(m), Some(crate::core::DbRole::Replica)) if p.timeline == m.timeline => Some(p.lsn.0.saturating_sub(m.lsn.0)),
            _ => None,
        };
        let at = self.address();
        let rec = MemberRecord {
            node: self.cfg.node.clone(),
            api_url: at.api_url,
            db_host: at.db_host,
            db_port: at.db_port,
            health: obs.local.health,
            role: obs.local.role,
            position: obs.local.position,
            receive_lsn: obs.receive_lsn,
            replay_lsn: obs.replay_lsn,
            streaming: obs.local.streaming,
            upstream: obs.upstream.clone(),
            lag_seconds: obs.lag_seconds,
            lag_bytes,
            timeline_history: obs.timeline_history.clone(),
            priority: self.cfg.failover.priority,
            eligible: d.eligibility.eligible,
            ineligible_reason: d.eligibility.reason.clone(),
            state: d.state.clone(),
            refusal: d.refusal.clone(),
            refusal_kind: d.refusal_kind,
            term: if leading { self.term } else { None },
            paused: cluster.as_ref().is_some_and(|c| c.pause.is_some()),
            updated_ms: now_ms(),
            version: env!("CARGO_PKG_VERSION").into(),
            sync: self.shared.get().sync.clone(),
            gtid: obs.gtid.clone(),
        };
        let put = if cluster.is_some() { self.dcs.put_member(&rec).await.err().map(|e| format!("{e:#}")) } else { None };
        if let Some(e) = &put {
            tracing::warn!(error = %e, "could not publish the member key");
        }
        let writable = leading && self.heartbeat_ok;
        let ok = cluster.is_some();
        self.shared.update(|s| {
            s.me = Some(rec);
            if let Some(c) = cluster {
                s.cluster = c;
                s.dcs_last_ok_ms = now_ms();
                s.dcs_last_ok = Some(crate::clock::Instant::now());
            }
            s.dcs_ok = ok;
            s.dcs_error = dcs_error.or(put);
            s.holds_leader = holds;
            s.term = if leading { self.term } else { s.cluster.term };
            s.writable_leader = writable;
            s.last_loop_ms = now_ms();
        });
    }
}
