//! Bytes arrive intact through ringlb, both directions, across half-close.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

const MIB: u64 = 1 << 20;
const CONNECTIONS: u64 = 200;

/// Who half-closes first.
#[derive(Clone, Copy, Debug)]
enum Order {
    /// Both sides send at once.
    Together,
    /// The target sends only after the client's FIN reached it.
    ClientClosesFirst,
    /// The client sends only after the target's FIN reached it.
    TargetClosesFirst,
}

struct Plan {
    id: u64,
    up: u64,
    down: u64,
    order: Order,
}

fn plan(id: u64) -> Plan {
    let order = match id % 3 {
        0 => Order::Together,
        1 => Order::ClientClosesFirst,
        _ => Order::TargetClosesFirst,
    };
    let (up, down) = match id {
        0 => (64 * MIB, 64 * MIB),
        1 => (1, 64 * MIB),
        2 => (64 * MIB, 1),
        _ => ((1 << (id * 7 % 21)) + id, (1 << (id * 11 % 21)) + 3 * id),
    };
    Plan {
        id,
        up,
        down,
        order,
    }
}

/// Deterministic bytes (splitmix64), so each side can make its own payload.
struct Bytes(u64);

impl Bytes {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
        }
    }
}

/// Sends `len` bytes from `seed`, then half-closes. Returns their crc32.
async fn send(w: &mut (impl AsyncWrite + Unpin), seed: u64, len: u64) -> u32 {
    let mut bytes = Bytes(seed);
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        bytes.fill(&mut buf[..n]);
        crc.update(&buf[..n]);
        w.write_all(&buf[..n]).await.expect("send");
        left -= n as u64;
    }
    w.shutdown().await.expect("half-close");
    crc.finalize()
}

/// Reads to end of stream. Returns (bytes, crc32).
async fn receive(r: &mut (impl AsyncRead + Unpin)) -> (u64, u32) {
    let mut crc = crc32fast::Hasher::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await.expect("receive");
        if n == 0 {
            return (total, crc.finalize());
        }
        crc.update(&buf[..n]);
        total += n as u64;
    }
}

/// What one end saw: (crc of what it sent, bytes received, crc of what it received).
type Seen = (u32, u64, u32);

/// The target: reads a 17-byte header (id, down length, order), then sends and
/// receives as the plan says, and records what it saw.
async fn target(listener: TcpListener, seen: Arc<Mutex<HashMap<u64, Seen>>>) {
    loop {
        let (s, _) = listener.accept().await.unwrap();
        let seen = seen.clone();
        tokio::spawn(async move {
            let (mut r, mut w) = s.into_split();
            let mut header = [0u8; 17];
            r.read_exact(&mut header).await.expect("header");
            let id = u64::from_le_bytes(header[..8].try_into().unwrap());
            let down = u64::from_le_bytes(header[8..16].try_into().unwrap());
            let wait_for_client_fin = header[16] == 1;
            let (fin_tx, fin_rx) = oneshot::channel();
            let reader = tokio::spawn(async move {
                let got = receive(&mut r).await;
                let _writer_may_be_done = fin_tx.send(());
                got
            });
            if wait_for_client_fin {
                fin_rx.await.unwrap();
            }
            let sent = send(&mut w, id ^ 0xD0D0, down).await;
            let (n, crc) = reader.await.unwrap();
            seen.lock().unwrap().insert(id, (sent, n, crc));
        });
    }
}

async fn client(proxy: SocketAddr, p: Plan) -> (u64, Seen) {
    let s = tokio::net::TcpStream::connect(proxy)
        .await
        .expect("connect to ringlb");
    let (mut r, mut w) = s.into_split();
    let mut header = Vec::with_capacity(17);
    header.extend_from_slice(&p.id.to_le_bytes());
    header.extend_from_slice(&p.down.to_le_bytes());
    header.push(matches!(p.order, Order::ClientClosesFirst) as u8);
    w.write_all(&header).await.unwrap();
    let (fin_tx, fin_rx) = oneshot::channel();
    let reader = tokio::spawn(async move {
        let got = receive(&mut r).await;
        let _writer_may_be_done = fin_tx.send(());
        got
    });
    if matches!(p.order, Order::TargetClosesFirst) {
        fin_rx.await.unwrap();
    }
    let sent = send(&mut w, p.id ^ 0xA0A0, p.up).await;
    let (n, crc) = reader.await.unwrap();
    (p.id, (sent, n, crc))
}

// Each path bytes can take: the default (small reads come by ring receive
// into provided buffers, a direction that fills a buffer moves to a pipe, and
// back), every byte through a pipe, every byte copied, every byte received
// by poll and recv(2) (no provided buffers), and a ring of two buffers for
// 200 connections, so most receives find none free and go on by recv(2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_survive_200_connections_both_ways_and_half_close() {
    survive(&with_splice(&simple_config(2, ""), "auto")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_survive_200_connections_all_spliced() {
    survive(&with_splice(&simple_config(2, ""), "always")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_survive_200_connections_all_copied() {
    survive(&with_splice(&simple_config(2, ""), "never")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_survive_200_connections_received_by_system_call() {
    let config = with_ring_buffers(&simple_config(2, ""), 0);
    let lb = survive(&with_splice(&config, "never")).await;
    assert_eq!(starved(&lb).await, 0, "no ring, so no receive starved");
    assert!(lb.stop().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_survive_200_connections_on_a_starved_ring_of_two_buffers() {
    let config = with_ring_buffers(&simple_config(2, ""), 2);
    let lb = survive(&with_splice(&config, "never")).await;
    // Published once a second by each worker.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while starved(&lb).await == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no receive ever found the two buffers taken"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(lb.stop().success());
}

/// `ringlb_worker_ring_receives_starved_total`, summed over workers.
async fn starved(lb: &Ringlb) -> u64 {
    let mut sum = 0;
    for w in 0..2 {
        let series = format!("ringlb_worker_ring_receives_starved_total{{worker=\"{w}\"}}");
        sum += metric(lb, &series).await;
    }
    sum
}

/// Runs the 200 connections through a ringlb on `config`; hands it back
/// running for the caller to look at and stop.
async fn survive(config: &str) -> Ringlb {
    raise_fd_limit();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    let backend = listener.local_addr().unwrap();
    let server = tokio::spawn(target(listener, seen.clone()));
    let lb = Ringlb::with_config(config, &[backend]);
    let proxy = lb.addr();

    let clients: Vec<_> = (0..CONNECTIONS)
        .map(|id| tokio::spawn(client(proxy, plan(id))))
        .collect();
    let mut client_seen = HashMap::new();
    for c in clients {
        let (id, s) = tokio::time::timeout(Duration::from_secs(180), c)
            .await
            .expect("every connection finishes within 180 s")
            .unwrap();
        client_seen.insert(id, s);
    }
    wait_until_async(
        Duration::from_secs(10),
        "target to record every connection",
        || seen.lock().unwrap().len() == CONNECTIONS as usize,
    )
    .await;
    let target_seen = seen.lock().unwrap().clone();
    for id in 0..CONNECTIONS {
        let p = plan(id);
        let (c_sent, c_got, c_crc) = client_seen[&id];
        let (t_sent, t_got, t_crc) = target_seen[&id];
        assert_eq!(
            t_got, p.up,
            "conn {id} ({:?}): bytes client -> target",
            p.order
        );
        assert_eq!(
            t_crc, c_sent,
            "conn {id} ({:?}): crc client -> target",
            p.order
        );
        assert_eq!(
            c_got, p.down,
            "conn {id} ({:?}): bytes target -> client",
            p.order
        );
        assert_eq!(
            c_crc, t_sent,
            "conn {id} ({:?}): crc target -> client",
            p.order
        );
    }
    server.abort();
    lb
}

/// Waits until the peer has acknowledged every byte sent on `s`, then
/// resets the connection (SO_LINGER 0, close).
fn reset_after_acked(s: std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut unacked: libc::c_int = 0;
        // SAFETY: TIOCOUTQ writes one int.
        unsafe { libc::ioctl(s.as_raw_fd(), libc::TIOCOUTQ, &mut unacked) };
        if unacked == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "bytes never acknowledged"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    socket2::SockRef::from(&s)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
}

/// A target that sends 100,019 bytes and resets: through ringlb the client
/// gets every byte and then a reset, as a packet-level balancer would pass
/// it, in every splice mode; ringlb counts it by side.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_targets_reset_reaches_the_client_as_a_reset_after_its_bytes() {
    const N: usize = 100_019;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target = l.local_addr().unwrap();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                use std::io::Write;
                let bytes: Vec<u8> = (0..N).map(|i| (i % 251) as u8).collect();
                s.write_all(&bytes).unwrap();
                reset_after_acked(s);
            });
        }
    });
    for mode in ["auto", "never", "always"] {
        let config = with_splice(&simple_config(1, ""), mode);
        let lb = Ringlb::with_config(&config, &[target]);
        let mut s = tokio::net::TcpStream::connect(lb.addr()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        let ended = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) => return "a clean end",
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return "a reset",
                    Err(_) => return "another error",
                }
            }
        })
        .await
        .expect("the stream ended");
        assert_eq!(got.len(), N, "{mode}: bytes before the reset");
        assert!(
            got.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
            "{mode}: intact"
        );
        assert_eq!(ended, "a reset", "{mode}");
        let resets = "ringlb_listener_connections_reset_total{listener=\"web\",side=\"target\"}";
        assert_eq!(wait_metric(&lb, resets, |v| v > 0).await, 1, "{mode}");
        assert!(lb.stop().success());
    }
}
