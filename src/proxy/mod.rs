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

pub mod pipe;
mod stage;

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use socket2::SockRef;
use std::time::Instant;

use pipe::PipePool;
use stage::{Loan, Stage, recv_into};

use crate::rt::op::{self, PollOp};
use crate::rt::{self, Multishot};
use io_uring::cqueue;

use crate::metrics::{TargetSlot, bump};
use std::sync::atomic::AtomicU64;

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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Transferred {
    pub client_to_target: u64,
    pub target_to_client: u64,
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
/// Bytes moved are added to the calling worker's `counters` as they move.
pub fn run<'a>(
    pipes: &'a PipePool,
    first: FirstRead,
    client: OwnedFd,
    target: OwnedFd,
    idle: Duration,
    counters: &'a TargetSlot,
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
        idle,
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
    idle: Duration,
    last_active: Instant,
    timer: rt::time::Sleep,
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
                })),
            };
        }
        // The timer is moved forward lazily: only when it fires early.
        while Pin::new(&mut this.timer).poll(cx).is_ready() {
            let deadline = this.last_active + this.idle;
            if rt::time::now() >= deadline {
                return Poll::Ready(Err(ProxyError::Idle(this.idle)));
            }
            this.timer.reset(deadline);
        }
        Poll::Pending
    }
}

impl Proxy<'_> {
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
        let until = rt::time::now() + RESET_FLUSH_LIMIT.min(self.idle);
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

/// One direction: bytes from `src` to `dst`.
struct Direction<'a> {
    loan: Loan<'a>,
    moved: u64,
    /// The worker's byte counter for this direction.
    counter: &'a AtomicU64,
    done: bool,
    /// The poll this direction waits on, if any.
    wait: Option<Wait>,
    /// A multishot receive armed on the source (the copy path, when the
    /// worker has provided buffers): while it is here, it is the only way
    /// bytes are read from the source.
    recv: Option<Multishot>,
    /// The last ring receive found no free buffer: the next wait is a poll
    /// and the read a system call, into a pooled buffer.
    starved: bool,
    /// The source may hold more bytes: its last read filled the stage, or a
    /// poll said it is readable. When false, a poll comes before the next read.
    src_ready: bool,
    /// The last read filled a buffer, or came through a pipe not long ago:
    /// the next goes through a pipe.
    bulk: bool,
    /// Short reads in a row through a pipe (see [`Direction::after_read`]).
    short_reads: u8,
    /// A poll on the source saw `POLLRDHUP`: its peer has sent FIN, so once
    /// a read comes back short, the end of stream is next in line.
    src_hup: bool,
    /// What the source said after the staged bytes, read ahead once it was
    /// known to be ending: end of stream or an error, acted on when
    /// the stage is drained. An end goes out with the last bytes (sent with
    /// `MSG_MORE`, then the half-close: the FIN rides in their segment, one
    /// segment and one wake-up fewer for the receiver than a separate FIN).
    after: Ahead,
    /// An end of stream read and not yet passed on.
    unpassed: Unpassed,
}

/// Short pipe reads in a row after which a direction goes back to copying.
const SHORT_READS_OFF_PIPE: u8 = 8;

/// An end of stream waiting for [`Direction::pass_end`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unpassed {
    Nothing,
    End,
    /// The end came from a read-ahead, so the last bytes went out with
    /// `MSG_MORE`: the half-close must push them even when the other
    /// direction has ended too (a close that resets, over bytes the client
    /// never read, would drop them).
    CorkedEnd,
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

/// A poll in flight on `fd`. Dropped before it completes, it shuts the
/// socket down so the poll completes and releases the socket.
struct Wait {
    op: Option<PollOp>,
    fd: RawFd,
    side: Side,
}

impl Wait {
    fn arm(fd: RawFd, events: libc::c_short, side: Side) -> Wait {
        Wait {
            op: Some(op::poll(fd, events as u32)),
            fd,
            side,
        }
    }
}

impl Drop for Wait {
    fn drop(&mut self) {
        if self.op.is_some() {
            // SAFETY: `fd` belongs to the Proxy that owns this Wait, and the
            // Proxy's sockets are declared after its directions, so they are
            // still open here.
            unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
        }
    }
}

impl<'a> Direction<'a> {
    fn new(pool: &'a PipePool, counter: &'a AtomicU64) -> Self {
        Direction {
            loan: Loan { pool, stage: None },
            moved: 0,
            counter,
            done: false,
            wait: None,
            recv: None,
            starved: false,
            src_ready: false,
            bulk: pool.wants_pipe(None),
            short_reads: 0,
            src_hup: false,
            after: Ahead::Unknown,
            unpassed: Unpassed::Nothing,
        }
    }

    /// Takes over what was read from the source before the proxy ran.
    fn start_with(&mut self, first: FirstRead, last_active: &mut Instant) {
        // Not tried: read at once (the client has usually spoken by now).
        self.src_ready = !first.tried;
        self.after = first.after;
        let Some(buf) = first.buf else {
            return;
        };
        let len = first.len as usize;
        self.count(len, last_active);
        // A full buffer may have more behind it; a short read drained the
        // socket (a poll says when there is more).
        self.src_ready = len >= buf.len();
        self.after_read(len, false);
        self.loan.stage = Some(Stage::Buffer {
            buf,
            start: 0,
            end: len,
        });
    }

    /// Gives up on this direction: no more reads, its pipe goes back (closed
    /// if it still holds bytes).
    fn abandon(&mut self) {
        self.recv = None;
        self.loan.end();
        self.done = true;
    }

    /// As [`Direction::abandon`], and an end not yet passed on never will
    /// be. A poll in flight stays (dropping it would shut its socket down).
    fn stop_reading(&mut self) {
        self.abandon();
        self.unpassed = Unpassed::Nothing;
    }

    /// Moves bytes until a socket would block (Pending, waker registered),
    /// end of stream (Ready(Ok); [`Direction::pass_end`] passes it on), or
    /// an error (Ready(Err)).
    ///
    /// About 100 lines, on purpose: it is the per-byte loop (wait, pass on
    /// what is staged, read more), and each step depends on what the others
    /// just did; kept as one loop so the hot path reads in one place.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        src_side: Side,
        last_active: &mut Instant,
    ) -> Poll<Result<(), ProxyError>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        let dst_side = src_side.other();
        let src_err = |source| ProxyError::Io {
            side: src_side,
            source,
        };
        let dst_err = |source| ProxyError::Io {
            side: dst_side,
            source,
        };
        loop {
            if let Some(wait) = self.wait.as_mut() {
                let op = wait.op.as_mut().expect("a Wait in place is in flight");
                let result = ready!(Pin::new(op).poll(cx));
                wait.op = None;
                let side = wait.side;
                self.wait = None;
                let events = match result {
                    Ok(events) => events,
                    Err(e) => return Poll::Ready(Err(ProxyError::Io { side, source: e })),
                };
                if side == src_side {
                    self.src_ready = true;
                    self.src_hup |= events & libc::POLLRDHUP as u32 != 0;
                }
            }
            // Pass on what is staged before reading more.
            if let Some(stage) = self.loan.stage.as_mut()
                && stage.pending() > 0
            {
                let before = stage.pending();
                match stage.drain(dst.as_raw_fd(), self.after == Ahead::End) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.wait_for_room(dst, dst_side)
                    }
                    Err(e) => return Poll::Ready(Err(dst_err(e))),
                    Ok(n) => {
                        *last_active = rt::time::now();
                        if n < before {
                            // The socket's send buffer is full: wait for room.
                            self.wait_for_room(dst, dst_side);
                        }
                    }
                }
                continue;
            }
            match std::mem::replace(&mut self.after, Ahead::Unknown) {
                Ahead::End => return self.end(Unpassed::CorkedEnd),
                Ahead::Error(code) => {
                    return Poll::Ready(Err(src_err(io::Error::from_raw_os_error(code))));
                }
                Ahead::Unknown => {}
            }
            if let Some(recv) = self.recv.as_mut() {
                // The stage is empty: what the ring receive holds is next.
                self.loan.end();
                match ready!(recv.poll_next(cx)) {
                    Some((result, flags)) => match self.received(result, flags, last_active) {
                        Some(Ok(())) => return self.end(Unpassed::End),
                        Some(Err(e)) => return Poll::Ready(Err(src_err(e))),
                        None => {}
                    },
                    None => {
                        // Stopped (cancelled, or no buffer was free): a read
                        // finds out what the source holds.
                        self.recv = None;
                        self.src_ready = true;
                    }
                }
                continue;
            }
            if !self.src_ready {
                // The stage is empty and the source may be dry: the pipe goes
                // back until data comes.
                self.loan.end();
                if !self.bulk
                    && !std::mem::take(&mut self.starved)
                    && rt::with_bufs(|b| b.is_some())
                {
                    self.recv = Some(op::recv_multi(src.as_raw_fd()));
                } else {
                    let events = libc::POLLIN | libc::POLLRDHUP;
                    self.wait = Some(Wait::arm(src.as_raw_fd(), events, src_side));
                }
                continue;
            }
            let stage = self.loan.get(self.bulk);
            let room = stage.room();
            let piped = matches!(stage, Stage::Pipe(_));
            match stage.fill(src.as_raw_fd()) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.src_ready = false;
                }
                Err(e) => return Poll::Ready(Err(src_err(e))),
                Ok(0) => return self.end(Unpassed::End),
                Ok(n) => {
                    // A short read drained the socket (or stopped at an
                    // urgent mark): the poll finds out which, without a read.
                    // Unless the peer has sent FIN: then read on now, so the
                    // end can leave with these bytes.
                    let ahead = if self.src_hup && n < room {
                        stage.read_ahead(src.as_raw_fd())
                    } else {
                        None
                    };
                    self.count(n, last_active);
                    self.src_ready = n >= room;
                    self.after_read(n, piped);
                    match ahead {
                        Some(Ok(0)) => self.after = Ahead::End,
                        Some(Ok(more)) => {
                            self.count(more, last_active);
                            self.src_ready = true; // stopped at an urgent mark
                        }
                        Some(Err(e)) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Some(Err(e)) => self.after = Ahead::error(&e),
                        None => {}
                    }
                }
            }
        }
    }
}

impl Direction<'_> {
    /// A completion of the ring receive: bytes in a provided buffer become
    /// the stage; `Some` when the source has ended (`Ok`) or failed.
    fn received(
        &mut self,
        result: i32,
        flags: u32,
        last_active: &mut Instant,
    ) -> Option<io::Result<()>> {
        match result {
            0 => Some(Ok(())),
            n if n > 0 => {
                let bid = cqueue::buffer_select(flags).expect("a ring receive selects a buffer");
                let n = n as u32; // at most one buffer
                self.loan.stage = Some(Stage::Ring {
                    bid,
                    start: 0,
                    end: n,
                });
                self.count(n as usize, last_active);
                self.after_read(n as usize, false);
                let recv = self
                    .recv
                    .as_mut()
                    .expect("a completion of the armed receive");
                if self.bulk {
                    // A full buffer: more is coming, through a pipe once
                    // what the receive holds has gone.
                    recv.cancel();
                } else if recv.peek().is_some_and(|(r, _)| r == 0) {
                    // The end of stream is next: it leaves with these bytes.
                    self.after = Ahead::End;
                }
                None
            }
            e if e == -libc::ENOBUFS => {
                self.starved = true;
                None
            }
            e if e == -libc::ECANCELED => None,
            e => Some(Err(io::Error::from_raw_os_error(-e))),
        }
    }

    /// The destination is full: wait until it has room, and stop the ring
    /// receive meanwhile, so a fast source cannot take every provided buffer.
    fn wait_for_room(&mut self, dst: BorrowedFd<'_>, dst_side: Side) {
        if let Some(recv) = self.recv.as_mut() {
            recv.cancel();
        }
        self.wait = Some(Wait::arm(dst.as_raw_fd(), libc::POLLOUT, dst_side));
    }

    /// Chooses the next read's stage after any read of `n` bytes (the first,
    /// a ring receive, a read into a buffer or a pipe): a pipe after a read
    /// that filled a buffer, and after a pipe read unless the pipe has come
    /// back short [`SHORT_READS_OFF_PIPE`] times in a row. A bulk stream
    /// that outpaces its source often finds only part of a buffer when it
    /// wakes; sent back to the copy path, the ring receive would copy the
    /// whole next burst, twice, before the direction saw it was bulk again.
    fn after_read(&mut self, n: usize, piped: bool) {
        if self.loan.pool.wants_pipe(Some(n)) {
            self.short_reads = 0;
            self.bulk = true;
        } else if piped {
            self.short_reads = self.short_reads.saturating_add(1);
            self.bulk = self.short_reads < SHORT_READS_OFF_PIPE;
        } else {
            self.bulk = false;
        }
    }

    fn count(&mut self, n: usize, last_active: &mut Instant) {
        self.moved += n as u64;
        bump(self.counter, n as u64);
        *last_active = rt::time::now();
    }

    /// The source has ended; the end waits for [`Direction::pass_end`].
    fn end(&mut self, how: Unpassed) -> Poll<Result<(), ProxyError>> {
        self.recv = None;
        self.loan.end();
        self.done = true;
        self.unpassed = how;
        Poll::Ready(Ok(()))
    }

    /// Passes an end not yet passed on to `dst` as a half-close, or nothing
    /// when the other direction has ended too (the session then closes both
    /// sockets, and close() sends the FIN a shutdown would).
    fn pass_end(&mut self, dst: BorrowedFd<'_>, other_done: bool) -> io::Result<()> {
        match std::mem::replace(&mut self.unpassed, Unpassed::Nothing) {
            Unpassed::Nothing => return Ok(()),
            Unpassed::End if other_done => return Ok(()),
            Unpassed::End | Unpassed::CorkedEnd => {}
        }
        match SockRef::from(&dst).shutdown(Shutdown::Write) {
            // The peer is already gone; the other direction will see it.
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests;
