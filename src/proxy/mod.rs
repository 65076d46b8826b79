//! One proxied connection: a client socket and a target socket, bytes moved both
//! ways until both directions have ended.
//!
//! Bytes move on readiness (the epoll reactor inside the worker's tokio-uring
//! runtime) with non-blocking splice(2) through a pipe borrowed from the worker's
//! pool, or through a buffer when no pipe can be had. Nothing here leaves a
//! kernel operation in flight, so dropping a session (idle timeout, shutdown,
//! an error on the other direction) loses no bytes that were already moved and
//! leaks nothing.

pub mod header;
pub mod pipe;

use std::future::Future;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use pipe::{Pipe, PipePool};

use crate::metrics::{TargetSlot, bump};
use std::sync::atomic::AtomicU64;

/// Buffer used when no pipe can be had.
const COPY_BUF: usize = 16 * 1024;

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

/// Proxies until both directions have ended (each by end of stream, passed on
/// as a half-close), an error on either side, or `idle` with no bytes moving.
/// Bytes moved are added to the calling worker's `counters` as they move.
pub async fn run(
    pipes: &PipePool,
    client: OwnedFd,
    target: OwnedFd,
    idle: Duration,
    counters: &TargetSlot,
) -> Result<Transferred, ProxyError> {
    let client = register(client).map_err(|source| ProxyError::Io {
        side: Side::Client,
        source,
    })?;
    let target = register(target).map_err(|source| ProxyError::Io {
        side: Side::Target,
        source,
    })?;
    Proxy {
        client,
        target,
        up: Direction::new(pipes, &counters.bytes_sent),
        down: Direction::new(pipes, &counters.bytes_received),
        upload_refused: None,
        idle,
        last_active: Instant::now(),
        timer: tokio::time::sleep(idle),
    }
    .await
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open and refers to the same socket until it is
    // dropped, which happens only when the AsyncFd owning it is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }?)
}

pin_project_lite::pin_project! {
    /// Both directions of one connection as one hand-written future. Wakers
    /// live in each socket's read and write slots (the client's read slot
    /// serves `up`, its write slot `down`, and the reverse for the target), so
    /// an idle connection costs this struct and two reactor registrations,
    /// not a stack of nested futures.
    struct Proxy<'a> {
        client: AsyncFd<OwnedFd>,
        target: AsyncFd<OwnedFd>,
        up: Direction<'a>,
        down: Direction<'a>,
        // The target stopped taking the client's bytes (it answered early
        // and reset, say): the client's side is dropped, and what the target
        // already sent still goes to the client before the session ends.
        upload_refused: Option<ProxyError>,
        idle: Duration,
        last_active: Instant,
        #[pin]
        timer: tokio::time::Sleep,
    }
}

impl Future for Proxy<'_> {
    type Output = Result<Transferred, ProxyError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let (client, target) = (&*this.client, &*this.target);
        let down_done = this.down.done;
        match this.up.poll(
            cx,
            client,
            target,
            Side::Client,
            down_done,
            this.last_active,
        ) {
            Poll::Ready(Err(
                e @ ProxyError::Io {
                    side: Side::Target, ..
                },
            )) => {
                this.up.abandon();
                *this.upload_refused = Some(e);
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            _ => {}
        }
        let up_done = this.up.done;
        if let Poll::Ready(Err(e)) =
            this.down
                .poll(cx, target, client, Side::Target, up_done, this.last_active)
        {
            return Poll::Ready(Err(e));
        }
        if this.up.done && this.down.done {
            return Poll::Ready(match this.upload_refused.take() {
                Some(e) => Err(e),
                None => Ok(Transferred {
                    client_to_target: this.up.moved,
                    target_to_client: this.down.moved,
                }),
            });
        }
        // The timer is moved forward lazily: only when it fires early.
        while this.timer.as_mut().poll(cx).is_ready() {
            let deadline = *this.last_active + *this.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Err(ProxyError::Idle(*this.idle)));
            }
            this.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

/// One direction: bytes from `src` to `dst`.
struct Direction<'a> {
    loan: Loan<'a>,
    moved: u64,
    /// The worker's byte counter for this direction.
    counter: &'a AtomicU64,
    done: bool,
}

impl<'a> Direction<'a> {
    fn new(pool: &'a PipePool, counter: &'a AtomicU64) -> Self {
        Direction {
            loan: Loan { pool, stage: None },
            moved: 0,
            counter,
            done: false,
        }
    }

    /// Gives up on this direction: no more reads, its pipe goes back (closed
    /// if it still holds bytes).
    fn abandon(&mut self) {
        self.loan.end();
        self.done = true;
    }

    /// Moves bytes until a socket would block (Pending, waker registered),
    /// end of stream has been passed on as a half-close (Ready(Ok); no
    /// half-close when the `other_done` direction has ended too, as the
    /// session then closes both sockets), or an error (Ready(Err)).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        src: &AsyncFd<OwnedFd>,
        dst: &AsyncFd<OwnedFd>,
        src_side: Side,
        other_done: bool,
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
            // Pass on what is staged before reading more.
            if let Some(stage) = self.loan.stage.as_mut()
                && stage.pending() > 0
            {
                let mut ready = ready!(dst.poll_write_ready(cx)).map_err(dst_err)?;
                match ready.try_io(|fd| stage.drain(fd.as_raw_fd())) {
                    Err(_would_block) => continue,
                    Ok(Err(e)) => return Poll::Ready(Err(dst_err(e))),
                    Ok(Ok(_)) => *last_active = Instant::now(),
                }
                continue;
            }
            let mut ready = ready!(src.poll_read_ready(cx)).map_err(src_err)?;
            let stage = self.loan.get();
            match ready.try_io(|fd| stage.fill(fd.as_raw_fd())) {
                Err(_would_block) => {
                    // The socket is dry: the (empty) pipe goes back until data comes.
                    self.loan.end();
                }
                Ok(Err(e)) => return Poll::Ready(Err(src_err(e))),
                Ok(Ok(0)) if other_done => {
                    // Both directions have ended: the session closes both
                    // sockets now, and close() sends the FIN a shutdown would.
                    self.loan.end();
                    self.done = true;
                    return Poll::Ready(Ok(()));
                }
                Ok(Ok(0)) => {
                    self.loan.end();
                    self.done = true;
                    return Poll::Ready(
                        match SockRef::from(dst.get_ref()).shutdown(Shutdown::Write) {
                            Ok(()) => Ok(()),
                            // The peer is already gone; the other direction will see it.
                            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
                            Err(e) => Err(dst_err(e)),
                        },
                    );
                }
                Ok(Ok(n)) => {
                    self.moved += n as u64;
                    bump(self.counter, n as u64);
                    *last_active = Instant::now();
                }
            }
        }
    }
}

/// Where bytes wait between the two sockets of one direction.
enum Stage {
    Pipe(Pipe),
    Buffer {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

impl Stage {
    fn pending(&self) -> usize {
        match self {
            Stage::Pipe(p) => p.pending,
            Stage::Buffer { start, end, .. } => end - start,
        }
    }

    fn fill(&mut self, src: RawFd) -> io::Result<usize> {
        match self {
            Stage::Pipe(p) => p.fill(src),
            Stage::Buffer { buf, start, end } => {
                // SAFETY: recv into our own buffer of `buf.len()` bytes.
                let n = unsafe { libc::recv(src, buf.as_mut_ptr().cast(), buf.len(), 0) };
                let n = check(n)?;
                (*start, *end) = (0, n);
                Ok(n)
            }
        }
    }

    fn drain(&mut self, dst: RawFd) -> io::Result<usize> {
        match self {
            Stage::Pipe(p) => p.drain(dst),
            Stage::Buffer { buf, start, end } => {
                let chunk = &buf[*start..*end];
                // SAFETY: send from a live slice; MSG_NOSIGNAL turns SIGPIPE into EPIPE.
                let n = unsafe {
                    libc::send(dst, chunk.as_ptr().cast(), chunk.len(), libc::MSG_NOSIGNAL)
                };
                let n = check(n)?;
                *start += n;
                Ok(n)
            }
        }
    }
}

fn check(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A stage on loan: a pipe goes back to the pool when the loan ends.
struct Loan<'a> {
    pool: &'a PipePool,
    stage: Option<Stage>,
}

impl Loan<'_> {
    fn get(&mut self) -> &mut Stage {
        let pool = self.pool;
        self.stage.get_or_insert_with(|| match pool.take() {
            Some(p) => Stage::Pipe(p),
            None => Stage::Buffer {
                buf: vec![0; COPY_BUF].into_boxed_slice(),
                start: 0,
                end: 0,
            },
        })
    }

    fn end(&mut self) {
        if let Some(Stage::Pipe(p)) = self.stage.take() {
            self.pool.give_back(p);
        }
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        self.end();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection holds one of these: keep it from growing back
    /// (nested futures once made it 1,752 bytes, and idle memory 3 KB).
    #[test]
    fn proxy_future_stays_small() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (b, _) = l.accept().unwrap();
            let pool = PipePool::new(1, 1);
            let counters = TargetSlot::default();
            let fut = run(&pool, a.into(), b.into(), Duration::from_secs(1), &counters);
            let size = std::mem::size_of_val(&fut);
            println!("proxy future: {size} bytes");
            assert!(size <= 512, "proxy future is {size} bytes");
        });
    }
}
