//! Counters, the per-target stats workers share, and the Prometheus text
//! format (`control/report.rs` lists the series).
//!
//! Every counter lives in a per-worker slot (one cache line each) written only
//! by that worker, with a plain load and store; a scrape sums the slots.
//! Metric names are the constants below.
//!
//! What every worker writes, per connection: a target's `active` count
//! ([`TargetStats`]; least connections and `max_connections_per_target`
//! need it exact across workers) and a listener's `open` count
//! ([`ListenerStats`], for `max_connections`), each an atomic add when a
//! connection opens and one when it closes (a compare-and-swap loop when a
//! limit is set, always for `open`); the group's rotation position in
//! `balancer/` (one add per pick); and the reference counts of the `Arc`s
//! a connection holds while it lives (the snapshot while it is placed, its
//! target's and its listener's stats).

use std::collections::HashMap;
use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub const LISTENER_ACCEPTED: &str = "ringlb_listener_connections_accepted_total";
pub const LISTENER_ACTIVE: &str = "ringlb_listener_connections_active";
pub const LISTENER_REFUSED: &str = "ringlb_listener_connections_refused_total";
pub const LISTENER_RESETS: &str = "ringlb_listener_connections_reset_total";
pub const CONNECTIONS_CLOSED: &str = "ringlb_connections_closed_total";
pub const ACCESS_LOG_DROPPED: &str = "ringlb_access_log_dropped_total";
pub const CLIENT_TABLE_FULL: &str = "ringlb_listener_client_table_full_total";
pub const WORKER_ACCEPTED: &str = "ringlb_worker_connections_accepted_total";
pub const WORKER_RING_STARVED: &str = "ringlb_worker_ring_receives_starved_total";
pub const TARGET_ACTIVE: &str = "ringlb_target_connections_active";
pub const TARGET_CONNECTIONS: &str = "ringlb_target_connections_total";
pub const TARGET_CONNECT_FAILURES: &str = "ringlb_target_connect_failures_total";
pub const TARGET_BYTES_SENT: &str = "ringlb_target_bytes_sent_total";
pub const TARGET_BYTES_RECEIVED: &str = "ringlb_target_bytes_received_total";
pub const TARGET_HEALTHY: &str = "ringlb_target_healthy";
pub const TARGET_DRAINING: &str = "ringlb_target_draining";
pub const TARGETS_RELOADS: &str = "ringlb_targets_reloads_total";
pub const MAGLEV_SLOTS_MOVED: &str = "ringlb_maglev_slots_moved";
pub const TAKEOVER_REFUSED: &str = "ringlb_takeover_refused_total";
pub const BUILD_INFO: &str = "ringlb_build_info";
pub const DISCOVERY_LOOKUPS: &str = "ringlb_discovery_lookups_total";
pub const DISCOVERY_TARGETS: &str = "ringlb_discovery_targets";
pub const DISCOVERY_FAILING: &str = "ringlb_discovery_failing";

/// Adds to a counter that only the calling worker writes.
#[inline]
pub fn bump(c: &AtomicU64, n: u64) {
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Subtracts one from a gauge that only the calling worker writes.
#[inline]
pub fn decrement(c: &AtomicU64) {
    c.store(c.load(Ordering::Relaxed).wrapping_sub(1), Ordering::Relaxed);
}

/// One worker's counters for one listener.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct ListenerSlot {
    pub accepted: AtomicU64,
    /// Accepted minus ended; wraps below zero never (same worker does both).
    pub active: AtomicU64,
    /// Closed because no target could take them.
    pub refused_no_target: AtomicU64,
    /// Closed at once: the client is outside the allow list.
    pub refused_not_allowed: AtomicU64,
    /// Closed at once: the listener is at max_connections.
    pub refused_limit: AtomicU64,
    /// Closed at once: ringlb had no descriptor, memory or local port left
    /// to take the client or reach a target.
    pub refused_local: AtomicU64,
    /// Ended by an error on the client's side (a reset, mostly), passed on
    /// to the target as a reset.
    pub reset_by_client: AtomicU64,
    /// Ended by an error on the target's side, passed on to the client as a
    /// reset.
    pub reset_by_target: AtomicU64,
    /// Connections ended, by how ([`crate::access_log::End::index`]).
    pub closed: [AtomicU64; crate::access_log::End::ALL.len()],
}

/// A listener's counters: per-worker slots, plus the one count every worker
/// shares to enforce `max_connections` across all of them.
#[derive(Debug)]
pub struct ListenerStats {
    pub slots: Slots<ListenerSlot>,
    /// Connections open on this listener, all workers.
    pub open: AtomicU64,
    /// Its clients' counts, made the first time per-client limits apply
    /// (then kept, across SIGHUPs, as long as the listener).
    pub clients: std::sync::OnceLock<crate::client_limits::ClientTable>,
}

impl ListenerStats {
    pub fn new(workers: usize) -> Self {
        ListenerStats {
            slots: Slots::new(workers),
            open: AtomicU64::new(0),
            clients: std::sync::OnceLock::new(),
        }
    }

    /// Counts one more open connection unless that would pass `max` (no
    /// limit: `u64::MAX`); one compare-and-swap loop either way.
    pub fn try_open(&self, max: Option<u64>) -> bool {
        let limit = max.unwrap_or(u64::MAX);
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < limit).then_some(n + 1)
            })
            .is_ok()
    }

    pub fn close_one(&self) {
        self.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One worker's own counters, whatever listener a connection came in on.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerSlot {
    pub accepted: AtomicU64,
    /// Ring receives that found no provided buffer free, as the worker last
    /// published it (once a second).
    pub ring_starved: AtomicU64,
}

/// One worker's counters for one target.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct TargetSlot {
    pub connections: AtomicU64,
    pub connect_failures: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub bytes_received: AtomicU64,
}

/// What all workers know about one target address. Shared with every worker
/// and with every snapshot listing the address (and its drain), so counts
/// survive reloads.
#[derive(Debug)]
pub struct TargetStats {
    /// Connections placed on this target and not yet closed, counted from the
    /// pick so concurrent picks on other cores see it at once. Shared by all
    /// workers: least connections and `max_connections_per_target` need it
    /// exact (one atomic add at the pick and one at the close).
    pub active: AtomicU64,
    /// Everything else, per worker.
    pub slots: Slots<TargetSlot>,
}

impl TargetStats {
    pub fn active(&self) -> u64 {
        self.active.load(Ordering::Relaxed)
    }
}

/// The stats of every target address in use, kept by the control plane.
#[derive(Debug)]
pub struct TargetStatsMap {
    workers: usize,
    by_addr: HashMap<SocketAddr, Arc<TargetStats>>,
}

impl TargetStatsMap {
    pub fn new(workers: usize) -> Self {
        TargetStatsMap {
            workers,
            by_addr: HashMap::new(),
        }
    }

    /// The address's stats, made on first use.
    pub fn get(&mut self, addr: SocketAddr) -> Arc<TargetStats> {
        let workers = self.workers;
        self.by_addr
            .entry(addr)
            .or_insert_with(|| {
                Arc::new(TargetStats {
                    active: AtomicU64::new(0),
                    slots: Slots::new(workers),
                })
            })
            .clone()
    }

    /// Forgets addresses no snapshot, drain or connection refers to any more.
    pub fn prune(&mut self) {
        self.by_addr.retain(|_, s| Arc::strong_count(s) > 1);
    }
}

/// Counts one connection as active on a target while it lives.
#[derive(Debug)]
pub struct ActiveGuard(Arc<TargetStats>);

impl ActiveGuard {
    /// Counts the connection unless the target already has `max`: exact
    /// across workers, unlike a look before the pick.
    pub fn try_new(stats: &Arc<TargetStats>, max: Option<u64>) -> Option<Self> {
        let Some(max) = max else {
            stats.active.fetch_add(1, Ordering::Relaxed);
            return Some(ActiveGuard(stats.clone()));
        };
        stats
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| ActiveGuard(stats.clone()))
    }

    pub fn stats(&self) -> &TargetStats {
        &self.0
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Per-worker slots of `T`.
#[derive(Debug)]
pub struct Slots<T>(Box<[T]>);

impl<T: Default> Slots<T> {
    pub fn new(workers: usize) -> Self {
        Slots((0..workers.max(1)).map(|_| T::default()).collect())
    }
}

impl<T> Slots<T> {
    pub fn get(&self, worker: usize) -> &T {
        &self.0[worker % self.0.len()]
    }

    /// The sum over workers of one counter.
    pub fn sum(&self, field: impl Fn(&T) -> &AtomicU64) -> u64 {
        self.0
            .iter()
            .map(|s| field(s).load(Ordering::Relaxed))
            .fold(0, u64::wrapping_add)
    }
}

/// A Prometheus text exposition being written.
#[derive(Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// Starts a metric family.
    pub fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _infallible = writeln!(self.out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample; label values are escaped.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let v = v
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _infallible = write!(self.out, "{k}=\"{v}\"");
            }
            self.out.push('}');
        }
        let _infallible = writeln!(self.out, " {value}");
    }

    pub fn finish(self) -> String {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_sum_across_workers() {
        let s: Slots<TargetSlot> = Slots::new(3);
        bump(&s.get(0).connections, 2);
        bump(&s.get(2).connections, 5);
        assert_eq!(s.sum(|t| &t.connections), 7);
        assert_eq!(
            std::mem::align_of::<TargetSlot>(),
            64,
            "one cache line per worker"
        );
    }

    #[test]
    fn exposition_escapes_label_values() {
        let mut e = Exposition::default();
        e.family("x_total", "counter", "An x.");
        e.sample("x_total", &[("a", "q\"uo\\te")], 3);
        assert_eq!(
            e.finish(),
            "# HELP x_total An x.\n# TYPE x_total counter\nx_total{a=\"q\\\"uo\\\\te\"} 3\n"
        );
    }
}
