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
