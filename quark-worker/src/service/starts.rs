//! Starts, batched: the starts that arrive while earlier ones are being written go to the
//! database together, in one transaction (one statement on PostgreSQL), instead of one
//! transaction each. A start that arrives alone is written at once, so batching adds nothing at
//! light load; under load a batch is as large as what arrived during the previous commit, up to
//! [`MAX_BATCH`], with at most [`IN_FLIGHT`] batches being written at a time.
//!
//! Each start keeps its own outcome: a taken id is refused for that start alone (the batch is
//! written with `ReturnExisting`, and a start that asked to refuse a duplicate and found its id
//! taken gets `DuplicateInstance`), and an id named twice in a batch goes to a later one: one of
//! the starts creates it, the others find it taken, as if they had come one after the other. If
//! a batch fails as a whole because of one of its starts (a payload over the limit, say), its
//! starts are written one by one, so that each gets its own answer; if it fails because the
//! database is unreachable, every start gets that error at once. A batch is written in id order,
//! so that batches written at the same time cannot deadlock on each other's rows.

use std::sync::Arc;

use quark_history::{Created, Error, IdReusePolicy, NewInstance, Store};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::Status;

/// The most starts written in one transaction.
pub const MAX_BATCH: usize = 256;

/// The most batches being written at a time.
pub const IN_FLIGHT: usize = 4;

type Reply = oneshot::Sender<Result<Created, Status>>;

/// Sends starts to the batching task.
#[derive(Debug, Clone)]
pub(crate) struct Starts {
    queue: mpsc::Sender<(NewInstance, IdReusePolicy, Reply)>,
    /// Transactions written (read by the tests).
    #[cfg_attr(not(test), allow(dead_code))]
    writes: Arc<std::sync::atomic::AtomicU64>,
}

impl Starts {
    /// Starts the batching task over `store`. It ends when every sender is dropped.
    pub(crate) fn new(store: Arc<dyn Store>) -> Starts {
        let (queue, incoming) = mpsc::channel(MAX_BATCH * IN_FLIGHT * 4);
        let writes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        tokio::spawn(batch(store, incoming, Arc::clone(&writes)));
        Starts { queue, writes }
    }

    /// Creates `new` with `policy`, in whichever batch it lands in.
    pub(crate) async fn start(
        &self,
        new: NewInstance,
        policy: IdReusePolicy,
    ) -> Result<Created, Status> {
        let stopping = || Status::unavailable("the server is shutting down");
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((new, policy, reply))
            .await
            .map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }
}

async fn batch(
    store: Arc<dyn Store>,
    mut incoming: mpsc::Receiver<(NewInstance, IdReusePolicy, Reply)>,
    writes: Arc<std::sync::atomic::AtomicU64>,
) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut held_over = Vec::new();
    loop {
        // A slot first: while every slot is busy, starts gather in the channel.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let mut batch = std::mem::take(&mut held_over);
        if batch.is_empty() {
            match incoming.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match incoming.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        // An id named twice waits for the next batch, which sees the first one's outcome.
        let mut ids = std::collections::HashSet::new();
        let (mut now, later): (Vec<_>, Vec<_>) = batch
            .into_iter()
            .partition(|(new, _, _)| ids.insert(new.id.clone()));
        held_over = later;
        // In id order, so that batches written at once take their rows' locks in one order and
        // cannot deadlock on PostgreSQL (arrivals A, B and B, A in two batches would).
        now.sort_by(|a, b| a.0.id.cmp(&b.0.id));
        let store = Arc::clone(&store);
        metrics::histogram!("quark_api_start_batch_size").record(now.len() as f64);
        writes.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::spawn(async move {
            write(&*store, now).await;
            drop(slot);
        });
    }
}

async fn write(store: &dyn Store, batch: Vec<(NewInstance, IdReusePolicy, Reply)>) {
    if let [_] = batch.as_slice() {
        let (new, policy, reply) = batch.into_iter().next().expect("one start");
        let _ = reply.send(
            store
                .create_instance(new, policy)
                .await
                .map_err(super::status::store),
        );
        return;
    }
    let news: Vec<NewInstance> = batch.iter().map(|(new, _, _)| new.clone()).collect();
    match store
        .create_instances(news, IdReusePolicy::ReturnExisting)
        .await
    {
        Ok(created) => {
            for ((_, policy, reply), created) in batch.into_iter().zip(created) {
                let outcome = if !created.created && policy == IdReusePolicy::RejectDuplicate {
                    Err(super::status::store(Error::DuplicateInstance {
                        id: created.instance.id,
                    }))
                } else {
                    Ok(created)
                };
                let _ = reply.send(outcome);
            }
        }
        // The database is unreachable or the transaction was in a conflict: every start of the
        // batch gets the error now (its callers retry), rather than waiting for its turn to fail
        // again one by one.
        Err(e) if e.is_retryable() => {
            let status = super::status::store(e);
            for (_, _, reply) in batch {
                let _ = reply.send(Err(status.clone()));
            }
        }
        // Something about one of the starts (a payload over the limit, say): each on its own.
        Err(_) => {
            for (new, policy, reply) in batch {
                let outcome = store
                    .create_instance(new, policy)
                    .await
                    .map_err(super::status::store);
                let _ = reply.send(outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quark_history::Payload;
    use tonic::Code;

    /// Starts sent together land in one batch, and each gets its own outcome: a duplicate id in
    /// the batch, a taken id, an oversized payload and an idempotent start do not disturb the
    /// others.
    #[tokio::test(flavor = "current_thread")]
    async fn each_start_of_a_batch_gets_its_own_outcome() {
        let t = quark_history::testing::sqlite().await;
        let new = |id: &str| NewInstance::new(id, "t", Payload::unit());
        t.store
            .create_instance(new("taken"), IdReusePolicy::RejectDuplicate)
            .await
            .unwrap();
        let starts = Starts::new(Arc::clone(&t.store));
        let mut requests = Vec::new();
        for i in 0..40 {
            requests.push((new(&format!("s-{i}")), IdReusePolicy::RejectDuplicate));
        }
        for _ in 0..3 {
            requests.push((new("twice"), IdReusePolicy::RejectDuplicate));
        }
        requests.push((new("taken"), IdReusePolicy::RejectDuplicate));
        requests.push((new("taken"), IdReusePolicy::ReturnExisting));
        let big = Payload::json(&"x".repeat(3 * 1024 * 1024)).unwrap();
        requests.push((
            NewInstance::new("big", "t", big),
            IdReusePolicy::RejectDuplicate,
        ));
        // Sent before the batching task runs again (one thread): they are all waiting when it
        // drains the channel.
        let outcomes = futures::future::join_all(
            requests
                .into_iter()
                .map(|(new, policy)| starts.start(new, policy)),
        )
        .await;
        let code = |o: &Result<Created, Status>| match o {
            Ok(c) if c.created => "created",
            Ok(_) => "existing",
            Err(e) if e.code() == Code::AlreadyExists => "taken",
            Err(e) if e.code() == Code::InvalidArgument => "invalid",
            Err(_) => "other",
        };
        let codes: Vec<&str> = outcomes.iter().map(code).collect();
        assert!(codes[..40].iter().all(|c| *c == "created"), "{codes:?}");
        let mut twice = codes[40..43].to_vec();
        twice.sort();
        assert_eq!(
            twice,
            ["created", "taken", "taken"],
            "one of the three: {codes:?}"
        );
        assert_eq!(codes[43..], ["taken", "existing", "invalid"], "{codes:?}");
        let writes = starts.writes.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            writes <= 3,
            "46 starts in {writes} transactions: the batch, the held-over duplicates"
        );
        let listed = t
            .store
            .list_instances(quark_history::InstanceFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 42, "40 + twice + taken; not big");
    }
}
