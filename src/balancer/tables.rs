//! Each group's table, kept across snapshots while its algorithm and targets
//! stay the same (a health flip publishes a new snapshot, never a new table),
//! and each group's rotation position, kept across rebuilds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;

use super::{Algorithm, Balance};

#[derive(Debug, Default)]
pub struct Tables {
    rotation: HashMap<String, Arc<AtomicUsize>>,
    built: HashMap<String, Built>,
    /// Slots moved by each consistent-hashing group's last rebuild.
    pub moved: HashMap<String, u64>,
}

/// A table and what it was built from.
#[derive(Debug)]
struct Built {
    algorithm: Algorithm,
    targets: Vec<(SocketAddr, u32)>,
    table: Arc<dyn Balance>,
}

impl Tables {
    /// The group's table: the one built before if the algorithm and the
    /// targets (with weights, in order) are unchanged, else a new build.
    pub fn get(
        &mut self,
        group: &str,
        algorithm: Algorithm,
        targets: &[(SocketAddr, u32)],
    ) -> Arc<dyn Balance> {
        if let Some(b) = self.built.get(group)
            && b.algorithm == algorithm
            && b.targets == targets
        {
            return b.table.clone();
        }
        let rotation = self.rotation.entry(group.to_string()).or_default().clone();
        let table = algorithm.build(targets, rotation);
        if let Some(old) = self.built.get(group) {
            let addrs = |t: &[(SocketAddr, u32)]| t.iter().map(|p| p.0).collect::<Vec<_>>();
            let moved = table.moved_from(&addrs(targets), &*old.table, &addrs(&old.targets));
            if let Some(moved) = moved {
                self.moved.insert(group.to_string(), moved);
            }
        }
        self.built.insert(
            group.to_string(),
            Built {
                algorithm,
                targets: targets.to_vec(),
                table: table.clone(),
            },
        );
        table
    }

    /// Forgets the tables of groups that `keep` does not name.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.built.retain(|name, _| keep(name));
    }
}
