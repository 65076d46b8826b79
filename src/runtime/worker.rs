//! What one worker does on its own core: accept on its listeners, place each
//! connection on a target, proxy it, and obey the control plane's commands.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use slab::Slab;
use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::sync::{Notify, mpsc, watch};
use tracing::{debug, info, warn};

use super::{Shared, Stop};
use crate::balancer::Tried;
use crate::metrics::{ActiveGuard, ListenerSlot, ListenerStats, bump, decrement};
use crate::oserror::{self, Shortage};
use crate::proxy::{self, ProxyError, pipe::PipePool};
use crate::proxy_protocol::ProxyProtocol;
use crate::rt::{self, AbortHandle, JoinHandle};
use crate::snapshot::Snapshot;
use crate::uring;

/// How often a worker closes pipes it has not needed since the last look.
const PIPE_TRIM_EVERY: Duration = Duration::from_secs(1);

/// Longest pause after an accept error such as EMFILE.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// What the control plane asks of a worker.
#[derive(Debug)]
pub enum Command {
    /// Start accepting on this socket.
    AddListener(BoundListener),
    /// Stop accepting on the listener of this name and close its socket.
    RemoveListener(Arc<str>),
    /// Listeners that keep their sockets under new names: `(from, to)`.
    RenameListeners(Vec<(Arc<str>, Arc<str>)>),
    /// Close every connection this worker proxies to `addr` for `group`.
    CloseTarget { group: Arc<str>, addr: SocketAddr },
}

/// What a worker tells the control plane.
#[derive(Debug)]
pub enum Event {
    /// A connect to a target failed (a passive health failure).
    ConnectFailed {
        group: Arc<str>,
        addr: SocketAddr,
        error: String,
    },
}

/// One listener as a worker holds it.
#[derive(Debug)]
pub struct BoundListener {
    /// Its key in the snapshot's listeners; a rename keeps it.
    pub id: u64,
    /// For logs; a rename changes it.
    pub name: Arc<str>,
    pub socket: TcpListener,
    /// Counters, one slot per worker; the same for every worker's socket.
    pub stats: Arc<ListenerStats>,
}

/// A running accept loop and the switch that stops it; it hands its
/// listener back when it stops.
struct AcceptLoop {
    stop: watch::Sender<bool>,
    task: JoinHandle<BoundListener>,
}

/// A session as the worker tracks it, to close it on command.
#[derive(Default)]
struct SessionEntry {
    task: Option<AbortHandle>,
    /// Set once placed: the group and target it is proxied to.
    target: Option<(Arc<str>, SocketAddr)>,
}

pub struct Worker {
    pub id: usize,
    shared: Shared,
    pub pipes: PipePool,
    sessions: RefCell<Slab<SessionEntry>>,
    /// Woken when the last session ends.
    drained: Notify,
    /// Accept loops, by listener name, with their stop switches.
    listeners: RefCell<HashMap<Arc<str>, AcceptLoop>>,
    accepting: Cell<bool>,
    /// A descriptor held in reserve: with no other left, it is closed to
    /// accept a waiting client and close it at once (as nginx and libev
    /// do), rather than leave the client waiting in the queue.
    spare: RefCell<Option<OwnedFd>>,
    /// Running out of descriptors, memory or ports, logged once an episode.
    shortage: RefCell<Shortage>,
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
    fn short_of_resources(&self, slot: &ListenerSlot, error: &io::Error) {
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
    fn placed_one(&self) {
        let mut shortage = self.shortage.borrow_mut();
        if !shortage.is_short() {
            return;
        }
        if let Some(ended) = shortage.went_well(std::time::Instant::now()) {
            info!(worker = self.id, refused = ended.count, lasted = ?ended.lasted, "local resources are back");
        }
    }

    /// No descriptor left to accept with: frees the spare one, accepts the
    /// next waiting client with it and closes that client at once, then
    /// takes the spare back. False when there is no spare to use.
    fn refuse_waiting_client(
        &self,
        listener: RawFd,
        slot: &ListenerSlot,
        error: &io::Error,
    ) -> bool {
        let Some(spare) = self.spare.borrow_mut().take() else {
            return false;
        };
        drop(spare);
        // The client goes before the spare comes back: it holds the one
        // descriptor there is.
        let refused = accept_now(listener).map(drop);
        *self.spare.borrow_mut() = open_spare();
        match refused {
            Ok(()) => {
                self.short_of_resources(slot, error);
                true
            }
            // Gone before it could be accepted: nothing to refuse.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock || is_transient(&e) => true,
            Err(_) => false,
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
                    .borrow()
                    .iter()
                    .filter(|(_, s)| {
                        s.target
                            .as_ref()
                            .is_some_and(|(g, a)| *g == group && *a == addr)
                    })
                    .filter_map(|(_, s)| s.task.clone())
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

async fn accept_loop(
    w: Rc<Worker>,
    l: BoundListener,
    mut stop: watch::Receiver<bool>,
) -> BoundListener {
    let fd = l.socket.as_raw_fd();
    let mut backoff = Duration::ZERO;
    // A poll said a client waits while no descriptor was left.
    let mut client_waiting = false;
    loop {
        let mut op = uring::accept(fd);
        let accepted = tokio::select! {
            biased;
            r = &mut op => r,
            _ = stop.wait_for(|&stop| stop) => {
                // Never drop an accept in flight: its fd would leak.
                if let Err(e) = uring::cancel_fd(fd).await {
                    warn!(listener = %l.name, error = %e, "cancelling accept failed");
                }
                // A connection the kernel handed over as we stopped is
                // served, not closed: a rename or removal drops nothing.
                if let Ok((late, peer)) = op.await {
                    serve(&w, &l, late, peer);
                }
                debug!(worker = w.id, listener = %l.name, "stopped accepting");
                return l;
            }
        };
        match accepted {
            Ok((client, peer)) => {
                backoff = Duration::ZERO;
                client_waiting = false;
                serve(&w, &l, client, peer);
            }
            Err(e) if is_transient(&e) => {
                client_waiting = false;
                debug!(listener = %l.name, error = %e, "accept: connection gone before accept")
            }
            Err(e) => {
                let slot = l.stats.slots.get(w.id);
                if oserror::is_out_of_fds(&e) && std::mem::take(&mut client_waiting) {
                    if w.refuse_waiting_client(fd, slot, &e) {
                        continue;
                    }
                } else if oserror::is_out_of_fds(&e) && w.spare.borrow().is_some() {
                    // accept(2) says EMFILE before it looks at the queue:
                    // wait until a client is there, and accept again (a
                    // descriptor may have come free meanwhile); if that
                    // says EMFILE too, the client is refused.
                    let mut waiting = uring::poll(fd, libc::POLLIN as u32);
                    tokio::select! {
                        biased;
                        _ = &mut waiting => {}
                        _ = stop.wait_for(|&stop| stop) => {
                            if let Err(e) = uring::cancel_fd(fd).await {
                                warn!(listener = %l.name, error = %e, "cancelling a poll failed");
                            }
                            let _cancelled_or_ready = waiting.await;
                            return l;
                        }
                    }
                    client_waiting = true;
                    continue;
                }
                // No spare descriptor, or short of memory: the connection
                // stays queued; wait, then retry, doubling the pause up to
                // a second, and take a spare again if one can be had.
                if w.spare.borrow().is_none() {
                    *w.spare.borrow_mut() = open_spare();
                }
                if w.shortage.borrow_mut().struck(std::time::Instant::now(), 0) {
                    warn!(worker = w.id, listener = %l.name, error = %e, "accept failed; backing off");
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tokio::select! {
                    () = rt::time::sleep(backoff) => {}
                    _ = stop.wait_for(|&stop| stop) => return l,
                }
            }
        }
    }
}

/// The spare descriptor a worker keeps in reserve (`/dev/null`); `None` if
/// even that cannot be had.
fn open_spare() -> Option<OwnedFd> {
    std::fs::File::open("/dev/null").ok().map(OwnedFd::from)
}

/// Accepts one waiting connection from `listener` without waiting: the
/// socket is made non-blocking around the `accept4` (a client may have
/// gone since the kernel said one was waiting).
fn accept_now(listener: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl and accept4 on a listening socket this worker owns;
    // accept4 returns a new descriptor owned by nobody else.
    unsafe {
        let flags = libc::fcntl(listener, libc::F_GETFL);
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        libc::fcntl(listener, libc::F_SETFL, flags | libc::O_NONBLOCK);
        let fd = libc::accept4(
            listener,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC,
        );
        let accepted = if fd < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(OwnedFd::from_raw_fd(fd))
        };
        libc::fcntl(listener, libc::F_SETFL, flags);
        accepted
    }
}

/// Places one accepted connection: checks the guard rails against the
/// current snapshot and spawns its session, or closes it.
fn serve(w: &Rc<Worker>, l: &BoundListener, client: OwnedFd, peer: Option<SocketAddr>) {
    let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let slot = l.stats.slots.get(w.id);
    bump(&slot.accepted, 1);
    bump(&w.shared.stats.get(w.id).accepted, 1);
    // Guard rails, before any target is contacted: a refused client
    // is closed at once and never holds up the others.
    // The snapshot is read once per connection, here; the session
    // places the connection with the same one, then lets it go.
    let snap = w.shared.snapshot.load_full();
    let Some(view) = snap.listeners.get(&l.id) else {
        bump(&slot.refused_no_target, 1);
        debug!(%peer, listener = %l.name, "listener no longer configured; closed");
        return;
    };
    let (group, proxy_protocol) = (view.group, view.proxy_protocol);
    if !view.allows(peer.ip()) {
        bump(&slot.refused_not_allowed, 1);
        debug!(%peer, listener = %l.name, "client not in the allow list; closed");
        return;
    }
    if !l.stats.try_open(view.max_connections) {
        bump(&slot.refused_limit, 1);
        debug!(%peer, listener = %l.name, "max_connections reached; closed");
        return;
    }
    bump(&slot.active, 1);
    let key = w.sessions.borrow_mut().insert(SessionEntry::default());
    let registered = Registered {
        worker: w.clone(),
        key,
        listener: l.stats.clone(),
    };
    let placement = Placement {
        snapshot: snap,
        group,
        proxy_protocol,
    };
    let task = rt::spawn_detached(session(registered, client, peer, placement));
    if let Some(entry) = w.sessions.borrow_mut().get_mut(key) {
        entry.task = Some(task);
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
    )
}

/// Removes a session from the worker's registry when it ends, however it ends.
struct Registered {
    worker: Rc<Worker>,
    key: usize,
    listener: Arc<ListenerStats>,
}

impl Drop for Registered {
    fn drop(&mut self) {
        decrement(&self.listener.slots.get(self.worker.id).active);
        self.listener.close_one();
        let mut sessions = self.worker.sessions.borrow_mut();
        sessions.try_remove(self.key);
        if sessions.is_empty() {
            self.worker.drained.notify_waiters();
        }
    }
}

/// What the accept loop resolved for a connection: the snapshot it read, the
/// listener's group in it, and the PROXY protocol to speak.
struct Placement {
    snapshot: Arc<Snapshot>,
    group: usize,
    proxy_protocol: ProxyProtocol,
}

/// One accepted connection from placement to close: pick, connect (with
/// retries on other targets), the PROXY header, then the proxy. Longer than
/// most (about 85 lines) because the snapshot must be held only across the
/// placing part and dropped before proxying; one block makes that visible.
async fn session(registered: Registered, client: OwnedFd, peer: SocketAddr, placement: Placement) {
    let proxy_protocol = placement.proxy_protocol;
    let (w, key) = (registered.worker.clone(), registered.key);
    // TCP_NODELAY and SO_OOBINLINE come from the listener (inherited on accept).
    let first = proxy::FirstRead::new(&w.pipes, &client);
    // Bytes to send the moment the target is connected: the handshake's
    // last ACK can wait for them.
    let speaks_first = first.has_bytes() || proxy_protocol != ProxyProtocol::Off;
    // Keep the snapshot only while placing the connection (an Arc, not a
    // Guard: the connect awaits); it is dropped at the end of this block.
    let (target, addr, idle, active) = {
        let Placement {
            snapshot, group, ..
        } = placement;
        let g = &snapshot.groups[group];
        let mut tried = Tried::with_capacity(g.connect_retries as usize + 1);
        let mut placed = None;
        while tried.len() <= g.connect_retries as usize {
            let Some(i) = g.pick(&peer, &tried) else {
                break;
            };
            tried.push(i);
            let t = &g.targets[i];
            // Counted from the pick, so other cores' least-connection picks
            // see it during the connect; uncounted again if the connect fails.
            // A target filled by another core since the pick is passed over.
            let Some(active) = ActiveGuard::try_new(&t.stats, g.max_per_target) else {
                continue;
            };
            match connect(t.addr, g.connect_timeout, speaks_first).await {
                Ok(fd) => {
                    bump(&t.stats.slots.get(w.id).connections, 1);
                    placed = Some((fd, t.addr, active));
                    break;
                }
                Err(ConnectError::Local(e)) => {
                    // Out of fds or local ports: no target is at fault, and
                    // another would fail the same way.
                    debug!(%peer, target = %t.addr, error = %e, "cannot connect: local resources");
                    w.short_of_resources(registered.listener.slots.get(w.id), &e);
                    return;
                }
                Err(ConnectError::Target(e)) => {
                    bump(&t.stats.slots.get(w.id).connect_failures, 1);
                    debug!(%peer, target = %t.addr, error = %e, epoch = snapshot.epoch, "connect failed");
                    let failed = Event::ConnectFailed {
                        group: g.name.clone(),
                        addr: t.addr,
                        error: e.to_string(),
                    };
                    if w.shared.events.send(failed).is_err() {
                        debug!("control plane gone; connect failure not reported");
                    }
                }
            }
        }
        let Some((fd, addr, active)) = placed else {
            bump(&registered.listener.slots.get(w.id).refused_no_target, 1);
            debug!(%peer, group = %g.name, tried = tried.len(), "no target could take the connection; closing client");
            return;
        };
        // The connect took a while: if the target was taken out meanwhile
        // (and its close command may already have passed), do not proxy.
        let now = w.shared.snapshot.load();
        if now.epoch != snapshot.epoch && !now.serves(&g.name, addr) {
            bump(&registered.listener.slots.get(w.id).refused_no_target, 1);
            debug!(%peer, group = %g.name, target = %addr, "target removed while connecting; closing client");
            return;
        }
        if let Some(entry) = registered.worker.sessions.borrow_mut().get_mut(key) {
            entry.target = Some((g.name.clone(), addr));
        }
        w.placed_one();
        debug!(worker = w.id, %peer, target = %addr, epoch = snapshot.epoch, "placed");
        (fd, addr, g.idle_timeout, active)
    };
    if let Err(e) = send_proxy_header(&client, &target, peer, proxy_protocol) {
        debug!(%peer, target = %addr, error = %e, "cannot send the PROXY header; closing");
        return;
    }
    let counters = active.stats().slots.get(w.id);
    match proxy::run(&w.pipes, first, client, target, idle, counters).await {
        Ok(t) => {
            debug!(%peer, target = %addr, up = t.client_to_target, down = t.target_to_client, "closed")
        }
        Err(ProxyError::Idle(d)) => debug!(%peer, target = %addr, "idle for {d:?}; closed"),
        Err(e @ ProxyError::Io { side, .. }) => {
            let slot = registered.listener.slots.get(w.id);
            bump(
                match side {
                    proxy::Side::Client => &slot.reset_by_client,
                    proxy::Side::Target => &slot.reset_by_target,
                },
                1,
            );
            debug!(%peer, target = %addr, error = %e, "closed on error; the other side reset");
        }
    }
}

/// Writes the PROXY header for `peer` to a freshly connected target, if the
/// listener speaks it. The header (at most 52 bytes) fits an empty send
/// buffer, so one send does it.
fn send_proxy_header(
    client: &OwnedFd,
    target: &OwnedFd,
    peer: SocketAddr,
    version: ProxyProtocol,
) -> io::Result<()> {
    if version == ProxyProtocol::Off {
        return Ok(()); // and no getsockname for nothing
    }
    let local = SockRef::from(client)
        .local_addr()?
        .as_socket()
        .ok_or_else(|| io::Error::other("listener address is not inet"))?;
    let Some(bytes) = version.header(peer, local) else {
        return Ok(());
    };
    let sent = SockRef::from(target).send(&bytes)?;
    if sent != bytes.len() {
        return Err(io::Error::other("PROXY header only partly sent"));
    }
    Ok(())
}

/// Why a connect failed: on this machine (out of fds, memory or local ports;
/// no fault of the target), or at the target.
#[derive(Debug)]
enum ConnectError {
    Local(io::Error),
    Target(io::Error),
}

impl ConnectError {
    fn classify(e: io::Error) -> ConnectError {
        if crate::oserror::is_local(&e) {
            ConnectError::Local(e)
        } else {
            ConnectError::Target(e)
        }
    }
}

/// Connects to `addr`, giving up after `timeout`. On timeout the kernel connect
/// is cancelled and reaped before the socket is closed.
///
/// With `data_waiting` (bytes go out the moment it connects) the handshake's
/// last ACK is held back to ride with them (HAProxy's `tcp-smart-connect`).
/// The kernel holds it for at most 200 ms and is back to quick ACKs once
/// connected; without bytes waiting it must not be held, or a target that
/// speaks first (SMTP, MySQL) would wait those 200 ms to accept.
async fn connect(
    addr: SocketAddr,
    timeout: Duration,
    data_waiting: bool,
) -> Result<OwnedFd, ConnectError> {
    let local = ConnectError::Local;
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )
    .map_err(local)?;
    socket.set_tcp_nodelay(true).map_err(local)?;
    // A TCP urgent byte from the target stays in the stream (the client's
    // socket inherits the same from its listener).
    socket.set_out_of_band_inline(true).map_err(local)?;
    if data_waiting {
        socket.set_tcp_quickack(false).map_err(local)?;
    }
    let socket: OwnedFd = socket.into();
    let raw = socket.as_raw_fd();
    let mut op = uring::connect(socket, addr);
    let (socket, result) = tokio::select! {
        biased;
        r = &mut op => r,
        () = rt::time::sleep(timeout) => {
            if let Err(e) = uring::cancel_fd(raw).await {
                // Still reap the op below: it ends when the kernel gives up.
                warn!(target = %addr, error = %e, "cancelling a timed-out connect failed");
            }
            let (socket, result) = op.await;
            match result {
                Ok(()) => (socket, Ok(())), // it connected as the timer fired
                Err(_) => (socket, Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {timeout:?}")))),
            }
        }
    };
    result.map(|()| socket).map_err(ConnectError::classify)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::pipe::{DEFAULT_PIPE_SIZE, Splice};
    use crate::runtime::Stop;

    /// Every open connection is one session task: this future, boxed, plus
    /// the runtime's task header and slab slot (`rt`'s tests hold their
    /// sizes). Under tokio-uring it was 664 bytes in test builds (648 in the
    /// binary; tokio's task cells come in 128-byte steps, and one of 680 cost
    /// 91 more bytes of RSS per idle connection). Under ringlb's own runtime
    /// it is 592 in test builds, mostly because its timer (`rt::time::Sleep`,
    /// 40 bytes) is 72 bytes smaller than tokio's `Sleep`. The ring receive
    /// each direction may hold made it 608.
    #[test]
    fn session_future_stays_small() {
        let (events, _) = mpsc::unbounded_channel();
        let (_, stop) = watch::channel(Stop::Run);
        let shared = Shared {
            snapshot: Arc::new(arc_swap::ArcSwap::from_pointee(Snapshot::empty())),
            events,
            stop,
            stats: Arc::new(crate::metrics::Slots::new(1)),
            splice: Splice::Auto,
            pipe_size: DEFAULT_PIPE_SIZE,
            ring_buffers: 0,
        };
        let pipes = PipePool::new(Splice::Auto, 1, 1, DEFAULT_PIPE_SIZE);
        let worker = Worker::new(0, shared, pipes);
        let listener = Arc::new(ListenerStats::new(1));
        // As `serve` does before a session exists.
        bump(&listener.slots.get(0).active, 1);
        assert!(listener.try_open(None));
        let key = worker.sessions.borrow_mut().insert(SessionEntry::default());
        let registered = Registered {
            worker: worker.clone(),
            key,
            listener,
        };
        let placement = Placement {
            snapshot: Arc::new(Snapshot::empty()),
            group: 0,
            proxy_protocol: ProxyProtocol::Off,
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let peer = client.local_addr().unwrap();
        let fut = session(registered, client.into(), peer, placement);
        let size = std::mem::size_of_val(&fut);
        println!("session future: {size} bytes");
        assert!(size <= 608, "session future is {size} bytes");
    }
}
