//! TLS: on lockd's own port (the [`front`] door, terminating TLS and
//! relaying plaintext to the HTTP server), and as a client (to etcd, and
//! from the command line). rustls with ring's crypto throughout.

mod client;
mod files;
pub mod front;
mod relay;
mod server;

pub use client::{ClientFiles, Stream, Timed, time_left};
pub use front::{Front, FrontConfig, Peer, Relayed};
pub use server::{ServerFiles, ServerTls, user_of};
