//! Template logic, pure (no I/O): what a synced template looks like, which placeholders it has,
//! how a campaign's variable mapping fills them for one contact, and the exact `components`
//! array of Meta's send payload (reference `meta-cloud-api.md` §1.2, §5.1).
//!
//! Flow: a campaign's `variables` table (`{"1" = "name", "2" = "field:plan|literal:basic"}`) is
//! checked with [`missing_mappings`] / [`CompiledMapping::new`] when the campaign starts (a
//! placeholder without a mapping, or a template feature we cannot fill, refuses the start), then
//! [`CompiledMapping::render`] runs once per message. Rendering parses nothing and borrows the
//! contact's values until the final JSON is built, because it runs thousands of times a second.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

// ---------------------------------------------------------------------------------------------
// Template definition, as listed by `GET /{waba}/message_templates`
// ---------------------------------------------------------------------------------------------

/// One element of `data[]` of `GET /{waba-id}/message_templates`. Serialises back to the same
/// shape, so the store can keep it as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateDef {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub name: String,
    pub language: String,
    /// MARKETING / UTILITY / AUTHENTICATION (kept as text: Meta recategorises and adds values).
    #[serde(default, deserialize_with = "null_default")]
    pub category: String,
    /// APPROVED, PAUSED, DISABLED, … Only APPROVED is sendable.
    #[serde(default, deserialize_with = "null_default")]
    pub status: String,
    /// `quality_score.score`: GREEN / YELLOW / RED / UNKNOWN.
    #[serde(
        rename = "quality_score",
        default,
        deserialize_with = "de_quality",
        serialize_with = "ser_quality",
        skip_serializing_if = "Option::is_none"
    )]
    pub quality: Option<String>,
    #[serde(default)]
    pub parameter_format: ParameterFormat,
    #[serde(default, deserialize_with = "null_default")]
    pub components: Vec<TemplateComponent>,
    /// The category before Meta's last recategorisation (Graph's `previous_category`, or the
    /// `previous_category` of a completed `template_category_update`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_category: Option<String>,
    /// An announced recategorisation: the category Meta will set at `category_change_at`
    /// (`correct_category` of an impending `template_category_update`). Not a Graph field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correct_category: Option<String>,
    /// Unix ms: when the announced recategorisation happens, or when the last one happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category_change_at: Option<i64>,
    /// Graph's `rejected_reason`, or the `reason` of a REJECTED status webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_reason: Option<String>,
}

/// `parameter_format`: `{{1}}` placeholders or `{{first_name}}` placeholders.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ParameterFormat {
    #[default]
    Positional,
    Named,
}

impl<'de> Deserialize<'de> for ParameterFormat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Anything but NAMED is positional: that is Meta's default, and an unknown future value
        // must not make the whole template list unreadable.
        let s: Option<String> = Option::deserialize(d)?;
        Ok(match s {
            Some(s) if s.eq_ignore_ascii_case("named") => ParameterFormat::Named,
            _ => ParameterFormat::Positional,
        })
    }
}

impl Serialize for ParameterFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(match self {
            ParameterFormat::Positional => "POSITIONAL",
            ParameterFormat::Named => "NAMED",
        })
    }
}

/// Enums over Meta's upper-case vocabularies that keep unknown values instead of failing, so a
/// new component or button kind never breaks a template sync.
macro_rules! open_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident = $text:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($variant,)*
            Other(String),
        }
        impl From<String> for $name {
            fn from(s: String) -> Self {
                $(if s.eq_ignore_ascii_case($text) { return $name::$variant; })*
                $name::Other(s)
            }
        }
        impl From<$name> for String {
            fn from(v: $name) -> String {
                match v {
                    $($name::$variant => $text.to_string(),)*
                    $name::Other(s) => s,
                }
            }
        }
    };
}

open_enum!(
    /// Component `type` in a template definition.
    ComponentKind { Header = "HEADER", Body = "BODY", Footer = "FOOTER", Buttons = "BUTTONS" }
);
open_enum!(
    /// Header `format`.
    HeaderFormat {
        Text = "TEXT",
        Image = "IMAGE",
        Video = "VIDEO",
        Document = "DOCUMENT",
        Location = "LOCATION",
    }
);
open_enum!(
    /// Button `type`.
    ButtonKind {
        QuickReply = "QUICK_REPLY",
        Url = "URL",
        PhoneNumber = "PHONE_NUMBER",
        CopyCode = "COPY_CODE",
        Otp = "OTP",
        Flow = "FLOW",
    }
);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateComponent {
    #[serde(rename = "type")]
    pub kind: ComponentKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<HeaderFormat>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<Value>,
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub buttons: Vec<TemplateButton>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateButton {
    #[serde(rename = "type")]
    pub kind: ButtonKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<Value>,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn de_quality<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Q {
        Obj {
            #[serde(default)]
            score: Option<String>,
        },
        Str(String),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<Q>::deserialize(d)? {
        Some(Q::Obj { score }) => score,
        Some(Q::Str(s)) => Some(s),
        Some(Q::Other(_)) | None => None,
    })
}

fn ser_quality<S: Serializer>(q: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Q<'a> {
        score: &'a str,
    }
    match q {
        Some(score) => Q { score }.serialize(s),
        None => s.serialize_none(),
    }
}

// ---------------------------------------------------------------------------------------------
// Placeholders
// ---------------------------------------------------------------------------------------------

/// One variable slot of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The key of the campaign's `variables` table: `"1"`, `"first_name"`, `"header"`,
    /// `"header.NAME"`, `"button.N"`.
    pub key: String,
    pub kind: SlotKind,
    /// Optional slots (quick-reply payloads) may stay unmapped.
    pub required: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Image,
    Video,
    Document,
}

impl MediaKind {
    /// The parameter `type` of the send payload.
    pub fn as_str(self) -> &'static str {
        match self {
            MediaKind::Image => "image",
            MediaKind::Video => "video",
            MediaKind::Document => "document",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotKind {
    /// A body variable; `name` is set for named templates (sent as `parameter_name`).
    Body { name: Option<String> },
    /// The one variable of a text header.
    HeaderText { name: Option<String> },
    /// A media header: the value is the media URL.
    HeaderMedia(MediaKind),
    /// A button variable; `index` is the zero-based position among all the template's buttons.
    Button { index: usize, kind: ButtonSlot },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ButtonSlot {
    /// Dynamic URL suffix (`{{1}}` at the end of the button URL).
    Url,
    /// Payload echoed back by the inbound `button` webhook; optional.
    QuickReply,
    /// Coupon code of a COPY_CODE button.
    CopyCode,
    /// One-time password of an authentication template (sent like a URL suffix).
    Otp,
}

impl ButtonSlot {
    fn sub_type(self) -> &'static str {
        match self {
            ButtonSlot::Url | ButtonSlot::Otp => "url",
            ButtonSlot::QuickReply => "quick_reply",
            ButtonSlot::CopyCode => "copy_code",
        }
    }
    /// The button's parameter carrying `value`: a URL suffix or OTP is text, a quick reply a
    /// payload, a copy-code button a coupon code.
    fn parameter(self, value: String) -> Parameter {
        match self {
            ButtonSlot::Url | ButtonSlot::Otp => Parameter::Text {
                parameter_name: None,
                text: value,
            },
            ButtonSlot::QuickReply => Parameter::Payload { payload: value },
            ButtonSlot::CopyCode => Parameter::CouponCode { coupon_code: value },
        }
    }
    fn max_chars(self) -> Option<usize> {
        match self {
            // Meta: coupon codes and OTPs are at most 15 characters.
            ButtonSlot::CopyCode | ButtonSlot::Otp => Some(15),
            ButtonSlot::Url | ButtonSlot::QuickReply => None,
        }
    }
}

/// The variable names inside `{{…}}`, in order of appearance (duplicates kept).
fn variables(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || loop {
        let start = rest.find("{{")?;
        let after = &rest[start + 2..];
        let end = after.find("}}")?;
        let name = after[..end].trim();
        rest = &after[end + 2..];
        if !name.is_empty() {
            return Some(name);
        }
    })
}

fn is_positional(name: &str) -> bool {
    name.bytes().all(|b| b.is_ascii_digit())
}

impl TemplateDef {
    pub fn is_approved(&self) -> bool {
        self.status.eq_ignore_ascii_case("APPROVED")
    }

    /// Named parameters are used when Meta says so, or when the placeholders are names (an old
    /// listing without `parameter_format`).
    pub fn uses_named_params(&self) -> bool {
        self.parameter_format == ParameterFormat::Named
            || self.components.iter().any(|c| {
                matches!(c.kind, ComponentKind::Body | ComponentKind::Header)
                    && c.text
                        .as_deref()
                        .is_some_and(|t| variables(t).any(|v| !is_positional(v)))
            })
    }

    /// Every slot that may take a value, in send order: header, body, buttons.
    pub fn placeholders(&self) -> Vec<Slot> {
        let named = self.uses_named_params();
        let mut slots = Vec::new();
        for c in &self.components {
            if c.kind != ComponentKind::Header {
                continue;
            }
            match &c.format {
                None | Some(HeaderFormat::Text) => {
                    // A header has at most one variable.
                    if let Some(v) = c.text.as_deref().and_then(|t| variables(t).next()) {
                        let (key, name) = if named {
                            (format!("header.{v}"), Some(v.to_string()))
                        } else {
                            ("header".to_string(), None)
                        };
                        slots.push(Slot {
                            key,
                            kind: SlotKind::HeaderText { name },
                            required: true,
                        });
                    }
                }
                Some(f) => {
                    let media = match f {
                        HeaderFormat::Image => MediaKind::Image,
                        HeaderFormat::Video => MediaKind::Video,
                        HeaderFormat::Document => MediaKind::Document,
                        // Reported by `unsupported_features`.
                        _ => continue,
                    };
                    slots.push(Slot {
                        key: "header".to_string(),
                        kind: SlotKind::HeaderMedia(media),
                        required: true,
                    });
                }
            }
        }
        for c in &self.components {
            if c.kind != ComponentKind::Body {
                continue;
            }
            let Some(text) = c.text.as_deref() else {
                continue;
            };
            let mut names: Vec<&str> = Vec::new();
            for v in variables(text) {
                if !names.contains(&v) {
                    names.push(v);
                }
            }
            if !named {
                // Positional parameters are sent in the order {{1}}, {{2}}, … whatever the text
                // order; compare numerically so {{10}} comes after {{9}}.
                names.sort_by_key(|n| (n.len(), *n));
            }
            for v in names {
                slots.push(Slot {
                    key: v.to_string(),
                    kind: SlotKind::Body {
                        name: named.then(|| v.to_string()),
                    },
                    required: true,
                });
            }
        }
        let mut index = 0usize;
        for c in &self.components {
            if c.kind != ComponentKind::Buttons {
                continue;
            }
            for b in &c.buttons {
                let kind = match b.kind {
                    ButtonKind::Url
                        if b.url
                            .as_deref()
                            .is_some_and(|u| variables(u).next().is_some()) =>
                    {
                        Some((ButtonSlot::Url, true))
                    }
                    ButtonKind::QuickReply => Some((ButtonSlot::QuickReply, false)),
                    ButtonKind::CopyCode => Some((ButtonSlot::CopyCode, true)),
                    ButtonKind::Otp => Some((ButtonSlot::Otp, true)),
                    _ => None,
                };
                if let Some((kind, required)) = kind {
                    slots.push(Slot {
                        key: format!("button.{index}"),
                        kind: SlotKind::Button { index, kind },
                        required,
                    });
                }
                index += 1;
            }
        }
        slots
    }

    /// Template features tiercast cannot fill (location or GIF headers, carousels, limited-time
    /// offers…): a campaign on such a template must not start.
    pub fn unsupported_features(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.components {
            match (&c.kind, &c.format) {
                (ComponentKind::Other(k), _) => out.push(format!("component {k}")),
                (ComponentKind::Header, Some(HeaderFormat::Location)) => {
                    out.push("LOCATION header".to_string())
                }
                (ComponentKind::Header, Some(HeaderFormat::Other(f))) => {
                    out.push(format!("{f} header"))
                }
                _ => {}
            }
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Variable sources
// ---------------------------------------------------------------------------------------------

/// One alternative of a variable mapping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceItem {
    Name,
    Email,
    /// The contact's phone, E.164 with `+`.
    Phone,
    /// A named field of the contact (a CSV column), matched exactly.
    Field(String),
    Literal(String),
}

/// A parsed mapping value: alternatives tried in order, the first non-empty one wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VariableSource {
    pub alternatives: Vec<SourceItem>,
    raw: String,
}

impl fmt::Display for VariableSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// A contact's data, as the renderer sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ContactFields {
    /// E.164 with `+`.
    pub phone: String,
    pub name: Option<String>,
    pub email: Option<String>,
    pub fields: BTreeMap<String, String>,
}

impl VariableSource {
    /// The first alternative with a non-blank value, borrowed from the contact or the mapping.
    pub fn resolve<'a>(&'a self, c: &'a ContactFields) -> Option<&'a str> {
        self.alternatives.iter().find_map(|alt| {
            let v = match alt {
                SourceItem::Name => c.name.as_deref(),
                SourceItem::Email => c.email.as_deref(),
                SourceItem::Phone => Some(c.phone.as_str()),
                SourceItem::Field(f) => c.fields.get(f).map(String::as_str),
                SourceItem::Literal(t) => Some(t.as_str()),
            }?;
            (!v.trim().is_empty()).then_some(v)
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// Parse a mapping value: `name`, `email`, `phone`, `field:NAME`, `literal:TEXT`, joined by `|`
/// as a fallback chain (`"field:nickname|name|literal:friend"`).
///
/// `literal:` takes the rest of the string verbatim, `|` included: nothing after a literal could
/// ever be used, and this lets a literal contain a `|`.
pub fn parse_source(s: &str) -> Result<VariableSource, String> {
    let mut alternatives = Vec::new();
    let mut rest = s;
    loop {
        if let Some(text) = strip_prefix_ci(rest.trim_start(), "literal:") {
            if text.trim().is_empty() {
                return Err(format!("`{s}`: `literal:` needs a text"));
            }
            alternatives.push(SourceItem::Literal(text.to_string()));
            break;
        }
        let (token, next) = match rest.split_once('|') {
            Some((t, n)) => (t.trim(), Some(n)),
            None => (rest.trim(), None),
        };
        let item = if token.eq_ignore_ascii_case("name") {
            SourceItem::Name
        } else if token.eq_ignore_ascii_case("email") {
            SourceItem::Email
        } else if token.eq_ignore_ascii_case("phone") {
            SourceItem::Phone
        } else if let Some(field) = strip_prefix_ci(token, "field:") {
            let field = field.trim();
            if field.is_empty() {
                return Err(format!("`{s}`: `field:` needs a field name"));
            }
            SourceItem::Field(field.to_string())
        } else if token.is_empty() {
            return Err(format!("`{s}`: empty alternative"));
        } else {
            return Err(format!(
                "`{s}`: unknown source `{token}` \
                 (expected name, email, phone, field:NAME or literal:TEXT, joined by |)"
            ));
        };
        alternatives.push(item);
        match next {
            Some(n) => rest = n,
            None => break,
        }
    }
    Ok(VariableSource {
        alternatives,
        raw: s.to_string(),
    })
}

// ---------------------------------------------------------------------------------------------
// Mapping checks and rendering
// ---------------------------------------------------------------------------------------------

/// Why a template could not be filled. [`RenderError::is_contact_level`] tells the dispatcher
/// whether to blame the contact (close the row) or the campaign (refuse / pause).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    #[error("placeholder `{key}` has no variable mapping")]
    Unmapped { key: String },
    #[error("variable mapping for `{key}` is invalid: {reason}")]
    BadSource { key: String, reason: String },
    #[error("the template uses {what}, which tiercast cannot fill")]
    Unsupported { what: String },
    #[error("placeholder `{key}`: every source is empty ({sources})")]
    Empty { key: String, sources: String },
    #[error("placeholder `{key}`: value has {len} characters, the limit is {max}")]
    TooLong { key: String, len: usize, max: usize },
    #[error("placeholder `{key}`: {reason}")]
    Invalid { key: String, reason: &'static str },
}

impl RenderError {
    /// True when the error comes from this contact's data (another contact may render fine).
    pub fn is_contact_level(&self) -> bool {
        matches!(
            self,
            RenderError::Empty { .. } | RenderError::TooLong { .. } | RenderError::Invalid { .. }
        )
    }
}

/// The mapping value for a slot; a named header also accepts the plain `"header"` key.
fn lookup<'m>(slot: &Slot, mapping: &'m BTreeMap<String, String>) -> Option<&'m String> {
    mapping.get(&slot.key).or_else(|| match slot.kind {
        SlotKind::HeaderText { name: Some(_) } => mapping.get("header"),
        _ => None,
    })
}

/// Required placeholders with no mapping (a campaign with any does not start, SPEC §5.2).
pub fn missing_mappings(def: &TemplateDef, mapping: &BTreeMap<String, String>) -> Vec<String> {
    def.placeholders()
        .into_iter()
        .filter(|s| s.required && lookup(s, mapping).is_none())
        .map(|s| s.key)
        .collect()
}

/// Mapping keys that match no placeholder: most likely a typo in the config.
pub fn unused_mappings(def: &TemplateDef, mapping: &BTreeMap<String, String>) -> Vec<String> {
    let slots = def.placeholders();
    mapping
        .keys()
        .filter(|k| {
            !slots.iter().any(|s| {
                &s.key == *k
                    || (k.as_str() == "header"
                        && matches!(s.kind, SlotKind::HeaderText { name: Some(_) }))
            })
        })
        .cloned()
        .collect()
}

#[derive(Debug, Clone)]
struct Param {
    key: Box<str>,
    source: VariableSource,
    /// `parameter_name` of named templates.
    name: Option<Box<str>>,
    max_chars: Option<usize>,
}

#[derive(Debug, Clone)]
enum Header {
    Text(Param),
    Media(MediaKind, Param),
}

#[derive(Debug, Clone)]
struct Button {
    /// Pre-formatted: Meta wants the index as a string.
    index: Box<str>,
    kind: ButtonSlot,
    required: bool,
    param: Param,
}

/// One message's `template.components`, as Meta's send API takes them. Typed rather than a
/// `serde_json::Value`: rendering and serialising them is on every send's path.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Components(pub Vec<Component>);

impl Components {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> std::slice::Iter<'_, Component> {
        self.0.iter()
    }

    /// The JSON Meta receives, as a value (for tests and logs).
    pub fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Component {
    Header {
        parameters: Vec<Parameter>,
    },
    Body {
        parameters: Vec<Parameter>,
    },
    Button {
        sub_type: String,
        /// Meta wants the index as a string.
        index: String,
        parameters: Vec<Parameter>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Parameter {
    Text {
        /// Named-parameter templates (`parameter_format: NAMED`) name each value.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        parameter_name: Option<String>,
        text: String,
    },
    Image {
        image: MediaLink,
    },
    Video {
        video: MediaLink,
    },
    Document {
        document: MediaLink,
    },
    Payload {
        payload: String,
    },
    CouponCode {
        coupon_code: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaLink {
    pub link: String,
}

/// A campaign's mapping checked and parsed against its template, ready to render per contact.
#[derive(Debug, Clone)]
pub struct CompiledMapping {
    header: Option<Header>,
    body: Vec<Param>,
    buttons: Vec<Button>,
}

/// Meta's limits on text parameters (reference §1.2).
const HEADER_TEXT_MAX: usize = 60;
const BODY_PARAM_MAX: usize = 1024;
const BODY_ONLY_PARAM_MAX: usize = 32768;

impl CompiledMapping {
    /// Check the template and the mapping once. Fails on unsupported template features, required
    /// placeholders without mapping and unparsable mapping values; this is the full start check.
    pub fn new(def: &TemplateDef, mapping: &BTreeMap<String, String>) -> Result<Self, RenderError> {
        if let Some(what) = def.unsupported_features().into_iter().next() {
            return Err(RenderError::Unsupported { what });
        }
        let body_only = def.components.iter().all(|c| c.kind == ComponentKind::Body);
        let body_max = if body_only {
            BODY_ONLY_PARAM_MAX
        } else {
            BODY_PARAM_MAX
        };
        let mut out = CompiledMapping {
            header: None,
            body: Vec::new(),
            buttons: Vec::new(),
        };
        for slot in def.placeholders() {
            let Some(raw) = lookup(&slot, mapping) else {
                if slot.required {
                    return Err(RenderError::Unmapped { key: slot.key });
                }
                continue;
            };
            let source = parse_source(raw).map_err(|reason| RenderError::BadSource {
                key: slot.key.clone(),
                reason,
            })?;
            let param = |name: Option<String>, max_chars| Param {
                key: slot.key.clone().into_boxed_str(),
                source,
                name: name.map(String::into_boxed_str),
                max_chars,
            };
            match slot.kind {
                SlotKind::HeaderText { name } => {
                    out.header = Some(Header::Text(param(name, Some(HEADER_TEXT_MAX))))
                }
                SlotKind::HeaderMedia(kind) => {
                    out.header = Some(Header::Media(kind, param(None, None)))
                }
                SlotKind::Body { name } => out.body.push(param(name, Some(body_max))),
                SlotKind::Button { index, kind } => out.buttons.push(Button {
                    index: index.to_string().into_boxed_str(),
                    kind,
                    required: slot.required,
                    param: param(None, kind.max_chars()),
                }),
            }
        }
        Ok(out)
    }

    /// The send payload's `components` array for one contact. Components without parameters
    /// are left out (Meta rejects an empty `parameters`).
    pub fn render(&self, contact: &ContactFields) -> Result<Components, RenderError> {
        let mut components = Vec::with_capacity(2 + self.buttons.len());
        if let Some(header) = &self.header {
            let p = match header {
                Header::Text(p) => text_param(p, resolve_text(p, contact)?),
                Header::Media(kind, p) => {
                    let link = resolve(p, contact)?.trim();
                    let scheme_ok = strip_prefix_ci(link, "https://").is_some()
                        || strip_prefix_ci(link, "http://").is_some();
                    if !scheme_ok {
                        return Err(RenderError::Invalid {
                            key: p.key.to_string(),
                            reason: "media header needs an http(s) URL",
                        });
                    }
                    let link = MediaLink {
                        link: link.to_string(),
                    };
                    match kind {
                        MediaKind::Image => Parameter::Image { image: link },
                        MediaKind::Video => Parameter::Video { video: link },
                        MediaKind::Document => Parameter::Document { document: link },
                    }
                }
            };
            components.push(Component::Header {
                parameters: vec![p],
            });
        }
        if !self.body.is_empty() {
            let mut parameters = Vec::with_capacity(self.body.len());
            for p in &self.body {
                parameters.push(text_param(p, resolve_text(p, contact)?));
            }
            components.push(Component::Body { parameters });
        }
        for b in &self.buttons {
            let value = match resolve(&b.param, contact) {
                Ok(v) => v.trim(),
                // An unfilled quick-reply payload is fine: Meta then echoes the button text.
                Err(_) if !b.required => continue,
                Err(e) => return Err(e),
            };
            check_len(&b.param, value)?;
            components.push(Component::Button {
                sub_type: b.kind.sub_type().to_string(),
                index: b.index.to_string(),
                parameters: vec![b.kind.parameter(value.to_string())],
            });
        }
        Ok(Components(components))
    }
}

fn resolve<'a>(p: &'a Param, c: &'a ContactFields) -> Result<&'a str, RenderError> {
    p.source.resolve(c).ok_or_else(|| RenderError::Empty {
        key: p.key.to_string(),
        sources: p.source.to_string(),
    })
}

fn resolve_text<'a>(p: &'a Param, c: &'a ContactFields) -> Result<Cow<'a, str>, RenderError> {
    let v = clean_text(resolve(p, c)?);
    check_len(p, &v)?;
    Ok(v)
}

fn check_len(p: &Param, v: &str) -> Result<(), RenderError> {
    if let Some(max) = p.max_chars {
        // Bytes >= chars, so only count chars when the byte length could exceed the limit.
        if v.len() > max {
            let len = v.chars().count();
            if len > max {
                return Err(RenderError::TooLong {
                    key: p.key.to_string(),
                    len,
                    max,
                });
            }
        }
    }
    Ok(())
}

fn text_param(p: &Param, text: Cow<'_, str>) -> Parameter {
    Parameter::Text {
        parameter_name: p.name.as_deref().map(str::to_string),
        text: text.into_owned(),
    }
}

/// Meta rejects text parameters with newlines, tabs or more than four consecutive spaces
/// (132000-family errors that would pause the whole campaign for one contact's data), so such
/// whitespace runs become one space. Values without them are borrowed as they are.
fn clean_text(v: &str) -> Cow<'_, str> {
    let v = v.trim();
    let needs = v.contains(['\n', '\r', '\t']) || v.contains("     ");
    if !needs {
        return Cow::Borrowed(v);
    }
    let mut out = String::with_capacity(v.len());
    let mut in_space = false;
    for ch in v.chars() {
        if ch.is_whitespace() {
            in_space = true;
        } else {
            if in_space {
                out.push(' ');
                in_space = false;
            }
            out.push(ch);
        }
    }
    Cow::Owned(out)
}

/// One-shot convenience around [`CompiledMapping`]: compiles and renders, as the JSON Meta
/// receives. Use the compiled form when sending many messages.
pub fn render_components(
    def: &TemplateDef,
    mapping: &BTreeMap<String, String>,
    contact: &ContactFields,
) -> Result<Value, RenderError> {
    Ok(CompiledMapping::new(def, mapping)?
        .render(contact)?
        .to_json())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn def(v: Value) -> TemplateDef {
        serde_json::from_value(v).expect("template parses")
    }

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn contact() -> ContactFields {
        ContactFields {
            phone: "+5511999990000".into(),
            name: Some("Ana".into()),
            email: None,
            fields: [("plan".to_string(), "Gold".to_string())]
                .into_iter()
                .collect(),
        }
    }

    fn positional() -> TemplateDef {
        def(json!({
            "id": "920070352646140", "name": "2023_april_promo", "language": "en_US",
            "status": "APPROVED", "category": "MARKETING", "previous_category": "ACCOUNT_UPDATE",
            "parameter_format": "POSITIONAL",
            "quality_score": { "score": "GREEN", "date": 1758754645 },
            "rejected_reason": "NONE",
            "components": [
                { "type": "HEADER", "format": "TEXT", "text": "Fall Sale" },
                { "type": "BODY", "text": "Hi {{1}}, our Fall Sale is on! Use promo code {{2}} ...",
                  "example": { "body_text": [ [ "Mark", "FALL25" ] ] } },
                { "type": "FOOTER", "text": "Not interested? Tap Stop Promotions" },
                { "type": "BUTTONS", "buttons": [
                    { "type": "QUICK_REPLY", "text": "Stop promotions" } ] }
            ]
        }))
    }

    #[test]
    fn parses_reference_listing() {
        let d = positional();
        assert_eq!(d.quality.as_deref(), Some("GREEN"));
        assert_eq!(d.parameter_format, ParameterFormat::Positional);
        assert!(d.is_approved());
        assert_eq!(d.components[3].buttons[0].kind, ButtonKind::QuickReply);
        // Round trip keeps the shape.
        let again: TemplateDef =
            serde_json::from_value(serde_json::to_value(&d).expect("serialises")).expect("parses");
        assert_eq!(again, d);
    }

    #[test]
    fn unknown_kinds_do_not_fail() {
        let d = def(json!({
            "name": "x", "language": "en", "status": "APPROVED", "category": null,
            "parameter_format": "SOMETHING_NEW", "quality_score": null,
            "components": [
                { "type": "CAROUSEL", "cards": [] },
                { "type": "BODY", "text": "Hello" },
                { "type": "BUTTONS", "buttons": [
                    { "type": "MPM", "text": "View" },
                    { "type": "PHONE_NUMBER", "text": "Call", "phone_number": "+15550001" } ] }
            ]
        }));
        assert_eq!(
            d.components[0].kind,
            ComponentKind::Other("CAROUSEL".into())
        );
        assert_eq!(
            d.components[2].buttons[0].kind,
            ButtonKind::Other("MPM".into())
        );
        assert!(d.placeholders().is_empty());
        assert_eq!(
            d.unsupported_features(),
            vec!["component CAROUSEL".to_string()]
        );
        assert!(matches!(
            CompiledMapping::new(&d, &BTreeMap::new()),
            Err(RenderError::Unsupported { .. })
        ));
    }

    #[test]
    fn positional_body_and_optional_quick_reply() {
        let d = positional();
        let slots = d.placeholders();
        let keys: Vec<&str> = slots.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, ["1", "2", "button.0"]);
        assert!(!slots[2].required);
        assert_eq!(missing_mappings(&d, &map(&[("1", "name")])), vec!["2"]);
        let m = map(&[("1", "name"), ("2", "literal:FALL25")]);
        assert!(missing_mappings(&d, &m).is_empty());
        let out = render_components(&d, &m, &contact()).expect("renders");
        assert_eq!(
            out,
            json!([{ "type": "body", "parameters": [
                { "type": "text", "text": "Ana" }, { "type": "text", "text": "FALL25" } ] }])
        );
        // With the quick reply mapped, its payload is sent.
        let m = map(&[
            ("1", "name"),
            ("2", "field:plan"),
            ("button.0", "literal:STOP"),
        ]);
        let out = render_components(&d, &m, &contact()).expect("renders");
        assert_eq!(
            out[1],
            json!({ "type": "button", "sub_type": "quick_reply", "index": "0",
                    "parameters": [ { "type": "payload", "payload": "STOP" } ] })
        );
    }

    #[test]
    fn positional_order_is_numeric() {
        let d = def(json!({ "name": "t", "language": "en", "components": [
            { "type": "BODY", "text": "{{2}} a {{10}} b {{1}} c {{9}} d {{1}}" } ] }));
        let keys: Vec<String> = d.placeholders().into_iter().map(|s| s.key).collect();
        assert_eq!(keys, ["1", "2", "9", "10"]);
    }

    #[test]
    fn named_header_and_body() {
        let d = def(json!({
            "name": "order", "language": "en_US", "status": "APPROVED", "category": "UTILITY",
            "parameter_format": "NAMED",
            "components": [
                { "type": "HEADER", "format": "TEXT", "text": "Order {{order_id}}" },
                { "type": "BODY", "text": "Hi {{first_name}}, plan {{plan}}. Bye {{first_name}}" }
            ]
        }));
        let keys: Vec<String> = d.placeholders().into_iter().map(|s| s.key).collect();
        assert_eq!(keys, ["header.order_id", "first_name", "plan"]);
        // The plain "header" key is accepted for the one header variable.
        let m = map(&[
            ("header", "field:order|literal:n/a"),
            ("first_name", "field:nickname|name"),
            ("plan", "field:plan"),
        ]);
        assert!(missing_mappings(&d, &m).is_empty());
        assert!(unused_mappings(&d, &m).is_empty());
        let out = render_components(&d, &m, &contact()).expect("renders");
        assert_eq!(
            out,
            json!([
                { "type": "header", "parameters": [
                    { "type": "text", "parameter_name": "order_id", "text": "n/a" } ] },
                { "type": "body", "parameters": [
                    { "type": "text", "parameter_name": "first_name", "text": "Ana" },
                    { "type": "text", "parameter_name": "plan", "text": "Gold" } ] }
            ])
        );
    }

    #[test]
    fn media_header_and_url_button() {
        let d = def(json!({
            "name": "promo", "language": "pt_BR", "status": "APPROVED",
            "components": [
                { "type": "HEADER", "format": "IMAGE", "example": { "header_handle": ["4::aW"] } },
                { "type": "BODY", "text": "Oi {{1}}" },
                { "type": "BUTTONS", "buttons": [
                    { "type": "QUICK_REPLY", "text": "Sim" },
                    { "type": "URL", "text": "Site", "url": "https://x.example/" },
                    { "type": "URL", "text": "Order", "url": "https://x.example/o/{{1}}" },
                    { "type": "COPY_CODE", "example": "SAVE10" } ] }
            ]
        }));
        let keys: Vec<String> = d.placeholders().into_iter().map(|s| s.key).collect();
        assert_eq!(keys, ["header", "1", "button.0", "button.2", "button.3"]);
        let m = map(&[
            ("header", "field:img|literal:https://cdn.example/a.jpg"),
            ("1", "name"),
            ("button.2", "field:plan"),
            ("button.3", "literal:SAVE10"),
        ]);
        assert_eq!(
            missing_mappings(&d, &BTreeMap::new()),
            ["header", "1", "button.2", "button.3"]
        );
        let out = render_components(&d, &m, &contact()).expect("renders");
        assert_eq!(
            out,
            json!([
                { "type": "header", "parameters": [
                    { "type": "image", "image": { "link": "https://cdn.example/a.jpg" } } ] },
                { "type": "body", "parameters": [ { "type": "text", "text": "Ana" } ] },
                { "type": "button", "sub_type": "url", "index": "2",
                  "parameters": [ { "type": "text", "text": "Gold" } ] },
                { "type": "button", "sub_type": "copy_code", "index": "3",
                  "parameters": [ { "type": "coupon_code", "coupon_code": "SAVE10" } ] }
            ])
        );
        let mut c = contact();
        c.fields.insert("img".into(), "ftp://nope".into());
        let err = render_components(&d, &m, &c).expect_err("bad scheme");
        assert!(matches!(err, RenderError::Invalid { ref key, .. } if key == "header"));
        assert!(err.is_contact_level());
    }

    #[test]
    fn document_and_video_headers() {
        for (format, kind) in [("DOCUMENT", "document"), ("VIDEO", "video")] {
            let d = def(json!({ "name": "t", "language": "en", "components": [
                { "type": "HEADER", "format": format }, { "type": "BODY", "text": "Hi" } ] }));
            let out = render_components(
                &d,
                &map(&[("header", "literal:https://a.example/f")]),
                &contact(),
            )
            .expect("renders");
            assert_eq!(
                out,
                json!([{ "type": "header", "parameters": [
                    { "type": kind, kind: { "link": "https://a.example/f" } } ] }])
            );
        }
    }

    #[test]
    fn parse_sources() {
        let s = parse_source("field:nickname|name|literal:friend").expect("parses");
        assert_eq!(
            s.alternatives,
            vec![
                SourceItem::Field("nickname".into()),
                SourceItem::Name,
                SourceItem::Literal("friend".into())
            ]
        );
        assert_eq!(s.to_string(), "field:nickname|name|literal:friend");
        let s = parse_source(" Email | phone ").expect("parses");
        assert_eq!(s.alternatives, vec![SourceItem::Email, SourceItem::Phone]);
        let s = parse_source("literal:a|b").expect("parses");
        assert_eq!(s.alternatives, vec![SourceItem::Literal("a|b".into())]);
        assert!(parse_source("").is_err());
        assert!(parse_source("name|").is_err());
        assert!(parse_source("field:").is_err());
        assert!(parse_source("literal:").is_err());
        assert!(parse_source("nme").unwrap_err().contains("nme"));
    }

    #[test]
    fn fallbacks_and_errors() {
        let d = positional();
        let m = map(&[
            ("1", "field:nickname|email|name"),
            ("2", "field:missing|email"),
        ]);
        let mut c = contact();
        c.email = Some("   ".into());
        let err = render_components(&d, &m, &c).expect_err("2 is empty");
        assert_eq!(
            err,
            RenderError::Empty {
                key: "2".into(),
                sources: "field:missing|email".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "placeholder `2`: every source is empty (field:missing|email)"
        );
        c.fields.insert("missing".into(), "x".into());
        c.fields.insert("nickname".into(), "Aninha".into());
        let out = render_components(&d, &m, &c).expect("renders");
        assert_eq!(out[0]["parameters"][0]["text"], "Aninha");

        // Unmapped and unparsable mappings are campaign-level.
        let err = CompiledMapping::new(&d, &map(&[("1", "name")])).expect_err("unmapped");
        assert_eq!(err, RenderError::Unmapped { key: "2".into() });
        assert!(!err.is_contact_level());
        let err =
            CompiledMapping::new(&d, &map(&[("1", "name"), ("2", "bogus")])).expect_err("bad");
        assert!(matches!(err, RenderError::BadSource { ref key, .. } if key == "2"));
        assert_eq!(
            unused_mappings(&d, &map(&[("1", "name"), ("3", "name")])),
            ["3"]
        );
    }

    #[test]
    fn length_limits_and_cleaning() {
        let d = def(json!({ "name": "t", "language": "en", "components": [
            { "type": "HEADER", "format": "TEXT", "text": "Hi {{1}}" },
            { "type": "BODY", "text": "Body {{1}}" } ] }));
        let m = map(&[("header", "field:h"), ("1", "field:b")]);
        let compiled = CompiledMapping::new(&d, &m).expect("compiles");
        let mut c = contact();
        c.fields.insert("h".into(), "é".repeat(60));
        c.fields
            .insert("b".into(), "line one\n\tline  two     end".into());
        let out = compiled
            .render(&c)
            .expect("60 chars (120 bytes) fit")
            .to_json();
        assert_eq!(out[1]["parameters"][0]["text"], "line one line two end");
        c.fields.insert("h".into(), "x".repeat(61));
        assert_eq!(
            compiled.render(&c),
            Err(RenderError::TooLong {
                key: "header".into(),
                len: 61,
                max: 60
            })
        );
        c.fields.insert("h".into(), "ok".into());
        c.fields.insert("b".into(), "y".repeat(1025));
        assert!(matches!(
            compiled.render(&c),
            Err(RenderError::TooLong { max: 1024, .. })
        ));
        // A body-only template allows long parameters.
        let body_only = def(json!({ "name": "t", "language": "en", "components": [
            { "type": "BODY", "text": "Body {{1}}" } ] }));
        assert!(render_components(&body_only, &map(&[("1", "field:b")]), &c).is_ok());
    }

    #[test]
    fn template_without_variables_renders_empty_array() {
        let d = def(
            json!({ "name": "hello_world", "language": "en_US", "components": [
            { "type": "HEADER", "format": "TEXT", "text": "Hello World" },
            { "type": "BODY", "text": "Welcome!" },
            { "type": "FOOTER", "text": "Team" } ] }),
        );
        assert_eq!(
            render_components(&d, &BTreeMap::new(), &contact()).expect("renders"),
            json!([])
        );
    }

    #[test]
    fn location_header_is_unsupported() {
        let d = def(json!({ "name": "t", "language": "en", "components": [
            { "type": "HEADER", "format": "LOCATION" }, { "type": "BODY", "text": "x" } ] }));
        assert_eq!(d.unsupported_features(), ["LOCATION header"]);
    }
}
