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
}

pub fn t0() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z").unwrap().with_timezone(&Utc)
}

/// A fresh SQLite file in its own temporary directory.
pub async fn fresh_db() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let store = Store::open(&url).await.unwrap();
    TestDb { dir, url, store, clock: ManualClock::new(t0()) }
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
