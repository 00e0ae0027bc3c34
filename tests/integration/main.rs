//! lockd's integration tests: the real binary, over real sockets.

mod cli;
mod compat;
mod concurrency;
mod connections;
mod fencing;
mod legacy;
mod names;
mod protocol;
mod restart;
mod run;
mod support;
