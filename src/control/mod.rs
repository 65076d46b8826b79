//! The control plane, on the main thread: it owns the running config, the
//! targets, their health and drains, the listeners, and publishes one
//! snapshot per change for the workers.
//!
//! Its jobs, one module each:
//! - [`core`]: the pure core. It takes what happened and when, and returns
//!   what to do; [`healthbook`] (health by target), [`drains`]
//!   (deregistration), [`targets`] (what a change of targets is) and
//!   [`publish`] (building and pacing snapshots) are its parts.
//! - [`listeners`]: the listening sockets, bound, moved by a SIGHUP, and
//!   offered to a process that takes over.
//! - [`report`]: what the admin endpoint and systemd are told;
//!   [`changes`]: what a SIGHUP changed, in the config's words;
//!   [`events`]: what happened, to log once and keep.
//!
//! This file is the shell around them: it reads the targets files and
//! the config, runs the probes (on their own thread, [`Prober`]) and the
//! lookups of the names the files list (on theirs, [`Discovery`]), joins
//! each file's own targets with its names' answers, feeds the core with
//! the time, and carries out what the core returns in its order: publish,
//! tell the workers, log.
//!
//! Reload = read, unchanged? stop, parse, validate, diff, publish. A bad file
//! or config keeps the last good state serving, is logged once and counted.

mod changes;
mod core;
mod drains;
mod events;
mod healthbook;
mod history;
mod listeners;
mod publish;
mod report;
mod slow_start;
mod targets;

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Instant, SystemTime};

pub use self::core::Effect;
pub use events::Event;
pub use listeners::BoundInfo;

use self::core::Core;
use crate::config::Config;
use crate::discovery::resolver::Discovery;
use crate::discovery::{self as names, Answers, Resolution};
use crate::health::prober::{ProbeResult, Prober};
use crate::load::{self, Loaded, Origins};
use crate::metrics::{Slots, WorkerSlot};
use crate::snapshot::SharedSnapshot;
use crate::targets::watch::{Change, FileWatch};
use crate::worker::{self, Command, Workers};
use listeners::Listeners;

/// Events kept for the admin endpoint, the latest last.
const RECENT_EVENTS: usize = 256;

/// The names a config's files list, as looked up before its first
/// snapshot, and which name gave which target.
pub struct Found {
    pub answers: Answers,
    pub origins: Vec<Origins>,
}

/// What the control plane's threads send the main loop.
pub struct Inbox {
    pub probes: tokio::sync::mpsc::UnboundedReceiver<ProbeResult>,
    pub names: tokio::sync::mpsc::UnboundedReceiver<Resolution>,
}

pub struct ControlPlane {
    config_path: PathBuf,
    core: Core,
    watches: Vec<FileWatch>,
    /// The last good answer of every name the files list.
    answers: Answers,
    /// Which name gave each target, by group (as the config orders them).
    origins: Vec<Origins>,
    /// The lookup thread, while any file lists a name, and where it sends
    /// its results.
    discovery: Option<Discovery>,
    names_tx: tokio::sync::mpsc::UnboundedSender<Resolution>,
    listeners: Listeners,
    shared: SharedSnapshot,
    prober: Prober,
    worker_count: usize,
    /// Per-worker counters that outlive any one listener.
    pub worker_stats: Arc<Slots<WorkerSlot>>,
    /// Rejected targets files and configs since start.
    pub reload_errors: u64,
    pub reloads: u64,
    /// Takeover requests refused: the peer was another user.
    pub takeover_refused: Arc<AtomicU64>,
    /// The latest events, with when they happened.
    recent: VecDeque<(SystemTime, Event)>,
    /// Connection log lines dropped, by every log this process has had.
    pub access_log_dropped: Arc<AtomicU64>,
    /// The last 15 minutes of traffic, for the console.
    history: history::History,
    /// When this process started.
    started: SystemTime,
}

impl ControlPlane {
    /// Takes over a loaded config whose listeners are bound; publishes epoch 1.
    /// Probe results arrive on the returned receiver, for [`Self::on_probe`];
    /// the probes run on a thread of their own, started here.
    /// The names the files list are followed from `found` on (the lookup
    /// thread is started here too; its results arrive on the inbox's
    /// `names`, for [`Self::on_resolution`]).
    pub fn new(
        config_path: PathBuf,
        mut loaded: Loaded,
        found: Found,
        bound: HashMap<String, BoundInfo>,
        shared: SharedSnapshot,
        worker_count: usize,
    ) -> std::io::Result<(ControlPlane, Inbox)> {
        let (prober, results) = Prober::new()?;
        let (names_tx, names_rx) = tokio::sync::mpsc::unbounded_channel();
        let listeners = Listeners::new(bound, worker_count);
        let texts = std::mem::take(&mut loaded.texts);
        let watches = watches_for(&loaded.config, texts, &loaded.lists);
        let access_log_dropped = Arc::<AtomicU64>::default();
        let log = start_access_log(&loaded.config, &access_log_dropped)?;
        let (core, effects) = Core::new(loaded, listeners.ids(), worker_count, log, Instant::now());
        let mut cp = ControlPlane {
            config_path,
            core,
            watches,
            answers: found.answers,
            origins: found.origins,
            discovery: None,
            names_tx,
            listeners,
            shared,
            prober,
            worker_count,
            worker_stats: Arc::new(Slots::new(worker_count)),
            reload_errors: 0,
            reloads: 0,
            takeover_refused: Arc::default(),
            recent: VecDeque::with_capacity(RECENT_EVENTS),
            access_log_dropped,
            history: history::History::default(),
            started: SystemTime::now(),
        };
        cp.carry_out(effects, None);
        cp.follow_names();
        let inbox = Inbox {
            probes: results,
            names: names_rx,
        };
        Ok((cp, inbox))
    }

    pub fn config(&self) -> &Config {
        self.core.config()
    }

    /// Does what the core said, in its order.
    fn carry_out(&mut self, effects: Vec<Effect>, workers: Option<&Workers>) {
        for effect in effects {
            match effect {
                Effect::Publish(snapshot) => self.shared.store(snapshot),
                Effect::CloseTarget { group, addr } => {
                    let Some(workers) = workers else {
                        continue; // no worker runs yet: nothing to close
                    };
                    workers.tell_all(|| Command::CloseTarget {
                        group: group.clone(),
                        addr,
                    });
                }
                Effect::Probes(wanted) => self.prober.sync(&wanted),
                Effect::Log(event) => self.remember(event),
            }
        }
    }

    /// Logs `event` and keeps it with the latest.
    fn remember(&mut self, event: Event) {
        event.log();
        if self.recent.len() == RECENT_EVENTS {
            self.recent.pop_front();
        }
        self.recent.push_back((SystemTime::now(), event));
    }

    /// The latest events, oldest first, with when each happened.
    pub fn recent_events(&self) -> impl Iterator<Item = &(SystemTime, Event)> {
        self.recent.iter()
    }

    /// A probe finished. Stale results (a replaced probe task) are ignored.
    pub fn on_probe(&mut self, r: ProbeResult) {
        if self.prober.generation(&r.group, r.addr) != Some(r.generation) {
            return;
        }
        let (pass, reason) = match &r.outcome {
            Ok(reason) => (true, reason.as_str()),
            Err(reason) => (false, reason.as_str()),
        };
        self.core.checked(&r.group, r.addr, pass, reason);
    }

    /// Something a worker saw.
    pub fn on_event(&mut self, e: worker::Event) {
        match e {
            worker::Event::ConnectFailed { group, addr, error } => {
                let reason = format!("connect failed: {error}");
                self.core.checked(&group, addr, false, &reason);
            }
        }
    }

    /// When health flips wait for a snapshot, if they do.
    pub fn publish_due(&self) -> Option<Instant> {
        self.core.flush_due()
    }

    /// Publishes what health flips wait for, if it is due; how long that
    /// took paces the next (see [`publish::Pacer`]).
    pub fn flush(&mut self) {
        let started = Instant::now();
        let effects = self.core.flush(started);
        if effects.is_empty() {
            return;
        }
        self.carry_out(effects, None);
        self.core.flush_took(started.elapsed());
    }

    /// One tick: follow the targets files, finish or expire drains.
    pub fn tick(&mut self, workers: &Workers) {
        let now = Instant::now();
        for g in 0..self.watches.len() {
            let cfg = &self.core.config().groups[g];
            let answers = &self.answers;
            let fits =
                |l: &crate::targets::Listing| load::fits(cfg, &names::compose(l, answers).targets);
            let Some(change) = self.watches[g].poll(now, fits) else {
                continue;
            };
            let group: Arc<str> = cfg.name.as_str().into();
            let effects = match change {
                Change::Reject(e) => {
                    self.reload_errors += 1;
                    let error = e.to_string();
                    vec![Effect::Log(Event::TargetsRejected { group, error })]
                }
                Change::Emptied => {
                    let grace = crate::targets::watch::EMPTY_GRACE;
                    vec![Effect::Log(Event::TargetsFileEmptied { group, grace })]
                }
                Change::Apply(_) => {
                    self.reloads += 1;
                    self.follow_names();
                    self.recompose(g, now)
                }
            };
            self.carry_out(effects, Some(workers));
        }
        let effects = self.core.tick(now);
        self.carry_out(effects, Some(workers));
        if self.history.due(now) {
            self.sample_history(now);
        }
    }

    /// A lookup of a name finished: a changed answer changes the targets
    /// of every group whose file lists the name, by the path an edited
    /// file takes (new targets are probed first, gone ones drain).
    pub fn on_resolution(&mut self, r: Resolution, workers: &Workers) {
        let query = r.query.clone();
        let Some(change) = self.answers.record(r) else {
            return;
        };
        let retargets = matches!(
            change,
            names::Change::Answered { .. } | names::Change::Gone { .. }
        );
        let source = query.to_string();
        self.remember(Event::Discovery { source, change });
        if !retargets {
            return;
        }
        let now = Instant::now();
        for g in 0..self.watches.len() {
            if self.watches[g]
                .applied()
                .names
                .iter()
                .any(|n| n.query == query)
            {
                let effects = self.recompose(g, now);
                self.carry_out(effects, Some(workers));
            }
        }
    }

    /// The lookup thread follows exactly the names the files list now. It
    /// runs only while there are some, and starts afresh (asking every name
    /// again) when `[discovery]` changed.
    fn follow_names(&mut self) {
        let wanted = names::queries_of(self.watches.iter().map(|w| w.applied()));
        self.answers.want(&wanted);
        if wanted.is_empty() {
            self.discovery = None;
            return;
        }
        let settings = &self.core.config().discovery;
        if self.discovery.as_ref().map(Discovery::settings) != Some(settings) {
            // The old thread, if any, ends with its handle.
            self.discovery = match Discovery::start(settings.clone(), self.names_tx.clone()) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::error!("no thread for DNS lookups: {e}; names are not followed");
                    None
                }
            };
        }
        if let Some(d) = &self.discovery {
            d.want(wanted);
        }
    }

    /// Group `g`'s targets from its file's listing and its names' answers.
    fn recompose(&mut self, g: usize, now: Instant) -> Vec<Effect> {
        let c = names::compose(self.watches[g].applied(), &self.answers);
        let cfg = &self.core.config().groups[g];
        if let Err(e) = load::fits(cfg, &c.targets) {
            self.reload_errors += 1;
            let group: Arc<str> = cfg.name.as_str().into();
            let error = e.to_string();
            return vec![Effect::Log(Event::TargetsRejected { group, error })];
        }
        self.origins[g] = c.origin;
        self.core.targets_changed(g, c.targets, now)
    }

    /// A point of the console's charts; refusals since the last are events.
    fn sample_history(&mut self, now: Instant) {
        use crate::access_log::End;
        let listeners: Vec<(String, history::Totals)> = self
            .listeners
            .by_name()
            .into_iter()
            .map(|(name, b)| {
                let slots = &b.stats.slots;
                let closed = |e: End| slots.sum(|s| &s.closed[e.index()]);
                let totals = history::Totals {
                    connections: slots.sum(|s| &s.accepted),
                    bytes: 0,
                    refused: [
                        closed(End::NotAllowed),
                        closed(End::MaxConnections),
                        slots.sum(|s| &s.refused_no_target),
                        closed(End::LocalResources),
                    ],
                };
                (name.to_string(), totals)
            })
            .collect();
        let snap = self.shared.load();
        let totals = |stats: &crate::metrics::TargetStats| {
            let s = &stats.slots;
            history::Totals {
                connections: s.sum(|x| &x.connections),
                bytes: s
                    .sum(|x| &x.bytes_sent)
                    .wrapping_add(s.sum(|x| &x.bytes_received)),
                refused: [0; 4],
            }
        };
        // Targets in service, then those draining: a drained target's chart
        // goes on until its drain ends.
        let targets = snap
            .groups
            .iter()
            .flat_map(|g| {
                g.targets
                    .iter()
                    .map(|t| ((g.name.to_string(), t.addr), totals(&t.stats)))
            })
            .chain(
                snap.draining
                    .iter()
                    .map(|d| ((d.group.to_string(), d.addr), totals(&d.stats))),
            );
        let refusals = self.history.sample(now, listeners.into_iter(), targets);
        drop(snap);
        for r in refusals {
            self.remember(Event::Refused {
                listener: r.listener,
                by_reason: r.by_reason,
                over: r.over,
            });
        }
    }

    /// What the targets file at `path` lists in service, if any group reads it.
    fn in_service(&self, path: &Path) -> Option<crate::targets::Listing> {
        self.watches
            .iter()
            .find(|w| w.path() == path)
            .map(|w| w.applied().clone())
    }

    /// SIGHUP: reload the whole config. Nothing changes unless all of it is
    /// valid and every new listener could be bound.
    pub fn reload_config(&mut self, workers: &Workers) {
        let loaded = load::load(&self.config_path, &|p| self.in_service(p))
            .and_then(|mut l| {
                // Names kept are joined with their last good answers; new
                // ones come in when they answer.
                let origins = l.compose(&self.answers)?;
                Ok((l, origins))
            })
            .map_err(|e| e.to_string())
            .and_then(|(l, origins)| {
                let plans = self
                    .listeners
                    .plan(&l.config.listeners)
                    .map_err(|e| e.to_string())?;
                Ok((l, plans, origins))
            });
        let loaded = loaded.and_then(|(l, plans, origins)| {
            // A changed connection log is opened before anything changes;
            // the one in service keeps writing until the new one is out.
            let log = if l.config.access_log == self.core.config().access_log {
                self.core.access_log().cloned()
            } else {
                start_access_log(&l.config, &self.access_log_dropped)
                    .map_err(|e| format!("[access_log]: {e}"))?
            };
            Ok((l, plans, log, origins))
        });
        let (mut loaded, plans, log, origins) = match loaded {
            Ok(l) => l,
            Err(error) => {
                self.reload_errors += 1;
                self.remember(Event::ConfigRejected { error });
                return;
            }
        };
        self.core.set_access_log(log);
        let mut said = changes::describe(self.core.config(), &loaded.config);
        let texts = std::mem::take(&mut loaded.texts);
        let watches = watches_for(&loaded.config, texts, &loaded.lists);
        let ids = self.listeners.ids_after(&plans);
        let effects = self.core.reload(loaded, ids, &mut said, Instant::now());
        self.watches = watches;
        self.origins = origins;
        self.follow_names();
        self.carry_out(effects, Some(workers));
        said.extend(self.listeners.apply(plans, workers));
        self.reloads += 1;
        let changes = if said.is_empty() {
            "none".to_string()
        } else {
            said.join("; ")
        };
        let epoch = self.core.epoch();
        self.remember(Event::ConfigReloaded { epoch, changes });
    }

    /// At shutdown, once the workers are done: the connection log writes
    /// what is queued.
    pub fn finish_access_log(&self) {
        if let Some(log) = self.core.access_log() {
            log.finish();
        }
    }

    /// SIGUSR1: the connection log's file is opened again (after rotation).
    pub fn reopen_access_log(&self) {
        if let Some(log) = self.core.access_log() {
            log.reopen();
        }
    }

    /// Closes the copies of the listening sockets kept for a takeover: once
    /// the workers close theirs, the sockets close and new connections are
    /// refused (graceful shutdown), not queued with nobody to accept them.
    pub fn drop_handover(&mut self) {
        self.listeners.drop_handover();
    }

    /// Each listener's name and the address it is bound to, by name.
    pub fn listener_addrs(&self) -> Vec<(String, SocketAddr)> {
        self.listeners.addrs()
    }

    /// Copies of every listener's sockets, for a process taking over.
    pub fn offer(&self) -> Vec<crate::takeover::HandedListener> {
        self.listeners.offer()
    }
}

/// The connection log `config` asks for, started, or none.
fn start_access_log(
    config: &Config,
    dropped: &Arc<AtomicU64>,
) -> std::io::Result<Option<Arc<crate::access_log::AccessLog>>> {
    use crate::access_log::{AccessLog, Destination, Format, Settings};
    let Some(c) = &config.access_log else {
        return Ok(None);
    };
    let settings = Settings {
        to: match &c.to {
            crate::config::LogTo::Stderr => Destination::Stderr,
            crate::config::LogTo::File(s) => Destination::File(s.path.clone()),
        },
        format: match c.format {
            crate::config::LogFormat::Text => Format::Text,
            crate::config::LogFormat::Json => Format::Json,
        },
        every: c.every,
    };
    AccessLog::start(settings, dropped.clone()).map(Some)
}

/// One watch per group, starting from the text that was loaded and the set
/// that was applied from it.
fn watches_for(
    config: &Config,
    texts: Vec<String>,
    lists: &[crate::targets::Listing],
) -> Vec<FileWatch> {
    config
        .groups
        .iter()
        .zip(texts)
        .zip(lists)
        .map(|((g, text), applied)| FileWatch::new(&g.targets_file, text, applied.clone()))
        .collect()
}
