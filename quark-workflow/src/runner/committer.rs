//! Group commit: concurrent commits share transactions. A worker's task runners and the entities
//! of a process ([`Entities`](crate::entity::Entities)) hand their commits to a few committer
//! lanes. A lane takes whatever has piled up
//! (up to a batch limit) and writes it with [`EventLog::append_commits`] (a store's
//! [`commit_many`](quark_history::Store::commit_many)), each commit still all or nothing. Nothing waits to fill a batch: a lone commit goes out at once, and batches grow only
//! while the database is busy with the previous ones.

use std::sync::Arc;

use quark_history::{Commit, Committed, Error, EventLog};
use tokio::sync::{Mutex, mpsc, oneshot};

type Request = (Commit, oneshot::Sender<quark_history::Result<Committed>>);

/// Batches concurrent commits into [`EventLog::append_commits`] calls.
#[derive(Debug)]
pub struct Committer {
    tx: mpsc::UnboundedSender<Request>,
    /// Taken by [`start_lanes`](Self::start_lanes) when the worker starts: building a worker must
    /// not need a running Tokio runtime.
    rx: std::sync::Mutex<Option<mpsc::UnboundedReceiver<Request>>>,
}

impl Default for Committer {
    fn default() -> Self {
        Committer::new()
    }
}

impl Committer {
    /// A committer whose lanes are not started yet.
    pub fn new() -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Committer {
            tx,
            rx: std::sync::Mutex::new(Some(rx)),
        }
    }

    /// Starts the lanes over `log` (a [`Store`](quark_history::Store) is one), once; later calls
    /// do nothing. Needs a running Tokio runtime.
    pub fn start_lanes(&self, log: Arc<dyn EventLog>, lanes: usize, max_batch: usize) {
        let Some(rx) = self.rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..lanes.max(1) {
            tokio::spawn(lane(Arc::clone(&log), Arc::clone(&rx), max_batch.max(1)));
        }
    }

    /// Whether the lanes run.
    pub fn started(&self) -> bool {
        self.rx.lock().unwrap_or_else(|e| e.into_inner()).is_none()
    }

    /// Commits `commit` in the next batch of a lane; its result is its own.
    pub async fn commit(&self, commit: Commit) -> quark_history::Result<Committed> {
        let (reply, result) = oneshot::channel();
        if self.tx.send((commit, reply)).is_err() {
            return Err(Error::Invalid("the committer has stopped".into()));
        }
        result
            .await
            .unwrap_or_else(|_| Err(Error::Invalid("the committer has stopped".into())))
    }
}

async fn lane(
    log: Arc<dyn EventLog>,
    rx: Arc<Mutex<mpsc::UnboundedReceiver<Request>>>,
    max_batch: usize,
) {
    loop {
        let mut batch = Vec::new();
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(first) => batch.push(first),
                None => return,
            }
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(next) => batch.push(next),
                    Err(_) => break,
                }
            }
        }
        let (commits, replies): (Vec<Commit>, Vec<_>) = batch.into_iter().unzip();
        let results = log.append_commits(commits).await;
        for (result, reply) in results.into_iter().zip(replies) {
            let _ = reply.send(result);
        }
    }
}
