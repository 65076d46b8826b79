//! Guard rails: allow lists, connection limits, PROXY protocol.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Config with `listener_extra` lines in the "web" listener.
fn with_listener(extra: &str, group_extra: &str) -> String {
    let config = simple_config(2, group_extra);
    let anchor = "target_group = \"web\"\n\n[[target_group]]";
    assert!(config.contains(anchor), "the listener table moved");
    config.replace(
        anchor,
        &format!("target_group = \"web\"\n{extra}\n\n[[target_group]]"),
    )
}

async fn connect_from(proxy: SocketAddr, source: Ipv4Addr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(SocketAddr::new(IpAddr::V4(source), 0)).unwrap();
    s.connect(proxy).await.unwrap()
}

/// Ok(tag) if a backend answered, Err(()) if the connection closed without a byte.
async fn tag_or_closed(s: &mut TcpStream) -> Result<u8, ()> {
    let mut b = [0u8];
    match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b))
        .await
        .expect("answer or close in 5 s")
    {
        Ok(1) => Ok(b[0]),
        _ => Err(()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_outside_the_allow_list_are_closed_before_any_target_is_contacted() {
    let backend = Backend::tagged(1).await;
    let config = with_listener("allow = [\"127.0.0.2/32\", \"10.0.0.0/8\"]", "");
    let lb = Ringlb::start(write_config(
        &config,
        &[("targets/web.txt", targets(&[backend.addr]))],
    ));
    for _ in 0..5 {
        let mut s = connect_from(lb.addr(), Ipv4Addr::new(127, 0, 0, 1)).await;
        assert_eq!(
            tag_or_closed(&mut s).await,
            Err(()),
            "127.0.0.1 is not allowed"
        );
    }
    assert_eq!(
        backend.accepted(),
        0,
        "no target was contacted for refused clients"
    );
    let mut s = connect_from(lb.addr(), Ipv4Addr::new(127, 0, 0, 2)).await;
    assert_eq!(tag_or_closed(&mut s).await, Ok(1));
    assert_eq!(
        metric(
            &lb,
            "ringlb_listener_connections_refused_total{listener=\"web\",reason=\"not_allowed\"}"
        )
        .await,
        5
    );
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_holds_across_workers_and_frees_up() {
    let backend = Backend::tagged(1).await;
    let config = with_listener("max_connections = 3", "");
    let lb = Ringlb::start(write_config(
        &config,
        &[("targets/web.txt", targets(&[backend.addr]))],
    ));
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(connect_tagged(lb.addr()).await.0);
    }
    // Many attempts from many source ports reach both workers: all refused.
    for _ in 0..20 {
        let mut s = TcpStream::connect(lb.addr()).await.unwrap();
        assert_eq!(
            tag_or_closed(&mut s).await,
            Err(()),
            "a 4th connection must be refused"
        );
    }
    assert_eq!(
        metric(
            &lb,
            "ringlb_listener_connections_refused_total{listener=\"web\",reason=\"max_connections\"}"
        )
        .await,
        20
    );
    echo(&mut held[0], b"held ones still flow").await.unwrap();
    drop(held.pop());
    // ringlb's own count says when the slot is free (the backend may see
    // the end before ringlb has closed its side).
    wait_metric(
        &lb,
        "ringlb_listener_connections_active{listener=\"web\"}",
        |n| n == 2,
    )
    .await;
    let mut s = TcpStream::connect(lb.addr()).await.unwrap();
    assert_eq!(
        tag_or_closed(&mut s).await,
        Ok(1),
        "a new client gets in once one left"
    );
    drop((held, s));
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_target_is_skipped_like_a_not_ready_one() {
    let (a, b) = (Backend::tagged(1).await, Backend::tagged(2).await);
    let lb = Ringlb::in_front_of(2, "max_connections_per_target = 2", &[a.addr, b.addr]);
    let mut held = Vec::new();
    let mut counts = [0; 3];
    for _ in 0..4 {
        let (s, tag) = connect_tagged(lb.addr()).await;
        counts[tag as usize] += 1;
        held.push(s);
    }
    assert_eq!(counts, [0, 2, 2]);
    let mut s = TcpStream::connect(lb.addr()).await.unwrap();
    assert_eq!(tag_or_closed(&mut s).await, Err(()), "every target is full");
    drop(held.remove(0));
    // ringlb frees the slot once both directions have closed: wait on its
    // own count, not the backend's (which drops a moment earlier).
    let active = |t: std::net::SocketAddr| {
        format!("ringlb_target_connections_active{{group=\"web\",target=\"{t}\"}}")
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while metric(&lb, &active(a.addr)).await + metric(&lb, &active(b.addr)).await != 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "a target slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(connect_tagged(lb.addr()).await.1 >= 1);
    drop(held);
    assert!(lb.stop().success());
}

/// What a PROXY header said: (source, destination); `None` for v2 LOCAL.
type Said = Option<(SocketAddr, SocketAddr)>;

/// Decodes a PROXY v1 or v2 header from the front of `s` (written here,
/// independently of ringlb's encoder).
async fn decode(s: &mut TcpStream) -> Said {
    let mut first = [0u8; 16];
    s.read_exact(&mut first[..5]).await.unwrap();
    if &first[..5] == b"PROXY" {
        let mut line = b"PROXY".to_vec();
        while !line.ends_with(b"\r\n") {
            let mut c = [0u8];
            s.read_exact(&mut c).await.unwrap();
            line.push(c[0]);
            assert!(line.len() <= 107, "v1 line too long");
        }
        let text = String::from_utf8(line).unwrap();
        let f: Vec<&str> = text.trim_end().split(' ').collect();
        assert!(f[1] == "TCP4" || f[1] == "TCP6", "{text}");
        let ip = |i: usize| f[i].parse::<IpAddr>().unwrap();
        let port = |i: usize| f[i].parse::<u16>().unwrap();
        return Some((
            SocketAddr::new(ip(2), port(4)),
            SocketAddr::new(ip(3), port(5)),
        ));
    }
    s.read_exact(&mut first[5..]).await.unwrap();
    assert_eq!(&first[..12], b"\r\n\r\n\0\r\nQUIT\n", "v2 signature");
    assert_eq!(first[12] >> 4, 2, "version 2");
    let len = u16::from_be_bytes([first[14], first[15]]) as usize;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await.unwrap();
    match (first[12] & 0xF, first[13]) {
        (0, _) => None, // LOCAL
        (1, 0x11) => {
            let ip = |o: usize| {
                IpAddr::V4(Ipv4Addr::new(
                    body[o],
                    body[o + 1],
                    body[o + 2],
                    body[o + 3],
                ))
            };
            let port = |o: usize| u16::from_be_bytes([body[o], body[o + 1]]);
            Some((
                SocketAddr::new(ip(0), port(8)),
                SocketAddr::new(ip(4), port(10)),
            ))
        }
        other => panic!("unexpected command/family {other:?}"),
    }
}

/// A backend that decodes a PROXY header, records it, then echoes.
async fn proxy_aware_backend(seen: Arc<Mutex<Vec<Said>>>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let seen = seen.clone();
            tokio::spawn(async move {
                let said = decode(&mut s).await;
                seen.lock().unwrap().push(said);
                let (mut r, mut w) = s.split();
                let _closed = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_protocol_v1_and_v2_carry_the_real_client_then_the_bytes() {
    for version in ["v1", "v2"] {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let backend = proxy_aware_backend(seen.clone()).await;
        let config = with_listener(&format!("proxy_protocol = \"{version}\""), "");
        let lb = Ringlb::start(write_config(
            &config,
            &[("targets/web.txt", targets(&[backend]))],
        ));
        let mut s = connect_from(lb.addr(), Ipv4Addr::new(127, 0, 0, 3)).await;
        let me = s.local_addr().unwrap();
        echo(&mut s, b"payload after the header")
            .await
            .expect("bytes flow after the header");
        let said = seen.lock().unwrap().clone();
        assert_eq!(
            said,
            vec![Some((me, lb.addr()))],
            "{version}: client and listener addresses"
        );
        drop(s);
        assert!(lb.stop().success());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes_send_proxy_v2_local_only_when_asked() {
    for (asked, expect_header) in [(false, false), (true, true)] {
        // The target records the first bytes each probe sends within 300 ms
        // (a plain TCP probe sends none: it connects and closes).
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let first_bytes = Arc::new(Mutex::new(Vec::<Vec<u8>>::new()));
        let fb = first_bytes.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = l.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 16];
                let n = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or(0);
                fb.lock().unwrap().push(buf[..n].to_vec());
            }
        });
        let health = format!(
            "protocol = \"tcp\"\ninterval = \"200ms\"\ntimeout = \"100ms\"\nproxy_protocol = {asked}"
        );
        let lb = Ringlb::start(write_config(
            &health_config(1, "", &health),
            &[("targets/web.txt", targets(&[addr]))],
        ));
        wait_until_async(Duration::from_secs(5), "a probe to arrive", || {
            !first_bytes.lock().unwrap().is_empty()
        })
        .await;
        let got = first_bytes.lock().unwrap()[0].clone();
        if expect_header {
            assert_eq!(
                got,
                [&b"\r\n\r\n\0\r\nQUIT\n"[..], &[0x20, 0, 0, 0]].concat(),
                "v2 LOCAL"
            );
        } else {
            assert!(got.is_empty(), "no header unless asked: {got:?}");
        }
        assert!(lb.stop().success());
    }
}

/// `max_connections_per_client`: a client opening N + 10 connections has
/// exactly N open at once; another client is not touched; when one of the
/// first client's ends, it may open one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_connections_per_client_caps_one_client_not_the_others() {
    let backend = Backend::tagged(1).await;
    let config = with_listener("max_connections_per_client = 5", "");
    let lb = Ringlb::start(write_config(
        &config,
        &[("targets/web.txt", targets(&[backend.addr]))],
    ));
    let greedy = Ipv4Addr::new(127, 0, 0, 2);
    let (mut open, mut refused) = (Vec::new(), 0);
    for _ in 0..15 {
        let mut s = connect_from(lb.addr(), greedy).await;
        match tag_or_closed(&mut s).await {
            Ok(_) => open.push(s),
            Err(()) => refused += 1,
        }
    }
    assert_eq!((open.len(), refused), (5, 10), "exactly 5 open at once");
    let mut other = Vec::new();
    for _ in 0..5 {
        let mut s = connect_from(lb.addr(), Ipv4Addr::new(127, 0, 0, 3)).await;
        assert_eq!(tag_or_closed(&mut s).await, Ok(1), "another client gets in");
        other.push(s);
    }
    assert_eq!(
        metric(
            &lb,
            "ringlb_listener_connections_refused_total{listener=\"web\",reason=\"client_limit\"}"
        )
        .await,
        10
    );
    echo(&mut open[0], b"held ones still flow").await.unwrap();
    drop(open.pop());
    wait_metric(
        &lb,
        "ringlb_listener_connections_active{listener=\"web\"}",
        |n| n == 9,
    )
    .await;
    let mut s = connect_from(lb.addr(), greedy).await;
    assert_eq!(tag_or_closed(&mut s).await, Ok(1), "one left, one more");
    let mut s = connect_from(lb.addr(), greedy).await;
    assert_eq!(tag_or_closed(&mut s).await, Err(()), "and no more");
    drop((open, other));
    assert!(lb.stop().success());
}

/// `connection_rate_per_client`: a client trying as fast as it can for 5 s
/// gets its rate within 10%; another client meanwhile is not touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_rate_per_client_holds_over_five_seconds() {
    let backend = Backend::tagged(1).await;
    let config = with_listener("connection_rate_per_client = \"40/s\"", "");
    let lb = Ringlb::start(write_config(
        &config,
        &[("targets/web.txt", targets(&[backend.addr]))],
    ));
    let started = std::time::Instant::now();
    let (mut admitted, mut attempts) = (0u32, 0u32);
    let mut other_at = started;
    // For 5 s (at most 20,000 attempts).
    while started.elapsed() < Duration::from_secs(5) && attempts < 20_000 {
        let mut s = connect_from(lb.addr(), Ipv4Addr::new(127, 0, 0, 2)).await;
        attempts += 1;
        if tag_or_closed(&mut s).await.is_ok() {
            admitted += 1;
        }
        // About 1,000 attempts a second: 25 for each one let in.
        tokio::time::sleep(Duration::from_millis(1)).await;
        // Another client, ten a second, well under its rate.
        if other_at.elapsed() >= Duration::from_millis(100) {
            other_at = std::time::Instant::now();
            let mut o = connect_from(lb.addr(), Ipv4Addr::new(127, 0, 0, 3)).await;
            assert_eq!(tag_or_closed(&mut o).await, Ok(1), "another client gets in");
        }
    }
    println!("{admitted} of {attempts} attempts let in over 5 s at 40/s");
    assert!(
        attempts > 400,
        "only {attempts} attempts: too slow to test the rate"
    );
    assert!(
        (180..=220).contains(&admitted),
        "{admitted} let in over 5 s at 40/s (of {attempts})"
    );
    let refused = metric(
        &lb,
        "ringlb_listener_connections_refused_total{listener=\"web\",reason=\"client_rate\"}",
    )
    .await;
    assert_eq!(refused, u64::from(attempts - admitted));
    assert!(lb.stop().success());
}
