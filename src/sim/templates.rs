//! Simulator templates: the Graph `message_templates` object shape (reference §5.1), the demo
//! set, loading from JSON/TOML, and validation of a send's `template` object against the
//! stored template with Meta's error codes (§7 items 6–7).

use std::collections::BTreeSet;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::graph_error::GraphError;

/// A template as `GET /{waba}/message_templates` returns it. Unknown keys are kept in `extra`
/// and served back, so a file exported from Meta round-trips.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SimTemplate {
    #[serde(default)]
    pub id: String,
    pub name: String,
    pub language: String,
    #[serde(default = "approved")]
    pub status: String,
    #[serde(default = "utility")]
    pub category: String,
    #[serde(default = "positional")]
    pub parameter_format: String,
    #[serde(default)]
    pub components: Vec<TemplateComponent>,
    /// Restrict to one WABA; `None` = visible on every WABA of the simulator. Not served.
    #[serde(default, skip_serializing)]
    pub waba_id: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

fn approved() -> String {
    "APPROVED".into()
}
fn utility() -> String {
    "UTILITY".into()
}
fn positional() -> String {
    "POSITIONAL".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateComponent {
    /// HEADER | BODY | FOOTER | BUTTONS (case-insensitive on input).
    #[serde(rename = "type")]
    pub kind: String,
    /// Header format: TEXT | IMAGE | VIDEO | DOCUMENT | LOCATION.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub buttons: Vec<TemplateButton>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateButton {
    /// QUICK_REPLY | URL | PHONE_NUMBER | COPY_CODE | OTP | FLOW | CATALOG …
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub example: Option<Value>,
}

impl SimTemplate {
    fn component(&self, kind: &str) -> Option<&TemplateComponent> {
        self.components
            .iter()
            .find(|c| c.kind.eq_ignore_ascii_case(kind))
    }

    pub fn is_named(&self) -> bool {
        self.parameter_format.eq_ignore_ascii_case("NAMED")
    }

    /// All buttons, flattened in order: the send's `index` counts across all of them.
    pub fn buttons(&self) -> Vec<&TemplateButton> {
        self.components
            .iter()
            .filter(|c| c.kind.eq_ignore_ascii_case("BUTTONS"))
            .flat_map(|c| c.buttons.iter())
            .collect()
    }

    /// The body text, if any (for hydration checks and listings).
    pub fn body_text(&self) -> Option<&str> {
        self.component("BODY").and_then(|c| c.text.as_deref())
    }

    /// Graph GET object with only the requested `fields` (plus `id`), or all when `None`.
    pub fn to_graph_json(&self, fields: Option<&[&str]>) -> Value {
        let full = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        match (fields, full) {
            (Some(fields), Value::Object(mut m)) => {
                m.retain(|k, _| k == "id" || fields.contains(&k.as_str()));
                Value::Object(m)
            }
            (_, v) => v,
        }
    }
}

/// Placeholders in a text: `{{1}}`, `{{first_name}}` (whitespace inside braces tolerated).
pub fn placeholders(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = after[..end].trim();
                if !name.is_empty() {
                    out.push(name.to_string());
                }
                rest = &after[end + 2..];
            }
            None => break,
        }
    }
    out
}

/// Load templates from a `.json` file (an array, or Meta's `{"data": [...]}` page) or a
/// `.toml` file (`[[templates]]` tables).
pub fn load_templates(path: &Path) -> Result<Vec<SimTemplate>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let is_toml = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    if is_toml {
        #[derive(Deserialize)]
        struct File {
            templates: Vec<SimTemplate>,
        }
        toml::from_str::<File>(&text)
            .map(|f| f.templates)
            .map_err(|e| format!("{}: {e}", path.display()))
    } else {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum File {
            List(Vec<SimTemplate>),
            Page { data: Vec<SimTemplate> },
        }
        match serde_json::from_str::<File>(&text) {
            Ok(File::List(v)) | Ok(File::Page { data: v }) => Ok(v),
            Err(e) => Err(format!("{}: {e}", path.display())),
        }
    }
}

fn comp(kind: &str, text: &str) -> TemplateComponent {
    TemplateComponent {
        kind: kind.into(),
        format: None,
        text: Some(text.into()),
        buttons: vec![],
        example: None,
    }
}

fn quick_replies(labels: &[&str]) -> TemplateComponent {
    TemplateComponent {
        kind: "BUTTONS".into(),
        format: None,
        text: None,
        buttons: labels
            .iter()
            .map(|l| TemplateButton {
                kind: "QUICK_REPLY".into(),
                text: (*l).into(),
                url: None,
                phone_number: None,
                example: None,
            })
            .collect(),
        example: None,
    }
}

fn template(
    id: &str,
    name: &str,
    language: &str,
    status: &str,
    category: &str,
    format: &str,
    components: Vec<TemplateComponent>,
) -> SimTemplate {
    SimTemplate {
        id: id.into(),
        name: name.into(),
        language: language.into(),
        status: status.into(),
        category: category.into(),
        parameter_format: format.into(),
        components,
        waba_id: None,
        extra: Map::new(),
    }
}

/// Templates for `tiercast demo`, tests and benchmarks:
/// - `renewal_reminder` (pt_BR and en_US, MARKETING, positional {{1}} {{2}} {{3}}, quick
///   replies YES / NO / STOP): the campaign template of the example config;
/// - `order_update` (en_US, UTILITY, NAMED {{first_name}} {{order_id}});
/// - `summer_sale` (en_US, MARKETING, IMAGE header, body {{1}}, URL button with {{1}} suffix);
/// - `old_promo` (en_US, MARKETING, PAUSED) and `retired_promo` (DISABLED);
/// - `window_expired` (pt_BR and en_US, UTILITY, {{1}}): the recontact template.
pub fn demo_templates() -> Vec<SimTemplate> {
    let renewal = |id: &str, lang: &str, body: &str, yes: &str, no: &str| {
        template(
            id,
            "renewal_reminder",
            lang,
            "APPROVED",
            "MARKETING",
            "POSITIONAL",
            vec![
                TemplateComponent {
                    example: Some(json!({"body_text": [["Maria", "Gold", "30%"]]})),
                    ..comp("BODY", body)
                },
                comp("FOOTER", "Reply STOP to opt out"),
                quick_replies(&[yes, no, "STOP"]),
            ],
        )
    };
    let recontact = |id: &str, lang: &str, body: &str| {
        template(
            id,
            "window_expired",
            lang,
            "APPROVED",
            "UTILITY",
            "POSITIONAL",
            vec![comp("BODY", body), quick_replies(&["OK"])],
        )
    };
    vec![
        renewal(
            "1000000000000001",
            "pt_BR",
            "Olá {{1}}, seu plano {{2}} vence em breve. Renove hoje com {{3}} de desconto!",
            "YES",
            "NO",
        ),
        renewal(
            "1000000000000002",
            "en_US",
            "Hi {{1}}, your {{2}} plan expires soon. Renew today and save {{3}}!",
            "YES",
            "NO",
        ),
        template(
            "1000000000000003",
            "order_update",
            "en_US",
            "APPROVED",
            "UTILITY",
            "NAMED",
            vec![
                TemplateComponent {
                    example: Some(json!({"body_text_named_params": [
                        {"param_name": "first_name", "example": "Maria"},
                        {"param_name": "order_id", "example": "A-1001"}]})),
                    ..comp(
                        "BODY",
                        "Hi {{first_name}}, your order {{order_id}} has shipped.",
                    )
                },
                quick_replies(&["Track it", "STOP"]),
            ],
        ),
        template(
            "1000000000000004",
            "summer_sale",
            "en_US",
            "APPROVED",
            "MARKETING",
            "POSITIONAL",
            vec![
                TemplateComponent {
                    kind: "HEADER".into(),
                    format: Some("IMAGE".into()),
                    text: None,
                    buttons: vec![],
                    example: Some(json!({"header_handle": ["https://example.com/sale.jpg"]})),
                },
                comp("BODY", "Hi {{1}}, our summer sale starts now!"),
                TemplateComponent {
                    kind: "BUTTONS".into(),
                    format: None,
                    text: None,
                    buttons: vec![TemplateButton {
                        kind: "URL".into(),
                        text: "Shop now".into(),
                        url: Some("https://shop.example.com/sale/{{1}}".into()),
                        phone_number: None,
                        example: Some(json!(["https://shop.example.com/sale/SUMMER25"])),
                    }],
                    example: None,
                },
            ],
        ),
        template(
            "1000000000000005",
            "old_promo",
            "en_US",
            "PAUSED",
            "MARKETING",
            "POSITIONAL",
            vec![comp("BODY", "Hi {{1}}, last chance!")],
        ),
        template(
            "1000000000000006",
            "retired_promo",
            "en_US",
            "DISABLED",
            "MARKETING",
            "POSITIONAL",
            vec![comp("BODY", "Hi {{1}}, we miss you!")],
        ),
        recontact(
            "1000000000000007",
            "pt_BR",
            "Olá {{1}}, podemos continuar nossa conversa?",
        ),
        recontact(
            "1000000000000008",
            "en_US",
            "Hi {{1}}, can we continue our conversation?",
        ),
    ]
}

// ---- validation ------------------------------------------------------------------------------

fn err(code: i64, details: impl Into<String>) -> GraphError {
    GraphError::new(code, details)
}

fn str_field<'a>(v: &'a Value, k: &str) -> Option<&'a str> {
    v.get(k).and_then(Value::as_str)
}

/// Check a send's `template.components` against `t` (already found and APPROVED).
pub fn validate_components(t: &SimTemplate, req: &Value) -> Result<(), GraphError> {
    let empty = Vec::new();
    let comps = match req.get("components") {
        None | Some(Value::Null) => &empty,
        Some(Value::Array(a)) => a,
        Some(_) => return Err(err(100, "Param template['components'] must be an array.")),
    };
    fn find<'a>(comps: &'a [Value], kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        comps
            .iter()
            .filter(move |c| str_field(c, "type").is_some_and(|k| k.eq_ignore_ascii_case(kind)))
    }
    let params = |c: &Value| -> Vec<Value> {
        c.get("parameters")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let only_body = t.components.len() == 1;

    // Header.
    let header_params: Vec<Value> = find(comps, "header").flat_map(params).collect();
    match t.component("HEADER") {
        None if !header_params.is_empty() => {
            return Err(err(132000, "header: template has no header parameters"))
        }
        None => {}
        Some(h) => {
            let fmt = h.format.as_deref().unwrap_or("TEXT").to_ascii_lowercase();
            if fmt == "text" {
                let expected = h.text.as_deref().map(placeholders).unwrap_or_default();
                check_text_params(t, "header", &expected, &header_params, 60)?;
            } else {
                let Some(p) = header_params.first() else {
                    return Err(err(
                        131008,
                        format!("header: a {fmt} parameter is required by this template"),
                    ));
                };
                if header_params.len() != 1 {
                    return Err(err(132000, "header: expected 1 parameter"));
                }
                if str_field(p, "type") != Some(fmt.as_str()) {
                    return Err(err(132012, format!("header: parameter type must be {fmt}")));
                }
                let media = p.get(fmt.as_str());
                let ok = media.is_some_and(|m| {
                    fmt == "location" || m.get("id").is_some() || m.get("link").is_some()
                });
                if !ok {
                    return Err(err(131008, format!("header: {fmt} needs `id` or `link`")));
                }
            }
        }
    }

    // Body.
    let body_params: Vec<Value> = find(comps, "body").flat_map(params).collect();
    let body_text = t.body_text().unwrap_or("");
    let expected = placeholders(body_text);
    let limit = if only_body { 32768 } else { 1024 };
    let values = check_text_params(t, "body", &expected, &body_params, limit)?;
    let hydrated_len = hydrate_len(body_text, &expected, &values);
    if hydrated_len > 32768 || (!only_body && hydrated_len > 1024) {
        return Err(err(
            132005,
            format!("body: hydrated text is {hydrated_len} characters"),
        ));
    }

    // Buttons.
    let buttons = t.buttons();
    let mut seen = BTreeSet::new();
    for b in find(comps, "button") {
        let index = match b.get("index") {
            Some(Value::String(s)) => s.trim().parse::<usize>().ok(),
            Some(Value::Number(n)) => n.as_u64().map(|n| n as usize),
            _ => None,
        }
        .ok_or_else(|| err(131008, "button: `index` is required"))?;
        let sub = str_field(b, "sub_type")
            .ok_or_else(|| err(131008, "button: `sub_type` is required"))?
            .to_ascii_lowercase();
        let tb = buttons
            .get(index)
            .ok_or_else(|| err(131008, format!("button: no button at index {index}")))?;
        let want = match tb.kind.to_ascii_uppercase().as_str() {
            "QUICK_REPLY" => "quick_reply",
            "URL" | "OTP" => "url",
            "COPY_CODE" => "copy_code",
            "FLOW" => "flow",
            "CATALOG" | "MPM" => "catalog",
            "PHONE_NUMBER" => "phone_number",
            _ => "",
        };
        if sub != want {
            return Err(err(
                132012,
                format!("button {index}: sub_type must be {want}, not {sub}"),
            ));
        }
        let ps = params(b);
        match want {
            "quick_reply" => {
                let ok = ps.len() == 1
                    && str_field(&ps[0], "type") == Some("payload")
                    && ps[0].get("payload").is_some_and(|p| !p.is_null());
                if !ok {
                    return Err(err(
                        131008,
                        format!("button {index}: quick_reply needs one payload parameter"),
                    ));
                }
            }
            "url" => {
                let has_var = tb.url.as_deref().is_some_and(|u| u.contains("{{"));
                match (has_var, ps.len()) {
                    (true, 1) if str_field(&ps[0], "type") == Some("text") => {}
                    (true, 0) => {
                        return Err(err(
                            131008,
                            format!("button {index}: URL suffix parameter required"),
                        ))
                    }
                    (true, 1) => {
                        return Err(err(
                            132012,
                            format!("button {index}: expected a text parameter"),
                        ))
                    }
                    (false, 0) => {}
                    _ => {
                        return Err(err(
                            132000,
                            format!("button {index}: unexpected number of parameters"),
                        ))
                    }
                }
            }
            _ => {}
        }
        seen.insert(index);
    }
    // A dynamic URL button nobody filled in cannot be rendered.
    for (i, b) in buttons.iter().enumerate() {
        let dynamic = b.kind.eq_ignore_ascii_case("URL")
            && b.url.as_deref().is_some_and(|u| u.contains("{{"));
        if dynamic && !seen.contains(&i) {
            return Err(err(
                131008,
                format!("button {i}: URL suffix parameter required"),
            ));
        }
    }
    Ok(())
}

/// Check the text parameters of one component; returns the values in placeholder order.
fn check_text_params(
    t: &SimTemplate,
    where_: &str,
    expected: &[String],
    given: &[Value],
    max_len: usize,
) -> Result<Vec<String>, GraphError> {
    if given.len() != expected.len() {
        return Err(err(
            132000,
            format!(
                "{where_}: number of localizable_params ({}) does not match the expected number of params ({})",
                given.len(),
                expected.len()
            ),
        ));
    }
    let named = t.is_named();
    let mut values = vec![String::new(); expected.len()];
    for (i, p) in given.iter().enumerate() {
        let ty = str_field(p, "type").unwrap_or("");
        let value = match ty {
            "text" => str_field(p, "text").ok_or_else(|| {
                err(
                    131008,
                    format!("{where_}: parameter {} needs `text`", i + 1),
                )
            })?,
            "currency" | "date_time" => p
                .get(ty)
                .and_then(|o| str_field(o, "fallback_value"))
                .ok_or_else(|| {
                    err(
                        131008,
                        format!("{where_}: {ty} parameter needs `fallback_value`"),
                    )
                })?,
            other => {
                return Err(err(
                    132012,
                    format!("{where_}: parameter type `{other}` not allowed here"),
                ))
            }
        };
        if value.chars().count() > max_len {
            return Err(err(
                132005,
                format!("{where_}: parameter {} exceeds {max_len} characters", i + 1),
            ));
        }
        let slot = match (named, str_field(p, "parameter_name")) {
            (true, None) => {
                return Err(err(
                    132012,
                    format!("{where_}: named template requires `parameter_name`"),
                ))
            }
            (false, Some(_)) => {
                return Err(err(
                    132012,
                    format!("{where_}: positional template does not take `parameter_name`"),
                ))
            }
            (true, Some(name)) => expected.iter().position(|e| e == name).ok_or_else(|| {
                err(
                    132000,
                    format!("{where_}: template has no parameter named `{name}`"),
                )
            })?,
            (false, None) => i,
        };
        values[slot] = value.to_string();
    }
    Ok(values)
}

fn hydrate_len(text: &str, names: &[String], values: &[String]) -> usize {
    let placeholder_len: usize = names.iter().map(|n| n.chars().count() + 4).sum();
    let values_len: usize = values.iter().map(|v| v.chars().count()).sum();
    (text.chars().count() + values_len).saturating_sub(placeholder_len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tpl(name: &str, lang: &str) -> SimTemplate {
        match demo_templates()
            .into_iter()
            .find(|t| t.name == name && t.language == lang)
        {
            Some(t) => t,
            None => panic!("no demo template {name}"),
        }
    }

    #[test]
    fn placeholders_found() {
        assert_eq!(
            placeholders("Hi {{1}}, {{ 2 }} x {{name}}"),
            ["1", "2", "name"]
        );
        assert!(placeholders("no vars {{").is_empty());
    }

    #[test]
    fn positional_ok_and_mismatch() {
        let t = tpl("renewal_reminder", "en_US");
        let good = json!({"components":[{"type":"body","parameters":[
            {"type":"text","text":"Ann"},{"type":"text","text":"Gold"},{"type":"text","text":"30%"}]},
            {"type":"button","sub_type":"quick_reply","index":"2","parameters":[{"type":"payload","payload":"STOP"}]}]});
        assert_eq!(validate_components(&t, &good), Ok(()));
        let short =
            json!({"components":[{"type":"body","parameters":[{"type":"text","text":"Ann"}]}]});
        assert_eq!(
            validate_components(&t, &short).map_err(|e| e.code),
            Err(132000)
        );
        let named = json!({"components":[{"type":"body","parameters":[
            {"type":"text","text":"Ann","parameter_name":"x"},{"type":"text","text":"b"},{"type":"text","text":"c"}]}]});
        assert_eq!(
            validate_components(&t, &named).map_err(|e| e.code),
            Err(132012)
        );
        let bad_index = json!({"components":[{"type":"body","parameters":[
            {"type":"text","text":"a"},{"type":"text","text":"b"},{"type":"text","text":"c"}]},
            {"type":"button","sub_type":"quick_reply","index":7,"parameters":[{"type":"payload","payload":"x"}]}]});
        assert_eq!(
            validate_components(&t, &bad_index).map_err(|e| e.code),
            Err(131008)
        );
        let bad_sub = json!({"components":[{"type":"body","parameters":[
            {"type":"text","text":"a"},{"type":"text","text":"b"},{"type":"text","text":"c"}]},
            {"type":"button","sub_type":"url","index":0,"parameters":[{"type":"text","text":"x"}]}]});
        assert_eq!(
            validate_components(&t, &bad_sub).map_err(|e| e.code),
            Err(132012)
        );
        let long = "x".repeat(1100);
        let too_long = json!({"components":[{"type":"body","parameters":[
            {"type":"text","text":long},{"type":"text","text":"b"},{"type":"text","text":"c"}]}]});
        assert_eq!(
            validate_components(&t, &too_long).map_err(|e| e.code),
            Err(132005)
        );
    }

    #[test]
    fn named_and_media() {
        let t = tpl("order_update", "en_US");
        let good = json!({"components":[{"type":"body","parameters":[
            {"type":"text","parameter_name":"order_id","text":"A1"},
            {"type":"text","parameter_name":"first_name","text":"Ann"}]}]});
        assert_eq!(validate_components(&t, &good), Ok(()));
        let positional = json!({"components":[{"type":"body","parameters":[
            {"type":"text","text":"A1"},{"type":"text","text":"Ann"}]}]});
        assert_eq!(
            validate_components(&t, &positional).map_err(|e| e.code),
            Err(132012)
        );

        let s = tpl("summer_sale", "en_US");
        let good = json!({"components":[
            {"type":"header","parameters":[{"type":"image","image":{"link":"https://x/y.jpg"}}]},
            {"type":"body","parameters":[{"type":"text","text":"Ann"}]},
            {"type":"button","sub_type":"url","index":"0","parameters":[{"type":"text","text":"ABC"}]}]});
        assert_eq!(validate_components(&s, &good), Ok(()));
        let no_header = json!({"components":[
            {"type":"body","parameters":[{"type":"text","text":"Ann"}]},
            {"type":"button","sub_type":"url","index":"0","parameters":[{"type":"text","text":"ABC"}]}]});
        assert_eq!(
            validate_components(&s, &no_header).map_err(|e| e.code),
            Err(131008)
        );
        let video = json!({"components":[
            {"type":"header","parameters":[{"type":"video","video":{"link":"https://x/y.mp4"}}]},
            {"type":"body","parameters":[{"type":"text","text":"Ann"}]},
            {"type":"button","sub_type":"url","index":"0","parameters":[{"type":"text","text":"ABC"}]}]});
        assert_eq!(
            validate_components(&s, &video).map_err(|e| e.code),
            Err(132012)
        );
        let no_button = json!({"components":[
            {"type":"header","parameters":[{"type":"image","image":{"id":"123"}}]},
            {"type":"body","parameters":[{"type":"text","text":"Ann"}]}]});
        assert_eq!(
            validate_components(&s, &no_button).map_err(|e| e.code),
            Err(131008)
        );
    }

    #[test]
    fn graph_json_round_trip_and_projection() {
        let t = tpl("summer_sale", "en_US");
        let v = t.to_graph_json(None);
        let back: SimTemplate = match serde_json::from_value(v) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(back, t);
        let p = t.to_graph_json(Some(&["name", "status"]));
        let keys: Vec<&String> = p
            .as_object()
            .map(|m| m.keys().collect())
            .unwrap_or_default();
        assert_eq!(keys.len(), 3);
    }
}
