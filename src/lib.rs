//! vigil: a database-replication failover supervisor.
//!
//! One `vigil run` per database node. See ARCHITECTURE.md for the map.

pub mod config;
pub mod core;
pub mod position;
pub mod secret;
pub mod units;
