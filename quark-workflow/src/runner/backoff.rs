//! Exponential backoff with jitter: for work that failed for a reason outside its own retry
//! policy (a store error, a handler error) and for outbox deliveries.

use std::time::Duration;

/// The delay before attempt `attempt + 1`: `initial * 2^(attempt - 1)`, capped at `max`, then
/// jittered down by up to a quarter so that failures at the same moment do not retry in lockstep.
pub fn delay(attempt: u32, initial: Duration, max: Duration) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let base = initial.saturating_mul(1u32 << exp.min(31)).min(max);
    let jitter = base.as_micros() as u64 / 4;
    if jitter == 0 {
        return base;
    }
    // A v7 uuid's low bits are random: enough for jitter without another dependency.
    let random = uuid::Uuid::now_v7().as_u128() as u64;
    base - Duration::from_micros(random % jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn it_doubles_up_to_the_cap_with_at_most_a_quarter_of_jitter() {
        let initial = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for (attempt, full) in [(1, 1), (2, 2), (3, 4), (6, 32), (7, 60), (40, 60)] {
            let full = Duration::from_secs(full);
            for _ in 0..50 {
                let d = delay(attempt, initial, max);
                assert!(
                    d <= full && d >= full * 3 / 4,
                    "attempt {attempt}: {d:?} outside [{:?}, {full:?}]",
                    full * 3 / 4
                );
            }
        }
    }
}
