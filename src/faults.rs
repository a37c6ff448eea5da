//! Fault points for the crash tests: with the `fault-injection` feature
//! (enabled by `scripts/test.sh`, never in release builds) a sidecar whose
//! `VIGIL_FAULT` names a point exits right there, as if killed, so the
//! tests can crash it between two steps of a failover. Without the feature
//! every point compiles to nothing.

/// Exits the process (status 86) if `VIGIL_FAULT` names this point.
#[cfg(feature = "fault-injection")]
pub fn point(name: &str) {
    if std::env::var("VIGIL_FAULT").is_ok_and(|v| v == name) {
        eprintln!("fault point {name}: exiting as if killed");
        std::process::exit(86);
    }
}

#[cfg(not(feature = "fault-injection"))]
#[inline(always)]
pub fn point(_name: &str) {}
