//! The one immutable value the control plane publishes and workers read.
//!
//! A worker loads the snapshot once per accepted connection, takes what the
//! connection needs, and lets it go before proxying. A new snapshot replaces the
//! old one with a single swap. The control plane builds it
//! (`control/publish.rs`); balancer tables are built (or reused) then, never
//! per connection. This module holds only the types workers read.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::balancer::{Balance, Candidates, Tried};
use crate::metrics::TargetStats;
use crate::proxy_protocol::ProxyProtocol;

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
    /// whose connections may still run; shared by snapshots until it changes.
    pub draining: Arc<Vec<Draining>>,
    /// The connection log, when it is on.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
}

/// What a worker needs to know about a listener when it accepts.
#[derive(Debug)]
pub struct ListenerView {
    /// Index into `Snapshot::groups`.
    pub group: usize,
    pub allow: Option<Vec<ipnet::IpNet>>,
    pub max_connections: Option<u64>,
    /// Per-client limits; `None` without any. The listener's stats hold
    /// the table that counts its clients.
    pub clients: Option<crate::client_limits::Limits>,
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
            draining: Arc::default(),
            access_log: None,
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
    pub balancer: Arc<dyn Balance>,
    /// No target is healthy: route to all of them, as an NLB does, rather
    /// than refuse every client.
    pub fail_open: bool,
    /// A target with this many open connections is skipped; `None` = no limit.
    pub max_per_target: Option<u64>,
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
    pub deadline: std::time::Instant,
    pub stats: Arc<TargetStats>,
}

#[derive(Debug)]
pub struct TargetEntry {
    pub addr: SocketAddr,
    /// As the targets file writes it.
    pub weight: u32,
    /// What picks weigh it by: `weight`, or with slow start its share of
    /// `weight` x 100 while it ramps up.
    pub pick_weight: u32,
    /// When its slow start ends, while it ramps.
    pub slow_start_until: Option<std::time::Instant>,
    /// Healthy: may get new connections (unless the group fails open).
    pub ready: bool,
    /// Shared with every worker and with later snapshots listing the same address.
    pub stats: Arc<TargetStats>,
}

impl GroupSnapshot {
    /// The target for the next connect attempt for `client`, skipping those tried.
    pub fn pick(&self, client: &SocketAddr, tried: &Tried) -> Option<usize> {
        self.balancer.pick(client, &ForPick { group: self, tried })
    }
}

/// A group's targets as one pick sees them.
struct ForPick<'a> {
    group: &'a GroupSnapshot,
    tried: &'a Tried,
}

impl Candidates for ForPick<'_> {
    fn len(&self) -> usize {
        self.group.targets.len()
    }

    fn usable(&self, i: usize) -> bool {
        let (g, t) = (self.group, &self.group.targets[i]);
        !self.tried.contains(i)
            && (g.fail_open || t.ready)
            && g.max_per_target.is_none_or(|max| t.stats.active() < max)
    }

    fn load(&self, i: usize) -> (u64, u32) {
        let t = &self.group.targets[i];
        (t.stats.active(), t.pick_weight)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_lists_match_ipv4_mapped_clients_and_nothing_else() {
        let view = ListenerView {
            group: 0,
            allow: Some(vec![
                "10.0.0.0/8".parse().unwrap(),
                "::1/128".parse().unwrap(),
            ]),
            max_connections: None,
            clients: None,
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
