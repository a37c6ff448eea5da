//! Peers whose sidecar last refused connections, with no sign of it alive
//! since. A peer whose database and sidecar both go silent is taken for a
//! frozen or lost node that its own sidecar fences on resuming; that holds
//! only if a sidecar was running there when it went silent. This memory
//! lets the core tell the two apart (`PeerSidecar::SilentAfterNotRunning`).
//!
//! Found by the 30-minute simulation run on 8794cd0, seed 8687433: pg1's
//! sidecar crashed while its database stayed writable (the replicas rightly
//! refused), then pg1's node froze for 0.8 s; pg2 read the silence as a
//! frozen node and promoted, and pg1 resumed writable with no sidecar to
//! fence it.

use crate::core::{PeerObs, PeerSidecar};
use crate::dcs::MemberRecord;
use std::collections::BTreeMap;

#[derive(Default)]
pub(super) struct DeadSidecars {
    /// Peer → its member record's `updated_ms` when its sidecar was last
    /// found not running (None: it had no record then). A record rewritten
    /// since is a sidecar alive since.
    refused: BTreeMap<String, Option<u64>>,
}

impl DeadSidecars {
    /// One read of the cluster: a peer whose member record was rewritten
    /// since its sidecar refused has a sidecar again.
    pub(super) fn read(&mut self, members: &BTreeMap<String, MemberRecord>) {
        self.refused.retain(|node, at| members.get(node).map(|m| m.updated_ms) == *at || members.get(node).is_none());
    }

    /// Fresh looks at the peers: a silent sidecar that last refused
    /// connections is marked as such, then the memory is updated from what
    /// the looks found.
    pub(super) fn look(&mut self, peers: &mut [PeerObs], members: &BTreeMap<String, MemberRecord>) {
        for p in peers.iter_mut() {
            match p.sidecar {
                PeerSidecar::Silent if self.refused.contains_key(&p.node) => p.sidecar = PeerSidecar::SilentAfterNotRunning,
                PeerSidecar::NotRunning => {
                    self.refused.insert(p.node.clone(), members.get(&p.node).map(|m| m.updated_ms));
                }
                PeerSidecar::Answered => {
                    self.refused.remove(&p.node);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::PeerDb;

    fn peer(sidecar: PeerSidecar) -> PeerObs {
        PeerObs { node: "pg1".into(), db: PeerDb::Silent, candidate: None, sidecar }
    }

    fn members(updated_ms: Option<u64>) -> BTreeMap<String, MemberRecord> {
        updated_ms
            .map(|u| {
                let m = serde_json::json!({
                    "node": "pg1", "api_url": "http://127.0.0.1:8008", "db_host": "127.0.0.1", "db_port": 5432,
                    "health": "running", "role": "primary", "position": null, "receive_lsn": null, "replay_lsn": null,
                    "streaming": false, "upstream": null, "lag_seconds": null, "lag_bytes": null, "priority": 100,
                    "eligible": true, "ineligible_reason": null, "state": "x", "refusal": null, "term": null,
                    "paused": false, "updated_ms": u, "version": "0"
                });
                ("pg1".to_string(), serde_json::from_value::<MemberRecord>(m).unwrap())
            })
            .into_iter()
            .collect()
    }

    /// Each row: the looks and reads in order, and how the last silent
    /// look is marked.
    #[test]
    fn a_silent_sidecar_is_remembered_dead_only_until_a_sign_of_life() {
        enum Step {
            Look(PeerSidecar),
            Read(Option<u64>),
        }
        use PeerSidecar::*;
        use Step::*;
        let rows: Vec<(&str, Vec<Step>, PeerSidecar)> = vec![
            ("never refused: a frozen node", vec![Look(Answered), Read(Some(1)), Read(Some(2))], Silent),
            ("refused, then silent: nobody fences it", vec![Look(NotRunning), Read(Some(1))], SilentAfterNotRunning),
            (
                "refused while its record lived on, unchanged",
                vec![Read(Some(1)), Look(NotRunning), Read(Some(1)), Read(None)],
                SilentAfterNotRunning,
            ),
            ("refused, then its record was rewritten", vec![Look(NotRunning), Read(Some(2))], Silent),
            ("refused with no record, then a record appeared", vec![Read(None), Look(NotRunning), Read(Some(3))], Silent),
            ("refused, then answered", vec![Look(NotRunning), Look(Answered)], Silent),
        ];
        for (name, steps, want) in rows {
            let mut memory = DeadSidecars::default();
            let mut current = members(Some(1));
            for step in steps {
                match step {
                    Read(u) => {
                        current = members(u);
                        memory.read(&current);
                    }
                    Look(s) => memory.look(&mut [peer(s)], &current),
                }
            }
            let mut last = [peer(Silent)];
            memory.look(&mut last, &current);
            assert_eq!(last[0].sidecar, want, "{name}");
        }
    }
}
