//! tianji: a trading runtime for flash sales. Every hot key is an actor that owns its state in
//! memory, serializes its changes, group-commits them to the database and only then answers.

pub mod domain;
pub mod persistence;
