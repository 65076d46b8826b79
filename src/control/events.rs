//! What the control plane did or saw, as values: its pure core returns them,
//! the shell logs each once (these are the log lines operators and tests
//! match on) and keeps the latest for the admin endpoint.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::health::State;
use crate::targets::describe_addrs;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A target's health changed; `epoch` is the snapshot that carries it.
    HealthChanged {
        group: Arc<str>,
        target: SocketAddr,
        from: State,
        to: State,
        reason: String,
        epoch: u64,
    },
    /// The last healthy target of a group went down.
    FailingOpen { group: Arc<str> },
    /// A targets file's new set took effect.
    TargetsReloaded {
        group: Arc<str>,
        count: usize,
        added: Vec<SocketAddr>,
        removed: Vec<SocketAddr>,
        reweighted: Vec<SocketAddr>,
    },
    /// A targets file was refused; the last good set serves on.
    TargetsRejected { group: Arc<str>, error: String },
    /// A targets file became empty (0 bytes) while its group had targets:
    /// applied only if it stays so for `grace`.
    TargetsFileEmptied { group: Arc<str>, grace: Duration },
    /// A group has no targets (its clients are closed).
    NoTargets { warning: String },
    /// A removed target stops getting connections; its open ones may run
    /// for `delay` (0: closed at once).
    DrainStarted {
        group: Arc<str>,
        target: SocketAddr,
        active: u64,
        delay: Duration,
    },
    /// A draining target has no connections left.
    DrainFinished { group: Arc<str>, target: SocketAddr },
    /// A draining target's deregistration delay ran out with connections open.
    DrainExpired {
        group: Arc<str>,
        target: SocketAddr,
        active: u64,
    },
    /// A draining target listed again: back in service with its connections.
    Readded { group: Arc<str>, target: SocketAddr },
    /// A SIGHUP's config took effect.
    ConfigReloaded { epoch: u64, changes: String },
    /// A SIGHUP's config was refused; the running one serves on.
    ConfigRejected { error: String },
    /// A name a targets file lists answered differently, went, or its
    /// lookups began or stopped failing.
    Discovery {
        source: String,
        change: crate::discovery::Change,
    },
    /// A listener closed clients without proxying them, by reason, over the
    /// last `over`.
    Refused {
        listener: String,
        by_reason: Vec<(&'static str, u64)>,
        over: Duration,
    },
}

impl Event {
    /// Logs the event, once, in the words operators and tests know.
    pub fn log(&self) {
        match self {
            Event::HealthChanged {
                group,
                target,
                from,
                to,
                reason,
                epoch,
            } => {
                if *to == State::Healthy {
                    info!(%group, %target, %from, %to, reason, epoch, "health changed")
                } else {
                    warn!(%group, %target, %from, %to, reason, epoch, "health changed")
                }
            }
            Event::FailingOpen { group } => {
                warn!(%group, "no healthy target: failing open, routing to all targets")
            }
            Event::TargetsReloaded {
                group,
                count,
                added,
                removed,
                reweighted,
            } => info!(
                %group,
                count,
                added = %describe_addrs(added),
                removed = %describe_addrs(removed),
                reweighted = %describe_addrs(reweighted),
                "targets reloaded"
            ),
            Event::TargetsRejected { group, error } => {
                error!(%group, %error, "targets file rejected; keeping the last good set")
            }
            Event::TargetsFileEmptied { group, grace } => warn!(
                %group,
                "targets file is empty (0 bytes), as a file being rewritten in place is for a moment: its targets stay until it has been empty for {}s (a file with only a comment applies at once)",
                grace.as_secs()
            ),
            Event::NoTargets { warning } => warn!("{warning}"),
            Event::DrainStarted {
                group,
                target,
                active,
                delay,
            } => {
                if delay.is_zero() {
                    info!(%group, %target, active, "deregistered; deregistration_delay is 0s, closing its connections")
                } else {
                    info!(%group, %target, active, delay = %crate::config::ConfigDuration(*delay), "draining")
                }
            }
            Event::DrainFinished { group, target } => {
                info!(%group, %target, "drain finished")
            }
            Event::DrainExpired {
                group,
                target,
                active,
            } => {
                warn!(%group, %target, active, "drain finished: deregistration_delay over, closing its connections")
            }
            Event::Readded { group, target } => {
                info!(%group, %target, "re-added while draining: back in service")
            }
            Event::ConfigReloaded { epoch, changes } => {
                info!(epoch, %changes, "config reloaded")
            }
            Event::ConfigRejected { error } => {
                error!(%error, "config reload rejected; keeping the running config")
            }
            Event::Discovery { source, change } => {
                use crate::discovery::Change;
                match change {
                    Change::Answered { targets } => info!(
                        %source,
                        count = targets.len(),
                        targets = %crate::targets::describe(targets),
                        "name answered"
                    ),
                    Change::Gone { why, dropped } => warn!(
                        %source,
                        %why,
                        dropped,
                        "name has no records: its targets drain"
                    ),
                    Change::Failing { error, kept } => warn!(
                        %source,
                        %error,
                        kept,
                        "name lookup failed; keeping its last answer until it answers again"
                    ),
                    Change::Recovered => info!(%source, "name answers again, unchanged"),
                }
            }
            Event::Refused { .. } => info!("{}", self.text()),
        }
    }

    /// How bad it is, for the console: "info", "warn" or "error".
    pub fn level(&self) -> &'static str {
        match self {
            Event::HealthChanged { to, .. } if *to == State::Healthy => "info",
            Event::HealthChanged { .. }
            | Event::FailingOpen { .. }
            | Event::TargetsFileEmptied { .. }
            | Event::NoTargets { .. }
            | Event::DrainExpired { .. }
            | Event::Refused { .. }
            | Event::Discovery {
                change:
                    crate::discovery::Change::Gone { .. } | crate::discovery::Change::Failing { .. },
                ..
            } => "warn",
            Event::TargetsRejected { .. } | Event::ConfigRejected { .. } => "error",
            _ => "info",
        }
    }

    /// One sentence for the console's list of events.
    pub fn text(&self) -> String {
        let d = |d: &Duration| crate::config::ConfigDuration(*d).to_string();
        match self {
            Event::HealthChanged {
                group,
                target,
                from,
                to,
                reason,
                ..
            } => format!("{group}: {target} {from} -> {to} ({reason})"),
            Event::FailingOpen { group } => {
                format!("{group}: no healthy target; failing open, routing to all")
            }
            Event::TargetsReloaded {
                group,
                count,
                added,
                removed,
                reweighted,
            } => format!(
                "{group}: targets reloaded, {count} now; added {}, removed {}, reweighted {}",
                describe_addrs(added),
                describe_addrs(removed),
                describe_addrs(reweighted)
            ),
            Event::TargetsRejected { group, error } => {
                format!("{group}: targets file rejected: {error}")
            }
            Event::TargetsFileEmptied { group, grace } => {
                format!("{group}: targets file empty; targets kept for {}", d(grace))
            }
            Event::NoTargets { warning } => warning.clone(),
            Event::DrainStarted {
                group,
                target,
                active,
                delay,
            } => format!(
                "{group}: {target} draining ({active} connections, deregistration_delay {})",
                d(delay)
            ),
            Event::DrainFinished { group, target } => format!("{group}: {target} drained"),
            Event::DrainExpired {
                group,
                target,
                active,
            } => {
                format!("{group}: {target} deregistration_delay over; {active} connections closed")
            }
            Event::Readded { group, target } => {
                format!("{group}: {target} added back while draining; back in service")
            }
            Event::ConfigReloaded { changes, .. } => format!("config reloaded: {changes}"),
            Event::ConfigRejected { error } => format!("config reload rejected: {error}"),
            Event::Discovery { source, change } => {
                use crate::discovery::Change;
                match change {
                    Change::Answered { targets } => format!(
                        "{source} answered {} ({} targets)",
                        crate::targets::describe(targets),
                        targets.len()
                    ),
                    Change::Gone { why, dropped } => {
                        format!("{source}: {why}; its {dropped} targets drain")
                    }
                    Change::Failing { error, kept } => format!(
                        "{source}: lookup failed ({error}); its last answer ({kept} targets) is kept"
                    ),
                    Change::Recovered => format!("{source} answers again, unchanged"),
                }
            }
            Event::Refused {
                listener,
                by_reason,
                over,
            } => {
                let by: Vec<String> = by_reason.iter().map(|(r, n)| format!("{n} {r}")).collect();
                format!(
                    "listener {listener}: refused {} over {}",
                    by.join(", "),
                    d(over)
                )
            }
        }
    }
}
