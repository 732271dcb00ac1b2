//! tianji: a trading runtime for flash sales. Every hot key is an actor that owns its state in
//! memory, serializes its changes, group-commits them to the database and only then answers.
//!
//! The domain decides (`domain`), actors serialize and batch (`actors`), persistence writes
//! (`persistence`), HTTP translates (`http`).

pub mod actors;
pub mod cluster;
pub mod config;
pub mod domain;
pub mod http;
pub mod metrics;
pub mod persistence;
pub mod reconcile;
pub mod startup;
pub mod telemetry;
