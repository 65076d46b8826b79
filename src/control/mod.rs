//! The control plane: owns the running config, the targets, the drains, and
//! publishes one snapshot per change. Runs on the main thread.
//!
//! Reload = read, unchanged? stop, parse, validate, diff, publish. A bad file
//! or config keeps the last good state serving, is logged once and counted.
//!
//! Ordering rule for taking a target out: the snapshot without it is
//! published first, and only then are workers told to close its connections,
//! so a connect that finishes in between sees the new snapshot
//! ([`Snapshot::serves`](crate::snapshot::Snapshot::serves)) and never
//! escapes the close.

mod changes;
mod publish;
mod report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::balancer::Tables;
use crate::config::{Config, ListenerConfig};
use crate::health::prober::{ProbeResult, Prober};
use crate::health::{Health, State};
use crate::listener::{self, ListenerError};
use crate::load::{self, Loaded};
use crate::metrics::{ListenerStats, Slots, TargetStatsMap, WorkerSlot};
use crate::runtime::{BoundListener, Command, Event, Workers};
use crate::snapshot::{Draining, SharedSnapshot};
use crate::targets::Target;
use crate::targets::describe_addrs;
use crate::targets::watch::FileWatch;

/// A listener as the control plane knows it.
pub struct BoundInfo {
    /// Fixed when its sockets are bound; the snapshot's key for it.
    pub id: u64,
    pub config: ListenerConfig,
    /// The address actually bound (the kernel's port for `:0`).
    pub addr: SocketAddr,
    pub stats: Arc<ListenerStats>,
    /// Copies of the workers' sockets, handed to a process that takes over.
    pub handover: Vec<std::os::fd::OwnedFd>,
}

impl BoundInfo {
    /// Binds one `SO_REUSEPORT` socket per worker for `config`; see
    /// [`listener::bind_reuseport`] for `exclusive`.
    pub fn bind(
        config: &ListenerConfig,
        workers: usize,
        exclusive: bool,
    ) -> Result<(BoundInfo, Vec<std::net::TcpListener>), ListenerError> {
        let (addr, sockets) = listener::bind_reuseport(spec(config), workers, exclusive)?;
        Self::with_sockets(config, workers, addr, sockets)
    }

    /// Uses the sockets a running ringlb handed over (a takeover): the same
    /// listening sockets, so no connection is refused in between. A worker
    /// count above the old one binds more sockets into the same
    /// `SO_REUSEPORT` group; below it, the extra sockets close (connections
    /// queued on them are lost: keep `workers` across upgrades).
    pub fn adopt(
        config: &ListenerConfig,
        workers: usize,
        mut handed: crate::takeover::HandedListener,
    ) -> Result<(BoundInfo, Vec<std::net::TcpListener>), ListenerError> {
        if handed.sockets.len() > workers {
            tracing::warn!(listener = %config.name, handed = handed.sockets.len(), workers, "more sockets handed over than workers; closing the rest");
            handed.sockets.truncate(workers);
        }
        let missing = workers - handed.sockets.len();
        if missing > 0 {
            let at = listener::Spec {
                addr: handed.addr,
                ..spec(config)
            };
            let (_, more) = listener::bind_reuseport(at, missing, false)?;
            handed.sockets.extend(more);
        }
        Self::with_sockets(config, workers, handed.addr, handed.sockets)
    }

    fn with_sockets(
        config: &ListenerConfig,
        workers: usize,
        addr: SocketAddr,
        sockets: Vec<std::net::TcpListener>,
    ) -> Result<(BoundInfo, Vec<std::net::TcpListener>), ListenerError> {
        static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let handover = sockets
            .iter()
            .map(|s| s.try_clone().map(std::os::fd::OwnedFd::from))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|source| ListenerError {
                name: config.name.clone(),
                addr: config.addr,
                step: "dup",
                source,
                hint: "",
            })?;
        let info = BoundInfo {
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            config: config.clone(),
            addr,
            stats: Arc::new(ListenerStats::new(workers)),
            handover,
        };
        Ok((info, sockets))
    }

    /// Gives worker `i` its socket of this listener (with the shared stats)
    /// through `give(i, ..)`, and logs that the listener is listening: the
    /// one way a listener reaches the workers, at start and on SIGHUP.
    pub fn deal(
        &self,
        sockets: Vec<std::net::TcpListener>,
        mut give: impl FnMut(usize, BoundListener),
    ) {
        for (i, socket) in sockets.into_iter().enumerate() {
            give(
                i,
                BoundListener {
                    id: self.id,
                    name: self.config.name.as_str().into(),
                    socket,
                    stats: self.stats.clone(),
                },
            );
        }
        info!(listener = %self.config.name, addr = %self.addr, "listening");
    }
}

pub struct ControlPlane {
    config_path: PathBuf,
    config: Config,
    targets: Vec<Vec<Target>>,
    watches: Vec<FileWatch>,
    draining: Vec<Draining>,
    /// Each group's balancer table, reused while its targets stay the same.
    tables: Tables,
    /// Every target address's shared counters, kept across snapshots.
    target_stats: TargetStatsMap,
    epoch: u64,
    shared: SharedSnapshot,
    worker_count: usize,
    /// Listeners as bound, by name.
    bound: HashMap<String, BoundInfo>,
    /// Listener ids by name, as the snapshot keys them: during a reload
    /// these are the new config's, published before workers rename or add.
    listener_ids: HashMap<String, u64>,
    /// Per-worker counters that outlive any one listener.
    pub worker_stats: Arc<Slots<WorkerSlot>>,
    /// Health of each listed target, by group name and address.
    health: HashMap<String, HashMap<SocketAddr, Health>>,
    prober: Prober,
    /// Rejected targets files and configs since start.
    pub reload_errors: u64,
    pub reloads: u64,
    /// Takeover requests refused: the peer was another user.
    pub takeover_refused: Arc<std::sync::atomic::AtomicU64>,
}

/// Which targets changed between two sets, for the one log line per reload.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
    pub reweighted: Vec<SocketAddr>,
}

impl Diff {
    pub fn between(old: &[Target], new: &[Target]) -> Diff {
        let old_w: HashMap<SocketAddr, u32> = old.iter().map(|t| (t.addr, t.weight)).collect();
        let new_w: HashMap<SocketAddr, u32> = new.iter().map(|t| (t.addr, t.weight)).collect();
        Diff {
            added: new
                .iter()
                .filter(|t| !old_w.contains_key(&t.addr))
                .map(|t| t.addr)
                .collect(),
            removed: old
                .iter()
                .filter(|t| !new_w.contains_key(&t.addr))
                .map(|t| t.addr)
                .collect(),
            reweighted: new
                .iter()
                .filter(|t| old_w.get(&t.addr).is_some_and(|&w| w != t.weight))
                .map(|t| t.addr)
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.reweighted.is_empty()
    }
}

/// What a SIGHUP does with each listener of the new config.
enum ListenerPlan {
    /// Same name, same address: untouched.
    Keep,
    /// Same address under a new name: the sockets stay open, so no
    /// connection is refused and no bind can clash with ringlb itself.
    Rename { from: String },
    /// New sockets.
    Bind(BoundInfo, Vec<std::net::TcpListener>),
}

impl ControlPlane {
    /// Takes over a loaded config whose listeners are bound; publishes epoch 1.
    /// Probe results arrive on the returned receiver, for [`Self::on_probe`].
    /// Must be called within the control plane's runtime (probes are spawned).
    pub fn new(
        config_path: PathBuf,
        loaded: Loaded,
        bound: HashMap<String, BoundInfo>,
        shared: SharedSnapshot,
        worker_count: usize,
    ) -> (
        ControlPlane,
        tokio::sync::mpsc::UnboundedReceiver<ProbeResult>,
    ) {
        let (prober, results) = Prober::new();
        let mut cp = ControlPlane {
            config_path,
            watches: watches_for(&loaded.config, loaded.texts),
            config: loaded.config,
            targets: loaded.targets,
            draining: Vec::new(),
            tables: Tables::default(),
            target_stats: TargetStatsMap::new(worker_count),
            epoch: 0,
            shared,
            worker_count,
            listener_ids: bound.iter().map(|(n, b)| (n.clone(), b.id)).collect(),
            bound,
            worker_stats: Arc::new(Slots::new(worker_count)),
            health: HashMap::new(),
            prober,
            reload_errors: 0,
            reloads: 0,
            takeover_refused: Arc::default(),
        };
        cp.sync_health();
        cp.publish();
        (cp, results)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    fn publish(&mut self) {
        self.epoch += 1;
        let health = &self.health;
        let healthy = |g: &str, a: SocketAddr| {
            health
                .get(g)
                .and_then(|h| h.get(&a))
                .is_some_and(Health::is_healthy)
        };
        let snap = publish::build(
            publish::Inputs {
                epoch: self.epoch,
                config: &self.config,
                targets: &self.targets,
                draining: &self.draining,
                healthy: &healthy,
                listener_ids: &self.listener_ids,
            },
            &mut self.tables,
            &mut self.target_stats,
        );
        self.shared.store(Arc::new(snap));
    }

    /// Health entries and probe tasks for exactly the listed targets. New
    /// targets start `initial` and are probed at once; state survives reloads.
    fn sync_health(&mut self) {
        let mut wanted = Vec::new();
        let mut health = HashMap::new();
        for (g, targets) in self.config.groups.iter().zip(&self.targets) {
            let mut old = self.health.remove(&g.name).unwrap_or_default();
            let config = Arc::new(g.health.clone());
            let group: Arc<str> = g.name.as_str().into();
            let states: HashMap<SocketAddr, Health> = targets
                .iter()
                .map(|t| (t.addr, old.remove(&t.addr).unwrap_or_default()))
                .collect();
            for t in targets {
                wanted.push((group.clone(), t.addr, config.clone()));
            }
            health.insert(g.name.clone(), states);
        }
        self.health = health;
        self.prober.sync(&wanted);
    }

    /// A probe finished. Stale results (a replaced probe task) are ignored.
    pub fn on_probe(&mut self, r: ProbeResult) {
        if self.prober.generation(&r.group, r.addr) != Some(r.generation) {
            return;
        }
        let (pass, reason) = match r.outcome {
            Ok(reason) => (true, reason),
            Err(reason) => (false, reason),
        };
        self.record(&r.group, r.addr, pass, &reason);
    }

    /// Something a worker saw.
    pub fn on_event(&mut self, e: Event) {
        match e {
            Event::ConnectFailed { group, addr, error } => {
                self.record(&group, addr, false, &format!("connect failed: {error}"))
            }
        }
    }

    fn record(&mut self, group: &str, addr: SocketAddr, pass: bool, reason: &str) {
        let Some(g) = self.config.groups.iter().find(|g| g.name == group) else {
            return;
        };
        let (up, down) = (g.health.healthy_threshold, g.health.unhealthy_threshold);
        let Some(h) = self.health.get_mut(group).and_then(|m| m.get_mut(&addr)) else {
            return;
        };
        let Some(t) = h.record(pass, reason, up, down) else {
            return;
        };
        // The snapshot that carries the flip: workers placing with an older
        // epoch may still pick the target (tests and operators match on it).
        let epoch = self.epoch + 1;
        match t.to {
            State::Healthy => {
                info!(%group, target = %addr, from = %t.from, to = %t.to, reason, epoch, "health changed")
            }
            _ => {
                warn!(%group, target = %addr, from = %t.from, to = %t.to, reason, epoch, "health changed")
            }
        }
        let healthy = self
            .health
            .get(group)
            .is_some_and(|m| m.values().any(Health::is_healthy));
        if !healthy && t.from == State::Healthy {
            warn!(%group, "no healthy target: failing open, routing to all targets");
        }
        self.publish();
    }

    /// One tick: follow the targets files, finish or expire drains.
    pub fn tick(&mut self, workers: &Workers) {
        let mut changed = false;
        for g in 0..self.watches.len() {
            let cfg = &self.config.groups[g];
            let Some(result) = self.watches[g].poll(|t| load::fits(cfg, t)) else {
                continue;
            };
            let group = self.config.groups[g].name.clone();
            match result {
                Err(e) => {
                    self.reload_errors += 1;
                    error!(%group, error = %e, "targets file rejected; keeping the last good set");
                }
                Ok(new) => {
                    let diff = Diff::between(&self.targets[g], &new);
                    self.reloads += 1;
                    if diff.is_empty() {
                        continue; // comments or order changed; nothing to publish
                    }
                    info!(%group, count = new.len(), added = %describe_addrs(&diff.added), removed = %describe_addrs(&diff.removed), reweighted = %describe_addrs(&diff.reweighted), "targets reloaded");
                    let cfg = &self.config.groups[g];
                    if new.is_empty() {
                        warn!(
                            "{}",
                            load::empty_group_warning(&cfg.name, &cfg.targets_file)
                        );
                    }
                    let delay = cfg.deregistration_delay;
                    let old = std::mem::replace(&mut self.targets[g], new);
                    self.start_drains(&group, &diff.removed, &old, delay);
                    changed = true;
                }
            }
        }
        if changed {
            self.sync_health();
            self.reconcile_drains();
            self.publish();
        }
        self.finish_drains(workers);
    }

    /// Removed targets stop getting connections at the next publication; the
    /// ones they have may run for `delay` (0: closed at once, by
    /// [`Self::finish_drains`] after that publication).
    fn start_drains(
        &mut self,
        group: &str,
        removed: &[SocketAddr],
        old: &[Target],
        delay: Duration,
    ) {
        for &addr in removed {
            if self
                .draining
                .iter()
                .any(|d| &*d.group == group && d.addr == addr)
            {
                continue; // already draining: its first deadline stands
            }
            let stats = self.target_stats.get(addr);
            let weight = old.iter().find(|t| t.addr == addr).map_or(1, |t| t.weight);
            if delay.is_zero() {
                info!(%group, target = %addr, active = stats.active(), "deregistered; deregistration_delay is 0s, closing its connections");
            } else {
                info!(%group, target = %addr, active = stats.active(), ?delay, "draining");
            }
            let now = Instant::now();
            self.draining.push(Draining {
                group: group.into(),
                addr,
                weight,
                // Durations are bounded at validation; a far deadline is the
                // honest answer if one ever is not.
                deadline: now.checked_add(delay).unwrap_or_else(far_future),
                stats,
            });
        }
    }

    /// A drained target listed again in its group is back in service, with
    /// its connections: whichever way it came back (targets file, or a group
    /// removed and re-added by SIGHUP), it is no longer draining.
    fn reconcile_drains(&mut self) {
        let (groups, targets) = (&self.config.groups, &self.targets);
        self.draining.retain(|d| {
            let listed = groups
                .iter()
                .zip(targets)
                .any(|(g, t)| *g.name == *d.group && t.iter().any(|t| t.addr == d.addr));
            if listed {
                info!(group = %d.group, target = %d.addr, "re-added while draining: back in service");
            }
            !listed
        });
    }

    /// Drops drains whose connections are all gone and those past their
    /// deadline; publishes the snapshot without them, then tells workers to
    /// close what the expired ones still have.
    fn finish_drains(&mut self, workers: &Workers) {
        let now = Instant::now();
        let mut expired = Vec::new();
        let before = self.draining.len();
        self.draining.retain(|d| {
            let active = d.stats.active();
            if now >= d.deadline {
                if active > 0 {
                    warn!(group = %d.group, target = %d.addr, active, "deregistration_delay over; closing its connections");
                }
                expired.push((d.group.clone(), d.addr));
                return false;
            }
            if active == 0 {
                info!(group = %d.group, target = %d.addr, "drain finished");
                return false;
            }
            true
        });
        if self.draining.len() == before {
            return;
        }
        self.publish();
        for (group, addr) in expired {
            workers.tell_all(|| Command::CloseTarget {
                group: group.clone(),
                addr,
            });
        }
    }

    /// The text in service from the targets file at `path`, if any group reads it.
    fn in_service(&self, path: &Path) -> Option<String> {
        self.watches
            .iter()
            .find(|w| w.path() == path)
            .map(|w| w.applied().to_string())
    }

    /// SIGHUP: reload the whole config. Nothing changes unless all of it is
    /// valid and every new listener could be bound.
    pub fn reload_config(&mut self, workers: &Workers) {
        let loaded = match load::load(&self.config_path, &|p| self.in_service(p)) {
            Ok(l) => l,
            Err(e) => {
                self.reload_errors += 1;
                error!(error = %e, "config reload rejected; keeping the running config");
                return;
            }
        };
        let plans = match self.plan_listeners(&loaded.config.listeners) {
            Ok(p) => p,
            Err(e) => {
                self.reload_errors += 1;
                error!(error = %e, "config reload rejected; keeping the running config");
                return;
            }
        };
        let mut said = changes::describe(&self.config, &loaded.config);
        said.extend(self.drain_removed_targets(&loaded));
        for w in loaded.warnings() {
            warn!("{w}");
        }
        self.listener_ids = plans
            .iter()
            .filter_map(|(l, plan)| {
                let id = match plan {
                    ListenerPlan::Keep => self.bound.get(&l.name)?.id,
                    ListenerPlan::Rename { from } => self.bound.get(from)?.id,
                    ListenerPlan::Bind(info, _) => info.id,
                };
                Some((l.name.clone(), id))
            })
            .collect();
        self.config = loaded.config;
        self.targets = loaded.targets;
        self.watches = watches_for(&self.config, loaded.texts);
        self.sync_health();
        self.reconcile_drains();
        self.publish();

        said.extend(self.apply_listeners(plans, workers));
        self.finish_drains(workers);
        self.reloads += 1;
        let changes = if said.is_empty() {
            "none".to_string()
        } else {
            said.join("; ")
        };
        info!(epoch = self.epoch, %changes, "config reloaded");
    }

    /// A reload's targets: each group is diffed with its namesake in the new
    /// config; removed targets drain (all of a group that is gone) with the
    /// new config's delay, or the old one's for a group that is gone.
    /// Returns what changed, for the log line. Takes the old groups and
    /// targets out of `self`; the caller puts the new config's in.
    fn drain_removed_targets(&mut self, loaded: &Loaded) -> Vec<String> {
        let mut said = Vec::new();
        let old_groups = std::mem::take(&mut self.config.groups);
        for (old, old_t) in old_groups.iter().zip(std::mem::take(&mut self.targets)) {
            let new_idx = loaded.config.groups.iter().position(|n| n.name == old.name);
            let new_targets: &[Target] = new_idx.map_or(&[], |i| &loaded.targets[i]);
            let delay = new_idx.map_or(old.deregistration_delay, |i| {
                loaded.config.groups[i].deregistration_delay
            });
            let diff = Diff::between(&old_t, new_targets);
            if !diff.is_empty() {
                said.push(format!(
                    "group {}: targets added {}, removed {}, reweighted {}",
                    old.name,
                    describe_addrs(&diff.added),
                    describe_addrs(&diff.removed),
                    describe_addrs(&diff.reweighted)
                ));
            }
            self.start_drains(&old.name, &diff.removed, &old_t, delay);
        }
        said
    }

    /// Closes the copies of the listening sockets kept for a takeover: once
    /// the workers close theirs, the sockets close and new connections are
    /// refused (graceful shutdown), not queued with nobody to accept them.
    pub fn drop_handover(&mut self) {
        for b in self.bound.values_mut() {
            b.handover.clear();
        }
    }

    /// Each listener's name and the address it is bound to, by name.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        let mut out: Vec<(String, SocketAddr)> = self
            .bound
            .iter()
            .map(|(n, b)| (n.clone(), b.addr))
            .collect();
        out.sort();
        out
    }

    /// Copies of every listener's sockets, for a process taking over.
    pub fn offer(&self) -> Vec<crate::takeover::HandedListener> {
        self.bound
            .values()
            .filter_map(|b| {
                let fds = b
                    .handover
                    .iter()
                    .map(|f| f.try_clone().map(std::net::TcpListener::from))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| warn!(listener = %b.config.name, error = %e, "cannot copy sockets for a takeover"))
                    .ok()?;
                Some(crate::takeover::HandedListener {
                    name: b.config.name.clone(),
                    config: b.config.addr,
                    addr: b.addr,
                    sockets: fds,
                })
            })
            .collect()
    }

    /// Decides, for each listener of a new config, whether its sockets stay,
    /// move to another name, or are bound now. Binding happens here, before
    /// anything changes, so a failure leaves everything as it was.
    fn plan_listeners(
        &self,
        wanted: &[ListenerConfig],
    ) -> Result<Vec<(ListenerConfig, ListenerPlan)>, ListenerError> {
        let mut claimed: Vec<&str> = wanted
            .iter()
            .filter(|l| {
                self.bound
                    .get(&l.name)
                    .is_some_and(|b| b.config.addr == l.addr)
            })
            .map(|l| l.name.as_str())
            .collect();
        let mut plans = Vec::with_capacity(wanted.len());
        for l in wanted {
            if claimed.contains(&l.name.as_str())
                && self
                    .bound
                    .get(&l.name)
                    .is_some_and(|b| b.config.addr == l.addr)
            {
                if self.bound[&l.name].config.backlog != l.backlog {
                    warn!(listener = %l.name, "backlog changes on restart only");
                }
                plans.push((l.clone(), ListenerPlan::Keep));
                continue;
            }
            let same_addr = self.bound.iter().find(|(name, b)| {
                (b.config.addr == l.addr || b.addr == l.addr) && !claimed.contains(&name.as_str())
            });
            if let Some((from, _)) = same_addr {
                claimed.push(from);
                plans.push((l.clone(), ListenerPlan::Rename { from: from.clone() }));
                continue;
            }
            // A port ringlb itself holds (say 127.0.0.1:80 while 0.0.0.0:80
            // is wanted): no other process can be there, and the old sockets
            // close only after the new ones accept.
            let ours = self
                .bound
                .values()
                .any(|b| listener::overlaps(b.addr, l.addr));
            let (info, sockets) = BoundInfo::bind(l, self.worker_count, !ours)?;
            plans.push((l.clone(), ListenerPlan::Bind(info, sockets)));
        }
        Ok(plans)
    }

    /// Carries out listener plans on the workers: removals first, then
    /// renames, then new sockets. Returns what it did, for the log line.
    fn apply_listeners(
        &mut self,
        plans: Vec<(ListenerConfig, ListenerPlan)>,
        workers: &Workers,
    ) -> Vec<String> {
        let mut said = Vec::new();
        let kept: Vec<&str> = plans
            .iter()
            .filter_map(|(l, p)| match p {
                ListenerPlan::Keep => Some(l.name.as_str()),
                ListenerPlan::Rename { from } => Some(from.as_str()),
                ListenerPlan::Bind(..) => None,
            })
            .collect();
        let gone: Vec<String> = self
            .bound
            .keys()
            .filter(|n| !kept.contains(&n.as_str()))
            .cloned()
            .collect();
        let mut renames = Vec::new();
        let mut fresh = Vec::new();
        for (l, plan) in plans {
            match plan {
                ListenerPlan::Keep => {
                    if let Some(b) = self.bound.get_mut(&l.name) {
                        b.config = l;
                    }
                }
                ListenerPlan::Rename { from } => renames.push((from, l)),
                ListenerPlan::Bind(info, sockets) => fresh.push((info, sockets)),
            }
        }
        for name in &gone {
            self.bound.remove(name);
            let name: Arc<str> = name.as_str().into();
            workers.tell_all(|| Command::RemoveListener(name.clone()));
            info!(listener = %name, "listener removed");
            said.push(format!("listener {name} removed"));
        }
        if !renames.is_empty() {
            let pairs: Vec<(Arc<str>, Arc<str>)> = renames
                .iter()
                .map(|(from, l)| (from.as_str().into(), l.name.as_str().into()))
                .collect();
            workers.tell_all(|| Command::RenameListeners(pairs.clone()));
            let mut moved = Vec::new();
            for (from, l) in renames {
                if let Some(mut b) = self.bound.remove(&from) {
                    info!(listener = %l.name, from = %from, addr = %b.addr, "listener renamed");
                    said.push(format!("listener {from} renamed {}", l.name));
                    b.config = l;
                    moved.push(b);
                }
            }
            for b in moved {
                self.bound.insert(b.config.name.clone(), b);
            }
        }
        for (info, sockets) in fresh {
            info.deal(sockets, |i, listener| {
                if workers.commands[i]
                    .send(Command::AddListener(listener))
                    .is_err()
                {
                    warn!("a worker is gone; listener not delivered");
                }
            });
            said.push(format!(
                "listener {} added on {}",
                info.config.name, info.addr
            ));
            self.bound.insert(info.config.name.clone(), info);
        }
        said
    }
}

/// What the listener module binds for a configured listener.
fn spec(l: &ListenerConfig) -> listener::Spec<'_> {
    listener::Spec {
        name: &l.name,
        addr: l.addr,
        backlog: l.backlog,
    }
}

/// A deadline that never comes in practice (as tokio's own far future).
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365 * 30)
}

/// One watch per group, starting from the text that was loaded and applied.
fn watches_for(config: &Config, texts: Vec<String>) -> Vec<FileWatch> {
    config
        .groups
        .iter()
        .zip(texts)
        .map(|(g, text)| FileWatch::new(&g.targets_file, text))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(port: u16, weight: u32) -> Target {
        Target {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            weight,
        }
    }

    #[test]
    fn diff_names_added_removed_and_reweighted() {
        let d = Diff::between(&[t(1, 1), t(2, 1), t(3, 1)], &[t(2, 1), t(3, 5), t(4, 1)]);
        assert_eq!(d.added, vec![t(4, 1).addr]);
        assert_eq!(d.removed, vec![t(1, 1).addr]);
        assert_eq!(d.reweighted, vec![t(3, 1).addr]);
        assert!(
            Diff::between(&[t(1, 1), t(2, 1)], &[t(2, 1), t(1, 1)]).is_empty(),
            "order alone is no change"
        );
    }
}
