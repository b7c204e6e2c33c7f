//! The inbox end to end (SPEC §4): answers, handoff, free text, late replies, timeouts, the
//! customer-service window, recontact, opt-outs, rule 3, template pauses, blacklisted inbound.
//! The simulator injects inbound messages as signed webhooks, exactly as Meta would post them.

use crate::helpers::*;
use crate::sending::{all_delivered, config_text, load, numbers, settle, wait_for};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tiercast::campaign;
use tiercast::clock::{Clock, ManualClock, SharedClock, SystemClock};
use tiercast::config::Config;
use tiercast::domain::{CampaignCommand, CampaignState};
use tiercast::serve::{self, Daemon, ServeOptions};
use tiercast::sim::{InboundSpec, PreferenceSpec};

const TOKEN_ENV: &str = "TIERCAST_TEST_ADMIN_TOKEN";
const TOKEN: &str = "agent-secret-token";

fn inbox_config(url: &str, extra_campaigns: &str) -> String {
    let extra = format!(
        r#"response_timeout = "4h"
answers = {{ "YES" = {{ outcome = "yes", action = "close" }}, "CALL ME" = {{ outcome = "call", action = "handoff" }}, "Sí, quiero" = {{ outcome = "si" }}, "STOP" = {{ action = "opt_out" }} }}
recontact_template = {{ name = "window_expired", language = "pt_BR" }}
{extra_campaigns}"#
    );
    let text = config_text(url, 500, "renewal_reminder", &extra);
    text.replace(
        "[server]\n",
        &format!("[server]\nadmin_token_env = \"{TOKEN_ENV}\"\n"),
    )
}

async fn start_with(db: &TestDb, cfg: &str, clock: SharedClock) -> (Daemon, Config) {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let config = Config::parse(cfg, "test.toml").unwrap();
    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            simulator: Some(Box::new(all_delivered)),
            ..ServeOptions::new(clock)
        },
    )
    .await
    .unwrap();
    let _ = db;
    (daemon, config)
}

async fn sent_campaign(db: &TestDb, n: usize, clock: SharedClock) -> (Daemon, Config, Vec<String>) {
    let (daemon, config) = start_with(db, &inbox_config(&db.url, ""), clock.clone()).await;
    let phones = numbers(n);
    load(&daemon, &phones).await;
    campaign::command(
        &daemon.store,
        clock.as_ref(),
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    wait_for(&daemon, &config, "all pending", move |s| {
        s.hopper["pending"] == n as u64
    })
    .await;
    settle(&daemon).await;
    (daemon, config, phones)
}

async fn wamid_of(daemon: &Daemon, phone: &str) -> String {
    sqlx::query_scalar(
        "SELECT h.wamid FROM hopper h JOIN contacts c ON c.id = h.contact_id WHERE c.phone = $1",
    )
    .bind(phone)
    .fetch_one(daemon.store.pool())
    .await
    .unwrap()
}

async fn row_of(
    daemon: &Daemon,
    phone: &str,
    campaign: &str,
) -> (String, Option<String>, Option<String>) {
    let r: (String, Option<String>, Option<String>) = sqlx::query_as(
        "SELECT h.state, h.outcome, h.answer FROM hopper h JOIN contacts c ON c.id = h.contact_id \
         JOIN campaigns k ON k.id = h.campaign_id WHERE c.phone = $1 AND k.name = $2",
    )
    .bind(phone)
    .bind(campaign)
    .fetch_one(daemon.store.pool())
    .await
    .unwrap();
    r
}

fn inbound(phone: &str, kind: &str, text: &str, context: Option<String>) -> InboundSpec {
    InboundSpec {
        phone_number_id: None,
        from: Some(phone.trim_start_matches('+').to_string()),
        from_user_id: None,
        kind: Some(kind.to_string()),
        text: Some(text.to_string()),
        payload: (kind == "button").then(|| text.to_string()),
        context_id: context,
        profile_name: Some("Test Person".into()),
        timestamp: None,
    }
}

async fn inject(daemon: &Daemon, spec: InboundSpec) {
    let sim = daemon.simulator.as_ref().unwrap();
    sim.inject_inbound(spec).unwrap();
    sim.flush_webhooks().await;
    tokio::time::sleep(Duration::from_millis(150)).await;
}

async fn api(daemon: &Daemon, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let client = reqwest::Client::new();
    let url = format!("{}{path}", daemon.url());
    let mut req = match method {
        "GET" => client.get(&url),
        _ => client.post(&url),
    }
    .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_by_button_with_and_without_context_accents_and_handoff() {
    let db = fresh_db().await;
    let (daemon, config, p) = sent_campaign(&db, 5, Arc::new(SystemClock)).await;
    // A tap that quotes our template.
    inject(
        &daemon,
        inbound(&p[0], "button", "YES", Some(wamid_of(&daemon, &p[0]).await)),
    )
    .await;
    // A tap without context: the contact's most recent pending row on the line.
    inject(&daemon, inbound(&p[1], "button", "YES", None)).await;
    // Typed with other case, accents and spacing.
    inject(&daemon, inbound(&p[2], "text", "  si,   QUIERO ", None)).await;
    // An answer whose action hands off to an agent.
    inject(&daemon, inbound(&p[3], "interactive", "call me", None)).await;
    assert_eq!(
        row_of(&daemon, &p[0], "c").await,
        ("closed".into(), Some("answered".into()), Some("YES".into()))
    );
    assert_eq!(
        row_of(&daemon, &p[1], "c").await.1.as_deref(),
        Some("answered")
    );
    assert_eq!(
        row_of(&daemon, &p[2], "c").await.2.as_deref(),
        Some("Sí, quiero")
    );
    assert_eq!(
        row_of(&daemon, &p[3], "c").await.2.as_deref(),
        Some("CALL ME")
    );
    let s = campaign::status(&daemon.store, &SystemClock, config.campaign("c").unwrap())
        .await
        .unwrap();
    assert_eq!(
        (
            s.answers["yes"],
            s.answers["si"],
            s.answers["call"],
            s.outcomes["answered"]
        ),
        (2, 1, 1, 4)
    );
    let (code, list) = api(&daemon, "GET", "/api/interactions?state=open", None).await;
    assert_eq!(code, 200);
    let list = list.as_array().unwrap();
    assert_eq!(
        list.len(),
        1,
        "only the handoff opens an agent interaction: {list:?}"
    );
    assert_eq!(list[0]["phone"], p[3].as_str());
    assert_eq!(list[0]["kind"], "agent");
    assert_eq!(list[0]["campaign"], "c");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn free_text_and_unknown_taps_go_to_an_agent_with_their_history() {
    let db = fresh_db().await;
    let (daemon, _config, p) = sent_campaign(&db, 3, Arc::new(SystemClock)).await;
    inject(
        &daemon,
        inbound(&p[0], "text", "Can I change my plan instead?", None),
    )
    .await;
    inject(
        &daemon,
        inbound(&p[1], "button", "NO", Some(wamid_of(&daemon, &p[1]).await)),
    )
    .await;
    assert_eq!(
        row_of(&daemon, &p[0], "c").await.1.as_deref(),
        Some("replied")
    );
    assert_eq!(
        row_of(&daemon, &p[1], "c").await.1.as_deref(),
        Some("replied")
    );
    let (_, list) = api(
        &daemon,
        "GET",
        "/api/interactions?q=change%20my%20plan",
        None,
    )
    .await;
    let list = list.as_array().unwrap().clone();
    assert_eq!(list.len(), 1);
    let id = list[0]["id"].as_i64().unwrap();
    // Inside the window: the agent's reply goes out and joins the history.
    let (code, _) = api(
        &daemon,
        "POST",
        &format!("/api/interactions/{id}/reply"),
        Some(json!({"text": "Sure, which plan?"})),
    )
    .await;
    assert_eq!(code, 202);
    let (code, one) = api(&daemon, "GET", &format!("/api/interactions/{id}"), None).await;
    assert_eq!(code, 200);
    let messages = one["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 2, "{one}");
    assert_eq!(
        (
            messages[0]["direction"].as_str(),
            messages[1]["direction"].as_str()
        ),
        (Some("in"), Some("out"))
    );
    let ledger = daemon.simulator.as_ref().unwrap().ledger();
    assert!(ledger
        .iter()
        .any(|e| e.text.as_deref() == Some("Sure, which plan?") && e.to == p[0]));
    // Tags and close; bad token; bad JSON.
    let (code, _) = api(
        &daemon,
        "POST",
        &format!("/api/interactions/{id}/tags"),
        Some(json!({"tags": ["vip", "upsell"]})),
    )
    .await;
    assert_eq!(code, 200);
    let (_, tagged) = api(&daemon, "GET", "/api/interactions?tag=vip", None).await;
    assert_eq!(tagged.as_array().unwrap().len(), 1);
    let (code, _) = api(
        &daemon,
        "POST",
        &format!("/api/interactions/{id}/close"),
        None,
    )
    .await;
    assert_eq!(code, 200);
    let (_, open) = api(&daemon, "GET", "/api/interactions?state=open", None).await;
    assert_eq!(open.as_array().unwrap().len(), 1);
    let unauth = reqwest::get(format!("{}/api/interactions", daemon.url()))
        .await
        .unwrap();
    assert_eq!(unauth.status(), 401);
    let bad = reqwest::Client::new()
        .post(format!("{}/api/interactions/{id}/reply", daemon.url()))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let (code, body) = api(&daemon, "GET", "/api/interactions/999999", None).await;
    assert_eq!((code, body["error"].as_str()), (404, Some("not_found")));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_window_refuses_free_text_and_recontact_sends_the_template() {
    let db = fresh_db().await;
    let (daemon, _config, p) = sent_campaign(&db, 2, Arc::new(SystemClock)).await;
    let mut old = inbound(&p[0], "text", "hello?", None);
    old.timestamp = Some(SystemClock.now_millis() / 1000 - 25 * 3600);
    inject(&daemon, old).await;
    let (_, list) = api(&daemon, "GET", "/api/interactions", None).await;
    let id = list[0]["id"].as_i64().unwrap();
    let expires = list[0]["window_expires_at"].as_str().unwrap();
    assert!(chrono::DateTime::parse_from_rfc3339(expires).unwrap() < SystemClock.now());
    let (code, body) = api(
        &daemon,
        "POST",
        &format!("/api/interactions/{id}/reply"),
        Some(json!({"text": "hi"})),
    )
    .await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("window_expired"))
    );
    let (code, _) = api(
        &daemon,
        "POST",
        &format!("/api/interactions/{id}/recontact"),
        None,
    )
    .await;
    assert_eq!(code, 202);
    let ledger = daemon.simulator.as_ref().unwrap().ledger();
    assert!(ledger
        .iter()
        .any(|e| e.to == p[0] && e.template_name.as_deref() == Some("window_expired")));
    assert!(!ledger.iter().any(|e| e.text.as_deref() == Some("hi")));
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_close_no_answer_and_late_replies_go_to_an_agent() {
    let db = fresh_db().await;
    let clock = ManualClock::new(chrono::Utc::now());
    let (daemon, config, p) = sent_campaign(&db, 3, Arc::new(clock.clone())).await;
    // A reply written after the deadline but delivered before the timeout step ran.
    let mut late = inbound(&p[0], "text", "sorry, just saw this", None);
    late.timestamp = Some(clock.now_millis() / 1000 + 5 * 3600);
    inject(&daemon, late).await;
    assert_eq!(
        row_of(&daemon, &p[0], "c").await.1.as_deref(),
        Some("no_answer")
    );
    // The response timeout passes for the others.
    clock.advance(Duration::from_secs(4 * 3600 + 60));
    let s = wait_for(&daemon, &config, "timeouts", |s| {
        s.outcomes["no_answer"] == 3
    })
    .await;
    assert_eq!(s.hopper["pending"], 0);
    // A reply after the timeout: agent interaction, outcome unchanged.
    inject(
        &daemon,
        inbound(&p[1], "button", "YES", Some(wamid_of(&daemon, &p[1]).await)),
    )
    .await;
    assert_eq!(
        row_of(&daemon, &p[1], "c").await.1.as_deref(),
        Some("no_answer")
    );
    let (_, list) = api(&daemon, "GET", "/api/interactions", None).await;
    let phones: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["phone"].as_str().unwrap())
        .collect();
    assert!(
        phones.contains(&p[0].as_str()) && phones.contains(&p[1].as_str()),
        "{list}"
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_opt_out_path_closes_rows_and_blocks_sending() {
    let db = fresh_db().await;
    let (daemon, _config, p) = sent_campaign(&db, 4, Arc::new(SystemClock)).await;
    // Keyword (whole message, any case / accents).
    inject(&daemon, inbound(&p[0], "text", " Parar ", None)).await;
    // A quick reply mapped to opt_out.
    inject(
        &daemon,
        inbound(
            &p[1],
            "button",
            "STOP",
            Some(wamid_of(&daemon, &p[1]).await),
        ),
    )
    .await;
    // Meta's user_preferences "stop", posted signed as Meta would.
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{"field": "user_preferences", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": daemon.config.lines[0].phone_number_id},
        "contacts": [{"wa_id": p[2].trim_start_matches('+'), "profile": {"name": "X"}}],
        "user_preferences": [{"wa_id": p[2].trim_start_matches('+'), "detail": "User requested to stop marketing messages",
            "category": "marketing_messages", "value": "stop", "timestamp": 1795000000}]}}]}]})
    .to_string();
    assert_eq!(post_signed_webhook(&daemon.url(), body).await, 200);
    for phone in &p[..3] {
        assert_eq!(
            row_of(&daemon, phone, "c").await.1.as_deref(),
            Some("opted_out"),
            "{phone}"
        );
        assert!(
            daemon
                .store
                .contact_by_phone(phone)
                .await
                .unwrap()
                .unwrap()
                .opted_out,
            "{phone}"
        );
    }
    assert_eq!(row_of(&daemon, &p[3], "c").await.0, "pending");
    daemon.shutdown().await;
}

/// Polls the contact's opt-out flag until it is `want` (webhooks are applied asynchronously).
async fn wait_opted_out(daemon: &Daemon, phone: &str, want: bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let c = daemon.store.contact_by_phone(phone).await.unwrap().unwrap();
        if c.opted_out == want {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{phone}: opted_out never became {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_preferences_stop_from_the_simulator_opts_out_and_resume_opts_back_in() {
    let db = fresh_db().await;
    let second = r#"
[[campaigns]]
name = "c2"
line = "main"
template = { name = "renewal_reminder", language = "pt_BR" }
lists = ["l"]
variables = { "1" = "name", "2" = "literal:gold", "3" = "literal:10%" }
"#;
    let (daemon, config) =
        start_with(&db, &inbox_config(&db.url, second), Arc::new(SystemClock)).await;
    let p = numbers(3);
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
    wait_for(&daemon, &config, "sent", |s| s.hopper["pending"] == 3).await;
    settle(&daemon).await;

    // The user stops marketing messages in WhatsApp: Meta posts `user_preferences` "stop".
    let sim = daemon.simulator.as_ref().unwrap();
    sim.inject_user_preference(PreferenceSpec {
        phone_number_id: None,
        wa_id: p[0].trim_start_matches('+').to_string(),
        value: "stop".into(),
        timestamp: None,
    })
    .unwrap();
    sim.flush_webhooks().await;
    wait_opted_out(&daemon, &p[0], true).await;
    assert_eq!(
        row_of(&daemon, &p[0], "c").await,
        ("closed".to_string(), Some("opted_out".to_string()), None),
        "its pending row closes"
    );
    assert_eq!(
        row_of(&daemon, &p[1], "c").await.0,
        "pending",
        "others untouched"
    );

    // A later campaign never sends to it: the row closes at load, nothing reaches the provider.
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c2",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    assert_eq!(
        row_of(&daemon, &p[0], "c2").await,
        ("closed".to_string(), Some("opted_out".to_string()), None)
    );
    settle(&daemon).await;
    let to_p0 = sim
        .ledger()
        .iter()
        .filter(|e| e.to.trim_start_matches('+') == p[0].trim_start_matches('+'))
        .count();
    assert_eq!(to_p0, 1, "only the template of the first campaign");

    // "resume" lifts Meta's marketing opt-out (and only that kind).
    sim.inject_user_preference(PreferenceSpec {
        phone_number_id: None,
        wa_id: p[0].clone(),
        value: "resume".into(),
        timestamp: None,
    })
    .unwrap();
    sim.flush_webhooks().await;
    wait_opted_out(&daemon, &p[0], false).await;
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_category_updates_are_stored_and_listed() {
    let db = fresh_db().await;
    let (daemon, _config) =
        start_with(&db, &inbox_config(&db.url, ""), Arc::new(SystemClock)).await;
    let send = |value: Value| {
        let url = daemon.url();
        async move {
            let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "time": 1795000000,
                "changes": [{"field": "template_category_update", "value": value}]}]})
            .to_string();
            assert_eq!(post_signed_webhook(&url, body).await, 200);
        }
    };
    let stored = || async {
        daemon
            .store
            .template("main", "renewal_reminder", "pt_BR")
            .await
            .unwrap()
            .unwrap()
    };
    let before = stored().await;
    assert_eq!(before.category, "MARKETING");
    let id: i64 = before.id.as_deref().unwrap().parse().unwrap();

    // Announced 24 h ahead: the category stays, the coming one and its time are kept.
    send(
        json!({"message_template_id": id, "message_template_name": "renewal_reminder",
        "message_template_language": "pt-BR", "new_category": "MARKETING",
        "correct_category": "UTILITY", "category_update_timestamp": 1795086400}),
    )
    .await;
    let t = stored().await;
    assert_eq!(t.category, "MARKETING");
    assert_eq!(t.correct_category.as_deref(), Some("UTILITY"));
    assert_eq!(t.category_change_at, Some(1_795_086_400_000));

    // Done, named by id only (as some senders do): the category changes, the old one is kept.
    send(json!({"message_template_id": id, "previous_category": "MARKETING", "new_category": "UTILITY"})).await;
    let t = stored().await;
    assert_eq!(t.category, "UTILITY");
    assert_eq!(t.previous_category.as_deref(), Some("MARKETING"));
    assert_eq!(t.correct_category, None);
    let column: String = sqlx::query_scalar(
        "SELECT category FROM templates WHERE name = 'renewal_reminder' AND language = 'pt_BR'",
    )
    .fetch_one(daemon.store.pool())
    .await
    .unwrap();
    assert_eq!(column, "UTILITY");

    // `tiercast templates list` shows it.
    let out = std::process::Command::new(binary())
        .args(["templates", "list", "--database-url", &db.url])
        .current_dir(db.dir.path())
        .env_remove("TIERCAST_CONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.contains("renewal_reminder") && l.contains("pt_BR"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains("UTILITY") && line.contains("was MARKETING"),
        "{line}"
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_agent_interaction_holds_the_contact_back_from_other_campaigns() {
    let db = fresh_db().await;
    let second = r#"
[[campaigns]]
name = "c2"
line = "main"
template = { name = "renewal_reminder", language = "pt_BR" }
lists = ["l"]
variables = { "1" = "name", "2" = "literal:gold", "3" = "literal:10%" }
"#;
    let (daemon, config) =
        start_with(&db, &inbox_config(&db.url, second), Arc::new(SystemClock)).await;
    let p = numbers(3);
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
    wait_for(&daemon, &config, "sent", |s| s.hopper["pending"] == 3).await;
    settle(&daemon).await;
    inject(&daemon, inbound(&p[0], "text", "I have a question", None)).await; // → agent interaction
    inject(&daemon, inbound(&p[1], "button", "YES", None)).await; // answered: nothing open
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c2",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    // p[1] is free; p[2] still waits for its answer in c; p[0] talks to an agent.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while row_of(&daemon, &p[1], "c2").await.0 != "pending" {
        assert!(std::time::Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(row_of(&daemon, &p[0], "c2").await.0, "fresh");
    assert_eq!(row_of(&daemon, &p[2], "c2").await.0, "fresh");
    let (_, list) = api(&daemon, "GET", "/api/interactions?state=open", None).await;
    let id = list[0]["id"].as_i64().unwrap();
    api(
        &daemon,
        "POST",
        &format!("/api/interactions/{id}/close"),
        None,
    )
    .await;
    while row_of(&daemon, &p[0], "c2").await.0 != "pending" {
        assert!(
            std::time::Instant::now() < deadline,
            "released after the interaction closed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn template_paused_webhook_pauses_the_campaign_and_blacklisted_inbound_opens_nothing() {
    let db = fresh_db().await;
    let (daemon, config, p) = sent_campaign(&db, 2, Arc::new(SystemClock)).await;
    daemon
        .store
        .add_to_blacklist(&p[0], "abuse", 0)
        .await
        .unwrap();
    inject(&daemon, inbound(&p[0], "text", "spam spam", None)).await;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages WHERE direction = 'in'")
        .fetch_one(daemon.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 1, "recorded");
    let (_, list) = api(&daemon, "GET", "/api/interactions", None).await;
    assert!(list.as_array().unwrap().is_empty(), "opens nothing");
    assert_eq!(row_of(&daemon, &p[0], "c").await.0, "pending");

    // A quality change is stored and shown with the template.
    let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "time": 1795000000, "changes": [{"field": "message_template_quality_update",
        "value": {"previous_quality_score": "GREEN", "new_quality_score": "YELLOW", "message_template_id": 1000000000000001_i64,
                  "message_template_name": "renewal_reminder", "message_template_language": "pt-BR"}}]}]})
    .to_string();
    assert_eq!(post_signed_webhook(&daemon.url(), body).await, 200);
    let def = daemon
        .store
        .template("main", "renewal_reminder", "pt_BR")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(def.quality.as_deref(), Some("YELLOW"));

    let sim = daemon.simulator.as_ref().unwrap();
    assert!(sim.set_template_status("renewal_reminder", "pt_BR", "PAUSED"));
    sim.flush_webhooks().await;
    let s = wait_for(&daemon, &config, "paused", |s| {
        s.state == CampaignState::Paused
    })
    .await;
    assert!(
        s.paused_reason.as_deref().unwrap().contains("PAUSED"),
        "{:?}",
        s.paused_reason
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_hours_replies_and_handoffs_pushed_to_the_contact_centre() {
    let db = fresh_db().await;
    let hook = wiremock::MockServer::start().await;
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/handoff"))
        .respond_with(wiremock::ResponseTemplate::new(200))
        .mount(&hook)
        .await;
    let text = inbox_config(&db.url, "time_group = \"always\"")
        .replace(
            "max_in_flight = 16",
            "max_in_flight = 16\ntime_group = \"closed\"\nout_of_hours_text = \"We are closed; back at 9.\"",
        )
        + &format!(
            r#"
[inbox]
handoff_url = "{}/handoff"

[[time_groups]]
name = "always"
timezone = "UTC"
windows = [ {{ days = "all", from = "00:00", to = "24:00" }} ]

[[time_groups]]
name = "closed"
timezone = "UTC"
windows = [ {{ days = "all", from = "00:00", to = "00:01" }} ]
holidays = ["{}"]
"#,
            hook.uri(),
            chrono::Utc::now().format("%Y-%m-%d")
        );
    let (daemon, config) = start_with(&db, &text, Arc::new(SystemClock)).await;
    let p = numbers(1);
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
    wait_for(&daemon, &config, "sent", |s| s.hopper["pending"] == 1).await;
    settle(&daemon).await;
    inject(
        &daemon,
        inbound(&p[0], "text", "Hello, anyone there?", None),
    )
    .await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ledger = daemon.simulator.as_ref().unwrap().ledger();
        let got_text = ledger
            .iter()
            .any(|e| e.to == p[0] && e.text.as_deref() == Some("We are closed; back at 9."));
        let pushed = hook.received_requests().await.unwrap_or_default();
        if got_text && !pushed.is_empty() {
            let body: Value = serde_json::from_slice(&pushed[0].body).unwrap();
            assert_eq!(body["phone"], p[0].as_str());
            assert_eq!(body["reason"], "replied");
            assert!(pushed[0].headers.get("x-tiercast-signature-256").is_some());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "out-of-hours text {got_text}, handoff pushes {}",
            pushed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    daemon.shutdown().await;
}
