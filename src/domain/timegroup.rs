//! Time groups: weekly opening hours in an IANA time zone, with breaks and holidays.
//! Campaigns send only while their time group is open. All arithmetic happens on local
//! wall-clock time and is converted back through `chrono-tz`, so DST changes move the UTC
//! instants while the local hours stay put.

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;
use std::collections::BTreeSet;

const SECONDS_PER_DAY: u32 = 86_400;
/// How far ahead `next_open_after` looks: a year of holidays is plenty.
const SEARCH_DAYS: i64 = 400;

/// A span of local time on some weekdays, `from <= t < to`, in seconds since local midnight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DayWindow {
    days: [bool; 7], // Monday first
    from: u32,
    to: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TimeGroup {
    pub name: String,
    pub timezone: Tz,
    windows: Vec<DayWindow>,
    breaks: Vec<DayWindow>,
    holidays: BTreeSet<NaiveDate>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeSpecError {
    #[error("unknown day {0:?} (use mon, tue, wed, thu, fri, sat, sun, ranges like mon-fri, lists like sat,sun, or all)")]
    Day(String),
    #[error("bad time {0:?} (use HH:MM, 00:00 to 24:00)")]
    Time(String),
    #[error("window {from}–{to} ends before it starts; split overnight windows in two")]
    Order { from: String, to: String },
    #[error("unknown time zone {0:?} (use an IANA name such as America/Sao_Paulo)")]
    Zone(String),
    #[error("bad date {0:?} (use YYYY-MM-DD)")]
    Date(String),
}

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn day_index(s: &str) -> Result<usize, TimeSpecError> {
    let lower = s.trim().to_ascii_lowercase();
    DAY_NAMES
        .iter()
        .position(|d| lower.starts_with(d) && lower.len() >= 3)
        .ok_or_else(|| TimeSpecError::Day(s.to_string()))
}

/// `mon-fri`, `sat,sun`, `mon,wed-fri`, `all`. Ranges may wrap (`fri-mon`).
pub fn parse_days(spec: &str) -> Result<[bool; 7], TimeSpecError> {
    let mut days = [false; 7];
    let spec = spec.trim();
    if matches!(spec.to_ascii_lowercase().as_str(), "all" | "daily" | "*") {
        return Ok([true; 7]);
    }
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day_index(a)?, day_index(b)?);
                let mut i = a;
                loop {
                    days[i] = true;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => days[day_index(part)?] = true,
        }
    }
    Ok(days)
}

/// `HH:MM` → seconds since midnight; `24:00` is accepted as the end of the day.
pub fn parse_hhmm(s: &str) -> Result<u32, TimeSpecError> {
    let err = || TimeSpecError::Time(s.to_string());
    let (h, m) = s.trim().split_once(':').ok_or_else(err)?;
    let h: u32 = h.parse().map_err(|_| err())?;
    let m: u32 = m.parse().map_err(|_| err())?;
    if m > 59 || h > 24 || (h == 24 && m != 0) {
        return Err(err());
    }
    Ok(h * 3600 + m * 60)
}

impl DayWindow {
    pub fn parse(days: &str, from: &str, to: &str) -> Result<DayWindow, TimeSpecError> {
        let window = DayWindow {
            days: parse_days(days)?,
            from: parse_hhmm(from)?,
            to: parse_hhmm(to)?,
        };
        if window.to <= window.from {
            return Err(TimeSpecError::Order {
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        Ok(window)
    }

    fn contains(&self, weekday: usize, second: u32) -> bool {
        self.days[weekday] && self.from <= second && second < self.to
    }
}

pub fn parse_timezone(name: &str) -> Result<Tz, TimeSpecError> {
    name.parse::<Tz>()
        .map_err(|_| TimeSpecError::Zone(name.to_string()))
}

pub fn parse_date(s: &str) -> Result<NaiveDate, TimeSpecError> {
    NaiveDate::parse_from_str(s.trim(), "%Y-%m-%d").map_err(|_| TimeSpecError::Date(s.to_string()))
}

impl TimeGroup {
    pub fn new(
        name: impl Into<String>,
        timezone: Tz,
        windows: Vec<DayWindow>,
        breaks: Vec<DayWindow>,
        holidays: impl IntoIterator<Item = NaiveDate>,
    ) -> TimeGroup {
        TimeGroup {
            name: name.into(),
            timezone,
            windows,
            breaks,
            holidays: holidays.into_iter().collect(),
        }
    }

    /// Open around the clock: used when a campaign and its line name no time group.
    pub fn always(timezone: Tz) -> TimeGroup {
        TimeGroup::new(
            "always",
            timezone,
            vec![DayWindow {
                days: [true; 7],
                from: 0,
                to: SECONDS_PER_DAY,
            }],
            vec![],
            [],
        )
    }

    pub fn is_open(&self, t: DateTime<Utc>) -> bool {
        self.is_open_in(t, self.timezone)
    }

    /// Same hours read in another zone: a contact's own, when `local_time = true`.
    pub fn is_open_in(&self, t: DateTime<Utc>, zone: Tz) -> bool {
        let local = t.with_timezone(&zone).naive_local();
        self.is_open_local(local)
    }

    fn is_open_local(&self, local: NaiveDateTime) -> bool {
        if self.holidays.contains(&local.date()) {
            return false;
        }
        let weekday = local.weekday().num_days_from_monday() as usize;
        let second = local.num_seconds_from_midnight();
        self.windows.iter().any(|w| w.contains(weekday, second))
            && !self.breaks.iter().any(|b| b.contains(weekday, second))
    }

    pub fn next_open_after(&self, t: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.next_open_after_in(t, self.timezone)
    }

    /// The first instant at or after `t` when the group is open, or `None` if it never opens
    /// within a year. Openings can only happen where a window starts or a break ends, so those
    /// local instants are the only candidates worth checking.
    pub fn next_open_after_in(&self, t: DateTime<Utc>, zone: Tz) -> Option<DateTime<Utc>> {
        if self.is_open_in(t, zone) {
            return Some(t);
        }
        let start_date = t.with_timezone(&zone).date_naive();
        for offset in 0..=SEARCH_DAYS {
            let date = start_date + Duration::days(offset);
            if self.holidays.contains(&date) {
                continue;
            }
            let weekday = date.weekday().num_days_from_monday() as usize;
            let mut candidates: Vec<DateTime<Utc>> = self
                .windows
                .iter()
                .filter(|w| w.days[weekday])
                .map(|w| w.from)
                .chain(
                    self.breaks
                        .iter()
                        .filter(|b| b.days[weekday] && b.to < SECONDS_PER_DAY)
                        .map(|b| b.to),
                )
                .filter_map(|second| local_to_utc(zone, date, second))
                .filter(|c| *c > t)
                .collect();
            candidates.sort();
            if let Some(open) = candidates.into_iter().find(|c| self.is_open_in(*c, zone)) {
                return Some(open);
            }
        }
        None
    }
}

/// The first UTC instant whose local time in `zone` is at or after `date` + `second`.
/// In a DST gap (02:30 on a spring-forward night does not exist) that is the end of the gap;
/// in a repeated hour, the first of the two.
fn local_to_utc(zone: Tz, date: NaiveDate, second: u32) -> Option<DateTime<Utc>> {
    let naive = date.and_hms_opt(0, 0, 0)? + Duration::seconds(i64::from(second));
    let mut probe = naive;
    // DST gaps are at most a few hours; step a minute at a time to the first valid instant.
    for _ in 0..=240 {
        match zone.from_local_datetime(&probe) {
            LocalResult::Single(t) => return Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => return Some(first.with_timezone(&Utc)),
            LocalResult::None => {
                probe += Duration::minutes(1);
                probe = probe.with_second(0)?;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn office(zone: &str) -> TimeGroup {
        TimeGroup::new(
            "office",
            parse_timezone(zone).unwrap(),
            vec![DayWindow::parse("mon-fri", "09:00", "18:00").unwrap()],
            vec![DayWindow::parse("mon-fri", "12:00", "13:00").unwrap()],
            [parse_date("2026-12-25").unwrap()],
        )
    }

    #[test]
    fn parses_day_specs() {
        assert_eq!(
            parse_days("mon-fri").unwrap(),
            [true, true, true, true, true, false, false]
        );
        assert_eq!(
            parse_days("sat,sun").unwrap(),
            [false, false, false, false, false, true, true]
        );
        assert_eq!(
            parse_days("fri-mon").unwrap(),
            [true, false, false, false, true, true, true]
        );
        assert_eq!(parse_days("all").unwrap(), [true; 7]);
        assert!(matches!(parse_days("funday"), Err(TimeSpecError::Day(_))));
        assert_eq!(parse_hhmm("24:00").unwrap(), 86_400);
        assert!(parse_hhmm("25:00").is_err());
        assert!(parse_hhmm("9").is_err());
        assert!(DayWindow::parse("mon", "18:00", "09:00").is_err());
        assert!(parse_timezone("Mars/Olympus").is_err());
    }

    #[test]
    fn open_closed_breaks_holidays() {
        let g = office("America/Sao_Paulo"); // UTC-3, no DST since 2019
        assert!(g.is_open(utc("2026-11-23T12:00:00Z"))); // Mon 09:00 local
        assert!(!g.is_open(utc("2026-11-23T11:59:59Z"))); // 08:59:59
        assert!(!g.is_open(utc("2026-11-23T15:30:00Z"))); // lunch
        assert!(g.is_open(utc("2026-11-23T16:00:00Z"))); // 13:00, break over
        assert!(!g.is_open(utc("2026-11-23T21:00:00Z"))); // 18:00 closes
        assert!(!g.is_open(utc("2026-11-28T15:00:00Z"))); // Saturday
        assert!(!g.is_open(utc("2026-12-25T15:00:00Z"))); // Christmas, a Friday
    }

    #[test]
    fn next_open_skips_breaks_weekends_and_holidays() {
        let g = office("America/Sao_Paulo");
        assert_eq!(
            g.next_open_after(utc("2026-11-23T15:10:00Z")),
            Some(utc("2026-11-23T16:00:00Z"))
        );
        // Friday evening → Monday 09:00 local.
        assert_eq!(
            g.next_open_after(utc("2026-11-27T22:00:00Z")),
            Some(utc("2026-11-30T12:00:00Z"))
        );
        // Thursday 24 Dec after hours → Christmas is skipped → Monday 28.
        assert_eq!(
            g.next_open_after(utc("2026-12-24T23:00:00Z")),
            Some(utc("2026-12-28T12:00:00Z"))
        );
        // Already open → now.
        let now = utc("2026-11-23T13:00:00Z");
        assert_eq!(g.next_open_after(now), Some(now));
    }

    #[test]
    fn dst_changes_move_utc_not_local_hours() {
        let g = office("America/New_York");
        // Friday 6 March 2026 18:30 EST; clocks spring forward on Sunday 8 March.
        // Monday 09:00 EDT is 13:00 UTC (it was 14:00 UTC the week before).
        assert_eq!(
            g.next_open_after(utc("2026-03-06T23:30:00Z")),
            Some(utc("2026-03-09T13:00:00Z"))
        );
        assert!(g.is_open(utc("2026-03-09T13:00:00Z")));
        assert!(!g.is_open(utc("2026-03-09T12:59:00Z")));
        // Autumn: clocks fall back on Sunday 1 November; Monday 09:00 EST is 14:00 UTC.
        assert_eq!(
            g.next_open_after(utc("2026-10-30T22:30:00Z")),
            Some(utc("2026-11-02T14:00:00Z"))
        );
    }

    #[test]
    fn window_inside_a_dst_gap_opens_at_the_gap_end() {
        // Sunday 8 March 2026, New York: 02:00–03:00 local does not exist.
        let g = TimeGroup::new(
            "night",
            parse_timezone("America/New_York").unwrap(),
            vec![DayWindow::parse("sun", "02:30", "04:00").unwrap()],
            vec![],
            [],
        );
        // 03:00 EDT = 07:00 UTC is the first instant at or after 02:30 local.
        assert_eq!(
            g.next_open_after(utc("2026-03-08T05:00:00Z")),
            Some(utc("2026-03-08T07:00:00Z"))
        );
    }

    #[test]
    fn midnight_boundaries_and_contact_zones() {
        let g = TimeGroup::new(
            "late",
            parse_timezone("Europe/Lisbon").unwrap(),
            vec![DayWindow::parse("mon-sun", "20:00", "24:00").unwrap()],
            vec![],
            [],
        );
        assert!(g.is_open(utc("2026-11-23T23:59:59Z")));
        assert!(!g.is_open(utc("2026-11-24T00:00:00Z")));
        assert_eq!(
            g.next_open_after(utc("2026-11-24T00:00:00Z")),
            Some(utc("2026-11-24T20:00:00Z"))
        );
        // The same hours read in São Paulo (UTC-3).
        let sp = parse_timezone("America/Sao_Paulo").unwrap();
        assert!(g.is_open_in(utc("2026-11-24T02:00:00Z"), sp)); // 23:00 in São Paulo
        assert!(!g.is_open_in(utc("2026-11-24T20:00:00Z"), sp)); // 17:00 in São Paulo
    }

    #[test]
    fn never_open_is_none() {
        let g = TimeGroup::new("x", chrono_tz::UTC, vec![], vec![], []);
        assert_eq!(g.next_open_after(utc("2026-01-01T00:00:00Z")), None);
    }
}
