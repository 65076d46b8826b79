//! Listeners as the control plane holds them: bound (or handed over by the
//! process this one took over from), dealt to the workers, planned and
//! moved by a SIGHUP, and offered to the next process in a takeover.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use tracing::{info, warn};

use crate::config::ListenerConfig;
use crate::listener::{self, ListenerError};
use crate::metrics::ListenerStats;
use crate::worker::{BoundListener, Command, Workers};

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

/// What a SIGHUP does with each listener of the new config.
pub enum ListenerPlan {
    /// Same name, same address: untouched.
    Keep,
    /// Same address under a new name: the sockets stay open, so no
    /// connection is refused and no bind can clash with ringlb itself.
    Rename { from: String },
    /// New sockets.
    Bind(Box<BoundInfo>, Vec<std::net::TcpListener>),
}

/// Every listener bound now, by name.
pub struct Listeners {
    bound: HashMap<String, BoundInfo>,
    workers: usize,
}

/// A SIGHUP's plan for every listener of the new config.
pub type Plans = Vec<(ListenerConfig, ListenerPlan)>;

impl Listeners {
    pub fn new(bound: HashMap<String, BoundInfo>, workers: usize) -> Listeners {
        Listeners { bound, workers }
    }

    /// Listener ids by name, as snapshots key them.
    pub fn ids(&self) -> HashMap<String, u64> {
        self.bound.iter().map(|(n, b)| (n.clone(), b.id)).collect()
    }

    /// The ids snapshots will key the listeners of `plans` by: published
    /// before the workers rename or add any.
    pub fn ids_after(&self, plans: &Plans) -> HashMap<String, u64> {
        plans
            .iter()
            .filter_map(|(l, plan)| {
                let id = match plan {
                    ListenerPlan::Keep => self.bound.get(&l.name)?.id,
                    ListenerPlan::Rename { from } => self.bound.get(from)?.id,
                    ListenerPlan::Bind(info, _) => info.id,
                };
                Some((l.name.clone(), id))
            })
            .collect()
    }

    /// Every listener by name, in name order.
    pub fn by_name(&self) -> Vec<(&str, &BoundInfo)> {
        let mut all: Vec<(&str, &BoundInfo)> =
            self.bound.iter().map(|(n, b)| (n.as_str(), b)).collect();
        all.sort_by_key(|(n, _)| *n);
        all
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
    pub fn addrs(&self) -> Vec<(String, SocketAddr)> {
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
    pub fn plan(&self, wanted: &[ListenerConfig]) -> Result<Plans, ListenerError> {
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
            let (info, sockets) = BoundInfo::bind(l, self.workers, !ours)?;
            plans.push((l.clone(), ListenerPlan::Bind(Box::new(info), sockets)));
        }
        Ok(plans)
    }

    /// Carries out listener plans on the workers: removals first, then
    /// renames, then new sockets. Returns what it did, for the log line.
    pub fn apply(&mut self, plans: Plans, workers: &Workers) -> Vec<String> {
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
                ListenerPlan::Bind(info, sockets) => fresh.push((*info, sockets)),
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
