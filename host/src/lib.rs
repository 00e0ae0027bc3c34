//! lockd: a lock daemon for fencing, a drop-in successor of gocept.lockd.
//!
//! The lock semantics live in a WebAssembly component (`guest/`, exporting
//! `wit/lockd.wit`); this crate embeds it with wasmtime ([`Lockd`]) and
//! serves it as XML-RPC over HTTP ([`http::serve`], [`rpc::handle`]).

mod acceptor;
pub mod auth;
mod backend;
pub mod bench;
pub mod cli;
pub mod client;
pub mod cluster;
mod commit;
pub mod component;
mod error;
pub mod etcd;
pub mod failover;
mod gate;
mod guard;
pub mod http;
mod locks;
pub mod metrics;
mod pool_keeper;
mod pyrepr;
mod requests;
pub mod reserve;
pub mod rpc;
pub mod socket;
mod time;
pub mod tls;
pub mod xmlrpc;

pub use component::COMPONENT_WASM;
pub use error::{LockError, code};
pub use guard::GUARD_FILE;
pub use locks::{Acquire, Durability, Lock, Lockd, OpenReport, Options};
