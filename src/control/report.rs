//! What the control plane tells the outside: Prometheus metrics, the targets
//! report, the one-line status for systemd.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::json;
use std::time::Instant;

use super::ControlPlane;
use crate::access_log::End;
use crate::admin::{Response, Route};
use crate::config::Algorithm;
use crate::health::Health;
use crate::metrics::{self as m, Exposition, TargetStats};
use crate::snapshot::Snapshot;

impl ControlPlane {
    /// The answer to an admin request.
    pub fn answer(&self, route: Route) -> Response {
        match route {
            Route::Healthz => Response::text(200, "ok\n"),
            Route::Metrics => Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: self.metrics(),
            },
            Route::Console => Response::console(),
            Route::ConsoleData => Response {
                status: 200,
                content_type: "application/json",
                body: self.console_report().to_string() + "\n",
            },
            Route::Targets { pretty } => {
                let report = self.targets_report();
                let body = if pretty {
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                } else {
                    report.to_string()
                };
                Response {
                    status: 200,
                    content_type: "application/json",
                    body: body + "\n",
                }
            }
        }
    }

    fn health_of(&self, group: &str, addr: std::net::SocketAddr) -> Option<&Health> {
        self.core.health().get(group, addr)
    }

    /// Every group with targets has one in service.
    pub fn every_group_serves(&self) -> bool {
        self.shared
            .load()
            .groups
            .iter()
            .all(|g| g.targets.is_empty() || g.targets.iter().any(|t| t.ready))
    }

    /// "targets healthy 2/3, connections 5": for systemd's STATUS=.
    pub fn status_line(&self) -> String {
        let snap = self.shared.load();
        let (mut healthy, mut total, mut active) = (0, 0, 0);
        for g in &snap.groups {
            for t in &g.targets {
                total += 1;
                healthy += usize::from(t.ready);
                active += t.stats.active();
            }
        }
        format!("targets healthy {healthy}/{total}, connections {active}")
    }

    /// `GET /metrics`: Prometheus text, every series from the tables below.
    pub fn metrics(&self) -> String {
        let snap = self.shared.load();
        let mut e = Exposition::default();
        self.listener_series(&mut e);
        e.family(
            m::WORKER_ACCEPTED,
            "counter",
            "Connections accepted by a worker, all listeners.",
        );
        for w in 0..self.worker_count {
            let v = self.worker_stats.get(w).accepted.load(Ordering::Relaxed);
            e.sample(m::WORKER_ACCEPTED, &[("worker", &w.to_string())], v);
        }
        e.family(
            m::WORKER_RING_STARVED,
            "counter",
            "Ring receives that found no provided buffer free and read by system call instead; if it keeps rising, raise [runtime] ring_buffers.",
        );
        for w in 0..self.worker_count {
            let v = self
                .worker_stats
                .get(w)
                .ring_starved
                .load(Ordering::Relaxed);
            e.sample(m::WORKER_RING_STARVED, &[("worker", &w.to_string())], v);
        }
        target_series(&mut e, &snap);
        e.family(
            m::TARGETS_RELOADS,
            "counter",
            "Targets file and config reloads, by result.",
        );
        e.sample(m::TARGETS_RELOADS, &[("result", "ok")], self.reloads);
        e.sample(
            m::TARGETS_RELOADS,
            &[("result", "failed")],
            self.reload_errors,
        );
        e.family(
            m::MAGLEV_SLOTS_MOVED,
            "gauge",
            "Maglev table slots that changed target in the group's last rebuild.",
        );
        for g in &self.config().groups {
            if matches!(g.algorithm, Algorithm::Maglev(_)) {
                let moved = self.core.tables().moved.get(&g.name).copied().unwrap_or(0);
                e.sample(m::MAGLEV_SLOTS_MOVED, &[("group", &g.name)], moved);
            }
        }
        e.family(
            m::ACCESS_LOG_DROPPED,
            "counter",
            "Connection log lines dropped: the writer could not keep up, or could not write.",
        );
        e.sample(
            m::ACCESS_LOG_DROPPED,
            &[],
            self.access_log_dropped.load(Ordering::Relaxed),
        );
        e.family(
            m::TAKEOVER_REFUSED,
            "counter",
            "Takeover requests refused because the peer ran as another user than ringlb's (or root).",
        );
        e.sample(
            m::TAKEOVER_REFUSED,
            &[],
            self.takeover_refused.load(Ordering::Relaxed),
        );
        self.discovery_series(&mut e);
        e.family(
            m::BUILD_INFO,
            "gauge",
            "Always 1; labels say which ringlb this is.",
        );
        e.sample(m::BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1);
        e.finish()
    }

    /// The names targets files list: lookups by result, targets in
    /// service, and whether the last good answer stands in for a failing
    /// lookup.
    fn discovery_series(&self, e: &mut Exposition) {
        let queries = self.answers.queries();
        let known: Vec<(
            String,
            &crate::discovery::State,
            crate::discovery::Lookups,
            usize,
        )> = queries
            .iter()
            .filter_map(|q| {
                let (state, lookups) = self.answers.state(q)?;
                Some((q.to_string(), state, lookups, self.answers.targets(q).len()))
            })
            .collect();
        e.family(
            m::DISCOVERY_LOOKUPS,
            "counter",
            "Lookups of a name a targets file lists, by result: found (targets), gone (NXDOMAIN or no records: its targets drain), failed (timeout, SERVFAIL, unreachable: its last answer is kept).",
        );
        for (source, _, l, _) in &known {
            for (result, n) in [("found", l.found), ("gone", l.gone), ("failed", l.failed)] {
                e.sample(
                    m::DISCOVERY_LOOKUPS,
                    &[("source", source), ("result", result)],
                    n,
                );
            }
        }
        e.family(
            m::DISCOVERY_TARGETS,
            "gauge",
            "Targets a name gives now (its last good answer).",
        );
        for (source, _, _, n) in &known {
            e.sample(m::DISCOVERY_TARGETS, &[("source", source)], *n as u64);
        }
        e.family(
            m::DISCOVERY_FAILING,
            "gauge",
            "1 while a name's lookups fail and its last good answer stands in.",
        );
        for (source, state, _, _) in &known {
            let failing = matches!(state, crate::discovery::State::Failing(_));
            e.sample(
                m::DISCOVERY_FAILING,
                &[("source", source)],
                u64::from(failing),
            );
        }
    }

    /// Per-listener series, listeners by name.
    fn listener_series(&self, e: &mut Exposition) {
        let listeners = self.listeners.by_name();
        for (name, kind, help, label, field) in PER_LISTENER {
            if !kind.is_empty() {
                e.family(name, kind, help);
            }
            for (n, b) in &listeners {
                let v = b.stats.slots.sum(field);
                match label {
                    None => e.sample(name, &[("listener", n)], v),
                    Some(l) => e.sample(name, &[("listener", n), l], v),
                }
            }
        }
        e.family(
            m::CONNECTIONS_CLOSED,
            "counter",
            "Connections ended, by how they ended (the connection log's end= words).",
        );
        for (n, b) in &listeners {
            for end in End::ALL {
                let v = b.stats.slots.sum(|s| &s.closed[end.index()]);
                e.sample(
                    m::CONNECTIONS_CLOSED,
                    &[("listener", n), ("reason", end.word())],
                    v,
                );
            }
        }
        e.family(
            m::CLIENT_TABLE_FULL,
            "counter",
            "Clients let in uncounted by per-client limits because the listener's client table had no slot for them (fail open).",
        );
        for (n, b) in &listeners {
            let v = b
                .stats
                .clients
                .get()
                .map_or(0, |t| t.full.load(Ordering::Relaxed));
            e.sample(m::CLIENT_TABLE_FULL, &[("listener", n)], v);
        }
    }

    /// `GET /console.json`: what the console page shows: the targets report,
    /// with each listener and charted target's series (the last 15 minutes,
    /// a point every 5 s: connections/s, bytes/s), and the latest events.
    pub fn console_report(&self) -> serde_json::Value {
        let unix_ms = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64)
        };
        let series = |s: Option<&super::history::Series>| -> serde_json::Value {
            s.map_or(json!([]), |s| json!(s.points.iter().collect::<Vec<_>>()))
        };
        let mut report = self.targets_report();
        for g in report["groups"].as_array_mut().into_iter().flatten() {
            let name = g["name"].as_str().unwrap_or_default().to_string();
            for t in g["targets"].as_array_mut().into_iter().flatten() {
                let addr = t["address"].as_str().and_then(|a| a.parse().ok());
                let s = addr.and_then(|a| self.history.target(&name, a));
                t["series"] = series(s);
            }
        }
        let snap = self.shared.load();
        let listeners: Vec<serde_json::Value> = self
            .listeners
            .by_name()
            .into_iter()
            .map(|(name, b)| {
                let group = snap
                    .listeners
                    .get(&b.id)
                    .and_then(|v| snap.groups.get(v.group))
                    .map(|g| g.name.to_string());
                json!({
                    "name": name,
                    "address": b.addr.to_string(),
                    "target_group": group,
                    "active_connections": b.stats.slots.sum(|s| &s.active),
                    "accepted": b.stats.slots.sum(|s| &s.accepted),
                    "series": series(self.history.listener(name)),
                })
            })
            .collect();
        let events: Vec<serde_json::Value> = self
            .recent_events()
            .map(|(at, e)| json!({"at_ms": unix_ms(*at), "level": e.level(), "text": e.text()}))
            .collect();
        json!({
            "epoch": report["epoch"],
            "now_ms": unix_ms(std::time::SystemTime::now()),
            "started_ms": unix_ms(self.started),
            "version": env!("CARGO_PKG_VERSION"),
            "sample_seconds": super::history::SAMPLE_EVERY.as_secs(),
            "points": super::history::POINTS,
            "listeners": listeners,
            "groups": report["groups"].take(),
            "events": events,
        })
    }

    /// The names group `g`'s file lists: where each stands.
    fn names_report(&self, g: usize) -> Vec<serde_json::Value> {
        let Some(w) = self.watches.get(g) else {
            return Vec::new();
        };
        w.applied()
            .names
            .iter()
            .map(|n| {
                let (state, error) = match self.answers.state(&n.query) {
                    Some((s, _)) => match s {
                        crate::discovery::State::Gone(why) => (s.word(), Some(why.clone())),
                        crate::discovery::State::Failing(e) => (s.word(), Some(e.clone())),
                        _ => (s.word(), None),
                    },
                    None => ("waiting", None),
                };
                json!({
                    "source": n.query.to_string(),
                    "line": n.line,
                    "state": state,
                    "error": error,
                    "targets": self.answers.targets(&n.query).len(),
                })
            })
            .collect()
    }

    /// `GET /targets`: the JSON shape docs/operating.md documents.
    pub fn targets_report(&self) -> serde_json::Value {
        let snap = self.shared.load();
        let now = Instant::now();
        let draining = |group: &str| -> Vec<serde_json::Value> {
            snap.draining
                .iter()
                .filter(|d| &*d.group == group)
                .map(|d| {
                    json!({
                        "address": d.addr.to_string(),
                        "source": null,
                        "weight": d.weight,
                        "health": "draining",
                        "reason": "deregistration in progress",
                        "ready": false,
                        "draining": true,
                        "drain_seconds_left": d.deadline.saturating_duration_since(now).as_secs_f64(),
                        "slow_start_seconds_left": null,
                        "active_connections": d.stats.active(),
                    })
                })
                .collect()
        };
        let mut groups: Vec<serde_json::Value> = snap
            .groups
            .iter()
            .zip(&self.config().groups)
            .enumerate()
            .map(|(i, (g, cfg))| {
                let origins = self.origins.get(i);
                let mut targets: Vec<serde_json::Value> = g
                    .targets
                    .iter()
                    .map(|t| {
                        let h = self.health_of(&g.name, t.addr);
                        let source = origins
                            .and_then(|o| o.get(&t.addr))
                            .map_or_else(|| "file".to_string(), |q| q.to_string());
                        json!({
                            "address": t.addr.to_string(),
                            "source": source,
                            "weight": t.weight,
                            "health": h.map_or("initial".to_string(), |h| h.state.to_string()),
                            "reason": h.map_or(String::new(), |h| h.reason.clone()),
                            "ready": t.ready,
                            "draining": false,
                            "drain_seconds_left": null,
                            "slow_start_seconds_left": t.slow_start_until
                                .map(|until| until.saturating_duration_since(now).as_secs_f64()),
                            "active_connections": t.stats.active(),
                        })
                    })
                    .collect();
                targets.extend(draining(&g.name));
                let hash_key = match cfg.algorithm {
                    Algorithm::Maglev(key) => json!(key.name()),
                    _ => serde_json::Value::Null,
                };
                json!({
                    "name": &*g.name,
                    "removed": false,
                    "algorithm": cfg.algorithm_name,
                    "hash_key": hash_key,
                    "fail_open": g.fail_open,
                    "targets": targets,
                    "names": self.names_report(i),
                })
            })
            .collect();
        // Groups a SIGHUP removed whose targets still drain.
        let mut gone: Vec<&str> = snap
            .draining
            .iter()
            .map(|d| &*d.group)
            .filter(|name| !snap.groups.iter().any(|g| &*g.name == *name))
            .collect();
        gone.sort_unstable();
        gone.dedup();
        for name in gone {
            groups.push(json!({
                "name": name,
                "removed": true,
                "algorithm": null,
                "hash_key": null,
                "fail_open": false,
                "targets": draining(name),
                "names": [],
            }));
        }
        json!({ "epoch": snap.epoch, "groups": groups })
    }
}

type ListenerField = fn(&m::ListenerSlot) -> &AtomicU64;

/// One per-listener series: (metric, kind, help, extra label, counter).
type ListenerSeries = (
    &'static str,
    &'static str,
    &'static str,
    Option<(&'static str, &'static str)>,
    ListenerField,
);

/// Per-listener series: (metric, kind, help, extra label, counter). A row
/// with no kind adds samples to the family of the row above.
const PER_LISTENER: [ListenerSeries; 10] = [
    (
        m::LISTENER_ACCEPTED,
        "counter",
        "Connections accepted by a listener.",
        None,
        |s| &s.accepted,
    ),
    (
        m::LISTENER_ACTIVE,
        "gauge",
        "Connections of a listener open now.",
        None,
        |s| &s.active,
    ),
    (
        m::LISTENER_REFUSED,
        "counter",
        "Connections closed without being proxied, by reason.",
        Some(("reason", "no_target")),
        |s| &s.refused_no_target,
    ),
    (
        m::LISTENER_REFUSED,
        "",
        "",
        Some(("reason", "not_allowed")),
        |s| &s.refused_not_allowed,
    ),
    (
        m::LISTENER_REFUSED,
        "",
        "",
        Some(("reason", "max_connections")),
        |s| &s.refused_limit,
    ),
    (
        m::LISTENER_REFUSED,
        "",
        "",
        Some(("reason", "client_limit")),
        |s| &s.closed[End::ClientLimit.index()],
    ),
    (
        m::LISTENER_REFUSED,
        "",
        "",
        Some(("reason", "client_rate")),
        |s| &s.closed[End::ClientRate.index()],
    ),
    (
        m::LISTENER_REFUSED,
        "",
        "",
        Some(("reason", "local_resources")),
        |s| &s.refused_local,
    ),
    (
        m::LISTENER_RESETS,
        "counter",
        "Connections ended by an error (a reset, mostly) on one side, passed on to the other side as a reset.",
        Some(("side", "client")),
        |s| &s.reset_by_client,
    ),
    (m::LISTENER_RESETS, "", "", Some(("side", "target")), |s| {
        &s.reset_by_target
    }),
];

/// One target as the per-target series see it: listed in its group, or
/// draining after its removal.
struct TargetRow<'a> {
    group: &'a str,
    addr: String,
    stats: &'a TargetStats,
    ready: bool,
    draining: bool,
}

type TargetValue = fn(&TargetRow) -> u64;

/// Per-target series: (metric, kind, help, whether draining targets have
/// it, value).
const PER_TARGET: [(&str, &str, &str, bool, TargetValue); 7] = [
    (
        m::TARGET_ACTIVE,
        "gauge",
        "Connections to a target open now, all workers.",
        true,
        |t| t.stats.active(),
    ),
    (
        m::TARGET_CONNECTIONS,
        "counter",
        "Connections proxied to a target.",
        false,
        |t| t.stats.slots.sum(|s| &s.connections),
    ),
    (
        m::TARGET_CONNECT_FAILURES,
        "counter",
        "Failed connects to a target.",
        false,
        |t| t.stats.slots.sum(|s| &s.connect_failures),
    ),
    (
        m::TARGET_BYTES_SENT,
        "counter",
        "Bytes sent to a target (from clients).",
        false,
        |t| t.stats.slots.sum(|s| &s.bytes_sent),
    ),
    (
        m::TARGET_BYTES_RECEIVED,
        "counter",
        "Bytes received from a target (to clients).",
        false,
        |t| t.stats.slots.sum(|s| &s.bytes_received),
    ),
    (
        m::TARGET_HEALTHY,
        "gauge",
        "1 if the target passes its health checks.",
        false,
        |t| u64::from(t.ready),
    ),
    (
        m::TARGET_DRAINING,
        "gauge",
        "1 if the target was removed and its connections are draining.",
        true,
        |t| u64::from(t.draining),
    ),
];

/// Every per-target series: listed targets in group order, then draining ones.
fn target_series(e: &mut Exposition, snap: &Snapshot) {
    let listed = snap.groups.iter().flat_map(|g| {
        g.targets.iter().map(move |t| TargetRow {
            group: &g.name,
            addr: t.addr.to_string(),
            stats: &t.stats,
            ready: t.ready,
            draining: false,
        })
    });
    let draining = snap.draining.iter().map(|d| TargetRow {
        group: &d.group,
        addr: d.addr.to_string(),
        stats: &d.stats,
        ready: false,
        draining: true,
    });
    let rows: Vec<TargetRow> = listed.chain(draining).collect();
    for (name, kind, help, with_draining, value) in PER_TARGET {
        e.family(name, kind, help);
        for t in rows.iter().filter(|t| with_draining || !t.draining) {
            e.sample(name, &[("group", t.group), ("target", &t.addr)], value(t));
        }
    }
}
