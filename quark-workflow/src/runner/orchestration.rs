//! Orchestration turns on live runs, and the warm continuation: an activity's result committed together with
//! the turn it unblocks.

use quark_history::shards::Crossing;
use quark_history::{
    ClaimedTask, Commit, Expected, HistoryEvent, HistoryRange, IdReusePolicy, InstanceStatus,
    NewTask, Settle, TaskKind, Timestamp,
};

use super::live::{LiveTurn, Report};
use super::{Handled, HandlerError, HostRef, Miss, RunEvent, Runner, now};
use crate::executor::Outcome;
use crate::turn::Turn;

impl Runner {
    /// One orchestration turn: the events the instance's live run has not seen (or, for an
    /// instance that is not live, its whole history, replayed into a new run), the turn the run
    /// decides, the children it starts, and its commit.
    pub(super) async fn turn(
        &self,
        task: ClaimedTask,
        host: HostRef,
    ) -> Result<Handled, HandlerError> {
        let instance = task.instance_id.clone().ok_or_else(|| {
            HandlerError::Rejected("an orchestration task without an instance".into())
        })?;
        let store = host.store().clone();
        let warm_from = self.live.next_seq(&instance);
        let (from, events) = match self.prefetch.take(&task) {
            Some((from, events)) if from == 1 || from == warm_from => (from, events),
            _ => {
                let from = warm_from;
                (
                    from,
                    store
                        .read_history(&instance, HistoryRange::From(from))
                        .await?,
                )
            }
        };
        // A run rebuilt from a history its code has run on before: a cache miss.
        let decided = |events: &[quark_history::RecordedEvent]| {
            events
                .iter()
                .any(|e| crate::command::is_command_event(&e.event))
        };
        if from == 1 && decided(&events) {
            let why = match warm_from {
                1 => Miss::NotWarm,
                _ => Miss::ReadAhead,
            };
            host.note(RunEvent::Replayed(why));
        }
        let mut reply = self
            .live
            .turn(&instance, &task, &self.registry, from, events)
            .await;
        if let Some(LiveTurn::Miss(Miss::Busy)) = reply {
            // The run's own last commit is in flight: this turn was claimed as soon as that
            // commit was written, a moment before it is acknowledged. Wait for it (bounded: a
            // commit that never reports is given up) and go on from the run, rather than replay.
            let settled = tokio::time::timeout(SETTLE_WAIT, self.live.settled(&instance)).await;
            let from = self.live.next_seq(&instance);
            if settled.is_ok() && from > 1 {
                let events = store
                    .read_history(&instance, HistoryRange::From(from))
                    .await?;
                reply = self
                    .live
                    .turn(&instance, &task, &self.registry, from, events)
                    .await;
            }
        }
        if let Some(LiveTurn::Miss(why)) = reply {
            let history = store.read_history(&instance, HistoryRange::All).await?;
            if decided(&history) {
                host.note(RunEvent::Replayed(why));
            }
            reply = self
                .live
                .turn(&instance, &task, &self.registry, 1, history)
                .await;
        }
        // The token the live run's commit is acknowledged with; none for a turn on a run that
        // is not kept, whose commit leaves the live run alone.
        let (turn, token) = match reply {
            Some(LiveTurn::Turn(turn, warn, token)) => {
                if warn {
                    host.note(RunEvent::LongHistory);
                }
                (*turn, Some(token))
            }
            Some(LiveTurn::Cold(turn)) => (*turn, None),
            Some(LiveTurn::Miss(_)) | None => {
                // The orchestration thread could not run it (its job failed): replay the history
                // here into a run that is not kept, as a worker without live instances does.
                tracing::warn!(instance = %instance, "the orchestration thread failed a turn; replaying it here");
                let history = store.read_history(&instance, HistoryRange::All).await?;
                self.live.forget(&instance);
                (
                    crate::turn::process_turn(&self.registry, &task, &history),
                    None,
                )
            }
        };
        // Only a kept run's turn starts its activities here: their results prove its commit
        // written to the run (see `continue_here`), and a turn on a run that is not kept has no
        // run to prove anything to.
        let mut commit = self
            .prepare(&instance, turn, &host, token.is_some())
            .await?;
        // The turn's events are recorded at a time chosen here, so that the live run can take
        // exact copies of them once they commit.
        let at = now(&host);
        let own = commit
            .appends
            .iter()
            .position(|a| a.instance_id == instance);
        if let Some(i) = own {
            commit.appends[i].at.get_or_insert(at);
        }
        let confirmed = match (own, token) {
            (Some(i), Some(token)) => self.confirm_ahead(&commit.appends[i], token, at),
            _ => None,
        };
        // A turn that ends its instance tells its parent, and a turn may signal other
        // instances; if such a receiver's run is warm here, its next turn runs now and commits
        // with this one (local delivery). Otherwise, or if that commit fails, this turn commits
        // alone and the receiver's turn goes through the queue.
        let delivered = match self.with_receiver_turn(&task, &commit, &host).await {
            Some(merged) => self.commit_with_receiver(merged, &host).await,
            None => None,
        };
        let result = match delivered {
            Some(committed) => Ok(committed),
            None => host.commit(commit.clone()).await,
        };
        match result {
            Ok(committed) => {
                if let Some(token) = token {
                    if let Some(i) = own
                        && confirmed != Some(committed.appended[i].0)
                    {
                        self.live.forget(&instance);
                    } else {
                        self.live.ack(&instance, token);
                    }
                }
                Ok(Handled::Settled)
            }
            Err(e) => {
                if token.is_some() {
                    self.live.forget(&instance);
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
    /// driver agrees, so that a warm instance does not wait for a trip through the queue. What
    /// goes to instances on other shards goes into the commit's outbox instead.
    pub(super) async fn prepare(
        &self,
        instance: &str,
        turn: Turn,
        host: &HostRef,
        here: bool,
    ) -> Result<Commit, HandlerError> {
        match self.prepare_commit(instance, turn, host, here).await {
            Ok(commit) => Ok(commit),
            Err(e) => {
                self.live.forget(instance);
                Err(e.into())
            }
        }
    }

    async fn prepare_commit(
        &self,
        instance: &str,
        turn: Turn,
        host: &HostRef,
        here: bool,
    ) -> quark_history::Result<Commit> {
        let waiting = matches!(turn.outcome, Outcome::Waiting);
        let mut commit = turn.commit;
        for mut child in turn.instances {
            crate::trace_context::stamp_instance(&mut child);
            if self.elsewhere(&child.id).await?.is_some() {
                // Started by the outbox relay in the child's shard: written with this turn, so
                // the child exists if and only if the turn committed.
                let id = child.id.clone();
                commit.outbox.push(Crossing::Start(child).message(&id)?);
                host.note(RunEvent::NewsAcrossShards);
                continue;
            }
            // Ids are deterministic, so a turn that is redone finds its children already there.
            host.store()
                .create_instance(child, IdReusePolicy::ReturnExisting)
                .await?;
        }
        self.news_across_shards(&mut commit, Some(instance), host)
            .await?;
        for (receiver, event) in turn.signals {
            if self.elsewhere(&receiver).await?.is_some() {
                // Written with the turn, delivered once by the outbox relay into the receiver's
                // shard (its inbox deduplicates a re-send).
                if let HistoryEvent::SignalReceived { name, payload } = &event {
                    let message = quark_history::OutboxMessage::new(
                        quark_history::Destination::Signal {
                            instance: receiver.clone(),
                            name: name.clone(),
                        },
                        payload.as_bytes().to_vec(),
                    )
                    .header("content-type", "application/json");
                    commit.outbox.push(message);
                    host.note(RunEvent::SignalAcrossShards);
                }
                continue;
            }
            match self.signal_route(&receiver, host).await? {
                Some(queue) => {
                    commit = commit
                        .append(receiver.as_str(), Expected::Any, [event])
                        .enqueue(NewTask::orchestration(&queue, &receiver));
                }
                None => host.note(RunEvent::SignalDropped),
            }
        }
        // An entity's command runs where the entity is live: on its home worker, through the
        // queue, unless it is live here or has no home yet (then here, which becomes its home).
        // An entity on another shard runs its commands there: they go through the outbox.
        // A turn that ends its instance drops its commands: nothing to route.
        let (mut remote, mut homes) = (Vec::new(), Vec::new());
        for (i, stream) in turn.homes {
            if self.elsewhere(&stream).await?.is_some() {
                remote.push((i, stream));
            } else {
                homes.push((i, stream));
            }
        }
        if waiting {
            for (i, worker) in self.entity_homes(&homes, host).await {
                if let Some(task) = commit.tasks.get_mut(i) {
                    task.affinity = Some(worker);
                    host.note(RunEvent::EntityRouted);
                }
            }
        }
        self.commands_across_shards(&mut commit, &remote, waiting, host)?;
        // A turn that ends its instance drops the activities it scheduled (nobody will read their
        // results): they must not be started here either.
        if waiting && here {
            for task in &mut commit.tasks {
                if task.kind == TaskKind::Activity && task.affinity.is_none() {
                    host.run_here(task);
                }
            }
        }
        Ok(commit)
    }

    /// Of a turn's entity commands (`homes`: task index, stream), those to run on another
    /// worker, with it: the home of their stream (the worker whose activity last appended to it,
    /// or where placement moved it), unless the entity is live here. One read for all of them.
    /// The others run here: live here, no home yet (this worker becomes it), or the homes could
    /// not be read (a routing hint is not worth failing the turn for; a command's commit is
    /// fenced by its stream's version anyway).
    async fn entity_homes(
        &self,
        homes: &[(usize, String)],
        host: &HostRef,
    ) -> Vec<(usize, String)> {
        let elsewhere: Vec<String> = homes
            .iter()
            .map(|(_, stream)| stream)
            .filter(|stream| !self.entity_is_live(stream))
            .cloned()
            .collect();
        if elsewhere.is_empty() {
            return Vec::new();
        }
        let placed = match host.store().affinities(&elsewhere).await {
            Ok(placed) => placed,
            Err(e) => {
                tracing::debug!(error = %e, "could not read entities' homes; running their commands here");
                return Vec::new();
            }
        };
        let me = host.lease().worker.as_str();
        homes
            .iter()
            .filter_map(|(i, stream)| {
                placed
                    .iter()
                    .find(|p| p.instance == *stream && p.worker != me)
                    .map(|p| (*i, p.worker.clone()))
            })
            .collect()
    }

    /// The queue a signal to `receiver` wakes it on, or `None` (logged) when nothing would
    /// receive it: no such instance, an instance that has ended, or an entity's stream. An
    /// instance that ends after this look is caught by the commit, which the settle step then
    /// makes again without the signal.
    async fn signal_route(
        &self,
        receiver: &str,
        host: &HostRef,
    ) -> quark_history::Result<Option<String>> {
        let record = host.store().get_instance(receiver).await?;
        let why = match &record {
            None => "there is no such instance".to_string(),
            Some(r) if r.status == InstanceStatus::Stream => "it is an entity's stream".into(),
            Some(r) if r.status.is_closed() => format!("it has ended ({})", r.status),
            Some(r) => return Ok(Some(r.queue.clone())),
        };
        tracing::warn!(instance = %receiver, "dropping a signal to `{receiver}`: {why}");
        Ok(None)
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
        children: Children,
    ) -> Option<(Commit, u64)> {
        let [append] = plain.appends.as_slice() else {
            return None;
        };
        let [event] = append.events.as_slice() else {
            return None;
        };
        let instance = append.instance_id.as_str();
        let as_turn = ClaimedTask {
            kind: TaskKind::Orchestration,
            queue: plain.tasks.first()?.queue.clone(),
            instance_id: Some(instance.to_string()),
            ..task.clone()
        };
        let at = now(host);
        // A live run is continued as it is, without asking the store for newer events: the
        // commit is fenced at the next sequence number, so if anything was appended meanwhile it
        // conflicts and the plain result goes through the queue instead.
        let history = if self.live.next_seq(instance) > 1 {
            None
        } else {
            Some(
                host.store()
                    .read_history(instance, HistoryRange::All)
                    .await
                    .ok()?,
            )
        };
        let (next, turn, warn, token) = self
            .live
            .continue_with(
                instance,
                &as_turn,
                &self.registry,
                history,
                Report {
                    event: event.clone(),
                    at,
                    started_here: host.started_here(),
                },
            )
            .await?;
        if warn {
            host.note(RunEvent::LongHistory);
        }
        if !matches!(turn.commit.settle, Some(Settle::Complete(_)))
            || (children == Children::Refused && !turn.instances.is_empty())
        {
            self.live.forget(instance);
            return None;
        }
        let mut turn_commit = self.prepare(instance, turn, host, true).await.ok()?;
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
        Some((combined.complete(task.lease.clone()), token))
    }

    /// Commits an activity's plain result together with the turn it unblocks, if the instance can
    /// be continued here; `true` if that commit went through (the task is settled).
    pub(super) async fn commit_continued(
        &self,
        task: &ClaimedTask,
        plain: &Commit,
        host: &HostRef,
    ) -> bool {
        let Some((combined, token)) = self
            .continue_here(task, plain, host, Children::Allowed)
            .await
        else {
            return false;
        };
        match self.commit_continuing(combined, &[(0, token)], host).await {
            Ok(_) => true,
            // The history moved on, the instance ended, or the store hiccuped: the caller falls
            // back to the plain result; the orchestration runs through the queue.
            Err(e) => {
                tracing::debug!(error = %e, "could not continue the orchestration here");
                false
            }
        }
    }

    /// Commits `commit`, whose appends at `runs`' indices are continued runs': each the event
    /// its run was continued with, then its turn's own events. Each run takes its turn's events
    /// ahead of the commit (see [`confirm_ahead`](Self::confirm_ahead)); it is acknowledged if the
    /// commit lands where it expected, and dropped otherwise.
    async fn commit_continuing(
        &self,
        commit: Commit,
        runs: &[(usize, u64)],
        host: &HostRef,
    ) -> quark_history::Result<quark_history::Committed> {
        let mut confirmed = Vec::with_capacity(runs.len());
        for &(index, token) in runs {
            let own = &commit.appends[index];
            let at = own.at.unwrap_or_else(|| now(host));
            // The run has taken the event it was continued with already; its turn's own events
            // follow it.
            let turn_events = quark_history::Append {
                expected: match own.expected {
                    Expected::Seq(n) => Expected::Seq(n + 1),
                    other => other,
                },
                events: own.events[1..].to_vec(),
                ..own.clone()
            };
            let first = self.confirm_ahead(&turn_events, token, at);
            confirmed.push((own.instance_id.clone(), first));
        }
        let result = host.commit(commit).await;
        for (&(index, token), (instance, first)) in runs.iter().zip(confirmed) {
            match &result {
                Ok(committed)
                    if first.is_none() || first == Some(committed.appended[index].0 + 1) =>
                {
                    self.live.ack(&instance, token)
                }
                _ => self.live.forget(&instance),
            }
        }
        result
    }

    /// Local delivery: `commit` (a turn of `task`'s instance) tells another instance something
    /// that wakes it, a child's end to its parent or a signal to its receiver. If the receiver's
    /// run is warm here and free, its next turn runs on it now and is merged into `commit`,
    /// fenced at the receiver's next sequence number, instead of the news's append and the
    /// receiver's task. The continued turn may wake another warm receiver in turn, which is
    /// continued too, up to [`MAX_CONTINUED`] runs per commit; never the sender, whose own turn
    /// is this commit's, and never a run twice. News for other receivers goes through the
    /// queue. `None` when no receiver can be continued.
    async fn with_receiver_turn(
        &self,
        task: &ClaimedTask,
        commit: &Commit,
        host: &HostRef,
    ) -> Option<WithReceiver> {
        let sender = task.instance_id.as_deref()?;
        let mut merged = commit.clone();
        let mut done: Vec<String> = vec![sender.to_string()];
        let mut tokens: Vec<(String, u64)> = Vec::new();
        let mut tried: Vec<String> = Vec::new();
        'chain: while tokens.len() < MAX_CONTINUED {
            for (news, append) in merged.appends.iter().enumerate() {
                let receiver = append.instance_id.as_str();
                let wakes = matches!(
                    append.events.as_slice(),
                    [HistoryEvent::ChildCompleted { .. }
                        | HistoryEvent::ChildFailed { .. }
                        | HistoryEvent::SignalReceived { .. }]
                );
                // Warm only: a receiver that is not live here would be replayed, which its own
                // worker does better from the queue.
                if !wakes
                    || done.iter().any(|d| d == receiver)
                    || tried.iter().any(|t| t == receiver)
                    || self.live.next_seq(receiver) <= 1
                {
                    continue;
                }
                let Some(wake) = merged.tasks.iter().position(|t| {
                    t.kind == TaskKind::Orchestration && t.instance_id.as_deref() == Some(receiver)
                }) else {
                    continue;
                };
                let plain = Commit {
                    appends: vec![append.clone()],
                    tasks: vec![merged.tasks[wake].clone()],
                    ..Commit::new()
                };
                let receiver = receiver.to_string();
                // A turn that starts children creates them, each with its first task, before
                // its commit; a child that ran and ended before the merged commit would put its
                // end in the receiver's history ahead of its start. Such a turn goes through the
                // queue.
                match self
                    .continue_here(task, &plain, host, Children::Refused)
                    .await
                {
                    Some((continued, token)) => {
                        merged.appends.remove(news);
                        merged.tasks.remove(wake);
                        merged.appends.extend(continued.appends);
                        merged.tasks.extend(continued.tasks);
                        merged.outbox.extend(continued.outbox);
                        done.push(receiver.clone());
                        tokens.push((receiver, token));
                    }
                    None => tried.push(receiver),
                }
                continue 'chain;
            }
            break;
        }
        if tokens.is_empty() {
            return None;
        }
        // Each continued run's append is the one fenced at a sequence number.
        let runs = tokens
            .into_iter()
            .map(|(instance, token)| {
                let index = merged.appends.iter().position(|a| {
                    a.instance_id == instance && matches!(a.expected, Expected::Seq(_))
                })?;
                Some((index, token))
            })
            .collect::<Option<Vec<_>>>()?;
        Some(WithReceiver {
            commit: merged,
            runs,
        })
    }

    /// Commits a turn merged with its receiver's ([`with_receiver_turn`](Self::with_receiver_turn)):
    /// the commit's outcome if it went through, `None` (and the receiver's run dropped) if not.
    async fn commit_with_receiver(
        &self,
        merged: WithReceiver,
        host: &HostRef,
    ) -> Option<quark_history::Committed> {
        let continued = merged.runs.len();
        match self
            .commit_continuing(merged.commit, &merged.runs, host)
            .await
        {
            Ok(committed) => {
                for _ in 0..continued {
                    host.note(RunEvent::DeliveredHere);
                }
                Some(committed)
            }
            Err(e) => {
                tracing::debug!(error = %e, "could not continue the receiver here");
                None
            }
        }
    }

    /// Hands the live run the events its turn decided, at the sequence number the commit is
    /// fenced at, before the commit is made. The driver may start the activities the commit
    /// schedules here as soon as it is written, before the commit call returns, and their results
    /// continue the instance from its live run: the run must already be past these events then.
    /// Returns that first sequence number, or `None` when the append is not fenced at one (the
    /// run is then dropped). The caller forgets the instance if the commit fails.
    fn confirm_ahead(
        &self,
        append: &quark_history::Append,
        token: u64,
        at: Timestamp,
    ) -> Option<u64> {
        let Expected::Seq(first) = append.expected else {
            self.live.forget(&append.instance_id);
            return None;
        };
        self.live.confirm(&append.instance_id, token, first, at);
        Some(first)
    }
}

/// How long a turn waits for its run's own commit in flight to be acknowledged before it
/// replays the history instead. A commit reports within its round trip; this bounds a commit
/// that never does (its task was cancelled mid-way).
const SETTLE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The most runs continued in one commit by local delivery: a chain of warm receivers, each
/// woken by the turn before it. Bounded so that one commit, and the sender's wait for it, stays
/// small.
pub(super) const MAX_CONTINUED: usize = 16;

/// A turn merged with the next turns of warm receivers of its news.
struct WithReceiver {
    /// The merged commit.
    commit: Commit,
    /// Each continued run's append index in the commit, and its live run's token.
    runs: Vec<(usize, u64)>,
}

/// Whether a continued turn may start children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Children {
    /// It may.
    Allowed,
    /// It may not: the continuation is given up if it would.
    Refused,
}
