//! Hopper loading (SPEC §2 rules 1–2) and the campaign state machine.

use crate::both_backends;
use crate::helpers::*;
use tiercast::campaign::{self, CampaignError};
use tiercast::domain::{CampaignCommand as Cmd, CampaignState};
use tiercast::import::{self, FileSource, ImportOptions};

async fn seed(db: &TestDb) {
    let opts = |list: &str| ImportOptions {
        list: list.into(),
        default_country: Some("BR".into()),
        opt_in: false,
        batch_size: 100,
        progress: false,
    };
    let a = db.write(
        "a.csv",
        "phone,name,opt_in\n+5511900000001,A,yes\n+5511900000002,B,no\n+5511900000003,C,yes\n+5511900000004,D,yes\n",
    );
    let b = db.write(
        "b.csv",
        "phone,name,opt_in\n+5511900000001,A,yes\n+5511900000005,E,yes\n",
    );
    import::import(&db.store, &db.clock, &FileSource(a), &opts("a"))
        .await
        .unwrap();
    import::import(&db.store, &db.clock, &FileSource(b), &opts("b"))
        .await
        .unwrap();
    db.store
        .add_opt_out("+5511900000003", "STOP", "keyword", 0)
        .await
        .unwrap();
    db.store
        .add_to_blacklist("+5511900000004", "abusive", 0)
        .await
        .unwrap();
}

both_backends!(load_rules_once_per_contact_with_exclusions_closed);
async fn load_rules_once_per_contact_with_exclusions_closed(db: TestDb) {
    seed(&db).await;
    let cfg = config(ONE_CAMPAIGN);
    campaign::command(&db.store, &db.clock, &cfg, "c1", Cmd::Start)
        .await
        .unwrap();
    let s = campaign::status(&db.store, &db.clock, &cfg, cfg.campaign("c1").unwrap())
        .await
        .unwrap();
    // A is on both lists: one row.
    assert_eq!(s.hopper["total"], 5);
    assert_eq!(s.hopper["fresh"], 2); // A, E
    assert_eq!(s.hopper["closed"], 3);
    assert_eq!(s.outcomes["no_opt_in"], 1); // B
    assert_eq!(s.outcomes["opted_out"], 1); // C
    assert_eq!(s.outcomes["blacklisted"], 1); // D
    assert_eq!(s.state, CampaignState::Running);

    // Without require_opt_in, B is eligible; opt-outs and blacklist still close.
    campaign::command(&db.store, &db.clock, &cfg, "c2", Cmd::Start)
        .await
        .unwrap();
    let s = campaign::status(&db.store, &db.clock, &cfg, cfg.campaign("c2").unwrap())
        .await
        .unwrap();
    assert_eq!(
        (
            s.hopper["total"],
            s.hopper["fresh"],
            s.outcomes["no_opt_in"]
        ),
        (4, 2, 0)
    );

    // The JSON carries every key of SPEC §5.1.
    let json = serde_json::to_value(&s).unwrap();
    for key in [
        "name",
        "state",
        "paused_reason",
        "hopper",
        "outcomes",
        "answers",
        "sent",
        "delivered",
        "read",
        "waiting_for_tier",
    ] {
        assert!(json.get(key).is_some(), "missing {key}");
    }
    for key in ["total", "fresh", "retry", "pending", "closed"] {
        assert!(json["hopper"].get(key).is_some(), "missing hopper.{key}");
    }
    assert_eq!(json["outcomes"].as_object().unwrap().len(), 11);
}

both_backends!(transitions_persist_and_refusals_are_clear);
async fn transitions_persist_and_refusals_are_clear(db: TestDb) {
    seed(&db).await;
    let cfg = config(ONE_CAMPAIGN);
    let err = campaign::command(&db.store, &db.clock, &cfg, "c1", Cmd::Pause)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot pause campaign \"c1\": it has not been started"
    );
    campaign::command(&db.store, &db.clock, &cfg, "c1", Cmd::Start)
        .await
        .unwrap();
    let err = campaign::command(&db.store, &db.clock, &cfg, "c1", Cmd::Start)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("already running"));
    let row = campaign::command(&db.store, &db.clock, &cfg, "c1", Cmd::Pause)
        .await
        .unwrap();
    assert_eq!(row.state, CampaignState::Paused);

    // Contacts imported while paused join on resume.
    let more = db.write("m.csv", "phone,opt_in\n+5511900000006,yes\n");
    let opts = ImportOptions {
        list: "b".into(),
        default_country: None,
        opt_in: false,
        batch_size: 10,
        progress: false,
    };
    import::import(&db.store, &db.clock, &FileSource(more), &opts)
        .await
        .unwrap();
    campaign::command(&db.store, &db.clock, &cfg, "c1", Cmd::Resume)
        .await
        .unwrap();
    let s = campaign::status(&db.store, &db.clock, &cfg, cfg.campaign("c1").unwrap())
        .await
        .unwrap();
    assert_eq!((s.hopper["total"], s.hopper["fresh"]), (6, 3));

    let row = campaign::command(&db.store, &db.clock, &cfg, "c1", Cmd::Stop)
        .await
        .unwrap();
    assert_eq!(row.state, CampaignState::Stopped);
    let s = campaign::status(&db.store, &db.clock, &cfg, cfg.campaign("c1").unwrap())
        .await
        .unwrap();
    assert_eq!((s.hopper["fresh"], s.outcomes["stopped"]), (0, 3));

    let err = campaign::command(&db.store, &db.clock, &cfg, "c1", Cmd::Start)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "cannot start campaign \"c1\": it is stopped, which is final; define a new campaign to send again"
    );
    // The state survives a reopen of the database.
    let reopened = tiercast::store::Store::open(&db.url).await.unwrap();
    assert_eq!(
        reopened
            .campaign_by_name("c1")
            .await
            .unwrap()
            .unwrap()
            .state,
        CampaignState::Stopped
    );
}

both_backends!(unknown_campaigns_and_missing_lists_are_refused);
async fn unknown_campaigns_and_missing_lists_are_refused(db: TestDb) {
    let cfg = config(ONE_CAMPAIGN);
    let err = campaign::command(&db.store, &db.clock, &cfg, "nope", Cmd::Start)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no campaign named \"nope\" in test.toml (defined: c1, c2)"
    );
    let err = campaign::command(&db.store, &db.clock, &cfg, "c2", Cmd::Start)
        .await
        .unwrap_err();
    assert!(matches!(err, CampaignError::NotStartable { .. }));
    assert!(
        err.to_string().contains("list \"a\" does not exist"),
        "{err}"
    );
    assert_eq!(
        db.store
            .campaign_by_name("c2")
            .await
            .unwrap()
            .unwrap()
            .state,
        CampaignState::Draft
    );
}

#[test]
fn cli_exit_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, ONE_CAMPAIGN).unwrap();
    std::fs::write(
        dir.path().join("a.csv"),
        "phone,opt_in\n+5511900000001,yes\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        std::process::Command::new(binary())
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .current_dir(dir.path())
            .output()
            .unwrap()
    };
    let out = run(&["import", "a.csv", "--list", "a"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout)
            .split(" — ")
            .next()
            .unwrap(),
        "list a: imported 1, updated 0, duplicate 0, invalid 0"
    );
    assert!(run(&["campaign", "start", "c2"]).status.success());
    assert!(run(&["campaign", "stop", "c2"]).status.success());
    let out = run(&["campaign", "start", "c2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is stopped, which is final"));
    let out = run(&["campaign", "status", "c2", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["state"], "stopped");
    assert_eq!(json["outcomes"]["stopped"], 1);

    // A broken config: exit 2 naming the file, line and key.
    std::fs::write(&cfg, "[server]\nlisen = 1\n").unwrap();
    let out = run(&["campaign", "list"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("t.toml:2: server.lisen: unknown field `lisen`"),
        "{stderr}"
    );
}

/// PostgreSQL plans a campaign's claims while it starts, when no row is pending yet, and the
/// plan must stay one index probe per candidate as rows become pending: the claim's NOT EXISTS
/// checks run as subplans, never as anti-joins that read every pending row (at 200,000
/// contacts such a plan cut the rate from 4,758 to 1,485 msg/s). Statistics are taken after an
/// import and a hopper load, and the daemon's connections cost index lookups as on SSD.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_plans_stay_per_row_as_a_campaign_grows() {
    use sqlx::{Connection, Row};
    let db = fresh_pg().await;
    let mut csv = String::from("phone,name\n");
    for k in 0..2_000 {
        csv.push_str(&format!("+55119{:08},P{k}\n", 10_000_000 + k));
    }
    import_csv(&db.store, &db.clock, "a", &csv).await;
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut estimated_rows = async |table: &str| -> i64 {
        sqlx::query_scalar("SELECT reltuples::bigint FROM pg_class WHERE relname = $1")
            .bind(table)
            .fetch_one(&mut conn)
            .await
            .unwrap()
    };
    assert_eq!(
        estimated_rows("contacts").await,
        2_000,
        "analysed after the import"
    );

    let cfg = config(ONE_CAMPAIGN);
    campaign::command(&db.store, &db.clock, &cfg, "c2", Cmd::Start)
        .await
        .unwrap();
    assert_eq!(
        estimated_rows("hopper").await,
        2_000,
        "analysed after the load"
    );

    // Mid-run: half the rows sent and pending, statistics as they were at the start.
    sqlx::query("UPDATE hopper SET state = 'pending', sent_at = 1 WHERE id % 2 = 0")
        .execute(&mut conn)
        .await
        .unwrap();
    let campaign_id = db.store.campaign_by_name("c2").await.unwrap().unwrap().id;
    let plan: Vec<String> = sqlx::query(&format!("EXPLAIN {}", db.store.claim_sql()))
        .bind(campaign_id)
        .bind(i64::MAX)
        .bind(64_i64)
        .bind("main")
        .bind(0_i64)
        .fetch_all(&mut conn)
        .await
        .unwrap()
        .iter()
        .map(|row| row.get::<String, _>(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        !plan.contains("Anti Join"),
        "claim planned as an anti-join:\n{plan}"
    );
    assert!(
        plan.contains("SubPlan 1") && plan.contains("SubPlan 2"),
        "claim checks not per row:\n{plan}"
    );

    // The batch statements' key lookups are planned as lookups, not whole-table scans:
    // PostgreSQL's default random_page_cost (4, for spinning disks) made them hash joins over
    // sequential scans of contacts and attempts once a batch held a few hundred ids.
    let cost: String = sqlx::query_scalar("SHOW random_page_cost")
        .fetch_one(db.store.pool())
        .await
        .unwrap();
    assert_eq!(cost, "1.1");
}

/// Flags a command would not read are refused with exit 2, never silently ignored.
#[test]
fn demo_and_bench_refuse_the_flags_they_would_ignore() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary())
            .args(args)
            .current_dir(dir.path())
            .env_remove("TIERCAST_CONFIG")
            .env_remove("TIERCAST_DATABASE_URL")
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["demo", "--config", "mine.toml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`tiercast demo` does not read --config"),
        "{err}"
    );
    let (code, err) = run(&["--database-url", "sqlite://mine.db", "demo"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("does not read --database-url"), "{err}");
    assert!(
        !dir.path().join("mine.db").exists() && !dir.path().join("tiercast-demo").exists(),
        "a refused demo must touch nothing"
    );
    let (code, err) = run(&["bench", "--config", "mine.toml"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("`tiercast bench` does not read --config"),
        "{err}"
    );
    for flag in [
        &["--lines", "3"][..],
        &["--daemons", "2"],
        &["--latency-ms", "5"],
        &["--no-status-webhooks"],
    ] {
        let mut args = vec!["bench", "--webhooks", "10"];
        args.extend_from_slice(flag);
        let (code, err) = run(&args);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert!(err.contains("cannot be used with"), "{args:?}: {err}");
    }
}

/// `tiercast tier status` reads the portfolio's use from the database the daemon wrote: the
/// limit, the distinct users in 24 h and 7 days, and how far the next tier is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_status_shows_the_portfolio_use() {
    let dir = tempfile::tempdir().unwrap();
    let db = fresh_db().await;
    let db_url = db.url.clone();
    let text = format!(
        r#"[server]
database_url = "{db_url}"

[[portfolios]]
name = "acme"
tier = "250"

[[lines]]
name = "main"
provider = "simulator"
portfolio = "acme"
throughput_mps = 200

[[campaigns]]
name = "c"
line = "main"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["l"]
variables = {{ "1" = "name", "2" = "literal:gold", "3" = "literal:10%" }}
"#
    );
    let cfg = dir.path().join("t.toml");
    std::fs::write(&cfg, &text).unwrap();
    let (daemon, config) = crate::sending::start(&db, &text, crate::sending::all_delivered).await;
    crate::sending::load(&daemon, &crate::sending::numbers(30)).await;
    campaign::command(
        &daemon.store,
        &tiercast::clock::SystemClock,
        &config,
        "c",
        Cmd::Start,
    )
    .await
    .unwrap();
    crate::sending::wait_for(&daemon, &config, "all sent", |s| s.sent == 30).await;
    daemon.shutdown().await;

    let out = std::process::Command::new(binary())
        .args(["--config", cfg.to_str().unwrap(), "tier", "status"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("portfolio acme: tier 250"), "{stdout}");
    assert!(
        stdout.contains("used in 24 h: 30 of 250; distinct users in 7 days: 30"),
        "{stdout}"
    );
    // Half of 250, rounded up, is 125: 95 more distinct users qualify.
    assert!(
        stdout.contains("upgrade: 95 more distinct users within 7 days qualify for"),
        "{stdout}"
    );
}
