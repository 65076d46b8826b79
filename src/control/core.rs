//! The control plane's pure core: the running config, every group's
//! targets, their health and drains, and the snapshots built from them. It
//! takes what happened (a probe result, a targets file's new set, a new
//! config, the passing of time) with the time it happened, and returns what
//! to do, in order ([`Effect`]): snapshots to publish, connections to close,
//! probes to run, events to log. It does no I/O and reads no clock, so every
//! rule here (drains, deregistration deadlines, reload diffs, publication
//! pacing) is tested on its own in microseconds.
//!
//! Ordering rule for taking a target out: the snapshot without it comes
//! first, and only then the command to close its connections, so a connect
//! that finishes in between sees the new snapshot
//! ([`Snapshot::serves`](crate::snapshot::Snapshot::serves)) and never
//! escapes the close.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::drains::Drains;
use super::events::Event;
use super::healthbook::{HealthBook, Wanted};
use super::publish::{self, Pacer};
use super::slow_start::SlowStart;
use super::targets::{Diff, removals};
use crate::balancer::Tables;
use crate::config::Config;
use crate::load::{Loaded, empty_group_warning};
use crate::metrics::TargetStatsMap;
use crate::snapshot::Snapshot;
use crate::targets::Target;

/// What the shell is to do, in the order given.
#[derive(Debug)]
pub enum Effect {
    /// Make this the snapshot workers read.
    Publish(Arc<Snapshot>),
    /// Tell every worker to close its connections to this target of this group.
    CloseTarget { group: Arc<str>, addr: SocketAddr },
    /// Make the running probes exactly these.
    Probes(Vec<Wanted>),
    /// Log it (and keep it for the admin endpoint).
    Log(Event),
}

pub struct Core {
    config: Config,
    targets: Vec<Vec<Target>>,
    health: HealthBook,
    drains: Drains,
    /// Each group's balancer table, reused while its targets stay the same.
    tables: Tables,
    /// Every target address's shared counters, kept across snapshots.
    stats: TargetStatsMap,
    /// Listener ids by name, as snapshots key them.
    listener_ids: HashMap<String, u64>,
    epoch: u64,
    pacer: Pacer,
    /// Health flips recorded and not yet published: logged with the
    /// snapshot that carries them, so a log line means "in effect".
    flips: Vec<Event>,
    /// The connection log workers hand their lines to (started by the shell).
    access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// Targets ramping up in groups with `slow_start`.
    slow_start: SlowStart,
}

impl Core {
    /// The core of a config just loaded, and what to do first: start the
    /// probes, publish epoch 1.
    pub fn new(
        loaded: Loaded,
        listener_ids: HashMap<String, u64>,
        workers: usize,
        access_log: Option<Arc<crate::access_log::AccessLog>>,
        now: Instant,
    ) -> (Core, Vec<Effect>) {
        let mut core = Core {
            config: loaded.config,
            targets: loaded.targets,
            health: HealthBook::default(),
            drains: Drains::default(),
            tables: Tables::default(),
            stats: TargetStatsMap::new(workers),
            listener_ids,
            epoch: 0,
            pacer: Pacer::new(now),
            flips: Vec::new(),
            access_log,
            slow_start: SlowStart::default(),
        };
        let mut out = vec![Effect::Probes(
            core.health.sync(&core.config, &core.targets),
        )];
        out.extend(core.publish(now));
        (core, out)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn health(&self) -> &HealthBook {
        &self.health
    }

    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// The connection log the next snapshots carry (the shell starts it);
    /// in effect from the next publication.
    pub fn set_access_log(&mut self, log: Option<Arc<crate::access_log::AccessLog>>) {
        self.access_log = log;
    }

    pub fn access_log(&self) -> Option<&Arc<crate::access_log::AccessLog>> {
        self.access_log.as_ref()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// One check of `addr` in `group` passed or failed (a probe, or a
    /// worker's failed connect). A flip is published, and logged, with the
    /// next snapshot, which [`Core::flush`] makes when it is due: flips
    /// come in storms (a switch fails, a thousand targets go down), and a
    /// snapshot per flip would rebuild every group a thousand times.
    pub fn checked(&mut self, group: &str, addr: SocketAddr, pass: bool, reason: &str) {
        let Some(g) = self.config.groups.iter().find(|g| g.name == group) else {
            return;
        };
        let events = self.health.record(g, addr, pass, reason, 0);
        if !events.is_empty() {
            self.flips.extend(events);
            self.pacer.want();
        }
    }

    /// When a snapshot is waiting to go out (health flips), if one is.
    pub fn flush_due(&self) -> Option<Instant> {
        self.pacer.due()
    }

    /// The last [`Core::flush`] that published took `took` (the shell
    /// times it): flips are paced by it.
    pub fn flush_took(&mut self, took: std::time::Duration) {
        self.pacer.cost(took);
    }

    /// Publishes the waiting snapshot if it is due at `now`.
    pub fn flush(&mut self, now: Instant) -> Vec<Effect> {
        match self.pacer.due() {
            Some(at) if at <= now => self.publish(now),
            _ => Vec::new(),
        }
    }

    /// Group `g`'s targets file settled on `new` at `now`: removed targets
    /// drain with the group's `deregistration_delay`, added ones are probed
    /// before they get traffic. Nothing when only comments or order changed.
    pub fn targets_changed(&mut self, g: usize, new: Vec<Target>, now: Instant) -> Vec<Effect> {
        let diff = Diff::between(&self.targets[g], &new);
        if diff.is_empty() {
            return Vec::new();
        }
        let cfg = &self.config.groups[g];
        let group: Arc<str> = cfg.name.as_str().into();
        let mut out = vec![Effect::Log(Event::TargetsReloaded {
            group: group.clone(),
            count: new.len(),
            added: diff.added.clone(),
            removed: diff.removed.clone(),
            reweighted: diff.reweighted.clone(),
        })];
        if new.is_empty() {
            out.push(Effect::Log(Event::NoTargets {
                warning: empty_group_warning(&cfg.name, &cfg.targets_file),
            }));
        }
        let delay = cfg.deregistration_delay;
        let old = std::mem::replace(&mut self.targets[g], new);
        let weights: HashMap<SocketAddr, u32> = old.iter().map(|t| (t.addr, t.weight)).collect();
        for addr in diff.removed {
            let stats = self.stats.get(addr);
            out.extend(
                self.drains
                    .start(&group, addr, weights[&addr], stats, delay, now)
                    .map(Effect::Log),
            );
        }
        out.extend(self.settle(now));
        out.extend(self.drains_due(now));
        out
    }

    /// A SIGHUP's config, loaded and valid, with its listeners' ids (every
    /// new listener is bound already): each group's targets are diffed
    /// with its namesake's; removed targets drain (all of a group that is
    /// gone) with the new config's delay, or the old one's for a group that
    /// is gone. What changed in the targets is added to `said`; the caller
    /// then moves the workers' listeners and logs the reload.
    pub fn reload(
        &mut self,
        loaded: Loaded,
        listener_ids: HashMap<String, u64>,
        said: &mut Vec<String>,
        now: Instant,
    ) -> Vec<Effect> {
        let mut out: Vec<Effect> = loaded
            .warnings()
            .into_iter()
            .map(|warning| Effect::Log(Event::NoTargets { warning }))
            .collect();
        for r in removals(&self.config, &self.targets, &loaded) {
            if !r.diff.is_empty() {
                said.push(r.describe());
            }
            let group: Arc<str> = r.group.as_str().into();
            for (addr, weight) in r.removed {
                let stats = self.stats.get(addr);
                out.extend(
                    self.drains
                        .start(&group, addr, weight, stats, r.delay, now)
                        .map(Effect::Log),
                );
            }
        }
        self.listener_ids = listener_ids;
        self.config = loaded.config;
        self.targets = loaded.targets;
        out.extend(self.settle(now));
        out.extend(self.drains_due(now));
        out
    }

    /// Time passed: drains whose last connection went, or whose deadline
    /// passed, end; a ramping target's next step of slow start is published.
    pub fn tick(&mut self, now: Instant) -> Vec<Effect> {
        let mut out = self.drains_due(now);
        if out.is_empty() && self.slow_start.due().is_some_and(|at| at <= now) {
            out.extend(self.publish(now));
        }
        out
    }

    /// After the targets changed: health and probes for exactly the listed
    /// targets, drains of targets listed again ended, a new snapshot.
    fn settle(&mut self, now: Instant) -> Vec<Effect> {
        let mut out = vec![Effect::Probes(
            self.health.sync(&self.config, &self.targets),
        )];
        if !self.drains.is_empty() {
            let listed: HashSet<(&str, SocketAddr)> = self
                .config
                .groups
                .iter()
                .zip(&self.targets)
                .flat_map(|(g, t)| t.iter().map(move |t| (g.name.as_str(), t.addr)))
                .collect();
            let back = self.drains.readd(|g, a| listed.contains(&(g, a)));
            out.extend(back.into_iter().map(Effect::Log));
        }
        out.extend(self.publish(now));
        out
    }

    /// Drains that end now: the snapshot without them, then the close of
    /// what the expired ones still have.
    fn drains_due(&mut self, now: Instant) -> Vec<Effect> {
        let due = self.drains.due(now);
        if due.events.is_empty() {
            return Vec::new();
        }
        let mut out: Vec<Effect> = due.events.into_iter().map(Effect::Log).collect();
        out.extend(self.publish(now));
        out.extend(
            due.close
                .into_iter()
                .map(|(group, addr)| Effect::CloseTarget { group, addr }),
        );
        out
    }

    /// A new snapshot, then the health flips it is the first to carry.
    fn publish(&mut self, now: Instant) -> Vec<Effect> {
        self.epoch += 1;
        self.pacer.published(now);
        self.slow_start.publishing();
        let health = &self.health;
        let snap = publish::build(
            publish::Inputs {
                epoch: self.epoch,
                now,
                slow_start: &mut self.slow_start,
                config: &self.config,
                targets: &self.targets,
                draining: self.drains.for_snapshot(),
                healthy: &|g, a| health.is_healthy(g, a),
                listener_ids: &self.listener_ids,
                access_log: self.access_log.clone(),
            },
            &mut self.tables,
            &mut self.stats,
        );
        let mut out = vec![Effect::Publish(Arc::new(snap))];
        let epoch = self.epoch;
        out.extend(self.flips.drain(..).map(|mut e| {
            if let Event::HealthChanged { epoch: at, .. } = &mut e {
                *at = epoch;
            }
            Effect::Log(e)
        }));
        out
    }
}

#[cfg(test)]
mod tests;
