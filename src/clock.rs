//! Time source. Production code reads the wall clock; tests inject a [`ManualClock`] and move it
//! forward explicitly, so timeouts, backoffs and time groups are tested without sleeping.

use chrono::{DateTime, TimeZone, Utc};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

/// Milliseconds since the Unix epoch: the one time representation stored in the database
/// (portable between SQLite and PostgreSQL, cheap to compare and index).
pub type Millis = i64;

pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_millis(&self) -> Millis;

    fn now(&self) -> DateTime<Utc> {
        from_millis(self.now_millis())
    }
}

pub fn from_millis(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

pub fn to_millis(t: DateTime<Utc>) -> Millis {
    t.timestamp_millis()
}

/// How every JSON answer and report writes a time (SPEC §5.5): RFC 3339 in UTC, with
/// milliseconds and `Z`, e.g. `2026-11-23T12:00:00.000Z`.
pub fn rfc3339(ms: Millis) -> String {
    from_millis(ms).to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// `#[serde(serialize_with = "…")]` for a stored time: written as [`rfc3339`].
pub fn serialize_rfc3339<S: serde::Serializer>(ms: &Millis, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*ms))
}

/// [`serialize_rfc3339`] for an optional time (`null`, or an empty CSV field, when absent).
pub fn serialize_rfc3339_opt<S: serde::Serializer>(
    ms: &Option<Millis>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => s.serialize_some(&rfc3339(*ms)),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> Millis {
        Utc::now().timestamp_millis()
    }
}

/// A clock that only moves when told to. Cloning shares the same time.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicI64>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Arc::new(AtomicI64::new(start.timestamp_millis())))
    }

    pub fn advance(&self, by: std::time::Duration) {
        self.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
    }

    pub fn set(&self, t: DateTime<Utc>) {
        self.0.store(t.timestamp_millis(), Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> Millis {
        self.0.load(Ordering::SeqCst)
    }
}

pub type SharedClock = Arc<dyn Clock>;

/// A disagreement between the wall clock and the monotonic clock at least this large is a step
/// of the wall clock (an operator, a VM resume, NTP stepping), not the slewing NTP does
/// (at most half a millisecond per second) between two readings.
pub const STEP_THRESHOLD: Millis = 2_000;

/// The daemon's clock: the wall clock, except that it never steps back. Each reading compares
/// the wall clock's progress with a monotonic clock's since the last reading; a difference of
/// [`STEP_THRESHOLD`] or more is a step, logged as a warning and counted in
/// `tiercast_clock_steps_total`.
///
/// A step forward is followed: schedules (time groups, `start_at`, `end_at`) need the real
/// time, and what a jump forward would otherwise cut short (attempts in flight, leases) is
/// measured elsewhere on monotonic time or the database server's clock. A step back is not
/// followed: the clock keeps counting from where it was, ahead of the wall clock by the step,
/// because every row due "now" was stamped with the old time and would wait out the step.
pub struct SteadyClock {
    wall: SharedClock,
    monotonic: Box<dyn Fn() -> Millis + Send + Sync>,
    last: Mutex<Option<Reading>>,
}

#[derive(Clone, Copy)]
struct Reading {
    wall: Millis,
    monotonic: Millis,
    /// How far this clock runs ahead of the wall clock: the backward steps not yet made up.
    ahead: Millis,
}

impl std::fmt::Debug for SteadyClock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SteadyClock").finish_non_exhaustive()
    }
}

impl SteadyClock {
    /// The system's wall clock, checked against the process's monotonic clock.
    pub fn system() -> SteadyClock {
        let started = Instant::now();
        SteadyClock::new(
            Arc::new(SystemClock),
            Box::new(move || started.elapsed().as_millis() as Millis),
        )
    }

    /// `monotonic` reads milliseconds from any origin on a clock that never steps.
    pub fn new(wall: SharedClock, monotonic: Box<dyn Fn() -> Millis + Send + Sync>) -> Self {
        SteadyClock {
            wall,
            monotonic,
            last: Mutex::new(None),
        }
    }
}

impl Clock for SteadyClock {
    fn now_millis(&self) -> Millis {
        let wall = self.wall.now_millis();
        let monotonic = (self.monotonic)();
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ahead = last.map_or(0, |r| r.ahead);
        if let Some(r) = *last {
            let step = wall - (r.wall + (monotonic - r.monotonic));
            if step <= -STEP_THRESHOLD {
                ahead -= step;
                tracing::warn!(
                    step_ms = step,
                    ahead_ms = ahead,
                    "the wall clock stepped back: tiercast keeps counting from where it was, \
                     ahead of the wall clock, so rows due now do not wait out the step"
                );
                crate::metrics::clock_step("back");
            } else if step >= STEP_THRESHOLD {
                ahead = (ahead - step).max(0);
                tracing::warn!(
                    step_ms = step,
                    ahead_ms = ahead,
                    "the wall clock stepped forward: tiercast follows it; sends in flight and \
                     leases are timed on clocks that do not jump"
                );
                crate::metrics::clock_step("forward");
            }
        }
        *last = Some(Reading {
            wall,
            monotonic,
            ahead,
        });
        wall + ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn steady(wall: &ManualClock, monotonic: &ManualClock) -> SteadyClock {
        let monotonic = monotonic.clone();
        SteadyClock::new(
            Arc::new(wall.clone()),
            Box::new(move || monotonic.now_millis()),
        )
    }

    #[test]
    fn follows_the_wall_clock_and_its_steps_forward_but_never_steps_back() {
        let t0 = from_millis(1_800_000_000_000);
        let (wall, monotonic) = (ManualClock::new(t0), ManualClock::new(from_millis(0)));
        let clock = steady(&wall, &monotonic);
        let start = clock.now_millis();
        assert_eq!(start, wall.now_millis());
        let both = |by: Duration| {
            wall.advance(by);
            monotonic.advance(by);
        };
        both(Duration::from_secs(10));
        assert_eq!(clock.now_millis(), start + 10_000);
        // Stepped back an hour: time goes on from where it was.
        wall.set(from_millis(wall.now_millis() - 3_600_000));
        assert_eq!(clock.now_millis(), start + 10_000);
        both(Duration::from_secs(5));
        assert_eq!(clock.now_millis(), start + 15_000);
        // A small disagreement (slewing) is followed, not taken for a step.
        wall.advance(Duration::from_millis(500));
        assert_eq!(clock.now_millis(), start + 15_500);
        // Stepped forward by more than the lead: followed once the lead is made up.
        wall.advance(Duration::from_secs(3_600 + 60));
        assert_eq!(clock.now_millis(), start + 15_500 + 60_000);
        assert_eq!(clock.now_millis(), wall.now_millis());
    }
}
