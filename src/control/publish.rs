//! Building the snapshot the control plane publishes: from the config, the
//! targets, the drains and health, with each group's balancer table (reused
//! while its targets stay the same) and each target's shared stats.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::slow_start::{Seen, SlowStart};
use crate::balancer::Tables;
use crate::config::Config;
use crate::metrics::TargetStatsMap;
use crate::snapshot::{Draining, GroupSnapshot, ListenerView, Snapshot, TargetEntry};
use crate::targets::Target;

/// What a snapshot is built from besides the config: each group's targets,
/// the targets still draining (of any group, present or gone), which
/// targets are healthy, and the id of each listener by name.
pub struct Inputs<'a> {
    pub epoch: u64,
    pub now: Instant,
    /// Targets ramping up; their weights for picks.
    pub slow_start: &'a mut SlowStart,
    pub config: &'a Config,
    pub targets: &'a [Vec<Target>],
    pub draining: Arc<Vec<Draining>>,
    pub healthy: &'a dyn Fn(&str, SocketAddr) -> bool,
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    pub listener_ids: &'a HashMap<String, u64>,
}

/// Builds a snapshot; tables and target stats come from (and are kept in)
/// the control plane's `tables` and `stats`.
pub fn build(inputs: Inputs<'_>, tables: &mut Tables, stats: &mut TargetStatsMap) -> Snapshot {
    let Inputs {
        epoch,
        now,
        slow_start,
        config,
        targets,
        draining,
        healthy,
        listener_ids,
        access_log,
    } = inputs;
    let groups = config
        .groups
        .iter()
        .zip(targets)
        .map(|(g, t)| {
            let name: Arc<str> = g.name.as_str().into();
            let seen: Vec<Seen> = t
                .iter()
                .map(|t| Seen {
                    addr: t.addr,
                    weight: t.weight,
                    ready: healthy(&g.name, t.addr),
                })
                .collect();
            let shares = slow_start.shares(&name, g.slow_start, &seen, now);
            let pairs: Vec<(SocketAddr, u32)> = seen
                .iter()
                .zip(&shares)
                .map(|(t, share)| (t.addr, share.weight))
                .collect();
            let balancer = tables.get(&g.name, g.algorithm, &pairs);
            let entries: Vec<TargetEntry> = seen
                .iter()
                .zip(shares)
                .map(|(t, share)| TargetEntry {
                    addr: t.addr,
                    weight: t.weight,
                    pick_weight: share.weight,
                    slow_start_until: share.until,
                    ready: t.ready,
                    stats: stats.get(t.addr),
                })
                .collect();
            GroupSnapshot {
                fail_open: !entries.iter().any(|e| e.ready),
                max_per_target: g.max_connections_per_target,
                name,
                targets: entries,
                balancer,
                connect_timeout: g.connect_timeout,
                connect_retries: g.connect_retries,
                idle_timeout: g.idle_timeout,
            }
        })
        .collect();
    stats.prune();
    tables.retain(|name| config.groups.iter().any(|g| g.name == name));
    slow_start.retain(|name| config.groups.iter().any(|g| g.name == name));
    let listeners = config
        .listeners
        .iter()
        .filter_map(|l| {
            let id = *listener_ids.get(&l.name)?;
            let view = ListenerView {
                group: l.group,
                allow: l.allow.clone(),
                max_connections: l.max_connections,
                clients: l.client_limits.any().then_some(l.client_limits),
                proxy_protocol: l.proxy_protocol,
            };
            Some((id, view))
        })
        .collect();
    Snapshot {
        epoch,
        groups,
        listeners,
        draining,
        access_log,
    }
}

/// How soon after one snapshot a health flip may publish the next: flips
/// that come together (a storm of them, when a switch fails) share one.
pub const HEALTH_PUBLISH_GAP: Duration = Duration::from_millis(50);

/// The gap is also at least this many times what the last health snapshot
/// took to build, so with 100,000 targets (a build of many milliseconds)
/// publishing flips takes at most a tenth of the control plane's time.
const GAP_PER_BUILD: u32 = 10;

/// Paces the snapshots health flips ask for. A change of targets or config
/// publishes at once, and takes any waiting flips along.
#[derive(Debug)]
pub struct Pacer {
    waiting: bool,
    last: Instant,
    /// What the last health snapshot took to build.
    cost: Duration,
}

impl Pacer {
    /// A pacer whose first flip may publish at once.
    pub fn new(now: Instant) -> Pacer {
        Pacer {
            waiting: false,
            last: now.checked_sub(HEALTH_PUBLISH_GAP).unwrap_or(now),
            cost: Duration::ZERO,
        }
    }

    /// A flip wants a snapshot.
    pub fn want(&mut self) {
        self.waiting = true;
    }

    /// A snapshot went out at `now`, with every flip so far.
    pub fn published(&mut self, now: Instant) {
        self.waiting = false;
        self.last = now;
    }

    /// The last health snapshot took `took` to build and send.
    pub fn cost(&mut self, took: Duration) {
        self.cost = took;
    }

    /// When the waiting snapshot may go out, if one waits.
    pub fn due(&self) -> Option<Instant> {
        let gap = HEALTH_PUBLISH_GAP.max(self.cost * GAP_PER_BUILD);
        self.waiting.then(|| self.last + gap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flips_publish_at_once_after_a_quiet_spell_and_share_a_snapshot_in_a_storm() {
        let t0 = Instant::now();
        let mut p = Pacer::new(t0);
        assert_eq!(p.due(), None, "nothing waits");
        p.want();
        assert!(p.due().unwrap() <= t0, "the first flip goes at once");
        p.published(t0);
        p.want();
        p.want();
        assert_eq!(
            p.due(),
            Some(t0 + HEALTH_PUBLISH_GAP),
            "the next waits for the gap"
        );
        p.published(t0 + Duration::from_millis(10)); // a targets change took them along
        assert_eq!(p.due(), None);
        // A build of 20 ms (100,000 targets): flips wait 200 ms.
        p.cost(Duration::from_millis(20));
        p.want();
        assert_eq!(p.due(), Some(t0 + Duration::from_millis(210)));
    }
}
