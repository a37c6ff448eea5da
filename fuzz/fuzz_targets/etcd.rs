//! Every value read from etcd, through the one decoding boundary
//! (`dcs::decode`). The input is split at 0xFF bytes into the values of
//! the leader key, two member keys, pause, switchover, two history
//! records, incident and sync. Whatever they hold, the view that comes out
//! only carries names that pass the name check, members that agree with
//! their key, and one report per ignored value.
#![no_main]
use libfuzzer_sys::fuzz_target;
use vigil::dcs::decode::{decode, valid_name, RawCluster, RawKv, Reader, UNREADABLE_LEADER};

const KEYS: [&str; 10] = [
    "leader",
    "members/pg1",
    "members/pg2",
    "pause",
    "switchover",
    "history/00000000000000000002",
    "history/00000000000000000001",
    "incident",
    "sync",
    "status",
];

fuzz_target!(|data: &[u8]| {
    let mut values = data.split(|b| *b == 0xFF);
    let mut kv = |i: usize| {
        values.next().map(|v| RawKv { key: KEYS[i].to_string(), value: v.to_vec(), create_revision: 7, lease: 42 + (i as i64 % 2) })
    };
    let raw = RawCluster {
        leader: kv(0),
        members: [kv(1), kv(2)].into_iter().flatten().collect(),
        pause: kv(3),
        request: kv(4),
        history: [kv(5), kv(6)].into_iter().flatten().collect(),
        incident: kv(7),
        sync: kv(8),
        status: kv(9),
    };
    let present = [raw.leader.is_some(), raw.pause.is_some(), raw.request.is_some(), raw.incident.is_some(), raw.sync.is_some(), raw.status.is_some()]
        .iter()
        .filter(|p| **p)
        .count()
        + raw.members.len()
        + raw.history.len();
    let st = decode(raw, Reader { node: "pg1", leader_lease: 42, member_lease: 43 });
    if let Some(l) = &st.leader {
        assert!(valid_name(&l.node) || l.node == UNREADABLE_LEADER, "leader {:?}", l.node);
    }
    for (key, m) in &st.members {
        assert_eq!(key, &m.node);
        assert!(m.check(key).is_ok());
    }
    if let Some(r) = &st.request {
        assert!(valid_name(&r.to));
    }
    if let Some(s) = &st.sync {
        assert!(valid_name(&s.leader) && s.standbys.iter().chain(s.joining.keys()).all(|n| valid_name(n)));
    }
    if let Some(s) = &st.status {
        assert!(valid_name(&s.leader));
    }
    assert!(!(st.sync.is_some() && st.sync_unreadable));
    assert!(st.bad_values.len() <= present, "{} reports for {present} values", st.bad_values.len());
    assert!(st.bad_values.iter().all(|b| KEYS.contains(&b.key.as_str()) && !b.problem.is_empty()));
});
