//! A worker's accept loop on one listener, and what it does when it has no
//! descriptor left: a spare one, kept in reserve, accepts the waiting client
//! and closes it at once (as nginx and libev do), rather than leave it in
//! the queue.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{debug, warn};

use super::BoundListener;
use super::run::Worker;
use super::session::serve;
use crate::metrics::ListenerSlot;
use crate::oserror;
use crate::rt::{self, op};

/// Longest pause after an accept error such as EMFILE.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

impl Worker {
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
}

pub(super) async fn accept_loop(
    w: Rc<Worker>,
    l: BoundListener,
    mut stop: watch::Receiver<bool>,
) -> BoundListener {
    let fd = l.socket.as_raw_fd();
    let mut backoff = Duration::ZERO;
    // A poll said a client waits while no descriptor was left.
    let mut client_waiting = false;
    loop {
        let mut op = op::accept(fd);
        let accepted = tokio::select! {
            biased;
            r = &mut op => r,
            _ = stop.wait_for(|&stop| stop) => {
                // Never drop an accept in flight: its fd would leak.
                if let Err(e) = op::cancel_fd(fd).await {
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
                    let mut waiting = op::poll(fd, libc::POLLIN as u32);
                    tokio::select! {
                        biased;
                        _ = &mut waiting => {}
                        _ = stop.wait_for(|&stop| stop) => {
                            if let Err(e) = op::cancel_fd(fd).await {
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
pub(super) fn open_spare() -> Option<OwnedFd> {
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

fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ECONNABORTED | libc::EINTR | libc::EPROTO | libc::EPERM)
    )
}
