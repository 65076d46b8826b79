//! Health: a pure state machine per target (this file), probes that feed it
//! (`probe.rs`), and the `Prober` that runs them on a schedule (`prober.rs`).
//!
//! AWS target-group semantics: a new target is probed at once and gets traffic
//! after its first pass; a healthy target goes down after `unhealthy_threshold`
//! consecutive failures; an unhealthy one comes back after `healthy_threshold`
//! consecutive passes. A failed connect from a worker counts as a failed probe.

pub mod probe;
pub mod prober;

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Listed but not yet probed successfully: no traffic (unless the whole
    /// group fails open).
    Initial,
    Healthy,
    Unhealthy,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Initial => "initial",
            State::Healthy => "healthy",
            State::Unhealthy => "unhealthy",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub state: State,
    passes: u32,
    failures: u32,
    /// Why the last check failed (or "ok").
    pub reason: String,
}

/// A change of state, to log once and publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            state: State::Initial,
            passes: 0,
            failures: 0,
            reason: "not yet checked".into(),
        }
    }
}

impl Health {
    pub fn is_healthy(&self) -> bool {
        self.state == State::Healthy
    }

    /// Records one check (active probe or passive observation).
    pub fn record(
        &mut self,
        pass: bool,
        reason: &str,
        healthy_threshold: u32,
        unhealthy_threshold: u32,
    ) -> Option<Transition> {
        self.reason = reason.to_string();
        let from = self.state;
        if pass {
            self.failures = 0;
            self.passes = self.passes.saturating_add(1);
            let needed = if from == State::Initial {
                1
            } else {
                healthy_threshold
            };
            if from != State::Healthy && self.passes >= needed {
                self.state = State::Healthy;
            }
        } else {
            self.passes = 0;
            self.failures = self.failures.saturating_add(1);
            if from != State::Unhealthy && self.failures >= unhealthy_threshold {
                self.state = State::Unhealthy;
            }
        }
        (self.state != from).then_some(Transition {
            from,
            to: self.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(h: &mut Health, checks: &str) -> Vec<(usize, State)> {
        checks
            .chars()
            .enumerate()
            .filter_map(|(i, c)| h.record(c == '+', "", 2, 3).map(|t| (i + 1, t.to)))
            .collect()
    }

    #[test]
    fn a_new_target_is_healthy_after_its_first_pass() {
        let mut h = Health::default();
        assert_eq!(run(&mut h, "+"), vec![(1, State::Healthy)]);
    }

    #[test]
    fn transitions_happen_after_exactly_the_thresholds() {
        let mut h = Health::default();
        // Up at once; 3 failures in a row to go down (a pass resets the count);
        // 2 passes in a row to come back (a failure resets that count).
        assert_eq!(
            run(&mut h, "+--+---+-++"),
            vec![
                (1, State::Healthy),
                (7, State::Unhealthy),
                (11, State::Healthy)
            ]
        );
    }

    #[test]
    fn a_new_target_that_fails_goes_unhealthy_then_needs_the_full_threshold() {
        let mut h = Health::default();
        assert_eq!(run(&mut h, "---+"), vec![(3, State::Unhealthy)]);
        assert_eq!(run(&mut h, "+"), vec![(1, State::Healthy)]);
    }
}
