//! vigil: a database-replication failover supervisor.
//!
//! One `vigil run` per database node. See ARCHITECTURE.md for the map.

pub mod alerts;
pub mod config;
pub mod core;
pub mod dcs;
pub mod doctor;
pub mod drill;
pub mod engine;
pub mod ha;
pub mod proc;
pub mod position;
pub mod secret;
pub mod service;
pub mod status;
pub mod sync;
pub mod units;
pub mod api;
pub mod cli;
pub mod lab;
pub mod metrics;
pub mod ops;
pub mod workload;
pub mod publish;
