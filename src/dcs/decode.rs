//! The one boundary where values read from etcd become records.
//!
//! Anyone with write access to etcd (an operator's `etcdctl put`, a bug in
//! another tool, an attacker) can put anything under the cluster's prefix.
//! Every value is decoded and checked here, key by key: a bad value is
//! reported with its key and the problem, and ignored alone. It never makes
//! the whole read fail, because a failed read looks like an etcd outage to
//! the loop (member keys would lapse, the leader would fence).
//!
//! What "ignored" means per key, chosen so that a bad value can never cause
//! a promotion it would not cause when absent:
//! - `leader`: the key exists, so nobody can take it; it is held by
//!   [`UNREADABLE_LEADER`] (or by this node when the key carries this
//!   node's lease), and a writable database whose sidecar does not hold it
//!   is fenced as usual.
//! - `members/<name>`: that member is left out (it looks departed). A record
//!   whose `node` differs from its key's name is refused, so no record can
//!   speak for another node. This node's own key written under another
//!   lease than its own is refused and named: two sidecars configured with
//!   the same node name (they would overwrite each other's record).
//! - `sync`: the synchronous set is *unknown*, not absent: in synchronous
//!   mode nobody is promoted automatically until the leader rewrites it.
//! - `pause`, `switchover`, `incident`, `status`: as if absent; a bad `history/`
//!   record is skipped for the newest readable one (of the last few).

use super::{
    ClusterState, HistoryRecord, IncidentRecord, LeaderRecord, MemberRecord, PauseRecord, RequestRecord, StatusRecord, SyncRecord,
};
use serde::{Deserialize, Serialize};

/// The name the view gives a leader key whose value cannot be read. It is
/// not a valid node name, so it never matches a member.
pub const UNREADABLE_LEADER: &str = "(unreadable)";

/// One key-value pair as etcd returned it; `key` is relative to the
/// cluster's prefix (`leader`, `members/pg1`, ...).
#[derive(Debug, Clone, Default)]
pub struct RawKv {
    pub key: String,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub lease: i64,
}

/// Everything one read of the cluster's keys returned, undecoded.
#[derive(Debug, Clone, Default)]
pub struct RawCluster {
    pub leader: Option<RawKv>,
    pub members: Vec<RawKv>,
    pub pause: Option<RawKv>,
    pub request: Option<RawKv>,
    /// The newest few history records, newest first.
    pub history: Vec<RawKv>,
    pub incident: Option<RawKv>,
    pub sync: Option<RawKv>,
    pub status: Option<RawKv>,
}

/// A value that was read and ignored, with why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadValue {
    /// The key, relative to the cluster's prefix.
    pub key: String,
    pub problem: String,
}

/// Node and cluster names: what `synchronous_standby_names`, file names,
/// hooks and DNS records can carry without quoting.
pub fn valid_name(s: &str) -> bool {
    (1..=63).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn check_name(field: &str, s: &str) -> Result<(), String> {
    if valid_name(s) {
        Ok(())
    } else {
        Err(format!("{field} {s:?} is not a node name (1 to 63 of letters, digits, '-', '_', '.')"))
    }
}

/// A host name or address: no whitespace, no control or quoting characters
/// (it ends up in `primary_conninfo` and `CHANGE MASTER`).
fn check_host(field: &str, s: &str) -> Result<(), String> {
    let ok = (1..=253).contains(&s.len()) && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:[]%".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!("{field} {s:?} is not a host name or address"))
    }
}

fn json<T: serde::de::DeserializeOwned>(kv: &RawKv) -> Result<T, String> {
    serde_json::from_slice(&kv.value).map_err(|e| format!("not a valid value: {e}"))
}

impl MemberRecord {
    /// The checks a member record must pass, given the name in its key.
    pub fn check(&self, key_name: &str) -> Result<(), String> {
        check_name("member key", key_name)?;
        if self.node != key_name {
            return Err(format!("record says node {:?} but is stored under members/{key_name}", self.node));
        }
        check_address(&self.api_url, &self.db_host)
    }
}

/// A sidecar's API URL and its database host, as read from etcd.
fn check_address(api_url: &str, db_host: &str) -> Result<(), String> {
    check_host("db_host", db_host)?;
    if !(api_url.starts_with("http://") || api_url.starts_with("https://")) || api_url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(format!("api_url {api_url:?} is not an http(s) URL"));
    }
    Ok(())
}

/// Who is reading: this node's name and the leases this process holds its
/// keys with (0: none, or not known at this moment).
#[derive(Debug, Clone, Copy)]
pub struct Reader<'a> {
    pub node: &'a str,
    pub leader_lease: i64,
    pub member_lease: i64,
}

/// Decodes and checks every value, as `me` reads them.
pub fn decode(raw: RawCluster, me: Reader) -> ClusterState {
    let Reader { node: me, leader_lease: my_leader_lease, member_lease: my_member_lease } = me;
    let mut st = ClusterState::default();
    let mut bad_values = vec![];
    let mut report = |b: BadValue| bad_values.push(b);

    if let Some(kv) = &raw.leader {
        st.term = Some(kv.create_revision);
        st.leader_lease = Some(kv.lease);
        let rec = json::<LeaderRecord>(kv).and_then(|r| check_name("node", &r.node).map(|_| r));
        st.leader = Some(match rec {
            Ok(r) => r,
            Err(problem) => {
                report(st_bad(&kv.key, problem));
                let holder = if my_leader_lease != 0 && kv.lease == my_leader_lease { me } else { UNREADABLE_LEADER };
                LeaderRecord { node: holder.to_string(), since_ms: 0 }
            }
        });
    }
    for kv in &raw.members {
        let name = kv.key.strip_prefix("members/").unwrap_or(&kv.key);
        if name == me && my_member_lease != 0 && kv.lease != my_member_lease {
            report(st_bad(
                &kv.key,
                format!(
                    "this node's member key was written by another process (lease {:x}, ours {my_member_lease:x}): \
                     is node = {me:?} configured on two machines?",
                    kv.lease
                ),
            ));
            continue;
        }
        match json::<MemberRecord>(kv).and_then(|m| m.check(name).map(|_| m)) {
            Ok(m) => {
                st.members.insert(m.node.clone(), m);
            }
            Err(problem) => report(st_bad(&kv.key, problem)),
        }
    }
    if let Some(kv) = &raw.pause {
        match json::<PauseRecord>(kv) {
            Ok(p) => st.pause = Some(p),
            Err(problem) => report(st_bad(&kv.key, problem)),
        }
    }
    if let Some(kv) = &raw.request {
        let rec = json::<RequestRecord>(kv).and_then(|r| {
            check_name("to", &r.to)?;
            r.from.as_deref().map(|f| check_name("from", f)).transpose()?;
            Ok(r)
        });
        match rec {
            Ok(r) => st.request = Some(r),
            Err(problem) => report(st_bad(&kv.key, problem)),
        }
    }
    // The newest record that can be read: one bad record must not switch
    // off hold-down and the last-primary rules.
    for kv in &raw.history {
        match json::<HistoryRecord>(kv).and_then(|h| check_name("new_primary", &h.new_primary).map(|_| h)) {
            Ok(mut h) => {
                // A bad address is dropped alone: the record still says
                // who the last primary was.
                if let Some(Err(problem)) = h.new_primary_at.as_ref().map(|a| check_address(&a.api_url, &a.db_host)) {
                    report(st_bad(&kv.key, format!("new_primary_at: {problem}")));
                    h.new_primary_at = None;
                }
                st.last_history = Some(h);
                break;
            }
            Err(problem) => report(st_bad(&kv.key, problem)),
        }
    }
    if let Some(kv) = &raw.incident {
        let rec = json::<IncidentRecord>(kv).and_then(|i| {
            if !i.node.is_empty() {
                check_name("node", &i.node)?;
            }
            Ok(i)
        });
        match rec {
            Ok(i) => st.incident = Some(i),
            Err(problem) => report(st_bad(&kv.key, problem)),
        }
    }
    if let Some(kv) = &raw.sync {
        let rec = json::<SyncRecord>(kv).and_then(|s| {
            check_name("leader", &s.leader)?;
            for n in s.standbys.iter().chain(s.joining.keys()) {
                check_name("standby", n)?;
            }
            Ok(s)
        });
        match rec {
            Ok(s) => st.sync = Some(s),
            Err(problem) => {
                st.sync_unreadable = true;
                report(st_bad(&kv.key, problem));
            }
        }
    }
    if let Some(kv) = &raw.status {
        match json::<StatusRecord>(kv).and_then(|s| check_name("leader", &s.leader).map(|_| s)) {
            Ok(s) => st.status = Some(s),
            Err(problem) => report(st_bad(&kv.key, problem)),
        }
    }
    st.bad_values = bad_values;
    st
}

fn st_bad(key: &str, problem: String) -> BadValue {
    BadValue { key: key.to_string(), problem }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &str, value: &str) -> RawKv {
        RawKv { key: key.into(), value: value.as_bytes().to_vec(), create_revision: 42, lease: 7 }
    }

    fn reader(node: &str, leader_lease: i64) -> Reader<'_> {
        Reader { node, leader_lease, member_lease: 0 }
    }

    /// Two sidecars with one node name: each sees its key under the other's
    /// lease at times, and says so instead of reading the other's record
    /// as its own.
    #[test]
    fn this_nodes_key_under_another_lease_is_named() {
        let raw = RawCluster { members: vec![kv("members/pg1", &member("pg1")), kv("members/pg2", &member("pg2"))], ..Default::default() };
        let st = decode(raw.clone(), Reader { node: "pg1", leader_lease: 0, member_lease: 9 });
        assert_eq!(st.members.keys().collect::<Vec<_>>(), vec!["pg2"]);
        assert!(st.bad_values[0].problem.contains("configured on two machines"), "{:?}", st.bad_values);
        // Its own lease (7, as written by `kv`), or not known yet: read as usual.
        for member_lease in [7, 0] {
            let st = decode(raw.clone(), Reader { node: "pg1", leader_lease: 0, member_lease });
            assert_eq!(st.members.len(), 2);
            assert!(st.bad_values.is_empty());
        }
    }

    fn member(node: &str) -> String {
        serde_json::json!({
            "node": node, "api_url": "http://127.0.0.1:8008", "db_host": "127.0.0.1", "db_port": 5432,
            "health": "running", "role": "replica", "position": null, "receive_lsn": null, "replay_lsn": null,
            "streaming": true, "upstream": null, "lag_seconds": null, "lag_bytes": null, "priority": 100,
            "eligible": true, "ineligible_reason": null, "state": "x", "refusal": null, "term": null,
            "paused": false, "updated_ms": 1, "version": "0"
        })
        .to_string()
    }

    #[test]
    fn good_values_decode_and_nothing_is_reported() {
        let st = decode(
            RawCluster {
                leader: Some(kv("leader", r#"{"node":"pg1","since_ms":1}"#)),
                members: vec![kv("members/pg1", &member("pg1"))],
                pause: Some(kv("pause", r#"{"paused_ms":1,"by":"me"}"#)),
                ..Default::default()
            },
            reader("pg2", 0),
        );
        assert_eq!(st.leader.unwrap().node, "pg1");
        assert_eq!(st.term, Some(42));
        assert!(st.members.contains_key("pg1"));
        assert!(st.pause.is_some());
        assert!(st.bad_values.is_empty());
    }

    /// Defect 3 of the trust issue: a malformed pause or switchover value
    /// made the whole read fail on every sidecar.
    #[test]
    fn a_malformed_pause_or_switchover_is_ignored_alone_and_named() {
        let st = decode(
            RawCluster {
                leader: Some(kv("leader", r#"{"node":"pg1","since_ms":1}"#)),
                members: vec![kv("members/pg1", &member("pg1"))],
                pause: Some(kv("pause", "{not json")),
                request: Some(kv("switchover", r#"{"to": 3}"#)),
                ..Default::default()
            },
            reader("pg2", 0),
        );
        assert!(st.pause.is_none() && st.request.is_none());
        assert_eq!(st.leader.unwrap().node, "pg1");
        assert_eq!(st.members.len(), 1);
        let keys: Vec<&str> = st.bad_values.iter().map(|b| b.key.as_str()).collect();
        assert_eq!(keys, vec!["pause", "switchover"]);
    }

    /// The last primary's address in its history record is checked like a
    /// member's; a bad one is dropped alone, the record still names the
    /// last primary.
    #[test]
    fn a_bad_address_in_a_history_record_is_dropped_alone() {
        let rec = |host: &str| {
            serde_json::json!({
                "term": 5, "kind": "failover", "reason": "r", "old_primary": null, "new_primary": "pg2", "at_ms": 1,
                "steps": [], "candidates": [], "old_position": null, "new_position": null,
                "new_primary_at": {"api_url": "http://10.0.0.2:8008", "db_host": host, "db_port": 5432}
            })
            .to_string()
        };
        let st = decode(RawCluster { history: vec![kv("history/5", &rec("10.0.0.2"))], ..Default::default() }, reader("pg3", 0));
        assert_eq!(st.last_history.unwrap().new_primary_at.unwrap().db_host, "10.0.0.2");
        assert!(st.bad_values.is_empty());
        let st = decode(RawCluster { history: vec![kv("history/5", &rec("h x;touch"))], ..Default::default() }, reader("pg3", 0));
        let h = st.last_history.unwrap();
        assert_eq!((h.new_primary.as_str(), h.new_primary_at), ("pg2", None));
        assert_eq!(st.bad_values[0].key, "history/5");
        // Written before the field existed: no address, nothing reported.
        let old = rec("x").replace(r#","new_primary_at":{"api_url":"http://10.0.0.2:8008","db_host":"x","db_port":5432}"#, "");
        assert!(!old.contains("new_primary_at"), "{old}");
        let st = decode(RawCluster { history: vec![kv("history/5", &old)], ..Default::default() }, reader("pg3", 0));
        assert!(st.last_history.unwrap().new_primary_at.is_none() && st.bad_values.is_empty());
    }

    #[test]
    fn a_member_record_must_agree_with_its_key() {
        let st = decode(RawCluster { members: vec![kv("members/pg2", &member("pg1"))], ..Default::default() }, reader("pg3", 0));
        assert!(st.members.is_empty());
        assert!(st.bad_values[0].problem.contains("stored under members/pg2"), "{:?}", st.bad_values);
    }

    #[test]
    fn hostile_names_and_hosts_are_refused() {
        let quote = member("pg1").replace("\"db_host\":\"127.0.0.1\"", "\"db_host\":\"h\\nprimary_conninfo='x'\"");
        let st = decode(
            RawCluster {
                members: vec![kv("members/pg1", &quote), kv("members/a\"b", &member("a\"b"))],
                request: Some(kv(
                    "switchover",
                    r#"{"kind":"failover","from":null,"to":"x{reason};touch","allow_data_loss":false,"requested_ms":1}"#,
                )),
                ..Default::default()
            },
            reader("pg3", 0),
        );
        assert!(st.members.is_empty());
        assert!(st.request.is_none());
        assert_eq!(st.bad_values.len(), 3, "{:?}", st.bad_values);
    }

    #[test]
    fn an_unreadable_leader_key_is_still_held() {
        let raw = RawCluster { leader: Some(kv("leader", r#"{"node":"x{reason};touch CANARY;","since_ms":1}"#)), ..Default::default() };
        let other = decode(raw.clone(), reader("pg2", 0));
        assert_eq!(other.leader.unwrap().node, UNREADABLE_LEADER);
        // The holder recognises its own lease and keeps leading.
        let holder = decode(raw, reader("pg1", 7));
        assert_eq!(holder.leader.unwrap().node, "pg1");
    }

    #[test]
    fn an_unreadable_sync_key_is_unknown_not_absent() {
        let st = decode(RawCluster { sync: Some(kv("sync", "[]")), ..Default::default() }, reader("pg1", 0));
        assert!(st.sync.is_none());
        assert!(st.sync_unreadable);
    }

    #[test]
    fn a_bad_status_key_is_as_if_absent_and_named() {
        for bad in ["{}", r#"{"leader":"pg 1","heartbeat_ms":1,"position":null}"#, r#"{"leader":"pg1","heartbeat_ms":-5,"position":null}"#]
        {
            let st = decode(RawCluster { status: Some(kv("status", bad)), ..Default::default() }, reader("pg1", 0));
            assert!(st.status.is_none(), "{bad}");
            assert_eq!(st.bad_values.len(), 1, "{bad}");
            assert_eq!(st.bad_values[0].key, "status");
        }
        let good = r#"{"leader":"pg1","heartbeat_ms":1800000000000,"position":{"timeline":2,"lsn":"0/3000060"}}"#;
        let st = decode(RawCluster { status: Some(kv("status", good)), ..Default::default() }, reader("pg1", 0));
        assert_eq!(st.status.map(|s| s.heartbeat_ms), Some(1_800_000_000_000));
    }
}
