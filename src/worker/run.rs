//! What one worker does on its own core: it holds its listeners' accept
//! loops ([`super::accept`]) and its sessions ([`super::session`]), obeys
//! the control plane's commands, and drains at shutdown.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use slab::Slab;
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use super::accept::{accept_loop, open_spare};
use super::{BoundListener, Command, Shared, Stop};
use crate::metrics::{ListenerSlot, bump};
use crate::oserror::Shortage;
use crate::proxy::pipe::PipePool;
use crate::rt::{self, AbortHandle, JoinHandle};

/// How often a worker closes pipes it has not needed since the last look.
const PIPE_TRIM_EVERY: Duration = Duration::from_secs(1);

/// A running accept loop and the switch that stops it; it hands its
/// listener back when it stops.
pub(super) struct AcceptLoop {
    stop: watch::Sender<bool>,
    task: JoinHandle<BoundListener>,
}

/// A session as the worker tracks it, to close it on command.
#[derive(Default)]
pub(super) struct SessionEntry {
    pub(super) task: Option<AbortHandle>,
    /// Set once placed: the group and target it is proxied to.
    pub(super) target: Option<(Arc<str>, std::net::SocketAddr)>,
    /// Its worker closes it (its target's deregistration delay ran out).
    pub(super) closing: bool,
}

pub struct Worker {
    pub id: usize,
    pub(super) shared: Shared,
    pub pipes: PipePool,
    pub(super) sessions: RefCell<Slab<SessionEntry>>,
    /// Woken when the last session ends.
    pub(super) drained: Notify,
    /// Accept loops, by listener name, with their stop switches.
    listeners: RefCell<HashMap<Arc<str>, AcceptLoop>>,
    accepting: Cell<bool>,
    /// A descriptor held in reserve: with no other left, it is closed to
    /// accept a waiting client and close it at once (as nginx and libev
    /// do), rather than leave the client waiting in the queue.
    pub(super) spare: RefCell<Option<OwnedFd>>,
    /// Running out of descriptors, memory or ports, logged once an episode.
    pub(super) shortage: RefCell<Shortage>,
}

impl Worker {
    pub fn new(id: usize, shared: Shared, pipes: PipePool) -> Rc<Worker> {
        Rc::new(Worker {
            id,
            shared,
            pipes,
            sessions: RefCell::new(Slab::new()),
            drained: Notify::new(),
            listeners: RefCell::new(HashMap::new()),
            accepting: Cell::new(true),
            spare: RefCell::new(open_spare()),
            shortage: RefCell::new(Shortage::default()),
        })
    }

    /// Counts a client refused for lack of local resources, and logs the
    /// first of an episode.
    pub(super) fn short_of_resources(&self, slot: &ListenerSlot, error: &io::Error) {
        bump(&slot.refused_local, 1);
        if self
            .shortage
            .borrow_mut()
            .struck(std::time::Instant::now(), 1)
        {
            warn!(worker = self.id, %error, "out of local resources (file descriptors, memory or local ports): new clients are closed at once until they are back (counted as refused, reason local_resources)");
        }
    }

    /// A connection was placed: a shortage going on may be over.
    pub(super) fn placed_one(&self) {
        let mut shortage = self.shortage.borrow_mut();
        if !shortage.is_short() {
            return;
        }
        if let Some(ended) = shortage.went_well(std::time::Instant::now()) {
            info!(worker = self.id, refused = ended.count, lasted = ?ended.lasted, "local resources are back");
        }
    }

    /// Runs until `stop` leaves [`Stop::Run`], then stops accepting and waits
    /// up to the grace it names for open sessions (none for [`Stop::Now`],
    /// which also cuts a grace short); sessions still open after it are
    /// closed when the runtime is dropped.
    pub async fn run(
        self: Rc<Self>,
        listeners: Vec<BoundListener>,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut stop: watch::Receiver<Stop>,
    ) {
        for l in listeners {
            self.add_listener(l);
        }
        let mut trim = rt::time::interval(PIPE_TRIM_EVERY);
        loop {
            tokio::select! {
                _ = trim.tick() => {
                    let closed = self.pipes.trim();
                    if closed > 0 {
                        debug!(worker = self.id, closed, "closed idle pipes");
                    }
                    let starved = rt::with_bufs(|b| b.map_or(0, rt::BufRing::starved));
                    self.shared.stats.get(self.id).ring_starved.store(starved, std::sync::atomic::Ordering::Relaxed);
                }
                Some(cmd) = commands.recv() => self.obey(cmd).await,
                // Ok or Err (sender gone): either way it is time to stop.
                _ = stop.wait_for(|s| *s != Stop::Run) => break,
            }
        }
        let grace = match *stop.borrow() {
            Stop::Drain(d) => d,
            Stop::Run | Stop::Now => Duration::ZERO,
        };
        self.accepting.set(false);
        let names: Vec<Arc<str>> = self.listeners.borrow().keys().cloned().collect();
        for name in names {
            self.remove_listener(&name).await;
        }
        let open = self.sessions.borrow().len();
        if open > 0 {
            info!(
                worker = self.id,
                open,
                ?grace,
                "waiting for open connections to finish"
            );
            let wait = async {
                while !self.sessions.borrow().is_empty() {
                    self.drained.notified().await;
                }
            };
            let cut = async {
                tokio::select! {
                    () = rt::time::sleep(grace) => "shutdown_timeout reached; closing connections",
                    _ = stop.wait_for(|s| *s == Stop::Now) => "told to stop now; closing connections",
                }
            };
            tokio::select! {
                () = wait => {}
                why = cut => warn!(worker = self.id, open = self.sessions.borrow().len(), "{why}"),
            }
        }
    }

    async fn obey(self: &Rc<Self>, cmd: Command) {
        match cmd {
            Command::AddListener(l) => self.add_listener(l),
            Command::RemoveListener(name) => drop(self.remove_listener(&name).await),
            Command::RenameListeners(pairs) => {
                // All stop first, so a swap of two names finds each free.
                let mut moved = Vec::new();
                for (from, to) in pairs {
                    if let Some(mut l) = self.remove_listener(&from).await {
                        l.name = to;
                        moved.push(l);
                    }
                }
                for l in moved {
                    self.add_listener(l);
                }
            }
            Command::CloseTarget { group, addr } => {
                let doomed: Vec<AbortHandle> = self
                    .sessions
                    .borrow_mut()
                    .iter_mut()
                    .filter(|(_, s)| {
                        s.target
                            .as_ref()
                            .is_some_and(|(g, a)| *g == group && *a == addr)
                    })
                    .filter_map(|(_, s)| {
                        s.closing = true;
                        s.task.clone()
                    })
                    .collect();
                if !doomed.is_empty() {
                    info!(worker = self.id, %group, target = %addr, connections = doomed.len(), "closing connections of a deregistered target");
                }
                for task in doomed {
                    task.abort();
                }
            }
        }
    }

    fn add_listener(self: &Rc<Self>, l: BoundListener) {
        if !self.accepting.get() {
            return;
        }
        let (stop, stopped) = watch::channel(false);
        let name = l.name.clone();
        let task = rt::spawn(accept_loop(self.clone(), l, stopped));
        let replaced = self
            .listeners
            .borrow_mut()
            .insert(name.clone(), AcceptLoop { stop, task });
        if let Some(old) = replaced {
            warn!(worker = self.id, listener = %name, "listener replaced while running");
            old.stop.send_replace(true);
        }
    }

    /// Stops the accept loop of `name` and hands back its listener; the
    /// socket stays open (the kernel keeps queueing connections) until the
    /// caller drops it.
    async fn remove_listener(&self, name: &str) -> Option<BoundListener> {
        let l = self.listeners.borrow_mut().remove(name)?;
        l.stop.send_replace(true);
        match l.task.await {
            Ok(listener) => Some(listener),
            Err(e) => {
                warn!(worker = self.id, listener = %name, error = %e, "accept loop ended abnormally");
                None
            }
        }
    }
}
