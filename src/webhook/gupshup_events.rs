//! Gupshup callback parser (reference `gupshup.md` §2): the v2 envelope
//! (`{"app","timestamp","version":2,"type","payload"}`) turned into the same [`MetaEvent`]s the
//! Meta parser yields, so the inbox and the store treat both providers alike; bodies with an
//! `entry` array are v3 (Meta's envelope) and go to the Meta parser.
//!
//! Correlation (§2.3): our stored id of a Gupshup send is its `messageId`. Events name it as
//! `gsId` (sent / delivered / read / async failed) or as `id` (enqueued, sync failed), so the
//! key is `gsId ?? id`; the WhatsApp id they also carry (`id` next to a `gsId`, or the enqueued
//! event's `whatsappMessageId`) is passed on as [`StatusEvent::alt_id`] so that events without
//! a `gsId` (more than a week late) and replies quoting only the WhatsApp id still find the row.
//!
//! Like the Meta parser this is liberal: unknown types become `Unhandled` and are answered 200;
//! only bodies that are not a JSON object are errors.

use serde_json::{Map, Value};

use super::meta_events::{
    float_of, int_of, normalise_language, parse_meta_webhook, string_of, ApiErrorInfo, InboundKind,
    InboundMessage, MessageStatus, MetaEvent, StatusEvent, WebhookParseError,
};

/// A parsed Gupshup callback and who it says it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct GupshupWebhook {
    /// 2 or 3.
    pub version: u8,
    /// v2 `app`: the app name.
    pub app: Option<String>,
    /// v2 `appId` (newer payloads) or v3 `gs_app_id`.
    pub app_id: Option<String>,
    pub events: Vec<MetaEvent>,
}

impl GupshupWebhook {
    /// Stamps the line the callback belongs to on every event: Gupshup payloads name no
    /// `phone_number_id` (v2) or Meta's (v3), and no WABA, while the inbox finds lines by those.
    pub fn assign_line(&mut self, phone_number_id: &str, account_key: &str) {
        for e in &mut self.events {
            match e {
                MetaEvent::Status(s) => s.phone_number_id = phone_number_id.to_string(),
                MetaEvent::Inbound(m) => m.phone_number_id = phone_number_id.to_string(),
                MetaEvent::UserPreference {
                    phone_number_id: p, ..
                }
                | MetaEvent::SystemErrors {
                    phone_number_id: p, ..
                } => *p = Some(phone_number_id.to_string()),
                MetaEvent::TemplateStatus { waba_id, .. }
                | MetaEvent::TemplateQuality { waba_id, .. }
                | MetaEvent::TemplateCategory { waba_id, .. }
                | MetaEvent::PhoneNumberQuality { waba_id, .. }
                | MetaEvent::BusinessCapability { waba_id, .. }
                | MetaEvent::AccountUpdate { waba_id, .. } => *waba_id = account_key.to_string(),
                MetaEvent::Unhandled { .. } => {}
            }
        }
    }
}

/// Parse a Gupshup callback body (raw bytes).
pub fn parse_gupshup_webhook(body: &[u8]) -> Result<GupshupWebhook, WebhookParseError> {
    let root: Value = serde_json::from_slice(body).map_err(WebhookParseError::from_json)?;
    let Some(obj) = root.as_object() else {
        return Err(WebhookParseError::NotAnObject {
            found: super::meta_events::json_type(&root),
        });
    };
    if obj.contains_key("entry") {
        return Ok(GupshupWebhook {
            version: 3,
            app: None,
            app_id: string_of(obj.get("gs_app_id")),
            events: parse_meta_webhook(body)?,
        });
    }
    let kind = string_of(obj.get("type")).unwrap_or_default();
    let envelope_ts = obj.get("timestamp").and_then(int_of).unwrap_or(0) / 1000;
    let empty = Map::new();
    let payload = obj
        .get("payload")
        .and_then(Value::as_object)
        .unwrap_or(&empty);
    let events = match kind.as_str() {
        "message" => vec![MetaEvent::Inbound(inbound(payload, envelope_ts))],
        "message-event" => vec![MetaEvent::Status(status(payload, envelope_ts))],
        "user-event" => vec![user_event(payload)],
        "preference-event" => preferences(payload),
        "template-event" => vec![template_event(payload, &kind)],
        "account-event" => vec![account_event(payload, &kind)],
        other => vec![unhandled(other, payload)],
    };
    Ok(GupshupWebhook {
        version: 2,
        app: string_of(obj.get("app")),
        app_id: string_of(obj.get("appId")),
        events,
    })
}

fn unhandled(kind: &str, payload: &Map<String, Value>) -> MetaEvent {
    let sub = string_of(payload.get("type"));
    MetaEvent::Unhandled {
        field: match sub {
            Some(s) if !kind.is_empty() => format!("gupshup:{kind}/{s}"),
            _ => format!("gupshup:{kind}"),
        },
    }
}

fn inbound(p: &Map<String, Value>, envelope_ts: i64) -> InboundMessage {
    let s = |k: &str| string_of(p.get(k));
    let sender = p.get("sender");
    let inner = p.get("payload");
    let i = |k: &str| inner.and_then(|v| string_of(v.get(k)));
    let ptype = s("type").unwrap_or_default();
    let context = p.get("context");
    let c = |k: &str| context.and_then(|v| string_of(v.get(k)));
    let kind = if i("type").as_deref() == Some("button") {
        // A template quick-reply tap: `quick_reply` in most pages, `text` in one (§2.2).
        let text = i("text").or_else(|| i("title")).unwrap_or_default();
        InboundKind::Button {
            payload: i("postbackText").unwrap_or_else(|| text.clone()),
            text,
        }
    } else {
        match ptype.as_str() {
            "text" => InboundKind::Text {
                body: i("text").unwrap_or_default(),
            },
            "quick_reply" | "button_reply" => {
                let title = i("title").or_else(|| i("text")).unwrap_or_default();
                InboundKind::ButtonReply {
                    id: i("id")
                        .or_else(|| i("postbackText"))
                        .unwrap_or_else(|| title.clone()),
                    title,
                }
            }
            "list_reply" => {
                let title = i("title").unwrap_or_default();
                InboundKind::ListReply {
                    id: i("id")
                        .or_else(|| i("postbackText"))
                        .unwrap_or_else(|| title.clone()),
                    title,
                    description: i("description"),
                }
            }
            "image" | "file" | "audio" | "video" | "sticker" | "voice" => InboundKind::Media {
                media_type: if ptype == "file" {
                    "document".to_string()
                } else {
                    ptype.clone()
                },
                id: None,
                mime_type: i("contentType"),
                caption: i("caption"),
            },
            "location" => InboundKind::Location {
                latitude: inner
                    .and_then(|v| v.get("latitude"))
                    .and_then(float_of)
                    .unwrap_or(0.0),
                longitude: inner
                    .and_then(|v| v.get("longitude"))
                    .and_then(float_of)
                    .unwrap_or(0.0),
                name: i("name"),
                address: i("address"),
            },
            "contact" | "contacts" => InboundKind::Contacts,
            other => InboundKind::Other {
                message_type: other.to_string(),
            },
        }
    };
    InboundMessage {
        phone_number_id: String::new(),
        from: sender
            .and_then(|v| string_of(v.get("phone")))
            .or_else(|| s("source")),
        from_user_id: sender.and_then(|v| string_of(v.get("userId"))),
        profile_name: sender.and_then(|v| string_of(v.get("name"))),
        wamid: s("id").unwrap_or_default(),
        timestamp: envelope_ts,
        // Glific's chain: our Gupshup id when present, else the WhatsApp id.
        context_id: c("gsId").or_else(|| c("gs_id")).or_else(|| c("id")),
        kind,
    }
}

fn status(p: &Map<String, Value>, envelope_ts: i64) -> StatusEvent {
    let s = |k: &str| string_of(p.get(k));
    let inner = p.get("payload");
    let i = |k: &str| inner.and_then(|v| string_of(v.get(k)));
    let kind = s("type").unwrap_or_default();
    let gs_id = s("gsId").filter(|g| !g.is_empty());
    let id = s("id").unwrap_or_default();
    let (wamid, alt_id) = match gs_id {
        Some(g) => (g, Some(id).filter(|i| !i.is_empty())),
        None if kind == "enqueued" => (id, i("whatsappMessageId")),
        None => (id, None),
    };
    let errors = if kind == "failed" {
        let reason = i("reason").unwrap_or_default();
        vec![ApiErrorInfo {
            code: inner
                .and_then(|v| v.get("code"))
                .and_then(int_of)
                .unwrap_or(0),
            title: reason.clone(),
            message: reason,
            details: None,
        }]
    } else {
        Vec::new()
    };
    let ts = inner
        .and_then(|v| v.get("ts"))
        .and_then(int_of)
        .unwrap_or(envelope_ts);
    StatusEvent {
        phone_number_id: String::new(),
        wamid,
        status: MessageStatus::parse(&kind),
        timestamp: ts,
        recipient_id: s("destination"),
        recipient_user_id: s("userId"),
        callback_data: None,
        errors,
        pricing_category: p
            .get("pricing")
            .and_then(|v| string_of(v.get("category")))
            .or_else(|| p.get("conversation").and_then(|v| string_of(v.get("type")))),
        alt_id,
    }
}

fn user_event(p: &Map<String, Value>) -> MetaEvent {
    let kind = string_of(p.get("type")).unwrap_or_default();
    match (kind.as_str(), string_of(p.get("phone"))) {
        // The retired opt-out service: the user asked to hear nothing more from the business.
        ("opted-out", Some(phone)) => MetaEvent::UserPreference {
            phone_number_id: None,
            wa_id: phone,
            category: "all".into(),
            value: "stop".into(),
            timestamp: 0,
        },
        // sandbox-start (also sent when the callback URL is set) and opted-in need a 2xx only.
        _ => unhandled("user-event", p),
    }
}

fn preferences(p: &Map<String, Value>) -> Vec<MetaEvent> {
    let list = p
        .get("payload")
        .and_then(|v| v.get("user_preferences"))
        .and_then(Value::as_array);
    let Some(list) = list else {
        return vec![unhandled("preference-event", p)];
    };
    list.iter()
        .map(|u| {
            let s = |k: &str| string_of(u.get(k));
            MetaEvent::UserPreference {
                phone_number_id: None,
                wa_id: s("wa_id").unwrap_or_default(),
                category: s("category").unwrap_or_default(),
                value: s("value").unwrap_or_default().to_ascii_lowercase(),
                timestamp: u.get("timestamp").and_then(int_of).unwrap_or(0),
            }
        })
        .collect()
}

fn template_event(p: &Map<String, Value>, kind: &str) -> MetaEvent {
    let s = |k: &str| string_of(p.get(k));
    if s("type").as_deref() != Some("status-update") {
        return unhandled(kind, p);
    }
    MetaEvent::TemplateStatus {
        waba_id: String::new(),
        template_id: s("id"),
        name: s("elementName").unwrap_or_default(),
        language: normalise_language(&s("languageCode").unwrap_or_default()),
        event: s("status").unwrap_or_default().to_ascii_uppercase(),
        reason: s("rejectedReason").or_else(|| s("description")),
    }
}

fn account_event(p: &Map<String, Value>, kind: &str) -> MetaEvent {
    let inner = p.get("payload");
    let i = |k: &str| inner.and_then(|v| string_of(v.get(k)));
    match string_of(p.get("type")).as_deref() {
        Some("tier-event") => {
            let new = i("newTier");
            let current = i("currentTier");
            MetaEvent::PhoneNumberQuality {
                waba_id: String::new(),
                display_phone_number: String::new(),
                event: i("event").unwrap_or_default().to_ascii_uppercase(),
                old_limit: new.as_ref().and(current.clone()),
                current_limit: new.or(current),
            }
        }
        Some("status-event") => MetaEvent::AccountUpdate {
            waba_id: String::new(),
            event: i("event").or_else(|| i("status")).unwrap_or_default(),
        },
        Some("capability-event") => MetaEvent::BusinessCapability {
            waba_id: String::new(),
            max_daily_conversation_per_phone: inner
                .and_then(|v| v.get("maxDailyConversationPerPhone"))
                .and_then(int_of),
            max_daily_conversations_per_business: None,
            throughput_level: None,
        },
        _ => unhandled(kind, p),
    }
}

#[cfg(test)]
mod tests;
