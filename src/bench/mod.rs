//! `tiercast bench`: sustained send rate of the daemon against the simulator running as a
//! separate process, with the throughput limiter lifted, and the daemon's own CPU time per
//! message (the simulator's CPU is not counted). Prints one comparable line.

pub mod webhooks;

use crate::clock::{SharedClock, SteadyClock};
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
    /// Lines (numbers), each with a campaign of `contacts / lines` contacts.
    pub lines: usize,
    /// Daemons on the database: this process and `daemons - 1` `tiercast serve` children.
    pub daemons: usize,
    /// Added by the simulator to every send answer.
    pub latency_ms: u64,
    /// Whether the simulator posts its status webhooks (sent, delivered, read) back during
    /// the run, as in production; without them the run is dispatch alone.
    pub status_webhooks: bool,
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

/// CPU seconds (user + system) another process has used so far, from `/proc/PID/stat`.
fn process_cpu(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or("");
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

/// CPU seconds used so far by the PostgreSQL server processes of this machine (every process
/// named `postgres`): the bench's database server shares the cores, so it counts in what
/// they allow. Backends that exit meanwhile drop out of the sum; the daemon's pool keeps its
/// connections for the run.
fn postgres_server_cpu() -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim_end() == "postgres")
        })
        .map(process_cpu)
        .sum()
}

struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub async fn run(options: BenchOptions) -> anyhow::Result<()> {
    anyhow::ensure!(options.lines >= 1, "--lines must be at least 1");
    anyhow::ensure!(options.daemons >= 1, "--daemons must be at least 1");
    let dir = tempfile::tempdir()?;
    let (sim_port, daemon_port) = (free_port()?, free_port()?);
    let database_url = options
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let on_postgres = database_url.starts_with("postgres");
    anyhow::ensure!(
        options.daemons == 1 || on_postgres,
        "several daemons need a PostgreSQL --database-url"
    );
    let mut config_text = format!(
        "[server]\nlisten = \"127.0.0.1:{daemon_port}\"\ndatabase_url = \"{database_url}\"\n"
    );
    for i in 0..options.lines {
        config_text.push_str(&format!(
            r#"
[[lines]]
name = "bench{i}"
provider = "simulator"
tier = "unlimited"
api_base = "http://127.0.0.1:{sim_port}/v23.0"
throughput_mps = 1000000
max_in_flight = {in_flight}

[[campaigns]]
name = "bench{i}"
line = "bench{i}"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["bench{i}"]
variables = {{ "1" = "name", "2" = "field:plan", "3" = "literal:30%" }}
"#,
            in_flight = options.in_flight
        ));
    }
    let config_path = dir.path().join("bench.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::parse(&config_text, "bench.toml")?;
    let exe = std::env::current_exe()?;
    let simulator = |webhooks: bool| -> anyhow::Result<KillOnDrop> {
        let mut cmd = Command::new(&exe);
        cmd.args(["simulate", "--all-read", "--throughput", "0", "--listen"])
            .arg(format!("127.0.0.1:{sim_port}"))
            .arg("--config")
            .arg(&config_path)
            .arg("--latency-ms")
            .arg(options.latency_ms.to_string())
            .stdout(Stdio::null());
        if webhooks {
            cmd.arg("--webhook-url")
                .arg(format!("http://127.0.0.1:{daemon_port}/webhooks/meta"));
        }
        Ok(KillOnDrop(
            cmd.spawn().context("starting the simulator process")?,
        ))
    };

    // The simulator's own ceiling: a bare load generator, same requests and concurrency.
    let bare_n = options.contacts.min(20_000);
    let (ceiling, bare_sim_cpu) = {
        let sim = simulator(false)?;
        wait_for_port(sim_port).await?;
        let sim_before = process_cpu(sim.0.id());
        let rate = bare_load(sim_port, &config, bare_n, options.in_flight).await?;
        (rate, process_cpu(sim.0.id()) - sim_before)
    };

    let sim = simulator(options.status_webhooks)?;
    wait_for_port(sim_port).await?;
    let clock: SharedClock = Arc::new(SteadyClock::system());
    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            create_database: true,
            ..ServeOptions::new(clock.clone())
        },
    )
    .await?;
    let per_line = options.contacts.div_ceil(options.lines);
    for (i, c) in config.campaigns.iter().enumerate() {
        let contacts = (i * per_line)..((i + 1) * per_line).min(options.contacts);
        import_generated(&daemon.store, clock.as_ref(), &c.lists[0], contacts).await?;
    }
    // The other daemons: the same binary and config, listening elsewhere (webhooks come here).
    let mut others = Vec::new();
    let mut metrics_urls = vec![format!("http://127.0.0.1:{daemon_port}/metrics")];
    for _ in 1..options.daemons {
        let port = free_port()?;
        metrics_urls.push(format!("http://127.0.0.1:{port}/metrics"));
        let text = config_text.replace(
            &format!("127.0.0.1:{daemon_port}"),
            &format!("127.0.0.1:{port}"),
        );
        let path = dir.path().join(format!("bench-{}.toml", others.len() + 1));
        std::fs::write(&path, text)?;
        others.push(spawn_daemon(&exe, &path)?);
    }
    let cpu = |others: &[KillOnDrop]| {
        cpu_and_peak_rss().0 + others.iter().map(|o| process_cpu(o.0.id())).sum::<f64>()
    };
    if !others.is_empty() {
        // Let them join before the clock starts, so the lines are spread from the first send.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    let cpu_before = cpu(&others);
    let sim_cpu_before = process_cpu(sim.0.id());
    let db_cpu = || {
        if on_postgres {
            postgres_server_cpu()
        } else {
            0.0
        }
    };
    let db_cpu_before = db_cpu();
    let started = Instant::now();
    for c in &config.campaigns {
        daemon
            .campaign_command(&c.name, CampaignCommand::Start)
            .await?;
    }
    // Progress from the daemons' own counters, as Prometheus would read them: polling the
    // hopper counts instead would put a scan of the campaign on the database every tick.
    let http = reqwest::Client::new();
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut sent = 0;
        for url in &metrics_urls {
            if let Ok(r) = http.get(url).send().await {
                sent += sent_total(&r.text().await.unwrap_or_default());
            }
        }
        if sent as usize >= options.contacts {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "bench did not finish in 10 minutes: {sent} sent"
        );
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu_used = cpu(&others) - cpu_before;
    let sim_cpu_used = process_cpu(sim.0.id()) - sim_cpu_before;
    let db_cpu_used = db_cpu() - db_cpu_before;
    let (_, peak_rss) = cpu_and_peak_rss();
    let n = options.contacts as f64;
    let rate = n / elapsed;
    println!(
        "bench: {} templates sent in {elapsed:.2}s = {rate:.0} msg/s; daemon CPU {:.0} µs/msg ({:.2} cores); peak RSS of this process (daemon + import + load generator) {} MiB; {}, {} line(s), {} daemon(s), {} in flight per line, {}",
        options.contacts,
        cpu_used * 1e6 / n,
        cpu_used / elapsed,
        peak_rss / 1024,
        if on_postgres { "PostgreSQL" } else { "SQLite" },
        options.lines,
        options.daemons,
        options.in_flight,
        if options.status_webhooks {
            "status webhooks flowing back"
        } else {
            "no status webhooks (dispatch alone)"
        }
    );
    println!(
        "simulator ceiling (bare HTTP load, {} in flight): {ceiling:.0} msg/s, simulator CPU {:.0} µs/msg; bench / ceiling = {:.2}",
        options.in_flight,
        bare_sim_cpu * 1e6 / bare_n as f64,
        rate / ceiling
    );
    if on_postgres {
        println!(
            "PostgreSQL server processes on this machine: {:.0} µs/msg ({:.2} cores)",
            db_cpu_used * 1e6 / n,
            db_cpu_used / elapsed
        );
    }
    // Daemon, simulator (and a local PostgreSQL) share the machine: at these costs per
    // message, its cores cap the rate whatever the waits, and so the ratio the run can reach.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let cap = cores * n / (cpu_used + sim_cpu_used + db_cpu_used);
    println!(
        "simulator CPU during the run {:.0} µs/msg ({:.2} cores); {cores:.0} cores at these costs cap the rate at {cap:.0} msg/s (ratio {:.2})",
        sim_cpu_used * 1e6 / n,
        sim_cpu_used / elapsed,
        cap / ceiling
    );
    drop(others);
    daemon.shutdown().await;
    drop(sim);
    Ok(())
}

/// The sum of `tiercast_messages_sent_total` over its series in a Prometheus text page.
fn sent_total(page: &str) -> u64 {
    page.lines()
        .filter(|l| l.starts_with(crate::metrics::MESSAGES_SENT))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// Imports generated contacts number `range` (`+55119…`, a name and a plan) into `list`.
async fn import_generated(
    store: &crate::store::Store,
    clock: &dyn crate::clock::Clock,
    list: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    let mut csv = String::with_capacity(range.len() * 40 + 16);
    csv.push_str("phone,name,plan\n");
    for k in range {
        csv.push_str(&format!("+55119{:08},Person {k},gold\n", 60_000_000 + k));
    }
    import::import(
        store,
        clock,
        &BytesSource {
            name: "generated".into(),
            bytes: csv.as_bytes(),
        },
        &ImportOptions {
            list: list.to_string(),
            default_country: None,
            opt_in: false,
            batch_size: 1000,
            progress: false,
        },
    )
    .await?;
    Ok(())
}

/// `tiercast --config PATH serve` as a child process, killed when dropped.
fn spawn_daemon(
    exe: &std::path::Path,
    config_path: &std::path::Path,
) -> anyhow::Result<KillOnDrop> {
    Ok(KillOnDrop(
        Command::new(exe)
            .arg("--config")
            .arg(config_path)
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting a daemon process")?,
    ))
}

async fn wait_for_port(port: u16) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        anyhow::ensure!(Instant::now() < deadline, "the simulator did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

/// Sends `n` template requests straight to the simulator, `in_flight` at a time, through
/// keep-alive connections, and returns the accepted rate: what the simulator can take at
/// most on this machine, against which the daemon's rate is read.
async fn bare_load(port: u16, config: &Config, n: usize, in_flight: usize) -> anyhow::Result<f64> {
    use futures::StreamExt;
    let line = &config.lines[0];
    let url = format!(
        "http://127.0.0.1:{port}/v23.0/{}/messages",
        line.phone_number_id
    );
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(in_flight)
        .tcp_nodelay(true)
        .build()?;
    let auth = format!("Bearer {}", crate::lines::SIM_ACCESS_TOKEN);
    let started = Instant::now();
    let results: Vec<bool> = futures::stream::iter(0..n)
        .map(|k| {
            let body = serde_json::json!({
                "messaging_product": "whatsapp",
                "to": format!("+55119{:08}", 40_000_000 + k),
                "type": "template",
                "template": {"name": "renewal_reminder", "language": {"code": "pt_BR"},
                    "components": [{"type": "body", "parameters": [
                        {"type": "text", "text": "Person"}, {"type": "text", "text": "gold"},
                        {"type": "text", "text": "30%"}]}]}
            });
            let req = http.post(&url).header("authorization", &auth).json(&body);
            async move { matches!(req.send().await, Ok(r) if r.status().is_success()) }
        })
        .buffer_unordered(in_flight.max(1))
        .collect()
        .await;
    let ok = results.iter().filter(|ok| **ok).count();
    anyhow::ensure!(
        ok == n,
        "the simulator refused {} of {n} bare requests",
        n - ok
    );
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
