//! Connections end when they should and leave nothing behind.

mod common;

use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_timeout_closes_both_sides_and_traffic_resets_it() {
    let backend = Backend::tagged(1).await;
    let lb = Ringlb::in_front_of(2, "idle_timeout = \"600ms\"", &[backend.addr]);
    let (mut s, _) = connect_tagged(lb.addr()).await;
    // Traffic every 200 ms for 1.5 s keeps it alive past the timeout.
    let start = Instant::now();
    let mut last_byte = start;
    while start.elapsed() < Duration::from_millis(1500) {
        s.write_all(b"ping").await.unwrap();
        let mut echo = [0u8; 4];
        s.read_exact(&mut echo)
            .await
            .expect("still open while busy");
        assert_eq!(&echo, b"ping");
        last_byte = Instant::now();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let closed_at = until_closed(&mut s, Duration::from_secs(5)).await;
    let quiet = closed_at - last_byte;
    assert!(
        quiet >= Duration::from_millis(550),
        "closed after only {quiet:?} of quiet"
    );
    // The target side was closed too.
    wait_until_async(Duration::from_secs(5), "backend connection closed", || {
        backend.open() == 0
    })
    .await;
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_fd_or_thread_leaks_after_thousands_of_connections() {
    raise_fd_limit();
    let backend = Backend::tagged(3).await;
    let lb = Ringlb::in_front_of(2, "", &[backend.addr]);
    let base_fds = lb.baseline_fds(1);
    let base_threads = lb.thread_count();
    // The workers, the control plane (main), the probes and the admin endpoint.
    assert!(
        base_threads <= 2 + 3,
        "{base_threads} threads for 2 workers at start"
    );

    // 2,000 short connections, 50 at a time, each moving a few bytes.
    let addr = lb.addr();
    for _ in 0..40 {
        let batch: Vec<_> = (0..50)
            .map(|_| {
                tokio::spawn(async move {
                    let (mut s, tag) = connect_tagged(addr).await;
                    s.write_all(b"hello").await.unwrap();
                    let mut b = [0u8; 5];
                    s.read_exact(&mut b).await.unwrap();
                    assert_eq!((tag, &b), (3, b"hello"));
                })
            })
            .collect();
        for t in batch {
            t.await.unwrap();
        }
    }
    assert_eq!(backend.accepted(), 2000);
    wait_until(
        Duration::from_secs(30),
        "fd count back to its start after 2,000 connections",
        || lb.fd_count() <= base_fds,
    );

    // 2,000 idle proxied connections open at once.
    let mut idle = Vec::new();
    for _ in 0..2000 {
        idle.push(connect_tagged(addr).await.0);
    }
    wait_until(
        Duration::from_secs(10),
        "backend to hold 2,000 connections",
        || backend.open() == 2000,
    );
    let threads = lb.thread_count();
    assert!(
        threads <= base_threads,
        "{threads} threads with 2,000 idle connections (start: {base_threads})"
    );
    let fds = lb.fd_count();
    assert!(
        fds >= base_fds + 4000,
        "2,000 proxied connections hold 4,000 sockets, saw {fds}"
    );
    assert!(
        fds <= base_fds + 4000 + 64,
        "idle connections must not hold pipes: {fds} fds"
    );
    drop(idle);
    wait_until(
        Duration::from_secs(30),
        "fd count back to its start",
        || lb.fd_count() <= base_fds,
    );
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_and_lets_open_connections_finish() {
    let backend = Backend::tagged(4).await;
    let lb = Ringlb::in_front_of(2, "", &[backend.addr]);
    let addr = lb.addr();
    let (mut s, _) = connect_tagged(addr).await;
    lb.signal(libc::SIGTERM);
    // New connections are refused once the listeners are closed.
    wait_until_async(Duration::from_secs(5), "listener closed", || {
        std::net::TcpStream::connect(addr).is_err()
    })
    .await;
    // The open one still carries bytes both ways.
    s.write_all(b"still here").await.unwrap();
    let mut b = [0u8; 10];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"still here");
    // Closing it lets ringlb exit 0 well before shutdown_timeout (5 s).
    drop(s);
    let start = Instant::now();
    let mut lb = lb;
    let status = lb.wait_exit(Duration::from_secs(4));
    assert!(status.success(), "{status:?}");
    assert!(start.elapsed() < Duration::from_secs(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_timeout_closes_connections_that_linger() {
    let backend = Backend::tagged(4).await;
    let config =
        simple_config(1, "").replace("shutdown_timeout = \"5s\"", "shutdown_timeout = \"500ms\"");
    let mut lb = Ringlb::start(write_config(
        &config,
        &[("targets/web.txt", targets(&[backend.addr]))],
    ));
    let (mut s, _) = connect_tagged(lb.addr()).await;
    let start = Instant::now();
    lb.signal(libc::SIGTERM);
    let status = lb.wait_exit(Duration::from_secs(5));
    assert!(status.success(), "{status:?}");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450),
        "exited after {took:?}, before shutdown_timeout"
    );
    until_closed(&mut s, Duration::from_secs(2)).await;
}
