//! What the campaign brakes (`crate::brakes`) read: a campaign's latest verdicts from the
//! provider, kept on its attempts. Every daemon's sends and status webhooks write there, so the
//! brakes see them all and start a restarted daemon where the last one stopped.

use super::{Store, StoreResult};
use crate::clock::Millis;
use crate::domain::error_class::{ErrorClass, CLOSING_CLASSES, QUALITY_CODES};
use sqlx::Row;

/// The provider's verdict on one of a campaign's attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub contact_id: i64,
    /// `None`: accepted (and not failed since by a status webhook).
    pub error_code: Option<i64>,
}

/// The SQL condition of [`crate::domain::error_class::counts_against_failure_rate`] on an
/// `attempts` row.
fn counted_failure_sql() -> String {
    let classes: Vec<String> = CLOSING_CLASSES
        .iter()
        .map(|c| format!("'{}'", c.as_str()))
        .collect();
    let codes: Vec<String> = QUALITY_CODES.iter().map(|c| c.to_string()).collect();
    format!(
        "(error_class IN ({}) OR error_code IN ({}))",
        classes.join(", "),
        codes.join(", ")
    )
}

impl Store {
    /// The verdicts on the campaign's latest `n` attempts the provider judged, newest first:
    /// accepted, or refused with a code. Throttling is no verdict on the message, and attempts
    /// without a code (given back unsent, transport errors) are no verdict either.
    pub async fn latest_verdicts(&self, campaign_id: i64, n: i64) -> StoreResult<Vec<Verdict>> {
        let rows = sqlx::query(&format!(
            "SELECT h.contact_id, a.error_code FROM attempts a JOIN hopper h ON h.id = a.hopper_id \
             WHERE a.campaign_id = $1 AND (a.status = 'accepted' \
               OR (a.error_code IS NOT NULL AND a.error_class <> '{}')) \
             ORDER BY a.id DESC LIMIT $2",
            ErrorClass::Throttled.as_str()
        ))
        .bind(campaign_id)
        .bind(n)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Verdict {
                    contact_id: r.try_get(0)?,
                    error_code: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// Of the campaign's latest `window` settled sends (accepted, or failed in a way that
    /// counts against `max_failure_rate`): how many there are, and how many of them failed.
    pub async fn failure_window(&self, campaign_id: i64, window: i64) -> StoreResult<(i64, i64)> {
        let failed = counted_failure_sql();
        let row = sqlx::query(&format!(
            "SELECT COUNT(*), COALESCE(SUM(failed), 0) FROM ( \
               SELECT CASE WHEN {failed} THEN 1 ELSE 0 END AS failed FROM attempts \
               WHERE campaign_id = $1 AND (status = 'accepted' OR {failed}) \
               ORDER BY id DESC LIMIT $2) w"
        ))
        .bind(campaign_id)
        .bind(window)
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    /// A `failed` status webhook for a message the provider had accepted: its attempt keeps
    /// `accepted` (it was sent) and takes the error, so the brakes count it.
    pub async fn note_status_failure(
        &self,
        hopper_id: i64,
        wamid: &str,
        code: i64,
        class: ErrorClass,
        text: &str,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE attempts SET error_code = $3, error_class = $4, error_text = $5, \
               finished_at = COALESCE(finished_at, $6) \
             WHERE hopper_id = $1 AND wamid = $2 AND status = 'accepted'",
        )
        .bind(hopper_id)
        .bind(wamid)
        .bind(code)
        .bind(class.as_str())
        .bind(text)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Meta's `message_status` in its answer to a send (`held_for_quality_assessment`,
    /// `paused`): the message was accepted but is held by Meta's pacing. Stored on the row
    /// unless a status webhook moved it on already.
    pub async fn record_held_status(
        &self,
        wamid: &str,
        status: &str,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE hopper SET message_status = $2, updated_at = $3 \
             WHERE wamid = $1 AND message_status = 'accepted'",
        )
        .bind(wamid)
        .bind(status)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(())
    }
}

/// Why a running campaign's unsent rows are not going out, as far as the hopper tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeldRows {
    /// Rows waiting for a messaging-limit slot (or a ramp's daily cap), and the earliest
    /// time one of them is due again.
    pub waiting_for_tier: u64,
    pub tier_slot_at: Option<Millis>,
    /// Due rows whose contact has an open interaction on the line: a pending row or a send in
    /// flight of another campaign, or an open agent conversation (SPEC §2 rule 3).
    pub held_by_open_interactions: u64,
}

impl Store {
    /// What holds the campaign's unsent rows back at `now` (see [`HeldRows`]). Reads every due
    /// row of the campaign: meant for status views, not for the send path.
    pub async fn held_rows(
        &self,
        campaign_id: i64,
        line: &str,
        now: Millis,
    ) -> StoreResult<HeldRows> {
        let tier = sqlx::query(
            "SELECT COUNT(*), MIN(next_attempt_at) FROM hopper \
             WHERE campaign_id = $1 AND waiting_for_tier = 1 AND state IN ('fresh', 'retry')",
        )
        .bind(campaign_id)
        .fetch_one(&self.pool)
        .await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM hopper h WHERE h.campaign_id = $1 AND h.state IN ('fresh', 'retry') \
               AND h.next_attempt_at <= $2 AND h.inflight_attempt_id IS NULL \
               AND (EXISTS (SELECT 1 FROM hopper o WHERE o.contact_id = h.contact_id AND o.line = $3 \
                            AND o.id <> h.id AND (o.state = 'pending' OR o.inflight_attempt_id IS NOT NULL)) \
                    OR EXISTS (SELECT 1 FROM interactions i JOIN contacts ic ON ic.phone = i.phone \
                               WHERE ic.id = h.contact_id AND i.line = $3 AND i.state = 'open'))",
        )
        .bind(campaign_id)
        .bind(now)
        .bind(line)
        .fetch_one(&self.pool)
        .await?;
        Ok(HeldRows {
            waiting_for_tier: tier.try_get::<i64, _>(0)? as u64,
            tier_slot_at: tier.try_get(1)?,
            held_by_open_interactions: held as u64,
        })
    }
}
