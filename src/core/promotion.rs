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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Request, RequestKind};
    use std::time::Duration;

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
