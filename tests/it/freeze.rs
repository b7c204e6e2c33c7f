//! No duplicate sends across freezes, clock steps and takeovers (issue 27 §1 §7 §8). The real
//! daemon runs in-process against the built-in simulator, whose ledger is the judge; the
//! daemon's clock is a [`ManualClock`] stepped by the test, and "another daemon" is played by
//! writing its lease and running its reconcile step. The simulator answers slowly and the line
//! has few HTTP permits, so most claimed rows wait behind them when the test strikes.

use crate::both_backends;
use crate::helpers::*;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiercast::clock::{Clock, ManualClock, SharedClock, SteadyClock};
use tiercast::config::Config;
use tiercast::dispatch::Dispatcher;
use tiercast::domain::CampaignCommand;
use tiercast::serve::{self, Daemon, ServeOptions};
use tiercast::sim::{FateMix, SimConfig};
use tiercast::store::{Settle, StatusUpdate, Store};

fn daemon_config(url: &str, max_in_flight: usize) -> String {
    format!(
        r#"
[server]
database_url = "{url}"
reconcile_after = "30s"
admin_token_env = "TIERCAST_FREEZE_TEST_TOKEN"

[[lines]]
name = "main"
provider = "simulator"
throughput_mps = 1000
max_in_flight = {max_in_flight}

[[campaigns]]
name = "c"
line = "main"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["l"]
variables = {{ "1" = "name|literal:friend", "2" = "literal:gold", "3" = "literal:30%" }}
"#
    )
}

fn phones(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("+55119{:08}", 71_000_000 + i))
        .collect()
}

/// A daemon on `clock` whose simulator answers `latency` after taking each message, with
/// `contacts` loaded and the campaign started; returns once the first template is taken.
async fn sending_daemon(
    db: &TestDb,
    clock: SharedClock,
    max_in_flight: usize,
    latency: Duration,
    contacts: &[String],
) -> (Daemon, Config) {
    std::env::set_var("TIERCAST_FREEZE_TEST_TOKEN", "freeze-token");
    let config = Config::parse(&daemon_config(&db.url, max_in_flight), "test.toml").unwrap();
    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            simulator: Some(Box::new(move |sim: &mut SimConfig| {
                sim.fates = FateMix::all_read();
                sim.latency = latency;
            })),
            ..ServeOptions::new(clock.clone())
        },
    )
    .await
    .unwrap();
    let mut csv = String::from("phone,name\n");
    for (i, p) in contacts.iter().enumerate() {
        csv.push_str(&format!("{p},Person {i}\n"));
    }
    import_csv(&daemon.store, &*clock, "l", &csv).await;
    daemon
        .campaign_command("c", CampaignCommand::Start)
        .await
        .unwrap();
    wait_until("the first template is taken", || async {
        !ledger(&daemon).is_empty()
    })
    .await;
    (daemon, config)
}

fn ledger(daemon: &Daemon) -> Vec<tiercast::sim::LedgerEntry> {
    daemon.simulator.as_ref().unwrap().ledger()
}

/// Polls `done`; the deadline is a safety net, not a timing assertion.
async fn wait_until<F, Fut>(what: &str, done: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// Every number of the ledger, with how many templates it got; fails on any duplicate.
fn assert_at_most_once(daemon: &Daemon) -> usize {
    let mut seen: HashMap<String, usize> = HashMap::new();
    for e in ledger(daemon) {
        *seen.entry(e.to).or_default() += 1;
    }
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "sent more than once: {twice:?}");
    seen.len()
}

/// The wall clock jumps an hour forward (or the process was frozen that long) while most
/// claimed rows wait behind the line's two HTTP permits. Their holds have all expired, but
/// reconcile leaves alone what this process is still sending: every contact gets one template.
async fn a_clock_step_past_reconcile_after_while_sends_wait_for_permits_sends_each_once(
    db: TestDb,
) {
    let contacts = phones(30);
    let clock: SharedClock = Arc::new(db.clock.clone());
    let (daemon, _config) =
        sending_daemon(&db, clock, 2, Duration::from_millis(100), &contacts).await;
    let waiting = count(
        &daemon.store,
        "SELECT COUNT(*) FROM hopper WHERE inflight_attempt_id IS NOT NULL",
    )
    .await;
    assert!(
        waiting > 2,
        "the test needs rows waiting for permits: {waiting}"
    );
    db.clock.advance(Duration::from_secs(3600));
    wait_until("every contact is sent", || async {
        count(
            &daemon.store,
            "SELECT COUNT(*) FROM hopper WHERE state = 'pending'",
        )
        .await
            == 30
    })
    .await;
    daemon.simulator.as_ref().unwrap().flush_webhooks().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(assert_at_most_once(&daemon), 30);
    assert_eq!(
        count(
            &daemon.store,
            "SELECT COUNT(*) FROM attempts WHERE status = 'abandoned'"
        )
        .await,
        0
    );
    daemon.shutdown().await;
}
both_backends!(a_clock_step_past_reconcile_after_while_sends_wait_for_permits_sends_each_once);

/// Another daemon takes the line, as it does once this one stayed frozen past its lease: the
/// sends still waiting for a permit here do not leave (the line would be driven twice over).
/// With `abandoned`, the other daemon has also given their attempts up already; the one send
/// that was at the provider then is settled by its late answer, not sent again.
async fn another_daemon_takes_the_line(db: TestDb, abandoned: bool) {
    let contacts = phones(20);
    let clock: SharedClock = Arc::new(db.clock.clone());
    let (daemon, config) =
        sending_daemon(&db, clock, 1, Duration::from_millis(300), &contacts).await;
    sqlx::query(
        "UPDATE leases SET holder = 'other-daemon', expires_at = $1 WHERE name = 'line:main'",
    )
    .bind(i64::MAX / 4)
    .execute(daemon.store.pool())
    .await
    .unwrap();
    // Another daemon can take the line only once this one's lease has expired: a whole
    // `lease_ttl` since its last renewal has passed on this daemon's clock too, so it no
    // longer trusts that it holds the lease without asking the database.
    db.clock
        .advance(config.server.lease_ttl + Duration::from_secs(1));
    let taken_at = ledger(&daemon).len();
    if abandoned {
        // The other daemon's reconcile, an hour on: every attempt of the line is given up.
        let later = ManualClock::new(db.clock.now() + chrono::Duration::hours(1));
        let other = Dispatcher::new(
            daemon.store.clone(),
            Arc::new(later.clone()),
            Arc::new(config.clone()),
            daemon.lines.clone(),
            tiercast::outcomes::Outcomes::new(
                daemon.store.clone(),
                Arc::new(later),
                Arc::new(config.clone()),
            ),
        );
        assert!(other.reconcile("main").await.unwrap() > 1);
    }
    wait_until("no row is held for this daemon", || async {
        count(
            &daemon.store,
            "SELECT COUNT(*) FROM hopper WHERE inflight_attempt_id IS NOT NULL",
        )
        .await
            == 0
    })
    .await;
    // What was in the HTTP client when the line changed hands may still land (one permit).
    tokio::time::sleep(Duration::from_millis(700)).await;
    let sent = ledger(&daemon).len();
    assert!(
        sent <= taken_at + 1,
        "{sent} templates taken, {taken_at} when the line changed hands"
    );
    assert_eq!(assert_at_most_once(&daemon), sent);
    let pending = count(
        &daemon.store,
        "SELECT COUNT(*) FROM hopper WHERE state = 'pending'",
    )
    .await;
    assert_eq!(
        pending as usize, sent,
        "every template taken is recorded, late answers included"
    );
    if !abandoned {
        assert!(
            count(
                &daemon.store,
                "SELECT COUNT(*) FROM attempts WHERE error_class = 'lease'"
            )
            .await
                > 0,
            "the rows were not given back to the line's new driver"
        );
    }
    daemon.shutdown().await;
}

async fn sends_waiting_for_permits_do_not_leave_once_another_daemon_took_the_line(db: TestDb) {
    another_daemon_takes_the_line(db, false).await;
}
both_backends!(sends_waiting_for_permits_do_not_leave_once_another_daemon_took_the_line);

async fn sends_given_up_by_another_daemon_do_not_leave_and_a_late_answer_settles(db: TestDb) {
    another_daemon_takes_the_line(db, true).await;
}
both_backends!(sends_given_up_by_another_daemon_do_not_leave_and_a_late_answer_settles);

/// Proof that an abandoned attempt was accepted after all settles its row, through the late
/// HTTP answer or a status webhook, unless the row was sent again meanwhile.
async fn a_late_acceptance_of_an_abandoned_attempt_settles_the_row_unless_it_was_resent(
    db: TestDb,
) {
    let config = Config::parse(&daemon_config(&db.url, 4), "test.toml").unwrap();
    let contacts = phones(3);
    let mut csv = String::from("phone,name\n");
    for p in &contacts {
        csv.push_str(&format!("{p},P\n"));
    }
    import_csv(&db.store, &db.clock, "l", &csv).await;
    tiercast::campaign::command(&db.store, &db.clock, &config, "c", CampaignCommand::Start)
        .await
        .unwrap();
    let campaign_id = db.store.ensure_campaign("c", 0).await.unwrap().id;
    let claim = |now: i64, limit: usize| {
        let store = db.store.clone();
        async move {
            store
                .claim_due(
                    campaign_id,
                    "main",
                    now,
                    now + 30_000,
                    limit,
                    &Default::default(),
                )
                .await
                .unwrap()
        }
    };
    let now = db.clock.now_millis();
    let first = claim(now, 10).await;
    assert_eq!(first.len(), 3);
    let later = now + 31_000;
    let none = HashSet::new();
    let abandoned = db
        .store
        .reconcile_stale("main", later, &HashMap::from([(campaign_id, 3)]), &none)
        .await
        .unwrap();
    assert_eq!(abandoned, 3);
    let settle = |attempt_id: i64, wamid: &str| Settle {
        attempt_id,
        wamid: wamid.into(),
        wa_id: None,
        now: later,
        response_deadline: later + 1000,
    };
    // The first contact is sent again and accepted before its first answer comes back.
    let resent = claim(later, 1).await;
    assert_eq!(resent[0].hopper_id, first[0].hopper_id);
    db.store
        .record_outcomes(
            &[settle(resent[0].attempt_id, "wamid.AGAIN")],
            &[],
            &|_: &str| Some(1000),
            later,
        )
        .await
        .unwrap();

    // Late: the first and third contacts' HTTP answers, the second's status webhook.
    db.store
        .record_outcomes(
            &[
                settle(first[0].attempt_id, "wamid.LATE0"),
                settle(first[2].attempt_id, "wamid.LATE2"),
            ],
            &[],
            &|_: &str| Some(1000),
            later,
        )
        .await
        .unwrap();
    db.store
        .apply_statuses(
            &[StatusUpdate {
                wamid: "wamid.LATE1",
                attempt_id: Some(first[1].attempt_id),
                status: "delivered",
                at: later,
                error_code: None,
                error_text: None,
            }],
            &|_: &str| Some(1000),
            later,
        )
        .await
        .unwrap();
    let row = |hopper_id: i64| {
        let store = db.store.clone();
        async move {
            sqlx::query_as::<_, (String, String, i64, String)>(
                "SELECT state, wamid, attempts, COALESCE(message_status, '') FROM hopper WHERE id = $1",
            )
            .bind(hopper_id)
            .fetch_one(store.pool())
            .await
            .unwrap()
        }
    };
    assert_eq!(
        row(first[0].hopper_id).await,
        ("pending".into(), "wamid.AGAIN".into(), 2, "accepted".into()),
        "a row sent again keeps its new message"
    );
    assert_eq!(
        row(first[1].hopper_id).await,
        (
            "pending".into(),
            "wamid.LATE1".into(),
            1,
            "delivered".into()
        )
    );
    assert_eq!(
        row(first[2].hopper_id).await,
        ("pending".into(), "wamid.LATE2".into(), 1, "accepted".into())
    );
    let attempts = db.store.attempt_status_counts().await.unwrap();
    assert_eq!(attempts.get("accepted"), Some(&3), "{attempts:?}");
    assert_eq!(attempts.get("abandoned"), Some(&1), "{attempts:?}");
}
both_backends!(a_late_acceptance_of_an_abandoned_attempt_settles_the_row_unless_it_was_resent);

/// A stop through the admin API is immediate: once it is answered, nothing of the campaign
/// that was not yet in the HTTP client reaches the provider, and the answer says how many
/// sends were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_is_immediate_and_says_how_many_sends_were_in_flight() {
    let db = fresh_db().await;
    let clock: SharedClock = Arc::new(tiercast::clock::SystemClock);
    let contacts = phones(200);
    let (daemon, _config) =
        sending_daemon(&db, clock, 4, Duration::from_millis(200), &contacts).await;
    let answer: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/campaigns/c/stop", daemon.url()))
        .bearer_auth("freeze-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sent_at_stop = ledger(&daemon).len();
    assert_eq!(answer["state"], "stopped", "{answer}");
    let in_flight = answer["sends_in_flight"].as_u64().expect("sends_in_flight") as usize;
    assert!(in_flight <= 4, "{answer}");
    wait_until("the claimed rows are given back", || async {
        count(
            &daemon.store,
            "SELECT COUNT(*) FROM hopper WHERE inflight_attempt_id IS NOT NULL",
        )
        .await
            == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let sent = ledger(&daemon).len();
    assert!(
        sent <= sent_at_stop + in_flight,
        "{sent} templates taken, {sent_at_stop} when the stop was answered with {in_flight} in flight"
    );
    assert!(
        sent < contacts.len(),
        "the campaign finished before the stop"
    );
    daemon.shutdown().await;
}

/// Daemons on PostgreSQL measure leases on the server's clock: one whose own clock runs a
/// minute ahead sees the others' leases as they are, so it neither takes their lines nor
/// counts them out when the lines are shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_on_postgresql_ignore_a_daemons_clock_skew() {
    let db = fresh_pg().await;
    let now = db.clock.now_millis();
    let ahead = now + 60_000;
    let store = &db.store;
    assert!(store
        .acquire_lease("line:a", "slow", now, 15_000)
        .await
        .unwrap());
    assert!(store
        .acquire_lease("member:slow", "slow", now, 15_000)
        .await
        .unwrap());
    assert!(
        !store
            .acquire_lease("line:a", "fast", ahead, 15_000)
            .await
            .unwrap(),
        "a clock a minute ahead took a live lease"
    );
    assert_eq!(store.live_members(ahead).await.unwrap(), 1);
    assert_eq!(
        store.leases_held("line:", "slow", ahead).await.unwrap(),
        ["line:a"]
    );
}

/// The wall clock steps back an hour. Rows due "now" were stamped with the old time: on the
/// wall clock they would wait out the hour (the campaign stalls, silently). The daemon's
/// clock ([`SteadyClock`]) does not step back, so they are sent at once.
async fn a_wall_clock_stepped_back_does_not_stall_the_campaign(db: TestDb) {
    let config = Config::parse(&daemon_config(&db.url, 4), "test.toml").unwrap();
    let monotonic = ManualClock::new(tiercast::clock::from_millis(0));
    let steady: SharedClock = Arc::new(SteadyClock::new(
        Arc::new(db.clock.clone()),
        Box::new(move || monotonic.now_millis()),
    ));
    import_csv(
        &db.store,
        &*steady,
        "l",
        "phone,name\n+5511990000001,A\n+5511990000002,B\n",
    )
    .await;
    tiercast::campaign::command(&db.store, &*steady, &config, "c", CampaignCommand::Start)
        .await
        .unwrap();
    let campaign_id = db.store.ensure_campaign("c", 0).await.unwrap().id;
    db.clock.set(db.clock.now() - chrono::Duration::hours(1));
    let claim = |now: i64| {
        let store = db.store.clone();
        async move {
            store
                .claim_due(
                    campaign_id,
                    "main",
                    now,
                    now + 30_000,
                    10,
                    &Default::default(),
                )
                .await
                .unwrap()
                .len()
        }
    };
    assert_eq!(
        claim(db.clock.now_millis()).await,
        0,
        "on the wall clock the rows wait out the step"
    );
    assert_eq!(claim(steady.now_millis()).await, 2);
}
both_backends!(a_wall_clock_stepped_back_does_not_stall_the_campaign);
