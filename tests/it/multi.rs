//! Several daemons on one PostgreSQL database (SPEC §6): each line is driven by one daemon at
//! a time through a lease, the lines spread evenly across the daemons; when a daemon dies its
//! lines are taken over after the lease expires; the simulator's ledger shows every one of
//! 20,000 contacts sent exactly once.

use crate::helpers::*;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tiercast::campaign;
use tiercast::clock::{SharedClock, SystemClock};
use tiercast::config::Config;
use tiercast::domain::CampaignCommand;
use tiercast::import::{self, BytesSource, ImportOptions};
use tiercast::serve::{self, ServeOptions};
use tiercast::sim::{FateMix, SimConfig, SimLine, Simulator};

const LINES: usize = 4;
const PER_LINE: usize = 5_000;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_daemons_share_the_lines_and_take_over_a_dead_one() {
    let db = fresh_pg().await;
    let webhook_port = free_port();
    let sim = Simulator::new(SimConfig {
        phone_numbers: (0..LINES)
            .map(|i| SimLine {
                phone_number_id: format!("sim-l{i}"),
                waba_id: format!("sim-waba-l{i}"),
                access_token: tiercast::lines::SIM_ACCESS_TOKEN.into(),
                app_secret: tiercast::lines::SIM_APP_SECRET.into(),
                throughput_mps: 0,
                display_phone_number: "15550000000".into(),
            })
            .collect(),
        webhook_url: Some(format!("http://127.0.0.1:{webhook_port}/webhooks/meta")),
        fates: FateMix::all_read(),
        ..SimConfig::default()
    });
    let sim_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let sim_addr = sim_listener.local_addr().unwrap();
    let serving = sim.clone();
    tokio::spawn(async move { serving.serve(sim_listener).await });

    let mut text = format!(
        "[server]\ndatabase_url = \"{}\"\nlease_ttl = \"2s\"\nreconcile_after = \"120s\"\n",
        db.url
    );
    for i in 0..LINES {
        text.push_str(&format!(
            "\n[[lines]]\nname = \"l{i}\"\nprovider = \"simulator\"\ntier = \"unlimited\"\nthroughput_mps = 400\napi_base = \"http://{sim_addr}/v23.0\"\n\
             \n[[campaigns]]\nname = \"c{i}\"\nline = \"l{i}\"\ntemplate = {{ name = \"renewal_reminder\", language = \"pt_BR\" }}\nlists = [\"list{i}\"]\n\
             variables = {{ \"1\" = \"name\", \"2\" = \"literal:gold\", \"3\" = \"literal:5%\" }}\n"
        ));
    }
    let config = Config::parse(&text, "multi.toml").unwrap();
    let clock: SharedClock = Arc::new(SystemClock);
    let start = |port: Option<u16>| {
        let config = config.clone();
        let clock = clock.clone();
        async move {
            let listen = format!("127.0.0.1:{}", port.unwrap_or(0)).parse().unwrap();
            serve::start(
                config,
                ServeOptions {
                    listen: Some(listen),
                    ..ServeOptions::new(clock)
                },
            )
            .await
            .unwrap()
        }
    };
    // The first daemon starts alone and takes every line; the webhooks go to the second.
    let first = start(None).await;
    for i in 0..LINES {
        let mut csv = String::from("phone,name\n");
        for k in 0..PER_LINE {
            csv.push_str(&format!("+55119{:08},P{k}\n", 50_000_000 + i * 100_000 + k));
        }
        let opts = ImportOptions {
            list: format!("list{i}"),
            default_country: None,
            opt_in: false,
            batch_size: 500,
            progress: false,
        };
        import::import(
            &first.store,
            &SystemClock,
            &BytesSource {
                name: "t".into(),
                bytes: csv.as_bytes(),
            },
            &opts,
        )
        .await
        .unwrap();
        campaign::command(
            &first.store,
            &SystemClock,
            &config,
            &format!("c{i}"),
            CampaignCommand::Start,
        )
        .await
        .unwrap();
    }
    let second = start(Some(webhook_port)).await;
    let third = start(None).await;

    // The first daemon took all four lines; with three daemons alive it hands two over, so no
    // daemon drives more than ⌈4 / 3⌉ = 2.
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let held: Vec<(String, i64)> = sqlx::query_as(
            "SELECT holder, COUNT(*) FROM leases WHERE name LIKE 'line:%' GROUP BY holder",
        )
        .fetch_all(second.store.pool())
        .await
        .unwrap();
        let total: i64 = held.iter().map(|(_, n)| n).sum();
        if total == LINES as i64 && held.iter().all(|(_, n)| *n <= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "lines not spread: {held:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Kill the first daemon mid-run, without a goodbye: its tasks are aborted, its leases
    // stay until they expire.
    while sim.ledger_len() < 3_000 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The first daemon is killed with the lines it drives then (two, unless a lease changed
    // hands under load).
    let first_holder = first.dispatcher.holder().to_string();
    let killed_at = Instant::now();
    drop(first);

    // Its lines are driven again within the lease time (2 s) plus a few seconds.
    loop {
        let now = chrono::Utc::now().timestamp_millis();
        let others: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM leases WHERE name LIKE 'line:%' AND holder <> $1 AND expires_at >= $2",
        )
        .bind(&first_holder)
        .bind(now)
        .fetch_one(second.store.pool())
        .await
        .unwrap();
        if others == LINES as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "lines not taken over");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took_over = killed_at.elapsed();
    assert!(
        took_over < Duration::from_secs(7),
        "takeover took {took_over:?}"
    );

    let store = second.store.clone();
    loop {
        let mut sent = 0;
        for i in 0..LINES {
            let s = campaign::status(
                &store,
                &SystemClock,
                &config,
                config.campaign(&format!("c{i}")).unwrap(),
            )
            .await
            .unwrap();
            sent += s.sent;
        }
        if sent as usize == LINES * PER_LINE {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {sent} sent; lines not taken over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sim.flush_webhooks().await;
    let ledger = sim.ledger();
    let mut to: Vec<&str> = ledger.iter().map(|e| e.to.as_str()).collect();
    to.sort();
    let total = to.len();
    to.dedup();
    assert_eq!(to.len(), LINES * PER_LINE, "every contact reached");
    // A send cut off by the kill (accepted by the simulator, not yet recorded) is settled by
    // its status webhook, never sent twice.
    assert_eq!(total, LINES * PER_LINE, "no contact twice");
    second.shutdown().await;
    third.shutdown().await;
}
