//! The messaging-limit ladder and the fastest climb up it (SPEC §3, reference §4.1).
//! Meta raises a portfolio's limit once it has reached at least half of its current limit in
//! distinct users over the last 7 days (with quality not low), after an upgrade delay.

use super::Tier;
use std::time::Duration;

/// The ladder since Oct 2025. Before that 1K sat where 2K is; the ladder is data.
pub const LADDER: [Tier; 5] = [
    Tier::Limited(250),
    Tier::Limited(2_000),
    Tier::Limited(10_000),
    Tier::Limited(100_000),
    Tier::Unlimited,
];

/// The next tier above `tier` on the ladder.
pub fn next_tier(tier: Tier) -> Option<Tier> {
    LADDER.iter().copied().find(|t| *t > tier)
}

/// One step of a ramp: from `after` on, at `tier`, reach `send_at_least` new distinct users
/// (at most `send_at_most`) to qualify for the next tier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RampStep {
    pub after: Duration,
    pub tier: Tier,
    pub send_at_least: u64,
    pub send_at_most: Option<u64>,
}

/// The soonest way from `current` (with `used_7d` distinct users already reached in the last
/// 7 days) to `target`: each step sends just enough new users to qualify, then waits the
/// upgrade delay. Empty when the target is already reached.
pub fn plan(current: Tier, target: Tier, used_7d: u64, upgrade_delay: Duration) -> Vec<RampStep> {
    let mut steps = Vec::new();
    let (mut tier, mut reached, mut after) = (current, used_7d, Duration::ZERO);
    while tier < target {
        let Some(limit) = tier.limit() else { break };
        let needed = limit.div_ceil(2).saturating_sub(reached);
        steps.push(RampStep {
            after,
            tier,
            send_at_least: needed,
            send_at_most: Some(limit),
        });
        reached += needed;
        after += upgrade_delay;
        match next_tier(tier) {
            Some(next) => tier = next,
            None => break,
        }
    }
    steps
}

/// One day of a ramp: the new distinct users to reach that day, and the steps it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RampDay {
    /// 1 for the first 24 h from now.
    pub day: u64,
    pub new_users: u64,
    pub steps: Vec<RampStep>,
}

/// The plan's steps grouped by day (24 h from now each), for `tiercast tier plan`.
pub fn by_day(steps: &[RampStep]) -> Vec<RampDay> {
    let mut days: Vec<RampDay> = Vec::new();
    for step in steps {
        let day = step.after.as_secs() / (24 * 3600) + 1;
        match days.last_mut() {
            Some(d) if d.day == day => {
                d.new_users += step.send_at_least;
                d.steps.push(step.clone());
            }
            _ => days.push(RampDay {
                day,
                new_users: step.send_at_least,
                steps: vec![step.clone()],
            }),
        }
    }
    days
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn climbs_the_ladder_half_a_limit_at_a_time() {
        let six = Duration::from_secs(6 * 3600);
        let steps = plan(Tier::Limited(250), Tier::Limited(100_000), 0, six);
        let got: Vec<(u64, Tier, u64)> = steps
            .iter()
            .map(|s| (s.after.as_secs() / 3600, s.tier, s.send_at_least))
            .collect();
        assert_eq!(
            got,
            vec![
                (0, Tier::Limited(250), 125),
                (6, Tier::Limited(2_000), 875),
                (12, Tier::Limited(10_000), 4_000),
            ]
        );
        assert!(plan(Tier::Limited(10_000), Tier::Limited(2_000), 0, six).is_empty());
        // Users already reached this week count.
        assert_eq!(
            plan(Tier::Limited(2_000), Tier::Limited(10_000), 900, six)[0].send_at_least,
            100
        );
        assert_eq!(next_tier(Tier::Limited(1_000)), Some(Tier::Limited(2_000)));
        assert_eq!(next_tier(Tier::Unlimited), None);
    }

    #[test]
    fn days_group_the_steps_for_both_upgrade_delays() {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        // Since Oct 2025 (6 h): the whole climb to 100K fits in the first day.
        let days = by_day(&plan(
            Tier::Limited(250),
            Tier::Limited(100_000),
            0,
            hours(6),
        ));
        let got: Vec<(u64, u64, usize)> = days
            .iter()
            .map(|d| (d.day, d.new_users, d.steps.len()))
            .collect();
        assert_eq!(got, vec![(1, 5_000, 3)]);
        // Before (24 h): one tier a day, 125 + 875 + 4,000 + 45,000 to unlimited.
        let days = by_day(&plan(Tier::Limited(250), Tier::Unlimited, 0, hours(24)));
        let got: Vec<(u64, u64)> = days.iter().map(|d| (d.day, d.new_users)).collect();
        assert_eq!(got, vec![(1, 125), (2, 875), (3, 4_000), (4, 45_000)]);
        assert!(by_day(&[]).is_empty());
    }
}
