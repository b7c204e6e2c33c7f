//! The SQLite file under a daemon: which file a URL names, whether it is still the file the
//! daemon opened, and the lock that makes a daemon the only one on it.
//!
//! An open SQLite connection keeps writing into a file that was deleted or renamed over: its
//! writes then reach no file anyone will open again. So the daemon remembers the device and
//! inode it opened and compares them with what the path names now.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU8, Ordering};

/// The file an `sqlite:` URL names; `None` for PostgreSQL and in-memory databases.
pub fn sqlite_file(url: &str) -> Option<PathBuf> {
    if !url.starts_with("sqlite:") || url.contains("mode=memory") {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(url).ok()?;
    let path = options.get_filename();
    // sqlx names its in-memory databases `file:sqlx-in-memory-N`.
    if path.as_os_str().is_empty() || path.to_string_lossy().starts_with("file:") {
        return None;
    }
    Some(path.to_path_buf())
}

/// How the database file went away under the daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FileLoss {
    #[error("deleted")]
    Deleted,
    #[error("replaced by another file")]
    Replaced,
}

const INTACT: u8 = 0;
const DELETED: u8 = 1;
const REPLACED: u8 = 2;

/// The identity (device, inode) of the SQLite file the store opened.
#[derive(Debug)]
pub struct DatabaseFile {
    path: PathBuf,
    device: u64,
    inode: u64,
    loss: AtomicU8,
}

impl DatabaseFile {
    /// Remembers what `path` names now.
    pub fn opened(path: &Path) -> std::io::Result<DatabaseFile> {
        let meta = std::fs::metadata(path)?;
        Ok(DatabaseFile {
            path: path.to_path_buf(),
            device: meta.dev(),
            inode: meta.ino(),
            loss: AtomicU8::new(INTACT),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Looks at the path now (one `stat`). A loss is final: the open connections still point
    /// at the old file, so even a file put back at the path is not the one being written.
    pub fn check(&self) -> Result<(), FileLoss> {
        if let Some(loss) = self.loss() {
            return Err(loss);
        }
        let loss = match std::fs::metadata(&self.path) {
            Ok(meta) if meta.dev() == self.device && meta.ino() == self.inode => return Ok(()),
            Ok(_) => FileLoss::Replaced,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FileLoss::Deleted,
            // Unreadable for another reason (permissions, I/O): not proof of a loss; the next
            // database call reports whatever is wrong.
            Err(_) => return Ok(()),
        };
        let code = match loss {
            FileLoss::Deleted => DELETED,
            FileLoss::Replaced => REPLACED,
        };
        let _ = self
            .loss
            .compare_exchange(INTACT, code, Ordering::SeqCst, Ordering::SeqCst);
        Err(self.loss().unwrap_or(loss))
    }

    /// The loss found by the last [`check`](Self::check), without looking again.
    pub fn loss(&self) -> Option<FileLoss> {
        match self.loss.load(Ordering::SeqCst) {
            DELETED => Some(FileLoss::Deleted),
            REPLACED => Some(FileLoss::Replaced),
            _ => None,
        }
    }
}

/// An exclusive `flock` on `FILE.lock` beside the database, held while the daemon runs. Its
/// holder is the only daemon on that file, so any lease in it was left by a daemon that has
/// exited. The kernel releases the lock when the process ends, however it ends.
#[derive(Debug)]
pub struct DaemonLock {
    _file: File,
    path: PathBuf,
}

/// A second daemon on one SQLite file.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another tiercast daemon{holder} runs on {database}: it holds {lock}; stop it first \
         (several daemons need PostgreSQL)"
    )]
    Held {
        database: String,
        lock: String,
        holder: String,
    },
    #[error("cannot lock {lock}: {source}")]
    Io {
        lock: String,
        source: std::io::Error,
    },
}

impl DaemonLock {
    /// Takes the lock for the database file `database`, without waiting.
    pub fn acquire(database: &Path) -> Result<DaemonLock, LockError> {
        let path = PathBuf::from(format!("{}.lock", database.display()));
        let io = |source| LockError::Io {
            lock: path.display().to_string(),
            source,
        };
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io)?;
        // SAFETY: flock(2) on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(e));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                database: database.display().to_string(),
                lock: path.display().to_string(),
                holder: if pid.is_empty() {
                    String::new()
                } else {
                    format!(" (pid {pid})")
                },
            });
        }
        // The holder's pid, for the message a second daemon prints.
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(DaemonLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_their_file_or_none() {
        assert_eq!(
            sqlite_file("sqlite:///var/lib/t.db"),
            Some(PathBuf::from("/var/lib/t.db"))
        );
        assert_eq!(
            sqlite_file("sqlite://t.db?mode=rwc"),
            Some(PathBuf::from("t.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("sqlite://t.db?mode=memory"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }

    #[test]
    fn a_deleted_or_replaced_file_is_a_loss_that_stays() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        std::fs::write(&db, b"x").unwrap();
        let file = DatabaseFile::opened(&db).unwrap();
        assert_eq!(file.check(), Ok(()));
        assert_eq!(file.loss(), None);

        let other = dir.path().join("other.db");
        std::fs::write(&other, b"y").unwrap();
        std::fs::rename(&other, &db).unwrap();
        assert_eq!(file.check(), Err(FileLoss::Replaced));

        let deleted = DatabaseFile::opened(&db).unwrap();
        std::fs::remove_file(&db).unwrap();
        assert_eq!(deleted.check(), Err(FileLoss::Deleted));
        // A file put back at the path is not the one the connections write to.
        std::fs::write(&db, b"z").unwrap();
        assert_eq!(deleted.check(), Err(FileLoss::Deleted));
        assert_eq!(deleted.loss(), Some(FileLoss::Deleted));
    }

    #[test]
    fn one_lock_holder_per_database_file() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("t.db");
        let first = DaemonLock::acquire(&db).unwrap();
        let err = DaemonLock::acquire(&db).unwrap_err().to_string();
        assert!(
            err.contains(&format!("(pid {})", std::process::id()))
                && err.contains("t.db.lock")
                && err.contains("another tiercast daemon"),
            "{err}"
        );
        drop(first);
        DaemonLock::acquire(&db).expect("free again once the holder let go");
    }
}
