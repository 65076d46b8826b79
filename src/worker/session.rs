//! One accepted connection, from the guard rails to its close: placed on
//! a target (pick, connect, retry on another), then proxied.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tracing::{debug, warn};

use super::conn::{Conn, refused};
use super::run::{SessionEntry, Worker};
use super::{BoundListener, Event};
use crate::access_log::End;
use crate::balancer::Tried;
use crate::client_limits::{Admitted, ClientTable, Refusal};
use crate::metrics::{ActiveGuard, bump};
use crate::proxy::{self, ProxyError};
use crate::proxy_protocol::ProxyProtocol;
use crate::rt::{self, op};
use crate::snapshot::Snapshot;

/// Places one accepted connection: checks the guard rails against the
/// current snapshot and spawns its session, or closes it.
pub(super) fn serve(w: &Rc<Worker>, l: &BoundListener, client: OwnedFd, peer: Option<SocketAddr>) {
    let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
    let slot = l.stats.slots.get(w.id);
    bump(&slot.accepted, 1);
    let worker_slot = w.shared.stats.get(w.id);
    bump(&worker_slot.accepted, 1);
    // Guard rails, before any target is contacted: a refused client
    // is closed at once and never holds up the others.
    // The snapshot is read once per connection, here; the session
    // places the connection with the same one, then lets it go.
    let snap = w.shared.snapshot.load_full();
    let n = worker_slot
        .accepted
        .load(std::sync::atomic::Ordering::Relaxed);
    let log = snap.access_log.as_ref().filter(|log| log.sampled(n));
    let Some(view) = snap.listeners.get(&l.id) else {
        bump(&slot.refused_no_target, 1);
        refused(slot, &l.name, peer, End::NoTarget, log);
        debug!(%peer, listener = %l.name, "listener no longer configured; closed");
        return;
    };
    let (group, proxy_protocol) = (view.group, view.proxy_protocol);
    if !view.allows(peer.ip()) {
        bump(&slot.refused_not_allowed, 1);
        refused(slot, &l.name, peer, End::NotAllowed, log);
        debug!(%peer, listener = %l.name, "client not in the allow list; closed");
        return;
    }
    if !l.stats.try_open(view.max_connections) {
        bump(&slot.refused_limit, 1);
        refused(slot, &l.name, peer, End::MaxConnections, log);
        debug!(%peer, listener = %l.name, "max_connections reached; closed");
        return;
    }
    let counted = match &view.clients {
        None => Admitted::NONE,
        Some(limits) => {
            let table = l
                .stats
                .clients
                .get_or_init(|| ClientTable::new(rt::time::now()));
            match table.admit(peer.ip(), limits, rt::time::now()) {
                Ok(admitted) => admitted,
                Err(why) => {
                    l.stats.close_one();
                    let end = match why {
                        Refusal::Open => End::ClientLimit,
                        Refusal::Rate => End::ClientRate,
                    };
                    refused(slot, &l.name, peer, end, log);
                    debug!(%peer, listener = %l.name, reason = end.word(), "per-client limit; closed");
                    return;
                }
            }
        }
    };
    bump(&slot.active, 1);
    let key = w.sessions.borrow_mut().insert(SessionEntry::default());
    let conn = Conn::new(w, key, &l.stats, &l.name, peer, log, counted);
    let placement = Placement {
        snapshot: snap,
        group,
        proxy_protocol,
    };
    let task = rt::spawn_detached(session(conn, client, peer, placement));
    if let Some(entry) = w.sessions.borrow_mut().get_mut(key) {
        entry.task = Some(task);
    }
}

/// What the accept loop resolved for a connection: the snapshot it read, the
/// listener's group in it, and the PROXY protocol to speak.
struct Placement {
    snapshot: Arc<Snapshot>,
    group: usize,
    proxy_protocol: ProxyProtocol,
}

/// One accepted connection from placement to close: its first bytes read,
/// placed on a target ([`place`]), the PROXY header, then the proxy.
async fn session(mut conn: Conn, client: OwnedFd, peer: SocketAddr, placement: Placement) {
    let proxy_protocol = placement.proxy_protocol;
    // TCP_NODELAY and SO_OOBINLINE come from the listener (inherited on accept).
    let first = proxy::FirstRead::new(&conn.worker.pipes, &client);
    // Bytes to send the moment the target is connected: the handshake's
    // last ACK can wait for them.
    let speaks_first = first.has_bytes() || proxy_protocol != ProxyProtocol::Off;
    // Boxed: placing holds the snapshot, the retry state and a connect in
    // flight, and the session future would carry room for them for as
    // long as the connection lives; this way it is freed once placed.
    let Some(placed) = Box::pin(place(&mut conn, peer, placement, speaks_first)).await else {
        return;
    };
    if let Err(e) = send_proxy_header(&client, &placed.target, peer, proxy_protocol) {
        conn.ended(End::TargetReset);
        debug!(%peer, target = %placed.addr, error = %e, "cannot send the PROXY header; closing");
        return;
    }
    let w = &conn.worker;
    let counters = placed.active.stats().slots.get(w.id);
    let ended = proxy::run(
        &w.pipes,
        first,
        client,
        placed.target,
        placed.idle,
        counters,
        conn.tally(),
    )
    .await;
    count_end(&conn, peer, placed.addr, ended);
}

/// A connection placed on a target: the connected socket, its address, the
/// group's idle timeout, and the count of it on the target.
struct Placed {
    target: OwnedFd,
    addr: SocketAddr,
    idle: Duration,
    active: ActiveGuard,
}

/// Picks a target and connects, on other targets after a failed connect
/// (up to the group's `connect_retries`). The snapshot is held only here
/// (an Arc, not a Guard: the connect awaits) and let go before proxying.
/// `None` when the client was closed instead: no target could take it, or
/// this machine had no resources to reach one, or the target was taken
/// out while connecting.
async fn place(
    conn: &mut Conn,
    peer: SocketAddr,
    placement: Placement,
    speaks_first: bool,
) -> Option<Placed> {
    let w = conn.worker.clone();
    let listener = conn.listener.clone();
    let slot = listener.slots.get(w.id);
    let Placement {
        snapshot, group, ..
    } = placement;
    let g = &snapshot.groups[group];
    let mut tried = Tried::with_capacity(g.connect_retries as usize + 1);
    let mut placed = None;
    while placed.is_none() && tried.len() <= g.connect_retries as usize {
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
        conn.attempt(&g.name, t.addr);
        let started = rt::time::now();
        let connected = connect(t.addr, g.connect_timeout, speaks_first).await;
        conn.connected_in(rt::time::now().saturating_duration_since(started));
        match connected {
            Ok(fd) => {
                bump(&t.stats.slots.get(w.id).connections, 1);
                placed = Some((fd, t.addr, active));
            }
            Err(ConnectError::Local(e)) => {
                // Out of fds or local ports: no target is at fault, and
                // another would fail the same way.
                debug!(%peer, target = %t.addr, error = %e, "cannot connect: local resources");
                w.short_of_resources(slot, &e);
                conn.ended(End::LocalResources);
                return None;
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
    let Some((target, addr, active)) = placed else {
        bump(&slot.refused_no_target, 1);
        conn.ended(if tried.is_empty() {
            End::NoTarget
        } else {
            End::ConnectFailed
        });
        debug!(%peer, group = %g.name, tried = tried.len(), "no target could take the connection; closing client");
        return None;
    };
    // The connect took a while: if the target was taken out meanwhile
    // (and its close command may already have passed), do not proxy.
    let now = w.shared.snapshot.load();
    if now.epoch != snapshot.epoch && !now.serves(&g.name, addr) {
        bump(&slot.refused_no_target, 1);
        conn.ended(End::NoTarget);
        debug!(%peer, group = %g.name, target = %addr, "target removed while connecting; closing client");
        return None;
    }
    if let Some(entry) = w.sessions.borrow_mut().get_mut(conn.key) {
        entry.target = Some((g.name.clone(), addr));
    }
    w.placed_one();
    debug!(worker = w.id, %peer, target = %addr, epoch = snapshot.epoch, "placed");
    Some(Placed {
        target,
        addr,
        idle: g.idle_timeout,
        active,
    })
}

/// How a proxied connection ended: counted (a reset passed on, by the side
/// it came from), and said at `debug`.
fn count_end(
    conn: &Conn,
    peer: SocketAddr,
    addr: SocketAddr,
    ended: Result<proxy::Transferred, ProxyError>,
) {
    match ended {
        Ok(t) => {
            conn.ended(match t.first_end {
                proxy::Side::Client => End::ClientClosed,
                proxy::Side::Target => End::TargetClosed,
            });
            debug!(%peer, target = %addr, up = t.client_to_target, down = t.target_to_client, "closed")
        }
        Err(ProxyError::Idle(d)) => {
            conn.ended(End::IdleTimeout);
            debug!(%peer, target = %addr, "idle for {d:?}; closed")
        }
        Err(e @ ProxyError::Io { side, .. }) => {
            let slot = conn.listener.slots.get(conn.worker.id);
            let (counter, end) = match side {
                proxy::Side::Client => (&slot.reset_by_client, End::ClientReset),
                proxy::Side::Target => (&slot.reset_by_target, End::TargetReset),
            };
            bump(counter, 1);
            conn.ended(end);
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
    let mut op = op::connect(socket, addr);
    let (socket, result) = tokio::select! {
        biased;
        r = &mut op => r,
        () = rt::time::sleep(timeout) => {
            if let Err(e) = op::cancel_fd(raw).await {
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
    use crate::metrics::ListenerStats;
    use crate::proxy::pipe::PipePool;
    use crate::proxy::pipe::{LINUX_PIPE_SIZE, Splice};
    use crate::worker::{Shared, Stop};
    use std::net::TcpListener;
    use tokio::sync::{mpsc, watch};

    /// Every open connection is one session task: this future, boxed, plus
    /// the runtime's task header and slab slot (`rt`'s tests hold their
    /// sizes). Under ringlb's own runtime it was 592 bytes in test builds,
    /// 608 with the ring receive each direction may hold; placing the
    /// connection in a boxed future of its own, freed once it is placed,
    /// made it 576: the connect's state no longer lives as long as the
    /// connection. How it ended and its connection log line (boxed, and
    /// only when the log samples it) brought it back to 608.
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
            pipe_size: LINUX_PIPE_SIZE,
            ring_buffers: 0,
        };
        let pipes = PipePool::new(Splice::Auto, 1, 1, LINUX_PIPE_SIZE);
        let worker = Worker::new(0, shared, pipes);
        let listener = Arc::new(ListenerStats::new(1));
        // As `serve` does before a session exists.
        bump(&listener.slots.get(0).active, 1);
        assert!(listener.try_open(None));
        let key = worker.sessions.borrow_mut().insert(SessionEntry::default());
        let name: Arc<str> = "web".into();
        let conn = Conn::new(
            &worker,
            key,
            &listener,
            &name,
            "127.0.0.1:1".parse().unwrap(),
            None,
            Admitted::NONE,
        );
        let placement = Placement {
            snapshot: Arc::new(Snapshot::empty()),
            group: 0,
            proxy_protocol: ProxyProtocol::Off,
        };
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let peer = client.local_addr().unwrap();
        let fut = session(conn, client.into(), peer, placement);
        let size = std::mem::size_of_val(&fut);
        println!("session future: {size} bytes");
        assert!(size <= 608, "session future is {size} bytes");
    }
}
