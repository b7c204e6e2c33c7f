//! What the host sees of tiercast: the systemd unit's directives, the Docker build context, and
//! the modes of the SQLite files that hold phone numbers, names and message texts.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_sqlite_database_and_its_wal_and_shm_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fresh.db");
    let store = tiercast::store::Store::open(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    // A write, so that the write-ahead log and its index exist.
    crate::helpers::import_csv(
        &store,
        &tiercast::clock::SystemClock,
        "l",
        "phone\n+5511987650001\n",
    )
    .await;
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", db.display());
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode & 0o077, 0, "{path} is {mode:o}: readable by others");
    }
    store.close().await;
}

/// The directives that keep the service's exposure low (`systemd-analyze security` below 3.0,
/// checked by `.ci/run` where systemd-analyze exists) and let it start on a clean host.
#[test]
fn the_systemd_unit_creates_its_user_and_state_and_is_hardened() {
    let unit = repo_file("packaging/tiercast.service");
    let directives: Vec<&str> = unit
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    for wanted in [
        "DynamicUser=yes",
        "StateDirectory=tiercast",
        "WorkingDirectory=/var/lib/tiercast",
        "UMask=0027",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "RestrictNamespaces=yes",
        "SystemCallFilter=@system-service",
        "SystemCallArchitectures=native",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(directives.contains(&wanted), "the unit lacks {wanted}");
    }
    // A fixed user needs creating by hand, which the install steps do not do.
    assert!(!directives.iter().any(|d| d.starts_with("User=")));
}

#[test]
fn the_docker_context_leaves_out_builds_and_demo_data() {
    let ignore = repo_file(".dockerignore");
    let entries: Vec<&str> = ignore.lines().map(str::trim).collect();
    for wanted in ["target", "tiercast-demo", ".git", "*.db*"] {
        assert!(
            entries.contains(&wanted),
            ".dockerignore does not exclude {wanted}"
        );
    }
}
