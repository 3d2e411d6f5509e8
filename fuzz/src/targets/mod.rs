//! The fuzz targets, one per public decoder or validator.

pub mod config;
pub mod handshake;
pub mod lww;
pub mod protocol;
pub mod statepatch;

/// Target names, in run order.
pub const NAMES: &[&str] = &["protocol", "statepatch", "config", "handshake", "lww"];
