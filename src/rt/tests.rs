use std::cell::Cell;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::time::{Duration, Instant};

use super::*;

/// Linux 6.1 and later take `SINGLE_ISSUER | DEFER_TASKRUN`; a set-up that
/// quietly fell back would lose the batching the runtime exists for.
#[test]
fn the_ring_defers_task_work_where_the_kernel_can() {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut parts = release.trim().split(['.', '-']);
    let major: u32 = parts.next().unwrap().parse().unwrap();
    let minor: u32 = parts.next().unwrap().parse().unwrap();
    let mode = Runtime::new().unwrap().mode();
    println!("Linux {major}.{minor}: ring set up as {mode:?}");
    if (major, minor) >= (6, 1) {
        assert_eq!(mode, RingMode::DeferTaskrun);
    }
}

#[test]
fn spawned_tasks_run_and_hand_back_their_output() {
    let rt = Runtime::new().unwrap();
    let out = rt.block_on(async {
        let a = spawn(async { 40 });
        let b = spawn(async {
            time::sleep(Duration::from_millis(5)).await;
            2
        });
        a.await.unwrap() + b.await.unwrap()
    });
    assert_eq!(out, 42);
}

/// Waits, on the runtime, until `cond` holds; fails the test after 5 s.
async fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        time::sleep(Duration::from_millis(1)).await;
    }
}

/// Marks a flag when dropped.
struct DropFlag(Rc<Cell<bool>>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.set(true);
    }
}

#[test]
fn an_aborted_task_is_dropped_and_never_finishes() {
    let rt = Runtime::new().unwrap();
    let dropped = Rc::new(Cell::new(false));
    let finished = Rc::new(Cell::new(false));
    let (d, f, seen) = (dropped.clone(), finished.clone(), dropped.clone());
    rt.block_on(async move {
        let task = spawn_detached(async move {
            let _flag = DropFlag(d);
            time::sleep(Duration::from_secs(60)).await;
            f.set(true);
        });
        // Checked between this loop's own sleeps, so the one timer is the task's.
        wait_until("the task has armed its timer", || {
            with_inner(|inner| inner.timers.borrow().count() == 1)
        })
        .await;
        task.abort();
        wait_until("the aborted task is dropped", || seen.get()).await;
    });
    assert!(dropped.get(), "the aborted task's future was not dropped");
    assert!(!finished.get());
    // Its 60 s timer went with it.
    assert!(rt.inner.timers.borrow().next_deadline().is_none());
}

/// Every connection is one task: besides its boxed future, a header in an
/// `Arc` (24 bytes, 40 allocated) and a slot in the task slab.
#[test]
fn a_task_costs_its_future_plus_a_24_byte_header_and_a_40_byte_slot() {
    assert_eq!(std::mem::size_of::<Header>(), 24);
    assert_eq!(std::mem::size_of::<TaskEntry>(), 40);
}

/// Every connection holds one timer (its idle timeout): keep it small.
#[test]
fn a_timer_is_40_bytes() {
    assert_eq!(std::mem::size_of::<time::Sleep>(), 40);
}

#[test]
fn timers_fire_in_deadline_order_never_early_and_reset_moves_them() {
    let rt = Runtime::new().unwrap();
    let order = Rc::new(RefCell::new(Vec::new()));
    let start = Instant::now();
    rt.block_on({
        let order = order.clone();
        async move {
            let mut tasks = Vec::new();
            for ms in [30u64, 10, 20] {
                let order = order.clone();
                tasks.push(spawn(async move {
                    time::sleep(Duration::from_millis(ms)).await;
                    order.borrow_mut().push((ms, start.elapsed()));
                }));
            }
            let mut moved = time::sleep(Duration::from_secs(60));
            moved.reset(Instant::now() + Duration::from_millis(5));
            moved.await;
            order.borrow_mut().push((5, start.elapsed()));
            for t in tasks {
                t.await.unwrap();
            }
        }
    });
    let order = order.borrow();
    let names: Vec<u64> = order.iter().map(|(ms, _)| *ms).collect();
    assert_eq!(names, [5, 10, 20, 30]);
    for (ms, at) in order.iter() {
        assert!(
            *at >= Duration::from_millis(*ms),
            "{ms} ms timer fired at {at:?}"
        );
    }
    assert!(rt.inner.timers.borrow().next_deadline().is_none());
}

#[test]
fn a_wake_from_another_thread_ends_the_wait_in_the_ring() {
    let rt = Runtime::new().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    let sender = std::thread::spawn(move || {
        // Send only once the runtime's thread sleeps in the kernel: then
        // only the eventfd can wake it.
        let stat = format!("/proc/self/task/{tid}/stat");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&stat).unwrap();
            // The state follows the command name's closing parenthesis.
            let state = text.rsplit(')').next().unwrap().trim_start().chars().next();
            if state == Some('S') || Instant::now() > deadline {
                break;
            }
            std::thread::yield_now();
        }
        tx.send(7).unwrap();
    });
    let start = Instant::now();
    // Only the eventfd can end the wait before the 10 s timer (which keeps
    // a broken wake from hanging the test).
    let got = rt.block_on(async {
        tokio::select! {
            got = rx.recv() => got,
            () = time::sleep(Duration::from_secs(10)) => None,
        }
    });
    assert_eq!(got, Some(7));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "woken after {:?}",
        start.elapsed()
    );
    sender.join().unwrap();
}

#[test]
fn a_panicking_task_is_dropped_and_the_others_go_on() {
    let rt = Runtime::new().unwrap();
    let out = rt.block_on(async {
        let bad = spawn(async { panic!("on purpose") });
        // Runs on after the panic, and sees it as an error.
        let good = spawn(async move { (bad.await.is_err(), 1) });
        good.await.unwrap()
    });
    assert_eq!(out, (true, 1));
}

/// An accept dropped while in flight: the connection that completes it is
/// closed by the runtime, not leaked (its client reads end of stream).
#[test]
fn an_accept_dropped_in_flight_does_not_leak_its_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let rt = Runtime::new().unwrap();
    let mut client = rt.block_on(async {
        // Dropped before it completes (the kernel takes the SQE with the
        // next turn of the loop either way).
        drop(crate::rt::op::accept(listener.as_raw_fd()));
        let client = TcpStream::connect(addr).unwrap();
        wait_until("the orphaned accept completes", || rt_ops_in_flight() == 0).await;
        client
    });
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    let n =
        std::io::Read::read(&mut client, &mut buf).expect("the accepted socket was never closed");
    assert_eq!(n, 0);
}

fn rt_ops_in_flight() -> usize {
    with_inner(|inner| inner.ops.borrow().len())
}

/// Dropping the runtime with ops in flight cancels them and waits for the
/// kernel to let go: it returns at once, and its accept no longer takes
/// connections.
#[test]
fn dropping_the_runtime_with_ops_in_flight_cancels_them() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    // Accepted, so the accept below waits, and open, so the polls wait.
    let server = listener.accept().unwrap();
    let rt = Runtime::new().unwrap();
    let (client_fd, listener_fd) = (client.as_raw_fd(), listener.as_raw_fd());
    rt.block_on(async {
        for _ in 0..10 {
            spawn_detached(crate::rt::op::poll(client_fd, libc::POLLIN as u32).map_ok());
        }
        spawn_detached(async move {
            crate::rt::op::accept(listener_fd).await.ok();
        });
        wait_until("all 11 ops are submitted", || rt_ops_in_flight() == 11).await;
    });
    let start = Instant::now();
    drop(rt);
    assert!(start.elapsed() < Duration::from_millis(500));
    let _late = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match listener.accept() {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1))
            }
            Err(e) => panic!("the cancelled accept took the connection: {e}"),
        }
    }
    drop(server);
}

trait MapOk {
    async fn map_ok(self);
}

impl<F: Future<Output = io::Result<u32>>> MapOk for F {
    async fn map_ok(self) {
        self.await.ok();
    }
}

/// A connected loopback pair: (client, server).
fn connected() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let (server, _) = listener.accept().unwrap();
    (client, server)
}

/// The next completion of `recv`, waiting for it.
async fn next(recv: &mut Multishot) -> Option<(i32, u32)> {
    std::future::poll_fn(|cx| recv.poll_next(cx)).await
}

fn lent() -> usize {
    with_bufs(|b| b.expect("a runtime with buffers").lent())
}

/// A multishot receive stays armed across sends, puts each arrival in a
/// provided buffer whose bytes are the ones sent, and ends with end of
/// stream; every buffer given back leaves none lent.
#[test]
fn a_ring_receive_stays_armed_and_fills_provided_buffers() {
    let (mut client, server) = connected();
    let rt = Runtime::with_buffers(4, 4096).unwrap();
    rt.block_on(async {
        let mut recv = crate::rt::op::recv_multi(server.as_raw_fd());
        for word in [&b"first"[..], b"second", b"third"] {
            std::io::Write::write_all(&mut client, word).unwrap();
            let (n, flags) = next(&mut recv).await.expect("a completion");
            assert!(io_uring::cqueue::more(flags), "the receive stays armed");
            let bid = io_uring::cqueue::buffer_select(flags).expect("a provided buffer");
            // SAFETY: the completion handed `bid` to us; given back below.
            let got = with_bufs(|b| unsafe { b.unwrap().bytes(bid, n as usize) }.to_vec());
            assert_eq!(got, word);
            assert_eq!(lent(), 1);
            give_back(bid);
            assert_eq!(lent(), 0);
        }
        client.shutdown(std::net::Shutdown::Write).unwrap();
        let (n, flags) = next(&mut recv).await.expect("the end of stream");
        assert_eq!(n, 0);
        assert!(!io_uring::cqueue::more(flags), "end of stream ends it");
        assert_eq!(next(&mut recv).await, None);
    });
}

/// With every buffer lent, the receive ends with `ENOBUFS` and is counted as
/// starved; dropping a receive gives back what it still held, and the
/// runtime keeps no slot for it once the kernel has let go.
#[test]
fn a_ring_receive_with_no_buffer_free_ends_starved_and_a_dropped_one_gives_back() {
    let (mut client, server) = connected();
    let rt = Runtime::with_buffers(1, 4096).unwrap();
    rt.block_on(async {
        let mut recv = crate::rt::op::recv_multi(server.as_raw_fd());
        std::io::Write::write_all(&mut client, b"one").unwrap();
        let (n, flags) = next(&mut recv).await.unwrap();
        assert_eq!(n, 3);
        let bid = io_uring::cqueue::buffer_select(flags).unwrap();
        // The only buffer is out: the next bytes find none.
        std::io::Write::write_all(&mut client, b"two").unwrap();
        let (n, flags) = next(&mut recv).await.unwrap();
        assert_eq!(n, -libc::ENOBUFS);
        assert!(!io_uring::cqueue::more(flags));
        assert_eq!(with_bufs(|b| b.unwrap().starved()), 1);
        give_back(bid);
        // A fresh receive takes the waiting bytes; dropped with them
        // queued, it gives the buffer back and cancels itself.
        let again = crate::rt::op::recv_multi(server.as_raw_fd());
        wait_until("the bytes land in the buffer", || {
            again.peek().is_some() || lent() == 1
        })
        .await;
        assert_eq!(lent(), 1);
        drop(again);
        assert_eq!(lent(), 0, "the dropped receive gave its buffer back");
        drop(recv);
        wait_until("the runtime forgets both receives", || {
            with_inner(|inner| inner.multis.borrow().is_empty() && inner.ops.borrow().is_empty())
        })
        .await;
    });
}

/// Kernel work the runtime may not free under: a receive still armed when
/// the runtime is dropped is cancelled and reaped first.
#[test]
fn dropping_the_runtime_with_a_receive_armed_reaps_it() {
    let (client, server) = connected();
    let rt = Runtime::with_buffers(2, 4096).unwrap();
    let fd = server.as_raw_fd();
    rt.block_on(async move {
        spawn_detached(async move {
            let mut recv = crate::rt::op::recv_multi(fd);
            next(&mut recv).await;
        });
        wait_until("the receive is armed", || {
            with_inner(|inner| inner.multis.borrow().len() == 1)
        })
        .await;
    });
    let start = Instant::now();
    drop(rt);
    assert!(start.elapsed() < Duration::from_millis(500));
    drop((client, server));
}

#[test]
fn a_buffer_ring_takes_only_a_power_of_two_of_buffers() {
    let e = Runtime::with_buffers(3, 4096)
        .err()
        .expect("3 buffers refused");
    assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
}
