//! The last 15 minutes of traffic, for the console's charts: every
//! [`SAMPLE_EVERY`], each listener's new connections per second and each
//! target's new connections and bytes per second, from the counters the
//! workers keep. Bounded whatever the size of the config: at most
//! [`MAX_LISTENERS`] listeners and [`MAX_TARGETS`] targets are charted (the
//! first by name and group order), [`POINTS`] points each, 8 bytes a point:
//! at most 460 KiB. A pure core: the caller passes the time and the totals.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often a point is taken.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(5);
/// Points kept per series: 15 minutes.
pub const POINTS: usize = 180;
/// Listeners charted at most.
pub const MAX_LISTENERS: usize = 64;
/// Targets charted at most.
pub const MAX_TARGETS: usize = 256;

/// One chart: (connections per second, bytes per second) per point, oldest
/// first.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Series {
    pub points: VecDeque<[f32; 2]>,
}

/// A listener's or target's totals at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub connections: u64,
    pub bytes: u64,
    /// Refused by reason, listeners only: not_allowed, max_connections,
    /// no_target, local_resources.
    pub refused: [u64; 4],
}

/// The reasons `Totals::refused` counts, in its order.
pub const REFUSED: [&str; 4] = [
    "not_allowed",
    "max_connections",
    "no_target",
    "local_resources",
];

/// Clients a listener refused since the last point, by reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusals {
    pub listener: String,
    pub by_reason: Vec<(&'static str, u64)>,
    pub over: Duration,
}

#[derive(Debug, Default)]
pub struct History {
    last: Option<Instant>,
    listeners: BTreeMap<String, (Series, Totals)>,
    targets: BTreeMap<(String, SocketAddr), (Series, Totals)>,
}

impl History {
    /// Whether a point is due at `now`.
    pub fn due(&self, now: Instant) -> bool {
        self.last
            .is_none_or(|l| now.saturating_duration_since(l) >= SAMPLE_EVERY)
    }

    /// Takes a point at `now` from each listener's and target's totals (in
    /// the order to chart them; those past the bounds are not kept), and
    /// says which listeners refused clients since the last point. A series
    /// gets its first point at the second sample that sees it.
    pub fn sample(
        &mut self,
        now: Instant,
        listeners: impl Iterator<Item = (String, Totals)>,
        targets: impl Iterator<Item = ((String, SocketAddr), Totals)>,
    ) -> Vec<Refusals> {
        let over = self
            .last
            .map(|l| now.saturating_duration_since(l))
            .unwrap_or_default();
        self.last = Some(now);
        let mut refusals = Vec::new();
        let wanted = listeners.take(MAX_LISTENERS).inspect(|(name, t)| {
            let Some((_, was)) = self.listeners.get(name) else {
                return;
            };
            let by_reason: Vec<(&'static str, u64)> = REFUSED
                .iter()
                .zip(t.refused.iter().zip(&was.refused))
                .map(|(r, (n, p))| (*r, n.saturating_sub(*p)))
                .filter(|(_, n)| *n > 0)
                .collect();
            if !by_reason.is_empty() {
                refusals.push(Refusals {
                    listener: name.clone(),
                    by_reason,
                    over,
                });
            }
        });
        let wanted: Vec<(String, Totals)> = wanted.collect();
        self.listeners = advance(
            std::mem::take(&mut self.listeners),
            wanted.into_iter(),
            over,
        );
        self.targets = advance(
            std::mem::take(&mut self.targets),
            targets.take(MAX_TARGETS),
            over,
        );
        refusals
    }

    pub fn listener(&self, name: &str) -> Option<&Series> {
        self.listeners.get(name).map(|(s, _)| s)
    }

    pub fn target(&self, group: &str, addr: SocketAddr) -> Option<&Series> {
        self.targets.get(&(group.to_string(), addr)).map(|(s, _)| s)
    }
}

/// Each series of `wanted` one point further (rates from the totals'
/// growth over `over`); series not wanted any more go.
fn advance<K: Ord>(
    mut old: BTreeMap<K, (Series, Totals)>,
    wanted: impl Iterator<Item = (K, Totals)>,
    over: Duration,
) -> BTreeMap<K, (Series, Totals)> {
    let secs = over.as_secs_f32();
    let mut out = BTreeMap::new();
    for (key, now) in wanted {
        if out.contains_key(&key) {
            continue;
        }
        let (mut series, was) = match old.remove(&key) {
            Some(known) => known,
            None => {
                out.insert(key, (Series::default(), now));
                continue;
            }
        };
        if secs > 0.0 {
            let rate = |n: u64, p: u64| n.saturating_sub(p) as f32 / secs;
            series.points.push_back([
                rate(now.connections, was.connections),
                rate(now.bytes, was.bytes),
            ]);
            if series.points.len() > POINTS {
                series.points.pop_front();
            }
        }
        out.insert(key, (series, now));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn totals(connections: u64, bytes: u64, refused: [u64; 4]) -> Totals {
        Totals {
            connections,
            bytes,
            refused,
        }
    }

    #[test]
    fn rates_come_from_growth_over_the_time_between_points() {
        let t0 = Instant::now();
        let mut h = History::default();
        let a: SocketAddr = "127.0.0.1:6400".parse().unwrap();
        let key = ("web".to_string(), a);
        assert!(h.due(t0));
        h.sample(
            t0,
            [("web".to_string(), totals(10, 0, [0; 4]))].into_iter(),
            [(key.clone(), totals(10, 1000, [0; 4]))].into_iter(),
        );
        assert!(
            h.listener("web").unwrap().points.is_empty(),
            "one sample, no rate yet"
        );
        assert!(!h.due(t0 + Duration::from_secs(4)));
        let t1 = t0 + SAMPLE_EVERY;
        let refused = h.sample(
            t1,
            [("web".to_string(), totals(60, 0, [0, 5, 0, 0]))].into_iter(),
            [(key.clone(), totals(35, 6000, [0; 4]))].into_iter(),
        );
        assert_eq!(h.listener("web").unwrap().points, [[10.0, 0.0]]);
        assert_eq!(h.target("web", a).unwrap().points, [[5.0, 1000.0]]);
        assert_eq!(
            refused,
            vec![Refusals {
                listener: "web".into(),
                by_reason: vec![("max_connections", 5)],
                over: SAMPLE_EVERY
            }]
        );
        // A target gone from the config loses its series.
        h.sample(t1 + SAMPLE_EVERY, std::iter::empty(), std::iter::empty());
        assert!(h.target("web", a).is_none() && h.listener("web").is_none());
    }

    #[test]
    fn memory_is_bounded_whatever_the_config() {
        let t0 = Instant::now();
        let mut h = History::default();
        for i in 0..(POINTS as u64 + 20) {
            let at = t0 + SAMPLE_EVERY * i as u32;
            let listeners = (0..1000).map(|l| (format!("l{l:04}"), totals(i, 0, [0; 4])));
            let targets = (0..5000u16).map(|p| {
                (
                    ("web".to_string(), SocketAddr::from(([127, 0, 0, 1], p + 1))),
                    totals(i, i, [0; 4]),
                )
            });
            h.sample(at, listeners, targets);
        }
        assert_eq!(h.listeners.len(), MAX_LISTENERS);
        assert_eq!(h.targets.len(), MAX_TARGETS);
        assert!(h.targets.values().all(|(s, _)| s.points.len() == POINTS));
        let bytes = (MAX_LISTENERS + MAX_TARGETS) * POINTS * std::mem::size_of::<[f32; 2]>();
        assert!(bytes <= 460 << 10, "{bytes}");
    }
}
