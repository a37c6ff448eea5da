//! Is the leader's sidecar alive? Whether its member record keeps
//! changing, timed on this node's clock (the record's `updated_ms` is the
//! leader's clock: only whether it changes is used). The stuck-replica rule
//! (`core::rejoin`) acts only against a leader seen alive.

use crate::clock::Instant;
use crate::dcs::MemberRecord;
use std::time::Duration;

/// The leader's record as last seen changing.
struct Seen {
    node: String,
    updated_ms: u64,
    /// When this node first saw that value; None when it was first read
    /// after a gap in the reads, so the change may be old.
    at: Option<Instant>,
}

#[derive(Default)]
pub(super) struct LeaderWatch {
    seen: Option<Seen>,
    /// When this node last read the cluster from etcd.
    last_read: Option<Instant>,
}

impl LeaderWatch {
    /// One read of the cluster: the leader's record if it leads a running
    /// primary. A change counts as seen now only if the previous read was
    /// at most `max_gap` ago: after a gap in the reads (an etcd outage,
    /// this sidecar's start) a dead leader's last record looked alive (the
    /// second 30-minute simulation run, seed 7038298).
    pub(super) fn read(&mut self, leader: Option<&MemberRecord>, now: Instant, max_gap: Duration) {
        let continuous = self.last_read.replace(now).is_some_and(|t| now.duration_since(t) <= max_gap);
        self.seen = match (leader, self.seen.take()) {
            (Some(m), Some(seen)) if seen.node == m.node && seen.updated_ms == m.updated_ms => Some(seen),
            (Some(m), _) => Some(Seen { node: m.node.clone(), updated_ms: m.updated_ms, at: continuous.then_some(now) }),
            (None, _) => None,
        };
    }

    /// How long ago `node`'s record was last seen changing, if it was.
    pub(super) fn refreshed_ago(&self, node: &str) -> Option<Duration> {
        self.seen.as_ref().filter(|s| s.node == node).and_then(|s| s.at).map(|t| t.elapsed())
    }
}
