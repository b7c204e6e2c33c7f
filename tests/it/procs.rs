//! The real binary as separate processes: the simulator (`tiercast simulate`) and the daemon
//! (`tiercast serve`) on free ports, one SQLite file, and the helpers the crash-safety tests
//! need (SIGKILL, SIGTERM, the simulator's ledger, `campaign status --json`).
//!
//! Every child is killed when its guard drops, so a failing test leaves no process behind.

use crate::helpers::binary;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `tiercast ARGS`, stdout and stderr appended to `log`.
    pub fn spawn(name: &str, args: &[String], log: &Path) -> Proc {
        Proc::spawn_env(name, args, log, &[])
    }

    /// Like `spawn`, with extra environment variables (e.g. `RUST_LOG`).
    pub fn spawn_env(name: &str, args: &[String], log: &Path, env: &[(&str, &str)]) -> Proc {
        Proc::spawn_with(name, args, log, |cmd| {
            cmd.envs(env.iter().copied());
        })
    }

    /// Like `spawn`, the command adjusted by `configure` first (environment, `pre_exec`).
    pub fn spawn_with(
        name: &str,
        args: &[String],
        log: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(binary());
        cmd.args(args)
            .env(
                "RUST_LOG",
                std::env::var("TIERCAST_TEST_LOG").unwrap_or_else(|_| "warn,tiercast=info".into()),
            )
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        configure(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            child: Some(child),
            name: name.to_string(),
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).unwrap_or(0)
    }

    /// kill -9, and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends SIGTERM (the process keeps running until it exits on its own).
    pub fn terminate(&self) {
        let pid = self.pid() as libc::pid_t;
        assert!(pid > 0, "{} is not running", self.name);
        // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM to {}", self.name);
    }

    /// Waits for the process to exit (polling), up to `limit`; None if it is still running.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let child = self.child.as_mut()?;
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Whether the process is still running (not exited, not killed).
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// The last lines of the process's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A port that was free a moment ago (bind port 0, release it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One simulator process, one database, one config, and the daemon started on demand.
pub struct Rig {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub db_url: String,
    pub sim_port: u16,
    pub daemon_port: u16,
    pub sim: Proc,
    pub http: reqwest::Client,
    pub phones: Vec<String>,
    daemon_starts: usize,
}

pub struct RigOptions {
    pub contacts: usize,
    pub throughput_mps: u32,
    pub reconcile_after: &'static str,
    pub max_in_flight: usize,
    /// The simulator's delay between accepting a message and answering.
    pub latency_ms: u64,
    /// More `tiercast simulate` arguments (e.g. `--fault-drop 0.1`).
    pub sim_args: Vec<String>,
    /// The line's `request_timeout`.
    pub request_timeout: &'static str,
    /// A database of the test's own (a fresh PostgreSQL one); an SQLite file when `None`.
    pub database_url: Option<String>,
}

impl Default for RigOptions {
    fn default() -> Self {
        RigOptions {
            contacts: 300,
            throughput_mps: 200,
            reconcile_after: "10m",
            max_in_flight: 16,
            latency_ms: 0,
            sim_args: Vec::new(),
            request_timeout: "20s",
            database_url: None,
        }
    }
}

impl Drop for Rig {
    /// A failed test keeps its database and logs for the post-mortem.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let keep = std::env::temp_dir().join(format!(
                "tiercast-failed-{}-{}",
                std::process::id(),
                self.daemon_port
            ));
            let copied = Command::new("cp")
                .arg("-r")
                .arg(self.dir.path())
                .arg(&keep)
                .status()
                .is_ok_and(|s| s.success());
            if copied {
                eprintln!("database, config and logs kept in {}", keep.display());
            }
        }
    }
}

impl Rig {
    /// Writes the config, starts the simulator (all messages read, webhooks retried for as
    /// long as the test may keep the daemon down), imports the contacts and starts the
    /// campaign. The daemon is not started.
    pub async fn new(options: RigOptions) -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let (sim_port, daemon_port) = (free_port(), free_port());
        let db_url = options
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("crash.db").display()));
        let config_text = format!(
            r#"
[server]
listen = "127.0.0.1:{daemon_port}"
database_url = "{db_url}"
reconcile_after = "{reconcile_after}"
shutdown_grace = "10s"

[[lines]]
name = "main"
provider = "simulator"
tier = "unlimited"
api_base = "http://127.0.0.1:{sim_port}/v23.0"
throughput_mps = {mps}
max_in_flight = {in_flight}
request_timeout = "{request_timeout}"

[[campaigns]]
name = "c"
line = "main"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["l"]
variables = {{ "1" = "name", "2" = "field:plan", "3" = "literal:30%" }}
response_timeout = "4h"
auto_retry = true
retry_backoff = "1s"
max_attempts = 20
"#,
            reconcile_after = options.reconcile_after,
            mps = options.throughput_mps,
            in_flight = options.max_in_flight,
            request_timeout = options.request_timeout,
        );
        let config = dir.path().join("crash.toml");
        std::fs::write(&config, config_text).unwrap();

        // Webhooks refused while the daemon is down are retried every 250 ms (after a short
        // doubling) for far longer than any test keeps it down.
        let mut sim_args: Vec<String> = vec![
            "simulate".into(),
            "--listen".into(),
            format!("127.0.0.1:{sim_port}"),
            "--webhook-url".into(),
            format!("http://127.0.0.1:{daemon_port}/webhooks/meta"),
            "--throughput".into(),
            "0".into(),
            "--all-read".into(),
            "--webhook-attempts".into(),
            "2000".into(),
            "--webhook-backoff-max-ms".into(),
            "250".into(),
            "--latency-ms".into(),
            options.latency_ms.to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        sim_args.extend(options.sim_args.iter().cloned());
        let sim = Proc::spawn("simulator", &sim_args, &dir.path().join("sim.log"));
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let phones: Vec<String> = (0..options.contacts)
            .map(|i| format!("+55119{:08}", 50_000_000 + i))
            .collect();
        let rig = Rig {
            dir,
            config,
            db_url,
            sim_port,
            daemon_port,
            sim,
            http,
            phones,
            daemon_starts: 0,
        };
        rig.wait_http(&rig.sim_url("/sim/stats"), &rig.sim).await;

        let mut csv = String::from("phone,name,plan\n");
        for (i, p) in rig.phones.iter().enumerate() {
            csv.push_str(&format!("{p},Person {i},gold\n"));
        }
        let file = rig.dir.path().join("contacts.csv");
        std::fs::write(&file, csv).unwrap();
        rig.cli(&["import", &file.display().to_string(), "--list", "l"]);
        rig.cli(&["campaign", "start", "c"]);
        rig
    }

    pub fn sim_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.sim_port)
    }

    pub fn daemon_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.daemon_port)
    }

    /// Runs `tiercast ARGS --config F` to completion; panics unless it succeeds.
    pub fn cli(&self, args: &[&str]) -> Output {
        let out = Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tiercast {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// `tiercast campaign status c --json`.
    pub fn status_json(&self) -> Value {
        let out = self.cli(&["campaign", "status", "c", "--json"]);
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Starts `tiercast serve` (the port is the config's; it is free again once the last
    /// daemon was reaped).
    pub fn start_daemon(&mut self) -> Proc {
        self.start_daemon_with(|_| {})
    }

    /// `start_daemon`, the command adjusted by `configure` first (e.g. a `pre_exec`).
    pub fn start_daemon_with(&mut self, configure: impl FnOnce(&mut Command)) -> Proc {
        self.daemon_starts += 1;
        Proc::spawn_with(
            &format!("daemon #{}", self.daemon_starts),
            &[
                "serve".into(),
                "--config".into(),
                self.config.display().to_string(),
            ],
            &self.dir.path().join("daemon.log"),
            configure,
        )
    }

    /// The daemon's log so far.
    pub fn daemon_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// Replaces the simulator's send-side faults (`POST /sim/faults`).
    pub async fn set_faults(&self, faults: Value) {
        let r = self
            .http
            .post(self.sim_url("/sim/faults"))
            .json(&faults)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().await.unwrap());
    }

    /// The sum of the daemon's `/metrics` samples of `name` whose labels include every one of
    /// `labels` (`("class", "unknown")`…).
    pub async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let text = self
            .http
            .get(self.daemon_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .filter(|l| {
                labels
                    .iter()
                    .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
            })
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    /// Polls the database until every contact is pending (accepted by the provider) and
    /// nothing is in flight. The deadline is a safety net, not a timing assertion.
    pub async fn wait_all_pending(&self, daemon: &Proc, limit: Duration) {
        let store = tiercast::store::Store::open(&self.db_url).await.unwrap();
        let id = store.ensure_campaign("c", 0).await.unwrap().id;
        let n = self.phones.len() as u64;
        let deadline = Instant::now() + limit;
        loop {
            let counts = store.hopper_counts(id).await.unwrap();
            let inflight = store.inflight_rows().await.unwrap();
            if counts.state(tiercast::domain::HopperState::Pending) == n && inflight == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not every contact was sent in time: {counts:?}, {inflight} in flight\n{}",
                daemon.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        store.close().await;
    }

    /// Polls `url` until it answers 200 (the deadline is a safety net).
    pub async fn wait_http(&self, url: &str, proc_: &Proc) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = self.http.get(url).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "{} never answered {url}:\n{}",
                proc_.name,
                proc_.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    pub async fn ledger(&self) -> Vec<Value> {
        let v: Value = self
            .http
            .get(self.sim_url("/sim/ledger"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        v.as_array().cloned().unwrap_or_default()
    }

    pub async fn sim_stats(&self) -> Value {
        self.http
            .get(self.sim_url("/sim/stats"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Asserts the ledger holds exactly one accepted template per contact and nothing else.
    pub async fn assert_exactly_once(&self) {
        let ledger = self.ledger().await;
        let mut per_phone: BTreeMap<String, usize> = BTreeMap::new();
        for entry in &ledger {
            assert_eq!(entry["message_type"], "template", "{entry}");
            assert_eq!(entry["template_name"], "renewal_reminder", "{entry}");
            *per_phone
                .entry(entry["to"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let twice: Vec<_> = per_phone.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            twice.is_empty(),
            "{} contacts got more than one template, e.g. {:?}",
            twice.len(),
            &twice[..twice.len().min(5)]
        );
        let missing: Vec<_> = self
            .phones
            .iter()
            .filter(|p| !per_phone.contains_key(*p))
            .collect();
        assert!(
            missing.is_empty(),
            "{} contacts never got their template, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        assert_eq!(ledger.len(), self.phones.len());
    }

    /// Asserts `campaign status --json`: every contact pending, the states adding up.
    pub fn assert_hopper_settled(&self) -> Value {
        let s = self.status_json();
        let h = &s["hopper"];
        let n = self.phones.len() as u64;
        assert_eq!(h["total"].as_u64(), Some(n), "{s}");
        assert_eq!(h["pending"].as_u64(), Some(n), "{s}");
        let sum: u64 = ["fresh", "retry", "pending", "closed"]
            .iter()
            .map(|k| h[*k].as_u64().unwrap())
            .sum();
        assert_eq!(sum, n, "{s}");
        s
    }
}
