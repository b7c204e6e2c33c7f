//! Template authoring (`tiercast templates create FILE.toml`): the TOML a user writes, Meta's
//! authoring rules checked before any network call (reference `meta-cloud-api.md` §5.2), and
//! the Graph JSON body of `POST /{waba}/message_templates` (§5.1). Pure: no I/O.
//!
//! Every problem is reported, not just the first, each naming the file, the key and why, so a
//! user fixes the file in one pass instead of paying one Graph round trip (and one of the 100
//! creations per hour) per mistake.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde_json::{json, Value};

/// Meta's limits (reference §5.2).
pub const MAX_NAME: usize = 512;
pub const MAX_BODY: usize = 1024;
pub const MAX_HEADER_TEXT: usize = 60;
pub const MAX_FOOTER: usize = 60;
pub const MAX_BUTTONS: usize = 10;
pub const MAX_BUTTON_TEXT: usize = 25;
pub const MAX_URL_BUTTONS: usize = 2;
pub const MAX_PHONE_BUTTONS: usize = 1;
pub const MAX_URL: usize = 2000;

/// One problem with a template file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AuthoringError {
    pub file: String,
    /// Known for syntax and type errors; rule violations name the key only.
    pub line: Option<usize>,
    pub key: String,
    pub message: String,
}

impl fmt::Display for AuthoringError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{line}: {}: {}", self.file, self.key, self.message),
            None => write!(f, "{}: {}: {}", self.file, self.key, self.message),
        }
    }
}

/// Every problem found in one file (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthoringErrors(pub Vec<AuthoringError>);

impl fmt::Display for AuthoringErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let lines: Vec<String> = self.0.iter().map(ToString::to_string).collect();
        f.write_str(&lines.join("\n"))
    }
}

impl std::error::Error for AuthoringErrors {}

/// The TOML file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateFile {
    pub name: String,
    pub language: String,
    pub category: String,
    /// Lets Meta change the category instead of rejecting the template.
    #[serde(default)]
    pub allow_category_change: Option<bool>,
    #[serde(default)]
    pub header: Option<HeaderSpec>,
    pub body: BodySpec,
    #[serde(default)]
    pub footer: Option<String>,
    #[serde(default)]
    pub buttons: Vec<ButtonSpec>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderSpec {
    /// TEXT, IMAGE, VIDEO, DOCUMENT or LOCATION.
    pub format: String,
    #[serde(default)]
    pub text: Option<String>,
    /// The example of the header variable (TEXT), or a media header's upload handle.
    #[serde(default)]
    pub example: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BodySpec {
    pub text: String,
    #[serde(default)]
    pub examples: Option<Examples>,
}

/// `examples = ["Maria", "GOLD"]` for `{{1}} {{2}}`, or
/// `examples = { first_name = "Maria" }` for named variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Examples {
    Positional(Vec<String>),
    Named(BTreeMap<String, String>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ButtonSpec {
    /// QUICK_REPLY, URL, PHONE_NUMBER or COPY_CODE.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub phone_number: Option<String>,
    /// The URL variable's example, or the coupon code of COPY_CODE.
    #[serde(default)]
    pub example: Option<String>,
}

/// A variable in a text: `{{1}}` or `{{first_name}}`, with its byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Var {
    name: String,
    start: usize,
    end: usize,
}

fn vars(text: &str) -> Vec<Var> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(open) = text[from..].find("{{") {
        let start = from + open;
        let Some(close) = text[start + 2..].find("}}") else {
            break;
        };
        let end = start + 2 + close + 2;
        out.push(Var {
            name: text[start + 2..end - 2].trim().to_string(),
            start,
            end,
        });
        from = end;
    }
    out
}

fn is_positional(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit())
}

fn is_named(name: &str) -> bool {
    name.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn chars(s: &str) -> usize {
    s.chars().count()
}

/// Collects problems for one file.
struct Check<'a> {
    file: &'a str,
    errors: Vec<AuthoringError>,
}

impl Check<'_> {
    fn fail(&mut self, key: impl Into<String>, message: impl Into<String>) {
        self.errors.push(AuthoringError {
            file: self.file.to_string(),
            line: None,
            key: key.into(),
            message: message.into(),
        });
    }

    fn max_len(&mut self, key: &str, text: &str, max: usize) {
        let n = chars(text);
        if n > max {
            self.fail(key, format!("{n} characters; Meta allows at most {max}"));
        }
    }
}

/// A validated template, ready to submit.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTemplate {
    pub name: String,
    pub language: String,
    pub category: String,
    /// `POST /{waba}/message_templates` body.
    pub request: Value,
}

/// Parses and checks a template file. `file` names it in errors.
pub fn parse(text: &str, file: &str) -> Result<NewTemplate, AuthoringErrors> {
    let de = toml::Deserializer::new(text);
    let spec: TemplateFile = serde_path_to_error::deserialize(de).map_err(|e| {
        let key = e.path().to_string();
        let inner = e.into_inner();
        let line = inner
            .span()
            .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
        AuthoringErrors(vec![AuthoringError {
            file: file.to_string(),
            line,
            key: if key == "." { "(file)".into() } else { key },
            message: inner.message().trim().to_string(),
        }])
    })?;
    validate(&spec, file)
}

/// Meta's authoring rules; all problems at once.
pub fn validate(spec: &TemplateFile, file: &str) -> Result<NewTemplate, AuthoringErrors> {
    let mut c = Check {
        file,
        errors: Vec::new(),
    };
    check_name(&mut c, &spec.name);
    check_language(&mut c, &spec.language);
    let category = spec.category.trim().to_ascii_uppercase();
    if !["MARKETING", "UTILITY", "AUTHENTICATION"].contains(&category.as_str()) {
        c.fail(
            "category",
            format!(
                "`{}` is not a category (MARKETING, UTILITY, AUTHENTICATION)",
                spec.category
            ),
        );
    }

    let mut components = Vec::new();
    let header_vars = match &spec.header {
        Some(h) => {
            let (component, vars) = header(&mut c, h);
            components.extend(component);
            vars
        }
        None => Vec::new(),
    };
    let (body_component, body_vars) = body(&mut c, &spec.body);
    let kind = |vs: &[Var]| vs.first().map(|v| !is_positional(&v.name));
    let (header_named, body_named) = (kind(&header_vars), kind(&body_vars));
    if let (Some(h), Some(b)) = (header_named, body_named) {
        if h != b {
            c.fail(
                "header.text",
                "the header and the body must both use numbered ({{1}}) or both named ({{first_name}}) variables",
            );
        }
    }
    let named = header_named.or(body_named).unwrap_or(false);
    components.push(body_component);
    if let Some(footer) = &spec.footer {
        c.max_len("footer", footer, MAX_FOOTER);
        if !vars(footer).is_empty() {
            c.fail("footer", "a footer cannot hold variables");
        }
        if footer.trim().is_empty() {
            c.fail("footer", "is empty; leave the key out for no footer");
        }
        components.push(json!({ "type": "FOOTER", "text": footer }));
    }
    if !spec.buttons.is_empty() {
        components.push(json!({ "type": "BUTTONS", "buttons": buttons(&mut c, &spec.buttons) }));
    }
    if !c.errors.is_empty() {
        return Err(AuthoringErrors(c.errors));
    }
    let mut request = json!({
        "name": spec.name,
        "language": spec.language,
        "category": category,
        "parameter_format": if named { "NAMED" } else { "POSITIONAL" },
        "components": components,
    });
    if let Some(allow) = spec.allow_category_change {
        request["allow_category_change"] = allow.into();
    }
    Ok(NewTemplate {
        name: spec.name.clone(),
        language: spec.language.clone(),
        category,
        request,
    })
}

fn check_name(c: &mut Check<'_>, name: &str) {
    if name.is_empty() {
        c.fail("name", "is empty");
    } else if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        c.fail(
            "name",
            format!("`{name}`: only lower-case letters, digits and underscores (^[a-z0-9_]+$)"),
        );
    }
    c.max_len("name", name, MAX_NAME);
}

fn check_language(c: &mut Check<'_>, language: &str) {
    // Meta's codes: `en`, `pt_BR`, `zh_HK`, `fil` … (webhooks write `en-US`; creation does not).
    let ok = match language.split_once('_') {
        Some((lang, region)) => {
            (2..=3).contains(&lang.len())
                && lang.bytes().all(|b| b.is_ascii_lowercase())
                && (2..=4).contains(&region.len())
                && region.bytes().all(|b| b.is_ascii_uppercase())
        }
        None => {
            (2..=3).contains(&language.len()) && language.bytes().all(|b| b.is_ascii_lowercase())
        }
    };
    if !ok {
        c.fail(
            "language",
            format!("`{language}` is not a language code like en, en_US or pt_BR"),
        );
    }
}

fn header(c: &mut Check<'_>, h: &HeaderSpec) -> (Option<Value>, Vec<Var>) {
    let format = h.format.trim().to_ascii_uppercase();
    match format.as_str() {
        "TEXT" => {
            let Some(text) = h.text.as_deref().filter(|t| !t.trim().is_empty()) else {
                c.fail("header.text", "a TEXT header needs its text");
                return (None, Vec::new());
            };
            c.max_len("header.text", text, MAX_HEADER_TEXT);
            let vs = vars(text);
            if vs.len() > 1 {
                c.fail(
                    "header.text",
                    format!("{} variables; a header holds at most one", vs.len()),
                );
            }
            let mut component = json!({ "type": "HEADER", "format": "TEXT", "text": text });
            if let Some(v) = vs.first() {
                if is_positional(&v.name) && v.name != "1" {
                    c.fail(
                        "header.text",
                        format!(
                            "the header variable must be {{{{1}}}}, not {{{{{}}}}}",
                            v.name
                        ),
                    );
                }
                match h.example.as_deref().filter(|e| !e.is_empty()) {
                    None => c.fail(
                        "header.example",
                        format!("the header variable {{{{{}}}}} needs an example", v.name),
                    ),
                    Some(e) if is_positional(&v.name) => {
                        component["example"] = json!({ "header_text": [e] });
                    }
                    Some(e) => {
                        component["example"] = json!({
                            "header_text_named_params": [{ "param_name": v.name, "example": e }]
                        });
                    }
                }
            } else if h.example.is_some() {
                c.fail(
                    "header.example",
                    "the header has no variable to give an example for",
                );
            }
            (Some(component), vs)
        }
        "IMAGE" | "VIDEO" | "DOCUMENT" => {
            if h.text.is_some() {
                c.fail("header.text", format!("a {format} header has no text"));
            }
            match h.example.as_deref().filter(|e| !e.is_empty()) {
                Some(handle) => (
                    Some(json!({ "type": "HEADER", "format": format,
                                 "example": { "header_handle": [handle] } })),
                    Vec::new(),
                ),
                None => {
                    c.fail(
                        "header.example",
                        format!("a {format} header needs a sample media upload handle (\"4::…\")"),
                    );
                    (None, Vec::new())
                }
            }
        }
        "LOCATION" => {
            if h.text.is_some() || h.example.is_some() {
                c.fail("header", "a LOCATION header has neither text nor example");
            }
            (
                Some(json!({ "type": "HEADER", "format": "LOCATION" })),
                Vec::new(),
            )
        }
        _ => {
            c.fail(
                "header.format",
                format!(
                    "`{}` is not a header format (TEXT, IMAGE, VIDEO, DOCUMENT, LOCATION)",
                    h.format
                ),
            );
            (None, Vec::new())
        }
    }
}

fn body(c: &mut Check<'_>, b: &BodySpec) -> (Value, Vec<Var>) {
    let text = b.text.as_str();
    if text.trim().is_empty() {
        c.fail("body.text", "is empty");
    }
    c.max_len("body.text", text, MAX_BODY);
    let vs = vars(text);
    for v in &vs {
        if !is_positional(&v.name) && !is_named(&v.name) {
            c.fail(
                "body.text",
                format!(
                    "{{{{{}}}}} is neither a number nor a lower-case name",
                    v.name
                ),
            );
        }
    }
    let trimmed = text.trim();
    if vs
        .first()
        .is_some_and(|v| text[..v.start].trim().is_empty())
        && !trimmed.is_empty()
    {
        c.fail(
            "body.text",
            "starts with a variable; Meta refuses that (2388299)",
        );
    }
    if vs.last().is_some_and(|v| text[v.end..].trim().is_empty()) && !trimmed.is_empty() {
        c.fail(
            "body.text",
            "ends with a variable; Meta refuses that (2388299)",
        );
    }
    for pair in vs.windows(2) {
        if text[pair[0].end..pair[1].start].trim().is_empty() {
            c.fail(
                "body.text",
                format!(
                    "{{{{{}}}}} and {{{{{}}}}} are side by side; put text between them",
                    pair[0].name, pair[1].name
                ),
            );
        }
    }
    // Distinct names in order of first use.
    let mut names: Vec<&str> = Vec::new();
    for v in &vs {
        if !names.contains(&v.name.as_str()) {
            names.push(&v.name);
        }
    }
    let positional = names.iter().all(|n| is_positional(n));
    let mut component = json!({ "type": "BODY", "text": text });
    if !positional && names.iter().any(|n| is_positional(n)) {
        c.fail(
            "body.text",
            "mixes numbered ({{1}}) and named ({{first_name}}) variables; use one kind",
        );
        return (component, vs);
    }
    if names.is_empty() {
        if b.examples.is_some() {
            c.fail(
                "body.examples",
                "the body has no variables to give examples for",
            );
        }
        return (component, vs);
    }
    if positional {
        let mut numbers: Vec<usize> = names.iter().filter_map(|n| n.parse().ok()).collect();
        numbers.sort_unstable();
        let expected: Vec<usize> = (1..=numbers.len()).collect();
        if numbers != expected {
            let got: Vec<String> = numbers.iter().map(|n| format!("{{{{{n}}}}}")).collect();
            c.fail(
                "body.text",
                format!(
                    "variables must be numbered from {{{{1}}}} without gaps; found {}",
                    got.join(", ")
                ),
            );
        }
        match &b.examples {
            Some(Examples::Positional(ex)) if ex.len() == numbers.len() => {
                if let Some(i) = ex.iter().position(|e| e.trim().is_empty()) {
                    c.fail(format!("body.examples[{i}]"), "is empty");
                }
                component["example"] = json!({ "body_text": [ex] });
            }
            Some(Examples::Positional(ex)) => c.fail(
                "body.examples",
                format!(
                    "{} examples for {} variables; every variable needs one",
                    ex.len(),
                    numbers.len()
                ),
            ),
            Some(Examples::Named(_)) => c.fail(
                "body.examples",
                "numbered variables take a list of examples: [\"…\", \"…\"]",
            ),
            None => c.fail(
                "body.examples",
                format!(
                    "missing; every variable needs an example ({} variables)",
                    numbers.len()
                ),
            ),
        }
    } else {
        match &b.examples {
            Some(Examples::Named(ex)) => {
                let mut params = Vec::new();
                for n in &names {
                    match ex.get(*n).filter(|e| !e.trim().is_empty()) {
                        Some(e) => params.push(json!({ "param_name": n, "example": e })),
                        None => c.fail(
                            format!("body.examples.{n}"),
                            format!("missing; the variable {{{{{n}}}}} needs an example"),
                        ),
                    }
                }
                for extra in ex.keys().filter(|k| !names.contains(&k.as_str())) {
                    c.fail(
                        format!("body.examples.{extra}"),
                        "the body has no such variable",
                    );
                }
                component["example"] = json!({ "body_text_named_params": params });
            }
            Some(Examples::Positional(_)) => c.fail(
                "body.examples",
                "named variables take a table of examples: { first_name = \"…\" }",
            ),
            None => c.fail(
                "body.examples",
                format!(
                    "missing; every variable needs an example ({} variables)",
                    names.len()
                ),
            ),
        }
    }
    (component, vs)
}

fn buttons(c: &mut Check<'_>, specs: &[ButtonSpec]) -> Vec<Value> {
    if specs.len() > MAX_BUTTONS {
        c.fail(
            "buttons",
            format!("{} buttons; Meta allows at most {MAX_BUTTONS}", specs.len()),
        );
    }
    let kinds: Vec<String> = specs
        .iter()
        .map(|b| b.kind.trim().to_ascii_uppercase())
        .collect();
    let count = |k: &str| kinds.iter().filter(|x| *x == k).count();
    if count("URL") > MAX_URL_BUTTONS {
        c.fail(
            "buttons",
            format!(
                "{} URL buttons; Meta allows at most {MAX_URL_BUTTONS}",
                count("URL")
            ),
        );
    }
    if count("PHONE_NUMBER") > MAX_PHONE_BUTTONS {
        c.fail(
            "buttons",
            format!(
                "{} PHONE_NUMBER buttons; Meta allows at most {MAX_PHONE_BUTTONS}",
                count("PHONE_NUMBER")
            ),
        );
    }
    if count("COPY_CODE") > 1 {
        c.fail("buttons", "more than one COPY_CODE button; Meta allows one");
    }
    // Quick replies and call-to-action buttons each in one group (Meta: "invalid combination").
    let groups = kinds
        .windows(2)
        .filter(|w| (w[0] == "QUICK_REPLY") != (w[1] == "QUICK_REPLY"))
        .count();
    if groups > 1 {
        c.fail(
            "buttons",
            "quick replies and call-to-action buttons are interleaved; put all quick replies together and all the others together",
        );
    }
    let mut out = Vec::new();
    for (i, (b, kind)) in specs.iter().zip(&kinds).enumerate() {
        let key = |field: &str| format!("buttons[{i}].{field}");
        let text = b.text.as_deref().unwrap_or("");
        if kind != "COPY_CODE" {
            if text.trim().is_empty() {
                c.fail(key("text"), "a button needs its label");
            }
            c.max_len(&key("text"), text, MAX_BUTTON_TEXT);
        }
        match kind.as_str() {
            "QUICK_REPLY" => out.push(json!({ "type": "QUICK_REPLY", "text": text })),
            "URL" => {
                let Some(url) = b.url.as_deref().filter(|u| !u.is_empty()) else {
                    c.fail(key("url"), "a URL button needs its url");
                    continue;
                };
                c.max_len(&key("url"), url, MAX_URL);
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    c.fail(key("url"), "must start with https:// or http://");
                }
                let vs = vars(url);
                let mut button = json!({ "type": "URL", "text": text, "url": url });
                match vs.as_slice() {
                    [] => {}
                    [v] if v.name == "1" && v.end == url.len() => {
                        match b.example.as_deref().filter(|e| !e.is_empty()) {
                            Some(e) => button["example"] = json!([e]),
                            None => {
                                c.fail(key("example"), "the URL variable {{1}} needs an example")
                            }
                        }
                    }
                    _ => c.fail(
                        key("url"),
                        "a URL may hold one variable, {{1}}, and only at its end",
                    ),
                }
                out.push(button);
            }
            "PHONE_NUMBER" => {
                let phone = b.phone_number.as_deref().unwrap_or("");
                let digits = phone.trim_start_matches('+');
                if digits.is_empty()
                    || digits.len() > 20
                    || !digits.bytes().all(|d| d.is_ascii_digit())
                {
                    c.fail(
                        key("phone_number"),
                        "a PHONE_NUMBER button needs a number in international form (+15550001111)",
                    );
                }
                out.push(json!({ "type": "PHONE_NUMBER", "text": text, "phone_number": digits }));
            }
            "COPY_CODE" => match b.example.as_deref().filter(|e| !e.is_empty()) {
                Some(code) if chars(code) <= 15 => {
                    out.push(json!({ "type": "COPY_CODE", "example": code }))
                }
                Some(code) => c.fail(
                    key("example"),
                    format!("{} characters; a coupon code holds at most 15", chars(code)),
                ),
                None => c.fail(key("example"), "a COPY_CODE button needs its sample code"),
            },
            _ => c.fail(
                key("type"),
                format!(
                    "`{}` is not a button type (QUICK_REPLY, URL, PHONE_NUMBER, COPY_CODE)",
                    b.kind
                ),
            ),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "spring_offer"
language = "en_US"
category = "marketing"
footer = "Reply STOP to opt out"

[header]
format = "TEXT"
text = "Spring {{1}}"
example = "sale"

[body]
text = "Hi {{1}}, use code {{2}} for {{3}} off."
examples = ["Maria", "SPRING25", "25%"]

[[buttons]]
type = "QUICK_REPLY"
text = "Yes"

[[buttons]]
type = "QUICK_REPLY"
text = "STOP"

[[buttons]]
type = "URL"
text = "Shop"
url = "https://shop.example/s?c={{1}}"
example = "SPRING25"

[[buttons]]
type = "PHONE_NUMBER"
text = "Call us"
phone_number = "+15550001111"
"#;

    /// The messages of a file's errors, as `key: why`.
    fn errors(text: &str) -> Vec<String> {
        match parse(text, "t.toml") {
            Ok(t) => panic!("accepted: {t:?}"),
            Err(e) => {
                e.0.into_iter()
                    .map(|e| {
                        assert_eq!(e.file, "t.toml");
                        format!("{}: {}", e.key, e.message)
                    })
                    .collect()
            }
        }
    }

    /// GOOD with one line replaced.
    fn with(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from}");
        GOOD.replacen(from, to, 1)
    }

    fn minimal(body: &str, rest: &str) -> String {
        format!("name = \"t\"\nlanguage = \"en\"\ncategory = \"UTILITY\"\n{rest}\n[body]\n{body}\n")
    }

    #[test]
    fn a_good_file_becomes_graph_json() {
        let t = parse(GOOD, "t.toml").unwrap();
        assert_eq!(
            (t.name.as_str(), t.category.as_str()),
            ("spring_offer", "MARKETING")
        );
        assert_eq!(
            t.request,
            json!({
                "name": "spring_offer", "language": "en_US", "category": "MARKETING",
                "parameter_format": "POSITIONAL",
                "components": [
                    { "type": "HEADER", "format": "TEXT", "text": "Spring {{1}}",
                      "example": { "header_text": ["sale"] } },
                    { "type": "BODY", "text": "Hi {{1}}, use code {{2}} for {{3}} off.",
                      "example": { "body_text": [["Maria", "SPRING25", "25%"]] } },
                    { "type": "FOOTER", "text": "Reply STOP to opt out" },
                    { "type": "BUTTONS", "buttons": [
                        { "type": "QUICK_REPLY", "text": "Yes" },
                        { "type": "QUICK_REPLY", "text": "STOP" },
                        { "type": "URL", "text": "Shop", "url": "https://shop.example/s?c={{1}}",
                          "example": ["SPRING25"] },
                        { "type": "PHONE_NUMBER", "text": "Call us", "phone_number": "15550001111" } ] }
                ]
            })
        );
    }

    #[test]
    fn named_variables_and_media_header() {
        let text = r#"
name = "order_ready"
language = "pt_BR"
category = "UTILITY"
allow_category_change = false
[header]
format = "image"
example = "4::aW1hZ2UvanBn:ARY"
[body]
text = "Oi {{first_name}}, o pedido {{order_id}} chegou."
examples = { first_name = "Ana", order_id = "A-1" }
"#;
        let t = parse(text, "t.toml").unwrap();
        assert_eq!(t.request["parameter_format"], "NAMED");
        assert_eq!(t.request["allow_category_change"], false);
        assert_eq!(
            t.request["components"][0],
            json!({ "type": "HEADER", "format": "IMAGE", "example": { "header_handle": ["4::aW1hZ2UvanBn:ARY"] } })
        );
        assert_eq!(
            t.request["components"][1]["example"],
            json!({ "body_text_named_params": [
                { "param_name": "first_name", "example": "Ana" },
                { "param_name": "order_id", "example": "A-1" } ] })
        );
    }

    #[test]
    fn name_rules() {
        assert_eq!(
            errors(&with("name = \"spring_offer\"", "name = \"Spring-Offer\"")),
            ["name: `Spring-Offer`: only lower-case letters, digits and underscores (^[a-z0-9_]+$)"]
        );
        let long = format!("name = \"{}\"", "a".repeat(513));
        assert_eq!(
            errors(&with("name = \"spring_offer\"", &long)),
            ["name: 513 characters; Meta allows at most 512"]
        );
        assert_eq!(
            errors(&with("name = \"spring_offer\"", "name = \"\"")),
            ["name: is empty"]
        );
    }

    #[test]
    fn language_and_category() {
        assert_eq!(
            errors(&with("language = \"en_US\"", "language = \"en-US\"")),
            ["language: `en-US` is not a language code like en, en_US or pt_BR"]
        );
        assert_eq!(
            errors(&with("category = \"marketing\"", "category = \"PROMO\"")),
            ["category: `PROMO` is not a category (MARKETING, UTILITY, AUTHENTICATION)"]
        );
    }

    #[test]
    fn body_length() {
        let body = format!(
            "text = \"Hi {{{{1}}}} {}.\"\nexamples = [\"x\"]",
            "a".repeat(1020)
        );
        assert_eq!(
            errors(&minimal(&body, "")),
            ["body.text: 1030 characters; Meta allows at most 1024"]
        );
    }

    #[test]
    fn header_rules() {
        let long = format!("text = \"{}\"\nexample = \"sale\"", "h".repeat(61));
        assert_eq!(
            errors(&with("text = \"Spring {{1}}\"\nexample = \"sale\"", &long)),
            [
                "header.text: 61 characters; Meta allows at most 60",
                "header.example: the header has no variable to give an example for"
            ]
        );
        assert_eq!(
            errors(&with(
                "text = \"Spring {{1}}\"",
                "text = \"Spring {{1}} {{2}}\""
            )),
            ["header.text: 2 variables; a header holds at most one"]
        );
        assert_eq!(
            errors(&with("example = \"sale\"\n", "")),
            ["header.example: the header variable {{1}} needs an example"]
        );
        assert_eq!(
            errors(&with("format = \"TEXT\"", "format = \"GIFT\"")),
            ["header.format: `GIFT` is not a header format (TEXT, IMAGE, VIDEO, DOCUMENT, LOCATION)"]
        );
        assert_eq!(
            errors(&with(
                "format = \"TEXT\"\ntext = \"Spring {{1}}\"\nexample = \"sale\"",
                "format = \"VIDEO\""
            )),
            ["header.example: a VIDEO header needs a sample media upload handle (\"4::…\")"]
        );
    }

    #[test]
    fn footer_rules() {
        let long = format!("footer = \"{}\"", "f".repeat(61));
        assert_eq!(
            errors(&with("footer = \"Reply STOP to opt out\"", &long)),
            ["footer: 61 characters; Meta allows at most 60"]
        );
        assert_eq!(
            errors(&with(
                "footer = \"Reply STOP to opt out\"",
                "footer = \"Bye {{1}}\""
            )),
            ["footer: a footer cannot hold variables"]
        );
    }

    #[test]
    fn variable_rules() {
        assert_eq!(
            errors(&minimal(
                "text = \"Hi {{1}} and {{3}}.\"\nexamples = [\"a\", \"b\"]",
                ""
            )),
            ["body.text: variables must be numbered from {{1}} without gaps; found {{1}}, {{3}}"]
        );
        assert_eq!(
            errors(&minimal(
                "text = \"Hi {{1}} and {{2}}.\"\nexamples = [\"a\"]",
                ""
            )),
            ["body.examples: 1 examples for 2 variables; every variable needs one"]
        );
        assert_eq!(
            errors(&minimal("text = \"Hi {{1}}.\"", "")),
            ["body.examples: missing; every variable needs an example (1 variables)"]
        );
        assert_eq!(
            errors(&minimal("text = \"{{1}}, hello.\"\nexamples = [\"a\"]", "")),
            ["body.text: starts with a variable; Meta refuses that (2388299)"]
        );
        assert_eq!(
            errors(&minimal("text = \"Hello {{1}}\"\nexamples = [\"a\"]", "")),
            ["body.text: ends with a variable; Meta refuses that (2388299)"]
        );
        assert_eq!(
            errors(&minimal(
                "text = \"Hi {{1}} {{2}} ok.\"\nexamples = [\"a\", \"b\"]",
                ""
            )),
            ["body.text: {{1}} and {{2}} are side by side; put text between them"]
        );
        assert_eq!(
            errors(&minimal("text = \"Hi {{1}} and {{name}}.\"\nexamples = [\"a\", \"b\"]", "")),
            ["body.text: mixes numbered ({{1}}) and named ({{first_name}}) variables; use one kind"]
        );
        assert_eq!(
            errors(&minimal(
                "text = \"Hi {{first_name}} and {{plan}}.\"\nexamples = { first_name = \"a\", zone = \"z\" }",
                ""
            )),
            [
                "body.examples.plan: missing; the variable {{plan}} needs an example",
                "body.examples.zone: the body has no such variable"
            ]
        );
        assert_eq!(
            errors(&minimal(
                "text = \"Hi {{First}} ok.\"\nexamples = { First = \"a\" }",
                ""
            )),
            ["body.text: {{First}} is neither a number nor a lower-case name"]
        );
    }

    #[test]
    fn button_rules() {
        let qr = "[[buttons]]\ntype = \"QUICK_REPLY\"\ntext = \"Ok\"\n";
        let url = "[[buttons]]\ntype = \"URL\"\ntext = \"Go\"\nurl = \"https://x.example\"\n";
        let phone = "[[buttons]]\ntype = \"PHONE_NUMBER\"\ntext = \"Call\"\nphone_number = \"+15550001111\"\n";
        let body = "text = \"Hello there.\"";
        let file = |buttons: &str| minimal(body, "").replace("[body]", &format!("{buttons}[body]"));
        // Buttons must come after the body table in TOML only if written as arrays of tables;
        // here they precede [body], which TOML allows.
        assert_eq!(
            errors(&file(&qr.repeat(11))),
            ["buttons: 11 buttons; Meta allows at most 10"]
        );
        assert_eq!(
            errors(&file(&url.repeat(3))),
            ["buttons: 3 URL buttons; Meta allows at most 2"]
        );
        assert_eq!(
            errors(&file(&phone.repeat(2))),
            ["buttons: 2 PHONE_NUMBER buttons; Meta allows at most 1"]
        );
        assert_eq!(
            errors(&file(&format!("{qr}{url}{qr}"))),
            ["buttons: quick replies and call-to-action buttons are interleaved; put all quick replies together and all the others together"]
        );
        // Grouped either way round is fine.
        assert!(parse(&file(&format!("{url}{phone}{qr}{qr}")), "t.toml").is_ok());
        assert_eq!(
            errors(&file(
                "[[buttons]]\ntype = \"QUICK_REPLY\"\ntext = \"A label that is far too long\"\n"
            )),
            ["buttons[0].text: 28 characters; Meta allows at most 25"]
        );
        assert_eq!(
            errors(&file(
                "[[buttons]]\ntype = \"URL\"\ntext = \"Go\"\nurl = \"https://x.example/{{1}}/a\"\nexample = \"p\"\n"
            )),
            ["buttons[0].url: a URL may hold one variable, {{1}}, and only at its end"]
        );
        assert_eq!(
            errors(&file(
                "[[buttons]]\ntype = \"URL\"\ntext = \"Go\"\nurl = \"https://x.example/{{1}}\"\n"
            )),
            ["buttons[0].example: the URL variable {{1}} needs an example"]
        );
        assert_eq!(
            errors(&file("[[buttons]]\ntype = \"PHONE_NUMBER\"\ntext = \"Call\"\n")),
            ["buttons[0].phone_number: a PHONE_NUMBER button needs a number in international form (+15550001111)"]
        );
        assert_eq!(
            errors(&file("[[buttons]]\ntype = \"FLOW\"\ntext = \"Go\"\n")),
            ["buttons[0].type: `FLOW` is not a button type (QUICK_REPLY, URL, PHONE_NUMBER, COPY_CODE)"]
        );
    }

    #[test]
    fn syntax_and_unknown_keys_name_the_line() {
        let e = parse("name = \"x\"\nlanguage = \"en\"\ncategory = \"UTILITY\"\ncolour = 1\n[body]\ntext = \"Hi.\"\n", "t.toml")
            .unwrap_err();
        assert_eq!(e.0.len(), 1);
        assert_eq!(e.0[0].line, Some(4), "{e}");
        assert!(e.0[0].message.contains("unknown field `colour`"), "{e}");
        assert!(e.to_string().starts_with("t.toml:4: "), "{e}");
        let e = parse(
            "name = \"x\"\nlanguage = \"en\"\ncategory = \"UTILITY\"\n[body]\ntext = 5\n",
            "t.toml",
        )
        .unwrap_err();
        assert_eq!(e.0[0].key, "body.text", "{e}");
        assert_eq!(e.0[0].line, Some(5), "{e}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = "name = \"Bad Name\"\nlanguage = \"en\"\ncategory = \"X\"\nfooter = \"{{1}}\"\n[body]\ntext = \"{{1}}\"\n";
        let keys: Vec<String> = parse(text, "t.toml")
            .unwrap_err()
            .0
            .into_iter()
            .map(|e| e.key)
            .collect();
        assert_eq!(
            keys,
            [
                "name",
                "category",
                "body.text",
                "body.text",
                "body.examples",
                "footer"
            ]
        );
    }
}
