//! End-to-end tests of the Cloud API simulator over real HTTP: the simulator and a webhook
//! receiver both listen on port 0; sends go through plain reqwest; received webhooks are
//! checked with `signature::verify` and parsed with `parse_meta_webhook`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};
use tiercast::sim::{Fate, FateMix, InboundSpec, SimConfig, SimLine, Simulator, WebhookMode};
use tiercast::webhook::{
    parse_meta_webhook, signature, InboundKind, MessageStatus, MetaEvent, StatusEvent,
};

const PNID: &str = "106540352242922";
const WABA: &str = "102290129340398";
const TOKEN: &str = "sim-access-token";
const SECRET: &str = "sim-app-secret";

async fn spawn_sim(cfg: SimConfig) -> (Simulator, String) {
    let sim = Simulator::new(cfg);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    let s = sim.clone();
    tokio::spawn(async move { s.serve(listener).await });
    (sim, base)
}

/// (X-Hub-Signature-256, raw body) of one received POST.
type Post = (Option<String>, Bytes);

#[derive(Clone, Default)]
struct Receiver {
    posts: Arc<Mutex<Vec<Post>>>,
    /// Answer 500 to this many POSTs first.
    fail_first: Arc<Mutex<usize>>,
}

async fn receive(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    {
        let mut f = r.fail_first.lock().expect("lock");
        if *f > 0 {
            *f -= 1;
            return StatusCode::INTERNAL_SERVER_ERROR;
        }
    }
    let sig = headers
        .get("x-hub-signature-256")
        .and_then(|v| v.to_str().ok())
        .map(String::from);
    r.posts.lock().expect("lock").push((sig, body));
    StatusCode::OK
}

async fn handshake(
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, String) {
    if q.get("hub.verify_token").map(String::as_str) == Some("vt") {
        (
            StatusCode::OK,
            q.get("hub.challenge").cloned().unwrap_or_default(),
        )
    } else {
        (StatusCode::FORBIDDEN, String::new())
    }
}

async fn spawn_receiver(fail_first: usize) -> (Receiver, String) {
    let r = Receiver {
        fail_first: Arc::new(Mutex::new(fail_first)),
        ..Receiver::default()
    };
    let app = Router::new()
        .route("/hook", post(receive).get(handshake))
        .with_state(r.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    (r, url)
}

impl Receiver {
    /// All received events; every POST must carry a valid signature.
    fn events(&self) -> Vec<Vec<MetaEvent>> {
        self.posts
            .lock()
            .expect("lock")
            .iter()
            .map(|(sig, body)| {
                signature::verify(SECRET.as_bytes(), body, sig.as_deref())
                    .expect("valid signature");
                parse_meta_webhook(body).expect("parses")
            })
            .collect()
    }

    fn statuses(&self) -> Vec<StatusEvent> {
        self.events()
            .into_iter()
            .flatten()
            .filter_map(|e| match e {
                MetaEvent::Status(s) => Some(s),
                _ => None,
            })
            .collect()
    }
}

fn template_body(to: &str, name: &str, lang: &str, components: Value) -> Value {
    json!({
        "messaging_product": "whatsapp",
        "to": to,
        "type": "template",
        "biz_opaque_callback_data": format!("cb-{to}"),
        "template": { "name": name, "language": { "code": lang }, "components": components }
    })
}

fn renewal(to: &str) -> Value {
    template_body(
        to,
        "renewal_reminder",
        "pt_BR",
        json!([{ "type": "body", "parameters": [
            { "type": "text", "text": "Ana" }, { "type": "text", "text": "Gold" }, { "type": "text", "text": "30%" }]}]),
    )
}

async fn send(base: &str, pnid: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!("{base}/v23.0/{pnid}/messages"))
        .json(body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("send");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn good_template_is_accepted_and_ledgered() {
    let (sim, base) = spawn_sim(SimConfig::default()).await;
    let (status, body) = send(&base, PNID, Some(TOKEN), &renewal("+55 11 98765-4321")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messaging_product"], "whatsapp");
    assert_eq!(body["contacts"][0]["input"], "+55 11 98765-4321");
    assert_eq!(body["contacts"][0]["wa_id"], "5511987654321");
    let wamid = body["messages"][0]["id"].as_str().expect("id");
    assert!(wamid.starts_with("wamid."));
    assert_eq!(body["messages"][0]["message_status"], "accepted");

    let ledger = sim.ledger();
    assert_eq!(ledger.len(), 1);
    assert_eq!(ledger[0].wamid, wamid);
    assert_eq!(ledger[0].template_name.as_deref(), Some("renewal_reminder"));
    assert_eq!(ledger[0].language.as_deref(), Some("pt_BR"));
    assert_eq!(
        ledger[0].callback_data.as_deref(),
        Some("cb-+55 11 98765-4321")
    );
    assert_eq!(ledger[0].components[0]["type"], "body");

    // Same over HTTP for separate-process use.
    let l: Value = reqwest::get(format!("{base}/sim/ledger"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(l[0]["wamid"], wamid);
    let s: Value = reqwest::get(format!("{base}/sim/stats"))
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(s["accepted"], 1);

    // Free-form text has no message_status.
    let (status, body) = send(
        &base,
        PNID,
        Some(TOKEN),
        &json!({"messaging_product":"whatsapp","to":"16505551234","type":"text","text":{"body":"hi"}}),
    )
    .await;
    assert_eq!(status, 200);
    assert!(body["messages"][0].get("message_status").is_none());
}

#[tokio::test]
async fn validation_errors_use_meta_codes_and_envelope() {
    let mut cfg = SimConfig::default();
    cfg.phone_numbers[0].throughput_mps = 0;
    let (sim, base) = spawn_sim(cfg).await;
    let body3 = |a: &str| {
        json!([{ "type": "body", "parameters": [
            { "type": "text", "text": a }, { "type": "text", "text": "b" }, { "type": "text", "text": "c" }]}])
    };
    let one = json!([{ "type": "body", "parameters": [{ "type": "text", "text": "x" }]}]);
    let mut long_cb = renewal("1");
    long_cb["biz_opaque_callback_data"] = "x".repeat(513).into();
    let mut no_mp = renewal("1");
    no_mp
        .as_object_mut()
        .expect("obj")
        .remove("messaging_product");
    let mut no_to = renewal("1");
    no_to.as_object_mut().expect("obj").remove("to");
    let with_button = |sub: &str, index: Value| {
        let mut c = body3("a");
        c.as_array_mut().expect("arr").push(json!({
            "type": "button", "sub_type": sub, "index": index,
            "parameters": [{ "type": "payload", "payload": "YES" }]}));
        template_body("1", "renewal_reminder", "en_US", c)
    };
    // (what, phone_number_id, token, body, expected code, expected HTTP status)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, Value, i64, u16);
    let cases: Vec<Case> = vec![
        ("unknown number", "999", Some(TOKEN), renewal("1"), 100, 400),
        ("missing token", PNID, None, renewal("1"), 190, 401),
        ("bad token", PNID, Some("nope"), renewal("1"), 190, 401),
        ("no messaging_product", PNID, Some(TOKEN), no_mp, 100, 400),
        ("no to", PNID, Some(TOKEN), no_to, 131008, 400),
        ("long callback", PNID, Some(TOKEN), long_cb, 100, 400),
        (
            "unknown template",
            PNID,
            Some(TOKEN),
            template_body("1", "nope", "en_US", json!([])),
            132001,
            404,
        ),
        (
            "locale must match exactly",
            PNID,
            Some(TOKEN),
            template_body("1", "renewal_reminder", "en", body3("a")),
            132001,
            404,
        ),
        (
            "paused",
            PNID,
            Some(TOKEN),
            template_body("1", "old_promo", "en_US", one.clone()),
            132015,
            400,
        ),
        (
            "disabled",
            PNID,
            Some(TOKEN),
            template_body("1", "retired_promo", "en_US", one.clone()),
            132016,
            400,
        ),
        (
            "param count",
            PNID,
            Some(TOKEN),
            template_body("1", "renewal_reminder", "en_US", one.clone()),
            132000,
            400,
        ),
        (
            "positional given to named",
            PNID,
            Some(TOKEN),
            template_body(
                "1",
                "order_update",
                "en_US",
                json!([{ "type": "body", "parameters": [
                { "type": "text", "text": "a" }, { "type": "text", "text": "b" }]}]),
            ),
            132012,
            400,
        ),
        (
            "param too long",
            PNID,
            Some(TOKEN),
            template_body("1", "renewal_reminder", "en_US", body3(&"x".repeat(1025))),
            132005,
            400,
        ),
        (
            "button index",
            PNID,
            Some(TOKEN),
            with_button("quick_reply", json!("9")),
            131008,
            400,
        ),
        (
            "button sub_type",
            PNID,
            Some(TOKEN),
            with_button("url", json!(0)),
            132012,
            400,
        ),
    ];
    for (what, pnid, token, body, code, http) in cases {
        let (status, resp) = send(&base, pnid, token, &body).await;
        assert_eq!(
            (status, resp["error"]["code"].as_i64()),
            (http, Some(code)),
            "{what}: {resp}"
        );
        let e = &resp["error"];
        let msg = e["message"].as_str().unwrap_or("");
        assert!(msg.starts_with(&format!("(#{code}) ")), "{what}: {msg}");
        assert!(e["type"].is_string(), "{what}");
        assert!(e["fbtrace_id"].is_string(), "{what}");
        assert_eq!(e["error_data"]["messaging_product"], "whatsapp", "{what}");
        assert!(e["error_data"]["details"].is_string(), "{what}");
    }
    // Invalid JSON body.
    let resp = reqwest::Client::new()
        .post(format!("{base}/v23.0/{PNID}/messages"))
        .bearer_auth(TOKEN)
        .body("{\"to\":")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status().as_u16(), 400);
    assert_eq!(sim.ledger_len(), 0);
    assert!(sim.stats().rejected_by_code.get(&132001).copied() == Some(2));

    // Token expiry mid-campaign.
    sim.set_token_valid(PNID, false);
    let (status, resp) = send(&base, PNID, Some(TOKEN), &renewal("1")).await;
    assert_eq!((status, resp["error"]["code"].as_i64()), (401, Some(190)));
}

#[tokio::test]
async fn throughput_bucket_throttles_and_is_adjustable() {
    let mut cfg = SimConfig::default();
    cfg.phone_numbers[0].throughput_mps = 5;
    cfg.throttle_status = 429;
    let (sim, base) = spawn_sim(cfg).await;
    let started = std::time::Instant::now();
    let mut ok = 0;
    let mut throttled = 0;
    for i in 0..20 {
        let (status, resp) = send(
            &base,
            PNID,
            Some(TOKEN),
            &renewal(&format!("1650555{i:04}")),
        )
        .await;
        match status {
            200 => ok += 1,
            429 => {
                assert_eq!(resp["error"]["code"], 130429);
                throttled += 1;
            }
            other => panic!("unexpected {other}: {resp}"),
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    // Burst of 5 plus the refill during the loop.
    assert!(
        ok >= 5 && (ok as f64) <= 5.0 + 5.0 * elapsed + 1.0,
        "ok {ok} in {elapsed}s"
    );
    assert!(throttled >= 10, "throttled {throttled}");

    assert!(sim.set_throughput(PNID, u32::MAX));
    for i in 0..30 {
        let (status, _) = send(
            &base,
            PNID,
            Some(TOKEN),
            &renewal(&format!("1650556{i:04}")),
        )
        .await;
        assert_eq!(status, 200);
    }
    assert!(!sim.set_throughput("nope", 1));
}

fn webhook_cfg(url: String, mode: WebhookMode) -> SimConfig {
    SimConfig {
        webhook_url: Some(url),
        webhooks: mode,
        fates: FateMix::all_read(),
        ..SimConfig::default()
    }
}

#[tokio::test]
async fn signed_status_webhooks_follow_fates() {
    let (rx, url) = spawn_receiver(0).await;
    // Statuses are stamped from the simulator's clock, which tests drive by hand.
    let clock = tiercast::clock::ManualClock::new("2026-11-23T10:00:00Z".parse().unwrap());
    let sent_at = 1_795_428_000; // 2026-11-23T10:00:00Z in Unix seconds
    let (sim, base) = spawn_sim(SimConfig {
        clock: Some(Arc::new(clock)),
        ..webhook_cfg(url, WebhookMode::default())
    })
    .await;
    sim.force_fate("16505550001", Fate::Failed(131026));
    sim.force_fate("+1 650 555 0002", Fate::Read);
    sim.force_fate("16505550003", Fate::Delivered);
    sim.force_fate("16505550004", Fate::NoWebhook);
    assert_eq!(sim.fate_for("+16505550001"), Fate::Failed(131026));
    let mut wamids = Vec::new();
    for n in ["16505550001", "16505550002", "16505550003", "16505550004"] {
        let (status, body) = send(&base, PNID, Some(TOKEN), &renewal(n)).await;
        assert_eq!(status, 200, "{body}");
        wamids.push(body["messages"][0]["id"].as_str().expect("id").to_string());
    }
    sim.flush_webhooks().await;
    let statuses = rx.statuses();
    let of = |w: &str| -> Vec<&StatusEvent> { statuses.iter().filter(|s| s.wamid == w).collect() };

    let failed = of(&wamids[0]);
    assert_eq!(failed.len(), 1, "{statuses:?}");
    assert_eq!(failed[0].status, MessageStatus::Failed);
    assert_eq!(failed[0].errors[0].code, 131026);
    assert_eq!(failed[0].callback_data.as_deref(), Some("cb-16505550001"));
    assert_eq!(failed[0].phone_number_id, PNID);
    assert_eq!(failed[0].recipient_id.as_deref(), Some("16505550001"));

    let read: Vec<MessageStatus> = of(&wamids[1]).iter().map(|s| s.status.clone()).collect();
    assert_eq!(
        read,
        [
            MessageStatus::Sent,
            MessageStatus::Delivered,
            MessageStatus::Read
        ]
    );
    let stamps: Vec<i64> = of(&wamids[1]).iter().map(|s| s.timestamp).collect();
    assert_eq!(stamps, [sent_at, sent_at + 1, sent_at + 2]);
    assert_eq!(
        of(&wamids[1])[0].pricing_category.as_deref(),
        Some("marketing")
    );

    let delivered: Vec<MessageStatus> = of(&wamids[2]).iter().map(|s| s.status.clone()).collect();
    assert_eq!(delivered, [MessageStatus::Sent, MessageStatus::Delivered]);
    assert!(of(&wamids[3]).is_empty());
    assert_eq!(sim.stats().webhook_events_pending, 0);
}

#[tokio::test]
async fn batching_duplicates_and_reordering() {
    let (rx, url) = spawn_receiver(0).await;
    let mode = WebhookMode {
        batch_max: 4,
        duplicate_ratio: 1.0,
        reorder: true,
        ..WebhookMode::default()
    };
    let (sim, base) = spawn_sim(webhook_cfg(url, mode)).await;
    for i in 0..3 {
        let (status, _) = send(
            &base,
            PNID,
            Some(TOKEN),
            &renewal(&format!("1650555100{i}")),
        )
        .await;
        assert_eq!(status, 200);
    }
    sim.flush_webhooks().await;
    let posts = rx.events();
    // 9 statuses in batches of at most 4, each batch then re-delivered in full.
    assert!(posts.iter().all(|p| p.len() <= 4));
    let statuses = rx.statuses();
    assert_eq!(statuses.len(), 18, "{statuses:?}");
    // Within a POST, a message's read comes before its delivered.
    let mut saw_reordered = false;
    for post in &posts {
        let ss: Vec<&StatusEvent> = post
            .iter()
            .filter_map(|e| match e {
                MetaEvent::Status(s) => Some(s),
                _ => None,
            })
            .collect();
        for (i, s) in ss.iter().enumerate() {
            if s.status == MessageStatus::Delivered {
                if let Some(j) = ss
                    .iter()
                    .position(|r| r.wamid == s.wamid && r.status == MessageStatus::Read)
                {
                    assert!(j < i);
                    saw_reordered = true;
                }
            }
        }
    }
    assert!(saw_reordered);
}

#[tokio::test]
async fn webhooks_are_retried_until_acknowledged() {
    let (rx, url) = spawn_receiver(2).await;
    let mode = WebhookMode {
        retry_backoff: Duration::from_millis(20),
        ..WebhookMode::default()
    };
    let (sim, base) = spawn_sim(webhook_cfg(url, mode)).await;
    let (status, _) = send(&base, PNID, Some(TOKEN), &renewal("16505552000")).await;
    assert_eq!(status, 200);
    sim.flush_webhooks().await;
    assert_eq!(rx.statuses().len(), 3);
    let st = sim.stats();
    assert!(st.webhook_post_failures >= 2, "{st:?}");
    assert_eq!(st.webhook_events_delivered, 3);
}

#[tokio::test]
async fn inbound_injection_window_and_mark_read() {
    let (rx, url) = spawn_receiver(0).await;
    let (sim, base) = spawn_sim(webhook_cfg(url, WebhookMode::default())).await;
    let (_, sent) = send(&base, PNID, Some(TOKEN), &renewal("16505553000")).await;
    let template_wamid = sent["messages"][0]["id"].as_str().expect("id").to_string();

    // A quick-reply tap over HTTP, answering our template.
    let resp: Value = reqwest::Client::new()
        .post(format!("{base}/sim/inbound"))
        .json(&json!({"phone_number_id": PNID, "from": "16505553000", "type": "button",
                      "text": "YES", "payload": "YES", "context_id": template_wamid, "profile_name": "Ana"}))
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let inbound_wamid = resp["wamid"].as_str().expect("wamid").to_string();
    // Free text from a username-only user, through the Rust API.
    sim.inject_inbound(InboundSpec {
        from_user_id: Some("BR.99".into()),
        text: Some("oi".into()),
        ..InboundSpec::default()
    })
    .expect("inject");

    // Free-form to the contact who wrote (window open) and to one who did not.
    let text = |to: &str| json!({"messaging_product":"whatsapp","to":to,"type":"text","text":{"body":"hello"}});
    let (s1, inside) = send(&base, PNID, Some(TOKEN), &text("16505553000")).await;
    let (s2, outside) = send(&base, PNID, Some(TOKEN), &text("16505559999")).await;
    assert_eq!((s1, s2), (200, 200));
    sim.flush_webhooks().await;

    let events: Vec<MetaEvent> = rx.events().into_iter().flatten().collect();
    let inbound: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            MetaEvent::Inbound(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(inbound.len(), 2);
    assert_eq!(inbound[0].wamid, inbound_wamid);
    assert_eq!(
        inbound[0].context_id.as_deref(),
        Some(template_wamid.as_str())
    );
    assert_eq!(inbound[0].profile_name.as_deref(), Some("Ana"));
    assert_eq!(
        inbound[0].kind,
        InboundKind::Button {
            payload: "YES".into(),
            text: "YES".into()
        }
    );
    assert_eq!(inbound[1].from, None);
    assert_eq!(inbound[1].from_user_id.as_deref(), Some("BR.99"));

    let statuses = rx.statuses();
    let status_of = |w: &Value| -> Vec<StatusEvent> {
        let w = w["messages"][0]["id"].as_str().unwrap_or("").to_string();
        statuses.iter().filter(|s| s.wamid == w).cloned().collect()
    };
    let outside = status_of(&outside);
    assert_eq!(outside.len(), 1);
    assert_eq!(outside[0].errors[0].code, 131047);
    assert!(status_of(&inside)
        .iter()
        .all(|s| s.status != MessageStatus::Failed));

    // Mark as read.
    let (status, resp) = send(
        &base,
        PNID,
        Some(TOKEN),
        &json!({"messaging_product":"whatsapp","status":"read","message_id": inbound_wamid,
                "typing_indicator":{"type":"text"}}),
    )
    .await;
    assert_eq!((status, resp), (200, json!({"success": true})));
    let (status, resp) = send(
        &base,
        PNID,
        Some(TOKEN),
        &json!({"messaging_product":"whatsapp","status":"read","message_id":"wamid.unknown"}),
    )
    .await;
    assert_eq!((status, resp["error"]["code"].as_i64()), (400, Some(100)));
}

#[tokio::test]
async fn template_listing_pages_with_cursors() {
    let (_sim, base) = spawn_sim(SimConfig::default()).await;
    let client = reqwest::Client::new();
    let mut url =
        format!("{base}/v23.0/{WABA}/message_templates?limit=3&fields=name,language,status");
    let mut names = Vec::new();
    let mut pages = 0;
    loop {
        let page: Value = client
            .get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .expect("get")
            .json()
            .await
            .expect("json");
        pages += 1;
        for t in page["data"].as_array().expect("data") {
            assert!(t.get("components").is_none(), "fields projection");
            names.push(format!(
                "{}/{}",
                t["name"].as_str().unwrap_or(""),
                t["language"].as_str().unwrap_or("")
            ));
        }
        assert!(page["paging"]["cursors"]["after"].is_string());
        match page["paging"]["next"].as_str() {
            Some(next) => url = next.to_string(),
            None => break,
        }
    }
    let demo = tiercast::sim::demo_templates();
    assert_eq!(names.len(), demo.len());
    assert_eq!(pages, demo.len().div_ceil(3));

    let unauth = client
        .get(format!("{base}/v23.0/{WABA}/message_templates"))
        .send()
        .await
        .expect("get");
    assert_eq!(unauth.status().as_u16(), 401);
}

#[tokio::test]
async fn verification_handshake_and_wa_id_normalisation() {
    let (_rx, url) = spawn_receiver(0).await;
    let mut cfg = webhook_cfg(url, WebhookMode::default());
    cfg.fates.wa_id_differs = 1.0;
    cfg.phone_numbers.push(SimLine {
        phone_number_id: "222".into(),
        waba_id: "333".into(),
        ..SimLine::default()
    });
    let (sim, base) = spawn_sim(cfg).await;
    sim.verify_webhook("vt").await.expect("handshake");
    assert!(sim.verify_webhook("wrong").await.is_err());

    let (status, body) = send(&base, "222", Some(TOKEN), &renewal("+55 11 98765-4321")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["contacts"][0]["wa_id"], "551187654321");
    assert_eq!(sim.ledger()[0].phone_number_id, "222");
}

/// Rough accept-path rate (debug build): `cargo test --test it bench_accept_path -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_accept_path() {
    let (rx, url) = spawn_receiver(0).await;
    let mut cfg = webhook_cfg(url, WebhookMode::default());
    cfg.phone_numbers[0].throughput_mps = 0;
    let (sim, base) = spawn_sim(cfg).await;
    let client = reqwest::Client::new();
    let n = 4000;
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for w in 0..16 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..n / 16 {
                let resp = client
                    .post(format!("{base}/v23.0/{PNID}/messages"))
                    .bearer_auth(TOKEN)
                    .json(&renewal(&format!("1650{w:02}{i:05}")))
                    .send()
                    .await
                    .expect("send");
                assert_eq!(resp.status().as_u16(), 200);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let secs = started.elapsed().as_secs_f64();
    sim.flush_webhooks().await;
    println!(
        "{n} sends in {secs:.2}s = {:.0}/s; {} statuses delivered in {:.2}s total",
        n as f64 / secs,
        rx.statuses().len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(sim.ledger_len(), n);
}

#[tokio::test]
async fn pausing_a_template_mid_campaign() {
    let (rx, url) = spawn_receiver(0).await;
    let (sim, base) = spawn_sim(webhook_cfg(url, WebhookMode::default())).await;
    assert_eq!(
        send(&base, PNID, Some(TOKEN), &renewal("16505554000"))
            .await
            .0,
        200
    );
    assert!(sim.set_template_status("renewal_reminder", "pt_BR", "PAUSED"));
    let (status, resp) = send(&base, PNID, Some(TOKEN), &renewal("16505554001")).await;
    assert_eq!(
        (status, resp["error"]["code"].as_i64()),
        (400, Some(132015))
    );
    sim.flush_webhooks().await;
    let events: Vec<MetaEvent> = rx.events().into_iter().flatten().collect();
    assert!(events.iter().any(|e| matches!(e,
        MetaEvent::TemplateStatus { name, language, event, template_id, .. }
            if name == "renewal_reminder" && language == "pt_BR" && event == "PAUSED"
                && template_id.as_deref() == Some("1000000000000001"))));
}

/// Send-side faults over HTTP: `POST /sim/faults` replaces them (a share out of range is
/// refused), `GET` returns them; a dropped answer is an error for reqwest although the message
/// is in the ledger; a slow one is accepted and late; 5xx and 429 accept nothing;
/// `/sim/stats` counts each.
#[tokio::test]
async fn send_faults_are_set_over_http_and_behave_as_documented() {
    let (sim, base) = spawn_sim(SimConfig {
        pair_rate: None,
        ..SimConfig::default()
    })
    .await;
    let http = reqwest::Client::new();
    let set = |faults: Value| {
        let http = http.clone();
        let url = format!("{base}/sim/faults");
        async move { http.post(url).json(&faults).send().await.expect("post") }
    };
    assert_eq!(set(json!({ "drop": 2.0 })).await.status(), 400);
    assert_eq!(set(json!({ "dropp": 0.5 })).await.status(), 400);

    // Every send dropped: accepted, yet the client sees an error reading the answer.
    assert_eq!(set(json!({ "drop": 1.0 })).await.status(), 200);
    let current: Value = http
        .get(format!("{base}/sim/faults"))
        .send()
        .await
        .expect("get")
        .json()
        .await
        .expect("json");
    assert_eq!(current["drop"], 1.0, "{current}");
    let cut = async {
        let resp = http
            .post(format!("{base}/v23.0/{PNID}/messages"))
            .bearer_auth(TOKEN)
            .json(&renewal("+5511990001001"))
            .send()
            .await?;
        resp.bytes().await
    }
    .await;
    assert!(cut.is_err(), "a dropped answer must be an error: {cut:?}");
    assert_eq!(sim.ledger_len(), 1, "the dropped send was accepted");

    // Slow: accepted, answered after slow_ms.
    set(json!({ "slow": 1.0, "slow_ms": 300 })).await;
    let started = std::time::Instant::now();
    let (status, _) = send(&base, PNID, Some(TOKEN), &renewal("+5511990001002")).await;
    assert_eq!(status, 200);
    assert!(started.elapsed() >= Duration::from_millis(300));

    // 5xx (code 1 on 500, code 2 on 503) and 429 (130429): nothing accepted.
    set(json!({ "server_error": 1.0 })).await;
    let mut codes = std::collections::BTreeSet::new();
    for i in 0..20 {
        let (status, body) = send(
            &base,
            PNID,
            Some(TOKEN),
            &renewal(&format!("+55119900020{i:02}")),
        )
        .await;
        let code = body["error"]["code"].as_i64().expect("graph error");
        assert_eq!(
            (status, code == 1 || code == 2),
            (if code == 1 { 500 } else { 503 }, true)
        );
        codes.insert(code);
    }
    assert_eq!(codes.len(), 2, "both codes occur: {codes:?}");
    set(json!({ "throttle": 1.0 })).await;
    let (status, body) = send(&base, PNID, Some(TOKEN), &renewal("+5511990003001")).await;
    assert_eq!(
        (status, body["error"]["code"].as_i64()),
        (429, Some(130429))
    );
    assert_eq!(sim.ledger_len(), 2, "5xx and 429 accept nothing");

    set(json!({})).await;
    let (status, _) = send(&base, PNID, Some(TOKEN), &renewal("+5511990004001")).await;
    assert_eq!(status, 200);
    let stats = sim.stats();
    assert_eq!(
        (
            stats.faults.dropped,
            stats.faults.slow,
            stats.faults.server_errors,
            stats.faults.throttled
        ),
        (1, 1, 20, 1),
        "{stats:?}"
    );
}
