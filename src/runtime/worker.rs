//! What one worker does on its own core: accept on its listeners, place each
//! connection on a target, and proxy it.

use std::cell::Cell;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};

use super::uring;
use crate::balancer::Tried;
use crate::proxy::{self, ProxyError, pipe::PipePool};
use crate::snapshot::{ActiveGuard, SharedSnapshot};

/// How often a worker closes pipes it has not needed since the last look.
const PIPE_TRIM_EVERY: Duration = Duration::from_secs(1);

/// Longest pause after an accept error such as EMFILE.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

pub struct Worker {
    pub id: usize,
    pub snapshot: SharedSnapshot,
    pub pipes: PipePool,
    /// Sessions alive on this worker.
    active: Cell<usize>,
    /// Woken when `active` drops to zero.
    drained: Notify,
}

/// One listener as a worker holds it.
pub struct BoundListener {
    pub name: String,
    pub group: usize,
    pub socket: TcpListener,
}

impl Worker {
    pub fn new(id: usize, snapshot: SharedSnapshot, pipes: PipePool) -> Rc<Worker> {
        Rc::new(Worker {
            id,
            snapshot,
            pipes,
            active: Cell::new(0),
            drained: Notify::new(),
        })
    }

    /// Runs until `shutdown` turns true, then stops accepting and waits up to
    /// `grace` for open sessions; sessions still open after it are closed when
    /// the runtime is dropped.
    pub async fn run(
        self: Rc<Self>,
        listeners: Vec<BoundListener>,
        mut shutdown: watch::Receiver<bool>,
        grace: Duration,
    ) {
        let loops: Vec<_> = listeners
            .into_iter()
            .map(|l| tokio_uring::spawn(accept_loop(self.clone(), l, shutdown.clone())))
            .collect();
        let mut trim = tokio::time::interval(PIPE_TRIM_EVERY);
        loop {
            tokio::select! {
                _ = trim.tick() => {
                    let closed = self.pipes.trim();
                    if closed > 0 {
                        debug!(worker = self.id, closed, "closed idle pipes");
                    }
                }
                // Ok or Err (sender gone): either way it is time to stop.
                _ = shutdown.wait_for(|&stop| stop) => break,
            }
        }
        for l in loops {
            if let Err(e) = l.await {
                warn!(worker = self.id, error = %e, "accept loop ended abnormally");
            }
        }
        let open = self.active.get();
        if open > 0 {
            info!(
                worker = self.id,
                open,
                ?grace,
                "waiting for open connections to finish"
            );
            let wait = async {
                while self.active.get() > 0 {
                    self.drained.notified().await;
                }
            };
            if tokio::time::timeout(grace, wait).await.is_err() {
                warn!(
                    worker = self.id,
                    open = self.active.get(),
                    "shutdown_timeout reached; closing connections"
                );
            }
        }
    }
}

async fn accept_loop(w: Rc<Worker>, l: BoundListener, mut shutdown: watch::Receiver<bool>) {
    let fd = l.socket.as_raw_fd();
    let mut backoff = Duration::ZERO;
    loop {
        let mut op = uring::accept(fd);
        let accepted = tokio::select! {
            biased;
            r = &mut op => r,
            _ = shutdown.wait_for(|&stop| stop) => {
                // Never drop an accept in flight: its fd would leak.
                if let Err(e) = uring::cancel_fd(fd).await {
                    warn!(listener = %l.name, error = %e, "cancelling accept failed");
                }
                if let Ok((late, _)) = op.await {
                    drop(late); // accepted as we stopped: closed, not served
                }
                debug!(worker = w.id, listener = %l.name, "stopped accepting");
                return;
            }
        };
        match accepted {
            Ok((client, peer)) => {
                if !backoff.is_zero() {
                    info!(worker = w.id, listener = %l.name, "accepting again");
                    backoff = Duration::ZERO;
                }
                let peer = peer.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
                tokio_uring::spawn(session(w.clone(), client, peer, l.group));
            }
            Err(e) if is_transient(&e) => {
                debug!(listener = %l.name, error = %e, "accept: connection gone before accept")
            }
            Err(e) => {
                // EMFILE, ENFILE, ENOBUFS, ENOMEM: the connection stays queued;
                // wait, then retry, doubling the pause up to a second.
                if backoff.is_zero() {
                    warn!(worker = w.id, listener = %l.name, error = %e, "accept failed; backing off");
                }
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = shutdown.wait_for(|&stop| stop) => return,
                }
            }
        }
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
    )
}

/// Keeps the worker's count of open sessions.
struct Open(Rc<Worker>);

impl Drop for Open {
    fn drop(&mut self) {
        let left = self.0.active.get() - 1;
        self.0.active.set(left);
        if left == 0 {
            self.0.drained.notify_waiters();
        }
    }
}

async fn session(w: Rc<Worker>, client: OwnedFd, peer: SocketAddr, group: usize) {
    w.active.set(w.active.get() + 1);
    let _open = Open(w.clone());
    if let Err(e) = SockRef::from(&client).set_tcp_nodelay(true) {
        debug!(%peer, error = %e, "client gone before setup");
        return;
    }
    // Read the snapshot once; keep it only while placing the connection (an
    // Arc, not a Guard: the connect awaits), then let it go.
    let (target, addr, idle, _active) = {
        let snap = w.snapshot.load_full();
        let g = &snap.groups[group];
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
            let active = ActiveGuard::new(&t.stats);
            match connect(t.addr, g.connect_timeout).await {
                Ok(fd) => {
                    placed = Some((fd, t.addr, active));
                    break;
                }
                Err(e) => debug!(%peer, target = %t.addr, error = %e, "connect failed"),
            }
        }
        let Some((fd, addr, active)) = placed else {
            debug!(%peer, group = %g.name, tried = tried.len(), "no target could take the connection; closing client");
            return;
        };
        debug!(worker = w.id, %peer, target = %addr, "placed");
        (fd, addr, g.idle_timeout, active)
    };
    match proxy::run(&w.pipes, client, target, idle).await {
        Ok(t) => {
            debug!(%peer, target = %addr, up = t.client_to_target, down = t.target_to_client, "closed")
        }
        Err(ProxyError::Idle(d)) => debug!(%peer, target = %addr, "idle for {d:?}; closed"),
        Err(e) => debug!(%peer, target = %addr, error = %e, "closed on error"),
    }
}

/// Connects to `addr`, giving up after `timeout`. On timeout the kernel connect
/// is cancelled and reaped before the socket is closed.
async fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<OwnedFd> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    let socket: OwnedFd = socket.into();
    let raw = socket.as_raw_fd();
    let mut op = uring::connect(socket, addr);
    let (socket, result) = tokio::select! {
        biased;
        r = &mut op => r,
        () = tokio::time::sleep(timeout) => {
            uring::cancel_fd(raw).await?;
            let (socket, result) = op.await;
            match result {
                Ok(()) => (socket, Ok(())), // it connected as the timer fired
                Err(_) => (socket, Err(io::Error::new(io::ErrorKind::TimedOut, format!("connect timed out after {timeout:?}")))),
            }
        }
    };
    result.map(|()| socket)
}
