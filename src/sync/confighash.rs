//! Configuration drift: each sidecar publishes a hash of the configuration
//! every member should share (not its own name, ports, addresses or
//! priority), and of a configured directory (e.g. an Ansible-pulled git
//! checkout, with its git revision).

use crate::config::Config;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// FNV-1a, 64 bit: stable across builds and machines.
pub fn fnv(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Hash of the shared part of the configuration.
pub fn of_config(c: &Config) -> String {
    let mut f = c.failover.clone();
    f.priority = 0;
    let dns = c.dns.as_ref().map(|d| (&d.server, &d.zone, &d.name, d.ttl, d.txt_term));
    let shared = format!(
        "{}|{:?}|{}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}|{:?}",
        c.cluster,
        c.engine,
        c.etcd.prefix,
        c.timing,
        f,
        c.alerts,
        c.hooks,
        dns,
        c.service,
        c.sync.redis.as_ref().map(|r| (&r.primary, &r.replica))
    );
    format!("{:016x}", fnv(shared.as_bytes()))
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DirHash {
    pub hash: String,
    pub files: usize,
    pub git_revision: Option<String>,
    pub error: Option<String>,
}

/// Hash of every file under `dir` (paths and contents, sorted), ignoring `.git`.
pub async fn of_dir(dir: &Path) -> DirHash {
    let d = dir.to_path_buf();
    let mut out = tokio::task::spawn_blocking(move || {
        let mut files = vec![];
        let mut stack = vec![d.clone()];
        while let Some(p) = stack.pop() {
            let Ok(rd) = std::fs::read_dir(&p) else {
                return DirHash { error: Some(format!("cannot read {}", p.display())), ..Default::default() };
            };
            for e in rd.flatten() {
                let path = e.path();
                if e.file_name() == ".git" {
                    continue;
                }
                if path.is_dir() {
                    stack.push(path);
                } else {
                    files.push(path);
                }
            }
        }
        files.sort();
        let mut acc = Vec::new();
        for f in &files {
            acc.extend_from_slice(f.strip_prefix(&d).unwrap_or(f).to_string_lossy().as_bytes());
            acc.extend_from_slice(&fnv(&std::fs::read(f).unwrap_or_default()).to_le_bytes());
        }
        DirHash { hash: format!("{:016x}", fnv(&acc)), files: files.len(), ..Default::default() }
    })
    .await
    .unwrap_or_default();
    if dir.join(".git").exists() {
        let mut cmd = tokio::process::Command::new("git");
        cmd.arg("-C").arg(dir).args(["rev-parse", "HEAD"]);
        out.git_revision =
            crate::proc::run(cmd, "git rev-parse", std::time::Duration::from_secs(5)).await.ok().map(|s| s.trim().to_string());
    }
    out
}
