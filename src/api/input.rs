//! The API's validation boundary: every request body and query parameter a
//! client sends becomes a typed value here, or an error that says what is
//! wrong (answered as 400). Handlers call these only after the caller is
//! authorized, so an unauthenticated client's bytes are never parsed.
//! Pure functions of bytes, fuzzed by `fuzz/fuzz_targets/api.rs`.

use crate::dcs::decode::valid_name;
use crate::units::{parse_lag_limit, LagLimit};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// `POST /switchover`: both fields optional (an empty body is "any
/// candidate, from whoever leads").
#[derive(Debug, Deserialize, Default, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverBody {
    pub leader: Option<String>,
    pub candidate: Option<String>,
}

/// `POST /failover`: a named candidate, optionally accepting data loss.
#[derive(Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailoverBody {
    pub candidate: String,
    #[serde(default)]
    pub allow_data_loss: bool,
}

/// `POST /failsafe`: the question a leader cut off from etcd asks every
/// member.
#[derive(Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FailsafeAsk {
    pub leader: String,
    pub term: Option<i64>,
}

/// The largest body any endpoint accepts; the real ones are tens of bytes.
pub const MAX_BODY: usize = 4096;

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    if bytes.len() > MAX_BODY {
        return Err(format!("request body of {} bytes, more than {MAX_BODY}", bytes.len()));
    }
    serde_json::from_slice(bytes).map_err(|e| format!("bad request body: {e}"))
}

fn name(field: &str, n: &str) -> Result<(), String> {
    if valid_name(n) {
        Ok(())
    } else {
        Err(format!("{field} {n:?} is not a node name"))
    }
}

fn blank(bytes: &[u8]) -> bool {
    bytes.iter().all(u8::is_ascii_whitespace)
}

pub fn switchover(bytes: &[u8]) -> Result<SwitchoverBody, String> {
    let b: SwitchoverBody = if blank(bytes) { SwitchoverBody::default() } else { json(bytes)? };
    b.leader.as_deref().map(|n| name("leader", n)).transpose()?;
    b.candidate.as_deref().map(|n| name("candidate", n)).transpose()?;
    Ok(b)
}

pub fn failover(bytes: &[u8]) -> Result<FailoverBody, String> {
    let b: FailoverBody = json(bytes)?;
    name("candidate", &b.candidate)?;
    Ok(b)
}

pub fn failsafe(bytes: &[u8]) -> Result<FailsafeAsk, String> {
    let b: FailsafeAsk = json(bytes)?;
    name("leader", &b.leader)?;
    Ok(b)
}

/// The `lag` parameter of the health endpoints (`?lag=16MB`, `?lag=10s`);
/// None when absent.
pub fn lag_limit(query: &HashMap<String, String>) -> Result<Option<LagLimit>, String> {
    query.get("lag").map(|l| parse_lag_limit(l)).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_typed_and_names_checked() {
        assert_eq!(switchover(b"  \n").unwrap(), SwitchoverBody::default());
        assert_eq!(switchover(br#"{"candidate":"pg2"}"#).unwrap().candidate.as_deref(), Some("pg2"));
        for bad in [&br#"{"candidate":"pg2;rm"}"#[..], br#"{"leader":""}"#, br#"{"candidat":"pg2"}"#, b"{not json", b"[]"] {
            assert!(switchover(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert!(failover(b"").is_err(), "a failover names its candidate");
        assert!(failover(br#"{"candidate":"pg3","allow_data_loss":true}"#).unwrap().allow_data_loss);
        assert!(failsafe(br#"{"leader":"pg1","term":7}"#).is_ok());
        assert!(failsafe(br#"{"leader":"pg1\n","term":7}"#).is_err());
        let big = format!(r#"{{"candidate":"{}"}}"#, "a".repeat(MAX_BODY));
        assert!(failover(big.as_bytes()).unwrap_err().contains("more than"));
    }

    #[test]
    fn the_lag_parameter_is_parsed_or_refused() {
        let q = |v: &str| HashMap::from([("lag".to_string(), v.to_string())]);
        assert_eq!(lag_limit(&HashMap::new()), Ok(None));
        assert!(lag_limit(&q("16MB")).unwrap().is_some());
        assert!(lag_limit(&q("ten")).is_err());
    }
}
