//! Target selection. Tables are built when the target set changes (control
//! plane); `pick` runs per connection on the workers and only reads them.

mod least_connections;
pub mod maglev;
mod round_robin;

pub use least_connections::LeastConnections;
pub use maglev::{HashKey, Maglev};
pub use round_robin::RoundRobin;

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
