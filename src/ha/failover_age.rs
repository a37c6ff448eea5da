//! How long ago the last automatic failover happened, for `hold_down`:
//! measured on this node's monotonic clock from when it first read the
//! history record (`core::event_age`), not from the record's `at_ms`,
//! which is the promoting node's wall clock.

use crate::clock::Instant;
use crate::dcs::HistoryRecord;
use std::time::Duration;

/// The automatic failover record this node last read, and when.
struct Seen {
    term: i64,
    first_read: Instant,
    /// Whether the reads were continuous when it first appeared.
    as_written: bool,
    /// Its age by the wall clocks at that moment (ms; negative if the
    /// writer's clock was ahead).
    wall_age_ms: i64,
}

#[derive(Default)]
pub(super) struct FailoverAge {
    seen: Option<Seen>,
    last_read: Option<Instant>,
}

impl FailoverAge {
    /// One read of the newest history record. The record counts as read
    /// when written only if the previous read was at most `max_gap` ago.
    pub(super) fn read(&mut self, last: Option<&HistoryRecord>, now: Instant, now_ms: u64, max_gap: Duration) {
        let continuous = self.last_read.replace(now).is_some_and(|t| now.duration_since(t) <= max_gap);
        let last = last.filter(|h| h.is_automatic_failover());
        self.seen = match (last, self.seen.take()) {
            (Some(h), Some(seen)) if seen.term == h.term => Some(seen),
            (Some(h), _) => Some(Seen {
                term: h.term,
                first_read: now,
                as_written: continuous,
                wall_age_ms: (now_ms as i64).saturating_sub(h.at_ms as i64),
            }),
            (None, _) => None,
        };
    }

    /// How long ago the last automatic failover happened, if the newest
    /// record is one.
    pub(super) fn age(&self) -> Option<Duration> {
        self.seen.as_ref().map(|s| crate::core::event_age::event_age(s.as_written, s.wall_age_ms, s.first_read.elapsed()))
    }
}
