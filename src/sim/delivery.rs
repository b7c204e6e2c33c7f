//! Webhook delivery of the simulator: a background task that batches queued statuses per
//! phone number, optionally duplicates and reorders them, signs each POST with the line's app
//! secret and retries with backoff until the receiver answers 200 (bounded attempts).
//!
//! Completion is tracked per queued item (sequence numbers in a set) so `flush` can wait for
//! "everything queued so far" even while retries and later items are still in flight.

use std::collections::{BTreeSet, HashMap};
use std::pin::pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::{mpsc, Notify, Semaphore};

use super::WebhookMode;
use crate::webhook::signature;

/// Where a webhook goes and how it is signed (one per simulator line).
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub phone_number_id: String,
    pub waba_id: String,
    pub display_phone_number: String,
    pub app_secret: String,
}

pub(crate) enum Job {
    /// One `statuses[]` element, batched with others of the same line.
    Status {
        target: Arc<Target>,
        status: QueuedStatus,
        seq: u64,
    },
    /// A whole change (`field` + `value`), posted on its own right away (inbound messages,
    /// template updates).
    Change {
        target: Arc<Target>,
        field: String,
        value: Value,
        seq: u64,
    },
    /// Unsigned bodies posted one after the other, in order, to their own URL (Gupshup
    /// callbacks: one event per POST, no signature, the subscription's extra headers).
    Sequence {
        url: String,
        headers: Vec<(String, String)>,
        bodies: Vec<Vec<u8>>,
        seq: u64,
    },
    /// Post whatever is buffered now (used by `flush`).
    Nudge,
}

/// A status element already serialised (the simulator writes three per message it accepts;
/// as `Value` trees they cost it as much CPU as answering the send), with its message id for
/// the reordering mode.
#[derive(Clone)]
pub(crate) struct QueuedStatus {
    pub wamid: String,
    pub json: Box<RawValue>,
}

/// Counters shared with the simulator's stats.
#[derive(Default)]
pub(crate) struct DeliveryStats {
    pub posts: AtomicU64,
    pub post_failures: AtomicU64,
    pub events_delivered: AtomicU64,
    pub events_dropped: AtomicU64,
    /// Statuses posted a second time (the duplicate bodies of `duplicate_ratio`).
    pub events_duplicated: AtomicU64,
    /// Messages whose statuses one POST carried newest first (the `reorder` mode).
    pub messages_reordered: AtomicU64,
}

/// Which queued items are not yet delivered (or given up on).
#[derive(Default)]
pub(crate) struct Tracker {
    next: AtomicU64,
    outstanding: Mutex<BTreeSet<u64>>,
    notify: Notify,
}

impl Tracker {
    pub fn begin(&self) -> u64 {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        lock(&self.outstanding).insert(seq);
        seq
    }

    pub fn finish(&self, seqs: &[u64]) {
        {
            let mut o = lock(&self.outstanding);
            for s in seqs {
                o.remove(s);
            }
        }
        self.notify.notify_waiters();
    }

    pub fn pending(&self) -> usize {
        lock(&self.outstanding).len()
    }

    /// Wait until every item begun before this call is finished.
    pub async fn wait_all_before_now(&self) {
        let target = self.next.load(Ordering::SeqCst);
        loop {
            // Register interest before checking, so a finish in between is not missed.
            let mut notified = pin!(self.notify.notified());
            notified.as_mut().enable();
            let done = lock(&self.outstanding)
                .first()
                .is_none_or(|first| *first >= target);
            if done {
                return;
            }
            notified.await;
        }
    }
}

/// Poisoning only happens if a holder panicked; the data (counters, sets) stays usable.
pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Statuses waiting to be batched, per phone_number_id: (target, [(seq, status)]).
type Buffers = HashMap<String, (Arc<Target>, Vec<(u64, QueuedStatus)>)>;

/// The background task. Ends when every sender is dropped (simulator dropped).
pub(crate) async fn run(
    mut rx: mpsc::UnboundedReceiver<Job>,
    url: String,
    mode: WebhookMode,
    seed: u64,
    tracker: Arc<Tracker>,
    stats: Arc<DeliveryStats>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_default();
    let ctx = Arc::new(PostCtx {
        client,
        url,
        mode: mode.clone(),
        tracker,
        stats,
        permits: Semaphore::new(16),
    });
    let mut rng = StdRng::seed_from_u64(seed ^ 0xdead_beef);
    let mut buffers: Buffers = HashMap::new();
    let period = if mode.flush_interval.is_zero() {
        Duration::from_millis(1)
    } else {
        mode.flush_interval
    };
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let batch_max = mode.batch_max.max(1);
    loop {
        tokio::select! {
            job = rx.recv() => match job {
                Some(Job::Status { target, status, seq }) => {
                    let key = target.phone_number_id.clone();
                    let buf = buffers.entry(key).or_insert_with(|| (target, Vec::new()));
                    buf.1.push((seq, status));
                    if buf.1.len() >= batch_max {
                        let items = std::mem::take(&mut buf.1);
                        dispatch_statuses(&ctx, &mut rng, buf.0.clone(), items);
                    }
                }
                Some(Job::Change { target, field, value, seq }) => {
                    let body = envelope(&target, vec![Change { value, field }]);
                    spawn_post(&ctx, target, body, None, vec![seq], 1);
                }
                Some(Job::Sequence { url, headers, bodies, seq }) => {
                    let ratio = ctx.mode.duplicate_ratio.clamp(0.0, 1.0);
                    let duplicate = ratio > 0.0 && rng.gen_bool(ratio);
                    if duplicate {
                        ctx.stats
                            .events_duplicated
                            .fetch_add(bodies.len() as u64, Ordering::Relaxed);
                    }
                    spawn_sequence(&ctx, url, headers, bodies, duplicate, seq);
                }
                Some(Job::Nudge) => flush_all(&ctx, &mut rng, &mut buffers),
                None => {
                    flush_all(&ctx, &mut rng, &mut buffers);
                    return;
                }
            },
            _ = tick.tick() => flush_all(&ctx, &mut rng, &mut buffers),
        }
    }
}

struct PostCtx {
    client: reqwest::Client,
    url: String,
    mode: WebhookMode,
    tracker: Arc<Tracker>,
    stats: Arc<DeliveryStats>,
    permits: Semaphore,
}

fn flush_all(ctx: &Arc<PostCtx>, rng: &mut StdRng, buffers: &mut Buffers) {
    let batch_max = ctx.mode.batch_max.max(1);
    for (target, items) in buffers.values_mut() {
        while !items.is_empty() {
            let take = items.len().min(batch_max);
            let batch: Vec<_> = items.drain(..take).collect();
            dispatch_statuses(ctx, rng, target.clone(), batch);
        }
    }
}

fn dispatch_statuses(
    ctx: &Arc<PostCtx>,
    rng: &mut StdRng,
    target: Arc<Target>,
    mut items: Vec<(u64, QueuedStatus)>,
) {
    if ctx.mode.reorder {
        // Per message, newest status first (read before delivered before sent), and the
        // messages themselves shuffled: the two disorders Meta documents.
        let mut groups: Vec<(String, Vec<(u64, QueuedStatus)>)> = Vec::new();
        for item in items.drain(..) {
            match groups.iter_mut().find(|g| g.0 == item.1.wamid) {
                Some(g) => g.1.push(item),
                None => groups.push((item.1.wamid.clone(), vec![item])),
            }
        }
        groups.shuffle(rng);
        for (_, mut g) in groups {
            if g.len() > 1 {
                ctx.stats.messages_reordered.fetch_add(1, Ordering::Relaxed);
            }
            g.reverse();
            items.extend(g);
        }
    }
    let ratio = ctx.mode.duplicate_ratio.clamp(0.0, 1.0);
    let dups: Vec<&RawValue> = if ratio > 0.0 {
        items
            .iter()
            .filter(|_| rng.gen_bool(ratio))
            .map(|(_, s)| &*s.json)
            .collect()
    } else {
        Vec::new()
    };
    ctx.stats
        .events_duplicated
        .fetch_add(dups.len() as u64, Ordering::Relaxed);
    let count = items.len();
    let seqs: Vec<u64> = items.iter().map(|(s, _)| *s).collect();
    let statuses: Vec<&RawValue> = items.iter().map(|(_, s)| &*s.json).collect();
    let body = envelope(&target, vec![statuses_change(&target, statuses)]);
    let dup_body =
        (!dups.is_empty()).then(|| envelope(&target, vec![statuses_change(&target, dups)]));
    spawn_post(ctx, target, body, dup_body, seqs, count);
}

/// A `messages` change carrying `statuses`.
fn statuses_change<'a>(t: &'a Target, statuses: Vec<&'a RawValue>) -> Change<StatusesValue<'a>> {
    Change {
        value: StatusesValue {
            messaging_product: "whatsapp",
            metadata: Metadata::of(t),
            statuses,
        },
        field: "messages".into(),
    }
}

pub(crate) fn metadata(t: &Target) -> Value {
    serde_json::to_value(Metadata::of(t)).unwrap_or_default()
}

#[derive(Serialize)]
struct Metadata<'a> {
    display_phone_number: &'a str,
    phone_number_id: &'a str,
}

impl<'a> Metadata<'a> {
    fn of(t: &'a Target) -> Self {
        Metadata {
            display_phone_number: &t.display_phone_number,
            phone_number_id: &t.phone_number_id,
        }
    }
}

#[derive(Serialize)]
struct StatusesValue<'a> {
    messaging_product: &'static str,
    metadata: Metadata<'a>,
    statuses: Vec<&'a RawValue>,
}

#[derive(Serialize)]
struct Change<V> {
    value: V,
    field: String,
}

/// Meta's webhook body: one entry (the portfolio) holding `changes`.
fn envelope<V: Serialize>(t: &Target, changes: Vec<Change<V>>) -> Vec<u8> {
    #[derive(Serialize)]
    struct Entry<'a, V> {
        id: &'a str,
        changes: Vec<Change<V>>,
    }
    #[derive(Serialize)]
    struct Body<'a, V> {
        object: &'static str,
        entry: [Entry<'a, V>; 1],
    }
    serde_json::to_vec(&Body {
        object: "whatsapp_business_account",
        entry: [Entry {
            id: &t.waba_id,
            changes,
        }],
    })
    .unwrap_or_default()
}

fn spawn_post(
    ctx: &Arc<PostCtx>,
    target: Arc<Target>,
    body: Vec<u8>,
    duplicate: Option<Vec<u8>>,
    seqs: Vec<u64>,
    events: usize,
) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        // Bounded concurrency: Meta posts concurrently, but not unboundedly.
        let _permit = ctx.permits.acquire().await.ok();
        let ok = post_with_retry(&ctx, &target, &body).await;
        if ok {
            ctx.stats
                .events_delivered
                .fetch_add(events as u64, Ordering::Relaxed);
        } else {
            ctx.stats
                .events_dropped
                .fetch_add(events as u64, Ordering::Relaxed);
        }
        if let Some(dup) = duplicate {
            // A re-delivery of already-delivered events, as Meta does after timeouts.
            post_with_retry(&ctx, &target, &dup).await;
        }
        ctx.tracker.finish(&seqs);
    });
}

fn spawn_sequence(
    ctx: &Arc<PostCtx>,
    url: String,
    headers: Vec<(String, String)>,
    bodies: Vec<Vec<u8>>,
    duplicate: bool,
    seq: u64,
) {
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let _permit = ctx.permits.acquire().await.ok();
        for body in &bodies {
            let ok = post_to(&ctx, &url, &headers, body).await;
            let counter = if ok {
                &ctx.stats.events_delivered
            } else {
                &ctx.stats.events_dropped
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        if duplicate {
            // Gupshup re-posts when an answer is slow or not 2xx: the receiver must not care.
            for body in &bodies {
                post_to(&ctx, &url, &headers, body).await;
            }
        }
        ctx.tracker.finish(&[seq]);
    });
}

async fn post_with_retry(ctx: &PostCtx, target: &Target, body: &[u8]) -> bool {
    let sig = signature::sign(target.app_secret.as_bytes(), body);
    let headers = [(signature::SIGNATURE_HEADER.to_string(), sig)];
    post_to(ctx, &ctx.url, &headers, body).await
}

/// One POST, retried (when the mode says so) until the receiver answers 200.
async fn post_to(ctx: &PostCtx, url: &str, headers: &[(String, String)], body: &[u8]) -> bool {
    let attempts = if ctx.mode.retry_on_failure {
        ctx.mode.max_attempts.max(1)
    } else {
        1
    };
    let mut backoff = ctx.mode.retry_backoff;
    for attempt in 1..=attempts {
        ctx.stats.posts.fetch_add(1, Ordering::Relaxed);
        let mut req = ctx
            .client
            .post(url)
            .header("content-type", "application/json")
            .body(body.to_vec());
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let res = req.send().await;
        match res {
            Ok(r) if r.status() == reqwest::StatusCode::OK => return true,
            Ok(r) => tracing::debug!(status = %r.status(), attempt, "sim webhook refused"),
            Err(e) => tracing::debug!(error = %e, attempt, "sim webhook post failed"),
        }
        ctx.stats.post_failures.fetch_add(1, Ordering::Relaxed);
        if attempt < attempts {
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(ctx.mode.retry_backoff_max.max(ctx.mode.retry_backoff));
        }
    }
    false
}
