//! Telling the world who the primary is, after it really is one (key held,
//! promoted, first write taken): DNS (`dns.rs`) and hook commands
//! (`hooks.rs`). Publishers run in the background and never delay the
//! HA loop; only the `pre_promote` hook is synchronous, because it may veto.

pub mod dns;
pub mod hooks;
