//! Host bindings of the WIT package `switchyard:gateway@0.2.0` (`wit/`), one
//! `bindgen!` per role world. The shared `types` and `host` interfaces are
//! generated once (with the auth world) and reused by the other worlds.

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

/// `auth-plugin` world.
pub mod auth {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "auth-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "switchyard:gateway/types": crate::bindings::shared::switchyard::gateway::types,
            "switchyard:gateway/host": crate::bindings::shared::switchyard::gateway::host,
        },
    });
}

/// `router-plugin` world.
pub mod router {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "router-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "switchyard:gateway/types": crate::bindings::shared::switchyard::gateway::types,
            "switchyard:gateway/host": crate::bindings::shared::switchyard::gateway::host,
        },
    });
}

/// `rate-limit-plugin` world.
pub mod rate_limit {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "rate-limit-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "switchyard:gateway/types": crate::bindings::shared::switchyard::gateway::types,
            "switchyard:gateway/host": crate::bindings::shared::switchyard::gateway::host,
        },
    });
}

/// `merge-plugin` world.
pub mod merge {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "merge-plugin",
        ownership: Borrowing { duplicate_if_necessary: true },
        with: {
            "switchyard:gateway/types": crate::bindings::shared::switchyard::gateway::types,
            "switchyard:gateway/host": crate::bindings::shared::switchyard::gateway::host,
        },
    });
}

pub use shared::switchyard::gateway::host;
pub use shared::switchyard::gateway::types;
