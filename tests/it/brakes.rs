//! Campaign safety (issue 22): who a send failure is blamed on, `max_attempts` across resumes,
//! the `max_failure_rate` brake, and Meta's held statuses. The provider is a fake Cloud API
//! written with wiremock from Meta's documented answers (not the built-in simulator), told per
//! recipient what to answer; the dispatcher is driven pass by pass on a manual clock, on both
//! backends.

use crate::both_backends;
use crate::helpers::{config, import_csv, TestDb};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tiercast::clock::{Clock, SharedClock};
use tiercast::config::Config;
use tiercast::dispatch::{Dispatcher, PassReport};
use tiercast::domain::template::TemplateDef;
use tiercast::domain::{CampaignCommand, CampaignState};
use tiercast::inbox::Inbox;
use tiercast::outcomes::Outcomes;
use wiremock::matchers::{method, path};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

/// What the fake Cloud API answers a send.
#[derive(Clone, Debug)]
enum Answer {
    Accept,
    /// Accepted, with this `message_status` (`held_for_quality_assessment`, `paused`).
    AcceptAs(&'static str),
    /// A Graph error envelope with this HTTP status and code.
    Error(u16, i64, &'static str),
}

#[derive(Default)]
struct Script {
    default: Option<Answer>,
    by_recipient: HashMap<String, Answer>,
    /// Recipients in the order their sends arrived.
    tried: Vec<String>,
}

struct Rig {
    _server: MockServer,
    script: Arc<Mutex<Script>>,
    config: Arc<Config>,
    dispatcher: Dispatcher,
    inbox: Inbox,
    phones: Vec<String>,
}

fn answer(a: &Answer, to: &str, n: u64) -> ResponseTemplate {
    let accepted = |status: Option<&str>| {
        let mut message = json!({ "id": format!("wamid.FAKE{n}") });
        if let Some(s) = status {
            message["message_status"] = json!(s);
        }
        ResponseTemplate::new(200).set_body_json(json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": to, "wa_id": to }],
            "messages": [message],
        }))
    };
    match a {
        Answer::Accept => accepted(None),
        Answer::AcceptAs(s) => accepted(Some(s)),
        Answer::Error(http, code, message) => ResponseTemplate::new(*http).set_body_json(json!({
            "error": { "message": message, "type": "OAuthException", "code": code,
                       "fbtrace_id": "AFakeTrace" }
        })),
    }
}

impl Rig {
    async fn new(db: &TestDb, contacts: usize, campaign_keys: &str) -> Rig {
        // The process-wide recorder, so the metrics of these passes can be read back.
        tiercast::serve::metrics_handle();
        let server = MockServer::start().await;
        let script = Arc::new(Mutex::new(Script {
            default: Some(Answer::Accept),
            ..Script::default()
        }));
        let counter = Arc::new(AtomicU64::new(0));
        let s = script.clone();
        Mock::given(method("POST"))
            .and(path("/v23.0/pn1/messages"))
            .respond_with(move |req: &Request| {
                let body: Value = serde_json::from_slice(&req.body).unwrap();
                let to = body["to"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches('+')
                    .to_string();
                let mut script = s.lock().unwrap();
                script.tried.push(to.clone());
                let a = script
                    .by_recipient
                    .get(&to)
                    .or(script.default.as_ref())
                    .cloned()
                    .unwrap();
                answer(&a, &to, counter.fetch_add(1, Ordering::SeqCst))
            })
            .mount(&server)
            .await;
        let config = Arc::new(config(&format!(
            r#"
[server]
database_url = "{}"

[[lines]]
name = "main"
provider = "simulator"
tier = "unlimited"
phone_number_id = "pn1"
api_base = "{}/v23.0"
throughput_mps = 1000
max_in_flight = 8

[[campaigns]]
name = "c"
line = "main"
template = {{ name = "promo", language = "en" }}
lists = ["l"]
{campaign_keys}
"#,
            db.url,
            server.uri()
        )));
        let template: TemplateDef = serde_json::from_value(json!({
            "name": "promo", "language": "en", "category": "MARKETING", "status": "APPROVED",
            "components": [{ "type": "BODY", "text": "Our new plans are out." }]
        }))
        .unwrap();
        db.store
            .replace_templates("main", &[template], db.clock.now_millis())
            .await
            .unwrap();
        let phones: Vec<String> = (0..contacts)
            .map(|i| format!("5511990{:06}", 100 + i))
            .collect();
        let mut csv = String::from("phone,name\n");
        for (i, p) in phones.iter().enumerate() {
            csv.push_str(&format!("+{p},Person {i}\n"));
        }
        import_csv(&db.store, &db.clock, "l", &csv).await;
        let clock: SharedClock = Arc::new(db.clock.clone());
        let lines = Arc::new(tiercast::lines::build(&config, None).unwrap());
        let outcomes = Outcomes::new(db.store.clone(), clock.clone(), config.clone());
        let dispatcher = Dispatcher::new(
            db.store.clone(),
            clock.clone(),
            config.clone(),
            lines.clone(),
            outcomes.clone(),
        );
        let inbox = Inbox::new(db.store.clone(), clock, config.clone(), lines, outcomes);
        let rig = Rig {
            _server: server,
            script,
            config,
            dispatcher,
            inbox,
            phones,
        };
        rig.command(db, CampaignCommand::Start).await;
        rig
    }

    fn answer_all(&self, a: Answer) {
        self.script.lock().unwrap().default = Some(a);
    }

    fn answer_for(&self, phone: &str, a: Answer) {
        self.script
            .lock()
            .unwrap()
            .by_recipient
            .insert(phone.to_string(), a);
    }

    fn tries_of(&self, phone: &str) -> usize {
        let script = self.script.lock().unwrap();
        script.tried.iter().filter(|p| *p == phone).count()
    }

    fn tries(&self) -> usize {
        self.script.lock().unwrap().tried.len()
    }

    async fn command(&self, db: &TestDb, cmd: CampaignCommand) {
        tiercast::campaign::command(&db.store, &db.clock, &self.config, "c", cmd)
            .await
            .unwrap();
    }

    async fn pass(&self, limit: usize) -> PassReport {
        self.dispatcher.dispatch_once("main", limit).await.unwrap()
    }

    async fn status(&self, db: &TestDb) -> tiercast::campaign::CampaignStatus {
        tiercast::campaign::status(
            &db.store,
            &db.clock,
            &self.config,
            self.config.campaign("c").unwrap(),
        )
        .await
        .unwrap()
    }

    /// (state, outcome, last error code, attempts) of a contact's row.
    async fn row(&self, db: &TestDb, phone: &str) -> (String, Option<String>, Option<i64>, i64) {
        let r = sqlx::query_as::<_, (String, Option<String>, Option<i64>, i64)>(
            "SELECT h.state, h.outcome, h.last_error_code, h.attempts FROM hopper h \
             JOIN contacts c ON c.id = h.contact_id WHERE c.phone = $1",
        )
        .bind(format!("+{phone}"))
        .fetch_one(db.store.pool())
        .await
        .unwrap();
        r
    }

    async fn contact_id(&self, db: &TestDb, phone: &str) -> i64 {
        sqlx::query_scalar("SELECT id FROM contacts WHERE phone = $1")
            .bind(format!("+{phone}"))
            .fetch_one(db.store.pool())
            .await
            .unwrap()
    }

    /// A Meta status webhook for the message sent to `phone`.
    async fn status_webhook(&self, db: &TestDb, phone: &str, status: &str, code: Option<i64>) {
        let wamid: String = sqlx::query_scalar(
            "SELECT h.wamid FROM hopper h JOIN contacts c ON c.id = h.contact_id WHERE c.phone = $1",
        )
        .bind(format!("+{phone}"))
        .fetch_one(db.store.pool())
        .await
        .unwrap();
        let mut st = json!({
            "id": wamid, "status": status,
            "timestamp": (db.clock.now_millis() / 1000).to_string(),
            "recipient_id": phone,
        });
        if let Some(code) = code {
            st["errors"] = json!([{ "code": code, "title": "Message undeliverable" }]);
        }
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [{ "id": "waba", "changes": [{ "field": "messages", "value": {
                "messaging_product": "whatsapp",
                "metadata": { "display_phone_number": "15550000000", "phone_number_id": "pn1" },
                "statuses": [st]
            }}]}]
        });
        let events = tiercast::webhook::parse_meta_webhook(body.to_string().as_bytes()).unwrap();
        self.inbox.apply(&events).await.unwrap();
    }
}

/// Meta answers 400 code 100 ("Invalid parameter") for one contact only: that contact closes
/// `failed` with the code, after one try; the campaign keeps running and every other contact
/// is sent.
async fn one_poison_contact_closes_failed_and_the_others_are_sent(db: TestDb) {
    let rig = Rig::new(&db, 30, "").await;
    let poison = rig.phones[3].clone();
    rig.answer_for(&poison, Answer::Error(400, 100, "(#100) Invalid parameter"));
    for _ in 0..10 {
        if rig.pass(10).await.claimed == 0 {
            break;
        }
    }
    let s = rig.status(&db).await;
    assert_eq!(s.state, CampaignState::Running, "{s:?}");
    assert_eq!(s.paused_reason, None);
    assert_eq!(
        rig.row(&db, &poison).await,
        ("closed".into(), Some("failed".into()), Some(100), 1)
    );
    assert_eq!(
        (s.hopper["pending"], s.outcomes["failed"]),
        (29, 1),
        "{s:?}"
    );
    assert_eq!(rig.tries_of(&poison), 1);
    assert_eq!(rig.tries(), 30);
}
both_backends!(one_poison_contact_closes_failed_and_the_others_are_sent);

/// The same request-shaped code on `pause_after_same_error` distinct contacts in a row is the
/// payload's fault: the campaign pauses naming the code and the contacts, which are closed, so
/// the resume goes on with the next contacts and never tries those again.
async fn the_same_request_error_on_distinct_contacts_pauses_and_resume_skips_them(db: TestDb) {
    let rig = Rig::new(&db, 8, "pause_after_same_error = 3").await;
    rig.answer_all(Answer::Error(
        400,
        131009,
        "(#131009) Parameter value is not valid",
    ));
    let mut passes = 0;
    while rig.status(&db).await.state == CampaignState::Running {
        passes += 1;
        assert!(passes <= 8, "never paused");
        rig.pass(1).await;
    }
    assert_eq!(passes, 3, "paused at the third contact in a row");
    let s = rig.status(&db).await;
    let reason = s.paused_reason.clone().unwrap();
    let third = rig.contact_id(&db, &rig.phones[2]).await;
    assert!(reason.contains("error 131009"), "{reason}");
    assert!(reason.contains("last 3 distinct contacts"), "{reason}");
    assert!(reason.contains(&format!("contact {third}")), "{reason}");
    assert_eq!((s.outcomes["failed"], s.hopper["fresh"]), (3, 5), "{s:?}");

    // Fixed; resumed: the next five are sent, the three failed ones are not tried again.
    rig.answer_all(Answer::Accept);
    rig.command(&db, CampaignCommand::Resume).await;
    let report = rig.pass(10).await;
    assert_eq!(report.accepted, 5, "{report:?}");
    for p in &rig.phones {
        assert_eq!(rig.tries_of(p), 1, "{p}");
    }
    let s = rig.status(&db).await;
    assert_eq!(s.state, CampaignState::Running, "{s:?}");
}
both_backends!(the_same_request_error_on_distinct_contacts_pauses_and_resume_skips_them);

/// A request-shaped error that is not repeated on the next contacts stays the contact's: an
/// accepted send between two 100s resets the run.
async fn request_errors_apart_do_not_pause(db: TestDb) {
    let rig = Rig::new(&db, 6, "pause_after_same_error = 2").await;
    for i in [0, 2, 4] {
        rig.answer_for(
            &rig.phones[i],
            Answer::Error(400, 100, "(#100) Invalid parameter"),
        );
    }
    for _ in 0..6 {
        rig.pass(1).await;
    }
    let s = rig.status(&db).await;
    assert_eq!(s.state, CampaignState::Running, "{s:?}");
    assert_eq!((s.outcomes["failed"], s.hopper["pending"]), (3, 3), "{s:?}");
}
both_backends!(request_errors_apart_do_not_pause);

/// Request-shaped errors also arrive in `failed` status webhooks (131053, media could not be
/// fetched): the same rule, in send order. The last three sends failing so pause the campaign;
/// their rows are closed `failed`, the earlier ones stay pending.
async fn request_errors_in_status_webhooks_follow_the_same_rule(db: TestDb) {
    let rig = Rig::new(&db, 5, "pause_after_same_error = 3").await;
    assert_eq!(rig.pass(10).await.accepted, 5);
    for (i, phone) in rig.phones.iter().enumerate().skip(2) {
        assert_eq!(
            rig.status(&db).await.state,
            CampaignState::Running,
            "paused before the third failure ({i})"
        );
        rig.status_webhook(&db, phone, "failed", Some(131053)).await;
    }
    let s = rig.status(&db).await;
    assert_eq!(s.state, CampaignState::Paused, "{s:?}");
    assert!(
        s.paused_reason
            .as_deref()
            .unwrap()
            .contains("(error 131053) on the last 3 distinct contacts"),
        "{s:?}"
    );
    assert_eq!((s.outcomes["failed"], s.hopper["pending"]), (3, 2), "{s:?}");
}
both_backends!(request_errors_in_status_webhooks_follow_the_same_rule);

/// An error that is always the campaign's (190, token expired) pauses at once and leaves the
/// contact due, but the try counts: however often the campaign is resumed, no contact is tried
/// more than `max_attempts` times; it ends `exhausted`.
async fn campaign_errors_count_against_max_attempts_across_resumes(db: TestDb) {
    let rig = Rig::new(&db, 3, "max_attempts = 2").await;
    rig.answer_all(Answer::Error(401, 190, "Error validating access token"));
    for _ in 0..8 {
        rig.pass(1).await;
        let s = rig.status(&db).await;
        if s.state == CampaignState::Paused {
            assert!(s.paused_reason.as_deref().unwrap().contains("190"), "{s:?}");
            rig.command(&db, CampaignCommand::Resume).await;
        }
    }
    for p in &rig.phones {
        assert_eq!(rig.tries_of(p), 2, "{p}");
        assert_eq!(
            rig.row(&db, p).await,
            ("closed".into(), Some("exhausted".into()), Some(190), 2)
        );
    }
    assert_eq!(rig.tries(), 6);
}
both_backends!(campaign_errors_count_against_max_attempts_across_resumes);

/// `max_failure_rate = 0.2` and every send refused as undeliverable (131026): the campaign
/// pauses once the window holds its minimum of settled sends, with the rate and the window in
/// the reason; it does not run through the list and complete.
async fn max_failure_rate_pauses_a_campaign_whose_sends_fail(db: TestDb) {
    let rig = Rig::new(&db, 30, "max_failure_rate = 0.2").await;
    rig.answer_all(Answer::Error(400, 131026, "Message undeliverable"));
    for _ in 0..10 {
        if rig.pass(5).await.claimed == 0 {
            break;
        }
    }
    let s = rig.status(&db).await;
    assert_eq!(s.state, CampaignState::Paused, "{s:?}");
    let reason = s.paused_reason.clone().unwrap();
    assert!(
        reason.contains("failure rate 100.0% (20 of the last 20 settled sends)"),
        "{reason}"
    );
    assert!(reason.contains("max_failure_rate 20.0%"), "{reason}");
    assert!(metric("tiercast_campaign_failure_rate", &[("campaign", "c")]).is_some());
    assert_eq!((s.outcomes["failed"], s.hopper["fresh"]), (20, 10), "{s:?}");
    assert_eq!(rig.tries(), 20);
}
both_backends!(max_failure_rate_pauses_a_campaign_whose_sends_fail);

/// Failed status webhooks (131026 after acceptance) count too, and below the rate nothing
/// pauses: 25 accepted, then failures arrive one by one; the 13th makes it 52 % > 50 %.
async fn failed_status_webhooks_count_against_max_failure_rate(db: TestDb) {
    let rig = Rig::new(&db, 25, "max_failure_rate = 0.5").await;
    assert_eq!(rig.pass(30).await.accepted, 25);
    for (i, phone) in rig.phones.iter().take(13).enumerate() {
        assert_eq!(
            rig.status(&db).await.state,
            CampaignState::Running,
            "paused after only {i} failures"
        );
        rig.status_webhook(&db, phone, "failed", Some(131026)).await;
    }
    let s = rig.status(&db).await;
    assert_eq!(s.state, CampaignState::Paused, "{s:?}");
    let reason = s.paused_reason.unwrap();
    assert!(
        reason.contains("failure rate 52.0% (13 of the last 25 settled sends)"),
        "{reason}"
    );
}
both_backends!(failed_status_webhooks_count_against_max_failure_rate);

/// Meta's answer says `held_for_quality_assessment` or `paused` (template pacing): the row
/// records it, `campaign status` and the report show it, and a later `sent` moves it on.
async fn held_statuses_from_the_send_answer_are_recorded_and_shown(db: TestDb) {
    let rig = Rig::new(&db, 3, "").await;
    rig.answer_for(
        &rig.phones[0],
        Answer::AcceptAs("held_for_quality_assessment"),
    );
    rig.answer_for(&rig.phones[1], Answer::AcceptAs("paused"));
    rig.answer_for(&rig.phones[2], Answer::AcceptAs("accepted"));
    assert_eq!(rig.pass(10).await.accepted, 3);
    let s = rig.status(&db).await;
    assert_eq!(
        (s.sent, s.held_for_quality_assessment, s.paused_by_meta),
        (3, 1, 1),
        "{s:?}"
    );
    let campaign_id = db.store.campaign_by_name("c").await.unwrap().unwrap().id;
    let mut statuses = HashMap::new();
    db.store
        .report_rows(campaign_id, |r| {
            statuses.insert(r.phone.clone(), r.message_status.clone());
            Ok(())
        })
        .await
        .unwrap();
    let status_of = |i: usize| statuses[&format!("+{}", rig.phones[i])].clone();
    assert_eq!(
        (status_of(0), status_of(1), status_of(2)),
        (
            Some("held_for_quality_assessment".into()),
            Some("paused".into()),
            Some("accepted".into())
        )
    );
    for status in ["held_for_quality_assessment", "paused"] {
        let n = metric(
            "tiercast_message_status_total",
            &[("line", "main"), ("status", status)],
        );
        assert!(n.is_some_and(|n| n >= 1.0), "{status}: {n:?}");
    }
    // Meta releases the held message.
    rig.status_webhook(&db, &rig.phones[0], "sent", None).await;
    let s = rig.status(&db).await;
    assert_eq!(
        (s.sent, s.held_for_quality_assessment, s.paused_by_meta),
        (3, 0, 1),
        "{s:?}"
    );
}
both_backends!(held_statuses_from_the_send_answer_are_recorded_and_shown);

/// A running campaign that does not send says why: outside its hours (until when), contacts
/// waiting for the tier (next slot at), contacts held by another campaign's pending rows.
async fn a_running_campaign_that_does_not_send_says_why(db: TestDb) {
    let rig = Rig::new(
        &db,
        3,
        r#"time_group = "night"

[[campaigns]]
name = "c2"
line = "main"
template = { name = "promo", language = "en" }
lists = ["l"]

[[time_groups]]
name = "night"
timezone = "UTC"
windows = [ { days = "mon-sun", from = "01:00", to = "02:00" } ]
"#,
    )
    .await;
    // 12:00 UTC: the night window opens at 01:00 tomorrow; nothing is claimed.
    assert_eq!(rig.pass(10).await.claimed, 0);
    let s = rig.status(&db).await;
    assert_eq!(s.state, CampaignState::Running);
    let why = &s.not_sending;
    assert_eq!(why.len(), 1, "{why:?}");
    assert_eq!(why[0].reason, "outside_hours");
    assert_eq!(why[0].until.as_deref(), Some("2026-11-24T01:00:00.000Z"));
    assert_eq!(
        why[0].message,
        "outside its hours until 2026-11-24T01:00:00.000Z"
    );
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["not_sending"][0]["reason"], "outside_hours");

    // c2 (no time group) sends everyone; c, once open, finds them all pending on c2.
    tiercast::campaign::command(
        &db.store,
        &db.clock,
        &rig.config,
        "c2",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    assert_eq!(rig.pass(10).await.accepted, 3);
    db.clock
        .advance(std::time::Duration::from_secs(13 * 3600 + 60));
    assert_eq!(rig.pass(10).await.claimed, 0);
    let s = rig.status(&db).await;
    let why = &s.not_sending;
    assert_eq!(why.len(), 1, "{why:?}");
    assert_eq!(
        (why[0].reason, why[0].contacts),
        ("held_by_open_interactions", Some(3))
    );
    assert!(why[0]
        .message
        .starts_with("3 contacts held by an open interaction on line main"));

    // Rows the tier budget held back wait for their slot (as `claim_due` leaves them).
    let slot = db.clock.now_millis() + 3_600_000;
    sqlx::query("UPDATE hopper SET waiting_for_tier = 1, next_attempt_at = $1 WHERE campaign_id = (SELECT id FROM campaigns WHERE name = 'c')")
        .bind(slot)
        .execute(db.store.pool())
        .await
        .unwrap();
    let s = rig.status(&db).await;
    let why = &s.not_sending;
    assert_eq!(why.len(), 1, "{why:?}");
    assert_eq!(
        (why[0].reason, why[0].contacts, why[0].until.as_deref()),
        (
            "waiting_for_tier",
            Some(3),
            Some("2026-11-24T02:01:00.000Z")
        )
    );
    assert!(
        why[0]
            .message
            .contains("next slot at 2026-11-24T02:01:00.000Z"),
        "{}",
        why[0].message
    );
}
both_backends!(a_running_campaign_that_does_not_send_says_why);

/// The value of the first sample of `name` whose labels include every one of `labels`, in
/// the process-wide recorder's rendering (other tests of this process add to it too).
fn metric(name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let text = tiercast::serve::metrics_handle().unwrap().render();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// A `ramp` campaign's held rows wait for the ramp's cap (Meta's next upgrade), and say so.
async fn a_ramp_campaign_held_by_its_cap_says_it_waits_for_the_ramp(db: TestDb) {
    let rig = Rig::new(&db, 2, "ramp = true").await;
    let slot = db.clock.now_millis() + 600_000;
    sqlx::query("UPDATE hopper SET waiting_for_tier = 1, next_attempt_at = $1")
        .bind(slot)
        .execute(db.store.pool())
        .await
        .unwrap();
    assert_eq!(rig.pass(10).await.claimed, 0);
    let why = rig.status(&db).await.not_sending;
    assert_eq!(why.len(), 1, "{why:?}");
    assert_eq!(
        (why[0].reason, why[0].contacts, why[0].until.as_deref()),
        (
            "waiting_for_ramp",
            Some(2),
            Some("2026-11-23T12:10:00.000Z")
        )
    );
}
both_backends!(a_ramp_campaign_held_by_its_cap_says_it_waits_for_the_ramp);
