//! Parser tests on the payload shapes of reference `gupshup.md` §2 (copied from it).

use super::*;

fn parse(body: &str) -> GupshupWebhook {
    parse_gupshup_webhook(body.as_bytes()).expect("parses")
}

fn one(body: &str) -> MetaEvent {
    let hook = parse(body);
    assert_eq!(hook.events.len(), 1, "{:?}", hook.events);
    hook.events.into_iter().next().expect("one event")
}

fn status_of(body: &str) -> StatusEvent {
    match one(body) {
        MetaEvent::Status(s) => s,
        other => panic!("not a status: {other:?}"),
    }
}

fn inbound_of(body: &str) -> InboundMessage {
    match one(body) {
        MetaEvent::Inbound(m) => m,
        other => panic!("not inbound: {other:?}"),
    }
}

#[test]
fn plain_text_message() {
    let body = r#"{"app":"DemoApp","timestamp":1580227766370,"version":2,"type":"message",
 "payload":{"id":"ABEGkYaYVSEEAhAL3SLAWwHKeKrt6s3FKB0c","source":"918x98xx21x4","type":"text",
  "payload":{"text":"Hi"},
  "sender":{"phone":"918x98xx21x4","name":"Andy","country_code":"91","dial_code":"8x98xx21x4"}}}"#;
    let hook = parse(body);
    assert_eq!(hook.version, 2);
    assert_eq!(hook.app.as_deref(), Some("DemoApp"));
    let m = inbound_of(body);
    assert_eq!(
        m,
        InboundMessage {
            phone_number_id: String::new(),
            from: Some("918x98xx21x4".into()),
            from_user_id: None,
            profile_name: Some("Andy".into()),
            wamid: "ABEGkYaYVSEEAhAL3SLAWwHKeKrt6s3FKB0c".into(),
            timestamp: 1580227766,
            context_id: None,
            kind: InboundKind::Text { body: "Hi".into() },
        }
    );
}

#[test]
fn reply_context_prefers_our_gupshup_id() {
    let m = inbound_of(
        r#"{"app":"DemoApp","timestamp":1590854464792,"version":2,"type":"message",
 "payload":{"id":"ABEGkYaYVSEEAgo-sMx1DoUoQJRW","source":"918x98xx21x4","type":"text",
  "payload":{"text":"hi"},
  "sender":{"phone":"918x98xx21x4","name":"Jacob","country_code":"91","dial_code":"8x98xx21x4"},
  "context":{"id":"gBEGkYaYVSEEAgnPFrOLcjkFjL8","gsId":"9b71295f-f7af-4c1f-b2b4-31b4a4867bad"}}}"#,
    );
    assert_eq!(
        m.context_id.as_deref(),
        Some("9b71295f-f7af-4c1f-b2b4-31b4a4867bad")
    );
}

#[test]
fn template_button_tap_in_both_documented_shapes() {
    let tap = |outer: &str| {
        format!(
            r#"{{"app":"DemoApp","phone":"917834811114","timestamp":1712230664720,"version":2,"type":"message",
 "payload":{{"id":"ABEGkZlgQyWAAgo-sA","source":"919876543210","type":"{outer}",
  "payload":{{"text":"View Account Balance","type":"button","postbackText":"BALANCE"}},
  "sender":{{"phone":"919876543210","name":"Ana","country_code":"91","dial_code":"9876543210"}},
  "context":{{"id":"gBEGkYaYVSEEAgnPFrOLcjkFjL8","forwarded":false,"frequently_forwarded":false}}}}}}"#
        )
    };
    for outer in ["quick_reply", "text"] {
        let m = inbound_of(&tap(outer));
        assert_eq!(
            m.kind,
            InboundKind::Button {
                payload: "BALANCE".into(),
                text: "View Account Balance".into()
            },
            "{outer}"
        );
        // No gsId: the WhatsApp id is the fallback.
        assert_eq!(m.context_id.as_deref(), Some("gBEGkYaYVSEEAgnPFrOLcjkFjL8"));
    }
    // Without postbackText the label is the payload.
    let m = inbound_of(
        r#"{"app":"A","timestamp":1,"version":2,"type":"message","payload":{"id":"w","source":"1",
        "type":"quick_reply","payload":{"text":"YES","type":"button"},"sender":{"phone":"1"}}}"#,
    );
    assert_eq!(
        m.kind,
        InboundKind::Button {
            payload: "YES".into(),
            text: "YES".into()
        }
    );
}

#[test]
fn interactive_button_and_list_replies() {
    let m = inbound_of(
        r#"{"app":"DemoApp","timestamp":1580228523976,"version":2,"type":"message",
 "payload":{"id":"ABEGkYaYVSEEAhCzqobr15BdMPcRup1fIXAJ","source":"918x98xx21x4","type":"button_reply",
  "payload":{"title":"First","id":"qr1","reply":"First 1"},
  "sender":{"phone":"918x98xx21x4","name":"John","country_code":"91","dial_code":"8x98xx21x4"},
  "context":{"id":"gBEGkYaYVSEEAgkvE0f1ZkfXX78","gsId":"123b0fb2-0620-493b-8f7e-5a1ceb6d8c58"}}}"#,
    );
    assert_eq!(
        m.kind,
        InboundKind::ButtonReply {
            id: "qr1".into(),
            title: "First".into()
        }
    );
    let m = inbound_of(
        r#"{"app":"DemoApp","timestamp":1580228523976,"version":2,"type":"message",
 "payload":{"id":"L1","source":"918x98xx21x4","type":"list_reply",
  "payload":{"title":"section 1 row 1","id":"list1","reply":"section 1 row 1 1","postbackText":"pb","description":"first row"},
  "sender":{"phone":"918x98xx21x4","name":"John"}}}"#,
    );
    assert_eq!(
        m.kind,
        InboundKind::ListReply {
            id: "list1".into(),
            title: "section 1 row 1".into(),
            description: Some("first row".into())
        }
    );
}

#[test]
fn media_and_location() {
    let m = inbound_of(
        r#"{"app":"A","timestamp":1000,"version":2,"type":"message","payload":{"id":"M1","source":"1",
        "type":"file","payload":{"url":"https://filemanager.gupshup.io/x.pdf","caption":"invoice","contentType":"application/pdf"},
        "sender":{"phone":"1"}}}"#,
    );
    assert_eq!(
        m.kind,
        InboundKind::Media {
            media_type: "document".into(),
            id: None,
            mime_type: Some("application/pdf".into()),
            caption: Some("invoice".into())
        }
    );
    let m = inbound_of(
        r#"{"app":"A","timestamp":1000,"version":2,"type":"message","payload":{"id":"L","source":"1",
        "type":"location","payload":{"longitude":"-46.63","latitude":-23.55},"sender":{"phone":"1"}}}"#,
    );
    assert_eq!(
        m.kind,
        InboundKind::Location {
            latitude: -23.55,
            longitude: -46.63,
            name: None,
            address: None
        }
    );
}

#[test]
fn enqueued_keys_on_id_and_carries_the_whatsapp_id() {
    let s = status_of(
        r#"{"app":"DemoAPI","timestamp":1580546677791,"version":2,"type":"message-event",
 "payload":{"id":"59f8db90-c37e-4408-90ab-cc54ef8246ad","type":"enqueued","destination":"91XX985XX10X",
  "payload":{"whatsappMessageId":"gBEGkYaYVSEEAgkD7bRi9syGnBk","type":"session"}}}"#,
    );
    assert_eq!(s.wamid, "59f8db90-c37e-4408-90ab-cc54ef8246ad");
    assert_eq!(s.alt_id.as_deref(), Some("gBEGkYaYVSEEAgkD7bRi9syGnBk"));
    assert_eq!(s.status, MessageStatus::Other("enqueued".into()));
    assert_eq!(s.timestamp, 1580546677);
    assert_eq!(s.recipient_id.as_deref(), Some("91XX985XX10X"));
}

#[test]
fn sync_and_async_failures() {
    let s = status_of(
        r#"{"app":"DemoAPI","timestamp":1580311136040,"version":2,"type":"message-event",
 "payload":{"id":"ee4a68a0-1203-4c85-8dc3-49d0b3226a35","type":"failed","destination":"918x98xx21x4",
  "payload":{"code":1008,"reason":"User is not Opted in and Inactive"}}}"#,
    );
    assert_eq!(s.wamid, "ee4a68a0-1203-4c85-8dc3-49d0b3226a35");
    assert_eq!(s.alt_id, None);
    assert_eq!(s.status, MessageStatus::Failed);
    assert_eq!(s.errors.len(), 1);
    assert_eq!(s.errors[0].code, 1008);
    assert_eq!(s.errors[0].title, "User is not Opted in and Inactive");

    let s = status_of(
        r#"{"app":"DemoAPI","timestamp":1663138637856,"version":2,"type":"message-event",
 "payload":{"id":"9163a016-710e-41ee-978b-79a1adbd734e","gsId":"72f61f22-5aa4-4615-a970-943edf6da01c",
  "type":"failed","destination":"918x98xx21x4",
  "payload":{"code":470,"reason":"Message failed to send because more than 24 hours have passed since the customer last replied to this number"}}}"#,
    );
    assert_eq!(s.wamid, "72f61f22-5aa4-4615-a970-943edf6da01c");
    assert_eq!(
        s.alt_id.as_deref(),
        Some("9163a016-710e-41ee-978b-79a1adbd734e")
    );
    assert_eq!(s.errors[0].code, 470);
}

#[test]
fn delivery_reports_key_on_gsid_with_whatsapp_id_as_alias() {
    let s = status_of(
        r#"{"app":"DemoAPI","timestamp":1585344476683,"version":2,"type":"message-event",
 "payload":{"id":"gBEGkYaYVSEEAgnZxQ3JmKK6Wvg","gsId":"ee4a68a0-1203-4c85-8dc3-49d0b3226a35",
  "type":"delivered","destination":"918x98xx21x4","payload":{"ts":1585344476}}}"#,
    );
    assert_eq!(s.wamid, "ee4a68a0-1203-4c85-8dc3-49d0b3226a35");
    assert_eq!(s.alt_id.as_deref(), Some("gBEGkYaYVSEEAgnZxQ3JmKK6Wvg"));
    assert_eq!(s.status, MessageStatus::Delivered);
    assert_eq!(s.timestamp, 1585344476);

    let s = status_of(
        r#"{"app":"MyApp","phone":"917065917373","timestamp":1747136693404,"version":2,"type":"message-event",
 "payload":{"id":"<WA_ID>","gsId":"<GS_ID>","type":"sent","destination":"919876543210",
  "payload":{"ts":1747136691},
  "conversation":{"id":"<CONV_ID>","expiresAt":1747223091,"type":"marketing"},
  "pricing":{"policy":"PMP","category":"marketing"}}}"#,
    );
    assert_eq!(s.status, MessageStatus::Sent);
    assert_eq!(s.pricing_category.as_deref(), Some("marketing"));
    // A report more than a week late has no gsId: keyed on the WhatsApp id alone.
    let s = status_of(
        r#"{"app":"A","timestamp":1585344602933,"version":2,"type":"message-event",
 "payload":{"id":"gBEGkYaYVSEEAgnZxQ3JmKK6Wvg","type":"read","destination":"1","payload":{"ts":1585344602}}}"#,
    );
    assert_eq!(s.wamid, "gBEGkYaYVSEEAgnZxQ3JmKK6Wvg");
    assert_eq!(s.alt_id, None);
    assert_eq!(s.status, MessageStatus::Read);
}

#[test]
fn user_events() {
    let e = one(
        r#"{"app":"DemoApp","timestamp":1584541505908,"version":2,"type":"user-event",
 "payload":{"phone":"918x98xx21x4","type":"opted-out"}}"#,
    );
    assert_eq!(
        e,
        MetaEvent::UserPreference {
            phone_number_id: None,
            wa_id: "918x98xx21x4".into(),
            category: "all".into(),
            value: "stop".into(),
            timestamp: 0
        }
    );
    for kind in ["sandbox-start", "opted-in"] {
        let e = one(&format!(
            r#"{{"app":"DemoApp","timestamp":1,"version":2,"type":"user-event",
            "payload":{{"phone":"callbackSetPhone","type":"{kind}"}}}}"#
        ));
        assert_eq!(
            e,
            MetaEvent::Unhandled {
                field: format!("gupshup:user-event/{kind}")
            }
        );
    }
}

#[test]
fn preference_template_and_tier_events() {
    let e = one(
        r#"{"app":"<appName>","appId":"<appId>","timestamp":0,"version":2,"type":"preference-event",
 "payload":{"type":"user_preferences","payload":{"user_preferences":[
   {"wa_id":"919297545638","detail":"User requested to stop marketing messages","category":"marketing_messages","value":"stop","timestamp":0}]}}}"#,
    );
    assert_eq!(
        e,
        MetaEvent::UserPreference {
            phone_number_id: None,
            wa_id: "919297545638".into(),
            category: "marketing_messages".into(),
            value: "stop".into(),
            timestamp: 0
        }
    );
    let e = one(
        r#"{"app":"jeet20","timestamp":1636986446609,"version":2,"type":"template-event",
 "payload":{"type":"status-update","id":"51eddb1e-8e36-44df-a9e5-2815e4f8463b","status":"paused",
  "elementName":"abcd","languageCode":"en_US","description":"paused for 3 hours"}}"#,
    );
    assert_eq!(
        e,
        MetaEvent::TemplateStatus {
            waba_id: String::new(),
            template_id: Some("51eddb1e-8e36-44df-a9e5-2815e4f8463b".into()),
            name: "abcd".into(),
            language: "en_US".into(),
            event: "PAUSED".into(),
            reason: Some("paused for 3 hours".into()),
        }
    );
    let e = one(
        r#"{"app":"jeet20","timestamp":1636986446609,"version":2,"type":"account-event",
 "payload":{"type":"tier-event","payload":{"event":"UPGRADE","currentTier":"TIER_250","newTier":"TIER_1K"}}}"#,
    );
    assert_eq!(
        e,
        MetaEvent::PhoneNumberQuality {
            waba_id: String::new(),
            display_phone_number: String::new(),
            event: "UPGRADE".into(),
            current_limit: Some("TIER_1K".into()),
            old_limit: Some("TIER_250".into()),
        }
    );
    let e = one(
        r#"{"app":"jeet20","timestamp":1,"version":2,"type":"template-event",
 "payload":{"type":"category-update","id":"t","category":{"current":"MARKETING","correct":"UTILITY"}}}"#,
    );
    assert_eq!(
        e,
        MetaEvent::Unhandled {
            field: "gupshup:template-event/category-update".into()
        }
    );
}

#[test]
fn unknown_but_well_formed_is_unhandled_and_garbage_is_an_error() {
    let e = one(
        r#"{"app":"DemoAPI","timestamp":1739354482884,"version":2,"type":"billing-event",
 "payload":{"deductions":{"type":"regular","model":"PMP","source":"whatsapp","billable":true,"category":"marketing"},
            "references":{"id":"<WA_ID>","gsId":"<GS_ID>","destination":"79507xxxxxxxx"}}}"#,
    );
    assert_eq!(
        e,
        MetaEvent::Unhandled {
            field: "gupshup:billing-event".into()
        }
    );
    assert!(matches!(one("{}"), MetaEvent::Unhandled { .. }));
    assert!(matches!(
        parse_gupshup_webhook(b"[1,2]"),
        Err(WebhookParseError::NotAnObject { .. })
    ));
    assert!(matches!(
        parse_gupshup_webhook(b"{\"app\":"),
        Err(WebhookParseError::InvalidJson { .. })
    ));
}

#[test]
fn v3_envelope_keys_statuses_on_gs_id() {
    let hook = parse(
        r#"{"object":"whatsapp_business_account","gs_app_id":"82ed52f4-30c0-4f12-81b4-e7ad07bd41de",
 "entry":[{"id":"112535025189792","changes":[{"field":"messages","value":{
   "messaging_product":"whatsapp",
   "metadata":{"display_phone_number":"91*******8","phone_number_id":"158072934066266"},
   "statuses":[{"errors":[{"code":131047,"href":"https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/","title":"Message failed to send..."}],
     "gs_id":"91f58e90-f5ba-4cfc-9ca7-e4ab965b9449","id":"wamid.HBgMOTE3OTgw",
     "recipient_id":"91*******78","status":"failed","timestamp":"1710941507"}]}}]}]}"#,
    );
    assert_eq!(hook.version, 3);
    assert_eq!(
        hook.app_id.as_deref(),
        Some("82ed52f4-30c0-4f12-81b4-e7ad07bd41de")
    );
    let [MetaEvent::Status(s)] = hook.events.as_slice() else {
        panic!("{:?}", hook.events)
    };
    assert_eq!(s.wamid, "91f58e90-f5ba-4cfc-9ca7-e4ab965b9449");
    assert_eq!(s.alt_id.as_deref(), Some("wamid.HBgMOTE3OTgw"));
    assert_eq!(s.errors[0].code, 131047);
    // The enqueued status with a millisecond number timestamp.
    let hook = parse(
        r#"{"entry":[{"changes":[{"field":"messages","value":{"messaging_product":"whatsapp",
  "statuses":[{"gs_id":"2baff204-c39a-4121-90b5-f53f26d522b3","id":"wamid.HBgM","recipient_id":"9191****873",
   "status":"enqueued","timestamp":1710941393420}]}}]}],
 "gs_app_id":"82ed52f4-30c0-4f12-81b4-e7ad07bd41de","object":"whatsapp_business_account"}"#,
    );
    let [MetaEvent::Status(s)] = hook.events.as_slice() else {
        panic!("{:?}", hook.events)
    };
    assert_eq!(s.timestamp, 1710941393);
    assert_eq!(s.status.as_str(), "enqueued");
}

#[test]
fn assign_line_stamps_every_event() {
    let mut hook = parse(
        r#"{"app":"DemoAPI","timestamp":1585344476683,"version":2,"type":"message-event",
 "payload":{"id":"w","gsId":"g","type":"delivered","destination":"1","payload":{"ts":1}}}"#,
    );
    hook.assign_line("917834811114", "acct");
    let [MetaEvent::Status(s)] = hook.events.as_slice() else {
        panic!()
    };
    assert_eq!(s.phone_number_id, "917834811114");
    let mut hook = parse(
        r#"{"app":"j","timestamp":1,"version":2,"type":"account-event",
 "payload":{"type":"tier-event","payload":{"event":"ONBOARDING","currentTier":"TIER_250"}}}"#,
    );
    hook.assign_line("917834811114", "acct");
    assert_eq!(
        hook.events,
        vec![MetaEvent::PhoneNumberQuality {
            waba_id: "acct".into(),
            display_phone_number: String::new(),
            event: "ONBOARDING".into(),
            current_limit: Some("TIER_250".into()),
            old_limit: None,
        }]
    );
}
