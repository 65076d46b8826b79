//! Balancing algorithms, through real ringlb processes with two workers.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

fn group(algorithm: &str) -> String {
    format!("algorithm = \"{algorithm}\"")
}

/// Max minus min of the backends' open connections.
fn spread(open: &[usize]) -> usize {
    open.iter().max().unwrap() - open.iter().min().unwrap()
}

async fn open_counts(backends: &[Backend], expected_total: usize) -> Vec<usize> {
    wait_until_async(
        Duration::from_secs(5),
        "backends to see every connection",
        || backends.iter().map(Backend::open).sum::<usize>() == expected_total,
    )
    .await;
    backends.iter().map(Backend::open).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_keeps_open_counts_within_one_across_workers() {
    let backends = vec![
        Backend::tagged(0).await,
        Backend::tagged(1).await,
        Backend::tagged(2).await,
    ];
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let lb = Ringlb::start_logging(
        write_config(
            &simple_config(2, &group("least_connections")),
            &[("targets/web.txt", targets(&addrs))],
        ),
        "info,ringlb=debug",
    );
    lb.wait_healthy(3);
    // Long-lived connections from many source ports, so the kernel hands
    // them to both workers' listening sockets.
    let mut held: Vec<(TcpStream, u8)> = Vec::new();
    for n in 1..=45 {
        held.push(connect_tagged(lb.addr()).await);
        let open = open_counts(&backends, n).await;
        assert!(spread(&open) <= 1, "after {n} connections: {open:?}");
    }
    // Close 6 of target 0's connections: least connections sends the next 6
    // there, where round robin would spread them.
    let mut closed = 0;
    held.retain(|(_, tag)| {
        if *tag == 0 && closed < 6 {
            closed += 1;
            false
        } else {
            true
        }
    });
    open_counts(&backends, 39).await;
    for _ in 0..6 {
        let (s, tag) = connect_tagged(lb.addr()).await;
        assert_eq!(tag, 0, "the emptied target gets the new connections");
        held.push((s, tag));
    }
    assert_eq!(open_counts(&backends, 45).await, vec![15, 15, 15]);
    wait_until(Duration::from_secs(5), "placements logged", || {
        lb.workers_that_placed().len() == 2
    });
    drop(held);
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_least_connections_follows_weights_within_one() {
    let backends = vec![
        Backend::tagged(0).await,
        Backend::tagged(1).await,
        Backend::tagged(2).await,
    ];
    let file = format!(
        "{} weight=1\n{} weight=2\n{} weight=3\n",
        backends[0].addr, backends[1].addr, backends[2].addr
    );
    let lb = Ringlb::start(write_config(
        &simple_config(2, &group("weighted_least_connections")),
        &[("targets/web.txt", file)],
    ));
    lb.wait_healthy(3);
    let mut held = Vec::new();
    for n in 1..=60 {
        held.push(connect_tagged(lb.addr()).await);
        let open = open_counts(&backends, n).await;
        for (i, &o) in open.iter().enumerate() {
            let share = n as f64 * (i + 1) as f64 / 6.0;
            assert!(
                (o as f64 - share).abs() <= 1.0 + 1e-9,
                "after {n}: {open:?} (target {i} share {share:.1})"
            );
        }
    }
    assert_eq!(open_counts(&backends, 60).await, vec![10, 20, 30]);
    drop(held);
    assert!(lb.stop().success());
}

/// Connects from a chosen source address and returns the answering tag.
async fn tag_from(proxy: SocketAddr, source: IpAddr) -> u8 {
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind(SocketAddr::new(source, 0)).unwrap();
    let mut s = sock.connect(proxy).await.unwrap();
    let mut tag = [0u8];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut tag))
        .await
        .unwrap()
        .unwrap();
    tag[0]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_source_ip_keeps_a_client_on_one_target_and_two_processes_agree() {
    let mut backends = Vec::new();
    for tag in 0..5 {
        backends.push(Backend::tagged(tag).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let mut reversed = addrs.clone();
    reversed.reverse();
    let config = simple_config(2, "algorithm = \"maglev\"\nhash_key = \"source_ip\"");
    let a = Ringlb::start(write_config(
        &config,
        &[("targets/web.txt", targets(&addrs))],
    ));
    // The second process lists the same targets in another order.
    let b = Ringlb::start(write_config(
        &config,
        &[("targets/web.txt", targets(&reversed))],
    ));
    a.wait_healthy(addrs.len());
    b.wait_healthy(addrs.len());

    // One client address, 100 new connections (new source ports): one target.
    let client = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 7));
    let first = tag_from(a.addr(), client).await;
    for _ in 0..99 {
        assert_eq!(
            tag_from(a.addr(), client).await,
            first,
            "client moved between targets"
        );
    }
    // 40 client addresses: both processes send each to the same target, and
    // together they use more than one target.
    let mut used = std::collections::HashSet::new();
    for host in 10..50u8 {
        let client = IpAddr::V4(Ipv4Addr::new(127, 0, 1, host));
        let (ta, tb) = (
            tag_from(a.addr(), client).await,
            tag_from(b.addr(), client).await,
        );
        assert_eq!(ta, tb, "the two ringlb processes disagree for {client}");
        used.insert(ta);
    }
    assert!(used.len() >= 3, "40 clients all on {used:?}");
    assert!(a.stop().success());
    assert!(b.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maglev_source_ip_port_spreads_one_client_over_targets() {
    let mut backends = Vec::new();
    for tag in 0..5 {
        backends.push(Backend::tagged(tag).await);
    }
    let addrs: Vec<_> = backends.iter().map(|b| b.addr).collect();
    let lb = Ringlb::in_front_of(2, "algorithm = \"maglev\"", &addrs);
    let client = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 9));
    let mut counts = [0usize; 5];
    for _ in 0..100 {
        counts[tag_from(lb.addr(), client).await as usize] += 1;
    }
    assert!(
        counts.iter().all(|&c| c > 0),
        "100 source ports should reach all 5 targets: {counts:?}"
    );
    assert!(lb.stop().success());
}
