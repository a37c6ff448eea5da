//! GTID positions of MySQL and MariaDB as plain values.
//!
//! The two servers name transactions differently and the two are not
//! compatible:
//!
//! * MySQL: a **set** of `source_uuid:interval` entries, e.g.
//!   `3e11fa47-71ca-11e1-9e33-c80aa9429562:1-5:7-9,…`. Since 8.3 an entry can
//!   carry tags (`uuid:1-5:tag_a:1-3`). Two servers' sets are only partially
//!   ordered: A is at least as fresh as B when B ⊆ A.
//! * MariaDB: one GTID `domain-server_id-seq_no` **per replication domain**
//!   (a "GTID list"), e.g. `0-1-2042,1-3-17`. With `gtid_strict_mode` the
//!   sequence number only grows within a domain, so A is at least as fresh
//!   as B when A's seq_no is ≥ B's in every domain B has. The binlog *state*
//!   (`gtid_binlog_state`) keeps one GTID per (domain, server_id) and tells
//!   whose transactions a server has written.
//!
//! Everything here is pure so that the algebra has property tests.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

// ---------------------------------------------------------------- MySQL

/// A MySQL GTID set: for each (source uuid, tag) the transaction numbers,
/// as sorted, disjoint, non-adjacent closed intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GtidSet {
    /// Key: (lower-case uuid, tag or ""). Value: intervals `[start, end]`.
    sets: BTreeMap<(String, String), Vec<(u64, u64)>>,
}

fn valid_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5 && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| g.len() == n && g.chars().all(|c| c.is_ascii_hexdigit()))
}

fn valid_tag(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && s.len() <= 32
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Sorts and merges intervals so that equal sets have equal forms.
fn normalize(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if a <= last.1.saturating_add(1) => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

impl GtidSet {
    /// Parses MySQL's text form (`@@gtid_executed`, `Retrieved_Gtid_Set`).
    /// Whitespace and newlines (MySQL wraps long sets) are ignored; an
    /// empty string is the empty set.
    pub fn parse(text: &str) -> Result<GtidSet, String> {
        let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        let mut set = GtidSet::default();
        if compact.is_empty() {
            return Ok(set);
        }
        for entry in compact.split(',') {
            let mut parts = entry.split(':');
            let uuid = parts.next().unwrap_or_default().to_ascii_lowercase();
            if !valid_uuid(&uuid) {
                return Err(format!("invalid GTID set {text:?}: {uuid:?} is not a server uuid"));
            }
            let mut tag = String::new();
            let mut any = false;
            for part in parts {
                if part.starts_with(|c: char| c.is_ascii_digit()) {
                    let (a, b) = match part.split_once('-') {
                        Some((a, b)) => (a, b),
                        None => (part, part),
                    };
                    let a: u64 = a.parse().map_err(|_| format!("invalid GTID set {text:?}: bad interval {part:?}"))?;
                    let b: u64 = b.parse().map_err(|_| format!("invalid GTID set {text:?}: bad interval {part:?}"))?;
                    if a == 0 || b < a {
                        return Err(format!("invalid GTID set {text:?}: interval {part:?} must be 1 ≤ start ≤ end"));
                    }
                    set.sets.entry((uuid.clone(), tag.clone())).or_default().push((a, b));
                    any = true;
                } else if valid_tag(part) {
                    tag = part.to_ascii_lowercase();
                } else {
                    return Err(format!("invalid GTID set {text:?}: {part:?} is neither an interval nor a tag"));
                }
            }
            if !any {
                return Err(format!("invalid GTID set {text:?}: {entry:?} has no transaction interval"));
            }
        }
        for v in set.sets.values_mut() {
            *v = normalize(std::mem::take(v));
        }
        Ok(set)
    }

    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }

    /// Number of transactions in the set.
    pub fn count(&self) -> u64 {
        self.sets.values().flatten().map(|(a, b)| b - a + 1).sum()
    }

    /// Source uuids named in the set.
    pub fn uuids(&self) -> impl Iterator<Item = &str> {
        let mut v: Vec<&str> = self.sets.keys().map(|(u, _)| u.as_str()).collect();
        v.dedup();
        v.into_iter()
    }

    pub fn union(&self, other: &GtidSet) -> GtidSet {
        let mut out = self.clone();
        for (k, v) in &other.sets {
            let e = out.sets.entry(k.clone()).or_default();
            e.extend(v.iter().copied());
            *e = normalize(std::mem::take(e));
        }
        out
    }

    /// Transactions of `self` that `other` lacks.
    pub fn subtract(&self, other: &GtidSet) -> GtidSet {
        let mut out = GtidSet::default();
        for (k, mine) in &self.sets {
            let theirs = other.sets.get(k).map(Vec::as_slice).unwrap_or(&[]);
            let mut rest = Vec::new();
            for &(a, b) in mine {
                let mut start = a;
                for &(c, d) in theirs {
                    if d < start || c > b {
                        continue;
                    }
                    if c > start {
                        rest.push((start, c - 1));
                    }
                    start = d.saturating_add(1);
                    if start > b {
                        break;
                    }
                }
                if start <= b && start >= a {
                    rest.push((start, b));
                }
            }
            if !rest.is_empty() {
                out.sets.insert(k.clone(), normalize(rest));
            }
        }
        out
    }

    pub fn intersect(&self, other: &GtidSet) -> GtidSet {
        self.subtract(&self.subtract(other))
    }

    /// Is every transaction of `self` in `other`?
    pub fn is_subset(&self, other: &GtidSet) -> bool {
        self.subtract(other).is_empty()
    }

    /// Has `self` every transaction of `other` and at least one more?
    pub fn is_fresher_than(&self, other: &GtidSet) -> bool {
        other.is_subset(self) && self != other
    }

    /// The set without the transactions of the given source uuids.
    pub fn without_uuids(&self, uuids: &[&str]) -> GtidSet {
        let drop: Vec<String> = uuids.iter().map(|u| u.to_ascii_lowercase()).collect();
        GtidSet { sets: self.sets.iter().filter(|((u, _), _)| !drop.contains(u)).map(|(k, v)| (k.clone(), v.clone())).collect() }
    }
}

impl fmt::Display for GtidSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first_entry = true;
        let mut current: Option<&str> = None;
        for ((uuid, tag), ivs) in &self.sets {
            if current != Some(uuid.as_str()) {
                if !first_entry {
                    f.write_str(",")?;
                }
                first_entry = false;
                f.write_str(uuid)?;
                current = Some(uuid);
            }
            if !tag.is_empty() {
                write!(f, ":{tag}")?;
            }
            for (a, b) in ivs {
                if a == b {
                    write!(f, ":{a}")?;
                } else {
                    write!(f, ":{a}-{b}")?;
                }
            }
        }
        Ok(())
    }
}

/// MySQL errant transactions: what the replica executed that the primary
/// never had, ignoring the sources in `ignore` (the replica's own ancestry
/// that the primary may have purged, and the primary's own uuid, whose
/// newest transactions a replica can see before the primary's set was
/// read).
pub fn mysql_errant(replica_executed: &GtidSet, primary_executed: &GtidSet, ignore: &[&str]) -> GtidSet {
    replica_executed.subtract(primary_executed).without_uuids(ignore)
}

// -------------------------------------------------------------- MariaDB

/// One MariaDB GTID: `domain-server_id-seq_no`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct MariaGtid {
    pub domain: u32,
    pub server: u32,
    pub seq: u64,
}

impl fmt::Display for MariaGtid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.domain, self.server, self.seq)
    }
}

fn parse_maria_gtids(text: &str, what: &str) -> Result<Vec<MariaGtid>, String> {
    let compact: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    if compact.is_empty() {
        return Ok(vec![]);
    }
    compact
        .split(',')
        .map(|g| {
            let parts: Vec<&str> = g.split('-').collect();
            let bad = || format!("invalid MariaDB {what} {text:?}: {g:?} is not domain-server_id-seq_no");
            if parts.len() != 3 {
                return Err(bad());
            }
            Ok(MariaGtid {
                domain: parts[0].parse().map_err(|_| bad())?,
                server: parts[1].parse().map_err(|_| bad())?,
                seq: parts[2].parse().map_err(|_| bad())?,
            })
        })
        .collect()
}

/// A MariaDB GTID position: one GTID per domain (`gtid_current_pos`,
/// `gtid_slave_pos`, `gtid_binlog_pos`, `Gtid_IO_Pos`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct GtidList {
    by_domain: BTreeMap<u32, MariaGtid>,
}

impl GtidList {
    pub fn parse(text: &str) -> Result<GtidList, String> {
        let mut by_domain = BTreeMap::new();
        for g in parse_maria_gtids(text, "GTID position")? {
            if by_domain.insert(g.domain, g).is_some() {
                return Err(format!("invalid MariaDB GTID position {text:?}: domain {} appears twice", g.domain));
            }
        }
        Ok(GtidList { by_domain })
    }

    pub fn is_empty(&self) -> bool {
        self.by_domain.is_empty()
    }

    pub fn get(&self, domain: u32) -> Option<MariaGtid> {
        self.by_domain.get(&domain).copied()
    }

    pub fn gtids(&self) -> impl Iterator<Item = MariaGtid> + '_ {
        self.by_domain.values().copied()
    }

    /// Sum of the sequence numbers: a single number that grows with every
    /// transaction, used as the position's scalar (freshness and lag in
    /// transactions).
    pub fn total(&self) -> u64 {
        self.by_domain.values().map(|g| g.seq).fold(0u64, u64::saturating_add)
    }

    /// Per domain, the GTID with the higher sequence number.
    pub fn union(&self, other: &GtidList) -> GtidList {
        let mut out = self.clone();
        for g in other.by_domain.values() {
            match out.by_domain.get(&g.domain) {
                Some(mine) if mine.seq >= g.seq => {}
                _ => {
                    out.by_domain.insert(g.domain, *g);
                }
            }
        }
        out
    }

    /// Has `self` got everything `other` has (every domain at least as far)?
    pub fn contains(&self, other: &GtidList) -> bool {
        other.by_domain.values().all(|g| self.by_domain.get(&g.domain).map_or(0, |m| m.seq) >= g.seq)
    }

    /// Has `self` everything of `other` and more?
    pub fn is_fresher_than(&self, other: &GtidList) -> bool {
        self.contains(other) && !other.contains(self)
    }

    /// How many transactions `self` lacks to reach `other`, summed over
    /// domains.
    pub fn behind(&self, other: &GtidList) -> u64 {
        other.by_domain.values().map(|g| g.seq.saturating_sub(self.by_domain.get(&g.domain).map_or(0, |m| m.seq))).sum()
    }
}

impl fmt::Display for GtidList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<String> = self.by_domain.values().map(|g| g.to_string()).collect();
        f.write_str(&v.join(","))
    }
}

/// A MariaDB binlog state (`gtid_binlog_state`): the last GTID written per
/// (domain, server_id).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BinlogState {
    last: BTreeMap<(u32, u32), u64>,
}

impl BinlogState {
    pub fn parse(text: &str) -> Result<BinlogState, String> {
        let mut last = BTreeMap::new();
        for g in parse_maria_gtids(text, "binlog state")? {
            let e = last.entry((g.domain, g.server)).or_insert(g.seq);
            *e = (*e).max(g.seq);
        }
        Ok(BinlogState { last })
    }

    pub fn seq(&self, domain: u32, server: u32) -> Option<u64> {
        self.last.get(&(domain, server)).copied()
    }

    pub fn gtids(&self) -> impl Iterator<Item = MariaGtid> + '_ {
        self.last.iter().map(|(&(domain, server), &seq)| MariaGtid { domain, server, seq })
    }
}

/// MariaDB errant transactions: transactions this server wrote itself
/// (its own `server_id`) that the primary's binlog never had. A former
/// primary's own writes are not errant once the new primary replicated them
/// (`log_slave_updates` keeps their server_id); writes a replica took
/// directly, and a crashed primary's writes that never left it, are.
pub fn mariadb_errant(replica: &BinlogState, replica_server_id: u32, primary: &BinlogState) -> Vec<MariaGtid> {
    replica
        .gtids()
        .filter(|g| g.server == replica_server_id)
        .filter(|g| primary.seq(g.domain, g.server).is_none_or(|p| p < g.seq))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const U1: &str = "3e11fa47-71ca-11e1-9e33-c80aa9429562";
    const U2: &str = "b9b4712a-df64-11e3-b391-60672090eb04";

    #[test]
    fn mysql_sets_parse_and_print() {
        let s = GtidSet::parse(&format!("{}:1-5:7-9,\n{U2}:1-3", U1.to_uppercase())).unwrap();
        assert_eq!(s.to_string(), format!("{U1}:1-5:7-9,{U2}:1-3"));
        assert_eq!(s.count(), 11);
        assert_eq!(GtidSet::parse(&format!("{U1}:1-3:4-6")).unwrap().to_string(), format!("{U1}:1-6"));
        assert_eq!(GtidSet::parse(&format!("{U1}:5")).unwrap().to_string(), format!("{U1}:5"));
        assert!(GtidSet::parse("").unwrap().is_empty());
        // MySQL 8.3+ tagged GTIDs.
        let t = GtidSet::parse(&format!("{U1}:1-5:blue:1-2")).unwrap();
        assert_eq!(t.count(), 7);
        assert_eq!(GtidSet::parse(&t.to_string()).unwrap(), t);
    }

    #[test]
    fn mysql_malformed_sets_say_what_is_wrong() {
        for (bad, says) in [
            ("not-a-uuid:1-5", "not a server uuid"),
            (&format!("{U1}:5-1"), "start ≤ end"),
            (&format!("{U1}:0"), "start ≤ end"),
            (&format!("{U1}:1-x"), "bad interval"),
            (U1, "no transaction interval"),
            (&format!("{U1}:1-2:bad-tag"), "neither an interval nor a tag"),
        ] {
            let e = GtidSet::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn mysql_errant_transactions() {
        let primary = GtidSet::parse(&format!("{U1}:1-100")).unwrap();
        let replica = GtidSet::parse(&format!("{U1}:1-90,{U2}:1-2")).unwrap();
        assert_eq!(mysql_errant(&replica, &primary, &[]).to_string(), format!("{U2}:1-2"));
        assert!(mysql_errant(&replica, &primary, &[U2]).is_empty());
        // A replica ahead of the primary's snapshot on the primary's own uuid is not errant.
        let ahead = GtidSet::parse(&format!("{U1}:1-101")).unwrap();
        assert!(mysql_errant(&ahead, &primary, &[U1]).is_empty());
    }

    #[test]
    fn mariadb_lists_parse_compare_and_count() {
        let a = GtidList::parse("0-1-100,1-2-5").unwrap();
        let b = GtidList::parse("0-3-90").unwrap();
        assert!(a.contains(&b) && a.is_fresher_than(&b) && !b.contains(&a));
        assert_eq!(b.behind(&a), 15);
        assert_eq!(a.total(), 105);
        assert_eq!(a.union(&b), a);
        assert_eq!(a.to_string(), "0-1-100,1-2-5");
        assert!(GtidList::parse("").unwrap().is_empty());
        assert!(GtidList::parse("0-1").unwrap_err().contains("domain-server_id-seq_no"));
        assert!(GtidList::parse("0-1-2,0-2-3").unwrap_err().contains("twice"));
        assert!(GtidList::parse("0-1-x").is_err());
    }

    #[test]
    fn mariadb_errant_is_own_writes_the_primary_never_had() {
        // pg3-like replica (server 3) wrote 0-3-51 locally; the primary is server 1.
        let primary = BinlogState::parse("0-1-60").unwrap();
        let replica = BinlogState::parse("0-1-50,0-3-51").unwrap();
        assert_eq!(mariadb_errant(&replica, 3, &primary), vec![MariaGtid { domain: 0, server: 3, seq: 51 }]);
        // A former primary (server 1) whose writes the new primary (2) replicated.
        let new_primary = BinlogState::parse("0-1-50,0-2-70").unwrap();
        let old = BinlogState::parse("0-1-50").unwrap();
        assert!(mariadb_errant(&old, 1, &new_primary).is_empty());
        // …and one whose last writes never left it.
        let old_lost = BinlogState::parse("0-1-52").unwrap();
        assert_eq!(mariadb_errant(&old_lost, 1, &new_primary).len(), 1);
    }

    fn uuid_strategy() -> impl Strategy<Value = String> {
        prop::sample::select(vec![U1.to_string(), U2.to_string(), "00000000-0000-0000-0000-000000000001".to_string()])
    }

    fn set_strategy() -> impl Strategy<Value = GtidSet> {
        prop::collection::vec((uuid_strategy(), prop::option::of(prop::sample::select(vec!["", "t1"])), 1u64..60, 0u64..8), 0..8).prop_map(
            |items| {
                let text: Vec<String> = items
                    .into_iter()
                    .map(|(u, tag, a, len)| match tag.filter(|t| !t.is_empty()) {
                        Some(t) => format!("{u}:{t}:{a}-{}", a + len),
                        None => format!("{u}:{a}-{}", a + len),
                    })
                    .collect();
                GtidSet::parse(&text.join(",")).expect("generated sets parse")
            },
        )
    }

    fn list_strategy() -> impl Strategy<Value = GtidList> {
        prop::collection::btree_map(0u32..4, (1u32..4, 0u64..100), 0..4).prop_map(|m| {
            let text: Vec<String> = m.into_iter().map(|(d, (s, q))| format!("{d}-{s}-{q}")).collect();
            GtidList::parse(&text.join(",")).expect("generated lists parse")
        })
    }

    proptest! {
        #[test]
        fn mysql_parse_format_round_trips(a in set_strategy()) {
            prop_assert_eq!(GtidSet::parse(&a.to_string()).unwrap(), a);
        }

        #[test]
        fn mysql_subset_is_a_partial_order(a in set_strategy(), b in set_strategy(), c in set_strategy()) {
            prop_assert!(a.is_subset(&a));
            if a.is_subset(&b) && b.is_subset(&a) { prop_assert_eq!(&a, &b); }
            if a.is_subset(&b) && b.is_subset(&c) { prop_assert!(a.is_subset(&c)); }
        }

        #[test]
        fn mysql_union_and_subtraction_laws(a in set_strategy(), b in set_strategy()) {
            let u = a.union(&b);
            prop_assert!(a.is_subset(&u) && b.is_subset(&u));
            prop_assert!(a.subtract(&b).intersect(&b).is_empty());
            prop_assert_eq!(a.subtract(&b).union(&a.intersect(&b)), a.clone());
            prop_assert_eq!(u.count(), a.count() + b.count() - a.intersect(&b).count());
            prop_assert!(!(a.is_fresher_than(&b) && b.is_fresher_than(&a)));
        }

        #[test]
        fn mariadb_laws(a in list_strategy(), b in list_strategy(), c in list_strategy()) {
            prop_assert_eq!(GtidList::parse(&a.to_string()).unwrap(), a.clone());
            prop_assert!(a.contains(&a));
            if a.contains(&b) && b.contains(&c) { prop_assert!(a.contains(&c)); }
            let u = a.union(&b);
            prop_assert!(u.contains(&a) && u.contains(&b));
            prop_assert_eq!(a.behind(&b) == 0, a.contains(&b));
            // The scalar never contradicts the partial order.
            if a.contains(&b) { prop_assert!(a.total() >= b.total()); }
        }
    }
}
