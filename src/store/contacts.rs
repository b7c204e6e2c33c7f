//! Contacts, lists, imports, opt-outs and the blacklist.

use super::{placeholders, value_rows, Store, StoreError, StoreResult};
use crate::clock::Millis;
use sqlx::Row;
use std::collections::{BTreeMap, HashMap};

/// One valid CSV row, ready to be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContactUpsert {
    pub phone: String,
    pub name: Option<String>,
    pub email: Option<String>,
    /// `None`: the row says nothing about consent, keep what is stored.
    pub opt_in: Option<bool>,
    pub opt_in_source: &'static str,
    pub country: Option<String>,
    pub fields: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    /// New on this list.
    pub imported: u64,
    /// Already on this list from an earlier import; fields updated.
    pub updated: u64,
    /// Seen earlier in this same import.
    pub duplicate: u64,
}

impl std::ops::AddAssign for BatchCounts {
    fn add_assign(&mut self, other: BatchCounts) {
        self.imported += other.imported;
        self.updated += other.updated;
        self.duplicate += other.duplicate;
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ContactRecord {
    pub id: i64,
    pub phone: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub opt_in: bool,
    pub country: Option<String>,
    pub fields: BTreeMap<String, String>,
    pub opted_out: bool,
    pub blacklisted: bool,
    pub lists: Vec<String>,
}

/// Rows per statement: 8 binds each keeps us far below SQLite's and PostgreSQL's bind limits.
const ROWS_PER_STATEMENT: usize = 500;

impl Store {
    /// Creates the list if needed and opens an import run on it.
    pub async fn begin_import(
        &self,
        list: &str,
        source: &str,
        now: Millis,
    ) -> StoreResult<(i64, i64)> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "INSERT INTO lists (name, created_at) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(list)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        let list_id: i64 = sqlx::query_scalar("SELECT id FROM lists WHERE name = $1")
            .bind(list)
            .fetch_one(&mut *tx)
            .await?;
        let import_id: i64 = sqlx::query_scalar(
            "INSERT INTO imports (list_id, source, started_at) VALUES ($1, $2, $3) RETURNING id",
        )
        .bind(list_id)
        .bind(source)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((list_id, import_id))
    }

    /// Writes one batch of contacts into a list in one transaction: all or nothing, so a
    /// crash leaves whole batches and a re-run completes the file without duplicates.
    /// `rows` must not repeat a phone (the importer dedupes within a batch).
    pub async fn import_batch(
        &self,
        list_id: i64,
        import_id: i64,
        rows: &[ContactUpsert],
        now: Millis,
    ) -> StoreResult<BatchCounts> {
        let mut counts = BatchCounts::default();
        let mut tx = self.pool.begin().await?;
        for chunk in rows.chunks(ROWS_PER_STATEMENT) {
            // What the database already knows about these numbers, and whether this import
            // already put them on the list (a duplicate further down the same file).
            let sql = format!(
                "SELECT c.phone, c.fields, m.import_id FROM contacts c \
                 LEFT JOIN list_members m ON m.contact_id = c.id AND m.list_id = $1 \
                 WHERE c.phone IN ({})",
                placeholders(2, chunk.len())
            );
            let sql = self.bulk_sql(sql);
            let mut q = sqlx::query(&sql).bind(list_id);
            for r in chunk {
                q = q.bind(r.phone.as_str());
            }
            let mut known: HashMap<String, (String, Option<i64>)> = HashMap::new();
            for row in q.fetch_all(&mut *tx).await? {
                known.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
            }

            let mut to_write: Vec<(&ContactUpsert, String)> = Vec::with_capacity(chunk.len());
            for r in chunk {
                let fields = match known.get(&r.phone) {
                    Some((_, Some(run))) if *run == import_id => {
                        counts.duplicate += 1;
                        continue;
                    }
                    Some((stored, member)) => {
                        if member.is_some() {
                            counts.updated += 1;
                        } else {
                            counts.imported += 1;
                        }
                        merge_fields(stored, &r.fields)?
                    }
                    None => {
                        counts.imported += 1;
                        fields_json(&r.fields)
                    }
                };
                to_write.push((r, fields));
            }
            if to_write.is_empty() {
                continue;
            }

            let sql = format!(
                "INSERT INTO contacts (phone, name, email, opt_in, opt_in_source, country, fields, created_at, updated_at) \
                 VALUES {} \
                 ON CONFLICT (phone) DO UPDATE SET \
                   name = COALESCE(excluded.name, contacts.name), \
                   email = COALESCE(excluded.email, contacts.email), \
                   opt_in = CASE WHEN excluded.opt_in_source IS NULL THEN contacts.opt_in ELSE excluded.opt_in END, \
                   opt_in_source = COALESCE(excluded.opt_in_source, contacts.opt_in_source), \
                   country = COALESCE(excluded.country, contacts.country), \
                   fields = excluded.fields, \
                   updated_at = excluded.updated_at \
                 RETURNING id",
                value_rows(to_write.len(), 9, 1)
            );
            let sql = self.bulk_sql(sql);
            let mut q = sqlx::query(&sql);
            for (r, fields) in &to_write {
                q = q
                    .bind(r.phone.as_str())
                    .bind(r.name.as_deref())
                    .bind(r.email.as_deref())
                    .bind(i64::from(r.opt_in.unwrap_or(false)))
                    .bind(r.opt_in.map(|_| r.opt_in_source))
                    .bind(r.country.as_deref())
                    .bind(fields.as_str())
                    .bind(now)
                    .bind(now);
            }
            let ids: Vec<i64> = q
                .fetch_all(&mut *tx)
                .await?
                .iter()
                .map(|row| row.try_get::<i64, _>(0))
                .collect::<Result<_, _>>()?;

            let sql = format!(
                "INSERT INTO list_members (list_id, contact_id, import_id, added_at) VALUES {} \
                 ON CONFLICT (list_id, contact_id) DO UPDATE SET import_id = excluded.import_id",
                value_rows(ids.len(), 4, 1)
            );
            let sql = self.bulk_sql(sql);
            let mut q = sqlx::query(&sql);
            for id in ids {
                q = q.bind(list_id).bind(id).bind(import_id).bind(now);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(counts)
    }

    /// Records the final counts of an import run.
    pub async fn finish_import(
        &self,
        import_id: i64,
        counts: BatchCounts,
        invalid: u64,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query(
            "UPDATE imports SET finished_at = $2, imported = $3, updated = $4, duplicate = $5, invalid = $6 WHERE id = $1",
        )
        .bind(import_id)
        .bind(now)
        .bind(counts.imported as i64)
        .bind(counts.updated as i64)
        .bind(counts.duplicate as i64)
        .bind(invalid as i64)
        .execute(&self.pool)
        .await?;
        if counts.imported + counts.updated > 0 {
            self.analyze_after_bulk_load(&["contacts", "list_members"])
                .await?;
        }
        Ok(())
    }

    /// Removes an import that was refused before any batch was written (bad file), so a
    /// failed import leaves no trace; the list is removed too if that import created it empty.
    pub async fn abandon_import(&self, list_id: i64, import_id: i64) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM imports WHERE id = $1")
            .bind(import_id)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "DELETE FROM lists WHERE id = $1 \
             AND NOT EXISTS (SELECT 1 FROM list_members WHERE list_id = $1) \
             AND NOT EXISTS (SELECT 1 FROM imports WHERE list_id = $1)",
        )
        .bind(list_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn list_size(&self, list: &str) -> StoreResult<i64> {
        Ok(sqlx::query_scalar(
            "SELECT COUNT(*) FROM list_members m JOIN lists l ON l.id = m.list_id WHERE l.name = $1",
        )
        .bind(list)
        .fetch_one(&self.pool)
        .await?)
    }

    pub async fn list_exists(&self, list: &str) -> StoreResult<bool> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM lists WHERE name = $1")
            .bind(list)
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }

    pub async fn contact_count(&self) -> StoreResult<i64> {
        Ok(sqlx::query_scalar("SELECT COUNT(*) FROM contacts")
            .fetch_one(&self.pool)
            .await?)
    }

    pub async fn contact_by_phone(&self, phone: &str) -> StoreResult<Option<ContactRecord>> {
        let row = sqlx::query(
            "SELECT c.id, c.phone, c.name, c.email, c.opt_in, c.country, c.fields, \
               (SELECT COUNT(*) FROM opt_outs o WHERE o.phone = c.phone), \
               (SELECT COUNT(*) FROM blacklist b WHERE b.phone = c.phone) \
             FROM contacts c WHERE c.phone = $1",
        )
        .bind(phone)
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let id: i64 = row.try_get(0)?;
        let fields: String = row.try_get(6)?;
        let lists: Vec<String> = sqlx::query_scalar(
            "SELECT l.name FROM lists l JOIN list_members m ON m.list_id = l.id WHERE m.contact_id = $1 ORDER BY l.name",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(Some(ContactRecord {
            id,
            phone: row.try_get(1)?,
            name: row.try_get(2)?,
            email: row.try_get(3)?,
            opt_in: row.try_get::<i64, _>(4)? != 0,
            country: row.try_get(5)?,
            fields: parse_fields(&fields)?,
            opted_out: row.try_get::<i64, _>(7)? > 0,
            blacklisted: row.try_get::<i64, _>(8)? > 0,
            lists,
        }))
    }

    /// Puts a number on the opt-out list (idempotent: the first reason is kept).
    pub async fn add_opt_out(
        &self,
        phone: &str,
        reason: &str,
        source: &str,
        now: Millis,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO opt_outs (phone, reason, source, created_at) VALUES ($1, $2, $3, $4) ON CONFLICT (phone) DO NOTHING",
        )
        .bind(phone)
        .bind(reason)
        .bind(source)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn remove_opt_out(&self, phone: &str) -> StoreResult<bool> {
        let done = sqlx::query("DELETE FROM opt_outs WHERE phone = $1")
            .bind(phone)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Meta's `user_preferences` "resume": lifts the opt-outs that Meta's marketing preference
    /// put there (its "stop" or error 131050). A keyword or an admin opt-out stays.
    pub async fn remove_marketing_opt_out(&self, phone: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM opt_outs WHERE phone = $1 AND source IN ('user_preferences', '131050')",
        )
        .bind(phone)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// An opt-in keyword: lifts the opt-outs the contact made (keyword, answer) or Meta made
    /// for it (`user_preferences` stop, 131050). An admin opt-out stays. True if one was lifted.
    pub async fn remove_contact_opt_out(&self, phone: &str) -> StoreResult<bool> {
        let done = sqlx::query(
            "DELETE FROM opt_outs WHERE phone = $1 \
             AND source IN ('keyword', 'answer', 'user_preferences', '131050')",
        )
        .bind(phone)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn add_to_blacklist(
        &self,
        phone: &str,
        reason: &str,
        now: Millis,
    ) -> StoreResult<()> {
        sqlx::query("INSERT INTO blacklist (phone, reason, created_at) VALUES ($1, $2, $3) ON CONFLICT (phone) DO NOTHING")
            .bind(phone)
            .bind(reason)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

fn fields_json(fields: &BTreeMap<String, String>) -> String {
    serde_json::to_string(fields).unwrap_or_else(|_| "{}".to_string())
}

fn parse_fields(stored: &str) -> StoreResult<BTreeMap<String, String>> {
    serde_json::from_str(stored)
        .map_err(|e| StoreError::Corrupt(format!("contact fields {stored:?}: {e}")))
}

/// Re-importing keeps fields other files brought and replaces the ones this file names.
fn merge_fields(stored: &str, new: &BTreeMap<String, String>) -> StoreResult<String> {
    if new.is_empty() {
        return Ok(stored.to_string());
    }
    let mut merged = parse_fields(stored)?;
    merged.extend(new.iter().map(|(k, v)| (k.clone(), v.clone())));
    Ok(fields_json(&merged))
}
