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

use crate::config::Config;
use crate::control::{BoundInfo, ControlPlane};
use crate::listener::ListenerError;
use crate::load::{LoadError, empty_group_warning, load};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::worker::{self, RuntimeError, Stop, WorkerPlan};
use crate::{admin, notify, takeover};

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
    /// Serves `listener` on the admin thread's runtime (`rt`).
    fn start(
        rt: &tokio::runtime::Handle,
        listener: std::net::TcpListener,
        asks: tokio::sync::mpsc::Sender<admin::Ask>,
    ) -> Result<AdminTask, AppError> {
        let addr = listener.local_addr().map_err(|source| AppError::Admin {
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            source,
        })?;
        let handover = listener.try_clone().ok().map(std::os::fd::OwnedFd::from);
        let listener = {
            let _on_its_runtime = rt.enter();
            tokio::net::TcpListener::from_std(listener)
                .map_err(|source| AppError::Admin { addr, source })?
        };
        let task = rt.spawn(admin::serve(listener, asks));
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
    refused: Arc<std::sync::atomic::AtomicU64>,
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
                move || {
                    refused.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
/// running with the same `[runtime] takeover_socket`. It reads as the
/// start-up order, one step per statement (about 80 lines).
pub fn run(path: &Path, takeover: bool, address_file: Option<&Path>) -> Result<(), AppError> {
    let loaded = load(path, &|_| None)?;
    raise_nofile_limit();
    let takeover_path = loaded.config.runtime.takeover_socket.clone();
    let mut inherited = inherit(path, takeover_path.as_deref(), takeover)?;
    // The running process's role: offer its sockets to the next one. A
    // process taking over binds this only once the old one has let go.
    let takeover_listener = match (&takeover_path, &inherited) {
        (Some(p), None) => {
            Some(takeover::listen(p).map_err(|e| AppError::Takeover(e.to_string()))?)
        }
        _ => None,
    };
    let control = control_runtime()?;
    let signals = {
        let _in_runtime = control.enter();
        Signals::install()?
    };

    let config = &loaded.config;
    let (plans, bound) = plan_workers(config, inherited.as_mut())?;
    let workers = plans.len();
    log_targets(&loaded);
    let handed_admin = inherited
        .as_mut()
        .and_then(|i| i.admin.take())
        .filter(|(was, _)| *was == config.admin);
    let admin_listener = match handed_admin {
        Some((_, l)) => l,
        None => bind_admin(config.admin)?,
    };
    let (splice, pipe_size) = (config.runtime.splice, config.runtime.pipe_size);
    let ring_buffers = config.runtime.ring_buffers;

    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    let (cp, probes) =
        ControlPlane::new(path.to_path_buf(), loaded, bound, shared.clone(), workers).map_err(
            |source| AppError::Io {
                what: "health-probe thread",
                source,
            },
        )?;
    let (events_tx, events) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(Stop::Run);
    let workers_handle = worker::start(
        plans,
        worker::Shared {
            snapshot: shared,
            events: events_tx,
            stop: stop_rx,
            stats: cp.worker_stats.clone(),
            splice,
            pipe_size,
            ring_buffers,
        },
    )?;
    let (ask_tx, asks) = tokio::sync::mpsc::channel(64);
    let (handover_tx, handovers) = tokio::sync::mpsc::channel(1);
    let admin_rt = admin::runtime().map_err(|source| AppError::Io {
        what: "admin endpoint thread",
        source,
    })?;
    let admin = AdminTask::start(&admin_rt, admin_listener, ask_tx.clone())?;
    info!(workers, pid = std::process::id(), "ready");
    let mut main = Main {
        cp,
        workers: workers_handle,
        signals,
        admin,
        admin_rt,
        ask_tx,
        handover_tx,
        inherited,
        takeover_path,
        letting_go: None,
        status: String::new(),
        address_file: address_file.map(Path::to_path_buf),
    };
    main.write_address_file();
    control.block_on(async {
        let taken_over = main
            .serve(takeover_listener, probes, events, asks, handovers)
            .await;
        main.shut_down(taken_over, stop_tx).await;
    });
    info!("stopped");
    Ok(())
}

/// The main thread's runtime: control plane, probes, admin endpoint.
fn control_runtime() -> Result<tokio::runtime::Runtime, AppError> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AppError::Io {
            what: "control-plane runtime",
            source,
        })
}

/// One line per group at start: its targets, or the warning that it has none.
fn log_targets(loaded: &crate::load::Loaded) {
    for (g, t) in loaded.config.groups.iter().zip(&loaded.targets) {
        if t.is_empty() {
            warn!("{}", empty_group_warning(&g.name, &g.targets_file));
        } else {
            info!(group = %g.name, count = t.len(), targets = %crate::targets::describe(t), "targets loaded");
        }
    }
}

/// One plan per worker (`[runtime] workers`, or one per CPU ringlb may run
/// on, each pinned), with its socket of every listener: handed over by the
/// running process when taking over, else bound now.
fn plan_workers(
    config: &Config,
    mut inherited: Option<&mut takeover::Inherited>,
) -> Result<(Vec<WorkerPlan>, HashMap<String, BoundInfo>), AppError> {
    let cpus = worker::allowed_cpus();
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
        let handed = inherited
            .as_deref_mut()
            .and_then(|i| i.listener(&l.name, l.addr));
        let (info, sockets) = match handed {
            Some(h) => BoundInfo::adopt(l, workers, h)?,
            None => BoundInfo::bind(l, workers, true)?,
        };
        info.deal(sockets, |i, listener| plans[i].listeners.push(listener));
        bound.insert(l.name.clone(), info);
    }
    Ok((plans, bound))
}

/// With `--takeover`, the sockets of the ringlb running with the same
/// `[runtime] takeover_socket`.
fn inherit(
    path: &Path,
    takeover_path: Option<&Path>,
    takeover: bool,
) -> Result<Option<takeover::Inherited>, AppError> {
    match (takeover_path, takeover) {
        (None, true) => Err(AppError::Takeover(format!(
            "{}: --takeover needs [runtime] takeover_socket (the running ringlb's)",
            path.display()
        ))),
        (Some(p), true) => {
            let i = takeover::take(p).map_err(|e| AppError::Takeover(e.to_string()))?;
            info!(
                listeners = i.listeners.len(),
                "took over the running ringlb's sockets"
            );
            Ok(Some(i))
        }
        _ => Ok(None),
    }
}

/// The running process, as the main thread's loop sees it.
struct Main {
    cp: ControlPlane,
    workers: worker::Workers,
    signals: Signals,
    admin: AdminTask,
    /// The admin endpoint's runtime (a thread of its own).
    admin_rt: tokio::runtime::Handle,
    ask_tx: tokio::sync::mpsc::Sender<admin::Ask>,
    handover_tx: tokio::sync::mpsc::Sender<Handover>,
    /// Taking over: the old process's sockets until it has been told READY.
    inherited: Option<takeover::Inherited>,
    takeover_path: Option<std::path::PathBuf>,
    /// The READY hand-shake with the old process, while it runs.
    letting_go:
        Option<tokio::task::JoinHandle<Result<std::path::PathBuf, takeover::TakeoverError>>>,
    /// The last STATUS= told to systemd.
    status: String,
    /// `--address-file`.
    address_file: Option<std::path::PathBuf>,
}

impl Main {
    /// Serves until a stop signal or a takeover; true when taken over.
    async fn serve(
        &mut self,
        takeover_listener: Option<std::os::fd::OwnedFd>,
        mut probes: tokio::sync::mpsc::UnboundedReceiver<crate::health::prober::ProbeResult>,
        mut events: tokio::sync::mpsc::UnboundedReceiver<worker::Event>,
        mut asks: tokio::sync::mpsc::Receiver<admin::Ask>,
        mut handovers: tokio::sync::mpsc::Receiver<Handover>,
    ) -> bool {
        self.status = self.cp.status_line();
        if let (Some(p), Some(fd)) = (&self.takeover_path, takeover_listener) {
            spawn_takeover_server(
                p.clone(),
                fd,
                self.handover_tx.clone(),
                self.cp.takeover_refused.clone(),
            );
        }
        // Taking over: READY to the old process once every group serves
        // (or TAKEOVER_SETTLE passed); then its takeover socket is ours.
        let settle_until = tokio::time::Instant::now() + TAKEOVER_SETTLE;
        if self.inherited.is_some() {
            notify::ready_as_main(&self.status);
        } else {
            notify::ready(&self.status);
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watchdog_every = notify::watchdog_interval();
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(std::time::Duration::from_secs(3600)));
        loop {
            // Health flips waiting for their snapshot (they are paced).
            let publish_due = self.cp.publish_due();
            let publish_at =
                tokio::time::Instant::from_std(publish_due.unwrap_or_else(std::time::Instant::now));
            tokio::select! {
                name = self.signals.stop.next() => { info!("{name}: shutting down"); return false }
                _ = tokio::time::sleep_until(publish_at), if publish_due.is_some() => self.cp.flush(),
                _ = self.signals.hup.recv() => self.reload(),
                _ = tick.tick() => {
                    self.let_go_of_the_old_process(settle_until).await;
                    self.cp.tick(&self.workers);
                    let now = self.cp.status_line();
                    if now != self.status {
                        self.status = now;
                        notify::status(&self.status);
                    }
                }
                _ = watchdog.tick(), if watchdog_every.is_some() => notify::watchdog(),
                Some(r) = probes.recv() => self.cp.on_probe(r),
                Some(e) = events.recv() => self.cp.on_event(e),
                Some(ask) = asks.recv() => {
                    // The asker may have gone; then there is nobody to answer.
                    let _gone = ask.reply.send(self.cp.answer(ask.route));
                }
                Some(h) = handovers.recv() => match h {
                    Handover::Offer(reply) => {
                        let admin_fd = self
                            .admin
                            .handover
                            .as_ref()
                            .and_then(|fd| fd.try_clone().ok())
                            .map(|fd| (self.cp.config().admin, fd));
                        let _gone = reply.send(Some(takeover::OfferOwned {
                            listeners: self.cp.offer(),
                            admin: admin_fd,
                        }));
                    }
                    Handover::Taken => {
                        info!("taken over by a new process: stop accepting, drain, exit");
                        return true;
                    }
                },
            }
        }
    }

    /// `--address-file`: the addresses bound now.
    fn write_address_file(&self) {
        let Some(path) = &self.address_file else {
            return;
        };
        let listeners: serde_json::Map<String, serde_json::Value> = self
            .cp
            .listener_addrs()
            .into_iter()
            .map(|(name, addr)| (name, addr.to_string().into()))
            .collect();
        let body = serde_json::json!({
            "pid": std::process::id(),
            "admin": self.admin.addr.to_string(),
            "listeners": listeners,
        });
        crate::files::write_address_file(path, &body);
    }

    /// SIGHUP: reload the config, move the admin endpoint if it changed.
    fn reload(&mut self) {
        info!("SIGHUP: reloading config");
        notify::reloading();
        self.cp.reload_config(&self.workers);
        move_admin(
            &self.admin_rt,
            &mut self.admin,
            self.cp.config().admin,
            &self.ask_tx,
        );
        self.write_address_file();
        self.status = self.cp.status_line();
        notify::ready(&self.status);
    }

    /// Taking over: once every group serves (or `settle_until` passed), tell
    /// the old process READY; once it confirms, serve alone and offer this
    /// process's sockets to the next upgrade.
    async fn let_go_of_the_old_process(&mut self, settle_until: tokio::time::Instant) {
        if self.inherited.is_some()
            && (self.cp.every_group_serves() || tokio::time::Instant::now() >= settle_until)
            && let Some(i) = self.inherited.take()
        {
            self.letting_go = Some(tokio::task::spawn_blocking(move || i.ready()));
        }
        if !self.letting_go.as_ref().is_some_and(|h| h.is_finished()) {
            return;
        }
        let Some(h) = self.letting_go.take() else {
            return;
        };
        match h.await {
            Ok(Ok(p)) => {
                info!("the old process let go; this one serves alone");
                takeover::tell_upgrader();
                match takeover::listen(&p) {
                    Ok(fd) => spawn_takeover_server(
                        p,
                        fd,
                        self.handover_tx.clone(),
                        self.cp.takeover_refused.clone(),
                    ),
                    Err(e) => warn!(error = %e, "takeovers of this process are off"),
                }
            }
            Ok(Err(e)) => {
                warn!(error = %e, "the old process did not confirm; both may accept until it stops")
            }
            Err(e) => warn!(error = %e, "takeover hand-shake failed"),
        }
    }

    /// Stops accepting, lets the workers drain for `shutdown_timeout` (a
    /// second SIGTERM or SIGINT cuts it short, as with HAProxy and nginx),
    /// and joins them.
    async fn shut_down(mut self, taken_over: bool, stop: tokio::sync::watch::Sender<Stop>) {
        self.cp.drop_handover();
        self.admin.handover = None;
        // After a takeover the new process is systemd's main one: this one
        // must not say STOPPING.
        if !taken_over {
            notify::stopping();
        }
        self.admin.task.abort();
        let grace = self.cp.config().runtime.shutdown_timeout;
        stop.send_replace(Stop::Drain(grace));
        let threads = self.workers.threads;
        let mut joined = tokio::task::spawn_blocking(move || {
            threads
                .into_iter()
                .map(|h| h.join().is_ok())
                .filter(|ok| !ok)
                .count()
        });
        let panicked = tokio::select! {
            r = &mut joined => r,
            name = self.signals.stop.next() => {
                warn!("{name} again: closing every connection now");
                stop.send_replace(Stop::Now);
                joined.await
            }
        };
        if panicked.map_or(true, |n| n > 0) {
            warn!("a worker panicked during shutdown");
        }
    }
}

/// Moves the admin endpoint after a SIGHUP changed `[admin] listen`. If the
/// new address cannot be bound, the old endpoint keeps serving.
fn move_admin(
    rt: &tokio::runtime::Handle,
    admin: &mut AdminTask,
    wanted: SocketAddr,
    asks: &tokio::sync::mpsc::Sender<admin::Ask>,
) {
    let same = wanted == admin.addr || (wanted.port() == 0 && wanted.ip() == admin.addr.ip());
    if same {
        return;
    }
    match bind_admin(wanted).and_then(|l| AdminTask::start(rt, l, asks.clone())) {
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
