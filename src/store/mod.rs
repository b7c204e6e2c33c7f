//! The store: every SQL statement of tiercast, behind functions named for the business step.
//!
//! One `sqlx::AnyPool` serves SQLite (the default: a file in WAL mode, foreign keys on) and
//! PostgreSQL. The SQL is written once for both: `$n` placeholders, `ON CONFLICT` upserts,
//! `RETURNING`, integer milliseconds for time, TEXT for JSON. Where the two differ (row locking
//! for claims) the function picks its statement by [`Backend`]. No function holds a
//! transaction across anything but database calls.

mod admin;
mod audit;
mod brakes;
mod campaigns;
mod contacts;
mod dispatch;
mod inbox;
mod leases;
mod sqlite_file;
mod templates;
mod tiers;

pub use admin::{ContactCampaignRow, OptOutRecord};
pub use brakes::{HeldRows, Verdict};
pub use campaigns::{CampaignRow, HopperCounts, ReportRow};
pub use contacts::{BatchCounts, ContactRecord, ContactUpsert};
pub use dispatch::{
    status_rank, AppliedStatus, ClaimGate, Claimed, FailureAction, Launch, LaunchCheck, LineLease,
    LocalHours, ResponseTimeouts, Settle, StatusRecord, StatusTarget, StatusUpdate,
    AWAITING_RETRY_RUN, PAIR_RATE_GAP,
};
pub use inbox::{
    InteractionFilter, InteractionRow, InteractionState, MessageRow, OutboundMessage, ReplyTarget,
    WINDOW_MILLIS,
};
pub use sqlite_file::{sqlite_file, DaemonLock, DatabaseFile, FileLoss, LockError};
pub use templates::CategoryChange;
pub use tiers::{TierBudget, TierUsage, DAY_MILLIS};

use sqlx::any::{AnyArguments, AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::Migrator;
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Executor};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("unsupported database URL {0:?} (use sqlite://FILE or postgres://…)")]
    UnsupportedUrl(String),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
    #[error("a batched write failed: {0}")]
    Batch(String),
    #[error(
        "database file {0} does not exist; create it with `tiercast migrate` (or `import`), \
         or start `tiercast serve --create-db` once, or fix database_url"
    )]
    Missing(PathBuf),
    #[error("database file {path} was {loss} while open; restore it and restart tiercast")]
    FileLost { path: PathBuf, loss: FileLoss },
}

impl StoreError {
    /// Whether the operator named something wrong (exit 2) rather than the database failing.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, StoreError::Missing(_) | StoreError::UnsupportedUrl(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The SQLite file opened, to notice it being deleted or replaced under the daemon.
    file: Option<Arc<DatabaseFile>>,
}

impl Store {
    /// Opens (creating an SQLite file if needed) and migrates the database: for the commands
    /// that create one (`migrate`, `import`, `demo`).
    pub async fn open(url: &str) -> StoreResult<Store> {
        let store = Store::connect(url, true).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens and migrates a database that must exist already: a missing SQLite file is
    /// [`StoreError::Missing`], and no connection opened later (the pool replaces failed
    /// ones) creates it either. An empty file where a database was expected would start every
    /// campaign from nothing.
    pub async fn open_existing(url: &str) -> StoreResult<Store> {
        if let Some(path) = sqlite_file(url) {
            if !path.exists() {
                return Err(StoreError::Missing(path));
            }
        }
        let store = Store::connect(url, false).await?;
        store.migrate().await?;
        Ok(store)
    }

    /// Opens without migrating; `create` lets SQLite create a missing file.
    async fn connect(url: &str, create: bool) -> StoreResult<Store> {
        sqlx::any::install_default_drivers();
        let (backend, url) = if url.starts_with("sqlite:") {
            let mode = if create { "rwc" } else { "rw" };
            // The URL may choose a mode itself.
            let url = if url.contains("mode=") {
                url.to_string()
            } else if url.contains('?') {
                format!("{url}&mode={mode}")
            } else {
                format!("{url}?mode={mode}")
            };
            create_private_sqlite_file(&url)?;
            (Backend::Sqlite, url)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string())
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let pool = match backend {
            Backend::Sqlite => {
                AnyPoolOptions::new()
                    .max_connections(sqlite_connections())
                    .acquire_timeout(Duration::from_secs(30))
                    // sqlx pings a connection each time it leaves the pool; an SQLite
                    // connection lives in this process and cannot have hung up, so the ping
                    // was only a round trip to its thread before every transaction.
                    .test_before_acquire(false)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // WAL lets readers (status, API) run beside the dispatcher's writes.
                            // FULL syncs the WAL at every commit: an attempt is on disk before
                            // its send leaves, even across an OS crash or power cut (NORMAL
                            // survives only a process crash). Commits are batched by the
                            // dispatcher and the group commit, so the sync is paid per batch.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = FULL").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            conn.execute(&*format!(
                                "PRAGMA busy_timeout = {}",
                                sqlite_busy_timeout_ms()
                            ))
                            .await?;
                            Ok(())
                        })
                    })
                    .after_release(|conn, _| Box::pin(release_check(conn)))
                    .connect_with(options)
                    .await?
            }
            Backend::Postgres => {
                AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            // With PostgreSQL's default random_page_cost (4, for spinning
                            // disks) the batch statements' key lookups (256 ids of attempts,
                            // contacts, hopper rows) were planned as sequential scans of the
                            // whole table: 219 attempts and 184 contacts read per message of a
                            // 20,000-contact run. The daemon's rows are in cache or on SSD, where
                            // 1.1 is the usual setting; a server set lower keeps its own value.
                            if let Err(e) = conn
                                .execute(
                                    "SELECT set_config('random_page_cost', \
                                     LEAST(current_setting('random_page_cost')::float8, 1.1)::text, false)",
                                )
                                .await
                            {
                                tracing::warn!(error = %e, "cannot set random_page_cost; batch lookups may scan whole tables");
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options)
                    .await?
            }
        };
        let file = match sqlite_file(&url) {
            Some(path) => Some(Arc::new(
                DatabaseFile::opened(&path).map_err(sqlx::Error::Io)?,
            )),
            None => None,
        };
        Ok(Store {
            pool,
            backend,
            file,
        })
    }

    pub async fn migrate(&self) -> StoreResult<()> {
        match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.run(&self.pool).await?,
            Backend::Postgres => POSTGRES_MIGRATIONS.run(&self.pool).await?,
        }
        Ok(())
    }

    /// Whether the SQLite file opened is still the one at its path (one `stat`). Once it was
    /// deleted or replaced, the daemon must not send: its records would go nowhere.
    pub fn check_database_file(&self) -> StoreResult<()> {
        match &self.file {
            Some(file) => file.check().map_err(|loss| StoreError::FileLost {
                path: file.path().to_path_buf(),
                loss,
            }),
            None => Ok(()),
        }
    }

    /// Whether a [`check_database_file`](Self::check_database_file) found the file gone or
    /// replaced (no system call: for the dispatcher's hot path).
    pub fn database_file_lost(&self) -> bool {
        self.file.as_ref().is_some_and(|f| f.loss().is_some())
    }

    /// True when the database file is the one opened, the database answers and every
    /// migration is applied.
    pub async fn is_ready(&self) -> bool {
        if self.check_database_file().is_err() {
            return false;
        }
        let expected = match self.backend {
            Backend::Sqlite => SQLITE_MIGRATIONS.iter().count() as i64,
            Backend::Postgres => POSTGRES_MIGRATIONS.iter().count() as i64,
        };
        let applied: Result<i64, _> =
            sqlx::query_scalar("SELECT COUNT(*) FROM _sqlx_migrations WHERE success = TRUE")
                .fetch_one(&self.pool)
                .await;
        matches!(applied, Ok(n) if n >= expected)
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

impl Store {
    /// After a bulk load on PostgreSQL, refreshes the planner's statistics of `tables`. Until
    /// (auto)vacuum analyses them, which may be minutes away or never, PostgreSQL plans for
    /// the tables' old size: in a 200,000-contact campaign started right after its import,
    /// statements on the hopper scanned the whole table 4,685 times (1,485 msg/s instead of
    /// 4,758). SQLite's planner keeps no statistics that need this.
    pub(crate) async fn analyze_after_bulk_load(&self, tables: &[&str]) -> StoreResult<()> {
        if self.backend == Backend::Postgres {
            sqlx::query(&format!("ANALYZE {}", tables.join(", ")))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    /// A batch statement on a table that grows while a campaign runs (`attempts`,
    /// `tier_recipients`). On PostgreSQL it is not kept prepared: an unnamed statement is
    /// planned for the values bound at each execution, so no plan made while the table was
    /// nearly empty outlives it. (A kept statement may settle on one generic plan after five
    /// executions: planned while `attempts` was nearly empty, the settle's join then scanned
    /// the whole table on every commit once it held 200,000 rows.) It costs a round trip more
    /// (sqlx describes an unnamed statement before binding it), so statements on tables whose
    /// size a run does not change (`hopper`, `contacts`, analysed after loading) stay
    /// prepared. Until 2026-12-03 the connections set `plan_cache_mode = force_custom_plan`
    /// instead, which also re-planned PostgreSQL's own foreign-key checks for every row
    /// written: a third of the server's CPU in the bench.
    pub(crate) fn growing_table_query<'q>(&self, sql: &'q str) -> Query<'q, Any, AnyArguments<'q>> {
        sqlx::query(sql).persistent(self.backend == Backend::Sqlite)
    }

    /// Statements with many binds (multi-row VALUES, long IN lists) in the backend's cheapest
    /// placeholder style. SQLite looks a *named* parameter (`$7`) up by a linear scan for every
    /// bind, which made a 4,500-bind upsert spend 75% of the import's CPU there; anonymous `?`
    /// parameters cost nothing to look up. The `$n` in `sql` must appear once each, in order.
    pub(crate) fn bulk_sql(&self, sql: String) -> String {
        match self.backend {
            Backend::Postgres => sql,
            Backend::Sqlite => {
                let mut out = String::with_capacity(sql.len());
                let mut chars = sql.chars().peekable();
                let mut expected = 1u32;
                while let Some(c) = chars.next() {
                    if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) {
                        let mut n = 0u32;
                        while let Some(d) = chars.peek().and_then(|d| d.to_digit(10)) {
                            n = n * 10 + d;
                            chars.next();
                        }
                        debug_assert_eq!(n, expected, "bulk_sql needs $1, $2, … in order: {sql}");
                        expected += 1;
                        out.push('?');
                    } else {
                        out.push(c);
                    }
                }
                out
            }
        }
    }
}

/// `$from, $from+1, …` placeholders for an `IN (…)` or a `VALUES` row.
pub(crate) fn placeholders(from: usize, count: usize) -> String {
    let mut s = String::with_capacity(count * 5);
    for i in 0..count {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('$');
        s.push_str(&(from + i).to_string());
    }
    s
}

/// How many rows (or `IN` values) a batch statement on a hot path is written for: `n`
/// rounded up to a power of two. sqlx keeps 100 prepared statements per connection; written
/// for every exact size, the dispatcher's batch statements pushed each other out and were
/// parsed again on almost every run (a fifth of SQLite's thread in `tiercast bench`). Ten
/// sizes per statement stay cached. [`padded`] fills the extra places.
pub(crate) fn padded_len(n: usize) -> usize {
    if n == 0 {
        0
    } else {
        n.next_power_of_two()
    }
}

/// `items`, then its last item again up to [`padded_len`]. Each padded statement reads a
/// repeated row as a no-op: a duplicate in an `IN` list, a second identical match in an
/// `UPDATE … FROM (VALUES …)` (one of which applies), a row `SELECT DISTINCT` drops.
pub(crate) fn padded<T>(items: &[T]) -> impl Iterator<Item = &T> {
    let extra = padded_len(items.len()) - items.len();
    items
        .iter()
        .chain(std::iter::repeat_n(items.last(), extra).flatten())
}

/// `($1, $2, $3), ($4, $5, $6), …` for a multi-row `VALUES`.
pub(crate) fn value_rows(rows: usize, columns: usize, first: usize) -> String {
    let mut s = String::with_capacity(rows * columns * 5);
    for r in 0..rows {
        if r > 0 {
            s.push_str(", ");
        }
        s.push('(');
        s.push_str(&placeholders(first + r * columns, columns));
        s.push(')');
    }
    s
}

/// Whether an SQLite connection may go back to the pool. A COMMIT that fails with an I/O
/// error (a full disk) can be rolled back by SQLite itself; sqlx's own ROLLBACK then fails and
/// the connection keeps believing it is inside a transaction, so every later transaction on it
/// would only nest a savepoint in one that is never committed, holding the write lock. Such a
/// connection is closed instead; the pool opens a fresh one.
async fn release_check(conn: &mut sqlx::AnyConnection) -> Result<bool, sqlx::Error> {
    use sqlx::Connection;
    // The common case costs nothing: no transaction open, nothing queued.
    if !conn.is_in_transaction() {
        return Ok(true);
    }
    // Runs the rollback a dropped transaction queued, so the depth below is current.
    conn.ping().await?;
    if conn.is_in_transaction() {
        tracing::warn!(
            "closing a database connection left inside a failed transaction (e.g. a disk full \
             on COMMIT); a fresh one replaces it"
        );
        return Ok(false);
    }
    Ok(true)
}

/// How long an SQLite write waits for another process's lock before failing with "database
/// is locked": 10 s, or `TIERCAST_SQLITE_BUSY_TIMEOUT_MS` (tests of that failure use less).
/// SQLite creates a new database file 0644, and its `-wal` and `-shm` files with the database
/// file's mode: phone numbers, names and message texts readable by every local user. So a new
/// database file is created here first, 0600 (less where the umask says so). When this cannot
/// create it, SQLite's own open fails too, with its error.
fn create_private_sqlite_file(url: &str) -> StoreResult<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if !url.contains("mode=rwc") {
        return Ok(());
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
    let path = options.get_filename();
    if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    let _ = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    Ok(())
}

fn sqlite_busy_timeout_ms() -> u64 {
    std::env::var("TIERCAST_SQLITE_BUSY_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// SQLite has one writer at a time; with several pooled connections the losers of a write race
/// sleep in SQLite's busy handler (up to 100 ms a time). One connection queues them in the
/// pool instead, which measured faster (see README, Performance). `TIERCAST_SQLITE_CONNECTIONS`
/// overrides it for experiments.
fn sqlite_connections() -> u32 {
    std::env::var("TIERCAST_SQLITE_CONNECTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| *n > 0)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_lists() {
        assert_eq!(placeholders(2, 3), "$2, $3, $4");
        assert_eq!(value_rows(2, 2, 1), "($1, $2), ($3, $4)");
    }

    #[test]
    fn batch_statements_come_in_power_of_two_sizes_padded_with_the_last_item() {
        let sizes: Vec<usize> = [0, 1, 2, 3, 5, 100, 500, 512]
            .into_iter()
            .map(padded_len)
            .collect();
        assert_eq!(sizes, [0, 1, 2, 4, 8, 128, 512, 512]);
        let distinct: std::collections::HashSet<usize> = (1..=512).map(padded_len).collect();
        assert_eq!(
            distinct.len(),
            10,
            "ten statement texts per batch statement"
        );
        assert_eq!(
            padded(&[7, 8, 9]).copied().collect::<Vec<_>>(),
            [7, 8, 9, 9]
        );
        assert_eq!(padded(&[7, 8]).count(), 2);
        assert_eq!(padded::<i64>(&[]).count(), 0);
    }
}
