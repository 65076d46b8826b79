//! Weighted round robin that is smooth (nginx's algorithm): weights 5,1,1 give
//! a a b a c a a, not a a a a a b c. The sequence is computed once per target
//! set; a pick is one shared counter increment and an index.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Debug)]
pub struct RoundRobin {
    /// Target indices in visiting order; each target appears `weight / gcd` times.
    schedule: Vec<u32>,
    /// Shared by every worker (and kept across reloads) so counts are exact
    /// whichever core accepted the connection.
    next: Arc<AtomicUsize>,
}

impl RoundRobin {
    pub fn new(weights: &[u32], next: Arc<AtomicUsize>) -> Self {
        RoundRobin {
            schedule: smooth_schedule(weights),
            next,
        }
    }

    /// Next target in the schedule that `usable` accepts.
    pub fn pick(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let len = self.schedule.len();
        if len == 0 {
            return None;
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..len)
            .map(|step| self.schedule[(start + step) % len] as usize)
            .find(|&i| usable(i))
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// The smooth weighted round-robin sequence for `weights` (nginx, "smooth
/// weighted round-robin balancing"), reduced by the weights' common divisor.
pub fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let g = weights.iter().copied().fold(0, gcd).max(1);
    let w: Vec<i64> = weights.iter().map(|&x| i64::from(x / g)).collect();
    let total: i64 = w.iter().sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i];
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::Tried;

    fn counts(rr: &RoundRobin, n: usize, targets: usize) -> Vec<usize> {
        let mut c = vec![0; targets];
        for _ in 0..n {
            c[rr.pick(|_| true).unwrap()] += 1;
        }
        c
    }

    #[test]
    fn equal_weights_give_exact_turns() {
        let rr = RoundRobin::new(&[1, 1, 1], Arc::default());
        let seq: Vec<usize> = (0..6).map(|_| rr.pick(|_| true).unwrap()).collect();
        assert_eq!(seq, vec![0, 1, 2, 0, 1, 2]);
        assert_eq!(counts(&rr, 300, 3), vec![100, 100, 100]);
    }

    #[test]
    fn weighted_is_exact_and_smooth() {
        assert_eq!(smooth_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        let rr = RoundRobin::new(&[1, 2, 3], Arc::default());
        assert_eq!(counts(&rr, 600, 3), vec![100, 200, 300]);
        // Smooth: the heaviest target never gets more than 2 turns in a row here.
        let s = smooth_schedule(&[1, 2, 3]);
        assert_eq!(s, vec![2, 1, 0, 2, 1, 2]);
    }

    #[test]
    fn common_divisor_is_reduced() {
        assert_eq!(smooth_schedule(&[200, 400]).len(), 3);
    }

    #[test]
    fn tried_targets_are_skipped() {
        let rr = RoundRobin::new(&[1, 1, 1], Arc::default());
        let mut tried = Tried::default();
        tried.push(0);
        tried.push(1);
        for _ in 0..5 {
            assert_eq!(rr.pick(|i| !tried.contains(i)), Some(2));
        }
        tried.push(2);
        assert_eq!(rr.pick(|i| !tried.contains(i)), None);
        assert_eq!(RoundRobin::new(&[], Arc::default()).pick(|_| true), None);
    }
}
