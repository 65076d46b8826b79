//! Maglev consistent hashing (Eisenbud et al., NSDI 2016).
//!
//! The table has a prime number of slots, each naming a target. It is built
//! from the targets sorted by address, so two ringlb processes given the same
//! targets (in any file order) build the same table and send a client to the
//! same target without talking to each other. Weights use the cumulative-turn
//! rule: in every round the heaviest target claims one slot and a target of
//! weight w claims w/max of one, carried over between rounds.
//!
//! A pick hashes the client address with crc32 and reads its slot; a target
//! that may not be used (tried already, or, later, unhealthy or draining) is
//! stepped over to the next slot, so readiness changes never rebuild the table
//! and clients of healthy targets keep their target.

use std::net::{IpAddr, SocketAddr};

use crate::choices::HashKey;

/// Slots in the table: prime, and large enough that 1,000 targets still get
/// about 65 slots each.
pub const TABLE_SIZE: usize = 65_537;

/// Slots a pick steps over before it looks at the targets one by one.
pub const STEPS: usize = 64;

#[derive(Debug)]
pub struct Maglev {
    /// Target index (into the group's target list) for every slot; empty when
    /// the group has no targets.
    table: Vec<u32>,
    key: HashKey,
    /// Target indices in address order, and each index's place in it.
    by_addr: Vec<usize>,
    rank: Vec<usize>,
}

fn addr_bytes(addr: &SocketAddr, with_port: bool, out: &mut [u8; 18]) -> usize {
    let n = match addr.ip() {
        IpAddr::V4(ip) => {
            out[..4].copy_from_slice(&ip.octets());
            4
        }
        IpAddr::V6(ip) => {
            // An IPv4 client seen through an IPv6 socket hashes as itself.
            match ip.to_ipv4_mapped() {
                Some(v4) => {
                    out[..4].copy_from_slice(&v4.octets());
                    4
                }
                None => {
                    out[..16].copy_from_slice(&ip.octets());
                    16
                }
            }
        }
    };
    if with_port {
        out[n..n + 2].copy_from_slice(&addr.port().to_be_bytes());
        n + 2
    } else {
        n
    }
}

fn crc(seed: u32, bytes: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new_with_initial(seed);
    h.update(bytes);
    h.finalize()
}

/// The hash of a client address under `key`.
pub fn hash_client(addr: &SocketAddr, key: HashKey) -> u32 {
    let mut buf = [0u8; 18];
    let n = addr_bytes(addr, key == HashKey::SourceIpPort, &mut buf);
    crc(0, &buf[..n])
}

impl Maglev {
    /// Builds the table for `targets` (address, weight), in any order.
    pub fn new(targets: &[(SocketAddr, u32)], key: HashKey) -> Maglev {
        let mut by_addr: Vec<usize> = (0..targets.len()).collect();
        by_addr.sort_by_key(|&i| targets[i].0);
        let mut rank = vec![0; targets.len()];
        for (place, &i) in by_addr.iter().enumerate() {
            rank[i] = place;
        }
        Maglev {
            table: build_table(targets, TABLE_SIZE),
            key,
            by_addr,
            rank,
        }
    }

    /// The target for `client`, stepping past slots whose target `usable`
    /// rejects: up to [`STEPS`] slots, then each target once, in address
    /// order from the one in the client's slot (deterministic, so every
    /// instance still agrees). `None` when no target is usable; never more
    /// than `STEPS + targets` looks.
    pub fn pick_by(&self, client: &SocketAddr, usable: impl Fn(usize) -> bool) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        let len = self.table.len();
        let start = hash_client(client, self.key) as usize % len;
        if let Some(i) = (0..STEPS.min(len))
            .map(|step| self.table[(start + step) % len] as usize)
            .find(|&i| usable(i))
        {
            return Some(i);
        }
        let n = self.by_addr.len();
        let first = self.rank[self.table[start] as usize];
        (1..n)
            .map(|d| self.by_addr[(first + d) % n])
            .find(|&i| usable(i))
    }

    /// Slots owned by each target index (for tests).
    pub fn slot_counts(&self, targets: usize) -> Vec<usize> {
        let mut counts = vec![0; targets];
        for &t in &self.table {
            counts[t as usize] += 1;
        }
        counts
    }

    /// Slots whose target address differs between two tables over `a` and `b`
    /// (all of them when either table is empty).
    pub fn slots_moved(
        a: &Maglev,
        a_targets: &[SocketAddr],
        b: &Maglev,
        b_targets: &[SocketAddr],
    ) -> usize {
        if a.table.is_empty() || b.table.is_empty() {
            return a.table.len().max(b.table.len());
        }
        a.table
            .iter()
            .zip(&b.table)
            .filter(|(x, y)| a_targets[**x as usize] != b_targets[**y as usize])
            .count()
    }
}

impl super::Balance for Maglev {
    fn pick(&self, client: &SocketAddr, targets: &dyn super::Candidates) -> Option<usize> {
        self.pick_by(client, |i| targets.usable(i))
    }

    fn moved_from(
        &self,
        targets: &[SocketAddr],
        old: &dyn super::Balance,
        old_targets: &[SocketAddr],
    ) -> Option<u64> {
        let old = old.as_any().downcast_ref::<Maglev>()?;
        Some(Maglev::slots_moved(old, old_targets, self, targets) as u64)
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Fills a table of `size` (prime) slots. Returns indices into `targets`.
pub fn build_table(targets: &[(SocketAddr, u32)], size: usize) -> Vec<u32> {
    if targets.is_empty() {
        return Vec::new();
    }
    // Stable identity and order: sort by address, remember the caller's index.
    let mut order: Vec<usize> = (0..targets.len()).collect();
    order.sort_by_key(|&i| targets[i].0);
    let perms: Vec<(usize, usize)> = order
        .iter()
        .map(|&i| {
            let mut buf = [0u8; 18];
            let n = addr_bytes(&targets[i].0, true, &mut buf);
            let offset = crc(0x6d61_676c, &buf[..n]) as usize % size; // "magl"
            let skip = crc(0x6576_3031, &buf[..n]) as usize % (size - 1) + 1; // "ev01"
            (offset, skip)
        })
        .collect();
    let max_weight = order
        .iter()
        .map(|&i| targets[i].1)
        .max()
        .unwrap_or(1)
        .max(1) as u64;
    let mut next = vec![0usize; order.len()]; // position in each target's permutation
    // Every target starts one turn short of a slot, so the first round gives
    // each its first slot: a target whose weight share is under one slot is
    // still reachable (when it is the only usable one, say).
    let mut credit: Vec<u64> = order
        .iter()
        .map(|&i| max_weight - u64::from(targets[i].1).min(max_weight))
        .collect();
    let mut table = vec![u32::MAX; size];
    let mut filled = 0;
    while filled < size {
        for (k, &i) in order.iter().enumerate() {
            credit[k] += u64::from(targets[i].1);
            while credit[k] >= max_weight && filled < size {
                credit[k] -= max_weight;
                let (offset, skip) = perms[k];
                loop {
                    let slot = (offset + next[k] * skip) % size;
                    next[k] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
            }
            if filled == size {
                break;
            }
        }
    }
    table
}

#[cfg(test)]
mod tests;
