//! Meta webhook envelope parser.
//!
//! Owns turning the raw body of a `POST /webhooks/meta` (Meta's Cloud API, and Gupshup v3, which
//! reuses Meta's envelope) into a flat list of [`MetaEvent`]s the daemon can act on.
//!
//! The parser is deliberately liberal: Meta adds fields, message types, statuses and whole
//! webhook fields without notice, SDK fixtures send timestamps as numbers instead of strings,
//! 2026 username-only users have no `wa_id`, and a batched body can carry many entries × changes
//! × messages/statuses. Anything we do not understand becomes `Other`/`Unhandled` rather than
//! an error, because an error here means answering non-200 and Meta re-delivering the body for
//! 7 days. Only bodies that are not JSON, or not an object with an `entry` array, are rejected.
//!
//! Nesting depth is bounded by serde_json's recursion limit (128), which stays on because no
//! crate in the tree enables `unbounded_depth`; a test pins that behaviour.

use serde::Serialize;
use serde_json::{Map, Value};

/// Why a body could not be read as a Meta webhook at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookParseError {
    /// Not JSON (truncated, trailing garbage, bad syntax). `message` is serde_json's text, which
    /// already ends in "at line L column C".
    #[error("webhook body is not valid JSON: {message}")]
    InvalidJson {
        message: String,
        line: usize,
        column: usize,
    },
    /// Nested deeper than serde_json's recursion limit (128): refused before it can exhaust
    /// the stack.
    #[error("webhook body is nested too deeply (limit 128) at line {line} column {column}")]
    TooDeep { line: usize, column: usize },
    /// Valid JSON, but the top level is not an object.
    #[error("webhook body is not a JSON object (top level is {found})")]
    NotAnObject { found: &'static str },
    /// An object, but without an `entry` array: not Meta's envelope.
    #[error("webhook body has no `entry` array (`entry` is {found})")]
    NoEntry { found: &'static str },
}

impl WebhookParseError {
    pub(crate) fn from_json(e: serde_json::Error) -> Self {
        let (line, column) = (e.line(), e.column());
        let message = e.to_string();
        // serde_json reports the depth guard as a syntax error whose text starts like this.
        if message.starts_with("recursion limit exceeded") {
            WebhookParseError::TooDeep { line, column }
        } else {
            WebhookParseError::InvalidJson {
                message,
                line,
                column,
            }
        }
    }

    /// Short label for `webhook_rejected_total{reason}`.
    pub fn as_label(&self) -> &'static str {
        match self {
            WebhookParseError::InvalidJson { .. } => "invalid_json",
            WebhookParseError::TooDeep { .. } => "too_deep",
            WebhookParseError::NotAnObject { .. } => "not_object",
            WebhookParseError::NoEntry { .. } => "no_entry",
        }
    }
}

/// Delivery status of an outbound message (`statuses[].status`), compared case-insensitively.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    Sent,
    Delivered,
    Read,
    Failed,
    Played,
    /// Anything else (`deleted`, `RINGING` from calls, future values), kept verbatim.
    Other(String),
}

impl MessageStatus {
    pub fn parse(s: &str) -> Self {
        match s.to_ascii_lowercase().as_str() {
            "sent" => MessageStatus::Sent,
            "delivered" => MessageStatus::Delivered,
            "read" => MessageStatus::Read,
            "failed" => MessageStatus::Failed,
            "played" => MessageStatus::Played,
            _ => MessageStatus::Other(s.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            MessageStatus::Sent => "sent",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Read => "read",
            MessageStatus::Failed => "failed",
            MessageStatus::Played => "played",
            MessageStatus::Other(s) => s,
        }
    }
}

/// One `errors[]` object (status-level, message-level or value-level).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiErrorInfo {
    /// 0 when absent or not a number (never seen from Meta, but SDK fixtures vary).
    pub code: i64,
    pub title: String,
    /// Meta repeats the title here; empty when absent.
    pub message: String,
    /// `error_data.details`, or a top-level `details` (seen on `unknown` message types).
    pub details: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusEvent {
    /// `metadata.phone_number_id` of the change; empty if the change had no metadata.
    pub phone_number_id: String,
    /// The message id; empty if the status carried none (seen in some SDK fixtures).
    pub wamid: String,
    pub status: MessageStatus,
    /// Unix seconds; 0 when absent or unparseable.
    pub timestamp: i64,
    pub recipient_id: Option<String>,
    /// 2026 business-scoped user id of the recipient (`recipient_user_id`), if any.
    pub recipient_user_id: Option<String>,
    /// `biz_opaque_callback_data`: our attempt id.
    pub callback_data: Option<String>,
    pub errors: Vec<ApiErrorInfo>,
    /// `pricing.category`, else `conversation.origin.type`.
    pub pricing_category: Option<String>,
    /// Another id of the same message, when `wamid` is a provider's own id: Gupshup's events
    /// name our message by its Gupshup id (`gsId` / `gs_id`, kept in `wamid`) and carry the
    /// WhatsApp id here, which later events and replies may use alone.
    pub alt_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InboundMessage {
    pub phone_number_id: String,
    /// Sender `wa_id`; absent for username-only users (2026).
    pub from: Option<String>,
    /// Business-scoped user id (`messages[].from_user_id` or the matching `contacts[].user_id`).
    pub from_user_id: Option<String>,
    pub profile_name: Option<String>,
    /// Empty if the message carried no id.
    pub wamid: String,
    pub timestamp: i64,
    /// `context.id`: the wamid of our message this replies to.
    pub context_id: Option<String>,
    pub kind: InboundKind,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboundKind {
    Text {
        body: String,
    },
    /// Quick-reply tap on a template button.
    Button {
        payload: String,
        text: String,
    },
    ButtonReply {
        id: String,
        title: String,
    },
    ListReply {
        id: String,
        title: String,
        description: Option<String>,
    },
    /// image, audio, video, document, sticker, voice.
    Media {
        media_type: String,
        id: Option<String>,
        mime_type: Option<String>,
        caption: Option<String>,
    },
    /// `emoji` is absent or empty when the user removed a reaction.
    Reaction {
        message_id: Option<String>,
        emoji: Option<String>,
    },
    Location {
        latitude: f64,
        longitude: f64,
        name: Option<String>,
        address: Option<String>,
    },
    Contacts,
    Order,
    System {
        body: String,
    },
    /// `unsupported` / `unknown` types, with their errors (typically 131051).
    Unsupported {
        errors: Vec<ApiErrorInfo>,
    },
    /// Anything else; interactive sub-types we do not model are `interactive.<sub_type>`.
    Other {
        message_type: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MetaEvent {
    Status(StatusEvent),
    Inbound(InboundMessage),
    TemplateStatus {
        waba_id: String,
        /// Integer in webhooks, string in the Graph API: always a string here.
        template_id: Option<String>,
        name: String,
        /// Normalised to the send/GET form (`en-US` → `en_US`).
        language: String,
        /// Upper-cased (`paused` → `PAUSED`).
        event: String,
        reason: Option<String>,
    },
    TemplateQuality {
        waba_id: String,
        template_id: Option<String>,
        name: String,
        language: String,
        previous: Option<String>,
        new: String,
    },
    /// `template_category_update`: announced (`correct_category` + `category_update_timestamp`,
    /// `new_category` being the current one) or done (`previous_category` → `new_category`).
    TemplateCategory {
        waba_id: String,
        template_id: Option<String>,
        /// Empty when the webhook names only the template id (seen in SDK fixtures).
        name: String,
        language: String,
        new: String,
        previous: Option<String>,
        correct: Option<String>,
        /// Unix seconds of the announced change; `None` for a completed one.
        effective_at: Option<i64>,
    },
    PhoneNumberQuality {
        waba_id: String,
        display_phone_number: String,
        event: String,
        current_limit: Option<String>,
        old_limit: Option<String>,
    },
    BusinessCapability {
        waba_id: String,
        max_daily_conversation_per_phone: Option<i64>,
        max_daily_conversations_per_business: Option<String>,
        throughput_level: Option<String>,
    },
    UserPreference {
        phone_number_id: Option<String>,
        /// Empty when the preference names only a BSUID.
        wa_id: String,
        category: String,
        /// `stop` | `resume` (others, e.g. `signup`, kept verbatim).
        value: String,
        timestamp: i64,
    },
    AccountUpdate {
        waba_id: String,
        event: String,
    },
    /// `value.errors[]` not tied to a message (e.g. 130429 at app level).
    SystemErrors {
        phone_number_id: Option<String>,
        errors: Vec<ApiErrorInfo>,
    },
    /// A webhook field we do not act on: answered 200, counted, ignored.
    Unhandled {
        field: String,
    },
}

/// What an event is about, as far as the line it belongs to goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOwner<'a> {
    /// Messages, statuses, preferences and errors name the business phone number.
    PhoneNumber(&'a str),
    /// Template, limit and account events name the WhatsApp Business Account.
    Account(&'a str),
    /// The change carried neither (no `metadata`, or a field we do not use).
    Unnamed,
}

impl MetaEvent {
    /// The phone number or account this event names, to check it against its line's secret.
    pub fn owner(&self) -> EventOwner<'_> {
        fn phone(id: &str) -> EventOwner<'_> {
            if id.is_empty() {
                EventOwner::Unnamed
            } else {
                EventOwner::PhoneNumber(id)
            }
        }
        match self {
            MetaEvent::Status(s) => phone(&s.phone_number_id),
            MetaEvent::Inbound(m) => phone(&m.phone_number_id),
            MetaEvent::UserPreference {
                phone_number_id, ..
            }
            | MetaEvent::SystemErrors {
                phone_number_id, ..
            } => phone_number_id
                .as_deref()
                .map_or(EventOwner::Unnamed, phone),
            MetaEvent::TemplateStatus { waba_id, .. }
            | MetaEvent::TemplateQuality { waba_id, .. }
            | MetaEvent::TemplateCategory { waba_id, .. }
            | MetaEvent::PhoneNumberQuality { waba_id, .. }
            | MetaEvent::BusinessCapability { waba_id, .. }
            | MetaEvent::AccountUpdate { waba_id, .. }
                if !waba_id.is_empty() =>
            {
                EventOwner::Account(waba_id)
            }
            _ => EventOwner::Unnamed,
        }
    }

    /// Stable label for `webhook_events_total{kind}`.
    pub fn kind(&self) -> &'static str {
        match self {
            MetaEvent::Status(_) => "status",
            MetaEvent::Inbound(_) => "inbound",
            MetaEvent::TemplateStatus { .. } => "template_status",
            MetaEvent::TemplateQuality { .. } => "template_quality",
            MetaEvent::TemplateCategory { .. } => "template_category",
            MetaEvent::PhoneNumberQuality { .. } => "phone_number_quality",
            MetaEvent::BusinessCapability { .. } => "business_capability",
            MetaEvent::UserPreference { .. } => "user_preference",
            MetaEvent::AccountUpdate { .. } => "account_update",
            MetaEvent::SystemErrors { .. } => "system_errors",
            MetaEvent::Unhandled { .. } => "unhandled",
        }
    }
}

/// Parse a Meta webhook body (raw bytes, as received) into events, in body order.
pub fn parse_meta_webhook(body: &[u8]) -> Result<Vec<MetaEvent>, WebhookParseError> {
    if let Some(events) = statuses_only::parse(body) {
        return Ok(events);
    }
    parse_any_meta_webhook(body)
}

/// The general parser: the body as a `serde_json::Value` tree, read liberally.
pub(crate) fn parse_any_meta_webhook(body: &[u8]) -> Result<Vec<MetaEvent>, WebhookParseError> {
    // from_slice keeps serde_json's recursion limit; the Value tree is at most 128 deep, so
    // walking and dropping it is stack-safe too.
    let root: Value = serde_json::from_slice(body).map_err(WebhookParseError::from_json)?;
    let obj = root.as_object().ok_or(WebhookParseError::NotAnObject {
        found: json_type(&root),
    })?;
    let entries = match obj.get("entry") {
        Some(Value::Array(a)) => a,
        Some(other) => {
            return Err(WebhookParseError::NoEntry {
                found: json_type(other),
            })
        }
        None => return Err(WebhookParseError::NoEntry { found: "missing" }),
    };
    let mut out = Vec::new();
    for entry in entries {
        let Some(entry) = entry.as_object() else {
            continue;
        };
        let waba_id = string_of(entry.get("id")).unwrap_or_default();
        let Some(changes) = entry.get("changes").and_then(Value::as_array) else {
            continue;
        };
        for change in changes {
            if let Some(change) = change.as_object() {
                parse_change(&waba_id, change, &mut out);
            }
        }
    }
    Ok(out)
}

fn parse_change(waba_id: &str, change: &Map<String, Value>, out: &mut Vec<MetaEvent>) {
    let value = change.get("value").and_then(Value::as_object);
    let field = match change.get("field").and_then(Value::as_str) {
        Some(f) => f.to_string(),
        // Some relays drop `field`; a value that looks like a messages value is one.
        None => match value {
            Some(v)
                if ["messages", "statuses", "errors", "user_preferences"]
                    .iter()
                    .any(|k| v.contains_key(*k)) =>
            {
                "messages".to_string()
            }
            _ => String::new(),
        },
    };
    let Some(value) = value else {
        out.push(MetaEvent::Unhandled { field });
        return;
    };
    let s = |k: &str| string_of(value.get(k));
    match field.as_str() {
        "messages" | "user_preferences" => parse_messages_value(value, out),
        "message_template_status_update" => out.push(MetaEvent::TemplateStatus {
            waba_id: waba_id.to_string(),
            template_id: s("message_template_id"),
            name: s("message_template_name").unwrap_or_default(),
            language: normalise_language(&s("message_template_language").unwrap_or_default()),
            event: s("event").unwrap_or_default().to_ascii_uppercase(),
            reason: s("reason"),
        }),
        "message_template_quality_update" => out.push(MetaEvent::TemplateQuality {
            waba_id: waba_id.to_string(),
            template_id: s("message_template_id"),
            name: s("message_template_name").unwrap_or_default(),
            language: normalise_language(&s("message_template_language").unwrap_or_default()),
            previous: s("previous_quality_score"),
            new: s("new_quality_score").unwrap_or_default(),
        }),
        "template_category_update" => out.push(MetaEvent::TemplateCategory {
            waba_id: waba_id.to_string(),
            template_id: s("message_template_id"),
            name: s("message_template_name").unwrap_or_default(),
            language: normalise_language(&s("message_template_language").unwrap_or_default()),
            new: s("new_category").unwrap_or_default().to_ascii_uppercase(),
            previous: s("previous_category").map(|c| c.to_ascii_uppercase()),
            correct: s("correct_category").map(|c| c.to_ascii_uppercase()),
            effective_at: value.get("category_update_timestamp").and_then(int_of),
        }),
        "phone_number_quality_update" => out.push(MetaEvent::PhoneNumberQuality {
            waba_id: waba_id.to_string(),
            display_phone_number: s("display_phone_number").unwrap_or_default(),
            event: s("event").unwrap_or_default().to_ascii_uppercase(),
            current_limit: s("current_limit"),
            old_limit: s("old_limit"),
        }),
        "business_capability_update" => out.push(MetaEvent::BusinessCapability {
            waba_id: waba_id.to_string(),
            max_daily_conversation_per_phone: value
                .get("max_daily_conversation_per_phone")
                .and_then(int_of),
            max_daily_conversations_per_business: s("max_daily_conversations_per_business"),
            throughput_level: value
                .get("throughput")
                .and_then(|t| string_of(t.get("level")))
                .or_else(|| s("throughput_level")),
        }),
        "account_update" => out.push(MetaEvent::AccountUpdate {
            waba_id: waba_id.to_string(),
            event: s("event").unwrap_or_default(),
        }),
        _ => out.push(MetaEvent::Unhandled { field }),
    }
}

/// A `messages`-field value: inbound messages, statuses, value-level errors and (in the
/// `user_preferences` field, which shares the shape) marketing preferences.
fn parse_messages_value(value: &Map<String, Value>, out: &mut Vec<MetaEvent>) {
    let phone_number_id = value
        .get("metadata")
        .and_then(|m| string_of(m.get("phone_number_id")));
    let contacts: Vec<Contact> = array(value.get("contacts"))
        .iter()
        .map(|c| Contact {
            wa_id: string_of(c.get("wa_id")),
            user_id: string_of(c.get("user_id")),
            name: c.get("profile").and_then(|p| string_of(p.get("name"))),
        })
        .collect();

    for m in array(value.get("messages")) {
        if let Some(m) = m.as_object() {
            out.push(MetaEvent::Inbound(parse_inbound(
                phone_number_id.clone().unwrap_or_default(),
                &contacts,
                m,
            )));
        }
    }
    for st in array(value.get("statuses")) {
        if let Some(st) = st.as_object() {
            out.push(MetaEvent::Status(parse_status(
                phone_number_id.clone().unwrap_or_default(),
                st,
            )));
        }
    }
    let errors = parse_errors(value.get("errors"));
    if !errors.is_empty() {
        out.push(MetaEvent::SystemErrors {
            phone_number_id: phone_number_id.clone(),
            errors,
        });
    }
    for p in array(value.get("user_preferences")) {
        let s = |k: &str| string_of(p.get(k));
        out.push(MetaEvent::UserPreference {
            phone_number_id: phone_number_id.clone(),
            wa_id: s("wa_id").unwrap_or_default(),
            category: s("category").unwrap_or_default(),
            value: s("value").unwrap_or_default().to_ascii_lowercase(),
            timestamp: timestamp_of(p.get("timestamp")),
        });
    }
}

struct Contact {
    wa_id: Option<String>,
    user_id: Option<String>,
    name: Option<String>,
}

fn parse_status(phone_number_id: String, st: &Map<String, Value>) -> StatusEvent {
    status_event(
        phone_number_id,
        StatusFields {
            id: st.get("id"),
            gs_id: st.get("gs_id"),
            meta_msg_id: st.get("meta_msg_id"),
            status: st.get("status"),
            timestamp: st.get("timestamp"),
            recipient_id: st.get("recipient_id"),
            recipient_user_id: st.get("recipient_user_id"),
            callback_data: st.get("biz_opaque_callback_data"),
            errors: st.get("errors"),
            pricing: st.get("pricing"),
            conversation: st.get("conversation"),
        },
    )
}

/// The fields of one status object that [`status_event`] reads, wherever they were parsed.
struct StatusFields<'v> {
    id: Option<&'v Value>,
    gs_id: Option<&'v Value>,
    meta_msg_id: Option<&'v Value>,
    status: Option<&'v Value>,
    timestamp: Option<&'v Value>,
    recipient_id: Option<&'v Value>,
    recipient_user_id: Option<&'v Value>,
    callback_data: Option<&'v Value>,
    errors: Option<&'v Value>,
    pricing: Option<&'v Value>,
    conversation: Option<&'v Value>,
}

fn status_event(phone_number_id: String, f: StatusFields<'_>) -> StatusEvent {
    let pricing_category = f
        .pricing
        .and_then(|p| string_of(p.get("category")))
        .or_else(|| {
            f.conversation
                .and_then(|c| c.get("origin"))
                .and_then(|o| string_of(o.get("type")))
        });
    // Gupshup v3 adds `gs_id` (the id its send API answered, which is the one we stored) and
    // sometimes `meta_msg_id` (the WhatsApp id); `id` is then the other one.
    let gs_id = string_of(f.gs_id).filter(|g| !g.is_empty());
    let id = string_of(f.id).unwrap_or_default();
    let (wamid, alt_id) = match gs_id {
        Some(g) => (
            g,
            string_of(f.meta_msg_id)
                .or(Some(id))
                .filter(|a| !a.is_empty()),
        ),
        None => (id, None),
    };
    StatusEvent {
        phone_number_id,
        wamid,
        alt_id,
        status: MessageStatus::parse(&string_of(f.status).unwrap_or_default()),
        timestamp: timestamp_of(f.timestamp),
        recipient_id: string_of(f.recipient_id),
        recipient_user_id: string_of(f.recipient_user_id),
        callback_data: string_of(f.callback_data),
        errors: parse_errors(f.errors),
        pricing_category,
    }
}

/// The common webhook, read without building a `Value` tree: `messages` changes that carry
/// statuses and nothing else (Meta's status batches, and every status webhook of a campaign).
/// Field types are the general parser's, so its liberal readers apply unchanged; any other
/// shape (inbound messages, errors, other fields, odd types) returns `None` and goes to the
/// general parser. A test checks both give the same events for every corpus payload.
mod statuses_only {
    use super::{status_event, string_of, MetaEvent, StatusFields};
    use serde::de::IgnoredAny;
    use serde::Deserialize;
    use serde_json::Value;

    #[derive(Deserialize)]
    struct Root {
        entry: Vec<Entry>,
    }

    #[derive(Deserialize)]
    struct Entry {
        changes: Vec<Change>,
    }

    #[derive(Deserialize)]
    struct Change {
        field: Option<Value>,
        value: ChangeValue,
    }

    #[derive(Deserialize)]
    struct ChangeValue {
        metadata: Option<Metadata>,
        statuses: Vec<Status>,
        // Present (and not null) means this is not a statuses-only change.
        messages: Option<IgnoredAny>,
        errors: Option<IgnoredAny>,
        user_preferences: Option<IgnoredAny>,
        contacts: Option<IgnoredAny>,
    }

    #[derive(Deserialize)]
    struct Metadata {
        phone_number_id: Option<Value>,
    }

    #[derive(Deserialize)]
    struct Status {
        id: Option<Value>,
        gs_id: Option<Value>,
        meta_msg_id: Option<Value>,
        status: Option<Value>,
        timestamp: Option<Value>,
        recipient_id: Option<Value>,
        recipient_user_id: Option<Value>,
        biz_opaque_callback_data: Option<Value>,
        errors: Option<Value>,
        pricing: Option<Value>,
        conversation: Option<Value>,
    }

    pub(super) fn parse(body: &[u8]) -> Option<Vec<MetaEvent>> {
        let root: Root = serde_json::from_slice(body).ok()?;
        let mut out = Vec::new();
        for change in root.entry.into_iter().flat_map(|e| e.changes) {
            let v = change.value;
            let statuses_only = v.messages.is_none()
                && v.errors.is_none()
                && v.user_preferences.is_none()
                && v.contacts.is_none();
            if change.field.as_ref().and_then(Value::as_str) != Some("messages") || !statuses_only {
                return None;
            }
            let phone_number_id = v
                .metadata
                .and_then(|m| string_of(m.phone_number_id.as_ref()))
                .unwrap_or_default();
            for st in &v.statuses {
                let fields = StatusFields {
                    id: st.id.as_ref(),
                    gs_id: st.gs_id.as_ref(),
                    meta_msg_id: st.meta_msg_id.as_ref(),
                    status: st.status.as_ref(),
                    timestamp: st.timestamp.as_ref(),
                    recipient_id: st.recipient_id.as_ref(),
                    recipient_user_id: st.recipient_user_id.as_ref(),
                    callback_data: st.biz_opaque_callback_data.as_ref(),
                    errors: st.errors.as_ref(),
                    pricing: st.pricing.as_ref(),
                    conversation: st.conversation.as_ref(),
                };
                out.push(MetaEvent::Status(status_event(
                    phone_number_id.clone(),
                    fields,
                )));
            }
        }
        Some(out)
    }
}

/// Message types whose payload sits under a key of the same name; used to infer a missing
/// `type` (some SDK fixtures omit it).
const KNOWN_TYPES: &[&str] = &[
    "text",
    "button",
    "interactive",
    "image",
    "audio",
    "video",
    "document",
    "sticker",
    "voice",
    "reaction",
    "location",
    "contacts",
    "order",
    "system",
];

fn parse_inbound(
    phone_number_id: String,
    contacts: &[Contact],
    m: &Map<String, Value>,
) -> InboundMessage {
    let s = |k: &str| string_of(m.get(k));
    let from = s("from");
    let from_user_id = s("from_user_id");
    // The contact for this message: same wa_id, else same BSUID, else the only one.
    let contact = contacts
        .iter()
        .find(|c| from.is_some() && c.wa_id == from)
        .or_else(|| {
            contacts
                .iter()
                .find(|c| from_user_id.is_some() && c.user_id == from_user_id)
        })
        .or_else(|| (contacts.len() == 1).then(|| &contacts[0]));
    let message_type = s("type").unwrap_or_else(|| {
        KNOWN_TYPES
            .iter()
            .find(|t| m.contains_key(**t))
            .map(|t| t.to_string())
            .unwrap_or_default()
    });
    InboundMessage {
        phone_number_id,
        from,
        from_user_id: from_user_id.or_else(|| contact.and_then(|c| c.user_id.clone())),
        profile_name: contact.and_then(|c| c.name.clone()),
        wamid: s("id").unwrap_or_default(),
        timestamp: timestamp_of(m.get("timestamp")),
        // Gupshup v3 may add its own id of the quoted message; that is the one we stored.
        context_id: m.get("context").and_then(|c| {
            string_of(c.get("gs_id"))
                .or_else(|| string_of(c.get("gsId")))
                .or_else(|| string_of(c.get("id")))
        }),
        kind: parse_kind(&message_type, m),
    }
}

fn parse_kind(message_type: &str, m: &Map<String, Value>) -> InboundKind {
    let part = m.get(message_type);
    let p = |k: &str| part.and_then(|v| string_of(v.get(k)));
    match message_type {
        "text" => InboundKind::Text {
            body: p("body").unwrap_or_default(),
        },
        "button" => {
            let text = p("text").unwrap_or_default();
            InboundKind::Button {
                // Meta sends the label as payload when the send set none.
                payload: p("payload").unwrap_or_else(|| text.clone()),
                text,
            }
        }
        "interactive" => {
            let sub = p("type").unwrap_or_default();
            let reply = part.and_then(|v| v.get(&sub));
            let r = |k: &str| reply.and_then(|v| string_of(v.get(k)));
            match sub.as_str() {
                "button_reply" => InboundKind::ButtonReply {
                    id: r("id").unwrap_or_default(),
                    title: r("title").unwrap_or_default(),
                },
                "list_reply" => InboundKind::ListReply {
                    id: r("id").unwrap_or_default(),
                    title: r("title").unwrap_or_default(),
                    description: r("description"),
                },
                "" => InboundKind::Other {
                    message_type: "interactive".to_string(),
                },
                other => InboundKind::Other {
                    message_type: format!("interactive.{other}"),
                },
            }
        }
        "image" | "audio" | "video" | "document" | "sticker" | "voice" => InboundKind::Media {
            media_type: message_type.to_string(),
            id: p("id"),
            mime_type: p("mime_type"),
            caption: p("caption"),
        },
        "reaction" => InboundKind::Reaction {
            message_id: p("message_id"),
            emoji: p("emoji"),
        },
        "location" => InboundKind::Location {
            latitude: part
                .and_then(|v| v.get("latitude"))
                .and_then(float_of)
                .unwrap_or(0.0),
            longitude: part
                .and_then(|v| v.get("longitude"))
                .and_then(float_of)
                .unwrap_or(0.0),
            name: p("name"),
            address: p("address"),
        },
        "contacts" => InboundKind::Contacts,
        "order" => InboundKind::Order,
        "system" => InboundKind::System {
            body: p("body").unwrap_or_default(),
        },
        "unsupported" | "unknown" => InboundKind::Unsupported {
            errors: parse_errors(m.get("errors")),
        },
        other => InboundKind::Other {
            message_type: other.to_string(),
        },
    }
}

fn parse_errors(v: Option<&Value>) -> Vec<ApiErrorInfo> {
    array(v)
        .iter()
        .filter_map(Value::as_object)
        .map(|e| {
            let s = |k: &str| string_of(e.get(k));
            let title = s("title").or_else(|| s("message")).unwrap_or_default();
            ApiErrorInfo {
                code: e.get("code").and_then(int_of).unwrap_or(0),
                message: s("message").unwrap_or_else(|| title.clone()),
                title,
                details: e
                    .get("error_data")
                    .and_then(|d| string_of(d.get("details")))
                    .or_else(|| s("details")),
            }
        })
        .collect()
}

// ---- liberal scalar readers -------------------------------------------------------------------

fn array(v: Option<&Value>) -> &[Value] {
    match v {
        Some(Value::Array(a)) => a,
        _ => &[],
    }
}

/// Strings as-is, numbers and booleans as their text (ids arrive both ways); null/objects: None.
pub(crate) fn string_of(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

pub(crate) fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn float_of(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// Unix seconds from a string or a number; 0 when missing or not a number (e.g. a literal
/// "TIMESTAMP" placeholder in SDK fixtures), so one odd field never rejects a whole batch.
///
/// Values above 10^11 are milliseconds (Gupshup v3's `enqueued` status sends them so) and are
/// brought to seconds; 10^11 s is the year 5138, so no real seconds value is mistaken.
fn timestamp_of(v: Option<&Value>) -> i64 {
    let t = v.and_then(int_of).unwrap_or(0);
    if t > 100_000_000_000 {
        t / 1000
    } else {
        t
    }
}

/// Webhooks write `en-US`, sends and the Graph API `en_US`.
pub fn normalise_language(lang: &str) -> String {
    lang.trim().replace('-', "_")
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(s: &str) -> Vec<MetaEvent> {
        match parse_meta_webhook(s.as_bytes()) {
            Ok(v) => v,
            Err(e) => panic!("parse failed: {e}"),
        }
    }

    /// The statuses-only reader's events for `body`, checked against the general parser's.
    fn fast_path(body: &[u8]) -> Option<Vec<MetaEvent>> {
        let fast = statuses_only::parse(body)?;
        let general = parse_any_meta_webhook(body).expect("the general parser accepts it too");
        assert_eq!(fast, general, "{}", String::from_utf8_lossy(body));
        Some(fast)
    }

    #[test]
    fn status_batches_take_the_statuses_only_reader_and_read_the_same() {
        // The simulator's shape (and Meta's): conversation and pricing on `sent`, ids as
        // numbers in SDK fixtures, a Gupshup v3 `gs_id`, errors on `failed`, two entries.
        let body = json!({
            "object": "whatsapp_business_account",
            "entry": [
                { "id": "WABA", "changes": [{ "field": "messages", "value": {
                    "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": "5511", "phone_number_id": 106540352242922_i64 },
                    "statuses": [
                        { "id": "wamid.A", "status": "sent", "timestamp": "1700000000",
                          "recipient_id": "5511999", "biz_opaque_callback_data": "tc:42",
                          "conversation": { "id": "c", "origin": { "type": "marketing" } },
                          "pricing": { "billable": true, "pricing_model": "PMP", "category": "marketing" } },
                        { "id": "wamid.B", "status": "delivered", "timestamp": 1700000001,
                          "recipient_id": 5511998, "conversation": { "origin": { "type": "utility" } } },
                        { "id": "meta-id", "gs_id": "gs-1", "status": "enqueued",
                          "timestamp": 1700000002000_i64, "recipient_id": "5511997" },
                        { "id": "wamid.C", "status": "failed", "timestamp": "1700000003",
                          "recipient_id": "5511996", "errors": [{ "code": 131026,
                          "title": "Message undeliverable", "error_data": { "details": "x" } }] }
                    ] } }] },
                { "id": "WABA", "changes": [{ "field": "messages", "value": {
                    "metadata": { "phone_number_id": "2" },
                    "statuses": [{ "id": "wamid.D", "status": "read", "timestamp": "1700000004" }]
                } }] }
            ]
        });
        let events = fast_path(body.to_string().as_bytes()).expect("statuses only");
        assert_eq!(events.len(), 5);
        let MetaEvent::Status(gs) = &events[2] else {
            panic!("{events:?}")
        };
        assert_eq!(
            (gs.wamid.as_str(), gs.alt_id.as_deref()),
            ("gs-1", Some("meta-id"))
        );
        assert_eq!(gs.timestamp, 1_700_000_002);
    }

    #[test]
    fn other_shapes_go_to_the_general_parser() {
        let with = |value: Value, field: Option<&str>| {
            let mut change = json!({ "value": value });
            if let Some(f) = field {
                change["field"] = json!(f);
            }
            json!({ "entry": [{ "id": "W", "changes": [change] }] }).to_string()
        };
        let status = json!({ "id": "wamid.A", "status": "read", "timestamp": "1" });
        let general_only = [
            // Inbound messages, value-level errors, preferences, a missing or other field.
            with(
                json!({ "statuses": [status], "messages": [{ "from": "1", "id": "m", "type": "text", "text": { "body": "hi" } }] }),
                Some("messages"),
            ),
            with(
                json!({ "statuses": [status], "errors": [{ "code": 131000 }] }),
                Some("messages"),
            ),
            with(json!({ "statuses": [status] }), None),
            with(json!({ "statuses": [status] }), Some("smb_message_echoes")),
            // Types the typed reader refuses but the general one reads liberally.
            with(
                json!({ "statuses": [status, "not an object"] }),
                Some("messages"),
            ),
            with(
                json!({ "statuses": [{ "id": "wamid.A", "timestamp": [] }], "contacts": [] }),
                Some("messages"),
            ),
            with(json!({ "statuses": null }), Some("messages")),
            json!({ "entry": [{ "id": "W" }] }).to_string(),
            "[]".to_string(),
        ];
        for body in general_only {
            assert!(statuses_only::parse(body.as_bytes()).is_none(), "{body}");
        }
        // And the whole parser still reads them as before, e.g. the status beside a message.
        let events = parse(&with(
            json!({ "statuses": [status], "messages": [{ "from": "1", "id": "m", "type": "text", "text": { "body": "hi" } }] }),
            Some("messages"),
        ));
        assert_eq!(events.len(), 2);
    }

    /// Every payload of the third-party corpus that the statuses-only reader takes must read
    /// the same as with the general parser (skipped when the shared corpus is absent).
    #[test]
    fn statuses_only_reader_agrees_with_the_general_parser_on_the_corpus() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../shared/reference/webhook-corpus");
        if !dir.is_dir() {
            eprintln!(
                "NOTICE: webhook corpus not found at {}; skipping",
                dir.display()
            );
            return;
        }
        let mut pending = vec![dir];
        let (mut files, mut fast) = (0, 0);
        while let Some(d) = pending.pop() {
            for entry in std::fs::read_dir(&d).unwrap().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Ok(body) = std::fs::read(&path) {
                    files += 1;
                    fast += usize::from(fast_path(&body).is_some());
                }
            }
        }
        assert!(files > 100, "{files} corpus files");
        // Status-only webhooks are a large part of the corpus; all of them must be read fast.
        assert!(
            fast >= 20,
            "only {fast} of {files} corpus files took the statuses-only reader"
        );
    }

    #[test]
    fn batched_statuses_and_messages() {
        let body = r#"{"object":"whatsapp_business_account","entry":[
          {"id":"W1","changes":[
            {"field":"messages","value":{"messaging_product":"whatsapp",
              "metadata":{"display_phone_number":"1555","phone_number_id":"P1"},
              "statuses":[
                {"id":"wamid.A","status":"sent","timestamp":"1750030073","recipient_id":"16505551234",
                 "biz_opaque_callback_data":"att-1","pricing":{"category":"marketing"}},
                {"id":"wamid.B","status":"FAILED","timestamp":1750030074,"recipient_id":"1650",
                 "errors":[{"code":131049,"title":"T","error_data":{"details":"D"}}]}]}},
            {"field":"messages","value":{"metadata":{"phone_number_id":"P1"},
              "contacts":[{"profile":{"name":"Ann"},"wa_id":"111"},{"profile":{"name":"Bob"},"wa_id":"222"}],
              "messages":[
                {"from":"222","id":"wamid.in1","timestamp":"5","type":"text","text":{"body":"hi"}},
                {"from":"111","id":"wamid.in2","timestamp":"6","type":"button",
                 "context":{"from":"1555","id":"wamid.A"},"button":{"payload":"YES","text":"Yes"}}]}}]},
          {"id":"W2","time":1,"changes":[{"field":"account_update","value":{"event":"ACCOUNT_DELETED"}}]}]}"#;
        let ev = parse(body);
        assert_eq!(ev.len(), 5);
        let MetaEvent::Status(s) = &ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(s.wamid, "wamid.A");
        assert_eq!(s.status, MessageStatus::Sent);
        assert_eq!(s.timestamp, 1750030073);
        assert_eq!(s.callback_data.as_deref(), Some("att-1"));
        assert_eq!(s.pricing_category.as_deref(), Some("marketing"));
        let MetaEvent::Status(f) = &ev[1] else {
            panic!()
        };
        assert_eq!(f.status, MessageStatus::Failed);
        assert_eq!(f.errors[0].code, 131049);
        assert_eq!(f.errors[0].message, "T");
        assert_eq!(f.errors[0].details.as_deref(), Some("D"));
        let MetaEvent::Inbound(a) = &ev[2] else {
            panic!()
        };
        assert_eq!(a.profile_name.as_deref(), Some("Bob"));
        assert_eq!(a.kind, InboundKind::Text { body: "hi".into() });
        let MetaEvent::Inbound(b) = &ev[3] else {
            panic!()
        };
        assert_eq!(b.profile_name.as_deref(), Some("Ann"));
        assert_eq!(b.context_id.as_deref(), Some("wamid.A"));
        assert_eq!(
            b.kind,
            InboundKind::Button {
                payload: "YES".into(),
                text: "Yes".into()
            }
        );
        assert_eq!(
            ev[4],
            MetaEvent::AccountUpdate {
                waba_id: "W2".into(),
                event: "ACCOUNT_DELETED".into()
            }
        );
    }

    #[test]
    fn unknowns_do_not_fail() {
        let body = r#"{"entry":[{"id":"W","changes":[
            {"field":"brand_new_field","value":{"x":1}},
            {"field":"messages","value":{"metadata":{"phone_number_id":"P"},
              "messages":[{"from":"1","id":"m","timestamp":"TIMESTAMP","type":"hologram"},
                          {"from":"1","id":"m2","type":"interactive","interactive":{"type":"nfm_reply"}}],
              "statuses":[{"id":"s","status":"teleported"}],
              "errors":[{"code":130429,"title":"Rate limit hit"}]}},
            {"value":{"statuses":[]}},
            "garbage", 7]}, 5]}"#;
        let ev = parse(body);
        assert_eq!(
            ev[0],
            MetaEvent::Unhandled {
                field: "brand_new_field".into()
            }
        );
        let MetaEvent::Inbound(m) = &ev[1] else {
            panic!()
        };
        assert_eq!(m.timestamp, 0);
        assert_eq!(
            m.kind,
            InboundKind::Other {
                message_type: "hologram".into()
            }
        );
        let MetaEvent::Inbound(m2) = &ev[2] else {
            panic!()
        };
        assert_eq!(
            m2.kind,
            InboundKind::Other {
                message_type: "interactive.nfm_reply".into()
            }
        );
        let MetaEvent::Status(s) = &ev[3] else {
            panic!()
        };
        assert_eq!(s.status, MessageStatus::Other("teleported".into()));
        let MetaEvent::SystemErrors { errors, .. } = &ev[4] else {
            panic!()
        };
        assert_eq!(errors[0].code, 130429);
        assert_eq!(ev.len(), 5);
    }

    #[test]
    fn template_events_normalised() {
        let body = r#"{"entry":[{"id":"W","time":1,"changes":[
          {"field":"message_template_status_update","value":{"event":"paused","message_template_id":1689556908129832,
            "message_template_name":"promo","message_template_language":"en-US","reason":null}},
          {"field":"message_template_quality_update","value":{"previous_quality_score":"GREEN",
            "new_quality_score":"YELLOW","message_template_id":"9","message_template_name":"promo","message_template_language":"pt-BR"}},
          {"field":"phone_number_quality_update","value":{"display_phone_number":"1555","event":"UPGRADE","current_limit":"TIER_1K"}},
          {"field":"business_capability_update","value":{"max_daily_conversation_per_phone":-1,"max_daily_conversations_per_business":"TIER_UNLIMITED"}},
          {"field":"user_preferences","value":{"metadata":{"phone_number_id":"P"},"user_preferences":[{"wa_id":"1","category":"marketing_messages","value":"STOP","timestamp":"7"}]}}]}]}"#;
        let ev = parse(body);
        assert_eq!(
            ev[0],
            MetaEvent::TemplateStatus {
                waba_id: "W".into(),
                template_id: Some("1689556908129832".into()),
                name: "promo".into(),
                language: "en_US".into(),
                event: "PAUSED".into(),
                reason: None
            }
        );
        let MetaEvent::TemplateQuality { language, new, .. } = &ev[1] else {
            panic!()
        };
        assert_eq!((language.as_str(), new.as_str()), ("pt_BR", "YELLOW"));
        let MetaEvent::PhoneNumberQuality { current_limit, .. } = &ev[2] else {
            panic!()
        };
        assert_eq!(current_limit.as_deref(), Some("TIER_1K"));
        let MetaEvent::BusinessCapability {
            max_daily_conversation_per_phone,
            max_daily_conversations_per_business,
            ..
        } = &ev[3]
        else {
            panic!()
        };
        assert_eq!(*max_daily_conversation_per_phone, Some(-1));
        assert_eq!(
            max_daily_conversations_per_business.as_deref(),
            Some("TIER_UNLIMITED")
        );
        assert_eq!(
            ev[4],
            MetaEvent::UserPreference {
                phone_number_id: Some("P".into()),
                wa_id: "1".into(),
                category: "marketing_messages".into(),
                value: "stop".into(),
                timestamp: 7
            }
        );
    }

    #[test]
    fn template_category_updates_announced_done_and_id_only() {
        let body = r#"{"entry":[{"id":"W","time":1746082800,"changes":[
          {"field":"template_category_update","value":{"message_template_id":278077987957091,
            "message_template_name":"welcome_template","message_template_language":"en-US",
            "new_category":"UTILITY","correct_category":"MARKETING","category_update_timestamp":1746169200}},
          {"field":"template_category_update","value":{"message_template_id":278077987957091,
            "message_template_name":"welcome_template","message_template_language":"en-US",
            "previous_category":"UTILITY","new_category":"MARKETING"}},
          {"field":"template_category_update","value":{"message_template_id":3,"new_category":"marketing"}}]}]}"#;
        let ev = parse(body);
        assert_eq!(
            ev[0],
            MetaEvent::TemplateCategory {
                waba_id: "W".into(),
                template_id: Some("278077987957091".into()),
                name: "welcome_template".into(),
                language: "en_US".into(),
                new: "UTILITY".into(),
                previous: None,
                correct: Some("MARKETING".into()),
                effective_at: Some(1746169200),
            }
        );
        let MetaEvent::TemplateCategory {
            previous,
            new,
            correct,
            effective_at,
            ..
        } = &ev[1]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (previous.as_deref(), new.as_str(), correct, effective_at),
            (Some("UTILITY"), "MARKETING", &None, &None)
        );
        let MetaEvent::TemplateCategory {
            template_id,
            name,
            new,
            ..
        } = &ev[2]
        else {
            panic!("{ev:?}")
        };
        assert_eq!(
            (template_id.as_deref(), name.as_str(), new.as_str()),
            (Some("3"), "", "MARKETING")
        );
        assert_eq!(ev[2].kind(), "template_category");
    }

    #[test]
    fn username_only_user_has_no_from() {
        let body = r#"{"entry":[{"id":"W","changes":[{"field":"messages","value":{
          "metadata":{"phone_number_id":"P"},
          "contacts":[{"profile":{"name":"Zed"},"user_id":"BR.123"}],
          "messages":[{"from_user_id":"BR.123","id":"m","timestamp":"1","type":"text","text":{"body":"oi"}}]}}]}]}"#;
        let MetaEvent::Inbound(m) = &parse(body)[0] else {
            panic!()
        };
        assert_eq!(m.from, None);
        assert_eq!(m.from_user_id.as_deref(), Some("BR.123"));
        assert_eq!(m.profile_name.as_deref(), Some("Zed"));
    }

    #[test]
    fn rejects_non_webhooks_with_position() {
        match parse_meta_webhook(b"{\"entry\": [\n  {\"id\": ") {
            Err(WebhookParseError::InvalidJson { line, .. }) => assert_eq!(line, 2),
            other => panic!("{other:?}"),
        }
        match parse_meta_webhook(b"{\"entry\":[]} {") {
            Err(e @ WebhookParseError::InvalidJson { .. }) => {
                assert!(e.to_string().contains("line 1 column"), "{e}")
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            parse_meta_webhook(b"[1]"),
            Err(WebhookParseError::NotAnObject { found: "an array" })
        );
        assert_eq!(
            parse_meta_webhook(br#"{"object":"x"}"#),
            Err(WebhookParseError::NoEntry { found: "missing" })
        );
        assert_eq!(
            parse_meta_webhook(br#"{"entry":{}}"#),
            Err(WebhookParseError::NoEntry { found: "an object" })
        );
    }

    #[test]
    fn deep_nesting_is_refused_without_overflow() {
        // 100k levels would overflow the stack of a recursive parser without a limit.
        let mut body = String::from(r#"{"entry":[{"id":"W","changes":[{"field":"x","value":"#);
        body.push_str(&"[".repeat(100_000));
        match parse_meta_webhook(body.as_bytes()) {
            Err(WebhookParseError::TooDeep { line, .. }) => assert_eq!(line, 1),
            other => panic!("{other:?}"),
        }
        // Just under the limit is fine.
        let mut ok = String::from(r#"{"entry":[{"id":"W","changes":[{"field":"x","value":"#);
        ok.push_str(&"[".repeat(100));
        ok.push_str(&"]".repeat(100));
        ok.push_str("}]}]}");
        assert_eq!(parse(&ok), vec![MetaEvent::Unhandled { field: "x".into() }]);
    }

    #[test]
    fn three_megabyte_batch() {
        let status = r#"{"id":"wamid.HBgLMTY1MDM4Nzk0MzkVAgARGBI0QUQ2MjA4NEYyRkExNjMyREUA","status":"delivered","timestamp":"1750030073","recipient_id":"16505551234","pricing":{"billable":true,"pricing_model":"PMP","type":"regular","category":"marketing"}}"#;
        let n = 3 * 1024 * 1024 / status.len() + 1;
        let body = format!(
            r#"{{"object":"whatsapp_business_account","entry":[{{"id":"W","changes":[{{"field":"messages","value":{{"metadata":{{"phone_number_id":"P"}},"statuses":[{}]}}}}]}}]}}"#,
            vec![status; n].join(",")
        );
        assert!(body.len() >= 3 * 1024 * 1024);
        let ev = parse(&body);
        assert_eq!(ev.len(), n);
    }
}
