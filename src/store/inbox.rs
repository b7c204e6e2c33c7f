//! The inbox's statements: inbound messages (deduplicated by wamid), customer-service windows,
//! reply matching, answers, interactions and their message history, response timeouts.

use super::{Store, StoreError, StoreResult};
use crate::clock::Millis;
use crate::domain::Outcome;
use sqlx::any::AnyRow;
use sqlx::Row;

/// The campaign row a reply belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTarget {
    pub hopper_id: i64,
    pub campaign_id: i64,
    pub state: String,
    pub outcome: Option<String>,
    pub response_deadline: Option<Millis>,
    pub contact_id: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct InteractionRow {
    pub id: i64,
    pub phone: String,
    pub line: String,
    pub campaign: Option<String>,
    pub kind: String,
    pub state: String,
    pub reason: Option<String>,
    #[serde(serialize_with = "crate::clock::serialize_rfc3339")]
    pub opened_at: Millis,
    #[serde(serialize_with = "crate::clock::serialize_rfc3339_opt")]
    pub closed_at: Option<Millis>,
    #[serde(serialize_with = "crate::clock::serialize_rfc3339_opt")]
    pub window_expires_at: Option<Millis>,
    pub tags: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct MessageRow {
    pub direction: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
    pub wamid: Option<String>,
    pub status: Option<String>,
    #[serde(serialize_with = "crate::clock::serialize_rfc3339")]
    pub at: Millis,
}

/// A message we sent outside campaigns (agent reply, confirmation, recontact).
#[derive(Debug, Clone)]
pub struct OutboundMessage<'a> {
    pub interaction_id: Option<i64>,
    pub line: &'a str,
    pub phone: &'a str,
    pub kind: &'a str,
    pub text: Option<&'a str>,
    pub wamid: Option<&'a str>,
    pub at: Millis,
}

/// Filters of `GET /api/interactions`.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InteractionFilter {
    pub state: Option<InteractionState>,
    pub line: Option<String>,
    pub campaign: Option<String>,
    pub tag: Option<String>,
    pub q: Option<String>,
}

/// An interaction's state, as stored in `interactions.state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InteractionState {
    Open,
    Closed,
}

impl InteractionState {
    pub fn as_str(self) -> &'static str {
        match self {
            InteractionState::Open => "open",
            InteractionState::Closed => "closed",
        }
    }
}

/// The customer-service window lasts 24 h after the contact's last inbound message.
pub const WINDOW_MILLIS: Millis = 24 * 3600 * 1000;

const INTERACTION_SELECT: &str =
    "SELECT i.id, i.phone, i.line, c.name, i.kind, i.state, i.reason, i.opened_at, i.closed_at, \
       w.last_inbound_at, i.tags \
     FROM interactions i LEFT JOIN campaigns c ON c.id = i.campaign_id \
     LEFT JOIN contact_windows w ON w.line = i.line AND w.phone = i.phone";

fn interaction_from_row(r: &AnyRow) -> StoreResult<InteractionRow> {
    let tags: String = r.try_get(10)?;
    let last_inbound: Option<Millis> = r.try_get(9)?;
    Ok(InteractionRow {
        id: r.try_get(0)?,
        phone: r.try_get(1)?,
        line: r.try_get(2)?,
        campaign: r.try_get(3)?,
        kind: r.try_get(4)?,
        state: r.try_get(5)?,
        reason: r.try_get(6)?,
        opened_at: r.try_get(7)?,
        closed_at: r.try_get(8)?,
        window_expires_at: last_inbound.map(|t| t + WINDOW_MILLIS),
        tags: serde_json::from_str(&tags)
            .map_err(|e| StoreError::Corrupt(format!("interaction tags: {e}")))?,
    })
}

impl Store {
    /// Stores an inbound message once; `None` when this wamid was stored before (a retried
    /// or duplicated webhook), in which case nothing else must happen.
    pub async fn record_inbound(
        &self,
        line: &str,
        phone: &str,
        wamid: &str,
        kind: &str,
        text: Option<&str>,
        at: Millis,
    ) -> StoreResult<Option<i64>> {
        Ok(sqlx::query_scalar(
            "INSERT INTO messages (line, phone, direction, type, text, wamid, at) VALUES ($1, $2, 'in', $3, $4, $5, $6) \
             ON CONFLICT (wamid) WHERE direction = 'in' DO NOTHING RETURNING id",
        )
        .bind(line)
        .bind(phone)
        .bind(kind)
        .bind(text)
        .bind(wamid)
        .bind(at)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Records that `alias` (e.g. the WhatsApp id Gupshup reports) names the message stored
    /// as `wamid` (Gupshup's own id). Only for a message tiercast sent: callbacks naming ids it
    /// never sent (forged, or another sender's on the same app) add no row, so they cannot
    /// grow the table. Idempotent; the first mapping of an alias wins. Returns whether `wamid`
    /// is one of ours (false: nothing recorded, the send may not be stored yet).
    pub async fn add_message_alias(
        &self,
        alias: &str,
        wamid: &str,
        at: Millis,
    ) -> StoreResult<bool> {
        if alias.is_empty() || wamid.is_empty() || alias == wamid {
            return Ok(true);
        }
        let added = sqlx::query(
            "INSERT INTO message_aliases (alias, wamid, created_at) SELECT $1, $2, $3 \
             WHERE EXISTS (SELECT 1 FROM hopper WHERE wamid = $2) \
                OR EXISTS (SELECT 1 FROM messages WHERE wamid = $2 AND direction = 'out') \
             ON CONFLICT (alias) DO NOTHING",
        )
        .bind(alias)
        .bind(wamid)
        .bind(at)
        .execute(&self.pool)
        .await?
        .rows_affected();
        // Nothing added: a replay of a known mapping, or an id we never sent.
        Ok(added > 0 || self.knows_message_id(wamid).await?)
    }

    /// The stored id an alias stands for, if one was recorded.
    pub async fn resolve_message_alias(&self, alias: &str) -> StoreResult<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT wamid FROM message_aliases WHERE alias = $1")
                .bind(alias)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    pub async fn record_outbound(&self, m: &OutboundMessage<'_>) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "INSERT INTO messages (interaction_id, line, phone, direction, type, text, wamid, status, at) \
             VALUES ($1, $2, $3, 'out', $4, $5, $6, 'accepted', $7) RETURNING id",
        )
        .bind(m.interaction_id)
        .bind(m.line)
        .bind(m.phone)
        .bind(m.kind)
        .bind(m.text)
        .bind(m.wamid)
        .bind(m.at)
        .fetch_one(&self.pool)
        .await?)
    }

    /// Opens or renews the window from the message's own timestamp (never moves it back:
    /// webhooks arrive out of order).
    pub async fn touch_window(&self, line: &str, phone: &str, at: Millis) -> StoreResult<()> {
        sqlx::query(
            "INSERT INTO contact_windows (line, phone, last_inbound_at) VALUES ($1, $2, $3) \
             ON CONFLICT (line, phone) DO UPDATE SET last_inbound_at = \
               CASE WHEN excluded.last_inbound_at > contact_windows.last_inbound_at \
                    THEN excluded.last_inbound_at ELSE contact_windows.last_inbound_at END",
        )
        .bind(line)
        .bind(phone)
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// When the contact's window on the line closes (`None`: it never wrote).
    pub async fn window_expires_at(&self, line: &str, phone: &str) -> StoreResult<Option<Millis>> {
        let last: Option<Millis> = sqlx::query_scalar(
            "SELECT last_inbound_at FROM contact_windows WHERE line = $1 AND phone = $2",
        )
        .bind(line)
        .bind(phone)
        .fetch_optional(&self.pool)
        .await?;
        Ok(last.map(|t| t + WINDOW_MILLIS))
    }

    pub async fn is_blacklisted(&self, phone: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM blacklist WHERE phone = $1")
            .bind(phone)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    /// The campaign row a reply answers: the template it quotes (`context.id`), else the
    /// contact's most recent pending row on the line, else its row on the line whose template
    /// was sent most recently and that closed at or after `closed_since` (most replies quote
    /// nothing, and many come after the response timeout). Rows that closed `failed` or
    /// `exhausted` are left out: their template never reached the contact.
    pub async fn reply_target(
        &self,
        line: &str,
        phone: &str,
        context_wamid: Option<&str>,
        closed_since: Millis,
    ) -> StoreResult<Option<ReplyTarget>> {
        let columns = "h.id, h.campaign_id, h.state, h.outcome, h.response_deadline, h.contact_id";
        let to_target = |r: AnyRow| -> StoreResult<ReplyTarget> {
            Ok(ReplyTarget {
                hopper_id: r.try_get(0)?,
                campaign_id: r.try_get(1)?,
                state: r.try_get(2)?,
                outcome: r.try_get(3)?,
                response_deadline: r.try_get(4)?,
                contact_id: r.try_get(5)?,
            })
        };
        if let Some(wamid) = context_wamid {
            let row = sqlx::query(&format!(
                "SELECT {columns} FROM hopper h WHERE h.wamid = $1"
            ))
            .bind(wamid)
            .fetch_optional(&self.pool)
            .await?;
            if let Some(r) = row {
                return to_target(r).map(Some);
            }
        }
        let row = sqlx::query(&format!(
            "SELECT {columns} FROM hopper h JOIN contacts c ON c.id = h.contact_id \
             WHERE c.phone = $1 AND h.line = $2 AND h.state = 'pending' ORDER BY h.sent_at DESC, h.id DESC LIMIT 1"
        ))
        .bind(phone)
        .bind(line)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(r) = row {
            return to_target(r).map(Some);
        }
        let row = sqlx::query(&format!(
            "SELECT {columns} FROM hopper h JOIN contacts c ON c.id = h.contact_id \
             WHERE c.phone = $1 AND h.line = $2 AND h.state = 'closed' AND h.closed_at >= $3 \
               AND h.sent_at IS NOT NULL AND h.outcome NOT IN ('failed', 'exhausted') \
             ORDER BY h.sent_at DESC, h.id DESC LIMIT 1"
        ))
        .bind(phone)
        .bind(line)
        .bind(closed_since)
        .fetch_optional(&self.pool)
        .await?;
        row.map(to_target).transpose()
    }

    /// Closes a pending row with the contact's reply (`answered` with the answer's outcome, or
    /// `replied`). Returns false if the row was no longer pending.
    pub async fn close_with_reply(
        &self,
        hopper_id: i64,
        outcome: Outcome,
        answer: Option<&str>,
        now: Millis,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "UPDATE hopper SET state = 'closed', outcome = $2, answer = $3, closed_at = $4, updated_at = $4 \
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(hopper_id)
        .bind(outcome.as_str())
        .bind(answer)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Response timeouts: pending rows past their deadline close `no_answer`.
    pub async fn expire_pending(&self, now: Millis) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE hopper SET state = 'closed', outcome = 'no_answer', closed_at = $1, updated_at = $1 \
             WHERE state = 'pending' AND response_deadline IS NOT NULL AND response_deadline <= $1",
        )
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Opens an agent interaction for the contact on the line, or returns the one already open.
    pub async fn open_agent_interaction(
        &self,
        line: &str,
        phone: &str,
        campaign_id: Option<i64>,
        hopper_id: Option<i64>,
        reason: &str,
        now: Millis,
    ) -> StoreResult<(i64, bool)> {
        let existing: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM interactions WHERE phone = $1 AND line = $2 AND state = 'open' AND kind = 'agent' ORDER BY id LIMIT 1",
        )
        .bind(phone)
        .bind(line)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(id) = existing {
            return Ok((id, false));
        }
        let id = sqlx::query_scalar(
            "INSERT INTO interactions (line, phone, campaign_id, hopper_id, kind, state, reason, opened_at) \
             VALUES ($1, $2, $3, $4, 'agent', 'open', $5, $6) RETURNING id",
        )
        .bind(line)
        .bind(phone)
        .bind(campaign_id)
        .bind(hopper_id)
        .bind(reason)
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok((id, true))
    }

    pub async fn attach_message(&self, message_id: i64, interaction_id: i64) -> StoreResult<()> {
        sqlx::query("UPDATE messages SET interaction_id = $2 WHERE id = $1")
            .bind(message_id)
            .bind(interaction_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn interactions(&self, f: &InteractionFilter) -> StoreResult<Vec<InteractionRow>> {
        fn param(binds: &mut Vec<String>, value: String) -> String {
            binds.push(value);
            format!("${}", binds.len())
        }
        let mut binds: Vec<String> = Vec::new();
        let mut clauses: Vec<String> = Vec::new();
        if let Some(v) = f.state {
            clauses.push(format!(
                "i.state = {}",
                param(&mut binds, v.as_str().to_string())
            ));
        }
        if let Some(v) = &f.line {
            clauses.push(format!("i.line = {}", param(&mut binds, v.clone())));
        }
        if let Some(v) = &f.campaign {
            clauses.push(format!("c.name = {}", param(&mut binds, v.clone())));
        }
        if let Some(v) = &f.tag {
            let quoted =
                serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))?;
            clauses.push(format!(
                "i.tags LIKE {}",
                param(&mut binds, format!("%{quoted}%"))
            ));
        }
        if let Some(v) = &f.q {
            let phone = param(&mut binds, format!("%{v}%"));
            let text = param(&mut binds, format!("%{}%", v.to_lowercase()));
            clauses.push(format!(
                "(i.phone LIKE {phone} OR EXISTS (SELECT 1 FROM messages m WHERE m.interaction_id = i.id AND LOWER(m.text) LIKE {text}))"
            ));
        }
        let mut sql = INTERACTION_SELECT.to_string();
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(" ORDER BY i.id DESC LIMIT 1000");
        let mut q = sqlx::query(&sql);
        for b in &binds {
            q = q.bind(b.as_str());
        }
        q.fetch_all(&self.pool)
            .await?
            .iter()
            .map(interaction_from_row)
            .collect()
    }

    pub async fn interaction(&self, id: i64) -> StoreResult<Option<InteractionRow>> {
        let row = sqlx::query(&format!("{INTERACTION_SELECT} WHERE i.id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(interaction_from_row).transpose()
    }

    pub async fn interaction_messages(&self, id: i64) -> StoreResult<Vec<MessageRow>> {
        let rows = sqlx::query("SELECT direction, type, text, wamid, status, at FROM messages WHERE interaction_id = $1 ORDER BY at, id")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(MessageRow {
                    direction: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    text: r.try_get(2)?,
                    wamid: r.try_get(3)?,
                    status: r.try_get(4)?,
                    at: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub async fn set_interaction_tags(&self, id: i64, tags: &[String]) -> StoreResult<bool> {
        let json = serde_json::to_string(tags).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        let done = sqlx::query("UPDATE interactions SET tags = $2 WHERE id = $1")
            .bind(id)
            .bind(json)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn close_interaction(&self, id: i64, now: Millis) -> StoreResult<bool> {
        let done = sqlx::query("UPDATE interactions SET state = 'closed', closed_at = $2 WHERE id = $1 AND state = 'open'")
            .bind(id)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn open_interactions_by_line(&self) -> StoreResult<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT line, COUNT(*) FROM interactions WHERE state = 'open' GROUP BY line",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// A status webhook for a free-form message we sent (agent reply, confirmation). False
    /// when no outbound message has that id.
    pub async fn mark_outbound_status(&self, wamid: &str, status: &str) -> StoreResult<bool> {
        let done =
            sqlx::query("UPDATE messages SET status = $2 WHERE wamid = $1 AND direction = 'out'")
                .bind(wamid)
                .bind(status)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Whether an outbound message (campaign row or free-form) is stored under this id.
    pub async fn knows_message_id(&self, wamid: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM hopper WHERE wamid = $1) + \
                    (SELECT COUNT(*) FROM messages WHERE wamid = $1 AND direction = 'out')",
        )
        .bind(wamid)
        .fetch_one(&self.pool)
        .await?;
        Ok(n > 0)
    }
}
