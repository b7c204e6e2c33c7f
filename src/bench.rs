//! `tiercast bench`: sustained send rate of the daemon against the simulator running as a
//! separate process, with the throughput limiter lifted, and the daemon's own CPU time per
//! message (the simulator's CPU is not counted). Prints one comparable line.

use crate::campaign;
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::domain::CampaignCommand;
use crate::import::{self, BytesSource, ImportOptions};
use crate::serve::{self, ServeOptions};
use anyhow::Context;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct BenchOptions {
    pub contacts: usize,
    pub database_url: Option<String>,
    pub in_flight: usize,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// CPU seconds (user + system) this process has used so far, and its peak RSS in KiB.
pub fn cpu_and_peak_rss() -> (f64, i64) {
    // SAFETY: getrusage only writes into the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    (secs(usage.ru_utime) + secs(usage.ru_stime), usage.ru_maxrss)
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (sim_port, daemon_port) = (free_port()?, free_port()?);
    let database_url = options
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let config_text = format!(
        r#"
[server]
listen = "127.0.0.1:{daemon_port}"
database_url = "{database_url}"

[[lines]]
name = "bench"
provider = "simulator"
tier = "unlimited"
api_base = "http://127.0.0.1:{sim_port}/v23.0"
throughput_mps = 1000000
max_in_flight = {in_flight}

[[campaigns]]
name = "bench"
line = "bench"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["bench"]
variables = {{ "1" = "name", "2" = "field:plan", "3" = "literal:30%" }}
"#,
        in_flight = options.in_flight
    );
    let config_path = dir.path().join("bench.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::parse(&config_text, "bench.toml")?;

    let exe = std::env::current_exe()?;
    let _sim = KillOnDrop(
        Command::new(exe)
            .args(["simulate", "--all-read", "--throughput", "0", "--listen"])
            .arg(format!("127.0.0.1:{sim_port}"))
            .arg("--webhook-url")
            .arg(format!("http://127.0.0.1:{daemon_port}/webhooks/meta"))
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the simulator process")?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", sim_port))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "the simulator did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let clock: SharedClock = Arc::new(SystemClock);
    let daemon = serve::start(config.clone(), ServeOptions::new(clock.clone())).await?;
    let mut csv = String::with_capacity(options.contacts * 40);
    csv.push_str("phone,name,plan\n");
    for i in 0..options.contacts {
        csv.push_str(&format!("+55119{:08},Person {i},gold\n", 60_000_000 + i));
    }
    import::import(
        &daemon.store,
        clock.as_ref(),
        &BytesSource {
            name: "generated".into(),
            bytes: csv.as_bytes(),
        },
        &ImportOptions {
            list: "bench".into(),
            default_country: None,
            opt_in: false,
            batch_size: 1000,
            progress: false,
        },
    )
    .await?;

    let (cpu_before, _) = cpu_and_peak_rss();
    let started = Instant::now();
    campaign::command(
        &daemon.store,
        clock.as_ref(),
        &config,
        "bench",
        CampaignCommand::Start,
    )
    .await?;
    let c = campaign::find(&config, "bench")?;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let s = campaign::status(&daemon.store, clock.as_ref(), c).await?;
        if s.sent as usize >= options.contacts {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "bench did not finish in 10 minutes: {s:?}"
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu_after, peak_rss) = cpu_and_peak_rss();
    let n = options.contacts as f64;
    println!(
        "bench: {} templates sent in {elapsed:.2}s = {:.0} msg/s; daemon CPU {:.0} µs/msg ({:.2} cores); peak RSS {} MiB; {} ({} in flight)",
        options.contacts,
        n / elapsed,
        (cpu_after - cpu_before) * 1e6 / n,
        (cpu_after - cpu_before) / elapsed,
        peak_rss / 1024,
        if database_url.starts_with("sqlite") { "SQLite" } else { "PostgreSQL" },
        options.in_flight
    );
    daemon.shutdown().await;
    Ok(())
}
