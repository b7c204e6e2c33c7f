//! Shared test scaffolding: a fresh database per test, a manual clock, the config text.

use chrono::{DateTime, Utc};
use std::path::{Path, PathBuf};
use tiercast::clock::ManualClock;
use tiercast::config::Config;
use tiercast::store::Store;

pub struct TestDb {
    pub dir: tempfile::TempDir,
    pub url: String,
    pub store: Store,
    pub clock: ManualClock,
    pg_name: Option<String>,
}

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// A fresh SQLite file in its own temporary directory.
pub async fn fresh_db() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::open(&url).await.unwrap();
    TestDb {
        dir,
        url,
        store,
        clock: ManualClock::new(t0()),
        pg_name: None,
    }
}

/// The PostgreSQL server the tests use (CI and every dev machine run one locally).
pub fn pg_admin_url() -> String {
    std::env::var("TIERCAST_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A fresh PostgreSQL database of its own, dropped when the test ends well.
pub async fn fresh_pg() -> TestDb {
    use sqlx::Connection;
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let name = format!(
        "tiercast_t_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst),
        rand::random::<u32>()
    );
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {admin} is needed for this test: {e}"));
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.ok();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let url = format!("{base}/{name}");
    let store = Store::open(&url).await.unwrap();
    TestDb {
        dir: tempfile::tempdir().unwrap(),
        url,
        store,
        clock: ManualClock::new(t0()),
        pg_name: Some(name),
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let (Some(name), false) = (self.pg_name.take(), std::thread::panicking()) {
            // Drop the database from a plain thread: Drop cannot await.
            let admin = pg_admin_url();
            let store = self.store.clone();
            let _ = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    use sqlx::Connection;
                    store.close().await;
                    if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                        let _ =
                            sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                                .execute(&mut conn)
                                .await;
                    }
                });
            })
            .join();
        }
    }
}

/// Runs one behaviour test on both backends: `name::sqlite` and `name::postgres`.
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::fresh_db().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::fresh_pg().await).await;
            }
        }
    };
}

impl TestDb {
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub fn write(&self, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }
}

pub fn config(text: &str) -> Config {
    Config::parse(text, "test.toml").unwrap()
}

/// Imports `csv` (with its header line) into list `list`, no opt-in, and expects it to succeed.
pub async fn import_csv(store: &Store, clock: &dyn tiercast::clock::Clock, list: &str, csv: &str) {
    use tiercast::import::{self, BytesSource, ImportOptions};
    let source = BytesSource {
        name: format!("{list}.csv"),
        bytes: csv.as_bytes(),
    };
    let opts = ImportOptions {
        list: list.into(),
        default_country: None,
        opt_in: false,
        batch_size: 500,
        progress: false,
    };
    import::import(store, clock, &source, &opts).await.unwrap();
}

/// Test configuration text: the database, one simulator line `main` with `line_keys` (TOML
/// lines), then `rest` (campaigns, time groups…).
pub fn main_line_config(db_url: &str, line_keys: &str, rest: &str) -> String {
    format!(
        r#"
[server]
database_url = "{db_url}"

[[lines]]
name = "main"
provider = "simulator"
{line_keys}
{rest}"#
    )
}

pub const ONE_CAMPAIGN: &str = r#"
[[lines]]
name = "main"
provider = "simulator"

[[campaigns]]
name = "c1"
line = "main"
template = { name = "renewal_reminder", language = "pt_BR" }
lists = ["a", "b"]
require_opt_in = true

[[campaigns]]
name = "c2"
line = "main"
template = { name = "renewal_reminder", language = "pt_BR" }
lists = ["a"]
"#;

pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_tiercast"))
}

/// POSTs a webhook body to a daemon, signed as Meta signs (with the simulator lines' app
/// secret); returns the HTTP status.
pub async fn post_signed_webhook(daemon_url: &str, body: String) -> u16 {
    let sig = tiercast::webhook::sign(tiercast::lines::SIM_APP_SECRET.as_bytes(), body.as_bytes());
    reqwest::Client::new()
        .post(format!("{daemon_url}/webhooks/meta"))
        .header("X-Hub-Signature-256", sig)
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}
