//! When a following replica must be rebuilt, and how often that may be
//! tried. Rewinds and base backups are the costliest things vigil does (a
//! base backup of a real database takes hours and doubles its disk use), so
//! both rules err on the side of waiting.

use super::{PeerDb, Policy};
use std::time::Duration;

/// What the loop saw of a replica that follows a leader.
#[derive(Debug, Clone, Copy, Default)]
pub struct StuckInputs {
    /// The WAL receiver (or IO thread) streams now.
    pub streaming: bool,
    /// The replica is configured to stream from the leader's address.
    pub pointed_at_leader: bool,
    /// How long ago (local clock) the leader's member record last changed
    /// while saying "running primary"; None if it never did or says
    /// otherwise now. A record that stopped changing belongs to a dead
    /// sidecar, however healthy it looks.
    pub leader_refreshed_ago: Option<Duration>,
    /// How long the replica has been pointed at the leader without streaming.
    pub not_streaming_for: Option<Duration>,
    /// A direct look from this node at the leader's database, taken only
    /// when everything else says stuck (`needs_leader_probe`).
    pub leader_db: Option<PeerDb>,
}

/// A replica pointed at a live, healthy leader that has not streamed for a
/// whole `ttl` has most likely diverged in a way the position check could
/// not see: rewind it. The leader counts as live only while its member
/// record keeps changing (within three loops): rewinding against a dead
/// host fails and leaves the replica stopped.
///
/// The leader's database must also answer this node as a primary: a
/// replica cut off from it (a partition between the two, etcd reachable)
/// cannot be rewound from it, and stopping it for a rewind that fails only
/// takes it down and piles up rejoin backoff, so it did not stream again
/// for a minute after the partition healed (the 15-minute simulation run,
/// seed 7110587: in synchronous mode the set could not shrink meanwhile).
pub fn stuck_replica(p: &Policy, s: &StuckInputs) -> bool {
    needs_leader_probe(p, s) && s.leader_db == Some(PeerDb::Writable)
}

/// Everything but the look at the leader's database says stuck: take it.
pub fn needs_leader_probe(p: &Policy, s: &StuckInputs) -> bool {
    let leader_live = s.leader_refreshed_ago.is_some_and(|a| a <= p.loop_wait * 3);
    !s.streaming && s.pointed_at_leader && leader_live && s.not_streaming_for.is_some_and(|d| d > p.ttl)
}

/// How long to wait before the next rejoin after `failed` failed ones in a
/// row: nothing before the first retry, then doubling from 2 s up to 5
/// minutes, so that a rejoin that cannot work (the leader unreachable, a
/// disk full) does not copy the database again and again.
pub fn rejoin_backoff(failed: u32) -> Duration {
    match failed {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 1).min(9)).min(Duration::from_secs(300)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy { ttl: Duration::from_secs(3), loop_wait: Duration::from_millis(500), ..super::super::tests::policy() }
    }

    fn stuck() -> StuckInputs {
        StuckInputs {
            streaming: false,
            pointed_at_leader: true,
            leader_refreshed_ago: Some(Duration::from_millis(400)),
            not_streaming_for: Some(Duration::from_secs(4)),
            leader_db: Some(PeerDb::Writable),
        }
    }

    #[test]
    fn a_replica_not_streaming_from_a_live_leader_for_ttl_is_rewound() {
        assert!(stuck_replica(&policy(), &stuck()));
    }

    /// Defect 1(b) of the trust issue: a dead primary's last record said
    /// "running", and both replicas were rewound against the dead host.
    #[test]
    fn a_leader_whose_record_stopped_changing_is_not_rewound_against() {
        let s = StuckInputs { leader_refreshed_ago: Some(Duration::from_secs(2)), ..stuck() };
        assert!(!stuck_replica(&policy(), &s));
        let s = StuckInputs { leader_refreshed_ago: None, ..stuck() };
        assert!(!stuck_replica(&policy(), &s));
    }

    /// Seed 7110587: a replica that cannot reach the leader's database is
    /// not stopped for a rewind that cannot work.
    #[test]
    fn a_replica_that_cannot_reach_the_leaders_database_is_not_rewound() {
        for (db, rewound) in [
            (Some(PeerDb::Writable), true),
            (Some(PeerDb::Unreachable), false),
            (Some(PeerDb::Silent), false),
            (Some(PeerDb::ReadOnly), false),
            (None, false),
        ] {
            let s = StuckInputs { leader_db: db, ..stuck() };
            assert!(needs_leader_probe(&policy(), &s));
            assert_eq!(stuck_replica(&policy(), &s), rewound, "{db:?}");
        }
    }

    #[test]
    fn streaming_or_not_pointed_or_not_yet_ttl_is_not_stuck() {
        assert!(!stuck_replica(&policy(), &StuckInputs { streaming: true, ..stuck() }));
        assert!(!stuck_replica(&policy(), &StuckInputs { pointed_at_leader: false, ..stuck() }));
        assert!(!stuck_replica(&policy(), &StuckInputs { not_streaming_for: Some(Duration::from_secs(2)), ..stuck() }));
    }

    #[test]
    fn rejoin_retries_back_off_and_are_bounded() {
        let waits: Vec<u64> = (0..12).map(|n| rejoin_backoff(n).as_secs()).collect();
        assert_eq!(waits, vec![0, 0, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
    }
}
