//! Session replication status from Redis `INFO replication`, read on both
//! sides of the configured pair over a minimal RESP connection.

use crate::config::RedisSyncConfig;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RedisStatus {
    /// ok, link_down, not_replicating, full_resync, lagging, unreachable.
    pub state: String,
    pub detail: String,
    pub link_up: bool,
    pub offset_lag_bytes: Option<u64>,
    pub last_io_seconds_ago: Option<u64>,
    pub full_resync: bool,
    /// Since when the link has been down (ms since the epoch).
    pub down_since_ms: Option<u64>,
}

/// Sends `INFO replication` and parses the `key:value` lines.
pub async fn info(addr: &str, password: &str, timeout: Duration) -> Result<HashMap<String, String>, String> {
    let work = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        if !password.is_empty() {
            let cmd = format!("*2\r\n$4\r\nAUTH\r\n${}\r\n{password}\r\n", password.len());
            s.write_all(cmd.as_bytes()).await.map_err(|e| e.to_string())?;
        }
        s.write_all(b"*2\r\n$4\r\nINFO\r\n$11\r\nreplication\r\n").await.map_err(|e| e.to_string())?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            let n = s.read(&mut chunk).await.map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("connection closed".to_string());
            }
            buf.extend_from_slice(&chunk[..n]);
            if let Some(body) = parse_bulk(&buf)? {
                return Ok(body);
            }
        }
    };
    let text = tokio::time::timeout(timeout, work).await.map_err(|_| format!("{addr}: no answer within {timeout:?}"))??;
    Ok(text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_string(), v.trim().to_string())).collect())
}

/// Parses the reply to AUTH (+OK, skipped) and INFO (a bulk string).
/// Ok(None): need more bytes.
pub fn parse_bulk(buf: &[u8]) -> Result<Option<String>, String> {
    let mut rest = buf;
    loop {
        let Some(nl) = rest.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let head = String::from_utf8_lossy(&rest[..nl]).to_string();
        match head.chars().next() {
            Some('+') => rest = &rest[nl + 2..],
            Some('-') => return Err(format!("redis: {}", &head[1..])),
            Some('$') => {
                let len: usize = head[1..].parse().map_err(|_| "bad reply length".to_string())?;
                let body = &rest[nl + 2..];
                if body.len() < len {
                    return Ok(None);
                }
                return Ok(Some(String::from_utf8_lossy(&body[..len]).to_string()));
            }
            _ => return Err(format!("unexpected reply {head:?}")),
        }
    }
}

/// The pair's status, from the replica's point of view, with the
/// primary's offset for the byte lag.
pub async fn status(cfg: &RedisSyncConfig) -> RedisStatus {
    let pw = cfg.password.expose().to_string();
    let t = cfg.timeout;
    let (p, r) = tokio::join!(info(&cfg.primary, &pw, t), info(&cfg.replica, &pw, t));
    evaluate(&p, &r, cfg.max_lag_bytes)
}

pub fn evaluate(p: &Result<HashMap<String, String>, String>, r: &Result<HashMap<String, String>, String>, max_lag: u64) -> RedisStatus {
    let mut st = RedisStatus::default();
    let r = match r {
        Ok(r) => r,
        Err(e) => {
            st.state = "unreachable".into();
            st.detail = format!("replica: {e}");
            return st;
        }
    };
    if r.get("role").map(String::as_str) != Some("slave") {
        st.state = "not_replicating".into();
        st.detail = format!("the replica's role is {}", r.get("role").cloned().unwrap_or_default());
        return st;
    }
    st.link_up = r.get("master_link_status").map(String::as_str) == Some("up");
    st.last_io_seconds_ago = r.get("master_last_io_seconds_ago").and_then(|v| v.parse::<i64>().ok()).filter(|v| *v >= 0).map(|v| v as u64);
    st.full_resync = r.get("master_sync_in_progress").map(String::as_str) == Some("1");
    let replica_offset = r.get("slave_repl_offset").and_then(|v| v.parse::<u64>().ok());
    let primary_offset = p.as_ref().ok().and_then(|p| p.get("master_repl_offset")).and_then(|v| v.parse::<u64>().ok());
    if let (Some(po), Some(ro)) = (primary_offset, replica_offset) {
        st.offset_lag_bytes = Some(po.saturating_sub(ro));
    }
    (st.state, st.detail) = if st.full_resync {
        ("full_resync".into(), "a full resynchronisation is running".into())
    } else if !st.link_up {
        (
            "link_down".into(),
            match st.last_io_seconds_ago {
                Some(s) => format!("link to the primary is down (last I/O {s}s ago)"),
                None => "link to the primary is down".to_string(),
            },
        )
    } else if let Err(e) = p {
        ("unreachable".into(), format!("primary: {e}"))
    } else if st.offset_lag_bytes.is_some_and(|l| l > max_lag) {
        ("lagging".into(), format!("{} bytes behind", st.offset_lag_bytes.unwrap_or(0)))
    } else {
        ("ok".into(), format!("{} bytes behind", st.offset_lag_bytes.unwrap_or(0)))
    };
    st
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(text: &str) -> Result<HashMap<String, String>, String> {
        Ok(text.lines().filter_map(|l| l.split_once(':')).map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn replication_states() {
        let p = kv("role:master\nmaster_repl_offset:1000");
        let ok = evaluate(
            &p,
            &kv("role:slave\nmaster_link_status:up\nslave_repl_offset:990\nmaster_last_io_seconds_ago:0\nmaster_sync_in_progress:0"),
            1 << 20,
        );
        assert_eq!((ok.state.as_str(), ok.offset_lag_bytes), ("ok", Some(10)));
        let down = evaluate(&p, &kv("role:slave\nmaster_link_status:down\nslave_repl_offset:990\nmaster_sync_in_progress:0"), 1 << 20);
        assert_eq!(down.state, "link_down");
        assert_eq!(evaluate(&p, &kv("role:master"), 1).state, "not_replicating");
        assert_eq!(evaluate(&p, &Err("refused".into()), 1).state, "unreachable");
        assert_eq!(evaluate(&p, &kv("role:slave\nmaster_link_status:up\nmaster_sync_in_progress:1"), 1).state, "full_resync");
    }

    #[test]
    fn resp_bulk_parsing() {
        assert_eq!(parse_bulk(b"+OK\r\n$5\r\nhello\r\n").unwrap().as_deref(), Some("hello"));
        assert_eq!(parse_bulk(b"$10\r\nhel").unwrap(), None);
        assert!(parse_bulk(b"-NOAUTH Authentication required\r\n").unwrap_err().contains("NOAUTH"));
    }
}
