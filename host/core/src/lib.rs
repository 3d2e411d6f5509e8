//! Switchyard core: the wire protocol, transport-agnostic sessions, channels,
//! history, backpressure, the broker trait with the embedded memory broker, and
//! the policy seam. No sockets live here.

pub mod backpressure;
pub mod bridge;
pub mod broker;
pub mod channel;
pub mod config;
pub mod dedupe;
pub mod document;
pub mod history;
pub mod hub;
pub mod metrics;
pub mod node;
pub mod policy;
pub mod presence;
pub mod protocol;
pub mod publish;
pub mod refusal;
pub mod session;
pub mod telemetry;
pub mod tenant;

pub use config::Config;
pub use node::Node;
