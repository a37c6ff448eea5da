//! Replication positions as plain values.
//!
//! PostgreSQL positions are a timeline plus a WAL location (LSN). They are
//! compared timeline first: a node on a newer timeline has seen a promotion
//! the others have not, so it is fresher whatever its LSN says.

use serde::{Deserialize, Serialize};
use std::fmt;

/// A PostgreSQL write-ahead-log location, e.g. `0/3000148`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    /// Parses PostgreSQL's `XXXXXXXX/XXXXXXXX` text form.
    pub fn parse(text: &str) -> Result<Lsn, String> {
        let (hi, lo) = text.trim().split_once('/').ok_or_else(|| format!("invalid LSN {text:?}: expected HI/LO in hexadecimal"))?;
        let hi = u32::from_str_radix(hi, 16).map_err(|_| format!("invalid LSN {text:?}: bad high half"))?;
        let lo = u32::from_str_radix(lo, 16).map_err(|_| format!("invalid LSN {text:?}: bad low half"))?;
        Ok(Lsn(((hi as u64) << 32) | lo as u64))
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:X}", self.0 >> 32, self.0 & 0xffff_ffff)
    }
}

impl Serialize for Lsn {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Lsn {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Lsn::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// How far a node has got: timeline, then LSN.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
pub struct Position {
    pub timeline: u32,
    pub lsn: Lsn,
}

impl Position {
    pub fn new(timeline: u32, lsn: u64) -> Self {
        Position { timeline, lsn: Lsn(lsn) }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (tl {})", self.lsn, self.timeline)
    }
}

/// One entry of a timeline history: `timeline` ended at `switch_lsn`, where
/// the next timeline forked off.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineSwitch {
    pub timeline: u32,
    pub switch_lsn: Lsn,
}

/// Parses the text of a PostgreSQL `0000000N.history` file.
/// Lines look like `1\t0/3000148\tno recovery target specified`.
pub fn parse_timeline_history(text: &str) -> Result<Vec<TimelineSwitch>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        let tli = parts.next().unwrap_or_default();
        let lsn = parts.next().ok_or_else(|| format!("history line {}: missing LSN", i + 1))?;
        let timeline = tli.parse::<u32>().map_err(|_| format!("history line {}: bad timeline {tli:?}", i + 1))?;
        out.push(TimelineSwitch { timeline, switch_lsn: Lsn::parse(lsn)? });
    }
    Ok(out)
}

/// Has a node at `mine` diverged from a leader whose timeline history is
/// `history` and whose current timeline is `leader_timeline`?
///
/// A node on an older timeline can follow the leader only if it did not get
/// past the point where its timeline ended in the leader's history.
pub fn diverged(mine: Position, leader_timeline: u32, history: &[TimelineSwitch]) -> bool {
    if mine.timeline == leader_timeline {
        return false;
    }
    if mine.timeline > leader_timeline {
        return true;
    }
    match history.iter().find(|s| s.timeline == mine.timeline) {
        Some(s) => mine.lsn > s.switch_lsn,
        // Our timeline is not in the leader's ancestry at all.
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsn_round_trips_through_text() {
        for text in ["0/0", "0/3000148", "1/A", "FFFFFFFF/FFFFFFFF"] {
            assert_eq!(Lsn::parse(text).unwrap().to_string(), text);
        }
        assert_eq!(Lsn::parse("1/0").unwrap().0, 1 << 32);
        assert!(Lsn::parse("nonsense").is_err());
        assert!(Lsn::parse("0/XYZ").is_err());
    }

    #[test]
    fn positions_order_timeline_first() {
        assert!(Position::new(2, 10) > Position::new(1, 1_000_000));
        assert!(Position::new(1, 11) > Position::new(1, 10));
    }

    #[test]
    fn history_parsing_and_divergence() {
        let h = parse_timeline_history("1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tx\n").unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h[0].switch_lsn, Lsn::parse("0/3000148").unwrap());
        // A replica that stopped exactly at the fork point can follow.
        assert!(!diverged(Position { timeline: 1, lsn: h[0].switch_lsn }, 3, &h));
        // One that got further on timeline 1 cannot.
        assert!(diverged(Position { timeline: 1, lsn: Lsn(h[0].switch_lsn.0 + 1) }, 3, &h));
        assert!(!diverged(Position::new(3, 99), 3, &h));
        assert!(diverged(Position::new(7, 1), 3, &h));
        assert!(parse_timeline_history("x y").is_err());
    }
}
