//! Campaign state and the hopper: loading contacts, counting, closing, reporting.

use super::{placeholders, Store, StoreError, StoreResult};
use crate::clock::Millis;
use crate::domain::{CampaignState, HopperState, Outcome};
use futures::TryStreamExt;
use sqlx::any::AnyRow;
use sqlx::Row;
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignRow {
    pub id: i64,
    pub name: String,
    pub state: CampaignState,
    pub paused_reason: Option<String>,
    pub started_at: Option<Millis>,
    pub finished_at: Option<Millis>,
}

/// Hopper numbers of one campaign, the raw material of `campaign status`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HopperCounts {
    pub by_state: BTreeMap<HopperState, u64>,
    pub by_outcome: BTreeMap<Outcome, u64>,
    /// Answered rows by the answer's key.
    pub by_answer: BTreeMap<String, u64>,
    /// Rows whose message reached at least this status.
    pub sent: u64,
    pub delivered: u64,
    pub read: u64,
    /// Accepted, and held by Meta's pacing (`message_status` of the send's answer).
    pub held_for_quality_assessment: u64,
    pub paused_by_meta: u64,
}

impl HopperCounts {
    pub fn total(&self) -> u64 {
        self.by_state.values().sum()
    }

    pub fn state(&self, s: HopperState) -> u64 {
        self.by_state.get(&s).copied().unwrap_or(0)
    }

    pub fn outcome(&self, o: Outcome) -> u64 {
        self.by_outcome.get(&o).copied().unwrap_or(0)
    }
}

/// One line of `tiercast report`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportRow {
    pub phone: String,
    pub name: Option<String>,
    pub state: String,
    pub outcome: Option<String>,
    pub answer: Option<String>,
    pub attempts: i64,
    pub last_error_code: Option<i64>,
    pub last_error_text: Option<String>,
    pub wamid: Option<String>,
    pub message_status: Option<String>,
    #[serde(serialize_with = "crate::clock::serialize_rfc3339")]
    pub loaded_at: Millis,
    #[serde(serialize_with = "crate::clock::serialize_rfc3339_opt")]
    pub sent_at: Option<Millis>,
    #[serde(serialize_with = "crate::clock::serialize_rfc3339_opt")]
    pub delivered_at: Option<Millis>,
    #[serde(serialize_with = "crate::clock::serialize_rfc3339_opt")]
    pub read_at: Option<Millis>,
    #[serde(serialize_with = "crate::clock::serialize_rfc3339_opt")]
    pub closed_at: Option<Millis>,
}

const CAMPAIGN_COLUMNS: &str = "id, name, state, paused_reason, started_at, finished_at";

fn campaign_from_row(row: &AnyRow) -> StoreResult<CampaignRow> {
    let state: String = row.try_get(2)?;
    Ok(CampaignRow {
        id: row.try_get(0)?,
        name: row.try_get(1)?,
        state: state
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("campaign state: {e}")))?,
        paused_reason: row.try_get(3)?,
        started_at: row.try_get(4)?,
        finished_at: row.try_get(5)?,
    })
}

impl Store {
    /// The campaign's stored state, creating it as `draft` the first time the config names it.
    pub async fn ensure_campaign(&self, name: &str, now: Millis) -> StoreResult<CampaignRow> {
        sqlx::query(
            "INSERT INTO campaigns (name, state, created_at, updated_at) VALUES ($1, 'draft', $2, $2) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .bind(now)
        .execute(&self.pool)
        .await?;
        self.campaign_by_name(name)
            .await?
            .ok_or_else(|| StoreError::Corrupt(format!("campaign {name:?} vanished after insert")))
    }

    pub async fn campaign_by_name(&self, name: &str) -> StoreResult<Option<CampaignRow>> {
        let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns WHERE name = $1");
        let row = sqlx::query(&sql)
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(campaign_from_row).transpose()
    }

    pub async fn campaigns(&self) -> StoreResult<Vec<CampaignRow>> {
        let sql = format!("SELECT {CAMPAIGN_COLUMNS} FROM campaigns ORDER BY name");
        let rows = sqlx::query(&sql).fetch_all(&self.pool).await?;
        rows.iter().map(campaign_from_row).collect()
    }

    /// Moves a campaign from `from` to `to` only if it is still in `from` (another process may
    /// have moved it meanwhile). Returns whether it moved.
    pub async fn transition_campaign(
        &self,
        id: i64,
        from: CampaignState,
        to: CampaignState,
        reason: Option<&str>,
        now: Millis,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE campaigns SET state = $3, paused_reason = $4, updated_at = $5, \
               started_at = CASE WHEN $3 = 'running' AND started_at IS NULL THEN $5 ELSE started_at END, \
               finished_at = CASE WHEN $3 IN ('stopped', 'completed') THEN $5 ELSE finished_at END \
             WHERE id = $1 AND state = $2",
        )
        .bind(id)
        .bind(from.as_str())
        .bind(to.as_str())
        .bind(reason)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Loads every contact of `lists` into the campaign's hopper, once (SPEC §2 rules 1–2):
    /// blacklisted, opted-out and — when opt-in is required — unconsented contacts enter
    /// closed with their outcome and are never sent. Idempotent: contacts already in the
    /// hopper are left alone, so loading again only adds contacts imported since.
    pub async fn load_hopper(
        &self,
        campaign_id: i64,
        line: &str,
        lists: &[String],
        require_opt_in: bool,
        now: Millis,
    ) -> StoreResult<u64> {
        let excluded = "(b.phone IS NOT NULL OR o.phone IS NOT NULL OR ($3 = 1 AND c.opt_in = 0))";
        let sql = format!(
            "INSERT INTO hopper (campaign_id, contact_id, line, state, outcome, next_attempt_at, created_at, updated_at, closed_at) \
             SELECT $1, c.id, $2, \
               CASE WHEN {excluded} THEN 'closed' ELSE 'fresh' END, \
               CASE WHEN b.phone IS NOT NULL THEN 'blacklisted' \
                    WHEN o.phone IS NOT NULL THEN 'opted_out' \
                    WHEN ($3 = 1 AND c.opt_in = 0) THEN 'no_opt_in' END, \
               $4, $4, $4, \
               CASE WHEN {excluded} THEN $4 END \
             FROM contacts c \
             LEFT JOIN blacklist b ON b.phone = c.phone \
             LEFT JOIN opt_outs o ON o.phone = c.phone \
             WHERE c.id IN (SELECT m.contact_id FROM list_members m JOIN lists l ON l.id = m.list_id WHERE l.name IN ({})) \
             ORDER BY c.id \
             ON CONFLICT (campaign_id, contact_id) DO NOTHING",
            placeholders(5, lists.len())
        );
        let mut q = sqlx::query(&sql)
            .bind(campaign_id)
            .bind(line)
            .bind(i64::from(require_opt_in))
            .bind(now);
        for list in lists {
            q = q.bind(list.as_str());
        }
        let loaded = q.execute(&self.pool).await?.rows_affected();
        if loaded > 0 {
            self.analyze_after_bulk_load(&["hopper"]).await?;
        }
        Ok(loaded)
    }

    /// Closes every row that has not been sent yet (fresh / retry) with `outcome`: used by
    /// `stop` (`stopped`) and when a campaign's end passes (`expired`).
    pub async fn close_unsent(
        &self,
        campaign_id: i64,
        outcome: Outcome,
        now: Millis,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE hopper SET state = 'closed', outcome = $2, closed_at = $3, updated_at = $3 \
             WHERE campaign_id = $1 AND state IN ('fresh', 'retry') AND inflight_attempt_id IS NULL",
        )
        .bind(campaign_id)
        .bind(outcome.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn hopper_counts(&self, campaign_id: i64) -> StoreResult<HopperCounts> {
        let rows = sqlx::query(
            "SELECT state, outcome, answer, message_status, COUNT(*) FROM hopper WHERE campaign_id = $1 \
             GROUP BY state, outcome, answer, message_status",
        )
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?;
        let mut counts = HopperCounts::default();
        for row in rows {
            let state: String = row.try_get(0)?;
            let outcome: Option<String> = row.try_get(1)?;
            let answer: Option<String> = row.try_get(2)?;
            let status: Option<String> = row.try_get(3)?;
            let n = row.try_get::<i64, _>(4)? as u64;
            let state: HopperState = state
                .parse()
                .map_err(|e| StoreError::Corrupt(format!("hopper state: {e}")))?;
            *counts.by_state.entry(state).or_default() += n;
            if let Some(o) = outcome {
                let o: Outcome = o
                    .parse()
                    .map_err(|e| StoreError::Corrupt(format!("hopper outcome: {e}")))?;
                *counts.by_outcome.entry(o).or_default() += n;
                if let (Outcome::Answered, Some(a)) = (o, answer) {
                    *counts.by_answer.entry(a).or_default() += n;
                }
            }
            match status.as_deref() {
                Some("read") => {
                    counts.read += n;
                    counts.delivered += n;
                    counts.sent += n;
                }
                Some("delivered") => {
                    counts.delivered += n;
                    counts.sent += n;
                }
                Some("sent") | Some("accepted") => counts.sent += n,
                Some("held_for_quality_assessment") => {
                    counts.held_for_quality_assessment += n;
                    counts.sent += n;
                }
                Some("paused") => {
                    counts.paused_by_meta += n;
                    counts.sent += n;
                }
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Streams the campaign's rows in load order to `emit` (memory stays flat for big reports).
    pub async fn report_rows<F>(&self, campaign_id: i64, mut emit: F) -> StoreResult<u64>
    where
        F: FnMut(ReportRow) -> Result<(), StoreError>,
    {
        let mut rows = sqlx::query(
            "SELECT c.phone, c.name, h.state, h.outcome, h.answer, h.attempts, h.last_error_code, h.last_error_text, \
               h.wamid, h.message_status, h.created_at, h.sent_at, h.delivered_at, h.read_at, h.closed_at \
             FROM hopper h JOIN contacts c ON c.id = h.contact_id WHERE h.campaign_id = $1 ORDER BY h.id",
        )
        .bind(campaign_id)
        .fetch(&self.pool);
        let mut n = 0;
        while let Some(row) = rows.try_next().await? {
            emit(ReportRow {
                phone: row.try_get(0)?,
                name: row.try_get(1)?,
                state: row.try_get(2)?,
                outcome: row.try_get(3)?,
                answer: row.try_get(4)?,
                attempts: row.try_get(5)?,
                last_error_code: row.try_get(6)?,
                last_error_text: row.try_get(7)?,
                wamid: row.try_get(8)?,
                message_status: row.try_get(9)?,
                loaded_at: row.try_get(10)?,
                sent_at: row.try_get(11)?,
                delivered_at: row.try_get(12)?,
                read_at: row.try_get(13)?,
                closed_at: row.try_get(14)?,
            })?;
            n += 1;
        }
        Ok(n)
    }
}

impl Store {
    pub async fn campaign_name(&self, id: i64) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT name FROM campaigns WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Closes every open row (fresh, retry, pending) of a phone number in every campaign:
    /// used when the contact opts out.
    pub async fn close_open_rows_of_phone(
        &self,
        phone: &str,
        outcome: Outcome,
        now: Millis,
    ) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE hopper SET state = 'closed', outcome = $2, closed_at = $3, updated_at = $3, inflight_attempt_id = NULL \
             WHERE state <> 'closed' AND contact_id IN (SELECT id FROM contacts WHERE phone = $1)",
        )
        .bind(phone)
        .bind(outcome.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
