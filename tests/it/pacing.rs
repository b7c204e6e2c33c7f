//! The pacer end to end (SPEC §3, issue "Pacer"): messaging-limit tiers shared by a
//! portfolio's lines, the tier read from Meta's API, ramps, the pair rate, local time and fair
//! sharing — the real daemon on an injected clock against the built-in simulator, whose ledger
//! (stamped with the same clock) shows what was sent and when.

use crate::helpers::*;
use crate::sending::all_delivered;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiercast::campaign::{self, CampaignStatus};
use tiercast::clock::{Clock, ManualClock};
use tiercast::config::Config;
use tiercast::domain::{CampaignCommand, Tier};
use tiercast::serve::{self, Daemon, ServeOptions};
use tiercast::sim::{LedgerEntry, SimConfig};

const TEMPLATE: &str = r#"template = { name = "renewal_reminder", language = "pt_BR" }
variables = { "1" = "name", "2" = "literal:gold", "3" = "literal:5%" }"#;

/// A `[[campaigns]]` block on line `main` reading list `list`, with `keys` (one TOML line
/// each) and the renewal template.
fn campaign_on_main(name: &str, list: &str, keys: &[&str]) -> String {
    format!(
        r#"
[[campaigns]]
name = "{name}"
line = "main"
lists = ["{list}"]
{}
{TEMPLATE}
"#,
        keys.join("\n")
    )
}

/// A Monday, 10:00 UTC: 07:00 in São Paulo, 10:00 in Lisbon (winter time).
fn monday_10_utc() -> chrono::DateTime<chrono::Utc> {
    "2026-11-23T10:00:00Z".parse().unwrap()
}

async fn start(
    text: &str,
    clock: &ManualClock,
    adjust: impl FnOnce(&mut SimConfig) + Send + 'static,
) -> (Daemon, Config) {
    let cfg = Config::parse(text, "pacing.toml").unwrap();
    let daemon = serve::start(
        cfg.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            simulator: Some(Box::new(adjust)),
            ..ServeOptions::new(Arc::new(clock.clone()))
        },
    )
    .await
    .unwrap();
    (daemon, cfg)
}

async fn load_list(daemon: &Daemon, list: &str, phones: &[String]) {
    let mut csv = String::from("phone,name\n");
    for (i, p) in phones.iter().enumerate() {
        csv.push_str(&format!("{p},Person {i}\n"));
    }
    import_csv(
        &daemon.store,
        &ManualClock::new(monday_10_utc()),
        list,
        &csv,
    )
    .await;
}

fn phones(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:06}")).collect()
}

async fn begin(daemon: &Daemon, clock: &ManualClock, cfg: &Config, name: &str) {
    campaign::command(&daemon.store, clock, cfg, name, CampaignCommand::Start)
        .await
        .unwrap();
}

async fn status(daemon: &Daemon, clock: &ManualClock, cfg: &Config, name: &str) -> CampaignStatus {
    campaign::status(&daemon.store, clock, cfg, cfg.campaign(name).unwrap())
        .await
        .unwrap()
}

/// Polls until `done`; the deadline is a safety net, not a timing assertion.
async fn wait_until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_status(
    daemon: &Daemon,
    clock: &ManualClock,
    cfg: &Config,
    name: &str,
    done: impl Fn(&CampaignStatus) -> bool,
) -> CampaignStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = status(daemon, clock, cfg, name).await;
        if done(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out: {s:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn distinct(ledger: &[LedgerEntry]) -> usize {
    let mut to: Vec<&str> = ledger.iter().map(|e| e.to.as_str()).collect();
    to.sort_unstable();
    to.dedup();
    to.len()
}

fn tier_config(url: &str, tier: &str, campaigns: &str) -> String {
    format!(
        r#"
[server]
database_url = "{url}"

[[portfolios]]
name = "acme"
tier = "{tier}"
tier_refresh = "10m"

[[lines]]
name = "main"
provider = "simulator"
portfolio = "acme"
phone_number_id = "1001"
throughput_mps = 1000
max_in_flight = 32

[[lines]]
name = "second"
provider = "simulator"
portfolio = "acme"
phone_number_id = "1002"
throughput_mps = 1000
max_in_flight = 32
{campaigns}
"#
    )
}

/// Tier 250, 1,000 contacts: exactly 250 distinct recipients in the first 24 h, the rest wait
/// visibly, and the next 250 go when the window has moved past the first sends.
async fn tier_250_with_1000_contacts(db: TestDb) {
    let clock = ManualClock::new(monday_10_utc());
    let text = tier_config(
        &db.url,
        "250",
        &format!(
            "[[campaigns]]\nname = \"big\"\nline = \"main\"\nlists = [\"l\"]\nresponse_timeout = \"1h\"\n{TEMPLATE}\n"
        ),
    );
    let (daemon, cfg) = start(&text, &clock, all_delivered).await;
    let sim = daemon.simulator.clone().unwrap();
    load_list(&daemon, "l", &phones("+5511970", 1000)).await;
    begin(&daemon, &clock, &cfg, "big").await;
    let s = wait_status(&daemon, &clock, &cfg, "big", |s| {
        s.sent == 250 && s.waiting_for_tier == 750
    })
    .await;
    assert_eq!(s.hopper["fresh"], 750);
    nothing_more_to_send(&daemon, "main").await;
    assert_eq!(sim.ledger().len(), 250, "not one recipient over the tier");
    let usage = daemon
        .store
        .tier_usage("acme", clock.now_millis())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((usage.used_24h, usage.limit), (250, Some(250)));
    assert_eq!(
        usage.next_slot_at,
        Some(clock.now_millis() + 24 * 3600 * 1000),
        "the first slot opens 24 h after the first sends"
    );

    // A day later the window has moved: 250 more, still never more than 250 in 24 h.
    clock.advance(Duration::from_secs(24 * 3600 + 60));
    let s = wait_status(&daemon, &clock, &cfg, "big", |s| {
        s.sent == 500 && s.waiting_for_tier == 500
    })
    .await;
    assert_eq!(s.hopper["fresh"], 500);
    nothing_more_to_send(&daemon, "main").await;
    let ledger = sim.ledger();
    assert_eq!((ledger.len(), distinct(&ledger)), (500, 500));
    daemon.shutdown().await;
}
crate::both_backends!(tier_250_with_1000_contacts);

/// Two lines of one portfolio draw on one budget; the tier read from Meta's API at start and
/// every `tier_refresh` replaces the configured one, and the held contacts go at once.
async fn two_lines_share_one_budget_and_the_api_sets_the_tier(db: TestDb) {
    let clock = ManualClock::new(monday_10_utc());
    let campaigns = format!(
        "[[campaigns]]\nname = \"a\"\nline = \"main\"\nlists = [\"la\"]\nresponse_timeout = \"1h\"\n{TEMPLATE}\n\
         [[campaigns]]\nname = \"b\"\nline = \"second\"\nlists = [\"lb\"]\nresponse_timeout = \"1h\"\n{TEMPLATE}\n"
    );
    let text = tier_config(&db.url, "10", &campaigns);
    // Meta reports no limit at first: the configured 10 stands.
    let (daemon, cfg) = start(&text, &clock, all_delivered).await;
    let sim = daemon.simulator.clone().unwrap();
    load_list(&daemon, "la", &phones("+5511971", 12)).await;
    load_list(&daemon, "lb", &phones("+5511972", 12)).await;
    begin(&daemon, &clock, &cfg, "a").await;
    begin(&daemon, &clock, &cfg, "b").await;
    wait_until("the budget spent", async || {
        let a = status(&daemon, &clock, &cfg, "a").await;
        let b = status(&daemon, &clock, &cfg, "b").await;
        (a.sent + b.sent == 10 && a.waiting_for_tier + b.waiting_for_tier == 14).then_some(())
    })
    .await;
    nothing_more_to_send(&daemon, "main").await;
    nothing_more_to_send(&daemon, "second").await;
    let ledger = sim.ledger();
    assert_eq!(distinct(&ledger), 10, "one budget for both lines");
    let by_line: BTreeMap<&str, usize> = ledger.iter().fold(BTreeMap::new(), |mut m, e| {
        *m.entry(e.phone_number_id.as_str()).or_default() += 1;
        m
    });
    assert_eq!(by_line.values().sum::<usize>(), 10);

    // Meta now reports 2K; the next read (after tier_refresh) takes it and frees the rest.
    sim.set_messaging_limit("TIER_2K", false);
    clock.advance(Duration::from_secs(10 * 60 + 1));
    let source = wait_until("the tier read from the API", async || {
        let u = daemon
            .store
            .tier_usage("acme", clock.now_millis())
            .await
            .unwrap()
            .unwrap();
        (u.limit == Some(2000)).then_some(u.source)
    })
    .await;
    assert_eq!(source, "api");
    wait_until("everyone sent", async || {
        let a = status(&daemon, &clock, &cfg, "a").await;
        let b = status(&daemon, &clock, &cfg, "b").await;
        (a.sent + b.sent == 24).then_some(())
    })
    .await;
    assert_eq!(distinct(&sim.ledger()), 24);
    daemon.shutdown().await;
}
crate::both_backends!(two_lines_share_one_budget_and_the_api_sets_the_tier);

/// A pass over `line` at the clock's present claims nothing, and nothing is in flight: no row
/// is sendable now, neither by this pass nor by the daemon's own loop (a row it claimed would
/// be in flight or already in the ledger). Deterministic, unlike a sleep then a ledger check.
async fn nothing_more_to_send(daemon: &Daemon, line: &str) {
    let pass = daemon.dispatcher.dispatch_once(line, 100).await.unwrap();
    assert_eq!(pass.claimed, 0, "{pass:?}");
    assert_eq!(daemon.store.inflight_rows().await.unwrap(), 0);
}

/// `ramp = true`: the campaign reaches half the limit in distinct users over 7 days (what
/// qualifies the portfolio for the next tier) and then waits for the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ramped_campaign_sends_what_qualifies_and_waits_for_the_upgrade() {
    let db = fresh_db().await;
    let clock = ManualClock::new(monday_10_utc());
    let text = tier_config(
        &db.url,
        "20",
        &format!(
            "[[campaigns]]\nname = \"r\"\nline = \"main\"\nlists = [\"l\"]\nramp = true\nresponse_timeout = \"1h\"\n{TEMPLATE}\n"
        ),
    );
    let (daemon, cfg) = start(&text, &clock, all_delivered).await;
    let sim = daemon.simulator.clone().unwrap();
    load_list(&daemon, "l", &phones("+5511973", 30)).await;
    begin(&daemon, &clock, &cfg, "r").await;
    let s = wait_status(&daemon, &clock, &cfg, "r", |s| {
        s.sent == 10 && s.waiting_for_tier == 20
    })
    .await;
    assert_eq!(s.hopper["fresh"], 20);
    nothing_more_to_send(&daemon, "main").await;
    assert_eq!(
        sim.ledger().len(),
        10,
        "half of the 20 limit, not the whole limit"
    );

    // A day on, the 24 h window is empty but the 7-day count still qualifies: nothing more.
    clock.advance(Duration::from_secs(24 * 3600 + 60));
    nothing_more_to_send(&daemon, "main").await;
    assert_eq!(sim.ledger().len(), 10);

    // The upgrade comes (business_capability_update): the next step is half of 2K.
    sim.set_messaging_limit("TIER_2K", true);
    wait_status(&daemon, &clock, &cfg, "r", |s| s.sent == 30).await;
    assert_eq!(
        daemon.store.portfolio_tier("acme").await.unwrap(),
        Some(Tier::Limited(2000))
    );
    daemon.shutdown().await;
}

/// A time group read in each contact's own zone: at 10:00 UTC on a Monday the Lisbon contacts
/// (10:00) are sent and the São Paulo ones (07:00) wait until 09:00 their time, 12:00 UTC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_time_windows_for_two_countries() {
    let db = fresh_db().await;
    let clock = ManualClock::new(monday_10_utc());
    let office = r#"
[[time_groups]]
name = "office"
timezone = "America/Sao_Paulo"
windows = [ { days = "mon-fri", from = "09:00", to = "18:00" } ]
"#;
    let campaign = campaign_on_main(
        "c",
        "l",
        &[
            r#"time_group = "office""#,
            "local_time = true",
            r#"response_timeout = "1h""#,
        ],
    );
    let text = main_line_config(
        &db.url,
        "throughput_mps = 500",
        &format!("{office}{campaign}"),
    );
    let (daemon, cfg) = start(&text, &clock, all_delivered).await;
    let sim = daemon.simulator.clone().unwrap();
    let lisbon = phones("+351912", 5);
    let sao_paulo = phones("+5511974", 5);
    load_list(&daemon, "l", &[lisbon.clone(), sao_paulo.clone()].concat()).await;
    begin(&daemon, &clock, &cfg, "c").await;
    wait_status(&daemon, &clock, &cfg, "c", |s| s.sent == 5).await;
    nothing_more_to_send(&daemon, "main").await;
    let ledger = sim.ledger();
    let mut sent: Vec<String> = ledger.iter().map(|e| e.to.clone()).collect();
    sent.sort();
    assert_eq!(sent, lisbon, "only the contacts whose own hours are open");

    // 11:59 UTC is still 08:59 in São Paulo; 12:00 UTC opens it.
    clock.advance(Duration::from_secs(3600 + 59 * 60));
    nothing_more_to_send(&daemon, "main").await;
    assert_eq!(sim.ledger().len(), 5);
    clock.advance(Duration::from_secs(60));
    wait_status(&daemon, &clock, &cfg, "c", |s| s.sent == 10).await;
    let noon = chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
        .unwrap()
        .timestamp_millis();
    for e in sim.ledger() {
        if sao_paulo.contains(&e.to) {
            assert!(e.at_ms >= noon, "{} sent before 09:00 in São Paulo", e.to);
        } else {
            assert!(e.at_ms < noon);
        }
    }
    daemon.shutdown().await;
}

/// Two campaigns on one line share it by weight: a small one started beside a large one is
/// done long before the large one, whatever their order in the config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fair_share_between_two_campaigns() {
    let db = fresh_db().await;
    let clock = ManualClock::new(monday_10_utc());
    let text = main_line_config(
        &db.url,
        "tier = \"1k\"\nthroughput_mps = 100\nmax_in_flight = 8",
        &[
            campaign_on_main("large", "large", &[r#"response_timeout = "1h""#]),
            campaign_on_main("small", "small", &[r#"response_timeout = "1h""#]),
        ]
        .concat(),
    );
    let (daemon, cfg) = start(&text, &clock, all_delivered).await;
    let sim = daemon.simulator.clone().unwrap();
    let small = phones("+5511976", 10);
    load_list(&daemon, "large", &phones("+5511975", 300)).await;
    load_list(&daemon, "small", &small).await;
    begin(&daemon, &clock, &cfg, "large").await;
    begin(&daemon, &clock, &cfg, "small").await;
    wait_status(&daemon, &clock, &cfg, "large", |s| s.sent == 300).await;
    let ledger = sim.ledger();
    let last_small = ledger
        .iter()
        .rposition(|e| small.contains(&e.to))
        .expect("small campaign sent");
    // Alone after the large one it would end at 310; sharing, it ends within the first
    // claims (8 in flight, claims of at most 32 split half and half).
    assert!(
        last_small < 80,
        "the small campaign's last send came {last_small}th of 310"
    );
    daemon.shutdown().await;
}

/// `weight` shares the line in proportion: with weights 3 and 1, once both campaigns send,
/// the heavier one takes about three quarters of the sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_the_line_in_proportion() {
    let db = fresh_db().await;
    let clock = ManualClock::new(monday_10_utc());
    let text = main_line_config(
        &db.url,
        "tier = \"1k\"\nthroughput_mps = 100\nmax_in_flight = 8",
        &[
            campaign_on_main(
                "heavy",
                "heavy",
                &[r#"response_timeout = "1h""#, "weight = 3"],
            ),
            campaign_on_main("light", "light", &[r#"response_timeout = "1h""#]),
        ]
        .concat(),
    );
    let (daemon, cfg) = start(&text, &clock, all_delivered).await;
    let sim = daemon.simulator.clone().unwrap();
    let heavy = phones("+5511977", 300);
    let light = phones("+5511978", 300);
    load_list(&daemon, "heavy", &heavy).await;
    load_list(&daemon, "light", &light).await;
    begin(&daemon, &clock, &cfg, "light").await;
    begin(&daemon, &clock, &cfg, "heavy").await;
    wait_status(&daemon, &clock, &cfg, "heavy", |s| s.sent == 300).await;
    let ledger = sim.ledger();
    // From the first send of the campaign started second, the next 120 sends.
    let from = ledger
        .iter()
        .position(|e| heavy.contains(&e.to))
        .expect("heavy sent");
    let window = &ledger[from..(from + 120).min(ledger.len())];
    let to_heavy = window.iter().filter(|e| heavy.contains(&e.to)).count();
    assert_eq!(window.len(), 120);
    assert!(
        (75..=105).contains(&to_heavy),
        "weight 3 against 1 gave the heavy campaign {to_heavy} of 120 sends"
    );
    daemon.shutdown().await;
}

/// The pair rate: a claim leaves a contact alone for 6 s after the line's last message to it,
/// and a 131056 delays that contact only, 4^n s, spending no attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pair_rate_gap_and_131056_visible_in_the_ledger() {
    use tiercast::provider::Provider;
    let db = fresh_db().await;
    let clock = ManualClock::new(monday_10_utc());
    let text = main_line_config(
        &db.url,
        "throughput_mps = 500",
        &[
            campaign_on_main("first", "l", &[r#"response_timeout = "2s""#]),
            campaign_on_main("second", "l", &[r#"response_timeout = "1h""#]),
        ]
        .concat(),
    );
    let (daemon, cfg) = start(&text, &clock, |sim| {
        all_delivered(sim);
        sim.pair_rate = Some(tiercast::sim::PairRate {
            interval: Duration::from_secs(6),
            burst: 1,
        });
    })
    .await;
    let sim = daemon.simulator.clone().unwrap();
    let contacts = phones("+5511977", 3);
    let busy = contacts[0].clone();
    load_list(&daemon, "l", &contacts).await;

    // The first campaign reaches all three at t0; its rows time out 2 s later. The second
    // campaign's rows may not go before t0 + 6 s.
    begin(&daemon, &clock, &cfg, "first").await;
    wait_status(&daemon, &clock, &cfg, "first", |s| s.sent == 3).await;
    let t0 = clock.now_millis();
    begin(&daemon, &clock, &cfg, "second").await;
    clock.advance(Duration::from_secs(3));
    wait_status(&daemon, &clock, &cfg, "first", |s| {
        s.outcomes["no_answer"] == 3
    })
    .await;
    nothing_more_to_send(&daemon, "main").await;
    assert_eq!(
        sim.ledger().len(),
        3,
        "no second message within 6 s of the first"
    );

    // Paused, the second campaign waits while, at t0 + 6 s, another system on the same
    // number writes to `busy`: resumed, its send to `busy` meets 131056 and only `busy` waits
    // (4 s for the first hit, raised to the 6 s gap). The pause is announced to the line, as
    // the admin API's is: the line re-reads its campaigns before it sends anything it claims
    // next, so no row of `second` leaves once the clock passes t0 + 6 s (no sleep needed).
    daemon
        .campaign_command("second", CampaignCommand::Pause)
        .await
        .unwrap();
    clock.advance(Duration::from_secs(3));
    daemon.lines["main"]
        .provider
        .send_text(&busy, "a message from another system")
        .await
        .unwrap();
    let t_retry = clock.now_millis();
    campaign::command(
        &daemon.store,
        &clock,
        &cfg,
        "second",
        CampaignCommand::Resume,
    )
    .await
    .unwrap();
    wait_status(&daemon, &clock, &cfg, "second", |s| s.sent == 2).await;
    wait_until(
        "the send to `busy` refused with 131056 and recorded",
        async || {
            let refused = sim.stats().rejected_by_code.get(&131056) == Some(&1);
            let recorded = daemon.store.inflight_rows().await.unwrap() == 0;
            (refused && recorded).then_some(())
        },
    )
    .await;
    // `busy` now waits for its delay and the clock stands still: nothing more goes out.
    nothing_more_to_send(&daemon, "main").await;
    assert_eq!(sim.stats().rejected_by_code.get(&131056), Some(&1));
    assert_eq!(sim.ledger().len(), 6);
    clock.advance(Duration::from_secs(6));
    let s = wait_status(&daemon, &clock, &cfg, "second", |s| s.sent == 3).await;
    assert_eq!(s.hopper["pending"], 3);

    let ledger = sim.ledger();
    let busy_times: Vec<i64> = ledger
        .iter()
        .filter(|e| e.to == busy)
        .map(|e| e.at_ms)
        .collect();
    assert_eq!(
        busy_times.len(),
        3,
        "first campaign, the other system, the retry"
    );
    assert_eq!(busy_times[0], t0);
    assert!(busy_times[2] >= t_retry + 6_000, "{busy_times:?}");
    for c in &contacts {
        let times: Vec<i64> = ledger
            .iter()
            .filter(|e| &e.to == c)
            .map(|e| e.at_ms)
            .collect();
        assert!(
            times.windows(2).all(|w| w[1] - w[0] >= 6_000),
            "{c}: two messages within 6 s: {times:?}"
        );
    }
    // 131056 spent no attempt: the row went out on its first attempt.
    let contact = daemon.store.contact_by_phone(&busy).await.unwrap().unwrap();
    let row = daemon
        .store
        .contact_campaign_rows(contact.id)
        .await
        .unwrap()
        .into_iter()
        .find(|r| r.campaign == "second")
        .unwrap();
    assert_eq!(row.attempts, 1);
    daemon.shutdown().await;
}

/// A paced line claims at most a second of its throughput at a time: claimed rows wait for
/// the limiter as `sending` attempts, which a crash would leave held for `reconcile_after`.
/// With claims sized by `max_in_flight` alone, all 40 rows here were claimed at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paced_line_claims_no_more_than_a_second_of_its_throughput() {
    let db = fresh_db().await;
    let clock = ManualClock::new(monday_10_utc());
    let text = main_line_config(
        &db.url,
        "tier = \"unlimited\"\nthroughput_mps = 4\nmax_in_flight = 64",
        &campaign_on_main("slow", "slow", &[r#"response_timeout = "1h""#]),
    );
    let (daemon, cfg) = start(&text, &clock, all_delivered).await;
    load_list(&daemon, "slow", &phones("+5511977", 40)).await;
    begin(&daemon, &clock, &cfg, "slow").await;
    let mut most_claimed = 0i64;
    let mut samples = 0;
    wait_until("12 templates sent at 4 msg/s", async || {
        let claimed: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM attempts WHERE status = 'sending'")
                .fetch_one(daemon.store.pool())
                .await
                .unwrap();
        most_claimed = most_claimed.max(claimed);
        samples += 1;
        let s = status(&daemon, &clock, &cfg, "slow").await;
        (s.sent >= 12).then_some(())
    })
    .await;
    assert!(samples > 10, "sampled only {samples} times");
    assert!(most_claimed >= 1, "never saw a claimed row");
    // A claim of 4, plus a send or two whose answer is being recorded.
    assert!(
        most_claimed <= 6,
        "{most_claimed} attempts claimed at once on a 4 msg/s line"
    );
    daemon.shutdown().await;
}

/// When the provider's answer is slow, the status webhook settles the attempt first. The row
/// must still time out on the daemon's clock: the simulator once stamped its statuses with the
/// wall clock, so a test clock behind it left such rows `pending` for good (a CI flake of
/// `pair_rate_gap_and_131056_visible_in_the_ledger`, reproduced here every time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_settled_by_its_webhook_times_out_on_the_daemons_clock() {
    let db = fresh_db().await;
    let clock = ManualClock::new(monday_10_utc());
    let text = main_line_config(
        &db.url,
        "",
        &campaign_on_main("slow_answers", "l", &[r#"response_timeout = "2s""#]),
    );
    let (daemon, cfg) = start(&text, &clock, |sim| {
        all_delivered(sim);
        sim.faults.slow = 1.0;
        sim.faults.slow_ms = 400;
    })
    .await;
    load_list(&daemon, "l", &phones("+5511977", 3)).await;
    begin(&daemon, &clock, &cfg, "slow_answers").await;
    wait_status(&daemon, &clock, &cfg, "slow_answers", |s| s.sent == 3).await;
    clock.advance(Duration::from_secs(3));
    let s = wait_status(&daemon, &clock, &cfg, "slow_answers", |s| {
        s.outcomes["no_answer"] == 3
    })
    .await;
    assert_eq!(s.hopper["closed"], 3);
    daemon.shutdown().await;
}
