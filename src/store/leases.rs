//! Leases (SPEC §6): one daemon at a time drives a line or runs a singleton duty. Taking and
//! renewing is one conditional upsert, so two daemons can never both believe they hold it.
//!
//! On PostgreSQL, where daemons on several hosts share the leases, expiry is measured on the
//! database server's clock and the callers' `now` is not used: a daemon whose clock runs
//! ahead would otherwise see every other daemon's lease expired and take all the lines. On
//! SQLite every daemon runs on the one host and its clock.

use super::{Backend, Store, StoreResult};
use crate::clock::Millis;

/// The database server's time in epoch milliseconds (PostgreSQL).
const SERVER_NOW: &str = "(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT";

impl Store {
    /// The time leases are measured on: the SQL for it and whether `now` must be bound for it
    /// (as the last parameter, number `param`).
    pub(super) fn lease_now(&self, param: usize) -> (String, bool) {
        match self.backend {
            Backend::Postgres => (SERVER_NOW.to_string(), false),
            Backend::Sqlite => (format!("${param}"), true),
        }
    }

    /// Takes the lease if it is free, expired, or already ours; renews it if ours.
    /// Returns whether `holder` holds it until `now + ttl`.
    pub async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        now: Millis,
        ttl: Millis,
    ) -> StoreResult<bool> {
        let (at, bind_now) = self.lease_now(4);
        let sql = format!(
            "INSERT INTO leases (name, holder, expires_at) VALUES ($1, $2, {at} + $3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at \
             WHERE leases.holder = excluded.holder OR leases.expires_at < {at}"
        );
        let mut q = sqlx::query(&sql).bind(name).bind(holder).bind(ttl);
        if bind_now {
            q = q.bind(now);
        }
        let done = q.execute(&self.pool).await?;
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
        let (at, bind_now) = self.lease_now(1);
        let sql = format!(
            "SELECT COUNT(*) FROM leases WHERE name LIKE 'member:%' AND expires_at >= {at}"
        );
        let mut q = sqlx::query_scalar(&sql);
        if bind_now {
            q = q.bind(now);
        }
        let n: i64 = q.fetch_one(&self.pool).await?;
        Ok(n.max(0) as u64)
    }

    /// The unexpired leases named `{prefix}…` that `holder` holds, sorted by name.
    pub async fn leases_held(
        &self,
        prefix: &str,
        holder: &str,
        now: Millis,
    ) -> StoreResult<Vec<String>> {
        let (at, bind_now) = self.lease_now(3);
        let sql = format!(
            "SELECT name FROM leases WHERE name LIKE $1 AND holder = $2 AND expires_at >= {at} ORDER BY name"
        );
        let mut q = sqlx::query_scalar(&sql)
            .bind(format!("{prefix}%"))
            .bind(holder);
        if bind_now {
            q = q.bind(now);
        }
        Ok(q.fetch_all(&self.pool).await?)
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
