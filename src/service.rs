//! DNS failover for ordinary services (a web server and its backups), the
//! Route 53 / Cloudflare style: an ordered list of targets, a health check
//! with `interval`, `timeout`, `fall` and `rise`, and one DNS name that
//! always points at the first healthy target, switching back to a
//! preferred target when it recovers (if `failback`).
//!
//! Exactly one sidecar checks a service at a time: the one holding the
//! etcd lock `locks/service-<name>` (bound to its member lease), so two
//! supervisors never fight over a record.

use crate::alerts::{Evaluator, Notifier, Severity};
use crate::config::{ServiceCheck, ServiceConfig};
use crate::dcs::{now_ms, Dcs};
use crate::publish::dns::DnsTarget;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Health of one target with fall/rise hysteresis.
#[derive(Debug, Clone, PartialEq)]
pub struct TargetHealth {
    pub healthy: bool,
    pub fails: u32,
    pub oks: u32,
    /// When the current run of failures began.
    pub failing_since: Option<Instant>,
}

impl TargetHealth {
    fn new(first_ok: bool) -> Self {
        TargetHealth { healthy: first_ok, fails: 0, oks: 0, failing_since: None }
    }

    /// Records one check. Returns true when the health flipped.
    pub fn record(&mut self, ok: bool, fall: u32, rise: u32) -> bool {
        if ok {
            self.oks += 1;
            self.fails = 0;
            self.failing_since = None;
            if !self.healthy && self.oks >= rise {
                self.healthy = true;
                return true;
            }
        } else {
            self.fails += 1;
            self.oks = 0;
            self.failing_since.get_or_insert_with(Instant::now);
            if self.healthy && self.fails >= fall {
                self.healthy = false;
                return true;
            }
        }
        false
    }
}

/// Which target the name should point at: the first healthy one in order;
/// without failback, the current one stays while it is healthy.
pub fn choose(targets: &[String], health: &[TargetHealth], current: Option<&str>, failback: bool) -> Option<usize> {
    if !failback {
        if let Some(i) = current.and_then(|c| targets.iter().position(|t| t == c)) {
            if health[i].healthy {
                return Some(i);
            }
        }
    }
    health.iter().position(|h| h.healthy)
}

async fn check(c: &ServiceCheck, target: &str, timeout: Duration, http: &reqwest::Client) -> bool {
    match c {
        ServiceCheck::Tcp { port } => {
            matches!(tokio::time::timeout(timeout, tokio::net::TcpStream::connect((target, *port))).await, Ok(Ok(_)))
        }
        ServiceCheck::Http { port, path, expect } => {
            let host = if target.contains(':') { format!("[{target}]") } else { target.to_string() };
            match http.get(format!("http://{host}:{port}{path}")).timeout(timeout).send().await {
                Ok(r) => r.status().as_u16() == *expect,
                Err(_) => false,
            }
        }
    }
}

/// Runs the monitor of one service for the life of the sidecar.
pub async fn run<D: Dcs>(svc: ServiceConfig, dns: DnsTarget, dcs: Arc<D>, notifier: Notifier, alerts: Arc<Evaluator>) {
    let http = crate::tls::http_client(None);
    let lock = format!("service-{}", svc.name);
    let mut health: Option<Vec<TargetHealth>> = None;
    let mut current: Option<String> = None;
    let mut owner = false;
    loop {
        let started = Instant::now();
        match dcs.try_lock(&lock).await {
            Ok(true) => {
                if !owner {
                    tracing::info!(service = %svc.name, "checking this service (holding its lock)");
                    owner = true;
                    health = None;
                    current = dns.lookup().await.ok().flatten().map(|(a, _)| a);
                }
            }
            Ok(false) | Err(_) => {
                if owner {
                    tracing::warn!(service = %svc.name, "lost the service lock; another sidecar checks it now");
                }
                owner = false;
            }
        }
        if owner {
            let results = futures_util::future::join_all(svc.targets.iter().map(|t| check(&svc.check, t, svc.timeout, &http))).await;
            let h = health.get_or_insert_with(|| results.iter().map(|ok| TargetHealth::new(*ok)).collect());
            for (i, ok) in results.iter().enumerate() {
                let since = h[i].failing_since;
                if h[i].record(*ok, svc.fall, svc.rise) {
                    let state = if h[i].healthy { "up" } else { "down" };
                    let detected = since.map(|s| s.elapsed()).unwrap_or_default();
                    tracing::warn!(service = %svc.name, target = %svc.targets[i], detection_ms = detected.as_millis() as u64, "target is {state}");
                }
            }
            match choose(&svc.targets, h, current.as_deref(), svc.failback) {
                Some(i) if current.as_deref() != Some(svc.targets[i].as_str()) => {
                    let t0 = Instant::now();
                    let target = svc.targets[i].clone();
                    let mut d = dns.clone();
                    d.name = svc.dns_name.clone();
                    d.ttl = svc.ttl.as_secs() as u32;
                    d.txt_term = false;
                    match d.publish_verified(&target, 0, &svc.name).await {
                        Ok(_) => {
                            tracing::warn!(service = %svc.name, from = ?current, to = %target, switch_ms = t0.elapsed().as_millis() as u64, "service DNS moved");
                            let ev = alerts.event(
                                "ServiceFailover",
                                Severity::Warning,
                                now_ms(),
                                format!(
                                    "{} now points at {target} (was {})",
                                    svc.dns_name,
                                    current.clone().unwrap_or_else(|| "unset".into())
                                ),
                                None,
                                current.clone(),
                                Some(target.clone()),
                            );
                            notifier.notify(&ev);
                            current = Some(target);
                        }
                        Err(e) => {
                            tracing::error!(service = %svc.name, error = %format!("{e:#}"), "could not move the service's DNS record; retrying")
                        }
                    }
                }
                None => tracing::error!(service = %svc.name, "no healthy target; leaving {} as it is", svc.dns_name),
                _ => {}
            }
        }
        tokio::time::sleep(svc.interval.saturating_sub(started.elapsed())).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_and_rise() {
        let mut h = TargetHealth::new(true);
        assert!(!h.record(false, 3, 2));
        assert!(!h.record(false, 3, 2));
        assert!(h.record(false, 3, 2) && !h.healthy);
        assert!(!h.record(true, 3, 2));
        assert!(h.record(true, 3, 2) && h.healthy);
    }

    #[test]
    fn first_healthy_in_order_skipping_unhealthy_backups() {
        let t: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let up = TargetHealth::new(true);
        let down = TargetHealth::new(false);
        assert_eq!(choose(&t, &[down.clone(), down.clone(), up.clone()], Some("a"), true), Some(2));
        assert_eq!(choose(&t, &[up.clone(), down.clone(), up.clone()], Some("c"), true), Some(0), "failback");
        assert_eq!(choose(&t, &[up.clone(), down.clone(), up.clone()], Some("c"), false), Some(2), "no failback");
        assert_eq!(choose(&t, &[down.clone(), down.clone(), down], Some("a"), true), None);
    }
}
