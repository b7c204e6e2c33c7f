//! The project's own webhook fixtures (`tests/fixtures/webhooks/`), written from the shapes
//! Meta and Gupshup document (SPEC §5.3 and the reference notes), so a plain clone proves the
//! parsers without the third-party corpus. Each fixture has its expected events spelled out
//! here, field by field: a parser that drops or misreads a field fails.

use std::path::{Path, PathBuf};

use tiercast::webhook::{
    parse_gupshup_webhook, parse_meta_webhook, InboundKind, MessageStatus, MetaEvent,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/webhooks")
}

fn meta(name: &str) -> Vec<MetaEvent> {
    let body = std::fs::read(fixtures().join("meta").join(name))
        .unwrap_or_else(|e| panic!("fixture meta/{name}: {e}"));
    parse_meta_webhook(&body).unwrap_or_else(|e| panic!("meta/{name}: {e}"))
}

fn gupshup(name: &str) -> Vec<MetaEvent> {
    let body = std::fs::read(fixtures().join("gupshup").join(name))
        .unwrap_or_else(|e| panic!("fixture gupshup/{name}: {e}"));
    let hook = parse_gupshup_webhook(&body).unwrap_or_else(|e| panic!("gupshup/{name}: {e}"));
    assert_eq!(hook.app.as_deref(), Some("AcmeApp"), "gupshup/{name}");
    hook.events
}

fn only(name: &str, events: Vec<MetaEvent>) -> MetaEvent {
    match <[MetaEvent; 1]>::try_from(events) {
        Ok([e]) => e,
        Err(events) => panic!("{name}: expected one event, got {events:?}"),
    }
}

const LINE: &str = "200000000000001";
const USER: &str = "5511987654321";

fn inbound(name: &str) -> tiercast::webhook::InboundMessage {
    match only(name, meta(name)) {
        MetaEvent::Inbound(m) => {
            assert_eq!(m.phone_number_id, LINE, "{name}");
            assert_eq!(m.from.as_deref(), Some(USER), "{name}");
            assert_eq!(m.profile_name.as_deref(), Some("Ana Souza"), "{name}");
            m
        }
        other => panic!("{name}: {other:?}"),
    }
}

#[test]
fn every_fixture_file_is_checked_below() {
    // A fixture added without expectations would prove nothing: list them all here.
    let mut found = Vec::new();
    for dir in ["meta", "gupshup"] {
        for e in std::fs::read_dir(fixtures().join(dir)).unwrap() {
            found.push(format!(
                "{dir}/{}",
                e.unwrap().file_name().to_string_lossy()
            ));
        }
    }
    found.sort();
    let checked = [
        "gupshup/account_event_tier_upgrade.json",
        "gupshup/event_delivered.json",
        "gupshup/event_enqueued.json",
        "gupshup/event_failed_sync_1002.json",
        "gupshup/message_quick_reply.json",
        "gupshup/message_text_quoting.json",
        "gupshup/preference_event_stop.json",
        "gupshup/template_event_paused.json",
        "gupshup/user_event_opted_out.json",
        "meta/account_update_disabled.json",
        "meta/business_capability_10k.json",
        "meta/inbound_button_reply.json",
        "meta/inbound_image.json",
        "meta/inbound_list_reply.json",
        "meta/inbound_location.json",
        "meta/inbound_quick_reply.json",
        "meta/inbound_reaction.json",
        "meta/inbound_text.json",
        "meta/phone_number_quality_upgrade.json",
        "meta/status_delivered_and_read.json",
        "meta/status_failed_131049.json",
        "meta/status_sent.json",
        "meta/template_category_announced.json",
        "meta/template_quality_yellow.json",
        "meta/template_status_paused.json",
        "meta/user_preferences_stop.json",
    ];
    assert_eq!(found, checked);
}

#[test]
fn meta_inbound_messages() {
    let m = inbound("inbound_text.json");
    assert_eq!(m.wamid, "wamid.IN_TEXT");
    assert_eq!(m.timestamp, 1764000100);
    assert_eq!(m.context_id, None);
    assert_eq!(
        m.kind,
        InboundKind::Text {
            body: "Quero saber mais".into()
        }
    );

    let m = inbound("inbound_quick_reply.json");
    assert_eq!(m.context_id.as_deref(), Some("wamid.OUT_TEMPLATE"));
    assert_eq!(
        m.kind,
        InboundKind::Button {
            payload: "YES".into(),
            text: "Sim, quero".into()
        }
    );

    let m = inbound("inbound_button_reply.json");
    assert_eq!(m.context_id.as_deref(), Some("wamid.OUT_INTERACTIVE"));
    assert_eq!(
        m.kind,
        InboundKind::ButtonReply {
            id: "cancel-button".into(),
            title: "Cancel".into()
        }
    );

    let m = inbound("inbound_list_reply.json");
    assert_eq!(
        m.kind,
        InboundKind::ListReply {
            id: "priority_express".into(),
            title: "Priority Mail Express".into(),
            description: Some("Next Day to 2 Days".into())
        }
    );

    let m = inbound("inbound_image.json");
    assert_eq!(
        m.kind,
        InboundKind::Media {
            media_type: "image".into(),
            id: Some("900000000000001".into()),
            mime_type: Some("image/jpeg".into()),
            caption: Some("meu boleto".into())
        }
    );

    let m = inbound("inbound_location.json");
    assert_eq!(
        m.kind,
        InboundKind::Location {
            latitude: -23.5505,
            longitude: -46.6333,
            name: Some("Loja Centro".into()),
            address: Some("Praca da Se, Sao Paulo".into())
        }
    );

    let m = inbound("inbound_reaction.json");
    assert_eq!(
        m.kind,
        InboundKind::Reaction {
            message_id: Some("wamid.OUT_TEMPLATE".into()),
            emoji: Some("\u{1f44d}".into())
        }
    );
}

#[test]
fn meta_statuses() {
    let MetaEvent::Status(s) = only("status_sent.json", meta("status_sent.json")) else {
        panic!("status_sent.json is not a status")
    };
    assert_eq!(
        (
            s.phone_number_id.as_str(),
            s.wamid.as_str(),
            s.status.clone()
        ),
        (LINE, "wamid.OUT_TEMPLATE", MessageStatus::Sent)
    );
    assert_eq!(s.timestamp, 1764000050);
    assert_eq!(s.recipient_id.as_deref(), Some(USER));
    assert_eq!(s.callback_data.as_deref(), Some("tc:42"));
    assert_eq!(s.pricing_category.as_deref(), Some("marketing"));
    assert!(s.errors.is_empty());

    let both = meta("status_delivered_and_read.json");
    let statuses: Vec<_> = both
        .iter()
        .map(|e| match e {
            MetaEvent::Status(s) => (s.status.clone(), s.timestamp),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        statuses,
        [
            (MessageStatus::Delivered, 1764000060),
            (MessageStatus::Read, 1764000070)
        ],
        "statuses come out in body order"
    );

    let MetaEvent::Status(s) = only(
        "status_failed_131049.json",
        meta("status_failed_131049.json"),
    ) else {
        panic!("not a status")
    };
    assert_eq!(s.status, MessageStatus::Failed);
    assert_eq!(s.callback_data.as_deref(), Some("tc:43"));
    assert_eq!(s.errors.len(), 1);
    assert_eq!(s.errors[0].code, 131049);
    assert!(s.errors[0]
        .title
        .starts_with("This message was not delivered"));
    assert!(s.errors[0]
        .details
        .as_deref()
        .is_some_and(|d| d.contains("healthy ecosystem")));
}

#[test]
fn meta_management_events() {
    assert_eq!(
        only(
            "template_status_paused.json",
            meta("template_status_paused.json")
        ),
        MetaEvent::TemplateStatus {
            waba_id: "100000000000001".into(),
            template_id: Some("1689556908129832".into()),
            name: "renewal_reminder".into(),
            language: "pt_BR".into(),
            event: "PAUSED".into(),
            reason: Some("NONE".into()),
        }
    );
    assert_eq!(
        only(
            "template_quality_yellow.json",
            meta("template_quality_yellow.json")
        ),
        MetaEvent::TemplateQuality {
            waba_id: "100000000000001".into(),
            template_id: Some("806312974732579".into()),
            name: "renewal_reminder".into(),
            language: "pt_BR".into(),
            previous: Some("GREEN".into()),
            new: "YELLOW".into(),
        }
    );
    assert_eq!(
        only(
            "template_category_announced.json",
            meta("template_category_announced.json")
        ),
        MetaEvent::TemplateCategory {
            waba_id: "100000000000001".into(),
            template_id: Some("806312974732579".into()),
            name: "renewal_reminder".into(),
            language: "pt_BR".into(),
            new: "UTILITY".into(),
            previous: None,
            correct: Some("MARKETING".into()),
            effective_at: Some(1764086400),
        }
    );
    assert_eq!(
        only(
            "phone_number_quality_upgrade.json",
            meta("phone_number_quality_upgrade.json")
        ),
        MetaEvent::PhoneNumberQuality {
            waba_id: "100000000000001".into(),
            display_phone_number: "15550001111".into(),
            event: "UPGRADE".into(),
            current_limit: Some("TIER_10K".into()),
            old_limit: Some("TIER_2K".into()),
        }
    );
    match only(
        "business_capability_10k.json",
        meta("business_capability_10k.json"),
    ) {
        MetaEvent::BusinessCapability {
            waba_id,
            max_daily_conversations_per_business,
            ..
        } => {
            assert_eq!(waba_id, "100000000000001");
            assert_eq!(
                max_daily_conversations_per_business.as_deref(),
                Some("TIER_10K")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        only(
            "user_preferences_stop.json",
            meta("user_preferences_stop.json")
        ),
        MetaEvent::UserPreference {
            phone_number_id: Some(LINE.into()),
            wa_id: USER.into(),
            category: "marketing_messages".into(),
            value: "stop".into(),
            timestamp: 1764000900,
        }
    );
    assert_eq!(
        only(
            "account_update_disabled.json",
            meta("account_update_disabled.json")
        ),
        MetaEvent::AccountUpdate {
            waba_id: "100000000000001".into(),
            event: "DISABLED_UPDATE".into(),
        }
    );
}

#[test]
fn gupshup_v2_callbacks() {
    const GS_ID: &str = "5b0c6a8e-1f1e-4a8c-9d57-0a1b2c3d4e5f";
    const WA_ID: &str = "gBEGkZUTIXZ0AgWAMID";

    let status = |name: &str| match only(name, gupshup(name)) {
        MetaEvent::Status(s) => s,
        other => panic!("{name}: {other:?}"),
    };
    // `enqueued` names our message by Gupshup's id and teaches its WhatsApp id.
    let s = status("event_enqueued.json");
    assert_eq!(s.wamid, GS_ID);
    assert_eq!(s.alt_id.as_deref(), Some(WA_ID));
    // Delivery receipts are keyed on `gsId`, the WhatsApp id kept beside it; `ts` is seconds.
    let s = status("event_delivered.json");
    assert_eq!(
        (s.wamid.as_str(), s.status.clone(), s.timestamp),
        (GS_ID, MessageStatus::Delivered, 1764000059)
    );
    assert_eq!(s.alt_id.as_deref(), Some(WA_ID));
    // A synchronous failure has no gsId: keyed on `id`, Gupshup's code kept for the table.
    let s = status("event_failed_sync_1002.json");
    assert_eq!(s.wamid, "7c1d2e3f-0000-4000-8000-000000000002");
    assert_eq!(s.status, MessageStatus::Failed);
    assert_eq!(s.errors[0].code, 1002);

    let message = |name: &str| match only(name, gupshup(name)) {
        MetaEvent::Inbound(m) => m,
        other => panic!("{name}: {other:?}"),
    };
    // A reply names our message by `context.gsId` first.
    let m = message("message_text_quoting.json");
    assert_eq!(m.from.as_deref(), Some(USER));
    assert_eq!(m.context_id.as_deref(), Some(GS_ID));
    assert_eq!(
        m.kind,
        InboundKind::Text {
            body: "Quero saber mais".into()
        }
    );
    // A template quick-reply tap: the payload is `postbackText`, the label `text`.
    let m = message("message_quick_reply.json");
    assert_eq!(
        m.kind,
        InboundKind::Button {
            payload: "YES".into(),
            text: "Sim, quero".into()
        }
    );

    for name in ["user_event_opted_out.json", "preference_event_stop.json"] {
        match only(name, gupshup(name)) {
            MetaEvent::UserPreference { wa_id, value, .. } => {
                assert_eq!((wa_id.as_str(), value.as_str()), (USER, "stop"), "{name}")
            }
            other => panic!("{name}: {other:?}"),
        }
    }
    match only(
        "account_event_tier_upgrade.json",
        gupshup("account_event_tier_upgrade.json"),
    ) {
        MetaEvent::PhoneNumberQuality {
            event,
            current_limit,
            old_limit,
            ..
        } => {
            assert_eq!(event, "UPGRADE");
            assert_eq!(current_limit.as_deref(), Some("TIER_10K"));
            assert_eq!(old_limit.as_deref(), Some("TIER_1K"));
        }
        other => panic!("{other:?}"),
    }
    match only(
        "template_event_paused.json",
        gupshup("template_event_paused.json"),
    ) {
        MetaEvent::TemplateStatus {
            name,
            language,
            event,
            ..
        } => assert_eq!(
            (name.as_str(), language.as_str(), event.as_str()),
            ("renewal_reminder", "pt_BR", "PAUSED")
        ),
        other => panic!("{other:?}"),
    }
}
