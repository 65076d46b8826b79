//! The one immutable value the control plane publishes and workers read.
//!
//! A worker loads the snapshot once per accepted connection, copies out what the
//! connection needs, and never holds it across I/O. A new snapshot replaces the
//! old one with a single swap.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::balancer::{RoundRobin, Tried};
use crate::config::{Algorithm, Config};
use crate::targets::Target;

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

#[derive(Debug)]
pub struct Snapshot {
    /// Bumped on every publication; logs and metrics name it.
    pub epoch: u64,
    /// Indexed like `Config::groups`.
    pub groups: Vec<GroupSnapshot>,
}

#[derive(Debug)]
pub struct GroupSnapshot {
    pub name: String,
    pub targets: Vec<Target>,
    pub balancer: Balancer,
    pub connect_timeout: Duration,
    pub connect_retries: u32,
    pub idle_timeout: Duration,
}

#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
}

impl GroupSnapshot {
    /// The target for the next attempt of a connection, skipping those tried.
    pub fn pick(&self, tried: &Tried) -> Option<usize> {
        match &self.balancer {
            Balancer::RoundRobin(rr) => rr.pick(tried),
        }
    }
}

/// State that outlives any one snapshot, keyed by group name: the round-robin
/// position, so a reload does not restart every group at its first target.
#[derive(Debug, Default)]
pub struct Carry {
    rr_next: HashMap<String, Arc<AtomicUsize>>,
}

/// Builds a snapshot from a validated config and each group's targets.
pub fn build(epoch: u64, config: &Config, targets: &[Vec<Target>], carry: &mut Carry) -> Snapshot {
    let groups = config
        .groups
        .iter()
        .zip(targets)
        .map(|(g, t)| {
            let weights: Vec<u32> = t.iter().map(|t| t.weight).collect();
            let balancer = match g.algorithm {
                Algorithm::RoundRobin => {
                    let next = carry.rr_next.entry(g.name.clone()).or_default().clone();
                    Balancer::RoundRobin(RoundRobin::new(&weights, next))
                }
            };
            GroupSnapshot {
                name: g.name.clone(),
                targets: t.clone(),
                balancer,
                connect_timeout: g.connect_timeout,
                connect_retries: g.connect_retries,
                idle_timeout: g.idle_timeout,
            }
        })
        .collect();
    Snapshot { epoch, groups }
}

/// Addresses in a group, for logs.
pub fn describe(targets: &[Target]) -> String {
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    format!("{addrs:?}")
}
