//! File sync status, whatever tool copies the files (lsyncd, rsync from
//! cron): the primary's sidecar writes a small marker file (time, term,
//! node) into the synced tree; a backup's sidecar reads its copy and
//! reports how old it is.

use crate::config::FileSyncConfig;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FileSyncStatus {
    /// ok, stale, missing, unreadable, dir_missing, clock_skew.
    pub state: String,
    pub detail: String,
    pub age_seconds: Option<f64>,
    /// The primary term and node that wrote the marker.
    pub term: Option<i64>,
    pub written_by: Option<String>,
    /// lsyncd's status file, first line, when configured.
    pub lsyncd: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Marker {
    ts_ms: u64,
    term: i64,
    node: String,
}

/// Writes the marker atomically (temporary file + rename).
pub fn write_marker(cfg: &FileSyncConfig, term: i64, node: &str) -> Result<(), String> {
    if !cfg.dir.is_dir() {
        return Err(format!("{} is not a directory", cfg.dir.display()));
    }
    let m = Marker { ts_ms: crate::dcs::now_ms(), term, node: node.to_string() };
    let tmp = cfg.dir.join(format!(".{}.tmp", cfg.marker));
    std::fs::write(&tmp, serde_json::to_vec(&m).unwrap_or_default()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, cfg.dir.join(&cfg.marker)).map_err(|e| e.to_string())
}

/// Reads this node's copy of the marker.
pub fn read_marker(cfg: &FileSyncConfig, now_ms: u64) -> FileSyncStatus {
    let mut st = FileSyncStatus {
        lsyncd: cfg.lsyncd_status.as_ref().and_then(|p| std::fs::read_to_string(p).ok()).and_then(|t| t.lines().next().map(str::to_string)),
        ..Default::default()
    };
    if !cfg.dir.is_dir() {
        st.state = "dir_missing".into();
        st.detail = format!("{} does not exist", cfg.dir.display());
        return st;
    }
    let path = cfg.dir.join(&cfg.marker);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            st.state = "missing".into();
            st.detail = format!("no {} yet: has the sync ever run?", path.display());
            return st;
        }
        Err(e) => {
            st.state = "unreadable".into();
            st.detail = format!("{}: {e}", path.display());
            return st;
        }
    };
    let m: Marker = match serde_json::from_str(&text) {
        Ok(m) => m,
        Err(e) => {
            st.state = "unreadable".into();
            st.detail = format!("{}: {e}", path.display());
            return st;
        }
    };
    st.term = Some(m.term);
    st.written_by = Some(m.node);
    if m.ts_ms > now_ms + 2_000 {
        st.state = "clock_skew".into();
        st.detail = format!("the marker is {:.1}s in the future: clocks differ between nodes", (m.ts_ms - now_ms) as f64 / 1000.0);
        return st;
    }
    let age = now_ms.saturating_sub(m.ts_ms) as f64 / 1000.0;
    st.age_seconds = Some(age);
    if age > cfg.max_age.as_secs_f64() {
        st.state = "stale".into();
        st.detail = format!("files last synced {age:.1}s ago (max_age {}s)", cfg.max_age.as_secs());
    } else {
        st.state = "ok".into();
        st.detail = format!("files synced {age:.1}s ago");
    }
    st
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn marker_states() {
        let tmp = tempfile::Builder::new().prefix("vigil-files-").tempdir().unwrap();
        let dir = tmp.path().join("files");
        let cfg = FileSyncConfig { dir: dir.clone(), marker: ".vigil-sync".into(), max_age: Duration::from_secs(10), lsyncd_status: None };
        assert_eq!(read_marker(&cfg, 0).state, "dir_missing");
        std::fs::create_dir_all(&dir).unwrap();
        assert_eq!(read_marker(&cfg, 0).state, "missing");
        write_marker(&cfg, 7, "pg1").unwrap();
        let now = crate::dcs::now_ms();
        let st = read_marker(&cfg, now);
        assert_eq!((st.state.as_str(), st.term), ("ok", Some(7)));
        assert_eq!(read_marker(&cfg, now + 11_000).state, "stale");
        assert_eq!(read_marker(&cfg, now - 60_000).state, "clock_skew");
        std::fs::write(dir.join(".vigil-sync"), "garbage").unwrap();
        assert_eq!(read_marker(&cfg, now).state, "unreadable");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
