//! The command line (SPEC §5.1): clap definitions, each command a thin call into the modules.
//! Exit codes: 0 success, 2 bad input or config (the message names file, line, key), 1 other
//! failures.

use crate::campaign::{self, CampaignError, CampaignStatus};
use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::domain::CampaignCommand;
use crate::import::{self, FileSource, ImportError, ImportOptions};
use crate::serve::{self, ServeOptions};
use crate::store::{Store, StoreError};
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(
    name = "tiercast",
    version,
    about = "Outbound WhatsApp campaign dialer daemon"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Configuration file [default: tiercast.toml, if it exists]
    #[arg(long, global = true, env = "TIERCAST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Database URL (overrides server.database_url): sqlite://FILE or postgres://…
    #[arg(long, global = true, env = "TIERCAST_DATABASE_URL")]
    pub database_url: Option<String>,
    /// Log lines on stderr: `text`, or `json` (one object per line, with the fields of the
    /// enclosing spans: campaign, contact id, wamid)
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "TIERCAST_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply database migrations
    Migrate,
    /// Load contacts from a CSV file into a list
    Import {
        file: PathBuf,
        /// The list to load into (created if needed)
        #[arg(long)]
        list: String,
        /// Country for numbers written without +country code (ISO code, e.g. BR)
        #[arg(long)]
        default_country: Option<String>,
        /// Mark every contact of this file as opted in (an opt_in column wins)
        #[arg(long)]
        opt_in: bool,
    },
    /// Manage the campaigns defined in the config
    Campaign {
        #[command(subcommand)]
        action: CampaignAction,
    },
    /// The whole job on the embedded default: SQLite, the built-in simulator, the example
    /// config and contacts, one campaign run to the end, then the report
    Demo {
        /// Where the demo database and report go
        #[arg(long, default_value = "tiercast-demo")]
        dir: PathBuf,
    },
    /// The daemon: webhooks, admin API, /metrics, dispatchers, timers, cron retries
    Serve {
        /// Overrides server.listen
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
        /// Create the SQLite file if it does not exist (without it, a missing file is an
        /// error: an empty database would start every campaign from nothing)
        #[arg(long)]
        create_db: bool,
    },
    /// Run the built-in Cloud API simulator on its own
    Simulate {
        #[arg(long, default_value = "127.0.0.1:4100")]
        listen: std::net::SocketAddr,
        /// Where to post signed status webhooks (e.g. http://127.0.0.1:8080/webhooks/meta)
        #[arg(long)]
        webhook_url: Option<String>,
        /// Messages per second per number (0 = unlimited)
        #[arg(long, default_value_t = 80)]
        throughput: u32,
        /// Every message delivered and read (no failures): for load tests
        #[arg(long)]
        all_read: bool,
        /// Tries per webhook POST before it is given up on (non-200 answers are retried)
        #[arg(long, default_value_t = 5)]
        webhook_attempts: u32,
        /// Longest wait between two tries of one webhook POST, in milliseconds
        #[arg(long, default_value_t = 30_000)]
        webhook_backoff_max_ms: u64,
        /// Delay added to every send answer, after the message is accepted, in milliseconds
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Share of sends accepted and then cut off before the answer (0.0–1.0)
        #[arg(long, default_value_t = 0.0)]
        fault_drop: f64,
        /// Share of sends accepted and answered only after --fault-slow-ms
        #[arg(long, default_value_t = 0.0)]
        fault_slow: f64,
        /// How late a `--fault-slow` answer comes, in milliseconds
        #[arg(long, default_value_t = 3000)]
        fault_slow_ms: u64,
        /// Share of sends refused with HTTP 500/503 (Graph code 1 or 2), not accepted
        #[arg(long, default_value_t = 0.0)]
        fault_5xx: f64,
        /// Share of sends refused with HTTP 429 (Graph code 130429), not accepted
        #[arg(long, default_value_t = 0.0)]
        fault_429: f64,
    },
    /// Measure the sustained send rate against the simulator in a separate process
    Bench {
        #[arg(long, default_value_t = 20_000)]
        contacts: usize,
        /// Requests in flight at once, per line
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        /// Lines (numbers), the contacts split between them
        #[arg(long, default_value_t = 1)]
        lines: usize,
        /// Daemons on the database (more than one needs PostgreSQL)
        #[arg(long, default_value_t = 1)]
        daemons: usize,
        /// Measure webhook ingest instead: status webhooks posted to a daemon, BATCH statuses
        /// per POST (1 = one status each; Meta batches up to 1000). One line, one daemon, no
        /// send latency: the flags that shape a send run are refused with it
        #[arg(
            long,
            value_name = "BATCH",
            conflicts_with_all = ["lines", "daemons", "latency_ms", "no_status_webhooks"]
        )]
        webhooks: Option<usize>,
        /// Delay the simulator adds to every send answer, in milliseconds (Meta's median is up
        /// to 250): shows how many requests in flight a line needs for its rate
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Dispatch alone (claim, render, send, record), as the bare ceiling is measured: the
        /// simulator posts no status webhooks back during the run
        #[arg(long)]
        no_status_webhooks: bool,
    },
    /// Templates: fetch them from the provider, or show the synced ones
    Templates {
        #[command(subcommand)]
        action: TemplatesAction,
    },
    /// The cron-triggered retry run: makes retryable contacts due now and sends them
    Retry {
        #[arg(long)]
        campaign: Option<String>,
    },
    /// Messaging limits: current limit and use per portfolio, or a plan to climb the ladder
    Tier {
        #[command(subcommand)]
        action: TierAction,
    },
    /// One row per contact of a campaign
    Report {
        #[arg(long)]
        campaign: String,
        #[arg(long, value_enum, default_value_t = ReportFormat::Csv)]
        format: ReportFormat,
    },
}

#[derive(Debug, Subcommand)]
pub enum CampaignAction {
    /// Every campaign with its state and hopper counts
    List,
    /// One campaign's hopper, outcomes and answers
    Status {
        name: String,
        #[arg(long)]
        json: bool,
    },
    Start {
        name: String,
    },
    Pause {
        name: String,
    },
    Resume {
        name: String,
    },
    Stop {
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TierAction {
    /// Limit, distinct recipients in 24 h and 7 days, and whether the next upgrade can come
    Status,
    /// The soonest day-by-day volumes to reach a tier
    Plan {
        #[arg(long)]
        portfolio: String,
        /// e.g. 10k, 100k, unlimited
        #[arg(long)]
        target: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum TemplatesAction {
    Sync {
        #[arg(long)]
        line: Option<String>,
    },
    List,
    /// Submit a new template described in a TOML file (see examples/template.toml) for Meta's
    /// review; it is stored as PENDING until the status webhook approves or rejects it
    Create {
        file: PathBuf,
        /// The line whose account gets the template (needed when the config has several)
        #[arg(long)]
        line: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Csv,
    Json,
}

/// A failure, sorted by whose it is.
#[derive(Debug)]
pub enum CliError {
    /// Bad input or config: exit 2.
    Input(String),
    /// Anything else: exit 1.
    Failure(anyhow::Error),
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Input(e.to_string())
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        if e.is_bad_input() {
            CliError::Input(e.to_string())
        } else {
            CliError::Failure(e.into())
        }
    }
}

impl From<CampaignError> for CliError {
    fn from(e: CampaignError) -> Self {
        if e.is_bad_input() {
            CliError::Input(e.to_string())
        } else {
            CliError::Failure(e.into())
        }
    }
}

impl From<ImportError> for CliError {
    fn from(e: ImportError) -> Self {
        match e {
            ImportError::Store { .. } => CliError::Failure(e.into()),
            other => CliError::Input(other.to_string()),
        }
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError::Failure(e.into())
    }
}

pub async fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.log_format);
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(CliError::Input(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
        Err(CliError::Failure(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,tiercast=info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        // The current span's fields (campaign, contact, wamid) and the whole span list, so a
        // log shipper can filter on them without parsing text.
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
}

/// The config named by `--config`, else `tiercast.toml` if present, else the defaults.
pub fn load_config(global: &GlobalArgs) -> Result<Config, ConfigError> {
    let mut config = match &global.config {
        Some(path) => Config::load(path)?,
        None if Path::new("tiercast.toml").exists() => Config::load(Path::new("tiercast.toml"))?,
        None => Config::empty(),
    };
    if let Some(url) = &global.database_url {
        config.server.database_url = url.clone();
    }
    Ok(config)
}

/// Refuses a global flag the command would not read, rather than ignoring it.
fn refuse_unread_globals(cli: &Cli) -> Result<(), CliError> {
    let (command, config, database_url) = match cli.command {
        // The demo's own SQLite file (under --dir) and the embedded example config, by design:
        // it deletes and recreates its database, which must never be one the user named.
        Command::Demo { .. } => ("demo", true, true),
        // The bench writes its own config and its own contacts for every run.
        Command::Bench { .. } => ("bench", true, false),
        _ => return Ok(()),
    };
    let refused = |flag: &str, env: &str| {
        CliError::Input(format!(
            "`tiercast {command}` does not read {flag} (or {env}): it runs on its own {}",
            if command == "demo" {
                "SQLite file under --dir and the embedded example config"
            } else {
                "generated config and contacts (--database-url picks the database)"
            }
        ))
    };
    if config && cli.global.config.is_some() {
        return Err(refused("--config", "TIERCAST_CONFIG"));
    }
    if database_url && cli.global.database_url.is_some() {
        return Err(refused("--database-url", "TIERCAST_DATABASE_URL"));
    }
    Ok(())
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    refuse_unread_globals(&cli)?;
    if let Command::Demo { dir } = &cli.command {
        return crate::demo::run(dir).await.map_err(CliError::Failure);
    }
    let config = load_config(&cli.global)?;
    let clock = SystemClock;
    match cli.command {
        Command::Migrate => {
            let store = Store::open(&config.server.database_url).await?;
            println!(
                "database {} is up to date",
                redact_url(&config.server.database_url)
            );
            store.close().await;
        }
        Command::Import {
            file,
            list,
            default_country,
            opt_in,
        } => {
            let store = Store::open(&config.server.database_url).await?;
            let options = ImportOptions {
                list,
                default_country: default_country.or_else(|| config.import.default_country.clone()),
                opt_in,
                batch_size: config.import.batch_size,
                progress: true,
            };
            let summary = import::import(&store, &clock, &FileSource(file), &options).await?;
            println!("{summary}");
            store.close().await;
        }
        Command::Campaign { action } => {
            let store = Store::open_existing(&config.server.database_url).await?;
            campaign_action(&store, &clock, &config, action).await?;
            store.close().await;
        }
        Command::Demo { .. } => unreachable!("the demo reads no config and ran above"),
        Command::Serve { listen, create_db } => {
            let clock: crate::clock::SharedClock =
                std::sync::Arc::new(crate::clock::SteadyClock::system());
            let daemon = serve::start(
                config,
                ServeOptions {
                    listen,
                    create_database: create_db,
                    ..ServeOptions::new(clock)
                },
            )
            .await
            .map_err(classify_start_error)?;
            println!("tiercast serving on {}", daemon.url());
            serve::termination().await;
            tracing::info!("shutting down");
            daemon.shutdown().await;
        }
        Command::Simulate {
            listen,
            webhook_url,
            throughput,
            all_read,
            webhook_attempts,
            webhook_backoff_max_ms,
            latency_ms,
            fault_drop,
            fault_slow,
            fault_slow_ms,
            fault_5xx,
            fault_429,
        } => {
            let faults = crate::sim::SimFaults {
                drop: fault_drop,
                slow: fault_slow,
                slow_ms: fault_slow_ms,
                server_error: fault_5xx,
                throttle: fault_429,
            };
            faults
                .validate()
                .map_err(|e| CliError::Input(format!("--fault-*: {e}")))?;
            let base = crate::sim::SimConfig {
                webhook_url,
                fates: if all_read {
                    crate::sim::FateMix::all_read()
                } else {
                    crate::sim::FateMix::default()
                },
                webhooks: crate::sim::WebhookMode {
                    max_attempts: webhook_attempts.max(1),
                    retry_backoff_max: std::time::Duration::from_millis(webhook_backoff_max_ms),
                    ..crate::sim::WebhookMode::default()
                },
                latency: std::time::Duration::from_millis(latency_ms),
                faults,
                ..crate::sim::SimConfig::default()
            };
            simulate(&config, listen, throughput, base).await?
        }
        Command::Bench {
            contacts,
            in_flight,
            webhooks: Some(batch),
            ..
        } => crate::bench::webhooks::run(crate::bench::webhooks::WebhookBenchOptions {
            contacts,
            database_url: cli.global.database_url.clone(),
            in_flight,
            batch,
        })
        .await
        .map_err(CliError::Failure)?,
        Command::Bench {
            contacts,
            in_flight,
            lines,
            daemons,
            webhooks: None,
            latency_ms,
            no_status_webhooks,
        } => crate::bench::run(crate::bench::BenchOptions {
            contacts,
            database_url: cli.global.database_url.clone(),
            in_flight,
            lines,
            daemons,
            latency_ms,
            status_webhooks: !no_status_webhooks,
        })
        .await
        .map_err(CliError::Failure)?,
        Command::Templates { action } => templates(config, action).await?,
        Command::Retry { campaign } => retry(config, campaign).await?,
        Command::Tier { action } => tier(&config, action).await?,
        Command::Report {
            campaign: name,
            format,
        } => {
            let store = Store::open_existing(&config.server.database_url).await?;
            let c = campaign::find(&config, &name)?;
            let row = store.ensure_campaign(&c.name, clock.now_millis()).await?;
            let stdout = std::io::stdout();
            write_report(&store, row.id, format, &mut stdout.lock()).await?;
            store.close().await;
        }
    }
    Ok(())
}

async fn campaign_action(
    store: &Store,
    clock: &dyn Clock,
    config: &Config,
    action: CampaignAction,
) -> Result<(), CliError> {
    let (name, cmd) = match action {
        CampaignAction::List => {
            println!(
                "{:<24} {:<10} {:<12} {:>8} {:>8} {:>8} {:>8} {:>8}",
                "CAMPAIGN", "STATE", "LINE", "TOTAL", "FRESH", "RETRY", "PENDING", "CLOSED"
            );
            for c in &config.campaigns {
                let s = campaign::status(store, clock, config, c).await?;
                println!(
                    "{:<24} {:<10} {:<12} {:>8} {:>8} {:>8} {:>8} {:>8}",
                    s.name,
                    s.state,
                    s.line,
                    s.hopper["total"],
                    s.hopper["fresh"],
                    s.hopper["retry"],
                    s.hopper["pending"],
                    s.hopper["closed"]
                );
            }
            return Ok(());
        }
        CampaignAction::Status { name, json } => {
            let c = campaign::find(config, &name)?;
            let s = campaign::status(store, clock, config, c).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&s).map_err(|e| CliError::Failure(e.into()))?
                );
            } else {
                print_status(&s);
            }
            return Ok(());
        }
        CampaignAction::Start { name } => (name, CampaignCommand::Start),
        CampaignAction::Pause { name } => (name, CampaignCommand::Pause),
        CampaignAction::Resume { name } => (name, CampaignCommand::Resume),
        CampaignAction::Stop { name } => (name, CampaignCommand::Stop),
    };
    let row = campaign::command(store, clock, config, &name, cmd).await?;
    let c = campaign::find(config, &name)?;
    let s = campaign::status(store, clock, config, c).await?;
    println!(
        "campaign {} is {} ({} contacts in the hopper, {} closed)",
        row.name, row.state, s.hopper["total"], s.hopper["closed"]
    );
    Ok(())
}

pub fn print_status(s: &CampaignStatus) {
    println!(
        "campaign {}  [{}]  line {}  template {}",
        s.name, s.state, s.line, s.template
    );
    if let Some(reason) = &s.paused_reason {
        println!("paused: {reason}");
    }
    for why in &s.not_sending {
        println!("not sending: {}", why.message);
    }
    let h = &s.hopper;
    println!(
        "hopper   total {}  fresh {}  retry {}  pending {}  closed {}",
        h["total"], h["fresh"], h["retry"], h["pending"], h["closed"]
    );
    println!(
        "messages sent {}  delivered {}  read {}  waiting for tier {}",
        s.sent, s.delivered, s.read, s.waiting_for_tier
    );
    if s.held_for_quality_assessment + s.paused_by_meta > 0 {
        println!(
            "held by Meta's pacing: held for quality assessment {}  paused {}",
            s.held_for_quality_assessment, s.paused_by_meta
        );
    }
    let outcomes: Vec<String> = s
        .outcomes
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if !outcomes.is_empty() {
        println!("outcomes {}", outcomes.join("  "));
    }
    let answers: Vec<String> = s.answers.iter().map(|(k, n)| format!("{k} {n}")).collect();
    if !answers.is_empty() {
        println!("answers  {}", answers.join("  "));
    }
}

/// Writes the campaign report as CSV or JSON lines... as one JSON array.
pub async fn write_report(
    store: &Store,
    campaign_id: i64,
    format: ReportFormat,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let io = |e: std::io::Error| StoreError::Corrupt(format!("writing the report: {e}"));
    match format {
        ReportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            let mut header_written = false;
            store
                .report_rows(campaign_id, |row| {
                    if !header_written {
                        header_written = true;
                    }
                    w.serialize(&row)
                        .map_err(|e| StoreError::Corrupt(format!("writing the report: {e}")))
                })
                .await?;
            w.flush().map_err(io)?;
        }
        ReportFormat::Json => {
            out.write_all(b"[").map_err(io)?;
            let mut first = true;
            store
                .report_rows(campaign_id, |row| {
                    if !first {
                        out.write_all(b",\n").map_err(io)?;
                    }
                    first = false;
                    serde_json::to_writer(&mut *out, &row)
                        .map_err(|e| StoreError::Corrupt(e.to_string()))
                })
                .await?;
            out.write_all(b"]\n").map_err(io)?;
        }
    }
    Ok(())
}

/// A database URL fit for logs: the password, if any, replaced.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}://{user}:***@{}", &url[..scheme], &url[at + 1..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

/// Config problems found while starting (a missing secret) are bad input; the rest are ours.
fn classify_start_error(e: anyhow::Error) -> CliError {
    if e.downcast_ref::<StoreError>()
        .is_some_and(StoreError::is_bad_input)
    {
        return CliError::Input(format!("{e:#}"));
    }
    match e.downcast::<ConfigError>() {
        Ok(config) => CliError::Input(config.to_string()),
        Err(other) => CliError::Failure(other),
    }
}

/// `tiercast simulate`: `base` with one simulated number per simulator line of the config.
async fn simulate(
    config: &Config,
    listen: std::net::SocketAddr,
    throughput: u32,
    base: crate::sim::SimConfig,
) -> Result<(), CliError> {
    use crate::sim::{SimConfig, SimLine, Simulator};
    let mut lines: Vec<SimLine> = config
        .lines
        .iter()
        .filter(|l| l.provider == crate::config::ProviderKind::Simulator)
        .map(|l| SimLine {
            phone_number_id: l.phone_number_id.clone(),
            waba_id: crate::lines::sim_waba_id(l),
            access_token: crate::lines::SIM_ACCESS_TOKEN.into(),
            app_secret: crate::lines::SIM_APP_SECRET.into(),
            throughput_mps: throughput,
            display_phone_number: "15550000000".into(),
        })
        .collect();
    if lines.is_empty() {
        lines.push(SimLine {
            throughput_mps: throughput,
            ..SimLine::default()
        });
    }
    let sim = Simulator::new(SimConfig {
        phone_numbers: lines.clone(),
        ..base
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "Cloud API simulator on http://{} (graph version path /v23.0)",
        listener.local_addr()?
    );
    for l in &lines {
        println!(
            "  phone_number_id {}  waba_id {}  token {}",
            l.phone_number_id, l.waba_id, l.access_token
        );
    }
    let faults = sim.faults();
    if faults.any() {
        println!("  send faults injected: {faults:?} (POST /sim/faults changes them)");
    }
    tokio::select! {
        r = sim.serve(listener) => r?,
        _ = serve::termination() => {}
    }
    Ok(())
}

async fn templates(config: Config, action: TemplatesAction) -> Result<(), CliError> {
    let clock: crate::clock::SharedClock = std::sync::Arc::new(SystemClock);
    match action {
        TemplatesAction::Sync { line } => {
            if let Some(l) = &line {
                if config.line(l).is_none() {
                    return Err(CliError::Input(format!(
                        "no line named {l:?} in {}",
                        config.source
                    )));
                }
            }
            // The daemon machinery gives simulator lines their in-process simulator too.
            let daemon = serve::start(
                config,
                ServeOptions {
                    listen: Some(([127, 0, 0, 1], 0).into()),
                    ..ServeOptions::new(clock.clone())
                },
            )
            .await
            .map_err(classify_start_error)?;
            let results =
                serve::sync_templates(&daemon.store, &clock, &daemon.lines, line.as_deref()).await;
            daemon.shutdown().await;
            let mut failed = false;
            for (line, r) in results {
                match r {
                    Ok(n) => println!("line {line}: {n} templates synced"),
                    Err(e) => {
                        failed = true;
                        println!("line {line}: sync failed: {e}");
                    }
                }
            }
            if failed {
                return Err(CliError::Failure(anyhow::anyhow!(
                    "template sync failed for at least one line"
                )));
            }
        }
        TemplatesAction::Create { file, line } => create_template(config, &file, line).await?,
        TemplatesAction::List => {
            let store = Store::open_existing(&config.server.database_url).await?;
            println!(
                "{:<12} {:<24} {:<8} {:<15} {:<10} {:<8} {:<16} PLACEHOLDERS",
                "LINE", "NAME", "LANG", "CATEGORY", "STATUS", "QUALITY", "CHANGES"
            );
            for (line, t) in store.templates().await? {
                let slots: Vec<String> = t.placeholders().into_iter().map(|s| s.key).collect();
                println!(
                    "{:<12} {:<24} {:<8} {:<15} {:<10} {:<8} {:<16} {}",
                    line,
                    t.name,
                    t.language,
                    t.category,
                    t.status,
                    t.quality.as_deref().unwrap_or("-"),
                    template_changes(&t),
                    slots.join(", ")
                );
            }
            store.close().await;
        }
    }
    Ok(())
}

/// `templates create`: check the file, submit it on the line's account, store the answer.
/// Nothing reaches the network or the database unless the whole file is valid.
async fn create_template(
    config: Config,
    file: &Path,
    line: Option<String>,
) -> Result<(), CliError> {
    use crate::provider::Provider;
    let text = std::fs::read_to_string(file)
        .map_err(|e| CliError::Input(format!("{}: {e}", file.display())))?;
    let new = crate::domain::authoring::parse(&text, &file.display().to_string())
        .map_err(|e| CliError::Input(e.to_string()))?;
    let names: Vec<&str> = config.lines.iter().map(|l| l.name.as_str()).collect();
    let line = match (line, names.as_slice()) {
        (Some(l), _) if names.contains(&l.as_str()) => l,
        (Some(l), _) => {
            return Err(CliError::Input(format!(
                "--line: no line named {l:?} in {} (defined: {})",
                config.source,
                names.join(", ")
            )))
        }
        (None, [only]) => (*only).to_string(),
        (None, []) => {
            return Err(CliError::Input(format!(
                "{}: no line is configured to create the template on",
                config.source
            )))
        }
        (None, _) => {
            return Err(CliError::Input(format!(
                "--line: {} has several lines; name one ({})",
                config.source,
                names.join(", ")
            )))
        }
    };
    // Only this line's secrets are needed.
    let mut one = config.clone();
    one.lines.retain(|l| l.name == line);
    let runtimes = crate::lines::build(&one, None)?;
    let rt = runtimes
        .get(&line)
        .ok_or_else(|| CliError::Failure(anyhow::anyhow!("line {line} was not built")))?;
    let created = rt
        .provider
        .create_template(&new.request)
        .await
        .map_err(|e| {
            CliError::Failure(anyhow::anyhow!(
                "line {line}: the provider refused template {} ({}): {e}",
                new.name,
                new.language
            ))
        })?;
    let mut stored = new.request.clone();
    stored["id"] = created.id.clone().into();
    stored["status"] = created.status.clone().into();
    if let Some(category) = &created.category {
        stored["category"] = category.clone().into();
    }
    let def: crate::domain::template::TemplateDef = serde_json::from_value(stored)
        .map_err(|e| CliError::Failure(anyhow::anyhow!("reading back the template: {e}")))?;
    let store = Store::open_existing(&config.server.database_url).await?;
    store
        .insert_created_template(&line, &def, SystemClock.now_millis())
        .await?;
    store.close().await;
    println!(
        "template {} ({}) submitted on line {line}: id {}, status {}, category {}",
        def.name, def.language, created.id, def.status, def.category
    );
    if def.category != new.category {
        println!(
            "Meta changed the category from {} to {}",
            new.category, def.category
        );
    }
    Ok(())
}

/// What `templates list` says about a template beyond its columns: Meta's recategorisation
/// (done or announced) and why it was rejected; `-` when there is nothing.
pub fn template_changes(t: &crate::domain::template::TemplateDef) -> String {
    let at = |ms: Option<i64>| {
        ms.map(|ms| {
            crate::clock::from_millis(ms)
                .format(" %Y-%m-%d %H:%M UTC")
                .to_string()
        })
        .unwrap_or_default()
    };
    let mut notes = Vec::new();
    if let Some(correct) = &t.correct_category {
        notes.push(format!("becomes {correct}{}", at(t.category_change_at)));
    } else if let Some(previous) = &t.previous_category {
        notes.push(format!("was {previous}{}", at(t.category_change_at)));
    }
    if let Some(reason) = &t.rejected_reason {
        notes.push(format!("rejected: {reason}"));
    }
    if notes.is_empty() {
        "-".into()
    } else {
        notes.join("; ")
    }
}

/// The retry run: every waiting retry row of the chosen campaigns becomes due now. A running
/// daemon (found at server.listen) picks them up; otherwise this process sends them itself.
async fn retry(config: Config, only: Option<String>) -> Result<(), CliError> {
    let clock: crate::clock::SharedClock = std::sync::Arc::new(SystemClock);
    let store = Store::open_existing(&config.server.database_url).await?;
    if let Some(name) = &only {
        campaign::find(&config, name)?;
    }
    let mut total = 0;
    let mut ids = Vec::new();
    for c in config
        .campaigns
        .iter()
        .filter(|c| only.as_ref().is_none_or(|o| o == &c.name))
    {
        let row = store.ensure_campaign(&c.name, clock.now_millis()).await?;
        if row.state != crate::domain::CampaignState::Running {
            continue;
        }
        let n = store.make_retries_due(row.id, clock.now_millis()).await?;
        println!("campaign {}: {n} contacts due for retry", c.name);
        total += n;
        ids.push(row.id);
    }
    if total == 0 {
        return Ok(());
    }
    let daemon_up = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        tokio::net::TcpStream::connect(config.server.listen),
    )
    .await
    .is_ok_and(|r| r.is_ok());
    if daemon_up {
        println!("handed to the daemon at {}", config.server.listen);
        return Ok(());
    }
    let daemon = serve::start(
        config,
        ServeOptions {
            listen: Some(([127, 0, 0, 1], 0).into()),
            ..ServeOptions::new(clock)
        },
    )
    .await
    .map_err(classify_start_error)?;
    loop {
        let mut left = 0;
        for id in &ids {
            left += store
                .due_unsent_rows(*id, crate::clock::SystemClock.now_millis())
                .await?;
        }
        if left == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    if let Some(sim) = &daemon.simulator {
        sim.flush_webhooks().await;
    }
    daemon.shutdown().await;
    println!("retry run done: {total} contacts retried");
    Ok(())
}

async fn tier(config: &Config, action: TierAction) -> Result<(), CliError> {
    use crate::domain::{ramp, Tier};
    let clock = SystemClock;
    let store = Store::open_existing(&config.server.database_url).await?;
    for p in &config.portfolios {
        store
            .ensure_portfolio_tier(&p.name, p.tier, clock.now_millis())
            .await?;
    }
    let fmt_time = |ms: i64| {
        crate::clock::from_millis(ms)
            .format("%Y-%m-%d %H:%M UTC")
            .to_string()
    };
    match action {
        TierAction::Status => {
            for p in &config.portfolios {
                let Some(u) = store.tier_usage(&p.name, clock.now_millis()).await? else {
                    continue;
                };
                println!(
                    "portfolio {}: tier {} (from {}, since {})",
                    p.name,
                    u.tier,
                    u.source,
                    fmt_time(u.changed_at)
                );
                let limit = u
                    .limit
                    .map(|l| l.to_string())
                    .unwrap_or_else(|| "unlimited".into());
                println!(
                    "  used in 24 h: {} of {limit}; distinct users in 7 days: {}",
                    u.used_24h, u.used_7d
                );
                if let Some(at) = u.next_slot_at {
                    println!("  next slot opens: {}", fmt_time(at));
                }
                match (u.limit, u.tier.parse::<Tier>().ok().and_then(ramp::next_tier)) {
                    (Some(limit), Some(next)) if u.used_7d * 2 >= limit => println!(
                        "  upgrade: qualifies for {next} (half the limit reached in 7 days); expected within {} if quality is not low",
                        humantime::format_duration(p.upgrade_delay)
                    ),
                    (Some(limit), Some(next)) => println!(
                        "  upgrade: {} more distinct users within 7 days qualify for {next}",
                        limit.div_ceil(2).saturating_sub(u.used_7d)
                    ),
                    _ => println!("  upgrade: top of the ladder"),
                }
            }
        }
        TierAction::Plan { portfolio, target } => {
            let p = config.portfolio(&portfolio).ok_or_else(|| {
                CliError::Input(format!(
                    "no portfolio named {portfolio:?} in {}",
                    config.source
                ))
            })?;
            let target: Tier = target
                .parse()
                .map_err(|e: crate::domain::tier::TierError| {
                    CliError::Input(format!("--target: {e}"))
                })?;
            let u = store.tier_usage(&p.name, clock.now_millis()).await?;
            let (current, used_7d) = match &u {
                Some(u) => (u.tier.parse().unwrap_or(p.tier), u.used_7d),
                None => (p.tier, 0),
            };
            let steps = ramp::plan(current, target, used_7d, p.upgrade_delay);
            if steps.is_empty() {
                println!(
                    "portfolio {} is at {current}: {target} is already reached",
                    p.name
                );
            }
            for day in ramp::by_day(&steps) {
                let parts: Vec<String> = day
                    .steps
                    .iter()
                    .map(|s| {
                        format!(
                            "{} at tier {} from +{}",
                            s.send_at_least,
                            s.tier,
                            humantime::format_duration(s.after)
                        )
                    })
                    .collect();
                println!(
                    "day {}: {} new distinct users ({})",
                    day.day,
                    day.new_users,
                    parts.join("; ")
                );
            }
            if !steps.is_empty() {
                println!(
                    "{target} reached after about {} if every upgrade comes on time",
                    humantime::format_duration(p.upgrade_delay * steps.len() as u32)
                );
            }
        }
    }
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_output() {
        assert_eq!(
            redact_url("postgres://u:secret@h/db"),
            "postgres://u:***@h/db"
        );
        assert_eq!(redact_url("sqlite://x.db"), "sqlite://x.db");
    }
}
