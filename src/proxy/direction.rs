//! One direction of a proxied connection: bytes from a source socket to a
//! destination socket, through the stage its reads fill (a ring buffer, a
//! copy buffer or a pipe), and the end of stream passed on as a half-close.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::AtomicU64;
use std::task::{Context, Poll, ready};
use std::time::Instant;

use io_uring::cqueue;
use socket2::SockRef;

use super::pipe::PipePool;
use super::stage::{Loan, Stage};
use super::{Ahead, FirstRead, ProxyError, Side};
use crate::metrics::bump;
use crate::rt::op::{self, PollOp};
use crate::rt::{self, Multishot};

/// One direction: bytes from `src` to `dst`.
pub(super) struct Direction<'a> {
    loan: Loan<'a>,
    pub(super) moved: u64,
    /// The worker's byte counter for this direction.
    counter: &'a AtomicU64,
    pub(super) done: bool,
    /// It ended before the other direction did.
    pub(super) ended_first: bool,
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
    pub(super) bulk: bool,
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

/// What one step of a direction's loop came to.
enum Step {
    /// Go round again (or, if something waits now, return Pending from it).
    Again,
    /// The source has ended: this end is to be passed on.
    Ended(Unpassed),
}

/// Short pipe reads in a row after which a direction goes back to copying.
pub(super) const SHORT_READS_OFF_PIPE: u8 = 8;

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
    pub(super) fn new(pool: &'a PipePool, counter: &'a AtomicU64) -> Self {
        Direction {
            loan: Loan { pool, stage: None },
            moved: 0,
            counter,
            done: false,
            ended_first: false,
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
    pub(super) fn start_with(&mut self, first: FirstRead, last_active: &mut Instant) {
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
    pub(super) fn abandon(&mut self) {
        self.recv = None;
        self.loan.end();
        self.done = true;
    }

    /// As [`Direction::abandon`], and an end not yet passed on never will
    /// be. A poll in flight stays (dropping it would shut its socket down).
    pub(super) fn stop_reading(&mut self) {
        self.abandon();
        self.unpassed = Unpassed::Nothing;
    }

    /// Moves bytes until a socket would block (Pending, waker registered),
    /// end of stream (Ready(Ok); [`Direction::pass_end`] passes it on), or
    /// an error (Ready(Err)). Each turn of the loop takes one step, in this
    /// order: the wait in flight, if any ([`Direction::waited`]); bytes
    /// staged go on before any are read ([`Direction::pass_on`]); what a
    /// read ahead found; the ring receive's next completion
    /// ([`Direction::take_received`]); when the source may be dry, a wait
    /// for it ([`Direction::wait_for_bytes`]); else a read
    /// ([`Direction::fill`]).
    pub(super) fn poll(
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
        let err = |side, source| ProxyError::Io { side, source };
        loop {
            ready!(self.waited(cx, src_side))?;
            let step = if self.staged() {
                self.pass_on(dst, src_side.other(), last_active)?
            } else if let Some(step) = self.ahead(src_side)? {
                step
            } else if self.recv.is_some() {
                ready!(self.take_received(cx, last_active)).map_err(|e| err(src_side, e))?
            } else if !self.src_ready {
                self.wait_for_bytes(src, src_side);
                Step::Again
            } else {
                self.fill(src, last_active).map_err(|e| err(src_side, e))?
            };
            if let Step::Ended(how) = step {
                return self.end(how);
            }
        }
    }

    /// The wait in flight, if any: Pending until it completes. A poll of
    /// the source that completes says it is readable (and whether its peer
    /// has sent FIN).
    fn waited(&mut self, cx: &mut Context<'_>, src_side: Side) -> Poll<Result<(), ProxyError>> {
        let Some(wait) = self.wait.as_mut() else {
            return Poll::Ready(Ok(()));
        };
        let op = wait.op.as_mut().expect("a Wait in place is in flight");
        let result = ready!(Pin::new(op).poll(cx));
        wait.op = None;
        let side = wait.side;
        self.wait = None;
        let events = result.map_err(|source| ProxyError::Io { side, source })?;
        if side == src_side {
            self.src_ready = true;
            self.src_hup |= events & libc::POLLRDHUP as u32 != 0;
        }
        Poll::Ready(Ok(()))
    }

    /// Whether the stage holds bytes not yet passed on.
    fn staged(&self) -> bool {
        self.loan.stage.as_ref().is_some_and(|s| s.pending() > 0)
    }

    /// Passes staged bytes on to `dst`; when it takes fewer than offered,
    /// waits for room.
    fn pass_on(
        &mut self,
        dst: BorrowedFd<'_>,
        dst_side: Side,
        last_active: &mut Instant,
    ) -> Result<Step, ProxyError> {
        let stage = self.loan.stage.as_mut().expect("staged bytes");
        let before = stage.pending();
        match stage.drain(dst.as_raw_fd(), self.after == Ahead::End) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_for_room(dst, dst_side),
            Err(source) => {
                return Err(ProxyError::Io {
                    side: dst_side,
                    source,
                });
            }
            Ok(n) => {
                *last_active = rt::time::now();
                if n < before {
                    // The socket's send buffer is full: wait for room.
                    self.wait_for_room(dst, dst_side);
                }
            }
        }
        Ok(Step::Again)
    }

    /// What a read ahead found after the staged bytes, now that they are
    /// gone: the end (it rides with them), an error, or nothing (`None`).
    fn ahead(&mut self, src_side: Side) -> Result<Option<Step>, ProxyError> {
        match std::mem::replace(&mut self.after, Ahead::Unknown) {
            Ahead::End => Ok(Some(Step::Ended(Unpassed::CorkedEnd))),
            Ahead::Error(code) => Err(ProxyError::Io {
                side: src_side,
                source: io::Error::from_raw_os_error(code),
            }),
            Ahead::Unknown => Ok(None),
        }
    }

    /// The stage is empty: what the ring receive holds is next. When it
    /// stopped (cancelled, or no buffer was free), a read finds out what
    /// the source holds.
    fn take_received(
        &mut self,
        cx: &mut Context<'_>,
        last_active: &mut Instant,
    ) -> Poll<io::Result<Step>> {
        self.loan.end();
        let recv = self.recv.as_mut().expect("a ring receive is armed");
        match ready!(recv.poll_next(cx)) {
            Some((result, flags)) => match self.received(result, flags, last_active) {
                Some(Ok(())) => Poll::Ready(Ok(Step::Ended(Unpassed::End))),
                Some(Err(e)) => Poll::Ready(Err(e)),
                None => Poll::Ready(Ok(Step::Again)),
            },
            None => {
                self.recv = None;
                self.src_ready = true;
                Poll::Ready(Ok(Step::Again))
            }
        }
    }

    /// The stage is empty and the source may be dry: the pipe goes back
    /// until data comes, and the direction waits for bytes, by a ring
    /// receive when it copies and the worker has provided buffers (and
    /// the last one did not find them all taken), else by a poll.
    fn wait_for_bytes(&mut self, src: BorrowedFd<'_>, src_side: Side) {
        self.loan.end();
        if !self.bulk && !std::mem::take(&mut self.starved) && rt::with_bufs(|b| b.is_some()) {
            self.recv = Some(op::recv_multi(src.as_raw_fd()));
        } else {
            let events = libc::POLLIN | libc::POLLRDHUP;
            self.wait = Some(Wait::arm(src.as_raw_fd(), events, src_side));
        }
    }

    /// Reads from the source into a stage (a pipe for bulk, else a buffer).
    /// A short read drained the socket (or stopped at an urgent mark): the
    /// poll finds out which, without a read. Unless the peer has sent FIN:
    /// then it reads on now, so the end can leave with these bytes.
    fn fill(&mut self, src: BorrowedFd<'_>, last_active: &mut Instant) -> io::Result<Step> {
        let stage = self.loan.get(self.bulk);
        let room = stage.room();
        let piped = matches!(stage, Stage::Pipe(_));
        let n = match stage.fill(src.as_raw_fd()) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                self.src_ready = false;
                return Ok(Step::Again);
            }
            Err(e) => return Err(e),
            Ok(0) => return Ok(Step::Ended(Unpassed::End)),
            Ok(n) => n,
        };
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
        Ok(Step::Again)
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
    pub(super) fn after_read(&mut self, n: usize, piped: bool) {
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
    pub(super) fn pass_end(&mut self, dst: BorrowedFd<'_>, other_done: bool) -> io::Result<()> {
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
