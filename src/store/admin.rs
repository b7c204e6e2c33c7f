//! Read models for the admin API and the gauges: a contact's rows in every campaign, the
//! opt-out list, and messaging-limit use (distinct recipients reached in a window).

use super::{placeholders, Store, StoreResult};
use crate::clock::Millis;
use sqlx::Row;

/// One hopper row of a contact, with its campaign's name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactCampaignRow {
    pub campaign: String,
    pub line: String,
    pub state: String,
    pub outcome: Option<String>,
    pub answer: Option<String>,
    pub attempts: i64,
    pub next_attempt_at: Millis,
    pub last_error_code: Option<i64>,
    pub last_error_text: Option<String>,
    pub wamid: Option<String>,
    pub message_status: Option<String>,
    pub loaded_at: Millis,
    pub sent_at: Option<Millis>,
    pub delivered_at: Option<Millis>,
    pub read_at: Option<Millis>,
    pub response_deadline: Option<Millis>,
    pub closed_at: Option<Millis>,
}

/// One entry of the opt-out list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OptOutRecord {
    pub phone: String,
    pub reason: String,
    /// `keyword`, `answer`, `user_preferences`, `131050`, `api`.
    pub source: String,
    pub created_at: Millis,
}

impl Store {
    /// The provider's message id and the number of every sent row of a campaign (what a
    /// status webhook names), for the webhook-ingest benchmark.
    pub async fn sent_messages(&self, campaign_id: i64) -> StoreResult<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT h.wamid, c.phone FROM hopper h JOIN contacts c ON c.id = h.contact_id \
             WHERE h.campaign_id = $1 AND h.wamid IS NOT NULL ORDER BY h.id",
        )
        .bind(campaign_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// How many rows of a campaign have this message status.
    pub async fn rows_with_status(&self, campaign_id: i64, status: &str) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM hopper WHERE campaign_id = $1 AND message_status = $2",
        )
        .bind(campaign_id)
        .bind(status)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Every hopper row of a contact, in every campaign, oldest load first.
    pub async fn contact_campaign_rows(
        &self,
        contact_id: i64,
    ) -> StoreResult<Vec<ContactCampaignRow>> {
        let rows = sqlx::query(
            "SELECT c.name, h.line, h.state, h.outcome, h.answer, h.attempts, h.next_attempt_at, \
               h.last_error_code, h.last_error_text, h.wamid, h.message_status, h.created_at, \
               h.sent_at, h.delivered_at, h.read_at, h.response_deadline, h.closed_at \
             FROM hopper h JOIN campaigns c ON c.id = h.campaign_id \
             WHERE h.contact_id = $1 ORDER BY h.id",
        )
        .bind(contact_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ContactCampaignRow {
                    campaign: r.try_get(0)?,
                    line: r.try_get(1)?,
                    state: r.try_get(2)?,
                    outcome: r.try_get(3)?,
                    answer: r.try_get(4)?,
                    attempts: r.try_get(5)?,
                    next_attempt_at: r.try_get(6)?,
                    last_error_code: r.try_get(7)?,
                    last_error_text: r.try_get(8)?,
                    wamid: r.try_get(9)?,
                    message_status: r.try_get(10)?,
                    loaded_at: r.try_get(11)?,
                    sent_at: r.try_get(12)?,
                    delivered_at: r.try_get(13)?,
                    read_at: r.try_get(14)?,
                    response_deadline: r.try_get(15)?,
                    closed_at: r.try_get(16)?,
                })
            })
            .collect()
    }

    /// The opt-out entry of one number, if it opted out.
    pub async fn opt_out_of(&self, phone: &str) -> StoreResult<Option<OptOutRecord>> {
        let row =
            sqlx::query("SELECT phone, reason, source, created_at FROM opt_outs WHERE phone = $1")
                .bind(phone)
                .fetch_optional(&self.pool)
                .await?;
        row.as_ref().map(opt_out_from_row).transpose()
    }

    /// A page of the opt-out list, newest first, and the size of the whole list.
    pub async fn opt_outs_page(
        &self,
        limit: i64,
        offset: i64,
    ) -> StoreResult<(Vec<OptOutRecord>, i64)> {
        let rows = sqlx::query(
            "SELECT phone, reason, source, created_at FROM opt_outs \
             ORDER BY created_at DESC, phone LIMIT $1 OFFSET $2",
        )
        .bind(limit)
        .bind(offset)
        .fetch_all(&self.pool)
        .await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM opt_outs")
            .fetch_one(&self.pool)
            .await?;
        let page = rows
            .iter()
            .map(opt_out_from_row)
            .collect::<StoreResult<_>>()?;
        Ok((page, total))
    }

    /// Distinct contacts that `lines` sent a template to since `since` (the messaging-limit
    /// use of a portfolio: a recipient counted once however many messages it got).
    pub async fn recipients_since(&self, lines: &[String], since: Millis) -> StoreResult<u64> {
        if lines.is_empty() {
            return Ok(0);
        }
        let sql = format!(
            "SELECT COUNT(DISTINCT contact_id) FROM hopper \
             WHERE sent_at IS NOT NULL AND sent_at >= $1 AND line IN ({})",
            placeholders(2, lines.len())
        );
        let mut q = sqlx::query_scalar::<_, i64>(&sql).bind(since);
        for line in lines {
            q = q.bind(line.as_str());
        }
        Ok(q.fetch_one(&self.pool).await?.max(0) as u64)
    }
}

fn opt_out_from_row(r: &sqlx::any::AnyRow) -> StoreResult<OptOutRecord> {
    Ok(OptOutRecord {
        phone: r.try_get(0)?,
        reason: r.try_get(1)?,
        source: r.try_get(2)?,
        created_at: r.try_get(3)?,
    })
}
