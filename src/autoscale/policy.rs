//! Scaling policies as pure functions of what was observed: no I/O, no clock
//! of their own (the caller passes `now`), so every rule is unit-tested.

use std::time::{Duration, Instant};

use super::config::{Metric, Policy};

/// What the policy remembers between periods.
#[derive(Debug, Default, Clone)]
pub struct PolicyState {
    /// Consecutive periods that asked for more / for fewer.
    above: u32,
    below: u32,
    last_out: Option<Instant>,
    last_in: Option<Instant>,
}

/// A decision, with the reason a log line gives.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub desired: u32,
    pub why: String,
}

/// One period's evaluation. `current` counts targets in service or starting;
/// `value` is the metric over the period (None when nothing was measurable,
/// e.g. no target in service yet). Min and max always hold, whatever the
/// metric says.
#[allow(clippy::too_many_arguments)]
pub fn decide(
    policy: &Policy,
    metric: Metric,
    state: &mut PolicyState,
    current: u32,
    value: Option<f64>,
    (min, max): (u32, u32),
    now: Instant,
) -> Decision {
    if current < min {
        return Decision {
            desired: min,
            why: format!("below min {min}"),
        };
    }
    if current > max {
        return Decision {
            desired: max,
            why: format!("above max {max}"),
        };
    }
    let Some(value) = value else {
        state.above = 0;
        state.below = 0;
        return Decision {
            desired: current,
            why: "no figure yet".into(),
        };
    };
    let period = Period {
        state,
        current,
        value,
        shown: metric.show(value),
        min,
        max,
        now,
    };
    match *policy {
        Policy::TargetTracking {
            target,
            scale_out_periods,
            scale_in_periods,
            scale_out_cooldown,
            scale_in_cooldown,
        } => period.track(
            target,
            (scale_out_periods, scale_in_periods),
            (scale_out_cooldown, scale_in_cooldown),
        ),
        Policy::Step {
            scale_out_threshold,
            scale_in_threshold,
            evaluation_periods,
            scale_out_adjustment,
            scale_in_adjustment,
            cooldown,
        } => period.step(
            (scale_out_threshold, scale_in_threshold),
            evaluation_periods,
            (scale_out_adjustment, scale_in_adjustment),
            cooldown,
        ),
    }
}

/// One period's figures, within min and max, with a measured value.
struct Period<'a> {
    state: &'a mut PolicyState,
    current: u32,
    value: f64,
    /// The value as a log line shows it.
    shown: String,
    min: u32,
    max: u32,
    now: Instant,
}

impl Period<'_> {
    fn hold(&self, why: String) -> Decision {
        Decision {
            desired: self.current,
            why,
        }
    }

    /// Whether `cooldown` since `at` is still running.
    fn cooling(&self, at: Option<Instant>, cooldown: Duration) -> bool {
        at.is_some_and(|t| self.now < t + cooldown)
    }

    /// One more period asking to scale out (`up`) or in; the other count
    /// starts over. `Some(n)` while fewer than `periods` in a row have asked.
    fn count(&mut self, up: bool, periods: u32) -> Option<u32> {
        let state = &mut *self.state;
        let (this, other) = if up {
            (&mut state.above, &mut state.below)
        } else {
            (&mut state.below, &mut state.above)
        };
        *other = 0;
        *this += 1;
        (*this < periods).then_some(*this)
    }

    /// Scales to `desired` now: counts start over, the cooldown starts.
    fn scale(self, up: bool, desired: u32, why: String) -> Decision {
        self.state.above = 0;
        self.state.below = 0;
        if up {
            self.state.last_out = Some(self.now);
        } else {
            self.state.last_in = Some(self.now);
        }
        Decision { desired, why }
    }

    /// AWS target tracking: desired = ceil(current x metric / target).
    fn track(
        mut self,
        target: f64,
        (out_periods, in_periods): (u32, u32),
        (out_cooldown, in_cooldown): (Duration, Duration),
    ) -> Decision {
        let current = self.current;
        // With nothing in service (current 0) there is no figure: handled
        // before a Period is made.
        let want = ((f64::from(current) * self.value / target) - 1e-9)
            .ceil()
            .max(0.0);
        let want = (want.min(f64::from(self.max)) as u32).max(self.min);
        if want == current {
            self.state.above = 0;
            self.state.below = 0;
            return self.hold(format!("{} near target {target}", self.shown));
        }
        let up = want > current;
        let (periods, sign, side) = if up {
            (out_periods, ">", "out")
        } else {
            (in_periods, "<", "in")
        };
        let why = format!("{} {sign} target {target}", self.shown);
        if let Some(n) = self.count(up, periods) {
            return self.hold(format!("{why}: {n}/{periods} periods"));
        }
        // Scale-in is the cautious side: after any scaling, wait the
        // scale-in cooldown, and remove one target at a time.
        let cooling = if up {
            self.cooling(self.state.last_out, out_cooldown)
        } else {
            self.cooling(self.state.last_out, in_cooldown)
                || self.cooling(self.state.last_in, in_cooldown)
        };
        if cooling {
            return self.hold(format!("{why}: in scale-{side} cooldown"));
        }
        let desired = if up { want } else { current - 1 };
        self.scale(up, desired, why)
    }

    /// The course's step scaling: thresholds held for some periods move the
    /// count by a fixed step, then one cooldown for both directions.
    fn step(
        mut self,
        (out_threshold, in_threshold): (f64, f64),
        periods: u32,
        (out_step, in_step): (u32, u32),
        cooldown: Duration,
    ) -> Decision {
        let current = self.current;
        let up = if self.value >= out_threshold {
            true
        } else if self.value <= in_threshold {
            false
        } else {
            self.state.above = 0;
            self.state.below = 0;
            return self.hold(format!("{} between thresholds", self.shown));
        };
        let why = if up {
            format!("{} >= {out_threshold}", self.shown)
        } else {
            format!("{} <= {in_threshold}", self.shown)
        };
        if let Some(n) = self.count(up, periods) {
            return self.hold(format!("{why}: {n}/{periods} periods"));
        }
        let in_cooldown = self.cooling(self.state.last_out, cooldown)
            || self.cooling(self.state.last_in, cooldown);
        let at_bound = if up {
            current >= self.max
        } else {
            current <= self.min
        };
        if in_cooldown || at_bound {
            let bound = if up { "max" } else { "min" };
            return self.hold(format!("{why}: in cooldown or at {bound}"));
        }
        let desired = if up {
            (current + out_step).min(self.max)
        } else {
            current.saturating_sub(in_step).max(self.min)
        };
        self.scale(up, desired, why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tracking(out: u32, inn: u32) -> Policy {
        Policy::TargetTracking {
            target: 20.0,
            scale_out_periods: out,
            scale_in_periods: inn,
            scale_out_cooldown: Duration::from_secs(60),
            scale_in_cooldown: Duration::from_secs(300),
        }
    }

    fn step() -> Policy {
        Policy::Step {
            scale_out_threshold: 20.0,
            scale_in_threshold: 10.0,
            evaluation_periods: 2,
            scale_out_adjustment: 1,
            scale_in_adjustment: 1,
            cooldown: Duration::from_secs(120),
        }
    }

    /// Feeds `decide` one period at a time: `at(secs, current, value)`.
    struct Run {
        policy: Policy,
        bounds: (u32, u32),
        state: PolicyState,
        t0: Instant,
    }

    impl Run {
        fn new(policy: Policy, bounds: (u32, u32)) -> Run {
            Run {
                policy,
                bounds,
                state: PolicyState::default(),
                t0: Instant::now(),
            }
        }

        fn at(&mut self, secs: u64, current: u32, value: Option<f64>) -> Decision {
            let now = self.t0 + Duration::from_secs(secs);
            let bounds = self.bounds;
            decide(
                &self.policy,
                Metric::Cpu,
                &mut self.state,
                current,
                value,
                bounds,
                now,
            )
        }
    }

    #[test]
    fn target_tracking_scales_out_in_proportion() {
        let mut r = Run::new(tracking(1, 1), (1, 10));
        let d = r.at(0, 2, Some(41.0));
        assert_eq!(d.desired, 5, "ceil(2 x 41 / 20)");
        assert_eq!(d.why, "cpu 41% > target 20");
        // Within the scale-out cooldown: held.
        let d = r.at(30, 5, Some(80.0));
        assert_eq!(d.desired, 5, "{}", d.why);
        // Clamped to max.
        assert_eq!(r.at(61, 5, Some(80.0)).desired, 10);
    }

    #[test]
    fn target_tracking_scale_in_is_slower_and_one_at_a_time() {
        let mut r = Run::new(tracking(1, 3), (1, 10));
        for i in 0..2 {
            let d = r.at(i, 4, Some(1.0));
            assert_eq!(d.desired, 4, "period {i}: {}", d.why);
        }
        let d = r.at(2, 4, Some(1.0));
        assert_eq!(d.desired, 3, "one at a time, though 1 would do: {}", d.why);
        // The scale-in cooldown holds the next one.
        for i in 3..6 {
            let d = r.at(i, 3, Some(1.0));
            assert_eq!(d.desired, 3, "{}", d.why);
        }
        let d = r.at(303, 3, Some(1.0));
        assert_eq!(d.desired, 2, "{}", d.why);
    }

    #[test]
    fn a_period_near_target_resets_the_count() {
        let mut r = Run::new(tracking(2, 2), (1, 4));
        assert_eq!(r.at(0, 2, Some(30.0)).desired, 2);
        assert_eq!(r.at(0, 2, Some(20.0)).desired, 2);
        assert_eq!(r.at(0, 2, Some(30.0)).desired, 2);
        assert_eq!(r.at(0, 2, Some(30.0)).desired, 3);
    }

    #[test]
    fn step_scaling_is_the_courses_ec2_policy() {
        let mut r = Run::new(step(), (1, 4));
        assert_eq!(r.at(0, 1, Some(25.0)).desired, 1);
        assert_eq!(r.at(120, 1, Some(20.0)).desired, 2, ">= 20 twice");
        // Cooldown 120 s after it, whatever the figure.
        assert_eq!(r.at(180, 2, Some(90.0)).desired, 2);
        assert_eq!(r.at(200, 2, Some(90.0)).desired, 2, "in cooldown");
        assert_eq!(r.at(241, 2, Some(90.0)).desired, 3);
        // Between the thresholds: nothing, and the count restarts.
        assert_eq!(r.at(400, 3, Some(15.0)).desired, 3);
        assert_eq!(r.at(520, 3, Some(10.0)).desired, 3);
        assert_eq!(r.at(640, 3, Some(5.0)).desired, 2, "<= 10 twice");
        // Never below min.
        let mut r = Run::new(step(), (1, 4));
        r.at(0, 1, Some(0.0));
        assert_eq!(r.at(500, 1, Some(0.0)).desired, 1);
    }

    #[test]
    fn min_and_max_hold_without_a_figure() {
        let d = Run::new(tracking(1, 1), (2, 4)).at(0, 0, None);
        assert_eq!((d.desired, d.why.as_str()), (2, "below min 2"));
        let mut r = Run::new(tracking(1, 1), (1, 4));
        assert_eq!(r.at(0, 5, Some(100.0)).desired, 4);
        assert_eq!(r.at(0, 3, None).desired, 3);
    }
}
