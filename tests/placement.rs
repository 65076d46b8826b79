//! Where connections go: round robin, retries on refusal, connect timeouts.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::AsyncReadExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_exactly_over_3_targets_from_2_workers() {
    let backends = [
        Backend::tagged(0).await,
        Backend::tagged(1).await,
        Backend::tagged(2).await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let lb = Ringlb::in_front_of(2, "", &addrs);
    let mut counts = [0usize; 3];
    // Several at a time, so both workers accept some of them.
    for _ in 0..10 {
        let batch: Vec<_> = (0..9)
            .map(|_| tokio::spawn(connect_tagged(lb.addr())))
            .collect();
        for c in batch {
            let (_stream, tag) = c.await.unwrap();
            counts[tag as usize] += 1;
        }
    }
    assert_eq!(counts, [30, 30, 30]);
    assert_eq!(
        backends.iter().map(Backend::accepted).collect::<Vec<_>>(),
        vec![30, 30, 30]
    );
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_from_the_targets_file_apply_to_round_robin() {
    let (a, b) = (Backend::tagged(0).await, Backend::tagged(1).await);
    let file = format!("{} weight=1\n{} weight=3\n", a.addr, b.addr);
    let lb = Ringlb::start(write_config(
        &simple_config(1, ""),
        &[("targets/web.txt", file)],
    ));
    // Both in service first: until its probe passes, a target gets nothing.
    lb.wait_healthy(2);
    let mut counts = [0usize; 2];
    for _ in 0..40 {
        let (_s, tag) = connect_tagged(lb.addr()).await;
        counts[tag as usize] += 1;
    }
    assert_eq!(counts, [10, 30]);
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusing_target_is_retried_on_another() {
    let good = Backend::tagged(7).await;
    let dead = refusing_addr();
    let lb = Ringlb::in_front_of(
        2,
        "connect_retries = 1\nconnect_timeout = \"5s\"",
        &[dead, good.addr],
    );
    for _ in 0..20 {
        let (_s, tag) = connect_tagged(lb.addr()).await;
        assert_eq!(tag, 7, "every client reaches the live target");
    }
    assert_eq!(good.accepted(), 20);
    assert!(lb.stop().success());
}

/// The client's view of a connection ringlb could not place: the stream ends
/// (EOF or reset) without a byte.
async fn expect_closed_without_data(addr: std::net::SocketAddr, within: Duration) -> Duration {
    let start = Instant::now();
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(within, s.read(&mut buf))
        .await
        .expect("client closed in time");
    assert!(matches!(r, Ok(0) | Err(_)), "expected close, got {r:?}");
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_targets_refusing_closes_the_client_promptly() {
    let lb = Ringlb::start(write_config(
        &simple_config(2, "connect_retries = 2\nconnect_timeout = \"10s\""),
        &[(
            "targets/web.txt",
            targets(&[refusing_addr(), refusing_addr(), refusing_addr()]),
        )],
    ));
    for _ in 0..5 {
        // Far below connect_timeout: refusal is immediate, so is the close.
        let took = expect_closed_without_data(lb.addr(), Duration::from_secs(2)).await;
        assert!(took < Duration::from_secs(2), "took {took:?}");
    }
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_target_hits_connect_timeout_then_the_next_is_tried() {
    let hole = Blackhole::new();
    let good = Backend::tagged(5).await;
    let lb = Ringlb::in_front_of(
        1,
        "connect_retries = 1\nconnect_timeout = \"300ms\"",
        &[hole.addr, good.addr],
    );
    let base_fds = lb.baseline_fds(2);
    // Round robin starts at the black hole: the first client waits out the
    // timeout and is then placed on the good target.
    let start = Instant::now();
    let (_s, tag) = connect_tagged(lb.addr()).await;
    let took = start.elapsed();
    assert_eq!(tag, 5);
    assert!(
        took >= Duration::from_millis(290),
        "placed after {took:?}, before the timeout"
    );
    assert!(took < Duration::from_secs(3), "placed after {took:?}");
    drop(_s);
    // The timed-out connect was cancelled and its socket closed.
    wait_until(
        Duration::from_secs(30),
        "fd count back to its start",
        || lb.fd_count() <= base_fds,
    );
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_only_target_closes_the_client_after_connect_timeout() {
    let hole = Blackhole::new();
    let lb = Ringlb::in_front_of(
        1,
        "connect_retries = 0\nconnect_timeout = \"400ms\"",
        &[hole.addr],
    );
    let took = expect_closed_without_data(lb.addr(), Duration::from_secs(5)).await;
    assert!(
        took >= Duration::from_millis(390),
        "closed after {took:?}, before the timeout"
    );
    assert!(lb.stop().success());
}

/// `tcp_info` of a connected socket.
fn tcp_info(s: &std::net::TcpStream) -> libc::tcp_info {
    use std::os::fd::AsRawFd;
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
        assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
        info
    }
}

/// Waits until every thread of `pid` has stopped (a SIGSTOP takes effect
/// only when each thread is next interrupted).
fn wait_stopped(pid: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
        let all_stopped = tasks.map(|t| t.unwrap().path().join("stat")).all(|stat| {
            let stat = std::fs::read_to_string(stat).unwrap_or_default();
            // The state follows the parenthesised name: "pid (name) T ...".
            let state = stat
                .rsplit(") ")
                .next()
                .and_then(|rest| rest.chars().next());
            matches!(state, Some('T' | 't'))
        });
        if all_stopped {
            return;
        }
        assert!(Instant::now() < deadline, "ringlb did not stop");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Accepts one connection on `l` within `within`, as a blocking stream.
fn accept_within(l: &std::net::TcpListener, within: Duration) -> std::net::TcpStream {
    l.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + within;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                return s;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(Instant::now() < deadline, "ringlb never connected");
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// A client that speaks first: its first bytes carry the handshake's last ACK
/// to the target (one segment fewer). A target that speaks first gets that
/// ACK at once: the kernel measures the handshake's round trip from it, and
/// a held-back ACK would show as 200 ms (the kernel's longest ACK delay).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handshake_ack_rides_with_the_clients_first_bytes_and_never_holds_up_a_target() {
    use std::io::{Read, Write};
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lb = Ringlb::in_front_of(1, "", &[target.local_addr().unwrap()]);

    // ringlb is stopped while the client connects and sends, so its bytes
    // are surely there when ringlb accepts (as they nearly always are).
    lb.signal(libc::SIGSTOP);
    wait_stopped(lb.pid());
    let mut client = std::net::TcpStream::connect(lb.addr()).unwrap();
    client.write_all(b"GET / HTTP/1.0\r\n\r\n").unwrap();
    lb.signal(libc::SIGCONT);
    let mut t = accept_within(&target, Duration::from_secs(10));
    let mut got = [0u8; 18];
    t.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"GET / HTTP/1.0\r\n\r\n");
    assert_eq!(
        tcp_info(&t).tcpi_segs_in,
        2,
        "the target took in a SYN, then the ACK with the bytes"
    );

    let mut client = std::net::TcpStream::connect(lb.addr()).unwrap();
    let mut t = accept_within(&target, Duration::from_secs(10));
    let rtt = tcp_info(&t).tcpi_rtt;
    assert!(
        rtt < 100_000,
        "the handshake's last ACK was held back: round trip {rtt} µs"
    );
    t.write_all(b"220 ready\r\n").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut banner = [0u8; 11];
    client.read_exact(&mut banner).unwrap();
    assert_eq!(&banner, b"220 ready\r\n");
    assert!(lb.stop().success());
}
