//! Leases (SPEC §6): one daemon at a time drives a line or runs a singleton duty. Taking and
//! renewing is one conditional upsert, so two daemons can never both believe they hold it.

use super::{Store, StoreResult};
use crate::clock::Millis;

impl Store {
    /// Takes the lease if it is free, expired, or already ours; renews it if ours.
    /// Returns whether `holder` holds it until `now + ttl`.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl: Millis,
    ) -> StoreResult<bool> {
        let done = sqlx::query(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < $4",
        )
        .bind(name)
        .bind(holder)
        .bind(now + ttl)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Gives a lease back (graceful shutdown), so another daemon need not wait for expiry.
    pub async fn release_lease(&self, name: &str, holder: &str) -> StoreResult<()> {
        sqlx::query("DELETE FROM leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Daemons alive now: those whose `member:` lease has not expired.
    pub async fn live_members(&self, now: Millis) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM leases WHERE name LIKE 'member:%' AND expires_at >= $1",
        )
        .bind(now)
        .fetch_one(&self.pool)
        .await?;
        Ok(n.max(0) as u64)
    }

    /// The unexpired leases named `{prefix}…` that `holder` holds, sorted by name.
    pub async fn leases_held(
        &self,
        prefix: &str,
        holder: &str,
        now: Millis,
    ) -> StoreResult<Vec<String>> {
        Ok(sqlx::query_scalar(
            "SELECT name FROM leases WHERE name LIKE $1 AND holder = $2 AND expires_at >= $3 ORDER BY name",
        )
        .bind(format!("{prefix}%"))
        .bind(holder)
        .bind(now)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Deletes every lease: for a daemon that holds the SQLite file's [`DaemonLock`], which
    /// proves every other holder has exited, so a crash loop need not wait out each dead
    /// predecessor's `lease_ttl`. Returns how many there were.
    ///
    /// [`DaemonLock`]: super::DaemonLock
    pub async fn release_leases_of_exited_daemons(&self) -> StoreResult<u64> {
        let done = sqlx::query("DELETE FROM leases")
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
