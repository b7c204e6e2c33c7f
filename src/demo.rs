//! `tiercast demo`: the whole job on the embedded default — a fresh SQLite file, the built-in
//! simulator, the example config and contacts, one campaign run until nothing is left to send
//! and every status has come back, then the summary and the report.

use crate::campaign;
use crate::cli::{print_status, write_report, ReportFormat};
use crate::clock::{SharedClock, SteadyClock};
use crate::config::{Config, EXAMPLE_CONFIG};
use crate::domain::CampaignCommand;
use crate::import::{self, BytesSource, ImportOptions};
use crate::serve::{self, ServeOptions};
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const EXAMPLE_CONTACTS: &[u8] = include_bytes!("../examples/contacts.csv");
const DEMO_CAMPAIGN: &str = "renewal-nov";
const DEMO_LIST: &str = "customers-nov";

pub async fn run(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("demo.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(PathBuf::from(format!("{}{suffix}", db.display())));
    }
    let mut config = Config::parse(EXAMPLE_CONFIG, "campaigns.example.toml (embedded)")?;
    config.server.database_url = format!("sqlite://{}", db.display());
    let clock: SharedClock = Arc::new(SteadyClock::system());
    println!(
        "tiercast demo — database {}, built-in Cloud API simulator, example config",
        db.display()
    );

    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse()?),
            create_database: true,
            ..ServeOptions::new(clock.clone())
        },
    )
    .await?;
    let summary = import::import(
        &daemon.store,
        clock.as_ref(),
        &BytesSource {
            name: "examples/contacts.csv".into(),
            bytes: EXAMPLE_CONTACTS,
        },
        &ImportOptions {
            list: DEMO_LIST.into(),
            default_country: config.import.default_country.clone(),
            opt_in: false,
            batch_size: config.import.batch_size,
            progress: false,
        },
    )
    .await?;
    println!("imported {summary}");
    daemon
        .campaign_command(DEMO_CAMPAIGN, CampaignCommand::Start)
        .await?;
    let c = campaign::find(&config, DEMO_CAMPAIGN)?;
    let line = config.line(&c.line).map(|l| l.throughput_mps).unwrap_or(0);
    println!(
        "campaign {DEMO_CAMPAIGN} started on line {} at {line} msg/s",
        c.line
    );

    let started = Instant::now();
    let row = daemon
        .store
        .ensure_campaign(DEMO_CAMPAIGN, clock.now_millis())
        .await?;
    let first = campaign::status(&daemon.store, clock.as_ref(), &config, c).await?;
    let to_send = first.hopper["total"] - first.hopper["closed"];
    let bar = if std::io::stdout().is_terminal() {
        ProgressBar::new(to_send)
    } else {
        ProgressBar::hidden()
    };
    bar.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut settled_for = 0;
    let mut last_line = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = campaign::status(&daemon.store, clock.as_ref(), &config, c).await?;
        // Done when nothing is due now; retries scheduled later (backoff) stay in the hopper.
        let due = daemon
            .store
            .due_unsent_rows(row.id, clock.now_millis())
            .await?;
        let progress = format!(
            "sent {}  delivered {}  read {}  failed {}  pending {}  retry later {}",
            s.sent,
            s.delivered,
            s.read,
            s.outcomes["failed"],
            s.hopper["pending"],
            s.hopper["retry"]
        );
        bar.set_position(to_send.saturating_sub(due as u64));
        bar.set_message(progress.clone());
        if bar.is_hidden() && last_line.elapsed() >= Duration::from_secs(5) {
            println!("{progress}");
            last_line = Instant::now();
        }
        if due == 0 {
            if let Some(sim) = &daemon.simulator {
                sim.flush_webhooks().await;
            }
            // Stop once the statuses have stopped moving for a second.
            settled_for += 1;
            if settled_for >= 4 {
                break;
            }
        }
        if !matches!(s.state, crate::domain::CampaignState::Running) {
            break;
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    if let Some(sim) = &daemon.simulator {
        let replies = simulate_replies(&daemon.store, sim, row.id).await?;
        println!("the simulator replied for {replies} contacts (button taps, free text, an opt-out keyword)");
        sim.flush_webhooks().await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let s = campaign::status(&daemon.store, clock.as_ref(), &config, c).await?;
    println!();
    print_status(&s);
    println!(
        "sent {} templates in {:.1}s; {} contacts are pending: they wait for an answer until the response timeout ({}).",
        s.sent,
        elapsed.as_secs_f64(),
        s.hopper["pending"],
        humantime::format_duration(c.response_timeout)
    );
    let report = dir.join("report.csv");
    let mut file =
        std::fs::File::create(&report).with_context(|| format!("creating {}", report.display()))?;
    write_report(&daemon.store, row.id, ReportFormat::Csv, &mut file)
        .await
        .map_err(|e| anyhow::anyhow!("writing the report: {e:?}"))?;
    println!("report: {} (one row per contact)", report.display());
    let open = daemon.store.open_interactions_by_line().await?;
    let open: i64 = open.iter().map(|(_, n)| n).sum();
    println!("{open} conversations wait for an agent (GET /api/interactions while `tiercast serve` runs)");
    daemon.shutdown().await;
    Ok(())
}

/// Some contacts answer, as people do: a deterministic sample of the pending ones taps YES
/// (quoting the template), taps NO (no such answer: an agent takes it), writes free text, or
/// sends an opt-out keyword. Each reply reaches the daemon as a signed Meta webhook.
async fn simulate_replies(
    store: &crate::store::Store,
    sim: &crate::sim::Simulator,
    campaign_id: i64,
) -> anyhow::Result<usize> {
    let mut pending = Vec::new();
    store
        .report_rows(campaign_id, |r| {
            if r.state == "pending" {
                pending.push((r.phone, r.wamid));
            }
            Ok(())
        })
        .await?;
    let mut n = 0;
    for (i, (phone, wamid)) in pending.into_iter().enumerate() {
        let (kind, text, context) = match i % 20 {
            0 | 5 | 10 => ("button", "YES", wamid),
            3 => ("button", "NO", wamid),
            7 => ("text", "Quero falar com um atendente, por favor", None),
            13 => ("text", "PARAR", None),
            _ => continue,
        };
        let spec = crate::sim::InboundSpec {
            phone_number_id: None,
            from: Some(phone.trim_start_matches('+').to_string()),
            from_user_id: None,
            kind: Some(kind.into()),
            text: Some(text.into()),
            payload: (kind == "button").then(|| text.to_string()),
            context_id: context,
            profile_name: None,
            timestamp: None,
        };
        if sim.inject_inbound(spec).is_ok() {
            n += 1;
        }
    }
    Ok(n)
}
