//! Least connections, weighted: the target with the smallest
//! `(active + 1) / weight` gets the next connection. Active counts are shared
//! by every worker (one atomic per target, kept by address across reloads), so
//! a connection accepted on any core counts. Ties are broken by starting the
//! scan at a rotating position, not always at the first target.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct LeastConnections {
    /// Where the next scan starts; shared across workers and reloads.
    next: Arc<AtomicUsize>,
}

impl LeastConnections {
    pub fn new(next: Arc<AtomicUsize>) -> Self {
        LeastConnections { next }
    }

    /// `load(i)` gives target i's (active connections, weight); `usable(i)`
    /// says whether it may be picked.
    pub fn pick_by(
        &self,
        n: usize,
        load: impl Fn(usize) -> (u64, u32),
        usable: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        if n == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let mut best: Option<(usize, u64, u64)> = None;
        for step in 0..n {
            let i = (start + step) % n;
            if !usable(i) {
                continue;
            }
            let (active, weight) = load(i);
            let (a, w) = (active + 1, u64::from(weight.max(1)));
            // a / w < best_a / best_w, without division.
            if best.is_none_or(|(_, ba, bw)| a * bw < ba * w) {
                best = Some((i, a, w));
            }
        }
        best.map(|(i, _, _)| i)
    }
}

impl super::Balance for LeastConnections {
    fn pick(&self, _client: &SocketAddr, targets: &dyn super::Candidates) -> Option<usize> {
        self.pick_by(targets.len(), |i| targets.load(i), |i| targets.usable(i))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// Opens `n` connections one by one, counting each pick as active.
    fn fill(lc: &LeastConnections, weights: &[u32], active: &RefCell<Vec<u64>>, n: usize) {
        for _ in 0..n {
            let i = lc
                .pick_by(
                    weights.len(),
                    |i| (active.borrow()[i], weights[i]),
                    |_| true,
                )
                .unwrap();
            active.borrow_mut()[i] += 1;
        }
    }

    #[test]
    fn equal_weights_stay_within_one_and_ties_rotate() {
        let lc = LeastConnections::new(Arc::default());
        let active = RefCell::new(vec![0u64; 3]);
        let mut firsts = std::collections::HashSet::new();
        for _ in 0..3 {
            let i = lc.pick_by(3, |_| (0, 1), |_| true).unwrap();
            firsts.insert(i);
        }
        assert_eq!(
            firsts.len(),
            3,
            "ties at zero load rotate over every target"
        );
        fill(&lc, &[1, 1, 1], &active, 31);
        let a = active.borrow().clone();
        assert!(
            a.iter().max().unwrap() - a.iter().min().unwrap() <= 1,
            "{a:?}"
        );
    }

    #[test]
    fn weights_share_load_in_proportion() {
        let lc = LeastConnections::new(Arc::default());
        let active = RefCell::new(vec![0u64; 3]);
        fill(&lc, &[1, 2, 3], &active, 60);
        assert_eq!(*active.borrow(), vec![10, 20, 30]);
    }

    #[test]
    fn the_least_loaded_wins_and_unusable_are_skipped() {
        let lc = LeastConnections::new(Arc::default());
        let active = [5u64, 1, 3];
        for _ in 0..10 {
            assert_eq!(lc.pick_by(3, |i| (active[i], 1), |_| true), Some(1));
            assert_eq!(lc.pick_by(3, |i| (active[i], 1), |i| i != 1), Some(2));
        }
        assert_eq!(lc.pick_by(3, |i| (active[i], 1), |_| false), None);
        assert_eq!(lc.pick_by(0, |_| (0, 1), |_| true), None);
    }
}
