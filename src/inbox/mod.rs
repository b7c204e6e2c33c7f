//! The inbox: what webhook events mean for campaigns and contacts. Statuses move messages
//! forward and settle attempts; failures are classified with the same table as synchronous
//! errors (SPEC §2 rule 6); template and preference events update templates and opt-outs.

use crate::clock::{Millis, SharedClock};
use crate::config::Config;
use crate::dispatch::{failure_action, parse_callback_data};
use crate::domain::error_class::{classify_meta, ErrorClass};
use crate::domain::{CampaignState, Outcome, Tier};
use crate::lines::LineRuntime;
use crate::metrics as m;
use crate::store::{CategoryChange, FailureAction, StatusUpdate, Store, StoreError};
use crate::webhook::{MessageStatus, MetaEvent, StatusEvent};
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::Arc;
use tracing::Instrument;

mod replies;

pub use replies::AgentError;

#[derive(Clone)]
pub struct Inbox {
    store: Store,
    pub(crate) clock: SharedClock,
    config: Arc<Config>,
    lines: Arc<HashMap<String, Arc<LineRuntime>>>,
    /// Opt-out keywords, normalised (matched against the whole message).
    opt_out_keywords: Arc<Vec<String>>,
}

impl Inbox {
    pub fn new(
        store: Store,
        clock: SharedClock,
        config: Arc<Config>,
        lines: Arc<HashMap<String, Arc<LineRuntime>>>,
    ) -> Self {
        let opt_out_keywords = Arc::new(
            config
                .inbox
                .opt_out_keywords
                .iter()
                .map(|k| crate::domain::text::normalize(k))
                .collect(),
        );
        Inbox {
            store,
            clock,
            config,
            lines,
            opt_out_keywords,
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The line a webhook's `metadata.phone_number_id` belongs to.
    pub(crate) fn line_of(&self, phone_number_id: &str) -> Option<&str> {
        self.config
            .lines
            .iter()
            .find(|l| l.phone_number_id == phone_number_id)
            .map(|l| l.name.as_str())
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
                    if !category.contains("marketing") {
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

    /// Statuses of one webhook, applied in one transaction; a `failed` one that moved a
    /// campaign row then goes through the failure classification on its own (rare).
    async fn on_statuses(&self, events: &[&StatusEvent]) -> Result<(), StoreError> {
        let named: Vec<i64> = events
            .iter()
            .filter_map(|e| e.callback_data.as_deref().and_then(parse_callback_data))
            .collect();
        // A webhook that names an attempt still in flight (it beat the HTTP answer, or the
        // daemon died before recording it) settles it; the campaign's response timeout gives
        // the pending row its deadline. Usually none is in flight: the answer came first.
        let in_flight = if named.is_empty() {
            HashMap::new()
        } else {
            self.store.attempts_in_flight(&named).await?
        };
        let mut timeouts: HashMap<i64, Option<Millis>> = HashMap::new();
        let mut updates = Vec::with_capacity(events.len());
        for ev in events {
            let line = self.line_of(&ev.phone_number_id).unwrap_or("unknown");
            m::message_status(line, ev.status.as_str());
            let at: Millis = ev.timestamp.saturating_mul(1000);
            let attempt_id = ev
                .callback_data
                .as_deref()
                .and_then(parse_callback_data)
                .filter(|id| in_flight.contains_key(id));
            let mut deadline = at;
            if let Some(campaign_id) = attempt_id.and_then(|id| in_flight.get(&id)) {
                if !timeouts.contains_key(campaign_id) {
                    let timeout = self
                        .campaign_config(*campaign_id)
                        .await?
                        .map(|c| c.response_timeout.as_millis() as Millis);
                    timeouts.insert(*campaign_id, timeout);
                }
                if let Some(Some(timeout)) = timeouts.get(campaign_id) {
                    deadline = at + timeout;
                }
            }
            let error = ev.errors.first();
            updates.push((
                StatusUpdate {
                    wamid: &ev.wamid,
                    attempt_id,
                    status: ev.status.as_str(),
                    at,
                    error_code: error.map(|e| e.code),
                    error_text: error.map(|e| e.title.as_str()),
                },
                deadline,
            ));
        }
        let applied = self.store.apply_statuses(&updates).await?;
        let debug = tracing::enabled!(tracing::Level::DEBUG);
        let mut names: HashMap<i64, String> = HashMap::new();
        for (ev, applied) in events.iter().zip(&applied) {
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
                self.on_failed(ev).instrument(span).await?;
            }
        }
        Ok(())
    }

    /// A `failed` status that moved its campaign row: classify the error and move the row.
    async fn on_failed(&self, ev: &StatusEvent) -> Result<(), StoreError> {
        let Some(target) = self.store.status_target(&ev.wamid).await? else {
            return Ok(());
        };
        let line = self.line_of(&ev.phone_number_id).unwrap_or("unknown");
        let error = ev.errors.first();
        let Some(campaign) = self.campaign_config(target.campaign_id).await? else {
            return Ok(());
        };
        let code = error.map(|e| e.code).unwrap_or(131000);
        let mut c = classify_meta(code);
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
                    "marketing opt-out reported by Meta (131050)",
                    "131050",
                    now,
                )
                .await?;
        }
        // The failed attempt was counted when it was accepted.
        let action = failure_action(&campaign, &c, (target.attempts - 1).max(0), 0, now);
        if c.class == ErrorClass::Campaign {
            let reason = format!("{} (error {code} in a status webhook)", c.title);
            if let Some(row) = self.store.campaign_by_name(&campaign.name).await? {
                if self
                    .store
                    .transition_campaign(
                        row.id,
                        CampaignState::Running,
                        CampaignState::Paused,
                        Some(&reason),
                        now,
                    )
                    .await?
                {
                    tracing::error!(campaign = %campaign.name, %reason, "campaign paused");
                    m::campaign_paused(&campaign.name);
                }
            }
            self.store
                .fail_pending(
                    target.hopper_id,
                    &FailureAction::Untouched,
                    code,
                    &text,
                    now,
                )
                .await?;
        } else {
            self.store
                .fail_pending(target.hopper_id, &action, code, &text, now)
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
