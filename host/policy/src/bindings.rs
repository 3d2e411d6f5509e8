//! Host bindings of the WIT package `switchyard:gateway@0.2.0` (`wit/`) that
//! every role shares: the `types` and `host` interfaces, generated once. Each
//! role world's own `bindgen!` is in its file under [`crate::roles`], reusing
//! these through `with`.

// SAFETY: only the generated code uses `unsafe` (typed function handles whose
// signatures bindgen derived from the same WIT it type-checks against).
#![allow(unsafe_code, missing_docs, clippy::all)]

/// Home of the shared `types` and `host` interfaces: generated from a world that
/// uses every type (so borrowed parameter types come out complete); never
/// instantiated itself.
pub mod shared {
    wasmtime::component::bindgen!({
        path: "../../wit",
        inline: "
            package switchyard:bindgen;
            world all-roles {
                import switchyard:gateway/host@0.2.0;
                export switchyard:gateway/auth@0.2.0;
                export switchyard:gateway/router@0.2.0;
                export switchyard:gateway/rate-limit@0.2.0;
                export switchyard:gateway/merge@0.2.0;
            }
        ",
        world: "switchyard:bindgen/all-roles",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "switchyard:gateway/types.connect-request": crate::host_api::RequestRes,
        },
    });
}

pub use shared::switchyard::gateway::host;
pub use shared::switchyard::gateway::types;
