//! Retention: removing an entity type's old events once a snapshot covers them, archived first.
//!
//! For each stream of the type, the events that a [`Retention`] policy lets go (older than its age,
//! beyond its count, or everything a snapshot covers) are removed up to the newest snapshot of the
//! entity's schema at most, so the entity still loads. Nothing is removed that a projection has
//! not applied yet. Before anything is removed, the events are written to an NDJSON file (as
//! stored: sealed personal fields stay sealed) and synced; a manifest lists the files with their
//! blake3 hashes, and its own hash is returned, so the archive can be checked later. Removal goes
//! in short transactions of a batch each, and the chain's start moves with it: what is left still
//! verifies.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use quark_history::{
    GlobalPosition, HistoryRange, InstanceFilter, InstanceStatus, ProjectionState, Timestamp,
};
use serde::Serialize;

use super::error::{EntityError, from_store};
use super::{Entities, Entity};

/// What an entity type's streams keep. Every criterion given lets events go; none goes past the
/// newest snapshot, nor past what a projection has applied.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Events recorded longer ago than this may go.
    pub max_age: Option<Duration>,
    /// Only the newest this many events of a stream are kept.
    pub max_count: Option<u64>,
    /// Every event the newest snapshot covers may go.
    pub covered_by_snapshot: bool,
    /// Events removed per transaction.
    pub batch: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_age: None,
            max_count: None,
            covered_by_snapshot: false,
            batch: 1_000,
        }
    }
}

/// One archived range of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Archived {
    /// The stream.
    pub stream: String,
    /// Its first and last version removed.
    pub first: u64,
    /// The last version removed.
    pub last: u64,
    /// The NDJSON file holding them.
    pub file: PathBuf,
    /// The file's blake3 hash, hex.
    pub blake3: String,
}

/// What [`Entities::apply_retention`] did.
#[derive(Debug, Clone, Default)]
pub struct RetentionReport {
    /// The ranges removed, each archived.
    pub archived: Vec<Archived>,
    /// Events removed in all.
    pub removed: u64,
    /// Streams left alone, and why.
    pub skipped: Vec<(String, String)>,
    /// The manifest of this run (none if nothing was removed).
    pub manifest: Option<PathBuf>,
    /// The manifest's blake3 hash, hex: keep it apart from the archive to check it later.
    pub manifest_blake3: Option<String>,
}

fn hex_blake3(bytes: &[u8]) -> String {
    blake3::hash(bytes).to_hex().to_string()
}

fn io<R: std::fmt::Debug>(what: &str, e: std::io::Error) -> EntityError<R> {
    EntityError::Store(quark_history::Error::Invalid(format!("{what}: {e}")))
}

/// Writes `bytes` to a new file and syncs it.
fn write_synced<R: std::fmt::Debug>(path: &Path, bytes: &[u8]) -> Result<(), EntityError<R>> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| io(&format!("creating {}", path.display()), e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io(&format!("writing {}", path.display()), e))
}

impl Entities {
    /// Applies `policy` to every stream of entity type `E`, archiving what it removes under
    /// `archive` (a directory, created if missing; each run writes a directory of its own in it).
    pub async fn apply_retention<E: Entity>(
        &self,
        policy: &Retention,
        archive: &Path,
    ) -> Result<RetentionReport, EntityError<E::Rejection>> {
        let Some(store) = self.store() else {
            return Err(EntityError::Store(quark_history::Error::Invalid(format!(
                "retention runs on a SQL store (SQLite or PostgreSQL); these entities are on {}",
                self.log().log_backend()
            ))));
        };
        let now = store.config().clock.now();
        let run = archive.join(format!("retention-{}", uuid::Uuid::now_v7().simple()));
        let mut report = RetentionReport::default();
        // Nothing a projection still has to apply may go.
        let applied_by_all: Option<GlobalPosition> = store
            .list_projections()
            .await
            .map_err(from_store)?
            .into_iter()
            .filter(|p| p.state != ProjectionState::Retired)
            .map(|p| p.checkpoint)
            .min();
        let mut after = None;
        loop {
            let page = store
                .list_instances(InstanceFilter {
                    instance_type: Some(E::TYPE.to_string()),
                    statuses: vec![InstanceStatus::Stream],
                    after: after.clone(),
                    limit: 100,
                    ..InstanceFilter::default()
                })
                .await
                .map_err(from_store)?;
            let Some(last) = page.last() else { break };
            after = Some((last.created_at, last.id.clone()));
            for stream in page {
                let id = stream.id.clone();
                let version = stream.history_len;
                let Some(snapshot) = store
                    .load_snapshot(&id, E::SCHEMA, u64::MAX)
                    .await
                    .map_err(from_store)?
                else {
                    report
                        .skipped
                        .push((id, "no snapshot of this schema covers its events".into()));
                    continue;
                };
                let mut remove_to = 0;
                if let Some(n) = policy.max_count {
                    remove_to = remove_to.max(version.saturating_sub(n));
                }
                if let Some(age) = policy.max_age {
                    let cutoff = Timestamp::from_micros(
                        now.as_micros()
                            .saturating_sub(i64::try_from(age.as_micros()).unwrap_or(i64::MAX)),
                    );
                    let old = store
                        .read_history(
                            &id,
                            HistoryRange::Time {
                                from: Timestamp::from_micros(i64::MIN),
                                until: cutoff,
                            },
                        )
                        .await
                        .map_err(from_store)?;
                    remove_to = remove_to.max(old.last().map_or(0, |e| e.seq));
                }
                if policy.covered_by_snapshot {
                    remove_to = snapshot.version;
                }
                let remove_to = remove_to.min(snapshot.version);
                if remove_to == 0 {
                    continue;
                }
                let doomed = store
                    .read_history(
                        &id,
                        HistoryRange::Seq {
                            from: 1,
                            until: remove_to + 1,
                        },
                    )
                    .await
                    .map_err(from_store)?;
                let (Some(first), Some(last)) = (doomed.first(), doomed.last()) else {
                    continue;
                };
                if let Some(applied) = applied_by_all {
                    let position = store
                        .event_position(&id, last.seq)
                        .await
                        .map_err(from_store)?;
                    if position.is_some_and(|p| p > applied) {
                        report
                            .skipped
                            .push((id, "a projection has not applied its old events yet".into()));
                        continue;
                    }
                }
                let (first, last) = (first.seq, last.seq);
                // Archived and synced before anything is removed.
                std::fs::create_dir_all(&run)
                    .map_err(|e| io(&format!("creating {}", run.display()), e))?;
                let name: String = id
                    .chars()
                    .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                    .collect();
                let file = run.join(format!("{name}-{first}-{last}.ndjson"));
                let mut lines = Vec::new();
                for e in &doomed {
                    serde_json::to_writer(&mut lines, e).map_err(|e| {
                        EntityError::Store(quark_history::Error::Invalid(e.to_string()))
                    })?;
                    lines.push(b'\n');
                }
                write_synced(&file, &lines)?;
                let mut removed = 0;
                while let Some((from, to)) = store
                    .truncate_stream(&id, last + 1, policy.batch)
                    .await
                    .map_err(from_store)?
                {
                    removed += to - from + 1;
                }
                report.removed += removed;
                report.archived.push(Archived {
                    stream: id,
                    first,
                    last,
                    blake3: hex_blake3(&lines),
                    file,
                });
            }
        }
        if !report.archived.is_empty() {
            let manifest = run.join("manifest.json");
            let bytes = serde_json::to_vec_pretty(&serde_json::json!({
                "entity_type": E::TYPE,
                "taken_at": now.to_string(),
                "ranges": report.archived,
            }))
            .map_err(|e| EntityError::Store(quark_history::Error::Invalid(e.to_string())))?;
            write_synced(&manifest, &bytes)?;
            report.manifest_blake3 = Some(hex_blake3(&bytes));
            report.manifest = Some(manifest);
        }
        // The states kept warm are unaffected: they are at or past the snapshots.
        Ok(report)
    }
}
