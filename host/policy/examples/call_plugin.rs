//! One screen of the host side: load a plugin, map it to a tenant, call its
//! role. The gateway does exactly this, with sockets around it.
//!
//! ```sh
//! scripts/build-plugins.sh      # builds target/plugins/namespace-router.wasm
//! cargo run -p switchyard-policy --example call_plugin -- target/plugins/namespace-router.wasm
//! ```

use std::sync::Arc;

use serde_json::value::RawValue;
use switchyard_core::policy::{Principal, PublishRequest, Route};
use switchyard_core::{Config, Node};
use switchyard_policy::PluginHost;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let wasm = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "target/plugins/namespace-router.wasm".into());

    // 1. A plugins folder holding the component (the plugin's name is its file stem).
    let dir = tempfile_dir()?;
    std::fs::copy(&wasm, dir.join("router.wasm"))?;

    // 2. A config mapping tenant "acme"'s router role to it, with the
    //    plugin's own config (handed to it as JSON through `host.config()`).
    let config = Config::from_toml(&format!(
        r#"
        [plugins]
        dir = {dir:?}
        watch = false
        [tenants.acme.policies.router]
        plugin = "router"
        config = {{ rules = [{{ match = "chat:*", to = ["$channel", "chat:all"] }}] }}
        "#,
        dir = dir.display().to_string()
    ))?;
    let node = Node::with_memory_broker(Arc::new(config));

    // 3. Start the runtime: compiles the component once (cached by content
    //    hash), checks its world, installs each tenant's policy set.
    let host = PluginHost::start(node.clone()).await?;
    println!("plugins: {}", host.status_json());

    // 4. Call the role the way a publish does: through the tenant's policy
    //    set. The call runs in a pooled instance under a CPU deadline and a
    //    memory cap; a trap or timeout resolves by the policy's `on_error`.
    let tenant = node.tenants.get("acme").expect("tenant acme");
    let policies = tenant.policies().clone();
    let who = Principal::anonymous();
    let data: Box<RawValue> = RawValue::from_string(r#"{"text":"hi"}"#.into())?;
    let route = policies.router.route(&PublishRequest {
        principal: &who,
        client: "example",
        channel: "chat:lobby",
        data: &data,
    });
    match route {
        Ok(Route::Direct) => println!("route: direct"),
        Ok(Route::To(targets)) => {
            for t in targets {
                println!("route: -> {}", t.channel);
            }
        }
        Err(denial) => println!("refused: {denial}"),
    }
    host.stop_watching();
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// A fresh folder under the system temp dir.
fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("switchyard-example-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}
