//! Deregistration: targets taken out of their group drain, and are forgotten
//! once their last connection is gone or their deadline passes (then their
//! connections are closed). A pure core: the caller passes the time, reads
//! the events, and orders the work (see [`super`] for the publish-first
//! rule).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::events::Event;
use crate::metrics::TargetStats;
use crate::snapshot::Draining;

/// Every target draining now, of any group (present or removed), by group
/// and address: starting, re-adding and finishing cost one look-up each.
#[derive(Debug, Default)]
pub struct Drains {
    by_target: HashMap<(Arc<str>, SocketAddr), Draining>,
    /// What snapshots carry, rebuilt only when the set changes.
    published: Option<Arc<Vec<Draining>>>,
}

/// What [`Drains::due`] found: events to log, and the targets whose
/// connections must now be closed (after the snapshot without them is out).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Due {
    pub events: Vec<Event>,
    pub close: Vec<(Arc<str>, SocketAddr)>,
}

impl Drains {
    /// `addr` of `group` (weight `weight`) was taken out at `now`: it drains
    /// for `delay`. Nothing when it drains already (its first deadline stands).
    pub fn start(
        &mut self,
        group: &Arc<str>,
        addr: SocketAddr,
        weight: u32,
        stats: Arc<TargetStats>,
        delay: Duration,
        now: Instant,
    ) -> Option<Event> {
        let key = (group.clone(), addr);
        if self.by_target.contains_key(&key) {
            return None;
        }
        let active = stats.active();
        self.by_target.insert(
            key,
            Draining {
                group: group.clone(),
                addr,
                weight,
                // Durations are bounded at validation; a far deadline is the
                // honest answer if one ever is not.
                deadline: now.checked_add(delay).unwrap_or(now + FAR),
                stats,
            },
        );
        self.published = None;
        Some(Event::DrainStarted {
            group: group.clone(),
            target: addr,
            active,
            delay,
        })
    }

    /// Targets listed again (whichever way they came back: a targets file,
    /// or a group removed and added back by SIGHUP) are back in service with
    /// their connections: they drain no more.
    pub fn readd(&mut self, listed: impl Fn(&str, SocketAddr) -> bool) -> Vec<Event> {
        let mut back = Vec::new();
        self.by_target.retain(|(group, addr), _| {
            let is = listed(group, *addr);
            if is {
                back.push(Event::Readded {
                    group: group.clone(),
                    target: *addr,
                });
            }
            !is
        });
        if !back.is_empty() {
            self.published = None;
        }
        back
    }

    /// Drops drains whose connections are all gone and those past their
    /// deadline at `now`; the expired ones' connections are to be closed.
    pub fn due(&mut self, now: Instant) -> Due {
        let mut due = Due::default();
        self.by_target.retain(|_, d| {
            let active = d.stats.active();
            let (event, keep) = if now >= d.deadline && active > 0 {
                due.close.push((d.group.clone(), d.addr));
                let e = Event::DrainExpired {
                    group: d.group.clone(),
                    target: d.addr,
                    active,
                };
                (Some(e), false)
            } else if active == 0 || now >= d.deadline {
                let e = Event::DrainFinished {
                    group: d.group.clone(),
                    target: d.addr,
                };
                (Some(e), false)
            } else {
                (None, true)
            };
            due.events.extend(event);
            keep
        });
        if !due.events.is_empty() {
            self.published = None;
        }
        due
    }

    pub fn is_empty(&self) -> bool {
        self.by_target.is_empty()
    }

    /// The drains as snapshots carry them (by group, then address), shared
    /// by every snapshot until the set changes.
    pub fn for_snapshot(&mut self) -> Arc<Vec<Draining>> {
        self.published
            .get_or_insert_with(|| {
                let mut all: Vec<Draining> = self.by_target.values().cloned().collect();
                all.sort_by(|a, b| (&a.group, a.addr).cmp(&(&b.group, b.addr)));
                Arc::new(all)
            })
            .clone()
    }
}

/// A deadline that never comes in practice.
const FAR: Duration = Duration::from_secs(86400 * 365 * 30);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    fn stats(active: u64) -> Arc<TargetStats> {
        let s = crate::metrics::TargetStatsMap::new(1).get(addr(1));
        s.active.store(active, Ordering::Relaxed);
        s
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn a_drain_ends_when_its_last_connection_goes_or_at_its_deadline() {
        let t0 = Instant::now();
        let web: Arc<str> = "web".into();
        let mut d = Drains::default();
        let (quiet, busy) = (stats(1), stats(2));
        let delay = Duration::from_secs(300);
        assert!(matches!(
            d.start(&web, addr(1), 1, quiet.clone(), delay, t0),
            Some(Event::DrainStarted { active: 1, .. })
        ));
        d.start(&web, addr(2), 3, busy.clone(), delay, t0).unwrap();
        assert_eq!(
            d.start(&web, addr(2), 3, busy.clone(), delay, t0 + delay),
            None,
            "a second removal keeps the first deadline"
        );
        assert_eq!(d.due(t0 + Duration::from_secs(299)), Due::default());
        quiet.active.store(0, Ordering::Relaxed);
        let due = d.due(t0 + Duration::from_secs(299));
        assert_eq!(
            due.events,
            vec![Event::DrainFinished {
                group: web.clone(),
                target: addr(1)
            }]
        );
        assert!(
            due.close.is_empty(),
            "nothing to close for a drained target"
        );
        let due = d.due(t0 + delay);
        assert_eq!(
            due.events,
            vec![Event::DrainExpired {
                group: web.clone(),
                target: addr(2),
                active: 2
            }]
        );
        assert_eq!(due.close, vec![(web, addr(2))]);
        assert!(d.is_empty());
    }

    #[test]
    fn a_zero_delay_closes_at_the_next_look_and_a_readded_target_stays() {
        let t0 = Instant::now();
        let (web, api): (Arc<str>, Arc<str>) = ("web".into(), "api".into());
        let mut d = Drains::default();
        d.start(&web, addr(1), 1, stats(4), Duration::ZERO, t0);
        d.start(&web, addr(2), 1, stats(4), Duration::ZERO, t0);
        d.start(&api, addr(1), 1, stats(4), Duration::ZERO, t0);
        let back = d.readd(|g, a| g == "web" && a == addr(2));
        assert_eq!(
            back,
            vec![Event::Readded {
                group: web.clone(),
                target: addr(2)
            }]
        );
        let mut due = d.due(t0);
        due.close.sort();
        assert_eq!(due.close, vec![(api, addr(1)), (web, addr(1))]);
    }

    #[test]
    fn snapshots_share_the_drain_list_until_it_changes() {
        let t0 = Instant::now();
        let web: Arc<str> = "web".into();
        let mut d = Drains::default();
        d.start(&web, addr(2), 1, stats(1), Duration::from_secs(9), t0);
        d.start(&web, addr(1), 1, stats(1), Duration::from_secs(9), t0);
        let a = d.for_snapshot();
        assert!(Arc::ptr_eq(&a, &d.for_snapshot()), "no change, same list");
        let addrs: Vec<SocketAddr> = a.iter().map(|x| x.addr).collect();
        assert_eq!(addrs, vec![addr(1), addr(2)], "in address order");
        d.readd(|_, a| a == addr(1));
        assert_eq!(d.for_snapshot().len(), 1);
    }

    /// 100,000 targets drained and re-added: each costs a look-up, not a
    /// search of the others.
    #[test]
    fn a_hundred_thousand_drains_start_and_end_in_linear_time() {
        let t0 = Instant::now();
        let web: Arc<str> = "web".into();
        let mut d = Drains::default();
        let s = stats(1);
        let started = Instant::now();
        for i in 0..100_000u32 {
            let a = SocketAddr::from(([127, 1 + (i >> 16) as u8, (i >> 8) as u8, i as u8], 6400));
            d.start(&web, a, 1, s.clone(), Duration::from_secs(60), t0);
        }
        let back = d.readd(|_, a| a.ip().to_string().ends_with(".7"));
        assert_eq!(back.len(), 100_000 / 256 + 1);
        let elapsed = started.elapsed();
        println!("100,000 drains started and looked over in {elapsed:?}");
        // A search per drain would take minutes here.
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
    }
}
