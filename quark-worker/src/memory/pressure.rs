//! From memory readings to a pressure level: a smoothed reading, thresholds on the limit, and
//! hysteresis, so that a worker hovering at a threshold does not flap between two levels.

use std::time::Duration;

use quark_history::Pressure;

/// The pressure thresholds, as fractions of the memory limit. A level is entered as soon as its
/// threshold is reached, and left only once memory falls `hysteresis` below it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Stop admitting new warm state and hand affinity away (default 0.70).
    pub warning: f64,
    /// Evict warm state (default 0.85).
    pub critical: f64,
    /// Claim nothing until memory is back under warning, and shed warm state (default 0.95).
    pub reject: f64,
    /// How far below a threshold memory must fall to leave its level (default 0.05).
    pub hysteresis: f64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            warning: 0.70,
            critical: 0.85,
            reject: 0.95,
            hysteresis: 0.05,
        }
    }
}

impl Thresholds {
    /// Checks that `0 < warning < critical < reject <= 1` and `0 <= hysteresis < warning`.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let Thresholds {
            warning,
            critical,
            reject,
            hysteresis,
        } = *self;
        if [warning, critical, reject, hysteresis]
            .iter()
            .any(|f| !f.is_finite())
        {
            return Err(format!("memory thresholds must be numbers: {self:?}"));
        }
        if !(0.0 < warning && warning < critical && critical < reject && reject <= 1.0) {
            return Err(format!(
                "memory thresholds out of order: need 0 < warning < critical < reject <= 1 \
                 (fractions of the limit), got warning {warning}, critical {critical}, \
                 reject {reject}"
            ));
        }
        if !(0.0..warning).contains(&hysteresis) {
            return Err(format!(
                "memory hysteresis {hysteresis} must be at least 0 and below the warning \
                 threshold {warning}"
            ));
        }
        Ok(())
    }

    fn threshold(&self, level: Pressure) -> f64 {
        match level {
            Pressure::Normal => f64::NEG_INFINITY,
            Pressure::Warning => self.warning,
            Pressure::Critical => self.critical,
            Pressure::Reject => self.reject,
        }
    }

    /// The level for memory at `fraction` of the limit, coming from `current`: up at once to the
    /// highest threshold reached; down only to the highest level whose threshold, less the
    /// hysteresis, memory is still at.
    pub(crate) fn level(&self, current: Pressure, fraction: f64) -> Pressure {
        let reached = Pressure::ALL
            .into_iter()
            .rev()
            .find(|l| fraction >= self.threshold(*l))
            .unwrap_or(Pressure::Normal);
        if reached >= current {
            return reached;
        }
        Pressure::ALL
            .into_iter()
            .rev()
            .filter(|l| *l <= current)
            .find(|l| fraction >= self.threshold(*l) - self.hysteresis)
            .unwrap_or(Pressure::Normal)
    }
}

/// An exponentially weighted moving average of readings taken at irregular intervals, with
/// time constant `tau`: a reading `tau` old weighs `1/e` of a fresh one.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Smoothed {
    tau: Duration,
    value: Option<f64>,
}

impl Smoothed {
    pub(crate) fn new(tau: Duration) -> Self {
        Smoothed { tau, value: None }
    }

    /// Takes in `reading`, made `elapsed` after the last one; returns the average.
    pub(crate) fn observe(&mut self, reading: f64, elapsed: Duration) -> f64 {
        let value = match self.value {
            None => reading,
            Some(_) if self.tau.is_zero() => reading,
            Some(v) => {
                let weight = 1.0 - (-elapsed.as_secs_f64() / self.tau.as_secs_f64()).exp();
                v + (reading - v) * weight
            }
        };
        self.value = Some(value);
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn it_refuses_thresholds_out_of_order_or_out_of_range() {
        let ok = Thresholds::default();
        assert!(ok.validate().is_ok());
        for bad in [
            Thresholds {
                critical: 0.6,
                ..ok
            },
            Thresholds { reject: 1.2, ..ok },
            Thresholds { warning: 0.0, ..ok },
            Thresholds {
                hysteresis: 0.8,
                ..ok
            },
            Thresholds {
                hysteresis: -0.1,
                ..ok
            },
            Thresholds {
                warning: f64::NAN,
                ..ok
            },
        ] {
            let message = bad.validate().unwrap_err();
            assert!(message.contains("memory"), "{message}");
        }
        let message = Thresholds {
            critical: 0.6,
            ..ok
        }
        .validate()
        .unwrap_err();
        assert!(message.contains("warning 0.7, critical 0.6"), "{message}");
    }

    #[test]
    fn it_climbs_at_once_and_comes_down_only_past_the_hysteresis() {
        let t = Thresholds::default();
        use Pressure::*;
        let path = [
            (0.50, Normal),
            (0.70, Warning),
            (0.66, Warning), // within the hysteresis of warning
            (0.64, Normal),
            (0.97, Reject), // straight to the top
            (0.91, Reject),
            (0.89, Critical), // under reject less 0.05, still above critical
            (0.81, Critical),
            (0.79, Warning),
            (0.86, Critical),
            (0.10, Normal),
        ];
        let mut level = Normal;
        for (fraction, expected) in path {
            level = t.level(level, fraction);
            assert_eq!(level, expected, "at {fraction}");
        }
    }

    #[test]
    fn smoothing_weighs_a_reading_by_its_age() {
        let mut s = Smoothed::new(Duration::from_secs(1));
        assert_eq!(s.observe(100.0, Duration::ZERO), 100.0);
        // One time constant later, a step to 200 has gone 1 - 1/e of the way.
        let v = s.observe(200.0, Duration::from_secs(1));
        assert!(
            (v - (200.0 - 100.0 / std::f64::consts::E)).abs() < 1e-9,
            "{v}"
        );
        // Without a time constant, the reading itself.
        let mut raw = Smoothed::new(Duration::ZERO);
        raw.observe(5.0, Duration::ZERO);
        assert_eq!(raw.observe(7.0, Duration::from_millis(1)), 7.0);
    }

    proptest! {
        /// Whatever the readings, the level reached is never below the highest threshold the
        /// reading is at, and a level is never left while memory is within its hysteresis.
        #[test]
        fn levels_respect_thresholds_and_hysteresis(readings in proptest::collection::vec(0.0f64..1.2, 1..60)) {
            let t = Thresholds::default();
            let mut level = Pressure::Normal;
            for f in readings {
                let next = t.level(level, f);
                let reached = Pressure::ALL.into_iter().rev().find(|l| f >= t.threshold(*l)).unwrap();
                prop_assert!(next >= reached);
                if next < level {
                    prop_assert!(f < t.threshold(level) - t.hysteresis);
                }
                if next > level {
                    prop_assert!(f >= t.threshold(next));
                }
                level = next;
            }
        }
    }
}
