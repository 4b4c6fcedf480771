//! The one implementation of [`Store`], for every [`SqlStore`]: each method is the shared SQL of
//! [`instances`](super::instances), [`journal`](super::journal) and [`queue`](super::queue), or,
//! where the databases truly differ (the commit path, wake-up subscriptions), the dialect's hook.
//!
//! `Store` is public and `SqlStore` crate-private, so only this crate's two stores can implement
//! `SqlStore`, and through it `Store`; the blanket implementation keeps the methods in one place,
//! which a forwarding `impl Store` per backend would not.

use std::time::Duration;

use futures::future::BoxFuture;

use super::{Dialect, SqlStore, instances, journal, placement, queue, workers};
use crate::clock::Timestamp;
use crate::commit::{Commit, Committed};
use crate::error::Result;
use crate::event::RecordedEvent;
use crate::instance::{
    Created, IdReusePolicy, InstanceFilter, InstanceRecord, InstanceStatus, NewInstance,
};
use crate::journal::{ChainReport, GlobalEvent, GlobalPosition, HistoryRange};
use crate::queue::{
    AffinityMove, ClaimRequest, ClaimedTask, DeadTask, Incarnation, Lead, Lease, Placed,
    QueueStats, Reaped, Registered, WorkerInfo,
};
use crate::store::{Backend, Store, StoreConfig};
use crate::transaction::StoreTx;
use crate::wakeup::Wakeups;

impl<S: SqlStore> Store for S {
    fn backend(&self) -> Backend {
        S::Db::BACKEND
    }

    fn config(&self) -> &StoreConfig {
        self.settings()
    }

    fn migrate(&self) -> BoxFuture<'_, Result<()>> {
        S::Db::migrate(self.writer(), super::migrator(S::Db::MIGRATIONS))
    }

    fn pending_migrations(&self) -> BoxFuture<'_, Result<Vec<i64>>> {
        Box::pin(async move {
            let mut conn = self.reader().acquire().await?;
            // A database never migrated has no table to read; that is "all pending", not an error.
            let tracked: bool = super::Stmt::<S::Db>::new(S::Db::MIGRATIONS_TRACKED)
                .fetch_one(&mut conn)
                .await?
                .get("tracked")?;
            let mut applied = Vec::new();
            if tracked {
                for row in
                    super::Stmt::<S::Db>::new("SELECT version FROM _sqlx_migrations WHERE success")
                        .fetch_all(&mut conn)
                        .await?
                {
                    applied.push(row.get::<i64>("version")?);
                }
            }
            Ok(super::pending(
                &super::migrator(S::Db::MIGRATIONS),
                &applied,
            ))
        })
    }

    fn create_instance(
        &self,
        new: NewInstance,
        policy: IdReusePolicy,
    ) -> BoxFuture<'_, Result<Created>> {
        Box::pin(async move {
            let mut created = instances::create_instances(self, vec![new], policy).await?;
            Ok(created.remove(0))
        })
    }

    fn create_instances(
        &self,
        new: Vec<NewInstance>,
        policy: IdReusePolicy,
    ) -> BoxFuture<'_, Result<Vec<Created>>> {
        Box::pin(instances::create_instances(self, new, policy))
    }

    fn get_instance<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<InstanceRecord>>> {
        Box::pin(instances::get_instance(self, id))
    }

    fn list_instances(&self, filter: InstanceFilter) -> BoxFuture<'_, Result<Vec<InstanceRecord>>> {
        Box::pin(instances::list_instances(self, filter))
    }

    fn count_instances(
        &self,
        status: InstanceStatus,
    ) -> BoxFuture<'_, Result<std::collections::BTreeMap<String, u64>>> {
        Box::pin(instances::count_instances(self, status))
    }

    fn read_history<'a>(
        &'a self,
        instance_id: &'a str,
        range: HistoryRange,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        Box::pin(journal::read_history(self, instance_id, range))
    }

    fn read_histories<'a>(
        &'a self,
        from: &'a [(String, u64)],
    ) -> BoxFuture<'a, Result<Vec<Vec<RecordedEvent>>>> {
        Box::pin(journal::read_histories(self, from))
    }

    fn read_all(
        &self,
        after: GlobalPosition,
        limit: u32,
    ) -> BoxFuture<'_, Result<Vec<GlobalEvent>>> {
        Box::pin(journal::read_all(self, after, limit))
    }

    fn verify<'a>(&'a self, instance_id: &'a str) -> BoxFuture<'a, Result<ChainReport>> {
        Box::pin(journal::verify(self, instance_id))
    }

    fn commit(&self, commit: Commit) -> BoxFuture<'_, Result<Committed>> {
        let ended = ended(&commit);
        if ended.is_empty() {
            return self.write_commit(commit);
        }
        Box::pin(async move {
            let committed = self.write_commit(commit).await?;
            self.announce_ends(ended);
            Ok(committed)
        })
    }

    fn commit_many(&self, commits: Vec<Commit>) -> BoxFuture<'_, Vec<Result<Committed>>> {
        let ended: Vec<Vec<String>> = commits.iter().map(ended).collect();
        if ended.iter().all(Vec::is_empty) {
            return self.write_commits(commits);
        }
        Box::pin(async move {
            let results = self.write_commits(commits).await;
            let written = results
                .iter()
                .zip(ended)
                .filter(|(r, _)| r.is_ok())
                .flat_map(|(_, ended)| ended)
                .collect();
            self.announce_ends(written);
            results
        })
    }

    fn begin_tx(&self) -> BoxFuture<'_, Result<StoreTx>> {
        Box::pin(async move {
            let tx = self.begin_write().await?;
            Ok(S::Db::store_tx(tx, self.settings().clock.clone()))
        })
    }

    fn commit_tx(&self, tx: StoreTx, commit: Commit) -> BoxFuture<'_, Result<Committed>> {
        let ended = ended(&commit);
        match S::Db::from_store_tx(tx) {
            Ok(tx) if ended.is_empty() => self.write_commit_in(tx, commit),
            Ok(tx) => Box::pin(async move {
                let committed = self.write_commit_in(tx, commit).await?;
                self.announce_ends(ended);
                Ok(committed)
            }),
            Err(e) => Box::pin(async move { Err(e) }),
        }
    }

    fn enqueue_tx<'a>(
        &'a self,
        tx: &'a mut StoreTx,
        tasks: Vec<crate::NewTask>,
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(async move {
            crate::rows::check_tasks(self.settings(), &tasks)?;
            let now = self.settings().clock.now();
            let conn = S::Db::store_tx_conn(tx)?;
            let ids = crate::sql::enqueue::enqueue::<S>(&mut *conn, &tasks, now)
                .await?
                .ids;
            let visible = crate::rows::visible_queues(&tasks, now)
                .into_iter()
                .collect();
            self.announce_in(conn, visible).await?;
            Ok(ids)
        })
    }

    fn send_tx<'a>(
        &'a self,
        tx: &'a mut StoreTx,
        messages: Vec<crate::OutboxMessage>,
    ) -> BoxFuture<'a, Result<Vec<i64>>> {
        Box::pin(async move {
            let rows = crate::outbox::prepare(self.settings(), &messages)?;
            let now = self.settings().clock.now();
            let conn = S::Db::store_tx_conn(tx)?;
            let ids = S::insert_messages(&mut *conn, &rows, now).await?;
            if !ids.is_empty() {
                let outbox = vec![(
                    crate::outbox::OUTBOX_WAKE_QUEUE.to_string(),
                    crate::TaskKind::Outbox,
                )];
                self.announce_in(conn, outbox).await?;
            }
            Ok(ids)
        })
    }

    fn claim(&self, request: ClaimRequest) -> BoxFuture<'_, Result<Vec<ClaimedTask>>> {
        Box::pin(queue::claim(self, request))
    }

    fn extend_lease<'a>(
        &'a self,
        lease: &'a Lease,
        lease_for: Duration,
    ) -> BoxFuture<'a, Result<Timestamp>> {
        Box::pin(queue::extend_lease(self, lease, lease_for))
    }

    fn queue_stats<'a>(&'a self, queue: &'a str) -> BoxFuture<'a, Result<QueueStats>> {
        Box::pin(queue::queue_stats(self, queue))
    }

    fn list_dead<'a>(
        &'a self,
        queue: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<DeadTask>>> {
        Box::pin(queue::list_dead(self, queue, limit))
    }

    fn redrive(&self, task_id: i64) -> BoxFuture<'_, Result<()>> {
        Box::pin(queue::redrive(self, task_id))
    }

    fn subscribe(&self) -> BoxFuture<'_, Result<Wakeups>> {
        self.wakeups()
    }

    fn watch_ends(&self) -> BoxFuture<'_, Result<Wakeups>> {
        self.end_wakeups()
    }

    fn heartbeat_worker(&self, info: WorkerInfo) -> BoxFuture<'_, Result<()>> {
        Box::pin(workers::heartbeat_worker(self, info))
    }

    fn deregister_worker<'a>(&'a self, worker_id: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(workers::deregister_worker(self, worker_id))
    }

    fn list_workers(&self) -> BoxFuture<'_, Result<Vec<WorkerInfo>>> {
        Box::pin(workers::list_workers(self))
    }

    fn moved_away<'a>(
        &'a self,
        worker: &'a str,
        instances: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        Box::pin(placement::moved_away(self, worker, instances))
    }

    fn publish_sketch<'a>(&'a self, worker: &'a str, sketch: Vec<u8>) -> BoxFuture<'a, Result<()>> {
        Box::pin(placement::publish_sketch(self, worker, sketch))
    }

    fn sketches(&self) -> BoxFuture<'_, Result<Vec<crate::queue::PublishedSketch>>> {
        Box::pin(placement::sketches(self))
    }

    fn affinities<'a>(&'a self, instances: &'a [String]) -> BoxFuture<'a, Result<Vec<Placed>>> {
        Box::pin(placement::affinities(self, instances))
    }

    fn move_affinities<'a>(
        &'a self,
        moves: &'a [AffinityMove],
        lead: Option<&'a Lead>,
    ) -> BoxFuture<'a, Result<Vec<bool>>> {
        Box::pin(placement::move_affinities(self, moves, lead))
    }

    fn lead<'a>(
        &'a self,
        role: &'a str,
        holder: &'a str,
        ttl: std::time::Duration,
    ) -> BoxFuture<'a, Result<Option<Lead>>> {
        Box::pin(placement::lead(self, role, holder, ttl))
    }

    fn resign<'a>(&'a self, lead: &'a Lead) -> BoxFuture<'a, Result<()>> {
        Box::pin(placement::resign(self, lead))
    }

    fn location(&self) -> String {
        self.place()
    }

    fn register_worker<'a>(
        &'a self,
        info: WorkerInfo,
        run: &'a Incarnation,
    ) -> BoxFuture<'a, Result<Registered>> {
        Box::pin(workers::register(self, info, run))
    }

    fn heartbeat_run<'a>(
        &'a self,
        info: WorkerInfo,
        run: &'a Incarnation,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(workers::heartbeat(self, info, run))
    }

    fn retire_run<'a>(
        &'a self,
        worker_id: &'a str,
        run: &'a Incarnation,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(workers::retire(self, worker_id, run))
    }

    fn reap_workers<'a>(&'a self, caller: &'a str) -> BoxFuture<'a, Result<Vec<Reaped>>> {
        Box::pin(workers::reap(self, caller))
    }
}

/// The instances `commit` ends, to be told once it is written.
fn ended(commit: &Commit) -> Vec<String> {
    commit
        .ending_instances()
        .into_iter()
        .map(str::to_string)
        .collect()
}
