//! Crash safety with the real binary (SPEC §2 rule 7): the daemon is killed with SIGKILL at
//! random moments mid-campaign and restarted, against the simulator in its own process; and
//! it stops gracefully on SIGTERM. The simulator's ledger is the judge: every contact gets
//! exactly one template.
//!
//! Every message is read (`--all-read`), so every accepted send gets status webhooks naming
//! its attempt: a kill between the provider accepting and the daemon recording it is settled
//! by those webhooks, which the simulator retries (every 250 ms) until the restarted daemon
//! takes them. `reconcile_after` must outlast a restart plus that retry; rows claimed but
//! never sent are sent again once it elapses.

use crate::procs::{Rig, RigOptions};
use rand::{Rng, SeedableRng};
use std::time::{Duration, Instant};
use tiercast::domain::HopperState;
use tiercast::store::Store;

/// Polls the database until every contact is pending (accepted by the provider) and nothing is
/// in flight. The deadline is a safety net, not a timing assertion.
async fn wait_all_pending(rig: &Rig, daemon: &crate::procs::Proc, limit: Duration) {
    let store = Store::open(&rig.db_url).await.unwrap();
    let id = store.ensure_campaign("c", 0).await.unwrap().id;
    let n = rig.phones.len() as u64;
    let deadline = Instant::now() + limit;
    loop {
        let counts = store.hopper_counts(id).await.unwrap();
        let inflight = store.inflight_rows().await.unwrap();
        if counts.state(HopperState::Pending) == n && inflight == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every contact was sent in time: {counts:?}, {inflight} in flight\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_campaign_sends_every_contact_exactly_once() {
    let started = Instant::now();
    let contacts = 3000;
    let mut rig = Rig::new(RigOptions {
        contacts,
        // Slow enough that the campaign spans every kill.
        throughput_mps: 300,
        reconcile_after: "6s",
    })
    .await;
    let seed: u64 = rand::random();
    eprintln!("kill -9 test seed {seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let kills = 5;
    let mut killed_at_ledger = Vec::new();
    for _ in 0..kills {
        let mut daemon = rig.start_daemon();
        rig.wait_http(&rig.daemon_url("/healthz"), &daemon).await;
        let wait = rng.gen_range(300..1500);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        daemon.kill9();
        killed_at_ledger.push(rig.ledger().await.len());
    }
    let last_kill = started.elapsed();
    assert!(
        killed_at_ledger.last().copied().unwrap_or(0) < contacts,
        "the campaign finished before the last kill; the test proves nothing: {killed_at_ledger:?}"
    );

    let daemon = rig.start_daemon();
    wait_all_pending(&rig, &daemon, Duration::from_secs(60)).await;
    // Statuses still queued in the simulator change nothing, but let them land first.
    rig.http
        .post(rig.sim_url("/sim/flush"))
        .send()
        .await
        .unwrap();

    rig.assert_exactly_once().await;
    let status = rig.assert_hopper_settled();
    let store = Store::open(&rig.db_url).await.unwrap();
    let attempts = store.attempt_status_counts().await.unwrap();
    store.close().await;
    assert_eq!(
        attempts.get("accepted").copied(),
        Some(contacts as i64),
        "one accepted attempt per contact: {attempts:?}"
    );
    assert!(!attempts.contains_key("sending"), "{attempts:?}");
    let stats = rig.sim_stats().await;
    eprintln!(
        "kill -9 test: ledger at each kill {killed_at_ledger:?}; last kill at {last_kill:?}, \
         done at {:?}; attempts {attempts:?}; sim stats {stats}; status {status}",
        started.elapsed()
    );
    drop(daemon);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_sends_in_flight_and_exits_0() {
    let contacts = 1500;
    let mut rig = Rig::new(RigOptions {
        contacts,
        throughput_mps: 300,
        // Long: a graceful stop must leave nothing for reconciliation to clean up.
        reconcile_after: "10m",
    })
    .await;
    let mut daemon = rig.start_daemon();
    // Mid-campaign: some sent, most not.
    let deadline = Instant::now() + Duration::from_secs(60);
    while rig.ledger().await.len() < 200 {
        assert!(Instant::now() < deadline, "{}", daemon.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    daemon.terminate();
    // shutdown_grace is 10 s; the rest is a safety net for a loaded machine.
    let exit = daemon.wait_exit(Duration::from_secs(40)).await;
    let exit = exit.unwrap_or_else(|| panic!("no exit after SIGTERM:\n{}", daemon.log_tail()));
    assert_eq!(exit.code(), Some(0), "{}", daemon.log_tail());

    let sent = rig.ledger().await.len();
    assert!(sent < contacts, "the campaign finished before SIGTERM");
    let store = Store::open(&rig.db_url).await.unwrap();
    let attempts = store.attempt_status_counts().await.unwrap();
    assert!(
        !attempts.contains_key("sending"),
        "attempts left in flight: {attempts:?}"
    );
    assert_eq!(store.inflight_rows().await.unwrap(), 0);
    // Every send the provider accepted was recorded before the exit.
    assert_eq!(
        attempts.get("accepted").copied().unwrap_or(0),
        sent as i64,
        "{attempts:?}"
    );
    store.close().await;

    // A restart resumes where the database says, with nothing to reconcile.
    let daemon = rig.start_daemon();
    wait_all_pending(&rig, &daemon, Duration::from_secs(60)).await;
    rig.assert_exactly_once().await;
    rig.assert_hopper_settled();
}
