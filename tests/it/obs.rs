//! Observability and template authoring with the real binary: `--log-format json` lines carry
//! the campaign, the contact id and the wamid (and no number or secret); `templates create`
//! submits a checked template to the simulator, which reviews it by webhook.

use crate::helpers::binary;
use crate::procs::{Proc, Rig, RigOptions};
use serde_json::{json, Value};
use std::process::Command;
use std::time::{Duration, Instant};

fn options(contacts: usize) -> RigOptions {
    RigOptions {
        contacts,
        throughput_mps: 80,
        reconcile_after: "30s",
        max_in_flight: 4,
        latency_ms: 0,
        ..RigOptions::default()
    }
}

/// Polls `check` every 50 ms until it holds (the deadline only guards against a hang).
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_campaign_contact_and_wamid_and_no_number_or_secret() {
    let rig = Rig::new(options(5)).await;
    let log = rig.dir.path().join("daemon-json.log");
    let args: Vec<String> = [
        "serve",
        "--config",
        &rig.config.display().to_string(),
        "--log-format",
        "json",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let daemon = Proc::spawn_env(
        "daemon",
        &args,
        &log,
        &[("RUST_LOG", "warn,tiercast=debug")],
    );
    rig.wait_http(&rig.daemon_url("/healthz"), &daemon).await;
    eventually("every contact pending", || {
        rig.status_json()["hopper"]["pending"].as_u64() == Some(5)
    })
    .await;
    rig.http
        .post(rig.sim_url("/sim/flush"))
        .send()
        .await
        .unwrap();
    // Statuses are applied before the webhook is answered: wait for the last one in the log.
    let read_lines = || -> Vec<Value> {
        std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            // stdout shares the file: its one line ("tiercast serving on …") is not a log line.
            .filter(|l| !l.starts_with("tiercast serving on "))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    };
    let message = |v: &Value| v["fields"]["message"].as_str().unwrap_or("").to_string();
    eventually("status lines for every send", || {
        read_lines()
            .iter()
            .filter(|l| message(l) == "status applied")
            .count()
            >= 5
    })
    .await;
    let lines = read_lines();

    let accepted: Vec<&Value> = lines
        .iter()
        .filter(|l| message(l) == "template accepted")
        .collect();
    assert_eq!(accepted.len(), 5, "one per send");
    let mut wamids = Vec::new();
    for l in &accepted {
        let wamid = l["fields"]["wamid"].as_str().unwrap();
        assert!(wamid.starts_with("wamid."), "{l}");
        let span = &l["span"];
        assert_eq!(span["name"], "send", "{l}");
        assert_eq!(span["campaign"], "c", "{l}");
        assert_eq!(span["line"], "main", "{l}");
        assert!(span["contact"].as_i64().is_some(), "contact id: {l}");
        assert_eq!(span["wamid"], wamid, "recorded on the span: {l}");
        wamids.push(wamid.to_string());
    }
    let statuses: Vec<&Value> = lines
        .iter()
        .filter(|l| message(l) == "status applied")
        .collect();
    for l in &statuses {
        let span = &l["span"];
        assert_eq!(span["name"], "status", "{l}");
        assert_eq!(span["campaign"], "c", "{l}");
        assert!(span["contact"].as_i64().is_some(), "{l}");
        assert!(
            wamids.iter().any(|w| span["wamid"] == w.as_str()),
            "a status names one of our wamids: {l}"
        );
    }

    // Numbers and secrets stay out of the logs.
    let text = std::fs::read_to_string(&log).unwrap();
    for phone in &rig.phones {
        assert!(
            !text.contains(phone.trim_start_matches('+')),
            "{phone} logged"
        );
    }
    for secret in [
        tiercast::lines::SIM_ACCESS_TOKEN,
        tiercast::lines::SIM_APP_SECRET,
    ] {
        assert!(!text.contains(secret), "a secret reached the log");
    }
    drop(daemon);
}

/// `tiercast templates list` (against the rig's database), the line naming `name`.
fn listed(rig: &Rig, name: &str) -> Option<String> {
    let out = rig.cli(&["templates", "list"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(name))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_create_is_pending_until_the_simulator_approves_or_rejects_it() {
    let mut rig = Rig::new(options(1)).await;

    // A file that breaks a rule is refused before any network call.
    let bad = rig.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        include_str!("../../examples/template.toml").replace("spring_offer", "Spring-Offer"),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["templates", "create"])
        .arg(&bad)
        .arg("--config")
        .arg(&rig.config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml: name: `Spring-Offer`: only lower-case letters"),
        "{err}"
    );
    let templates_url = rig.sim_url("/v23.0/sim-waba-main/message_templates");
    let sim_list = |name: &'static str| {
        let req = rig
            .http
            .get(&templates_url)
            .query(&[("name", name)])
            .bearer_auth(tiercast::lines::SIM_ACCESS_TOKEN);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(sim_list("spring_offer").await["data"], json!([]));

    // The example file is submitted: PENDING at the simulator and in `templates list`.
    let good = rig.dir.path().join("template.toml");
    std::fs::write(&good, include_str!("../../examples/template.toml")).unwrap();
    let out = rig.cli(&[
        "templates",
        "create",
        &good.display().to_string(),
        "--line",
        "main",
    ]);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("status PENDING"), "{said}");
    let at_sim = sim_list("spring_offer").await;
    assert_eq!(at_sim["data"][0]["status"], "PENDING", "{at_sim}");
    assert_eq!(at_sim["data"][0]["category"], "MARKETING", "{at_sim}");
    let row = listed(&rig, "spring_offer").expect("listed");
    assert!(row.contains("PENDING"), "{row}");

    // The simulator approves it and posts the status webhook to the daemon.
    let mut daemon = rig.start_daemon();
    rig.wait_http(&rig.daemon_url("/healthz"), &daemon).await;
    let review = |name: &str, status: &str, reason: Option<&str>| {
        let req = rig.http.post(rig.sim_url("/sim/templates/review")).json(
            &json!({ "name": name, "language": "en_US", "status": status, "reason": reason }),
        );
        async move { assert!(req.send().await.unwrap().status().is_success()) }
    };
    review("spring_offer", "APPROVED", None).await;
    eventually("APPROVED in templates list", || {
        listed(&rig, "spring_offer").is_some_and(|l| l.contains("APPROVED"))
    })
    .await;

    // A second one is rejected, with Meta's reason shown.
    let second = rig.dir.path().join("second.toml");
    std::fs::write(
        &second,
        include_str!("../../examples/template.toml").replace("spring_offer", "spring_offer_two"),
    )
    .unwrap();
    rig.cli(&["templates", "create", &second.display().to_string()]);
    review("spring_offer_two", "REJECTED", Some("INVALID_FORMAT")).await;
    eventually("REJECTED with its reason", || {
        listed(&rig, "spring_offer_two")
            .is_some_and(|l| l.contains("REJECTED") && l.contains("rejected: INVALID_FORMAT"))
    })
    .await;
    daemon.terminate();
    assert!(daemon.wait_exit(Duration::from_secs(20)).await.is_some());
}
