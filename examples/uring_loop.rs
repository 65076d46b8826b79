//! A measuring prototype, not ringlb: the smallest TCP proxy on its own
//! io_uring completion loop (the `io-uring` crate, no tokio): the floor a
//! user-space proxy's own code could reach, which `bench/loop_probe.py`
//! measures ringlb against.
//!
//! One thread, one ring set up with `SINGLE_ISSUER | DEFER_TASKRUN`, a
//! multishot accept, and every socket operation on the ring: recv and send
//! (each direction's recv arms the kernel's own poll when the socket is dry),
//! connect, shutdown and close. No task per connection, no timer, no epoll.
//! It proxies both ways and passes half-close on, but has no timeouts,
//! retries, health, limits or metrics: it must never face a user.
//!
//!     cargo build --release --example uring_loop
//!     taskset -c 0 target/release/examples/uring_loop 127.0.0.1:18600 127.0.0.1:18500
//!
//! `bench/loop_probe.py` measures it beside nginx and ringlb.
//!
//! With `UL_SYSCALLS=1` it receives and sends as ringlb does: a one-shot
//! poll on the ring, then `recv(2)`, and `send(2)` at once (the ring's send
//! only when the socket is full). `bench/loop_probe.py --syscalls` runs both
//! variants side by side, which prices putting receive and send on the ring.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};

use io_uring::{IoUring, cqueue, opcode, squeue, types};
use socket2::{Domain, SockAddr, Socket, Type};

const BUF: usize = 16 * 1024;
const ACCEPT: u64 = u64::MAX;

/// The operation a completion belongs to, in the low byte of its user_data.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Op {
    Connect = 1,
    /// Recv from the source of direction 0 (client to target) or 1.
    Recv0 = 2,
    Recv1 = 3,
    Send0 = 4,
    Send1 = 5,
    Shutdown = 6,
    Close = 7,
}

impl Op {
    fn from(v: u8) -> Op {
        match v {
            1 => Op::Connect,
            2 => Op::Recv0,
            3 => Op::Recv1,
            4 => Op::Send0,
            5 => Op::Send1,
            6 => Op::Shutdown,
            _ => Op::Close,
        }
    }
}

/// One direction: bytes from `fds[src]` to `fds[dst]` through `buf`.
struct Dir {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
    /// Source ended (end of stream read).
    ended: bool,
    /// The end was passed on, or both ended and the close will pass it.
    passed: bool,
}

struct Conn {
    /// client, target
    fds: [RawFd; 2],
    connected: bool,
    dirs: [Dir; 2],
    /// Ring operations in flight; the slot is freed when this falls to 0
    /// after closing.
    inflight: u32,
    closing: bool,
}

struct Proxy {
    ring: IoUring,
    /// Receive and send by system call, as ringlb does (`UL_SYSCALLS=1`).
    syscalls: bool,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    target: SockAddr,
    listener: RawFd,
}

fn ud(conn: usize, op: Op) -> u64 {
    ((conn as u64) << 8) | op as u64
}

impl Proxy {
    fn push(&mut self, sqe: squeue::Entry) {
        // SAFETY: every buffer and address an SQE points at lives in a Conn
        // (boxed) or in self.target, both kept until the op completes.
        while unsafe { self.ring.submission().push(&sqe) }.is_err() {
            self.ring.submit().expect("submit");
        }
    }

    fn accept(&mut self) {
        let sqe = opcode::AcceptMulti::new(types::Fd(self.listener))
            .build()
            .user_data(ACCEPT);
        self.push(sqe);
    }

    fn start(&mut self, client: RawFd) {
        let target = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        target.set_tcp_nodelay(true).expect("nodelay");
        let tfd = target.as_raw_fd();
        std::mem::forget(target); // closed by the ring
        let dir = || Dir {
            buf: vec![0u8; BUF].into_boxed_slice(),
            start: 0,
            end: 0,
            ended: false,
            passed: false,
        };
        let conn = Conn {
            fds: [client, tfd],
            connected: false,
            dirs: [dir(), dir()],
            inflight: 1, // the connect below
            closing: false,
        };
        let id = match self.free.pop() {
            Some(id) => {
                self.conns[id] = Some(conn);
                id
            }
            None => {
                self.conns.push(Some(conn));
                self.conns.len() - 1
            }
        };
        let sqe = opcode::Connect::new(
            types::Fd(tfd),
            self.target.as_ptr().cast(),
            self.target.len(),
        )
        .build()
        .user_data(ud(id, Op::Connect));
        self.push(sqe);
        self.recv(id, 0);
    }

    fn conn(&mut self, id: usize) -> &mut Conn {
        self.conns[id].as_mut().expect("live conn")
    }

    /// Direction `d` reads from fds[d] and writes to fds[1 - d].
    fn recv(&mut self, id: usize, d: usize) {
        let c = self.conn(id);
        let fd = c.fds[d];
        let buf = &mut c.dirs[d].buf;
        let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
        c.inflight += 1;
        let op = if d == 0 { Op::Recv0 } else { Op::Recv1 };
        let sqe = if self.syscalls {
            opcode::PollAdd::new(types::Fd(fd), libc::POLLIN as u32).build()
        } else {
            opcode::Recv::new(types::Fd(fd), ptr, len).build()
        };
        self.push(sqe.user_data(ud(id, op)));
    }

    /// After a poll said `fds[d]` is readable: the receive by system call,
    /// as the ring's recv would have answered it (`None`: dry, poll again).
    fn recv_now(&mut self, id: usize, d: usize) -> Option<i32> {
        let c = self.conn(id);
        let buf = &mut c.dirs[d].buf;
        // SAFETY: receives into a live buffer of its own length.
        let n = unsafe {
            libc::recv(
                c.fds[d],
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            return Some(n as i32);
        }
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        if errno == libc::EAGAIN {
            self.recv(id, d);
            return None;
        }
        Some(-errno)
    }

    fn send(&mut self, id: usize, d: usize) {
        if self.syscalls {
            let c = self.conn(id);
            let dir = &c.dirs[d];
            let chunk = &dir.buf[dir.start..dir.end];
            // SAFETY: sends from a live slice.
            let n = unsafe {
                libc::send(
                    c.fds[1 - d],
                    chunk.as_ptr().cast(),
                    chunk.len(),
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n > 0 {
                return self.sent(id, d, n as i32);
            }
            if n < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN) {
                return self.close(id);
            }
            // Full: the ring's send waits for room.
        }
        let c = self.conn(id);
        let fd = c.fds[1 - d];
        let dir = &c.dirs[d];
        let chunk = &dir.buf[dir.start..dir.end];
        let (ptr, len) = (chunk.as_ptr(), chunk.len() as u32);
        c.inflight += 1;
        let op = if d == 0 { Op::Send0 } else { Op::Send1 };
        let sqe = opcode::Send::new(types::Fd(fd), ptr, len)
            .flags(libc::MSG_NOSIGNAL)
            .build()
            .user_data(ud(id, op));
        self.push(sqe);
    }

    /// Both directions ended, or an error: close both sockets (the kernel
    /// sends each FIN, or a reset over unread bytes).
    fn close(&mut self, id: usize) {
        let c = self.conn(id);
        if c.closing {
            return;
        }
        c.closing = true;
        let fds = c.fds;
        if c.inflight > 0 {
            // Wake the ops still waiting on these sockets; close when done.
            for fd in fds {
                // SAFETY: our own sockets.
                unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            }
            return;
        }
        self.close_fds(id);
    }

    fn close_fds(&mut self, id: usize) {
        let fds = self.conn(id).fds;
        for fd in fds {
            self.conn(id).inflight += 1;
            let sqe = opcode::Close::new(types::Fd(fd))
                .build()
                .user_data(ud(id, Op::Close));
            self.push(sqe);
        }
    }

    /// Source `d` ended: pass it on as a half-close, unless the other
    /// direction has ended too (then closing both passes both).
    fn ended(&mut self, id: usize, d: usize) {
        let c = self.conn(id);
        c.dirs[d].ended = true;
        if c.dirs[1 - d].ended {
            self.close(id);
            return;
        }
        c.dirs[d].passed = true;
        let fd = c.fds[1 - d];
        c.inflight += 1;
        let sqe = opcode::Shutdown::new(types::Fd(fd), libc::SHUT_WR)
            .build()
            .user_data(ud(id, Op::Shutdown));
        self.push(sqe);
    }

    fn complete(&mut self, cqe: cqueue::Entry) {
        let data = cqe.user_data();
        let res = cqe.result();
        if data == ACCEPT {
            if res >= 0 {
                self.start(res);
            }
            if !cqueue::more(cqe.flags()) {
                self.accept();
            }
            return;
        }
        let (id, op) = ((data >> 8) as usize, Op::from(data as u8));
        let c = self.conn(id);
        c.inflight -= 1;
        if c.closing {
            if op == Op::Close {
                if c.inflight == 0 {
                    self.conns[id] = None;
                    self.free.push(id);
                }
            } else if c.inflight == 0 {
                self.close_fds(id);
            }
            return;
        }
        match op {
            Op::Connect if res < 0 => self.close(id),
            Op::Connect => {
                c.connected = true;
                let staged = c.dirs[0].end > c.dirs[0].start;
                if staged {
                    self.send(id, 0);
                } else if c.dirs[0].ended && !c.dirs[0].passed {
                    self.ended(id, 0);
                }
                self.recv(id, 1);
            }
            Op::Recv0 | Op::Recv1 => {
                let d = usize::from(op == Op::Recv1);
                let res = match res {
                    r if r >= 0 && self.syscalls => match self.recv_now(id, d) {
                        Some(r) => r,
                        None => return,
                    },
                    r => r,
                };
                let c = self.conn(id);
                match res {
                    n if n < 0 => self.close(id),
                    0 if d == 0 && !c.connected => c.dirs[0].ended = true,
                    0 => self.ended(id, d),
                    n => {
                        (c.dirs[d].start, c.dirs[d].end) = (0, n as usize);
                        if d == 1 || c.connected {
                            self.send(id, d);
                        }
                    }
                }
            }
            Op::Send0 | Op::Send1 => {
                let d = usize::from(op == Op::Send1);
                self.sent(id, d, res);
            }
            Op::Shutdown if res < 0 => self.close(id),
            Op::Shutdown | Op::Close => {}
        }
    }

    /// `res` bytes of direction `d` went out (or an error).
    fn sent(&mut self, id: usize, d: usize, res: i32) {
        if res < 0 {
            return self.close(id);
        }
        let c = self.conn(id);
        c.dirs[d].start += res as usize;
        if c.dirs[d].start < c.dirs[d].end {
            self.send(id, d);
        } else {
            self.recv(id, d);
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (listen, target): (SocketAddr, SocketAddr) = match args.as_slice() {
        [_, l, t] => (
            l.parse().expect("listen address"),
            t.parse().expect("target address"),
        ),
        _ => {
            eprintln!("usage: uring_loop LISTEN_ADDR TARGET_ADDR");
            std::process::exit(2);
        }
    };
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    socket.set_reuse_address(true).expect("reuseaddr");
    socket.set_tcp_nodelay(true).expect("nodelay");
    socket.bind(&listen.into()).expect("bind");
    socket.listen(4096).expect("listen");
    let listener: TcpListener = socket.into();
    let ring = IoUring::builder()
        .setup_single_issuer()
        .setup_defer_taskrun()
        .build(4096)
        .expect("io_uring with SINGLE_ISSUER | DEFER_TASKRUN");
    let mut p = Proxy {
        ring,
        syscalls: std::env::var_os("UL_SYSCALLS").is_some_and(|v| v == "1"),
        conns: Vec::new(),
        free: Vec::new(),
        target: target.into(),
        listener: listener.as_raw_fd(),
    };
    p.accept();
    eprintln!("uring_loop: {listen} -> {target}");
    loop {
        p.ring.submit_and_wait(1).expect("io_uring_enter");
        let cqes: Vec<cqueue::Entry> = p.ring.completion().collect();
        for cqe in cqes {
            p.complete(cqe);
        }
    }
}
