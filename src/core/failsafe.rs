//! The etcd failsafe and "can I reach etcd, so am I a candidate": the
//! rules a sidecar applies when etcd may be out of its reach.
//!
//! While etcd is unreachable the leader cannot renew its lease. It keeps
//! serving only if every other member it knows answers, just now, that it
//! cannot reach etcd either: then nobody can be elected behind its back.
//! A member that reaches etcd refuses (the leader key there decides), and
//! a member that cannot reach etcd is no candidate for its peers' races:
//! it could never take the key.

use std::time::Duration;

/// A sidecar reaches etcd if its last read succeeded and is younger than
/// `2 * loop + retry` (one missed loop and a retry are not an outage).
pub fn reaches_etcd(last_read_ok: bool, last_ok_age: Duration, loop_wait: Duration, retry: Duration) -> bool {
    last_read_ok && last_ok_age < loop_wait * 2 + retry
}

/// What a member tells a racing peer about its own candidacy when it
/// cannot reach etcd: Some(reason) turns an eligible member ineligible.
pub fn candidacy_without_etcd(reaches_etcd: bool, eligible: bool) -> Option<String> {
    (!reaches_etcd && eligible).then(|| "cannot reach etcd, so it cannot take the leader key".to_string())
}

/// The leader key as a member last read it: its node (None: vacant) and term.
pub type KnownLeader<'a> = (Option<&'a str>, Option<i64>);

/// A member's answer to a leader that asks it to vouch (failsafe). It
/// vouches only when it cannot reach etcd either, and only for the leader
/// its own last read of etcd named (`known`: that leader's node and term,
/// None when it never read etcd), or for a term newer than that read. A
/// member that had read a newer leader (itself, or another node) refuses:
/// an old primary frozen across a failover resumed while etcd was down,
/// asked for the failsafe, and the new leader vouched for it, so both
/// acknowledged writes (the 30-minute simulation run, seed 9139268).
pub fn vouch(
    reaches_etcd: bool,
    known: Option<(Option<&str>, Option<i64>)>,
    ask_leader: &str,
    ask_term: Option<i64>,
) -> Result<(), String> {
    if reaches_etcd {
        return Err("reaches etcd: the leader key there decides".into());
    }
    let Some((node, term)) = known else { return Ok(()) };
    let newer = matches!((ask_term, term), (Some(a), Some(k)) if a > k);
    let same = node == Some(ask_leader) && (ask_term == term || ask_term.is_none() || term.is_none());
    if same || newer {
        return Ok(());
    }
    Err(match (node, term) {
        (Some(n), Some(t)) => format!("the leader key this member last read names {n} (term {t}), not {ask_leader}"),
        (Some(n), None) => format!("the leader key this member last read names {n}, not {ask_leader}"),
        (None, _) => format!("the leader key was vacant when this member last read it; {ask_leader} asks for an older term"),
    })
}

/// The verdict of one failsafe round on the leader: may it count the round
/// as a lease renewal? `answers` holds each known member's answer (Err:
/// refused or silent, with why). A round with nobody to ask is not a yes.
pub fn failsafe_verdict(answers: &[(String, Result<(), String>)]) -> Result<(), Vec<String>> {
    if answers.is_empty() {
        return Err(vec!["no other member known to vouch for this primary".into()]);
    }
    let refusals: Vec<String> = answers.iter().filter_map(|(node, a)| a.as_ref().err().map(|why| format!("{node}: {why}"))).collect();
    if refusals.is_empty() {
        Ok(())
    } else {
        Err(refusals)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn a_sidecar_reaches_etcd_while_its_last_read_is_younger_than_two_loops_and_a_retry() {
        assert!(reaches_etcd(true, S(3_900), S(1_000), S(2_000)));
        assert!(!reaches_etcd(true, S(4_000), S(1_000), S(2_000)));
        assert!(!reaches_etcd(false, S(0), S(1_000), S(2_000)));
    }

    #[test]
    fn a_member_that_cannot_reach_etcd_is_no_candidate() {
        assert!(candidacy_without_etcd(false, true).is_some());
        assert!(candidacy_without_etcd(true, true).is_none());
        assert!(candidacy_without_etcd(false, false).is_none(), "keeps its own reason");
    }

    #[test]
    fn the_failsafe_holds_only_when_every_known_member_vouches() {
        let yes = |n: &str| (n.to_string(), Ok(()));
        let no = |n: &str| (n.to_string(), Err("reaches etcd".to_string()));
        assert!(failsafe_verdict(&[yes("pg2"), yes("pg3")]).is_ok());
        assert_eq!(failsafe_verdict(&[yes("pg2"), no("pg3")]).unwrap_err(), vec!["pg3: reaches etcd".to_string()]);
    }

    /// Each row: reaches etcd, what the member last read (node, term),
    /// who asks with which term, and whether it vouches.
    #[test]
    #[allow(clippy::type_complexity)] // a table: one tuple per row
    fn a_member_vouches_only_for_the_leader_it_last_read_or_a_newer_one() {
        let rows: [(bool, Option<KnownLeader>, &str, Option<i64>, bool); 8] = [
            (true, Some((Some("pg1"), Some(5))), "pg1", Some(5), false),
            (false, Some((Some("pg1"), Some(5))), "pg1", Some(5), true),
            // Never read etcd: nothing says otherwise.
            (false, None, "pg1", Some(5), true),
            // A newer leader this member read: the asker was deposed (seed 9139268).
            (false, Some((Some("pg3"), Some(9))), "pg1", Some(5), false),
            (false, Some((Some("pg1"), Some(9))), "pg1", Some(5), false),
            // A term newer than this member's read: elected since.
            (false, Some((Some("pg3"), Some(9))), "pg1", Some(12), true),
            (false, Some((None, Some(9))), "pg1", Some(12), true),
            (false, Some((None, Some(9))), "pg1", Some(5), false),
        ];
        for (reaches, known, asker, term, vouches) in rows {
            assert_eq!(vouch(reaches, known, asker, term).is_ok(), vouches, "{reaches} {known:?} {asker} {term:?}");
        }
    }

    #[test]
    fn an_empty_failsafe_round_is_not_a_yes() {
        assert!(failsafe_verdict(&[]).is_err());
    }
}
