//! Messaging-limit use per portfolio (SPEC §3): the configured tier and the number of distinct
//! recipients its lines reached with templates in the moving 24 h window. Shared by
//! `GET /api/tiers` and the `tier_limit` / `tier_used` gauges.
//!
//! The use is read from the pacer's reservations (`tier_recipients`), the same numbers the
//! budget is enforced with; the tier is the stored one (config, then Meta's webhooks).

use crate::clock::Millis;
use crate::config::{Config, Portfolio};
use crate::domain::Tier;
use crate::lines::LineRuntime;
use crate::metrics as m;
use crate::provider::Provider;
use crate::store::{Store, StoreResult};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

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

/// A new messaging limit for `portfolio` from `source` (`api`, a webhook field): stored with
/// its history and, when it changed, the rows its lines held for a slot become due at once.
/// Returns whether it changed.
pub async fn apply(
    store: &Store,
    config: &Config,
    portfolio: &str,
    tier: Tier,
    source: &str,
    now: Millis,
) -> StoreResult<bool> {
    if !store
        .set_portfolio_tier(portfolio, tier, source, now)
        .await?
    {
        return Ok(false);
    }
    tracing::info!(portfolio, %tier, source, "messaging limit changed");
    let lines: Vec<String> = config
        .lines
        .iter()
        .filter(|l| l.portfolio == portfolio)
        .map(|l| l.name.clone())
        .collect();
    store.release_tier_waiters(&lines, now).await?;
    Ok(true)
}

/// Reads a portfolio's limit and its lines' throughput levels from the provider (SPEC §3:
/// at start and every `tier_refresh`). A line whose read fails is skipped with a warning;
/// the stored tier stays as it was.
pub async fn refresh_from_provider(
    store: &Store,
    config: &Config,
    lines: &HashMap<String, Arc<LineRuntime>>,
    portfolio: &Portfolio,
    now: Millis,
) -> StoreResult<()> {
    let mut tier_read = false;
    for line in config
        .lines
        .iter()
        .filter(|l| l.portfolio == portfolio.name)
    {
        let Some(rt) = lines.get(&line.name) else {
            continue;
        };
        let limits = match rt.provider.account_limits().await {
            Ok(Some(limits)) => limits,
            Ok(None) => continue,
            Err(e) => {
                tracing::warn!(line = %line.name, error = %e, "messaging limit not read from the provider");
                continue;
            }
        };
        if let (Some(tier), false) = (limits.tier, tier_read) {
            tier_read = true;
            apply(store, config, &portfolio.name, tier, "api", now).await?;
        }
        if limits.throughput_level.as_deref() == Some("HIGH") && line.follow_throughput_upgrades {
            rt.pacer.raise_max(1000, std::time::Instant::now());
        }
    }
    Ok(())
}
