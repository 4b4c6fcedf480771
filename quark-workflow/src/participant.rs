//! A transactional activity's writes in other PostgreSQL databases, committed with its result by
//! two-phase commit ([`ActivityContext::participant`]).
//!
//! An attempt opens a branch in each participant it names, lazily. When it succeeds, its
//! branches are prepared under the attempt's global id (`q2pc:LOG:tTASK.ATTEMPT`), and the
//! decision to commit is written in the attempt's own engine transaction, with its result, under
//! its lease: the engine's commit is the commit point. Then every branch is committed. A failed
//! attempt's branches roll back; a failed or lost engine commit settles them by the decision log
//! (abort unless the commit went through). A retried attempt first gives up what its earlier
//! attempts left prepared, and every worker's recovery finishes the rest.

#[cfg(feature = "postgres")]
use std::sync::Arc;

#[cfg(feature = "postgres")]
use quark_history::Store;

/// The two-phase commit settings of a runner: the participants (set once), and the coordinator
/// made with the store of the first attempt that needs it.
#[derive(Debug, Default)]
pub(crate) struct TwoPhaseConfig {
    #[cfg(feature = "postgres")]
    participants: std::sync::OnceLock<quark_history::two_phase::Participants>,
    #[cfg(feature = "postgres")]
    coordinator: std::sync::OnceLock<quark_history::two_phase::Coordinator>,
}

#[cfg(feature = "postgres")]
impl TwoPhaseConfig {
    /// Sets the participants; `false` if they were set already (they stay).
    pub(crate) fn set(&self, participants: quark_history::two_phase::Participants) -> bool {
        self.participants.set(participants).is_ok()
    }

    /// The coordinator, if participants are configured.
    pub(crate) fn coordinator(
        &self,
        store: &Arc<dyn Store>,
    ) -> Option<quark_history::two_phase::Coordinator> {
        let participants = self.participants.get()?;
        Some(
            self.coordinator
                .get_or_init(|| {
                    quark_history::two_phase::Coordinator::new(
                        Arc::clone(store),
                        participants.clone(),
                    )
                })
                .clone(),
        )
    }
}

#[cfg(feature = "postgres")]
pub(crate) use branches::AttemptBranches;

#[cfg(feature = "postgres")]
mod branches {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use quark_history::StoreTx;
    use quark_history::sqlx::PgConnection;
    use quark_history::two_phase::{Branch, Coordinator, Decision, Prepared};

    use crate::activity::ActivityContext;
    use crate::error::ActivityError;

    /// A branch's place: empty until the attempt first names its participant. Each has its own
    /// lock, so an activity may hold the connections of several participants at once.
    type Slot = Arc<tokio::sync::Mutex<Option<Branch>>>;

    /// One attempt's branches, opened as it names participants.
    pub(crate) struct AttemptBranches {
        pub(crate) coordinator: Coordinator,
        branches: std::sync::Mutex<BTreeMap<String, Slot>>,
    }

    impl AttemptBranches {
        pub(crate) fn new(coordinator: Coordinator) -> Self {
            AttemptBranches {
                coordinator,
                branches: std::sync::Mutex::default(),
            }
        }

        fn slots(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Slot>> {
            self.branches.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// Drops every branch: they roll back (their sessions close).
        pub(crate) fn clear(&self) {
            self.slots().clear();
        }

        /// Prepares the branches (if any) as attempt `attempt` of task `task_id` and records
        /// the decision to commit in `tx`. `None` if the attempt opened no branch. On an error
        /// nothing is prepared any more.
        pub(crate) async fn prepare(
            &self,
            task_id: i64,
            attempt: u32,
            tx: &mut StoreTx,
        ) -> Result<Option<Prepared>, quark_history::Error> {
            let slots: Vec<Slot> = std::mem::take(&mut *self.slots()).into_values().collect();
            let mut branches = Vec::with_capacity(slots.len());
            for slot in slots {
                // The attempt is over: no guard is held (one an activity leaked would keep its
                // branch out, and it would roll back).
                if let Ok(mut slot) = slot.try_lock()
                    && let Some(branch) = slot.take()
                {
                    branches.push(branch);
                }
            }
            if branches.is_empty() {
                return Ok(None);
            }
            let gid = self.coordinator.attempt_gid(task_id, attempt).await?;
            let prepared = self.coordinator.prepare(&gid, branches).await?;
            if let Err(e) = tx.decide_commit(&gid, prepared.participants()).await {
                // Not decided to commit in this transaction: it is rolled back with it, and the
                // branches with the log's decision (abort, unless another stands).
                let participants = prepared.participants().to_vec();
                drop(prepared);
                let _ = self.coordinator.settle(&gid, &participants).await;
                return Err(e);
            }
            Ok(Some(prepared))
        }

        /// After the engine's commit: `committed` if it went through, else settled by the log.
        pub(crate) async fn finish(&self, prepared: Prepared, committed: bool) {
            let gid = prepared.gid().to_owned();
            let outcome = if committed {
                self.coordinator.finish(prepared, Decision::Commit).await
            } else {
                // The commit failed, or its outcome is unknown (the connection dropped): the log
                // says which.
                let participants = prepared.participants().to_vec();
                drop(prepared);
                self.coordinator
                    .settle(&gid, &participants)
                    .await
                    .map(|_| ())
            };
            if let Err(e) = outcome {
                tracing::warn!(
                    gid,
                    error = %e,
                    "a two-phase transaction's branches are not all finished; recovery will"
                );
            }
        }
    }

    impl ActivityContext {
        /// A connection inside this attempt's transaction in participant `name`, a PostgreSQL
        /// database other than the engine's (configured on the worker with
        /// `WorkerBuilder::participant`). Its writes commit with the activity's result, and
        /// with its writes in every other participant, by two-phase commit, or not at all: the
        /// activity must be `#[activity(transactional)]`, whose engine transaction records the
        /// decision. The branch is opened the first time the attempt names the participant.
        ///
        /// Guards of several participants may be held at once; holding two of the same one
        /// waits forever, as with [`transaction`](Self::transaction). Touch participants in one
        /// order in all your activities (prepared branches hold their row locks until they are
        /// finished). A reader that must see no transaction half
        /// committed across participants reads with `FOR SHARE` in the same order.
        pub async fn participant(
            &self,
            name: &str,
        ) -> Result<tokio::sync::OwnedMappedMutexGuard<Option<Branch>, PgConnection>, ActivityError>
        {
            let info = self.info();
            let Some(two_phase) = self.effects().two_phase() else {
                return Err(ActivityError::message(format!(
                    "activity `{}` cannot write in participant `{name}`: {}",
                    info.activity,
                    if self.effects().is_transactional() {
                        "this worker has no participants (WorkerBuilder::participant)"
                    } else {
                        "declare it #[activity(transactional)]"
                    }
                ))
                .terminal());
            };
            let slot = Arc::clone(two_phase.slots().entry(name.to_owned()).or_default());
            let mut branch = slot.lock_owned().await;
            if branch.is_none() {
                let opened = match two_phase.coordinator.begin(name).await {
                    Ok(branch) => branch,
                    Err(e @ quark_history::Error::Invalid(_)) => {
                        return Err(ActivityError::message(e.to_string()).terminal());
                    }
                    Err(e) => {
                        return Err(ActivityError::message(format!("participant `{name}`: {e}")));
                    }
                };
                *branch = Some(opened);
            }
            Ok(tokio::sync::OwnedMutexGuard::map(branch, |b| {
                b.as_mut().expect("the branch was just opened").connection()
            }))
        }
    }
}

/// What an attempt prepared in other databases, to finish once its engine commit is done.
pub(crate) struct Pending {
    #[cfg(feature = "postgres")]
    prepared: Option<quark_history::two_phase::Prepared>,
}

/// Prepares the branches `effects` opened (attempt `attempt` of task `task_id`) and records the
/// decision to commit in `tx`.
#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
pub(crate) async fn prepare(
    effects: &crate::activity::ActivityEffects,
    task_id: i64,
    attempt: u32,
    tx: &mut quark_history::StoreTx,
) -> Result<Pending, quark_history::Error> {
    #[cfg(feature = "postgres")]
    {
        let prepared = match effects.two_phase() {
            Some(two_phase) => two_phase.prepare(task_id, attempt, tx).await?,
            None => None,
        };
        Ok(Pending { prepared })
    }
    #[cfg(not(feature = "postgres"))]
    Ok(Pending {})
}

/// Finishes what [`prepare`] prepared: committed if the engine's commit went through, else by
/// the decision log.
#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
pub(crate) async fn finish(
    effects: &crate::activity::ActivityEffects,
    pending: Pending,
    committed: bool,
) {
    #[cfg(feature = "postgres")]
    if let (Some(two_phase), Some(prepared)) = (effects.two_phase(), pending.prepared) {
        two_phase.finish(prepared, committed).await;
    }
}

/// Gives up what earlier attempts of task `task_id` left prepared, before attempt `attempt`
/// opens branches of its own (they would wait on those locks).
#[cfg(feature = "postgres")]
pub(crate) async fn abandon_earlier(
    coordinator: &quark_history::two_phase::Coordinator,
    task_id: i64,
    attempt: u32,
) {
    if attempt <= 1 {
        return;
    }
    match coordinator.abandon_attempts(task_id, attempt).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            task_id,
            attempt,
            rolled_back = n,
            "gave up the branches earlier attempts left prepared"
        ),
        Err(e) => tracing::warn!(
            task_id,
            attempt,
            error = %e,
            "could not give up earlier attempts' branches; recovery will"
        ),
    }
}
