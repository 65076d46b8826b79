//! The one immutable value the control plane publishes and workers read.
//!
//! A worker loads the snapshot once per accepted connection, takes what the
//! connection needs, and lets it go before proxying. A new snapshot replaces the
//! old one with a single swap. Balancer tables are built here, when a snapshot
//! is built, never per connection.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::balancer::{LeastConnections, Maglev, RoundRobin, Tried};
use crate::config::{Algorithm, Config, ProxyProtocol};
use crate::metrics::{Slots, TargetSlot};
use crate::targets::Target;

pub type SharedSnapshot = Arc<ArcSwap<Snapshot>>;

#[derive(Debug)]
pub struct Snapshot {
    /// Bumped on every publication; logs and metrics name it.
    pub epoch: u64,
    /// Indexed like `Config::groups`.
    pub groups: Vec<GroupSnapshot>,
    /// Listeners by id (fixed when its sockets are bound; a rename keeps
    /// it). Workers find a connection's group through its listener, so a
    /// reload may rename listeners and remap or reorder groups.
    pub listeners: HashMap<u64, ListenerView>,
    /// Targets removed from their group (of any group, present or removed)
    /// whose connections may still run.
    pub draining: Vec<Draining>,
}

/// What a worker needs to know about a listener when it accepts.
#[derive(Debug)]
pub struct ListenerView {
    /// Index into `Snapshot::groups`.
    pub group: usize,
    pub allow: Option<Vec<ipnet::IpNet>>,
    pub max_connections: Option<u64>,
    pub proxy_protocol: ProxyProtocol,
}

impl ListenerView {
    /// Whether a client may connect; IPv4-mapped IPv6 clients match IPv4 ranges.
    pub fn allows(&self, client: std::net::IpAddr) -> bool {
        let ip = client.to_canonical();
        self.allow
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&ip)))
    }
}

impl Snapshot {
    /// The placeholder before the control plane's first publication.
    pub fn empty() -> Snapshot {
        Snapshot {
            epoch: 0,
            groups: Vec::new(),
            listeners: HashMap::new(),
            draining: Vec::new(),
        }
    }

    /// Whether connections of `group` to `addr` may run now: the target is
    /// listed in the group, or draining from it. A session whose connect
    /// finished after a newer snapshot was published asks this before it
    /// proxies, so a target removed while the connect was in flight gets no
    /// connection the control plane cannot close.
    pub fn serves(&self, group: &str, addr: SocketAddr) -> bool {
        self.groups
            .iter()
            .any(|g| &*g.name == group && g.targets.iter().any(|t| t.addr == addr))
            || self
                .draining
                .iter()
                .any(|d| &*d.group == group && d.addr == addr)
    }
}

#[derive(Debug)]
pub struct GroupSnapshot {
    pub name: Arc<str>,
    /// In targets-file order.
    pub targets: Vec<TargetEntry>,
    /// Shared with earlier snapshots of the same target set: a health flip
    /// publishes a new snapshot but never rebuilds the table.
    pub balancer: Arc<Balancer>,
    /// No target is healthy: route to all of them, as an NLB does, rather
    /// than refuse every client.
    pub fail_open: bool,
    /// A target with this many open connections is skipped; 0 = no limit.
    pub max_per_target: u64,
    pub connect_timeout: Duration,
    pub connect_retries: u32,
    pub idle_timeout: Duration,
}

/// A removed target whose connections continue until they end or `deadline`.
#[derive(Debug, Clone)]
pub struct Draining {
    pub group: Arc<str>,
    pub addr: SocketAddr,
    /// Its weight when it was removed (for reports).
    pub weight: u32,
    pub deadline: tokio::time::Instant,
    pub stats: Arc<TargetStats>,
}

#[derive(Debug)]
pub struct TargetEntry {
    pub addr: SocketAddr,
    pub weight: u32,
    /// Healthy: may get new connections (unless the group fails open).
    pub ready: bool,
    /// Shared with every worker and with later snapshots listing the same address.
    pub stats: Arc<TargetStats>,
}

/// What all workers know about one target address, updated on the data path
/// with one atomic per connection (not per byte).
#[derive(Debug)]
pub struct TargetStats {
    /// Connections placed on this target and not yet closed (counted from the
    /// pick, so concurrent picks on other cores see it at once). The one
    /// shared atomic per connection: least connections needs it exact.
    pub active: AtomicU64,
    /// Everything else, per worker.
    pub slots: Slots<TargetSlot>,
}

impl TargetStats {
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

/// Counts one connection as active on a target while it lives.
#[derive(Debug)]
pub struct ActiveGuard(Arc<TargetStats>);

impl ActiveGuard {
    pub fn new(stats: &Arc<TargetStats>) -> Self {
        stats.active.fetch_add(1, Ordering::Relaxed);
        ActiveGuard(stats.clone())
    }

    /// Counts the connection unless the target already has `max` (0 = no
    /// limit): exact across workers, unlike a look before the pick.
    pub fn try_new(stats: &Arc<TargetStats>, max: u64) -> Option<Self> {
        if max == 0 {
            return Some(Self::new(stats));
        }
        stats
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ActiveGuard(stats.clone()))
    }
}

impl ActiveGuard {
    pub fn stats(&self) -> &TargetStats {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub enum Balancer {
    RoundRobin(RoundRobin),
    LeastConnections(LeastConnections),
    Maglev(Maglev),
}

impl GroupSnapshot {
    /// The target for the next connect attempt for `client`, skipping those tried.
    pub fn pick(&self, client: &SocketAddr, tried: &Tried) -> Option<usize> {
        let usable = |i: usize| {
            let t = &self.targets[i];
            !tried.contains(i)
                && (self.fail_open || t.ready)
                && (self.max_per_target == 0 || t.stats.active() < self.max_per_target)
        };
        match &*self.balancer {
            Balancer::RoundRobin(rr) => rr.pick(usable),
            Balancer::LeastConnections(lc) => lc.pick(
                self.targets.len(),
                |i| (self.targets[i].stats.active(), self.targets[i].weight),
                usable,
            ),
            Balancer::Maglev(m) => m.pick(client, usable),
        }
    }
}

/// State that outlives any one snapshot: the rotation position of each group
/// and the shared stats of each target address.
#[derive(Debug)]
pub struct Carry {
    workers: usize,
    /// Slots moved by each group's last Maglev rebuild.
    pub maglev_moved: HashMap<String, u64>,
    rotation: HashMap<String, Arc<AtomicUsize>>,
    stats: HashMap<SocketAddr, Arc<TargetStats>>,
    /// Each group's last table, with the inputs it was built from.
    tables: HashMap<String, Table>,
}

/// A built balancer and what it was built from.
#[derive(Debug)]
struct Table {
    algorithm: Algorithm,
    targets: Vec<(SocketAddr, u32)>,
    balancer: Arc<Balancer>,
}

impl Carry {
    pub fn new(workers: usize) -> Carry {
        Carry {
            workers,
            maglev_moved: HashMap::new(),
            rotation: HashMap::new(),
            stats: HashMap::new(),
            tables: HashMap::new(),
        }
    }

    pub fn stats(&mut self, addr: SocketAddr) -> Arc<TargetStats> {
        let workers = self.workers;
        self.stats
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(TargetStats {
                    active: AtomicU64::new(0),
                    slots: Slots::new(workers),
                })
            })
            .clone()
    }

    /// Forgets addresses no snapshot or connection refers to any more.
    fn prune(&mut self) {
        self.stats.retain(|_, s| Arc::strong_count(s) > 1);
    }
}

impl Carry {
    /// The group's balancer: the cached one if algorithm and targets (with
    /// weights, in order) are unchanged, else a new build.
    fn balancer(&mut self, group: &str, algorithm: Algorithm, targets: &[Target]) -> Arc<Balancer> {
        let pairs: Vec<(SocketAddr, u32)> = targets.iter().map(|t| (t.addr, t.weight)).collect();
        if let Some(t) = self.tables.get(group)
            && t.algorithm == algorithm
            && t.targets == pairs
        {
            return t.balancer.clone();
        }
        let rotation = self.rotation.entry(group.to_string()).or_default().clone();
        let built = Arc::new(match algorithm {
            Algorithm::RoundRobin => {
                let weights: Vec<u32> = pairs.iter().map(|p| p.1).collect();
                Balancer::RoundRobin(RoundRobin::new(&weights, rotation))
            }
            Algorithm::LeastConnections => {
                Balancer::LeastConnections(LeastConnections::new(rotation))
            }
            Algorithm::Maglev(key) => {
                let table = Maglev::new(&pairs, key);
                if let Some(old) = self.tables.get(group)
                    && let Balancer::Maglev(old_table) = &*old.balancer
                {
                    let before: Vec<SocketAddr> = old.targets.iter().map(|p| p.0).collect();
                    let after: Vec<SocketAddr> = pairs.iter().map(|p| p.0).collect();
                    let moved = Maglev::slots_moved(old_table, &before, &table, &after);
                    self.maglev_moved.insert(group.to_string(), moved as u64);
                }
                Balancer::Maglev(table)
            }
        });
        let table = Table {
            algorithm,
            targets: pairs,
            balancer: built.clone(),
        };
        self.tables.insert(group.to_string(), table);
        built
    }
}

/// Builds a snapshot from a validated config, each group's targets, the
/// targets still draining (of any group, present or gone), which targets are
/// healthy, and the id of each listener by name.
pub fn build(
    epoch: u64,
    config: &Config,
    targets: &[Vec<Target>],
    draining: &[Draining],
    healthy: &dyn Fn(&str, SocketAddr) -> bool,
    carry: &mut Carry,
    listener_ids: &HashMap<String, u64>,
) -> Snapshot {
    let groups = config
        .groups
        .iter()
        .zip(targets)
        .map(|(g, t)| {
            let balancer = carry.balancer(&g.name, g.algorithm, t);
            let entries: Vec<TargetEntry> = t
                .iter()
                .map(|t| TargetEntry {
                    addr: t.addr,
                    weight: t.weight,
                    ready: healthy(&g.name, t.addr),
                    stats: carry.stats(t.addr),
                })
                .collect();
            GroupSnapshot {
                fail_open: !entries.iter().any(|e| e.ready),
                max_per_target: g.max_connections_per_target,
                name: g.name.as_str().into(),
                targets: entries,
                balancer,
                connect_timeout: g.connect_timeout,
                connect_retries: g.connect_retries,
                idle_timeout: g.idle_timeout,
            }
        })
        .collect();
    carry.prune();
    carry
        .tables
        .retain(|name, _| config.groups.iter().any(|g| &g.name == name));
    let listeners = config
        .listeners
        .iter()
        .filter_map(|l| {
            let view = ListenerView {
                group: l.group,
                allow: l.allow.clone(),
                max_connections: l.max_connections,
                proxy_protocol: l.proxy_protocol,
            };
            Some((*listener_ids.get(&l.name)?, view))
        })
        .collect();
    Snapshot {
        epoch,
        groups,
        listeners,
        draining: draining.to_vec(),
    }
}

/// Addresses in a group, for logs.
pub fn describe(targets: &[Target]) -> String {
    let addrs: Vec<SocketAddr> = targets.iter().map(|t| t.addr).collect();
    describe_addrs(&addrs)
}

/// Addresses for one log line: all of a few, the first [`LOG_ADDRS`] of many
/// with a count of the rest, so 10,000 targets do not make a 200 KB line.
pub fn describe_addrs(addrs: &[SocketAddr]) -> String {
    let shown: Vec<String> = addrs
        .iter()
        .take(LOG_ADDRS)
        .map(|a| a.to_string())
        .collect();
    match addrs.len().saturating_sub(LOG_ADDRS) {
        0 => format!("[{}]", shown.join(", ")),
        more => format!("[{}, ... and {more} more]", shown.join(", ")),
    }
}

/// Addresses a log line names before it counts the rest.
pub const LOG_ADDRS: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_address_lists_are_logged_as_a_few_and_a_count() {
        let addrs: Vec<SocketAddr> = (1..=10_000)
            .map(|p| SocketAddr::from(([127, 0, 0, 1], p)))
            .collect();
        let line = describe_addrs(&addrs);
        assert!(line.ends_with(", ... and 9992 more]"), "{line}");
        assert!(line.len() < 200, "{} bytes", line.len());
        assert_eq!(describe_addrs(&addrs[..2]), "[127.0.0.1:1, 127.0.0.1:2]");
        assert_eq!(describe_addrs(&[]), "[]");
    }

    #[test]
    fn allow_lists_match_ipv4_mapped_clients_and_nothing_else() {
        let view = ListenerView {
            group: 0,
            allow: Some(vec![
                "10.0.0.0/8".parse().unwrap(),
                "::1/128".parse().unwrap(),
            ]),
            max_connections: None,
            proxy_protocol: ProxyProtocol::Off,
        };
        assert!(view.allows("10.1.2.3".parse().unwrap()));
        assert!(
            view.allows("::ffff:10.1.2.3".parse().unwrap()),
            "IPv4-mapped matches IPv4 ranges"
        );
        assert!(view.allows("::1".parse().unwrap()));
        assert!(!view.allows("11.0.0.1".parse().unwrap()));
        assert!(!view.allows("::ffff:11.0.0.1".parse().unwrap()));
        let open = ListenerView {
            allow: None,
            ..view
        };
        assert!(
            open.allows("203.0.113.9".parse().unwrap()),
            "no list: everyone"
        );
    }
}
