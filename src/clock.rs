//! Time as the HA loop sees it.
//!
//! Durations are measured with `tokio::time::Instant` (the monotonic clock,
//! which the simulation pauses and advances). Records carry wall-clock
//! milliseconds ([`now_ms`]): the system clock in production; in the
//! simulation a virtual wall clock driven by the same paused tokio clock,
//! plus a per-node offset for clock jumps, so that a seed replays exactly.

use std::cell::Cell;

pub use tokio::time::Instant;

thread_local! {
    /// Simulation only: (the virtual epoch in ms, the tokio instant it
    /// corresponds to). Set by `sim` on the thread that runs a seed.
    static VIRTUAL: Cell<Option<(u64, Instant)>> = const { Cell::new(None) };
}

tokio::task_local! {
    /// Simulation only: this node's clock offset in ms (a clock jump).
    pub static NODE_OFFSET_MS: std::sync::Arc<std::sync::atomic::AtomicI64>;
}

/// Milliseconds since the Unix epoch, the time unit of every record.
pub fn now_ms() -> u64 {
    match VIRTUAL.with(|v| v.get()) {
        Some((base, start)) => {
            let offset = NODE_OFFSET_MS.try_with(|o| o.load(std::sync::atomic::Ordering::Relaxed)).unwrap_or(0);
            (base + start.elapsed().as_millis() as u64).saturating_add_signed(offset)
        }
        None => std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0),
    }
}

/// Simulation: makes [`now_ms`] on this thread a virtual clock starting at
/// `base_ms` now (call inside a runtime with a paused clock); `None` gives
/// the system clock back.
pub fn set_virtual(base_ms: Option<u64>) {
    VIRTUAL.with(|v| v.set(base_ms.map(|b| (b, Instant::now()))));
}
