//! `IORING_OP_ACCEPT`: one accepted connection and its peer's address.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use io_uring::{opcode, types};
use socket2::{SockAddr, SockAddrStorage};

use super::{Op, check};

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
