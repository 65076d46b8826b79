//! A fair share per client: `max_connections_per_client` (open connections
//! from one client, exact across workers) and `connection_rate_per_client`
//! (new connections per second), as HAProxy's stick tables do with
//! `sc_conn_cur` and `sc_conn_rate`. A client is its IPv4 address, or its
//! IPv6 address's first `client_ipv6_prefix` bits (64 by default: one
//! household or one cloud instance usually holds a whole /64).
//!
//! One fixed table per listener with limits, shared by its workers,
//! lock-free: [`SLOTS`] slots of 24 bytes (1.5 MiB), open addressing with
//! [`PROBES`] probes from the client's hash. A slot is taken by compare and
//! swap on its key; a slot with no open connection (and, under a rate
//! limit, nobody let in for two seconds) may be taken over by another client. When all of a
//! client's probe slots belong to other active clients the table is full for
//! it: it is let in uncounted (fail open) and the miss is counted, never
//! refused for a limit it cannot be measured against. Memory never grows,
//! whatever the number of clients.
//!
//! The rate is a sliding window over two one-second buckets (the last
//! second's count weighted by how much of it still lies in the window, plus
//! this second's), so a burst at a second's edge cannot pass twice the rate.
//! Refused attempts are not counted: a client sending faster than its rate
//! gets its rate.

use std::hash::{BuildHasher, Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Instant;

/// Slots in a listener's table.
pub const SLOTS: usize = 1 << 16;
/// Slots a client may land in.
pub const PROBES: usize = 8;

/// The limits of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections per client.
    pub max_open: Option<u32>,
    /// New connections per client per second.
    pub rate: Option<u32>,
    /// Bits of an IPv6 address that name a client (1-128).
    pub ipv6_prefix: u8,
}

impl Limits {
    pub fn any(&self) -> bool {
        self.max_open.is_some() || self.rate.is_some()
    }
}

/// Why a client was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// It has `max_connections_per_client` open.
    Open,
    /// It opened `connection_rate_per_client` in the last second.
    Rate,
}

#[derive(Debug, Default)]
#[repr(C)]
struct Slot {
    /// The client's hash (never 0); 0: free.
    key: AtomicU64,
    /// The second (since the table's start) of the current bucket, in the
    /// high 24 bits, the previous bucket's count in the next 20, the
    /// current's in the low 20.
    rate: AtomicU64,
    open: AtomicU32,
}

/// What a let-in client holds: the slot its open connection is counted in
/// ([`Admitted::NONE`] when the table was full for it, or only the rate is
/// limited). Four bytes: every connection carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted(u32);

impl Admitted {
    /// Counted nowhere.
    pub const NONE: Admitted = Admitted(u32::MAX);
}

pub struct ClientTable {
    slots: Box<[Slot]>,
    hasher: std::collections::hash_map::RandomState,
    start: Instant,
    /// Clients let in uncounted because their slots were all taken.
    pub full: AtomicU64,
}

impl std::fmt::Debug for ClientTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTable")
            .field("slots", &self.slots.len())
            .finish()
    }
}

const COUNT_BITS: u32 = 20;
const COUNT_MAX: u64 = (1 << COUNT_BITS) - 1;

fn unpack(v: u64) -> (u64, u64, u64) {
    (v >> 40, (v >> COUNT_BITS) & COUNT_MAX, v & COUNT_MAX)
}

fn pack(second: u64, prev: u64, cur: u64) -> u64 {
    ((second & 0xFF_FFFF) << 40) | (prev.min(COUNT_MAX) << COUNT_BITS) | cur.min(COUNT_MAX)
}

impl ClientTable {
    pub fn new(start: Instant) -> ClientTable {
        Self::with_slots(SLOTS, start)
    }

    fn with_slots(n: usize, start: Instant) -> ClientTable {
        ClientTable {
            slots: (0..n).map(|_| Slot::default()).collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            start,
            full: AtomicU64::new(0),
        }
    }

    /// Bytes the table holds, whatever the number of clients.
    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }

    /// The key of `ip` as a client: IPv4 (or IPv4-mapped IPv6) whole, IPv6
    /// by its first `prefix` bits.
    fn key(&self, ip: IpAddr, prefix: u8) -> u64 {
        let mut h = self.hasher.build_hasher();
        match ip.to_canonical() {
            IpAddr::V4(v4) => (4u8, u32::from(v4)).hash(&mut h),
            IpAddr::V6(v6) => {
                let bits = u128::from(v6);
                let p = u32::from(prefix.clamp(1, 128));
                let masked = if p == 128 {
                    bits
                } else {
                    bits & !(u128::MAX >> p)
                };
                (6u8, masked).hash(&mut h)
            }
        }
        h.finish().max(1)
    }

    /// Lets `ip` in under `limits` at `now`, or says why not. A let-in
    /// client's [`Admitted`] goes back to [`ClientTable::release`] when its
    /// connection ends.
    pub fn admit(&self, ip: IpAddr, limits: &Limits, now: Instant) -> Result<Admitted, Refusal> {
        let key = self.key(ip, limits.ipv6_prefix);
        let ms = now.saturating_duration_since(self.start).as_millis() as u64;
        let Some(i) = self.find(key, ms / 1000) else {
            self.full.fetch_add(1, Ordering::Relaxed);
            return Ok(Admitted::NONE);
        };
        let slot = &self.slots[i];
        if let Some(max) = limits.max_open {
            let took = slot
                .open
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                    (n < max).then_some(n + 1)
                });
            if took.is_err() {
                return Err(Refusal::Open);
            }
        }
        if let Some(rate) = limits.rate
            && !Self::count_attempt(slot, ms, u64::from(rate))
        {
            if limits.max_open.is_some() {
                slot.open.fetch_sub(1, Ordering::AcqRel);
            }
            return Err(Refusal::Rate);
        }
        Ok(match limits.max_open {
            Some(_) => Admitted(i as u32),
            None => Admitted::NONE,
        })
    }

    /// A let-in client's connection ended.
    pub fn release(&self, admitted: Admitted) {
        if let Some(slot) = self.slots.get(admitted.0 as usize) {
            slot.open.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// The slot of `key`: its own, a free one, or one an idle client held.
    fn find(&self, key: u64, second: u64) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let first = (key as usize) & mask;
        let mut reusable = None;
        for p in 0..PROBES {
            let i = (first + p) & mask;
            let slot = &self.slots[i];
            match slot.key.load(Ordering::Acquire) {
                k if k == key => return Some(i),
                0 => match slot
                    .key
                    .compare_exchange(0, key, Ordering::AcqRel, Ordering::Acquire)
                {
                    Ok(_) => return Some(i),
                    Err(k) if k == key => return Some(i),
                    Err(_) => {}
                },
                k => {
                    let (s, _, _) = unpack(slot.rate.load(Ordering::Relaxed));
                    let idle = slot.open.load(Ordering::Acquire) == 0
                        && second.wrapping_sub(s) & 0xFF_FFFF >= 2;
                    if idle && reusable.is_none() {
                        reusable = Some((i, k));
                    }
                }
            }
        }
        let (i, old) = reusable?;
        let slot = &self.slots[i];
        slot.key
            .compare_exchange(old, key, Ordering::AcqRel, Ordering::Acquire)
            .ok()?;
        // The new owner starts with a clean window; a connection of the old
        // owner cannot be open (it had none), so `open` is 0.
        slot.rate.store(pack(second, 0, 0), Ordering::Relaxed);
        Some(i)
    }

    /// Counts one attempt at `ms` if the rate allows it.
    fn count_attempt(slot: &Slot, ms: u64, rate: u64) -> bool {
        let second = ms / 1000;
        let into = ms % 1000;
        slot.rate
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |v| {
                let (s, prev, cur) = unpack(v);
                let (prev, cur) = match second.wrapping_sub(s) & 0xFF_FFFF {
                    0 => (prev, cur),
                    1 => (cur, 0),
                    _ => (0, 0),
                };
                // The previous second's share of the last 1000 ms, and this one's.
                let estimate = prev * (1000 - into) / 1000 + cur;
                (estimate < rate).then(|| pack(second, prev, cur + 1))
            })
            .is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const OPEN3: Limits = Limits {
        max_open: Some(3),
        rate: None,
        ipv6_prefix: 64,
    };

    #[test]
    fn open_connections_are_capped_per_client_and_released() {
        let t0 = Instant::now();
        let t = ClientTable::with_slots(1024, t0);
        let held: Vec<Admitted> = (0..3)
            .map(|_| t.admit(ip("10.0.0.1"), &OPEN3, t0).unwrap())
            .collect();
        assert_eq!(t.admit(ip("10.0.0.1"), &OPEN3, t0), Err(Refusal::Open));
        assert!(
            t.admit(ip("10.0.0.2"), &OPEN3, t0).is_ok(),
            "another client"
        );
        assert_eq!(
            t.admit(ip("::ffff:10.0.0.1"), &OPEN3, t0),
            Err(Refusal::Open),
            "an IPv4-mapped address is the same client"
        );
        t.release(held[0]);
        assert!(t.admit(ip("10.0.0.1"), &OPEN3, t0).is_ok());
    }

    #[test]
    fn ipv6_clients_are_counted_per_prefix() {
        let t0 = Instant::now();
        let t = ClientTable::with_slots(1024, t0);
        for i in 1..=3 {
            t.admit(ip(&format!("2001:db8:1:2::{i}")), &OPEN3, t0)
                .unwrap();
        }
        assert_eq!(
            t.admit(ip("2001:db8:1:2:ffff::9"), &OPEN3, t0),
            Err(Refusal::Open),
            "the same /64"
        );
        assert!(
            t.admit(ip("2001:db8:1:3::1"), &OPEN3, t0).is_ok(),
            "another /64"
        );
        let per_address = Limits {
            ipv6_prefix: 128,
            ..OPEN3
        };
        assert!(t.admit(ip("2001:db8:1:2::4"), &per_address, t0).is_ok());
    }

    #[test]
    fn the_rate_holds_over_seconds_and_a_second_edge_cannot_double_it() {
        let t0 = Instant::now();
        let t = ClientTable::with_slots(1024, t0);
        let limits = Limits {
            max_open: None,
            rate: Some(100),
            ipv6_prefix: 64,
        };
        // 1,000 attempts a second for 5 s, evenly spread.
        let mut admitted = 0;
        for i in 0..5000u64 {
            let at = t0 + Duration::from_millis(i);
            if t.admit(ip("10.0.0.1"), &limits, at).is_ok() {
                admitted += 1;
            }
        }
        assert!(
            (450..=550).contains(&admitted),
            "{admitted} in 5 s at 100/s"
        );
        // Another client meanwhile is not touched.
        let t = ClientTable::with_slots(1024, t0);
        for i in 0..50u64 {
            let at = t0 + Duration::from_millis(500 + i * 100);
            for _ in 0..20 {
                let _ = t.admit(ip("10.0.0.3"), &limits, at);
            }
            assert!(t.admit(ip("10.0.0.4"), &limits, at).is_ok(), "at {i}");
        }
        // A burst at the end of a second and another at the start of the next.
        let t = ClientTable::with_slots(1024, t0);
        let burst = |at: Instant| {
            (0..200)
                .filter(|_| t.admit(ip("10.0.0.2"), &limits, at).is_ok())
                .count()
        };
        let first = burst(t0 + Duration::from_millis(990));
        let second = burst(t0 + Duration::from_millis(1010));
        assert_eq!(first, 100);
        assert!(second <= 5, "{second} more 20 ms later");
    }

    #[test]
    fn a_flood_of_distinct_clients_never_grows_the_table_and_fails_open() {
        let t0 = Instant::now();
        let t = ClientTable::with_slots(1024, t0);
        let before = t.bytes();
        let mut held = Vec::new();
        for i in 0..100_000u32 {
            let a = IpAddr::from(std::net::Ipv6Addr::from(
                (0x2001_0db8u128 << 96) | (u128::from(i) << 64),
            ));
            held.push(
                t.admit(a, &OPEN3, t0)
                    .expect("never refused for a full table"),
            );
        }
        assert_eq!(t.bytes(), before);
        assert!(
            t.full.load(Ordering::Relaxed) > 90_000,
            "most were let in uncounted"
        );
        // Their connections end; two seconds on, new clients get slots again.
        for h in held {
            t.release(h);
        }
        let later = t0 + Duration::from_secs(3);
        let limits = Limits {
            max_open: Some(1),
            ..OPEN3
        };
        let a = t.admit(ip("192.0.2.1"), &limits, later).unwrap();
        assert_ne!(a, Admitted::NONE, "an idle client's slot was taken over");
        assert_eq!(t.admit(ip("192.0.2.1"), &limits, later), Err(Refusal::Open));
        assert_eq!(ClientTable::new(t0).bytes(), SLOTS * 24);
    }
}
