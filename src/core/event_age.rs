//! How long ago an event recorded in etcd happened (the last automatic
//! failover, for `hold_down`), on this node's monotonic clock. A record's
//! `at_ms` is the wall clock of the node that wrote it, which may have
//! jumped: the 15-minute simulation run (seed 7169015) had a failover
//! recorded 85 s in the future by a promoting node whose clock had jumped,
//! and every replica stayed held down for two minutes instead of 30 s.

use std::time::Duration;

/// The age of a recorded event.
/// - `seen_as_written`: this node read etcd continuously when the record
///   first appeared, so the event happened then (within a loop);
/// - `wall_age_at_first_sight`: the record's age by the wall clocks (this
///   node's now minus the writer's `at_ms`, in ms; negative when the
///   writer's clock was ahead), used only for a record first read after a
///   gap (this sidecar's start, an etcd outage);
/// - `since_first_sight`: monotonic time since this node first read it.
///
/// A record from the future counts as written when first read: the hold
/// then lasts its full length from that moment, never longer.
pub fn event_age(seen_as_written: bool, wall_age_at_first_sight_ms: i64, since_first_sight: Duration) -> Duration {
    let before = if seen_as_written { Duration::ZERO } else { Duration::from_millis(wall_age_at_first_sight_ms.max(0) as u64) };
    before.saturating_add(since_first_sight)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_aged_on_the_monotonic_clock_from_when_it_was_first_read() {
        let s = Duration::from_secs;
        // (seen as written, wall age at first sight in ms, since first sight) -> age
        let table = [
            // Read as it was written: the writer's clock does not matter.
            (true, 85_000, s(3), s(3)),
            (true, -85_000, s(3), s(3)),
            // First read after a gap: the wall clocks say how old it was then.
            (false, 20_000, s(3), s(23)),
            // ...unless the writer's clock was ahead: counted from first sight.
            (false, -85_000, s(3), s(3)),
            (false, 0, Duration::ZERO, Duration::ZERO),
        ];
        for (seen, wall, since, age) in table {
            assert_eq!(event_age(seen, wall, since), age, "{seen} {wall} {since:?}");
        }
    }
}
