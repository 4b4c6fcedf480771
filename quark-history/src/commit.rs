//! The atomic commit: the one write path for everything that changes histories and the queue.
//!
//! A [`Commit`] appends events to any number of histories, enqueues tasks and settles the task it
//! was done under, in one transaction. An orchestration turn, an activity result, a fired timer and
//! a signal are all commits; nothing of one is ever half-written. If the settled task's lease was
//! lost, or a history moved past its expected sequence number, the whole commit is rolled back.

use crate::event::HistoryEvent;
use crate::queue::{FailAction, Lease, NewTask};

/// Where an append must land.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expected {
    /// At this next sequence number, or not at all ([`Error::Conflict`](crate::Error::Conflict)).
    /// Orchestration turns use this: their commands were decided on the history they read.
    Seq(u64),
    /// At the end, wherever it is now. Results from outside (activity completions, timers,
    /// signals) use this: their order relative to concurrent appends does not matter.
    Any,
}

/// Events to append to one instance's history.
#[derive(Debug, Clone)]
pub struct Append {
    /// The instance.
    pub instance_id: String,
    /// Where they must land.
    pub expected: Expected,
    /// The events, in order.
    pub events: Vec<HistoryEvent>,
    /// The time to record them at (`None`: the store's clock at commit). A worker that ran code on
    /// these events before committing them passes the time the code saw, so that a replay sees it
    /// too.
    pub at: Option<crate::Timestamp>,
}

/// What happens to the task a commit was done under.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Settle {
    /// It is done: remove it. An orchestration task that was marked to run again (new events
    /// arrived during the turn) is released instead, visible at once.
    Complete(Lease),
    /// Its attempt failed: retry later or move it to the dead-letter list.
    Fail(Lease, FailAction),
}

impl Settle {
    /// The lease being settled.
    pub fn lease(&self) -> &Lease {
        match self {
            Settle::Complete(lease) | Settle::Fail(lease, _) => lease,
        }
    }
}

/// One atomic unit of work. Build it with the methods, hand it to
/// [`Store::commit`](crate::Store::commit).
#[derive(Debug, Clone, Default)]
pub struct Commit {
    /// Histories to extend.
    pub appends: Vec<Append>,
    /// Tasks to enqueue.
    pub tasks: Vec<NewTask>,
    /// The task this was done under, checked against its fencing token.
    pub settle: Option<Settle>,
    /// Outbox messages to write: they exist if and only if the commit does.
    pub outbox: Vec<crate::OutboxMessage>,
    /// Inbox message ids to record. If one was recorded within the default window
    /// ([`DEFAULT_INBOX_WINDOW`](crate::DEFAULT_INBOX_WINDOW)), nothing of the commit is written
    /// and it fails with [`Error::AlreadyReceived`](crate::Error::AlreadyReceived).
    pub receive: Vec<String>,
}

impl Commit {
    /// An empty commit.
    pub fn new() -> Self {
        Commit::default()
    }

    /// Appends `events` to `instance_id`, expecting `expected`.
    pub fn append(
        mut self,
        instance_id: impl Into<String>,
        expected: Expected,
        events: impl IntoIterator<Item = HistoryEvent>,
    ) -> Self {
        self.appends.push(Append {
            instance_id: instance_id.into(),
            expected,
            events: events.into_iter().collect(),
            at: None,
        });
        self
    }

    /// Enqueues a task.
    pub fn enqueue(mut self, task: NewTask) -> Self {
        self.tasks.push(task);
        self
    }

    /// Completes the task held under `lease`.
    pub fn complete(mut self, lease: Lease) -> Self {
        self.settle = Some(Settle::Complete(lease));
        self
    }

    /// This commit without its appends to instance `id` and the orchestration tasks that would wake
    /// it: what is left to write when `id` has ended meanwhile (a parent told of its child's end
    /// after the parent was terminated).
    pub fn without_instance(mut self, id: &str) -> Self {
        self.appends.retain(|a| a.instance_id != id);
        self.tasks.retain(|t| {
            t.kind != crate::TaskKind::Orchestration || t.instance_id.as_deref() != Some(id)
        });
        self
    }

    /// The instances this commit ends (it appends a closing event to them). When it commits, their
    /// outstanding activities and timers have nobody to report to: the stores drop them in the
    /// same transaction (see the `Store` docs on ending an instance).
    pub(crate) fn ending_instances(&self) -> Vec<&str> {
        self.appends
            .iter()
            .filter(|a| a.events.iter().any(|e| e.closing_status().is_some()))
            .map(|a| a.instance_id.as_str())
            .collect()
    }

    /// Writes an outbox message with the commit.
    pub fn send(mut self, message: crate::OutboxMessage) -> Self {
        self.outbox.push(message);
        self
    }

    /// Records an inbox message id with the commit: the commit happens once per id.
    pub fn receive(mut self, message_id: impl Into<String>) -> Self {
        self.receive.push(message_id.into());
        self
    }

    /// Fails the task held under `lease`.
    pub fn fail(mut self, lease: Lease, action: FailAction) -> Self {
        self.settle = Some(Settle::Fail(lease, action));
        self
    }
}

/// What a commit wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Committed {
    /// For each append, in order: the sequence numbers of its first and last event (equal to
    /// `(next, next - 1)` for an empty append).
    pub appended: Vec<(u64, u64)>,
    /// The ids of the enqueued tasks, in order. An orchestration task merged into one that already
    /// existed reports that task's id, and so does a job deduplicated by its unique key.
    pub task_ids: Vec<i64>,
    /// The tasks (by index) that were not inserted because another job held their unique key, and
    /// what happened instead. Every other task was inserted (or merged, for orchestrations).
    pub deduplicated: Vec<(usize, crate::Enqueued)>,
}

impl Committed {
    /// What happened to task `i` of the commit.
    pub fn outcome(&self, i: usize) -> crate::Enqueued {
        self.deduplicated
            .iter()
            .find(|(j, _)| *j == i)
            .map_or(crate::Enqueued::New, |(_, e)| *e)
    }
}
