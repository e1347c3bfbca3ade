//! Exponential backoff with jitter for webhook retries.

use std::time::Duration;

use rand::Rng;

/// Delays between the attempts of one delivery: `initial`, doubling per retry up to `max`,
/// with "equal jitter" (a delay `d` becomes a uniform draw from `d/2..=d`).
///
/// The jitter spreads the retries of many alerts (and of many veer processes) over time, so a
/// receiver that comes back is not hit by all of them at once. Half of each delay is kept, so
/// the delays still grow exponentially.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use rand::SeedableRng;
/// use veer::sinks::backoff::Backoff;
///
/// let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
/// let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
/// let first = backoff.delay(1, &mut rng);
/// assert!(first >= Duration::from_millis(250) && first <= Duration::from_millis(500));
/// assert!(backoff.delay(20, &mut rng) <= Duration::from_secs(30));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Returns a backoff from `initial` up to `max`; `max` is raised to `initial` if below.
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
        }
    }

    /// Returns the delay before the next attempt after `failures` failed attempts (from 1),
    /// without jitter.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        self.initial.saturating_mul(1u32 << doublings).min(self.max)
    }

    /// Returns the jittered delay before the next attempt after `failures` failed attempts.
    pub fn delay<R: Rng + ?Sized>(&self, failures: u32, rng: &mut R) -> Duration {
        let ceiling = self.ceiling(failures);
        let half = ceiling / 2;
        let spread = (ceiling - half).as_nanos() as u64;
        half + Duration::from_nanos(rng.gen_range(0..=spread))
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    fn backoff() -> Backoff {
        Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        let backoff = backoff();
        let ceilings: Vec<u64> = (1..=9)
            .map(|failures| backoff.ceiling(failures).as_millis() as u64)
            .collect();
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16_000, 30_000, 30_000, 30_000]
        );
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn delay_stays_within_half_and_ceiling() {
        let backoff = backoff();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        for failures in 1..=12 {
            let ceiling = backoff.ceiling(failures);
            for _ in 0..200 {
                let delay = backoff.delay(failures, &mut rng);
                assert!(delay >= ceiling / 2, "{delay:?} below half of {ceiling:?}");
                assert!(delay <= ceiling, "{delay:?} above {ceiling:?}");
            }
        }
    }

    #[test]
    fn delay_is_jittered() {
        let backoff = backoff();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(2);
        let delays: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff.delay(4, &mut rng)).collect();
        assert!(delays.len() > 40, "only {} distinct delays", delays.len());
    }

    #[test]
    fn max_below_initial_is_raised() {
        let backoff = Backoff::new(Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(backoff.ceiling(5), Duration::from_secs(2));
    }
}
