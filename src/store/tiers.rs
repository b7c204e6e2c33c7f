//! Messaging-limit tiers per portfolio: the current tier and its history, and the recipients
//! reached in the moving 24 h window (SPEC §3). Reservations happen inside the claim's
//! transaction (see `claim_due`), so the budget stays exact with several lines and daemons:
//! SQLite has one writer, and on PostgreSQL the portfolio's row is locked `FOR UPDATE`.

use super::{padded, padded_len, placeholders, Backend, Store, StoreResult};
use crate::clock::Millis;
use crate::domain::Tier;
use sqlx::any::Any;
use sqlx::{Row, Transaction};
use std::collections::HashSet;

pub const DAY_MILLIS: Millis = 24 * 3600 * 1000;

/// The budget a claim must respect: the portfolio and its limit. Built from the configuration
/// ([`TierBudget::configured`]); the tier stored for the portfolio (Meta's word, or the
/// operator's) replaces it inside each reservation's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierBudget {
    pub portfolio: String,
    pub tier: Tier,
    /// A ramping campaign: distinct recipients the portfolio may have reached in the last
    /// 7 days stop at half the limit (that qualifies it for the next tier; it then waits for
    /// the upgrade).
    pub ramp: bool,
}

impl TierBudget {
    /// The portfolio's configured tier (250 when none is configured), before the stored one
    /// is read.
    pub fn configured(portfolio: &str, configured: Option<Tier>) -> TierBudget {
        TierBudget {
            portfolio: portfolio.to_string(),
            tier: configured.unwrap_or(Tier::Limited(250)),
            ramp: false,
        }
    }

    /// The same budget for a `ramp = true` campaign: new recipients stop once the portfolio
    /// qualifies for its next tier, and resume when the tier rises. No cap at the top.
    pub fn ramped(&self) -> TierBudget {
        TierBudget {
            ramp: true,
            ..self.clone()
        }
    }

    /// The 7-day cap of a ramping campaign.
    fn ramp_cap(&self) -> Option<u64> {
        self.ramp
            .then(|| self.tier.limit().map(|l| l.div_ceil(2)))
            .flatten()
    }
}

pub const WEEK_MILLIS: Millis = 7 * DAY_MILLIS;

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TierUsage {
    pub portfolio: String,
    pub tier: String,
    pub limit: Option<u64>,
    pub source: String,
    pub changed_at: Millis,
    /// Distinct recipients of business-initiated templates in the last 24 h.
    pub used_24h: u64,
    /// … and in the last 7 days (the upgrade rule looks at these).
    pub used_7d: u64,
    /// When the oldest recipient of the window leaves it (a slot opens), if the window holds any.
    pub next_slot_at: Option<Millis>,
}

impl Store {
    /// Records the portfolio's starting tier from the config, unless the database already
    /// knows a tier (from Meta's API or webhooks), which wins.
    pub async fn ensure_portfolio_tier(
        &self,
        portfolio: &str,
        tier: Tier,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO portfolio_tiers (portfolio, tier, source, changed_at) VALUES ($1, $2, 'config', $3) \
             ON CONFLICT (portfolio) DO NOTHING",
        )
        .bind(portfolio)
        .bind(tier.to_string())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn portfolio_tier(&self, portfolio: &str) -> StoreResult<Option<Tier>> {
        let tier: Option<String> =
            sqlx::query_scalar("SELECT tier FROM portfolio_tiers WHERE portfolio = $1")
                .bind(portfolio)
                .fetch_optional(&self.pool)
                .await?;
        Ok(tier.and_then(|t| t.parse().ok()))
    }

    /// A new tier from `source`; kept in the history. Returns whether it changed.
    pub async fn set_portfolio_tier(
        &self,
        portfolio: &str,
        tier: Tier,
        source: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let old: Option<String> =
            sqlx::query_scalar("SELECT tier FROM portfolio_tiers WHERE portfolio = $1")
                .bind(portfolio)
                .fetch_optional(&mut *tx)
                .await?;
        let new = tier.to_string();
        if old.as_deref() == Some(new.as_str()) {
            tx.commit().await?;
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO portfolio_tiers (portfolio, tier, source, changed_at) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (portfolio) DO UPDATE SET tier = excluded.tier, source = excluded.source, changed_at = excluded.changed_at",
        )
        .bind(portfolio)
        .bind(&new)
        .bind(source)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query("INSERT INTO tier_changes (portfolio, old_tier, new_tier, source, at) VALUES ($1, $2, $3, $4, $5)")
            .bind(portfolio)
            .bind(old)
            .bind(&new)
            .bind(source)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Admits the recipients that fit the portfolio's budget, in order, and records them as
    /// reached now. `true` at position i: `phones[i]` may be sent.
    pub(crate) async fn reserve_recipients(
        &self,
        tx: &mut Transaction<'static, Any>,
        budget: &TierBudget,
        phones: &[String],
        now: Millis,
    ) -> StoreResult<Vec<bool>> {
        // The tier stored now decides, not the one the caller assumed: a tier raised or
        // lowered (Meta's webhook, `tiercast tier set`) counts from the next claim. Read
        // here rather than before the transaction, it costs no turn at the pool of its own.
        let stored: Option<String> =
            sqlx::query_scalar("SELECT tier FROM portfolio_tiers WHERE portfolio = $1")
                .bind(&budget.portfolio)
                .fetch_optional(&mut **tx)
                .await?;
        let tier = stored
            .and_then(|t| t.parse::<Tier>().ok())
            .unwrap_or(budget.tier);
        let mut budget = TierBudget {
            tier,
            ..budget.clone()
        };
        if tier.limit().is_some() && self.backend == Backend::Postgres {
            // A limited budget is shared by every daemon: the portfolio's row lock serialises
            // their reservations, and the tier is read again under it.
            let locked: Option<String> = sqlx::query_scalar(
                "SELECT tier FROM portfolio_tiers WHERE portfolio = $1 FOR UPDATE",
            )
            .bind(&budget.portfolio)
            .fetch_optional(&mut **tx)
            .await?;
            if let Some(tier) = locked.and_then(|t| t.parse::<Tier>().ok()) {
                budget.tier = tier;
            }
        }
        let budget = &budget;
        if budget.tier.limit().is_none() {
            // Unlimited: every recipient is admitted; they are still recorded (for the
            // 24-hour use the metrics show, and in case the tier drops).
            let all: Vec<&str> = phones.iter().map(String::as_str).collect();
            self.record_recipients(tx, budget, &all, now).await?;
            return Ok(vec![true; phones.len()]);
        }
        let (known, mut used) = self
            .reached_since(tx, budget, phones, now - DAY_MILLIS)
            .await?;
        let limit = budget.tier.limit().map(|l| l as i64).unwrap_or(i64::MAX);
        // A ramp counts distinct recipients over 7 days, as Meta's upgrade rule does.
        let (known_week, mut used_week) = match budget.ramp_cap() {
            Some(_) => {
                self.reached_since(tx, budget, phones, now - WEEK_MILLIS)
                    .await?
            }
            None => (HashSet::new(), 0),
        };
        let ramp_cap = budget.ramp_cap().map(|c| c as i64).unwrap_or(i64::MAX);
        let mut admitted = Vec::with_capacity(phones.len());
        let mut reached = Vec::new();
        for phone in phones {
            let new_this_week = !known_week.contains(phone);
            let ok = if known.contains(phone) {
                true
            } else if used < limit && (!new_this_week || used_week < ramp_cap) {
                used += 1;
                used_week += i64::from(new_this_week);
                true
            } else {
                false
            };
            if ok {
                reached.push(phone.as_str());
            }
            admitted.push(ok);
        }
        self.record_recipients(tx, budget, &reached, now).await?;
        Ok(admitted)
    }

    /// Notes that the portfolio reached `phones` at `now` (the 24-hour window's record).
    async fn record_recipients(
        &self,
        tx: &mut Transaction<'static, Any>,
        budget: &TierBudget,
        phones: &[&str],
        now: Millis,
    ) -> StoreResult<()> {
        for chunk in phones.chunks(256) {
            // DISTINCT drops the padding rows: PostgreSQL refuses an upsert that meets one key
            // twice. `WHERE true` tells SQLite's parser the ON CONFLICT is the upsert's.
            let sql = self.bulk_sql(format!(
                "INSERT INTO tier_recipients (portfolio, phone, last_sent_at) \
                 SELECT DISTINCT * FROM (VALUES {}) AS v WHERE true \
                 ON CONFLICT (portfolio, phone) DO UPDATE SET last_sent_at = excluded.last_sent_at",
                super::value_rows(padded_len(chunk.len()), 3, 1)
            ));
            let mut q = self.growing_table_query(&sql);
            for p in padded(chunk) {
                q = q.bind(&budget.portfolio).bind(*p).bind(now);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Which of `phones` the portfolio reached after `since`, and how many recipients in all.
    async fn reached_since(
        &self,
        tx: &mut Transaction<'static, Any>,
        budget: &TierBudget,
        phones: &[String],
        since: Millis,
    ) -> StoreResult<(HashSet<String>, i64)> {
        let sql = self.bulk_sql(format!(
            // `+ 0` keeps the planner on the (portfolio, phone) key for these few phones
            // instead of scanning the whole window through the last_sent_at index.
            "SELECT phone FROM tier_recipients WHERE portfolio = $1 AND last_sent_at + 0 > $2 AND phone IN ({})",
            placeholders(3, padded_len(phones.len()))
        ));
        let mut q = self
            .growing_table_query(&sql)
            .bind(&budget.portfolio)
            .bind(since);
        for p in padded(phones) {
            q = q.bind(p.as_str());
        }
        let known: HashSet<String> = q
            .fetch_all(&mut **tx)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM tier_recipients WHERE portfolio = $1 AND last_sent_at > $2",
        )
        .bind(&budget.portfolio)
        .bind(since)
        .fetch_one(&mut **tx)
        .await?;
        Ok((known, count))
    }

    /// When the next slot of a full portfolio opens: the oldest recipient's send + 24 h.
    pub(crate) async fn next_tier_slot(
        &self,
        tx: &mut Transaction<'static, Any>,
        portfolio: &str,
        now: Millis,
    ) -> StoreResult<Millis> {
        let oldest: Option<Millis> = sqlx::query_scalar("SELECT MIN(last_sent_at) FROM tier_recipients WHERE portfolio = $1 AND last_sent_at > $2")
            .bind(portfolio)
            .bind(now - DAY_MILLIS)
            .fetch_one(&mut **tx)
            .await?;
        Ok(oldest.map(|t| t + DAY_MILLIS + 1).unwrap_or(now + 60_000))
    }

    /// A recipient reached outside campaigns (a recontact template): counted like the rest.
    pub async fn reserve_one(
        &self,
        budget: &TierBudget,
        phone: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        let ok = self
            .reserve_recipients(&mut tx, budget, &[phone.to_string()], now)
            .await?;
        tx.commit().await?;
        Ok(ok.first().copied().unwrap_or(false))
    }

    pub async fn tier_usage(&self, portfolio: &str, now: Millis) -> StoreResult<Option<TierUsage>> {
        let row = sqlx::query(
            "SELECT tier, source, changed_at FROM portfolio_tiers WHERE portfolio = $1",
        )
        .bind(portfolio)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let tier: String = row.try_get(0)?;
        let count = |since: Millis| {
            sqlx::query_scalar::<_, i64>(
                "SELECT COUNT(*) FROM tier_recipients WHERE portfolio = $1 AND last_sent_at > $2",
            )
            .bind(portfolio)
            .bind(since)
            .fetch_one(&self.pool)
        };
        let used_24h = count(now - DAY_MILLIS).await? as u64;
        let used_7d = count(now - 7 * DAY_MILLIS).await? as u64;
        let oldest: Option<Millis> = sqlx::query_scalar("SELECT MIN(last_sent_at) FROM tier_recipients WHERE portfolio = $1 AND last_sent_at > $2")
            .bind(portfolio)
            .bind(now - DAY_MILLIS)
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(TierUsage {
            portfolio: portfolio.to_string(),
            limit: tier.parse::<Tier>().ok().and_then(Tier::limit),
            tier,
            source: row.try_get(1)?,
            changed_at: row.try_get(2)?,
            used_24h,
            used_7d,
            next_slot_at: oldest.map(|t| t + DAY_MILLIS),
        }))
    }

    /// Rows of a campaign held back by the tier budget right now.
    pub async fn waiting_for_tier(&self, campaign_id: i64) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM hopper WHERE campaign_id = $1 AND waiting_for_tier = 1 AND state IN ('fresh', 'retry')",
        )
        .bind(campaign_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }
}

impl Store {
    /// The limit rose: rows held for a slot of this portfolio become due now.
    pub async fn release_tier_waiters(&self, lines: &[String], now: Millis) -> StoreResult<u64> {
        if lines.is_empty() {
            return Ok(0);
        }
        let sql = self.bulk_sql(format!(
            "UPDATE hopper SET next_attempt_at = $1 WHERE waiting_for_tier = 1 AND state IN ('fresh', 'retry') \
             AND inflight_attempt_id IS NULL AND line IN ({})",
            placeholders(2, lines.len())
        ));
        let mut q = sqlx::query(&sql).bind(now);
        for l in lines {
            q = q.bind(l.as_str());
        }
        Ok(q.execute(&self.pool).await?.rows_affected())
    }
}
