//! One proxied connection: a client socket and a target socket, bytes moved both
//! ways until both directions have ended.
//!
//! Small exchanges arrive by ring receive: each direction keeps one multishot
//! `IORING_OP_RECV` armed on its source, which puts arriving bytes in a buffer
//! of the worker's provided-buffer ring, and sends them on with one `send(2)`.
//! A direction whose receive fills a buffer moves on to non-blocking splice(2)
//! through a borrowed pipe (HAProxy's `splice-auto` makes the same choice),
//! and back to the ring only after 8 pipe reads in a row came back under a
//! buffer's worth: a bulk stream often wakes to part of a buffer, and one
//! short read must not send its next burst through the ring's copies. Without provided
//! buffers (`[runtime] ring_buffers = 0`, or none free at the moment), a
//! direction waits for readiness with a one-shot io_uring poll
//! (`IORING_OP_POLL_ADD`, with `POLLRDHUP`) and reads with `recv(2)` into a
//! pooled buffer. A full destination is waited on with a one-shot poll, and
//! the source's receive is cancelled meanwhile. Everything is reaped in batches
//! with the worker's other completions: no epoll registration per connection.
//! A poll in flight when a session is dropped (idle timeout, shutdown, an
//! error on the other direction) is completed by `shutdown(2)` on its socket,
//! and a receive in flight is cancelled, so the socket closes and nothing
//! leaks; no byte already moved is lost.

mod direction;
pub mod pipe;
mod stage;

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use std::time::Instant;

use direction::Direction;
use pipe::PipePool;
use stage::recv_into;

use crate::rt;

use crate::metrics::TargetSlot;

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Target,
}

impl Side {
    fn other(self) -> Side {
        match self {
            Side::Client => Side::Target,
            Side::Target => Side::Client,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("{side:?} side: {source}")]
    Io { side: Side, source: io::Error },
    #[error("idle for {0:?}")]
    Idle(Duration),
}

/// How a session ended, for logs and counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transferred {
    pub client_to_target: u64,
    pub target_to_client: u64,
    /// The side whose end of stream came first.
    pub first_end: Side,
}

/// The client's first bytes, read once as soon as it is accepted, before a
/// target is chosen. Most clients speak first (an HTTP request is there by
/// the time accept returns), so the connect to the target can hold back its
/// last handshake ACK and let it ride with these bytes: one segment fewer for
/// the target to take in (HAProxy's `tcp-smart-connect`). A client that waits
/// for the server to speak costs the one recv that says EAGAIN, which the
/// proxy would otherwise make first thing. Under `splice = "always"` nothing
/// is read here (every byte goes through a pipe, and a pipe is not held
/// across the connect).
///
/// Kept to 32 bytes: it lives in every session's future while it connects.
pub struct FirstRead {
    /// A pooled buffer with the bytes read at its front; `None` when nothing
    /// was read. Dropped unused (no target took the client) it is freed, not
    /// pooled: a rare path.
    buf: Option<Box<[u8]>>,
    len: u32,
    tried: bool,
    /// End of stream or an error, when that is what the read found.
    after: Ahead,
}

impl FirstRead {
    /// One non-blocking read of `client` into a buffer from `pool`.
    pub fn new(pool: &PipePool, client: &OwnedFd) -> Self {
        let mut first = FirstRead {
            buf: None,
            len: 0,
            tried: false,
            after: Ahead::Unknown,
        };
        if pool.wants_pipe(None) {
            return first;
        }
        first.tried = true;
        let mut buf = pool.take_buffer();
        match recv_into(client.as_raw_fd(), &mut buf) {
            Ok(0) => first.after = Ahead::End,
            Ok(n) => {
                first.len = n as u32; // at most one buffer
                first.buf = Some(buf);
                return first;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => first.after = Ahead::error(&e),
        }
        pool.give_back_buffer(buf);
        first
    }

    /// Bytes are waiting to go to the target the moment it is connected.
    pub fn has_bytes(&self) -> bool {
        self.len > 0
    }
}

/// Proxies until both directions have ended (each by end of stream, passed on
/// as a half-close), an error on either side, or `idle` with no bytes moving.
/// `first` is what was read from the client before the target was connected.
/// Bytes moved are added to the calling worker's `counters` as they move;
/// with a `tally`, the bytes each way are left there when the proxy ends,
/// however it ends (dropped too).
pub fn run<'a>(
    pipes: &'a PipePool,
    first: FirstRead,
    client: OwnedFd,
    target: OwnedFd,
    idle: Duration,
    counters: &'a TargetSlot,
    tally: Option<&'a Cell<[u64; 2]>>,
) -> impl Future<Output = Result<Transferred, ProxyError>> + 'a {
    let mut last_active = rt::time::now();
    let mut up = Direction::new(pipes, &counters.bytes_sent);
    up.start_with(first, &mut last_active);
    Proxy {
        up,
        down: Direction::new(pipes, &counters.bytes_received),
        client,
        target,
        ending: None,
        tally,
        // Durations are at most 720h (validated): 2.6e9 ms fit.
        idle_ms: idle.as_millis().min(u128::from(u32::MAX)) as u32,
        last_active,
        timer: rt::time::sleep(idle),
    }
}

/// Both directions of one connection as one hand-written future. Each
/// direction waits on at most one poll (its source readable, or its
/// destination writable), so an idle connection costs this struct and
/// two armed polls, not a stack of nested futures. Nothing in it is pinned
/// (its ops and timer are `Unpin`).
struct Proxy<'a> {
    // Declared before the sockets: fields drop in order, and a poll still
    // in flight must shut its socket down while the fd is open.
    up: Direction<'a>,
    down: Direction<'a>,
    client: OwnedFd,
    target: OwnedFd,
    /// How the session ends when not by two ends of stream. Boxed: rare,
    /// and every idle connection carries the field.
    ending: Option<Box<Ending>>,
    /// Where the bytes moved are left at the end, if anywhere.
    tally: Option<&'a Cell<[u64; 2]>>,
    /// The idle timeout, in milliseconds (smaller than a `Duration`; every
    /// idle connection carries it).
    idle_ms: u32,
    last_active: Instant,
    timer: rt::time::Sleep,
}

impl Drop for Proxy<'_> {
    fn drop(&mut self) {
        if let Some(tally) = self.tally {
            tally.set([self.up.moved, self.down.moved]);
        }
    }
}

/// A session that is not ending by two ends of stream.
enum Ending {
    /// The target stopped taking the client's bytes (it answered early and
    /// reset, say): the client's side is dropped, and what the target
    /// already sent still goes to the client before the client is reset.
    UploadRefused(ProxyError),
    /// `error` ended the session on one side; the other side is reset as
    /// soon as every byte sent to it has been acknowledged (or at `until`),
    /// so it sees what the first side sent, then a reset, not a clean end.
    Resetting { error: ProxyError, until: Instant },
}

/// The longest a reset waits for bytes already sent to be acknowledged.
const RESET_FLUSH_LIMIT: Duration = Duration::from_secs(10);
/// How often a reset looks whether they have been.
const RESET_POLL: Duration = Duration::from_millis(2);

impl Future for Proxy<'_> {
    type Output = Result<Transferred, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if matches!(this.ending.as_deref(), Some(Ending::Resetting { .. })) {
            return this.poll_reset(cx);
        }
        let (client, target) = (this.client.as_fd(), this.target.as_fd());
        match this
            .up
            .poll(cx, client, target, Side::Client, &mut this.last_active)
        {
            Poll::Ready(Err(
                e @ ProxyError::Io {
                    side: Side::Target, ..
                },
            )) => {
                this.up.abandon();
                this.ending = Some(Box::new(Ending::UploadRefused(e)));
            }
            Poll::Ready(Err(e)) => return this.reset_other_side(e, cx),
            _ => {}
        }
        if let Poll::Ready(Err(e)) =
            this.down
                .poll(cx, target, client, Side::Target, &mut this.last_active)
        {
            return this.reset_other_side(e, cx);
        }
        // Ends are passed on only now, once both directions have had their
        // turn: when both ended in the same pass (the client closed and so
        // did the target), no half-close is sent at all; closing both
        // sockets sends each FIN, as nginx does, and saves a shutdown(2).
        let (up_done, down_done) = (this.up.done, this.down.done);
        if !this.up.ended_first && !this.down.ended_first {
            this.up.ended_first = up_done;
            this.down.ended_first = down_done && !up_done;
        }
        if let Err(e) = this.up.pass_end(target, down_done) {
            this.ending = Some(Box::new(Ending::UploadRefused(ProxyError::Io {
                side: Side::Target,
                source: e,
            })));
        }
        if let Err(e) = this.down.pass_end(client, up_done) {
            let e = ProxyError::Io {
                side: Side::Client,
                source: e,
            };
            return this.reset_other_side(e, cx);
        }
        if this.up.done && this.down.done {
            return match this.ending.take().map(|b| *b) {
                Some(Ending::UploadRefused(e)) => this.reset_other_side(e, cx),
                _ => Poll::Ready(Ok(Transferred {
                    client_to_target: this.up.moved,
                    target_to_client: this.down.moved,
                    first_end: if this.down.ended_first {
                        Side::Target
                    } else {
                        Side::Client
                    },
                })),
            };
        }
        // The timer is moved forward lazily: only when it fires early.
        while Pin::new(&mut this.timer).poll(cx).is_ready() {
            let deadline = this.last_active + this.idle();
            if rt::time::now() >= deadline {
                return Poll::Ready(Err(ProxyError::Idle(this.idle())));
            }
            this.timer.reset(deadline);
        }
        Poll::Pending
    }
}

impl Proxy<'_> {
    fn idle(&self) -> Duration {
        Duration::from_millis(u64::from(self.idle_ms))
    }

    /// An error on one side ends the session: both directions stop reading
    /// (polls in flight stay, so no socket is shut down, which would send
    /// a FIN), and the other side is reset once what was sent to it has
    /// arrived ([`Proxy::poll_reset`]). A packet-level balancer passes a
    /// reset on as a reset; a FIN would make a cut-off transfer look
    /// complete.
    fn reset_other_side(
        &mut self,
        error: ProxyError,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Transferred, ProxyError>> {
        self.up.stop_reading();
        self.down.stop_reading();
        let until = rt::time::now() + RESET_FLUSH_LIMIT.min(self.idle());
        self.ending = Some(Box::new(Ending::Resetting { error, until }));
        self.poll_reset(cx)
    }

    /// Resets the other side once nothing sent to it is unacknowledged (or
    /// the flush limit passed), then ends with the error.
    fn poll_reset(&mut self, cx: &mut Context<'_>) -> Poll<Result<Transferred, ProxyError>> {
        let Some(Ending::Resetting { error, until }) = self.ending.as_deref() else {
            unreachable!("poll_reset while resetting");
        };
        let victim = match error {
            ProxyError::Io { side, .. } => match side.other() {
                Side::Client => self.client.as_raw_fd(),
                Side::Target => self.target.as_raw_fd(),
            },
            ProxyError::Idle(_) => unreachable!("an idle session closes, it is not reset"),
        };
        let until = *until;
        loop {
            let now = rt::time::now();
            if now >= until || unacknowledged(victim) == 0 {
                break;
            }
            self.timer.reset((now + RESET_POLL).min(until));
            if Pin::new(&mut self.timer).poll(cx).is_pending() {
                return Poll::Pending;
            }
        }
        abort(victim);
        match self.ending.take().map(|b| *b) {
            Some(Ending::Resetting { error, .. }) => Poll::Ready(Err(error)),
            _ => unreachable!("checked above"),
        }
    }
}

/// Bytes sent on `fd` that its peer has not acknowledged yet (`SIOCOUTQ`);
/// 0 if that cannot be told.
fn unacknowledged(fd: RawFd) -> i32 {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ on a TCP socket) writes one int to `n`.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if rc == 0 { n } else { 0 }
}

/// Aborts the connection on `fd` with a reset: `connect` to `AF_UNSPEC`
/// disconnects a TCP socket at once (what `SO_LINGER` 0 and `close` do, but
/// without waiting for polls in flight to let go of the socket).
fn abort(fd: RawFd) {
    // SAFETY: a zeroed sockaddr with family AF_UNSPEC, its size passed.
    let mut addr: libc::sockaddr = unsafe { std::mem::zeroed() };
    addr.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: connect reads `size_of::<sockaddr>()` bytes from `addr`.
    let rc = unsafe {
        libc::connect(
            fd,
            &raw const addr,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %io::Error::last_os_error(), "reset not sent");
    }
}

/// What a read ahead found after the staged bytes. An errno, not an
/// `io::Error`: every idle connection carries two of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ahead {
    Unknown,
    End,
    Error(i32),
}

impl Ahead {
    fn error(e: &io::Error) -> Ahead {
        Ahead::Error(e.raw_os_error().unwrap_or(libc::EIO))
    }
}

#[cfg(test)]
mod tests;
