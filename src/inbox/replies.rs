//! Inbound messages (SPEC §4): the customer-service window, opt-out keywords, matching a reply
//! to its campaign row and its answer, handoff to agents, late replies, out-of-hours replies;
//! response timeouts; what agents do through the API (reply inside the window, recontact).

use super::Inbox;
use crate::config::{AnswerAction, Campaign, Config, ConfigError, Line, TemplateRef};
use crate::domain::template::{CompiledMapping, ContactFields};
use crate::domain::text::normalize;
use crate::domain::{CampaignState, Outcome};
use crate::metrics as m;
use crate::provider::{Media, Provider, SendError, TemplateMessage};
use crate::store::{InteractionRow, OutboundMessage, Store, StoreError, TierBudget};
use crate::webhook::{InboundKind, InboundMessage};
use std::collections::BTreeMap;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("no interaction {0}")]
    NotFound(i64),
    #[error("the customer-service window is closed (the contact last wrote more than 24 h ago); send the recontact template")]
    WindowExpired,
    /// Says which of the interaction's campaign and its line lacks one.
    #[error("{0}")]
    NoRecontactTemplate(String),
    /// The template is not synced or not approved.
    #[error("the recontact template cannot be sent: {0}")]
    Template(String),
    /// A placeholder without a mapping, or a feature tiercast cannot fill; names the key to set.
    #[error("the recontact template {template} cannot be filled: {why}")]
    Unfillable { template: String, why: String },
    #[error("line {0:?} is not configured")]
    UnknownLine(String),
    #[error("the portfolio's messaging limit is spent for now; the next slot opens within 24 h")]
    TierSpent,
    #[error("provider refused the message: {0}")]
    Provider(#[from] SendError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What an agent sends inside the customer-service window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentReply {
    Text(String),
    /// Sent by link; the history keeps the caption, then the link.
    Media(Media),
}

/// Text and answer candidates of an inbound message.
struct Reading<'a> {
    kind: &'static str,
    text: Option<&'a str>,
    /// Values an answer key may match: button payload, button text, interactive id / title.
    candidates: Vec<&'a str>,
    /// A message a person wrote or tapped (reactions, system notices and the like are not).
    is_reply: bool,
}

fn read(kind: &InboundKind) -> Reading<'_> {
    match kind {
        InboundKind::Text { body } => Reading {
            kind: "text",
            text: Some(body),
            candidates: vec![body],
            is_reply: true,
        },
        InboundKind::Button { payload, text } => Reading {
            kind: "button",
            text: Some(text),
            candidates: vec![payload, text],
            is_reply: true,
        },
        InboundKind::ButtonReply { id, title } | InboundKind::ListReply { id, title, .. } => {
            Reading {
                kind: "interactive",
                text: Some(title),
                candidates: vec![id, title],
                is_reply: true,
            }
        }
        InboundKind::Media { caption, .. } => Reading {
            kind: "media",
            text: caption.as_deref(),
            candidates: vec![],
            is_reply: true,
        },
        InboundKind::Location { .. } => Reading {
            kind: "location",
            text: None,
            candidates: vec![],
            is_reply: true,
        },
        InboundKind::Contacts => Reading {
            kind: "contacts",
            text: None,
            candidates: vec![],
            is_reply: true,
        },
        InboundKind::Reaction { .. } => Reading {
            kind: "reaction",
            text: None,
            candidates: vec![],
            is_reply: false,
        },
        InboundKind::System { .. } => Reading {
            kind: "system",
            text: None,
            candidates: vec![],
            is_reply: false,
        },
        InboundKind::Order => Reading {
            kind: "order",
            text: None,
            candidates: vec![],
            is_reply: true,
        },
        InboundKind::Unsupported { .. } => Reading {
            kind: "unsupported",
            text: None,
            candidates: vec![],
            is_reply: true,
        },
        InboundKind::Other { .. } => Reading {
            kind: "other",
            text: None,
            candidates: vec![],
            is_reply: true,
        },
    }
}

impl Inbox {
    pub(super) async fn on_inbound(&self, msg: &InboundMessage) -> Result<(), StoreError> {
        let Some(line) = self.line_of(&msg.phone_number_id).map(str::to_string) else {
            tracing::warn!(phone_number_id = %msg.phone_number_id, "inbound message for a number no line has; ignored");
            return Ok(());
        };
        let Some(from) = msg.from.as_deref().filter(|f| !f.is_empty()) else {
            tracing::info!(line = %line, "inbound message from a username-only user (no phone number); not matched to campaigns");
            return Ok(());
        };
        let phone = format!("+{}", from.trim_start_matches('+'));
        let at = msg.timestamp.saturating_mul(1000);
        let reading = read(&msg.kind);
        let Some(message_id) = self
            .store
            .record_inbound(&line, &phone, &msg.wamid, reading.kind, reading.text, at)
            .await?
        else {
            return Ok(()); // a duplicate delivery of a message already handled
        };
        self.store.touch_window(&line, &phone, at).await?;
        if self.store.is_blacklisted(&phone).await? {
            tracing::info!(line = %line, "inbound message from a blacklisted number recorded; nothing opened");
            return Ok(());
        }
        if !reading.is_reply {
            return Ok(());
        }
        if reading.kind == "text"
            && reading
                .text
                .is_some_and(|t| self.opt_out_keywords.contains(&normalize(t)))
        {
            self.opt_out(&phone, "opt-out keyword", "keyword").await?;
            if let Some(confirmation) = self.config.inbox.opt_out_confirmation.clone() {
                self.send_text_in_background(&line, &phone, confirmation, None);
            }
            return Ok(());
        }
        // An opt-in keyword lifts an opt-out the contact made; a contact an admin opted out, or
        // one not opted out at all, goes on as any reply would (a person sees it).
        if reading.kind == "text"
            && reading
                .text
                .is_some_and(|t| self.opt_in_keywords.contains(&normalize(t)))
            && self.store.remove_contact_opt_out(&phone).await?
        {
            tracing::info!(source = "keyword", "contact opted back in");
            if let Some(confirmation) = self.config.inbox.opt_in_confirmation.clone() {
                self.send_text_in_background(&line, &phone, confirmation, None);
            }
            return Ok(());
        }

        // A reply may quote our message by another id than the stored one (Gupshup without
        // `gsId`: the WhatsApp id).
        let context = match msg.context_id.as_deref() {
            Some(c) => Some(
                self.store
                    .resolve_message_alias(c)
                    .await?
                    .unwrap_or_else(|| c.to_string()),
            ),
            None => None,
        };
        let lookback = self.config.inbox.reply_lookback.as_millis() as i64;
        let target = self
            .store
            .reply_target(
                &line,
                &phone,
                context.as_deref(),
                at.saturating_sub(lookback),
            )
            .await?;
        let now = self.clock.now_millis();
        let mut interaction = None;
        if let Some(t) = &target {
            tracing::Span::current().record("contact", t.contact_id);
        }
        match target {
            Some(t) if t.state == "pending" => {
                let campaign = self.campaign_config(t.campaign_id).await?;
                if let Some(c) = &campaign {
                    tracing::Span::current().record("campaign", c.name.as_str());
                }
                tracing::debug!(state = %t.state, "reply matched to its campaign row");
                let late = t.response_deadline.is_some_and(|deadline| at > deadline);
                let answer = campaign
                    .as_ref()
                    .and_then(|c| match_answer(c, &reading.candidates));
                let campaign_name = campaign
                    .as_ref()
                    .map(|c| c.name.clone())
                    .unwrap_or_default();
                if late {
                    // The timeout had passed when the contact wrote: the outcome is no_answer and
                    // a person takes the conversation.
                    self.store
                        .close_with_reply(t.hopper_id, Outcome::NoAnswer, None, now)
                        .await?;
                    interaction = Some(
                        self.open_agent(
                            &line,
                            &phone,
                            Some(t.campaign_id),
                            Some(t.hopper_id),
                            "late_reply",
                            reading.text,
                        )
                        .await?,
                    );
                    m::reply(&campaign_name, "late");
                } else if let Some((key, action)) = answer {
                    m::reply(&campaign_name, "answer");
                    match action {
                        AnswerAction::Close => {
                            self.store
                                .close_with_reply(t.hopper_id, Outcome::Answered, Some(&key), now)
                                .await?;
                        }
                        AnswerAction::Handoff => {
                            self.store
                                .close_with_reply(t.hopper_id, Outcome::Answered, Some(&key), now)
                                .await?;
                            interaction = Some(
                                self.open_agent(
                                    &line,
                                    &phone,
                                    Some(t.campaign_id),
                                    Some(t.hopper_id),
                                    "handoff",
                                    reading.text,
                                )
                                .await?,
                            );
                        }
                        AnswerAction::OptOut => {
                            self.opt_out(&phone, &format!("answered {key}"), "answer")
                                .await?;
                        }
                    }
                } else {
                    self.store
                        .close_with_reply(t.hopper_id, Outcome::Replied, None, now)
                        .await?;
                    interaction = Some(
                        self.open_agent(
                            &line,
                            &phone,
                            Some(t.campaign_id),
                            Some(t.hopper_id),
                            "replied",
                            reading.text,
                        )
                        .await?,
                    );
                    m::reply(&campaign_name, "free_text");
                }
            }
            Some(t) => {
                let reason = if t.outcome.as_deref() == Some("no_answer") {
                    "late_reply"
                } else {
                    "inbound"
                };
                interaction = Some(
                    self.open_agent(
                        &line,
                        &phone,
                        Some(t.campaign_id),
                        Some(t.hopper_id),
                        reason,
                        reading.text,
                    )
                    .await?,
                );
            }
            None => {
                interaction = Some(
                    self.open_agent(&line, &phone, None, None, "inbound", reading.text)
                        .await?,
                );
            }
        }
        if let Some(id) = interaction {
            self.store.attach_message(message_id, id).await?;
        }
        self.out_of_hours(&line, &phone, at, interaction);
        Ok(())
    }

    async fn open_agent(
        &self,
        line: &str,
        phone: &str,
        campaign_id: Option<i64>,
        hopper_id: Option<i64>,
        reason: &str,
        text: Option<&str>,
    ) -> Result<i64, StoreError> {
        let (id, new) = self
            .store
            .open_agent_interaction(
                line,
                phone,
                campaign_id,
                hopper_id,
                reason,
                self.clock.now_millis(),
            )
            .await?;
        if new {
            tracing::info!(line, interaction = id, reason, "agent interaction opened");
            self.push_handoff(id, line, phone, reason, text);
        }
        Ok(id)
    }

    /// POSTs the handoff to an external contact centre, in the background with retries, so a
    /// slow receiver never holds the inbox up.
    fn push_handoff(&self, id: i64, line: &str, phone: &str, reason: &str, text: Option<&str>) {
        let Some(url) = self.config.inbox.handoff_url.clone() else {
            return;
        };
        let body = serde_json::json!({ "interaction_id": id, "line": line, "phone": phone, "reason": reason, "text": text }).to_string();
        let signature = self
            .config
            .admin_token()
            .ok()
            .flatten()
            .map(|secret| crate::webhook::sign(secret.expose().as_bytes(), body.as_bytes()));
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let mut wait = Duration::from_secs(1);
            for attempt in 1..=5 {
                let mut request = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone());
                if let Some(sig) = &signature {
                    request = request.header("X-Tiercast-Signature-256", sig);
                }
                match request.timeout(Duration::from_secs(10)).send().await {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => {
                        tracing::warn!(attempt, status = %r.status(), "handoff_url refused the handoff")
                    }
                    Err(e) => tracing::warn!(attempt, error = %e, "handoff_url unreachable"),
                }
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            tracing::error!(interaction = id, "handoff not delivered after 5 attempts");
        });
    }

    /// The line's out-of-hours text, when the contact writes while its time group is closed.
    fn out_of_hours(&self, line: &str, phone: &str, at: i64, interaction: Option<i64>) {
        let Some(cfg) = self.config.line(line) else {
            return;
        };
        let (Some(text), Some(group)) = (
            cfg.out_of_hours_text.clone(),
            cfg.time_group
                .as_ref()
                .and_then(|g| self.config.time_groups.get(g)),
        ) else {
            return;
        };
        if !group.is_open(crate::clock::from_millis(at)) {
            self.send_text_in_background(line, phone, text, interaction);
        }
    }

    fn send_text_in_background(
        &self,
        line: &str,
        phone: &str,
        text: String,
        interaction: Option<i64>,
    ) {
        let this = self.clone();
        let (line, phone) = (line.to_string(), phone.to_string());
        tokio::spawn(async move {
            if let Err(e) = this.send_text(&line, &phone, &text, interaction).await {
                tracing::warn!(line = %line, error = %e, "automatic text not sent");
            }
        });
    }

    async fn send_text(
        &self,
        line: &str,
        phone: &str,
        text: &str,
        interaction: Option<i64>,
    ) -> Result<(), AgentError> {
        let rt = self
            .lines
            .get(line)
            .ok_or_else(|| AgentError::UnknownLine(line.to_string()))?;
        let accepted = rt.provider.send_text(phone, text).await?;
        self.store
            .record_outbound(&OutboundMessage {
                interaction_id: interaction,
                line,
                phone,
                kind: "text",
                text: Some(text),
                wamid: Some(&accepted.wamid),
                at: self.clock.now_millis(),
            })
            .await?;
        Ok(())
    }

    /// Response timeouts (SPEC §4 rule 6): pending rows past their deadline close `no_answer`.
    pub async fn expire_timeouts(&self) -> Result<u64, StoreError> {
        let n = self.store.expire_pending(self.clock.now_millis()).await?;
        if n > 0 {
            tracing::info!(rows = n, "response timeouts: closed as no_answer");
        }
        Ok(n)
    }

    /// A template turned PAUSED / DISABLED / REJECTED (or was deleted): every running campaign
    /// that sends it pauses with the reason. APPROVED / REINSTATED only make it usable again.
    pub(super) async fn on_template_status(
        &self,
        name: &str,
        language: &str,
        event: &str,
        reason: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = self.clock.now_millis();
        let n = self
            .store
            .set_template_status(name, language, event, reason, now)
            .await?;
        tracing::info!(template = %name, %language, status = %event, templates = n, "template status changed");
        if !matches!(
            event,
            "PAUSED" | "DISABLED" | "REJECTED" | "DELETED" | "PENDING_DELETION" | "LOCKED"
        ) {
            return Ok(());
        }
        let why = format!(
            "template {name} ({language}) is {event}{}",
            reason
                .filter(|r| *r != "NONE")
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        );
        for c in self
            .config
            .campaigns
            .iter()
            .filter(|c| c.template.name == name && c.template.language == language)
        {
            if let Some(row) = self.store.campaign_by_name(&c.name).await? {
                if self
                    .store
                    .transition_campaign(
                        row.id,
                        CampaignState::Running,
                        CampaignState::Paused,
                        Some(&why),
                        now,
                    )
                    .await?
                {
                    tracing::error!(campaign = %c.name, reason = %why, "campaign paused");
                    m::campaign_paused(&c.name);
                }
            }
        }
        Ok(())
    }

    // --- what agents do (admin API) ---------------------------------------------------------

    async fn agent_interaction(&self, id: i64) -> Result<InteractionRow, AgentError> {
        self.store
            .interaction(id)
            .await?
            .ok_or(AgentError::NotFound(id))
    }

    /// Free text or media to the contact: only inside the customer-service window.
    pub async fn agent_reply(&self, id: i64, reply: &AgentReply) -> Result<(), AgentError> {
        let i = self.agent_interaction(id).await?;
        let open = i
            .window_expires_at
            .is_some_and(|t| t > self.clock.now_millis());
        if !open {
            return Err(AgentError::WindowExpired);
        }
        match reply {
            AgentReply::Text(text) => self.send_text(&i.line, &i.phone, text, Some(id)).await,
            AgentReply::Media(media) => {
                let rt = self
                    .lines
                    .get(&i.line)
                    .ok_or_else(|| AgentError::UnknownLine(i.line.clone()))?;
                let accepted = rt.provider.send_media(&i.phone, media).await?;
                let text = match &media.caption {
                    Some(caption) => format!("{caption}\n{}", media.link),
                    None => media.link.clone(),
                };
                self.store
                    .record_outbound(&OutboundMessage {
                        interaction_id: Some(id),
                        line: &i.line,
                        phone: &i.phone,
                        kind: media.kind.as_str(),
                        text: Some(&text),
                        wamid: Some(&accepted.wamid),
                        at: self.clock.now_millis(),
                    })
                    .await?;
                Ok(())
            }
        }
    }

    /// Sends the recontact template (campaign's, else line's): a business-initiated message,
    /// allowed whatever the window.
    pub async fn agent_recontact(&self, id: i64) -> Result<(), AgentError> {
        let i = self.agent_interaction(id).await?;
        let choice = recontact_choice(&self.config, i.campaign.as_deref(), &i.line)?;
        let template = choice.template;
        let def = self
            .store
            .template(&i.line, &template.name, &template.language)
            .await?
            .ok_or_else(|| {
                AgentError::Template(format!(
                    "{} ({}) is not synced on line {}",
                    template.name, template.language, i.line
                ))
            })?;
        if !def.is_approved() {
            return Err(AgentError::Template(format!(
                "{} ({}) is {}",
                def.name, def.language, def.status
            )));
        }
        let mapping =
            CompiledMapping::new(&def, choice.variables).map_err(|e| AgentError::Unfillable {
                template: format!("{} ({})", template.name, template.language),
                why: format!("{e} (in {})", choice.variables_key),
            })?;
        let contact = self.store.contact_by_phone(&i.phone).await?;
        let fields = ContactFields {
            phone: i.phone.clone(),
            name: contact.as_ref().and_then(|c| c.name.clone()),
            email: contact.as_ref().and_then(|c| c.email.clone()),
            fields: contact.map(|c| c.fields).unwrap_or_default(),
        };
        let components = mapping
            .render(&fields)
            .map_err(|e| AgentError::Unfillable {
                template: format!("{} ({})", template.name, template.language),
                why: format!("{e} for this contact (in {})", choice.variables_key),
            })?;
        let rt = self
            .lines
            .get(&i.line)
            .ok_or_else(|| AgentError::UnknownLine(i.line.clone()))?;
        // A recontact is business-initiated: it takes a slot of the portfolio's budget.
        let configured = self.config.portfolio(&rt.line.portfolio).map(|p| p.tier);
        let budget = TierBudget::configured(&rt.line.portfolio, configured);
        if !self
            .store
            .reserve_one(&budget, &i.phone, self.clock.now_millis())
            .await?
        {
            return Err(AgentError::TierSpent);
        }
        let message = TemplateMessage {
            to: i.phone.clone(),
            template_name: template.name.clone(),
            language: template.language.clone(),
            template_id: def.id.clone(),
            components,
            callback_data: format!("tc-recontact:{id}"),
        };
        let accepted = rt.provider.send_template(&message).await?;
        self.store
            .record_outbound(&OutboundMessage {
                interaction_id: Some(id),
                line: &i.line,
                phone: &i.phone,
                kind: "template",
                text: Some(&template.name),
                wamid: Some(&accepted.wamid),
                at: self.clock.now_millis(),
            })
            .await?;
        Ok(())
    }
}

/// A recontact template with the mapping that fills it and where the config names both.
struct RecontactChoice<'c> {
    /// The line it is sent on (and synced on).
    line: &'c str,
    template: &'c TemplateRef,
    variables: &'c BTreeMap<String, String>,
    /// `campaigns[0].recontact_template` and its line of the file.
    template_key: String,
    file_line: Option<usize>,
    /// The config key of `variables`.
    variables_key: String,
}

impl<'c> RecontactChoice<'c> {
    /// A campaign's own, filled by the campaign's `variables`.
    fn of_campaign(c: &'c Campaign) -> Option<Self> {
        Some(RecontactChoice {
            line: &c.line,
            template: c.recontact_template.as_ref()?,
            variables: &c.variables,
            template_key: format!("{}.recontact_template", c.key),
            file_line: c.recontact_file_line,
            variables_key: format!("{}.variables", c.key),
        })
    }

    /// A line's, filled by its `recontact_variables`.
    fn of_line(l: &'c Line) -> Option<Self> {
        let r = l.recontact.as_ref()?;
        Some(RecontactChoice {
            line: &l.name,
            template: &r.template,
            variables: &r.variables,
            template_key: r.key.clone(),
            file_line: r.file_line,
            variables_key: format!("{}.recontact_variables", l.key),
        })
    }
}

/// The recontact template of an interaction: its campaign's, else its line's.
fn recontact_choice<'c>(
    config: &'c Config,
    campaign: Option<&str>,
    line: &str,
) -> Result<RecontactChoice<'c>, AgentError> {
    let configured: Option<&Campaign> = campaign.and_then(|n| config.campaign(n));
    if let Some(choice) = configured.and_then(RecontactChoice::of_campaign) {
        return Ok(choice);
    }
    let Some(line_cfg) = config.line(line) else {
        return Err(AgentError::UnknownLine(line.to_string()));
    };
    if let Some(choice) = RecontactChoice::of_line(line_cfg) {
        return Ok(choice);
    }
    let whose = match (campaign, configured) {
        (None, _) => "this interaction has no campaign (the contact wrote first)".to_string(),
        (Some(name), None) => format!("campaign {name} is no longer in the configuration"),
        (Some(name), Some(_)) => format!("campaign {name} has no recontact_template"),
    };
    Err(AgentError::NoRecontactTemplate(format!(
        "{whose}, and line {line} has no recontact_template either"
    )))
}

/// Refuses a configuration whose recontact templates cannot be filled, at start rather than
/// when an agent clicks: each line's template against its `recontact_variables`, each
/// campaign's against its `variables`, as synced on the line. A template not synced yet is
/// only logged: it may be created later, and recontact then says it is missing.
pub async fn check_recontact_templates(config: &Config, store: &Store) -> anyhow::Result<()> {
    let choices = config
        .lines
        .iter()
        .filter_map(RecontactChoice::of_line)
        .chain(
            config
                .campaigns
                .iter()
                .filter_map(RecontactChoice::of_campaign),
        );
    for choice in choices {
        let t = choice.template;
        let Some(def) = store.template(choice.line, &t.name, &t.language).await? else {
            tracing::warn!(line = %choice.line, template = %t.name, language = %t.language, key = %choice.template_key,
                "recontact template is not synced on the line; recontact will refuse until it is");
            continue;
        };
        if let Err(e) = CompiledMapping::new(&def, choice.variables) {
            return Err(ConfigError {
                file: config.source.clone(),
                line: choice.file_line,
                key: choice.template_key,
                message: format!(
                    "{} ({}) cannot be filled: {e} in {}",
                    t.name, t.language, choice.variables_key
                ),
            }
            .into());
        }
    }
    Ok(())
}

/// The answer a reply picks: a configured key equal to the button payload, the button text or
/// the typed text, once case, accents and spaces are ignored.
fn match_answer(campaign: &Campaign, candidates: &[&str]) -> Option<(String, AnswerAction)> {
    candidates.iter().map(|c| normalize(c)).find_map(|c| {
        campaign
            .answers
            .iter()
            .find(|a| a.normalized == c)
            .map(|a| (a.key.clone(), a.action))
    })
}
