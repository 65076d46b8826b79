//! Where a direction's bytes wait between its two sockets: a provided buffer
//! a ring receive filled, a pooled 16 KiB buffer (recv/send) or a pipe
//! (splice), on loan while bytes flow.

use std::io;
use std::os::fd::RawFd;

use super::pipe::{Pipe, PipePool};
use crate::rt;

/// Where bytes wait between the two sockets of one direction.
pub(super) enum Stage {
    Pipe(Pipe),
    /// Provided buffer `bid` of the worker's ring ([`crate::rt::BufRing`]),
    /// as a ring receive filled it; given back when the loan ends.
    Ring {
        bid: u16,
        start: u32,
        end: u32,
    },
    Buffer {
        buf: Box<[u8]>,
        start: usize,
        end: usize,
    },
}

impl Stage {
    pub(super) fn pending(&self) -> usize {
        match self {
            Stage::Pipe(p) => p.pending,
            Stage::Ring { start, end, .. } => (end - start) as usize,
            Stage::Buffer { start, end, .. } => end - start,
        }
    }

    /// How much one fill can take (fills happen only when empty).
    pub(super) fn room(&self) -> usize {
        match self {
            Stage::Pipe(p) => p.capacity,
            Stage::Ring { .. } => unreachable!("a ring buffer is never filled by a read"),
            Stage::Buffer { buf, .. } => buf.len(),
        }
    }

    pub(super) fn fill(&mut self, src: RawFd) -> io::Result<usize> {
        match self {
            Stage::Pipe(p) => p.fill(src),
            Stage::Ring { .. } => unreachable!("a ring buffer is never filled by a read"),
            Stage::Buffer { buf, start, end } => {
                let n = recv_into(src, buf)?;
                (*start, *end) = (0, n);
                Ok(n)
            }
        }
    }

    /// After a short read from a source whose peer has sent FIN: one more
    /// read into the buffer's free room, to learn whether the end of stream
    /// is next (`Ok(0)`). `None` for a pipe, whose next poll finds out.
    pub(super) fn read_ahead(&mut self, src: RawFd) -> Option<io::Result<usize>> {
        let Stage::Buffer { buf, end, .. } = self else {
            return None;
        };
        let room = &mut buf[*end..];
        if room.is_empty() {
            return None;
        }
        let n = recv_into(src, room);
        if let Ok(n) = n {
            *end += n;
        }
        Some(n)
    }

    /// Sends staged bytes; `more` when a half-close follows at once, so the
    /// FIN joins their last segment.
    pub(super) fn drain(&mut self, dst: RawFd, more: bool) -> io::Result<usize> {
        match self {
            // Never `more`: only a buffer reads ahead.
            Stage::Pipe(p) => p.drain(dst),
            Stage::Ring { bid, start, end } => {
                let n = rt::with_bufs(|bufs| {
                    let bufs = bufs.expect("a ring buffer comes from the worker's ring");
                    // SAFETY: a completion handed `bid` to this stage, which
                    // gives it back only when the loan ends.
                    let bytes = unsafe { bufs.bytes(*bid, *end as usize) };
                    send(dst, &bytes[*start as usize..], more)
                })?;
                *start += n as u32; // at most the buffer's length
                Ok(n)
            }
            Stage::Buffer { buf, start, end } => {
                let n = send(dst, &buf[*start..*end], more)?;
                *start += n;
                Ok(n)
            }
        }
    }
}

/// One non-blocking `send` of `chunk` to `dst`; `more` when a half-close
/// follows at once.
fn send(dst: RawFd, chunk: &[u8], more: bool) -> io::Result<usize> {
    let flags = libc::MSG_NOSIGNAL | if more { libc::MSG_MORE } else { 0 };
    // SAFETY: send from a live slice; MSG_NOSIGNAL turns SIGPIPE into EPIPE.
    check(unsafe { libc::send(dst, chunk.as_ptr().cast(), chunk.len(), flags) })
}

/// One non-blocking `recv` from `src` into `buf`.
pub(super) fn recv_into(src: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: recv into a live, writable slice of `buf.len()` bytes.
    check(unsafe { libc::recv(src, buf.as_mut_ptr().cast(), buf.len(), 0) })
}

fn check(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// A stage on loan: a pipe goes back to the pool when the loan ends.
pub(super) struct Loan<'a> {
    pub(super) pool: &'a PipePool,
    pub(super) stage: Option<Stage>,
}

impl Loan<'_> {
    /// An empty stage for the next fill: a pipe for `bulk` when one can be
    /// had, else a buffer. Called only when the stage holds no bytes.
    pub(super) fn get(&mut self, bulk: bool) -> &mut Stage {
        let swap = match &self.stage {
            Some(Stage::Ring { .. }) => true,
            Some(Stage::Pipe(_)) => !bulk,
            Some(Stage::Buffer { .. }) => bulk && self.pool.can_lend(),
            None => false,
        };
        if swap {
            self.end();
        }
        let pool = self.pool;
        self.stage
            .get_or_insert_with(|| match bulk.then(|| pool.take()).flatten() {
                Some(p) => Stage::Pipe(p),
                None => Stage::Buffer {
                    buf: pool.take_buffer(),
                    start: 0,
                    end: 0,
                },
            })
    }

    pub(super) fn end(&mut self) {
        match self.stage.take() {
            Some(Stage::Pipe(p)) => self.pool.give_back(p),
            Some(Stage::Ring { bid, .. }) => rt::give_back(bid),
            Some(Stage::Buffer { buf, .. }) => self.pool.give_back_buffer(buf),
            None => {}
        }
    }
}

impl Drop for Loan<'_> {
    fn drop(&mut self) {
        self.end();
    }
}
