//! Export macros: one per role. Each generates the role world's bindings in
//! the calling crate (sharing the SDK's types and host imports) and wires the
//! role trait to the component's exports.

/// Exports a type implementing [`Auth`](crate::Auth) as the component's `auth` interface.
///
/// Call it once, at the root of a `cdylib` crate that depends on `switchyard_sdk`.
#[macro_export]
macro_rules! export_auth {
    ($ty:ty) => {
        #[doc(hidden)]
        #[allow(unsafe_code, clippy::all, dead_code)]
        mod __switchyard_export_auth {
            #[allow(unused_imports)]
            use super::*;
            $crate::__switchyard_generate!("auth-plugin");

            struct Export;

            impl exports::switchyard::gateway::auth::Guest for Export {
                fn authenticate(
                    req: &$crate::bindings::switchyard::gateway::types::ConnectRequest,
                ) -> ::core::result::Result<$crate::Principal, $crate::Denial> {
                    <$ty as $crate::Auth>::authenticate(&$crate::ConnectRequest::from_host(req))
                }
                fn authorize_subscribe(
                    who: $crate::Principal,
                    channel: ::std::string::String,
                ) -> ::core::result::Result<(), $crate::Denial> {
                    <$ty as $crate::Auth>::authorize_subscribe(&who, &channel)
                }
                fn authorize_publish(
                    who: $crate::Principal,
                    channel: ::std::string::String,
                    data_json: ::std::string::String,
                ) -> ::core::result::Result<(), $crate::Denial> {
                    <$ty as $crate::Auth>::authorize_publish(&who, &channel, &data_json)
                }
            }

            export!(Export);
        }
    };
}

/// Exports a type implementing [`Router`](crate::Router) as the component's `router` interface.
#[macro_export]
macro_rules! export_router {
    ($ty:ty) => {
        #[doc(hidden)]
        #[allow(unsafe_code, clippy::all, dead_code)]
        mod __switchyard_export_router {
            #[allow(unused_imports)]
            use super::*;
            $crate::__switchyard_generate!("router-plugin");

            struct Export;

            impl exports::switchyard::gateway::router::Guest for Export {
                fn route(
                    req: $crate::PublishRequest,
                ) -> ::core::result::Result<$crate::Route, $crate::Denial> {
                    <$ty as $crate::Router>::route(&req)
                }
            }

            export!(Export);
        }
    };
}

/// Exports a type implementing [`RateLimit`](crate::RateLimit) as the component's `rate-limit` interface.
#[macro_export]
macro_rules! export_rate_limit {
    ($ty:ty) => {
        #[doc(hidden)]
        #[allow(unsafe_code, clippy::all, dead_code)]
        mod __switchyard_export_rate_limit {
            #[allow(unused_imports)]
            use super::*;
            $crate::__switchyard_generate!("rate-limit-plugin");

            struct Export;

            impl exports::switchyard::gateway::rate_limit::Guest for Export {
                fn check(key: $crate::RateKey, cost: u32) -> $crate::RateDecision {
                    <$ty as $crate::RateLimit>::check(&key, cost)
                }
            }

            export!(Export);
        }
    };
}

/// Exports a type implementing [`Document`](crate::Document) as the `document`
/// resource of the component's `merge` interface.
///
/// `switchyard_sdk::export_merge!(switchyard_sdk::LastWriterWins);` gives the
/// built-in last-writer-wins behaviour.
#[macro_export]
macro_rules! export_merge {
    ($ty:ty) => {
        #[doc(hidden)]
        #[allow(unsafe_code, clippy::all, dead_code)]
        mod __switchyard_export_merge {
            #[allow(unused_imports)]
            use super::*;
            $crate::__switchyard_generate!("merge-plugin");

            use exports::switchyard::gateway::merge as wit;

            struct Export;

            /// The resource's representation: the plugin's document behind a RefCell
            /// (resource methods take `&self`; a component is single-threaded).
            struct Doc(::core::cell::RefCell<$ty>);

            impl wit::Guest for Export {
                type Document = Doc;
            }

            impl wit::GuestDocument for Doc {
                fn open(
                    snapshot: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<wit::Document, $crate::MergeError> {
                    let doc = <$ty as $crate::Document>::open(&snapshot)?;
                    Ok(wit::Document::new(Doc(::core::cell::RefCell::new(doc))))
                }
                fn apply(
                    &self,
                    update: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<
                    ::core::option::Option<::std::vec::Vec<u8>>,
                    $crate::MergeError,
                > {
                    let out = <$ty as $crate::Document>::apply(&mut *self.0.borrow_mut(), &update)?;
                    // Empty updates are never broadcast.
                    Ok(out.filter(|u| !u.is_empty()))
                }
                fn snapshot(&self) -> ::std::vec::Vec<u8> {
                    <$ty as $crate::Document>::snapshot(&*self.0.borrow())
                }
                fn state_vector(&self) -> ::std::vec::Vec<u8> {
                    <$ty as $crate::Document>::state_vector(&*self.0.borrow())
                }
                fn diff(
                    &self,
                    state_vector: ::std::vec::Vec<u8>,
                ) -> ::core::result::Result<::std::vec::Vec<u8>, $crate::MergeError> {
                    <$ty as $crate::Document>::diff(&*self.0.borrow(), &state_vector)
                }
            }

            export!(Export);
        }
    };
}
