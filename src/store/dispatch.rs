//! The dispatcher's statements: claim due rows, record what the provider said, settle
//! attempts from webhooks, reconcile attempts whose fate stayed unknown.
//!
//! Crash safety (SPEC §2 rule 7) lives here. A claim writes the attempt row and pushes the
//! hopper row's `next_attempt_at` to `hold_until` (now + `reconcile_after`) in one short
//! transaction, *before* the HTTP call. If the process dies mid-call, the attempt stays
//! `sending`; a status webhook naming it (`biz_opaque_callback_data`) settles it as accepted,
//! and if none comes by `hold_until`, [`Store::reconcile_stale`] abandons it and the contact
//! becomes due again. A restarted daemon first extends the holds its predecessor left
//! ([`Store::hold_orphans`]), so the time it was down does not count against them: the
//! provider's webhooks get a full `reconcile_after` of uptime to name those attempts. Every
//! outcome write is guarded by `inflight_attempt_id`, so a late or duplicated answer can never
//! move a row twice; the one exception, proof that an abandoned attempt was accepted, settles
//! only a row that holds no attempt and was not sent since ([`Store::launch_verdicts`] keeps
//! an abandoned attempt from leaving at all).

use super::tiers::TierBudget;
use super::{
    padded, padded_len, placeholders, value_rows, Backend, Store, StoreError, StoreResult,
};
use crate::clock::Millis;
use crate::domain::Outcome;
use sqlx::any::Any;
use sqlx::{Row, Transaction};
use std::collections::{BTreeMap, HashMap, HashSet};

/// `next_attempt_at` of a retry row that waits for a retry run (`auto_retry = false`).
pub const AWAITING_RETRY_RUN: Millis = i64::MAX / 4;

/// The pair rate (reference §4.3): one message per contact per 6 s on a line. A claim skips
/// contacts another row of the line sent to more recently than this.
pub const PAIR_RATE_GAP: Millis = 6_000;

/// Given a contact's number: `Some(t)` when its own hours are closed and open again at `t`.
pub type LocalHours<'a> = dyn Fn(&str) -> Option<Millis> + Sync + 'a;

/// What a claim must respect besides due dates and SPEC §2 rule 3.
#[derive(Default)]
pub struct ClaimGate<'a> {
    /// The portfolio's messaging limit (and a ramp's cap), reserved in the claim's transaction.
    pub budget: Option<&'a TierBudget>,
    /// For `local_time` campaigns: given a contact's number, `Some(t)` when its own hours are
    /// closed and open again at `t`; `None` when it may be sent now.
    pub local_hours: Option<&'a LocalHours<'a>>,
}

/// A row claimed for sending, with what rendering needs. On SQLite it is read from a JSON
/// array of these fields in this order (`opened_rows_by_id`).
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Claimed {
    pub hopper_id: i64,
    /// For logs: the contact's id, never its number.
    pub contact_id: i64,
    pub attempt_id: i64,
    pub campaign_id: i64,
    pub attempts: i64,
    pub phone: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub fields: BTreeMap<String, String>,
}

/// What to do with a row whose send failed.
#[derive(Debug, Clone, PartialEq)]
pub enum FailureAction {
    /// Throttled: due again at the given time, no attempt spent.
    Requeue { at: Millis },
    /// Retryable: attempt spent; retry at `at`, or close `exhausted` when none are left.
    Retry { at: Millis, max_attempts: i64 },
    /// Permanent for this recipient: closed with `outcome` (failed, opted_out).
    Close { outcome: Outcome },
    /// The campaign's fault: the row is left as it was (due now); the caller pauses.
    Untouched,
    /// Unknown fate (timeout, reset, 5xx without a body): keep the hold; reconcile decides.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusUpdate<'a> {
    pub wamid: &'a str,
    pub attempt_id: Option<i64>,
    pub status: &'a str,
    pub at: Millis,
    pub error_code: Option<i64>,
    pub error_text: Option<&'a str>,
}

/// An owned [`StatusUpdate`], queued for a group commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusRecord {
    pub wamid: String,
    pub attempt_id: Option<i64>,
    pub status: String,
    pub at: Millis,
    pub error_code: Option<i64>,
    pub error_text: Option<String>,
}

impl StatusRecord {
    pub fn as_update(&self) -> StatusUpdate<'_> {
        StatusUpdate {
            wamid: &self.wamid,
            attempt_id: self.attempt_id,
            status: &self.status,
            at: self.at,
            error_code: self.error_code,
            error_text: self.error_text.as_deref(),
        }
    }
}

/// A campaign's response timeout by campaign name (from the configuration): a status that
/// settles an attempt still in flight gives its row the deadline `at + timeout`.
pub type ResponseTimeouts<'a> = dyn Fn(&str) -> Option<Millis> + Send + Sync + 'a;

/// A line's lease as one daemon holds it: `name` (`line:…`) and the daemon's `holder` name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LineLease {
    pub name: std::sync::Arc<str>,
    pub holder: std::sync::Arc<str>,
}

/// A claimed send about to leave: may it? With a `lease`, only while that daemon holds it.
#[derive(Debug, Clone)]
pub struct LaunchCheck {
    pub attempt_id: i64,
    pub lease: Option<LineLease>,
}

/// The verdict on a [`LaunchCheck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launch {
    /// Still the row's attempt in flight, and the lease (if any) still held: send it.
    Go,
    /// Still the row's attempt, but another daemon drives the line now: give it back unsent.
    LeaseLost,
    /// No longer the row's attempt (reconciled, given back, closed): send nothing, write nothing.
    Gone,
}

/// An accepted send to record: the attempt, the provider's message id and the row's response
/// deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    pub attempt_id: i64,
    pub wamid: String,
    pub wa_id: Option<String>,
    pub now: Millis,
    pub response_deadline: Millis,
}

/// What one status of a batch did: the campaign row it moved forward (hopper id, campaign id,
/// contact id), if any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedStatus {
    pub advanced: Option<(i64, i64, i64)>,
    /// The wamid names a campaign row or a message sent from the inbox (false: an id we do
    /// not know, perhaps another id of one of ours, or a send not recorded yet).
    pub known: bool,
}

/// The hopper row a status touched, for the caller's follow-up (classification of failures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusTarget {
    pub hopper_id: i64,
    pub campaign_id: i64,
    pub contact_phone: String,
    pub contact_id: i64,
    pub campaign: String,
    pub state: String,
    pub attempts: i64,
    /// The status moved the message forward (false for duplicates and regressions).
    pub advanced: bool,
}

/// Order of message statuses; a status only ever moves forward (SPEC §2 rule 8).
pub fn status_rank(status: &str) -> i64 {
    match status {
        // Meta holds a paced template's message (`held_for_quality_assessment`, `paused`)
        // before sending it: still only accepted.
        "accepted" | "held_for_quality_assessment" | "paused" => 0,
        "sent" => 1,
        "delivered" => 2,
        "read" => 3,
        "failed" => 4,
        _ => -1,
    }
}

const RANK_SQL: &str = "CASE COALESCE(message_status, '') WHEN 'accepted' THEN 0 \
     WHEN 'held_for_quality_assessment' THEN 0 WHEN 'paused' THEN 0 WHEN 'sent' THEN 1 \
     WHEN 'delivered' THEN 2 WHEN 'read' THEN 3 WHEN 'failed' THEN 4 ELSE -1 END";

impl Store {
    /// Claims up to `limit` due rows of a campaign and opens an attempt for each.
    /// Skips contacts that have an open campaign interaction (pending), an open agent
    /// interaction or a send in flight on the same line (SPEC §2 rule 3). With a `budget`,
    /// reserves the portfolio's messaging limit in the same transaction: a recipient already
    /// reached in the last 24 h costs nothing, a new one takes a slot while slots remain, and
    /// the rest wait (`waiting_for_tier`) until the oldest recipient leaves the window.
    pub async fn claim_due(
        &self,
        campaign_id: i64,
        line: &str,
        now: Millis,
        hold_until: Millis,
        limit: usize,
        gate: &ClaimGate<'_>,
    ) -> StoreResult<Vec<Claimed>> {
        let mut tx = self.pool.begin().await?;
        let mut claimed = self
            .open_attempts(&mut tx, campaign_id, line, now, limit)
            .await?;
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }

        // Rows a gate holds back lose the attempt just opened for them and wait.
        let mut withdrawn: Vec<i64> = Vec::new();
        if let Some(opens_at) = gate.local_hours {
            // Contacts whose own hours are closed wait, unclaimed, until those hours open.
            let mut closed: Vec<(i64, Millis)> = Vec::new();
            claimed.retain(|row| match opens_at(&row.phone) {
                Some(at) => {
                    closed.push((row.hopper_id, at));
                    withdrawn.push(row.attempt_id);
                    false
                }
                None => true,
            });
            for (hopper_id, at) in &closed {
                sqlx::query(
                    "UPDATE hopper SET next_attempt_at = $1, updated_at = $2 WHERE id = $3",
                )
                .bind(*at)
                .bind(now)
                .bind(*hopper_id)
                .execute(&mut *tx)
                .await?;
            }
        }
        if let (Some(budget), false) = (gate.budget, claimed.is_empty()) {
            let phones: Vec<String> = claimed.iter().map(|row| row.phone.clone()).collect();
            let admitted = self
                .reserve_recipients(&mut tx, budget, &phones, now)
                .await?;
            let mut admitted = admitted.into_iter();
            let mut held: Vec<i64> = Vec::new();
            claimed.retain(|row| {
                let ok = admitted.next().unwrap_or(false);
                if !ok {
                    held.push(row.hopper_id);
                    withdrawn.push(row.attempt_id);
                }
                ok
            });
            if !held.is_empty() {
                let opens_at = self.next_tier_slot(&mut tx, &budget.portfolio, now).await?;
                let sql = self.bulk_sql(format!(
                    "UPDATE hopper SET waiting_for_tier = 1, next_attempt_at = $1, updated_at = $2 \
                     WHERE id IN ({})",
                    placeholders(3, padded_len(held.len()))
                ));
                let mut q = sqlx::query(&sql).bind(opens_at).bind(now);
                for hopper_id in padded(&held) {
                    q = q.bind(*hopper_id);
                }
                q.execute(&mut *tx).await?;
            }
        }
        if !withdrawn.is_empty() {
            let sql = self.bulk_sql(format!(
                "DELETE FROM attempts WHERE id IN ({})",
                placeholders(1, padded_len(withdrawn.len()))
            ));
            let mut q = self.growing_table_query(&sql);
            for attempt_id in padded(&withdrawn) {
                q = q.bind(*attempt_id);
            }
            q.execute(&mut *tx).await?;
        }
        if claimed.is_empty() {
            tx.commit().await?;
            return Ok(Vec::new());
        }

        // Each row is held (its attempt in flight, due again only at `hold_until`) in one
        // join: no lookup per row.
        let rows = padded_len(claimed.len());
        let sql = self.bulk_sql(format!(
            "WITH v (hopper_id, attempt_id) AS (VALUES {}) \
             UPDATE hopper SET waiting_for_tier = 0, inflight_attempt_id = v.attempt_id, \
               next_attempt_at = ${}, updated_at = ${} \
             FROM v WHERE hopper.id = v.hopper_id",
            value_rows(rows, 2, 1),
            2 * rows + 1,
            2 * rows + 2
        ));
        let mut q = sqlx::query(&sql);
        for row in padded(&claimed) {
            q = q.bind(row.hopper_id).bind(row.attempt_id);
        }
        q.bind(hold_until).bind(now).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(claimed)
    }

    /// Opens the attempts of up to `limit` due rows of the campaign ([`Store::claim_sql`]) and
    /// reads them back with their rows and contacts, in hopper order.
    async fn open_attempts(
        &self,
        tx: &mut Transaction<'static, Any>,
        campaign_id: i64,
        line: &str,
        now: Millis,
        limit: usize,
    ) -> StoreResult<Vec<Claimed>> {
        let sql = self.claim_sql();
        let claim = bound_claim(&sql, campaign_id, line, now, limit);
        match self.backend {
            Backend::Postgres => {
                let opened = claim.fetch_all(&mut **tx).await?;
                self.opened_rows_returned(tx, campaign_id, &opened).await
            }
            Backend::Sqlite => {
                let opened = claim.execute(&mut **tx).await?.rows_affected() as i64;
                self.opened_rows_by_id(tx, campaign_id, now, opened).await
            }
        }
    }

    /// PostgreSQL: the rows and contacts of the attempts `opened` returned (id, hopper id).
    async fn opened_rows_returned(
        &self,
        tx: &mut Transaction<'static, Any>,
        campaign_id: i64,
        opened: &[sqlx::any::AnyRow],
    ) -> StoreResult<Vec<Claimed>> {
        if opened.is_empty() {
            return Ok(Vec::new());
        }
        let mut attempt_of: HashMap<i64, i64> = HashMap::with_capacity(opened.len());
        for row in opened {
            attempt_of.insert(row.try_get(1)?, row.try_get(0)?);
        }
        let mut hopper_ids: Vec<i64> = attempt_of.keys().copied().collect();
        hopper_ids.sort_unstable();

        let sql = self.bulk_sql(format!(
            "SELECT h.id, h.contact_id, h.attempts, c.phone, c.name, c.email, c.fields \
             FROM hopper h JOIN contacts c ON c.id = h.contact_id WHERE h.id IN ({}) ORDER BY h.id",
            placeholders(1, padded_len(hopper_ids.len()))
        ));
        let mut q = sqlx::query(&sql);
        for id in padded(&hopper_ids) {
            q = q.bind(*id);
        }
        let mut claimed = Vec::with_capacity(hopper_ids.len());
        for row in q.fetch_all(&mut **tx).await? {
            let hopper_id: i64 = row.try_get(0)?;
            let contact_id: i64 = row.try_get(1)?;
            let fields: String = row.try_get(6)?;
            let fields: BTreeMap<String, String> = serde_json::from_str(&fields)
                .map_err(|e| StoreError::Corrupt(format!("contact {contact_id} fields: {e}")))?;
            claimed.push(Claimed {
                hopper_id,
                contact_id,
                attempt_id: attempt_of[&hopper_id],
                campaign_id,
                attempts: row.try_get(2)?,
                phone: row.try_get(3)?,
                name: row.try_get(4)?,
                email: row.try_get(5)?,
                fields,
            });
        }
        if claimed.len() != hopper_ids.len() {
            // The caller drops the transaction: the claim rolls back, nothing half-claimed.
            return Err(StoreError::Corrupt(format!(
                "{} of {} claimed hopper rows name a stored contact",
                claimed.len(),
                hopper_ids.len()
            )));
        }
        Ok(claimed)
    }

    /// SQLite: the `count` attempts just opened, with their rows and contacts, read as one
    /// JSON value. sqlx streams an SQLite result from its connection thread 50 rows at a time,
    /// and each full buffer parks that thread until the caller drains it: a claim of 200 rows
    /// returned twice cost about eight more hand-offs between threads than the statements
    /// themselves (`tiercast bench --no-status-webhooks` ran 9 – 13 % faster with a buffer
    /// large enough to hold them). One value is one hand-off.
    ///
    /// The attempts are found by id: in the write transaction no one else inserts, and SQLite
    /// numbers the rows of one `INSERT` consecutively from the largest id plus one, so they
    /// are the last `rows_affected` ids up to `last_insert_rowid()`. The read checks that it
    /// found exactly that many.
    async fn opened_rows_by_id(
        &self,
        tx: &mut Transaction<'static, Any>,
        campaign_id: i64,
        now: Millis,
        count: i64,
    ) -> StoreResult<Vec<Claimed>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        // `last_insert_rowid()` is this connection's, read in SQL: sqlx's `Any` driver does
        // not pass SQLite's on.
        let json: String = sqlx::query_scalar(
            "SELECT json_group_array(json_array(h.id, h.contact_id, a.id, a.campaign_id, \
                    h.attempts, c.phone, c.name, c.email, json(c.fields))) \
             FROM attempts a JOIN hopper h ON h.id = a.hopper_id JOIN contacts c ON c.id = h.contact_id \
             WHERE a.id BETWEEN last_insert_rowid() - $1 + 1 AND last_insert_rowid() \
               AND a.campaign_id = $2 AND a.status = 'sending' AND a.started_at = $3",
        )
        .bind(count)
        .bind(campaign_id)
        .bind(now)
        .fetch_one(&mut **tx)
        .await?;
        let mut claimed: Vec<Claimed> =
            json_rows(&json, &format!("claimed rows of campaign {campaign_id}"))?;
        if claimed.len() as i64 != count {
            // The caller drops the transaction: the claim rolls back, nothing half-claimed.
            return Err(StoreError::Corrupt(format!(
                "{} of {count} attempts just opened found with their row and contact",
                claimed.len()
            )));
        }
        claimed.sort_unstable_by_key(|c| c.hopper_id);
        Ok(claimed)
    }

    /// The statement that picks a campaign's due rows and opens their attempts. Binds: $1
    /// campaign id, $2 now, $3 limit, $4 line, $5 the `sent_at` after which a send to the
    /// same contact still blocks (the pair-rate gap). Writing first takes SQLite's write lock
    /// at once (no read→write upgrade to fail); `claim_due` then writes each row once, with
    /// the attempt it is held for. On PostgreSQL it returns each attempt's id and hopper id;
    /// on SQLite the attempts are read back by id. Public so that tests can EXPLAIN it.
    pub fn claim_sql(&self) -> String {
        // `OFFSET 0` keeps PostgreSQL from turning the NOT EXISTS checks into anti-joins:
        // planned on statistics taken before the run (no row pending yet), it materialised
        // every pending row of the hopper and compared each candidate with all of them, and
        // 200,000-contact campaigns slowed to a crawl. As subplans, each candidate costs one
        // index probe whatever the statistics say. (SQLite already runs them so.)
        let (lock, per_row, returning) = match self.backend {
            Backend::Postgres => (
                "FOR UPDATE SKIP LOCKED",
                " OFFSET 0",
                " RETURNING id, hopper_id",
            ),
            Backend::Sqlite => ("", "", ""),
        };
        format!(
            "INSERT INTO attempts (hopper_id, campaign_id, line, status, started_at) \
             SELECT h.id, $1, $4, 'sending', $2 FROM hopper h \
                WHERE h.campaign_id = $1 AND h.state IN ('fresh', 'retry') AND h.next_attempt_at <= $2 \
                  AND h.inflight_attempt_id IS NULL \
                  AND NOT EXISTS (SELECT 1 FROM hopper o WHERE o.contact_id = h.contact_id AND o.line = $4 \
                                  AND o.id <> h.id AND (o.state = 'pending' OR o.inflight_attempt_id IS NOT NULL \
                                                        OR o.sent_at > $5){per_row}) \
                  AND NOT EXISTS (SELECT 1 FROM interactions i JOIN contacts ic ON ic.phone = i.phone \
                                  WHERE ic.id = h.contact_id AND i.line = $4 AND i.state = 'open'{per_row}) \
                ORDER BY h.next_attempt_at, h.id LIMIT $3 {lock}{returning}"
        )
    }

    /// How many earlier sends of this attempt's row met the pair rate limit (131056).
    pub async fn pair_rate_hits(&self, attempt_id: i64) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM attempts WHERE error_code = 131056 \
               AND hopper_id = (SELECT hopper_id FROM attempts WHERE id = $1)",
        )
        .bind(attempt_id)
        .fetch_one(&self.pool)
        .await?)
    }

    /// The last check before claimed sends leave (SPEC §2 rule 7 across freezes and clock
    /// steps): each attempt must still be its row's attempt in flight, and its line's lease
    /// still held by the daemon sending it, measured on the lease clock (the database
    /// server's on PostgreSQL). Read only, one statement for the attempts and one per lease:
    /// the group commit asks it for every send that has its HTTP permit.
    pub async fn launch_verdicts(
        &self,
        checks: &[LaunchCheck],
        now: Millis,
    ) -> StoreResult<Vec<Launch>> {
        let ids: Vec<i64> = checks.iter().map(|c| c.attempt_id).collect();
        let mut live: HashSet<i64> = HashSet::with_capacity(ids.len());
        for chunk in ids.chunks(STATUS_CHUNK) {
            let list = placeholders(1, padded_len(chunk.len()));
            if self.backend == Backend::Sqlite {
                // One JSON value, not rows through sqlx's 50-row channel (`opened_rows_by_id`).
                let sql = self.bulk_sql(format!(
                    "SELECT json_group_array(inflight_attempt_id) FROM hopper \
                     WHERE inflight_attempt_id IN ({list})"
                ));
                let mut q = sqlx::query_scalar(&sql);
                for id in padded(chunk) {
                    q = q.bind(*id);
                }
                let json: String = q.fetch_one(&self.pool).await?;
                live.extend(json_rows::<i64>(&json, "attempts still in flight")?);
            } else {
                let sql = self.bulk_sql(format!(
                    "SELECT inflight_attempt_id FROM hopper WHERE inflight_attempt_id IN ({list})"
                ));
                let mut q = sqlx::query_scalar::<_, i64>(&sql);
                for id in padded(chunk) {
                    q = q.bind(*id);
                }
                live.extend(q.fetch_all(&self.pool).await?);
            }
        }
        let mut held: HashMap<&LineLease, bool> = HashMap::new();
        for lease in checks.iter().filter_map(|c| c.lease.as_ref()) {
            if held.contains_key(lease) {
                continue;
            }
            let (at, bind_now) = self.lease_now(3);
            let sql = format!(
                "SELECT COUNT(*) FROM leases WHERE name = $1 AND holder = $2 AND expires_at >= {at}"
            );
            let mut q = sqlx::query_scalar(&sql)
                .bind(&*lease.name)
                .bind(&*lease.holder);
            if bind_now {
                q = q.bind(now);
            }
            let n: i64 = q.fetch_one(&self.pool).await?;
            held.insert(lease, n > 0);
        }
        Ok(checks
            .iter()
            .map(|c| {
                if !live.contains(&c.attempt_id) {
                    Launch::Gone
                } else if c.lease.as_ref().is_some_and(|l| !held[l]) {
                    Launch::LeaseLost
                } else {
                    Launch::Go
                }
            })
            .collect())
    }

    /// Gives claimed rows back unsent, in one transaction: for each attempt what
    /// [`Store::record_failure`] with [`FailureAction::Untouched`] does (the attempt `failed`
    /// with `class` and `text`, the row due again now, no attempt spent).
    pub async fn give_back(
        &self,
        attempt_ids: &[i64],
        class: &str,
        text: &str,
        now: Millis,
    ) -> StoreResult<()> {
        if attempt_ids.is_empty() {
            return Ok(());
        }
        let mut ids = attempt_ids.to_vec();
        ids.sort_unstable();
        let n = padded_len(ids.len());
        retry_deadlocks(|| async {
            let mut tx = self.pool.begin().await?;
            self.lock_in_order(&mut tx, Locked::HopperHolding, &ids)
                .await?;
            let sql = self.bulk_sql(format!(
                "UPDATE attempts SET status = 'failed', error_class = $1, error_text = $2, \
                   finished_at = $3 WHERE status = 'sending' AND id IN ({})",
                placeholders(4, n)
            ));
            let mut q = self
                .growing_table_query(&sql)
                .bind(class)
                .bind(text)
                .bind(now);
            for id in padded(&ids) {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
            let sql = self.bulk_sql(format!(
                "UPDATE hopper SET inflight_attempt_id = NULL, next_attempt_at = $1 \
                 WHERE inflight_attempt_id IN ({})",
                placeholders(2, n)
            ));
            let mut q = sqlx::query(&sql).bind(now);
            for id in padded(&ids) {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Records a failed send and moves the row as `action` says.
    pub async fn record_failure(
        &self,
        attempt_id: i64,
        action: &FailureAction,
        code: Option<i64>,
        class: &str,
        text: &str,
        now: Millis,
    ) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        let attempt_status = if *action == FailureAction::Unknown {
            "unknown"
        } else {
            "failed"
        };
        sqlx::query(
            "UPDATE attempts SET status = $2, error_code = $3, error_class = $4, error_text = $5, finished_at = $6 \
             WHERE id = $1 AND status = 'sending'",
        )
        .bind(attempt_id)
        .bind(attempt_status)
        .bind(code)
        .bind(class)
        .bind(text)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let guard = "WHERE inflight_attempt_id = $1";
        match action {
            FailureAction::Unknown => {}
            FailureAction::Requeue { at } => {
                sqlx::query(&format!(
                    "UPDATE hopper SET inflight_attempt_id = NULL, next_attempt_at = $2, last_error_code = $3, \
                       last_error_text = $4, updated_at = $5 {guard}"
                ))
                .bind(attempt_id)
                .bind(*at)
                .bind(code)
                .bind(text)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            FailureAction::Untouched => {
                sqlx::query(&format!(
                    "UPDATE hopper SET inflight_attempt_id = NULL, next_attempt_at = $2 {guard}"
                ))
                .bind(attempt_id)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            FailureAction::Retry { at, max_attempts } => {
                sqlx::query(&format!(
                    "UPDATE hopper SET inflight_attempt_id = NULL, attempts = attempts + 1, \
                       state = CASE WHEN attempts + 1 >= $3 THEN 'closed' ELSE 'retry' END, \
                       outcome = CASE WHEN attempts + 1 >= $3 THEN 'exhausted' ELSE NULL END, \
                       closed_at = CASE WHEN attempts + 1 >= $3 THEN $6 ELSE NULL END, \
                       next_attempt_at = $2, last_error_code = $4, last_error_text = $5, updated_at = $6 {guard}"
                ))
                .bind(attempt_id)
                .bind(*at)
                .bind(*max_attempts)
                .bind(code)
                .bind(text)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            FailureAction::Close { outcome } => {
                sqlx::query(&format!(
                    "UPDATE hopper SET inflight_attempt_id = NULL, attempts = attempts + 1, state = 'closed', \
                       outcome = $2, closed_at = $5, last_error_code = $3, last_error_text = $4, updated_at = $5 {guard}"
                ))
                .bind(attempt_id)
                .bind(outcome.as_str())
                .bind(code)
                .bind(text)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(())
    }

    /// Attempts still `sending` / `unknown` whose hold expired: no webhook settled them within
    /// `reconcile_after`, so they count as spent and the contact becomes due again (or
    /// `exhausted`). Attempts in `spared` are left alone: the caller still has them under way
    /// and times them itself. Returns how many were abandoned.
    pub async fn reconcile_stale(
        &self,
        line: &str,
        now: Millis,
        max_attempts_of: &HashMap<i64, i64>,
        spared: &HashSet<i64>,
    ) -> StoreResult<u64> {
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "SELECT h.id, h.campaign_id, h.inflight_attempt_id FROM hopper h \
             WHERE h.line = $1 AND h.inflight_attempt_id IS NOT NULL AND h.next_attempt_at <= $2 \
               AND h.state IN ('fresh', 'retry')",
        )
        .bind(line)
        .bind(now)
        .fetch_all(&mut *tx)
        .await?;
        let mut n = 0;
        for row in rows {
            let hopper_id: i64 = row.try_get(0)?;
            let campaign_id: i64 = row.try_get(1)?;
            let attempt_id: i64 = row.try_get(2)?;
            if spared.contains(&attempt_id) {
                continue;
            }
            let max_attempts = max_attempts_of
                .get(&campaign_id)
                .copied()
                .unwrap_or(i64::MAX);
            sqlx::query(
                "UPDATE attempts SET status = 'abandoned', finished_at = $2 WHERE id = $1 AND status IN ('sending', 'unknown')",
            )
            .bind(attempt_id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
            sqlx::query(
                "UPDATE hopper SET inflight_attempt_id = NULL, attempts = attempts + 1, \
                   state = CASE WHEN attempts + 1 >= $3 THEN 'closed' ELSE 'retry' END, \
                   outcome = CASE WHEN attempts + 1 >= $3 THEN 'exhausted' ELSE NULL END, \
                   closed_at = CASE WHEN attempts + 1 >= $3 THEN $2 ELSE NULL END, \
                   next_attempt_at = $2, last_error_text = 'no answer from the provider; sent again', updated_at = $2 \
                 WHERE id = $1 AND inflight_attempt_id = $4",
            )
            .bind(hopper_id)
            .bind(now)
            .bind(max_attempts)
            .bind(attempt_id)
            .execute(&mut *tx)
            .await?;
            n += 1;
        }
        tx.commit().await?;
        Ok(n)
    }

    /// At start: sends a previous process left in flight (it crashed or was killed, so their
    /// outcome was never recorded) are held until at least `until` (now + `reconcile_after`).
    /// The provider may have accepted them; the status webhooks naming them could not reach
    /// a dead daemon and come with the provider's retries once it is back. Without this, an
    /// outage longer than `reconcile_after` would abandon them at once and send every such
    /// contact a second time. Returns how many rows it holds.
    pub async fn hold_orphans(&self, line: &str, until: Millis) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE hopper SET next_attempt_at = $2 \
             WHERE line = $1 AND inflight_attempt_id IS NOT NULL AND state IN ('fresh', 'retry') \
               AND next_attempt_at < $2",
        )
        .bind(line)
        .bind(until)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Records accepted sends and applies the statuses of several webhook POSTs in one
    /// transaction (see `outcomes.rs`), answering each POST's own results. The sends come
    /// first, so a status of a send in the same batch finds it settled.
    pub async fn record_outcomes(
        &self,
        settles: &[Settle],
        posts: &[std::sync::Arc<[StatusRecord]>],
        timeouts: &ResponseTimeouts<'_>,
        now: Millis,
    ) -> StoreResult<Vec<Vec<AppliedStatus>>> {
        let mut settles = settles.to_vec();
        settles.sort_by_key(|s| s.attempt_id);
        let updates: Vec<StatusUpdate<'_>> = posts
            .iter()
            .flat_map(|post| post.iter())
            .map(StatusRecord::as_update)
            .collect();
        let applied = retry_deadlocks(|| async {
            let mut tx = self.pool.begin().await?;
            self.settle_accepted_in(&mut tx, &settles).await?;
            let applied = self
                .apply_statuses_in(&mut tx, &updates, timeouts, now)
                .await?;
            tx.commit().await?;
            Ok(applied)
        })
        .await?;
        let mut applied = applied.into_iter();
        Ok(posts
            .iter()
            .map(|post| applied.by_ref().take(post.len()).collect())
            .collect())
    }

    /// Applies webhook statuses in one transaction: each may settle the attempt it names
    /// (when still in flight, giving the row its response deadline from `timeouts`), then
    /// moves the message forward unless it is already further (SPEC §2 rule 8). A status of no
    /// campaign row updates the inbox message of that wamid. One entry per update, in order.
    /// `now` is the daemon's time: a settle never counts from a status stamped later.
    pub async fn apply_statuses(
        &self,
        updates: &[StatusUpdate<'_>],
        timeouts: &ResponseTimeouts<'_>,
        now: Millis,
    ) -> StoreResult<Vec<AppliedStatus>> {
        retry_deadlocks(|| async {
            let mut tx = self.pool.begin().await?;
            let applied = self
                .apply_statuses_in(&mut tx, updates, timeouts, now)
                .await?;
            tx.commit().await?;
            Ok(applied)
        })
        .await
    }

    async fn apply_statuses_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        updates: &[StatusUpdate<'_>],
        timeouts: &ResponseTimeouts<'_>,
        now: Millis,
    ) -> StoreResult<Vec<AppliedStatus>> {
        let mut out = vec![AppliedStatus::default(); updates.len()];
        // A status naming an attempt still in flight (it beat the HTTP answer, or the daemon
        // died before recording it) settles it first, once per attempt. Usually none is: the
        // answer came first. One lookup for the whole batch, not one per webhook POST.
        let mut named: Vec<i64> = updates.iter().filter_map(|u| u.attempt_id).collect();
        named.sort_unstable();
        named.dedup();
        let in_flight = self.attempts_in_flight(tx, &named).await?;
        // One settle per attempt in flight, its response deadline counted from the attempt's
        // earliest status here (`sent`, when present): a `read` may arrive first. A timestamp
        // ahead of the daemon's clock (skew, or a provider's milliseconds read as seconds)
        // counts from `now`, or the row would wait past its timeout, perhaps for ever.
        let mut earliest: HashMap<i64, &StatusUpdate<'_>> = HashMap::new();
        for u in updates {
            if let Some(a) = u.attempt_id.filter(|a| in_flight.contains_key(a)) {
                let first = earliest.entry(a).or_insert(u);
                if u.at < first.at {
                    *first = u;
                }
            }
        }
        let mut settles: Vec<Settle> = earliest
            .into_iter()
            .map(|(attempt_id, u)| {
                let sent_at = u.at.min(now);
                Settle {
                    attempt_id,
                    wamid: u.wamid.to_string(),
                    wa_id: None,
                    now: sent_at,
                    response_deadline: sent_at + timeouts(&in_flight[&attempt_id]).unwrap_or(0),
                }
            })
            .collect();
        settles.sort_by_key(|s| s.attempt_id);
        self.settle_accepted_in(tx, &settles).await?;

        // Statuses of words we track, grouped by message. A word of no step we track has
        // nothing to apply and nothing to look for.
        let mut by_wamid: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, u) in updates.iter().enumerate() {
            if status_rank(u.status) < 0 {
                out[i].known = true;
            } else {
                by_wamid.entry(u.wamid).or_default().push(i);
            }
        }
        let wamids: Vec<&str> = by_wamid.keys().copied().collect();
        // One read of the campaign rows they name, then one write of each row's end state:
        // a row is written once however many of its statuses the batch holds (usually sent,
        // delivered and read together), and no statement returns a row per status.
        let mut moves: Vec<StatusMove<'_>> = Vec::new();
        for chunk in wamids.chunks(STATUS_CHUNK) {
            for row in self.status_rows(tx, chunk).await? {
                let indices = &by_wamid[row.wamid.as_str()];
                for i in indices {
                    out[*i].known = true;
                }
                if let Some(m) = StatusMove::plan(&row, updates, indices, &mut out) {
                    moves.push(m);
                }
            }
        }
        for chunk in moves.chunks(STATUS_CHUNK) {
            self.write_status_moves(tx, chunk).await?;
        }
        // Not a campaign row: perhaps a text or recontact sent from the inbox.
        for indices in by_wamid.values() {
            for i in indices {
                if out[*i].known {
                    continue;
                }
                let update = &updates[*i];
                out[*i].known = sqlx::query(
                    "UPDATE messages SET status = $2 WHERE wamid = $1 AND direction = 'out'",
                )
                .bind(update.wamid)
                .bind(update.status)
                .execute(&mut **tx)
                .await?
                .rows_affected()
                    > 0;
            }
        }
        Ok(out)
    }

    /// The campaign rows of these wamids with their message status; on PostgreSQL locked in
    /// primary-key order, the order every batch writer locks in (SQLite has one writer).
    async fn status_rows(
        &self,
        tx: &mut Transaction<'static, Any>,
        wamids: &[&str],
    ) -> StoreResult<Vec<StatusRow>> {
        let list = placeholders(1, padded_len(wamids.len()));
        if self.backend == Backend::Sqlite {
            // One JSON value, not a stream of rows through sqlx's 50-row channel (see
            // `opened_rows_by_id`): a group commit often names a few hundred messages.
            let sql = self.bulk_sql(format!(
                "SELECT json_group_array(json_array(id, campaign_id, contact_id, wamid, message_status)) \
                 FROM hopper WHERE wamid IN ({list})"
            ));
            let mut q = sqlx::query_scalar(&sql);
            for w in padded(wamids) {
                q = q.bind(*w);
            }
            let json: String = q.fetch_one(&mut **tx).await?;
            return json_rows(&json, "rows named by statuses");
        }
        let sql = format!(
            "SELECT id, campaign_id, contact_id, wamid, message_status FROM hopper \
             WHERE wamid IN ({list}) ORDER BY id FOR UPDATE"
        );
        let mut q = sqlx::query(&sql);
        for w in padded(wamids) {
            q = q.bind(*w);
        }
        let mut rows = Vec::new();
        for row in q.fetch_all(&mut **tx).await? {
            rows.push(StatusRow {
                hopper_id: row.try_get(0)?,
                campaign_id: row.try_get(1)?,
                contact_id: row.try_get(2)?,
                wamid: row.try_get(3)?,
                status: row.try_get(4)?,
            });
        }
        Ok(rows)
    }

    /// Writes each moved row's end state in one statement. The rank guard repeats, in SQL,
    /// the rule the plan followed: a row never moves back (SPEC §2 rule 8).
    async fn write_status_moves(
        &self,
        tx: &mut Transaction<'static, Any>,
        moves: &[StatusMove<'_>],
    ) -> StoreResult<()> {
        let sql = self.bulk_sql(format!(
            "WITH v (id, status, status_rank, at, delivered_at, read_at, code, text) AS (VALUES {}) \
             UPDATE hopper SET message_status = v.status, updated_at = v.at, \
               delivered_at = COALESCE(hopper.delivered_at, v.delivered_at), \
               read_at = COALESCE(hopper.read_at, v.read_at), \
               last_error_code = CASE WHEN v.status = 'failed' THEN v.code ELSE hopper.last_error_code END, \
               last_error_text = CASE WHEN v.status = 'failed' THEN v.text ELSE hopper.last_error_text END \
             FROM v WHERE hopper.id = v.id AND {RANK_SQL} < v.status_rank",
            value_rows(padded_len(moves.len()), 8, 1)
        ));
        let mut q = sqlx::query(&sql);
        for m in padded(moves) {
            q = q
                .bind(m.hopper_id)
                .bind(m.status)
                .bind(status_rank(m.status))
                .bind(m.at)
                .bind(m.delivered_at)
                .bind(m.read_at)
                .bind(m.error_code)
                .bind(m.error_text);
        }
        q.execute(&mut **tx).await?;
        Ok(())
    }

    /// The campaign row a message belongs to, for the follow-up of a `failed` status.
    pub async fn status_target(&self, wamid: &str) -> StoreResult<Option<StatusTarget>> {
        let row = sqlx::query(
            "SELECT h.id, h.campaign_id, c.phone, h.state, h.attempts, h.contact_id, k.name FROM hopper h \
             JOIN contacts c ON c.id = h.contact_id JOIN campaigns k ON k.id = h.campaign_id WHERE h.wamid = $1",
        )
        .bind(wamid)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(StatusTarget {
                hopper_id: r.try_get(0)?,
                campaign_id: r.try_get(1)?,
                contact_phone: r.try_get(2)?,
                state: r.try_get(3)?,
                attempts: r.try_get(4)?,
                contact_id: r.try_get(5)?,
                campaign: r.try_get(6)?,
                advanced: true,
            })
        })
        .transpose()
    }

    /// Which of these attempts are still in flight (`sending` or `unknown`) or were abandoned
    /// (a status naming one settles its row unless it was sent again), with their campaign's
    /// name.
    async fn attempts_in_flight(
        &self,
        tx: &mut Transaction<'static, Any>,
        ids: &[i64],
    ) -> StoreResult<HashMap<i64, String>> {
        let mut out = HashMap::new();
        for chunk in ids.chunks(STATUS_CHUNK) {
            let sql = self.bulk_sql(format!(
                "SELECT a.id, c.name FROM attempts a JOIN campaigns c ON c.id = a.campaign_id \
                 WHERE a.status IN ('sending', 'unknown', 'abandoned') AND a.id IN ({})",
                placeholders(1, padded_len(chunk.len()))
            ));
            let mut q = self.growing_table_query(&sql);
            for id in padded(chunk) {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&mut **tx).await? {
                out.insert(row.try_get(0)?, row.try_get(1)?);
            }
        }
        Ok(out)
    }

    /// A `failed` status for a message that was accepted: the row leaves `pending` as the
    /// classification says. Only rows still pending move (an answer may have closed it).
    pub async fn fail_pending(
        &self,
        hopper_id: i64,
        action: &FailureAction,
        code: i64,
        text: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let (state, outcome, next_at, closed_at): (&str, Option<&str>, Millis, Option<Millis>) =
            match action {
                FailureAction::Close { outcome } => {
                    ("closed", Some(outcome.as_str()), now, Some(now))
                }
                FailureAction::Retry { at, max_attempts } => {
                    let attempts: i64 =
                        sqlx::query_scalar("SELECT attempts FROM hopper WHERE id = $1")
                            .bind(hopper_id)
                            .fetch_one(&self.pool)
                            .await?;
                    if attempts >= *max_attempts {
                        ("closed", Some(Outcome::Exhausted.as_str()), now, Some(now))
                    } else {
                        ("retry", None, *at, None)
                    }
                }
                FailureAction::Requeue { at } => ("retry", None, *at, None),
                FailureAction::Untouched | FailureAction::Unknown => ("retry", None, now, None),
            };
        let done = sqlx::query(
            "UPDATE hopper SET state = $2, outcome = $3, next_attempt_at = $4, closed_at = $5, \
               last_error_code = $6, last_error_text = $7, response_deadline = NULL, updated_at = $8 \
             WHERE id = $1 AND state = 'pending'",
        )
        .bind(hopper_id)
        .bind(state)
        .bind(outcome)
        .bind(next_at)
        .bind(closed_at)
        .bind(code)
        .bind(text)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Makes every waiting retry row of a campaign due now (a retry run). Returns the count.
    pub async fn make_retries_due(&self, campaign_id: i64, now: Millis) -> StoreResult<u64> {
        let done = sqlx::query(
            "UPDATE hopper SET next_attempt_at = $2, updated_at = $2 \
             WHERE campaign_id = $1 AND state = 'retry' AND inflight_attempt_id IS NULL AND next_attempt_at > $2",
        )
        .bind(campaign_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Whether a row can still move: unsent, in flight, or waiting for an answer. Asked every
    /// half second per running campaign, so it stops at the first such row (through the
    /// partial indexes on unsent and pending rows) instead of counting them all.
    pub async fn has_open_rows(&self, campaign_id: i64) -> StoreResult<bool> {
        let open: i64 = sqlx::query_scalar(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM hopper WHERE campaign_id = $1 AND state IN ('fresh', 'retry')) \
               OR EXISTS (SELECT 1 FROM hopper WHERE state = 'pending' AND campaign_id = $1) THEN 1 ELSE 0 END",
        )
        .bind(campaign_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(open == 1)
    }
}

impl Store {
    /// Rows due now that are not yet sent (a retry run waits for these).
    pub async fn due_unsent_rows(&self, campaign_id: i64, now: Millis) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM hopper WHERE campaign_id = $1 AND state IN ('fresh', 'retry') \
             AND (next_attempt_at <= $2 OR inflight_attempt_id IS NOT NULL)",
        )
        .bind(campaign_id)
        .bind(now)
        .fetch_one(&self.pool)
        .await?)
    }
}

/// Rows per multi-row statement: 5 parameters each stays far below both backends' limits.
const SETTLE_CHUNK: usize = 512;

/// Statuses (or rows) per multi-row statement: 8 parameters each at most.
const STATUS_CHUNK: usize = 512;

impl Store {
    /// The provider accepted these messages (from the HTTP answers, or from status webhooks
    /// that named the attempts first). Idempotent: an attempt settled already moves nothing. A new message (another wamid, i.e.
    /// a retry after a `failed` status) starts its status afresh: the old `failed` would
    /// otherwise outrank every status of the new one.
    ///
    /// Two multi-row statements per chunk (`UPDATE … FROM` a `VALUES` list) instead of two per
    /// row: with SQLite's single connection each statement is a round trip to its thread.
    /// `rows` must name each attempt once.
    async fn settle_accepted_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        rows: &[Settle],
    ) -> StoreResult<()> {
        for chunk in rows.chunks(SETTLE_CHUNK) {
            let ids: Vec<i64> = chunk.iter().map(|r| r.attempt_id).collect();
            self.lock_in_order(tx, Locked::HopperHolding, &ids).await?;
            let sql = self.bulk_sql(format!(
                "WITH v (attempt_id, wamid, wa_id, now, deadline) AS (VALUES {}) \
                 UPDATE hopper SET state = 'pending', attempts = attempts + 1, wamid = v.wamid, \
                   wa_id = COALESCE(v.wa_id, hopper.wa_id), inflight_attempt_id = NULL, sent_at = v.now, \
                   message_status = CASE WHEN hopper.wamid = v.wamid THEN COALESCE(hopper.message_status, 'accepted') ELSE 'accepted' END, \
                   response_deadline = v.deadline, last_error_code = NULL, last_error_text = NULL, updated_at = v.now \
                 FROM v WHERE hopper.inflight_attempt_id = v.attempt_id",
                value_rows(padded_len(chunk.len()), 5, 1)
            ));
            let settled = settle_values(&sql, chunk)
                .execute(&mut **tx)
                .await?
                .rows_affected();
            if settled < chunk.len() as u64 {
                self.settle_abandoned_in(tx, chunk).await?;
            }
            self.lock_in_order(tx, Locked::Attempts, &ids).await?;
            let sql = self.bulk_sql(format!(
                "WITH v (attempt_id, wamid, now) AS (VALUES {}) \
                 UPDATE attempts SET status = 'accepted', wamid = v.wamid, finished_at = v.now \
                 FROM v WHERE attempts.id = v.attempt_id AND (attempts.status IN ('sending', 'unknown') \
                   OR (attempts.status = 'abandoned' AND EXISTS (SELECT 1 FROM hopper h \
                         WHERE h.id = attempts.hopper_id AND h.wamid = v.wamid)))",
                value_rows(padded_len(chunk.len()), 3, 1)
            ));
            let mut q = self.growing_table_query(&sql);
            for r in padded(chunk) {
                q = q.bind(r.attempt_id).bind(&r.wamid).bind(r.now);
            }
            q.execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Proof that an abandoned attempt was accepted after all (its late HTTP answer, or a
    /// status webhook naming it): the row is settled as if it had been accepted in time, as
    /// long as it was not sent again, i.e. it holds no attempt in flight and this attempt is
    /// its last. A row the abandonment closed `exhausted` reopens as pending. The attempt was
    /// counted when it was abandoned, so `attempts` stays as it is. Runs only when some
    /// settle of the chunk found no row holding its attempt.
    async fn settle_abandoned_in(
        &self,
        tx: &mut Transaction<'static, Any>,
        chunk: &[Settle],
    ) -> StoreResult<()> {
        let sql = self.bulk_sql(format!(
            "WITH v (attempt_id, wamid, wa_id, now, deadline) AS (VALUES {}) \
             UPDATE hopper SET state = 'pending', outcome = NULL, closed_at = NULL, wamid = v.wamid, \
               wa_id = COALESCE(v.wa_id, hopper.wa_id), sent_at = v.now, \
               message_status = CASE WHEN hopper.wamid = v.wamid THEN COALESCE(hopper.message_status, 'accepted') ELSE 'accepted' END, \
               response_deadline = v.deadline, last_error_code = NULL, last_error_text = NULL, updated_at = v.now \
             FROM v JOIN attempts a ON a.id = v.attempt_id \
             WHERE hopper.id = a.hopper_id AND a.status = 'abandoned' AND hopper.inflight_attempt_id IS NULL \
               AND (hopper.state IN ('fresh', 'retry') OR (hopper.state = 'closed' AND hopper.outcome = 'exhausted')) \
               AND NOT EXISTS (SELECT 1 FROM attempts l WHERE l.hopper_id = hopper.id AND l.id > a.id)",
            value_rows(padded_len(chunk.len()), 5, 1)
        ));
        let n = settle_values(&sql, chunk)
            .execute(&mut **tx)
            .await?
            .rows_affected();
        if n > 0 {
            tracing::info!(
                rows = n,
                "sends given up for lost were accepted after all: their rows are settled, not sent again"
            );
        }
        Ok(())
    }

    /// PostgreSQL: locks the rows `which` names for these attempt ids, in primary-key order,
    /// before a multi-row UPDATE (whose own lock order follows the plan). Every batch writer
    /// locks this way, so concurrent batches wait for each other instead of deadlocking.
    /// SQLite has one writer at a time and needs nothing.
    async fn lock_in_order(
        &self,
        tx: &mut Transaction<'static, Any>,
        which: Locked,
        attempt_ids: &[i64],
    ) -> StoreResult<()> {
        if self.backend != Backend::Postgres || attempt_ids.is_empty() {
            return Ok(());
        }
        let (table, column) = match which {
            Locked::HopperHolding => ("hopper", "inflight_attempt_id"),
            Locked::Attempts => ("attempts", "id"),
        };
        let sql = format!(
            "SELECT id FROM {table} WHERE {column} IN ({}) ORDER BY id FOR UPDATE",
            placeholders(1, padded_len(attempt_ids.len()))
        );
        let mut q = match which {
            Locked::Attempts => self.growing_table_query(&sql),
            Locked::HopperHolding => sqlx::query(&sql),
        };
        for id in padded(attempt_ids) {
            q = q.bind(*id);
        }
        q.fetch_all(&mut **tx).await?;
        Ok(())
    }
}

/// The rows a batch writer locks, by attempt id, before it updates them.
#[derive(Clone, Copy)]
enum Locked {
    /// The hopper rows holding those attempts in flight.
    HopperHolding,
    /// The attempts themselves (a growing table: planned per execution).
    Attempts,
}

/// The rows of an SQLite `json_group_array(json_array(…))`, each array read into `T` in its
/// fields' order.
fn json_rows<T: serde::de::DeserializeOwned>(json: &str, what: &str) -> StoreResult<Vec<T>> {
    serde_json::from_str(json).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// [`Store::claim_sql`] with its binds.
fn bound_claim<'q>(
    sql: &'q str,
    campaign_id: i64,
    line: &'q str,
    now: Millis,
    limit: usize,
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    sqlx::query(sql)
        .bind(campaign_id)
        .bind(now)
        .bind(limit as i64)
        .bind(line)
        .bind(now - PAIR_RATE_GAP)
}

/// A campaign row named by a batch of statuses, as read before they apply. On SQLite it is
/// read from a JSON array of these fields in this order (`status_rows`).
#[derive(serde::Deserialize)]
struct StatusRow {
    hopper_id: i64,
    campaign_id: i64,
    contact_id: i64,
    wamid: String,
    status: Option<String>,
}

/// The end state of one campaign row after a batch of its statuses: what the statuses would
/// leave if applied one by one, lowest rank first, each only when it moves the row forward.
#[derive(Debug, PartialEq)]
struct StatusMove<'a> {
    hopper_id: i64,
    status: &'a str,
    /// The last applied status's time.
    at: Millis,
    /// Written only where the row has none yet.
    delivered_at: Option<Millis>,
    read_at: Option<Millis>,
    error_code: Option<i64>,
    error_text: Option<&'a str>,
}

impl<'a> StatusMove<'a> {
    /// Plays `row`'s statuses (`indices` into `updates`) in rank order, marking in `out` the
    /// ones that move it forward. A copy of a status already applied moves nothing, so the
    /// first of two copies is the one answered as applied. `None` when nothing moves.
    fn plan(
        row: &StatusRow,
        updates: &[StatusUpdate<'a>],
        indices: &[usize],
        out: &mut [AppliedStatus],
    ) -> Option<StatusMove<'a>> {
        let mut order: Vec<usize> = indices.to_vec();
        order.sort_by_key(|i| (status_rank(updates[*i].status), *i));
        let mut rank = status_rank(row.status.as_deref().unwrap_or(""));
        let mut planned: Option<StatusMove<'a>> = None;
        for i in order {
            let u = &updates[i];
            let r = status_rank(u.status);
            if r <= rank {
                continue;
            }
            rank = r;
            out[i].advanced = Some((row.hopper_id, row.campaign_id, row.contact_id));
            let m = planned.get_or_insert(StatusMove {
                hopper_id: row.hopper_id,
                status: u.status,
                at: u.at,
                delivered_at: None,
                read_at: None,
                error_code: None,
                error_text: None,
            });
            m.status = u.status;
            m.at = u.at;
            match u.status {
                "delivered" => m.delivered_at = m.delivered_at.or(Some(u.at)),
                "read" => {
                    m.read_at = m.read_at.or(Some(u.at));
                    m.delivered_at = m.delivered_at.or(Some(u.at));
                }
                "failed" => {
                    m.error_code = u.error_code;
                    m.error_text = u.error_text;
                }
                _ => {}
            }
        }
        planned
    }
}

/// Runs a write transaction again when PostgreSQL chose it as a deadlock victim (40P01): the
/// whole transaction was rolled back, so a second run is safe. Up to three tries.
async fn retry_deadlocks<T, F, Fut>(mut run: F) -> StoreResult<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<T>>,
{
    let mut tries = 0;
    loop {
        match run().await {
            Err(StoreError::Database(sqlx::Error::Database(e)))
                if tries < 2 && e.code().as_deref() == Some("40P01") =>
            {
                tries += 1;
                tracing::debug!(tries, "deadlock victim; running the batch again");
            }
            other => return other,
        }
    }
}

/// A settle statement (`WITH v (attempt_id, wamid, wa_id, now, deadline) AS (VALUES …)`) with
/// the chunk's rows bound, padded as the statement's text is.
fn settle_values<'q>(
    sql: &'q str,
    chunk: &'q [Settle],
) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments<'q>> {
    let mut q = sqlx::query(sql);
    for r in padded(chunk) {
        q = q
            .bind(r.attempt_id)
            .bind(&r.wamid)
            .bind(r.wa_id.as_deref())
            .bind(r.now)
            .bind(r.response_deadline);
    }
    q
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update<'a>(status: &'a str, at: Millis) -> StatusUpdate<'a> {
        StatusUpdate {
            wamid: "wamid.A",
            attempt_id: None,
            status,
            at,
            error_code: None,
            error_text: None,
        }
    }

    fn row(status: Option<&str>) -> StatusRow {
        StatusRow {
            hopper_id: 7,
            campaign_id: 2,
            contact_id: 3,
            wamid: "wamid.A".into(),
            status: status.map(str::to_string),
        }
    }

    fn plan<'a>(
        row: &StatusRow,
        updates: &[StatusUpdate<'a>],
    ) -> (Option<StatusMove<'a>>, Vec<bool>) {
        let mut out = vec![AppliedStatus::default(); updates.len()];
        let indices: Vec<usize> = (0..updates.len()).collect();
        let planned = StatusMove::plan(row, updates, &indices, &mut out);
        (planned, out.iter().map(|a| a.advanced.is_some()).collect())
    }

    #[test]
    fn a_batch_of_one_messages_statuses_is_one_write_of_the_state_they_leave_in_rank_order() {
        // Out of order, with a copy of `delivered`: the first copy is the one applied.
        let updates = [
            update("read", 30),
            update("sent", 10),
            update("delivered", 20),
            update("delivered", 25),
        ];
        let (planned, advanced) = plan(&row(Some("accepted")), &updates);
        assert_eq!(
            planned,
            Some(StatusMove {
                hopper_id: 7,
                status: "read",
                at: 30,
                delivered_at: Some(20),
                read_at: Some(30),
                error_code: None,
                error_text: None,
            })
        );
        assert_eq!(advanced, [true, true, true, false]);
    }

    #[test]
    fn a_status_behind_the_row_moves_nothing() {
        let (planned, advanced) = plan(&row(Some("read")), &[update("delivered", 40)]);
        assert_eq!(planned, None);
        assert_eq!(advanced, [false]);
    }

    #[test]
    fn a_read_alone_also_dates_the_delivery_and_a_failure_keeps_its_error() {
        let failed = StatusUpdate {
            error_code: Some(131026),
            error_text: Some("Message undeliverable"),
            ..update("failed", 50)
        };
        let (planned, advanced) = plan(&row(None), &[failed, update("read", 45)]);
        assert_eq!(
            planned,
            Some(StatusMove {
                hopper_id: 7,
                status: "failed",
                at: 50,
                delivered_at: Some(45),
                read_at: Some(45),
                error_code: Some(131026),
                error_text: Some("Message undeliverable"),
            })
        );
        assert_eq!(advanced, [true, true]);
    }
}
