//! `/metrics` after a known run, and the Grafana dashboard against the metric names.
//!
//! The Prometheus recorder is process-wide and tests run in parallel: every assertion filters
//! on this test's own line and campaign names, and counters other tests may also bump are
//! checked with `>=`.

use crate::api::{start_daemon, Api};
use crate::helpers::*;
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};
use tiercast::sim::{Fate, FateMix};

const LINE: &str = "metrics-line";
const CAMPAIGN: &str = "metrics-camp";

fn config_text(url: &str) -> String {
    format!(
        r#"
[server]
database_url = "{url}"
admin_token_env = "{env}"

[[portfolios]]
name = "metrics-pf"
tier = "2k"

[[lines]]
name = "{LINE}"
provider = "simulator"
portfolio = "metrics-pf"
throughput_mps = 150

[[campaigns]]
name = "{CAMPAIGN}"
line = "{LINE}"
template = {{ name = "renewal_reminder", language = "pt_BR" }}
lists = ["metrics-l"]
variables = {{ "1" = "name|literal:friend", "2" = "literal:gold", "3" = "literal:30%" }}
max_failure_rate = 0.5
"#,
        env = crate::api::TOKEN_ENV
    )
}

/// One sample of the Prometheus text format.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

fn parse(text: &str) -> Vec<Sample> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let rest = rest.strip_suffix('}').unwrap();
                let mut labels = Vec::new();
                // Our label values hold no quotes or commas.
                for pair in rest.split(',').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap();
                    labels.push((k.to_string(), v.trim_matches('"').to_string()));
                }
                (name.to_string(), labels)
            }
        };
        out.push(Sample {
            name,
            labels,
            value,
        });
    }
    out
}

/// The sum over every series of `name` that carries all of `labels`; `None` when there is none.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let matching: Vec<f64> = samples
        .iter()
        .filter(|s| s.name == name)
        .filter(|s| {
            labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.value)
        .collect();
    (!matching.is_empty()).then(|| matching.iter().sum())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_known_run() {
    let db = fresh_db().await;
    let (daemon, _) = start_daemon(&config_text(&db.url), |sim| {
        sim.fates = FateMix {
            delivered: 0,
            read: 1,
            undeliverable_131026: 0,
            marketing_cap_131049: 0,
            opted_out_131050: 0,
            no_webhook: 0,
            wa_id_differs: 0.0,
        };
    })
    .await;
    let api = Api::new(&daemon);
    let phones: Vec<String> = (0..10).map(|i| format!("+5511970002{i:03}")).collect();
    let sim = daemon.simulator.clone().unwrap();
    for p in &phones[..3] {
        sim.force_fate(p, Fate::Failed(131026));
    }
    let mut csv = String::from("phone,name\n");
    for (i, p) in phones.iter().enumerate() {
        csv.push_str(&format!("{p},Person {i}\n"));
    }
    let (status, body) = api
        .post_raw("/api/lists/metrics-l/import", "text/csv", &csv)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.post(&format!("/api/campaigns/{CAMPAIGN}/start")).await;
    assert_eq!(status, 200, "{body}");
    api.wait_for(
        &format!("/api/campaigns/{CAMPAIGN}"),
        "3 failed and 7 read",
        |s| s["outcomes"]["failed"] == 3 && s["read"] == 7,
    )
    .await;

    // A webhook with a bad signature.
    let rejected = reqwest::Client::new()
        .post(format!("{}/webhooks/meta", daemon.url()))
        .header("content-type", "application/json")
        .header("X-Hub-Signature-256", "sha256=00")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(rejected.status(), 401);

    // One POST carrying three statuses of one kind counts three (counters are bumped once
    // per line and status of a batch, by the batch's count). Their wamids are not ours, so
    // they move no row.
    let statuses: Vec<Value> = (0..3)
        .map(|i| {
            serde_json::json!({ "id": format!("wamid.metrics-foreign-{i}"), "status": "delivered",
                "timestamp": "1795000000", "recipient_id": "5511970002999" })
        })
        .collect();
    let body = serde_json::json!({ "object": "whatsapp_business_account", "entry": [{
        "id": "sim-waba-main", "changes": [{ "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550000000",
                "phone_number_id": daemon.config.lines[0].phone_number_id },
            "statuses": statuses } }] }] });
    assert_eq!(
        post_signed_webhook(&daemon.url(), body.to_string()).await,
        200
    );

    // The gauges come from housekeeping (every second): poll until they show the end state.
    let url = format!("{}/metrics", daemon.url());
    let deadline = Instant::now() + Duration::from_secs(30);
    let (text, samples) = loop {
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(resp.status(), 200);
        let text = resp.text().await.unwrap();
        let samples = parse(&text);
        let pending = value(
            &samples,
            "tiercast_hopper_contacts",
            &[("campaign", CAMPAIGN), ("state", "pending")],
        );
        let used = value(
            &samples,
            "tiercast_tier_used",
            &[("portfolio", "metrics-pf")],
        );
        if pending == Some(7.0) && used == Some(10.0) {
            break (text, samples);
        }
        assert!(
            Instant::now() < deadline,
            "gauges never settled: pending {pending:?}, tier used {used:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&samples, name, labels).unwrap_or_else(|| panic!("{name} {labels:?} is missing"))
    };
    let lc = [("line", LINE), ("campaign", CAMPAIGN)];

    assert_eq!(v("tiercast_messages_sent_total", &lc), 10.0);
    assert_eq!(
        v(
            "tiercast_send_failures_total",
            &[
                ("line", LINE),
                ("campaign", CAMPAIGN),
                ("code", "131026"),
                ("class", "permanent")
            ]
        ),
        3.0
    );
    assert_eq!(
        v("tiercast_send_failures_total", &lc),
        3.0,
        "no other failure"
    );
    assert_eq!(
        v(
            "tiercast_message_status_total",
            &[("line", LINE), ("status", "read")]
        ),
        7.0
    );
    assert_eq!(
        v(
            "tiercast_message_status_total",
            &[("line", LINE), ("status", "failed")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "tiercast_message_status_total",
            &[("line", LINE), ("status", "delivered")]
        ),
        10.0,
        "7 from the simulator's read messages, 3 from the one POST"
    );
    let hopper = |state| {
        v(
            "tiercast_hopper_contacts",
            &[("campaign", CAMPAIGN), ("state", state)],
        )
    };
    assert_eq!(
        (
            hopper("fresh"),
            hopper("retry"),
            hopper("pending"),
            hopper("closed")
        ),
        (0.0, 0.0, 7.0, 3.0)
    );
    assert_eq!(
        v(
            "tiercast_campaign_outcomes_total",
            &[("campaign", CAMPAIGN), ("outcome", "failed")]
        ),
        3.0
    );
    let state = |s| {
        v(
            "tiercast_campaign_state",
            &[("campaign", CAMPAIGN), ("state", s)],
        )
    };
    assert_eq!(
        (state("running"), state("draft"), state("paused")),
        (1.0, 0.0, 0.0)
    );
    assert_eq!(
        v("tiercast_tier_limit", &[("portfolio", "metrics-pf")]),
        2000.0
    );
    assert_eq!(
        v("tiercast_tier_used", &[("portfolio", "metrics-pf")]),
        10.0
    );
    assert_eq!(
        v("tiercast_waiting_for_tier", &[("campaign", CAMPAIGN)]),
        0.0
    );
    assert_eq!(v("tiercast_line_throughput_mps", &[("line", LINE)]), 150.0);
    // sent + delivered + read for 7, failed for 3; other tests add their own.
    assert!(v("tiercast_webhook_events_total", &[("kind", "status")]) >= 24.0);
    assert!(
        v(
            "tiercast_webhook_rejected_total",
            &[("reason", "bad_signature")]
        ) >= 1.0
    );
    // The latency histogram: one observation per send, with buckets.
    assert_eq!(
        v("tiercast_send_latency_seconds_count", &[("line", LINE)]),
        10.0
    );
    assert!(v("tiercast_send_latency_seconds_sum", &[("line", LINE)]) > 0.0);
    assert_eq!(
        v(
            "tiercast_send_latency_seconds_bucket",
            &[("line", LINE), ("le", "+Inf")]
        ),
        10.0
    );
    assert!(
        samples
            .iter()
            .filter(|s| s.name == "tiercast_send_latency_seconds_bucket"
                && s.labels.iter().any(|(k, v)| k == "line" && v == LINE))
            .count()
            > 5,
        "histogram buckets, not a summary"
    );
    // Every family, failures and the latency histogram included, passes promtool.
    promtool_check(&text);
    // Counters known at start exist before their first event, so increase() sees it.
    assert_eq!(
        v("tiercast_campaign_pauses_total", &[("campaign", CAMPAIGN)]),
        0.0
    );
    assert_eq!(
        v(
            "tiercast_replies_total",
            &[("campaign", CAMPAIGN), ("kind", "answer")]
        ),
        0.0
    );
    // Every series the dashboard and the alert rules query is exported.
    let exported: BTreeSet<&str> = samples.iter().map(|s| s.name.as_str()).collect();
    for file in ["grafana/tiercast.json", "grafana/alerts.yml"] {
        let text =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        for r in metric_refs(&text) {
            assert!(
                exported.contains(r.as_str()),
                "{file} queries {r}, which /metrics does not export"
            );
        }
    }
    daemon.shutdown().await;
}

/// Every `tiercast_*` name defined in src/metrics.rs (read from the source, so a rename there
/// breaks the dashboard test below).
fn defined_metrics() -> BTreeSet<String> {
    let src =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics.rs")).unwrap();
    let mut names = BTreeSet::new();
    for line in src.lines() {
        let line = line.trim();
        if !line.starts_with("pub const ") {
            continue;
        }
        if let Some(name) = line
            .split('"')
            .nth(1)
            .filter(|n| n.starts_with("tiercast_"))
        {
            names.insert(name.to_string());
        }
    }
    assert!(
        names.len() >= 15,
        "metric names not found in src/metrics.rs: {names:?}"
    );
    names
}

/// The `tiercast_…` identifiers of a PromQL expression.
fn metric_refs(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("tiercast_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

fn collect_panels<'a>(panels: &'a [Value], out: &mut Vec<&'a Value>) {
    for p in panels {
        out.push(p);
        if let Some(inner) = p["panels"].as_array() {
            collect_panels(inner, out);
        }
    }
}

#[test]
fn grafana_dashboard_uses_only_defined_metrics() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/grafana/tiercast.json"
    ))
    .unwrap();
    let dash: Value = serde_json::from_str(&text).expect("grafana/tiercast.json is JSON");
    let defined = defined_metrics();

    // Importable: a Prometheus datasource input, a modern schema, the two variables.
    let inputs = dash["__inputs"].as_array().expect("__inputs");
    assert!(inputs
        .iter()
        .any(|i| i["name"] == "DS_PROMETHEUS" && i["pluginId"] == "prometheus"));
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 36);
    assert!(dash["uid"].is_string() && dash["title"].is_string());
    let vars: Vec<&Value> = dash["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .collect();
    for name in ["campaign", "line"] {
        let var = vars
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("templating variable {name} missing"));
        let query = var["query"]["query"]
            .as_str()
            .or_else(|| var["query"].as_str())
            .unwrap();
        assert!(query.starts_with("label_values("), "{name}: {query}");
        for m in metric_refs(query) {
            assert!(
                defined.contains(&m),
                "variable {name} uses unknown metric {m}"
            );
        }
    }

    let mut panels = Vec::new();
    collect_panels(dash["panels"].as_array().unwrap(), &mut panels);
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    let mut exprs = 0;
    for p in &panels {
        assert!(
            ids.insert(p["id"].as_u64().unwrap()),
            "duplicate panel id {}",
            p["id"]
        );
        assert!(
            p["gridPos"]["w"].as_u64().is_some(),
            "panel {} has no gridPos",
            p["title"]
        );
        let Some(targets) = p["targets"].as_array() else {
            continue;
        };
        for t in targets {
            let expr = t["expr"].as_str().unwrap();
            exprs += 1;
            let refs = metric_refs(expr);
            assert!(
                !refs.is_empty(),
                "panel {}: {expr} uses no tiercast metric",
                p["title"]
            );
            for r in refs {
                let base = ["_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|s| r.strip_suffix(s).filter(|b| defined.contains(*b)))
                    .unwrap_or(&r);
                assert!(
                    defined.contains(base),
                    "panel {}: {expr} uses {r}, which src/metrics.rs does not define",
                    p["title"]
                );
                used.insert(base.to_string());
            }
            assert_eq!(
                t["datasource"]["uid"], "${DS_PROMETHEUS}",
                "panel {}: target datasource",
                p["title"]
            );
        }
    }
    assert!(exprs >= 10, "only {exprs} queries");
    // Every metric of SPEC §5.4 is on the dashboard.
    let unused: Vec<&String> = defined.iter().filter(|m| !used.contains(*m)).collect();
    assert!(unused.is_empty(), "metrics with no panel: {unused:?}");
}

#[test]
fn metric_ref_extraction() {
    assert_eq!(
        metric_refs("histogram_quantile(0.5, sum by (le) (rate(tiercast_send_latency_seconds_bucket{line=~\"$line\"}[5m])))"),
        vec!["tiercast_send_latency_seconds_bucket"]
    );
    assert_eq!(
        metric_refs("tiercast_tier_used / tiercast_tier_limit"),
        vec!["tiercast_tier_used", "tiercast_tier_limit"]
    );
}

/// The alert rules beside the dashboard name only exported metrics (a rename breaks this).
#[test]
fn alert_rules_use_only_defined_metrics() {
    let defined = defined_metrics();
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/grafana/alerts.yml"))
        .unwrap();
    let refs = metric_refs(&rules);
    assert!(refs.len() >= 4, "{refs:?}");
    for r in refs {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .fold(r.as_str(), |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(
            defined.contains(base),
            "alert rule uses {r}, which src/metrics.rs does not define"
        );
    }
}

/// Runs `promtool check metrics` (Debian package `prometheus`) on a scrape: every family must
/// have HELP text, and names and types must follow Prometheus' conventions. Without promtool
/// this is skipped on a developer's machine and fails under CI (`.ci/run` installs it).
fn promtool_check(text: &str) {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let present = Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !present {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is not installed (apt-get install prometheus)"
        );
        eprintln!("promtool check skipped: promtool is not installed (apt-get install prometheus)");
        return;
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A daemon's first scrape passes promtool, and the counters whose labels the config names
/// exist at zero before anything happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_metrics_and_known_counters_start_at_zero() {
    let db = fresh_db().await;
    let cfg = config_text(&db.url)
        .replace(LINE, "promtool-line")
        .replace(CAMPAIGN, "promtool-camp")
        .replace("metrics-pf", "promtool-pf");
    let (daemon, _) = start_daemon(&cfg, |_| {}).await;
    let text = reqwest::get(format!("{}/metrics", daemon.url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    daemon.shutdown().await;
    promtool_check(&text);

    let samples = parse(&text);
    let zero = |name: &str, labels: &[(&str, &str)]| {
        assert_eq!(
            value(&samples, name, labels),
            Some(0.0),
            "{name} {labels:?}\n{text}"
        );
    };
    let lc = [("line", "promtool-line"), ("campaign", "promtool-camp")];
    zero("tiercast_messages_sent_total", &lc);
    for class in [
        "retryable",
        "throttled",
        "permanent",
        "request",
        "campaign",
        "unknown",
    ] {
        zero(
            "tiercast_send_failure_classes_total",
            &[lc[0], lc[1], ("class", class)],
        );
    }
    zero(
        "tiercast_campaign_pauses_total",
        &[("campaign", "promtool-camp")],
    );
    for kind in ["answer", "free_text", "late"] {
        zero(
            "tiercast_replies_total",
            &[("campaign", "promtool-camp"), ("kind", kind)],
        );
    }
    for status in ["sent", "delivered", "read", "failed"] {
        zero(
            "tiercast_message_status_total",
            &[("line", "promtool-line"), ("status", status)],
        );
    }
    // Other tests of this process bump these: present is what matters here.
    for reason in [
        "bad_signature",
        "missing_signature",
        "invalid_json",
        "bad_secret",
    ] {
        assert!(
            value(
                &samples,
                "tiercast_webhook_rejected_total",
                &[("reason", reason)]
            )
            .is_some(),
            "webhook_rejected_total{{reason={reason}}} missing"
        );
    }
    assert!(value(
        &samples,
        "tiercast_webhook_events_total",
        &[("kind", "inbound")]
    )
    .is_some());
}
