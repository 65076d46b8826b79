//! ringlb: a Layer-4 TCP load balancer on io_uring, one worker per core.
//!
//! # Layout
//!
//! Two planes, one snapshot between them (`docs/how-it-works.md` walks a
//! connection through them).
//!
//! The control plane, on the main thread:
//! - [`app`]: start-up order, the main loop, signals, shutdown.
//! - [`load`] and [`config`]: the config and its targets files, by one rule
//!   set; [`targets`]: the targets file's parser and watcher;
//!   [`discovery`]: the names targets files list, looked up on a thread of
//!   their own; [`files`]: reading and replacing files safely.
//! - [`control`]: the pure core (targets, health, drains, snapshots) and the
//!   shell around it; [`health`]: the health state machine and the probes.
//! - [`admin`]: the admin endpoint; [`notify`]: systemd; [`logging`]: its
//!   own log (journal-aware); [`takeover`]: the
//!   zero-downtime upgrade's socket handover; [`access_log`]: the connection
//!   log's writer (workers hand it their lines).
//!
//! Between them: [`snapshot`], the one immutable value workers read, with
//! [`balancer`] tables, [`metrics`] counters and [`client_limits`] tables;
//! [`choices`], the closed choices both planes name.
//!
//! The data plane, one worker per core:
//! - [`worker`]: the threads, accepting, placing each connection.
//! - [`proxy`]: one connection's bytes; [`proxy_protocol`]: the PROXY header.
//! - [`rt`]: the per-core io_uring runtime and its operations ([`rt::op`]).
//! - [`listener`]: the `SO_REUSEPORT` sockets; [`oserror`]: which errors are
//!   this machine's own shortage.
//!
//! Beside them: [`autoscale`], the reference autoscaler (it uses only the
//! targets file and the admin endpoint); [`cli`], the command line.

// The developer docs (`cargo doc --document-private-items`) link private
// modules and items: the house is documented for those who change it.
#![allow(rustdoc::private_intra_doc_links)]

pub mod access_log;
pub mod admin;
pub mod app;
pub mod autoscale;
pub mod balancer;
pub mod choices;
pub mod cli;
pub mod client_limits;
pub mod config;
pub mod control;
pub mod discovery;
pub mod files;
pub mod health;
pub mod listener;
pub mod load;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod oserror;
pub mod proxy;
pub mod proxy_protocol;
pub mod rt;
pub mod snapshot;
pub mod takeover;
pub mod targets;
pub mod worker;
