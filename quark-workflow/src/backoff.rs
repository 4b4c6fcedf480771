//! Exponential backoff with jitter: the one schedule of retries in Quark. An activity's or a job's
//! [`RetryPolicy`](crate::RetryPolicy), a task released after a store or handler error, and an
//! outbox delivery all wait by it.

use std::time::Duration;

/// The delay after failed attempt `attempt` (1-based): `initial * 2^(attempt - 1)`, capped at
/// `max`.
pub fn exponential(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(31);
    initial.saturating_mul(1u32 << exp).min(max)
}

/// `delay` shortened by up to a fifth, by an amount drawn from `salt` (say the task and the time),
/// so that many tasks that failed together do not all come back at the same instant. Never
/// longer than `delay`; the same salt gives the same delay.
pub fn jittered(delay: Duration, salt: u64) -> Duration {
    // splitmix64: a well-spread value from any salt.
    let mut z = salt.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let fifth = delay / 5;
    delay - fifth.mul_f64((z % 10_000) as f64 / 10_000.0)
}

/// The delay after failed attempt `attempt`: [`exponential`], then [`jittered`] by `salt`.
pub fn delay(attempt: u32, initial: Duration, max: Duration, salt: u64) -> Duration {
    jittered(
        exponential(attempt, initial, max),
        salt.wrapping_add(u64::from(attempt)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_doubles_up_to_the_cap() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for (attempt, full) in [(0, 1), (1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)] {
            assert_eq!(
                exponential(attempt, initial, max),
                Duration::from_secs(full),
                "attempt {attempt}"
            );
        }
        assert_eq!(
            exponential(u32::MAX, Duration::MAX, Duration::MAX),
            Duration::MAX
        );
    }

    #[test]
    fn jitter_spreads_delays_within_a_fifth_below_and_repeats_for_a_salt() {
        let full = Duration::from_secs(10);
        let delays: std::collections::BTreeSet<Duration> =
            (0..100u64).map(|salt| jittered(full, salt)).collect();
        assert!(
            delays.len() > 50,
            "spread: {} distinct delays",
            delays.len()
        );
        assert!(
            delays.iter().all(|d| *d <= full && *d >= full * 4 / 5),
            "{delays:?}"
        );
        assert_eq!(jittered(full, 7), jittered(full, 7));
        assert_eq!(jittered(Duration::ZERO, 7), Duration::ZERO);
    }

    #[test]
    fn a_delay_is_the_exponential_one_jittered() {
        let (initial, max) = (Duration::from_millis(500), Duration::from_secs(60));
        for attempt in 1..12 {
            for salt in 0..20 {
                let full = exponential(attempt, initial, max);
                let d = delay(attempt, initial, max, salt);
                assert!(
                    d <= full && d >= full * 4 / 5,
                    "attempt {attempt}: {d:?} of {full:?}"
                );
            }
        }
    }
}
