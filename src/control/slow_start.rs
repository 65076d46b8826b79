//! Slow start: a target entering service gets a share that grows linearly
//! from almost nothing to its full weight over the group's `slow_start`
//! window, as AWS target groups' `slow_start.duration_seconds` and HAProxy's
//! `slowstart` do, so a cold server (JIT, caches, pools) is not flooded.
//!
//! Computed at publication, off the hot path: a group with slow start has
//! its weights scaled by [`SCALE`] in the snapshot (so a ramp has a hundred
//! steps per unit of weight), a ramping target's weight is its share of that,
//! and while any target ramps the core publishes a new snapshot every
//! [`step`] (a thirtieth of the window, at least a second). Picks stay as they
//! were: round robin and least connections read the weights they are given.
//!
//! Which targets ramp: one that becomes ready (healthy, newly listed or
//! back from unhealthy) while another target of its group is ready and not
//! ramping itself. A group with nothing else to take the load (all new, or
//! every other target down) starts its targets at full weight, as AWS does.
//! A target that stops being ready leaves its ramp; when it comes back it
//! ramps again. A pure core: the caller passes the time.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Weights of a group with slow start are this many times their file's.
pub const SCALE: u32 = 100;

/// How often a ramping group's weights are republished.
pub fn step(window: Duration) -> Duration {
    (window / 30).max(Duration::from_secs(1))
}

/// A target as one publication sees it.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    pub addr: SocketAddr,
    pub weight: u32,
    pub ready: bool,
}

/// A target's weight for picks, and when its ramp ends (if it ramps).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub weight: u32,
    pub until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct SlowStart {
    /// Ramping targets: when each entered service.
    since: HashMap<(Arc<str>, SocketAddr), Instant>,
    /// Targets ready at the last publication.
    ready: HashSet<(Arc<str>, SocketAddr)>,
    /// When the next step of a ramp is due.
    next: Option<Instant>,
}

impl SlowStart {
    /// The weights to publish for `group`'s targets at `now`, in order.
    /// `window` is the group's `slow_start` (`None`: off, weights as written).
    pub fn shares(
        &mut self,
        group: &Arc<str>,
        window: Option<Duration>,
        targets: &[Seen],
        now: Instant,
    ) -> Vec<Share> {
        let Some(window) = window else {
            self.since.retain(|(g, _), _| g != group);
            self.ready.retain(|(g, _)| g != group);
            return targets
                .iter()
                .map(|t| Share {
                    weight: t.weight,
                    until: None,
                })
                .collect();
        };
        let key = |t: &Seen| (group.clone(), t.addr);
        // Ramps end when their window has passed or their target is not ready.
        let ready_now: HashSet<SocketAddr> =
            targets.iter().filter(|t| t.ready).map(|t| t.addr).collect();
        self.since.retain(|(g, a), since| {
            g != group || (ready_now.contains(a) && now.duration_since(*since) < window)
        });
        let established = targets
            .iter()
            .any(|t| t.ready && self.ready.contains(&key(t)) && !self.since.contains_key(&key(t)));
        for t in targets.iter().filter(|t| t.ready) {
            if established && !self.ready.contains(&key(t)) {
                self.since.insert(key(t), now);
            }
        }
        self.ready.retain(|(g, _)| g != group);
        self.ready.extend(
            targets
                .iter()
                .filter(|t| t.ready)
                .map(|t| (group.clone(), t.addr)),
        );
        let ramping = targets.iter().any(|t| self.since.contains_key(&key(t)));
        if ramping {
            let at = now + step(window);
            self.next = Some(self.next.map_or(at, |n| n.min(at)));
        }
        targets
            .iter()
            .map(|t| {
                let full = t.weight.saturating_mul(SCALE);
                match self.since.get(&key(t)) {
                    Some(&since) => {
                        let part = now.duration_since(since).as_secs_f64() / window.as_secs_f64();
                        Share {
                            weight: ((f64::from(full) * part) as u32).clamp(1, full.max(1)),
                            until: Some(since + window),
                        }
                    }
                    None => Share {
                        weight: full,
                        until: None,
                    },
                }
            })
            .collect()
    }

    /// When the next step of a ramp is to be published, if one ramps.
    pub fn due(&self) -> Option<Instant> {
        self.next
    }

    /// A publication is being built: the step it was due for is taken.
    pub fn publishing(&mut self) {
        self.next = None;
    }

    /// Forgets groups that are gone.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.since.retain(|(g, _), _| keep(g));
        self.ready.retain(|(g, _)| keep(g));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(n: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 6400 + n))
    }

    fn seen(ready: &[bool]) -> Vec<Seen> {
        ready
            .iter()
            .enumerate()
            .map(|(i, &ready)| Seen {
                addr: a(i as u16),
                weight: 1,
                ready,
            })
            .collect()
    }

    const W: Duration = Duration::from_secs(30);

    #[test]
    fn a_target_joining_established_ones_ramps_linearly_over_the_window() {
        let (mut s, g, t0) = (SlowStart::default(), Arc::from("web"), Instant::now());
        let w = |s: &mut SlowStart, ready: &[bool], at: u64| -> Vec<u32> {
            s.shares(&g, Some(W), &seen(ready), t0 + Duration::from_secs(at))
                .iter()
                .map(|x| x.weight)
                .collect()
        };
        assert_eq!(w(&mut s, &[true, true, false], 0), [100, 100, 100]);
        assert_eq!(s.due(), None, "nothing ramps");
        assert_eq!(w(&mut s, &[true, true, true], 10), [100, 100, 1]);
        assert_eq!(
            s.due(),
            Some(t0 + Duration::from_secs(11)),
            "a step a second"
        );
        s.publishing();
        assert_eq!(w(&mut s, &[true, true, true], 25), [100, 100, 50]);
        assert_eq!(w(&mut s, &[true, true, true], 37), [100, 100, 90]);
        let end = s.shares(&g, Some(W), &seen(&[true; 3]), t0 + Duration::from_secs(39));
        assert_eq!(end[2].until, Some(t0 + Duration::from_secs(40)));
        s.publishing();
        assert_eq!(w(&mut s, &[true, true, true], 40), [100, 100, 100]);
        assert_eq!(s.due(), None, "the ramp is over");
    }

    #[test]
    fn a_group_with_nothing_else_to_take_the_load_starts_at_full_weight() {
        let (mut s, g, t0) = (SlowStart::default(), Arc::from("web"), Instant::now());
        // All new at once.
        let all = s.shares(&g, Some(W), &seen(&[true, true]), t0);
        assert!(all.iter().all(|x| x.weight == 100 && x.until.is_none()));
        // The only other target is down: the one coming back takes it all.
        s.shares(&g, Some(W), &seen(&[false, true]), t0 + W);
        s.shares(&g, Some(W), &seen(&[false, false]), t0 + W * 2);
        let back = s.shares(&g, Some(W), &seen(&[true, false]), t0 + W * 3);
        assert_eq!(back[0].weight, 100);
        assert_eq!(s.due(), None);
    }

    #[test]
    fn a_target_that_goes_down_leaves_its_ramp_and_ramps_again_when_back() {
        let (mut s, g, t0) = (SlowStart::default(), Arc::from("web"), Instant::now());
        let at = |n: u64| t0 + Duration::from_secs(n);
        s.shares(&g, Some(W), &seen(&[true, false]), at(0));
        assert_eq!(
            s.shares(&g, Some(W), &seen(&[true, true]), at(1))[1].weight,
            1
        );
        let down = s.shares(&g, Some(W), &seen(&[true, false]), at(16));
        assert_eq!(down[1].until, None);
        let back = s.shares(&g, Some(W), &seen(&[true, true]), at(20));
        assert_eq!((back[1].weight, back[1].until), (1, Some(at(50))));
        // A group without slow start: the file's weights, unscaled.
        let off = s.shares(&g, None, &seen(&[true, true]), at(21));
        assert_eq!(off.iter().map(|x| x.weight).collect::<Vec<_>>(), [1, 1]);
    }

    #[test]
    fn weights_scale_and_a_ramp_never_gives_zero() {
        let (mut s, g, t0) = (SlowStart::default(), Arc::from("web"), Instant::now());
        let mut t = seen(&[true, false]);
        t[0].weight = 3;
        t[1].weight = 2;
        assert_eq!(s.shares(&g, Some(W), &t, t0)[0].weight, 300);
        t[1].ready = true;
        let now = s.shares(&g, Some(W), &t, t0 + Duration::from_millis(1));
        assert_eq!(now[1].weight, 1, "the smallest share, never none");
        let half = s.shares(&g, Some(W), &t, t0 + Duration::from_millis(15_001));
        assert_eq!(half[1].weight, 100);
        assert_eq!(step(Duration::from_secs(900)), Duration::from_secs(30));
    }
}
