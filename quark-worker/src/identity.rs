//! A worker's identity: an id that stays the same when its process restarts, so that the restarted
//! process takes back at once the leases the dead one held, and that no two live processes on one
//! host can share.
//!
//! Each id is held through an exclusive lock on a file, `<lock dir>/<database>/<id>.lock`. The OS
//! releases the lock when the process dies, however it dies, so holding it proves that no other
//! process on this host (in this container: the lock directory is in its file system) serves the
//! id. The store trusts that proof: a registration of the id from the same scope is a dead
//! process's, and its leases are taken back at once. A registration from another scope is
//! trusted only once its heartbeats have stopped (two of its intervals).
//!
//! Without an explicit id, a worker takes `<host>-<n>` for the smallest `n` whose lock is free:
//! two workers on one host get `<host>-0` and `<host>-1`, and either of them, killed and
//! restarted, finds its own number free again and comes back as itself.

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

use quark_history::Incarnation;

use crate::builder::BuildError;

/// How many numbered ids a host may run before the search gives up: far more than the workers
/// one host serves a database with.
const MAX_SLOTS: u32 = 4096;

/// An id held by this process, and this run of it.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) id: String,
    pub(crate) run: Incarnation,
    /// Held for the process's life (or the worker's); dropping it frees the id.
    _lock: File,
}

/// Where lock files live unless configured: the system's temporary directory.
pub(crate) fn default_lock_dir() -> PathBuf {
    std::env::temp_dir().join("quark-workers")
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into())
}

/// A file name for `text`: itself if it is tame, else its tame characters and a hash of it.
fn file_name(text: &str) -> String {
    let tame: String = text
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    if tame == text {
        tame
    } else {
        let hash = blake3::hash(text.as_bytes()).to_hex();
        format!("{tame}-{}", &hash[..16])
    }
}

/// Takes `id` (or the first free numbered id) for the database at `location`.
pub(crate) fn acquire(
    id: Option<&str>,
    lock_dir: &Path,
    location: &str,
    heartbeat: Duration,
) -> Result<Identity, BuildError> {
    let dir = lock_dir.join(file_name(location));
    std::fs::create_dir_all(&dir).map_err(|e| BuildError::Lock {
        path: dir.clone(),
        error: e,
    })?;
    // The mount namespace tells containers on one host apart: each has its own lock directory
    // even when they share the host name (host networking).
    let namespace = std::fs::read_link("/proc/self/ns/mnt")
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let host = hostname();
    let scope = format!("{host} {namespace} {}", dir.display());
    let take = |id: &str| -> Result<Option<Identity>, BuildError> {
        let path = dir.join(format!("{}.lock", file_name(id)));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| BuildError::Lock {
                path: path.clone(),
                error: e,
            })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Identity {
                id: id.to_string(),
                run: Incarnation::new(scope.clone(), heartbeat),
                _lock: file,
            })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => Err(BuildError::Lock { path, error: e }),
        }
    };
    match id {
        Some(id) => take(id)?.ok_or_else(|| BuildError::IdInUse {
            id: id.to_string(),
            path: dir.join(format!("{}.lock", file_name(id))),
        }),
        None => {
            for n in 0..MAX_SLOTS {
                if let Some(identity) = take(&format!("{host}-{n}"))? {
                    return Ok(identity);
                }
            }
            Err(BuildError::Invalid(format!(
                "{MAX_SLOTS} workers already run on this host for this database; set an id"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_process_cannot_hold_an_id_twice_and_a_freed_id_is_taken_again() {
        let dir = std::env::temp_dir().join(format!("quark-id-test-{}", uuid::Uuid::now_v7()));
        let hb = Duration::from_secs(1);
        let first = acquire(Some("w/1"), &dir, "db", hb).unwrap();
        assert!(matches!(
            acquire(Some("w/1"), &dir, "db", hb),
            Err(BuildError::IdInUse { .. })
        ));
        // Another database has ids of its own.
        let other = acquire(Some("w/1"), &dir, "other db", hb).unwrap();
        drop(first);
        let again = acquire(Some("w/1"), &dir, "db", hb).unwrap();
        assert_ne!(again.run.scope, other.run.scope);

        // Numbered ids: the smallest free one, and a freed one comes back.
        let a = acquire(None, &dir, "db", hb).unwrap();
        let b = acquire(None, &dir, "db", hb).unwrap();
        assert!(a.id.ends_with("-0") && b.id.ends_with("-1"), "{a:?} {b:?}");
        let b_id = b.id.clone();
        drop(b);
        assert_eq!(acquire(None, &dir, "db", hb).unwrap().id, b_id);
        let _ = std::fs::remove_dir_all(dir);
    }
}
