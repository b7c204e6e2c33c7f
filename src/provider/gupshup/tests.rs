//! Wiremock tests of the Gupshup client: the exact form that reaches Gupshup, and every
//! success and error answer of reference `gupshup.md` §1.1–§1.2 with its classification.

use super::*;
use crate::domain::error_class::ErrorClass;
use crate::domain::template::{CompiledMapping, ContactFields};
use serde_json::json;
use std::collections::BTreeMap;
use wiremock::matchers::{header, method, path};
use wiremock::{Match, Mock, MockServer, Request, ResponseTemplate};

const KEY: &str = "gs-secret-api-key";
const APP_ID: &str = "3cb92fbd-0bac-41d7-818e-4e4326d90335";
const TEMPLATE_UUID: &str = "c6aecef6-bcb0-4fb1-8100-28c094e3bc6b";

fn settings(server: &MockServer) -> GupshupSettings {
    GupshupSettings {
        api_base: server.uri(),
        source: "917834811114".into(),
        app_name: "DemoApp".into(),
        app_id: APP_ID.into(),
        api_key: KEY.into(),
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(5),
        max_in_flight: 4,
    }
}

fn client(server: &MockServer) -> GupshupClient {
    GupshupClient::new(settings(server)).expect("client builds")
}

/// The form fields of a request body, decoded.
fn form_of(body: &[u8]) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(body);
    let url = Url::parse(&format!("http://x/?{text}")).expect("form");
    url.query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Matches a form body exactly; fields holding JSON are compared as JSON.
struct FormIs(Vec<(&'static str, String)>);

impl Match for FormIs {
    fn matches(&self, request: &Request) -> bool {
        let got = form_of(&request.body);
        if got.len() != self.0.len() {
            return false;
        }
        self.0.iter().all(|(k, want)| match got.get(*k) {
            None => false,
            Some(v) => match (
                serde_json::from_str::<Value>(v),
                serde_json::from_str::<Value>(want),
            ) {
                (Ok(a), Ok(b)) if a.is_object() || a.is_array() => a == b,
                _ => v == want,
            },
        })
    }
}

fn submitted() -> Value {
    json!({ "status": "submitted", "messageId": "ee4a68a0-1203-4c85-8dc3-49d0b3226a35" })
}

fn message(template_id: Option<&str>, components: Value) -> TemplateMessage {
    TemplateMessage {
        to: "+919876543210".into(),
        template_name: "order_confirmation".into(),
        language: "en".into(),
        template_id: template_id.map(str::to_string),
        components: serde_json::from_value(components).expect("components"),
        callback_data: "att-42".into(),
    }
}

fn contact() -> ContactFields {
    ContactFields {
        phone: "+919876543210".into(),
        name: Some("Ana".into()),
        email: None,
        fields: [("code".to_string(), "SUMMER25".to_string())]
            .into_iter()
            .collect(),
    }
}

fn mapping(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn template_send_is_a_form_with_the_apikey_header() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/wa/api/v1/template/msg"))
        .and(header("apikey", KEY))
        .and(header("content-type", "application/x-www-form-urlencoded"))
        .and(header("accept", "application/json"))
        .and(FormIs(vec![
            ("channel", "whatsapp".into()),
            ("source", "917834811114".into()),
            ("src.name", "DemoApp".into()),
            ("destination", "919876543210".into()),
            (
                "template",
                json!({ "id": TEMPLATE_UUID, "params": ["Ana", "Gold", "30%"] }).to_string(),
            ),
        ]))
        .respond_with(ResponseTemplate::new(202).set_body_json(submitted()))
        .expect(1)
        .mount(&server)
        .await;
    let components = json!([{ "type": "body", "parameters": [
        { "type": "text", "text": "Ana" },
        { "type": "text", "text": "Gold" },
        { "type": "text", "text": "30%" } ] }]);
    let ok = client(&server)
        .send_template(&message(Some(TEMPLATE_UUID), components))
        .await
        .expect("submitted");
    assert_eq!(
        ok,
        Accepted {
            wamid: "ee4a68a0-1203-4c85-8dc3-49d0b3226a35".into(),
            wa_id: None,
            message_status: None,
        }
    );
}

#[tokio::test]
async fn listed_media_template_renders_message_params_and_postbacks() {
    // A template as Gupshup lists it, rendered by the same mapping code as Meta's.
    let listed = json!({
        "id": TEMPLATE_UUID, "elementName": "summer_sale", "languageCode": "en",
        "category": "MARKETING", "status": "APPROVED", "templateType": "IMAGE",
        "data": "Hi {{1}}, our sale starts now! | [Shop,https://shop.example/{{1}}]",
        "containerMeta": json!({
            "data": "Hi {{1}}, our sale starts now!",
            "buttons": [
                { "type": "URL", "text": "Shop", "url": "https://shop.example/{{1}}" },
                { "type": "QUICK_REPLY", "text": "STOP" }
            ]
        }).to_string()
    });
    let def = template_from_gupshup(&listed).expect("readable");
    let map = mapping(&[
        ("header", "literal:https://cdn.example/sale.jpg"),
        ("1", "name"),
        ("button.0", "field:code"),
        ("button.1", "literal:STOP_PROMOS"),
    ]);
    let rendered = CompiledMapping::new(&def, &map)
        .expect("compiles")
        .render(&contact())
        .expect("renders");
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/wa/api/v1/template/msg"))
        .and(FormIs(vec![
            ("channel", "whatsapp".into()),
            ("source", "917834811114".into()),
            ("src.name", "DemoApp".into()),
            ("destination", "919876543210".into()),
            (
                "template",
                json!({ "id": TEMPLATE_UUID, "params": ["Ana", "SUMMER25"] }).to_string(),
            ),
            (
                "message",
                json!({ "type": "image", "image": { "link": "https://cdn.example/sale.jpg" } })
                    .to_string(),
            ),
            (
                "postbackTexts",
                json!([{ "index": 1, "text": "STOP_PROMOS" }]).to_string(),
            ),
        ]))
        .respond_with(ResponseTemplate::new(202).set_body_json(submitted()))
        .expect(1)
        .mount(&server)
        .await;
    let mut m = message(def.id.as_deref(), rendered.to_json());
    m.template_name = def.name.clone();
    client(&server).send_template(&m).await.expect("submitted");
}

#[tokio::test]
async fn success_variant_with_text_html_content_type_is_accepted() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/wa/api/v1/template/msg"))
        .respond_with(ResponseTemplate::new(200).set_body_raw(
            r#"{"messageId":"5f0c1a7e-0000-4000-8000-000000000001","status":"success"}"#,
            "text/html",
        ))
        .mount(&server)
        .await;
    let ok = client(&server)
        .send_template(&message(Some(TEMPLATE_UUID), json!([])))
        .await
        .expect("accepted");
    assert_eq!(ok.wamid, "5f0c1a7e-0000-4000-8000-000000000001");
}

/// Sends a template against a server answering `body`; returns the error.
async fn failure(body: ResponseTemplate) -> SendError {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/wa/api/v1/template/msg"))
        .respond_with(body)
        .expect(1)
        .mount(&server)
        .await;
    client(&server)
        .send_template(&message(Some(TEMPLATE_UUID), json!([])))
        .await
        .expect_err("refused")
}

fn error_body(status: u16, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({ "status": "error", "message": message }))
}

#[tokio::test]
async fn documented_error_bodies_are_classified() {
    let cases: &[(u16, &str, ErrorClass)] = &[
        (400, "Invalid Destination", ErrorClass::Permanent),
        (400, "Invalid App Details", ErrorClass::Campaign),
        (401, "Authentication Failed", ErrorClass::Campaign),
        (429, "Too Many Requests", ErrorClass::Throttled),
    ];
    for &(status, text, class) in cases {
        let err = failure(error_body(status, text)).await;
        assert_eq!(
            err,
            SendError::Gupshup {
                http_status: status,
                message: text.into()
            },
            "{text}"
        );
        assert_eq!(err.classification().class, class, "{text}");
        assert!(err.classification().known, "{text}");
        assert_eq!(err.code_label(), format!("gupshup_{status}"));
    }
}

#[tokio::test]
async fn error_status_inside_a_2xx_is_a_rejection_not_a_send() {
    let err = failure(error_body(200, "Something unexpected")).await;
    assert_eq!(
        err,
        SendError::Gupshup {
            http_status: 200,
            message: "Something unexpected".into()
        }
    );
    assert_eq!(err.classification().class, ErrorClass::Retryable);
    assert!(!err.classification().known);
}

#[tokio::test]
async fn unreadable_answers_are_ambiguous() {
    let html = ResponseTemplate::new(502).set_body_raw("<html>Bad Gateway</html>", "text/html");
    let err = failure(html).await;
    assert_eq!(
        err,
        SendError::Http {
            status: 502,
            body_snippet: "<html>Bad Gateway</html>".into()
        }
    );
    assert_eq!(err.classification().class, ErrorClass::Ambiguous);
    // A 2xx that says "submitted" without an id may have been taken: never resent blindly.
    let no_id =
        ResponseTemplate::new(202).set_body_json(json!({ "status": "submitted", "messageId": "" }));
    let err = failure(no_id).await;
    assert!(
        matches!(err, SendError::Http { status: 202, .. }),
        "{err:?}"
    );
    assert_eq!(err.classification().class, ErrorClass::Ambiguous);
    // A 5xx with Gupshup's error body: judged by status, the request may have been processed.
    let err = failure(error_body(500, "Internal Server Error")).await;
    assert_eq!(err.classification().class, ErrorClass::Ambiguous);
}

#[tokio::test]
async fn timeout_may_have_been_sent_and_refused_connection_was_not() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(202)
                .set_body_json(submitted())
                .set_delay(Duration::from_secs(3)),
        )
        .mount(&server)
        .await;
    let mut s = settings(&server);
    s.request_timeout = Duration::from_millis(300);
    let err = GupshupClient::new(s)
        .expect("client")
        .send_template(&message(Some(TEMPLATE_UUID), json!([])))
        .await
        .expect_err("times out");
    assert!(
        matches!(
            err,
            SendError::Transport {
                timeout: true,
                maybe_sent: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.classification().class, ErrorClass::Ambiguous);

    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut s = settings(&server);
    s.api_base = format!("http://127.0.0.1:{port}");
    let err = GupshupClient::new(s)
        .expect("client")
        .send_text("+919876543210", "hi")
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err,
            SendError::Transport {
                maybe_sent: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(err.classification().class, ErrorClass::Retryable);
}

#[tokio::test]
async fn template_without_gupshup_id_pauses_without_a_request() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .respond_with(ResponseTemplate::new(202).set_body_json(submitted()))
        .expect(0)
        .mount(&server)
        .await;
    let err = client(&server)
        .send_template(&message(None, json!([])))
        .await
        .expect_err("no id");
    assert!(
        matches!(err, SendError::Api { code: 132001, .. }),
        "{err:?}"
    );
    assert_eq!(err.classification().class, ErrorClass::Campaign);
}

#[tokio::test]
async fn text_send_and_mark_read() {
    let server = MockServer::start().await;
    Mock::given(method("POST"))
        .and(path("/wa/api/v1/msg"))
        .and(header("apikey", KEY))
        .and(FormIs(vec![
            ("channel", "whatsapp".into()),
            ("source", "917834811114".into()),
            ("src.name", "DemoApp".into()),
            ("destination", "919876543210".into()),
            (
                "message",
                json!({ "type": "text", "text": "Hello" }).to_string(),
            ),
            ("disablePreview", "true".into()),
        ]))
        .respond_with(ResponseTemplate::new(202).set_body_json(submitted()))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path(
            format!("/wa/app/{APP_ID}/msg/ABEGkYaYVSEEAhAL/read").as_str(),
        ))
        .and(header("apikey", KEY))
        .respond_with(ResponseTemplate::new(202))
        .expect(1)
        .mount(&server)
        .await;
    let c = client(&server);
    let ok = c.send_text("+91 98765-43210", "Hello").await.expect("sent");
    assert_eq!(ok.wamid, "ee4a68a0-1203-4c85-8dc3-49d0b3226a35");
    c.mark_read("ABEGkYaYVSEEAhAL").await.expect("read");
}

#[tokio::test]
async fn template_list_maps_onto_template_defs() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(format!("/wa/app/{APP_ID}/template").as_str()))
        .and(header("apikey", KEY))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "status": "success",
            "templates": [
                {
                    "appId": APP_ID,
                    "id": "51eddb1e-8e36-44df-a9e5-2815e4f8463b",
                    "elementName": "order_confirmation",
                    "languageCode": "en",
                    "category": "MARKETING",
                    "status": "APPROVED",
                    "templateType": "TEXT",
                    "data": "Dear {{1}}\nExclusive deals ... \nThank you | [Contact,+919139472766] | [Gupshup,https://www.google.com/]",
                    "meta": "{\"example\":\"Exclusive deals on car and train bookings...\"}",
                    "containerMeta": "{\"data\":\"Exclusive deals for {{2}}\",\"buttons\":[{\"type\":\"PHONE_NUMBER\",\"text\":\"Contact\",\"phone_number\":\"+919139472766\"},{\"type\":\"URL\",\"text\":\"Gupshup\",\"url\":\"https://www.google.com/\"}],\"header\":\"Dear {{1}}\",\"footer\":\"Thank you\",\"sampleText\":\"...\",\"enableSample\":true,\"correctCategory\":\"UTILITY\"}",
                    "externalId": "1234567890",
                    "quality": "UNKNOWN",
                    "createdOn": 1717510871793u64
                },
                {
                    "id": "0f4e1a2b-0000-4000-8000-00000000c0de",
                    "elementName": "legacy_no_meta",
                    "languageCode": "pt_BR",
                    "category": "UTILITY",
                    "status": "REJECTED",
                    "reason": "INVALID_FORMAT",
                    "templateType": "TEXT",
                    "data": "Oi {{1}}, pedido {{2}} | [OK]"
                },
                { "id": "x", "elementName": "carousel_promo", "languageCode": "en",
                  "status": "APPROVED", "templateType": "CAROUSEL", "data": "Look" },
                { "id": "nameless", "languageCode": "en" }
            ]
        })))
        .expect(1)
        .mount(&server)
        .await;
    let list = client(&server).list_templates().await.expect("listed");
    let names: Vec<&str> = list.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["order_confirmation", "legacy_no_meta", "carousel_promo"]
    );
    let first = &list[0];
    assert_eq!(
        first.id.as_deref(),
        Some("51eddb1e-8e36-44df-a9e5-2815e4f8463b")
    );
    assert!(first.is_approved());
    assert_eq!(first.quality.as_deref(), Some("UNKNOWN"));
    let keys: Vec<String> = first.placeholders().into_iter().map(|s| s.key).collect();
    // Header variable first, then the body's: Gupshup's params follow the same order.
    assert_eq!(keys, ["header", "2"]);
    // Without containerMeta the flattened data (buttons cut off) is the body.
    let second = &list[1];
    assert_eq!(second.status, "REJECTED");
    let keys: Vec<String> = second.placeholders().into_iter().map(|s| s.key).collect();
    assert_eq!(keys, ["1", "2"]);
    // A carousel cannot be filled: a campaign on it must refuse to start.
    assert_eq!(list[2].unsupported_features(), ["component CAROUSEL"]);
}

#[tokio::test]
async fn template_list_errors() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .respond_with(error_body(401, "Authentication Failed"))
        .mount(&server)
        .await;
    let err = client(&server).list_templates().await.expect_err("401");
    assert_eq!(
        err,
        SendError::Gupshup {
            http_status: 401,
            message: "Authentication Failed".into()
        }
    );
    assert_eq!(err.classification().class, ErrorClass::Campaign);
}

#[test]
fn debug_redacts_the_api_key_and_bad_settings_are_refused() {
    let s = GupshupSettings {
        api_base: "https://api.gupshup.io".into(),
        source: "917834811114".into(),
        app_name: "DemoApp".into(),
        app_id: APP_ID.into(),
        api_key: KEY.into(),
        connect_timeout: Duration::from_secs(1),
        request_timeout: Duration::from_secs(1),
        max_in_flight: 2,
    };
    assert!(!format!("{s:?}").contains(KEY));
    let c = GupshupClient::new(s.clone()).expect("client");
    assert!(!format!("{c:?}").contains(KEY));
    let bad = GupshupSettings {
        api_base: "ftp://nope".into(),
        ..s.clone()
    };
    assert!(matches!(
        GupshupClient::new(bad),
        Err(GupshupClientError::BadApiBase(_))
    ));
    let bad = GupshupSettings {
        api_key: "bad\nkey".into(),
        ..s
    };
    assert!(matches!(
        GupshupClient::new(bad),
        Err(GupshupClientError::BadApiKey)
    ));
}
