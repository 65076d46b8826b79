//! ringlb: a Layer-4 TCP load balancer on io_uring, one worker per core.

pub mod config;
pub mod targets;
