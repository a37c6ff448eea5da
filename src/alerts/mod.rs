//! Alerts: rules evaluated by each sidecar every loop, and events the HA
//! loop raises (failover started, succeeded, failed, refused). Each alert
//! has a severity, a `for` duration, is sent once when it fires and once
//! when it resolves (deduplicated by its labels), and carries a summary and
//! a runbook link. Delivery (`deliver.rs`) runs in the background and never
//! delays the HA loop.
//!
//! Cluster-wide rules (peer silent, hold-down) are evaluated by one sidecar
//! only: the leader, or with no leader the first live member by name, so
//! that a webhook gets one notification, not one per node.

pub mod deliver;
pub mod rules;

use serde::Serialize;
use std::collections::BTreeMap;

pub use deliver::Notifier;
pub use rules::{Evaluator, Facts};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Critical,
    Warning,
    Info,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Firing,
    Resolved,
}

/// One notification about one alert.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Alert {
    /// `ReplicationLag`, `FailoverSucceeded`, ...
    pub name: String,
    pub status: Status,
    pub severity: Severity,
    pub cluster: String,
    /// The node the alert is about.
    pub node: String,
    /// The sidecar that raised it.
    pub reported_by: String,
    pub summary: String,
    pub description: String,
    pub runbook: String,
    pub term: Option<i64>,
    pub new_primary: Option<String>,
    pub old_primary: Option<String>,
    /// When the condition began (ms since the epoch).
    pub starts_ms: u64,
    /// Set when resolved, and for one-shot events.
    pub ends_ms: Option<u64>,
    /// Extra labels (e.g. the reason of a refusal).
    pub labels: BTreeMap<String, String>,
}

impl Alert {
    /// The identity used for deduplication.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.name, self.cluster, self.node)
    }
}
