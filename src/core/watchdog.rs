//! The node watchdog's rules (`/dev/watchdog`, as Patroni's
//! `watchdog.mode`): when it is armed, when it is fed, and its timeout.
//!
//! The device resets the machine when it is not fed for its timeout. vigil
//! arms it only while this node holds the leader lease and feeds it at each
//! renewal, so a node whose sidecar froze (or whose machine stalls) is reset
//! before its lease can expire, that is before any other node may promote:
//! a frozen primary can never come back and accept a write beside a new one.

use std::time::Duration;

/// What to do with the device after a change in the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WatchdogStep {
    /// Open the device, set its timeout, feed it.
    Arm,
    Feed,
    /// Close it with the magic character: this node no longer leads.
    Disarm,
    Nothing,
}

/// The lease as the watchdog sees it at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseEvent {
    /// A renewal (or the take, or a failsafe round) succeeded; the answer
    /// came `answer_delay` after the request was sent.
    Renewed { answer_delay: Duration },
    /// This node no longer holds the lease (released, lost, fenced).
    Dropped,
}

/// The device's timeout: the part of the lease that is guaranteed,
/// `ttl - safety_margin`, in whole seconds (the device counts seconds),
/// rounded down. `None` when that leaves less than two loops: the node
/// would reset between two healthy renewals (the config refuses it).
pub fn timeout(ttl: Duration, safety_margin: Duration, loop_wait: Duration) -> Option<u32> {
    let secs = ttl.saturating_sub(safety_margin).as_secs();
    (secs >= 1 && Duration::from_secs(secs) >= loop_wait * 2).then_some(secs as u32)
}

/// A renewal whose answer came late feeds nothing: the lease runs on etcd
/// from (about) the request, so the reset falls `answer_delay + timeout`
/// after it, which is before the lease can expire (`ttl`) only while the
/// answer took less than the safety margin. A slow etcd within the margin
/// still feeds: a healthy leader is not reset for it.
pub fn may_feed(answer_delay: Duration, safety_margin: Duration) -> bool {
    answer_delay < safety_margin
}

/// The step for `event`, given whether the device is armed now.
pub fn step(event: LeaseEvent, armed: bool, safety_margin: Duration) -> WatchdogStep {
    match event {
        LeaseEvent::Renewed { answer_delay } if !may_feed(answer_delay, safety_margin) => WatchdogStep::Nothing,
        LeaseEvent::Renewed { .. } if armed => WatchdogStep::Feed,
        LeaseEvent::Renewed { .. } => WatchdogStep::Arm,
        LeaseEvent::Dropped if armed => WatchdogStep::Disarm,
        LeaseEvent::Dropped => WatchdogStep::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: f64) -> Duration {
        Duration::from_secs_f64(x)
    }

    #[test]
    fn steps() {
        let margin = s(2.0);
        let table = [
            // (event, armed) -> step
            (LeaseEvent::Renewed { answer_delay: s(0.01) }, false, WatchdogStep::Arm),
            (LeaseEvent::Renewed { answer_delay: s(0.01) }, true, WatchdogStep::Feed),
            (LeaseEvent::Renewed { answer_delay: s(1.9) }, true, WatchdogStep::Feed),
            // A late answer: the lease may be older than it looks.
            (LeaseEvent::Renewed { answer_delay: s(2.0) }, true, WatchdogStep::Nothing),
            (LeaseEvent::Renewed { answer_delay: s(2.5) }, false, WatchdogStep::Nothing),
            (LeaseEvent::Dropped, true, WatchdogStep::Disarm),
            (LeaseEvent::Dropped, false, WatchdogStep::Nothing),
        ];
        for (event, armed, want) in table {
            assert_eq!(step(event, armed, margin), want, "{event:?} armed={armed}");
        }
    }

    #[test]
    fn timeouts() {
        let table = [
            // (ttl, safety_margin, loop) -> timeout
            ((10.0, 2.0, 1.0), Some(8)),
            ((3.0, 1.0, 0.5), Some(2)),
            ((10.5, 2.0, 1.0), Some(8)),
            // Less than two loops: a healthy node would reset.
            ((3.0, 2.0, 1.0), None),
            ((2.0, 2.0, 0.5), None),
        ];
        for ((ttl, margin, lw), want) in table {
            assert_eq!(timeout(s(ttl), s(margin), s(lw)), want, "ttl {ttl} margin {margin} loop {lw}");
        }
    }

    /// The reset always falls before the lease can expire: fed less than a
    /// margin after the request, reset `timeout` after the feed.
    #[test]
    fn the_reset_comes_before_the_lease_expires() {
        for ttl in [3u64, 5, 10, 30] {
            for margin in [1u64, 2, 5] {
                let (ttl, margin, lw) = (s(ttl as f64), s(margin as f64), s(0.5));
                let Some(t) = timeout(ttl, margin, lw) else { continue };
                let latest_feed = margin - Duration::from_millis(1);
                assert!(may_feed(latest_feed, margin) && !may_feed(margin, margin));
                assert!(latest_feed + Duration::from_secs(t as u64) < ttl, "ttl {ttl:?} margin {margin:?}");
            }
        }
    }
}
