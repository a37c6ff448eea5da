//! vigil: a database-replication failover supervisor.
//!
//! One `vigil run` per database node. See ARCHITECTURE.md for the map.

pub mod alerts;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod core;
pub mod dcs;
pub mod doctor;
pub mod drill;
pub mod engine;
pub mod faults;
pub mod fs_safe;
pub mod gtid;
pub mod ha;
pub mod lab;
pub mod metrics;
pub mod net;
pub mod ops;
pub mod peers;
pub mod position;
pub mod proc;
pub mod publish;
pub mod secret;
pub mod service;
pub mod sim;
pub mod status;
pub mod sync;
pub mod tls;
pub mod units;
pub mod watchdog;
pub mod workload;
