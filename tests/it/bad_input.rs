//! Bad webhook input against the real app (SPEC §5.3, §7): the daemon on port 0 with its
//! in-process simulator. Truncated, too deep, unsigned or wrongly signed bodies are refused
//! and store nothing; huge, unknown-shaped and replayed bodies are answered 200, and a replay
//! changes nothing.

use crate::helpers::*;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiercast::clock::{SharedClock, SystemClock};
use tiercast::config::Config;
use tiercast::domain::CampaignCommand;
use tiercast::import::{self, BytesSource, ImportOptions};
use tiercast::lines::SIM_APP_SECRET;
use tiercast::serve::{self, Daemon, ServeOptions};
use tiercast::sim::FateMix;

/// A daemon whose one contact was sent a template the simulator reports nothing about, so
/// every status the test posts is the only news of it. Returns the daemon and the wamid.
async fn daemon_with_one_sent_message(db: &TestDb) -> (Daemon, String) {
    let text = main_line_config(
        &db.url,
        r#"tier = "unlimited""#,
        r#"
[[campaigns]]
name = "c"
line = "main"
template = { name = "renewal_reminder", language = "pt_BR" }
lists = ["l"]
variables = { "1" = "name", "2" = "literal:gold", "3" = "literal:30%" }
"#,
    );
    let config = Config::parse(&text, "test.toml").unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let daemon = serve::start(
        config.clone(),
        ServeOptions {
            listen: Some("127.0.0.1:0".parse().unwrap()),
            simulator: Some(Box::new(|sim| {
                sim.fates = FateMix {
                    delivered: 0,
                    read: 0,
                    undeliverable_131026: 0,
                    marketing_cap_131049: 0,
                    opted_out_131050: 0,
                    no_webhook: 1,
                    wa_id_differs: 0.0,
                };
            })),
            ..ServeOptions::new(clock)
        },
    )
    .await
    .unwrap();
    import::import(
        &daemon.store,
        &SystemClock,
        &BytesSource {
            name: "t.csv".into(),
            bytes: b"phone,name\n+5511970000001,Ana\n",
        },
        &ImportOptions {
            list: "l".into(),
            default_country: None,
            opt_in: false,
            batch_size: 10,
            progress: false,
        },
    )
    .await
    .unwrap();
    tiercast::campaign::command(
        &daemon.store,
        &SystemClock,
        &config,
        "c",
        CampaignCommand::Start,
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let wamid = loop {
        let wamid: Option<String> = sqlx::query_scalar("SELECT wamid FROM hopper")
            .fetch_one(daemon.store.pool())
            .await
            .unwrap();
        if let Some(w) = wamid {
            break w;
        }
        assert!(Instant::now() < deadline, "the template was never sent");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    (daemon, wamid)
}

/// Everything a status could change on the hopper row, as text.
async fn row_snapshot(daemon: &Daemon) -> String {
    let row: (String, Option<String>, Option<i64>, Option<i64>, i64, i64) = sqlx::query_as(
        "SELECT state, message_status, delivered_at, read_at, attempts, updated_at FROM hopper",
    )
    .fetch_one(daemon.store.pool())
    .await
    .unwrap();
    format!("{row:?}")
}

/// Meta's envelope around one `messages` change whose value holds `extra`'s keys.
fn envelope(pnid: &str, extra: Value) -> Value {
    let mut value = json!({
        "messaging_product": "whatsapp",
        "metadata": { "display_phone_number": "15550000000", "phone_number_id": pnid },
    });
    for (k, v) in extra.as_object().unwrap() {
        value[k] = v.clone();
    }
    json!({ "object": "whatsapp_business_account", "entry": [{ "id": "sim-waba-main", "changes": [
        { "field": "messages", "value": value }
    ]}]})
}

fn status(wamid: &str, status: &str) -> Value {
    json!({ "id": wamid, "status": status, "timestamp": "1795000000", "recipient_id": "5511970000001" })
}

struct Poster {
    client: reqwest::Client,
    url: String,
}

impl Poster {
    fn new(daemon: &Daemon) -> Poster {
        Poster {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap(),
            url: format!("{}/webhooks/meta", daemon.url()),
        }
    }

    /// Posts `body` with the given `X-Hub-Signature-256` (None: no header); returns the status.
    async fn post_raw(&self, body: &[u8], signature: Option<String>) -> (u16, String) {
        let mut req = self
            .client
            .post(&self.url)
            .header("content-type", "application/json")
            .body(body.to_vec());
        if let Some(sig) = signature {
            req = req.header("X-Hub-Signature-256", sig);
        }
        let r = req.send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// Posts `body` signed with the line's app secret.
    async fn post(&self, body: &[u8]) -> (u16, String) {
        let sig = tiercast::webhook::sign(SIM_APP_SECRET.as_bytes(), body);
        self.post_raw(body, Some(sig)).await
    }
}

async fn healthy(daemon: &Daemon) {
    let r = reqwest::get(format!("{}/healthz", daemon.url()))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_bodies_store_nothing_and_replays_change_nothing() {
    let db = fresh_db().await;
    let (daemon, wamid) = daemon_with_one_sent_message(&db).await;
    let pnid = daemon.config.lines[0].phone_number_id.clone();
    let poster = Poster::new(&daemon);
    let before = row_snapshot(&daemon).await;
    assert!(before.contains("\"accepted\""), "{before}");

    let read = serde_json::to_vec(&envelope(
        &pnid,
        json!({ "statuses": [status(&wamid, "read")] }),
    ))
    .unwrap();

    // Truncated JSON, rightly signed: 400 with the reason, nothing stored.
    for cut in [1, read.len() / 3, read.len() / 2, read.len() - 1] {
        let (code, text) = poster.post(&read[..cut]).await;
        assert_eq!(code, 400, "cut at {cut}: {text}");
        assert!(text.contains("malformed"), "{text}");
    }
    // Nested far deeper than any parser stack allows, rightly signed: 400, and still up.
    let depth = 200_000;
    let mut deep = String::with_capacity(depth * 2 + 200);
    deep.push_str(r#"{"object":"whatsapp_business_account","entry":[{"id":"w","changes":[{"field":"messages","value":{"junk":"#);
    deep.extend(std::iter::repeat_n('[', depth));
    deep.extend(std::iter::repeat_n(']', depth));
    deep.push_str("}}]}]}");
    let (code, text) = poster.post(deep.as_bytes()).await;
    assert_eq!(code, 400, "{text}");
    assert!(text.contains("deep"), "{text}");
    healthy(&daemon).await;
    // Missing, wrong-secret and garbage signatures: 401.
    assert_eq!(poster.post_raw(&read, None).await.0, 401);
    let wrong = tiercast::webhook::sign(b"not-the-secret", &read);
    assert_eq!(poster.post_raw(&read, Some(wrong)).await.0, 401);
    assert_eq!(
        poster.post_raw(&read, Some("sha256=00".into())).await.0,
        401
    );
    // The signature of another body does not carry over.
    let other = tiercast::webhook::sign(SIM_APP_SECRET.as_bytes(), b"{}");
    assert_eq!(poster.post_raw(&read, Some(other)).await.0, 401);
    assert_eq!(
        row_snapshot(&daemon).await,
        before,
        "a refused body changed the row"
    );

    // The whole body, rightly signed, is applied ...
    assert_eq!(poster.post(&read).await.0, 200);
    let applied = row_snapshot(&daemon).await;
    assert!(applied.contains("\"read\""), "{applied}");
    // ... and its replays, and older statuses arriving late, change nothing.
    for _ in 0..3 {
        assert_eq!(poster.post(&read).await.0, 200);
    }
    let late = serde_json::to_vec(&envelope(
        &pnid,
        json!({ "statuses": [status(&wamid, "delivered"), status(&wamid, "sent")] }),
    ))
    .unwrap();
    assert_eq!(poster.post(&late).await.0, 200);
    assert_eq!(row_snapshot(&daemon).await, applied);
    daemon.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_and_unknown_shaped_bodies_are_answered_200() {
    let db = fresh_db().await;
    let (daemon, wamid) = daemon_with_one_sent_message(&db).await;
    let pnid = daemon.config.lines[0].phone_number_id.clone();
    let poster = Poster::new(&daemon);
    let before = row_snapshot(&daemon).await;

    // 3 MB, Meta's largest: a thousand statuses of messages that are not ours, each with a
    // field nobody knows carrying 3 kB.
    let pad = "x".repeat(3000);
    let statuses: Vec<Value> = (0..1000)
        .map(|i| {
            let mut s = status(&format!("wamid.UNKNOWN{i:06}"), "delivered");
            s["future_field"] = json!({ "pad": pad });
            s
        })
        .collect();
    let body = serde_json::to_vec(&envelope(&pnid, json!({ "statuses": statuses }))).unwrap();
    assert!(body.len() >= 3_000_000, "{} bytes", body.len());
    let (code, text) = poster.post(&body).await;
    assert_eq!(code, 200, "{text}");

    // Unknown fields, unknown message and status types, unknown change fields, a number
    // where a string belongs, batched entries: all 200.
    let odd = json!({
        "object": "whatsapp_business_account",
        "brand_new_top_level": [1, 2, 3],
        "entry": [
            { "id": "w1", "time": 1795000000, "changes": [
                { "field": "a_field_from_2030", "value": { "anything": { "goes": true } } },
                { "field": "messages", "value": {
                    "messaging_product": "whatsapp",
                    "metadata": { "display_phone_number": "15550000000", "phone_number_id": pnid },
                    "contacts": [{ "profile": { "name": "Zed" }, "wa_id": "5511970009999" }],
                    "messages": [
                        { "from": "5511970009999", "id": "wamid.IN1", "timestamp": "1795000000",
                          "type": "hologram", "hologram": { "depth": 3 } },
                        { "from": "5511970009999", "id": "wamid.IN2", "timestamp": 1795000001,
                          "type": "text", "text": { "body": "hi", "sentiment": "unknown" } }
                    ],
                    "statuses": [
                        { "id": wamid, "status": "teleported", "timestamp": "1795000000", "recipient_id": "5511970000001" },
                        { "id": "wamid.NOT_OURS", "status": "delivered", "timestamp": 1795000000,
                          "recipient_id": 5511970000001_u64, "pricing": { "model": "FUTURE" } }
                    ]
                }}
            ]},
            { "id": "w2", "changes": [] },
            { "id": "w3" }
        ]
    });
    let (code, text) = poster.post(&serde_json::to_vec(&odd).unwrap()).await;
    assert_eq!(code, 200, "{text}");
    // An unknown status is no news of our message.
    assert_eq!(row_snapshot(&daemon).await, before);
    healthy(&daemon).await;
    daemon.shutdown().await;
}

const META_TOKEN_ENV: &str = "TIERCAST_IT_LINE_SECRETS_TOKEN";
const META_SECRET_ENV: &str = "TIERCAST_IT_LINE_SECRETS_META";
const SIM_SECRET_ENV: &str = "TIERCAST_IT_LINE_SECRETS_SIM";
const META_PNID: &str = "106540352242922";

fn meta_and_simulator_config(url: &str, simulator_extra: &str) -> String {
    format!(
        r#"
[server]
database_url = "{url}"

[[lines]]
name = "meta"
provider = "meta"
tier = "unlimited"
phone_number_id = "{META_PNID}"
waba_id = "102290129340398"
api_base = "http://127.0.0.1:9/v23.0"
access_token_env = "{META_TOKEN_ENV}"
app_secret_env = "{META_SECRET_ENV}"

[[lines]]
name = "sim"
provider = "simulator"
tier = "unlimited"
{simulator_extra}
"#
    )
}

/// An inbound STOP from `phone` to the number `pnid`.
fn inbound_stop(pnid: &str, phone: &str) -> Value {
    json!({ "object": "whatsapp_business_account", "entry": [{ "id": "102290129340398", "changes": [{
        "field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550001111", "phone_number_id": pnid },
            "contacts": [{ "profile": { "name": "X" }, "wa_id": phone }],
            "messages": [{ "from": phone, "id": format!("wamid.stop-{pnid}-{phone}"),
                "timestamp": "1795000000", "type": "text", "text": { "body": "STOP" } }] } }] }] })
}

async fn post_meta(daemon: &Daemon, secret: &str, body: &Value) -> u16 {
    let body = body.to_string();
    reqwest::Client::new()
        .post(format!("{}/webhooks/meta", daemon.url()))
        .header(
            "X-Hub-Signature-256",
            tiercast::webhook::sign(secret.as_bytes(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn count(daemon: &Daemon, table: &str) -> i64 {
    sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(daemon.store.pool())
        .await
        .unwrap()
}

/// Each event is checked against the app secret of the line it names: the public simulator
/// secret never passes for a Meta line (a simulator line without a secret of its own beside a
/// real line is refused at start), nor does another line's secret, nor a body mixing lines.
async fn webhooks_are_checked_against_the_secret_of_the_line_they_name(db: TestDb) {
    std::env::set_var(META_TOKEN_ENV, "meta-token");
    std::env::set_var(META_SECRET_ENV, "meta-app-secret");
    std::env::set_var(SIM_SECRET_ENV, "sim-line-own-secret");
    let options = || ServeOptions {
        listen: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeOptions::new(Arc::new(SystemClock) as SharedClock)
    };
    let refused = serve::start(
        Config::parse(&meta_and_simulator_config(&db.url, ""), "t.toml").unwrap(),
        options(),
    )
    .await
    .err()
    .expect("a simulator line on the public secret beside a meta line is refused");
    let message = format!("{refused:#}");
    assert!(
        message.contains("t.toml: lines[1].app_secret_env:"),
        "{message}"
    );
    assert!(message.contains(SIM_APP_SECRET), "{message}");

    let config =
        meta_and_simulator_config(&db.url, &format!(r#"app_secret_env = "{SIM_SECRET_ENV}""#));
    let daemon = serve::start(Config::parse(&config, "t.toml").unwrap(), options())
        .await
        .unwrap();
    let sim_pnid = daemon.config.line("sim").unwrap().phone_number_id.clone();
    let stop = inbound_stop(META_PNID, "5511970000009");
    // Forged with the public constant, or with the other line's own secret: 401.
    assert_eq!(post_meta(&daemon, SIM_APP_SECRET, &stop).await, 401);
    assert_eq!(post_meta(&daemon, "sim-line-own-secret", &stop).await, 401);
    // A body mixing the two lines, signed by one app: refused whole.
    let mut mixed = inbound_stop(&sim_pnid, "5511970000008");
    let meta_entry = stop["entry"][0].clone();
    mixed["entry"].as_array_mut().unwrap().push(meta_entry);
    assert_eq!(post_meta(&daemon, "sim-line-own-secret", &mixed).await, 401);
    assert_eq!(post_meta(&daemon, "meta-app-secret", &mixed).await, 401);
    assert_eq!(
        (
            count(&daemon, "opt_outs").await,
            count(&daemon, "messages").await
        ),
        (0, 0),
        "nothing stored"
    );

    // Each line's own app: accepted and acted on.
    assert_eq!(post_meta(&daemon, "meta-app-secret", &stop).await, 200);
    let sim_stop = inbound_stop(&sim_pnid, "5511970000008");
    assert_eq!(
        post_meta(&daemon, "sim-line-own-secret", &sim_stop).await,
        200
    );
    assert_eq!(count(&daemon, "opt_outs").await, 2);
    // The public constant is no key at all here.
    assert_eq!(post_meta(&daemon, SIM_APP_SECRET, &sim_stop).await, 401);
    daemon.shutdown().await;
}
crate::both_backends!(webhooks_are_checked_against_the_secret_of_the_line_they_name);

/// Slow clients (slowloris): more connections than the daemon's open-file limit, each sending
/// a request line and then one header line now and then, never finishing. Connections are
/// capped below the limit and cut after the client timeout, so the database and the provider
/// keep their descriptors: sending goes on, and `/healthz` answers (at worst after waiting its
/// turn behind the capped connections).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_neither_stop_sending_nor_health_checks() {
    use crate::procs::{Rig, RigOptions};
    use std::os::unix::process::CommandExt;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tokio::io::AsyncWriteExt;
    const FILES: libc::rlim_t = 1024;
    const SLOW_CLIENTS: usize = 1100;
    let mut rig = Rig::new(RigOptions {
        contacts: 4000,
        throughput_mps: 100,
        ..RigOptions::default()
    })
    .await;
    let daemon = rig.start_daemon_with(|cmd| {
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: FILES,
                    rlim_max: FILES,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    rig.wait_http(&rig.daemon_url("/healthz"), &daemon).await;
    let addr = format!("127.0.0.1:{}", rig.daemon_port);
    let stop = Arc::new(AtomicBool::new(false));
    let mut clients = Vec::new();
    for i in 0..SLOW_CLIENTS {
        let (addr, stop) = (addr.clone(), stop.clone());
        clients.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut conn) = tokio::net::TcpStream::connect(&addr).await else {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let mut line = format!("GET /healthz?slow={i} HTTP/1.1\r\n");
                while !stop.load(Ordering::Relaxed) && conn.write_all(line.as_bytes()).await.is_ok()
                {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    line = format!("X-Slow-{i}: still here\r\n");
                }
            }
        }));
    }
    // Let the slow clients fill every slot the daemon has.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let sent_before = rig.ledger().await.len();
    let attack = Instant::now();
    // A new connection each time, queued like any client's.
    let health = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(25))
        .build()
        .unwrap();
    let mut slowest = Duration::ZERO;
    while attack.elapsed() < Duration::from_secs(20) {
        let asked = Instant::now();
        let resp = health.get(rig.daemon_url("/healthz")).send().await;
        assert!(
            resp.as_ref().is_ok_and(|r| r.status().is_success()),
            "/healthz during the attack: {resp:?}\n{}",
            daemon.log_tail()
        );
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Slots held by slow clients turn over every BUSY_CLIENT_TIMEOUT once nearly all are taken.
    assert!(
        slowest < Duration::from_secs(15),
        "slowest /healthz {slowest:?}"
    );
    let sent_during = rig.ledger().await.len() - sent_before;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.abort();
    }
    let seconds = attack.elapsed().as_secs_f64();
    eprintln!("slow clients: {sent_during} sent in {seconds:.0} s; slowest /healthz {slowest:?}");
    // 100 msg/s when nothing is in the way; half of that proves sending went on.
    assert!(
        sent_during as f64 > 50.0 * seconds,
        "only {sent_during} sent in {seconds:.0} s\n{}",
        daemon.log_tail()
    );
    assert!(
        !rig.daemon_log().contains("Too many open files"),
        "{}",
        daemon.log_tail()
    );
}

/// An open-file limit that leaves too few client connections after the database and the
/// providers stops `serve` at start, saying what to raise it to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_refuses_an_open_file_limit_too_low_to_serve_clients() {
    use std::os::unix::process::CommandExt;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("t.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://{}\"\n\n[[lines]]\nname = \"main\"\nprovider = \"simulator\"\napi_base = \"http://127.0.0.1:9/v23.0\"\nmax_in_flight = 16\n",
            dir.path().join("t.db").display()
        ),
    )
    .unwrap();
    let run = |command: &str| {
        let mut cmd = std::process::Command::new(binary());
        cmd.args([command, "--config", config.to_str().unwrap()])
            .env("RUST_LOG", "warn");
        // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                let limit = libc::rlimit {
                    rlim_cur: 200,
                    rlim_max: 200,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    };
    assert!(run("migrate").status.success());
    let out = run("serve");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    // 256 kept for the daemon itself, 16 for the database, 16 for the line's requests.
    assert!(
        stderr.contains("the open-file limit is 200")
            && stderr
                .contains("raise it (LimitNOFILE in the systemd unit, ulimit -n) to at least 320"),
        "{stderr}"
    );
}
