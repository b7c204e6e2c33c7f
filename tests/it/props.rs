//! Property tests (proptest) for the three parsers of outside input: the webhook parser, the
//! CSV importer and template rendering. None may panic; each either accepts its input or
//! refuses it with an error, and what it accepts keeps its invariants. Case counts are small so
//! the whole file runs in seconds.

use proptest::collection::{btree_map, vec};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use tiercast::clock::SystemClock;
use tiercast::domain::template::{CompiledMapping, ContactFields, RenderError, TemplateDef};
use tiercast::import::{self, BytesSource, ImportError, ImportOptions};
use tiercast::store::Store;
use tiercast::webhook::parse_meta_webhook;

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(PropConfig {
        cases,
        failure_persistence: None,
        ..PropConfig::default()
    })
}

// ---- webhooks ---------------------------------------------------------------------------------

/// Any JSON value, a few levels deep.
fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        // Words the parser looks for, so random values reach its deeper paths.
        prop::sample::select(vec![
            "messages",
            "statuses",
            "sent",
            "delivered",
            "read",
            "failed",
            "text",
            "button",
            "interactive",
            "tc:1",
            "message_template_status_update",
            "user_preferences",
            "whatsapp_business_account",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(
                prop::sample::select(vec![
                    "object",
                    "entry",
                    "changes",
                    "field",
                    "value",
                    "id",
                    "status",
                    "statuses",
                    "messages",
                    "metadata",
                    "errors",
                    "code",
                    "timestamp",
                    "from",
                    "type",
                    "text",
                    "body",
                    "biz_opaque_callback_data",
                    "recipient_id",
                    "phone_number_id",
                    "event",
                    "name",
                    "language",
                    "wa_id",
                    "category",
                    "x",
                ])
                .prop_map(String::from),
                inner,
                0..6,
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Meta's envelope with random pieces where the parser digs.
fn meta_shaped() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(vec![
            "messages",
            "message_template_status_update",
            "user_preferences",
            "account_update",
            "history",
        ]),
        arb_json(),
        arb_json(),
        arb_json(),
        arb_json(),
    )
        .prop_map(|(field, statuses, messages, metadata, extra)| {
            json!({
                "object": "whatsapp_business_account",
                "entry": [{ "id": "w", "changes": [
                    { "field": field, "value": {
                        "messaging_product": "whatsapp",
                        "metadata": metadata,
                        "statuses": statuses,
                        "messages": messages,
                        "contacts": extra.clone(),
                        "event": extra,
                    }}
                ]}]
            })
        })
}

#[test]
fn the_webhook_parser_never_panics_on_arbitrary_bytes() {
    runner(512)
        .run(&vec(any::<u8>(), 0..1024), |bytes| {
            let _ = parse_meta_webhook(&bytes);
            Ok(())
        })
        .unwrap();
}

#[test]
fn the_webhook_parser_never_panics_on_arbitrary_json() {
    let strategy = prop_oneof![arb_json(), meta_shaped()];
    runner(512)
        .run(&strategy, |v| {
            let body = serde_json::to_vec(&v).unwrap();
            let parsed = parse_meta_webhook(&body);
            // Valid JSON is only refused for its shape, never as unreadable.
            if let Err(e) = &parsed {
                prop_assert!(
                    !matches!(e, tiercast::webhook::WebhookParseError::InvalidJson { .. }),
                    "{e}"
                );
            }
            // Any prefix of it is refused or parsed, never a panic.
            for cut in [body.len() / 2, body.len().saturating_sub(1)] {
                let _ = parse_meta_webhook(&body[..cut]);
            }
            Ok(())
        })
        .unwrap();
}

// ---- CSV import -------------------------------------------------------------------------------

/// A cell as people write them: numbers in many shapes, text with quotes, delimiters, line
/// breaks, accents, emoji; with `raw_bytes`, now and then bytes that are not UTF-8.
fn cell(raw_bytes: bool) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => "\\+?55 ?\\(?11\\)? ?9[0-9]{4}-?[0-9]{4}".prop_map(String::into_bytes),
        2 => "[0-9+() -]{0,18}".prop_map(String::into_bytes),
        2 => "[a-zA-Zéçã ,;\t\"'|]{0,16}".prop_map(String::into_bytes),
        1 => ".{0,24}".prop_map(String::into_bytes),
        1 => "\"[^\"]{0,10}\"".prop_map(String::into_bytes),
        1 => "\"[a-z]{0,6}".prop_map(String::into_bytes),
        u32::from(raw_bytes) => vec(any::<u8>(), 0..8),
        1 => Just(Vec::new()),
    ]
}

/// Raw CSV bytes: a header (usually with one phone column), rows of random cells joined by a
/// delimiter with no escaping at all, random line endings, maybe a BOM.
fn messy_csv() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<bool>(),
        prop::sample::select(vec![b',', b';', b'\t']),
        prop::sample::select(vec!["phone", "Telefone", "whatsapp", "msisdn", "nome"]),
        prop::sample::subsequence(
            vec!["name", "email", "plan", "opt_in", "country", "x"],
            0..5,
        ),
        prop::bool::weighted(0.2).prop_flat_map(|raw| vec(vec(cell(raw), 0..7), 0..12)),
        prop::sample::select(vec!["\n", "\r\n", "\r"]),
    )
        .prop_map(|(bom, delim, phone, others, rows, eol)| {
            let mut out = Vec::new();
            if bom {
                out.extend_from_slice(b"\xEF\xBB\xBF");
            }
            let mut header = vec![phone];
            header.extend(others);
            out.extend_from_slice(header.join(&(delim as char).to_string()).as_bytes());
            for row in rows {
                out.extend_from_slice(eol.as_bytes());
                for (i, c) in row.iter().enumerate() {
                    if i > 0 {
                        out.push(delim);
                    }
                    out.extend_from_slice(c);
                }
            }
            out
        })
}

/// Well-formed CSV (written by a CSV writer, so quotes and delimiters inside cells are
/// escaped): the importer must account for every row.
fn proper_csv() -> impl Strategy<Value = (Vec<u8>, usize)> {
    let text = || {
        prop_oneof![
            "\\+?55 ?11 ?9[0-9]{4}-?[0-9]{4}",
            "[0-9+() -]{0,16}",
            "[a-zA-Zé ,;\t\"'\n]{0,16}",
            ".{0,20}",
        ]
    };
    vec((text(), text(), text()), 0..15).prop_map(|rows| {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(["phone", "name", "plan"]).unwrap();
        for (p, n, x) in &rows {
            w.write_record([p, n, x]).unwrap();
        }
        (w.into_inner().unwrap(), rows.len())
    })
}

struct ImportRig {
    rt: tokio::runtime::Runtime,
    store: Store,
    _dir: tempfile::TempDir,
    lists: AtomicUsize,
}

impl ImportRig {
    fn new() -> ImportRig {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("p.db").display());
        let store = rt.block_on(Store::open(&url)).unwrap();
        ImportRig {
            rt,
            store,
            _dir: dir,
            lists: AtomicUsize::new(0),
        }
    }

    /// Imports into a list of its own; checks the summary adds up, or that a refused file left
    /// nothing behind. Returns the summary's row count when it was imported.
    fn import(&self, bytes: &[u8]) -> Result<Option<u64>, TestCaseError> {
        let list = format!("p{}", self.lists.fetch_add(1, Ordering::SeqCst));
        self.rt.block_on(async {
            let result = import::import(
                &self.store,
                &SystemClock,
                &BytesSource {
                    name: "prop.csv".into(),
                    bytes,
                },
                &ImportOptions {
                    list: list.clone(),
                    default_country: Some("BR".into()),
                    opt_in: false,
                    batch_size: 4,
                    progress: false,
                },
            )
            .await;
            let members = self.store.list_size(&list).await.unwrap();
            match result {
                Ok(s) => {
                    prop_assert_eq!(
                        s.rows,
                        s.imported + s.updated + s.duplicate + s.invalid,
                        "every row imported or rejected: {:?}",
                        s
                    );
                    prop_assert!(members as u64 <= s.rows);
                    Ok(Some(s.rows))
                }
                Err(e @ ImportError::Store { .. }) => Err(TestCaseError::fail(format!(
                    "a store error from CSV input: {e}"
                ))),
                Err(e) => {
                    prop_assert_eq!(members, 0, "a refused file imported rows: {}", e);
                    Ok(None)
                }
            }
        })
    }
}

#[test]
fn the_importer_imports_or_rejects_every_row_of_messy_csv() {
    let rig = ImportRig::new();
    runner(64)
        .run(&messy_csv(), |bytes| rig.import(&bytes).map(|_| ()))
        .unwrap();
}

#[test]
fn the_importer_accounts_for_every_row_of_well_formed_csv() {
    let rig = ImportRig::new();
    runner(48)
        .run(&proper_csv(), |(bytes, n)| {
            let rows = rig.import(&bytes)?;
            prop_assert_eq!(rows, Some(n as u64));
            Ok(())
        })
        .unwrap();
}

// ---- template rendering -----------------------------------------------------------------------

/// A template with every kind of text slot: a header parameter (60 characters), body
/// parameters (1024), a URL suffix and a coupon code (15).
fn template() -> TemplateDef {
    serde_json::from_value(json!({
        "name": "everything", "language": "pt_BR", "status": "APPROVED", "category": "MARKETING",
        "components": [
            { "type": "HEADER", "format": "TEXT", "text": "Pedido {{1}}" },
            { "type": "BODY", "text": "Oi {{1}}, plano {{2}}, e-mail {{3}}, fone {{4}}." },
            { "type": "BUTTONS", "buttons": [
                { "type": "URL", "text": "Ver", "url": "https://x.example/o/{{1}}" },
                { "type": "COPY_CODE", "example": "SAVE10" } ] }
        ]
    }))
    .unwrap()
}

fn mapping() -> BTreeMap<String, String> {
    [
        ("header", "field:order|name"),
        ("1", "name|field:nickname"),
        ("2", "field:plan|literal:basic"),
        ("3", "email|literal:none"),
        ("4", "phone"),
        ("button.0", "field:order|literal:0"),
        ("button.1", "field:code|literal:SAVE10"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Contact values of every length around the limits, with whitespace runs, line breaks,
/// tabs, accents and emoji.
fn value() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zé😀 ]{1,20}",
        2 => "[a-z \t\r\n]{0,80}",
        2 => ".{0,70}",
        2 => "[a-z]{55,65}",
        1 => "[a-zé😀]{1015,1030}",
        2 => "[a-z ]{10,20}[ ]{5,9}[a-z]{1,3}",
        1 => Just(String::new()),
        1 => Just("   ".to_string()),
    ]
}

fn contact() -> impl Strategy<Value = ContactFields> {
    let field = || prop::option::weighted(0.7, value());
    (
        "\\+55119[0-9]{8}",
        prop::option::weighted(0.9, value()),
        prop::option::weighted(0.7, value()),
        (field(), field(), field(), field()),
    )
        .prop_map(|(phone, name, email, (order, nickname, plan, code))| {
            let fields = [
                ("order", order),
                ("nickname", nickname),
                ("plan", plan),
                ("code", code),
            ]
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)))
            .collect();
            ContactFields {
                phone,
                name,
                email,
                fields,
            }
        })
}

fn params_of<'v>(components: &'v Value, kind: &str) -> Vec<&'v Value> {
    components
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["type"] == kind)
        .flat_map(|c| c["parameters"].as_array().unwrap())
        .collect()
}

#[test]
fn rendering_never_panics_and_respects_metas_limits() {
    let def = template();
    let compiled = CompiledMapping::new(&def, &mapping()).unwrap();
    runner(512)
        .run(&contact(), |c| {
            match compiled.render(&c) {
                Ok(components) => {
                    let components = components.to_json();
                    let text_ok = |t: &str, max: usize| {
                        t.chars().count() <= max
                            && !t.contains(['\n', '\r', '\t'])
                            && !t.contains("     ")
                            && !t.trim().is_empty()
                    };
                    for p in params_of(&components, "header") {
                        let t = p["text"].as_str().unwrap();
                        prop_assert!(text_ok(t, 60), "header {:?}", t);
                    }
                    let body = params_of(&components, "body");
                    prop_assert_eq!(body.len(), 4);
                    for p in body {
                        let t = p["text"].as_str().unwrap();
                        prop_assert!(text_ok(t, 1024), "body {:?}", t);
                    }
                    for p in params_of(&components, "button") {
                        if let Some(code) = p.get("coupon_code") {
                            let code = code.as_str().unwrap();
                            prop_assert!(code.chars().count() <= 15, "coupon {:?}", code);
                        }
                    }
                }
                // The mapping is valid, so only this contact's data can be at fault.
                Err(e) => prop_assert!(
                    e.is_contact_level(),
                    "a contact's values broke the campaign: {e}"
                ),
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn values_over_the_limits_are_refused_not_truncated() {
    let compiled = CompiledMapping::new(&template(), &mapping()).unwrap();
    let mut c = ContactFields {
        phone: "+5511999990000".into(),
        name: Some("Ana".into()),
        email: Some("a@x.example".into()),
        fields: BTreeMap::new(),
    };
    c.fields.insert("order".into(), "9".repeat(61));
    assert!(matches!(
        compiled.render(&c),
        Err(RenderError::TooLong { max: 60, .. })
    ));
    c.fields.insert("order".into(), "9".repeat(60));
    c.fields.insert("code".into(), "C".repeat(16));
    assert!(matches!(
        compiled.render(&c),
        Err(RenderError::TooLong { max: 15, .. })
    ));
    c.fields.insert("code".into(), "C".repeat(15));
    c.name = Some("é".repeat(1025));
    assert!(matches!(
        compiled.render(&c),
        Err(RenderError::TooLong { max: 1024, .. })
    ));
    c.name = Some("é".repeat(1024));
    assert!(compiled.render(&c).is_ok());
}
