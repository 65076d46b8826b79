//! `ringlb autoscale`: the reference autoscaler. It sees ringlb only through
//! its public interfaces (the targets file it writes, the admin endpoint it
//! reads), so any other autoscaler can take its place.
//!
//! Each group has its own loop: every second it follows targets through
//! starting -> in service -> removing (drained by ringlb) -> stopped, and
//! replaces targets that exit or stay unhealthy past the grace period; every
//! `period` it measures the metric and lets the policy decide.

mod admin;
pub mod config;
pub mod fleet;
pub mod observe;
pub mod policy;

use admin::{Board, GroupStats, serve_admin};

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{debug, info, warn};

use config::{GroupConfig, Metric, Policy};
use fleet::{Content, Fleet, TargetsFile};
use observe::GroupView;
use policy::PolicyState;

/// How often targets are followed (health, drains, exits).
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// How long `--stop-targets-on-exit` waits for ringlb to drain them.
const EXIT_DRAIN_LIMIT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum AutoscaleError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("{0}")]
    Start(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Starting,
    InService,
    Removing,
}

#[derive(Debug)]
struct Managed {
    state: State,
    since: Instant,
    unhealthy_since: Option<Instant>,
    /// The last CPU sample: (pid, CPU seconds, when).
    cpu: Option<(u32, f64, Instant)>,
}

impl Managed {
    fn new(state: State, now: Instant) -> Managed {
        Managed {
            state,
            since: now,
            unhealthy_since: None,
            cpu: None,
        }
    }
}

struct Group {
    cfg: GroupConfig,
    file: TargetsFile,
    others: Vec<String>,
    fleet: Fleet,
    managed: BTreeMap<u16, Managed>,
    policy: PolicyState,
    /// The last connections-total sample: (sum, when).
    connections: Option<(u64, Instant)>,
    stats: GroupStats,
    ringlb_down: bool,
}

pub fn run(
    path: &Path,
    stop_targets_on_exit: bool,
    address_file: Option<&Path>,
) -> Result<(), AutoscaleError> {
    let cfg = config::load(path)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| AutoscaleError::Start(format!("cannot start a runtime: {e}")))?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let board: Board = Rc::default();
        let mut admin = None;
        if let Some(addr) = cfg.admin {
            let l = TcpListener::bind(addr)
                .await
                .map_err(|e| AutoscaleError::Start(format!("cannot listen on {addr}: {e}")))?;
            let bound = l.local_addr().map_or(addr, |a| a);
            info!(addr = %bound, "autoscale admin listening");
            admin = Some(bound.to_string());
            tokio::task::spawn_local(serve_admin(l, board.clone()));
        }
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut loops = Vec::new();
        for g in cfg.groups {
            let g = Group::adopt(g).map_err(AutoscaleError::Start)?;
            loops.push(tokio::task::spawn_local(group_loop(
                g,
                board.clone(),
                stop_rx.clone(),
            )));
        }
        if let Some(path) = address_file {
            let body = serde_json::json!({ "pid": std::process::id(), "admin": admin });
            crate::files::write_address_file(path, &body);
        }
        let mut term = signal(SignalKind::terminate())
            .map_err(|e| AutoscaleError::Start(format!("cannot handle SIGTERM: {e}")))?;
        let mut int = signal(SignalKind::interrupt())
            .map_err(|e| AutoscaleError::Start(format!("cannot handle SIGINT: {e}")))?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("stopping");
        stop_tx.send_replace(true);
        let mut left = Vec::new();
        for l in loops {
            let Ok(mut g) = l.await else { continue };
            if stop_targets_on_exit {
                g.stop_all().await;
            } else {
                left.extend(g.managed.keys().map(|&p| SocketAddr::new(g.cfg.host, p)));
            }
        }
        if !left.is_empty() {
            warn!(
                targets = %crate::targets::describe_addrs(&left),
                "{} targets keep running (a restarted autoscaler adopts them); to stop them when the autoscaler stops, run it with --stop-targets-on-exit",
                left.len()
            );
        }
        Ok(())
    })
}

/// Runs one group until told to stop; hands the group back.
async fn group_loop(
    mut g: Group,
    board: Board,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> Group {
    let period = g.cfg.period;
    let mut follow = tokio::time::interval(FOLLOW_EVERY.min(period));
    let mut next_decision = Instant::now() + period;
    loop {
        tokio::select! {
            _ = follow.tick() => {}
            _ = stop.wait_for(|s| *s) => return g,
        }
        let now = Instant::now();
        let decide = now >= next_decision;
        if decide {
            next_decision += period;
            if next_decision < now {
                next_decision = now + period;
            }
        }
        g.tick(now, decide).await;
        board
            .borrow_mut()
            .insert(g.cfg.name.clone(), g.stats.clone());
    }
}

impl Group {
    /// Takes over the targets already in the file (after a restart) instead
    /// of starting duplicates.
    fn adopt(cfg: GroupConfig) -> Result<Group, String> {
        let file = TargetsFile {
            path: cfg.targets_file.clone(),
            host: cfg.host,
            ports: cfg.ports.clone(),
        };
        if !file.path.exists() {
            // The autoscaler owns this file: it makes it (and its folder),
            // so ringlb, started after it, finds it.
            if let Some(dir) = file.path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("{}: cannot create: {e}", dir.display()))?;
            }
            file.write(&Content::default())?;
            info!(group = %cfg.name, file = %file.path.display(), "created the targets file");
        }
        let Content { ours, others } = file.read()?;
        let now = Instant::now();
        let managed: BTreeMap<u16, Managed> = ours
            .iter()
            .map(|&p| (p, Managed::new(State::Starting, now)))
            .collect();
        if !managed.is_empty() {
            info!(
                group = %cfg.name,
                targets = ?ours.iter().map(|&p| SocketAddr::new(cfg.host, p)).collect::<Vec<_>>(),
                "adopted the targets already in the file"
            );
        }
        Ok(Group {
            fleet: Fleet::new(cfg.launcher.clone()),
            file,
            others,
            managed,
            policy: PolicyState::default(),
            connections: None,
            stats: GroupStats {
                past: admin::Past {
                    lines: match cfg.policy {
                        Policy::TargetTracking { target, .. } => vec![target],
                        Policy::Step {
                            scale_out_threshold,
                            scale_in_threshold,
                            ..
                        } => vec![scale_out_threshold, scale_in_threshold],
                    },
                    min: cfg.min,
                    max: cfg.max,
                    metric: cfg.metric.name(),
                    ..admin::Past::default()
                },
                ..GroupStats::default()
            },
            ringlb_down: false,
            cfg,
        })
    }

    fn addr(&self, port: u16) -> SocketAddr {
        SocketAddr::new(self.cfg.host, port)
    }

    fn count(&self, state: State) -> u32 {
        self.managed.values().filter(|m| m.state == state).count() as u32
    }

    async fn tick(&mut self, now: Instant, decide: bool) {
        let view = match observe::ringlb_view(self.cfg.ringlb_admin, &self.cfg.name).await {
            Ok(v) => {
                if self.ringlb_down {
                    info!(group = %self.cfg.name, "ringlb answers again");
                    self.ringlb_down = false;
                }
                v
            }
            Err(e) => {
                if !self.ringlb_down {
                    warn!(group = %self.cfg.name, error = %e, "cannot read ringlb's state; holding (nothing is stopped blind)");
                    self.ringlb_down = true;
                }
                return;
            }
        };
        let replaced = self.follow(&view, now);
        self.finish_removals(&view).await;
        let current = self.count(State::Starting) + self.count(State::InService);
        // Replacements keep the capacity the group had: the policy decides
        // from it, and min and max hold between periods too.
        let capacity = current + replaced;
        let decision = if decide {
            let value = self.measure(&view, now);
            self.stats.metric = value;
            policy::decide(
                &self.cfg.policy,
                self.cfg.metric,
                &mut self.policy,
                capacity,
                value,
                (self.cfg.min, self.cfg.max),
                now,
            )
        } else if capacity < self.cfg.min {
            policy::Decision {
                desired: self.cfg.min,
                why: format!("below min {}", self.cfg.min),
            }
        } else {
            policy::Decision {
                desired: capacity.min(self.cfg.max),
                why: format!("above max {}", self.cfg.max),
            }
        };
        let desired = decision.desired;
        if desired != capacity {
            let way = if desired > capacity { "out" } else { "in" };
            let said = format!(
                "scale {way} {} {capacity} -> {desired}: {}",
                self.cfg.name, decision.why
            );
            info!("{said}");
            if desired > capacity {
                self.stats.scale_out += 1;
            } else {
                self.stats.scale_in += 1;
            }
            let at_ms = admin::unix_ms();
            self.stats.past.decided(at_ms, "info", said.clone());
            self.stats.last_decision = said;
            self.stats.last_decision_unix = at_ms as f64 / 1000.0;
        } else if decide {
            debug!(group = %self.cfg.name, capacity, "hold: {}", decision.why);
        }
        if desired > current {
            self.start(desired - current, now).await;
        } else if desired < current {
            self.remove(current - desired);
        }
        self.stats.desired = desired;
        self.stats.starting = self.count(State::Starting);
        self.stats.in_service = self.count(State::InService);
        self.stats.removing = self.count(State::Removing);
        if decide {
            self.stats.past.point(admin::Point {
                at_ms: admin::unix_ms(),
                metric: self.stats.metric,
                desired,
                in_service: self.stats.in_service,
            });
        }
    }

    /// Moves targets along with what ringlb says of them; takes out those
    /// that exited or stayed unhealthy past the grace period. Returns how
    /// many were taken out (each gets a replacement).
    fn follow(&mut self, view: &GroupView, now: Instant) -> u32 {
        let grace = self.cfg.health_check_grace_period;
        let mut doomed = Vec::new();
        for (&port, m) in &mut self.managed {
            if m.state == State::Removing {
                continue;
            }
            let addr = SocketAddr::new(self.cfg.host, port);
            if let Some(status) = self.fleet.exited(port) {
                doomed.push((port, format!("its process exited ({status})")));
                continue;
            }
            let ready = view.targets.get(&addr).is_some_and(|t| t.ready);
            if ready {
                if m.state == State::Starting {
                    let after = now.duration_since(m.since);
                    info!(group = %self.cfg.name, target = %addr, after = ?after, "in service");
                    self.stats.past.decided(
                        admin::unix_ms(),
                        "info",
                        format!("{addr} in service after {:.1} s", after.as_secs_f64()),
                    );
                }
                m.state = State::InService;
                m.unhealthy_since = None;
                continue;
            }
            let since = match m.state {
                State::Starting => m.since,
                _ => *m.unhealthy_since.get_or_insert(now),
            };
            if now.duration_since(since) > grace {
                let what = match m.state {
                    State::Starting => "not healthy within",
                    _ => "unhealthy for longer than",
                };
                doomed.push((port, format!("{what} health_check_grace_period {grace:?}")));
            }
        }
        let n = doomed.len() as u32;
        for (port, why) in doomed {
            warn!(group = %self.cfg.name, target = %self.addr(port), "replacing: {why}");
            let text = format!("replacing {}: {why}", self.addr(port));
            self.stats.past.decided(admin::unix_ms(), "warn", text);
            self.stats.replaced += 1;
            if let Some(m) = self.managed.get_mut(&port) {
                m.state = State::Removing;
            }
        }
        if n > 0 {
            self.write_file();
        }
        n
    }

    /// Stops targets being removed once ringlb lists them nowhere: it has
    /// read the file without them and their drain is over.
    async fn finish_removals(&mut self, view: &GroupView) {
        let done: Vec<u16> = self
            .managed
            .iter()
            .filter(|(p, m)| {
                m.state == State::Removing && !view.targets.contains_key(&self.addr(**p))
            })
            .map(|(p, _)| *p)
            .collect();
        for port in done {
            match self.fleet.stop(port).await {
                Ok(()) => {
                    info!(group = %self.cfg.name, target = %self.addr(port), "drained and stopped");
                    let text = format!("{} drained and stopped", self.addr(port));
                    self.stats.past.decided(admin::unix_ms(), "info", text);
                    self.managed.remove(&port);
                }
                Err(e) => {
                    warn!(group = %self.cfg.name, target = %self.addr(port), error = %e, "cannot stop; will retry")
                }
            }
        }
    }

    /// The metric over the last period, over targets in service.
    fn measure(&mut self, view: &GroupView, now: Instant) -> Option<f64> {
        let in_service: Vec<u16> = self
            .managed
            .iter()
            .filter(|(_, m)| m.state == State::InService)
            .map(|(p, _)| *p)
            .collect();
        // Targets of the file the autoscaler does not own count as capacity too.
        let serving = view
            .targets
            .values()
            .filter(|t| t.ready && !t.draining)
            .count();
        match self.cfg.metric {
            Metric::Cpu => {
                let mut sum = 0.0;
                let mut n = 0;
                for port in in_service {
                    let pid = observe::listener_pid(port);
                    let m = self.managed.get_mut(&port)?;
                    let Some(pid) = pid else {
                        m.cpu = None;
                        continue;
                    };
                    let Some(cpu) = observe::cpu_seconds(pid) else {
                        continue;
                    };
                    if let Some((was_pid, was, at)) = m.cpu
                        && was_pid == pid
                    {
                        let secs = now.duration_since(at).as_secs_f64();
                        if secs > 0.0 {
                            sum += (cpu - was) / secs / self.cfg.cpu_per_target * 100.0;
                            n += 1;
                        }
                    }
                    m.cpu = Some((pid, cpu, now));
                }
                (n > 0).then(|| sum / f64::from(n))
            }
            Metric::ActiveConnections => {
                let active: u64 = view.targets.values().map(|t| t.active).sum();
                (serving > 0).then(|| active as f64 / serving as f64)
            }
            Metric::NewConnectionsPerSecond => {
                let total: u64 = view.connections_total.values().sum();
                let was = self.connections.replace((total, now));
                let (before, at) = was?;
                let secs = now.duration_since(at).as_secs_f64();
                (serving > 0 && secs > 0.0 && total >= before)
                    .then(|| (total - before) as f64 / secs / serving as f64)
            }
        }
    }

    /// Starts `n` targets on free ports, then lists them in the file.
    async fn start(&mut self, n: u32, now: Instant) {
        let mut started = 0;
        for port in self.cfg.ports.clone() {
            if started == n {
                break;
            }
            if self.managed.contains_key(&port) || observe::listener_pid(port).is_some() {
                continue;
            }
            match self.fleet.start(port).await {
                Ok(()) => {
                    info!(group = %self.cfg.name, target = %self.addr(port), "started");
                    self.managed
                        .insert(port, Managed::new(State::Starting, now));
                    started += 1;
                }
                Err(e) => {
                    warn!(group = %self.cfg.name, target = %self.addr(port), error = %e, "cannot start");
                    break;
                }
            }
        }
        if started < n {
            warn!(group = %self.cfg.name, wanted = n, started, "no free port or start failed; short of capacity");
        }
        if started > 0 {
            self.write_file();
        }
    }

    /// Takes `n` targets out of the file: starting ones first, then the
    /// newest (highest port). They are stopped once drained.
    fn remove(&mut self, n: u32) {
        let mut picks: Vec<(u16, State)> = self
            .managed
            .iter()
            .filter(|(_, m)| m.state != State::Removing)
            .map(|(p, m)| (*p, m.state))
            .collect();
        picks.sort_by_key(|&(p, s)| (s == State::InService, std::cmp::Reverse(p)));
        for (port, _) in picks.into_iter().take(n as usize) {
            info!(group = %self.cfg.name, target = %self.addr(port), "deregistering; stopped once drained");
            if let Some(m) = self.managed.get_mut(&port) {
                m.state = State::Removing;
            }
        }
        self.write_file();
    }

    fn write_file(&mut self) {
        let content = Content {
            ours: self
                .managed
                .iter()
                .filter(|(_, m)| m.state != State::Removing)
                .map(|(p, _)| *p)
                .collect(),
            others: self.others.clone(),
        };
        if let Err(e) = self.file.write(&content) {
            warn!(group = %self.cfg.name, error = %e, "targets file not written");
        }
    }

    /// `--stop-targets-on-exit`: deregisters every target, waits (bounded)
    /// for ringlb to drain them, then stops them.
    async fn stop_all(&mut self) {
        for m in self.managed.values_mut() {
            m.state = State::Removing;
        }
        self.write_file();
        let deadline = Instant::now() + EXIT_DRAIN_LIMIT;
        while !self.managed.is_empty() && Instant::now() < deadline {
            match observe::ringlb_view(self.cfg.ringlb_admin, &self.cfg.name).await {
                Ok(view) => self.finish_removals(&view).await,
                Err(_) => break, // ringlb is gone: nothing left to drain through
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for port in self.managed.keys().copied().collect::<Vec<_>>() {
            if let Err(e) = self.fleet.stop(port).await {
                warn!(group = %self.cfg.name, target = %self.addr(port), error = %e, "cannot stop");
            }
        }
        self.managed.clear();
    }
}
