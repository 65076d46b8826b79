//! Running the probes: one task per (group, target), on a thread and a
//! runtime of their own ("ringlb-probes"), so a storm of probes (25,000
//! targets appearing at once) never makes the control loop, the admin
//! endpoint or a signal wait behind it; results come back on a channel. A target is probed at once when it appears, then at a fixed phase
//! within each interval derived from its address, so 50 targets sharing an
//! interval are spread across it instead of all probed at the same instant.
//! At most [`in_flight_limit`] probes hold a socket at once: 25,000 targets
//! appearing together queue for their first probe instead of taking every
//! file descriptor the process has.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::probe;
use crate::config::HealthCheckConfig;
use crate::oserror::Shortage;

/// One probe's outcome, sent to the control plane.
#[derive(Debug)]
pub struct ProbeResult {
    pub group: Arc<str>,
    pub addr: SocketAddr,
    /// Which probe task sent it; results of a replaced task are ignored.
    pub generation: u64,
    pub outcome: Result<String, String>,
}

struct Running {
    generation: u64,
    task: AbortHandle,
}

/// A group's probes as last synced: its settings, its targets in order, and
/// the task probing each.
struct GroupProbes {
    config: Arc<HealthCheckConfig>,
    addrs: Vec<SocketAddr>,
    running: HashMap<SocketAddr, Running>,
}

/// The probes a group should have: its settings and its targets.
#[derive(Debug, Clone, PartialEq)]
pub struct Wanted {
    pub group: Arc<str>,
    pub config: Arc<HealthCheckConfig>,
    pub addrs: Vec<SocketAddr>,
}

pub struct Prober {
    groups: HashMap<Arc<str>, GroupProbes>,
    results: mpsc::UnboundedSender<ProbeResult>,
    next_generation: u64,
    /// Probes not made for lack of local resources, logged once an episode.
    shortage: Arc<Mutex<Shortage>>,
    /// Permits to hold a probe's socket.
    in_flight: Arc<Semaphore>,
    /// The probes' runtime, and the switch that ends its thread.
    runtime: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl Prober {
    /// A prober with its thread started, and the receiver of its results.
    pub fn new() -> std::io::Result<(Prober, mpsc::UnboundedReceiver<ProbeResult>)> {
        let (tx, rx) = mpsc::unbounded_channel();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("ringlb-probes".into())
            .spawn(move || {
                // Until the prober is dropped; its tasks are aborted then.
                let _dropped_or_stopped = runtime.block_on(stopped);
            })?;
        let prober = Prober {
            groups: HashMap::new(),
            results: tx,
            next_generation: 1,
            shortage: Arc::default(),
            in_flight: Arc::new(Semaphore::new(in_flight_limit())),
            runtime: handle,
            _stop: stop,
        };
        Ok((prober, rx))
    }

    /// The generation of the probe task now responsible for (group, addr).
    pub fn generation(&self, group: &str, addr: SocketAddr) -> Option<u64> {
        Some(self.groups.get(group)?.running.get(&addr)?.generation)
    }

    /// Makes the running probes exactly `wanted`: starts new ones (probing at
    /// once), stops gone ones, restarts a group's whose settings changed. A
    /// group whose settings and targets are as they were costs one
    /// comparison of its list (a SIGHUP with 100,000 unchanged targets).
    pub fn sync(&mut self, wanted: &[Wanted]) {
        self.groups.retain(|name, g| {
            let stays = wanted.iter().any(|w| w.group == *name);
            if !stays {
                g.running.values().for_each(|r| r.task.abort());
            }
            stays
        });
        for w in wanted {
            let g = self
                .groups
                .entry(w.group.clone())
                .or_insert_with(|| GroupProbes {
                    config: w.config.clone(),
                    addrs: Vec::new(),
                    running: HashMap::new(),
                });
            if g.config == w.config && g.addrs == w.addrs {
                continue;
            }
            if g.config != w.config {
                g.running.drain().for_each(|(_, r)| r.task.abort());
                g.config = w.config.clone();
            }
            let keep: std::collections::HashSet<SocketAddr> = w.addrs.iter().copied().collect();
            g.running.retain(|a, r| {
                let stays = keep.contains(a);
                if !stays {
                    r.task.abort();
                }
                stays
            });
            for &addr in &w.addrs {
                if g.running.contains_key(&addr) {
                    continue;
                }
                let generation = self.next_generation;
                self.next_generation += 1;
                let task = self.runtime.spawn(probe_loop(
                    Probing {
                        group: w.group.clone(),
                        addr,
                        config: w.config.clone(),
                        generation,
                    },
                    Shared {
                        results: self.results.clone(),
                        shortage: self.shortage.clone(),
                        in_flight: self.in_flight.clone(),
                    },
                ));
                let task = task.abort_handle();
                g.running.insert(addr, Running { generation, task });
            }
            g.addrs.clone_from(&w.addrs);
        }
    }
}

impl Drop for Prober {
    fn drop(&mut self) {
        for g in self.groups.values() {
            g.running.values().for_each(|r| r.task.abort());
        }
    }
}

/// What one probe task probes, and which generation of task it is.
struct Probing {
    group: Arc<str>,
    addr: SocketAddr,
    config: Arc<HealthCheckConfig>,
    generation: u64,
}

/// What every probe task shares.
struct Shared {
    results: mpsc::UnboundedSender<ProbeResult>,
    shortage: Arc<Mutex<Shortage>>,
    in_flight: Arc<Semaphore>,
}

async fn probe_loop(p: Probing, shared: Shared) {
    let Probing {
        group,
        addr,
        config,
        generation,
    } = p;
    let Shared {
        results,
        shortage,
        in_flight,
    } = shared;
    let phase = phase(addr, config.interval);
    loop {
        let Ok(permit) = in_flight.acquire().await else {
            return; // closed: the prober is gone
        };
        // Boxed: a probe in flight holds its socket and buffers (2.4 KB);
        // a probe task waiting for its next turn holds a few hundred bytes.
        let outcome = Box::pin(probe::check(&config, addr)).await;
        drop(permit);
        tracing::debug!(%group, target = %addr, generation, ?outcome, "probe done");
        let outcome = match outcome {
            probe::Outcome::Pass(reason) => Some(Ok(reason)),
            probe::Outcome::Fail(reason) => Some(Err(reason)),
            probe::Outcome::Inconclusive(reason) => {
                let mut s = shortage.lock().unwrap_or_else(|p| p.into_inner());
                if s.struck(std::time::Instant::now(), 1) {
                    tracing::warn!(%group, target = %addr, %reason, "probe not made for lack of local resources; not counted (said once until they are back)");
                }
                None
            }
        };
        if outcome.is_some() {
            let mut s = shortage.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(ended) = s.went_well(std::time::Instant::now()) {
                tracing::info!(probes_not_made = ended.count, lasted = ?ended.lasted, "probes have local resources again");
            }
        }
        if let Some(outcome) = outcome {
            let result = ProbeResult {
                group: group.clone(),
                addr,
                generation,
                outcome,
            };
            if results.send(result).is_err() {
                return; // the control plane is gone
            }
        }
        tokio::time::sleep_until(next_slot(Instant::now(), phase, config.interval)).await;
    }
}

/// How many probes may hold a socket at once: a quarter of the open-files
/// limit (workers need the rest for clients and targets), between 16 and
/// 1,024.
pub fn in_flight_limit() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        lim.rlim_cur
    } else {
        1024
    };
    (soft / 4).clamp(16, 1024) as usize
}

/// Where in each interval this target is probed.
pub fn phase(addr: SocketAddr, interval: Duration) -> Duration {
    let mut h = crc32fast::Hasher::new();
    h.update(addr.to_string().as_bytes());
    let nanos = interval.as_nanos().max(1);
    Duration::from_nanos((u128::from(h.finalize()) * nanos / (u128::from(u32::MAX) + 1)) as u64)
}

/// The first instant after `now` that sits at `phase` within an interval
/// grid shared by every probe of the process.
pub fn next_slot(now: Instant, phase: Duration, interval: Duration) -> Instant {
    static ANCHOR: OnceLock<Instant> = OnceLock::new();
    let anchor = *ANCHOR.get_or_init(Instant::now);
    let period = interval.as_nanos().max(1);
    let since = now.saturating_duration_since(anchor).as_nanos();
    let base = since - since % period;
    let mut slot = base + phase.as_nanos();
    if slot <= since {
        slot += period;
    }
    anchor + Duration::from_nanos(slot as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifty_targets_spread_over_the_interval() {
        let interval = Duration::from_secs(10);
        let mut phases: Vec<Duration> = (0..50u16)
            .map(|i| phase(SocketAddr::from(([10, 0, 0, 1], 6400 + i)), interval))
            .collect();
        phases.sort();
        // Ten one-second buckets: none may hold more than a third of them.
        let mut buckets = [0usize; 10];
        for p in &phases {
            assert!(*p < interval);
            buckets[p.as_secs() as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| b <= 16), "{buckets:?}");
        assert!(
            buckets.iter().filter(|&&b| b > 0).count() >= 7,
            "{buckets:?}"
        );
    }

    #[test]
    fn the_next_slot_is_within_one_interval_and_at_the_phase() {
        let interval = Duration::from_millis(1000);
        let phase = Duration::from_millis(300);
        let now = Instant::now();
        let a = next_slot(now, phase, interval);
        assert!(a > now && a <= now + interval);
        let b = next_slot(a, phase, interval);
        assert_eq!(b - a, interval);
    }
}

#[cfg(test)]
mod size_tests {
    use super::*;

    /// 100,000 targets have 100,000 probe tasks: what one holds between
    /// probes is held 100,000 times.
    #[test]
    fn a_waiting_probe_task_stays_small() {
        let (tx, _rx) = mpsc::unbounded_channel();
        let cfg = Arc::new(crate::config::HealthCheckConfig {
            protocol: crate::config::HealthProtocol::Http,
            port: None,
            path: "/".into(),
            matcher: vec![(200, 399)],
            interval: Duration::from_secs(10),
            timeout: Duration::from_secs(5),
            healthy_threshold: 3,
            unhealthy_threshold: 3,
            proxy_protocol: false,
        });
        let fut = probe_loop(
            Probing {
                group: "g".into(),
                addr: "127.0.0.1:1".parse().unwrap(),
                config: cfg.clone(),
                generation: 1,
            },
            Shared {
                results: tx,
                shortage: Arc::default(),
                in_flight: Arc::new(Semaphore::new(1)),
            },
        );
        let size = std::mem::size_of_val(&fut);
        println!("probe_loop future: {size} bytes");
        assert!(
            size <= 512,
            "every target's probe task holds {size} bytes between probes"
        );
    }
}
