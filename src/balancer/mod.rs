//! Target selection: one trait, [`Balance`], and one file per algorithm.
//!
//! A table is built off the hot path, on the control plane, when a group's
//! algorithm, targets or weights change ([`Algorithm::build`], cached across
//! snapshots by [`Tables`]). `pick` runs per connection on the workers and
//! only reads it; what a pick may know about the targets right now
//! (readiness, caps, open connections) comes through [`Candidates`].
//!
//! A new algorithm is a file here implementing [`Balance`], a variant of
//! [`Algorithm`] with its arm in [`Algorithm::build`], and its word in the
//! config's `ALGORITHMS` table (`src/config/mod.rs`).

mod least_connections;
pub mod maglev;
mod round_robin;
mod tables;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

pub use crate::choices::{Algorithm, HashKey};
pub use least_connections::LeastConnections;
pub use maglev::Maglev;
pub use round_robin::RoundRobin;
pub use tables::Tables;

/// A group's targets as one pick sees them, by index in targets-file order.
pub trait Candidates {
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Whether target `i` may take this connection: ready (or the group
    /// fails open), not tried already for this client, under its cap.
    fn usable(&self, i: usize) -> bool;
    /// Target `i`'s open connections (across workers) and weight.
    fn load(&self, i: usize) -> (u64, u32);
}

/// A built balancing table.
pub trait Balance: std::fmt::Debug + Send + Sync {
    /// The target for `client`'s next connect attempt, among the usable
    /// ones; `None` when none is. Bounded work, whatever the weights.
    fn pick(&self, client: &SocketAddr, targets: &dyn Candidates) -> Option<usize>;

    /// For consistent hashing: how many clients' places changed against the
    /// table this one replaces (`old`, built for `old_targets`), as a count
    /// of table slots. `None` for algorithms without fixed places.
    fn moved_from(
        &self,
        _targets: &[SocketAddr],
        _old: &dyn Balance,
        _old_targets: &[SocketAddr],
    ) -> Option<u64> {
        None
    }

    fn as_any(&self) -> &dyn std::any::Any;
}

impl Algorithm {
    /// Builds the table for `targets` (address and weight, in targets-file
    /// order). `rotation` is the group's shared position, kept across
    /// rebuilds so a reload does not restart the rotation.
    pub fn build(
        self,
        targets: &[(SocketAddr, u32)],
        rotation: Arc<AtomicUsize>,
    ) -> Arc<dyn Balance> {
        match self {
            Algorithm::RoundRobin => {
                let weights: Vec<u32> = targets.iter().map(|t| t.1).collect();
                Arc::new(RoundRobin::new(&weights, rotation))
            }
            Algorithm::LeastConnections => Arc::new(LeastConnections::new(rotation)),
            Algorithm::Maglev(key) => Arc::new(Maglev::new(targets, key)),
        }
    }

    /// Whether a group using it can take `n` targets (a Maglev table has one
    /// slot per target at the least); the reason when it cannot.
    pub fn fits(self, n: usize) -> Result<(), String> {
        match self {
            Algorithm::Maglev(_) if n > maglev::TABLE_SIZE => Err(format!(
                "{n} targets: a maglev group takes at most {} (one per table slot)",
                maglev::TABLE_SIZE
            )),
            _ => Ok(()),
        }
    }
}

/// Targets a pick must not return: the ones already tried for this client.
/// A retry loop tries at most `connect_retries + 1` targets, so a few slots do.
#[derive(Debug, Default)]
pub struct Tried {
    idx: Vec<u32>,
}

impl Tried {
    pub fn with_capacity(n: usize) -> Self {
        Tried {
            idx: Vec::with_capacity(n),
        }
    }
    pub fn contains(&self, i: usize) -> bool {
        self.idx.contains(&(i as u32))
    }
    pub fn push(&mut self, i: usize) {
        self.idx.push(i as u32);
    }
    pub fn len(&self) -> usize {
        self.idx.len()
    }
    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }
}
