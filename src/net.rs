//! What a failed network call ran into, read from its error chain: drivers
//! and HTTP clients wrap the `io::Error` underneath, sometimes deeply, and
//! whether a connection was refused or timed out decides things (a peer
//! with no sidecar running, a database nobody listens for).

use std::io::ErrorKind;

/// Is there an `io::Error` of one of `kinds` anywhere in the chain?
pub fn io_error_in_chain(e: &(dyn std::error::Error + 'static), kinds: &[ErrorKind]) -> bool {
    let mut src = Some(e);
    while let Some(s) = src {
        if s.downcast_ref::<std::io::Error>().is_some_and(|io| kinds.contains(&io.kind())) {
            return true;
        }
        src = s.source();
    }
    false
}
