//! Synchronous mode, on the leader: which replicas the synchronous set
//! names next.
//!
//! Every commit the primary acknowledged was flushed (PostgreSQL) or
//! received (MariaDB semi-sync) by at least one member of the set, so the
//! freshest member of the set has them all. The set therefore grows at once
//! (a new member is named before the database counts its acknowledgements)
//! and shrinks only when that can lose nothing:
//!
//! - a departed member (no member key) whose server is still connected to
//!   the primary may still acknowledge: it stays;
//! - once it is disconnected it can acknowledge nothing more, so everything
//!   it could have acknowledged is at or below the primary's position at the
//!   moment the leader first saw it disconnected (its **mark**). It is
//!   dropped as soon as another member of the set is connected with a
//!   position at or past that mark.
//!
//! The mark is measured from the event it is about (the disconnect), not
//! from "now": comparing with the primary's *current* position never holds
//! under continuous writes, because the other member's position is always a
//! moment old (found by `tests/semisync.rs`, kept as a table test below).
//!
//! A member named while it lacks some of what the primary has (every
//! member of a new leader's first set: commits acknowledged under the old
//! leader may be on the new leader alone) is **joining**: the set records
//! the primary's position when it was named, and until the member has
//! flushed that much it may not take over (`core::synchronous_refusal`).
//! Its first acknowledgement of a new commit implies it has it all (WAL is
//! linear), and the next step records it as a full member. (Without this a
//! new leader whose promotion hung named a replica 13 commits behind it,
//! and that replica took over when the leader was lost: the 30-minute
//! simulation run, seed 7084923.)

use crate::position::{Lsn, Position};
use std::collections::{BTreeMap, BTreeSet};

/// What the leader knows this iteration.
#[derive(Debug, Clone, Default)]
pub struct SyncSetInputs {
    /// The set this leader recorded in the `sync` key (empty if none yet).
    pub current: BTreeSet<String>,
    /// The members that should be in it: every other member with priority > 0.
    pub desired: BTreeSet<String>,
    /// Replicas whose server is connected to the primary now, with the
    /// position each has flushed (PostgreSQL) or received (MariaDB).
    pub connected: BTreeMap<String, Lsn>,
    /// The primary's own position now (just before a promotion: the
    /// position it is promoted at).
    pub primary_position: Option<Position>,
    /// Departed, disconnected members with their mark, from the last step.
    pub marks: BTreeMap<String, Lsn>,
    /// Joining members and the position each must reach, as recorded.
    pub joining: BTreeMap<String, Position>,
}

/// The set to record next, and the marks to remember until the next step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncSetStep {
    pub next: BTreeSet<String>,
    pub marks: BTreeMap<String, Lsn>,
    /// Members still joining, to record with the set.
    pub joining: BTreeMap<String, Position>,
    /// Members dropped in this step (for the log).
    pub dropped: Vec<String>,
}

/// One step of synchronous-set maintenance. Pure.
pub fn next_sync_set(i: &SyncSetInputs) -> SyncSetStep {
    let mut next: BTreeSet<String> = i.current.union(&i.desired).cloned().collect();
    let mut marks = BTreeMap::new();
    let mut dropped = vec![];
    for gone in i.current.difference(&i.desired) {
        if i.connected.contains_key(gone) {
            // Its server may still acknowledge commits: it stays, and its
            // mark starts again when it disconnects.
            continue;
        }
        let Some(mark) = i.marks.get(gone).copied().or(i.primary_position.map(|p| p.lsn)) else { continue };
        let covered = i.current.iter().chain(&i.desired).filter(|m| *m != gone).any(|m| i.connected.get(m).is_some_and(|p| *p >= mark));
        if covered {
            next.remove(gone);
            dropped.push(gone.clone());
        } else {
            marks.insert(gone.clone(), mark);
        }
    }
    // Joining: a new member, unless it has flushed all the primary has;
    // a joining one until it has flushed its mark.
    let has = |m: &String, at: Option<Position>| at.is_some_and(|at| i.connected.get(m).is_some_and(|l| *l >= at.lsn));
    let mut joining = BTreeMap::new();
    for m in &next {
        let mark = match i.joining.get(m) {
            Some(mark) => Some(*mark),
            None if !i.current.contains(m) => i.primary_position,
            None => None,
        };
        if let Some(mark) = mark.filter(|mark| !has(m, Some(*mark))) {
            joining.insert(m.clone(), mark);
        }
    }
    SyncSetStep { next, marks, joining, dropped }
}

/// How the leader moves from the recorded set to the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recording {
    /// The set to write into the `sync` key.
    pub record: BTreeSet<String>,
    /// The standbys the database may count until that write is confirmed.
    pub meanwhile: BTreeSet<String>,
}

/// The order of one change of the synchronous set. A write to etcd that
/// times out may still be applied later (after a stalled disk recovers),
/// so until a write is confirmed the key may come to hold any set written
/// since the last confirmed one (`unconfirmed`), and a failover may read
/// any of them. Every acknowledgement the database gives meanwhile must be
/// safe under each: it must come from a member of every non-empty one (an
/// empty set means only the leader may take over). So the database stops
/// counting a dropped member *before* the key names the smaller set, and
/// counts a new one only *after* the key names it; a set that would share
/// no member with the recorded one grows first and shrinks in a later
/// step. (A leader's write dropping a frozen replica timed out under a
/// stalled etcd disk and was applied after the stall; the replica had
/// resumed and acknowledged 323 commits the set then in the key lacked,
/// and a member of that set took over without them: the 30-minute
/// simulation run, seed 9023982.)
///
/// Should the possible sets share no member at all (writes failing for
/// several steps in a row), no set of standbys is safe under all of them;
/// the database then counts the newest one rather than none (an empty
/// `synchronous_standby_names` would acknowledge with no replica at all).
pub fn plan_recording(recorded: &BTreeSet<String>, unconfirmed: &[BTreeSet<String>], next: &BTreeSet<String>) -> Recording {
    let possible: Vec<&BTreeSet<String>> = std::iter::once(recorded).chain(unconfirmed).filter(|s| !s.is_empty()).collect();
    let mut record = next.clone();
    if !record.is_empty() {
        for set in &possible {
            if record.is_disjoint(set) {
                record.extend(set.iter().cloned());
            }
        }
    }
    let mut meanwhile: Option<BTreeSet<String>> = None;
    for set in possible.iter().copied().chain(std::iter::once(&record)).filter(|s| !s.is_empty()) {
        meanwhile = Some(match meanwhile {
            None => set.clone(),
            Some(m) => m.intersection(set).cloned().collect(),
        });
    }
    let meanwhile = match meanwhile {
        Some(m) if m.is_empty() => {
            possible.iter().copied().chain(std::iter::once(&record)).rfind(|s| !s.is_empty()).cloned().unwrap_or_default()
        }
        m => m.unwrap_or_default(),
    };
    Recording { meanwhile, record }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each row: recorded, next; what is written and what the database
    /// counts while it is.
    #[test]
    fn the_database_counts_only_members_both_sets_agree_on_while_the_key_changes() {
        let rows: [[&[&str]; 4]; 7] = [
            // Unchanged.
            [&["pg2", "pg3"], &["pg2", "pg3"], &["pg2", "pg3"], &["pg2", "pg3"]],
            // A member joins: counted only once the key names it.
            [&["pg2"], &["pg2", "pg3"], &["pg2", "pg3"], &["pg2"]],
            // A member is dropped: no longer counted before the key drops it.
            [&["pg2", "pg3"], &["pg3"], &["pg3"], &["pg3"]],
            // One joins and one leaves.
            [&["pg2", "pg3"], &["pg3", "pg4"], &["pg3", "pg4"], &["pg3"]],
            // Nothing in common: grow first.
            [&["pg2"], &["pg3"], &["pg2", "pg3"], &["pg2"]],
            // From no set (a new leader): any acknowledgement is safe
            // under an empty set, and the new one counts at once.
            [&[], &["pg2", "pg3"], &["pg2", "pg3"], &["pg2", "pg3"]],
            // To an empty set (the leader acknowledges alone): the old
            // set is counted until the key says so.
            [&["pg2"], &[], &[], &["pg2"]],
        ];
        for [recorded, next, record, meanwhile] in rows {
            let plan = plan_recording(&set(recorded), &[], &set(next));
            assert_eq!(plan, Recording { record: set(record), meanwhile: set(meanwhile) }, "{recorded:?} -> {next:?}");
        }
    }

    /// A write that timed out may still be applied: until one is
    /// confirmed, the database counts only members every possible set
    /// names (seed 9023982: the write dropping pg2 timed out, the next
    /// loop read the old set back and counted pg2 again).
    #[test]
    fn a_write_that_timed_out_still_limits_what_the_database_counts() {
        let plan = plan_recording(&set(&["pg1", "pg2"]), &[set(&["pg1"])], &set(&["pg1", "pg2"]));
        assert_eq!(plan, Recording { record: set(&["pg1", "pg2"]), meanwhile: set(&["pg1"]) });
        let plan = plan_recording(&set(&["pg1", "pg2"]), &[set(&[])], &set(&["pg1", "pg2"]));
        assert_eq!(plan.meanwhile, set(&["pg1", "pg2"]), "an empty set constrains nothing");
        // The next set would share nothing with a possible one: it grows
        // to include it, so that one member is safe under all.
        let plan = plan_recording(&set(&["pg1", "pg2"]), &[set(&["pg1"])], &set(&["pg2"]));
        assert_eq!(plan, Recording { record: set(&["pg1", "pg2"]), meanwhile: set(&["pg1"]) });
        // Pairwise overlapping, nothing common to all: the newest is counted, never none.
        let plan = plan_recording(&set(&["pg1", "pg2"]), &[set(&["pg2", "pg3"])], &set(&["pg1", "pg3"]));
        assert_eq!(plan.meanwhile, set(&["pg1", "pg3"]));
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn at(pairs: &[(&str, u64)]) -> BTreeMap<String, Lsn> {
        pairs.iter().map(|(n, l)| (n.to_string(), Lsn(*l))).collect()
    }

    #[test]
    fn a_new_member_is_named_at_once() {
        let s = next_sync_set(&SyncSetInputs { current: set(&["b"]), desired: set(&["b", "c"]), ..Default::default() });
        assert_eq!(s.next, set(&["b", "c"]));
    }

    /// A new leader's first set (nothing recorded by it yet): every member
    /// joins at the position it is promoted at, unless it has that much;
    /// a joining member becomes a full one once it has flushed its mark
    /// (on the new timeline its LSN goes on from the switch).
    #[test]
    fn members_join_at_the_leaders_position_until_they_have_it() {
        type Row<'a> = (&'a [&'a str], &'a [(&'a str, u64)], &'a [(&'a str, u64)], &'a [(&'a str, u64)]);
        let table: &[Row] = &[
            // (current, joining recorded, connected) -> joining next
            (&[], &[], &[], &[("b", 363), ("c", 363)]),
            (&[], &[], &[("b", 363), ("c", 350)], &[("c", 363)]),
            (&["b", "c"], &[("c", 363)], &[("b", 400), ("c", 362)], &[("c", 363)]),
            (&["b", "c"], &[("c", 363)], &[("b", 400), ("c", 364)], &[]),
            // A full member stays one, however far behind.
            (&["b", "c"], &[], &[("b", 10)], &[]),
        ];
        for (current, joining, connected, want) in table {
            let s = next_sync_set(&SyncSetInputs {
                current: set(current),
                desired: set(&["b", "c"]),
                connected: at(connected),
                primary_position: Some(Position::new(2, 363)),
                joining: joining.iter().map(|(n, l)| (n.to_string(), Position::new(2, *l))).collect(),
                ..Default::default()
            });
            let want: BTreeMap<String, Position> = want.iter().map(|(n, l)| (n.to_string(), Position::new(2, *l))).collect();
            assert_eq!(s.joining, want, "current {current:?}, joining {joining:?}, connected {connected:?}");
        }
    }

    #[test]
    fn a_departed_member_still_connected_stays() {
        let s = next_sync_set(&SyncSetInputs {
            current: set(&["b", "c"]),
            desired: set(&["b"]),
            connected: at(&[("b", 500), ("c", 500)]),
            primary_position: Some(Position::new(1, 500)),
            ..Default::default()
        });
        assert_eq!(s.next, set(&["b", "c"]));
        assert!(s.marks.is_empty());
    }

    #[test]
    fn a_disconnected_member_is_marked_at_the_primary_position_when_first_seen_gone() {
        // b's position is a moment old (400 < 500): c cannot be dropped yet.
        let s = next_sync_set(&SyncSetInputs {
            current: set(&["b", "c"]),
            desired: set(&["b"]),
            connected: at(&[("b", 400)]),
            primary_position: Some(Position::new(1, 500)),
            ..Default::default()
        });
        assert_eq!(s.next, set(&["b", "c"]));
        assert_eq!(s.marks, at(&[("c", 500)]));
    }

    /// The defect: under continuous writes the primary is always ahead of
    /// what b reported a moment ago. Measured against the mark (the
    /// primary's position when c was first seen disconnected), c is
    /// dropped as soon as b has that much.
    #[test]
    fn under_continuous_writes_the_departed_member_is_dropped_once_another_passes_its_mark() {
        let s = next_sync_set(&SyncSetInputs {
            current: set(&["b", "c"]),
            desired: set(&["b"]),
            connected: at(&[("b", 600)]),
            primary_position: Some(Position::new(1, 700)),
            marks: at(&[("c", 500)]),
            ..Default::default()
        });
        assert_eq!(s.next, set(&["b"]));
        assert_eq!(s.dropped, vec!["c".to_string()]);
        assert!(s.marks.is_empty());
    }

    #[test]
    fn a_departed_member_is_never_covered_by_another_departed_one() {
        let s = next_sync_set(&SyncSetInputs {
            current: set(&["b", "c"]),
            desired: set(&[]),
            connected: at(&[]),
            primary_position: Some(Position::new(1, 700)),
            marks: at(&[("b", 500), ("c", 500)]),
            ..Default::default()
        });
        assert_eq!(s.next, set(&["b", "c"]));
    }

    #[test]
    fn a_member_that_reconnects_loses_its_mark() {
        let s = next_sync_set(&SyncSetInputs {
            current: set(&["b", "c"]),
            desired: set(&["b"]),
            connected: at(&[("b", 100), ("c", 100)]),
            primary_position: Some(Position::new(1, 700)),
            marks: at(&[("c", 500)]),
            ..Default::default()
        });
        assert_eq!(s.next, set(&["b", "c"]));
        assert!(s.marks.is_empty());
    }

    #[test]
    fn without_a_known_position_nothing_is_dropped() {
        let s = next_sync_set(&SyncSetInputs {
            current: set(&["b", "c"]),
            desired: set(&["b"]),
            connected: at(&[("b", 100)]),
            primary_position: None,
            ..Default::default()
        });
        assert_eq!(s.next, set(&["b", "c"]));
    }
}
