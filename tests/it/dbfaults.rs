//! Database faults under a running campaign, with the real daemon against the simulator in its
//! own process: SQLite locked by another process past the daemon's busy timeout, an SQLite
//! disk that fills up (RLIMIT_FSIZE), PostgreSQL connections killed by the server. The daemon
//! logs the failure, keeps running, resumes once the database is back, and the simulator's
//! ledger shows every contact sent exactly once.
//!
//! A send the provider accepted while its record could not be written stays in flight; its
//! status webhooks (every message is read), which the daemon refuses with 503 while the
//! database fails and the simulator retries, settle it. `reconcile_after` is far longer than
//! the outage, so none of those is sent again; the ledger would show it if one were.

use crate::procs::{Proc, Rig, RigOptions};
use sqlx::Connection;
use std::time::{Duration, Instant};

/// Waits until the ledger holds `n` sends (the campaign is under way).
async fn wait_ledger(rig: &Rig, daemon: &Proc, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while rig.ledger().await.len() < n {
        assert!(Instant::now() < deadline, "{}", daemon.log_tail());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the daemon's log contains `needle` (the deadline is a safety net).
async fn wait_logged(rig: &Rig, daemon: &mut Proc, needle: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !rig.daemon_log().contains(needle) {
        assert!(
            daemon.is_running(),
            "the daemon died:\n{}",
            daemon.log_tail()
        );
        assert!(
            Instant::now() < deadline,
            "the daemon never logged {needle:?}:\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The end of every test: the campaign completes, each contact got one template, the hopper
/// adds up, nothing is left in flight or `sending`.
async fn finish(rig: &Rig, daemon: &mut Proc) {
    rig.wait_all_pending(daemon, Duration::from_secs(120)).await;
    assert!(daemon.is_running(), "{}", daemon.log_tail());
    rig.http
        .post(rig.sim_url("/sim/flush"))
        .send()
        .await
        .unwrap();
    rig.assert_exactly_once().await;
    rig.assert_hopper_settled();
    let store = tiercast::store::Store::open(&rig.db_url).await.unwrap();
    let attempts = store.attempt_status_counts().await.unwrap();
    store.close().await;
    assert!(!attempts.contains_key("sending"), "{attempts:?}");
    assert_eq!(
        attempts.get("accepted").copied(),
        Some(rig.phones.len() as i64),
        "{attempts:?}"
    );
}

/// Another process holds SQLite's write lock longer than the daemon's busy timeout (10 s in
/// production, 1 s here through `TIERCAST_SQLITE_BUSY_TIMEOUT_MS`): the daemon's writes fail
/// with "database is locked", it logs them and keeps going, and once the lock is released it
/// finishes the campaign.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_locked_past_the_busy_timeout_mid_campaign_is_survived() {
    let mut rig = Rig::new(RigOptions {
        throughput_mps: 50,
        reconcile_after: "90s",
        ..RigOptions::default()
    })
    .await;
    let mut daemon = rig.start_daemon_with(|cmd| {
        cmd.env("TIERCAST_SQLITE_BUSY_TIMEOUT_MS", "1000");
    });
    wait_ledger(&rig, &daemon, 30).await;

    let mut conn = sqlx::SqliteConnection::connect(&rig.db_url).await.unwrap();
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut conn)
        .await
        .unwrap();
    let locked_at = rig.ledger().await.len();
    wait_logged(
        &rig,
        &mut daemon,
        "database is locked",
        Duration::from_secs(40),
    )
    .await;
    // A webhook that must be written while the database cannot be (a message from a number
    // outside the campaign, so the campaign's rows stay as they are): 503, so Meta retries
    // it; the same body once the lock is gone: 200.
    let inbound = serde_json::json!({"object": "whatsapp_business_account", "entry": [{"id": "w",
        "changes": [{"field": "messages", "value": {"messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "1", "phone_number_id": "sim-main"},
            "contacts": [{"wa_id": "5511999990000", "profile": {"name": "X"}}],
            "messages": [{"from": "5511999990000", "id": "wamid.DURING_LOCK",
                "timestamp": chrono::Utc::now().timestamp().to_string(), "type": "text",
                "text": {"body": "are you there?"}}]}}]}]})
    .to_string();
    let url = rig.daemon_url("");
    assert_eq!(
        crate::helpers::post_signed_webhook(&url, inbound.clone()).await,
        503,
        "a webhook the daemon could not store was answered as taken"
    );
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    assert_eq!(
        crate::helpers::post_signed_webhook(&url, inbound).await,
        200
    );
    assert!(
        locked_at < rig.phones.len(),
        "the campaign finished before the lock; the test proves nothing"
    );

    finish(&rig, &mut daemon).await;
}

/// The disk fills up under the daemon: it runs with RLIMIT_FSIZE just above the database's
/// size (SIGXFSZ ignored, so a write past it fails with EFBIG instead of killing it), hits it
/// mid-campaign, logs it and keeps running; once the test lifts the limit (prlimit on the
/// running process) the campaign completes, nothing half-written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_disk_full_mid_campaign_is_survived() {
    use std::os::unix::process::CommandExt;
    let mut rig = Rig::new(RigOptions {
        throughput_mps: 50,
        reconcile_after: "90s",
        ..RigOptions::default()
    })
    .await;
    let size = |name: &str| {
        std::fs::metadata(rig.dir.path().join(name))
            .map(|m| m.len())
            .unwrap_or(0)
    };
    // Room for a few hundred KiB of WAL: some sends are recorded, then writes fail.
    let limit = size("crash.db").max(size("crash.db-wal")) + 256 * 1024;
    let mut daemon = rig.start_daemon_with(move |cmd| {
        // SAFETY: only async-signal-safe calls (signal, setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                let rl = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: libc::RLIM_INFINITY,
                };
                if libc::setrlimit(libc::RLIMIT_FSIZE, &rl) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    });
    let needles = ["database or disk is full", "disk I/O error"];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = rig.daemon_log();
        if needles.iter().any(|n| log.contains(n)) {
            break;
        }
        assert!(
            daemon.is_running(),
            "the daemon died:\n{}",
            daemon.log_tail()
        );
        assert!(
            Instant::now() < deadline,
            "the daemon never hit the file size limit of {limit} bytes:\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let full_at = rig.ledger().await.len();
    assert!(
        full_at < rig.phones.len(),
        "the campaign finished before the disk filled; the test proves nothing"
    );
    assert!(daemon.is_running(), "{}", daemon.log_tail());

    let lifted = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: prlimit(2) on our own child, with a valid rlimit and no old-value pointer.
    let rc = unsafe {
        libc::prlimit(
            daemon.pid() as libc::pid_t,
            libc::RLIMIT_FSIZE,
            &lifted,
            std::ptr::null_mut(),
        )
    };
    assert_eq!(rc, 0, "prlimit: {}", std::io::Error::last_os_error());
    eprintln!("disk full at {full_at} sends of {}", rig.phones.len());

    finish(&rig, &mut daemon).await;
}

/// The PostgreSQL server kills the daemon's connections again and again mid-campaign: it logs
/// the failures, the pool reconnects, the campaign completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_campaign_are_survived() {
    let db = crate::helpers::fresh_pg().await;
    db.store.close().await;
    let mut rig = Rig::new(RigOptions {
        throughput_mps: 50,
        reconcile_after: "90s",
        database_url: Some(db.url.clone()),
        ..RigOptions::default()
    })
    .await;
    let mut daemon = rig.start_daemon();
    wait_ledger(&rig, &daemon, 30).await;

    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let mut killed = 0;
    for _ in 0..12 {
        let done: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        killed += done.iter().filter(|k| **k).count();
        // Spaced so the pool reconnects in between and loses those connections again.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The pool replaces a connection killed while idle without a word, so the rounds above
    // may all have hit idle ones: kill one in the middle of a statement or transaction too,
    // which the daemon must see fail (and log).
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut killed_busy = 0;
    while killed_busy == 0 {
        assert!(
            Instant::now() < deadline,
            "no connection of the daemon was ever busy"
        );
        let done: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = current_database() AND pid <> pg_backend_pid() \
             AND state IN ('active', 'idle in transaction')",
        )
        .fetch_all(&mut admin)
        .await
        .unwrap();
        killed_busy = done.iter().filter(|k| **k).count();
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    killed += killed_busy;
    admin.close().await.unwrap();
    let after_kills = rig.ledger().await.len();
    assert!(killed > 0, "no connection was terminated");
    assert!(
        after_kills < rig.phones.len(),
        "the campaign finished during the kills; the test proves nothing"
    );
    assert!(daemon.is_running(), "{}", daemon.log_tail());
    eprintln!("{killed} connections terminated; {after_kills} sends by then");

    finish(&rig, &mut daemon).await;
    let log = rig.daemon_log();
    assert!(
        log.contains("terminating connection due to administrator command")
            || log.contains("error communicating with database"),
        "the daemon did not log the lost connections:\n{}",
        daemon.log_tail()
    );
}
