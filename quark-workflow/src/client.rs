//! The client: start, signal, cancel, terminate, describe, list and await instances over any
//! [`Store`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use quark_history::{
    Commit, Expected, Failure, HistoryEvent, HistoryRange, IdReusePolicy, InstanceFilter,
    InstanceRecord, InstanceStatus, NewInstance, NewTask, Payload, RecordedEvent, Store, Timestamp,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::connection::Handle;
use crate::definition::Orchestration;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The store refused or failed (duplicate id, closed instance, lost connection, ...); see
    /// the inner error for what to do.
    #[error(transparent)]
    Store(#[from] quark_history::Error),
    /// No instance has this id. Check the id and the database the client points at.
    #[error("no instance `{0}`")]
    NotFound(String),
    /// A value could not be encoded or decoded: the types on both sides disagree.
    #[error("payload: {0}")]
    Payload(String),
    /// The API server (a [`Connection`](crate::Connection) to `quark serve`) refused or failed:
    /// `code` is the gRPC status code's name (`UNAUTHENTICATED`, `UNAVAILABLE`, ...).
    #[error("the API answered {code}: {message}")]
    Api {
        /// The status code's name.
        code: String,
        /// What the server said.
        message: String,
    },
    /// The orchestration ended with an error.
    #[error("instance `{id}` failed: {}", failure.message)]
    Failed {
        /// The instance (the last run, after `continue_as_new`).
        id: String,
        /// Why.
        failure: Failure,
    },
    /// The orchestration ended after a cancellation request.
    #[error("instance `{id}` was cancelled: {reason}")]
    Cancelled {
        /// The instance.
        id: String,
        /// The reason given.
        reason: String,
    },
    /// The instance was terminated.
    #[error("instance `{id}` was terminated: {reason}")]
    Terminated {
        /// The instance.
        id: String,
        /// The reason given.
        reason: String,
    },
    /// The instance is blocked ([`InstanceStatus::Blocked`]): its code failed in a way that
    /// retrying cannot fix (a nondeterminism error, a panic, an orchestration type no worker
    /// has), and its turn is in the dead-letter list. `error` says what; for a nondeterminism
    /// error, the recorded and the new command and their call sites. It has not ended: fix the
    /// code, deploy it, and re-drive the turn (`quark dlq redrive <task_id>`,
    /// `Store::redrive`); it goes on from where it stopped.
    #[error("instance `{id}` is blocked: {error}{}", redrive_hint(*task_id))]
    Blocked {
        /// The instance (the last run, after `continue_as_new`).
        id: String,
        /// Why its turn was dead-lettered.
        error: String,
        /// The dead-lettered turn to re-drive once the code is fixed (`None` if it was re-driven
        /// or removed while the instance was read).
        task_id: Option<i64>,
    },
    /// The instance refused a query or an update, and nothing changed: the orchestration
    /// declares no handler of that name, the update's validator rejected it, the query's
    /// handler failed, or the instance has ended (an update) or cannot run (its code is broken).
    #[error("instance `{id}` refused the request: {reason}")]
    Rejected {
        /// The instance.
        id: String,
        /// Why.
        reason: String,
    },
    /// An update was accepted and its handler returned an error (recorded in the history).
    #[error("update `{update}` of instance `{id}` failed: {}", failure.message)]
    UpdateFailed {
        /// The instance.
        id: String,
        /// The update's id.
        update: String,
        /// Why.
        failure: Failure,
    },
    /// (Test environment) the instance is still running and nothing can move it forward: it
    /// waits for a signal, or for a task nobody serves. Send the signal, or register the code.
    #[error("instance `{id}` is waiting and nothing can move it forward: {reason}")]
    Stuck {
        /// The instance.
        id: String,
        /// What it waits for.
        reason: String,
    },
}

fn redrive_hint(task_id: Option<i64>) -> String {
    match task_id {
        Some(id) => {
            format!(" (fix the code, deploy it, then re-drive its turn: `quark dlq redrive {id}`)")
        }
        None => " (fix the code, deploy it, then re-drive its turn)".into(),
    }
}

/// The error that reports a blocked instance.
pub(crate) fn blocked(record: InstanceRecord) -> ClientError {
    let (error, task_id) = match record.blocked {
        Some(turn) => (turn.error, Some(turn.task_id)),
        None => ("its turn was dead-lettered".into(), None),
    };
    ClientError::Blocked {
        id: record.id,
        error,
        task_id,
    }
}

fn payload_error(e: impl fmt::Display) -> ClientError {
    ClientError::Payload(e.to_string())
}

/// Runs work in-process until an instance ends (the test environment's virtual worker).
pub(crate) trait Driver: Send + Sync + fmt::Debug {
    fn drive<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ClientError>>;
    /// Runs what is runnable now or, if nothing is, moves the clock to when something becomes
    /// runnable; `false` if nothing ever will.
    fn step(&self) -> BoxFuture<'_, Result<bool, ClientError>>;
}

/// How to start an instance.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct StartOptions {
    /// What to do when the id is taken (default: refuse).
    pub id_reuse: IdReusePolicy,
    /// The queue of its orchestration tasks (default: the orchestration's).
    pub queue: Option<String>,
    /// Priority of its orchestration tasks.
    pub priority: i32,
    /// When it starts (default: now).
    pub start_at: Option<Timestamp>,
}

impl StartOptions {
    /// Sets the id reuse policy.
    pub fn id_reuse(mut self, policy: IdReusePolicy) -> Self {
        self.id_reuse = policy;
        self
    }

    /// Sets the queue.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }
}

/// Talks to instances through a [`Store`].
#[derive(Clone)]
pub struct Client {
    store: Arc<dyn Store>,
    driver: Option<Arc<dyn Driver>>,
    /// How long [`result`](Self::result) goes without looking at the instance, at most, when it
    /// hears of no end.
    look_every: Duration,
}

/// How long [`Client::result`] waits at most between two looks at an instance when it hears of
/// no end: ends are announced, so this only bounds how late a lost notice, a blocked instance or
/// (on SQLite) another process's end is seen.
pub const DEFAULT_RESULT_LOOK_EVERY: Duration = Duration::from_secs(1);

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// A client over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        Client {
            store,
            driver: None,
            look_every: DEFAULT_RESULT_LOOK_EVERY,
        }
    }

    #[cfg(feature = "sqlite")] // the test environment's, which runs on SQLite
    pub(crate) fn with_driver(store: Arc<dyn Store>, driver: Arc<dyn Driver>) -> Self {
        Client {
            store,
            driver: Some(driver),
            look_every: DEFAULT_RESULT_LOOK_EVERY,
        }
    }

    /// Sets how long [`result`](Self::result) goes at most without looking at the instance when
    /// it hears of no end (default [`DEFAULT_RESULT_LOOK_EVERY`]).
    pub fn result_look_every(mut self, every: Duration) -> Self {
        self.look_every = every;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The test environment's driver, under [`TestEnv`](crate::testing::TestEnv).
    pub(crate) fn driver(&self) -> Option<&Arc<dyn Driver>> {
        self.driver.as_ref()
    }

    /// Starts orchestration `O` as `instance_id` (refusing a duplicate id).
    pub async fn start<O: Orchestration>(
        &self,
        instance_id: impl Into<String>,
        input: &O::Input,
    ) -> Result<Handle<O::Output>, ClientError> {
        self.start_with::<O>(instance_id, input, StartOptions::default())
            .await
    }

    /// Starts orchestration `O` as `instance_id` with `options`.
    pub async fn start_with<O: Orchestration>(
        &self,
        instance_id: impl Into<String>,
        input: &O::Input,
        options: StartOptions,
    ) -> Result<Handle<O::Output>, ClientError> {
        let id = instance_id.into();
        let input = Payload::json(input).map_err(payload_error)?;
        let mut new = NewInstance::new(id.clone(), O::NAME, input);
        new.version = O::VERSION;
        new.queue = options.queue.unwrap_or_else(|| O::queue().to_string());
        new.priority = options.priority;
        new.start_at = options.start_at;
        crate::trace_context::stamp_instance(&mut new);
        self.store.create_instance(new, options.id_reuse).await?;
        Ok(self.handle::<O>(id))
    }

    /// Starts an instance of the orchestration type called `instance_type`, at `version`, with
    /// an input already encoded: for a process that knows the type by name only (the API server,
    /// the command line), which takes the version and the default queue from the catalog of
    /// registered types. `options.queue` must be set. Returns what the store created (with
    /// `ReturnExisting`, possibly the existing instance).
    pub async fn start_by_name(
        &self,
        instance_type: &str,
        version: u32,
        instance_id: impl Into<String>,
        input: Payload,
        options: StartOptions,
    ) -> Result<quark_history::Created, ClientError> {
        let mut new = NewInstance::new(instance_id.into(), instance_type, input);
        new.version = version;
        new.queue = options
            .queue
            .ok_or_else(|| ClientError::Payload("a start by name needs a queue".into()))?;
        new.priority = options.priority;
        new.start_at = options.start_at;
        crate::trace_context::stamp_instance(&mut new);
        Ok(self.store.create_instance(new, options.id_reuse).await?)
    }

    /// Starts one instance of orchestration `O` per `(instance id, input)`, all in one
    /// transaction (one statement on PostgreSQL): much cheaper than one `start` each when there
    /// are many. A taken id fails the batch and starts none unless `options.id_reuse` is
    /// `ReturnExisting`. Returns the handles in order.
    pub async fn start_many<O: Orchestration>(
        &self,
        starts: impl IntoIterator<Item = (String, O::Input)>,
        options: StartOptions,
    ) -> Result<Vec<Handle<O::Output>>, ClientError> {
        let queue = options.queue.unwrap_or_else(|| O::queue().to_string());
        let mut news = Vec::new();
        for (id, input) in starts {
            let input = Payload::json(&input).map_err(payload_error)?;
            let mut new = NewInstance::new(id, O::NAME, input);
            new.version = O::VERSION;
            new.queue = queue.clone();
            new.priority = options.priority;
            new.start_at = options.start_at;
            crate::trace_context::stamp_instance(&mut new);
            news.push(new);
        }
        let ids: Vec<String> = news.iter().map(|n| n.id.clone()).collect();
        self.store.create_instances(news, options.id_reuse).await?;
        Ok(ids.into_iter().map(|id| self.handle::<O>(id)).collect())
    }

    /// The typed handle of instance `instance_id` of orchestration `O`.
    pub fn handle<O: Orchestration>(&self, instance_id: impl Into<String>) -> Handle<O::Output> {
        Handle::new(Arc::new(self.clone()), instance_id)
    }

    /// Enqueues activity `A` as a durable job with `input`; returns the job's id.
    pub async fn enqueue<A: crate::Activity>(
        &self,
        input: &A::Input,
        options: crate::JobOptions,
    ) -> Result<crate::JobId, ClientError> {
        let now = self.store.config().clock.now();
        let task = crate::job::job_task::<A>(input, &options, now)?;
        let ids = self.store.enqueue(vec![task]).await?;
        Ok(crate::JobId::new(ids[0]))
    }

    /// Enqueues one job of activity `A` per input, all in one transaction (one statement on
    /// PostgreSQL); returns their ids in order.
    pub async fn enqueue_many<A: crate::Activity>(
        &self,
        inputs: impl IntoIterator<Item = A::Input>,
        options: crate::JobOptions,
    ) -> Result<Vec<crate::JobId>, ClientError> {
        let now = self.store.config().clock.now();
        let tasks = inputs
            .into_iter()
            .map(|input| crate::job::job_task::<A>(&input, &options, now))
            .collect::<Result<Vec<_>, _>>()?;
        let ids = self.store.enqueue(tasks).await?;
        Ok(ids.into_iter().map(crate::JobId::new).collect())
    }

    /// One instance. A blocked one carries the turn that blocks it
    /// ([`InstanceRecord::blocked`]).
    pub async fn describe(&self, instance_id: &str) -> Result<InstanceRecord, ClientError> {
        self.store
            .get_instance(instance_id)
            .await?
            .ok_or_else(|| ClientError::NotFound(instance_id.to_string()))
    }

    /// Instances matching `filter`, newest first.
    pub async fn list(&self, filter: InstanceFilter) -> Result<Vec<InstanceRecord>, ClientError> {
        Ok(self.store.list_instances(filter).await?)
    }

    /// An instance's whole history.
    pub async fn history(&self, instance_id: &str) -> Result<Vec<RecordedEvent>, ClientError> {
        Ok(self
            .store
            .read_history(instance_id, HistoryRange::All)
            .await?)
    }

    /// Instance `instance_id` as it stood at a past point of its history: after event `n`
    /// ([`At::Version`](crate::entity::At::Version)) or after every event recorded at or before a
    /// time ([`At::Time`](crate::entity::At::Time)): its status, what it was waiting for, what it
    /// had received. Read from the history; no orchestration code runs. A version past the
    /// history's end is refused.
    pub async fn state_at(
        &self,
        instance_id: &str,
        at: crate::entity::At,
    ) -> Result<crate::WorkflowAt, ClientError> {
        let history = self.history(instance_id).await?;
        let version = match at {
            crate::entity::At::Version(v) => {
                if v > history.len() as u64 {
                    return Err(ClientError::Store(quark_history::Error::Invalid(format!(
                        "instance `{instance_id}` has {} events: there is no version {v}",
                        history.len()
                    ))));
                }
                v
            }
            crate::entity::At::Time(t) => history
                .iter()
                .take_while(|e| e.recorded_at <= t)
                .last()
                .map_or(0, |e| e.seq),
        };
        crate::past::workflow_at(&history, version).ok_or_else(|| {
            ClientError::Store(quark_history::Error::Invalid(format!(
                "`{instance_id}` is not a workflow instance (an entity stream?)"
            )))
        })
    }

    /// Sends `signal` with `value` to instance `instance_id`: the typed
    /// [`signal`](Self::signal), for a [`Signal`](crate::Signal) declared once and awaited with
    /// `ctx.wait_for(signal)`.
    pub async fn send<T: Serialize>(
        &self,
        instance_id: &str,
        signal: crate::Signal<T>,
        value: &T,
    ) -> Result<(), ClientError> {
        self.signal(instance_id, signal.name(), value).await
    }

    /// Sends signal `name` with `value`; the orchestration receives it through
    /// `ctx.wait_for_signal(name)`.
    pub async fn signal<T: Serialize>(
        &self,
        instance_id: &str,
        name: &str,
        value: &T,
    ) -> Result<(), ClientError> {
        let payload = Payload::json(value).map_err(payload_error)?;
        self.signal_payload(instance_id, name, payload).await
    }

    /// Sends signal `name` with a value already encoded (the API server's signal).
    pub async fn signal_payload(
        &self,
        instance_id: &str,
        name: &str,
        payload: Payload,
    ) -> Result<(), ClientError> {
        let event = HistoryEvent::SignalReceived {
            name: name.to_string(),
            payload,
        };
        self.wake_with(instance_id, event).await
    }

    /// Requests cancellation: the orchestration's next await returns `Cancelled`, and it may
    /// compensate before it ends.
    pub async fn cancel(&self, instance_id: &str, reason: &str) -> Result<(), ClientError> {
        let event = HistoryEvent::CancelRequested {
            reason: reason.to_string(),
        };
        self.wake_with(instance_id, event).await
    }

    /// Stops an instance at once, without running any more of its code. A parent waiting for it
    /// sees the child fail.
    pub async fn terminate(&self, instance_id: &str, reason: &str) -> Result<(), ClientError> {
        let record = self.describe(instance_id).await?;
        let event = HistoryEvent::WorkflowTerminated {
            reason: reason.to_string(),
        };
        let mut commit = Commit::new().append(instance_id, Expected::Any, [event]);
        let first = self
            .store
            .read_history(instance_id, HistoryRange::From(1))
            .await?;
        if let Some(HistoryEvent::WorkflowStarted {
            parent: Some(parent),
            ..
        }) = first.first().map(|e| &e.event)
        {
            let notice = HistoryEvent::ChildFailed {
                command: parent.command,
                failure: Failure::terminal(format!("terminated: {reason}")),
            };
            commit = commit
                .append(parent.instance_id.as_str(), Expected::Any, [notice])
                .enqueue(NewTask::orchestration(&record.queue, &parent.instance_id));
        }
        crate::trace_context::stamp_commit(&mut commit);
        match self.store.commit(commit.clone()).await {
            // The parent ended first: only the child is left to stop.
            Err(quark_history::Error::InstanceClosed { id, .. }) if id != instance_id => {
                self.store.commit(commit.without_instance(&id)).await?;
            }
            other => {
                other?;
            }
        }
        Ok(())
    }

    async fn wake_with(&self, instance_id: &str, event: HistoryEvent) -> Result<(), ClientError> {
        let record = self.describe(instance_id).await?;
        let mut commit = Commit::new()
            .append(instance_id, Expected::Any, [event])
            .enqueue(NewTask::orchestration(&record.queue, instance_id));
        crate::trace_context::stamp_commit(&mut commit);
        self.store.commit(commit).await?;
        Ok(())
    }

    /// Waits until `instance_id` (or the last run it continued as) ends, and decodes its output.
    /// A blocked instance does not wait: it is [`ClientError::Blocked`] at once, with the error
    /// that blocks it.
    ///
    /// It waits for the instance's end to be announced (in this process, and on PostgreSQL by
    /// any process), and looks again at least every
    /// [`result_look_every`](Self::result_look_every) in case a notice was lost.
    pub async fn result<T: DeserializeOwned>(&self, instance_id: &str) -> Result<T, ClientError> {
        self.result_payload(instance_id)
            .await?
            .1
            .decode()
            .map_err(payload_error)
    }

    /// [`result`](Self::result) without decoding: the id of the run that completed (the last
    /// one, after `continue_as_new`) and its output as stored.
    pub async fn result_payload(
        &self,
        instance_id: &str,
    ) -> Result<(String, Payload), ClientError> {
        let mut id = instance_id.to_string();
        // Subscribed before the first look, so that an end between a look and the wait is heard.
        let mut ends = match self.driver {
            Some(_) => None,
            None => match self.store.watch_ends().await {
                Ok(ends) => Some(ends),
                Err(e) => {
                    tracing::debug!(error = %e, "no notices of ends; looking at the instance now and then");
                    None
                }
            },
        };
        let mut delay = Duration::from_millis(10);
        loop {
            let record = self.describe(&id).await?;
            if record.status == InstanceStatus::Blocked {
                return Err(blocked(record));
            }
            if !record.status.is_closed() {
                match (&self.driver, &mut ends) {
                    (Some(driver), _) => driver.drive(&id).await?,
                    (None, Some(ends)) => wait_for_end(ends, &id, self.look_every).await,
                    (None, None) => {
                        tokio::time::sleep(delay.min(self.look_every)).await;
                        delay = (delay * 2).min(Duration::from_millis(500));
                    }
                }
                continue;
            }
            let last = self
                .store
                .read_history(&id, HistoryRange::From(record.history_len))
                .await?;
            match last.last().map(|e| &e.event) {
                Some(HistoryEvent::WorkflowCompleted { output }) => {
                    return Ok((id, output.clone()));
                }
                Some(HistoryEvent::WorkflowFailed { failure }) => {
                    let failure = failure.clone();
                    return Err(ClientError::Failed { id, failure });
                }
                Some(HistoryEvent::WorkflowCancelled { reason }) => {
                    let reason = reason.clone();
                    return Err(ClientError::Cancelled { id, reason });
                }
                Some(HistoryEvent::WorkflowTerminated { reason }) => {
                    let reason = reason.clone();
                    return Err(ClientError::Terminated { id, reason });
                }
                Some(HistoryEvent::ContinuedAsNew {
                    new_instance_id, ..
                }) => id = new_instance_id.clone(),
                other => {
                    return Err(ClientError::Payload(format!(
                        "instance `{id}` is {} but its last event is {:?}",
                        record.status, other
                    )));
                }
            }
        }
    }
}

/// Waits until `instance` is announced ended, a notice may have been lost, or `every` passed.
async fn wait_for_end(ends: &mut quark_history::Wakeups, instance: &str, every: Duration) {
    let deadline = tokio::time::Instant::now() + every;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match ends.wait(left).await {
            None | Some(quark_history::Wake::MayHaveMissed) => return,
            Some(quark_history::Wake::Ended { instance: ended }) if ended == instance => return,
            Some(_) => {}
        }
    }
}

impl crate::Connection for Client {
    fn start_instance<'a>(
        &'a self,
        instance_type: &'a str,
        version: u32,
        instance_id: String,
        input: Payload,
        options: StartOptions,
    ) -> BoxFuture<'a, Result<String, ClientError>> {
        Box::pin(async move {
            let created = self
                .start_by_name(instance_type, version, instance_id, input, options)
                .await?;
            Ok(created.instance.id)
        })
    }

    fn result_payload<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<(String, Payload), ClientError>> {
        Box::pin(Client::result_payload(self, instance_id))
    }

    fn signal_payload<'a>(
        &'a self,
        instance_id: &'a str,
        name: &'a str,
        value: Payload,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(Client::signal_payload(self, instance_id, name, value))
    }

    fn cancel<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(Client::cancel(self, instance_id, reason))
    }

    fn terminate<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(Client::terminate(self, instance_id, reason))
    }

    fn describe<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<InstanceRecord, ClientError>> {
        Box::pin(Client::describe(self, instance_id))
    }

    fn query_payload<'a>(
        &'a self,
        instance_id: &'a str,
        name: &'a str,
        input: Payload,
    ) -> BoxFuture<'a, Result<Payload, ClientError>> {
        Box::pin(Client::query_payload(self, instance_id, name, input))
    }

    fn update_payload<'a>(
        &'a self,
        instance_id: &'a str,
        update_id: &'a str,
        name: &'a str,
        input: Payload,
    ) -> BoxFuture<'a, Result<Payload, ClientError>> {
        Box::pin(Client::update_payload(
            self,
            instance_id,
            update_id,
            name,
            input,
        ))
    }
}

impl crate::WorkflowClient for Client {
    fn connection(&self) -> Arc<dyn crate::Connection> {
        Arc::new(self.clone())
    }
}
