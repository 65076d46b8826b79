//! ringlb: a Layer-4 TCP load balancer on io_uring, one worker per core.

pub mod admin;
pub mod app;
pub mod autoscale;
pub mod balancer;
pub mod choices;
pub mod cli;
pub mod config;
pub mod control;
pub mod files;
pub mod health;
pub mod listener;
pub mod load;
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
