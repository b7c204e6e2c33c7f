//! Messaging-limit tiers: how many unique users a portfolio may reach with business-initiated
//! templates in a moving 24 h window. The ladder has changed over time (TIER_1K existed before
//! Oct 2025, TIER_2K after), so a tier is data: a number or unlimited.

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Limited(u64),
    Unlimited,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown tier {0:?} (use 250, 1k, 2k, 10k, 100k, unlimited, or Meta's TIER_… names)")]
pub struct TierError(pub String);

impl Tier {
    /// The limit as a count, `None` when unlimited.
    pub fn limit(self) -> Option<u64> {
        match self {
            Tier::Limited(n) => Some(n),
            Tier::Unlimited => None,
        }
    }
}

impl FromStr for Tier {
    type Err = TierError;

    /// Accepts the config's words (`1k`), plain numbers (`2000`), Meta's enum names
    /// (`TIER_2K`, `TIER_UNLIMITED`) and `-1`, which Meta's API uses for unlimited.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || TierError(s.to_string());
        let lower = s.trim().to_ascii_lowercase();
        let word = lower.strip_prefix("tier_").unwrap_or(&lower);
        if word == "unlimited" || word == "-1" {
            return Ok(Tier::Unlimited);
        }
        let (digits, factor) = match word.strip_suffix('k') {
            Some(d) => (d, 1_000),
            None => (word, 1),
        };
        let n: u64 = digits.parse().map_err(|_| err())?;
        if n == 0 {
            return Err(err());
        }
        Ok(Tier::Limited(n * factor))
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tier::Unlimited => f.write_str("unlimited"),
            Tier::Limited(n) if n % 1000 == 0 => write!(f, "{}k", n / 1000),
            Tier::Limited(n) => write!(f, "{n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_all_vocabularies() {
        assert_eq!("250".parse::<Tier>().unwrap(), Tier::Limited(250));
        assert_eq!("1k".parse::<Tier>().unwrap(), Tier::Limited(1_000));
        assert_eq!("TIER_2K".parse::<Tier>().unwrap(), Tier::Limited(2_000));
        assert_eq!("TIER_100K".parse::<Tier>().unwrap(), Tier::Limited(100_000));
        assert_eq!("tier_unlimited".parse::<Tier>().unwrap(), Tier::Unlimited);
        assert_eq!("-1".parse::<Tier>().unwrap(), Tier::Unlimited);
        assert!("TIER_NOT_SET".parse::<Tier>().is_err());
        assert!("0".parse::<Tier>().is_err());
        assert_eq!(Tier::Limited(10_000).to_string(), "10k");
        assert!(Tier::Limited(250) < Tier::Unlimited);
    }
}
