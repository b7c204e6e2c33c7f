//! Read-only checks of the dispatcher's bookkeeping, for operators and the crash-safety
//! tests: how many attempts sit in each status, and how many hopper rows hold a send.

use super::{Store, StoreResult};
use sqlx::Row;
use std::collections::BTreeMap;

impl Store {
    /// Attempts per status (`sending`, `accepted`, `failed`, `unknown`, `abandoned`).
    pub async fn attempt_status_counts(&self) -> StoreResult<BTreeMap<String, i64>> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM attempts GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        let mut out = BTreeMap::new();
        for row in rows {
            out.insert(row.try_get::<String, _>(0)?, row.try_get::<i64, _>(1)?);
        }
        Ok(out)
    }

    /// Hopper rows whose send is in flight (an attempt holds them).
    pub async fn inflight_rows(&self) -> StoreResult<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM hopper WHERE inflight_attempt_id IS NOT NULL")
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// The attempts holding hopper rows right now (sends whose outcome is not recorded).
    pub async fn inflight_attempt_ids(&self) -> StoreResult<Vec<i64>> {
        Ok(sqlx::query_scalar(
            "SELECT inflight_attempt_id FROM hopper WHERE inflight_attempt_id IS NOT NULL \
             ORDER BY inflight_attempt_id",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
