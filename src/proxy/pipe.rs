//! Pipes for splice(2) and buffers for recv/send, pooled per worker and lent
//! only while bytes flow, so thousands of idle connections hold neither.
//! Small exchanges copy through a buffer; a direction that fills one moves on
//! to a pipe. When no pipe can be had (the per-worker cap, EMFILE, ENFILE) the
//! caller keeps copying.

pub use crate::choices::Splice;
use std::cell::{Cell, RefCell};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The size Linux gives a new pipe (16 pages against `fs.pipe-user-pages-soft`),
/// which tests use; ringlb asks for `[runtime] pipe_size` (default "256KiB").
pub const LINUX_PIPE_SIZE: usize = 64 * 1024;

#[derive(Debug)]
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
    /// Bytes spliced in and not yet spliced out.
    pub pending: usize,
    pub capacity: usize,
}

impl Pipe {
    /// A non-blocking pipe asked to hold `size` bytes. When the kernel will
    /// not grow it (over the user's pipe pages, say), it keeps the size it
    /// has and `capacity` says so.
    fn new(size: usize) -> io::Result<Pipe> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both are fresh descriptors owned by nobody else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let size = libc::c_int::try_from(size).unwrap_or(libc::c_int::MAX);
        // SAFETY: fcntl on a descriptor we own; it returns the new size, or
        // fails and leaves the pipe as it was.
        let mut got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
        if got <= 0 {
            // SAFETY: as above; reads the size the pipe has.
            got = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_GETPIPE_SZ) };
        }
        Ok(Pipe {
            read,
            write,
            pending: 0,
            capacity: if got > 0 { got as usize } else { 4096 },
        })
    }

    /// Moves up to the pipe's free room from socket `src` into the pipe.
    /// `Ok(0)` is end of stream.
    pub fn fill(&mut self, src: RawFd) -> io::Result<usize> {
        debug_assert_eq!(
            self.pending, 0,
            "fill only an empty pipe: EAGAIN must mean the socket is dry"
        );
        let n = match splice(src, self.write.as_raw_fd(), self.capacity) {
            // splice(2) never reads past a TCP urgent mark (tcp_read_sock
            // stops there), so at the mark it says EAGAIN however much data
            // waits: read past it with recv (SO_OOBINLINE keeps the urgent
            // byte in the stream) and write that into the pipe.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && at_urgent_mark(src) => {
                self.fill_past_mark(src)?
            }
            other => other?,
        };
        self.pending += n;
        Ok(n)
    }

    /// One recv through a small buffer, into the (empty) pipe: a pipe of at
    /// least 4 KiB takes up to 4 KiB in one non-blocking write.
    fn fill_past_mark(&mut self, src: RawFd) -> io::Result<usize> {
        let mut buf = [0u8; 4096];
        let want = buf.len().min(self.capacity);
        // SAFETY: recv into our own stack buffer of `want` bytes.
        let n = unsafe { libc::recv(src, buf.as_mut_ptr().cast(), want, 0) };
        if n <= 0 {
            return if n == 0 {
                Ok(0)
            } else {
                Err(io::Error::last_os_error())
            };
        }
        let n = n as usize;
        // SAFETY: write from our own buffer into the pipe we own.
        let w = unsafe { libc::write(self.write.as_raw_fd(), buf.as_ptr().cast(), n) };
        if w < 0 || w as usize != n {
            return Err(io::Error::other(
                "could not stage bytes read past a TCP urgent mark",
            ));
        }
        Ok(n)
    }

    /// Moves pending bytes from the pipe into socket `dst`.
    pub fn drain(&mut self, dst: RawFd) -> io::Result<usize> {
        let n = splice(self.read.as_raw_fd(), dst, self.pending)?;
        self.pending -= n;
        Ok(n)
    }
}

/// `SIOCATMARK` from Linux's `asm-generic/sockios.h` (the libc crate lacks it).
const SIOCATMARK: libc::c_ulong = 0x8905;

/// Whether the next byte to read from socket `fd` is a TCP urgent byte.
fn at_urgent_mark(fd: RawFd) -> bool {
    let mut at: libc::c_int = 0;
    // SAFETY: SIOCATMARK writes one int into `at`, which we own.
    let rc = unsafe { libc::ioctl(fd, SIOCATMARK, &mut at) };
    rc == 0 && at != 0
}

fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    let flags = libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE;
    // SAFETY: plain syscall on descriptors the caller keeps open; null offsets
    // mean "current position", as required for pipes and sockets.
    let n = unsafe {
        libc::splice(
            from,
            std::ptr::null_mut(),
            to,
            std::ptr::null_mut(),
            len,
            flags,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Bytes in one copy buffer; a read that fills one marks the direction as bulk.
pub const COPY_BUF: usize = 16 * 1024;

/// A worker's pipes and copy buffers. Not shared between threads.
#[derive(Debug)]
pub struct PipePool {
    mode: Splice,
    free: RefCell<Vec<Pipe>>,
    buffers: RefCell<Vec<Box<[u8]>>>,
    lent: Cell<usize>,
    max_lent: usize,
    max_free: usize,
    /// Bytes each new pipe is asked to hold.
    size: usize,
    /// Set after the first failure to make a pipe, so it is logged once.
    warned: Cell<bool>,
    /// Set by every `take`, cleared by `trim`.
    used: Cell<bool>,
}

impl PipePool {
    /// A pool lending up to `max_lent` pipes (none with `Splice::Never`) and
    /// keeping up to `max_free` clean pipes and buffers for reuse.
    pub fn new(mode: Splice, max_lent: usize, max_free: usize, size: usize) -> Self {
        let max_lent = if mode == Splice::Never { 0 } else { max_lent };
        PipePool {
            mode,
            free: RefCell::new(Vec::new()),
            buffers: RefCell::new(Vec::new()),
            lent: Cell::new(0),
            max_lent,
            max_free,
            size,
            warned: Cell::new(false),
            used: Cell::new(false),
        }
    }

    /// Closes the idle pipes and frees the idle buffers if nothing was taken
    /// since the last call, so a quiet worker holds neither. Called
    /// periodically. Returns how many pipes were closed.
    pub fn trim(&self) -> usize {
        if self.used.replace(false) {
            return 0;
        }
        self.buffers.borrow_mut().clear();
        let mut free = self.free.borrow_mut();
        let n = free.len();
        free.clear();
        n
    }

    /// A clean pipe, or `None` when the caller must copy instead.
    pub fn take(&self) -> Option<Pipe> {
        if self.lent.get() >= self.max_lent {
            return None;
        }
        self.used.set(true);
        let pipe = match self.free.borrow_mut().pop() {
            Some(p) => p,
            None => match Pipe::new(self.size) {
                Ok(p) => p,
                Err(e) => {
                    if !self.warned.replace(true) {
                        tracing::warn!(error = %e, "cannot create a pipe; copying through buffers instead");
                    }
                    return None;
                }
            },
        };
        self.lent.set(self.lent.get() + 1);
        Some(pipe)
    }

    /// Returns a pipe. One still holding bytes (its connection died mid-way)
    /// is closed, never reused.
    pub fn give_back(&self, pipe: Pipe) {
        self.lent.set(self.lent.get() - 1);
        let mut free = self.free.borrow_mut();
        if pipe.pending == 0 && free.len() < self.max_free {
            free.push(pipe);
        }
    }

    /// A copy buffer of [`COPY_BUF`] bytes, reused when one is free.
    pub fn take_buffer(&self) -> Box<[u8]> {
        self.used.set(true);
        self.buffers
            .borrow_mut()
            .pop()
            .unwrap_or_else(|| vec![0; COPY_BUF].into_boxed_slice())
    }

    pub fn give_back_buffer(&self, buf: Box<[u8]>) {
        let mut free = self.buffers.borrow_mut();
        if free.len() < self.max_free {
            free.push(buf);
        }
    }

    /// Whether a direction whose last read took `read` bytes (`None`: none
    /// yet) should read next into a pipe.
    pub fn wants_pipe(&self, read: Option<usize>) -> bool {
        match self.mode {
            Splice::Auto => read.is_some_and(|n| n >= COPY_BUF),
            Splice::Always => true,
            Splice::Never => false,
        }
    }

    /// Whether `take` may lend another pipe (it can still fail to make one).
    pub fn can_lend(&self) -> bool {
        self.lent.get() < self.max_lent
    }

    pub fn lent(&self) -> usize {
        self.lent.get()
    }

    pub fn idle(&self) -> usize {
        self.free.borrow().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn pool_lends_up_to_its_cap_and_reuses_clean_pipes() {
        let pool = PipePool::new(Splice::Auto, 2, 1, LINUX_PIPE_SIZE);
        let a = pool.take().unwrap();
        let b = pool.take().unwrap();
        assert!(pool.take().is_none(), "cap of 2 lent pipes");
        pool.give_back(a);
        pool.give_back(b);
        assert_eq!((pool.lent(), pool.idle()), (0, 1), "keeps at most max_free");
        let mut dirty = pool.take().unwrap();
        dirty.pending = 10;
        pool.give_back(dirty);
        assert_eq!(pool.idle(), 0, "a pipe with bytes left is closed");
    }

    #[test]
    fn trim_closes_idle_pipes_only_after_a_quiet_period() {
        let pool = PipePool::new(Splice::Auto, 4, 4, LINUX_PIPE_SIZE);
        let p = pool.take().unwrap();
        pool.give_back(p);
        assert_eq!(pool.trim(), 0, "used since the last trim: kept");
        assert_eq!(pool.idle(), 1);
        assert_eq!(pool.trim(), 1, "quiet since the last trim: closed");
        assert_eq!(pool.idle(), 0);
    }

    #[test]
    fn pipes_grow_to_the_size_asked_for() {
        let pipe = Pipe::new(1024 * 1024).unwrap();
        assert_eq!(pipe.capacity, 1024 * 1024);
        let pipe = Pipe::new(LINUX_PIPE_SIZE).unwrap();
        assert_eq!(pipe.capacity, LINUX_PIPE_SIZE);
    }

    #[test]
    fn splices_socket_to_socket() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let l2 = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (mut d, _) = l2.accept().unwrap();
        a.write_all(b"hello splice").unwrap();
        let mut pipe = Pipe::new(LINUX_PIPE_SIZE).unwrap();
        assert!(pipe.capacity >= 4096);
        let mut got = 0;
        while got < 12 {
            got += pipe.fill(b.as_raw_fd()).unwrap_or(0);
        }
        assert_eq!(pipe.drain(c.as_raw_fd()).unwrap(), 12);
        assert_eq!(pipe.pending, 0);
        let mut buf = [0u8; 12];
        d.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello splice");
    }
}
