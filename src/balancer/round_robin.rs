//! Weighted round robin that is exact and smooth, with a build linear in the
//! number of targets and a pick that does not grow with the weights.
//!
//! Each target owns a range of "positions", as long as its weight (divided by
//! the weights' common divisor), laid end to end: `W` positions in all. The
//! k-th pick visits position `k * s mod W`, where the stride `s` is the whole
//! number nearest `W / φ` (φ the golden ratio) that shares no divisor with
//! `W`. Over any `W` consecutive picks each position comes up exactly once,
//! so counts are exact per cycle; and golden-ratio strides spread the visits
//! of every range evenly over the cycle (the three-distance theorem), so a
//! heavy target's turns are interleaved with the others' instead of coming
//! in a block: weights 5,1,1 visit `a a a b a c a`, not `a a a a a b c`.
//! Equal weights rotate in order (`s = 1`).
//!
//! The schedule is never materialised: 10,000 targets with weights up to
//! 1,000 cost two `u64`s per target, and a pick is one shared counter
//! increment and a binary search.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Positions a pick tries before it scans the targets one by one.
const TRIES: usize = 4;

#[derive(Debug)]
pub struct RoundRobin {
    /// End of each target's range of positions (exclusive), ascending.
    ends: Vec<u64>,
    /// Stride between the positions of consecutive picks.
    stride: u64,
    /// Shared by every worker (and kept across reloads) so counts are exact
    /// whichever core accepted the connection.
    next: Arc<AtomicUsize>,
}

impl RoundRobin {
    pub fn new(weights: &[u32], next: Arc<AtomicUsize>) -> Self {
        let g = weights.iter().copied().fold(0, gcd).max(1);
        let mut total = 0u64;
        let ends: Vec<u64> = weights
            .iter()
            .map(|&w| {
                total += u64::from(w / g);
                total
            })
            .collect();
        let equal = weights.iter().all(|&w| w == weights[0]);
        RoundRobin {
            stride: if equal { 1 } else { golden_stride(total) },
            ends,
            next,
        }
    }

    /// The target at the k-th pick.
    fn at(&self, k: usize) -> usize {
        let total = *self.ends.last().expect("non-empty");
        let pos = (k as u64 % total) * self.stride % total;
        self.ends.partition_point(|&end| end <= pos)
    }

    /// The next target that `usable` accepts. Tries a few positions of the
    /// sequence, then every target once: never more than `targets + 4` looks,
    /// whatever the weights.
    pub fn pick_by(&self, usable: impl Fn(usize) -> bool) -> Option<usize> {
        let n = self.ends.len();
        if n == 0 {
            return None;
        }
        let k = self.next.fetch_add(1, Ordering::Relaxed);
        if let Some(i) = (0..TRIES)
            .map(|t| self.at(k.wrapping_add(t)))
            .find(|&i| usable(i))
        {
            return Some(i);
        }
        let first = self.at(k);
        (1..n).map(|d| (first + d) % n).find(|&i| usable(i))
    }
}

impl super::Balance for RoundRobin {
    fn pick(&self, _client: &SocketAddr, targets: &dyn super::Candidates) -> Option<usize> {
        self.pick_by(|i| targets.usable(i))
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

fn gcd64(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd64(b, a % b) }
}

/// The whole number nearest `total / φ` that is coprime with `total` (so the
/// stride visits every position once per cycle).
fn golden_stride(total: u64) -> u64 {
    if total <= 2 {
        return 1;
    }
    let ideal = (total as f64 / 1.618_033_988_749_895).round() as u64;
    (0..total)
        .flat_map(|d| [ideal.saturating_add(d), ideal.saturating_sub(d)])
        .find(|&s| s >= 1 && s < total && gcd64(s, total) == 1)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::balancer::Tried;

    fn counts(rr: &RoundRobin, n: usize, targets: usize) -> Vec<usize> {
        let mut c = vec![0; targets];
        for _ in 0..n {
            c[rr.pick_by(|_| true).unwrap()] += 1;
        }
        c
    }

    fn sequence(weights: &[u32], n: usize) -> Vec<usize> {
        let rr = RoundRobin::new(weights, Arc::default());
        (0..n).map(|_| rr.pick_by(|_| true).unwrap()).collect()
    }

    #[test]
    fn equal_weights_give_exact_turns_in_order() {
        assert_eq!(sequence(&[1, 1, 1], 6), vec![0, 1, 2, 0, 1, 2]);
        let rr = RoundRobin::new(&[1, 1, 1], Arc::default());
        assert_eq!(counts(&rr, 300, 3), vec![100, 100, 100]);
    }

    #[test]
    fn weighted_is_exact_per_cycle_and_smooth() {
        assert_eq!(sequence(&[5, 1, 1], 7), vec![0, 0, 0, 1, 0, 2, 0]);
        let rr = RoundRobin::new(&[1, 2, 3], Arc::default());
        assert_eq!(counts(&rr, 600, 3), vec![100, 200, 300]);
        // Smooth: with weights 10 and 1..1 (ten of them), the heavy target
        // never gets more than 2 turns in a row.
        let mut w = vec![10];
        w.extend([1; 10]);
        let s = sequence(&w, 20 * 5);
        let longest = s
            .chunk_by(|a, b| a == b && *a == 0)
            .map(<[usize]>::len)
            .max()
            .unwrap();
        assert!(longest <= 2, "{s:?}");
    }

    #[test]
    fn every_cycle_visits_every_position_once() {
        for weights in [vec![3, 5, 7], vec![1000, 1, 999, 2], vec![2, 4, 6, 8]] {
            let rr = RoundRobin::new(&weights, Arc::default());
            let g = weights.iter().copied().fold(0, gcd);
            let total: u32 = weights.iter().map(|w| w / g).sum();
            let c = counts(&rr, total as usize * 3, weights.len());
            let want: Vec<usize> = weights.iter().map(|w| (w / g) as usize * 3).collect();
            assert_eq!(c, want, "{weights:?}");
        }
    }

    #[test]
    fn ten_thousand_heavy_targets_build_fast_and_pick_in_bounded_steps() {
        let weights: Vec<u32> = (0..10_000).map(|i| 1 + (i * 7919) % 1000).collect();
        let start = std::time::Instant::now();
        let rr = RoundRobin::new(&weights, Arc::default());
        println!(
            "10,000 targets, weights 1-1000: built in {:?}",
            start.elapsed()
        );
        let looks = std::cell::Cell::new(0);
        assert_eq!(
            rr.pick_by(|_| {
                looks.set(looks.get() + 1);
                false
            }),
            None
        );
        assert!(looks.get() <= 10_000 + TRIES, "{} looks", looks.get());
    }

    #[test]
    fn tried_targets_are_skipped() {
        let rr = RoundRobin::new(&[1, 1, 1], Arc::default());
        let mut tried = Tried::default();
        tried.push(0);
        tried.push(1);
        for _ in 0..5 {
            assert_eq!(rr.pick_by(|i| !tried.contains(i)), Some(2));
        }
        tried.push(2);
        assert_eq!(rr.pick_by(|i| !tried.contains(i)), None);
        assert_eq!(RoundRobin::new(&[], Arc::default()).pick_by(|_| true), None);
    }
}
