//! How current the backup is besides its database: session replication
//! (Redis), file sync (a marker file the primary writes into the synced
//! tree, whatever tool copies it), and configuration (a hash each sidecar
//! publishes, compared across members to find drift). Every problem is a
//! named state in the report, never a crash.
//!
//! A background task (`collect`) refreshes the report every `interval`;
//! the HA loop only copies it into the member key, so slow Redis or a slow
//! disk never delays a failover.

pub mod confighash;
pub mod files;
pub mod redis;

use crate::config::SyncConfig;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The sync section of a member record and of `/sync-status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct SyncReport {
    pub redis: Option<redis::RedisStatus>,
    pub files: Option<files::FileSyncStatus>,
    /// Hash of the configuration fields every member should share.
    pub config_hash: String,
    /// Hash (and git revision) of the configured directory, if any.
    pub config_dir: Option<confighash::DirHash>,
    /// Free bytes on the database's file system.
    pub disk_free: Option<u64>,
    pub checked_ms: u64,
}

impl SyncReport {
    /// Named problems: (check, reason), for `/health` and alerts.
    pub fn problems(&self, cfg: &SyncConfig, is_primary: bool) -> Vec<(String, String)> {
        let mut v = vec![];
        if let Some(r) = &self.redis {
            if r.state != "ok" {
                v.push(("redis".to_string(), format!("{}: {}", r.state, r.detail)));
            }
        }
        if let (Some(f), false) = (&self.files, is_primary) {
            if f.state != "ok" {
                v.push(("file_sync".to_string(), format!("{}: {}", f.state, f.detail)));
            }
        }
        if let (Some(free), Some(min)) = (self.disk_free, cfg.min_free_disk) {
            if free < min {
                v.push(("disk".to_string(), format!("{} free, below {}", crate::units::format_size(free), crate::units::format_size(min))));
            }
        }
        v
    }
}

/// What the collector needs to know of the HA loop.
pub trait RoleSource: Send + Sync + 'static {
    /// Some(term) while this node leads with a writable database.
    fn leading_term(&self) -> Option<i64>;
}

/// Refreshes the report every `interval`, writing the file-sync marker
/// while this node is the primary.
pub async fn collect(cfg: crate::config::Config, role: Arc<dyn RoleSource>, publish: impl Fn(SyncReport) + Send + 'static) {
    let s = cfg.sync.clone();
    let config_hash = confighash::of_config(&cfg);
    loop {
        let now = crate::dcs::now_ms();
        let mut rep = SyncReport { config_hash: config_hash.clone(), checked_ms: now, ..Default::default() };
        if let Some(r) = &s.redis {
            rep.redis = Some(redis::status(r).await);
        }
        if let Some(f) = &s.files {
            if let Some(term) = role.leading_term() {
                if let Err(e) = files::write_marker(f, term, &cfg.node) {
                    tracing::warn!(error = %e, "could not write the file-sync marker");
                }
            }
            rep.files = Some(files::read_marker(f, now));
        }
        if let Some(dir) = &s.config_dir {
            rep.config_dir = Some(confighash::of_dir(dir).await);
        }
        rep.disk_free =
            rustix::fs::statvfs(cfg.database.data_dir.parent().unwrap_or(&cfg.database.data_dir)).ok().map(|v| v.f_bavail * v.f_frsize);
        publish(rep);
        tokio::time::sleep(s.interval.max(Duration::from_millis(100))).await;
    }
}
