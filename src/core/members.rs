//! Which departed members a sidecar keeps in mind. A member whose key
//! expired (its node died, its sidecar stopped) is still probed: a
//! vanished leader must be checked before anyone is promoted, a silent
//! peer is alerted on, and the failsafe asks every member. But a node
//! that was taken out of the cluster for good must not be probed, alerted
//! on and asked for ever (with the failsafe, one member that never answers
//! means the primary fences itself when etcd goes down).

use std::time::Duration;

/// How long a member absent from etcd is kept: longer than any outage a
/// node comes back from by itself, short enough that a decommissioned
/// node stops being alerted on within the hour.
pub const FORGET_DEPARTED_AFTER: Duration = Duration::from_secs(3600);

/// Is a member whose record has been absent from etcd for `absent_for`
/// still kept? A member still in etcd (`None`) always is.
pub fn keep_member(absent_for: Option<Duration>) -> bool {
    absent_for.is_none_or(|a| a < FORGET_DEPARTED_AFTER)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn departed_members_are_kept_for_an_hour() {
        let table = [
            (None, true),
            (Some(Duration::ZERO), true),
            (Some(Duration::from_secs(59 * 60)), true),
            (Some(FORGET_DEPARTED_AFTER), false),
            (Some(Duration::from_secs(86400)), false),
        ];
        for (absent_for, kept) in table {
            assert_eq!(keep_member(absent_for), kept, "{absent_for:?}");
        }
    }
}
