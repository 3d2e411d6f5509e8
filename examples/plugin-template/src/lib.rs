//! A one-file Switchyard router plugin: copy this folder, rename, edit.
//!
//! Behaviour: publishes on a channel matching `drop` (default `spam:*`) are
//! dropped; publishes on a channel matching `mirror` (default `chat:*`) are also
//! copied to `mirror_to` (default `chat:all`); everything else goes direct.
//!
//! Config (the tenant's `[tenants.x.policies.router] config = { … }`):
//! `{ "drop": "spam:*", "mirror": "chat:*", "mirror_to": "chat:all" }`.
//!
//! Build: `cargo build --release --target wasm32-wasip2`, then copy
//! `target/wasm32-wasip2/release/plugin_template.wasm` into the plugins folder.

use serde::Deserialize;
use switchyard_sdk::{Denial, PublishRequest, Route, RouteTarget, Router, glob_match, host};

#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Config {
    drop: String,
    mirror: String,
    mirror_to: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            drop: "spam:*".into(),
            mirror: "chat:*".into(),
            mirror_to: "chat:all".into(),
        }
    }
}

struct Template;

impl Router for Template {
    fn route(req: &PublishRequest) -> Result<Route, Denial> {
        let cfg = host::config_cached::<Config>().map_err(|e| Denial::Other(e.to_string()))?;
        if glob_match(&cfg.drop, &req.channel) {
            return Ok(Route::dropped());
        }
        if glob_match(&cfg.mirror, &req.channel) && req.channel != cfg.mirror_to {
            return Ok(Route::To(vec![
                RouteTarget::channel(req.channel.clone()),
                RouteTarget::channel(cfg.mirror_to.clone()),
            ]));
        }
        Ok(Route::Direct)
    }
}

switchyard_sdk::export_router!(Template);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_mirrors_and_passes() {
        switchyard_sdk::testing::set_config("{}");
        assert!(Template::route(&PublishRequest::new("spam:1", "1")).unwrap().is_drop());
        let Route::To(t) = Template::route(&PublishRequest::new("chat:a", "1")).unwrap() else {
            panic!("expected a fan-out");
        };
        let chans: Vec<_> = t.iter().map(|t| t.channel.as_str()).collect();
        assert_eq!(chans, ["chat:a", "chat:all"]);
        assert!(matches!(
            Template::route(&PublishRequest::new("news", "1")).unwrap(),
            Route::Direct
        ));
    }
}
