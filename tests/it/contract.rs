//! The admin API against its own description: every operation of `/api/openapi.json` is called
//! on the real daemon, for its successes and its errors, and every answer must have the status
//! the call expects and a body valid against the schema the document gives for that operation
//! and status (JSON Schema 2020-12, formats checked). So the description and the behaviour
//! cannot drift apart.

use crate::api::{api_config, everyone_reads, start_daemon, Api, TOKEN};
use crate::helpers::*;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tiercast::sim::{InboundSpec, PairRate};

/// The document, and which operations and statuses the test has seen.
struct Contract {
    doc: Value,
    api: Api,
    seen: BTreeSet<(String, String, u16)>,
}

/// A method and a path of the document (`/api/interactions/{id}`), with the concrete URL.
struct Call<'a> {
    method: Method,
    template: &'a str,
    url: String,
}

fn call(method: Method, template: &str, url: impl Into<String>) -> Call<'_> {
    Call {
        method,
        template,
        url: url.into(),
    }
}

impl Contract {
    /// Follows a local `$ref` (`#/components/…`) until it reaches an object that is not one.
    fn resolve<'a>(&'a self, mut v: &'a Value) -> &'a Value {
        while let Some(r) = v.get("$ref").and_then(Value::as_str) {
            v = self
                .doc
                .pointer(r.strip_prefix('#').unwrap())
                .unwrap_or_else(|| panic!("dangling $ref {r}"));
        }
        v
    }

    /// The documented response of this operation for this status.
    fn response(&self, c: &Call, status: StatusCode) -> &Value {
        let item = self.resolve(&self.doc["paths"][c.template]);
        let op = &item[c.method.as_str().to_ascii_lowercase()];
        assert!(
            op.is_object(),
            "{} {} is not documented",
            c.method,
            c.template
        );
        let response = &op["responses"][status.as_str()];
        assert!(
            response.is_object(),
            "{} {} answered {status}, which the document does not list",
            c.method,
            c.template
        );
        self.resolve(response)
    }

    /// Sends the request, checks the status, then the body against the documented schema.
    async fn check(
        &mut self,
        c: Call<'_>,
        req: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
        expect: StatusCode,
    ) -> (Value, reqwest::header::HeaderMap) {
        let builder = self
            .api
            .client
            .request(c.method.clone(), format!("{}{}", self.api.base, c.url));
        let resp = req(builder).send().await.unwrap();
        let status = resp.status();
        let headers = resp.headers().clone();
        let content_type = headers
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = resp.text().await.unwrap();
        assert_eq!(status, expect, "{} {}: {text}", c.method, c.url);
        assert!(
            content_type.starts_with("application/json"),
            "{} {} answered {content_type:?}: {text}",
            c.method,
            c.url
        );
        let body: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{} {}: not JSON ({e}): {text}", c.method, c.url));
        let documented = self.response(&c, status);
        let schema = &documented["content"]["application/json"]["schema"];
        assert!(
            schema.is_object(),
            "{} {} {status}: no JSON schema",
            c.method,
            c.template
        );
        // The schema's `$ref`s point into the document's components: validate with them at hand.
        let mut root = schema.clone();
        root["components"] = self.doc["components"].clone();
        let validator = jsonschema::draft202012::options()
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("{} {} {status}: bad schema: {e}", c.method, c.template));
        let errors: Vec<String> = validator
            .iter_errors(&body)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "{} {} {status}: the body does not match the document:\n{}\n{body:#}",
            c.method,
            c.url,
            errors.join("\n")
        );
        if let Some(documented_headers) = documented.get("headers").and_then(Value::as_object) {
            for name in documented_headers.keys() {
                assert!(
                    headers.contains_key(name.as_str()),
                    "{} {} {status}: header {name} is documented but missing",
                    c.method,
                    c.url
                );
            }
        }
        self.seen.insert((
            c.method.as_str().to_string(),
            c.template.to_string(),
            status.as_u16(),
        ));
        (body, headers)
    }

    async fn get(&mut self, template: &str, url: &str, expect: StatusCode) -> Value {
        self.check(call(Method::GET, template, url), bearer, expect)
            .await
            .0
    }

    async fn post_json(
        &mut self,
        template: &str,
        url: &str,
        body: Value,
        expect: StatusCode,
    ) -> Value {
        self.check(
            call(Method::POST, template, url),
            |r| bearer(r).json(&body),
            expect,
        )
        .await
        .0
    }

    async fn post(&mut self, template: &str, url: &str, expect: StatusCode) -> Value {
        self.check(call(Method::POST, template, url), bearer, expect)
            .await
            .0
    }
}

fn bearer(r: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    r.bearer_auth(TOKEN)
}

fn is_utc_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(s).is_ok())
}

/// Polls `GET path` until `done` holds; the deadline is a safety net, not a timing assertion.
async fn wait_until(api: &Api, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body) = api.get(path).await;
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out on {path}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_as_the_openapi_document_says() {
    let db = fresh_db().await;
    let cfg = format!(
        "{}response_timeout = \"4h\"\nrecontact_template = {{ name = \"window_expired\", language = \"pt_BR\" }}\n",
        api_config(&db.url, true)
    );
    // Two messages per contact pass Meta's pair rate; the third is refused with 131056.
    let (daemon, _) = start_daemon(&cfg, |sim| {
        everyone_reads(sim);
        sim.pair_rate = Some(PairRate {
            interval: Duration::from_secs(3600),
            burst: 2,
        });
    })
    .await;
    let doc = Api::new(&daemon).get("/api/openapi.json").await.1;
    let mut k = Contract {
        doc,
        api: Api::new(&daemon),
        seen: BTreeSet::new(),
    };
    use StatusCode as S;
    let phones = ["+5511987650001", "+5511987650002"];

    k.get("/api/openapi.json", "/api/openapi.json", S::OK).await;
    k.check(
        call(Method::GET, "/api/openapi.json", "/api/openapi.json"),
        |r| r,
        S::UNAUTHORIZED,
    )
    .await;

    // Campaigns and lists.
    k.get("/api/campaigns", "/api/campaigns", S::OK).await;
    k.check(
        call(Method::GET, "/api/campaigns", "/api/campaigns"),
        |r| r.bearer_auth("wrong"),
        S::UNAUTHORIZED,
    )
    .await;
    k.get("/api/campaigns/{name}", "/api/campaigns/api-c", S::OK)
        .await;
    k.get("/api/campaigns/{name}", "/api/campaigns/nope", S::NOT_FOUND)
        .await;
    let import = "/api/lists/{name}/import";
    let csv = format!(
        "phone,name,plan\n{},Ana,gold\n{},Bia,\nnot-a-phone,X,\n",
        phones[0], phones[1]
    );
    let summary = k
        .check(
            call(Method::POST, import, "/api/lists/api-l/import"),
            |r| bearer(r).header("content-type", "text/csv").body(csv),
            S::OK,
        )
        .await
        .0;
    assert_eq!(
        (summary["imported"].as_u64(), summary["invalid"].as_u64()),
        (Some(2), Some(1))
    );
    k.check(
        call(Method::POST, import, "/api/lists/api-l/import"),
        |r| {
            bearer(r)
                .header("content-type", "text/csv")
                .body("name\nAna\n")
        },
        S::BAD_REQUEST,
    )
    .await;
    k.check(
        call(Method::POST, import, "/api/lists/api-l/import"),
        |r| {
            bearer(r)
                .header("content-type", "application/json")
                .body("{}")
        },
        S::UNSUPPORTED_MEDIA_TYPE,
    )
    .await;
    k.check(
        call(Method::POST, import, "/api/lists/api-l/import"),
        |r| {
            bearer(r).header("content-type", "text/csv").body(vec![
                b'a';
                tiercast::api::IMPORT_BODY_LIMIT
                    + 1
            ])
        },
        S::PAYLOAD_TOO_LARGE,
    )
    .await;
    for command in ["start", "pause", "resume"] {
        let template = format!("/api/campaigns/{{name}}/{command}");
        let url = format!("/api/campaigns/api-c/{command}");
        k.post(&template, &url, S::OK).await;
    }
    k.post(
        "/api/campaigns/{name}/start",
        "/api/campaigns/api-c/start",
        S::CONFLICT,
    )
    .await;
    k.post(
        "/api/campaigns/{name}/pause",
        "/api/campaigns/nope/pause",
        S::NOT_FOUND,
    )
    .await;
    wait_until(&k.api, "/api/campaigns/api-c", |s| s["sent"] == 2).await;

    // Contacts, templates, tiers.
    let contact = k
        .get(
            "/api/contacts/{phone}",
            &format!("/api/contacts/{}", phones[0]),
            S::OK,
        )
        .await;
    assert!(is_utc_rfc3339(&contact["rows"][0]["sent_at"]), "{contact}");
    k.get("/api/contacts/{phone}", "/api/contacts/abc", S::BAD_REQUEST)
        .await;
    k.get(
        "/api/contacts/{phone}",
        "/api/contacts/+5511987659999",
        S::NOT_FOUND,
    )
    .await;
    k.get("/api/templates", "/api/templates", S::OK).await;
    k.get("/api/tiers", "/api/tiers", S::OK).await;

    // Opt-outs.
    let optouts = "/api/optouts";
    let third = "+5511987650003";
    k.post_json(
        optouts,
        optouts,
        json!({"phone": third, "reason": "asked by phone"}),
        S::CREATED,
    )
    .await;
    k.post_json(optouts, optouts, json!({"phone": third}), S::OK)
        .await;
    let refused = k
        .post_json(
            optouts,
            optouts,
            json!({"phone": third, "reason": null}),
            S::BAD_REQUEST,
        )
        .await;
    assert_eq!(refused["error"], "bad_json");
    k.post_json(
        optouts,
        optouts,
        json!({"phone": "+55 11 9x"}),
        S::BAD_REQUEST,
    )
    .await;
    k.post_json(
        optouts,
        optouts,
        json!({"phone": third, "bogus": 1}),
        S::BAD_REQUEST,
    )
    .await;
    k.check(
        call(Method::POST, optouts, optouts),
        |r| {
            bearer(r)
                .header("content-type", "application/json")
                .body(vec![b' '; tiercast::api::JSON_BODY_LIMIT + 1])
        },
        S::PAYLOAD_TOO_LARGE,
    )
    .await;
    let page = k.get(optouts, optouts, S::OK).await;
    assert!(is_utc_rfc3339(&page["optouts"][0]["at"]), "{page}");
    k.get(optouts, "/api/optouts?limit=0", S::BAD_REQUEST).await;
    let one = "/api/optouts/{phone}";
    let del = |url: String| call(Method::DELETE, one, url);
    k.check(del(format!("/api/optouts/{third}")), bearer, S::OK)
        .await;
    k.check(del(format!("/api/optouts/{third}")), bearer, S::NOT_FOUND)
        .await;
    k.check(del("/api/optouts/abc".into()), bearer, S::BAD_REQUEST)
        .await;

    // Interactions: both contacts write back.
    let sim = daemon.simulator.as_ref().unwrap();
    for p in phones {
        sim.inject_inbound(InboundSpec {
            phone_number_id: None,
            from: Some(p.trim_start_matches('+').to_string()),
            from_user_id: None,
            kind: Some("text".into()),
            text: Some(format!("this is {p}, call me later")),
            payload: None,
            context_id: None,
            profile_name: Some("Test Person".into()),
            timestamp: None,
        })
        .unwrap();
    }
    sim.flush_webhooks().await;
    wait_until(&k.api, "/api/interactions", |l| {
        l.as_array().is_some_and(|a| a.len() == 2)
    })
    .await;
    let list_t = "/api/interactions";
    let list = k.get(list_t, "/api/interactions?state=open", S::OK).await;
    let first = &list[0];
    assert!(
        is_utc_rfc3339(&first["opened_at"]) && is_utc_rfc3339(&first["window_expires_at"]),
        "{first}"
    );
    let ids: Vec<i64> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_i64().unwrap())
        .collect();
    for bad in ["/api/interactions?state=bogus", "/api/interactions?state="] {
        let body = k.get(list_t, bad, S::BAD_REQUEST).await;
        assert_eq!(body["error"], "bad_query", "{bad}: {body}");
    }
    let one_t = "/api/interactions/{id}";
    let (a, b) = (ids[0], ids[1]);
    let read = k.get(one_t, &format!("/api/interactions/{a}"), S::OK).await;
    assert!(is_utc_rfc3339(&read["messages"][0]["at"]), "{read}");
    for bad in [
        "/api/interactions/abc",
        "/api/interactions/9223372036854775808",
    ] {
        let body = k.get(one_t, bad, S::BAD_REQUEST).await;
        assert_eq!(body["error"], "bad_path", "{bad}: {body}");
    }
    k.get(one_t, "/api/interactions/999999", S::NOT_FOUND).await;

    // Replies: the second message to the contact passes the pair rate, the third is throttled.
    let reply_t = "/api/interactions/{id}/reply";
    let reply = |id: i64| format!("/api/interactions/{id}/reply");
    k.post_json(
        reply_t,
        &reply(a),
        json!({"text": "hi", "bogus": 1}),
        S::BAD_REQUEST,
    )
    .await;
    k.post_json(reply_t, &reply(a), json!({"text": ""}), S::BAD_REQUEST)
        .await;
    k.post_json(reply_t, &reply(999999), json!({"text": "hi"}), S::NOT_FOUND)
        .await;
    k.post_json(reply_t, &reply(a), json!({"text": "hi"}), S::ACCEPTED)
        .await;
    let (body, headers) = k
        .check(
            call(Method::POST, reply_t, reply(a)),
            |r| bearer(r).json(&json!({"text": "hi again"})),
            S::TOO_MANY_REQUESTS,
        )
        .await;
    assert_eq!(body["error"], "throttled", "{body}");
    let retry_after: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 6, "the pair rate's wait: {retry_after}");
    let recontact_t = "/api/interactions/{id}/recontact";
    let recontact = |id: i64| format!("/api/interactions/{id}/recontact");
    k.post(recontact_t, &recontact(b), S::ACCEPTED).await;
    k.post(recontact_t, &recontact(b), S::TOO_MANY_REQUESTS)
        .await;
    k.post(recontact_t, &recontact(999999), S::NOT_FOUND).await;
    k.post(recontact_t, "/api/interactions/x/recontact", S::BAD_REQUEST)
        .await;

    // Tags and close answer the whole interaction.
    let tags_t = "/api/interactions/{id}/tags";
    let tags = |id: i64| format!("/api/interactions/{id}/tags");
    let tagged = k
        .post_json(
            tags_t,
            &tags(a),
            json!({"tags": ["vip", " vip", ""]}),
            S::OK,
        )
        .await;
    assert_eq!(
        (tagged["id"].as_i64(), &tagged["tags"]),
        (Some(a), &json!(["vip"]))
    );
    let refused = k
        .post_json(
            tags_t,
            &tags(a),
            json!({"tags": ["x"], "bogus": 1}),
            S::BAD_REQUEST,
        )
        .await;
    assert_eq!(refused["error"], "bad_json");
    k.post_json(tags_t, &tags(999999), json!({"tags": []}), S::NOT_FOUND)
        .await;
    for (template, url) in [(reply_t, reply(a)), (tags_t, tags(a))] {
        k.check(
            call(Method::POST, template, url),
            |r| {
                bearer(r)
                    .header("content-type", "application/json")
                    .body(vec![b' '; tiercast::api::JSON_BODY_LIMIT + 1])
            },
            S::PAYLOAD_TOO_LARGE,
        )
        .await;
    }
    let close_t = "/api/interactions/{id}/close";
    let close = |id: i64| format!("/api/interactions/{id}/close");
    let closed = k.post(close_t, &close(a), S::OK).await;
    assert_eq!(
        (closed["state"].as_str(), closed["tags"].clone()),
        (Some("closed"), json!(["vip"]))
    );
    assert!(is_utc_rfc3339(&closed["closed_at"]), "{closed}");
    k.post(close_t, &close(a), S::OK).await;
    k.post(close_t, &close(999999), S::NOT_FOUND).await;
    let closed_list = k.get(list_t, "/api/interactions?state=closed", S::OK).await;
    assert_eq!(closed_list.as_array().unwrap().len(), 1);

    k.post(
        "/api/campaigns/{name}/stop",
        "/api/campaigns/api-c/stop",
        S::OK,
    )
    .await;

    // Every documented operation was called, for a success and for an error.
    let doc = k.doc.clone();
    for (path, item) in doc["paths"].as_object().unwrap() {
        let item = k.resolve(item);
        for method in ["get", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            let m = method.to_ascii_uppercase();
            let statuses: Vec<u16> = k
                .seen
                .iter()
                .filter(|(sm, sp, _)| *sm == m && sp == path)
                .map(|s| s.2)
                .collect();
            assert!(
                statuses.iter().any(|s| *s < 300),
                "{m} {path}: no success checked"
            );
            let campaign_command = path.starts_with("/api/campaigns/{name}/");
            if !campaign_command && path != "/api/templates" && path != "/api/tiers" {
                assert!(
                    statuses.iter().any(|s| *s >= 400),
                    "{m} {path}: no error checked"
                );
            }
        }
    }

    // The report writes the same times.
    let id = daemon
        .store
        .campaign_by_name("api-c")
        .await
        .unwrap()
        .unwrap()
        .id;
    for format in [
        tiercast::cli::ReportFormat::Csv,
        tiercast::cli::ReportFormat::Json,
    ] {
        let mut out = Vec::new();
        tiercast::cli::write_report(&daemon.store, id, format, &mut out)
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<Value> = match format {
            tiercast::cli::ReportFormat::Json => serde_json::from_str(&text).unwrap(),
            tiercast::cli::ReportFormat::Csv => csv::Reader::from_reader(text.as_bytes())
                .deserialize::<std::collections::BTreeMap<String, String>>()
                .map(|r| serde_json::to_value(r.unwrap()).unwrap())
                .collect(),
        };
        assert_eq!(rows.len(), 2, "{text}");
        for row in &rows {
            assert!(
                is_utc_rfc3339(&row["loaded_at"]) && is_utc_rfc3339(&row["sent_at"]),
                "{text}"
            );
        }
    }
    daemon.shutdown().await;
}
