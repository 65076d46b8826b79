//! The control plane: owns the running config, the targets, the drains, and
//! publishes one snapshot per change. Runs on the main thread.
//!
//! Reload = read, unchanged? stop, parse, validate, diff, publish. A bad file
//! or config keeps the last good state serving, is logged once and counted.

mod report;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::app::{self, Loaded};
use crate::config::{Config, ListenerConfig};
use crate::health::schedule::{ProbeResult, Prober};
use crate::health::{Health, State};
use crate::listener;
use crate::metrics::ListenerStats;
use crate::runtime::{BoundListener, Command, Event, Workers};
use crate::snapshot::{self, Carry, Draining, SharedSnapshot};
use crate::targets::Target;
use crate::targets::watch::FileWatch;

/// A listener as the control plane knows it.
pub struct BoundInfo {
    pub config: ListenerConfig,
    /// The address actually bound (the kernel's port for `:0`).
    pub addr: SocketAddr,
    pub stats: Arc<ListenerStats>,
}

pub struct ControlPlane {
    config_path: PathBuf,
    config: Config,
    targets: Vec<Vec<Target>>,
    watches: Vec<FileWatch>,
    draining: Vec<Draining>,
    carry: Carry,
    epoch: u64,
    shared: SharedSnapshot,
    worker_count: usize,
    /// Listeners as bound, by name.
    bound: HashMap<String, BoundInfo>,
    /// Health of each listed target, by group name and address.
    health: HashMap<String, HashMap<SocketAddr, Health>>,
    prober: Prober,
    /// Rejected targets files and configs since start.
    pub reload_errors: u64,
    pub reloads: u64,
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
            watches: watches_for(&loaded.config),
            config: loaded.config,
            targets: loaded.targets,
            draining: Vec::new(),
            carry: Carry::new(worker_count),
            epoch: 0,
            shared,
            worker_count,
            bound,
            health: HashMap::new(),
            prober,
            reload_errors: 0,
            reloads: 0,
        };
        cp.sync_health();
        cp.publish();
        (cp, results)
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
        let snap = snapshot::build(
            self.epoch,
            &self.config,
            &self.targets,
            &self.draining,
            &healthy,
            &mut self.carry,
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
        match t.to {
            State::Healthy => {
                info!(%group, target = %addr, from = %t.from, to = %t.to, reason, "health changed")
            }
            _ => {
                warn!(%group, target = %addr, from = %t.from, to = %t.to, reason, "health changed")
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
            let Some(result) = self.watches[g].poll() else {
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
                    info!(%group, added = ?diff.added, removed = ?diff.removed, reweighted = ?diff.reweighted, "targets reloaded");
                    self.start_drains(
                        &group,
                        &diff,
                        self.config.groups[g].deregistration_delay,
                        workers,
                    );
                    self.targets[g] = new;
                    self.sync_health();
                    changed = true;
                }
            }
        }
        changed |= self.finish_drains(workers);
        if changed {
            self.publish();
        }
    }

    /// Removed targets stop getting connections now; the ones they have may
    /// run for `delay`. Re-added ones leave the drain with connections intact.
    fn start_drains(
        &mut self,
        group: &str,
        diff: &Diff,
        delay: std::time::Duration,
        workers: &Workers,
    ) {
        let readded: Vec<SocketAddr> = diff.added.clone();
        self.draining.retain(|d| {
            let back = &*d.group == group && readded.contains(&d.addr);
            if back {
                info!(%group, target = %d.addr, "re-added while draining: back in service");
            }
            !back
        });
        for &addr in &diff.removed {
            let stats = self.carry.stats(addr);
            if delay.is_zero() {
                let group: Arc<str> = group.into();
                workers.tell_all(|| Command::CloseTarget {
                    group: group.clone(),
                    addr,
                });
                info!(%group, target = %addr, "deregistered; deregistration_delay is 0s, closing its connections");
                continue;
            }
            info!(%group, target = %addr, active = stats.active(), ?delay, "draining");
            self.draining.push(Draining {
                group: group.into(),
                addr,
                deadline: Instant::now() + delay,
                stats,
            });
        }
    }

    /// Drops drains whose connections are all gone, closes the ones past their
    /// deadline. Returns whether the drain list changed.
    fn finish_drains(&mut self, workers: &Workers) -> bool {
        let now = Instant::now();
        let before = self.draining.len();
        self.draining.retain(|d| {
            if d.stats.active() == 0 {
                info!(group = %d.group, target = %d.addr, "drain finished");
                return false;
            }
            if now >= d.deadline {
                warn!(group = %d.group, target = %d.addr, active = d.stats.active(), "deregistration_delay over; closing its connections");
                let (group, addr) = (d.group.clone(), d.addr);
                workers.tell_all(|| Command::CloseTarget { group: group.clone(), addr });
                return false;
            }
            true
        });
        self.draining.len() != before
    }

    /// SIGHUP: reload the whole config. Nothing changes unless all of it is
    /// valid and every new listener could be bound.
    pub fn reload_config(&mut self, workers: &Workers) {
        let loaded = match app::load(&self.config_path, true) {
            Ok(l) => l,
            Err(e) => {
                self.reload_errors += 1;
                error!(error = %e, "config reload rejected; keeping the running config");
                return;
            }
        };
        if loaded.config.runtime.workers != self.config.runtime.workers {
            warn!("[runtime] workers changes on restart only");
        }
        // Bind what is new (or moved) first; a failure leaves everything as it was.
        let mut fresh: Vec<(ListenerConfig, SocketAddr, Vec<std::net::TcpListener>)> = Vec::new();
        for l in &loaded.config.listeners {
            match self.bound.get(&l.name) {
                Some(old) if old.config.addr == l.addr => {
                    if old.config.backlog != l.backlog {
                        warn!(listener = %l.name, "backlog changes on restart only");
                    }
                }
                _ => match listener::bind_reuseport(l, self.worker_count) {
                    Ok((addr, sockets)) => fresh.push((l.clone(), addr, sockets)),
                    Err(e) => {
                        self.reload_errors += 1;
                        error!(error = %e, "config reload rejected; keeping the running config");
                        return;
                    }
                },
            }
        }
        let gone: Vec<String> = self
            .bound
            .iter()
            .filter(|(name, old)| {
                !loaded
                    .config
                    .listeners
                    .iter()
                    .any(|l| &l.name == *name && l.addr == old.config.addr)
            })
            .map(|(name, _)| name.clone())
            .collect();

        // Targets: diff each group by name; a group that disappeared drains whole.
        let old_groups = self.config.groups.clone();
        for (g, old) in old_groups.iter().enumerate() {
            let new_idx = loaded.config.groups.iter().position(|n| n.name == old.name);
            let new_targets: &[Target] = new_idx.map_or(&[], |i| &loaded.targets[i]);
            let delay = new_idx.map_or(old.deregistration_delay, |i| {
                loaded.config.groups[i].deregistration_delay
            });
            let diff = Diff::between(&self.targets[g], new_targets);
            if !diff.is_empty() {
                info!(group = %old.name, added = ?diff.added, removed = ?diff.removed, reweighted = ?diff.reweighted, "targets changed by config reload");
            }
            let group = old.name.clone();
            self.start_drains(&group, &diff, delay, workers);
        }
        self.config = loaded.config;
        self.targets = loaded.targets;
        self.watches = watches_for(&self.config);
        self.sync_health();
        self.publish();

        for name in &gone {
            self.bound.remove(name);
            let name: Arc<str> = name.as_str().into();
            workers.tell_all(|| Command::RemoveListener(name.clone()));
            info!(listener = %name, "listener removed");
        }
        for (l, addr, sockets) in fresh {
            let name: Arc<str> = l.name.as_str().into();
            let stats = Arc::new(ListenerStats::new(self.worker_count));
            for (tx, socket) in workers.commands.iter().zip(sockets) {
                let bound = BoundListener {
                    name: name.clone(),
                    socket,
                    stats: stats.clone(),
                };
                if tx.send(Command::AddListener(bound)).is_err() {
                    warn!("a worker is gone; listener not delivered");
                }
            }
            info!(listener = %name, %addr, "listening");
            let info = BoundInfo {
                config: l,
                addr,
                stats,
            };
            self.bound.insert(info.config.name.clone(), info);
        }
        self.reloads += 1;
        info!(epoch = self.epoch, "config reloaded");
    }
}

fn watches_for(config: &Config) -> Vec<FileWatch> {
    config
        .groups
        .iter()
        .map(|g| {
            FileWatch::new(
                &g.targets_file,
                std::fs::read_to_string(&g.targets_file).ok(),
            )
        })
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
