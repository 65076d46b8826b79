//! The health of every listed target, by group and address: what probes and
//! workers' failed connects say, through [`Health::record`], with each
//! group's count of healthy targets kept as it changes, so a flip costs the
//! same whatever the group's size. A pure core: it returns events, and says
//! which probes should run.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use super::events::Event;
use crate::config::{Config, GroupConfig};
use crate::health::{Health, State};
use crate::targets::Target;

pub use crate::health::prober::Wanted;

#[derive(Debug, Default)]
pub struct HealthBook {
    groups: HashMap<String, GroupHealth>,
}

#[derive(Debug, Default)]
struct GroupHealth {
    states: HashMap<SocketAddr, Health>,
    healthy: usize,
    /// The targets as last synced, in order.
    addrs: Vec<SocketAddr>,
}

impl HealthBook {
    /// Health entries for exactly the listed targets: new ones start
    /// `initial`, kept ones keep their state (health belongs to the address,
    /// so it survives a reload). Returns the probes that should run.
    pub fn sync(&mut self, config: &Config, targets: &[Vec<Target>]) -> Vec<Wanted> {
        let mut wanted = Vec::with_capacity(config.groups.len());
        let mut groups = HashMap::with_capacity(config.groups.len());
        for (g, listed) in config.groups.iter().zip(targets) {
            let addrs: Vec<SocketAddr> = listed.iter().map(|t| t.addr).collect();
            let mut old = self.groups.remove(&g.name).unwrap_or_default();
            if old.addrs != addrs {
                let states: HashMap<SocketAddr, Health> = addrs
                    .iter()
                    .map(|a| (*a, old.states.remove(a).unwrap_or_default()))
                    .collect();
                let healthy = states.values().filter(|h| h.is_healthy()).count();
                old = GroupHealth {
                    states,
                    healthy,
                    addrs: addrs.clone(),
                };
            }
            wanted.push(Wanted {
                group: g.name.as_str().into(),
                config: Arc::new(g.health.clone()),
                addrs,
            });
            groups.insert(g.name.clone(), old);
        }
        self.groups = groups;
        wanted
    }

    /// One check of `addr` in `group` (a probe, or a worker's failed
    /// connect). A flip is an event; `epoch` is the snapshot that carries
    /// it (the caller may set it when it publishes). The last healthy
    /// target going down also says the group now fails open.
    pub fn record(
        &mut self,
        group: &GroupConfig,
        addr: SocketAddr,
        pass: bool,
        reason: &str,
        epoch: u64,
    ) -> Vec<Event> {
        let Some(g) = self.groups.get_mut(&group.name) else {
            return Vec::new();
        };
        let Some(h) = g.states.get_mut(&addr) else {
            return Vec::new();
        };
        let (up, down) = (
            group.health.healthy_threshold,
            group.health.unhealthy_threshold,
        );
        let Some(t) = h.record(pass, reason, up, down) else {
            return Vec::new();
        };
        if t.to == State::Healthy {
            g.healthy += 1;
        } else if t.from == State::Healthy {
            g.healthy -= 1;
        }
        let name: Arc<str> = group.name.as_str().into();
        let mut events = vec![Event::HealthChanged {
            group: name.clone(),
            target: addr,
            from: t.from,
            to: t.to,
            reason: reason.to_string(),
            epoch,
        }];
        if g.healthy == 0 && t.from == State::Healthy {
            events.push(Event::FailingOpen { group: name });
        }
        events
    }

    pub fn is_healthy(&self, group: &str, addr: SocketAddr) -> bool {
        self.get(group, addr).is_some_and(Health::is_healthy)
    }

    pub fn get(&self, group: &str, addr: SocketAddr) -> Option<&Health> {
        self.groups.get(group)?.states.get(&addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(targets: &[u16]) -> (Config, Vec<Vec<Target>>) {
        let text = "[[listener]]\nname = \"web\"\nlisten = \"127.0.0.1:80\"\ntarget_group = \"web\"\n\
                    [[target_group]]\nname = \"web\"\ntargets_file = \"t.txt\"\n\
                    [target_group.health_check]\nhealthy_threshold = 2\nunhealthy_threshold = 2\n";
        let c =
            crate::config::parse(std::path::Path::new("/etc/ringlb/ringlb.toml"), text).unwrap();
        let t = targets
            .iter()
            .map(|&p| Target {
                addr: SocketAddr::from(([127, 0, 0, 1], p)),
                weight: 1,
            })
            .collect();
        (c, vec![t])
    }

    fn a(p: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], p))
    }

    #[test]
    fn the_last_healthy_target_going_down_says_the_group_fails_open() {
        let (c, t) = config(&[1, 2]);
        let mut book = HealthBook::default();
        assert_eq!(book.sync(&c, &t)[0].addrs.len(), 2, "one probe per target");
        let g = &c.groups[0];
        assert_eq!(
            book.record(g, a(1), true, "ok", 2).len(),
            1,
            "initial -> healthy"
        );
        book.record(g, a(2), true, "ok", 3);
        assert!(
            book.record(g, a(1), false, "refused", 4).is_empty(),
            "one failure of two"
        );
        let e = book.record(g, a(1), false, "refused", 4);
        assert!(
            matches!(
                e[..],
                [Event::HealthChanged {
                    to: State::Unhealthy,
                    epoch: 4,
                    ..
                }]
            ),
            "{e:?}"
        );
        let e = book.record(g, a(2), false, "refused", 5);
        assert!(e.is_empty());
        let e = book.record(g, a(2), false, "refused", 5);
        assert_eq!(e.len(), 2, "{e:?}");
        assert_eq!(
            e[1],
            Event::FailingOpen {
                group: "web".into()
            }
        );
        assert!(!book.is_healthy("web", a(2)));
    }

    #[test]
    fn health_survives_a_sync_that_keeps_the_target_and_new_ones_start_initial() {
        let (c, t) = config(&[1, 2]);
        let mut book = HealthBook::default();
        book.sync(&c, &t);
        book.record(&c.groups[0], a(1), true, "ok", 2);
        let (c, t) = config(&[1, 3]);
        book.sync(&c, &t);
        assert!(book.is_healthy("web", a(1)), "kept");
        assert_eq!(book.get("web", a(3)).unwrap().state, State::Initial);
        assert!(book.get("web", a(2)).is_none(), "gone");
        assert!(
            book.record(&c.groups[0], a(2), true, "late", 3).is_empty(),
            "a gone target's result is ignored"
        );
        // The healthy count came along: the kept target going down fails open.
        book.record(&c.groups[0], a(1), false, "x", 4);
        let e = book.record(&c.groups[0], a(1), false, "x", 4);
        assert!(
            e.contains(&Event::FailingOpen {
                group: "web".into()
            }),
            "{e:?}"
        );
    }
}
