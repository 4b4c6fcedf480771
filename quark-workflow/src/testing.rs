//! The test environment: orchestrations and activities in-process, on an in-memory SQLite store,
//! under a virtual clock.
//!
//! [`TestEnv`] plays the worker. It runs every task with [`run_task`], the same
//! code as production (turns through [`process_turn`](crate::process_turn)), one at a time. When
//! nothing is runnable it moves its [`ManualClock`] straight to the next timer or retry, so a
//! 30-day timer takes milliseconds. Activities can be replaced by mocks.
//!
//! ```
//! # use std::time::Duration;
//! use quark_workflow::testing::TestEnv;
//! use quark_workflow::{ActivityContext, ActivityError, OrchestrationContext, OrchestrationError, Registry};
//!
//! #[quark_workflow::activity]
//! async fn charge_card(_ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
//!     Ok(format!("charged {cents}"))
//! }
//!
//! #[quark_workflow::orchestration]
//! async fn order(ctx: OrchestrationContext, cents: u64) -> Result<String, OrchestrationError> {
//!     ctx.sleep(Duration::from_secs(30 * 24 * 3600)).await?;
//!     ctx.call(charge_card, &cents).await
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let env = TestEnv::new(Registry::new().register(order).register(charge_card)).await?;
//! env.mock_activity::<charge_card>(|cents| Ok(format!("mocked {cents}")));
//! let handle = order::start(env.client(), "order-1", 500).await?;
//! assert_eq!(handle.result().await?, "mocked 500");
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use quark_history::{
    ClaimRequest, ClaimedTask, Clock, ManualClock, Payload, SqliteStore, Store, StoreConfig,
    Timestamp,
};

use crate::activity::{ActivityInfo, HeartbeatSink};
use crate::client::{Client, ClientError, Driver};
use crate::definition::Activity;
use crate::error::ActivityError;
use crate::registry::Registry;
use crate::runner::run_task;

/// Where the virtual clock starts: 2026-01-01T00:00:00Z.
pub const START: Timestamp = Timestamp::from_micros(1_767_225_600_000_000);

/// A heartbeat an activity sent: who, and its progress.
pub type Heartbeat = (ActivityInfo, Option<Payload>);

/// An in-process engine for tests. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct TestEnv {
    inner: Arc<Inner>,
    client: Client,
}

#[derive(Debug)]
struct Inner {
    store: Arc<dyn Store>,
    clock: ManualClock,
    registry: Mutex<Registry>,
    /// Times at which a task becomes visible (timers, retries): where the clock jumps to.
    wake_at: Mutex<BTreeSet<Timestamp>>,
    /// Queues served beyond the registry's.
    queues: Mutex<BTreeSet<String>>,
    /// Heartbeats activities sent, in order.
    heartbeats: Arc<Mutex<Vec<Heartbeat>>>,
    /// One driver at a time.
    running: tokio::sync::Mutex<()>,
}

impl TestEnv {
    /// An environment running `registry`'s code on a fresh in-memory SQLite store.
    pub async fn new(registry: Registry) -> Result<Self, ClientError> {
        let clock = ManualClock::new(START);
        let store =
            SqliteStore::in_memory_with(StoreConfig::default().clock(clock.clone())).await?;
        let inner = Arc::new(Inner {
            store: Arc::new(store),
            clock,
            registry: Mutex::new(registry),
            wake_at: Mutex::new(BTreeSet::new()),
            queues: Mutex::new(BTreeSet::new()),
            heartbeats: Arc::default(),
            running: tokio::sync::Mutex::new(()),
        });
        let client = Client::with_driver(inner.store.clone(), inner.clone());
        Ok(TestEnv { inner, client })
    }

    /// A client whose `result()` runs the environment until the instance ends.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.inner.store
    }

    /// The virtual clock.
    pub fn clock(&self) -> &ManualClock {
        &self.inner.clock
    }

    /// Replaces activity `A` with `mock` from now on.
    pub fn mock_activity<A: Activity>(
        &self,
        mock: impl Fn(A::Input) -> Result<A::Output, ActivityError> + Send + Sync + 'static,
    ) {
        self.inner.registry().mock_activity::<A>(mock);
    }

    /// Also serves `queue` (the registry's queues are always served): for instances started
    /// with `StartOptions::queue` or activities called with `call_with` on another queue.
    pub fn serve(&self, queue: impl Into<String>) {
        lock(&self.inner.queues).insert(queue.into());
    }

    /// The heartbeats activities have sent so far, with their progress.
    pub fn heartbeats(&self) -> Vec<Heartbeat> {
        lock(&self.inner.heartbeats).clone()
    }

    /// Runs every task that is runnable now, without moving the clock. Returns how many ran.
    pub async fn run_until_idle(&self) -> Result<usize, ClientError> {
        let _guard = self.inner.running.lock().await;
        self.inner.run_visible().await
    }

    /// Moves the clock forward by `d` and runs what became runnable.
    pub async fn advance(&self, d: std::time::Duration) -> Result<usize, ClientError> {
        self.inner.clock.advance(d);
        self.run_until_idle().await
    }
}

/// A test that panicked while holding a lock poisons it; the data is still whole.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        lock(&self.registry)
    }

    fn note_wake(&self, at: Timestamp) {
        lock(&self.wake_at).insert(at);
    }

    async fn run_visible(&self) -> Result<usize, ClientError> {
        let mut ran = 0;
        loop {
            let mut queues = self.registry().queues();
            queues.extend(lock(&self.queues).iter().cloned());
            let claimed = self
                .store
                .claim(ClaimRequest::new("quark-test-env", queues).limit(16))
                .await?;
            if claimed.is_empty() {
                return Ok(ran);
            }
            for task in claimed {
                self.execute(task).await?;
                ran += 1;
            }
        }
    }

    /// Runs one claimed task with the shared runner, noting when its follow-ups become visible.
    async fn execute(&self, task: ClaimedTask) -> Result<(), ClientError> {
        let registry = self.registry().clone();
        let seen = self.heartbeats.clone();
        let sink: HeartbeatSink =
            Arc::new(move |info: &ActivityInfo, progress: Option<Payload>| {
                lock(&seen).push((info.clone(), progress));
            });
        let ran = run_task(
            self.store.as_ref(),
            &registry,
            task,
            &self.clock,
            Some(sink),
        )
        .await?;
        for at in ran.wake_at {
            self.note_wake(at);
        }
        Ok(())
    }

    /// Why `instance_id` cannot move: a dead task of its own, or nothing left to wait for.
    async fn stuck(&self, instance_id: &str) -> ClientError {
        let dead = self.store.list_dead(None, 1000).await.unwrap_or_default();
        let reason = dead
            .into_iter()
            .rev()
            .find(|d| d.instance_id.as_deref() == Some(instance_id))
            .map(|d| d.error)
            .unwrap_or_else(|| "it waits for a signal (or a task on a queue nobody serves)".into());
        ClientError::Stuck {
            id: instance_id.to_string(),
            reason,
        }
    }
}

impl Driver for Inner {
    fn drive<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            let _guard = self.running.lock().await;
            loop {
                self.run_visible().await?;
                let record = self
                    .store
                    .get_instance(instance_id)
                    .await?
                    .ok_or_else(|| ClientError::NotFound(instance_id.to_string()))?;
                if record.status.is_closed() {
                    return Ok(());
                }
                let now = self.clock.now();
                let next = {
                    let mut wake = lock(&self.wake_at);
                    let later = wake.split_off(&(now + std::time::Duration::from_micros(1)));
                    let next = later.first().copied();
                    *wake = later;
                    next
                };
                match next {
                    Some(at) => self.clock.set(at),
                    None => return Err(self.stuck(instance_id).await),
                }
            }
        })
    }
}
