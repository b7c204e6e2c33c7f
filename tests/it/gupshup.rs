//! Gupshup lines end to end: the real daemon against the simulator's Gupshup mode (form sends,
//! v2 `message-event` and `message` callbacks posted to `/webhooks/gupshup`), and once against
//! `wiremock` standing in for Gupshup with hand-written v2 callbacks. The same scenarios as the
//! Meta path: send → statuses to read, button answer → close, free text → handoff and agent
//! reply, STOP → opt-out, failures → retry / close / pause, webhook authentication.

use crate::helpers::*;
use crate::sending::wait_for;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tiercast::campaign;
use tiercast::clock::{Clock, SharedClock, SystemClock};
use tiercast::config::Config;
use tiercast::domain::{CampaignCommand, CampaignState, Tier};
use tiercast::serve::{self, Daemon, ServeOptions};
use tiercast::sim::{
    gupshup_template_id, Fate, FateMix, InboundSpec, SimConfig, SimGupshupApp, Simulator,
};

const KEY_ENV: &str = "TIERCAST_IT_GUPSHUP_KEY";
const SECRET_ENV: &str = "TIERCAST_IT_GUPSHUP_SECRET";
const ADMIN_ENV: &str = "TIERCAST_IT_GUPSHUP_ADMIN";
const KEY: &str = "sim-gupshup-key";
const SECRET: &str = "s3cr3t-callback-token";
const ADMIN: &str = "gupshup-admin-token";
const APP_ID: &str = "3cb92fbd-0bac-41d7-818e-4e4326d90335";
const SOURCE: &str = "917834811114";

fn set_env() {
    // The same values in every test, so concurrent tests never see another's.
    std::env::set_var(KEY_ENV, KEY);
    std::env::set_var(SECRET_ENV, SECRET);
    std::env::set_var(ADMIN_ENV, ADMIN);
}

fn gupshup_config(url: &str, api_base: &str, line_extra: &str) -> String {
    format!(
        r#"
[server]
database_url = "{url}"
reconcile_after = "30s"
admin_token_env = "{ADMIN_ENV}"

[[lines]]
name = "gs"
provider = "gupshup"
source = "{SOURCE}"
app_name = "DemoApp"
app_id = "{APP_ID}"
api_base = "{api_base}"
api_key_env = "{KEY_ENV}"
webhook_secret_env = "{SECRET_ENV}"
throughput_mps = 200
max_in_flight = 8
{line_extra}

[[campaigns]]
name = "c"
line = "gs"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["l"]
variables = {{ "1" = "name|literal:friend", "2" = "field:plan|literal:basic", "3" = "literal:30%" }}
max_attempts = 3
retry_backoff = "1h"
response_timeout = "4h"
answers = {{ "YES" = {{ outcome = "yes", action = "close" }}, "CALL ME" = {{ outcome = "call", action = "handoff" }}, "STOP" = {{ action = "opt_out" }} }}
"#
    )
}

struct Gs {
    daemon: Daemon,
    config: Config,
    sim: Simulator,
}

/// A Gupshup-mode simulator, the daemon pointed at it, and the app's callback URL set through
/// the simulator's subscription API with the shared secret as a header (`meta.headers`).
async fn start_gs(db: &TestDb, adjust: impl FnOnce(&mut SimConfig)) -> Gs {
    set_env();
    let mut cfg = SimConfig {
        phone_numbers: vec![],
        gupshup_apps: vec![SimGupshupApp {
            api_key: KEY.into(),
            ..SimGupshupApp::default()
        }],
        fates: FateMix::all_read(),
        ..SimConfig::default()
    };
    adjust(&mut cfg);
    let sim = Simulator::new(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_url = format!("http://{}", listener.local_addr().unwrap());
    let serving = sim.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    let config = Config::parse(&gupshup_config(&db.url, &sim_url, ""), "test.toml").unwrap();
    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServeOptions::new(Arc::new(SystemClock) as SharedClock)
        },
    )
    .await
    .unwrap();
    let meta = json!({ "headers": { "X-Tiercast-Secret": SECRET } }).to_string();
    let callback = format!("{}/webhooks/gupshup", daemon.url());
    let resp = reqwest::Client::new()
        .post(format!("{sim_url}/wa/app/{APP_ID}/subscription"))
        .header("apikey", KEY)
        .form(&[
            ("url", callback.as_str()),
            ("modes", "SENT,DELIVERED,READ,FAILED,ENQUEUED,MESSAGE"),
            ("version", "2"),
            ("meta", meta.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    Gs {
        daemon,
        config,
        sim,
    }
}

impl Gs {
    async fn settle(&self) {
        self.sim.flush_webhooks().await;
        tokio::time::sleep(Duration::from_millis(150)).await;
    }

    async fn run_campaign(&self, phones: &[String]) {
        crate::sending::load(&self.daemon, phones).await;
        campaign::command(
            &self.daemon.store,
            &SystemClock,
            &self.config,
            "c",
            CampaignCommand::Start,
        )
        .await
        .unwrap();
    }

    async fn inject(&self, phone: &str, kind: &str, text: &str, context: Option<String>) {
        self.sim
            .inject_gupshup_inbound(InboundSpec {
                from: Some(phone.trim_start_matches('+').to_string()),
                kind: Some(kind.to_string()),
                text: Some(text.to_string()),
                payload: (kind == "button").then(|| text.to_string()),
                context_id: context,
                profile_name: Some("Test Person".into()),
                ..InboundSpec::default()
            })
            .unwrap();
        self.settle().await;
    }

    async fn row(&self, phone: &str) -> (String, Option<String>, Option<String>, Option<String>) {
        sqlx::query_as(
            "SELECT h.state, h.outcome, h.answer, h.message_status FROM hopper h \
             JOIN contacts c ON c.id = h.contact_id WHERE c.phone = $1",
        )
        .bind(phone)
        .fetch_one(self.daemon.store.pool())
        .await
        .unwrap()
    }

    async fn stored_id(&self, phone: &str) -> String {
        sqlx::query_scalar(
            "SELECT h.wamid FROM hopper h JOIN contacts c ON c.id = h.contact_id WHERE c.phone = $1",
        )
        .bind(phone)
        .fetch_one(self.daemon.store.pool())
        .await
        .unwrap()
    }
}

fn phones(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("+9198765{:05}", 10_000 + i))
        .collect()
}

async fn post_callback(daemon_url: &str, path: &str, secret: Option<&str>, body: &Value) -> u16 {
    let mut req = reqwest::Client::new()
        .post(format!("{daemon_url}{path}"))
        .json(body);
    if let Some(s) = secret {
        req = req.header("X-Tiercast-Secret", s);
    }
    req.send().await.unwrap().status().as_u16()
}

/// Send → enqueued/sent/delivered/read callbacks, the form Gupshup received, and our stored id
/// being Gupshup's `messageId`.
async fn sends_and_follows_statuses_to_read(db: TestDb) {
    let gs = start_gs(&db, |_| {}).await;
    let p = phones(5);
    gs.run_campaign(&p).await;
    let s = wait_for(&gs.daemon, &gs.config, "all read", |s| s.read == 5).await;
    assert_eq!((s.hopper["pending"], s.sent, s.delivered), (5, 5, 5));
    let ledger = gs.sim.ledger();
    assert_eq!(ledger.len(), 5, "each contact exactly once");
    let tpl = tiercast::sim::demo_templates()
        .into_iter()
        .find(|t| t.name == "renewal_reminder" && t.language == "pt_BR")
        .unwrap();
    for e in &ledger {
        assert_eq!(e.phone_number_id, SOURCE);
        assert!(!e.to.starts_with('+'), "digits only: {}", e.to);
        assert_eq!(e.components["template"]["id"], gupshup_template_id(&tpl));
        assert_eq!(e.components["template"]["params"][1], "gold");
        assert_eq!(e.components["template"]["params"][2], "30%");
        let phone = format!("+{}", e.to);
        assert_eq!(
            gs.stored_id(&phone).await,
            e.gs_id.clone().unwrap(),
            "the row keeps Gupshup's messageId"
        );
    }
    // The enqueued events taught the daemon each message's WhatsApp id.
    let aliases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message_aliases")
        .fetch_one(gs.daemon.store.pool())
        .await
        .unwrap();
    assert_eq!(aliases, 5);
    gs.daemon.shutdown().await;
}
crate::both_backends!(sends_and_follows_statuses_to_read);

/// Callbacks that pair ids of messages tiercast never sent (forged, or another sender's on the
/// same app) store no alias: a flood of them cannot grow the table.
async fn callbacks_for_messages_not_sent_by_us_add_no_alias(db: TestDb) {
    let gs = start_gs(&db, |_| {}).await;
    let url = gs.daemon.url();
    for i in 0..20 {
        let forged = json!({"app":"DemoApp","timestamp":1585344476683u64,"version":2,
            "type":"message-event","payload":{"id": format!("forged-gs-{i}"), "type":"enqueued",
            "destination":"919876500000",
            "payload":{"whatsappMessageId": format!("gBforged{i}"),"type":"template"}}});
        assert_eq!(
            post_callback(&url, "/webhooks/gupshup", Some(SECRET), &forged).await,
            200
        );
        let read = json!({"app":"DemoApp","timestamp":1585344476683u64,"version":2,
            "type":"message-event","payload":{"id": format!("gBforged-read-{i}"), "type":"read",
            "gsId": format!("forged-read-gs-{i}"), "destination":"919876500000",
            "payload":{"ts":1585344602}}});
        assert_eq!(
            post_callback(&url, "/webhooks/gupshup", Some(SECRET), &read).await,
            200
        );
    }
    // Past the look-again window of statuses that name an id not stored yet.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let aliases: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM message_aliases")
        .fetch_one(gs.daemon.store.pool())
        .await
        .unwrap();
    assert_eq!(aliases, 0);
    gs.daemon.shutdown().await;
}
crate::both_backends!(callbacks_for_messages_not_sent_by_us_add_no_alias);

/// Button answer closes; free text hands off and the agent's reply goes out through
/// `/wa/api/v1/msg`; STOP opts out; a reply quoting only the WhatsApp id still finds its row.
async fn answers_handoff_and_opt_out(db: TestDb) {
    let gs = start_gs(&db, |_| {}).await;
    let p = phones(4);
    gs.run_campaign(&p).await;
    wait_for(&gs.daemon, &gs.config, "all read", |s| s.read == 4).await;
    gs.settle().await;

    gs.inject(&p[0], "button", "YES", Some(gs.stored_id(&p[0]).await))
        .await;
    let r = gs.row(&p[0]).await;
    assert_eq!(
        (r.0.as_str(), r.1.as_deref(), r.2.as_deref()),
        ("closed", Some("answered"), Some("YES"))
    );

    gs.inject(&p[1], "text", "Can I change my plan instead?", None)
        .await;
    assert_eq!(gs.row(&p[1]).await.1.as_deref(), Some("replied"));
    let client = reqwest::Client::new();
    let list: Value = client
        .get(format!(
            "{}/api/interactions?q=change%20my%20plan",
            gs.daemon.url()
        ))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = list[0]["id"].as_i64().expect("an agent interaction");
    let code = client
        .post(format!("{}/api/interactions/{id}/reply", gs.daemon.url()))
        .bearer_auth(ADMIN)
        .json(&json!({ "text": "Sure, which plan?" }))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(code, 202);
    gs.settle().await;
    let text = gs
        .sim
        .ledger()
        .into_iter()
        .find(|e| e.text.as_deref() == Some("Sure, which plan?"))
        .expect("the agent's text reached Gupshup");
    assert_eq!(format!("+{}", text.to), p[1]);
    // Its statuses (keyed by gsId) reach the outbound message.
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM messages WHERE direction = 'out' AND text = 'Sure, which plan?'",
    )
    .fetch_one(gs.daemon.store.pool())
    .await
    .unwrap();
    assert_eq!(status.as_deref(), Some("read"));

    gs.inject(&p[2], "text", "stop", None).await;
    let r = gs.row(&p[2]).await;
    assert_eq!(
        (r.0.as_str(), r.1.as_deref()),
        ("closed", Some("opted_out"))
    );
    let c = gs
        .daemon
        .store
        .contact_by_phone(&p[2])
        .await
        .unwrap()
        .unwrap();
    assert!(c.opted_out);

    // A template tap whose context has only the WhatsApp id (the postback-page shape): the
    // alias learnt from `enqueued` leads to the row.
    let wa_id = gs
        .sim
        .ledger()
        .into_iter()
        .find(|e| format!("+{}", e.to) == p[3] && e.message_type == "template")
        .unwrap()
        .wamid;
    let body = json!({"app":"DemoApp","timestamp":1712230664720u64,"version":2,"type":"message",
        "payload":{"id":"ABEGkZlgQyWAAgo-tap","source":p[3].trim_start_matches('+'),"type":"quick_reply",
        "payload":{"text":"CALL ME","type":"button"},
        "sender":{"phone":p[3].trim_start_matches('+'),"name":"T"},
        "context":{"id":wa_id}}});
    assert_eq!(
        post_callback(&gs.daemon.url(), "/webhooks/gupshup", Some(SECRET), &body).await,
        200
    );
    let r = gs.row(&p[3]).await;
    assert_eq!(
        (r.1.as_deref(), r.2.as_deref()),
        (Some("answered"), Some("CALL ME"))
    );
    gs.daemon.shutdown().await;
}
crate::both_backends!(answers_handoff_and_opt_out);

/// An agent's media reply goes to Gupshup's session endpoint as media by link (image with
/// `originalUrl`, a document as `file` with its name), not as text.
async fn agent_media_replies_go_as_gupshup_media(db: TestDb) {
    let gs = start_gs(&db, |_| {}).await;
    let phone = "+919876599999";
    gs.inject(phone, "text", "please send the brochure", None)
        .await;
    let client = reqwest::Client::new();
    let list: Value = client
        .get(format!("{}/api/interactions", gs.daemon.url()))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = list[0]["id"].as_i64().expect("an agent interaction");
    for body in [
        json!({"image": {"link": "https://cdn.example.com/b.jpg", "caption": "Brochure"}}),
        json!({"document": {"link": "https://cdn.example.com/b.pdf", "filename": "brochure.pdf"}}),
    ] {
        let code = client
            .post(format!("{}/api/interactions/{id}/reply", gs.daemon.url()))
            .bearer_auth(ADMIN)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(code, 202, "{body}");
    }
    gs.settle().await;
    let sent: Vec<_> = gs
        .sim
        .ledger()
        .into_iter()
        .filter(|e| format!("+{}", e.to) == phone)
        .collect();
    let kinds: Vec<&str> = sent.iter().map(|e| e.message_type.as_str()).collect();
    assert_eq!(kinds, ["image", "document"]);
    assert_eq!(
        sent[0].components,
        json!({"type": "image", "originalUrl": "https://cdn.example.com/b.jpg",
               "previewUrl": "https://cdn.example.com/b.jpg", "caption": "Brochure"})
    );
    assert_eq!(
        sent[1].components,
        json!({"type": "file", "url": "https://cdn.example.com/b.pdf", "filename": "brochure.pdf"})
    );
    gs.daemon.shutdown().await;
}
crate::both_backends!(agent_media_replies_go_as_gupshup_media);

/// Gupshup's sync failures (its own codes) and async ones (Meta's codes), classified with the
/// same table as synchronous errors: retry with backoff, close, opt out, pause the campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_retry_close_and_opt_out() {
    let db = fresh_db().await;
    let p = phones(5);
    let forced = p.clone();
    let gs = start_gs(&db, |_| {}).await;
    gs.sim.force_fate(&forced[0], Fate::Failed(4002)); // Gupshup: invalid response from WA
    gs.sim.force_fate(&forced[1], Fate::Failed(1002)); // Gupshup: not on WhatsApp
    gs.sim.force_fate(&forced[2], Fate::Failed(131026)); // Meta: undeliverable
    gs.sim.force_fate(&forced[3], Fate::Failed(131050)); // Meta: marketing opt-out
    gs.run_campaign(&p).await;
    let s = wait_for(&gs.daemon, &gs.config, "failures applied", |s| {
        s.outcomes["failed"] == 2
            && s.outcomes["opted_out"] == 1
            && s.hopper["retry"] == 1
            && s.read == 1
    })
    .await;
    assert_eq!(
        s.hopper["pending"], 1,
        "the one good contact waits for its answer"
    );
    let report: (String, Option<i64>, i64) = sqlx::query_as(
        "SELECT h.state, h.last_error_code, h.attempts FROM hopper h JOIN contacts c ON c.id = h.contact_id WHERE c.phone = $1",
    )
    .bind(&p[0])
    .fetch_one(gs.daemon.store.pool())
    .await
    .unwrap();
    assert_eq!(report, ("retry".to_string(), Some(4002), 1));
    let code: Option<i64> = sqlx::query_scalar(
        "SELECT h.last_error_code FROM hopper h JOIN contacts c ON c.id = h.contact_id WHERE c.phone = $1",
    )
    .bind(&p[1])
    .fetch_one(gs.daemon.store.pool())
    .await
    .unwrap();
    assert_eq!(code, Some(1002));
    assert!(
        gs.daemon
            .store
            .contact_by_phone(&p[3])
            .await
            .unwrap()
            .unwrap()
            .opted_out
    );
    // The retry goes out once it is due, and this time it is read.
    gs.sim.force_fate(&p[0], Fate::Read);
    let id = gs
        .daemon
        .store
        .campaign_by_name("c")
        .await
        .unwrap()
        .unwrap()
        .id;
    gs.daemon
        .store
        .make_retries_due(id, SystemClock.now_millis())
        .await
        .unwrap();
    wait_for(&gs.daemon, &gs.config, "retry read", |s| s.read == 2).await;
    let sends = gs
        .sim
        .ledger()
        .iter()
        .filter(|e| format!("+{}", e.to) == p[0])
        .count();
    assert_eq!(sends, 2);
    gs.daemon.shutdown().await;
}

/// An account-level code (1003, wallet balance low) pauses the campaign and spends no contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wallet_balance_low_pauses_the_campaign() {
    let db = fresh_db().await;
    let p = phones(1);
    let gs = start_gs(&db, |_| {}).await;
    gs.sim.force_fate(&p[0], Fate::Failed(1003));
    gs.run_campaign(&p).await;
    let s = wait_for(&gs.daemon, &gs.config, "paused", |s| {
        s.state == CampaignState::Paused
    })
    .await;
    assert!(
        s.paused_reason.as_deref().unwrap_or("").contains("1003"),
        "{s:?}"
    );
    // The account's problem, not the contact's: the row is not closed, so the contact is
    // still to be sent once the wallet is topped up and the campaign resumed.
    let (state, outcome, _, _) = gs.row(&p[0]).await;
    eprintln!("wallet low: row {state} {outcome:?}");
    assert_ne!(state, "closed", "{outcome:?}");
    assert_eq!(outcome, None);
    gs.daemon.shutdown().await;
}

/// Statuses stay monotonic when Gupshup duplicates callbacks and delivers them newest first,
/// and a report that comes without `gsId` (more than a week late) finds its row by alias.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_reordered_and_late_reports() {
    let db = fresh_db().await;
    let p = phones(6);
    let gs = start_gs(&db, |c| {
        c.webhooks.duplicate_ratio = 1.0;
        c.webhooks.reorder = true;
        c.fates = FateMix {
            delivered: 1,
            read: 0,
            ..FateMix::all_read()
        };
    })
    .await;
    gs.run_campaign(&p).await;
    let s = wait_for(&gs.daemon, &gs.config, "all delivered", |s| {
        s.delivered == 6
    })
    .await;
    gs.settle().await;
    // The disorder this test is about did happen: without it, it would prove nothing.
    let stats = gs.sim.stats();
    assert!(stats.webhook_events_duplicated > 0, "{stats:?}");
    assert!(stats.webhook_messages_reordered > 0, "{stats:?}");
    assert_eq!((s.read, s.hopper["pending"]), (0, 6));
    for phone in &p {
        assert_eq!(gs.row(phone).await.3.as_deref(), Some("delivered"));
    }
    let e = gs.sim.ledger().into_iter().next().unwrap();
    let late = json!({"app":"DemoApp","timestamp":1585344602933u64,"version":2,"type":"message-event",
        "payload":{"id": e.wamid, "type":"read","destination": e.to, "payload":{"ts":1585344602}}});
    assert_eq!(
        post_callback(&gs.daemon.url(), "/webhooks/gupshup", Some(SECRET), &late).await,
        200
    );
    assert_eq!(
        gs.row(&format!("+{}", e.to)).await.3.as_deref(),
        Some("read")
    );
    gs.daemon.shutdown().await;
}

/// Tier and template events reach the portfolio and the campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_and_template_events() {
    let db = fresh_db().await;
    let gs = start_gs(&db, |_| {}).await;
    assert!(gs.sim.post_gupshup_event(
        "DemoApp",
        "account-event",
        json!({"type":"tier-event","payload":{"event":"UPGRADE","currentTier":"TIER_250","newTier":"TIER_10K"}}),
    ));
    gs.settle().await;
    let tier = gs.daemon.store.portfolio_tier("gs").await.unwrap();
    assert_eq!(tier, Some(Tier::Limited(10_000)));
    gs.run_campaign(&phones(1)).await;
    wait_for(&gs.daemon, &gs.config, "sent", |s| s.sent == 1).await;
    assert!(gs.sim.post_gupshup_event(
        APP_ID,
        "template-event",
        json!({"type":"status-update","id":"x","status":"paused","elementName":"renewal_reminder",
               "languageCode":"pt_BR","description":"paused for 3 hours"}),
    ));
    gs.settle().await;
    let s = crate::sending::status(&gs.daemon, &gs.config).await;
    assert_eq!(s.state, CampaignState::Paused, "{s:?}");
    gs.daemon.shutdown().await;
}

/// The endpoint: secret in a header or the path (constant-time compared), refused without it
/// or with a wrong one, 200 to well-formed events it does not use and to Gupshup's URL checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_secret_and_unknown_events() {
    let db = fresh_db().await;
    let gs = start_gs(&db, |_| {}).await;
    let url = gs.daemon.url();
    let sandbox = json!({"app":"DemoApp","timestamp":1584541505908u64,"version":2,"type":"user-event",
        "payload":{"phone":"callbackSetPhone","type":"sandbox-start"}});
    assert_eq!(
        post_callback(&url, "/webhooks/gupshup", None, &sandbox).await,
        401
    );
    assert_eq!(
        post_callback(&url, "/webhooks/gupshup", Some("wrong"), &sandbox).await,
        401
    );
    assert_eq!(
        post_callback(
            &url,
            &format!("/webhooks/gupshup/{SECRET}x"),
            None,
            &sandbox
        )
        .await,
        401
    );
    assert_eq!(
        post_callback(&url, "/webhooks/gupshup", Some(SECRET), &sandbox).await,
        200
    );
    assert_eq!(
        post_callback(&url, &format!("/webhooks/gupshup/{SECRET}"), None, &sandbox).await,
        200
    );
    let billing = json!({"app":"DemoApp","timestamp":1,"version":2,"type":"billing-event",
        "payload":{"deductions":{"type":"regular","model":"PMP","billable":true},"references":{"id":"a","gsId":"b"}}});
    assert_eq!(
        post_callback(&url, "/webhooks/gupshup", Some(SECRET), &billing).await,
        200
    );
    let resp = reqwest::Client::new()
        .post(format!("{url}/webhooks/gupshup"))
        .header("X-Tiercast-Secret", SECRET)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let probe = reqwest::Client::new()
        .get(format!("{url}/webhooks/gupshup/{SECRET}"))
        .send()
        .await
        .unwrap();
    assert_eq!(probe.status(), 200);
    assert_eq!(probe.text().await.unwrap(), "");
    // A refused callback is not read: an inbound STOP with a wrong secret stores nothing.
    let stop = json!({"app":"DemoApp","timestamp":1580227766370u64,"version":2,"type":"message",
        "payload":{"id":"ABEGkYaYVSEEAhAL-stop","source":"919876500000","type":"text",
        "payload":{"text":"STOP"},"sender":{"phone":"919876500000","name":"X"}}});
    assert_eq!(
        post_callback(&url, "/webhooks/gupshup", Some("wrong"), &stop).await,
        401
    );
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
        .fetch_one(gs.daemon.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0);
    assert_eq!(
        post_callback(&url, "/webhooks/gupshup", Some(SECRET), &stop).await,
        200
    );
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM messages")
        .fetch_one(gs.daemon.store.pool())
        .await
        .unwrap();
    assert_eq!(stored, 1);
    gs.daemon.shutdown().await;
}

/// The IP allow-list: a peer outside every listed network is refused with 403.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_allow_list() {
    let db = fresh_db().await;
    set_env();
    for (allow, expected) in [
        (r#"webhook_allow_ips = ["203.0.113.0/24"]"#, 403),
        (r#"webhook_allow_ips = ["203.0.113.7", "127.0.0.0/8"]"#, 200),
    ] {
        let config = Config::parse(
            &gupshup_config(&db.url, "http://127.0.0.1:9", allow),
            "t.toml",
        )
        .unwrap();
        let daemon = serve::start(
            config,
            ServeOptions {
                listen: Some("127.0.0.1:0".parse().unwrap()),
                ..ServeOptions::new(Arc::new(SystemClock) as SharedClock)
            },
        )
        .await
        .unwrap();
        let body = json!({"app":"DemoApp","timestamp":1,"version":2,"type":"user-event",
            "payload":{"phone":"callbackSetPhone","type":"sandbox-start"}});
        assert_eq!(
            post_callback(&daemon.url(), "/webhooks/gupshup", Some(SECRET), &body).await,
            expected,
            "{allow}"
        );
        daemon.shutdown().await;
    }
}

/// Mounts Gupshup's template list on a wiremock server (one approved template with three
/// variables and two quick replies, as `gupshup_config`'s campaign needs); returns its id.
async fn mount_template_list(server: &wiremock::MockServer) -> &'static str {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, ResponseTemplate};
    let template_uuid = "c6aecef6-bcb0-4fb1-8100-28c094e3bc6b";
    Mock::given(method("GET"))
        .and(path(format!("/wa/app/{APP_ID}/template").as_str()))
        .and(header("apikey", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "status": "success",
            "templates": [{
                "id": template_uuid, "elementName": "renewal_reminder", "languageCode": "pt_BR",
                "category": "MARKETING", "status": "APPROVED", "templateType": "TEXT",
                "data": "Olá {{1}}, seu plano {{2}} vence. Renove com {{3}}! | [YES] | [STOP]",
                "containerMeta": json!({"data": "Olá {{1}}, seu plano {{2}} vence. Renove com {{3}}!",
                    "buttons": [{"type":"QUICK_REPLY","text":"YES"},{"type":"QUICK_REPLY","text":"STOP"}]}).to_string()
            }]
        })))
        .mount(server)
        .await;
    template_uuid
}

/// Against wiremock as Gupshup: the daemon's requests and hand-written v2 callbacks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn against_wiremock_with_handwritten_callbacks() {
    use wiremock::matchers::{header, method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let db = fresh_db().await;
    set_env();
    let server = MockServer::start().await;
    let template_uuid = mount_template_list(&server).await;
    Mock::given(method("POST"))
        .and(path("/wa/api/v1/template/msg"))
        .and(header("apikey", KEY))
        .respond_with(ResponseTemplate::new(202).set_body_raw(
            r#"{"status":"submitted","messageId":"ee4a68a0-1203-4c85-8dc3-49d0b3226a35"}"#,
            "text/html",
        ))
        .expect(1)
        .mount(&server)
        .await;
    let config = Config::parse(&gupshup_config(&db.url, &server.uri(), ""), "test.toml").unwrap();
    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServeOptions::new(Arc::new(SystemClock) as SharedClock)
        },
    )
    .await
    .unwrap();
    let phone = "+919876543210";
    crate::sending::load(&daemon, &[phone.to_string()]).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    wait_for(&daemon, &config, "accepted", |s| s.sent == 1).await;
    let requests = server.received_requests().await.unwrap();
    let send = requests
        .iter()
        .find(|r| r.url.path() == "/wa/api/v1/template/msg")
        .unwrap();
    let form: std::collections::BTreeMap<String, String> = send
        .url
        .join(&format!("?{}", String::from_utf8_lossy(&send.body)))
        .unwrap()
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    assert_eq!(form["destination"], "919876543210");
    assert_eq!(form["src.name"], "DemoApp");
    let template: Value = serde_json::from_str(&form["template"]).unwrap();
    assert_eq!(
        template,
        json!({"id": template_uuid, "params": ["Person 0", "gold", "30%"]})
    );
    let url = daemon.url();
    let event = |kind: &str, id: &str, gs: Option<&str>, inner: Value| {
        let mut p =
            json!({"id": id, "type": kind, "destination": "919876543210", "payload": inner});
        if let Some(g) = gs {
            p["gsId"] = g.into();
        }
        json!({"app":"DemoApp","timestamp":1585344476683u64,"version":2,"type":"message-event","payload":p})
    };
    let gs_id = "ee4a68a0-1203-4c85-8dc3-49d0b3226a35";
    for body in [
        event(
            "enqueued",
            gs_id,
            None,
            json!({"whatsappMessageId":"gBEGkYaYVSEEAgnZxQ3JmKK6Wvg","type":"template"}),
        ),
        event(
            "read",
            "gBEGkYaYVSEEAgnZxQ3JmKK6Wvg",
            Some(gs_id),
            json!({"ts":1585344602}),
        ),
        // Late and duplicated: never moves the status back.
        event(
            "delivered",
            "gBEGkYaYVSEEAgnZxQ3JmKK6Wvg",
            Some(gs_id),
            json!({"ts":1585344476}),
        ),
    ] {
        assert_eq!(
            post_callback(&url, &format!("/webhooks/gupshup/{SECRET}"), None, &body).await,
            200
        );
    }
    let s = crate::sending::status(&daemon, &config).await;
    assert_eq!((s.read, s.delivered), (1, 1));
    let tap = json!({"app":"DemoApp","timestamp":1712230664720u64,"version":2,"type":"message",
        "payload":{"id":"ABEGkZlgQyWAAgo","source":"919876543210","type":"quick_reply",
        "payload":{"text":"YES","type":"button"},
        "sender":{"phone":"919876543210","name":"Ana"},
        "context":{"id":"gBEGkYaYVSEEAgnZxQ3JmKK6Wvg","gsId":gs_id}}});
    assert_eq!(
        post_callback(&url, &format!("/webhooks/gupshup/{SECRET}"), None, &tap).await,
        200
    );
    let s = crate::sending::status(&daemon, &config).await;
    assert_eq!(s.answers.get("yes"), Some(&1), "{s:?}");
    daemon.shutdown().await;
}

/// Gupshup's opt-out signals end to end: a `user-event` `opted-out` and a `preference-event`
/// marketing `stop`, each posted as Gupshup posts them, opt the contact out and close its row
/// `opted_out`; a third contact is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_event_and_preference_event_opt_the_contact_out() {
    let db = fresh_db().await;
    let p = phones(3);
    let gs = start_gs(&db, |_| {}).await;
    gs.run_campaign(&p).await;
    wait_for(&gs.daemon, &gs.config, "all sent", |s| {
        s.hopper["pending"] == 3
    })
    .await;
    gs.settle().await;

    let user_event = json!({"app": "DemoApp", "timestamp": 1764000300000u64, "version": 2, "type": "user-event",
        "payload": {"phone": p[0].trim_start_matches('+'), "type": "opted-out"}});
    let preference = json!({"app": "DemoApp", "appId": APP_ID, "timestamp": 1764000400000u64, "version": 2,
        "type": "preference-event", "payload": {"type": "user_preferences", "payload": {"user_preferences": [
            {"wa_id": p[1].trim_start_matches('+'), "detail": "User requested to stop marketing messages",
             "category": "marketing_messages", "value": "stop", "timestamp": 1764000399}]}}});
    for body in [&user_event, &preference] {
        assert_eq!(
            post_callback(&gs.daemon.url(), "/webhooks/gupshup", Some(SECRET), body).await,
            200
        );
    }
    for phone in &p[..2] {
        let contact = gs
            .daemon
            .store
            .contact_by_phone(phone)
            .await
            .unwrap()
            .unwrap();
        assert!(contact.opted_out, "{phone}");
        let (state, outcome, _, _) = gs.row(phone).await;
        assert_eq!(
            (state.as_str(), outcome.as_deref()),
            ("closed", Some("opted_out")),
            "{phone}"
        );
    }
    assert_eq!(gs.row(&p[2]).await.0, "pending");
    assert!(
        !gs.daemon
            .store
            .contact_by_phone(&p[2])
            .await
            .unwrap()
            .unwrap()
            .opted_out
    );
    gs.daemon.shutdown().await;
}

/// v3 callbacks (Meta's envelope forwarded by Gupshup, with `gs_id` and `gs_app_id`) end to
/// end: an `enqueued` and a `read` status keyed by our Gupshup id settle the row, and an
/// inbound button tap quoting the WhatsApp id the `enqueued` taught closes it as answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v3_callbacks_settle_the_row_and_answer_it() {
    let db = fresh_db().await;
    let p = phones(1);
    let gs = start_gs(&db, |_| {}).await;
    // The simulator's own (v2) callbacks stay silent for this contact: only ours reach it.
    gs.sim.force_fate(&p[0], Fate::NoWebhook);
    gs.run_campaign(&p).await;
    wait_for(&gs.daemon, &gs.config, "sent", |s| s.sent == 1).await;
    let gs_id = gs.stored_id(&p[0]).await;
    let to = p[0].trim_start_matches('+');
    let wamid = "wamid.HBgMNTUxMTk4NzY1NDMyMRUCABEYEjQ2";
    let envelope = |value: Value| {
        json!({"object": "whatsapp_business_account", "gs_app_id": APP_ID,
               "entry": [{"id": "112535025189792", "changes": [{"field": "messages", "value": value}]}]})
    };
    let metadata = json!({"display_phone_number": SOURCE, "phone_number_id": "158072934066266"});
    let enqueued = envelope(
        json!({"messaging_product": "whatsapp", "metadata": metadata,
        "statuses": [{"gs_id": gs_id, "id": wamid, "recipient_id": to, "status": "enqueued", "timestamp": 1764000010000u64}]}),
    );
    let read = envelope(
        json!({"messaging_product": "whatsapp", "metadata": metadata,
        "statuses": [{"gs_id": gs_id, "id": wamid, "recipient_id": to, "status": "read", "timestamp": "1764000070"}]}),
    );
    for body in [&enqueued, &read] {
        assert_eq!(
            post_callback(&gs.daemon.url(), "/webhooks/gupshup", Some(SECRET), body).await,
            200
        );
    }
    assert_eq!(gs.row(&p[0]).await.3.as_deref(), Some("read"));

    let tap = envelope(
        json!({"messaging_product": "whatsapp", "metadata": metadata,
        "contacts": [{"profile": {"name": "Ana"}, "wa_id": to}],
        "messages": [{"from": to, "id": "wamid.IN_V3_TAP", "timestamp": "1764000100", "type": "button",
                      "context": {"from": SOURCE, "id": wamid}, "button": {"payload": "YES", "text": "Yes"}}]}),
    );
    assert_eq!(
        post_callback(&gs.daemon.url(), "/webhooks/gupshup", Some(SECRET), &tap).await,
        200
    );
    let (state, outcome, answer, _) = gs.row(&p[0]).await;
    assert_eq!(
        (state.as_str(), outcome.as_deref(), answer.as_deref()),
        ("closed", Some("answered"), Some("YES"))
    );
    gs.daemon.shutdown().await;
}

/// Gupshup's 429 `Too Many Requests` slows the line down and requeues the contact without
/// spending an attempt: the app takes 20 msg/s while the line is set to 200, and every
/// contact still gets exactly one template, none closed as failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_requests_slows_the_line_and_spends_no_attempt() {
    let db = fresh_db().await;
    let p = phones(60);
    let gs = start_gs(&db, |c| c.gupshup_apps[0].throughput_mps = 20).await;
    gs.run_campaign(&p).await;
    let s = wait_for(&gs.daemon, &gs.config, "all sent", |s| s.sent == 60).await;
    let stats = gs.sim.stats();
    assert!(
        stats.rejected_by_code.get(&429).copied().unwrap_or(0) > 0,
        "the app never answered 429, so nothing was proved: {stats:?}"
    );
    let pacer = &gs.daemon.lines["gs"].pacer;
    assert!(
        pacer.current() < pacer.max(),
        "429 did not slow the line: {} of {}",
        pacer.current(),
        pacer.max()
    );
    let mut to: Vec<String> = gs.sim.ledger().into_iter().map(|e| e.to).collect();
    to.sort();
    to.dedup();
    assert_eq!(to.len(), 60, "every contact once");
    assert_eq!(gs.sim.ledger().len(), 60, "none twice");
    assert_eq!(s.outcomes.get("failed").copied().unwrap_or(0), 0, "{s:?}");
    let id = gs
        .daemon
        .store
        .campaign_by_name("c")
        .await
        .unwrap()
        .unwrap()
        .id;
    let mut attempts = Vec::new();
    gs.daemon
        .store
        .report_rows(id, |r| {
            attempts.push(r.attempts);
            Ok(())
        })
        .await
        .unwrap();
    assert!(
        attempts.iter().all(|&a| a == 1),
        "a 429 spent an attempt: {attempts:?}"
    );
    gs.daemon.shutdown().await;
}

/// A callback that beats the send's own HTTP answer (Gupshup pushes `sent` and `delivered`
/// while its answer to the send is still on the way) is looked at again, not lost: once the
/// answer names the message, the row shows `delivered`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_before_the_send_answer_is_not_lost() {
    use wiremock::matchers::{method, path};
    use wiremock::{Mock, MockServer, ResponseTemplate};
    let db = fresh_db().await;
    set_env();
    let server = MockServer::start().await;
    mount_template_list(&server).await;
    let message_id = "0f1e2d3c-0000-4000-8000-00000000beef";
    Mock::given(method("POST"))
        .and(path("/wa/api/v1/template/msg"))
        .respond_with(
            ResponseTemplate::new(202)
                .set_body_json(json!({"status": "submitted", "messageId": message_id}))
                .set_delay(Duration::from_millis(1500)),
        )
        .mount(&server)
        .await;
    let config = Config::parse(&gupshup_config(&db.url, &server.uri(), ""), "test.toml").unwrap();
    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServeOptions::new(Arc::new(SystemClock) as SharedClock)
        },
    )
    .await
    .unwrap();
    let phone = "+919876543210";
    crate::sending::load(&daemon, &[phone.to_string()]).await;
    campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    // The send has reached "Gupshup", whose answer is 1.5 s away: the callbacks go first.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .all(|r| r.url.path() != "/wa/api/v1/template/msg")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no send reached the fake Gupshup"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let posted_at = std::time::Instant::now();
    for (kind, ts) in [("sent", 1764000050), ("delivered", 1764000060)] {
        let body = json!({"app": "DemoApp", "timestamp": 1764000060000u64, "version": 2, "type": "message-event",
            "payload": {"id": "gBEGkZUTIXZ0AgWAMIDbeef", "gsId": message_id, "type": kind,
                        "destination": "919876543210", "payload": {"ts": ts}}});
        assert_eq!(
            post_callback(&daemon.url(), "/webhooks/gupshup", Some(SECRET), &body).await,
            200
        );
    }
    assert!(
        posted_at.elapsed() < Duration::from_millis(1500),
        "the callbacks did not beat the answer; the test proves nothing"
    );
    let s = wait_for(&daemon, &config, "delivered", |s| s.delivered == 1).await;
    assert_eq!(s.sent, 1);
    daemon.shutdown().await;
}

/// A Gupshup line with neither a secret nor an allow-list: `serve` refuses the config naming
/// the key, unless `webhook_auth = "none"` says so, which it then warns about at every start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_callbacks_need_webhook_auth_none_and_warn_at_every_start() {
    use crate::procs::{free_port, Proc};
    use std::process::Command;
    set_env();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("t.db").display());
    let port = free_port();
    let open = gupshup_config(&url, "http://127.0.0.1:9", "")
        .replace(&format!("webhook_secret_env = \"{SECRET_ENV}\"\n"), "")
        .replace(
            "[server]\n",
            &format!("[server]\nlisten = \"127.0.0.1:{port}\"\n"),
        );
    let config = dir.path().join("t.toml");
    let config_arg = config.display().to_string();
    let run = |args: &[&str]| {
        Command::new(binary())
            .args(args)
            .args(["--config", &config_arg])
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    std::fs::write(&config, &open).unwrap();
    let refused = run(&["serve"]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("t.toml: lines[0].webhook_secret_env:"),
        "{stderr}"
    );

    std::fs::write(
        &config,
        open.replace(
            "max_in_flight = 8\n",
            "max_in_flight = 8\nwebhook_auth = \"none\"\n",
        ),
    )
    .unwrap();
    assert!(run(&["migrate"]).status.success());
    let sandbox = json!({"app":"DemoApp","timestamp":1,"version":2,"type":"user-event",
        "payload":{"phone":"callbackSetPhone","type":"sandbox-start"}});
    for start in 0..2 {
        let log = dir.path().join(format!("serve-{start}.log"));
        let args: Vec<String> = ["serve", "--config", &config_arg]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let daemon = Proc::spawn("serve", &args, &log);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let daemon_url = format!("http://127.0.0.1:{port}");
        loop {
            let up = reqwest::get(format!("{daemon_url}/healthz")).await.is_ok();
            if up {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{}",
                daemon.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains("WARN") && text.contains("accepts callbacks from anyone"),
            "start {start}: {text}"
        );
        // As configured: a callback with no secret is taken.
        assert_eq!(
            post_callback(&daemon_url, "/webhooks/gupshup", None, &sandbox).await,
            200
        );
        drop(daemon);
    }
}

/// Two Gupshup lines (two apps of one account, one callback URL and secret): a callback is
/// matched to its line by `app` (v2) or `gs_app_id` (v3). Each app's status callbacks settle
/// its own line's rows, and an unquoted reply, which belongs to the contact's pending row on
/// the reply's line, answers the campaign of the app it came through. A callback naming no
/// line's app is ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gupshup_lines_are_told_apart_by_app_and_gs_app_id() {
    const OTHER_APP: &str = "OtherApp";
    const OTHER_ID: &str = "9d1c3a52-7a44-4c1e-9d0b-5b2f4c6e8a10";
    const OTHER_SOURCE: &str = "917834822225";
    set_env();
    let db = fresh_db().await;
    let sim = Simulator::new(SimConfig {
        phone_numbers: vec![],
        gupshup_apps: vec![
            SimGupshupApp {
                api_key: KEY.into(),
                ..SimGupshupApp::default()
            },
            SimGupshupApp {
                app_name: OTHER_APP.into(),
                app_id: OTHER_ID.into(),
                source: OTHER_SOURCE.into(),
                api_key: KEY.into(),
                ..SimGupshupApp::default()
            },
        ],
        fates: FateMix::all_read(),
        ..SimConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_url = format!("http://{}", listener.local_addr().unwrap());
    let serving = sim.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    let text = gupshup_config(&db.url, &sim_url, "").replace(
        "\n[[campaigns]]",
        &format!(
            r#"
[[lines]]
name = "gs2"
provider = "gupshup"
source = "{OTHER_SOURCE}"
app_name = "{OTHER_APP}"
app_id = "{OTHER_ID}"
api_base = "{sim_url}"
api_key_env = "{KEY_ENV}"
webhook_secret_env = "{SECRET_ENV}"
throughput_mps = 200
max_in_flight = 8

[[campaigns]]
name = "c2"
line = "gs2"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["l"]
variables = {{ "1" = "name|literal:friend", "2" = "literal:gold", "3" = "literal:30%" }}
response_timeout = "4h"
answers = {{ "YES" = {{ outcome = "yes", action = "close" }} }}

[[campaigns]]"#
        ),
    );
    let config = Config::parse(&text, "test.toml").unwrap();
    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            ..ServeOptions::new(Arc::new(SystemClock) as SharedClock)
        },
    )
    .await
    .unwrap();
    let callback = format!("{}/webhooks/gupshup", daemon.url());
    for app in ["DemoApp", OTHER_APP] {
        assert!(sim.set_gupshup_callback(
            app,
            &callback,
            vec![("X-Tiercast-Secret".into(), SECRET.into())]
        ));
    }
    let p = phones(2);
    crate::sending::load(&daemon, &p).await;
    let row = |phone: String, campaign: &'static str| {
        let pool = daemon.store.pool().clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>, Option<String>)>(
                "SELECT h.state, h.outcome, h.message_status FROM hopper h \
                 JOIN contacts c ON c.id = h.contact_id JOIN campaigns k ON k.id = h.campaign_id \
                 WHERE c.phone = $1 AND k.name = $2",
            )
            .bind(phone)
            .bind(campaign)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    // Each line sends its campaign through its own app; each app's callbacks take its rows
    // to read.
    for name in ["c", "c2"] {
        campaign::command(
            &daemon.store,
            &SystemClock,
            &config,
            name,
            CampaignCommand::Start,
        )
        .await
        .unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    for phone in &p {
        for name in ["c", "c2"] {
            while row(phone.clone(), name).await.2.as_deref() != Some("read") {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{phone} in {name}: {:?}",
                    row(phone.clone(), name).await
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    let ledger = sim.ledger();
    for (source, to) in [(SOURCE, &p), (OTHER_SOURCE, &p)] {
        let mut sent: Vec<String> = ledger
            .iter()
            .filter(|e| e.phone_number_id == source)
            .map(|e| format!("+{}", e.to))
            .collect();
        sent.sort();
        assert_eq!(&sent, to, "{source}");
    }

    // An unquoted v2 reply naming an app no line has: ignored, both rows stay pending.
    let stray = json!({"app": "NoSuchApp", "timestamp": 1764000300000u64, "version": 2, "type": "message",
        "payload": {"id": "stray-1", "source": p[1].trim_start_matches('+'), "type": "text",
                    "payload": {"text": "YES"}, "sender": {"phone": p[1].trim_start_matches('+'), "name": "X"}}});
    assert_eq!(
        post_callback(&daemon.url(), "/webhooks/gupshup", Some(SECRET), &stray).await,
        200
    );
    let inbound_stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM messages WHERE direction = 'in'")
            .fetch_one(daemon.store.pool())
            .await
            .unwrap()
    };
    assert_eq!(inbound_stored().await, 0, "a callback of no line's app");
    assert_eq!(row(p[1].clone(), "c").await.0, "pending");
    assert_eq!(row(p[1].clone(), "c2").await.0, "pending");
    // An unquoted v2 reply through the other app (`app`: OtherApp): its line's row answers.
    sim.inject_gupshup_inbound(InboundSpec {
        phone_number_id: Some(OTHER_APP.into()),
        from: Some(p[0].trim_start_matches('+').to_string()),
        kind: Some("text".into()),
        text: Some("YES".into()),
        ..InboundSpec::default()
    })
    .unwrap();
    sim.flush_webhooks().await;
    // An unquoted v3 reply naming the first app by `gs_app_id` only.
    let to = p[1].trim_start_matches('+');
    let v3 = json!({"object": "whatsapp_business_account", "gs_app_id": APP_ID,
        "entry": [{"id": "112535025189792", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": SOURCE, "phone_number_id": "158072934066266"},
            "contacts": [{"profile": {"name": "Ana"}, "wa_id": to}],
            "messages": [{"from": to, "id": "wamid.IN_V3_TWO_LINES", "timestamp": "1764000100",
                          "type": "text", "text": {"body": "YES"}}]}}]}]});
    assert_eq!(
        post_callback(&daemon.url(), "/webhooks/gupshup", Some(SECRET), &v3).await,
        200
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while row(p[0].clone(), "c2").await.1.is_none() {
        assert!(
            std::time::Instant::now() < deadline,
            "p[0]'s reply never applied"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(inbound_stored().await, 2);
    assert_eq!(row(p[0].clone(), "c2").await.1.as_deref(), Some("answered"));
    assert_eq!(row(p[0].clone(), "c").await.0, "pending");
    assert_eq!(row(p[1].clone(), "c").await.1.as_deref(), Some("answered"));
    assert_eq!(
        row(p[1].clone(), "c2").await.0,
        "pending",
        "the stray callback and the first app's reply leave the other line's row alone"
    );
    daemon.shutdown().await;
}
