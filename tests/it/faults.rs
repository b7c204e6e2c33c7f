//! Faults (issue 6): the real daemon against the simulator in its own process, the simulator
//! injecting send-side faults (a connection cut after accepting, an answer past the client's
//! timeout, a 5xx storm, 429s). The simulator's ledger is the judge: every contact gets
//! exactly one template. The daemon must also say what happened, in `/metrics` and its log.
//!
//! Every message is read (`--all-read`), so every accepted send gets status webhooks naming its
//! attempt. Where a fault leaves the provider holding a message the daemon could not record
//! (drop, slow), `reconcile_after` is far longer than the webhook lag: were a webhook not to
//! settle such an attempt, it would be sent again and the ledger would show it twice. Where
//! the fault proves nothing was accepted (5xx, 429), a short `reconcile_after` is safe.
//!
//! Last, the reconciliation of attempts whose campaign was paused meanwhile.

use crate::both_backends;
use crate::helpers::TestDb;
use crate::procs::{Proc, Rig, RigOptions};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiercast::clock::{Clock, SharedClock};
use tiercast::dispatch::Dispatcher;
use tiercast::domain::{CampaignCommand, HopperState, Outcome};
use tiercast::store::FailureAction;

const SEND_FAILURES: &str = "tiercast_send_failures_total";

fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| s.to_string()).collect()
}

/// Polls the simulator's stats until `faults.<key>` reaches `n` (the deadline is a safety net).
async fn wait_faults(rig: &Rig, daemon: &Proc, key: &str, n: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let stats = rig.sim_stats().await;
        if stats["faults"][key].as_u64().unwrap_or(0) >= n {
            return stats;
        }
        assert!(
            Instant::now() < deadline,
            "the simulator injected too few `{key}` faults: {stats}\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the campaign to finish (every contact accepted, nothing in flight), lets the
/// webhooks still queued land, and checks the ledger and the hopper. Returns the simulator's
/// stats.
async fn finish(rig: &Rig, daemon: &Proc) -> Value {
    rig.wait_all_pending(daemon, Duration::from_secs(90)).await;
    rig.http
        .post(rig.sim_url("/sim/flush"))
        .send()
        .await
        .unwrap();
    rig.assert_exactly_once().await;
    rig.assert_hopper_settled();
    rig.sim_stats().await
}

/// Polls the daemon's `/metrics` until the `SEND_FAILURES` samples with `labels` add up to
/// `n`, and returns what they add up to. A send whose webhooks settled it may still be waiting
/// for its HTTP answer when the campaign is done; the deadline is a safety net.
async fn send_failures(rig: &Rig, labels: &[(&str, &str)], n: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let v = rig.metric(SEND_FAILURES, labels).await;
        if v >= n as f64 || Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn assert_logged(rig: &Rig, needle: &str) {
    let log = rig.daemon_log();
    assert!(
        log.contains(needle),
        "the daemon log does not say {needle:?}:\n{}",
        log.lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
}

/// Accepted, then the connection is cut: the daemon cannot know the message was taken, so
/// the attempt is unknown (never resent blindly); the status webhooks naming it settle it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_cut_after_accepting_is_settled_by_its_webhooks_not_resent() {
    let mut rig = Rig::new(RigOptions {
        reconcile_after: "40s",
        sim_args: args(&["--fault-drop", "0.2"]),
        ..RigOptions::default()
    })
    .await;
    let daemon = rig.start_daemon();
    let stats = finish(&rig, &daemon).await;
    let dropped = stats["faults"]["dropped"].as_u64().unwrap();
    assert!(dropped > 0, "no connection was cut: {stats}");
    assert_eq!(stats["accepted"].as_u64(), Some(rig.phones.len() as u64));
    // Each cut is an unknown outcome in /metrics (code `transport`), and in the log.
    let unknown = send_failures(
        &rig,
        &[("code", "transport"), ("class", "unknown")],
        dropped,
    )
    .await;
    assert_eq!(unknown, dropped as f64, "{stats}");
    assert_logged(&rig, "send outcome unknown; waiting for a status webhook");
    assert!(!rig.daemon_log().contains("contacts will be sent again"));
}

/// Accepted, answered after the line's `request_timeout`: a timeout is an unknown outcome;
/// the webhooks settle it and nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_after_the_request_timeout_is_settled_by_its_webhooks_not_resent() {
    let mut rig = Rig::new(RigOptions {
        reconcile_after: "40s",
        request_timeout: "1s",
        sim_args: args(&["--fault-slow", "0.1", "--fault-slow-ms", "2500"]),
        ..RigOptions::default()
    })
    .await;
    let daemon = rig.start_daemon();
    let stats = finish(&rig, &daemon).await;
    let slow = stats["faults"]["slow"].as_u64().unwrap();
    assert!(slow > 0, "no answer was slow: {stats}");
    let timeouts = send_failures(&rig, &[("code", "timeout"), ("class", "unknown")], slow).await;
    assert_eq!(timeouts, slow as f64, "{stats}");
    assert_logged(&rig, "(timeout)");
    assert!(!rig.daemon_log().contains("contacts will be sent again"));
}

/// A 5xx storm (HTTP 500 code 1 / 503 code 2, nothing accepted), switched on and off mid-
/// campaign: each is ambiguous, so the attempt waits `reconcile_after` for news; none comes
/// (the simulator took nothing) and the contact is sent again, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_5xx_storm_mid_campaign_leaves_attempts_unknown_then_sends_them_once() {
    let mut rig = Rig::new(RigOptions {
        // Safe here: no send that met a fault was accepted, so none can be settled late.
        reconcile_after: "3s",
        request_timeout: "2s",
        throughput_mps: 100,
        ..RigOptions::default()
    })
    .await;
    let daemon = rig.start_daemon();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rig.ledger().await.len() < 50 {
        assert!(Instant::now() < deadline, "{}", daemon.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    rig.set_faults(json!({ "server_error": 0.6 })).await;
    wait_faults(&rig, &daemon, "server_errors", 40).await;
    rig.set_faults(json!({})).await;
    let before_end = rig.ledger().await.len();
    assert!(
        before_end < rig.phones.len(),
        "the storm came after the campaign"
    );

    let stats = finish(&rig, &daemon).await;
    let storm = stats["faults"]["server_errors"].as_u64().unwrap();
    assert_eq!(stats["rejected"].as_u64(), Some(storm), "{stats}");
    let unknown = rig
        .metric(SEND_FAILURES, &[("code", "1"), ("class", "unknown")])
        .await
        + rig
            .metric(SEND_FAILURES, &[("code", "2"), ("class", "unknown")])
            .await;
    assert_eq!(unknown, storm as f64, "{stats}");
    assert_logged(&rig, "send outcome unknown; waiting for a status webhook");
    assert_logged(&rig, "contacts will be sent again");
}

/// 429 with code 130429 (nothing accepted): throttled, so the line slows down and the contact
/// is sent again without spending an attempt. The faults are set at start by the CLI flag and
/// switched off once enough met them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_429s_slow_the_line_and_are_sent_again_once() {
    let mut rig = Rig::new(RigOptions {
        reconcile_after: "40s",
        throughput_mps: 100,
        sim_args: args(&["--fault-429", "0.2"]),
        ..RigOptions::default()
    })
    .await;
    let daemon = rig.start_daemon();
    wait_faults(&rig, &daemon, "throttled", 20).await;
    let set: Value = rig
        .http
        .get(rig.sim_url("/sim/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(set["throttle"], 0.2, "{set}");
    rig.set_faults(json!({})).await;
    assert!(rig.ledger().await.len() < rig.phones.len());

    let stats = finish(&rig, &daemon).await;
    let throttled = stats["faults"]["throttled"].as_u64().unwrap();
    let counted = send_failures(
        &rig,
        &[("code", "130429"), ("class", "throttled")],
        throttled,
    )
    .await;
    assert_eq!(counted, throttled as f64, "{stats}");
    assert_logged(&rig, "130429: slowing the line down");
    // Throttling spends no attempt: every contact's row counts exactly one, its accepted send.
    let store = tiercast::store::Store::open(&rig.db_url).await.unwrap();
    let spent: Vec<i64> = sqlx::query_scalar("SELECT DISTINCT attempts FROM hopper")
        .fetch_all(store.pool())
        .await
        .unwrap();
    store.close().await;
    assert_eq!(spent, vec![1], "attempts spent per contact");
}

/// An attempt abandoned by reconciliation while its campaign is paused is a spent attempt
/// like any other: with `max_attempts = 2`, the second abandoned attempt exhausts the
/// contact instead of making it due for a third send. Deterministic (manual clock).
async fn abandoned_attempts_of_a_paused_campaign_count_against_max_attempts(db: TestDb) {
    let config = Arc::new(crate::helpers::config(&format!(
        r#"
[server]
database_url = "{}"
reconcile_after = "10m"

[[lines]]
name = "main"
provider = "simulator"
tier = "unlimited"
phone_number_id = "sim-main"
api_base = "http://127.0.0.1:9/v23.0"

[[campaigns]]
name = "c"
line = "main"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["l"]
max_attempts = 2
"#,
        db.url
    )));
    tiercast::import::import(
        &db.store,
        &db.clock,
        &tiercast::import::BytesSource {
            name: "c.csv".into(),
            bytes: b"phone,name\n+5511990000001,Ana\n",
        },
        &tiercast::import::ImportOptions {
            list: "l".into(),
            default_country: None,
            opt_in: false,
            batch_size: 100,
            progress: false,
        },
    )
    .await
    .unwrap();
    let command = |cmd| tiercast::campaign::command(&db.store, &db.clock, &config, "c", cmd);
    command(CampaignCommand::Start).await.unwrap();
    let campaign_id = db.store.ensure_campaign("c", 0).await.unwrap().id;
    let clock: SharedClock = Arc::new(db.clock.clone());
    let lines = Arc::new(tiercast::lines::build(&config, None).unwrap());
    let outcomes =
        tiercast::outcomes::Outcomes::new(db.store.clone(), clock.clone(), config.clone());
    let dispatcher = Dispatcher::new(db.store.clone(), clock, config.clone(), lines, outcomes);
    let hold = config.server.reconcile_after;

    for round in 1..=2 {
        // A send whose answer never came (a timeout): the attempt is unknown, the row held.
        let now = db.clock.now_millis();
        let claimed = db
            .store
            .claim_due(
                campaign_id,
                "main",
                now,
                now + hold.as_millis() as i64,
                10,
                &Default::default(),
            )
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1, "round {round}");
        db.store
            .record_failure(
                claimed[0].attempt_id,
                &FailureAction::Unknown,
                None,
                "unknown",
                "timed out",
                now,
            )
            .await
            .unwrap();
        // The campaign is paused while the attempt waits for news; none comes.
        command(CampaignCommand::Pause).await.unwrap();
        db.clock.advance(hold + Duration::from_secs(1));
        assert_eq!(
            dispatcher.reconcile("main").await.unwrap(),
            1,
            "round {round}"
        );
        let counts = db.store.hopper_counts(campaign_id).await.unwrap();
        if round == 1 {
            assert_eq!(counts.state(HopperState::Retry), 1, "{counts:?}");
            command(CampaignCommand::Resume).await.unwrap();
        } else {
            assert_eq!(
                counts.outcome(Outcome::Exhausted),
                1,
                "the second abandoned attempt must exhaust the contact: {counts:?}"
            );
        }
    }
    let attempts = db.store.attempt_status_counts().await.unwrap();
    assert_eq!(attempts.get("abandoned"), Some(&2), "{attempts:?}");
}
both_backends!(abandoned_attempts_of_a_paused_campaign_count_against_max_attempts);
