//! lockd's integration tests: the real binary, over real sockets.

mod auth;
mod browser;
mod cli;
mod cluster_core;
mod compat;
mod concurrency;
mod connections;
mod contrib;
mod crash;
mod embed;
mod etcd_client;
mod etcd_cluster;
mod faults;
mod fencing;
mod hostile;
mod jco;
mod legacy;
mod limits;
mod names;
mod observability;
mod protocol;
mod restart;
mod run;
mod shutdown;
mod storage;
mod support;
