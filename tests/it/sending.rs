//! Sending end to end: the real daemon (HTTP on port 0, dispatchers, webhooks) against the
//! built-in simulator, with a fresh database per test. The simulator's ledger is the judge of
//! what was sent.

use crate::helpers::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiercast::campaign;
use tiercast::clock::{SharedClock, SystemClock};
use tiercast::config::Config;
use tiercast::domain::{CampaignCommand, CampaignState};
use tiercast::serve::{self, Daemon, ServeOptions};
use tiercast::sim::{Fate, FateMix, SimConfig};

pub(crate) fn config_text(url: &str, mps: u32, template: &str, extra: &str) -> String {
    format!(
        r#"
[server]
database_url = "{url}"
reconcile_after = "30s"

[[lines]]
name = "main"
provider = "simulator"
throughput_mps = {mps}
max_in_flight = 16

[[campaigns]]
name = "c"
line = "main"
template = {{ name = "{template}", language = "pt_BR" }}
lists = ["l"]
variables = {{ "1" = "name|literal:friend", "2" = "field:plan|literal:basic", "3" = "literal:30%" }}
max_attempts = 3
retry_backoff = "1h"
{extra}
"#
    )
}

pub(crate) fn numbers(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("+55119{:08}", 70_000_000 + i))
        .collect()
}

pub(crate) async fn start(
    db: &TestDb,
    cfg: &str,
    adjust: impl FnOnce(&mut SimConfig) + Send + 'static,
) -> (Daemon, Config) {
    let config = Config::parse(cfg, "test.toml").unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            simulator: Some(Box::new(adjust)),
            ..ServeOptions::new(clock)
        },
    )
    .await
    .unwrap();
    let _ = db;
    (daemon, config)
}

pub(crate) async fn load(daemon: &Daemon, phones: &[String]) {
    let mut csv = String::from("phone,name,plan\n");
    for (i, p) in phones.iter().enumerate() {
        csv.push_str(&format!("{p},Person {i},gold\n"));
    }
    import_csv(&daemon.store, &SystemClock, "l", &csv).await;
}

pub(crate) async fn status(daemon: &Daemon, config: &Config) -> campaign::CampaignStatus {
    campaign::status(
        &daemon.store,
        &SystemClock,
        config,
        config.campaign("c").unwrap(),
    )
    .await
    .unwrap()
}

/// Polls until `done` or the deadline; the deadline is a safety net, not a timing assertion.
pub(crate) async fn wait_for(
    daemon: &Daemon,
    config: &Config,
    what: &str,
    done: impl Fn(&campaign::CampaignStatus) -> bool,
) -> campaign::CampaignStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(daemon, config).await;
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub(crate) async fn settle(daemon: &Daemon) {
    if let Some(sim) = &daemon.simulator {
        sim.flush_webhooks().await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
}

pub(crate) fn all_delivered(sim: &mut SimConfig) {
    sim.fates = FateMix {
        delivered: 0,
        read: 1,
        undeliverable_131026: 0,
        marketing_cap_131049: 0,
        opted_out_131050: 0,
        no_webhook: 0,
        wa_id_differs: 0.0,
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_every_contact_once_and_follows_statuses_to_read() {
    let db = fresh_db().await;
    let (daemon, config) = start(
        &db,
        &config_text(&db.url, 200, "renewal_reminder", ""),
        all_delivered,
    )
    .await;
    let phones = numbers(40);
    load(&daemon, &phones).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    let s = wait_for(&daemon, &config, "all read", |s| s.read == 40).await;
    assert_eq!((s.hopper["pending"], s.sent, s.delivered), (40, 40, 40));
    let ledger = daemon.simulator.as_ref().unwrap().ledger();
    assert_eq!(ledger.len(), 40);
    let mut to: Vec<&str> = ledger.iter().map(|e| e.to.as_str()).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), 40, "each contact exactly once");
    // The rendered body as the simulator received it, and our attempt id echoed.
    let e = &ledger[0];
    assert_eq!(e.template_name.as_deref(), Some("renewal_reminder"));
    assert_eq!(e.components[0]["parameters"][1]["text"], "gold");
    assert!(e.callback_data.as_deref().unwrap().starts_with("tc:"));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_failures_close_and_are_never_retried() {
    let db = fresh_db().await;
    let phones = numbers(6);
    let (bad, optout) = (phones[0].clone(), phones[1].clone());
    let (daemon, config) = start(
        &db,
        &config_text(&db.url, 200, "renewal_reminder", ""),
        move |sim| {
            all_delivered(sim);
        },
    )
    .await;
    let sim = daemon.simulator.clone().unwrap();
    sim.force_fate(&bad, Fate::Failed(131026));
    sim.force_fate(&optout, Fate::Failed(131050));
    load(&daemon, &phones).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    let s = wait_for(
        &daemon,
        &config,
        "failures applied and the rest read",
        |s| s.outcomes["failed"] == 1 && s.outcomes["opted_out"] == 1 && s.read == 4,
    )
    .await;
    assert_eq!(s.hopper["pending"], 4);
    // A retry run changes nothing for them: closed rows are never sent again.
    daemon
        .store
        .make_retries_due(
            daemon
                .store
                .campaign_by_name("c")
                .await
                .unwrap()
                .unwrap()
                .id,
            i64::MAX / 8,
        )
        .await
        .unwrap();
    // A pass over the line finds nothing to send, and nothing is in flight: the closed rows
    // were not made due.
    let pass = daemon.dispatcher.dispatch_once("main", 100).await.unwrap();
    assert_eq!(pass.claimed, 0, "{pass:?}");
    assert_eq!(daemon.store.inflight_rows().await.unwrap(), 0);
    settle(&daemon).await;
    let ledger = sim.ledger();
    assert_eq!(ledger.iter().filter(|e| e.to == bad).count(), 1);
    assert_eq!(ledger.iter().filter(|e| e.to == optout).count(), 1);
    let c = daemon
        .store
        .contact_by_phone(&optout)
        .await
        .unwrap()
        .unwrap();
    assert!(c.opted_out, "131050 puts the contact on the opt-out list");
    let mut report = Vec::new();
    let id = daemon
        .store
        .campaign_by_name("c")
        .await
        .unwrap()
        .unwrap()
        .id;
    tiercast::cli::write_report(
        &daemon.store,
        id,
        tiercast::cli::ReportFormat::Csv,
        &mut report,
    )
    .await
    .unwrap();
    let report = String::from_utf8(report).unwrap();
    let line = report.lines().find(|l| l.starts_with(&bad)).unwrap();
    assert!(
        line.contains(",closed,failed,") && line.contains("131026"),
        "{line}"
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_requeues_without_spending_attempts() {
    let db = fresh_db().await;
    // We pace at 100/s but the number only takes 10/s: most first tries get 130429.
    let (daemon, config) = start(
        &db,
        &config_text(&db.url, 100, "renewal_reminder", ""),
        all_delivered,
    )
    .await;
    let sim = daemon.simulator.clone().unwrap();
    sim.set_throughput(&daemon.config.lines[0].phone_number_id, 10);
    let phones = numbers(30);
    load(&daemon, &phones).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    let s = wait_for(&daemon, &config, "all sent", |s| s.sent == 30).await;
    assert_eq!(s.hopper["retry"] + s.hopper["closed"], 0);
    settle(&daemon).await;
    let id = daemon
        .store
        .campaign_by_name("c")
        .await
        .unwrap()
        .unwrap()
        .id;
    let mut attempts = Vec::new();
    daemon
        .store
        .report_rows(id, |r| {
            attempts.push(r.attempts);
            Ok(())
        })
        .await
        .unwrap();
    assert!(
        attempts.iter().all(|a| *a == 1),
        "throttled tries spend no attempt: {attempts:?}"
    );
    let throttled: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE error_code = 130429")
            .fetch_one(daemon.store.pool())
            .await
            .unwrap();
    assert!(throttled > 0, "the simulator did throttle");
    let pacer = &daemon.lines["main"].pacer;
    assert!(
        pacer.current() < pacer.max(),
        "130429 slowed the line down: {} of {}",
        pacer.current(),
        pacer.max()
    );
    assert_eq!(sim.ledger().len(), 30);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_template_132001_pauses_and_closes_no_contact() {
    let db = fresh_db().await;
    let (daemon, config) = start(
        &db,
        &config_text(&db.url, 200, "ghost_template", ""),
        all_delivered,
    )
    .await;
    let sim = daemon.simulator.clone().unwrap();
    // Our store believes in an approved template the provider does not have (deleted since
    // the last sync): the send answers 132001.
    sqlx::query(
        "INSERT INTO templates (line, name, language, category, status, parameter_format, components, synced_at) \
         SELECT line, 'ghost_template', language, category, status, parameter_format, \
                REPLACE(components, '\"renewal_reminder\"', '\"ghost_template\"'), synced_at \
         FROM templates WHERE name = 'renewal_reminder' AND language = 'pt_BR'",
    )
    .execute(daemon.store.pool())
    .await
    .unwrap();
    load(&daemon, &numbers(10)).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    let s = wait_for(&daemon, &config, "paused", |s| {
        s.state == CampaignState::Paused
    })
    .await;
    assert!(
        s.paused_reason.as_deref().unwrap().contains("132001"),
        "{:?}",
        s.paused_reason
    );
    // The campaign's fault: no contact is closed, but each try that reached the provider
    // counts against `max_attempts` (the contact stays due, once, at resume).
    assert_eq!(
        (
            s.hopper["fresh"] + s.hopper["retry"],
            s.hopper["closed"],
            s.sent
        ),
        (10, 0, 0)
    );
    let spent: i64 = sqlx::query_scalar("SELECT COALESCE(SUM(attempts), 0) FROM hopper")
        .fetch_one(daemon.store.pool())
        .await
        .unwrap();
    let refused: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE error_code = 132001")
            .fetch_one(daemon.store.pool())
            .await
            .unwrap();
    assert!(refused >= 1);
    assert_eq!(spent, refused);
    let most: i64 = sqlx::query_scalar("SELECT MAX(attempts) FROM hopper")
        .fetch_one(daemon.store.pool())
        .await
        .unwrap();
    assert_eq!(most, 1, "no contact is tried twice by one pause");
    assert!(sim.ledger().is_empty());
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_190_pauses_and_resume_sends_everyone_once() {
    let db = fresh_db().await;
    let (daemon, config) = start(
        &db,
        &config_text(&db.url, 200, "renewal_reminder", ""),
        all_delivered,
    )
    .await;
    let sim = daemon.simulator.clone().unwrap();
    let pnid = daemon.config.lines[0].phone_number_id.clone();
    sim.set_token_valid(&pnid, false);
    load(&daemon, &numbers(12)).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    let s = wait_for(&daemon, &config, "paused", |s| {
        s.state == CampaignState::Paused
    })
    .await;
    assert!(
        s.paused_reason.as_deref().unwrap().contains("190"),
        "{:?}",
        s.paused_reason
    );
    assert_eq!((s.hopper["fresh"] + s.hopper["retry"], s.sent), (12, 0));
    // The operator renews the token and resumes: everyone gets exactly one template.
    sim.set_token_valid(&pnid, true);
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Resume,
    )
    .await
    .unwrap();
    wait_for(&daemon, &config, "all sent", |s| s.sent == 12).await;
    settle(&daemon).await;
    assert_eq!(sim.ledger().len(), 12);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statuses_stay_monotonic_under_duplicated_and_reordered_webhooks() {
    let db = fresh_db().await;
    let phones = numbers(30);
    let (daemon, config) = start(
        &db,
        &config_text(&db.url, 200, "renewal_reminder", ""),
        |sim| {
            sim.fates = FateMix {
                delivered: 1,
                read: 1,
                undeliverable_131026: 0,
                marketing_cap_131049: 0,
                opted_out_131050: 0,
                no_webhook: 0,
                wa_id_differs: 0.0,
            };
            sim.webhooks.duplicate_ratio = 0.7;
            sim.webhooks.reorder = true;
            sim.webhooks.batch_max = 7;
        },
    )
    .await;
    let sim = daemon.simulator.clone().unwrap();
    load(&daemon, &phones).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    wait_for(&daemon, &config, "all sent", |s| s.sent == 30).await;
    settle(&daemon).await;
    settle(&daemon).await;
    // The disorder this test is about did happen: without it, it would prove nothing.
    let stats = sim.stats();
    assert!(stats.webhook_events_duplicated > 0, "{stats:?}");
    assert!(stats.webhook_messages_reordered > 0, "{stats:?}");
    let id = daemon
        .store
        .campaign_by_name("c")
        .await
        .unwrap()
        .unwrap()
        .id;
    let mut rows = Vec::new();
    daemon
        .store
        .report_rows(id, |r| {
            rows.push(r);
            Ok(())
        })
        .await
        .unwrap();
    for r in rows {
        let expected = match sim.fate_for(&r.phone) {
            Fate::Read => "read",
            Fate::Delivered => "delivered",
            other => panic!("unexpected fate {other:?}"),
        };
        assert_eq!(r.message_status.as_deref(), Some(expected), "{}", r.phone);
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signature_is_401_and_stores_nothing() {
    let db = fresh_db().await;
    let (daemon, config) = start(
        &db,
        &config_text(&db.url, 200, "renewal_reminder", ""),
        |sim| {
            sim.fates = FateMix {
                delivered: 0,
                read: 0,
                undeliverable_131026: 0,
                marketing_cap_131049: 0,
                opted_out_131050: 0,
                no_webhook: 1,
                wa_id_differs: 0.0,
            };
        },
    )
    .await;
    load(&daemon, &numbers(1)).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    wait_for(&daemon, &config, "sent", |s| s.sent == 1).await;
    let wamid: String = sqlx::query_scalar("SELECT wamid FROM hopper")
        .fetch_one(daemon.store.pool())
        .await
        .unwrap();
    let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": daemon.config.lines[0].phone_number_id},
        "statuses": [{"id": wamid, "status": "read", "timestamp": "1795000000", "recipient_id": "5511970000000"}]}}]}]})
    .to_string();
    let client = reqwest::Client::new();
    let url = format!("{}/webhooks/meta", daemon.url());
    let post = |sig: Option<String>| {
        let mut req = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.clone());
        if let Some(sig) = sig {
            req = req.header("X-Hub-Signature-256", sig);
        }
        req.send()
    };
    assert_eq!(post(None).await.unwrap().status(), 401);
    assert_eq!(
        post(Some(tiercast::webhook::sign(
            b"wrong-secret",
            body.as_bytes()
        )))
        .await
        .unwrap()
        .status(),
        401
    );
    assert_eq!(post(Some("sha256=zz".into())).await.unwrap().status(), 401);
    let status: Option<String> = sqlx::query_scalar("SELECT message_status FROM hopper")
        .fetch_one(daemon.store.pool())
        .await
        .unwrap();
    assert_eq!(
        status.as_deref(),
        Some("accepted"),
        "nothing stored from unsigned webhooks"
    );
    // The same body, rightly signed, is applied.
    let good = tiercast::webhook::sign(tiercast::lines::SIM_APP_SECRET.as_bytes(), body.as_bytes());
    assert_eq!(post(Some(good)).await.unwrap().status(), 200);
    let status: Option<String> = sqlx::query_scalar("SELECT message_status FROM hopper")
        .fetch_one(daemon.store.pool())
        .await
        .unwrap();
    assert_eq!(status.as_deref(), Some("read"));
    // The handshake.
    let ok = client
        .get(format!(
            "{url}?hub.mode=subscribe&hub.challenge=12345&hub.verify_token={}",
            tiercast::lines::SIM_VERIFY_TOKEN
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(
        (ok.status().as_u16(), ok.text().await.unwrap()),
        (200, "12345".to_string())
    );
    let bad = client
        .get(format!(
            "{url}?hub.mode=subscribe&hub.challenge=1&hub.verify_token=nope"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 403);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_more_than_throughput_in_any_one_second_window() {
    let db = fresh_db().await;
    let mps = 25;
    let (daemon, config) = start(
        &db,
        &config_text(&db.url, mps, "renewal_reminder", ""),
        |sim| {
            all_delivered(sim);
            // The simulator does not throttle: only our pacing limits the rate.
            for line in &mut sim.phone_numbers {
                line.throughput_mps = 0;
            }
        },
    )
    .await;
    let sim = daemon.simulator.clone().unwrap();
    load(&daemon, &numbers(90)).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    wait_for(&daemon, &config, "all sent", |s| s.sent == 90).await;
    let mut times: Vec<Instant> = sim.ledger().iter().map(|e| e.accepted_instant).collect();
    times.sort();
    let mut worst = 0;
    for (i, t) in times.iter().enumerate() {
        let in_window = times[i..]
            .iter()
            .take_while(|u| u.duration_since(*t) < Duration::from_secs(1))
            .count();
        worst = worst.max(in_window);
    }
    // The pacer releases sends at least 1/mps apart; the simulator stamps them when it
    // handles them, so on a loaded 2-core machine scheduling can bunch a couple together.
    // Two of slack covers that jitter; a pacing bug (bursts, a second limiter-free path)
    // shows up as many more.
    assert!(
        worst <= mps as usize + 2,
        "{worst} sends in one second at throughput_mps = {mps}"
    );
    assert!(
        worst >= mps as usize / 2,
        "pacing should still use the line: {worst}"
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_upgrade_webhook_raises_a_following_line_to_1000() {
    let db = fresh_db().await;
    let cfg = config_text(&db.url, 80, "renewal_reminder", "").replace(
        "max_in_flight = 16",
        "max_in_flight = 16\nfollow_throughput_upgrades = true",
    );
    let (daemon, config) = start(&db, &cfg, all_delivered).await;
    assert_eq!(daemon.lines["main"].pacer.max(), 80);
    let body = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": tiercast::lines::sim_waba_id(&config.lines[0]), "time": 1795000000,
        "changes": [{"field": "phone_number_quality_update", "value": {"display_phone_number": "15550000000", "event": "THROUGHPUT_UPGRADE", "current_limit": "TIER_UNLIMITED"}}]}]})
    .to_string();
    assert_eq!(post_signed_webhook(&daemon.url(), body).await, 200);
    assert_eq!(
        (
            daemon.lines["main"].pacer.max(),
            daemon.lines["main"].pacer.current()
        ),
        (1000, 1000)
    );
    let portfolio = &config.lines[0].portfolio;
    assert_eq!(
        daemon.store.portfolio_tier(portfolio).await.unwrap(),
        Some(tiercast::domain::Tier::Unlimited)
    );
    daemon.shutdown().await;
}

/// The throughput level read from the phone number's API (`throughput.level = HIGH`, as the
/// tier refresh reads it at start and every `tier_refresh`) raises a line that follows
/// upgrades to 1,000 msg/s, and leaves a line that does not follow at its setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throughput_level_high_from_the_api_raises_only_a_following_line() {
    for follow in [true, false] {
        let db = fresh_db().await;
        let cfg = config_text(&db.url, 80, "renewal_reminder", "").replace(
            "max_in_flight = 16",
            &format!("max_in_flight = 16\nfollow_throughput_upgrades = {follow}"),
        );
        // The simulated number is unthrottled, which its API reports as level HIGH.
        let (daemon, config) = start(&db, &cfg, |sim| {
            for line in &mut sim.phone_numbers {
                line.throughput_mps = 0;
            }
        })
        .await;
        let portfolio = config.portfolio(&config.lines[0].portfolio).unwrap();
        tiercast::tiers::refresh_from_provider(
            &daemon.store,
            &config,
            &daemon.lines,
            portfolio,
            tiercast::clock::Clock::now_millis(&SystemClock),
        )
        .await
        .unwrap();
        let pacer = &daemon.lines["main"].pacer;
        let want = if follow { 1000 } else { 80 };
        assert_eq!(
            (pacer.max(), pacer.current()),
            (want, want),
            "follow = {follow}"
        );
        daemon.shutdown().await;
    }
}

/// The cron retry run: `tiercast retry` makes waiting retries due and, with no daemon
/// running, sends them itself; other rows are not touched (nothing sent twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_command_sends_waiting_retries_once_without_a_daemon() {
    let db = fresh_db().await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg = config_text(&db.url, 200, "renewal_reminder", "auto_retry = false").replace(
        "[server]\n",
        &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
    );
    let phones = numbers(4);
    let deferred = phones[0].clone();
    let (daemon, config) = start(&db, &cfg, all_delivered).await;
    daemon
        .simulator
        .as_ref()
        .unwrap()
        .force_fate(&deferred, Fate::Failed(131049));
    load(&daemon, &phones).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    wait_for(&daemon, &config, "one retry", |s| {
        s.hopper["retry"] == 1 && s.hopper["pending"] == 3
    })
    .await;
    daemon.shutdown().await;

    let path = db.write("retry.toml", &cfg);
    let out = std::process::Command::new(binary())
        .args(["retry", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("campaign c: 1 contacts due for retry"),
        "{stdout}"
    );
    assert!(
        stdout.contains("retry run done: 1 contacts retried"),
        "{stdout}"
    );
    let store = tiercast::store::Store::open(&db.url).await.unwrap();
    let attempts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT c.phone, h.attempts FROM hopper h JOIN contacts c ON c.id = h.contact_id ORDER BY c.phone",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    for (phone, n) in attempts {
        let expected = if phone == deferred { 2 } else { 1 };
        assert_eq!(n, expected, "{phone}");
    }
}

/// Counts the attempts claimed and not yet recorded (`sending`).
async fn unrecorded_attempts(daemon: &Daemon) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE status = 'sending'")
        .fetch_one(daemon.store.pool())
        .await
        .unwrap()
}

/// The README's cap: claimed rows plus sends waiting for their record stay under
/// 8 × `max_in_flight`. With `max_in_flight = 1` and the simulator answering 100 ms late, the
/// line sends one at a time while it could claim far more (100 msg/s, 24 due rows), so the
/// cap is what holds the count: it is reached (8) and never passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claimed_and_unrecorded_sends_stay_within_eight_times_max_in_flight() {
    let db = fresh_db().await;
    let text = config_text(&db.url, 100, "renewal_reminder", "")
        .replace("max_in_flight = 16", "max_in_flight = 1");
    let (daemon, config) = start(&db, &text, |sim| {
        all_delivered(sim);
        sim.latency = Duration::from_millis(100);
    })
    .await;
    load(&daemon, &numbers(24)).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    let mut most = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while status(&daemon, &config).await.sent < 24 {
        most = most.max(unrecorded_attempts(&daemon).await);
        assert!(Instant::now() < deadline, "not all sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(most <= 8, "{most} claimed or unrecorded sends, above 8 × 1");
    assert_eq!(
        most, 8,
        "the cap was never reached; the check proves nothing"
    );
    daemon.shutdown().await;
}

/// No transaction is open during an HTTP call. SQLite runs on one connection, so a send that
/// held a transaction across its request would hold that connection: a write made while the
/// provider sits on its answer (3 s) would finish only after it. Here it finishes while the
/// send is still in flight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_completes_while_a_send_waits_for_its_answer() {
    use tiercast::sim::SimFaults;
    let db = fresh_db().await;
    let (daemon, config) = start(
        &db,
        &config_text(&db.url, 100, "renewal_reminder", ""),
        |sim| {
            all_delivered(sim);
            sim.faults = SimFaults {
                slow: 1.0,
                slow_ms: 3000,
                ..SimFaults::default()
            };
        },
    )
    .await;
    let sim = daemon.simulator.clone().unwrap();
    let p = numbers(1);
    sim.force_fate(&p[0], Fate::NoWebhook);
    load(&daemon, &p).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.ledger().is_empty() {
        assert!(Instant::now() < deadline, "never sent");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The provider has the request and holds its answer. A write of our own (one statement,
    // its own transaction) on the same store:
    daemon
        .store
        .add_to_blacklist("+5511900000001", "test", 0)
        .await
        .unwrap();
    assert_eq!(
        daemon.store.inflight_rows().await.unwrap(),
        1,
        "the write waited for the send's answer"
    );
    assert_eq!(unrecorded_attempts(&daemon).await, 1);
    wait_for(&daemon, &config, "the late answer recorded", |s| {
        s.sent == 1
    })
    .await;
    daemon.shutdown().await;
}
