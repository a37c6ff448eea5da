//! The last check before the database is asked to promote: the view the
//! promotion was decided on against one read after the leader key was won.
//!
//! A decision rests on a view read at the start of the loop. Between that
//! read and the acquire (peer probes can take a second when a peer does
//! not answer) another node can win the key, promote, take acknowledged
//! writes and hand over; the acquire, a create-if-absent, then succeeds on
//! a decision about a cluster that no longer exists. Once this node holds
//! the key nobody else can change who the last primary was, so one more
//! read then settles it (the 30-minute simulation run, seed 7877991: a
//! node that saw no newer primary and no pending switchover promoted
//! without three writes the node between had acknowledged in synchronous
//! mode).

use super::View;

/// Why the promotion decided on `decided` must not go on, given `held`,
/// the view read after this node won the key; `None` when nothing the
/// decision rested on has changed.
pub fn promotion_basis_changed(decided: &View, held: &View) -> Option<String> {
    if held.last_primary != decided.last_primary {
        return Some(format!(
            "another primary was recorded while the key was being taken ({} instead of {})",
            held.last_primary.as_deref().unwrap_or("none"),
            decided.last_primary.as_deref().unwrap_or("none")
        ));
    }
    if held.sync_leader != decided.sync_leader || held.sync_standbys != decided.sync_standbys {
        return Some("the synchronous set changed while the key was being taken".into());
    }
    let request = |v: &View| v.request.as_ref().map(|r| (r.kind, r.from.clone(), r.to.clone(), r.allow_data_loss));
    if request(held) != request(decided) {
        return Some("an operator's request changed while the key was being taken".into());
    }
    if held.paused && !decided.paused {
        return Some("the cluster was paused while the key was being taken".into());
    }
    None
}

/// Whether the looks at the peers a promotion was decided on are too old
/// to promote on: taken more than one loop before the database would be
/// asked. Decision, acquire and promotion normally follow within
/// milliseconds; under a slow etcd they took 4.6 s, in which a partition
/// between the deciding node and a primary whose sidecar had died healed,
/// and the node promoted beside that writable primary (the 30-minute
/// simulation run, seed 9264348). Fresh looks then cost one more probe
/// round only on that slow path.
pub fn peer_looks_too_old(age: std::time::Duration, loop_wait: std::time::Duration) -> bool {
    age > loop_wait
}

/// Why fresh looks at the peers, taken just before promoting, forbid it:
/// the rule of any promotion (`decide`), none beside a writer.
pub fn writer_beside(peers: &[super::PeerObs]) -> Option<String> {
    super::peer_writer_refusal(peers).map(|(_, why)| why)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Request, RequestKind};
    use std::time::Duration;

    #[test]
    fn looks_older_than_a_loop_are_taken_again_before_promoting() {
        let s = Duration::from_millis;
        for (age, again) in [(s(0), false), (s(900), false), (s(1_000), false), (s(1_001), true), (s(4_600), true)] {
            assert_eq!(peer_looks_too_old(age, s(1_000)), again, "{age:?}");
        }
    }

    #[test]
    fn a_peer_found_writable_by_the_fresh_looks_forbids_the_promotion() {
        use crate::core::{PeerDb, PeerObs, PeerSidecar};
        let peer = |db| PeerObs { node: "pg3".into(), db, candidate: None, sidecar: PeerSidecar::NotRunning };
        assert!(writer_beside(&[peer(PeerDb::Writable)]).is_some());
        assert!(writer_beside(&[peer(PeerDb::Silent)]).is_some(), "silent, with no sidecar");
        assert!(writer_beside(&[peer(PeerDb::ReadOnly)]).is_none());
        assert!(writer_beside(&[peer(PeerDb::Unreachable)]).is_none());
    }

    fn view(last: Option<&str>) -> View {
        View { last_primary: last.map(String::from), ..View::default() }
    }

    fn switchover(to: &str) -> Option<Request> {
        Some(Request {
            kind: RequestKind::Switchover,
            from: Some("pg2".into()),
            to: to.into(),
            allow_data_loss: false,
            age: Duration::ZERO,
        })
    }

    #[test]
    fn a_promotion_goes_on_only_while_its_basis_holds() {
        let base = view(Some("pg1"));
        // (what changed, view read after the key was won, promotion goes on)
        let table: Vec<(&str, View, bool)> = vec![
            ("nothing", base.clone(), true),
            ("another primary recorded", view(Some("pg2")), false),
            ("first primary recorded", view(None), false),
            ("sync set moved", View { sync_leader: Some("pg2".into()), sync_standbys: Some(vec!["pg3".into()]), ..base.clone() }, false),
            ("switchover appeared", View { request: switchover("pg3"), ..base.clone() }, false),
            ("paused", View { paused: true, ..base.clone() }, false),
            // Ages move on between two reads; they are no part of the basis.
            ("only ages", View { leader_lost_ago: Some(Duration::from_secs(3)), ..base.clone() }, true),
        ];
        for (what, held, goes_on) in table {
            assert_eq!(promotion_basis_changed(&base, &held).is_none(), goes_on, "{what}");
        }
        // A request that was there when deciding and is still there is no change.
        let with = View { request: switchover("pg1"), ..base.clone() };
        let mut older = with.clone();
        older.request.as_mut().unwrap().age = Duration::from_secs(9);
        assert!(promotion_basis_changed(&older, &with).is_none());
    }
}
