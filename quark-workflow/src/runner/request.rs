//! Requests into running instances: a query answered from the instance's state, an update
//! validated and, once accepted, recorded and started in one commit.
//!
//! The instance's history is replayed into a run of its own here (a request never changes a
//! live run: the next turn of a warm instance finds an accepted update among its new events,
//! like any event another worker appended). A query appends nothing; an accepted update's
//! commit appends `UpdateAccepted` and whatever its handler's first steps decide, fenced at the
//! history's next sequence number, so an update validated against a state that has moved on
//! meanwhile conflicts and is validated again.

use quark_history::{
    Answer, ClaimedTask, Commit, Expected, HistoryEvent, HistoryRange, RecordedEvent,
};

use super::{Handled, HandlerError, HostRef, Runner, now};
use crate::executor::Outcome;
use crate::task::{RequestKind, RequestTask, TaskPayload};
use crate::turn::{start_executor, turn_of};

impl Runner {
    /// Runs the request `task` carries.
    pub(super) async fn request(
        &self,
        task: ClaimedTask,
        host: HostRef,
    ) -> Result<Handled, HandlerError> {
        let request = match TaskPayload::from_bytes(&task.payload) {
            Ok(TaskPayload::Request(request)) => request,
            _ => {
                return Err(HandlerError::Rejected(
                    "the request task's payload cannot be decoded".into(),
                ));
            }
        };
        let store = host.store().clone();
        let done = || Ok(Handled::Commit(Commit::new().complete(task.lease.clone())));
        // Answered already: this task ran before, and its worker stopped before completing it.
        if store
            .request_answer(&request.instance_id, &request.id)
            .await?
            .is_some()
        {
            return done();
        }
        // A query of a run kept warm here that has seen the whole history is answered by it.
        if request.kind == RequestKind::Query
            && let Some(record) = store.get_instance(&request.instance_id).await?
        {
            let (name, input) = (request.name.clone(), request.input.clone());
            let warm = self
                .live
                .ask(&request.instance_id, record.history_len + 1, move |run| {
                    run.query(&name, &input)
                })
                .await;
            if let Some(answered) = warm {
                let answer = answered.map_or_else(Answer::Rejected, Answer::Value);
                store
                    .answer_request(&request.instance_id, &request.id, answer)
                    .await?;
                return done();
            }
            host.note(super::RunEvent::Replayed(super::Miss::NotWarm));
        }
        // One update of an instance at a time on this worker, from its validation to its
        // commit: updates sent together do not all validate on one state and conflict.
        let _turn = match request.kind {
            RequestKind::Update => Some(self.requests.lock(&request.instance_id).await),
            RequestKind::Query => None,
        };
        // An update validated on a state that moved on before its commit landed is validated
        // again, here, still under the lock (the settle step would commit the stale commit once
        // more first).
        let mut conflicts = 0;
        let decided = loop {
            let history = store
                .read_history(&request.instance_id, HistoryRange::All)
                .await?;
            match self.decide(&task, &request, &history, now(&host)) {
                Decision::Answer(answer) => break answer,
                Decision::Known => return done(),
                Decision::Accept(turn, event, next, at) => {
                    let commit = self.accept(&request, *turn, event, next, at, &host).await?;
                    // Committed under the instance's lock: the next update of the instance on
                    // this worker is validated on the state this one leaves.
                    match host.commit(commit.clone()).await {
                        Ok(_) => return Ok(Handled::Settled),
                        Err(quark_history::Error::Conflict { .. })
                            if conflicts < super::MAX_CONFLICT_RETRIES =>
                        {
                            host.note(super::RunEvent::Conflict);
                            conflicts += 1;
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "an update's commit failed; handing it to the settle step");
                            return Ok(Handled::Commit(commit));
                        }
                    }
                }
            }
        };
        if let Answer::Rejected(why) = &decided {
            tracing::info!(instance = %request.instance_id, request = %request.id, "{} `{}` refused: {why}", kind(request.kind), request.name);
        }
        store
            .answer_request(&request.instance_id, &request.id, decided)
            .await?;
        done()
    }

    /// What to do with `request`, given its instance's `history`: run on a replay of it.
    fn decide(
        &self,
        task: &ClaimedTask,
        request: &RequestTask,
        history: &[RecordedEvent],
        at: quark_history::Timestamp,
    ) -> Decision {
        let refuse = |why: String| Decision::Answer(Answer::Rejected(why));
        if history.is_empty() {
            return refuse(format!("there is no instance `{}`", request.instance_id));
        }
        let as_turn = ClaimedTask {
            instance_id: Some(request.instance_id.clone()),
            ..task.clone()
        };
        let (mut executor, orchestration) = match start_executor(&self.registry, &as_turn, history)
        {
            Ok(started) => started,
            Err(_) => {
                let ty = match &history[0].event {
                    HistoryEvent::WorkflowStarted { instance_type, .. } => instance_type.as_str(),
                    _ => "?",
                };
                return refuse(format!(
                    "no orchestration `{ty}` is registered on the worker that took the request"
                ));
            }
        };
        executor.feed(orchestration.as_ref(), history);
        if let Some(why) = broken(&mut executor, &as_turn) {
            return refuse(why);
        }
        match request.kind {
            RequestKind::Query => match executor.query(&request.name, &request.input) {
                Ok(value) => Decision::Answer(Answer::Value(value)),
                Err(why) => refuse(why),
            },
            RequestKind::Update => {
                match executor.admit_update(&request.id, &request.name, &request.input) {
                    Err(why) => refuse(why),
                    Ok(false) => Decision::Known,
                    Ok(true) => {
                        let next = executor.next_seq();
                        let event = HistoryEvent::UpdateAccepted {
                            update_id: request.id.clone(),
                            name: request.name.clone(),
                            payload: request.input.clone(),
                        };
                        let rec = RecordedEvent {
                            instance_id: request.instance_id.clone(),
                            seq: next,
                            recorded_at: at,
                            event: event.clone(),
                            hash: String::new(),
                        };
                        executor.feed(orchestration.as_ref(), std::slice::from_ref(&rec));
                        let turn = turn_of(&mut executor, &as_turn);
                        match &turn.outcome {
                            Outcome::Nondeterminism(n) => refuse(format!(
                                "the instance's code no longer matches its history: {n}"
                            )),
                            Outcome::Panicked(m) => refuse(format!(
                                "the orchestration panicked while running the update: {m}"
                            )),
                            Outcome::Stuck(why) => refuse(why.clone()),
                            _ => Decision::Accept(Box::new(turn), event, next, at),
                        }
                    }
                }
            }
        }
    }

    /// The commit of an accepted update: `UpdateAccepted` at `next`, then what the turn it
    /// started decided, with the turn's children created and its signals routed.
    async fn accept(
        &self,
        request: &RequestTask,
        turn: crate::turn::Turn,
        event: HistoryEvent,
        next: u64,
        at: quark_history::Timestamp,
        host: &HostRef,
    ) -> Result<Commit, HandlerError> {
        let instance = request.instance_id.as_str();
        let mut commit = self.prepare(instance, turn, host, false).await?;
        match commit
            .appends
            .iter_mut()
            .find(|a| a.instance_id == instance)
        {
            Some(own) => {
                own.events.insert(0, event);
                own.expected = Expected::Seq(next);
                own.at = Some(at);
            }
            None => {
                let mut own = Commit::new().append(instance, Expected::Seq(next), [event]);
                own.appends[0].at = Some(at);
                commit.appends.insert(0, own.appends.remove(0));
            }
        }
        crate::trace_context::stamp_commit(&mut commit);
        Ok(commit)
    }
}

/// What a request comes to.
enum Decision {
    /// Answer it (a query's value, or a refusal) and complete it.
    Answer(Answer),
    /// An update accepted before (its `UpdateAccepted` is in the history): complete it.
    Known,
    /// An update accepted now: the turn its handler's first steps decide, the `UpdateAccepted`
    /// event, where it goes, and its time.
    Accept(
        Box<crate::turn::Turn>,
        HistoryEvent,
        u64,
        quark_history::Timestamp,
    ),
}

/// Why a replayed run cannot answer anything, if it cannot.
fn broken(executor: &mut crate::executor::Executor, task: &ClaimedTask) -> Option<String> {
    if executor.is_live() || executor.is_closed() {
        return None;
    }
    let turn = turn_of(executor, task);
    Some(match turn.outcome {
        Outcome::Nondeterminism(n) => {
            format!("the instance's code no longer matches its history: {n}")
        }
        Outcome::Panicked(m) => format!("the orchestration panicked: {m}"),
        Outcome::Stuck(why) => why,
        _ => "the instance's run cannot go on here".into(),
    })
}

fn kind(kind: RequestKind) -> &'static str {
    match kind {
        RequestKind::Query => "query",
        RequestKind::Update => "update",
    }
}

/// Per-instance locks that serialize a runner's updates of each instance.
#[derive(Debug, Default)]
pub(crate) struct InstanceLocks(
    std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>>,
);

/// Holds an instance's lock; the last holder removes it.
pub(crate) struct InstanceGuard<'a> {
    locks: &'a InstanceLocks,
    instance: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl InstanceLocks {
    fn map(
        &self,
    ) -> std::sync::MutexGuard<
        '_,
        std::collections::HashMap<String, std::sync::Arc<tokio::sync::Mutex<()>>>,
    > {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for `instance`'s lock.
    pub(crate) async fn lock(&self, instance: &str) -> InstanceGuard<'_> {
        let mutex = std::sync::Arc::clone(self.map().entry(instance.to_string()).or_default());
        InstanceGuard {
            locks: self,
            instance: instance.to_string(),
            guard: Some(mutex.lock_owned().await),
        }
    }
}

impl Drop for InstanceGuard<'_> {
    fn drop(&mut self) {
        self.guard = None;
        let mut map = self.locks.map();
        if map
            .get(&self.instance)
            .is_some_and(|m| std::sync::Arc::strong_count(m) == 1)
        {
            map.remove(&self.instance);
        }
    }
}
