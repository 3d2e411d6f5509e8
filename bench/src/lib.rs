//! The load tool's library: connections, protocol adapters, scenarios,
//! statistics and the report. The binaries are the CLI (`switchyard-bench`)
//! and the bare peer servers it is compared against.

pub mod conn;
pub mod docs;
pub mod echo;
pub mod fanout;
pub mod http;
pub mod idle;
pub mod jwt;
pub mod load;
pub mod proto;
pub mod report;
pub mod run;
pub mod statepatch;
pub mod stats;
