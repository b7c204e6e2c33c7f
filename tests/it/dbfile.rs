//! The SQLite file under the daemon (issue 27 §2, §6, §9), with the real binary: every commit
//! synced to disk before its send leaves (an injected fsync failure stops sending), a deleted
//! database stops the daemon rather than being recreated empty, and one daemon per file, which
//! therefore takes over the leases its killed predecessor left at once.

use crate::helpers::binary;
use crate::procs::{Proc, Rig, RigOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The daemon's default `lease_ttl`, which the rig's config keeps.
const LEASE_TTL: Duration = Duration::from_secs(15);

fn options(contacts: usize, throughput_mps: u32) -> RigOptions {
    RigOptions {
        contacts,
        throughput_mps,
        reconcile_after: "90s",
        ..RigOptions::default()
    }
}

/// Waits until the ledger holds more than `n` sends; returns how long that took.
async fn wait_ledger_above(rig: &Rig, daemon: &Proc, n: usize) -> Duration {
    let started = Instant::now();
    while rig.ledger().await.len() <= n {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no send past {n}:\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

/// Asserts the simulator accepts nothing more for a while: the daemon has stopped sending.
async fn assert_no_more_sends(rig: &Rig, daemon: &Proc, why: &str) -> usize {
    // Requests already on the wire finish; nothing new may start.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stopped_at = rig.ledger().await.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let later = rig.ledger().await.len();
    assert_eq!(
        later,
        stopped_at,
        "sends went on after {why}:\n{}",
        daemon.log_tail()
    );
    assert!(
        stopped_at < rig.phones.len(),
        "the campaign finished first; the test proves nothing"
    );
    stopped_at
}

/// The `serve` command line of the rig, plus `extra`.
fn serve_args(rig: &Rig, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        "serve".to_string(),
        "--config".into(),
        rig.config.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn db_path(rig: &Rig) -> PathBuf {
    rig.dir.path().join("crash.db")
}

/// Every connection the pool opens syncs each commit of the WAL to disk (FULL), not only at
/// checkpoints (NORMAL, which an OS crash or power cut undoes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pooled_sqlite_connection_syncs_each_commit() {
    use sqlx::Connection;
    let db = crate::helpers::fresh_db().await;
    for _ in 0..3 {
        let mut conn = db.store.pool().acquire().await.unwrap();
        let synchronous: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(synchronous, 2, "PRAGMA synchronous is FULL (2)");
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        assert_eq!(journal, "wal");
        // Out of the pool: the next acquire opens a new connection.
        conn.detach().close().await.unwrap();
    }
}

/// A shared object for `LD_PRELOAD` whose `fsync` and `fdatasync` fail with EIO while the
/// file named by `TIERCAST_TEST_FSYNC_FAILS` exists.
fn fsync_failure_shim(dir: &Path) -> PathBuf {
    let source = dir.join("fsync_shim.c");
    let shim = dir.join("fsync_shim.so");
    std::fs::write(
        &source,
        r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int failing(void) {
    const char *flag = getenv("TIERCAST_TEST_FSYNC_FAILS");
    return flag != NULL && access(flag, F_OK) == 0;
}

int fsync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    return real(fd);
}

int fdatasync(int fd) {
    if (failing()) { errno = EIO; return -1; }
    int (*real)(int) = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    return real(fd);
}
"#,
    )
    .unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&shim)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("a C compiler (cc) builds the fsync shim");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    shim
}

/// The disk stops confirming writes (every fsync fails, as on a failing or yanked device):
/// no attempt can be made durable, so nothing more is sent. With `synchronous = NORMAL` the
/// commits did not wait for the disk and sending went on into the page cache, to be lost by
/// an OS crash. Once fsync works again the campaign completes, each contact sent once.
///
/// A claim whose commit failed on fsync may still be in the WAL and come back when a new
/// connection reads it: its rows were never sent and wait `reconcile_after`, hence a short one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_send_leaves_while_its_attempt_cannot_be_synced_to_disk() {
    let mut rig = Rig::new(RigOptions {
        reconcile_after: "20s",
        // Below reconcile_after, as the config requires.
        request_timeout: "10s",
        ..options(300, 50)
    })
    .await;
    let shim = fsync_failure_shim(rig.dir.path());
    let flag = rig.dir.path().join("fsync-fails");
    let flag_env = flag.clone();
    let mut daemon = rig.start_daemon_with(move |cmd| {
        cmd.env("LD_PRELOAD", &shim)
            .env("TIERCAST_TEST_FSYNC_FAILS", &flag_env);
    });
    wait_ledger_above(&rig, &daemon, 30).await;

    std::fs::write(&flag, b"").unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while !rig.daemon_log().contains("disk I/O error") {
        assert!(daemon.is_running(), "{}", daemon.log_tail());
        assert!(
            Instant::now() < deadline,
            "no commit failed on fsync:\n{}",
            daemon.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped_at = assert_no_more_sends(&rig, &daemon, "fsync started failing").await;
    eprintln!(
        "fsync failing from {stopped_at} sends of {}",
        rig.phones.len()
    );

    std::fs::remove_file(&flag).unwrap();
    rig.wait_all_pending(&daemon, Duration::from_secs(120))
        .await;
    assert!(daemon.is_running(), "{}", daemon.log_tail());
    rig.http
        .post(rig.sim_url("/sim/flush"))
        .send()
        .await
        .unwrap();
    rig.assert_exactly_once().await;
    rig.assert_hopper_settled();
}

/// The database file is deleted under a running daemon: `/readyz` fails, nothing more is sent,
/// webhooks are refused (503, so they are retried) rather than written into the deleted file.
/// Restarted, `serve` refuses to create an empty database in its place (exit 2) and so do the
/// other commands; `serve --create-db` is how an operator asks for a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_database_stops_sending_and_is_not_recreated_by_a_restart() {
    let mut rig = Rig::new(options(300, 50)).await;
    let mut daemon = rig.start_daemon();
    rig.wait_http(&rig.daemon_url("/readyz"), &daemon).await;
    wait_ledger_above(&rig, &daemon, 30).await;

    let db = db_path(&rig);
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(format!("{}{suffix}", db.display())).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        let r = rig
            .http
            .get(rig.daemon_url("/readyz"))
            .send()
            .await
            .unwrap();
        if r.status() == 503 {
            break r.text().await.unwrap();
        }
        assert!(Instant::now() < deadline, "/readyz still {}", r.status());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        body.contains("database_file_lost")
            && body.contains("crash.db")
            && body.contains("deleted"),
        "{body}"
    );
    assert_no_more_sends(&rig, &daemon, "the database file was deleted").await;
    let webhook = crate::helpers::post_signed_webhook(&rig.daemon_url(""), "{}".into()).await;
    assert_eq!(
        webhook, 503,
        "a webhook must be retried, not applied to a deleted file"
    );
    assert!(
        rig.daemon_log().contains("database file lost"),
        "{}",
        daemon.log_tail()
    );
    daemon.kill9();

    let mut restarted = Proc::spawn(
        "daemon after the deletion",
        &serve_args(&rig, &[]),
        &rig.dir.path().join("restart.log"),
    );
    let status = restarted
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("serve on a missing database exits");
    let log = std::fs::read_to_string(&restarted.log).unwrap();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(
        log.contains(&format!("database file {} does not exist", db.display()))
            && log.contains("tiercast migrate")
            && log.contains("--create-db"),
        "{log}"
    );
    let status = Command::new(binary())
        .args(["campaign", "status", "c", "--config"])
        .arg(&rig.config)
        .output()
        .unwrap();
    assert_eq!(status.status.code(), Some(2));
    assert!(
        !db.exists(),
        "nothing may create an empty database silently"
    );

    let created = rig.start_daemon_with(|cmd| {
        cmd.arg("--create-db");
    });
    rig.wait_http(&rig.daemon_url("/readyz"), &created).await;
    assert!(db.exists());
}

/// A second daemon on the same SQLite file is refused, naming the holder; the first runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_one_sqlite_file_is_refused() {
    let mut rig = Rig::new(options(5, 50)).await;
    let mut first = rig.start_daemon();
    rig.wait_http(&rig.daemon_url("/readyz"), &first).await;

    let mut second = Proc::spawn(
        "second daemon",
        &serve_args(&rig, &["--listen", "127.0.0.1:0"]),
        &rig.dir.path().join("second.log"),
    );
    let status = second
        .wait_exit(Duration::from_secs(30))
        .await
        .expect("the second daemon exits");
    let log = std::fs::read_to_string(&second.log).unwrap();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "another tiercast daemon (pid {}) runs on {}",
            first.pid(),
            db_path(&rig).display()
        )) && log.contains("crash.db.lock"),
        "{log}"
    );
    assert!(first.is_running(), "{}", first.log_tail());
    rig.wait_http(&rig.daemon_url("/readyz"), &first).await;
}

/// A crash loop on SQLite: each daemon is killed (SIGKILL) as soon as it sends and restarted
/// at once. Holding the file's lock proves the predecessor is gone, so every restart sends
/// within well under `lease_ttl` instead of waiting out the dead daemon's lease; the campaign
/// still completes with one template per contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_loop_on_sqlite_sends_without_waiting_out_dead_leases() {
    let mut rig = Rig::new(RigOptions {
        reconcile_after: "15s",
        // Below reconcile_after, as the config requires.
        request_timeout: "10s",
        ..options(1000, 100)
    })
    .await;
    for restart in 0..4 {
        let sent = rig.ledger().await.len();
        let mut daemon = rig.start_daemon();
        let took = wait_ledger_above(&rig, &daemon, sent).await;
        assert!(
            took < LEASE_TTL / 2,
            "restart {restart} took {took:?} to send (lease_ttl {LEASE_TTL:?}):\n{}",
            daemon.log_tail()
        );
        daemon.kill9();
    }
    assert!(
        rig.daemon_log()
            .contains("took over the leases of exited daemons at once"),
        "{}",
        rig.daemon_log()
    );
    let daemon = rig.start_daemon();
    rig.wait_all_pending(&daemon, Duration::from_secs(120))
        .await;
    rig.http
        .post(rig.sim_url("/sim/flush"))
        .send()
        .await
        .unwrap();
    rig.assert_exactly_once().await;
    rig.assert_hopper_settled();
}
