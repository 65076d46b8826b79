use super::direction::{Direction, SHORT_READS_OFF_PIPE};
use super::*;
use crate::rt::op;
use io_uring::cqueue;
use std::net::Shutdown;
use std::sync::atomic::AtomicU64;

/// Every idle connection holds one of these, inside its session's task
/// (whose size `worker::session`'s test holds): keep it from growing back.
/// Nested futures once made it 1,752 bytes, and idle memory 3 KB. The
/// client's first read, which the session holds while it connects, is 32.
/// The ring receive each direction may hold (8 bytes each) made it 328.
#[test]
fn proxy_future_stays_small() {
    let rt = crate::rt::Runtime::new().unwrap();
    rt.block_on(async {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        let pool = PipePool::new(pipe::Splice::Auto, 1, 1, pipe::LINUX_PIPE_SIZE);
        let counters = TargetSlot::default();
        a.set_nonblocking(true).unwrap();
        let a = OwnedFd::from(a);
        let first = FirstRead::new(&pool, &a);
        assert_eq!(std::mem::size_of_val(&first), 32, "FirstRead grew");
        let fut = run(
            &pool,
            first,
            a,
            b.into(),
            Duration::from_secs(1),
            &counters,
            None,
        );
        let size = std::mem::size_of_val(&fut);
        println!("proxy future: {size} bytes");
        assert!(size <= 328, "proxy future is {size} bytes");
    });
}

/// A connected pair of blocking loopback sockets.
fn pair() -> (std::net::TcpStream, std::net::TcpStream) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    let (b, _) = l.accept().unwrap();
    (a, b)
}

/// Proxies `upload` bytes from a client to a target (which sends
/// nothing back) under `splice = "auto"`; returns the bytes the target
/// got and how many clean pipes the pool holds afterwards (a pipe is
/// returned clean once its direction's source runs dry).
fn auto_proxy(upload: usize, ring_buffers: u16) -> (usize, usize) {
    use std::io::{Read, Write};
    let (mut client, proxy_client, proxy_target, mut target) = sockets();
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        target.read_to_end(&mut got).unwrap();
        got.len()
    });
    let writer = std::thread::spawn(move || {
        client.write_all(&vec![7u8; upload]).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        // Hold the client open until the proxy has passed the end on.
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
    });
    let pool = PipePool::new(pipe::Splice::Auto, 4, 4, pipe::LINUX_PIPE_SIZE);
    let (moved, _) = proxy(&pool, proxy_client, proxy_target, ring_buffers, false);
    assert_eq!(moved.client_to_target, upload as u64);
    writer.join().unwrap();
    (reader.join().unwrap(), pool.idle())
}

/// A client and a target, each connected to the proxy's own
/// non-blocking end: (client, proxy's client side, proxy's target side, target).
fn sockets() -> (
    std::net::TcpStream,
    std::net::TcpStream,
    std::net::TcpStream,
    std::net::TcpStream,
) {
    let (client, proxy_client) = pair();
    let (proxy_target, target) = pair();
    for s in [&proxy_client, &proxy_target] {
        s.set_nonblocking(true).unwrap();
    }
    (client, proxy_client, proxy_target, target)
}

/// What a worker's ring of provided buffers did during a test.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct RingUse {
    handed_out: u64,
    starved: u64,
    lent_after: usize,
}

/// Proxies between the two sockets until both directions end, on a runtime
/// with `ring_buffers` provided buffers (0: receives by poll and recv(2)).
/// With `hold_one`, a receive of the test's own takes one buffer first and
/// holds it until the proxy is done.
fn proxy(
    pool: &PipePool,
    client: std::net::TcpStream,
    target: std::net::TcpStream,
    ring_buffers: u16,
    hold_one: bool,
) -> (Transferred, RingUse) {
    let (ended, ring) = proxy_ends(pool, client, target, ring_buffers, hold_one);
    (ended.unwrap(), ring)
}

/// As [`proxy`], however the session ends.
fn proxy_ends(
    pool: &PipePool,
    client: std::net::TcpStream,
    target: std::net::TcpStream,
    ring_buffers: u16,
    hold_one: bool,
) -> (Result<Transferred, ProxyError>, RingUse) {
    let rt = crate::rt::Runtime::with_buffers(ring_buffers, pipe::COPY_BUF as u32).unwrap();
    rt.block_on(async {
        let hog = hold_one.then(pair);
        let mut held = None;
        if let Some((a, b)) = &hog {
            std::io::Write::write_all(&mut &*a, b"x").unwrap();
            let mut recv = op::recv_multi(b.as_raw_fd());
            let (n, flags) = std::future::poll_fn(|cx| recv.poll_next(cx)).await.unwrap();
            assert_eq!(n, 1, "the test's receive took a buffer");
            held = Some((recv, cqueue::buffer_select(flags).unwrap()));
        }
        let counters = TargetSlot::default();
        let idle = Duration::from_secs(10);
        let client = OwnedFd::from(client);
        let first = FirstRead::new(pool, &client);
        let moved = run(pool, first, client, target.into(), idle, &counters, None).await;
        if let Some((recv, bid)) = held {
            rt::give_back(bid);
            drop(recv);
        }
        let ring = rt::with_bufs(|b| {
            b.map(|b| RingUse {
                handed_out: b.handed_out(),
                starved: b.starved(),
                lent_after: b.lent(),
            })
        });
        assert_eq!(ring.is_some(), ring_buffers > 0);
        (moved, ring.unwrap_or_default())
    })
}

/// Segments socket `s` has received so far (`tcpi_segs_in`).
fn segments_in(s: &std::net::TcpStream) -> u32 {
    // SAFETY: tcp_info is plain data; getsockopt fills at most `len` bytes of it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&raw mut info).cast(),
            &mut len,
        );
        assert_eq!(rc, 0, "TCP_INFO: {}", io::Error::last_os_error());
        info.tcpi_segs_in
    }
}

/// A target that answers and closes: its answer and its end reach the
/// client in one segment (sent with MSG_MORE, then the half-close), not
/// as the answer and then a FIN of its own.
#[test]
fn the_end_of_stream_rides_with_the_last_bytes() {
    let ring = end_rides_with_last_bytes(0);
    assert_eq!(ring, RingUse::default());
    let ring = end_rides_with_last_bytes(16);
    assert_eq!(ring.handed_out, 1, "the answer came by ring receive");
    assert_eq!(ring.lent_after, 0);
}

fn end_rides_with_last_bytes(ring_buffers: u16) -> RingUse {
    use std::io::{Read, Write};
    let (mut client, proxy_client, proxy_target, mut target) = sockets();
    target.write_all(b"the answer").unwrap();
    target.shutdown(Shutdown::Write).unwrap();
    let before = segments_in(&client);
    let reader = std::thread::spawn(move || {
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        let segments = segments_in(&client) - before;
        client.shutdown(Shutdown::Write).unwrap();
        (got, segments)
    });
    let pool = PipePool::new(pipe::Splice::Auto, 4, 4, pipe::LINUX_PIPE_SIZE);
    let (moved, ring) = proxy(&pool, proxy_client, proxy_target, ring_buffers, false);
    assert_eq!(moved.target_to_client, 10);
    let (got, segments) = reader.join().unwrap();
    assert_eq!(got, b"the answer");
    assert_eq!(
        segments, 1,
        "the answer and the FIN came in {segments} segments (ring buffers: {ring_buffers})"
    );
    drop(target);
    ring
}

#[test]
fn auto_copies_small_exchanges_and_splices_bulk() {
    for ring_buffers in [0, 16] {
        let (got, pipes) = auto_proxy(100, ring_buffers);
        assert_eq!(got, 100);
        assert_eq!(pipes, 0, "100 bytes fit one buffer: no pipe was lent");
        let (got, pipes) = auto_proxy(8 << 20, ring_buffers);
        assert_eq!(got, 8 << 20);
        assert!(
            pipes >= 1,
            "8 MiB fill buffers: the direction moved to a pipe (ring buffers: {ring_buffers})"
        );
    }
}

/// A ring of one buffer that the test holds, a target that reads nothing
/// until the client has sent everything, and an answer the other way
/// meanwhile: the receives that find the buffer taken go on by system call,
/// every byte arrives in order, and the buffer comes back.
#[test]
fn a_starved_ring_receive_goes_on_by_system_call() {
    use std::io::{Read, Write};
    let (mut client, proxy_client, proxy_target, mut target) = sockets();
    const UP: usize = 4 << 20;
    let upload: Vec<u8> = (0..UP).map(|i| (i * 7 % 251) as u8).collect();
    let expected = upload.clone();
    let client_side = std::thread::spawn(move || {
        let mut reader = client.try_clone().unwrap();
        let answer = std::thread::spawn(move || {
            let mut got = Vec::new();
            reader.read_to_end(&mut got).unwrap();
            got
        });
        client.write_all(&upload).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        answer.join().unwrap()
    });
    let target_side = std::thread::spawn(move || {
        target.write_all(b"an answer before reading").unwrap();
        let mut got = Vec::new();
        target.read_to_end(&mut got).unwrap();
        target.shutdown(Shutdown::Write).unwrap();
        got
    });
    // Copy only, so the upload stays on the buffer path and holds it.
    let pool = PipePool::new(pipe::Splice::Never, 4, 4, pipe::LINUX_PIPE_SIZE);
    let (moved, ring) = proxy(&pool, proxy_client, proxy_target, 1, true);
    assert_eq!(moved.client_to_target, UP as u64);
    assert_eq!(
        target_side.join().unwrap(),
        expected,
        "the upload, in order"
    );
    assert_eq!(client_side.join().unwrap(), b"an answer before reading");
    assert!(ring.starved > 0, "the one buffer was never short: {ring:?}");
    assert!(ring.handed_out > 0, "{ring:?}");
    assert_eq!(ring.lent_after, 0, "{ring:?}");
}

/// A direction on a pipe stays there through short reads (a bulk stream that
/// outpaces its source finds part of a buffer when it wakes) and goes back to
/// copying only after `SHORT_READS_OFF_PIPE` of them in a row; a read that
/// fills a buffer puts it on a pipe whatever came before, and with splicing
/// off nothing does.
#[test]
fn a_bulk_direction_leaves_the_pipe_only_after_short_reads_in_a_row() {
    let pool = PipePool::new(pipe::Splice::Auto, 1, 1, pipe::LINUX_PIPE_SIZE);
    let counter = AtomicU64::new(0);
    let mut d = Direction::new(&pool, &counter);
    assert!(!d.bulk, "a new direction copies");
    d.after_read(100, false);
    assert!(!d.bulk, "a short copy stays a copy");
    d.after_read(pipe::COPY_BUF, false);
    assert!(d.bulk, "a full buffer moves to a pipe");
    for round in 0..2 {
        for i in 1..SHORT_READS_OFF_PIPE {
            d.after_read(100, true);
            assert!(d.bulk, "round {round}: short pipe read {i} keeps the pipe");
        }
        if round == 0 {
            d.after_read(pipe::COPY_BUF * 4, true);
            assert!(d.bulk, "a long read starts the count again");
        }
    }
    d.after_read(100, true);
    assert!(!d.bulk, "short reads in a row end the pipe");
    d.after_read(100, false);
    assert!(!d.bulk, "and copies stay copies");

    let never = PipePool::new(pipe::Splice::Never, 1, 1, pipe::LINUX_PIPE_SIZE);
    let mut d = Direction::new(&never, &counter);
    d.after_read(pipe::COPY_BUF * 4, false);
    assert!(!d.bulk, "splice = \"never\" never pipes");
}

/// Every read decides the next stage in one place: a first read that fills
/// its buffer, after the direction left a pipe, puts it back on one with the
/// count of short reads started again (one short pipe read keeps the pipe).
#[test]
fn a_full_first_read_starts_the_short_read_count_again() {
    use std::io::Write;
    let pool = PipePool::new(pipe::Splice::Auto, 1, 1, pipe::LINUX_PIPE_SIZE);
    let counter = AtomicU64::new(0);
    let mut d = Direction::new(&pool, &counter);
    d.after_read(pipe::COPY_BUF, false);
    for _ in 0..SHORT_READS_OFF_PIPE {
        d.after_read(100, true);
    }
    assert!(!d.bulk, "off the pipe");
    let (mut writer, client) = pair();
    writer.write_all(&[1u8; 2 * pipe::COPY_BUF]).unwrap();
    client.set_nonblocking(true).unwrap();
    let client = OwnedFd::from(client);
    let first = FirstRead::new(&pool, &client);
    assert_eq!(
        first.len as usize,
        pipe::COPY_BUF,
        "the first read filled its buffer"
    );
    d.start_with(first, &mut Instant::now());
    assert!(d.bulk, "a full first read goes on through a pipe");
    d.after_read(100, true);
    assert!(d.bulk, "one short pipe read after it keeps the pipe");
}

/// Bulk, then small messages one at a time, each read by the target before
/// the next is sent: every byte arrives in order, and the direction, off the
/// pipe after its short reads, receives on the ring again.
#[test]
fn after_bulk_small_messages_go_back_to_the_ring() {
    use std::io::{Read, Write};
    const BULK: usize = 4 << 20;
    const MESSAGES: usize = 8 * SHORT_READS_OFF_PIPE as usize;
    let (mut client, proxy_client, proxy_target, mut target) = sockets();
    let (read_tx, read_rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || {
        client.write_all(&vec![3u8; BULK]).unwrap();
        for i in 0..MESSAGES {
            client.write_all(&[i as u8; 100]).unwrap();
            read_rx.recv().unwrap();
        }
        client.shutdown(Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).unwrap();
    });
    let reader = std::thread::spawn(move || {
        let mut bulk = vec![0u8; BULK];
        target.read_exact(&mut bulk).unwrap();
        assert!(bulk.iter().all(|&b| b == 3), "the bulk bytes");
        for i in 0..MESSAGES {
            let mut m = [0u8; 100];
            target.read_exact(&mut m).unwrap();
            assert_eq!(m, [i as u8; 100], "message {i}");
            read_tx.send(()).unwrap();
        }
        let mut rest = Vec::new();
        target.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty());
    });
    let pool = PipePool::new(pipe::Splice::Auto, 4, 4, pipe::LINUX_PIPE_SIZE);
    let (moved, ring) = proxy(&pool, proxy_client, proxy_target, 16, false);
    writer.join().unwrap();
    reader.join().unwrap();
    assert_eq!(moved.client_to_target, (BULK + 100 * MESSAGES) as u64);
    assert!(
        ring.handed_out >= (MESSAGES - SHORT_READS_OFF_PIPE as usize) as u64,
        "the messages after the pipe's short reads came by the ring: {ring:?}"
    );
    assert_eq!(ring.lent_after, 0, "{ring:?}");
}

/// Sends `bytes` on `s`, waits until the peer has acknowledged all of them
/// (so a reset cannot overtake them), then resets the connection.
fn send_then_reset(mut s: std::net::TcpStream, bytes: &[u8]) {
    use std::io::Write;
    s.write_all(bytes).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while unacknowledged(s.as_raw_fd()) > 0 {
        assert!(Instant::now() < deadline, "the proxy never read the bytes");
        std::thread::sleep(Duration::from_millis(1));
    }
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// Reads until the stream ends: the bytes, and whether it ended by a reset.
fn read_to_reset(mut s: std::net::TcpStream) -> (Vec<u8>, bool) {
    use std::io::Read;
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, false),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (got, true),
            Err(e) => panic!("read: {e}"),
        }
    }
}

/// A target that sends 100,019 bytes and resets: the client gets every
/// byte, then a reset, not a clean end (which would make a cut-off
/// transfer look complete); a client that uploads and resets: the same
/// toward the target. On every byte path.
#[test]
fn a_reset_is_passed_on_as_a_reset_after_the_bytes_before_it() {
    const N: usize = 100_019;
    let payload: Vec<u8> = (0..N).map(|i| (i % 253) as u8).collect();
    for (mode, ring_buffers) in [
        (pipe::Splice::Auto, 16),
        (pipe::Splice::Auto, 0),
        (pipe::Splice::Never, 16),
        (pipe::Splice::Always, 0),
    ] {
        let pool = PipePool::new(mode, 4, 4, pipe::LINUX_PIPE_SIZE);
        for resets in [Side::Target, Side::Client] {
            let (client, proxy_client, proxy_target, target) = sockets();
            let (sends, reads) = match resets {
                Side::Target => (target, client),
                Side::Client => (client, target),
            };
            let bytes = payload.clone();
            let sender = std::thread::spawn(move || send_then_reset(sends, &bytes));
            let reader = std::thread::spawn(move || read_to_reset(reads));
            let (ended, _) = proxy_ends(&pool, proxy_client, proxy_target, ring_buffers, false);
            sender.join().unwrap();
            let (got, reset) = reader.join().unwrap();
            let case = format!("{mode:?}, {ring_buffers} ring buffers, the {resets:?} resets");
            assert_eq!(got.len(), N, "{case}: every byte before the reset");
            assert!(got == payload, "{case}: the bytes intact");
            assert!(reset, "{case}: the other side saw a clean end, not a reset");
            assert!(
                matches!(ended, Err(ProxyError::Io { side, .. }) if side == resets),
                "{case}: {ended:?}"
            );
        }
    }
}

/// A reset waits for the bytes before it: a client that reads slowly still
/// gets all of a target's last burst before the reset that followed it.
#[test]
fn a_reset_waits_until_a_slow_reader_has_the_bytes() {
    use std::io::Read;
    const N: usize = 4 << 20;
    let (mut client, proxy_client, proxy_target, target) = sockets();
    let sender = std::thread::spawn(move || send_then_reset(target, &vec![9u8; N]));
    let reader = std::thread::spawn(move || {
        let mut got = 0;
        let mut buf = [0u8; 4096];
        loop {
            std::thread::sleep(Duration::from_micros(200));
            match client.read(&mut buf) {
                Ok(0) => return (got, false),
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => return (got, true),
                Err(e) => panic!("read: {e}"),
            }
        }
    });
    let pool = PipePool::new(pipe::Splice::Auto, 4, 4, pipe::LINUX_PIPE_SIZE);
    let (ended, _) = proxy_ends(&pool, proxy_client, proxy_target, 16, false);
    sender.join().unwrap();
    assert!(ended.is_err());
    assert_eq!(reader.join().unwrap(), (N, true));
}
