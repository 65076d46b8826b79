//! The io_uring operations the workers submit: accept, connect, poll, receive
//! and cancel.
//!
//! Each op owns what its SQE points at (boxed, so it does not move), and the
//! runtime keeps that alive until the completion arrives even if the op is
//! dropped first ([`crate::rt::Op`]). Dropping an op does not cancel the
//! kernel's work, though: a connect would hold its socket until it gives up.
//! So callers that give up call [`cancel_fd`] and then await the operation to
//! completion.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use io_uring::{opcode, types};
use socket2::{SockAddr, SockAddrStorage};

use crate::rt::{self, Multishot, Op};

fn check(result: i32) -> io::Result<u32> {
    if result < 0 {
        Err(io::Error::from_raw_os_error(-result))
    } else {
        Ok(result as u32)
    }
}

/// Storage the kernel writes the peer address into.
pub struct AcceptData {
    storage: SockAddrStorage,
    len: libc::socklen_t,
}

/// An accept in flight: the new socket and its peer's address.
pub struct Accept(Op<AcceptData>);

/// Submits one accept on `listener`; the new socket is non-blocking and close-on-exec.
pub fn accept(listener: RawFd) -> Accept {
    let mut data = Box::new(AcceptData {
        storage: SockAddrStorage::zeroed(),
        len: std::mem::size_of::<SockAddrStorage>() as libc::socklen_t,
    });
    let sqe = opcode::Accept::new(
        types::Fd(listener),
        (&raw mut data.storage).cast(),
        &mut data.len,
    )
    .flags(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC)
    .build();
    // SAFETY: the SQE points only into the boxed `data`, which the op owns.
    Accept(unsafe { Op::submit(data, sqe, true) })
}

impl Future for Accept {
    type Output = io::Result<(OwnedFd, Option<SocketAddr>)>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (data, result, _) = ready!(Pin::new(&mut self.0).poll(cx));
        let fd = check(result)? as RawFd;
        // SAFETY: a non-negative accept result is a new descriptor the kernel
        // gave to us alone; wrapping it transfers ownership.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let AcceptData { storage, len } = *data;
        // SAFETY: the kernel wrote a valid socket address of `len` bytes (at
        // most the storage's size) into `storage`.
        let addr = unsafe { SockAddr::new(storage, len) };
        Poll::Ready(Ok((fd, addr.as_socket())))
    }
}

/// The socket and the address a connect SQE points at.
pub struct ConnectData {
    socket: OwnedFd,
    addr: SockAddr,
}

/// A connect in flight; it hands the socket back with the result.
pub struct Connect(Op<ConnectData>);

/// Submits a connect of `socket` to `addr`. The op owns the socket until it
/// completes.
pub fn connect(socket: OwnedFd, addr: SocketAddr) -> Connect {
    let data = Box::new(ConnectData {
        socket,
        addr: SockAddr::from(addr),
    });
    let sqe = opcode::Connect::new(
        types::Fd(data.socket.as_raw_fd()),
        data.addr.as_ptr().cast(),
        data.addr.len(),
    )
    .build();
    // SAFETY: the SQE points only into the boxed `data` (its socket and
    // address), which the op owns.
    Connect(unsafe { Op::submit(data, sqe, false) })
}

impl Future for Connect {
    type Output = (OwnedFd, io::Result<()>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (data, result, _) = ready!(Pin::new(&mut self.0).poll(cx));
        Poll::Ready((data.socket, check(result).map(drop)))
    }
}

/// An op that owns nothing and answers a count or flags.
pub struct Plain(Op<()>);

impl Future for Plain {
    type Output = io::Result<u32>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (_, result, _) = ready!(Pin::new(&mut self.0).poll(cx));
        Poll::Ready(check(result))
    }
}

/// Cancels every op in this thread's ring that targets `fd`, and waits until
/// the kernel has taken the request. The cancelled ops then complete (usually
/// with `ECANCELED`); the caller still awaits them. Returns how many matched;
/// `ENOENT` (nothing left to cancel: it had already completed) counts as 0.
pub async fn cancel_fd(fd: RawFd) -> io::Result<u32> {
    let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
    // SAFETY: the SQE points at nothing.
    match Plain(unsafe { Op::submit(Box::new(()), sqe, false) }).await {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(0),
        other => other,
    }
}

pub type PollOp = Plain;

/// Submits a one-shot poll of `fd` for `events` (`POLLIN`, `POLLOUT`);
/// completes with the events that are ready. Readiness is checked when the
/// kernel takes the SQE, so bytes already waiting complete it at once: no
/// edge is ever missed. The kernel holds a reference to the socket while
/// the poll is armed: whoever drops one in flight must make it complete
/// (`shutdown(2)` does) or the socket outlives its close.
pub fn poll(fd: RawFd, events: u32) -> PollOp {
    let sqe = opcode::PollAdd::new(types::Fd(fd), events).build();
    // SAFETY: the SQE points at nothing.
    Plain(unsafe { Op::submit(Box::new(()), sqe, false) })
}

/// Arms a multishot receive on `fd` into this thread's provided buffers
/// ([`rt::BufRing`]): it stays armed, and each time bytes arrive it
/// completes with them in a buffer it selected, until end of stream (a
/// result of 0), an error, `ENOBUFS` (no buffer free), or a cancel. The
/// kernel keeps a reference to the socket while it is armed; dropping the
/// [`Multishot`] cancels it.
pub fn recv_multi(fd: RawFd) -> Multishot {
    let sqe = opcode::RecvMulti::new(types::Fd(fd), rt::BUFFER_GROUP).build();
    // SAFETY: the SQE points at nothing; the buffers are the runtime's.
    unsafe { Multishot::submit(sqe) }
}
