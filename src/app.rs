//! Boot and shutdown order. The main thread is the control plane: it loads the
//! config, binds every listener, publishes the first snapshot, starts the
//! workers, then waits for signals.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use crate::config::{self, Config, ConfigError};
use crate::control::{BoundInfo, ControlPlane};
use crate::listener::{self, ListenerError};
use crate::metrics::ListenerStats;
use crate::runtime::{self, BoundListener, RuntimeError, WorkerPlan};
use crate::snapshot::{self, SharedSnapshot, Snapshot};
use crate::targets::{self, Target, TargetsError};
use crate::{admin, notify};

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
}

/// Reads and validates the config and every targets file it names. With
/// `replacing`, targets files follow the reload rules (no empty or
/// half-written file replaces a set in service).
pub fn load(path: &Path, replacing: bool) -> Result<Loaded, LoadError> {
    let config = config::load(path)?;
    let targets = config
        .groups
        .iter()
        .map(|g| {
            targets::load(&g.targets_file, replacing).map_err(|source| LoadError::Targets {
                group: g.name.clone(),
                source,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Loaded { config, targets })
}

/// `ringlb check`: a one-line summary of a good config.
pub fn check(path: &Path) -> Result<String, LoadError> {
    let l = load(path, false)?;
    let targets: usize = l.targets.iter().map(Vec::len).sum();
    Ok(format!(
        "{}: ok: {} listener(s), {} target group(s), {} target(s)",
        path.display(),
        l.config.listeners.len(),
        l.config.groups.len(),
        targets
    ))
}

/// How often the control plane looks at targets files and drains.
const TICK: std::time::Duration = std::time::Duration::from_millis(250);

/// `ringlb run`: serve until SIGTERM or SIGINT; SIGHUP reloads the config.
pub fn run(path: &Path) -> Result<(), AppError> {
    let loaded = load(path, false)?;
    raise_nofile_limit();

    let control = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AppError::Io {
            what: "control-plane runtime",
            source,
        })?;
    // Signal handlers go in before anything is bound, so a signal sent the
    // moment we are ready is never lost.
    let (mut term, mut int, mut hup) = {
        let _in_runtime = control.enter();
        let sig = |kind| {
            signal(kind).map_err(|source| AppError::Io {
                what: "signal handler",
                source,
            })
        };
        (
            sig(SignalKind::terminate())?,
            sig(SignalKind::interrupt())?,
            sig(SignalKind::hangup())?,
        )
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
        let (addr, sockets) = listener::bind_reuseport(l, workers)?;
        let name: Arc<str> = l.name.as_str().into();
        let stats = Arc::new(ListenerStats::new(workers));
        for (plan, socket) in plans.iter_mut().zip(sockets) {
            plan.listeners.push(BoundListener {
                name: name.clone(),
                socket,
                stats: stats.clone(),
            });
        }
        let group = &config.groups[l.group];
        info!(listener = %l.name, %addr, group = %group.name, "listening");
        let info = BoundInfo {
            config: l.clone(),
            addr,
            stats,
        };
        bound.insert(l.name.clone(), info);
    }
    for (g, t) in config.groups.iter().zip(&loaded.targets) {
        if t.is_empty() {
            warn!(group = %g.name, file = %g.targets_file.display(), "target group has no targets; its clients will be closed");
        } else {
            info!(group = %g.name, targets = %snapshot::describe(t), "targets loaded");
        }
    }
    let grace = config.runtime.shutdown_timeout;
    let admin_addr = config.admin;
    let admin = std::net::TcpListener::bind(admin_addr)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|source| AppError::Admin {
            addr: admin_addr,
            source,
        })?;
    let admin_bound = admin.local_addr().map_err(|source| AppError::Admin {
        addr: admin_addr,
        source,
    })?;

    let shared: SharedSnapshot = Arc::new(ArcSwap::from_pointee(Snapshot::empty()));
    // Probe tasks are spawned on the control plane's runtime.
    let (mut cp, mut probes) = {
        let _in_runtime = control.enter();
        ControlPlane::new(path.to_path_buf(), loaded, bound, shared.clone(), workers)
    };
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let workers_handle = runtime::start(plans, shared, events_tx, stop_rx, grace)?;

    control.block_on(async {
        let (ask_tx, mut asks) = tokio::sync::mpsc::channel(64);
        let admin = tokio::net::TcpListener::from_std(admin).map_err(|source| AppError::Admin {
            addr: admin_addr,
            source,
        })?;
        let admin_task = tokio::spawn(admin::serve(admin, ask_tx));
        info!(addr = %admin_bound, "admin listening");
        info!(workers, pid = std::process::id(), "ready");
        let mut status = cp.status_line();
        notify::ready(&status);

        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watchdog_every = notify::watchdog_interval();
        let mut watchdog =
            tokio::time::interval(watchdog_every.unwrap_or(std::time::Duration::from_secs(3600)));
        loop {
            tokio::select! {
                _ = term.recv() => { info!("SIGTERM: shutting down"); break }
                _ = int.recv() => { info!("SIGINT: shutting down"); break }
                _ = hup.recv() => {
                    info!("SIGHUP: reloading config");
                    notify::reloading();
                    cp.reload_config(&workers_handle);
                    status = cp.status_line();
                    notify::ready(&status);
                }
                _ = tick.tick() => {
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
            }
        }
        notify::stopping();
        admin_task.abort();
        Ok::<(), AppError>(())
    })?;
    stop_tx.send_replace(true);
    for h in workers_handle.threads {
        if h.join().is_err() {
            warn!("a worker panicked during shutdown");
        }
    }
    info!("stopped");
    Ok(())
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
