//! How long ago the last automatic failover happened, for `hold_down`:
//! measured on this node's monotonic clock from when it first read the
//! history record (`core::event_age`), not from the record's `at_ms`,
//! which is the promoting node's wall clock.

use crate::clock::Instant;
use crate::dcs::HistoryRecord;
use std::time::Duration;

/// An automatic failover record as this node first read it.
#[derive(Clone, Copy)]
struct Seen {
    first_read: Instant,
    /// Whether the reads were continuous when it first appeared.
    as_written: bool,
    /// Its age by the wall clocks at that moment (ms; negative if the
    /// writer's clock was ahead).
    wall_age_ms: i64,
}

/// How many records' first reads are kept: a newer record can vanish (a
/// promotion given up deletes its own), and the one before it is then the
/// newest again without being new (the 30-minute run, seed 7441453: read
/// as new, it held the replicas down for another `hold_down`).
const KEEP: usize = 8;

#[derive(Default)]
pub(super) struct FailoverAge {
    /// By term.
    seen: std::collections::BTreeMap<i64, Seen>,
    newest: Option<i64>,
    last_read: Option<Instant>,
}

impl FailoverAge {
    /// One read of the newest history record. The record counts as read
    /// when written only if the previous read was at most `max_gap` ago.
    pub(super) fn read(&mut self, last: Option<&HistoryRecord>, now: Instant, now_ms: u64, max_gap: Duration) {
        let continuous = self.last_read.replace(now).is_some_and(|t| now.duration_since(t) <= max_gap);
        let last = last.filter(|h| h.is_automatic_failover());
        self.newest = last.map(|h| h.term);
        if let Some(h) = last {
            self.seen.entry(h.term).or_insert(Seen {
                first_read: now,
                as_written: continuous,
                wall_age_ms: (now_ms as i64).saturating_sub(h.at_ms as i64),
            });
            while self.seen.len() > KEEP {
                self.seen.pop_first();
            }
        }
    }

    /// How long ago the last automatic failover happened, if the newest
    /// record is one.
    pub(super) fn age(&self) -> Option<Duration> {
        let s = self.newest.and_then(|t| self.seen.get(&t))?;
        Some(crate::core::event_age::event_age(s.as_written, s.wall_age_ms, s.first_read.elapsed()))
    }
}
