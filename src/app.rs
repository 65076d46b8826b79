//! Boot and shutdown order. The main thread is the control plane: it loads the
//! config, binds every listener, publishes the first snapshot, starts the
//! workers, then waits for signals.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{error, info, warn};

use crate::config::{self, Config, ConfigError};
use crate::control::{BoundInfo, ControlPlane};
use crate::listener::ListenerError;
use crate::runtime::{self, RuntimeError, Stop, WorkerPlan};
use crate::snapshot::{self, SharedSnapshot, Snapshot};
use crate::targets::{self, Target, TargetsError};
use crate::{admin, notify, takeover};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{source} (targets_file of target_group {group:?})")]
    Targets { group: String, source: TargetsError },
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: io::Error,
    },
    #[error("{0}")]
    Takeover(String),
    #[error("admin endpoint on {addr} ([admin] listen): {source}")]
    Admin {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
}

/// A validated config with every group's targets read.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub targets: Vec<Vec<Target>>,
    /// The text each group's targets were read from, as read.
    pub texts: Vec<String>,
}

impl Loaded {
    /// One warning per group that has no targets (its clients are closed).
    pub fn warnings(&self) -> Vec<String> {
        self.config
            .groups
            .iter()
            .zip(&self.targets)
            .filter(|(_, t)| t.is_empty())
            .map(|(g, _)| empty_group_warning(&g.name, &g.targets_file))
            .collect()
    }
}

/// Whether a group's algorithm can take this many targets: a Maglev table
/// has [`TABLE_SIZE`](crate::balancer::maglev::TABLE_SIZE) slots, one target
/// each at the least. Checked at start, in check, on SIGHUP and on reload.
pub fn fits(group: &config::GroupConfig, targets: &[Target]) -> Result<(), TargetsError> {
    use crate::balancer::maglev::TABLE_SIZE;
    if matches!(group.algorithm, config::Algorithm::Maglev(_)) && targets.len() > TABLE_SIZE {
        return Err(TargetsError {
            file: group.targets_file.clone(),
            line: 0,
            message: format!(
                "{} targets: a maglev group takes at most {TABLE_SIZE} (one per table slot)",
                targets.len()
            ),
        });
    }
    Ok(())
}

/// The one wording for a group without targets, at start, in check and on reload.
pub fn empty_group_warning(group: &str, file: &Path) -> String {
    format!(
        "target group {group:?} has no targets ({} lists none): its clients will be closed until targets are added",
        file.display()
    )
}

/// Reads and validates the config and every targets file it names, by the
/// same rules at start-up, in `check` and on SIGHUP. `in_service` gives the
/// text currently applied from a targets file, if any (see [`targets::load`]).
pub fn load(
    path: &Path,
    in_service: &dyn Fn(&Path) -> Option<String>,
) -> Result<Loaded, LoadError> {
    let config = config::load(path)?;
    let mut targets = Vec::with_capacity(config.groups.len());
    let mut texts = Vec::with_capacity(config.groups.len());
    for g in &config.groups {
        let serving = in_service(&g.targets_file);
        let (text, t) = targets::load(&g.targets_file, serving.as_deref()).map_err(|source| {
            LoadError::Targets {
                group: g.name.clone(),
                source,
            }
        })?;
        fits(g, &t).map_err(|source| LoadError::Targets {
            group: g.name.clone(),
            source,
        })?;
        texts.push(text);
        targets.push(t);
    }
    Ok(Loaded {
        config,
        targets,
        texts,
    })
}

/// `ringlb check`: a one-line summary of a good config, and its warnings.
pub fn check(path: &Path) -> Result<(String, Vec<String>), LoadError> {
    let l = load(path, &|_| None)?;
    let targets: usize = l.targets.iter().map(Vec::len).sum();
    let summary = format!(
        "{}: ok: {} listener(s), {} target group(s), {} target(s)",
        path.display(),
        l.config.listeners.len(),
        l.config.groups.len(),
        targets
    );
    Ok((summary, l.warnings()))
}

/// How often the control plane looks at targets files and drains.
const TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// The signals ringlb acts on, installed before anything is bound so a
/// signal sent the moment it is ready is never lost.
struct Signals {
    stop: StopSignals,
    hup: tokio::signal::unix::Signal,
}

/// SIGTERM and SIGINT: both mean stop.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Signals, AppError> {
        let sig = |kind| {
            signal(kind).map_err(|source| AppError::Io {
                what: "signal handler",
                source,
            })
        };
        Ok(Signals {
            stop: StopSignals {
                term: sig(SignalKind::terminate())?,
                int: sig(SignalKind::interrupt())?,
            },
            hup: sig(SignalKind::hangup())?,
        })
    }
}

impl StopSignals {
    /// The next SIGTERM or SIGINT, by name.
    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Binds the admin endpoint's listener.
fn bind_admin(addr: SocketAddr) -> Result<std::net::TcpListener, AppError> {
    std::net::TcpListener::bind(addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| AppError::Admin { addr, source })
}

/// The admin endpoint, serving on the control plane's runtime.
struct AdminTask {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
    /// A copy of the listening socket, handed to a process that takes over.
    handover: Option<std::os::fd::OwnedFd>,
}

impl AdminTask {
    fn start(
        listener: std::net::TcpListener,
        asks: tokio::sync::mpsc::Sender<admin::Ask>,
    ) -> Result<AdminTask, AppError> {
        let addr = listener.local_addr().map_err(|source| AppError::Admin {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let handover = listener.try_clone().ok().map(std::os::fd::OwnedFd::from);
        let listener = tokio::net::TcpListener::from_std(listener)
            .map_err(|source| AppError::Admin { addr, source })?;
        let task = tokio::spawn(admin::serve(listener, asks));
        info!(%addr, "admin listening");
        Ok(AdminTask {
            addr,
            task,
            handover,
        })
    }
}

/// What a takeover server thread asks the main loop.
enum Handover {
    /// The sockets to hand over (None: stopping, no takeover now).
    Offer(tokio::sync::oneshot::Sender<Option<takeover::OfferOwned>>),
    /// The new process is ready: stop accepting, drain, exit.
    Taken,
}

/// Serves takeover requests on `fd` from a thread of its own.
fn spawn_takeover_server(
    path: std::path::PathBuf,
    fd: std::os::fd::OwnedFd,
    to_main: tokio::sync::mpsc::Sender<Handover>,
) {
    let spawned = std::thread::Builder::new()
        .name("ringlb-takeover".into())
        .spawn(move || {
            let ask = to_main.clone();
            takeover::serve(
                &path,
                fd,
                move || {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    ask.blocking_send(Handover::Offer(tx)).ok()?;
                    rx.blocking_recv().ok().flatten()
                },
                move || {
                    let _stopping = to_main.blocking_send(Handover::Taken);
                },
            );
        });
    if let Err(e) = spawned {
        warn!(error = %e, "no thread for the takeover socket; takeovers are off");
    }
}

/// How long a process taking over waits for its targets' first passing
/// probes before it tells the old process to stop accepting.
const TAKEOVER_SETTLE: std::time::Duration = std::time::Duration::from_secs(10);

/// `ringlb run`: serve until SIGTERM or SIGINT; SIGHUP reloads the config.
/// With `takeover`, first take the listening sockets over from the ringlb
/// running with the same `[runtime] takeover_socket`.
pub fn run(path: &Path, takeover: bool) -> Result<(), AppError> {
    let loaded = load(path, &|_| None)?;
    raise_nofile_limit();
    let takeover_path = loaded.config.runtime.takeover_socket.clone();
    let mut inherited = match (&takeover_path, takeover) {
        (None, true) => {
            return Err(AppError::Takeover(format!(
                "{}: --takeover needs [runtime] takeover_socket (the running ringlb's)",
                path.display()
            )));
        }
        (Some(p), true) => {
            let i = takeover::take(p).map_err(|e| AppError::Takeover(e.to_string()))?;
            info!(
                listeners = i.listeners.len(),
                "took over the running ringlb's sockets"
            );
            Some(i)
        }
        _ => None,
    };
    // The running process's role: offer its sockets to the next one. A
    // process taking over binds this only once the old one has let go.
    let takeover_listener = match (&takeover_path, &inherited) {
        (Some(p), None) => {
            Some(takeover::listen(p).map_err(|e| AppError::Takeover(e.to_string()))?)
        }
        _ => None,
    };

    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AppError::Io {
            what: "control-plane runtime",
            source,
        })?;
    let mut signals = {
        let _in_runtime = control.enter();
        Signals::install()?
    };

    let config = &loaded.config;
    let cpus = runtime::allowed_cpus();
    let workers = match config.runtime.workers {
        0 => cpus.len().max(1),
        n => n,
    };
    let mut plans: Vec<WorkerPlan> = (0..workers)
        .map(|id| WorkerPlan {
            id,
            cpu: (!cpus.is_empty()).then(|| cpus[id % cpus.len()]),
            listeners: Vec::new(),
        })
        .collect();
    let mut bound = HashMap::new();
    for l in &config.listeners {
        let handed = inherited.as_mut().and_then(|i| i.listener(&l.name, l.addr));
        let (info, sockets) = match handed {
            Some(h) => BoundInfo::adopt(l, workers, h)?,
            None => BoundInfo::bind(l, workers, true)?,
        };
        for (plan, socket) in plans.iter_mut().zip(sockets) {
            plan.listeners.push(info.for_worker(socket));
        }
        let group = &config.groups[l.group];
        info!(listener = %l.name, addr = %info.addr, group = %group.name, "listening");
        bound.insert(l.name.clone(), info);
    }
    for (g, t) in config.groups.iter().zip(&loaded.targets) {
        if t.is_empty() {
            warn!("{}", empty_group_warning(&g.name, &g.targets_file));
        } else {
            info!(group = %g.name, count = t.len(), targets = %snapshot::describe(t), "targets loaded");
        }
    }
    let handed_admin = inherited
        .as_mut()
        .and_then(|i| i.admin.take())
        .filter(|(was, _)| *was == config.admin);
    let admin_listener = match handed_admin {
        Some((_, l)) => l,
        None => bind_admin(config.admin)?,
    };
    let (splice, pipe_size) = (config.runtime.splice, config.runtime.pipe_size);

    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    // Probe tasks are spawned on the control plane's runtime.
    let (mut cp, mut probes) = {
        let _in_runtime = control.enter();
        ControlPlane::new(path.to_path_buf(), loaded, bound, shared.clone(), workers)
    };
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(Stop::Run);
    let workers_handle = runtime::start(
        plans,
        runtime::Shared {
            snapshot: shared,
            events: events_tx,
            stop: stop_rx,
            stats: cp.worker_stats.clone(),
            splice,
            pipe_size,
        },
    )?;

    control.block_on(async {
        let (ask_tx, mut asks) = tokio::sync::mpsc::channel(64);
        let mut admin = AdminTask::start(admin_listener, ask_tx.clone())?;
        info!(workers, pid = std::process::id(), "ready");
        let mut status = cp.status_line();
        let (handover_tx, mut handovers) = tokio::sync::mpsc::channel(1);
        if let (Some(p), Some(fd)) = (&takeover_path, takeover_listener) {
            spawn_takeover_server(p.clone(), fd, handover_tx.clone());
        }
        // Taking over: READY to the old process once every group serves
        // (or TAKEOVER_SETTLE passed); then its takeover socket is ours.
        let settle_until = tokio::time::Instant::now() + TAKEOVER_SETTLE;
        let mut letting_go: Option<tokio::task::JoinHandle<_>> = None;
        if inherited.is_some() {
            notify::ready_as_main(&status);
        } else {
            notify::ready(&status);
        }
        let mut taken_over = false;

        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watchdog_every = notify::watchdog_interval();
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(std::time::Duration::from_secs(3600)));
        loop {
            tokio::select! {
                name = signals.stop.next() => { info!("{name}: shutting down"); break }
                _ = signals.hup.recv() => {
                    info!("SIGHUP: reloading config");
                    notify::reloading();
                    cp.reload_config(&workers_handle);
                    move_admin(&mut admin, cp.config().admin, &ask_tx);
                    status = cp.status_line();
                    notify::ready(&status);
                }
                _ = tick.tick() => {
                    if inherited.is_some()
                        && (cp.every_group_serves() || tokio::time::Instant::now() >= settle_until)
                        && let Some(i) = inherited.take()
                    {
                        letting_go = Some(tokio::task::spawn_blocking(move || i.ready()));
                    }
                    if letting_go.as_ref().is_some_and(|h| h.is_finished())
                        && let Some(h) = letting_go.take()
                    {
                        match h.await {
                            Ok(Ok(p)) => {
                                info!("the old process let go; this one serves alone");
                                takeover::tell_upgrader();
                                match takeover::listen(&p) {
                                    Ok(fd) => spawn_takeover_server(p, fd, handover_tx.clone()),
                                    Err(e) => warn!(error = %e, "takeovers of this process are off"),
                                }
                            }
                            Ok(Err(e)) => warn!(error = %e, "the old process did not confirm; both may accept until it stops"),
                            Err(e) => warn!(error = %e, "takeover hand-shake failed"),
                        }
                    }
                    cp.tick(&workers_handle);
                    let now = cp.status_line();
                    if now != status {
                        status = now;
                        notify::status(&status);
                    }
                }
                _ = watchdog.tick(), if watchdog_every.is_some() => notify::watchdog(),
                Some(r) = probes.recv() => cp.on_probe(r),
                Some(e) = events.recv() => cp.on_event(e),
                Some(ask) = asks.recv() => {
                    // The asker may have gone; then there is nobody to answer.
                    let _gone = ask.reply.send(cp.answer(ask.route));
                }
                Some(h) = handovers.recv() => match h {
                    Handover::Offer(reply) => {
                        let admin_fd = admin
                            .handover
                            .as_ref()
                            .and_then(|fd| fd.try_clone().ok())
                            .map(|fd| (cp.config().admin, fd));
                        let _gone = reply.send(Some(takeover::OfferOwned {
                            listeners: cp.offer(),
                            admin: admin_fd,
                        }));
                    }
                    Handover::Taken => {
                        info!("taken over by a new process: stop accepting, drain, exit");
                        taken_over = true;
                        break;
                    }
                },
            }
        }
        cp.drop_handover();
        admin.handover = None;
        // After a takeover the new process is systemd's main one: this one
        // must not say STOPPING.
        if !taken_over {
            notify::stopping();
        }
        admin.task.abort();
        let grace = cp.config().runtime.shutdown_timeout;
        stop_tx.send_replace(Stop::Drain(grace));
        // Workers drain on their threads; a second SIGTERM or SIGINT cuts
        // the grace short, as with HAProxy and nginx.
        let mut joined = tokio::task::spawn_blocking(move || {
            workers_handle
                .threads
                .into_iter()
                .map(|h| h.join().is_ok())
                .filter(|ok| !ok)
                .count()
        });
        let panicked = tokio::select! {
            r = &mut joined => r,
            name = signals.stop.next() => {
                warn!("{name} again: closing every connection now");
                stop_tx.send_replace(Stop::Now);
                joined.await
            }
        };
        if panicked.map_or(true, |n| n > 0) {
            warn!("a worker panicked during shutdown");
        }
        Ok::<(), AppError>(())
    })?;
    info!("stopped");
    Ok(())
}

/// Moves the admin endpoint after a SIGHUP changed `[admin] listen`. If the
/// new address cannot be bound, the old endpoint keeps serving.
fn move_admin(
    admin: &mut AdminTask,
    wanted: SocketAddr,
    asks: &tokio::sync::mpsc::Sender<admin::Ask>,
) {
    let same = wanted == admin.addr || (wanted.port() == 0 && wanted.ip() == admin.addr.ip());
    if same {
        return;
    }
    match bind_admin(wanted).and_then(|l| AdminTask::start(l, asks.clone())) {
        Ok(new) => {
            admin.task.abort();
            *admin = new;
        }
        Err(e) => {
            error!(error = %e, "admin endpoint not moved; it stays on {}", admin.addr)
        }
    }
}

/// Raises the soft open-files limit to the hard one: each proxied connection
/// holds two sockets, and each flowing direction a pipe (two more).
fn raise_nofile_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: get/setrlimit with a valid pointer to our own struct.
    let rc = unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            -1
        } else {
            let before = lim.rlim_cur;
            lim.rlim_cur = lim.rlim_max;
            let rc = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            if rc == 0 && before != lim.rlim_cur {
                info!(from = before, to = lim.rlim_cur, "raised open-files limit");
            }
            rc
        }
    };
    if rc != 0 {
        warn!(error = %io::Error::last_os_error(), "cannot raise the open-files limit");
    }
}
