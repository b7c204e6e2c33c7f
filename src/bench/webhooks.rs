//! `tiercast bench --webhooks BATCH`: how many status events a daemon takes per second.
//!
//! A `tiercast serve` child process first sends a campaign to the simulator (its own status
//! webhooks off), so every row has a real wamid. Then this process posts signed Meta status
//! webhooks for those wamids — `sent`, then `delivered`, then `read` for every message, BATCH
//! statuses per POST, `in_flight` POSTs at a time — and measures the daemon: events per
//! second, each POST's latency (p50, p99; the handler answers after the statuses are
//! committed), and the daemon process's CPU per event. It checks at the end that every row
//! reached `read`, so the figure is of work done, not of requests answered.

use super::{
    free_port, import_generated, process_cpu, sent_total, spawn_daemon, wait_for_port, KillOnDrop,
};
use crate::campaign;
use crate::clock::{SharedClock, SystemClock};
use crate::config::Config;
use crate::domain::CampaignCommand;
use crate::store::Store;
use crate::webhook::signature;
use anyhow::Context;
use futures::StreamExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct WebhookBenchOptions {
    pub contacts: usize,
    pub database_url: Option<String>,
    pub in_flight: usize,
    /// Statuses per POST (Meta sends up to 1,000).
    pub batch: usize,
}

pub async fn run(options: WebhookBenchOptions) -> anyhow::Result<()> {
    anyhow::ensure!(options.batch >= 1, "--webhooks needs a batch of at least 1");
    let dir = tempfile::tempdir()?;
    let (sim_port, daemon_port) = (free_port()?, free_port()?);
    let database_url = options
        .database_url
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let config_text = format!(
        r#"[server]
listen = "127.0.0.1:{daemon_port}"
database_url = "{database_url}"

[[lines]]
name = "bench0"
provider = "simulator"
tier = "unlimited"
api_base = "http://127.0.0.1:{sim_port}/v23.0"
throughput_mps = 1000000
max_in_flight = 64

[[campaigns]]
name = "bench0"
line = "bench0"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["bench0"]
variables = {{ "1" = "name", "2" = "field:plan", "3" = "literal:30%" }}
"#
    );
    let config_path = dir.path().join("bench.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::parse(&config_text, "bench.toml")?;
    let exe = std::env::current_exe()?;

    let _sim = KillOnDrop(
        Command::new(&exe)
            .args(["simulate", "--all-read", "--throughput", "0", "--listen"])
            .arg(format!("127.0.0.1:{sim_port}"))
            .arg("--config")
            .arg(&config_path)
            .stdout(Stdio::null())
            .spawn()
            .context("starting the simulator process")?,
    );
    wait_for_port(sim_port).await?;
    let store = Store::open(&database_url).await?;
    let clock: SharedClock = Arc::new(SystemClock);
    import_generated(&store, clock.as_ref(), "bench0", 0..options.contacts).await?;
    let daemon = spawn_daemon(&exe, &config_path)?;
    wait_for_port(daemon_port).await?;
    let c = &config.campaigns[0];
    campaign::command(
        &store,
        clock.as_ref(),
        &config,
        &c.name,
        CampaignCommand::Start,
    )
    .await?;
    let http = reqwest::Client::builder()
        .http1_only()
        .pool_max_idle_per_host(options.in_flight)
        .tcp_nodelay(true)
        .build()?;
    let metrics_url = format!("http://127.0.0.1:{daemon_port}/metrics");
    let started = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let page = http.get(&metrics_url).send().await?.text().await?;
        if sent_total(&page) as usize >= options.contacts {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(600),
            "the campaign was not sent in 10 minutes"
        );
    }
    let campaign_id = store.ensure_campaign(&c.name, clock.now_millis()).await?.id;
    let messages = store.sent_messages(campaign_id).await?;
    anyhow::ensure!(
        messages.len() == options.contacts,
        "{} of {} rows have a wamid",
        messages.len(),
        options.contacts
    );

    // Bodies built and signed before the clock starts: the load generator's work is not the
    // daemon's.
    let line = &config.lines[0];
    let timestamp = clock.now_millis() / 1000;
    let mut bodies = Vec::new();
    for status in ["sent", "delivered", "read"] {
        for chunk in messages.chunks(options.batch) {
            let body = status_body(&line.phone_number_id, status, timestamp, chunk);
            let sig = signature::sign(crate::lines::SIM_APP_SECRET.as_bytes(), &body);
            bodies.push((body, sig, chunk.len()));
        }
    }
    let url = format!("http://127.0.0.1:{daemon_port}/webhooks/meta");
    let cpu_before = process_cpu(daemon.0.id());
    let started = Instant::now();
    // Statuses of one word all go before the next word's, as a message's statuses do.
    let per_word = bodies.len() / 3;
    let mut latencies: Vec<Duration> = Vec::with_capacity(bodies.len());
    let mut events = 0usize;
    for word in bodies.chunks(per_word.max(1)) {
        let results: Vec<anyhow::Result<(Duration, usize)>> = futures::stream::iter(word)
            .map(|(body, sig, n)| {
                let req = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(signature::SIGNATURE_HEADER, sig)
                    .body(body.clone());
                async move {
                    let sent = Instant::now();
                    let answer = req.send().await?;
                    anyhow::ensure!(
                        answer.status().is_success(),
                        "the daemon answered {}",
                        answer.status()
                    );
                    Ok((sent.elapsed(), *n))
                }
            })
            .buffer_unordered(options.in_flight.max(1))
            .collect()
            .await;
        for r in results {
            let (latency, n) = r?;
            latencies.push(latency);
            events += n;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = process_cpu(daemon.0.id()) - cpu_before;
    let read = store.rows_with_status(campaign_id, "read").await?;
    anyhow::ensure!(
        read as usize == options.contacts,
        "only {read} of {} rows reached `read`",
        options.contacts
    );
    latencies.sort();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i].as_secs_f64() * 1e3
    };
    println!(
        "webhooks: {events} status events in {} POSTs of {} in {elapsed:.2}s = {:.0} events/s; \
         POST latency p50 {:.1} ms, p99 {:.1} ms; daemon CPU {:.0} µs/event; {}, {} in flight",
        latencies.len(),
        options.batch,
        events as f64 / elapsed,
        pct(0.50),
        pct(0.99),
        cpu * 1e6 / events as f64,
        if database_url.starts_with("sqlite") {
            "SQLite"
        } else {
            "PostgreSQL"
        },
        options.in_flight
    );
    drop(daemon);
    store.close().await;
    Ok(())
}

/// A Meta `messages` webhook carrying one status per message of `chunk`, as Meta posts them
/// (conversation and pricing on `sent`).
fn status_body(
    phone_number_id: &str,
    status: &str,
    timestamp: i64,
    chunk: &[(String, String)],
) -> Vec<u8> {
    let statuses: Vec<serde_json::Value> = chunk
        .iter()
        .map(|(wamid, phone)| {
            let mut s = serde_json::json!({
                "id": wamid,
                "status": status,
                "timestamp": timestamp.to_string(),
                "recipient_id": phone.trim_start_matches('+'),
            });
            if status == "sent" {
                s["conversation"] = serde_json::json!({
                    "id": "CONVERSATION_ID", "origin": {"type": "marketing"}});
                s["pricing"] = serde_json::json!({
                    "billable": true, "pricing_model": "PMP", "category": "marketing"});
            }
            s
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "object": "whatsapp_business_account",
        "entry": [{"id": "WABA_ID", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550000000", "phone_number_id": phone_number_id},
            "statuses": statuses,
        }}]}]
    }))
    .expect("a JSON value serialises")
}
