//! Boot and shutdown order. The main thread is the control plane: it loads the
//! config, binds every listener, publishes the first snapshot, starts the
//! workers, then waits for signals.

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{info, warn};

use crate::config::Config;
use crate::control::{BoundInfo, ControlPlane};
use crate::listener::ListenerError;
use crate::load::{LoadError, load};
use crate::snapshot::{SharedSnapshot, Snapshot};
use crate::worker::{self, RuntimeError, Stop, WorkerPlan};
use crate::{admin, takeover};

mod admin_endpoint;
mod handover;
mod main_loop;
mod signals;

use admin_endpoint::{AdminTask, bind_admin};
use handover::inherit;
use main_loop::Main;
use signals::Signals;

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

/// `ringlb run`: serve until SIGTERM or SIGINT; SIGHUP reloads the config.
/// With `takeover`, first take the listening sockets over from the ringlb
/// running with the same `[runtime] takeover_socket`. It reads as the
/// start-up order, one step per statement (about 80 lines).
pub fn run(path: &Path, takeover: bool, address_file: Option<&Path>) -> Result<(), AppError> {
    let mut loaded = load(path, &|_| None)?;
    // The names targets files list, looked up before the first snapshot;
    // one that does not answer is looked up again by the control plane.
    let (answers, failures) = loaded.look_up_names();
    for f in failures {
        warn!("{f}: its targets come when it answers");
    }
    let origins = loaded.compose(&answers)?;
    raise_nofile_limit();
    let takeover_path = loaded
        .config
        .runtime
        .takeover_socket
        .as_ref()
        .map(|s| s.path.clone());
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
    let found = crate::control::Found { answers, origins };
    let (cp, inbox) = ControlPlane::new(
        path.to_path_buf(),
        loaded,
        found,
        bound,
        shared.clone(),
        workers,
    )
    .map_err(|source| AppError::Io {
        what: "health-probe or DNS thread",
        source,
    })?;
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
            .serve(takeover_listener, inbox, events, asks, handovers)
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
        if !t.is_empty() {
            info!(group = %g.name, count = t.len(), targets = %crate::targets::describe(t), "targets loaded");
        }
    }
    for warning in loaded.warnings() {
        warn!("{warning}");
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
