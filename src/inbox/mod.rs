//! The inbox: what webhook events mean for campaigns and contacts. Statuses move messages
//! forward and settle attempts; failures are classified with the same table as synchronous
//! errors (SPEC §2 rule 6); template and preference events update templates and opt-outs.

use crate::brakes::{self, ContactFailure};
use crate::clock::SharedClock;
use crate::config::Config;
use crate::config::ProviderKind;
use crate::dispatch::{failure_action, parse_callback_data};
use crate::domain::error_class::{classify_gupshup, classify_meta, ErrorClass};
use crate::domain::{Outcome, Tier};
use crate::lines::LineRuntime;
use crate::metrics as m;
use crate::outcomes::{response_timeout, Outcomes};
use crate::store::{AppliedStatus, CategoryChange, StatusRecord, StatusUpdate, Store, StoreError};
use crate::webhook::{MessageStatus, MetaEvent, StatusEvent};
use futures::future::BoxFuture;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

mod replies;

/// Looks at an unmatched Gupshup status again after 0.25, 0.5, 1 and 2 s.
const UNMATCHED_RETRIES: u32 = 4;

pub use replies::{check_recontact_templates, AgentError, AgentReply};

#[derive(Clone)]
pub struct Inbox {
    store: Store,
    pub(crate) clock: SharedClock,
    config: Arc<Config>,
    lines: Arc<HashMap<String, Arc<LineRuntime>>>,
    /// Opt-out keywords, normalised (matched against the whole message).
    opt_out_keywords: Arc<Vec<String>>,
    /// Opt-in keywords, normalised likewise.
    opt_in_keywords: Arc<Vec<String>>,
    /// The statuses of concurrent webhook POSTs are applied in group commits (shared with
    /// the dispatcher's accepted sends).
    outcomes: Outcomes,
}

impl Inbox {
    pub fn new(
        store: Store,
        clock: SharedClock,
        config: Arc<Config>,
        lines: Arc<HashMap<String, Arc<LineRuntime>>>,
        outcomes: Outcomes,
    ) -> Self {
        let normalized = |words: &[String]| -> Arc<Vec<String>> {
            Arc::new(
                words
                    .iter()
                    .map(|k| crate::domain::text::normalize(k))
                    .collect(),
            )
        };
        Inbox {
            opt_out_keywords: normalized(&config.inbox.opt_out_keywords),
            opt_in_keywords: normalized(&config.inbox.opt_in_keywords),
            store,
            clock,
            config,
            lines,
            outcomes,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The line a webhook's `metadata.phone_number_id` belongs to.
    pub(crate) fn line_of(&self, phone_number_id: &str) -> Option<&str> {
        self.config_line(phone_number_id).map(|l| l.name.as_str())
    }

    fn config_line(&self, phone_number_id: &str) -> Option<&crate::config::Line> {
        self.config
            .lines
            .iter()
            .find(|l| l.phone_number_id == phone_number_id)
    }

    /// Applies a webhook's events in order. An error means nothing after it was applied; the
    /// caller answers non-200 so the provider delivers the webhook again (every step here is
    /// idempotent, so the replay is safe).
    pub async fn apply(&self, events: &[MetaEvent]) -> Result<(), StoreError> {
        let mut rest = events;
        while let Some(event) = rest.first() {
            // A run of statuses (most webhooks carry nothing else) is one transaction.
            let run: Vec<&StatusEvent> = rest
                .iter()
                .map_while(|e| match e {
                    MetaEvent::Status(s) => Some(s),
                    _ => None,
                })
                .collect();
            if !run.is_empty() {
                for _ in &run {
                    m::webhook_event(event.kind());
                }
                self.on_statuses(&run).await?;
                rest = &rest[run.len()..];
                continue;
            }
            rest = &rest[1..];
            m::webhook_event(event.kind());
            match event {
                MetaEvent::Status(status) => self.on_statuses(&[status]).await?,
                MetaEvent::Inbound(message) => {
                    let span = tracing::info_span!(
                        "inbound",
                        wamid = %message.wamid,
                        context = message.context_id.as_deref(),
                        campaign = tracing::field::Empty,
                        contact = tracing::field::Empty,
                    );
                    self.on_inbound(message).instrument(span).await?
                }
                MetaEvent::TemplateQuality {
                    name,
                    language,
                    new,
                    ..
                } => {
                    self.store
                        .set_template_quality(name, language, new, self.clock.now_millis())
                        .await?;
                    tracing::info!(template = %name, %language, quality = %new, "template quality changed");
                }
                MetaEvent::TemplateCategory {
                    template_id,
                    name,
                    language,
                    new,
                    previous,
                    correct,
                    effective_at,
                    ..
                } => {
                    let change = CategoryChange {
                        template_id: template_id.as_deref(),
                        name,
                        language,
                        new,
                        previous: previous.as_deref(),
                        correct: correct.as_deref(),
                        effective_at: effective_at.map(|s| s.saturating_mul(1000)),
                    };
                    let n = self
                        .store
                        .set_template_category(&change, self.clock.now_millis())
                        .await?;
                    tracing::info!(template = %name, template_id = ?template_id, %language, category = %new,
                        previous = ?previous, correct = ?correct, templates = n, "template category update");
                }
                MetaEvent::BusinessCapability {
                    waba_id,
                    max_daily_conversations_per_business,
                    max_daily_conversation_per_phone,
                    ..
                } => {
                    let tier = max_daily_conversations_per_business
                        .as_deref()
                        .and_then(|t| t.parse::<Tier>().ok())
                        .or_else(|| {
                            max_daily_conversation_per_phone
                                .and_then(|n| n.to_string().parse().ok())
                        });
                    if let Some(tier) = tier {
                        self.tier_changed(waba_id, tier, "business_capability_update")
                            .await?;
                    }
                }
                MetaEvent::PhoneNumberQuality {
                    waba_id,
                    event,
                    current_limit,
                    ..
                } => {
                    if event == "THROUGHPUT_UPGRADE" {
                        self.throughput_upgrade(waba_id);
                    }
                    // Legacy (TIER_1K, UPGRADE / DOWNGRADE / FLAGGED) and current vocabularies
                    // both carry the limit in current_limit when it changed.
                    if let Some(tier) = current_limit
                        .as_deref()
                        .and_then(|t| t.parse::<Tier>().ok())
                    {
                        self.tier_changed(
                            waba_id,
                            tier,
                            &format!("phone_number_quality_update {event}"),
                        )
                        .await?;
                    }
                }
                MetaEvent::TemplateStatus {
                    name,
                    language,
                    event,
                    reason,
                    ..
                } => {
                    self.on_template_status(name, language, event, reason.as_deref())
                        .await?
                }
                MetaEvent::UserPreference {
                    wa_id,
                    value,
                    category,
                    ..
                } if !wa_id.is_empty() => {
                    let phone = format!("+{}", wa_id.trim_start_matches('+'));
                    // `all`: Gupshup's (legacy) opt-out, which covers every message.
                    if !(category.contains("marketing") || category == "all") {
                        continue;
                    }
                    if value == "stop" {
                        self.opt_out(&phone, "user_preferences stop", "user_preferences")
                            .await?;
                    } else if value == "resume"
                        && self.store.remove_marketing_opt_out(&phone).await?
                    {
                        tracing::info!(source = "user_preferences", "contact opted back in");
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A new messaging limit for the portfolios of the lines on `waba_id` (every portfolio when
    /// the webhook names no account we know, as Meta counts per business portfolio).
    async fn tier_changed(
        &self,
        waba_id: &str,
        tier: Tier,
        source: &str,
    ) -> Result<(), StoreError> {
        let mut portfolios: Vec<&str> = self
            .config
            .lines
            .iter()
            .filter(|l| {
                l.waba_id.as_deref() == Some(waba_id) || crate::lines::sim_waba_id(l) == waba_id
            })
            .map(|l| l.portfolio.as_str())
            .collect();
        if portfolios.is_empty() && self.config.portfolios.len() == 1 {
            portfolios.push(self.config.portfolios[0].name.as_str());
        }
        portfolios.sort_unstable();
        portfolios.dedup();
        for p in portfolios {
            crate::tiers::apply(
                &self.store,
                &self.config,
                p,
                tier,
                source,
                self.clock.now_millis(),
            )
            .await?;
        }
        Ok(())
    }

    /// Meta raised the number's throughput: lines that follow upgrades may send 1,000 msg/s.
    fn throughput_upgrade(&self, waba_id: &str) {
        for l in self
            .config
            .lines
            .iter()
            .filter(|l| l.follow_throughput_upgrades)
        {
            if l.waba_id.as_deref() == Some(waba_id) || crate::lines::sim_waba_id(l) == waba_id {
                if let Some(rt) = self.lines.get(&l.name) {
                    rt.pacer.raise_max(1000, std::time::Instant::now());
                }
            }
        }
    }

    pub async fn opt_out(&self, phone: &str, reason: &str, source: &str) -> Result<(), StoreError> {
        let now = self.clock.now_millis();
        if self.store.add_opt_out(phone, reason, source, now).await? {
            tracing::info!(source, "contact opted out");
        }
        self.store
            .close_open_rows_of_phone(phone, Outcome::OptedOut, now)
            .await?;
        Ok(())
    }

    /// Boxed: an unmatched Gupshup status schedules a later call of itself (see
    /// [`Inbox::retry_unmatched`]).
    fn on_statuses_boxed<'a>(
        &'a self,
        events: &'a [&'a StatusEvent],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.on_statuses(events))
    }

    /// Gupshup posts its first callbacks without our attempt id and may beat the send's HTTP
    /// answer (with no delay, or a slow daemon): a status naming an id not stored yet is
    /// looked at again a few times over ~4 s once the id shows up, instead of being lost.
    fn retry_unmatched(&self, ev: &StatusEvent) {
        let this = self.clone();
        let ev = ev.clone();
        tokio::spawn(async move {
            for attempt in 0..UNMATCHED_RETRIES {
                tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
                match this.store.knows_message_id(&ev.wamid).await {
                    Ok(true) => {
                        if let Err(e) = this.on_statuses_boxed(&[&ev]).await {
                            tracing::warn!(error = %e, "late-matched status not applied");
                        }
                        return;
                    }
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "late-matched status not applied");
                        return;
                    }
                }
            }
            tracing::debug!(id = %ev.wamid, "status for a message tiercast did not send; ignored");
        });
    }

    /// Statuses of one webhook, applied in one transaction; a `failed` one that moved a
    /// campaign row then goes through the failure classification on its own (rare).
    async fn on_statuses(&self, events: &[&StatusEvent]) -> Result<(), StoreError> {
        // Gupshup's `enqueued` is no step of a message's life: only the ids it pairs matter.
        let mut steps: Vec<&StatusEvent> = Vec::with_capacity(events.len());
        for ev in events {
            let enqueued = ev.status.as_str() == "enqueued";
            if let Some(alt) = ev.alt_id.as_deref() {
                let ours = self
                    .store
                    .add_message_alias(alt, &ev.wamid, self.clock.now_millis())
                    .await?;
                // Other statuses of an id not stored yet are looked at again below.
                if !ours && enqueued {
                    self.retry_unmatched(ev);
                }
            }
            if !enqueued {
                steps.push(*ev);
            }
        }
        let events = &steps[..];
        // The attempt a status names (our callback data) settles it if it is still in flight:
        // the group commit looks that up once for its whole batch.
        let mut records = Vec::with_capacity(events.len());
        // One counter update per (line, status) of the batch, not per event: a registry
        // lookup builds and hashes the labels each time.
        let mut counts: Vec<(&str, &str, u64)> = Vec::new();
        for ev in events {
            let line = self.line_of(&ev.phone_number_id).unwrap_or("unknown");
            let status = ev.status.as_str();
            match counts.iter_mut().find(|c| c.0 == line && c.1 == status) {
                Some(c) => c.2 += 1,
                None => counts.push((line, status, 1)),
            }
            let error = ev.errors.first();
            records.push(StatusRecord {
                wamid: ev.wamid.clone(),
                attempt_id: ev.callback_data.as_deref().and_then(parse_callback_data),
                status: ev.status.as_str().to_string(),
                at: ev.timestamp.saturating_mul(1000),
                error_code: error.map(|e| e.code),
                error_text: error.map(|e| e.title.clone()),
            });
        }
        for (line, status, n) in counts {
            m::message_statuses(line, status, n);
        }
        let records: Arc<[StatusRecord]> = records.into();
        let mut applied = self.outcomes.statuses(records.clone()).await?;
        // An id we do not know may be another id of one of ours (a Gupshup report naming only
        // the WhatsApp id): looked up only on a miss, so Meta's path pays nothing.
        let mut again = Vec::new();
        for (i, a) in applied.iter().enumerate() {
            if !a.known {
                if let Some(id) = self.store.resolve_message_alias(&events[i].wamid).await? {
                    again.push((i, id));
                }
            }
        }
        if !again.is_empty() {
            let retried: Vec<StatusUpdate<'_>> = again
                .iter()
                .map(|(i, id)| StatusUpdate {
                    wamid: id.as_str(),
                    ..records[*i].as_update()
                })
                .collect();
            let timeouts = |name: &str| response_timeout(&self.config, name);
            for ((i, _), a) in again.iter().zip(
                self.store
                    .apply_statuses(&retried, &timeouts, self.clock.now_millis())
                    .await?,
            ) {
                applied[*i] = AppliedStatus { known: true, ..a };
            }
        }
        for (ev, a) in events.iter().zip(&applied) {
            let gupshup = || {
                self.config_line(&ev.phone_number_id)
                    .is_some_and(|l| l.provider == ProviderKind::Gupshup)
            };
            if !a.known && gupshup() {
                self.retry_unmatched(ev);
            }
        }
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        let mut names: HashMap<i64, String> = HashMap::new();
        for (i, (ev, applied)) in events.iter().zip(&applied).enumerate() {
            let Some((_, campaign_id, contact_id)) = applied.advanced else {
                continue;
            };
            let failed = ev.status == MessageStatus::Failed;
            if !debug && !failed {
                continue;
            }
            if let Entry::Vacant(slot) = names.entry(campaign_id) {
                let name = self.store.campaign_name(campaign_id).await?;
                slot.insert(name.unwrap_or_default());
            }
            // Campaign and contact (its id, never the number) name the row the wamid matched.
            let span = tracing::info_span!(
                "status",
                wamid = %ev.wamid,
                status = ev.status.as_str(),
                campaign = names[&campaign_id].as_str(),
                contact = contact_id,
            );
            span.in_scope(|| tracing::debug!(advanced = true, "status applied"));
            if failed {
                let wamid = again
                    .iter()
                    .find(|(j, _)| *j == i)
                    .map_or(ev.wamid.as_str(), |(_, id)| id.as_str());
                self.on_failed(ev, wamid).instrument(span).await?;
            }
        }
        Ok(())
    }

    /// A `failed` status that moved its campaign row: classify the error and move the row.
    /// `wamid` is the id the row is stored under (an alias of `ev.wamid`'s, at times).
    async fn on_failed(&self, ev: &StatusEvent, wamid: &str) -> Result<(), StoreError> {
        let Some(target) = self.store.status_target(wamid).await? else {
            return Ok(());
        };
        let config_line = self.config_line(&ev.phone_number_id);
        let line = config_line.map(|l| l.name.as_str()).unwrap_or("unknown");
        let gupshup = config_line.is_some_and(|l| l.provider == ProviderKind::Gupshup);
        let error = ev.errors.first();
        let Some(campaign) = self.campaign_config(target.campaign_id).await? else {
            return Ok(());
        };
        let code = error.map(|e| e.code).unwrap_or(131000);
        let mut c = if gupshup {
            classify_gupshup(code)
        } else {
            classify_meta(code)
        };
        if c.class == ErrorClass::Ambiguous {
            // A failed status is a certain failure, not an unknown fate: retry with backoff.
            c.class = ErrorClass::Retryable;
        }
        let text = error
            .map(|e| format!("{} ({code})", e.title))
            .unwrap_or_else(|| "failed without an error".into());
        m::send_failure(line, &campaign.name, &code.to_string(), c.class.as_str());
        let now = self.clock.now_millis();
        if c.opt_out {
            self.store
                .add_opt_out(
                    &target.contact_phone,
                    "marketing opt-out reported by the provider (131050)",
                    "131050",
                    now,
                )
                .await?;
        }
        // The failed attempt was counted when it was accepted.
        let action = failure_action(&campaign, &c, (target.attempts - 1).max(0), 0, now);
        self.store
            .note_status_failure(target.hopper_id, wamid, code, c.class, &text, now)
            .await?;
        let campaign_at_fault = c.class == ErrorClass::Campaign;
        if campaign_at_fault {
            // Paused before the row is due again, so no line sends it meanwhile.
            let reason = format!("{} (error {code} in a status webhook)", c.title);
            brakes::pause(
                &self.store,
                target.campaign_id,
                &campaign.name,
                &reason,
                now,
            )
            .await?;
        }
        self.store
            .fail_pending(target.hopper_id, &action, code, &text, now)
            .await?;
        if campaign_at_fault {
            return Ok(());
        }
        let failure = ContactFailure {
            campaign: &campaign,
            campaign_id: target.campaign_id,
            contact_id: target.contact_id,
            class: &c,
            code: Some(code),
        };
        if let Some(reason) = brakes::after_contact_failure(&self.store, &failure).await? {
            brakes::pause(
                &self.store,
                target.campaign_id,
                &campaign.name,
                &reason,
                now,
            )
            .await?;
        }
        Ok(())
    }

    async fn campaign_config(
        &self,
        campaign_id: i64,
    ) -> Result<Option<crate::config::Campaign>, StoreError> {
        let Some(name) = self.store.campaign_name(campaign_id).await? else {
            return Ok(None);
        };
        Ok(self.config.campaign(&name).cloned())
    }
}
