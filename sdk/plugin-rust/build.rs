//! Locates the gateway's WIT contract and hands its absolute path to the
//! export macros, so that plugin crates generate their role bindings from the
//! very same files as the SDK (wherever the plugin crate lives).

use std::{env, fs, path::PathBuf};

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let wit = manifest.join("../../wit");
    println!("cargo:rerun-if-changed={}", wit.display());
    let wit = fs::canonicalize(&wit).unwrap_or_else(|e| {
        panic!(
            "switchyard-sdk: the WIT folder {} is missing: {e}",
            wit.display()
        )
    });
    let path = wit.to_str().expect("WIT path is not UTF-8");
    // `{:?}` renders a valid Rust string literal (quotes and escapes included).
    let src = format!(
        r#"/// Generates a role world's bindings in the calling crate (used by the export macros).
#[doc(hidden)]
#[macro_export]
macro_rules! __switchyard_generate {{
    ($world:tt) => {{
        $crate::__rt::wit_bindgen::generate!({{
            path: {path:?},
            world: $world,
            runtime_path: "::switchyard_sdk::__rt::wit_bindgen::rt",
            with: {{
                "switchyard:gateway/types@0.2.0": ::switchyard_sdk::bindings::switchyard::gateway::types,
                "switchyard:gateway/host@0.2.0": ::switchyard_sdk::bindings::switchyard::gateway::host,
            }},
        }});
    }};
}}
"#
    );
    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR")).join("generate_macro.rs");
    fs::write(&out, src).expect("write generate_macro.rs");
}
