//! Conformance test: every Meta-shaped webhook in the third-party corpus
//! (`../shared/reference/webhook-corpus`, relative to the crate) must parse, and a few known
//! files must yield the events we rely on. The project's own fixtures
//! (`webhook_fixtures.rs`) prove the parsers on any clone; this corpus adds third-party
//! variety. On a developer's checkout without the shared folder it is skipped with a notice;
//! under `CI=true`, where the shared folder is laid beside the clone, a missing corpus fails.

use std::path::{Path, PathBuf};

use tiercast::webhook::{parse_meta_webhook, InboundKind, MessageStatus, MetaEvent};

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/reference/webhook-corpus")
}

/// Files that are deliberately not valid JSON (documented in the corpus INDEX.md).
const KNOWN_INVALID: &[&str] = &[
    "bindambc-java/textMessageStatusRead.json",
    "meta-docs-mirror/manage_webhooks__account_update_disabled_INVALID_JSON.json.txt",
];

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Whether the corpus is there; absent is a failure under CI and a notice elsewhere.
fn corpus_present(dir: &Path) -> bool {
    if dir.is_dir() {
        return true;
    }
    assert!(
        std::env::var("CI").map_or(true, |v| v.is_empty() || v == "false"),
        "webhook corpus not found at {} while CI is set: the check would pass with nothing parsed",
        dir.display()
    );
    eprintln!(
        "NOTICE: webhook corpus not found at {}; skipping",
        dir.display()
    );
    false
}

fn rel(dir: &Path, p: &Path) -> String {
    p.strip_prefix(dir)
        .unwrap_or(p)
        .to_string_lossy()
        .replace('\\', "/")
}

fn load(name: &str) -> Option<Vec<MetaEvent>> {
    let dir = corpus_dir();
    let body = std::fs::read(dir.join(name)).ok()?;
    match parse_meta_webhook(&body) {
        Ok(ev) => Some(ev),
        Err(e) => panic!("{name}: {e}"),
    }
}

#[test]
fn corpus_webhooks_parse() {
    let dir = corpus_dir();
    if !corpus_present(&dir) {
        return;
    }
    let mut files = Vec::new();
    walk(&dir, &mut files);
    files.sort();

    let (mut parsed, mut events) = (0usize, 0usize);
    let mut skipped: Vec<(String, &'static str)> = Vec::new();
    let mut failures = Vec::new();
    let mut invalid_rejected = 0;
    for p in &files {
        let name = rel(&dir, p);
        let Ok(body) = std::fs::read(p) else {
            continue;
        };
        if KNOWN_INVALID.contains(&name.as_str()) {
            // Must be refused (and not panic): answering 200 to garbage would hide bugs.
            assert!(
                parse_meta_webhook(&body).is_err(),
                "{name} is invalid JSON yet parsed"
            );
            invalid_rejected += 1;
            continue;
        }
        if !name.ends_with(".json") {
            continue;
        }
        // Classify with an independent generic parse: only objects with `entry` are webhooks.
        let reason = match serde_json::from_slice::<serde_json::Value>(&body) {
            Err(_) => Some("invalid json"),
            Ok(v) => match v.get("entry") {
                Some(_) => None,
                None if v.get("error").is_some() || v.get("code").is_some() => {
                    Some("error response")
                }
                // A bare `value` (360dialog style, or one message object): real events, but
                // without Meta's envelope, so not what `POST /webhooks/meta` receives.
                None if v.get("statuses").is_some()
                    || v.get("from").is_some()
                    || v.pointer("/messages/0/type")
                        .or_else(|| v.pointer("/messages/0/from"))
                        .is_some() =>
                {
                    Some("bare value / message object")
                }
                None if v.get("messages").is_some() || v.get("success").is_some() => {
                    Some("send response")
                }
                None if v.get("payload").is_some() || v.get("app").is_some() => Some("gupshup v2"),
                None => Some("not an envelope"),
            },
        };
        if let Some(r) = reason {
            // Not an envelope: the parser must refuse it cleanly rather than invent events.
            if let Ok(ev) = parse_meta_webhook(&body) {
                failures.push(format!(
                    "{name}: non-webhook accepted as {} events",
                    ev.len()
                ));
            }
            skipped.push((name, r));
            continue;
        }
        match parse_meta_webhook(&body) {
            Ok(ev) => {
                parsed += 1;
                events += ev.len();
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    println!(
        "corpus: {} files, {parsed} webhooks parsed ({events} events), {} skipped as non-webhooks, {invalid_rejected} invalid-JSON files rejected",
        files.len(),
        skipped.len()
    );
    let mut by_reason = std::collections::BTreeMap::<&str, Vec<&str>>::new();
    for (n, r) in &skipped {
        by_reason.entry(r).or_default().push(n);
    }
    for (r, names) in &by_reason {
        println!("  skipped ({r}): {}", names.len());
        for n in names {
            println!("    {n}");
        }
    }
    assert!(
        failures.is_empty(),
        "failed to parse:\n{}",
        failures.join("\n")
    );
    assert!(
        parsed >= 200,
        "only {parsed} webhooks found: corpus layout changed?"
    );
}

#[test]
fn corpus_known_files() {
    if !corpus_present(&corpus_dir()) {
        return;
    }

    // A failed status with the per-user marketing cap.
    let ev = load("meta-docs-mirror/status_failed_131049_ecosystem_relative_href.json")
        .unwrap_or_default();
    let [MetaEvent::Status(s)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(s.status, MessageStatus::Failed);
    assert_eq!(s.phone_number_id, "106540352242922");
    assert_eq!(s.recipient_id.as_deref(), Some("16505551234"));
    assert_eq!(s.timestamp, 1751142888);
    assert_eq!(s.errors.len(), 1);
    assert_eq!(s.errors[0].code, 131049);
    assert!(s.errors[0].details.is_some());

    // A template quick-reply tap answering our template (context.id = our wamid).
    let ev = load("pywa/callback_button__quick_reply.json").unwrap_or_default();
    let [MetaEvent::Inbound(m)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(m.context_id.as_deref(), Some("wamid.xyzxyz=="));
    assert_eq!(m.from.as_deref(), Some("972987654321"));
    assert_eq!(m.profile_name.as_deref(), Some("Test Name"));
    assert_eq!(m.from_user_id.as_deref(), Some("US.13491208655302741918"));
    assert_eq!(
        m.kind,
        InboundKind::Button {
            payload: "callback_data".into(),
            text: "title".into()
        }
    );

    // Template status update with a numeric template id.
    let ev = load("pywa/template_status_update__rejected.json").unwrap_or_default();
    assert_eq!(
        ev,
        vec![MetaEvent::TemplateStatus {
            waba_id: "102290129340398".into(),
            template_id: Some("1689556908129835".into()),
            name: "abandoned_cart".into(),
            language: "en".into(),
            event: "REJECTED".into(),
            reason: Some("INVALID_FORMAT".into()),
        }]
    );

    // 18 changes of different fields in one entry: nothing fails, messages/statuses extracted.
    let ev =
        load("kapso-js/webhook__eighteen_changes_all_fields_one_entry.json").unwrap_or_default();
    assert!(ev.len() >= 18, "{ev:?}");
    assert!(ev
        .iter()
        .any(|e| matches!(e, MetaEvent::Status(s) if s.wamid == "wamid.msg" && s.status == MessageStatus::Delivered)));
    assert!(ev.iter().any(|e| matches!(e,
        MetaEvent::UserPreference { wa_id, value, .. } if wa_id == "555" && value == "stop")));

    // Username-only sender: no `from`.
    let ev = load("netflie-php/can_build_a_notification_with_bsuid_only_and_no_from.json")
        .unwrap_or_default();
    let [MetaEvent::Inbound(m)] = ev.as_slice() else {
        panic!("{ev:?}")
    };
    assert_eq!(m.from, None);
    assert!(m.from_user_id.is_some());
}

/// Every Gupshup payload of the corpus (v2 and v3) parses with the Gupshup parser, and the known
/// ones yield the correlation ids the inbox relies on.
#[test]
fn corpus_gupshup_payloads() {
    use tiercast::webhook::parse_gupshup_webhook;
    let dir = corpus_dir().join("gupshup");
    if !corpus_present(&dir) {
        return;
    }
    let mut files = Vec::new();
    walk(&dir, &mut files);
    files.sort();
    let mut events = 0;
    for p in &files {
        let body = std::fs::read(p).unwrap();
        let hook = parse_gupshup_webhook(&body).unwrap_or_else(|e| panic!("{}: {e}", rel(&dir, p)));
        assert!(!hook.events.is_empty(), "{}: no events", rel(&dir, p));
        events += hook.events.len();
    }
    assert!(files.len() >= 15, "only {} gupshup files", files.len());
    println!("gupshup corpus: {} files, {events} events", files.len());

    let load = |name: &str| {
        parse_gupshup_webhook(&std::fs::read(dir.join(name)).unwrap())
            .unwrap()
            .events
    };
    let status = |name: &str| match load(name).as_slice() {
        [MetaEvent::Status(s)] => s.clone(),
        other => panic!("{name}: {other:?}"),
    };
    // Sync failure without gsId: keyed on `id`, Gupshup's own (unknown) code kept.
    let s = status("glific_test__failed_9999_low_balance.json");
    assert_eq!(s.wamid, "0d02808d-709c-4724-89bf-e092298696c6");
    assert_eq!(
        (s.status.clone(), s.errors[0].code),
        (MessageStatus::Failed, 9999)
    );
    // Async failure: keyed on gsId, the other id kept as alias.
    let s = status("glific_test__failed_131026_undeliverable.json");
    assert_eq!(s.wamid, "a075f0c0-dd7d-48ef-923c-805af416a59b");
    assert_eq!(s.alt_id.as_deref(), Some("034eQpfQs6K6e5qejugoEJ"));
    assert_eq!(s.errors[0].code, 131026);
    let s = status("phpunit_MessageEventTest__enqueued.json");
    assert_eq!(s.wamid, "59f8db90-c37e-4408-90ab-cc54ef8246ad");
    assert_eq!(s.alt_id.as_deref(), Some("gBEGkYaYVSEEAgkD7bRi9syGnBk"));
    let s = status("phpunit_MessageEventTest__read.json");
    assert_eq!(
        (s.wamid.as_str(), s.status.clone(), s.timestamp),
        (
            "ee4a68a0-1203-4c85-8dc3-49d0b3226a35",
            MessageStatus::Read,
            1585344602
        )
    );
    // v3: the same message as the v2 `sent` of the same page, keyed the same way.
    let v2 = status("docs_bsuid__v2_message_event_sent_pmp_userId.json");
    let v3 = status("docs_bsuid__v3_meta_format_status_sent_gs_extras.json");
    assert_eq!(v2.wamid, "793df8da-2283-4774-a861-c2ffbae83823");
    assert_eq!(v3.wamid, v2.wamid);
    assert_eq!(
        v3.alt_id.as_deref(),
        Some("wamid.HBgMOTE3NTA2MDgwNDgwFQIAERgSRUJFMTZDNjI5NjEyNUFBMDM0AA==")
    );
    match load("docs_bsuid__v2_inbound_message_text.json").as_slice() {
        [MetaEvent::Inbound(m)] => {
            assert_eq!(m.from.as_deref(), Some("917506080480"));
            assert_eq!(m.from_user_id.as_deref(), Some("IN.1648738043044942"));
            assert_eq!(
                m.kind,
                InboundKind::Text {
                    body: "Hello partner portal".into()
                }
            );
        }
        other => panic!("{other:?}"),
    }
}
