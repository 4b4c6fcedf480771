//! Orchestration turns, and the warm continuation: an activity's result committed together with
//! the turn it unblocks.

use quark_history::{
    ClaimedTask, Commit, Expected, IdReusePolicy, RecordedEvent, Settle, TaskKind, Timestamp,
};

use super::{HISTORY_WARN_EVENTS, Handled, HandlerError, HostRef, Runner, now};
use crate::executor::Outcome;
use crate::turn::{Turn, process_turn};

impl Runner {
    /// One orchestration turn: the instance's history (only the new part when it is warm, or what
    /// was read ahead for it), [`process_turn`], the children it starts, and its commit.
    pub(super) async fn turn(
        &self,
        task: ClaimedTask,
        host: HostRef,
    ) -> Result<Handled, HandlerError> {
        let instance = task.instance_id.clone().ok_or_else(|| {
            HandlerError::Rejected("an orchestration task without an instance".into())
        })?;
        let read_ahead = self.cache.take_prefetched(&task);
        let history = self
            .cache
            .history_with(host.store().as_ref(), &instance, read_ahead)
            .await?;
        if history.len() > HISTORY_WARN_EVENTS {
            tracing::warn!(
                instance = %instance,
                events = history.len(),
                "long history: consider continue_as_new"
            );
        }
        let turn = process_turn(&self.registry, &task, &history);
        let mut commit = self.prepare(&instance, turn, &host).await?;
        // The turn's events are recorded at a time chosen here, so that the cache can hold exact
        // copies of them once they commit: the instance's next activity result then continues it
        // without reading its history back (see `continue_here`).
        let at = now(&host);
        let own = commit
            .appends
            .iter()
            .position(|a| a.instance_id == instance);
        if let Some(i) = own {
            commit.appends[i].at.get_or_insert(at);
        }
        let cached_ahead = own.and_then(|i| self.cache_ahead(&commit.appends[i], at));
        match host.commit(commit.clone()).await {
            Ok(committed) => {
                if let Some(i) = own {
                    let append = &commit.appends[i];
                    match cached_ahead {
                        Some(first) if first == committed.appended[i].0 => {}
                        Some(_) => self.cache.forget(&instance),
                        None => self.cache.extend(
                            &instance,
                            committed.appended[i].0,
                            &append.events,
                            append.at.unwrap_or(at),
                        ),
                    }
                }
                Ok(Handled::Settled)
            }
            Err(e) => {
                if cached_ahead.is_some() {
                    self.cache.forget(&instance);
                }
                // Nothing was written. The settle step commits it again and handles what went
                // wrong (a conflict reruns the turn); the tasks meant to start here go through
                // the queue.
                tracing::debug!(error = %e, "turn commit failed; handing it to the settle step");
                for task in &mut commit.tasks {
                    task.lease_to = None;
                }
                Ok(Handled::Commit(commit))
            }
        }
    }

    /// Creates a turn's children and marks the activities it schedules to run here when the
    /// driver agrees, so that a warm instance does not wait for a trip through the queue.
    async fn prepare(
        &self,
        instance: &str,
        turn: Turn,
        host: &HostRef,
    ) -> Result<Commit, HandlerError> {
        for child in turn.instances {
            // Ids are deterministic, so a turn that is redone finds its children already there.
            host.store()
                .create_instance(child, IdReusePolicy::ReturnExisting)
                .await?;
        }
        let waiting = matches!(turn.outcome, Outcome::Waiting);
        if !waiting {
            self.cache.forget(instance);
        }
        let mut commit = turn.commit;
        // A turn that ends its instance drops the activities it scheduled (nobody will read their
        // results): they must not be started here either.
        if waiting {
            for task in &mut commit.tasks {
                if task.kind == TaskKind::Activity {
                    host.run_here(task);
                }
            }
        }
        Ok(commit)
    }

    /// Continues the orchestration right here: the activity's result and the turn it unblocks go
    /// into one commit, at the history's next sequence number. Returns `None` when that cannot be
    /// done (the result is a retry, the turn could not run); the caller then commits the plain
    /// result, which wakes the orchestration through the queue. If the history moved on meanwhile,
    /// the commit conflicts and the caller does the same.
    pub(super) async fn continue_here(
        &self,
        task: &ClaimedTask,
        plain: &Commit,
        host: &HostRef,
    ) -> Option<Commit> {
        let [append] = plain.appends.as_slice() else {
            return None;
        };
        let [event] = append.events.as_slice() else {
            return None;
        };
        let instance = append.instance_id.as_str();
        // A warm instance's cached history is used as it is, without asking the store for newer
        // events: the commit is fenced at the next sequence number, so if anything was appended
        // meanwhile it conflicts and the plain result goes through the queue instead.
        let mut history = match self.cache.cached(instance) {
            Some(history) => history,
            None => self
                .cache
                .history(host.store().as_ref(), instance)
                .await
                .ok()?,
        };
        let at = now(host);
        let next = history.last().map_or(1, |e| e.seq + 1);
        history.push(RecordedEvent {
            instance_id: instance.to_string(),
            seq: next,
            recorded_at: at,
            event: event.clone(),
            hash: String::new(),
        });
        let as_turn = ClaimedTask {
            kind: TaskKind::Orchestration,
            queue: plain.tasks.first()?.queue.clone(),
            instance_id: Some(instance.to_string()),
            ..task.clone()
        };
        let turn = process_turn(&self.registry, &as_turn, &history);
        if !matches!(turn.commit.settle, Some(Settle::Complete(_))) {
            return None;
        }
        let mut turn_commit = self.prepare(instance, turn, host).await.ok()?;
        let mut events = vec![event.clone()];
        let mut rest = Vec::new();
        for a in turn_commit.appends.drain(..) {
            if a.instance_id == instance {
                events.extend(a.events);
            } else {
                rest.push(a);
            }
        }
        let mut combined = Commit::new().append(instance, Expected::Seq(next), events);
        // Recorded at the time the turn saw, so that a replay sees the same `ctx.now()`.
        combined.appends[0].at = Some(at);
        combined.appends.extend(rest);
        combined.tasks = turn_commit.tasks;
        // The activity's outbox messages go with its result, whichever commit carries it.
        combined.outbox = plain.outbox.clone();
        combined.outbox.extend(turn_commit.outbox);
        Some(combined.complete(task.lease.clone()))
    }

    /// Commits an activity's plain result together with the turn it unblocks, if the instance can
    /// be continued here; `true` if that commit went through (the task is settled).
    pub(super) async fn commit_continued(
        &self,
        task: &ClaimedTask,
        plain: &Commit,
        host: &HostRef,
    ) -> bool {
        let Some(combined) = self.continue_here(task, plain, host).await else {
            return false;
        };
        let own = combined.appends[0].clone();
        let at = own.at.unwrap_or_else(|| now(host));
        let cached_ahead = self.cache_ahead(&own, at);
        match host.commit(combined).await {
            Ok(committed) => {
                if cached_ahead != Some(committed.appended[0].0) {
                    self.cache.forget(&own.instance_id);
                }
                true
            }
            // The history moved on, the instance ended, or the store hiccuped: the caller falls
            // back to the plain result; the orchestration runs through the queue.
            Err(e) => {
                self.cache.forget(&own.instance_id);
                tracing::debug!(error = %e, "could not continue the orchestration here");
                false
            }
        }
    }

    /// Puts a commit's own events into the cache before the commit is made, at the sequence
    /// number it is fenced at. The driver may start the activities the commit schedules here as
    /// soon as it is written, before the commit call returns, and their results continue the
    /// instance from the cache: it must already hold these events then. Returns that first
    /// sequence number, or `None` when the append is not fenced at one (the cache is then
    /// extended after the commit). The caller forgets the instance if the commit fails.
    fn cache_ahead(&self, append: &quark_history::Append, at: Timestamp) -> Option<u64> {
        let Expected::Seq(first) = append.expected else {
            return None;
        };
        self.cache
            .extend(&append.instance_id, first, &append.events, at);
        Some(first)
    }
}
