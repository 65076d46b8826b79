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

/// Slow start: two established targets and one that joins. In each fifth of
/// the 30 s window the new target's share of new connections (from ringlb's
/// own counters) grows, from near nothing to close to its full third, and
/// after the window it has its third; `/targets` shows the ramp.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_start_eases_a_new_target_in_over_its_window() {
    let (a, b, c) = (
        Backend::tagged(1).await,
        Backend::tagged(2).await,
        Backend::tagged(3).await,
    );
    let health =
        "protocol = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nhealthy_threshold = 1";
    let lb = Ringlb::start(write_config(
        &health_config(2, "slow_start = \"30s\"", health),
        &[("targets/web.txt", targets(&[a.addr, b.addr]))],
    ));
    lb.wait_healthy(2);
    replace_file(
        &lb.dir.path().join("targets/web.txt"),
        &targets(&[a.addr, b.addr, c.addr]),
    );
    lb.wait_log(
        &format!("target={} from=initial to=healthy", c.addr),
        Duration::from_secs(5),
    );
    let started = std::time::Instant::now();
    // New connections at about 250/s for 36 s (at most 12,000).
    let addr = lb.addr();
    let client = tokio::spawn(async move {
        for _ in 0..12_000 {
            if started.elapsed() > Duration::from_secs(36) {
                break;
            }
            let (s, _) = connect_tagged(addr).await;
            drop(s);
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
    });
    let counts = || async {
        let mut n = [0u64; 3];
        for (i, t) in [a.addr, b.addr, c.addr].iter().enumerate() {
            n[i] = metric(
                &lb,
                &format!("ringlb_target_connections_total{{group=\"web\",target=\"{t}\"}}"),
            )
            .await;
        }
        n
    };
    let (_, body) = admin_get(lb.admin, "/targets").await;
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let new = report["groups"][0]["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["address"] == c.addr.to_string())
        .unwrap()
        .clone();
    let left = new["slow_start_seconds_left"].as_f64().unwrap();
    assert!(left > 25.0 && left <= 30.0, "{new}");
    // Shares in each 6 s fifth of the window, then in 4 s after it.
    let mut shares = Vec::new();
    let mut last = counts().await;
    for end in [6, 12, 18, 24, 30, 35] {
        tokio::time::sleep_until((started + Duration::from_secs(end)).into()).await;
        let now = counts().await;
        let d: Vec<u64> = (0..3).map(|i| now[i] - last[i]).collect();
        let total = d.iter().sum::<u64>().max(1) as f64;
        shares.push(d[2] as f64 / total);
        last = now;
    }
    client.await.unwrap();
    println!("the new target's share by fifth of the window, then after: {shares:.3?}");
    // A linear ramp of its weight against two at full weight: f / (2 + f),
    // averaged over each fifth, is 0.05, 0.13, 0.20, 0.26, 0.31; then 1/3.
    let expected = [0.05, 0.13, 0.20, 0.26, 0.31, 0.333];
    for (i, (got, want)) in shares.iter().zip(expected).enumerate() {
        assert!(
            (got - want).abs() < 0.06,
            "period {}: share {got:.3}, expected about {want} ({shares:.3?})",
            i + 1
        );
    }
    assert!(
        shares.windows(2).take(4).all(|w| w[0] < w[1]),
        "the share grows fifth by fifth: {shares:.3?}"
    );
    assert!(lb.stop().success());
}
