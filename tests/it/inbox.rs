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
use tiercast::config::{Config, ConfigError};
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
    sent_campaign_with(db, n, clock, &inbox_config(&db.url, "")).await
}

/// Campaign `c` of `cfg` started on `n` contacts, all of them pending.
async fn sent_campaign_with(
    db: &TestDb,
    n: usize,
    clock: SharedClock,
    cfg: &str,
) -> (Daemon, Config, Vec<String>) {
    let (daemon, config) = start_with(db, cfg, clock.clone()).await;
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
    let s = campaign::status(
        &daemon.store,
        &SystemClock,
        &config,
        config.campaign("c").unwrap(),
    )
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
    // p[0] keyword, p[1] answer, p[2] user_preferences "stop", p[3] 131050, p[4] stays.
    let p = numbers(5);
    let sim = daemon.simulator.clone().unwrap();
    sim.force_fate(&p[3], tiercast::sim::Fate::Failed(131050));
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
    wait_for(&daemon, &config, "sent, 131050 applied", |s| {
        s.hopper["pending"] == 4 && s.outcomes["opted_out"] == 1
    })
    .await;
    settle(&daemon).await;
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
    for phone in &p[..4] {
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
    assert_eq!(row_of(&daemon, &p[4], "c").await.0, "pending");
    // p[4] answers, so nothing holds it back (rule 3) and the later campaign must send to it:
    // that campaign demonstrably sends, just not to the opted-out four.
    inject(&daemon, inbound(&p[4], "button", "YES", None)).await;
    assert_eq!(
        row_of(&daemon, &p[4], "c").await.1.as_deref(),
        Some("answered")
    );

    // A later campaign on the same list: every opted-out contact's row closes at load.
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c2",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    for phone in &p[..4] {
        assert_eq!(
            row_of(&daemon, phone, "c2").await,
            ("closed".to_string(), Some("opted_out".to_string()), None),
            "{phone}"
        );
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while row_of(&daemon, &p[4], "c2").await.0 != "pending" {
        assert!(
            std::time::Instant::now() < deadline,
            "c2 never sent to p[4]"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A pass over the line finds nothing left to send, nothing is in flight, and the
    // simulator received one template per opted-out contact (the first campaign's) and two
    // for the contact that stayed.
    let pass = daemon.dispatcher.dispatch_once("main", 100).await.unwrap();
    assert_eq!(pass.claimed, 0, "{pass:?}");
    assert_eq!(daemon.store.inflight_rows().await.unwrap(), 0);
    settle(&daemon).await;
    let ledger = sim.ledger();
    let templates_to = |phone: &str| {
        ledger
            .iter()
            .filter(|e| {
                e.template_name.is_some()
                    && e.to.trim_start_matches('+') == phone.trim_start_matches('+')
            })
            .count()
    };
    for phone in &p[..4] {
        assert_eq!(templates_to(phone), 1, "{phone}: only the first campaign's");
    }
    assert_eq!(
        templates_to(&p[4]),
        2,
        "the control contact got both campaigns'"
    );
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

    // "resume" lifts Meta's marketing opt-out; that it lifts only that kind is shown by
    // `inbound_once_by_wamid_confirmation_and_resume_keeps_a_keyword_opt_out`.
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
    // A pass over the line now finds nothing it may send: the two held contacts are neither
    // claimed by it nor by the daemon's own loop (a claimed row would be in flight or sent).
    let pass = daemon.dispatcher.dispatch_once("main", 100).await.unwrap();
    assert_eq!(pass.claimed, 0, "{pass:?}");
    assert_eq!(daemon.store.inflight_rows().await.unwrap(), 0);
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
    // The contact centre fails twice, then takes the handoff: it is retried until then.
    wiremock::Mock::given(wiremock::matchers::method("POST"))
        .and(wiremock::matchers::path("/handoff"))
        .respond_with(wiremock::ResponseTemplate::new(503))
        .up_to_n_times(2)
        .with_priority(1)
        .mount(&hook)
        .await;
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
        if got_text && pushed.len() >= 3 {
            let body: Value = serde_json::from_slice(&pushed[0].body).unwrap();
            assert_eq!(body["phone"], p[0].as_str());
            assert_eq!(body["reason"], "replied");
            for push in &pushed {
                assert_eq!(
                    push.body, pushed[0].body,
                    "every try carries the same handoff"
                );
                // Signed as Meta signs its webhooks, with the admin token as the key.
                let signature = push.headers.get("x-tiercast-signature-256").unwrap();
                assert_eq!(
                    signature.to_str().unwrap(),
                    tiercast::webhook::sign(TOKEN.as_bytes(), &push.body)
                );
            }
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

/// Every template status that stops Meta from accepting the template pauses the campaigns
/// using it, naming the status: DISABLED, REJECTED and DELETED as PAUSED above. A status
/// that does not stop it (a quality flag) leaves the campaign running.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_rejected_and_deleted_templates_pause_the_campaign() {
    for event in ["DISABLED", "REJECTED", "DELETED", "FLAGGED"] {
        let db = fresh_db().await;
        let (daemon, config, _) = sent_campaign(&db, 1, Arc::new(SystemClock)).await;
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "time": 1795000000, "changes": [{"field": "message_template_status_update",
            "value": {"event": event, "message_template_id": 1000000000000001_i64, "message_template_name": "renewal_reminder",
                      "message_template_language": "pt-BR", "reason": "NONE"}}]}]})
        .to_string();
        assert_eq!(
            post_signed_webhook(&daemon.url(), body).await,
            200,
            "{event}"
        );
        if event == "FLAGGED" {
            let s = campaign::status(
                &daemon.store,
                &SystemClock,
                &config,
                config.campaign("c").unwrap(),
            )
            .await
            .unwrap();
            assert_eq!(s.state, CampaignState::Running, "{event}: {s:?}");
        } else {
            let s = wait_for(&daemon, &config, "paused", |s| {
                s.state == CampaignState::Paused
            })
            .await;
            assert!(
                s.paused_reason.as_deref().unwrap_or("").contains(event),
                "{event}: {:?}",
                s.paused_reason
            );
        }
        daemon.shutdown().await;
    }
}

/// An inbound message delivered twice (Meta retries, or a duplicate) is stored once and opens
/// one conversation; a keyword opt-out inside the window gets `opt_out_confirmation`; and
/// Meta's `user_preferences` "resume" does not lift an opt-out the contact asked for by
/// keyword.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_once_by_wamid_confirmation_and_resume_keeps_a_keyword_opt_out() {
    let db = fresh_db().await;
    let text = inbox_config(&db.url, "")
        + "\n[inbox]\nopt_out_confirmation = \"Done: you will hear from us no more.\"\n";
    let (daemon, config) = start_with(&db, &text, Arc::new(SystemClock)).await;
    let p = numbers(2);
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
    wait_for(&daemon, &config, "sent", |s| s.hopper["pending"] == 2).await;
    settle(&daemon).await;
    let pnid = daemon.config.lines[0].phone_number_id.clone();
    let envelope = |value: Value| {
        json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{"field": "messages", "value": value}]}]})
        .to_string()
    };
    let wa = |p: &str| p.trim_start_matches('+').to_string();

    // The same free-text message, posted twice.
    let now = chrono::Utc::now().timestamp().to_string();
    let message = envelope(json!({"messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "1", "phone_number_id": pnid},
        "contacts": [{"wa_id": wa(&p[0]), "profile": {"name": "X"}}],
        "messages": [{"from": wa(&p[0]), "id": "wamid.ONCE", "timestamp": now, "type": "text",
                      "text": {"body": "Can you call me tomorrow?"}}]}));
    for _ in 0..2 {
        assert_eq!(
            post_signed_webhook(&daemon.url(), message.clone()).await,
            200
        );
    }
    let stored: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM messages WHERE direction = 'in' AND wamid = 'wamid.ONCE'",
    )
    .fetch_one(daemon.store.pool())
    .await
    .unwrap();
    assert_eq!(stored, 1, "stored once");
    let (_, list) = api(&daemon, "GET", "/api/interactions", None).await;
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");

    // The second contact opts out by keyword, inside its window: confirmed by text.
    inject(&daemon, inbound(&p[1], "text", "PARAR", None)).await;
    wait_opted_out(&daemon, &p[1], true).await;
    let sim = daemon.simulator.as_ref().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !sim
        .ledger()
        .iter()
        .any(|e| e.to == p[1] && e.text.as_deref() == Some("Done: you will hear from us no more."))
    {
        assert!(std::time::Instant::now() < deadline, "no confirmation sent");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Meta's "resume" for that contact: the keyword opt-out is the contact's own word, kept.
    let resume = json!({"object": "whatsapp_business_account", "entry": [{"id": "w", "changes": [{"field": "user_preferences", "value": {
        "messaging_product": "whatsapp", "metadata": {"display_phone_number": "1", "phone_number_id": pnid},
        "contacts": [{"wa_id": wa(&p[1]), "profile": {"name": "X"}}],
        "user_preferences": [{"wa_id": wa(&p[1]), "detail": "User requested to resume marketing messages",
            "category": "marketing_messages", "value": "resume", "timestamp": 1795000000}]}}]}]})
    .to_string();
    assert_eq!(post_signed_webhook(&daemon.url(), resume).await, 200);
    assert!(
        daemon
            .store
            .contact_by_phone(&p[1])
            .await
            .unwrap()
            .unwrap()
            .opted_out,
        "resume lifted a keyword opt-out"
    );
    daemon.shutdown().await;
}

/// The first interaction of `phone` as the API lists it.
async fn interaction_of(daemon: &Daemon, phone: &str) -> Value {
    let (code, list) = api(daemon, "GET", "/api/interactions", None).await;
    assert_eq!(code, 200);
    list.as_array()
        .unwrap()
        .iter()
        .find(|i| i["phone"] == phone)
        .unwrap_or_else(|| panic!("no interaction for {phone}: {list}"))
        .clone()
}

/// Polls the simulator's ledger until an entry to `phone` satisfies `want`.
async fn wait_for_ledger(
    daemon: &Daemon,
    phone: &str,
    what: &str,
    want: impl Fn(&tiercast::sim::LedgerEntry) -> bool,
) -> tiercast::sim::LedgerEntry {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ledger = daemon.simulator.as_ref().unwrap().ledger();
        if let Some(e) = ledger.iter().find(|e| e.to == phone && want(e)) {
            return e.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{phone}: never sent {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SPEC §4 rule 3 with issue 22 §3: the response timeout closes the rows `no_answer`; a day
/// later a contact writes without quoting the template. Its agent interaction carries the
/// campaign (and shows the template it answers), and recontact sends the campaign's template.
/// Past `inbox.reply_lookback` a reply no longer belongs to the campaign.
async fn late_unquoted_reply_keeps_its_campaign(db: TestDb) {
    let clock = ManualClock::new(chrono::Utc::now());
    let cfg = inbox_config(&db.url, "\n[inbox]\nreply_lookback = \"2d\"\n");
    let (daemon, config, p) = sent_campaign_with(&db, 2, Arc::new(clock.clone()), &cfg).await;
    assert_eq!(config.inbox.reply_lookback, Duration::from_secs(2 * 86400));
    clock.advance(Duration::from_secs(4 * 3600 + 60));
    wait_for(&daemon, &config, "timeouts", |s| {
        s.outcomes["no_answer"] == 2
    })
    .await;

    // The next day, a reply that quotes nothing.
    clock.advance(Duration::from_secs(24 * 3600));
    let mut late = inbound(&p[0], "text", "is the discount still on?", None);
    late.timestamp = Some(clock.now_millis() / 1000);
    inject(&daemon, late).await;
    let i = interaction_of(&daemon, &p[0]).await;
    assert_eq!(i["campaign"], "c", "{i}");
    assert_eq!(i["reason"], "late_reply", "{i}");
    assert_eq!(
        row_of(&daemon, &p[0], "c").await.1.as_deref(),
        Some("no_answer"),
        "the outcome stays"
    );
    let id = i["id"].as_i64().unwrap();
    let (code, one) = api(&daemon, "GET", &format!("/api/interactions/{id}"), None).await;
    assert_eq!(code, 200);
    assert_eq!(
        one["template"],
        json!({"name": "renewal_reminder", "language": "pt_BR"}),
        "{one}"
    );
    let (code, body) = api(
        &daemon,
        "POST",
        &format!("/api/interactions/{id}/recontact"),
        None,
    )
    .await;
    assert_eq!(code, 202, "{body}");
    wait_for_ledger(&daemon, &p[0], "the campaign's recontact template", |e| {
        e.template_name.as_deref() == Some("window_expired")
    })
    .await;

    // Three days after the timeout: past the lookback, the reply has no campaign.
    clock.advance(Duration::from_secs(2 * 24 * 3600));
    let mut later = inbound(&p[1], "text", "hello?", None);
    later.timestamp = Some(clock.now_millis() / 1000);
    inject(&daemon, later).await;
    let i = interaction_of(&daemon, &p[1]).await;
    assert_eq!(i["campaign"], Value::Null, "{i}");
    daemon.shutdown().await;
}
crate::both_backends!(late_unquoted_reply_keeps_its_campaign);

/// `inbox_config` with the campaign's recontact template removed and `line_keys` added to
/// line `main`.
fn line_recontact_config(url: &str, line_keys: &str) -> String {
    inbox_config(url, "")
        .replace(
            "recontact_template = { name = \"window_expired\", language = \"pt_BR\" }\n",
            "",
        )
        .replace(
            "max_in_flight = 16",
            &format!("max_in_flight = 16\n{line_keys}"),
        )
}

/// Recontact uses the campaign's template, else the line's, filled by the line's own
/// `recontact_variables`; an interaction without a campaign uses the line's too.
async fn recontact_falls_back_to_the_lines_template_and_mapping(db: TestDb) {
    let cfg = line_recontact_config(
        &db.url,
        "recontact_template = { name = \"window_expired\", language = \"pt_BR\" }\n\
         recontact_variables = { \"1\" = \"field:nickname|literal:amigo\" }",
    );
    let (daemon, config, p) = sent_campaign_with(&db, 1, Arc::new(SystemClock), &cfg).await;
    assert!(config.campaign("c").unwrap().recontact_template.is_none());
    let stranger = "+5511988887777";
    inject(&daemon, inbound(&p[0], "text", "tell me more", None)).await;
    inject(&daemon, inbound(stranger, "text", "who is this?", None)).await;
    for (phone, campaign) in [(p[0].as_str(), json!("c")), (stranger, Value::Null)] {
        let i = interaction_of(&daemon, phone).await;
        assert_eq!(i["campaign"], campaign, "{i}");
        let id = i["id"].as_i64().unwrap();
        let (code, body) = api(
            &daemon,
            "POST",
            &format!("/api/interactions/{id}/recontact"),
            None,
        )
        .await;
        assert_eq!(code, 202, "{phone}: {body}");
        let sent = wait_for_ledger(&daemon, phone, "the line's recontact template", |e| {
            e.template_name.as_deref() == Some("window_expired")
        })
        .await;
        assert_eq!(
            sent.components[0]["parameters"][0]["text"], "amigo",
            "filled by the line's mapping: {}",
            sent.components
        );
    }
    daemon.shutdown().await;
}
crate::both_backends!(recontact_falls_back_to_the_lines_template_and_mapping);

/// Without a template on the campaign or the line, the 409 says which is missing.
async fn recontact_without_a_template_says_what_is_missing(db: TestDb) {
    let cfg = line_recontact_config(&db.url, "");
    let (daemon, _config, p) = sent_campaign_with(&db, 1, Arc::new(SystemClock), &cfg).await;
    let stranger = "+5511988887777";
    inject(&daemon, inbound(&p[0], "text", "tell me more", None)).await;
    inject(&daemon, inbound(stranger, "text", "who is this?", None)).await;
    for (phone, says) in [
        (p[0].as_str(), "campaign c has no recontact_template"),
        (stranger, "this interaction has no campaign"),
    ] {
        let id = interaction_of(&daemon, phone).await["id"].as_i64().unwrap();
        let (code, body) = api(
            &daemon,
            "POST",
            &format!("/api/interactions/{id}/recontact"),
            None,
        )
        .await;
        assert_eq!(code, 409);
        assert_eq!(body["error"], "no_recontact_template");
        let message = body["message"].as_str().unwrap();
        assert!(
            message.contains(says) && message.contains("line main has no recontact_template"),
            "{message}"
        );
    }
    daemon.shutdown().await;
}
crate::both_backends!(recontact_without_a_template_says_what_is_missing);

/// A recontact template that cannot be filled refuses the start (not the agent's click), with
/// the file, the line of the file and the key: the line's without `recontact_variables`, and a
/// campaign's whose placeholders its `variables` do not map.
async fn unfillable_recontact_templates_refuse_the_start(db: TestDb) {
    std::env::set_var(TOKEN_ENV, TOKEN);
    let start = |cfg: String| async move {
        let config = Config::parse(&cfg, "test.toml").unwrap();
        serve::start(
            config,
            ServeOptions {
                listen: Some("127.0.0.1:0".parse().unwrap()),
                ..ServeOptions::new(Arc::new(SystemClock))
            },
        )
        .await
    };
    let cfg = line_recontact_config(
        &db.url,
        "recontact_template = { name = \"window_expired\", language = \"pt_BR\" }",
    );
    let file_line = cfg
        .lines()
        .position(|l| l.starts_with("recontact_template"))
        .unwrap()
        + 1;
    let err = start(cfg).await.err().expect("refused");
    let err = err.downcast::<ConfigError>().expect("a config error");
    assert_eq!(err.key, "lines[0].recontact_template");
    assert_eq!(err.line, Some(file_line));
    assert!(
        err.message
            .contains("placeholder `1` has no variable mapping")
            && err.message.contains("lines[0].recontact_variables"),
        "{err}"
    );
    assert!(
        err.to_string()
            .starts_with(&format!("test.toml:{file_line}: ")),
        "{err}"
    );

    // The campaign's own: order_update has named placeholders its variables do not map.
    let cfg = inbox_config(&db.url, "").replace(
        "recontact_template = { name = \"window_expired\", language = \"pt_BR\" }",
        "recontact_template = { name = \"order_update\", language = \"en_US\" }",
    );
    let err = start(cfg).await.err().expect("refused");
    let err = err.downcast::<ConfigError>().expect("a config error");
    assert_eq!(err.key, "campaigns[0].recontact_template");
    assert!(err.line.is_some());
    assert!(
        err.message.contains("first_name") && err.message.contains("campaigns[0].variables"),
        "{err}"
    );
}
crate::both_backends!(unfillable_recontact_templates_refuse_the_start);

#[test]
fn recontact_variables_and_opt_in_keywords_are_checked_when_parsed() {
    let base = main_line_config("sqlite://x.db", "", "");
    let e = Config::parse(
        &base.replace(
            "provider = \"simulator\"",
            "provider = \"simulator\"\nrecontact_variables = { \"1\" = \"name\" }",
        ),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(e.key, "lines[0].recontact_variables");
    let e = Config::parse(
        &base.replace(
            "provider = \"simulator\"",
            "provider = \"simulator\"\nrecontact_template = { name = \"w\", language = \"en\" }\nrecontact_variables = { \"1\" = \"bogus\" }",
        ),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(e.key, "lines[0].recontact_variables.1");
    let e = Config::parse(
        &format!("{base}\n[inbox]\nopt_in_keywords = [\"START\", \"stop\"]\n"),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(e.key, "inbox.opt_in_keywords[1]");
    assert!(e.message.contains("opt-out keyword"), "{e}");
    let e = Config::parse(
        &format!("{base}\n[inbox]\nreply_lookback = \"soon\"\n"),
        "t.toml",
    )
    .unwrap_err();
    assert_eq!(e.key, "inbox.reply_lookback");
    let c = Config::parse(&base, "t.toml").unwrap();
    assert_eq!(
        c.inbox.opt_in_keywords,
        ["START", "UNSTOP", "VOLTAR", "ALTA"]
    );
    assert_eq!(c.inbox.reply_lookback, Duration::from_secs(7 * 86400));
}

/// Issue 22 §4: an opt-in keyword lifts an opt-out the contact made (keyword, answer) or Meta
/// made for it, with a confirmation inside the window; an admin's opt-out stays.
async fn opt_in_keywords_lift_the_contacts_own_opt_outs_only(db: TestDb) {
    let cfg = inbox_config(
        &db.url,
        "\n[inbox]\nopt_in_confirmation = \"Welcome back!\"\n",
    );
    let (daemon, _config, p) = sent_campaign_with(&db, 4, Arc::new(SystemClock), &cfg).await;
    // Out by keyword, by an answer, by Meta's user_preferences, by an admin.
    inject(&daemon, inbound(&p[0], "text", "PARAR", None)).await;
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
    let sim = daemon.simulator.as_ref().unwrap();
    sim.inject_user_preference(PreferenceSpec {
        phone_number_id: None,
        wa_id: p[2].trim_start_matches('+').to_string(),
        value: "stop".into(),
        timestamp: None,
    })
    .unwrap();
    sim.flush_webhooks().await;
    let (code, _) = api(
        &daemon,
        "POST",
        "/api/optouts",
        Some(json!({"phone": p[3], "reason": "asked on the phone"})),
    )
    .await;
    assert_eq!(code, 201);
    for phone in &p {
        wait_opted_out(&daemon, phone, true).await;
    }

    inject(&daemon, inbound(&p[0], "text", " start ", None)).await;
    inject(&daemon, inbound(&p[1], "text", "Voltar", None)).await;
    inject(&daemon, inbound(&p[2], "text", "ALTA", None)).await;
    inject(&daemon, inbound(&p[3], "text", "START", None)).await;
    for phone in &p[..3] {
        wait_opted_out(&daemon, phone, false).await;
        wait_for_ledger(&daemon, phone, "the opt-in confirmation", |e| {
            e.text.as_deref() == Some("Welcome back!")
        })
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        daemon
            .store
            .contact_by_phone(&p[3])
            .await
            .unwrap()
            .unwrap()
            .opted_out,
        "an admin's opt-out stays"
    );
    assert!(!sim
        .ledger()
        .iter()
        .any(|e| e.to == p[3] && e.text.as_deref() == Some("Welcome back!")));
    // The admin-opted-out contact's START reaches a person instead.
    assert_eq!(interaction_of(&daemon, &p[3]).await["state"], "open");
    daemon.shutdown().await;
}
crate::both_backends!(opt_in_keywords_lift_the_contacts_own_opt_outs_only);

/// Issue 22 §4: agents' media replies (image, document, audio, video by link) are sent as
/// media, never as text only; a body the API cannot send whole is refused with 400 naming the
/// field, and the window rule holds for media too.
async fn agent_media_replies_are_sent_by_link_or_refused_naming_the_field(db: TestDb) {
    let (daemon, _config, p) = sent_campaign(&db, 2, Arc::new(SystemClock)).await;
    inject(
        &daemon,
        inbound(&p[0], "text", "can you send the contract?", None),
    )
    .await;
    let id = interaction_of(&daemon, &p[0]).await["id"].as_i64().unwrap();
    let reply = |body: Value| {
        let daemon = &daemon;
        async move {
            api(
                daemon,
                "POST",
                &format!("/api/interactions/{id}/reply"),
                Some(body),
            )
            .await
        }
    };
    let sent = [
        json!({"image": {"link": "https://cdn.example.com/plan.jpg", "caption": "Your plan"}}),
        json!({"document": {"link": "https://cdn.example.com/c.pdf", "caption": "Contract", "filename": "contract.pdf"}}),
        json!({"audio": {"link": "https://cdn.example.com/hello.ogg"}}),
        json!({"video": {"link": "https://cdn.example.com/howto.mp4"}}),
    ];
    for body in &sent {
        let (code, answer) = reply(body.clone()).await;
        assert_eq!(code, 202, "{body}: {answer}");
    }
    for body in &sent {
        let (kind, media) = body.as_object().unwrap().iter().next().unwrap();
        let e = wait_for_ledger(&daemon, &p[0], kind, |e| e.message_type == *kind).await;
        assert_eq!(&e.components, media, "{kind} as sent to the provider");
    }
    let ledger = daemon.simulator.as_ref().unwrap().ledger();
    assert!(
        !ledger
            .iter()
            .any(|e| e.to == p[0] && e.message_type == "text"),
        "no media went out as text"
    );
    let (_, one) = api(&daemon, "GET", &format!("/api/interactions/{id}"), None).await;
    let kinds: Vec<&str> = one["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["direction"] == "out")
        .map(|m| m["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["image", "document", "audio", "video"], "{one}");
    assert_eq!(
        one["messages"][1]["text"],
        "Your plan\nhttps://cdn.example.com/plan.jpg"
    );

    for (body, error, field) in [
        (
            json!({"image": {"link": "ftp://x/y.jpg"}}),
            "bad_media",
            "image.link",
        ),
        (
            json!({"audio": {"link": "https://x.example/a.ogg", "caption": "hi"}}),
            "bad_media",
            "audio.caption",
        ),
        (
            json!({"video": {"link": "https://x.example/v.mp4", "filename": "v.mp4"}}),
            "bad_media",
            "video.filename",
        ),
        (
            json!({"image": {"link": "https://x.example/i.jpg", "size": 3}}),
            "bad_json",
            "size",
        ),
        (
            json!({"sticker": {"link": "https://x.example/s.webp"}}),
            "bad_json",
            "sticker",
        ),
        (
            json!({"text": "see this", "image": {"link": "https://x.example/i.jpg"}}),
            "bad_json",
            "text and image",
        ),
        (json!({}), "bad_json", "exactly one of text, image"),
    ] {
        let (code, answer) = reply(body.clone()).await;
        assert_eq!(
            (code, answer["error"].as_str()),
            (400, Some(error)),
            "{body}: {answer}"
        );
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(field), "{body}: {message}");
    }

    // Outside the window, media is refused like text.
    let mut old = inbound(&p[1], "text", "hello?", None);
    old.timestamp = Some(SystemClock.now_millis() / 1000 - 25 * 3600);
    inject(&daemon, old).await;
    let id = interaction_of(&daemon, &p[1]).await["id"].as_i64().unwrap();
    let (code, answer) = api(
        &daemon,
        "POST",
        &format!("/api/interactions/{id}/reply"),
        Some(json!({"image": {"link": "https://cdn.example.com/plan.jpg"}})),
    )
    .await;
    assert_eq!(
        (code, answer["error"].as_str()),
        (409, Some("window_expired"))
    );
    daemon.shutdown().await;
}
crate::both_backends!(agent_media_replies_are_sent_by_link_or_refused_naming_the_field);

/// A recontact template not synced at start is only logged; the click then says what is
/// missing: the template on the line, and once it is synced, the mapping of its placeholder.
async fn recontact_click_names_what_the_template_lacks(db: TestDb) {
    use tiercast::provider::Provider;
    let cfg = line_recontact_config(
        &db.url,
        "recontact_template = { name = \"later_recontact\", language = \"en_US\" }",
    );
    let (daemon, _config, p) = sent_campaign_with(&db, 1, Arc::new(SystemClock), &cfg).await;
    inject(&daemon, inbound(&p[0], "text", "tell me more", None)).await;
    let id = interaction_of(&daemon, &p[0]).await["id"].as_i64().unwrap();
    let click = || async {
        api(
            &daemon,
            "POST",
            &format!("/api/interactions/{id}/recontact"),
            None,
        )
        .await
    };
    let (code, body) = click().await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("recontact_template_unusable"))
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("later_recontact (en_US) is not synced on line main"),
        "{body}"
    );

    // Created, approved and synced while the daemon runs: its placeholder has no mapping.
    daemon.lines["main"]
        .provider
        .create_template(
            &json!({"name": "later_recontact", "language": "en_US", "category": "UTILITY",
            "components": [{"type": "BODY", "text": "Hi {{1}}, shall we go on?",
                            "example": {"body_text": [["Maria"]]}}]}),
        )
        .await
        .unwrap();
    let sim = daemon.simulator.as_ref().unwrap();
    assert!(sim.review_template("later_recontact", "en_US", "APPROVED", None));
    let clock: SharedClock = Arc::new(SystemClock);
    serve::sync_templates(&daemon.store, &clock, &daemon.lines, None).await;
    let (code, body) = click().await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("recontact_template_unusable"))
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("placeholder `1` has no variable mapping")
            && message.contains("lines[0].recontact_variables"),
        "{message}"
    );
    daemon.shutdown().await;
}
crate::both_backends!(recontact_click_names_what_the_template_lacks);

/// Polls until `phone`'s row in `campaign` is in `state`.
async fn wait_row_state(daemon: &Daemon, phone: &str, campaign: &str, state: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while row_of(daemon, phone, campaign).await.0 != state {
        assert!(
            std::time::Instant::now() < deadline,
            "{phone}: its row in {campaign} never became {state}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// An unquoted reply goes to the contact's most recent pending row *on the reply's line*,
/// with pending rows of several campaigns: campaign `c` on line `main` sent first, `b` on
/// line `second` sent later. A reply on `main` answers `c` although `b`'s row is the more
/// recent, a reply on `second` answers `b`. Rule 3 keeps one pending row per contact on a
/// line, so "most recent" among several on one line is checked on the store's lookup with a
/// second row moved onto the line by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unquoted_reply_goes_to_the_most_recent_pending_row_on_its_line() {
    let db = fresh_db().await;
    let second = r#"
[[lines]]
name = "second"
provider = "simulator"
phone_number_id = "1002"

[[campaigns]]
name = "b"
line = "second"
template = { name = "renewal_reminder", language = "pt_BR" }
lists = ["l"]
variables = { "1" = "name", "2" = "literal:gold", "3" = "literal:10%" }
answers = { "YES" = { outcome = "yes", action = "close" } }
"#;
    let (daemon, config) =
        start_with(&db, &inbox_config(&db.url, second), Arc::new(SystemClock)).await;
    let p = numbers(2);
    load(&daemon, &p).await;
    for name in ["c", "b"] {
        campaign::command(
            &daemon.store,
            &SystemClock,
            &config,
            name,
            CampaignCommand::Start,
        )
        .await
        .unwrap();
        for phone in &p {
            wait_row_state(&daemon, phone, name, "pending").await;
        }
    }
    settle(&daemon).await;
    let main_id = daemon.config.lines[0].phone_number_id.clone();
    let on_line = |phone: &str, line_id: &str| {
        let mut spec = inbound(phone, "button", "YES", None);
        spec.phone_number_id = Some(line_id.to_string());
        spec
    };

    // The store's lookup: per line, and the row sent last when a line holds two.
    let hopper_id = |phone: String, campaign: &'static str| {
        let pool = daemon.store.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT h.id FROM hopper h JOIN contacts c ON c.id = h.contact_id \
                 JOIN campaigns k ON k.id = h.campaign_id WHERE c.phone = $1 AND k.name = $2",
            )
            .bind(phone)
            .bind(campaign)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let (c1, b1) = (
        hopper_id(p[1].clone(), "c").await,
        hopper_id(p[1].clone(), "b").await,
    );
    let target = |line: &'static str| {
        let store = daemon.store.clone();
        let phone = p[1].clone();
        async move {
            store
                .reply_target(line, &phone, None, 0)
                .await
                .unwrap()
                .unwrap()
                .hopper_id
        }
    };
    assert_eq!(target("main").await, c1);
    assert_eq!(target("second").await, b1);
    let set_line = |id: i64, line: &'static str| {
        let pool = daemon.store.pool().clone();
        async move {
            sqlx::query("UPDATE hopper SET line = $1 WHERE id = $2")
                .bind(line)
                .bind(id)
                .execute(&pool)
                .await
                .unwrap();
        }
    };
    set_line(b1, "main").await;
    assert_eq!(target("main").await, b1, "b's row was sent after c's");
    set_line(b1, "second").await;

    // End to end: p[0] answers on `second`, p[1] on `main`.
    inject(&daemon, on_line(&p[0], "1002")).await;
    inject(&daemon, on_line(&p[1], &main_id)).await;
    assert_eq!(
        row_of(&daemon, &p[0], "b").await.1.as_deref(),
        Some("answered")
    );
    assert_eq!(row_of(&daemon, &p[0], "c").await.0, "pending");
    assert_eq!(
        row_of(&daemon, &p[1], "c").await.1.as_deref(),
        Some("answered"),
        "the reply's line decides, not the most recent row overall"
    );
    assert_eq!(row_of(&daemon, &p[1], "b").await.0, "pending");
    daemon.shutdown().await;
}

/// SPEC §2 rule 3 for a send in flight: while `c`'s send to p[0] waits for the provider's
/// answer (the simulator answers it 3 s late and posts no status for it), a pass over the line
/// does not claim p[0] for `c2`, nor does the daemon's own loop; `c2` does send to p[1], which
/// nothing holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_in_flight_holds_the_contact_back_from_other_campaigns() {
    use tiercast::sim::{Fate, SimFaults};
    let db = fresh_db().await;
    let second = r#"
[[campaigns]]
name = "c2"
line = "main"
template = { name = "renewal_reminder", language = "pt_BR" }
lists = ["l", "m"]
variables = { "1" = "name", "2" = "literal:gold", "3" = "literal:10%" }
"#;
    std::env::set_var(TOKEN_ENV, TOKEN);
    let config = Config::parse(&inbox_config(&db.url, second), "test.toml").unwrap();
    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            simulator: Some(Box::new(|sim| {
                all_delivered(sim);
                sim.faults = SimFaults {
                    slow: 1.0,
                    slow_ms: 3000,
                    ..SimFaults::default()
                };
            })),
            ..ServeOptions::new(Arc::new(SystemClock))
        },
    )
    .await
    .unwrap();
    let sim = daemon.simulator.clone().unwrap();
    let p = numbers(2);
    sim.force_fate(&p[0], Fate::NoWebhook);
    load(&daemon, &p[..1]).await;
    import_csv(
        &daemon.store,
        &SystemClock,
        "m",
        &format!("phone,name\n{},Other\n", p[1]),
    )
    .await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    let in_flight = || async {
        sqlx::query_scalar::<_, Option<i64>>(
            "SELECT h.inflight_attempt_id FROM hopper h \
             JOIN contacts c ON c.id = h.contact_id JOIN campaigns k ON k.id = h.campaign_id \
             WHERE c.phone = $1 AND k.name = 'c'",
        )
        .bind(&p[0])
        .fetch_one(daemon.store.pool())
        .await
        .unwrap()
        .is_some()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !(in_flight().await && sim.ledger().len() == 1) {
        assert!(std::time::Instant::now() < deadline, "never in flight");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The provider holds the answer; later sends are answered at once.
    sim.set_faults(SimFaults::default()).unwrap();
    daemon
        .campaign_command("c2", CampaignCommand::Start)
        .await
        .unwrap();
    daemon.dispatcher.dispatch_once("main", 100).await.unwrap();
    assert!(
        in_flight().await,
        "the pass ran after the send settled; the check proves nothing"
    );
    assert_eq!(row_of(&daemon, &p[0], "c2").await.0, "fresh");
    wait_row_state(&daemon, &p[1], "c2", "pending").await;
    // Answered at last: p[0]'s row in `c` is pending, which still holds it back.
    wait_row_state(&daemon, &p[0], "c", "pending").await;
    let pass = daemon.dispatcher.dispatch_once("main", 100).await.unwrap();
    assert_eq!(pass.claimed, 0, "{pass:?}");
    assert_eq!(row_of(&daemon, &p[0], "c2").await.0, "fresh");
    let to_p0 = sim.ledger().iter().filter(|e| e.to == p[0]).count();
    assert_eq!(to_p0, 1);
    daemon.shutdown().await;
}

/// A recontact is business-initiated: with the portfolio's limit (1) spent by the campaign,
/// a contact not reached in the last 24 h gets 409 `tier_spent` and nothing is sent, while
/// the contact the campaign reached costs nothing and is recontacted.
async fn recontact_answers_tier_spent_when_the_limit_is_spent(db: TestDb) {
    let cfg = line_recontact_config(
        &db.url,
        "tier = \"1\"\n\
         recontact_template = { name = \"window_expired\", language = \"pt_BR\" }\n\
         recontact_variables = { \"1\" = \"literal:amigo\" }",
    );
    let (daemon, _config, p) = sent_campaign_with(&db, 1, Arc::new(SystemClock), &cfg).await;
    let stranger = "+5511988887777";
    inject(&daemon, inbound(&p[0], "text", "tell me more", None)).await;
    inject(&daemon, inbound(stranger, "text", "who is this?", None)).await;
    let recontact = |phone: String| {
        let daemon = &daemon;
        async move {
            let id = interaction_of(daemon, &phone).await["id"].as_i64().unwrap();
            api(
                daemon,
                "POST",
                &format!("/api/interactions/{id}/recontact"),
                None,
            )
            .await
        }
    };
    let (code, body) = recontact(stranger.to_string()).await;
    assert_eq!(
        (code, body["error"].as_str()),
        (409, Some("tier_spent")),
        "{body}"
    );
    let (code, body) = recontact(p[0].clone()).await;
    assert_eq!(code, 202, "already counted in 24 h: {body}");
    wait_for_ledger(&daemon, &p[0], "the recontact template", |e| {
        e.template_name.as_deref() == Some("window_expired")
    })
    .await;
    settle(&daemon).await;
    let ledger = daemon.simulator.as_ref().unwrap().ledger();
    assert!(
        !ledger.iter().any(|e| e.to == stranger),
        "nothing sent to the stranger"
    );
    daemon.shutdown().await;
}
crate::both_backends!(recontact_answers_tier_spent_when_the_limit_is_spent);
