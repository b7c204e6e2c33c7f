//! The admin API on the real daemon (HTTP on port 0, fresh SQLite, the built-in simulator):
//! auth, campaigns, CSV import, contacts, opt-outs, templates, tiers, errors, OpenAPI.

use crate::helpers::*;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiercast::clock::{SharedClock, SystemClock};
use tiercast::config::Config;
use tiercast::domain::CampaignCommand;
use tiercast::serve::{self, Daemon, ServeOptions};
use tiercast::sim::{FateMix, SimConfig};

/// Every test of this file (and of `metrics.rs`) uses the same token in the same variable, so
/// setting it from parallel tests is harmless.
pub const TOKEN_ENV: &str = "TIERCAST_IT_ADMIN_TOKEN";
pub const TOKEN: &str = "it-admin-token-3f9a";

pub fn api_config(url: &str, admin: bool) -> String {
    let admin = if admin {
        format!("admin_token_env = \"{TOKEN_ENV}\"")
    } else {
        String::new()
    };
    format!(
        r#"
[server]
database_url = "{url}"
{admin}

[[lines]]
name = "apiline"
provider = "simulator"
throughput_mps = 200

[[campaigns]]
name = "api-c"
line = "apiline"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["api-l"]
variables = {{ "1" = "name|literal:friend", "2" = "field:plan|literal:basic", "3" = "literal:30%" }}
"#
    )
}

pub fn everyone_reads(sim: &mut SimConfig) {
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

pub async fn start_daemon(
    cfg: &str,
    adjust: impl FnOnce(&mut SimConfig) + Send + 'static,
) -> (Daemon, Config) {
    std::env::set_var(TOKEN_ENV, TOKEN);
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
    (daemon, config)
}

/// A client for one daemon's admin API.
pub struct Api {
    pub base: String,
    pub client: reqwest::Client,
    pub token: Option<String>,
}

impl Api {
    pub fn new(daemon: &Daemon) -> Self {
        Api {
            base: daemon.url(),
            client: reqwest::Client::new(),
            token: Some(TOKEN.into()),
        }
    }

    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => r.bearer_auth(t),
            None => r,
        }
    }

    pub async fn send(&self, r: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = r.send().await.unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("not JSON ({e}), status {status}: {text:?}"));
        (status, body)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.req(reqwest::Method::GET, path)).await
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.req(reqwest::Method::POST, path).json(body))
            .await
    }

    pub async fn post_raw(
        &self,
        path: &str,
        content_type: &str,
        body: &str,
    ) -> (StatusCode, Value) {
        self.send(
            self.req(reqwest::Method::POST, path)
                .header("content-type", content_type)
                .body(body.to_string()),
        )
        .await
    }

    pub async fn post(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.req(reqwest::Method::POST, path)).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.send(self.req(reqwest::Method::DELETE, path)).await
    }

    /// Polls a GET until `done` holds; the deadline is a safety net.
    pub async fn wait_for(&self, path: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(path).await;
            if status == StatusCode::OK && done(&body) {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn error_code(body: &Value) -> &str {
    body["error"].as_str().unwrap_or_default()
}

fn message(body: &Value) -> &str {
    body["message"].as_str().unwrap_or_default()
}

const CSV: &str = "phone,name,plan\n\
+5511970001001,Ana,gold\n\
+5511970001002,Bruno,silver\n\
+5511970001001,Ana again,gold\n\
not-a-number,Carla,gold\n\
+5511970001003,Davi,\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requires_the_bearer_token() {
    let db = fresh_db().await;
    let (daemon, _) = start_daemon(&api_config(&db.url, true), everyone_reads).await;
    let mut api = Api::new(&daemon);

    let (status, body) = api.get("/api/campaigns").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    api.token = None;
    for path in [
        "/api/campaigns",
        "/api/optouts",
        "/api/no-such-thing",
        "/api/openapi.json",
    ] {
        let (status, body) = api.get(path).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}: {body}");
        assert_eq!(error_code(&body), "unauthorized");
        assert!(message(&body).contains("Bearer"), "{body}");
    }
    api.token = Some("wrong-token".into());
    let (status, body) = api.get("/api/campaigns").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNAUTHORIZED, "unauthorized")
    );
    let (status, _) = api.post("/api/campaigns/api-c/start").await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "no state change without the token"
    );
    // Another scheme with the right secret is still refused.
    let resp = api
        .client
        .get(format!("{}/api/campaigns", api.base))
        .header("authorization", format!("Basic {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert!(resp.headers().contains_key("www-authenticate"));

    // With the token, unknown paths and methods are JSON errors too.
    api.token = Some(TOKEN.into());
    let (status, body) = api.get("/api/no-such-thing").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "unknown_path")
    );
    let (status, body) = api.delete("/api/campaigns").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
    );
    // The campaign was never started by the refused calls.
    let (_, body) = api.get("/api/campaigns/api-c").await;
    assert_eq!(body["state"], "draft");
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_without_a_configured_token_refuses_everything_and_says_why() {
    let db = fresh_db().await;
    let (daemon, _) = start_daemon(&api_config(&db.url, false), everyone_reads).await;
    let api = Api::new(&daemon);
    let (status, body) = api.get("/api/campaigns").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(
        message(&body).contains("no admin token is configured"),
        "{body}"
    );
    // The rest of the daemon works.
    let ok = reqwest::get(format!("{}/healthz", daemon.url()))
        .await
        .unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaigns_import_start_and_refusals() {
    let db = fresh_db().await;
    let (daemon, _) = start_daemon(&api_config(&db.url, true), everyone_reads).await;
    let api = Api::new(&daemon);

    // The list, as `campaign status --json` shows it.
    let (status, list) = api.get("/api/campaigns").await;
    assert_eq!(status, StatusCode::OK);
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "api-c");
    assert_eq!(list[0]["state"], "draft");
    for key in [
        "hopper",
        "outcomes",
        "answers",
        "sent",
        "delivered",
        "read",
        "waiting_for_tier",
    ] {
        assert!(list[0].get(key).is_some(), "{key} missing: {}", list[0]);
    }

    // Starting with an empty list is refused with the reason.
    let (status, body) = api.post("/api/campaigns/api-c/start").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "not_startable")
    );
    assert!(message(&body).contains("api-l"), "{body}");

    // Import through the API: same counts as `tiercast import`, rejected rows listed.
    let (status, summary) = api
        .post_raw("/api/lists/api-l/import", "text/csv; charset=utf-8", CSV)
        .await;
    assert_eq!(status, StatusCode::OK, "{summary}");
    assert_eq!(
        (
            &summary["list"],
            &summary["rows"],
            &summary["imported"],
            &summary["updated"],
            &summary["duplicate"],
            &summary["invalid"]
        ),
        (
            &json!("api-l"),
            &json!(5),
            &json!(3),
            &json!(0),
            &json!(1),
            &json!(1)
        )
    );
    assert_eq!(summary["rejected"][0]["line"], 5, "{summary}");
    assert!(summary["rejected"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("not-a-number"));
    assert_eq!(summary["rejected_truncated"], false);
    // Importing the same body again updates.
    let (_, again) = api
        .post_raw("/api/lists/api-l/import", "text/csv", CSV)
        .await;
    assert_eq!(
        (&again["imported"], &again["updated"]),
        (&json!(0), &json!(3))
    );

    // Start → 200 running; start again → 409 with the reason.
    let (status, body) = api.post("/api/campaigns/api-c/start").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["state"], "running");
    assert_eq!(body["hopper"]["total"], 3);
    let (status, body) = api.post("/api/campaigns/api-c/start").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "transition_refused")
    );
    assert!(message(&body).contains("already running"), "{body}");
    let (status, body) = api.post("/api/campaigns/api-c/resume").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let done = api
        .wait_for("/api/campaigns/api-c", "all read", |b| b["read"] == 3)
        .await;
    assert_eq!(done["hopper"]["pending"], 3);

    // Pause, resume, stop.
    let (status, body) = api.post("/api/campaigns/api-c/pause").await;
    assert_eq!((status, &body["state"]), (StatusCode::OK, &json!("paused")));
    let (status, body) = api.post("/api/campaigns/api-c/resume").await;
    assert_eq!(
        (status, &body["state"]),
        (StatusCode::OK, &json!("running"))
    );
    let (status, body) = api.post("/api/campaigns/api-c/stop").await;
    assert_eq!(
        (status, &body["state"]),
        (StatusCode::OK, &json!("stopped"))
    );
    let (status, body) = api.post("/api/campaigns/api-c/start").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    // Unknown names.
    let (status, body) = api.get("/api/campaigns/nope").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "unknown_campaign")
    );
    assert!(
        message(&body).contains("api-c"),
        "names the defined ones: {body}"
    );
    let (status, body) = api.post("/api/campaigns/nope/start").await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = api.post("/api/campaigns/api-c/explode").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "unknown_command")
    );

    // Templates and tiers.
    let (status, templates) = api.get("/api/templates").await;
    assert_eq!(status, StatusCode::OK);
    let t = templates
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "renewal_reminder" && t["language"] == "pt_BR")
        .unwrap_or_else(|| panic!("renewal_reminder missing: {templates}"));
    assert_eq!(
        (&t["line"], &t["status"]),
        (&json!("apiline"), &json!("APPROVED"))
    );
    let slots: Vec<&str> = t["placeholders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(&slots[..3], ["1", "2", "3"], "{t}");
    let (status, tiers) = api.get("/api/tiers").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        tiers,
        json!([{"portfolio": "apiline", "tier": "250", "limit": 250, "used": 3, "available": 247, "lines": ["apiline"]}])
    );
    daemon.shutdown().await;
}

/// Starts a 30-contact campaign on a 10 msg/s line, so the first claim holds ten rows (a
/// second of sending), and pauses it right after the first send: through the admin API, or
/// only in the database as `tiercast campaign pause` (another process) does. Returns once the
/// line holds no claimed row, with the templates sent when the pause was made and by then.
async fn pause_after_the_first_send(through_api: bool) -> (TestDb, Daemon, usize, usize) {
    let db = fresh_db().await;
    let cfg = api_config(&db.url, true).replace("throughput_mps = 200", "throughput_mps = 10");
    let (daemon, config) = start_daemon(&cfg, everyone_reads).await;
    let api = Api::new(&daemon);
    let sim = daemon.simulator.as_ref().unwrap();
    let mut csv = String::from("phone,name\n");
    for i in 0..30 {
        csv.push_str(&format!("+5511988{i:06},Person {i}\n"));
    }
    let (status, body) = api
        .post_raw("/api/lists/api-l/import", "text/csv", &csv)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = api.post("/api/campaigns/api-c/start").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    let deadline = Instant::now() + Duration::from_secs(30);
    while sim.ledger_len() == 0 {
        assert!(Instant::now() < deadline, "nothing was sent");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    if through_api {
        let (status, body) = api.post("/api/campaigns/api-c/pause").await;
        assert_eq!(status, StatusCode::OK, "{body}");
    } else {
        let clock = SystemClock;
        tiercast::campaign::command(
            &daemon.store,
            &clock,
            &config,
            "api-c",
            CampaignCommand::Pause,
        )
        .await
        .unwrap();
    }
    let sent_at_pause = sim.ledger_len();

    let held = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT COUNT(*) FROM hopper WHERE inflight_attempt_id IS NOT NULL",
        )
        .fetch_one(daemon.store.pool())
        .await
        .unwrap()
    };
    while held().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the claimed rows were never given back"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let sent = sim.ledger_len();
    let unsent: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM hopper WHERE state = 'fresh' AND attempts = 0")
            .fetch_one(daemon.store.pool())
            .await
            .unwrap();
    assert_eq!(
        unsent as usize,
        30 - sent,
        "unsent rows are fresh, no attempt spent"
    );
    (db, daemon, sent_at_pause, sent)
}

/// A pause through the admin API takes effect at once: the rows the line had claimed are
/// given back unsent instead of being paced out, and a resume sends each contact once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_through_the_api_holds_back_rows_already_claimed() {
    let (_db, daemon, sent_at_pause, sent) = pause_after_the_first_send(true).await;
    // At most a send already on its way and one the pacer released as the pause arrived.
    assert!(
        sent <= sent_at_pause + 2,
        "{sent} templates sent, {sent_at_pause} when the pause was answered: the line kept \
         sending the rows it had claimed"
    );

    let api = Api::new(&daemon);
    let (status, body) = api.post("/api/campaigns/api-c/resume").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    api.wait_for("/api/campaigns/api-c", "every contact sent", |b| {
        b["hopper"]["pending"] == 30
    })
    .await;
    let ledger = daemon.simulator.as_ref().unwrap().ledger();
    let phones: std::collections::BTreeSet<_> = ledger.iter().map(|e| e.to.clone()).collect();
    assert_eq!(
        (ledger.len(), phones.len()),
        (30, 30),
        "each contact sent once"
    );
    daemon.shutdown().await;
}

/// A pause made by another process reaches the line at its next campaign refresh (0.5 s), in
/// the middle of the second-long batch: the rest of the batch is given back, not sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pause_from_another_process_holds_back_the_rest_of_the_batch() {
    let (_db, daemon, _, sent) = pause_after_the_first_send(false).await;
    assert!(
        sent <= 8,
        "{sent} of the 10 claimed rows were sent: the line sent its whole batch after the pause"
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_refuses_bad_files_with_the_line() {
    let db = fresh_db().await;
    let (daemon, _) = start_daemon(&api_config(&db.url, true), everyone_reads).await;
    let api = Api::new(&daemon);
    let (status, body) = api
        .post_raw(
            "/api/lists/api-l/import",
            "text/csv",
            "name,plan\nAna,gold\n",
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_csv")
    );
    assert!(message(&body).contains("line 1"), "{body}");
    assert!(message(&body).contains("no phone column"), "{body}");
    let (status, body) = api
        .post_raw("/api/lists/api-l/import", "text/csv", "")
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api
        .post_raw("/api/lists/api-l/import", "application/json", "{}")
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type")
    );
    let (status, body) = api
        .post_raw(
            "/api/lists/api-l/import?default_country=XX",
            "text/csv",
            CSV,
        )
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_option")
    );
    let (status, body) = api
        .post_raw("/api/lists/api-l/import?opt_in=perhaps", "text/csv", CSV)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_query")
    );
    // The report's forged bodies: one 30 MiB row of commas, an 8 MB header of 1M columns.
    // Both are refused by line before the parser holds them.
    let commas = format!("phone,name\n+5511970001001,{}\n", ",".repeat(30 << 20));
    let (status, body) = api
        .post_raw("/api/lists/api-l/import", "text/csv", &commas)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_csv")
    );
    assert!(
        message(&body).contains("line 2: the row has more than 1000 columns"),
        "{body}"
    );
    let header = format!("phone{}\n+5511970001001\n", ",column".repeat(1 << 20));
    let (status, body) = api
        .post_raw("/api/lists/api-l/import", "text/csv", &header)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_csv")
    );
    assert!(
        message(&body).contains("line 1: the header has more than 1000 columns"),
        "{body}"
    );
    let over = "x".repeat(tiercast::api::IMPORT_BODY_LIMIT + 1);
    let (status, body) = api
        .post_raw("/api/lists/api-l/import", "text/csv", &over)
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    // Nothing was written by the refused files: the campaign still cannot start.
    let (status, body) = api.post("/api/campaigns/api-c/start").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::CONFLICT, "not_startable")
    );

    // A CSV body far above the JSON limit is fine; its huge field is a rejected row.
    let big = format!(
        "phone,note\n+5511970001001,short\n+5511970001002,{}\n",
        "x".repeat(100 * 1024)
    );
    let (status, body) = api
        .post_raw("/api/lists/api-l/import", "text/csv", &big)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (&body["imported"], &body["invalid"]),
        (&json!(1), &json!(1))
    );
    assert_eq!(body["rejected"][0]["line"], 3);
    assert!(
        body["rejected"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("bytes"),
        "{body}"
    );
    daemon.shutdown().await;
}

/// The store's read models behind the API, on both backends.
async fn store_read_models(db: TestDb) {
    use tiercast::clock::Clock;
    use tiercast::domain::Outcome;
    use tiercast::import::{import, BytesSource, ImportOptions};
    let csv = "phone,name\n+5511970003001,A\n+5511970003002,B\n+5511970003003,C\n";
    let options = ImportOptions {
        list: "l".into(),
        default_country: None,
        opt_in: false,
        batch_size: 100,
        progress: false,
    };
    let source = BytesSource {
        name: "t.csv".into(),
        bytes: csv.as_bytes(),
    };
    import(&db.store, &db.clock, &source, &options)
        .await
        .unwrap();
    let now = db.clock.now_millis();
    let c = db.store.ensure_campaign("c", now).await.unwrap();
    db.store
        .load_hopper(c.id, "main", &["l".to_string()], false, now)
        .await
        .unwrap();
    // Two of the three were sent a template, one of them more than 24 h ago.
    for (phone, sent_at) in [
        ("+5511970003001", now - 1000),
        ("+5511970003002", now - 25 * 3600 * 1000),
    ] {
        sqlx::query("UPDATE hopper SET sent_at = $1, state = 'pending' WHERE contact_id IN (SELECT id FROM contacts WHERE phone = $2)")
            .bind(sent_at)
            .bind(phone)
            .execute(db.store.pool())
            .await
            .unwrap();
    }
    let day = 24 * 3600 * 1000;
    let main = ["main".to_string()];
    assert_eq!(
        db.store.recipients_since(&main, now - day).await.unwrap(),
        1
    );
    assert_eq!(
        db.store
            .recipients_since(&main, now - 2 * day)
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        db.store
            .recipients_since(&["other".to_string()], 0)
            .await
            .unwrap(),
        0
    );
    assert_eq!(db.store.recipients_since(&[], 0).await.unwrap(), 0);

    let contact = db
        .store
        .contact_by_phone("+5511970003001")
        .await
        .unwrap()
        .unwrap();
    let rows = db.store.contact_campaign_rows(contact.id).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].campaign.as_str(), rows[0].state.as_str()),
        ("c", "pending")
    );
    assert_eq!(rows[0].sent_at, Some(now - 1000));

    assert!(db
        .store
        .opt_out_of("+5511970003001")
        .await
        .unwrap()
        .is_none());
    db.store
        .add_opt_out("+5511970003001", "r1", "api", now)
        .await
        .unwrap();
    db.store
        .add_opt_out("+5511970003002", "r2", "keyword", now + 1)
        .await
        .unwrap();
    db.store
        .close_open_rows_of_phone("+5511970003001", Outcome::OptedOut, now)
        .await
        .unwrap();
    let o = db
        .store
        .opt_out_of("+5511970003001")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((o.reason.as_str(), o.source.as_str()), ("r1", "api"));
    let (page, total) = db.store.opt_outs_page(1, 0).await.unwrap();
    assert_eq!((page.len(), total), (1, 2));
    assert_eq!(page[0].phone, "+5511970003002", "newest first");
    let (page, _) = db.store.opt_outs_page(10, 1).await.unwrap();
    assert_eq!(page[0].phone, "+5511970003001");
    let rows = db.store.contact_campaign_rows(contact.id).await.unwrap();
    assert_eq!(rows[0].outcome.as_deref(), Some("opted_out"));
}
crate::both_backends!(store_read_models);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_and_opt_outs() {
    let db = fresh_db().await;
    let (daemon, _) = start_daemon(&api_config(&db.url, true), everyone_reads).await;
    let api = Api::new(&daemon);
    let (status, _) = api
        .post_raw("/api/lists/api-l/import", "text/csv", CSV)
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api.post("/api/campaigns/api-c/start").await;
    assert_eq!(status, StatusCode::OK);
    api.wait_for("/api/campaigns/api-c", "all read", |b| b["read"] == 3)
        .await;

    // The contact, its fields, lists and its row in the campaign (digits without '+' work).
    let (status, c) = api.get("/api/contacts/5511970001002").await;
    assert_eq!(status, StatusCode::OK, "{c}");
    assert_eq!(
        (&c["phone"], &c["name"]),
        (&json!("+5511970001002"), &json!("Bruno"))
    );
    assert_eq!(c["fields"], json!({"plan": "silver"}));
    assert_eq!(c["lists"], json!(["api-l"]));
    assert_eq!(
        (&c["opted_out"], &c["opt_out"]),
        (&json!(false), &Value::Null)
    );
    let rows = c["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{c}");
    assert_eq!(
        (
            &rows[0]["campaign"],
            &rows[0]["state"],
            &rows[0]["message_status"]
        ),
        (&json!("api-c"), &json!("pending"), &json!("read"))
    );
    assert!(
        rows[0]["wamid"].is_string() && rows[0]["sent_at"].is_string(),
        "{c}"
    );

    // Opting out through the API closes its open row.
    let (status, body) = api
        .post_json(
            "/api/optouts",
            &json!({"phone": "+55 11 97000-1002", "reason": "asked by phone"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (&body["added"], &body["closed_rows"]),
        (&json!(true), &json!(1))
    );
    assert_eq!(body["optout"]["phone"], "+5511970001002");
    assert_eq!(body["optout"]["source"], "api");
    let (_, c) = api.get("/api/contacts/+5511970001002").await;
    assert_eq!(c["opted_out"], true);
    assert_eq!(c["opt_out"]["reason"], "asked by phone");
    assert_eq!(
        (&c["rows"][0]["state"], &c["rows"][0]["outcome"]),
        (&json!("closed"), &json!("opted_out"))
    );
    let (_, s) = api.get("/api/campaigns/api-c").await;
    assert_eq!(s["outcomes"]["opted_out"], 1);
    // Again: already on the list, first reason kept.
    let (status, body) = api
        .post_json(
            "/api/optouts",
            &json!({"phone": "+5511970001002", "reason": "other"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (&body["added"], &body["optout"]["reason"]),
        (&json!(false), &json!("asked by phone"))
    );
    // A number that is no contact can be opted out too.
    let (status, _) = api
        .post_json("/api/optouts", &json!({"phone": "+5511970009999"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let (status, list) = api.get("/api/optouts").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 2);
    let phones: Vec<&str> = list["optouts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["phone"].as_str().unwrap())
        .collect();
    assert!(phones.contains(&"+5511970001002") && phones.contains(&"+5511970009999"));
    let (_, page) = api.get("/api/optouts?limit=1&offset=1").await;
    assert_eq!(page["optouts"].as_array().unwrap().len(), 1);
    let (status, _) = api.get("/api/optouts?limit=0").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = api.delete("/api/optouts/+5511970001002").await;
    assert_eq!((status, &body["removed"]), (StatusCode::OK, &json!(true)));
    let (status, body) = api.delete("/api/optouts/+5511970001002").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "not_opted_out")
    );
    let (_, c) = api.get("/api/contacts/+5511970001002").await;
    assert_eq!(c["opted_out"], false);

    // Bad input.
    let (status, body) = api
        .post_raw("/api/optouts", "application/json", "{\"phone\": ")
        .await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_json")
    );
    let (status, body) = api.post_json("/api/optouts", &json!({"phone": 5511})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(message(&body).contains("phone"), "names the field: {body}");
    let (status, body) = api
        .post_json(
            "/api/optouts",
            &json!({"phone": "+5511970001002", "why": "x"}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        message(&body).contains("why"),
        "names the unknown field: {body}"
    );
    let (status, body) = api.post_json("/api/optouts", &json!({"phone": "12"})).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_phone")
    );
    let (status, body) = api.get("/api/contacts/+5511970007777").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::NOT_FOUND, "unknown_contact")
    );
    let (status, body) = api.get("/api/contacts/garbage").await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::BAD_REQUEST, "bad_phone")
    );
    let huge = json!({"phone": "+5511970001002", "reason": "x".repeat(100 * 1024)});
    let (status, body) = api.post_json("/api/optouts", &huge).await;
    assert_eq!(
        (status, error_code(&body)),
        (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
    );
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_document_describes_the_api() {
    let db = fresh_db().await;
    let (daemon, _) = start_daemon(&api_config(&db.url, true), everyone_reads).await;
    let api = Api::new(&daemon);
    let (status, doc) = api.get("/api/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/campaigns",
        "/api/campaigns/{name}",
        "/api/campaigns/{name}/start",
        "/api/campaigns/{name}/pause",
        "/api/campaigns/{name}/resume",
        "/api/campaigns/{name}/stop",
        "/api/lists/{name}/import",
        "/api/contacts/{phone}",
        "/api/templates",
        "/api/tiers",
        "/api/optouts",
        "/api/optouts/{phone}",
        "/api/interactions",
        "/api/interactions/{id}",
        "/api/interactions/{id}/reply",
        "/api/interactions/{id}/recontact",
        "/api/interactions/{id}/tags",
        "/api/interactions/{id}/close",
        "/api/openapi.json",
    ] {
        assert!(paths.contains_key(p), "{p} is not documented");
    }
    // Every local $ref resolves.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|v| refs(v, out));
            }
            Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("non-local $ref {r}"));
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
    }
    daemon.shutdown().await;
}
