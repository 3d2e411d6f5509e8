//! switchyard-redis: the Redis broker.
//!
//! STUB — being implemented (issue 4). The binary calls exactly this API.

use std::sync::Arc;

use switchyard_core::broker::Broker;
use switchyard_core::hub::Hub;
use switchyard_core::Config;

/// Connects to the configured Redis servers and returns a broker delivering into `hub`.
pub async fn connect(config: &Config, hub: Arc<Hub>) -> anyhow::Result<Arc<dyn Broker>> {
    let _ = (config, hub);
    anyhow::bail!("the redis broker is not implemented yet")
}
