//! Messaging-limit use per portfolio (SPEC §3): the configured tier and the number of distinct
//! recipients its lines reached with templates in the moving 24 h window. Shared by
//! `GET /api/tiers` and the `tier_limit` / `tier_used` gauges.
//!
//! The use is read from the pacer's reservations (`tier_recipients`), the same numbers the
//! budget is enforced with; the tier is the stored one (config, then Meta's webhooks).

use crate::clock::Millis;
use crate::config::Config;
use crate::metrics as m;
use crate::store::{Store, StoreResult};
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TierUsage {
    pub portfolio: String,
    /// `250`, `1k`, …, `unlimited`.
    pub tier: String,
    /// `null` when unlimited.
    pub limit: Option<u64>,
    /// Distinct recipients in the last 24 h.
    pub used: u64,
    /// What is left of the limit (`null` when unlimited).
    pub available: Option<u64>,
    pub lines: Vec<String>,
}

/// Every configured portfolio's limit and use at `now`, in config order.
pub async fn usage(store: &Store, config: &Config, now: Millis) -> StoreResult<Vec<TierUsage>> {
    let mut out = Vec::with_capacity(config.portfolios.len());
    for p in &config.portfolios {
        let lines: Vec<String> = config
            .lines
            .iter()
            .filter(|l| l.portfolio == p.name)
            .map(|l| l.name.clone())
            .collect();
        store.ensure_portfolio_tier(&p.name, p.tier, now).await?;
        let stored = store.tier_usage(&p.name, now).await?;
        let (tier, limit, used) = match stored {
            Some(u) => (u.tier, u.limit, u.used_24h),
            None => (p.tier.to_string(), p.tier.limit(), 0),
        };
        out.push(TierUsage {
            portfolio: p.name.clone(),
            tier,
            limit,
            used,
            available: limit.map(|l| l.saturating_sub(used)),
            lines,
        });
    }
    Ok(out)
}

/// Sets the `tier_limit` / `tier_used` gauges from [`usage`].
pub fn export(usage: &[TierUsage]) {
    for u in usage {
        m::tier(&u.portfolio, u.limit, u.used);
    }
}
