//! One proxied connection: a client socket and a target socket, bytes moved both
//! ways until both directions have ended.
//!
//! Bytes move on readiness (the epoll reactor inside the worker's tokio-uring
//! runtime) with non-blocking splice(2) through a pipe borrowed from the worker's
//! pool, or through a buffer when no pipe can be had. Nothing here leaves a
//! kernel operation in flight, so dropping a session (idle timeout, shutdown,
//! an error on the other direction) loses no bytes that were already moved and
//! leaks nothing.

pub mod pipe;

use std::cell::Cell;
use std::io;
use std::net::Shutdown;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

use socket2::SockRef;
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
use tokio::time::Instant;

use pipe::{Pipe, PipePool};

/// Buffer used when no pipe can be had.
const COPY_BUF: usize = 16 * 1024;

/// Which side of the proxy an error came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Client,
    Target,
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
pub async fn run(
    pipes: &PipePool,
    client: OwnedFd,
    target: OwnedFd,
    idle: Duration,
) -> Result<Transferred, ProxyError> {
    let client = register(client).map_err(|source| ProxyError::Io {
        side: Side::Client,
        source,
    })?;
    let target = register(target).map_err(|source| ProxyError::Io {
        side: Side::Target,
        source,
    })?;
    let last_active = Cell::new(Instant::now());
    let up = pump(pipes, &client, &target, Side::Client, &last_active);
    let down = pump(pipes, &target, &client, Side::Target, &last_active);
    tokio::select! {
        r = async { tokio::try_join!(up, down) } => {
            let (client_to_target, target_to_client) = r?;
            Ok(Transferred { client_to_target, target_to_client })
        }
        () = idle_timer(&last_active, idle) => Err(ProxyError::Idle(idle)),
    }
}

fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: an OwnedFd is open and refers to the same socket until it is
    // dropped, which happens only when the AsyncFd owning it is dropped.
    Ok(unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE | Interest::WRITABLE) }?)
}

async fn idle_timer(last_active: &Cell<Instant>, idle: Duration) {
    loop {
        let deadline = last_active.get() + idle;
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
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

/// Moves bytes `src` -> `dst` until end of stream, then half-closes `dst`.
/// Returns the bytes moved.
async fn pump(
    pipes: &PipePool,
    src: &AsyncFd<OwnedFd>,
    dst: &AsyncFd<OwnedFd>,
    src_side: Side,
    last_active: &Cell<Instant>,
) -> Result<u64, ProxyError> {
    let dst_side = match src_side {
        Side::Client => Side::Target,
        Side::Target => Side::Client,
    };
    let src_err = |source| ProxyError::Io {
        side: src_side,
        source,
    };
    let dst_err = |source| ProxyError::Io {
        side: dst_side,
        source,
    };
    let mut loan = Loan {
        pool: pipes,
        stage: None,
    };
    let mut total = 0u64;
    loop {
        let mut ready = src.readable().await.map_err(src_err)?;
        let stage = loan.get();
        match ready.try_io(|fd| stage.fill(fd.as_raw_fd())) {
            Err(_would_block) => {
                // The socket is dry: the (empty) pipe goes back until data comes.
                loan.end();
                continue;
            }
            Ok(Err(e)) => return Err(src_err(e)),
            Ok(Ok(0)) => {
                drop(ready);
                loan.end();
                match SockRef::from(dst.get_ref()).shutdown(Shutdown::Write) {
                    Ok(()) => return Ok(total),
                    // The peer is already gone; the other direction will see it.
                    Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => return Ok(total),
                    Err(e) => return Err(dst_err(e)),
                }
            }
            Ok(Ok(n)) => {
                drop(ready);
                total += n as u64;
                last_active.set(Instant::now());
                while stage.pending() > 0 {
                    let mut ready = dst.writable().await.map_err(dst_err)?;
                    match ready.try_io(|fd| stage.drain(fd.as_raw_fd())) {
                        Err(_would_block) => continue,
                        Ok(Err(e)) => return Err(dst_err(e)),
                        Ok(Ok(_)) => last_active.set(Instant::now()),
                    }
                }
            }
        }
    }
}
