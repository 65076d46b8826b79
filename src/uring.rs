//! The io_uring operations ringlb submits itself: accept, connect, poll and cancel.
//!
//! tokio-uring 0.5 does not cancel an operation whose future is dropped: the
//! kernel op keeps running and its result is thrown away (an accepted fd would
//! leak, a connect would hold its socket for minutes). So nothing here is ever
//! dropped while in flight: callers that give up call [`cancel_fd`] and then
//! await the operation to completion. As a second line of defence each op owns
//! everything its SQE points at, so even a dropped op cannot touch freed memory.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{cqueue, opcode, types};
use socket2::{SockAddr, SockAddrStorage};
use tokio_uring::{InFlightOneshot, OneshotOutputTransform, UnsubmittedOneshot};

fn cqe_result(cqe: &cqueue::Entry) -> io::Result<u32> {
    let res = cqe.result();
    if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(res as u32)
    }
}

/// Storage the kernel writes the peer address into. Boxed so it does not move
/// while the op is in flight.
pub struct AcceptData {
    storage: SockAddrStorage,
    len: libc::socklen_t,
}

pub struct AcceptTransform;

impl OneshotOutputTransform for AcceptTransform {
    type Output = io::Result<(OwnedFd, Option<SocketAddr>)>;
    type StoredData = Box<AcceptData>;

    fn transform_oneshot_output(self, data: Self::StoredData, cqe: cqueue::Entry) -> Self::Output {
        let fd = cqe_result(&cqe)? as RawFd;
        // SAFETY: a non-negative accept result is a new descriptor the kernel
        // gave to us alone; wrapping it transfers ownership.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let AcceptData { storage, len } = *data;
        // SAFETY: the kernel wrote a valid socket address of `len` bytes (at
        // most the storage's size) into `storage`.
        let addr = unsafe { SockAddr::new(storage, len) };
        Ok((fd, addr.as_socket()))
    }
}

pub type Accept = InFlightOneshot<Box<AcceptData>, AcceptTransform>;

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
    UnsubmittedOneshot::new(data, AcceptTransform, sqe).submit()
}

/// The socket and the address a connect SQE points at.
pub struct ConnectData {
    socket: OwnedFd,
    addr: SockAddr,
}

pub struct ConnectTransform;

impl OneshotOutputTransform for ConnectTransform {
    type Output = (OwnedFd, io::Result<()>);
    type StoredData = Box<ConnectData>;

    fn transform_oneshot_output(self, data: Self::StoredData, cqe: cqueue::Entry) -> Self::Output {
        (data.socket, cqe_result(&cqe).map(drop))
    }
}

pub type Connect = InFlightOneshot<Box<ConnectData>, ConnectTransform>;

/// Submits a connect of `socket` to `addr`. The op owns the socket until it
/// completes and hands it back with the result.
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
    UnsubmittedOneshot::new(data, ConnectTransform, sqe).submit()
}

/// For ops that own nothing and answer a count or flags: the CQE's result.
pub struct ResultTransform;

impl OneshotOutputTransform for ResultTransform {
    type Output = io::Result<u32>;
    type StoredData = ();

    fn transform_oneshot_output(self, _: (), cqe: cqueue::Entry) -> Self::Output {
        cqe_result(&cqe)
    }
}

/// Cancels every op in this thread's ring that targets `fd`, and waits until
/// the kernel has taken the request. The cancelled ops then complete (usually
/// with `ECANCELED`); the caller still awaits them. Returns how many matched;
/// `ENOENT` (nothing left to cancel: it had already completed) counts as 0.
pub async fn cancel_fd(fd: RawFd) -> io::Result<u32> {
    let sqe = opcode::AsyncCancel2::new(types::CancelBuilder::fd(types::Fd(fd)).all()).build();
    match UnsubmittedOneshot::new((), ResultTransform, sqe)
        .submit()
        .await
    {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(0),
        other => other,
    }
}

pub type PollOp = InFlightOneshot<(), ResultTransform>;

/// Submits a one-shot poll of `fd` for `events` (`POLLIN`, `POLLOUT`);
/// completes with the events that are ready. Readiness is checked when the
/// kernel takes the SQE, so bytes already waiting complete it at once: no
/// edge is ever missed. The kernel holds a reference to the socket while
/// the poll is armed: whoever drops one in flight must make it complete
/// (`shutdown(2)` does) or the socket outlives its close.
pub fn poll(fd: RawFd, events: u32) -> PollOp {
    let sqe = opcode::PollAdd::new(types::Fd(fd), events).build();
    UnsubmittedOneshot::new((), ResultTransform, sqe).submit()
}
