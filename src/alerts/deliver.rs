//! Delivering alerts: Prometheus Alertmanager (v2 API), generic webhooks
//! (JSON, configurable headers: PagerDuty, ticket systems) and a command
//! hook. Every destination has its own bounded queue and a task that
//! retries with backoff, so a slow or dead destination delays nothing but
//! its own deliveries; what cannot be delivered is logged and counted.

use super::{Alert, Status};
use crate::config::AlertsConfig;
use serde_json::json;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Delivery counters, per outcome.
#[derive(Debug, Default)]
pub struct Stats {
    pub delivered: AtomicU64,
    /// Gave up after retrying.
    pub failed: AtomicU64,
    /// Dropped because the destination's queue was full.
    pub dropped: AtomicU64,
}

#[derive(Clone)]
enum Dest {
    Alertmanager(String),
    Webhook { url: String, headers: Vec<(String, String)> },
    Command { command: String, timeout: Duration },
}

impl Dest {
    fn name(&self) -> String {
        match self {
            Dest::Alertmanager(u) => format!("alertmanager {u}"),
            Dest::Webhook { url, .. } => format!("webhook {url}"),
            Dest::Command { .. } => "command hook".into(),
        }
    }
}

#[derive(Clone)]
pub struct Notifier {
    queues: Vec<(Dest, mpsc::Sender<Alert>)>,
    pub stats: Arc<Stats>,
}

const MAX_ATTEMPTS: u32 = 8;

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// The Alertmanager v2 representation of one alert.
pub fn alertmanager_body(a: &Alert, generator: &str) -> serde_json::Value {
    let mut labels = serde_json::Map::new();
    labels.insert("alertname".into(), json!(a.name));
    labels.insert("cluster".into(), json!(a.cluster));
    labels.insert("node".into(), json!(a.node));
    labels.insert("severity".into(), json!(a.severity));
    for (k, v) in &a.labels {
        if k != "reason" {
            labels.insert(k.clone(), json!(v));
        }
    }
    let mut annotations =
        json!({ "summary": a.summary, "description": a.description, "runbook_url": a.runbook, "reported_by": a.reported_by });
    if let Some(r) = a.labels.get("reason") {
        annotations["reason"] = json!(r);
    }
    if let Some(t) = a.term {
        annotations["term"] = json!(t.to_string());
    }
    if let Some(p) = &a.new_primary {
        annotations["new_primary"] = json!(p);
    }
    let mut body = json!({ "labels": labels, "annotations": annotations, "startsAt": rfc3339(a.starts_ms), "generatorURL": generator });
    match (a.status, a.ends_ms) {
        (Status::Resolved, Some(e)) | (Status::Firing, Some(e)) => body["endsAt"] = json!(rfc3339(e)),
        _ => {}
    }
    body
}

impl Notifier {
    /// A notifier with no destinations (alerts are only logged).
    pub fn none() -> Notifier {
        Notifier { queues: vec![], stats: Arc::default() }
    }

    pub fn start(cfg: &AlertsConfig, generator: String) -> Notifier {
        let stats: Arc<Stats> = Arc::default();
        let mut dests: Vec<Dest> = cfg.alertmanager.iter().map(|u| Dest::Alertmanager(u.trim_end_matches('/').to_string())).collect();
        for w in &cfg.webhook {
            dests.push(Dest::Webhook { url: w.url.clone(), headers: w.headers.iter().map(|(k, v)| (k.clone(), v.clone())).collect() });
        }
        if let Some(c) = &cfg.command {
            dests.push(Dest::Command { command: c.clone(), timeout: cfg.command_timeout });
        }
        let http = crate::tls::http_client(Some(Duration::from_secs(5)));
        let mut queues = vec![];
        for d in dests {
            let (tx, rx) = mpsc::channel(cfg.queue);
            tokio::spawn(run_destination(d.clone(), rx, http.clone(), Arc::clone(&stats), generator.clone()));
            queues.push((d, tx));
        }
        Notifier { queues, stats }
    }

    /// Queues an alert for every destination. Never waits.
    pub fn notify(&self, a: &Alert) {
        match a.status {
            Status::Firing => tracing::warn!(alert = %a.name, node = %a.node, severity = ?a.severity, "ALERT {}", a.summary),
            Status::Resolved => tracing::info!(alert = %a.name, node = %a.node, "resolved: {}", a.summary),
        }
        for (d, q) in &self.queues {
            self.push(d, q, a.clone());
        }
    }

    /// Re-sends firing alerts to Alertmanager (which forgets alerts that
    /// are not repeated); webhooks and commands get each transition once.
    pub fn refresh(&self, firing: &[Alert]) {
        for (d, q) in &self.queues {
            if matches!(d, Dest::Alertmanager(_)) {
                for a in firing {
                    self.push(d, q, a.clone());
                }
            }
        }
    }

    fn push(&self, d: &Dest, q: &mpsc::Sender<Alert>, a: Alert) {
        if q.try_send(a).is_err() {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(destination = %d.name(), "alert queue full; notification dropped");
        }
    }
}

async fn run_destination(d: Dest, mut rx: mpsc::Receiver<Alert>, http: reqwest::Client, stats: Arc<Stats>, generator: String) {
    while let Some(a) = rx.recv().await {
        let started = Instant::now();
        let mut delay = Duration::from_millis(250);
        let mut attempt = 0;
        loop {
            attempt += 1;
            match send(&d, &a, &http, &generator).await {
                Ok(()) => {
                    stats.delivered.fetch_add(1, Ordering::Relaxed);
                    break;
                }
                Err(e) if attempt >= MAX_ATTEMPTS => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(destination = %d.name(), alert = %a.name, error = %e, "alert not delivered after {attempt} attempts over {:?}", started.elapsed());
                    break;
                }
                Err(e) => {
                    tracing::warn!(destination = %d.name(), alert = %a.name, error = %e, attempt, "alert delivery failed; retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

async fn send(d: &Dest, a: &Alert, http: &reqwest::Client, generator: &str) -> Result<(), String> {
    match d {
        Dest::Alertmanager(base) => {
            let r = http
                .post(format!("{base}/api/v2/alerts"))
                .json(&json!([alertmanager_body(a, generator)]))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {}: {}", r.status(), r.text().await.unwrap_or_default().chars().take(200).collect::<String>()))
            }
        }
        Dest::Webhook { url, headers } => {
            let mut req = http.post(url).json(a);
            for (k, v) in headers {
                req = req.header(k, v);
            }
            let r = req.send().await.map_err(|e| e.to_string())?;
            if r.status().is_success() {
                Ok(())
            } else {
                Err(format!("HTTP {}", r.status()))
            }
        }
        Dest::Command { command, timeout } => {
            let mut cmd = tokio::process::Command::new("sh");
            cmd.arg("-c").arg(command);
            cmd.env("VIGIL_ALERT", &a.name)
                .env("VIGIL_STATUS", format!("{:?}", a.status).to_lowercase())
                .env("VIGIL_SEVERITY", format!("{:?}", a.severity).to_lowercase())
                .env("VIGIL_CLUSTER", &a.cluster)
                .env("VIGIL_NODE", &a.node)
                .env("VIGIL_SUMMARY", &a.summary)
                .env("VIGIL_TERM", a.term.map(|t| t.to_string()).unwrap_or_default())
                .env("VIGIL_NEW_PRIMARY", a.new_primary.clone().unwrap_or_default())
                .env("VIGIL_OLD_PRIMARY", a.old_primary.clone().unwrap_or_default())
                .env("VIGIL_ALERT_JSON", serde_json::to_string(a).unwrap_or_default());
            cmd.stdin(std::process::Stdio::null()).kill_on_drop(true);
            std::os::unix::process::CommandExt::process_group(cmd.as_std_mut(), 0);
            crate::proc::run(cmd, "alert command", *timeout).await.map(|_| ()).map_err(|e| format!("{e:#}"))
        }
    }
}
