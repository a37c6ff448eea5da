//! Adopting the leader key of an earlier process of this node: whether its
//! lease can be kept as it is. A lease carries the TTL it was granted
//! with; a sidecar restarted with another `ttl` must not run on the old
//! one (defect 1a of the trust issue: a 10 s lease adopted under a 3 s
//! config let the key outlive a lost node by 10 s; a 3 s lease under a
//! 10 s config can expire, and a replica promote, before the lease
//! watchdog fences at `ttl - safety_margin`).

/// What to do with the lease under the key being adopted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdoptLease {
    /// The lease has expired (or etcd no longer knows it): nothing to adopt.
    Expired,
    /// Granted with the configured TTL: keep it and renew it.
    Keep,
    /// Granted with another TTL: move the key, with its value and term, to
    /// a new lease of the configured TTL, then revoke the old one.
    MoveToNewLease,
}

/// `remaining_secs`: the lease's time to live as etcd reports it (`None`
/// or `<= 0`: gone); `granted_secs`: the TTL it was granted with;
/// `configured_secs`: this process's `ttl`, as it would grant it.
pub fn adopt_lease(remaining_secs: Option<i64>, granted_secs: i64, configured_secs: i64) -> AdoptLease {
    match remaining_secs {
        None => AdoptLease::Expired,
        Some(r) if r <= 0 => AdoptLease::Expired,
        Some(_) if granted_secs == configured_secs => AdoptLease::Keep,
        Some(_) => AdoptLease::MoveToNewLease,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_is_kept_only_when_granted_with_the_configured_ttl() {
        use AdoptLease::*;
        // (remaining, granted, configured, expected)
        let table: &[(Option<i64>, i64, i64, AdoptLease)] = &[
            (None, 10, 10, Expired),
            (Some(0), 10, 10, Expired),
            (Some(-1), 10, 10, Expired),
            (Some(7), 10, 10, Keep),
            (Some(1), 3, 3, Keep),
            // The earlier process ran the default profile, this one fast:
            // the old lease would keep the key 10 s after a node loss.
            (Some(9), 10, 3, MoveToNewLease),
            // The reverse: a 3 s lease under a 10 s config expires before
            // the lease watchdog (ttl - safety_margin = 8 s) fences.
            (Some(2), 3, 10, MoveToNewLease),
        ];
        for &(remaining, granted, configured, want) in table {
            assert_eq!(adopt_lease(remaining, granted, configured), want, "{remaining:?} {granted} {configured}");
        }
    }
}
