//! The built-in WhatsApp Cloud API simulator (an axum app) used by `tiercast demo`,
//! `tiercast simulate`, tests and benchmarks — never by production paths.
//!
//! It owns a faithful-enough fake of Meta's send path (reference §7): routing and bearer auth,
//! the Graph error envelope with real codes, template lookup and parameter validation, a
//! per-number throughput bucket (130429), deterministic per-recipient fates, a ledger of every
//! accepted message, signed status webhooks (batched, duplicated, reordered, retried), inbound
//! injection with the 24 h customer-service window, mark-as-read and template listing with
//! cursor paging.
//!
//! The accept path holds only short std mutexes (never across an await) and takes wamids from
//! an atomic counter, because throughput benchmarks drive it at thousands of requests/s.

mod delivery;
pub mod fate;
pub mod faults;
pub mod graph_error;
pub mod gupshup;
pub mod templates;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use rand::distributions::Alphanumeric;
use rand::Rng;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::clock::{Clock, SharedClock};
use delivery::{lock, DeliveryStats, Job, QueuedStatus, Target, Tracker};
pub use fate::{Fate, FateMix};
pub use faults::{FaultStats, SimFaults};
pub use graph_error::GraphError;
pub use gupshup::{gupshup_template_id, SimGupshupApp};
pub use templates::{
    demo_templates, load_templates, SimTemplate, TemplateButton, TemplateComponent,
};

/// One simulated business phone number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimLine {
    pub phone_number_id: String,
    pub waba_id: String,
    pub access_token: String,
    /// Signs the webhooks of this line (`X-Hub-Signature-256`).
    pub app_secret: String,
    /// Messages per second; 0 or `u32::MAX` = unlimited.
    pub throughput_mps: u32,
    pub display_phone_number: String,
}

impl Default for SimLine {
    fn default() -> Self {
        SimLine {
            phone_number_id: "106540352242922".into(),
            waba_id: "102290129340398".into(),
            access_token: "sim-access-token".into(),
            app_secret: "sim-app-secret".into(),
            throughput_mps: 80,
            display_phone_number: "15550783881".into(),
        }
    }
}

/// How status webhooks are delivered.
#[derive(Debug, Clone, PartialEq)]
pub struct WebhookMode {
    /// Most statuses per POST (Meta: up to 1000).
    pub batch_max: usize,
    /// Share of delivered statuses posted a second time (0.0–1.0).
    pub duplicate_ratio: f64,
    /// Shuffle messages within a batch and post each message's statuses newest first.
    pub reorder: bool,
    /// How long statuses wait to be batched.
    pub flush_interval: Duration,
    /// Retry non-200 answers with backoff (else one attempt).
    pub retry_on_failure: bool,
    /// Attempts per POST when retrying (stands in for Meta's 7 days).
    pub max_attempts: u32,
    /// First retry delay; doubles each attempt up to `retry_backoff_max`.
    pub retry_backoff: Duration,
    /// Longest delay between two tries of one POST (30 s by default).
    pub retry_backoff_max: Duration,
}

impl Default for WebhookMode {
    fn default() -> Self {
        WebhookMode {
            batch_max: 100,
            duplicate_ratio: 0.0,
            reorder: false,
            flush_interval: Duration::from_millis(50),
            retry_on_failure: true,
            max_attempts: 5,
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub phone_numbers: Vec<SimLine>,
    pub templates: Vec<SimTemplate>,
    /// Where status and inbound webhooks go; `None` = no webhooks (ledger only).
    pub webhook_url: Option<String>,
    pub fates: FateMix,
    pub webhooks: WebhookMode,
    /// HTTP status of throttling errors (130429): 400 (older Meta table, default) or 429.
    pub throttle_status: u16,
    /// HTTP status of token errors (190): 401 by default; Graph also answers 400.
    pub auth_error_status: u16,
    pub seed: u64,
    /// Added before every send answer.
    pub latency: Duration,
    /// Meta's pair rate per (line, recipient) → 131056; `None` = not enforced.
    pub pair_rate: Option<PairRate>,
    /// The messaging limit `GET /{phone-number-id}` reports
    /// (`whatsapp_business_manager_messaging_limit`, e.g. `TIER_2K`); `None` = not reported.
    pub messaging_limit: Option<String>,
    /// Time for the pair rate and the ledger's `at_ms`; the wall clock when `None`. Tests
    /// share their injected clock so the ledger and the daemon agree on time.
    pub clock: Option<SharedClock>,
    /// Gupshup apps served on `/wa/…` (the Gupshup mode); their callbacks go to each app's
    /// own callback URL, not to `webhook_url`.
    pub gupshup_apps: Vec<SimGupshupApp>,
    /// Send-side faults at start (`POST /sim/faults` replaces them at run time).
    pub faults: SimFaults,
}

/// Meta's pair rate limit (reference §4.3): one message per `interval` to one user, sustained,
/// with bursts of up to `burst` paid back afterwards (a GCRA per recipient).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PairRate {
    pub interval: Duration,
    pub burst: u32,
}

impl Default for PairRate {
    fn default() -> Self {
        PairRate {
            interval: Duration::from_secs(6),
            burst: 45,
        }
    }
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            phone_numbers: vec![SimLine::default()],
            templates: demo_templates(),
            webhook_url: None,
            fates: FateMix::default(),
            webhooks: WebhookMode::default(),
            throttle_status: 400,
            auth_error_status: 401,
            seed: 42,
            latency: Duration::ZERO,
            pair_rate: Some(PairRate::default()),
            messaging_limit: None,
            clock: None,
            gupshup_apps: Vec::new(),
            faults: SimFaults::default(),
        }
    }
}

/// One accepted message.
#[derive(Debug, Clone, Serialize)]
pub struct LedgerEntry {
    /// The WhatsApp message id.
    pub wamid: String,
    /// Gupshup mode: the `messageId` the send answered (what Gupshup's callbacks call `gsId`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gs_id: Option<String>,
    pub phone_number_id: String,
    /// `to` exactly as sent.
    pub to: String,
    pub wa_id: String,
    /// `template`, `text`, …
    pub message_type: String,
    pub template_name: Option<String>,
    pub language: Option<String>,
    /// `template.components` as sent; for media, the media object (`image`, Gupshup's
    /// `message`); Null when none.
    pub components: Value,
    /// `text.body` for free-form text; a media caption.
    pub text: Option<String>,
    pub callback_data: Option<String>,
    pub fate: Fate,
    #[serde(serialize_with = "unix_ms")]
    pub accepted_at: SystemTime,
    /// Acceptance time on the simulator's clock (the injected one in tests), Unix ms.
    pub at_ms: i64,
    #[serde(skip)]
    pub accepted_instant: Instant,
}

fn unix_ms<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    let ms = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    s.serialize_u64(ms as u64)
}

/// Counters (`GET /sim/stats`).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimStats {
    pub accepted: u64,
    pub rejected: u64,
    pub rejected_by_code: BTreeMap<i64, u64>,
    pub marked_read: u64,
    pub inbound_injected: u64,
    pub webhook_posts: u64,
    pub webhook_post_failures: u64,
    pub webhook_events_delivered: u64,
    pub webhook_events_dropped: u64,
    pub webhook_events_pending: u64,
    /// Status events posted twice (`duplicate_ratio`).
    pub webhook_events_duplicated: u64,
    /// Messages whose statuses one POST carried newest first (`reorder`).
    pub webhook_messages_reordered: u64,
    /// Send requests that met an injected fault, per fault.
    pub faults: FaultStats,
}

/// A test-only inbound message (`POST /sim/inbound`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InboundSpec {
    /// Defaults to the first line.
    #[serde(default)]
    pub phone_number_id: Option<String>,
    /// Sender wa_id; `None` with `from_user_id` = a 2026 username-only user.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub from_user_id: Option<String>,
    /// `text` (default), `button`, `interactive` (button_reply), `list` (list_reply),
    /// `unsupported`.
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub payload: Option<String>,
    /// The wamid being replied to (`context.id`).
    #[serde(default)]
    pub context_id: Option<String>,
    #[serde(default)]
    pub profile_name: Option<String>,
    /// Unix seconds of the message; now when absent (tests use old ones to expire windows).
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// A user's marketing preference (`POST /sim/user_preferences`): Meta's `user_preferences`
/// webhook, as sent when a user stops or resumes marketing messages from the business.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferenceSpec {
    /// Defaults to the first line.
    #[serde(default)]
    pub phone_number_id: Option<String>,
    pub wa_id: String,
    /// `stop` or `resume`.
    pub value: String,
    /// Unix seconds; now when absent.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SimError {
    #[error("unknown phone_number_id {0}")]
    UnknownPhoneNumber(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("no webhook_url configured")]
    NoWebhookUrl,
    #[error("webhook verification failed: {0}")]
    Verification(String),
}

const WINDOW: Duration = Duration::from_secs(24 * 3600);

struct Line {
    cfg: SimLine,
    target: Arc<Target>,
    mps: AtomicU32,
    bucket: Mutex<Bucket>,
    token_valid: AtomicBool,
}

struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Line {
    fn try_take(&self) -> bool {
        take_token(self.mps.load(Ordering::Relaxed), &self.bucket)
    }
}

/// Token bucket: refills `mps` per second, holds at most one second's worth (the burst).
fn take_token(mps: u32, bucket: &Mutex<Bucket>) -> bool {
    if mps == 0 || mps == u32::MAX {
        return true;
    }
    let rate = f64::from(mps);
    let mut b = lock(bucket);
    let now = Instant::now();
    b.tokens = (b.tokens + now.duration_since(b.last).as_secs_f64() * rate).min(rate);
    b.last = now;
    if b.tokens >= 1.0 {
        b.tokens -= 1.0;
        true
    } else {
        false
    }
}

struct Inner {
    cfg: SimConfig,
    lines: HashMap<String, Line>,
    /// Gupshup apps by name.
    gupshup: HashMap<String, gupshup::GsApp>,
    first_line: String,
    templates: RwLock<Vec<Arc<SimTemplate>>>,
    forced: RwLock<HashMap<String, Fate>>,
    /// (phone_number_id, wa_id) → last inbound.
    windows: Mutex<HashMap<(String, String), Instant>>,
    inbound_wamids: Mutex<HashSet<String>>,
    ledger: Mutex<Vec<LedgerEntry>>,
    wamid_prefix: String,
    wamid_counter: AtomicU64,
    accepted: AtomicU64,
    rejected: AtomicU64,
    rejected_by_code: Mutex<BTreeMap<i64, u64>>,
    marked_read: AtomicU64,
    inbound_injected: AtomicU64,
    /// (phone_number_id, wa_id) → theoretical arrival time of the next message (GCRA), ms.
    pairs: Mutex<HashMap<(String, String), i64>>,
    messaging_limit: RwLock<Option<String>>,
    tracker: Arc<Tracker>,
    dstats: Arc<DeliveryStats>,
    /// Started on first use so `Simulator::new` works outside a Tokio runtime.
    worker: OnceLock<mpsc::UnboundedSender<Job>>,
    faults: RwLock<SimFaults>,
    fault_counters: faults::FaultCounters,
}

/// The simulator. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

pub(crate) fn trace_id() -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(23)
        .map(char::from)
        .collect()
}

impl Simulator {
    pub fn new(cfg: SimConfig) -> Self {
        let now = Instant::now();
        let lines: HashMap<String, Line> = cfg
            .phone_numbers
            .iter()
            .map(|l| {
                let target = Arc::new(Target {
                    phone_number_id: l.phone_number_id.clone(),
                    waba_id: l.waba_id.clone(),
                    display_phone_number: l.display_phone_number.clone(),
                    app_secret: l.app_secret.clone(),
                });
                let line = Line {
                    cfg: l.clone(),
                    target,
                    mps: AtomicU32::new(l.throughput_mps),
                    bucket: Mutex::new(Bucket {
                        tokens: f64::from(l.throughput_mps),
                        last: now,
                    }),
                    token_valid: AtomicBool::new(true),
                };
                (l.phone_number_id.clone(), line)
            })
            .collect();
        let first_line = cfg
            .phone_numbers
            .first()
            .map(|l| l.phone_number_id.clone())
            .unwrap_or_default();
        let prefix: String = rand::thread_rng()
            .sample_iter(&Alphanumeric)
            .take(10)
            .map(char::from)
            .collect();
        let templates = cfg.templates.iter().cloned().map(Arc::new).collect();
        let gupshup = cfg
            .gupshup_apps
            .iter()
            .map(|a| (a.app_name.clone(), gupshup::GsApp::new(a.clone())))
            .collect();
        Simulator {
            inner: Arc::new(Inner {
                lines,
                gupshup,
                first_line,
                templates: RwLock::new(templates),
                forced: RwLock::new(HashMap::new()),
                windows: Mutex::new(HashMap::new()),
                inbound_wamids: Mutex::new(HashSet::new()),
                ledger: Mutex::new(Vec::new()),
                wamid_prefix: format!("HBgL{prefix}"),
                wamid_counter: AtomicU64::new(1),
                accepted: AtomicU64::new(0),
                rejected: AtomicU64::new(0),
                rejected_by_code: Mutex::new(BTreeMap::new()),
                marked_read: AtomicU64::new(0),
                inbound_injected: AtomicU64::new(0),
                pairs: Mutex::new(HashMap::new()),
                messaging_limit: RwLock::new(cfg.messaging_limit.clone()),
                tracker: Arc::new(Tracker::default()),
                dstats: Arc::new(DeliveryStats::default()),
                worker: OnceLock::new(),
                faults: RwLock::new(cfg.faults.clone()),
                fault_counters: faults::FaultCounters::default(),
                cfg,
            }),
        }
    }

    pub fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// The Graph API routes plus the `/sim/*` helpers.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/sim/ledger", get(ledger_handler))
            .route("/sim/stats", get(stats_handler))
            .route("/sim/inbound", post(inbound_handler))
            .route("/sim/user_preferences", post(preference_handler))
            .route("/sim/fate", post(fate_handler))
            .route("/sim/throughput", post(throughput_handler))
            .route("/sim/tier", post(tier_handler))
            .route("/sim/flush", post(flush_handler))
            .route(
                "/sim/faults",
                get(faults_get_handler).post(faults_post_handler),
            )
            .route("/sim/gupshup/inbound", post(gupshup::inbound_handler))
            .route(
                "/wa/api/v1/template/msg",
                post(gupshup::template_msg_handler),
            )
            .route("/wa/api/v1/msg", post(gupshup::msg_handler))
            .route("/wa/app/{app_id}/template", get(gupshup::templates_handler))
            .route(
                "/wa/app/{app_id}/msg/{msg_id}/read",
                axum::routing::put(gupshup::read_handler),
            )
            .route(
                "/wa/app/{app_id}/subscription",
                post(gupshup::subscription_handler),
            )
            .route("/{version}/{id}/messages", post(send_handler))
            .route("/sim/templates/review", post(review_handler))
            .route(
                "/{version}/{id}/message_templates",
                get(templates_handler).post(create_template_handler),
            )
            .route("/{version}/{id}", get(object_handler))
            .with_state(self.clone())
    }

    /// Serve on `listener` until the task is dropped or the listener fails.
    pub async fn serve(&self, listener: tokio::net::TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.router()).await
    }

    /// Snapshot of every accepted message, in acceptance order.
    pub fn ledger(&self) -> Vec<LedgerEntry> {
        lock(&self.inner.ledger).clone()
    }

    pub fn ledger_len(&self) -> usize {
        lock(&self.inner.ledger).len()
    }

    pub fn stats(&self) -> SimStats {
        let i = &self.inner;
        SimStats {
            accepted: i.accepted.load(Ordering::Relaxed),
            rejected: i.rejected.load(Ordering::Relaxed),
            rejected_by_code: lock(&i.rejected_by_code).clone(),
            marked_read: i.marked_read.load(Ordering::Relaxed),
            inbound_injected: i.inbound_injected.load(Ordering::Relaxed),
            webhook_posts: i.dstats.posts.load(Ordering::Relaxed),
            webhook_post_failures: i.dstats.post_failures.load(Ordering::Relaxed),
            webhook_events_delivered: i.dstats.events_delivered.load(Ordering::Relaxed),
            webhook_events_dropped: i.dstats.events_dropped.load(Ordering::Relaxed),
            webhook_events_pending: i.tracker.pending() as u64,
            webhook_events_duplicated: i.dstats.events_duplicated.load(Ordering::Relaxed),
            webhook_messages_reordered: i.dstats.messages_reordered.load(Ordering::Relaxed),
            faults: i.fault_counters.snapshot(),
        }
    }

    /// The send-side faults now in force.
    pub fn faults(&self) -> SimFaults {
        self.inner
            .faults
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the send-side faults (all off: `SimFaults::default()`).
    pub fn set_faults(&self, faults: SimFaults) -> Result<(), SimError> {
        faults.validate().map_err(SimError::BadRequest)?;
        *self.inner.faults.write().unwrap_or_else(|e| e.into_inner()) = faults;
        Ok(())
    }

    /// The fault this send request meets, if any. Mark-as-read requests meet none: the
    /// faults are about sends.
    fn draw_fault(&self, body: &[u8]) -> Option<faults::Fault> {
        let f = self.inner.faults.read().unwrap_or_else(|e| e.into_inner());
        if !f.any() {
            return None;
        }
        let is_read = serde_json::from_slice::<Value>(body)
            .ok()
            .is_some_and(|v| v.get("status").and_then(Value::as_str) == Some("read"));
        if is_read {
            return None;
        }
        let n = self
            .inner
            .fault_counters
            .requests
            .fetch_add(1, Ordering::Relaxed);
        f.pick(self.inner.cfg.seed, n)
    }

    /// Force the fate of one recipient (any formatting of the number).
    pub fn force_fate(&self, number: &str, fate: Fate) {
        let mut f = self.inner.forced.write().unwrap_or_else(|e| e.into_inner());
        f.insert(fate::digits(number), fate);
    }

    /// The fate a message to `number` will get (forced, else from seed + number).
    pub fn fate_for(&self, number: &str) -> Fate {
        let d = fate::digits(number);
        let forced = self.inner.forced.read().unwrap_or_else(|e| e.into_inner());
        match forced.get(&d) {
            Some(f) => *f,
            None => self.inner.cfg.fates.pick(self.inner.cfg.seed, &d),
        }
    }

    /// The `wa_id` the simulator answers for `number`.
    pub fn wa_id_for(&self, number: &str) -> String {
        self.inner
            .cfg
            .fates
            .wa_id(self.inner.cfg.seed, &fate::digits(number))
    }

    /// Change a line's throughput at runtime (0 or `u32::MAX` = unlimited). False if unknown.
    pub fn set_throughput(&self, phone_number_id: &str, mps: u32) -> bool {
        match self.inner.lines.get(phone_number_id) {
            Some(l) => {
                l.mps.store(mps, Ordering::Relaxed);
                let mut b = lock(&l.bucket);
                b.tokens = f64::from(mps);
                b.last = Instant::now();
                true
            }
            None => false,
        }
    }

    /// Make a line's token expire (190) or valid again. False if unknown.
    pub fn set_token_valid(&self, phone_number_id: &str, valid: bool) -> bool {
        match self.inner.lines.get(phone_number_id) {
            Some(l) => {
                l.token_valid.store(valid, Ordering::Relaxed);
                true
            }
            None => false,
        }
    }

    /// Change a template's status (e.g. PAUSED mid-campaign); later sends see it, and a
    /// `message_template_status_update` webhook is posted for every line of its WABA(s).
    pub fn set_template_status(&self, name: &str, language: &str, status: &str) -> bool {
        self.review_template(name, language, status, None)
    }

    /// Meta's review of a template (`POST /sim/templates/review`): APPROVED, or REJECTED with
    /// a reason (INVALID_FORMAT, PROMOTIONAL, …), posted as the status webhook Meta sends.
    pub fn review_template(
        &self,
        name: &str,
        language: &str,
        status: &str,
        reason: Option<&str>,
    ) -> bool {
        let mut found = None;
        {
            let mut ts = self
                .inner
                .templates
                .write()
                .unwrap_or_else(|e| e.into_inner());
            for t in ts.iter_mut() {
                if t.name == name && t.language == language {
                    let mut nt = (**t).clone();
                    nt.status = status.to_string();
                    match reason {
                        Some(r) => nt.extra.insert("rejected_reason".into(), r.into()),
                        None => nt.extra.remove("rejected_reason"),
                    };
                    found = Some(nt.clone());
                    *t = Arc::new(nt);
                }
            }
        }
        let Some(t) = found else {
            return false;
        };
        let mut wabas = HashSet::new();
        for l in self.inner.lines.values() {
            let visible = t.waba_id.as_deref().is_none_or(|w| w == l.cfg.waba_id);
            if visible && wabas.insert(l.cfg.waba_id.clone()) {
                let value = json!({
                    "event": status,
                    "message_template_id": t.id.parse::<i64>().map(Value::from).unwrap_or(Value::from(t.id.clone())),
                    "message_template_name": t.name,
                    "message_template_language": t.language.replace('_', "-"),
                    "reason": match reason {
                        Some(r) => Value::from(r),
                        None if status == "PAUSED" => Value::Null,
                        None => Value::from("NONE"),
                    },
                    "message_template_category": t.category,
                });
                self.enqueue_change(&l.target, "message_template_status_update", value);
            }
        }
        true
    }

    /// Wait until every webhook queued so far has been delivered or given up on.
    pub async fn flush_webhooks(&self) {
        if let Some(tx) = self.inner.worker.get() {
            let _ = tx.send(Job::Nudge);
        }
        self.inner.tracker.wait_all_before_now().await;
    }

    /// Post an inbound message webhook and open the sender's 24 h window. Returns its wamid.
    pub fn inject_inbound(&self, spec: InboundSpec) -> Result<String, SimError> {
        let pnid = spec
            .phone_number_id
            .clone()
            .unwrap_or_else(|| self.inner.first_line.clone());
        let line = self
            .inner
            .lines
            .get(&pnid)
            .ok_or_else(|| SimError::UnknownPhoneNumber(pnid.clone()))?;
        let from = spec.from.as_deref().map(fate::digits);
        if from.is_none() && spec.from_user_id.is_none() {
            return Err(SimError::BadRequest(
                "`from` or `from_user_id` is required".into(),
            ));
        }
        let wamid = self.next_wamid();
        let kind = spec.kind.as_deref().unwrap_or("text");
        let text = spec.text.clone().unwrap_or_default();
        let payload = spec.payload.clone().unwrap_or_else(|| text.clone());
        let at = spec.timestamp.unwrap_or_else(|| self.now_unix());
        let mut msg = json!({ "id": wamid, "timestamp": at.to_string(), "type": kind });
        let obj = msg
            .as_object_mut()
            .ok_or_else(|| SimError::BadRequest("internal".into()))?;
        if let Some(f) = &from {
            obj.insert("from".into(), f.clone().into());
        }
        if let Some(u) = &spec.from_user_id {
            obj.insert("from_user_id".into(), u.clone().into());
        }
        if let Some(c) = &spec.context_id {
            obj.insert(
                "context".into(),
                json!({ "from": line.cfg.display_phone_number, "id": c }),
            );
        }
        match kind {
            "text" => {
                obj.insert("text".into(), json!({ "body": text }));
            }
            "button" => {
                obj.insert("button".into(), json!({ "payload": payload, "text": text }));
            }
            "interactive" => {
                obj.insert(
                    "interactive".into(),
                    json!({ "type": "button_reply", "button_reply": { "id": payload, "title": text } }),
                );
            }
            "list" => {
                obj.insert("type".into(), "interactive".into());
                obj.insert(
                    "interactive".into(),
                    json!({ "type": "list_reply", "list_reply": { "id": payload, "title": text } }),
                );
            }
            "unsupported" => {
                obj.insert(
                    "errors".into(),
                    json!([{ "code": 131051, "title": "Message type unknown",
                             "message": "Message type unknown",
                             "error_data": { "details": "Message type is currently not supported." } }]),
                );
            }
            other => {
                return Err(SimError::BadRequest(format!(
                    "unknown inbound type `{other}` (text, button, interactive, list, unsupported)"
                )))
            }
        }
        let mut contact =
            json!({ "profile": { "name": spec.profile_name.clone().unwrap_or_default() } });
        if let Some(c) = contact.as_object_mut() {
            if let Some(f) = &from {
                c.insert("wa_id".into(), f.clone().into());
            }
            if let Some(u) = &spec.from_user_id {
                c.insert("user_id".into(), u.clone().into());
            }
        }
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": delivery::metadata(&line.target),
            "contacts": [contact],
            "messages": [msg],
        });
        if let Some(f) = from {
            lock(&self.inner.windows).insert((pnid.clone(), f), Instant::now());
        }
        lock(&self.inner.inbound_wamids).insert(wamid.clone());
        self.inner.inbound_injected.fetch_add(1, Ordering::Relaxed);
        self.enqueue_change(&line.target, "messages", value);
        Ok(wamid)
    }

    /// Post a `user_preferences` webhook. After `stop`, marketing sends to the user are
    /// accepted and then fail with 131050, as Meta does; `resume` lifts that.
    pub fn inject_user_preference(&self, spec: PreferenceSpec) -> Result<(), SimError> {
        let pnid = spec
            .phone_number_id
            .clone()
            .unwrap_or_else(|| self.inner.first_line.clone());
        let line = self
            .inner
            .lines
            .get(&pnid)
            .ok_or_else(|| SimError::UnknownPhoneNumber(pnid.clone()))?;
        let wa_id = fate::digits(&spec.wa_id);
        if wa_id.is_empty() {
            return Err(SimError::BadRequest("`wa_id` must hold digits".into()));
        }
        let detail = match spec.value.as_str() {
            "stop" => "User requested to stop marketing messages",
            "resume" => "User requested to resume marketing messages",
            other => {
                return Err(SimError::BadRequest(format!(
                    "unknown preference `{other}` (stop, resume)"
                )))
            }
        };
        {
            let mut forced = self.inner.forced.write().unwrap_or_else(|e| e.into_inner());
            if spec.value == "stop" {
                forced.insert(wa_id.clone(), Fate::Failed(131050));
            } else if forced.get(&wa_id) == Some(&Fate::Failed(131050)) {
                forced.remove(&wa_id);
            }
        }
        let value = json!({
            "messaging_product": "whatsapp",
            "metadata": delivery::metadata(&line.target),
            "contacts": [{ "wa_id": wa_id, "profile": { "name": "" } }],
            "user_preferences": [{
                "wa_id": wa_id,
                "detail": detail,
                "category": "marketing_messages",
                "value": spec.value,
                "timestamp": spec.timestamp.unwrap_or_else(|| self.now_unix()),
            }],
        });
        self.enqueue_change(&line.target, "user_preferences", value);
        Ok(())
    }

    /// Drive the daemon's GET verification handshake (§3.1) against `webhook_url`.
    pub async fn verify_webhook(&self, verify_token: &str) -> Result<(), SimError> {
        let url = self
            .inner
            .cfg
            .webhook_url
            .as_deref()
            .ok_or(SimError::NoWebhookUrl)?;
        let challenge = rand::thread_rng()
            .gen_range(1_000_000_000u64..9_999_999_999)
            .to_string();
        let resp = reqwest::Client::new()
            .get(url)
            .query(&[
                ("hub.mode", "subscribe"),
                ("hub.challenge", challenge.as_str()),
                ("hub.verify_token", verify_token),
            ])
            .send()
            .await
            .map_err(|e| SimError::Verification(e.to_string()))?;
        let status = resp.status();
        let body = resp
            .text()
            .await
            .map_err(|e| SimError::Verification(e.to_string()))?;
        if status != reqwest::StatusCode::OK {
            return Err(SimError::Verification(format!("HTTP {status}")));
        }
        if body.trim() != challenge {
            return Err(SimError::Verification(format!(
                "echoed `{body}` instead of the challenge"
            )));
        }
        Ok(())
    }

    // ---- internals ---------------------------------------------------------------------------

    fn next_wamid(&self) -> String {
        let n = self.inner.wamid_counter.fetch_add(1, Ordering::Relaxed);
        format!("wamid.{}{n:012X}", self.inner.wamid_prefix)
    }

    fn sender(&self) -> Option<&mpsc::UnboundedSender<Job>> {
        // Gupshup jobs carry their own URL; Meta jobs are only queued with a webhook_url.
        let url = match &self.inner.cfg.webhook_url {
            Some(u) => u.clone(),
            None if !self.inner.gupshup.is_empty() => String::new(),
            None => return None,
        };
        if self.inner.worker.get().is_none() && tokio::runtime::Handle::try_current().is_err() {
            // Outside a runtime there is nothing to run the delivery task on: skip webhooks
            // rather than panic (the ledger still records everything).
            tracing::warn!("simulator used outside a Tokio runtime: webhooks not sent");
            return None;
        }
        Some(self.inner.worker.get_or_init(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            tokio::spawn(delivery::run(
                rx,
                url,
                self.inner.cfg.webhooks.clone(),
                self.inner.cfg.seed,
                self.inner.tracker.clone(),
                self.inner.dstats.clone(),
            ));
            tx
        }))
    }

    fn enqueue_status(&self, target: &Arc<Target>, status: QueuedStatus) {
        if self.inner.cfg.webhook_url.is_none() {
            return;
        }
        if let Some(tx) = self.sender() {
            let seq = self.inner.tracker.begin();
            let job = Job::Status {
                target: target.clone(),
                status,
                seq,
            };
            if tx.send(job).is_err() {
                self.inner.tracker.finish(&[seq]);
            }
        }
    }

    fn enqueue_change(&self, target: &Arc<Target>, field: &str, value: Value) {
        if self.inner.cfg.webhook_url.is_none() {
            return;
        }
        if let Some(tx) = self.sender() {
            let seq = self.inner.tracker.begin();
            let job = Job::Change {
                target: target.clone(),
                field: field.to_string(),
                value,
                seq,
            };
            if tx.send(job).is_err() {
                self.inner.tracker.finish(&[seq]);
            }
        }
    }

    fn count_rejection(&self, code: i64) {
        self.inner.rejected.fetch_add(1, Ordering::Relaxed);
        *lock(&self.inner.rejected_by_code).entry(code).or_insert(0) += 1;
    }

    fn line_for(&self, id: &str) -> Result<&Line, GraphError> {
        self.inner.lines.get(id).ok_or_else(|| unknown_object(id))
    }

    fn check_auth(&self, line: &Line, headers: &HeaderMap) -> Result<(), GraphError> {
        let status = StatusCode::from_u16(self.inner.cfg.auth_error_status)
            .unwrap_or(StatusCode::UNAUTHORIZED);
        let token = bearer(headers)
            .ok_or_else(|| GraphError::new(190, "Missing access token").with_status(status))?;
        if token != line.cfg.access_token {
            return Err(GraphError::new(
                190,
                "Invalid OAuth access token - Cannot parse access token",
            )
            .with_status(status));
        }
        if !line.token_valid.load(Ordering::Relaxed) {
            return Err(GraphError::new(
                190,
                "Error validating access token: Session has expired.",
            )
            .with_status(status));
        }
        Ok(())
    }

    fn find_template(&self, waba: &str, name: &str, language: &str) -> Option<Arc<SimTemplate>> {
        let ts = self
            .inner
            .templates
            .read()
            .unwrap_or_else(|e| e.into_inner());
        ts.iter()
            .find(|t| {
                t.name == name
                    && t.language == language
                    && t.waba_id.as_deref().is_none_or(|w| w == waba)
            })
            .cloned()
    }

    fn now_ms(&self) -> i64 {
        match &self.inner.cfg.clock {
            Some(c) => c.now_millis(),
            None => crate::clock::SystemClock.now_millis(),
        }
    }

    /// Webhook timestamps (Unix seconds) come from the same clock as the ledger: a test that
    /// drives time by hand sees statuses stamped in its own time, not the wall clock's.
    pub(crate) fn now_unix(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// The pair rate: 131056 when this recipient has had its burst on this line.
    fn take_pair_slot(&self, pnid: &str, wa_id: &str) -> Result<(), GraphError> {
        let Some(rate) = self.inner.cfg.pair_rate else {
            return Ok(());
        };
        let now = self.now_ms();
        let interval = rate.interval.as_millis() as i64;
        let tolerance = interval * i64::from(rate.burst.max(1) - 1);
        let mut pairs = lock(&self.inner.pairs);
        let tat = pairs
            .entry((pnid.to_string(), wa_id.to_string()))
            .or_insert(now);
        let next = (*tat).max(now);
        if next - now > tolerance {
            return Err(GraphError::new(
                131056,
                "(Business Account, Consumer Account) pair rate limit hit",
            ));
        }
        *tat = next + interval;
        Ok(())
    }

    /// The messaging limit the phone-number object reports (`TIER_2K`, …). With `notify`, a
    /// `business_capability_update` webhook is posted for every WABA too, as Meta does when a
    /// limit changes.
    pub fn set_messaging_limit(&self, tier: &str, notify: bool) {
        *self
            .inner
            .messaging_limit
            .write()
            .unwrap_or_else(|e| e.into_inner()) = Some(tier.to_string());
        if !notify {
            return;
        }
        let mut wabas = HashSet::new();
        for l in self.inner.lines.values() {
            if wabas.insert(l.cfg.waba_id.clone()) {
                let value = json!({
                    "max_daily_conversations_per_business": tier,
                    "max_phone_numbers_per_business": 2,
                });
                self.enqueue_change(&l.target, "business_capability_update", value);
            }
        }
    }

    fn window_open(&self, pnid: &str, keys: [&str; 2]) -> bool {
        let w = lock(&self.inner.windows);
        keys.iter().any(|k| {
            w.get(&(pnid.to_string(), (*k).to_string()))
                .is_some_and(|t| t.elapsed() < WINDOW)
        })
    }

    /// The whole synchronous send path; no awaits, so no lock is ever held across one.
    fn handle_send(
        &self,
        version: &str,
        pnid: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Value, GraphError> {
        let line = self.line_for(pnid)?;
        self.check_auth(line, headers)?;
        let req: Value = serde_json::from_slice(body)
            .map_err(|e| GraphError::new(100, format!("Request body is not valid JSON: {e}")))?;
        if !req.is_object() {
            return Err(GraphError::new(100, "Request body must be a JSON object."));
        }
        if req.get("status").and_then(Value::as_str) == Some("read") {
            return self.mark_read(&req);
        }
        if !line.try_take() {
            let status = StatusCode::from_u16(self.inner.cfg.throttle_status)
                .unwrap_or(StatusCode::BAD_REQUEST);
            let mut e = GraphError::new(130429, "Cloud API message throughput has been reached.")
                .with_status(status);
            e.subcode = Some(2494055);
            return Err(e);
        }
        match req.get("messaging_product").and_then(Value::as_str) {
            Some("whatsapp") => {}
            None => {
                return Err(GraphError::new(
                    100,
                    "The parameter messaging_product is required.",
                ))
            }
            Some(other) => {
                return Err(GraphError::new(
                    100,
                    format!("Param messaging_product must be 'whatsapp', got '{other}'."),
                ))
            }
        }
        let to = match req.get("to").and_then(Value::as_str).map(str::trim) {
            Some(t) if !t.is_empty() => t.to_string(),
            _ => return Err(GraphError::new(131008, "The parameter to is required.")),
        };
        let callback_data = match req.get("biz_opaque_callback_data") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.chars().count() <= 512 => Some(s.clone()),
            Some(Value::String(_)) => {
                return Err(GraphError::new(
                    100,
                    "Param biz_opaque_callback_data must be at most 512 characters long.",
                ))
            }
            Some(_) => {
                return Err(GraphError::new(
                    100,
                    "Param biz_opaque_callback_data must be a string.",
                ))
            }
        };
        let message_type = req.get("type").and_then(Value::as_str).unwrap_or("text");
        let to_digits = fate::digits(&to);
        if to_digits.is_empty() {
            return Err(GraphError::new(
                100,
                "Invalid parameter: to is not a phone number.",
            ));
        }
        let wa_id = self.wa_id_for(&to);

        let mut template_name = None;
        let mut language = None;
        let mut components = Value::Null;
        let mut text = None;
        let mut category = "service".to_string();
        let is_template = message_type == "template";
        match message_type {
            "template" => {
                let t = req
                    .get("template")
                    .filter(|t| t.is_object())
                    .ok_or_else(|| {
                        GraphError::new(131008, "The parameter template is required.")
                    })?;
                let name = t.get("name").and_then(Value::as_str).ok_or_else(|| {
                    GraphError::new(131008, "The parameter template['name'] is required.")
                })?;
                let code = t
                    .get("language")
                    .and_then(|l| l.get("code"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        GraphError::new(
                            131008,
                            "The parameter template['language']['code'] is required.",
                        )
                    })?;
                let tpl = self
                    .find_template(&line.cfg.waba_id, name, code)
                    .ok_or_else(|| {
                        GraphError::new(
                            132001,
                            format!("template name ({name}) does not exist in {code}"),
                        )
                    })?;
                match tpl.status.to_ascii_uppercase().as_str() {
                    "APPROVED" => {}
                    "PAUSED" => {
                        return Err(GraphError::new(
                            132015,
                            format!("Template {name} ({code}) is paused due to low quality."),
                        ))
                    }
                    "DISABLED" => {
                        return Err(GraphError::new(
                            132016,
                            format!(
                                "Template {name} ({code}) has been disabled due to low quality."
                            ),
                        ))
                    }
                    other => {
                        return Err(GraphError::new(
                            132001,
                            format!("template name ({name}) in {code} is {other}, not approved"),
                        ))
                    }
                }
                templates::validate_components(&tpl, t)?;
                template_name = Some(name.to_string());
                language = Some(code.to_string());
                components = t.get("components").cloned().unwrap_or(Value::Null);
                category = tpl.category.to_ascii_lowercase();
            }
            "text" => {
                let body = req
                    .get("text")
                    .and_then(|t| t.get("body"))
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        GraphError::new(131008, "The parameter text['body'] is required.")
                    })?;
                if body.chars().count() > 4096 {
                    return Err(GraphError::new(
                        100,
                        "Param text['body'] must be at most 4096 characters long.",
                    ));
                }
                text = Some(body.to_string());
            }
            "image" | "audio" | "video" | "document" => {
                let media = req
                    .get(message_type)
                    .filter(|m| m.is_object())
                    .ok_or_else(|| {
                        GraphError::new(
                            131008,
                            format!("The parameter {message_type} is required."),
                        )
                    })?;
                let by = |k: &str| media.get(k).and_then(Value::as_str).is_some();
                if !(by("link") || by("id")) {
                    return Err(GraphError::new(
                        131008,
                        format!("The parameter {message_type}['link'] or {message_type}['id'] is required."),
                    ));
                }
                text = media
                    .get("caption")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                components = media.clone();
            }
            "sticker" | "interactive" | "reaction" | "location" | "contacts" => {}
            other => {
                return Err(GraphError::new(
                    100,
                    format!("Param type '{other}' is not a supported message type."),
                ))
            }
        }

        self.take_pair_slot(pnid, &wa_id)?;
        let in_window = self.window_open(pnid, [&wa_id, &to_digits]);
        let mut fate = self.fate_for(&to);
        if !is_template {
            if !in_window {
                // Free-form outside the 24 h window: accepted, then failed asynchronously.
                fate = Fate::Failed(131047);
            } else if matches!(fate, Fate::Failed(131049) | Fate::Failed(131050)) {
                // Marketing caps and opt-outs only concern marketing templates.
                fate = Fate::Read;
            }
        }
        let wamid = self.next_wamid();
        let accepted_at = SystemTime::now();
        lock(&self.inner.ledger).push(LedgerEntry {
            wamid: wamid.clone(),
            gs_id: None,
            phone_number_id: pnid.to_string(),
            to: to.clone(),
            wa_id: wa_id.clone(),
            message_type: message_type.to_string(),
            template_name,
            language,
            components,
            text,
            callback_data: callback_data.clone(),
            fate,
            accepted_at,
            at_ms: self.now_ms(),
            accepted_instant: Instant::now(),
        });
        self.inner.accepted.fetch_add(1, Ordering::Relaxed);

        if self.inner.cfg.webhook_url.is_some() {
            let free = !is_template || (in_window && category == "utility");
            let pricing_type = if free {
                "free_customer_service"
            } else {
                "regular"
            };
            let ctx = StatusCtx {
                wamid: &wamid,
                recipient: &wa_id,
                callback: callback_data.as_deref(),
                category: &category,
                pricing_type,
                conversation: graph_major(version) <= 23,
            };
            let t0 = self.now_unix();
            let steps: &[(&str, bool)] = match fate {
                Fate::Delivered => &[("sent", true), ("delivered", true)],
                Fate::Read => &[("sent", true), ("delivered", true), ("read", false)],
                Fate::Failed(_) => &[("failed", false)],
                Fate::NoWebhook => &[],
            };
            for (i, (status, priced)) in steps.iter().enumerate() {
                let err = match fate {
                    Fate::Failed(code) => Some(code),
                    _ => None,
                };
                let v = status_element(&ctx, status, t0 + i as i64, *priced, err);
                self.enqueue_status(&line.target, v);
            }
        }

        let mut message = json!({ "id": wamid });
        if is_template {
            message["message_status"] = "accepted".into();
        }
        Ok(json!({
            "messaging_product": "whatsapp",
            "contacts": [{ "input": to, "wa_id": wa_id }],
            "messages": [message],
        }))
    }

    fn mark_read(&self, req: &Value) -> Result<Value, GraphError> {
        if req.get("messaging_product").and_then(Value::as_str) != Some("whatsapp") {
            return Err(GraphError::new(
                100,
                "The parameter messaging_product is required.",
            ));
        }
        let id = req
            .get("message_id")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::new(131008, "The parameter message_id is required."))?;
        if !lock(&self.inner.inbound_wamids).contains(id) {
            return Err(GraphError::new(
                100,
                format!("Invalid parameter: message_id {id} is unknown or too old."),
            ));
        }
        self.inner.marked_read.fetch_add(1, Ordering::Relaxed);
        Ok(json!({ "success": true }))
    }
}

struct StatusCtx<'a> {
    wamid: &'a str,
    recipient: &'a str,
    callback: Option<&'a str>,
    category: &'a str,
    pricing_type: &'a str,
    conversation: bool,
}

/// One `statuses[]` element as Meta sends it (§3.7): string timestamp, echoed callback data,
/// pricing on `sent` and on exactly one of delivered/read, `conversation` only for ≤ v23.
/// Serialised here, once: the delivery task only joins elements into a body.
fn status_element(
    c: &StatusCtx,
    status: &str,
    ts: i64,
    priced: bool,
    error: Option<i64>,
) -> QueuedStatus {
    #[derive(Serialize)]
    struct Element<'a> {
        id: &'a str,
        status: &'a str,
        timestamp: String,
        recipient_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        biz_opaque_callback_data: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        pricing: Option<Pricing<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        conversation: Option<Conversation<'a>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        errors: Option<[StatusError; 1]>,
    }
    #[derive(Serialize)]
    struct Pricing<'a> {
        billable: bool,
        pricing_model: &'static str,
        #[serde(rename = "type")]
        kind: &'a str,
        category: &'a str,
    }
    #[derive(Serialize)]
    struct Conversation<'a> {
        id: String,
        origin: Origin<'a>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expiration_timestamp: Option<String>,
    }
    #[derive(Serialize)]
    struct Origin<'a> {
        #[serde(rename = "type")]
        kind: &'a str,
    }
    #[derive(Serialize)]
    struct StatusError {
        code: i64,
        title: &'static str,
        message: &'static str,
        error_data: ErrorData,
        href: &'static str,
    }
    #[derive(Serialize)]
    struct ErrorData {
        details: &'static str,
    }
    let element = Element {
        id: c.wamid,
        status,
        timestamp: ts.to_string(),
        recipient_id: c.recipient,
        biz_opaque_callback_data: c.callback,
        pricing: priced.then_some(Pricing {
            billable: c.pricing_type == "regular",
            pricing_model: "PMP",
            kind: c.pricing_type,
            category: c.category,
        }),
        conversation: (priced && c.conversation).then(|| Conversation {
            id: format!("{:032x}", fate::hash(0, c.wamid, 7)),
            origin: Origin { kind: c.category },
            expiration_timestamp: (status == "sent").then(|| (ts + 86_400).to_string()),
        }),
        errors: error.map(|code| {
            let (_, title) = graph_error::catalogue(code);
            [StatusError {
                code,
                title,
                message: title,
                error_data: ErrorData {
                    details: graph_error::async_details(code),
                },
                href:
                    "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/",
            }]
        }),
    };
    let json =
        serde_json::value::to_raw_value(&element).expect("a status element always serialises");
    QueuedStatus {
        wamid: c.wamid.to_string(),
        json,
    }
}

/// `v23.0` → 23; unknown formats count as current (no `conversation`).
fn graph_major(version: &str) -> u32 {
    version
        .trim_start_matches(['v', 'V'])
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(u32::MAX)
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = v.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn unknown_object(id: &str) -> GraphError {
    GraphError {
        http: StatusCode::BAD_REQUEST,
        code: 100,
        error_type: "GraphMethodException",
        title: format!(
            "Unsupported request. Object with ID '{id}' does not exist, cannot be loaded due to missing permissions, or does not support this operation"
        ),
        details: format!("Object with ID '{id}' does not exist."),
        subcode: Some(33),
    }
}

fn ok_json(v: Value) -> Response {
    let mut r = (StatusCode::OK, Json(v)).into_response();
    if let Ok(h) = HeaderValue::from_str(&trace_id()) {
        r.headers_mut().insert("x-fb-trace-id", h);
    }
    r
}

// ---- handlers --------------------------------------------------------------------------------

async fn send_handler(
    State(sim): State<Simulator>,
    Path((version, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fault = sim.draw_fault(&body);
    if let Some(e) = fault.and_then(faults::rejection) {
        // Refused before anything is accepted: nothing in the ledger, no webhooks.
        if let Some(f) = fault {
            sim.inner.fault_counters.count(f);
        }
        sim.count_rejection(e.code);
        return e.into_response();
    }
    let result = sim.handle_send(&version, &id, &headers, &body);
    if !sim.inner.cfg.latency.is_zero() {
        tokio::time::sleep(sim.inner.cfg.latency).await;
    }
    match result {
        Ok(v) => match fault {
            Some(f @ faults::Fault::Drop) => {
                sim.inner.fault_counters.count(f);
                faults::cut_connection()
            }
            Some(f @ faults::Fault::Slow(delay)) => {
                sim.inner.fault_counters.count(f);
                tokio::time::sleep(delay).await;
                ok_json(v)
            }
            _ => ok_json(v),
        },
        Err(e) => {
            sim.count_rejection(e.code);
            e.into_response()
        }
    }
}

#[derive(Deserialize)]
struct ListQuery {
    limit: Option<String>,
    after: Option<String>,
    before: Option<String>,
    name: Option<String>,
    fields: Option<String>,
}

fn cursor(i: usize) -> String {
    hex::encode(format!("tc:{i}"))
}

fn parse_cursor(c: &str) -> Option<usize> {
    let raw = String::from_utf8(hex::decode(c).ok()?).ok()?;
    raw.strip_prefix("tc:")?.parse().ok()
}

async fn templates_handler(
    State(sim): State<Simulator>,
    Path((version, waba)): Path<(String, String)>,
    Query(q): Query<ListQuery>,
    headers: HeaderMap,
) -> Response {
    match sim.list_templates(&version, &waba, &q, &headers) {
        Ok(v) => ok_json(v),
        Err(e) => {
            sim.count_rejection(e.code);
            e.into_response()
        }
    }
}

impl Simulator {
    fn auth_for_waba(&self, waba: &str, headers: &HeaderMap) -> Result<(), GraphError> {
        let lines: Vec<&Line> = self
            .inner
            .lines
            .values()
            .filter(|l| l.cfg.waba_id == waba)
            .collect();
        if lines.is_empty() {
            return Err(unknown_object(waba));
        }
        let token = bearer(headers);
        let mut last = None;
        for l in lines {
            match self.check_auth(l, headers) {
                Ok(()) => return Ok(()),
                Err(e) if token == Some(l.cfg.access_token.as_str()) => return Err(e),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| GraphError::new(190, "Missing access token")))
    }

    fn list_templates(
        &self,
        version: &str,
        waba: &str,
        q: &ListQuery,
        headers: &HeaderMap,
    ) -> Result<Value, GraphError> {
        self.auth_for_waba(waba, headers)?;
        let limit = match &q.limit {
            None => 25,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| GraphError::new(100, "Param limit must be a positive integer."))?
                .min(1000),
        };
        let all: Vec<Arc<SimTemplate>> = {
            let ts = self
                .inner
                .templates
                .read()
                .unwrap_or_else(|e| e.into_inner());
            ts.iter()
                .filter(|t| t.waba_id.as_deref().is_none_or(|w| w == waba))
                .filter(|t| q.name.as_deref().is_none_or(|n| t.name == n))
                .cloned()
                .collect()
        };
        let bad_cursor = || GraphError::new(100, "Invalid paging cursor.");
        let (start, end) = match (&q.after, &q.before) {
            (Some(a), _) => {
                let s = parse_cursor(a).ok_or_else(bad_cursor)? + 1;
                (s, s + limit)
            }
            (None, Some(b)) => {
                let e = parse_cursor(b).ok_or_else(bad_cursor)?;
                (e.saturating_sub(limit), e)
            }
            _ => (0, limit),
        };
        let end = end.min(all.len());
        let start = start.min(end);
        let fields: Option<Vec<&str>> = q.fields.as_deref().map(|f| {
            f.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        });
        let data: Vec<Value> = all[start..end]
            .iter()
            .map(|t| t.to_graph_json(fields.as_deref()))
            .collect();
        if data.is_empty() {
            return Ok(json!({ "data": [] }));
        }
        let host = headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        let mut extra = String::new();
        if let Some(f) = &q.fields {
            extra.push_str(&format!("&fields={f}"));
        }
        if let Some(n) = &q.name {
            extra.push_str(&format!("&name={n}"));
        }
        let base = format!("http://{host}/{version}/{waba}/message_templates?limit={limit}{extra}");
        let mut paging =
            json!({ "cursors": { "before": cursor(start), "after": cursor(end - 1) } });
        if end < all.len() {
            paging["next"] = format!("{base}&after={}", cursor(end - 1)).into();
        }
        if start > 0 {
            paging["previous"] = format!("{base}&before={}", cursor(start)).into();
        }
        Ok(json!({ "data": data, "paging": paging }))
    }

    fn get_object(
        &self,
        id: &str,
        fields: Option<&str>,
        headers: &HeaderMap,
    ) -> Result<Value, GraphError> {
        if let Some(l) = self.inner.lines.get(id) {
            self.check_auth(l, headers)?;
            let mps = l.mps.load(Ordering::Relaxed);
            let level = if mps == 0 || mps >= 1000 {
                "HIGH"
            } else {
                "STANDARD"
            };
            let mut full = json!({
                "id": id,
                "display_phone_number": l.cfg.display_phone_number,
                "verified_name": "tiercast simulator",
                "quality_rating": "GREEN",
                "throughput": { "level": level },
            });
            let limit = self
                .inner
                .messaging_limit
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone();
            if let Some(limit) = limit {
                full["whatsapp_business_manager_messaging_limit"] = Value::from(limit);
            }
            return Ok(project(full, fields));
        }
        if self.inner.lines.values().any(|l| l.cfg.waba_id == id) {
            self.auth_for_waba(id, headers)?;
            return Ok(project(
                json!({ "id": id, "name": "tiercast simulator WABA" }),
                fields,
            ));
        }
        let tpl = {
            let ts = self
                .inner
                .templates
                .read()
                .unwrap_or_else(|e| e.into_inner());
            ts.iter().find(|t| !t.id.is_empty() && t.id == id).cloned()
        };
        if let Some(t) = tpl {
            // Any line's valid token may read templates.
            let authorised = self
                .inner
                .lines
                .values()
                .any(|l| self.check_auth(l, headers).is_ok());
            if !authorised {
                return Err(GraphError::new(
                    190,
                    "Invalid OAuth access token - Cannot parse access token",
                )
                .with_status(
                    StatusCode::from_u16(self.inner.cfg.auth_error_status)
                        .unwrap_or(StatusCode::UNAUTHORIZED),
                ));
            }
            let fields: Option<Vec<&str>> = fields.map(|f| f.split(',').map(str::trim).collect());
            return Ok(t.to_graph_json(fields.as_deref()));
        }
        Err(unknown_object(id))
    }
}

impl Simulator {
    /// `POST /{waba}/message_templates`: the template joins the WABA as PENDING; a review
    /// (`review_template`) approves or rejects it.
    fn create_template(
        &self,
        waba: &str,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Value, GraphError> {
        self.auth_for_waba(waba, headers)?;
        let req: Value = serde_json::from_slice(body)
            .map_err(|e| GraphError::new(100, format!("Request body is not valid JSON: {e}")))?;
        let s = |k: &str| req.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (name, language) = (s("name"), s("language"));
        let category = s("category").to_ascii_uppercase();
        if name.is_empty()
            || name.len() > 512
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(GraphError::new(
                100,
                "Param name must be at most 512 lower-case letters, digits and underscores.",
            ));
        }
        if language.is_empty() {
            return Err(GraphError::new(100, "The parameter language is required."));
        }
        if !["MARKETING", "UTILITY", "AUTHENTICATION"].contains(&category.as_str()) {
            return Err(GraphError::new(
                100,
                "Param category must be one of {MARKETING, UTILITY, AUTHENTICATION}.",
            ));
        }
        let components: Vec<TemplateComponent> =
            serde_json::from_value(req.get("components").cloned().unwrap_or(Value::Null))
                .map_err(|e| GraphError::new(100, format!("Param components is invalid: {e}")))?;
        if !components
            .iter()
            .any(|c| c.kind.eq_ignore_ascii_case("BODY"))
        {
            return Err(GraphError::new(100, "A BODY component is required."));
        }
        let id = (9_000_000_000_000_000u64
            + self.inner.wamid_counter.fetch_add(1, Ordering::Relaxed))
        .to_string();
        let mut ts = self
            .inner
            .templates
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let exists = ts.iter().any(|t| {
            t.name == name
                && t.language == language
                && t.waba_id.as_deref().is_none_or(|w| w == waba)
        });
        if exists {
            let mut e = GraphError::new(100, "Content in this language already exists");
            e.subcode = Some(2388024);
            return Err(e);
        }
        let parameter_format = match s("parameter_format").to_ascii_uppercase().as_str() {
            "NAMED" => "NAMED",
            _ => "POSITIONAL",
        };
        ts.push(Arc::new(SimTemplate {
            id: id.clone(),
            name,
            language,
            status: "PENDING".into(),
            category: category.clone(),
            parameter_format: parameter_format.into(),
            components,
            waba_id: Some(waba.to_string()),
            extra: serde_json::Map::new(),
        }));
        Ok(json!({ "id": id, "status": "PENDING", "category": category }))
    }
}

async fn create_template_handler(
    State(sim): State<Simulator>,
    Path((_version, waba)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    match sim.create_template(&waba, &headers, &body) {
        Ok(v) => ok_json(v),
        Err(e) => {
            sim.count_rejection(e.code);
            e.into_response()
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewReq {
    name: String,
    language: String,
    /// APPROVED or REJECTED (any status Meta sends is accepted).
    status: String,
    #[serde(default)]
    reason: Option<String>,
}

async fn review_handler(State(sim): State<Simulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<ReviewReq>(&body) {
        Ok(r) => {
            let status = r.status.to_ascii_uppercase();
            if sim.review_template(&r.name, &r.language, &status, r.reason.as_deref()) {
                Json(json!({ "success": true })).into_response()
            } else {
                (
                    StatusCode::NOT_FOUND,
                    Json(json!({ "error": format!("no template {} ({})", r.name, r.language) })),
                )
                    .into_response()
            }
        }
        Err(e) => bad_request(format!("expected {{name, language, status, reason?}}: {e}")),
    }
}

fn project(v: Value, fields: Option<&str>) -> Value {
    match (fields, v) {
        (Some(f), Value::Object(mut m)) => {
            let wanted: Vec<&str> = f.split(',').map(str::trim).collect();
            m.retain(|k, _| k == "id" || wanted.contains(&k.as_str()));
            Value::Object(m)
        }
        (_, v) => v,
    }
}

#[derive(Deserialize)]
struct FieldsQuery {
    fields: Option<String>,
}

async fn object_handler(
    State(sim): State<Simulator>,
    Path((_version, id)): Path<(String, String)>,
    Query(q): Query<FieldsQuery>,
    headers: HeaderMap,
) -> Response {
    match sim.get_object(&id, q.fields.as_deref(), &headers) {
        Ok(v) => ok_json(v),
        Err(e) => e.into_response(),
    }
}

async fn ledger_handler(State(sim): State<Simulator>) -> Response {
    Json(sim.ledger()).into_response()
}

async fn stats_handler(State(sim): State<Simulator>) -> Response {
    Json(sim.stats()).into_response()
}

fn bad_request(msg: String) -> Response {
    (StatusCode::BAD_REQUEST, Json(json!({ "error": msg }))).into_response()
}

async fn inbound_handler(State(sim): State<Simulator>, body: Bytes) -> Response {
    let spec: InboundSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return bad_request(format!("invalid inbound spec: {e}")),
    };
    match sim.inject_inbound(spec) {
        Ok(wamid) => Json(json!({ "wamid": wamid })).into_response(),
        Err(e) => bad_request(e.to_string()),
    }
}

async fn preference_handler(State(sim): State<Simulator>, body: Bytes) -> Response {
    let spec: PreferenceSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return bad_request(format!("expected {{wa_id, value}}: {e}")),
    };
    match sim.inject_user_preference(spec) {
        Ok(()) => Json(json!({ "success": true })).into_response(),
        Err(e) => bad_request(e.to_string()),
    }
}

#[derive(Deserialize)]
struct FateReq {
    number: String,
    fate: Fate,
}

async fn fate_handler(State(sim): State<Simulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<FateReq>(&body) {
        Ok(r) => {
            sim.force_fate(&r.number, r.fate);
            Json(json!({ "success": true })).into_response()
        }
        Err(e) => bad_request(format!("expected {{number, fate}}: {e}")),
    }
}

#[derive(Deserialize)]
struct ThroughputReq {
    phone_number_id: String,
    mps: u32,
}

async fn throughput_handler(State(sim): State<Simulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<ThroughputReq>(&body) {
        Ok(r) if sim.set_throughput(&r.phone_number_id, r.mps) => {
            Json(json!({ "success": true })).into_response()
        }
        Ok(r) => bad_request(format!("unknown phone_number_id {}", r.phone_number_id)),
        Err(e) => bad_request(format!("expected {{phone_number_id, mps}}: {e}")),
    }
}

#[derive(Deserialize)]
struct TierReq {
    tier: String,
    #[serde(default)]
    webhook: bool,
}

/// `POST /sim/tier {"tier": "TIER_2K", "webhook": true}`: the messaging limit Meta reports.
async fn tier_handler(State(sim): State<Simulator>, body: Bytes) -> Response {
    match serde_json::from_slice::<TierReq>(&body) {
        Ok(r) => {
            sim.set_messaging_limit(&r.tier, r.webhook);
            Json(json!({ "success": true })).into_response()
        }
        Err(e) => bad_request(format!("expected {{tier, webhook}}: {e}")),
    }
}

/// `GET /sim/faults`: the send-side faults now in force.
async fn faults_get_handler(State(sim): State<Simulator>) -> Response {
    Json(sim.faults()).into_response()
}

/// `POST /sim/faults {"drop": 0.1, "slow": 0.05, "slow_ms": 3000, "server_error": 0.1,
/// "throttle": 0.1}`: replaces the faults (absent keys are off; `{}` turns all off).
async fn faults_post_handler(State(sim): State<Simulator>, body: Bytes) -> Response {
    let faults = match serde_json::from_slice::<SimFaults>(&body) {
        Ok(f) => f,
        Err(e) => {
            return bad_request(format!(
                "expected {{drop, slow, slow_ms, server_error, throttle}}: {e}"
            ))
        }
    };
    match sim.set_faults(faults) {
        Ok(()) => Json(sim.faults()).into_response(),
        Err(e) => bad_request(e.to_string()),
    }
}

async fn flush_handler(State(sim): State<Simulator>) -> Response {
    sim.flush_webhooks().await;
    Json(json!({ "success": true })).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(conversation: bool) -> StatusCtx<'static> {
        StatusCtx {
            wamid: "wamid.X",
            recipient: "5511987654321",
            callback: Some("tc:7"),
            category: "marketing",
            pricing_type: "regular",
            conversation,
        }
    }

    fn element(c: &StatusCtx, status: &str, priced: bool, error: Option<i64>) -> Value {
        let queued = status_element(c, status, 1_795_428_000, priced, error);
        assert_eq!(queued.wamid, "wamid.X");
        serde_json::from_str(queued.json.get()).unwrap()
    }

    /// The element Meta sends for a priced `sent` on Graph ≤ v23: pricing, the conversation
    /// with its expiry a day later, the echoed callback data, a string timestamp.
    #[test]
    fn a_sent_status_element_carries_pricing_and_the_conversation() {
        let c = ctx(true);
        let conversation_id = format!("{:032x}", fate::hash(0, "wamid.X", 7));
        assert_eq!(
            element(&c, "sent", true, None),
            json!({
                "id": "wamid.X", "status": "sent", "timestamp": "1795428000",
                "recipient_id": "5511987654321", "biz_opaque_callback_data": "tc:7",
                "pricing": {"billable": true, "pricing_model": "PMP", "type": "regular", "category": "marketing"},
                "conversation": {"id": conversation_id, "origin": {"type": "marketing"},
                                 "expiration_timestamp": "1795514400"},
            })
        );
        // A delivered one keeps the conversation without an expiry; v24 drops it.
        let delivered = element(&c, "delivered", true, None);
        assert!(delivered["conversation"]
            .get("expiration_timestamp")
            .is_none());
        assert!(element(&ctx(false), "sent", true, None)
            .get("conversation")
            .is_none());
    }

    /// A `failed` element: no pricing, Meta's error with its title and details.
    #[test]
    fn a_failed_status_element_carries_the_error() {
        let v = element(&ctx(true), "failed", false, Some(131026));
        assert!(v.get("pricing").is_none() && v.get("conversation").is_none());
        assert_eq!(v["errors"][0]["code"], 131026);
        assert_eq!(
            v["errors"][0]["error_data"]["details"],
            graph_error::async_details(131026)
        );
        assert_eq!(v["errors"][0]["title"], graph_error::catalogue(131026).1);
    }
}
