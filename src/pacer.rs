//! Adaptive throughput per line (SPEC §3): a GCRA limiter (`governor`, burst 1) at the line's
//! current rate. A 130429 ("throughput reached") halves the rate at once; after a quiet spell
//! it climbs back in steps of a tenth of the maximum. A THROUGHPUT_UPGRADE raises the maximum
//! (to 1,000 msg/s) when the line follows upgrades.

use crate::lines::throughput_limiter;
use crate::metrics as m;
use governor::DefaultDirectRateLimiter;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// No 130429 for this long before the rate climbs again.
const QUIET_BEFORE_RECOVERY: Duration = Duration::from_secs(10);
/// Time between two recovery steps.
const RECOVERY_STEP: Duration = Duration::from_secs(5);
/// Waits for a send slot shorter than this spin through the runtime's queue, not a timer.
const YIELD_BELOW: Duration = Duration::from_micros(50);

struct State {
    max: u32,
    current: u32,
    limiter: Arc<DefaultDirectRateLimiter>,
    last_throttle: Option<Instant>,
    last_step: Instant,
}

pub struct Pacer {
    line: String,
    state: Mutex<State>,
}

impl Pacer {
    pub fn new(line: &str, mps: u32) -> Pacer {
        let mps = mps.max(1);
        Pacer {
            line: line.to_string(),
            state: Mutex::new(State {
                max: mps,
                current: mps,
                limiter: Arc::new(throughput_limiter(mps)),
                last_throttle: None,
                last_step: Instant::now(),
            }),
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut state)
    }

    /// Waits for the next send slot at the current rate. A wait shorter than
    /// [`YIELD_BELOW`] re-checks after yielding to the runtime instead of arming a timer:
    /// governor's timer runs on a thread of its own, and the two thread wake-ups it costs
    /// took longer than such a wait (8 % of the daemon's CPU in `tiercast bench`, where the
    /// limiter is lifted). Waits at Meta's rates (1 ms and more) still take the timer.
    pub async fn until_ready(&self) {
        use governor::clock::Clock;
        let limiter = self.with(|s| s.limiter.clone());
        loop {
            match limiter.check() {
                Ok(()) => return,
                Err(not_until) if not_until.wait_time_from(limiter.clock().now()) < YIELD_BELOW => {
                    tokio::task::yield_now().await
                }
                Err(_) => return limiter.until_ready().await,
            }
        }
    }

    pub fn current(&self) -> u32 {
        self.with(|s| s.current)
    }

    pub fn max(&self) -> u32 {
        self.with(|s| s.max)
    }

    fn set(&self, s: &mut State, mps: u32, now: Instant) {
        if s.current != mps {
            s.current = mps;
            s.limiter = Arc::new(throughput_limiter(mps));
            m::line_throughput(&self.line, mps);
        }
        s.last_step = now;
    }

    /// Meta answered 130429: halve the rate.
    pub fn throttled(&self, now: Instant) {
        self.with(|s| {
            s.last_throttle = Some(now);
            // One halving per second at most: a burst of 130429s answers one overload.
            if now.duration_since(s.last_step) >= Duration::from_secs(1) || s.current == s.max {
                let lower = (s.current / 2).max(1);
                tracing::warn!(line = %self.line, from = s.current, to = lower, "130429: slowing the line down");
                self.set(s, lower, now);
            }
        });
    }

    /// Climbs back toward the maximum after a quiet spell; call it often.
    pub fn recover(&self, now: Instant) {
        self.with(|s| {
            let quiet = s.last_throttle.is_none_or(|t| now.duration_since(t) >= QUIET_BEFORE_RECOVERY);
            if s.current < s.max && quiet && now.duration_since(s.last_step) >= RECOVERY_STEP {
                let higher = (s.current + (s.max / 10).max(1)).min(s.max);
                tracing::info!(line = %self.line, from = s.current, to = higher, "throughput recovering");
                self.set(s, higher, now);
            }
        });
    }

    /// A THROUGHPUT_UPGRADE: the line may now send up to `mps`.
    pub fn raise_max(&self, mps: u32, now: Instant) {
        self.with(|s| {
            if mps > s.max {
                tracing::info!(line = %self.line, from = s.max, to = mps, "throughput upgraded");
                s.max = mps;
                self.set(s, mps, now);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halves_on_throttle_and_recovers_in_steps() {
        let p = Pacer::new("l", 80);
        let t0 = Instant::now();
        p.throttled(t0);
        assert_eq!(p.current(), 40);
        p.throttled(t0 + Duration::from_millis(100)); // same burst: no second halving
        assert_eq!(p.current(), 40);
        p.throttled(t0 + Duration::from_secs(2));
        assert_eq!(p.current(), 20);
        p.recover(t0 + Duration::from_secs(5)); // not quiet long enough
        assert_eq!(p.current(), 20);
        p.recover(t0 + Duration::from_secs(13));
        assert_eq!(p.current(), 28);
        p.recover(t0 + Duration::from_secs(14)); // a step needs 5 s
        assert_eq!(p.current(), 28);
        let mut t = t0 + Duration::from_secs(13);
        for _ in 0..20 {
            t += RECOVERY_STEP;
            p.recover(t);
        }
        assert_eq!(p.current(), 80, "back to the maximum, never above");
        p.raise_max(1000, t);
        assert_eq!((p.current(), p.max()), (1000, 1000));
    }

    /// Both ways of waiting keep the rate: slots closer than `YIELD_BELOW` (100,000 msg/s:
    /// 10 µs apart) are waited for by yielding, farther ones (2,000 msg/s: 500 µs) by the
    /// timer. 201 slots can come no sooner than 200 intervals after the first (190 asserted:
    /// governor's clock is not `Instant`).
    #[tokio::test]
    async fn short_and_long_waits_both_keep_the_rate() {
        for (mps, interval) in [
            (100_000, Duration::from_micros(10)),
            (2_000, Duration::from_micros(500)),
        ] {
            assert_eq!(interval < YIELD_BELOW, mps == 100_000);
            let p = Pacer::new("l", mps);
            let started = Instant::now();
            for _ in 0..201 {
                p.until_ready().await;
            }
            assert!(
                started.elapsed() >= interval * 190,
                "{mps} msg/s: 201 slots in {:?}",
                started.elapsed()
            );
        }
    }
}
