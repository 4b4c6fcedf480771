//! A client over a deployment's shards: each call goes to the database of the instance (or the
//! entity) it names, and listings merge every shard's.

use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use quark_history::shards::Shards;
use quark_history::{InstanceFilter, InstanceRecord, Payload};

use crate::client::{Client, ClientError, StartOptions};
use crate::entity::{Entities, Entity, EntityRef, stream_id};

/// A [`Client`] for each shard, routed by instance id ([`Shards::shard_of`]): starts, signals,
/// queries, updates, results and descriptions of an instance go to its shard's database; a
/// listing asks every shard and merges. Typed stubs take it like a `Client`
/// (`process_order::start(&sharded, id, input)`).
#[derive(Clone)]
pub struct ShardedClient {
    shards: Shards,
    clients: Arc<[Client]>,
    entities: Arc<[Entities]>,
}

impl fmt::Debug for ShardedClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ShardedClient")
            .field("shards", self.shards.map())
            .finish_non_exhaustive()
    }
}

impl ShardedClient {
    /// A client over `shards`.
    pub fn new(shards: Shards) -> Self {
        let clients = shards
            .stores()
            .iter()
            .map(|store| Client::new(Arc::clone(store)))
            .collect();
        let entities = shards
            .stores()
            .iter()
            .map(|store| Entities::new(Arc::clone(store)))
            .collect();
        ShardedClient {
            shards,
            clients,
            entities,
        }
    }

    /// Entity `E`'s instance `key`, on the shard its stream lives on (the stream id
    /// `TYPE/key` is its shard key). Orchestrations reach entities on other shards by
    /// themselves (`ctx.entity`): their commands go there through the outbox.
    pub async fn entity<E: Entity>(
        &self,
        key: impl Into<String>,
    ) -> Result<EntityRef<E>, ClientError> {
        let key = key.into();
        let shard = self.shards.locate(&stream_id::<E>(&key)).await?;
        Ok(self.entities[shard].entity(key))
    }

    /// The shards.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// The client of the shard instance `instance_id` lives on, or is created on (see
    /// [`Shards::locate`]: no database read unless shards were added).
    pub async fn client_for(&self, instance_id: &str) -> Result<&Client, ClientError> {
        Ok(&self.clients[self.shards.locate(instance_id).await?])
    }

    /// The client of the shard at `position` in the map.
    pub fn shard(&self, position: usize) -> &Client {
        &self.clients[position]
    }

    /// One instance, from its shard.
    pub async fn describe(&self, instance_id: &str) -> Result<InstanceRecord, ClientError> {
        self.client_for(instance_id)
            .await?
            .describe(instance_id)
            .await
    }

    /// Instances matching `filter` on every shard, newest first (by creation time, then id, as on
    /// one database): each shard is asked for a page under the same filter and cursor, and the
    /// pages are merged. Fails if a shard cannot be read: a listing that silently left a shard
    /// out would look complete.
    pub async fn list(&self, filter: InstanceFilter) -> Result<Vec<InstanceRecord>, ClientError> {
        let limit = if filter.limit == 0 { 100 } else { filter.limit } as usize;
        let pages = futures::future::join_all(
            self.clients
                .iter()
                .map(|client| client.list(filter.clone())),
        )
        .await;
        let mut all = Vec::new();
        for (page, name) in pages.into_iter().zip(self.shards.map().names()) {
            all.extend(page.map_err(|e| match e {
                ClientError::Store(e) => ClientError::Store(quark_history::Error::Invalid(
                    format!("shard `{name}` cannot be listed: {e}"),
                )),
                other => other,
            })?);
        }
        all.sort_by(|a, b| (b.created_at, &b.id).cmp(&(a.created_at, &a.id)));
        all.truncate(limit);
        Ok(all)
    }
}

impl crate::Connection for ShardedClient {
    fn start_instance<'a>(
        &'a self,
        instance_type: &'a str,
        version: u32,
        instance_id: String,
        input: Payload,
        options: StartOptions,
    ) -> BoxFuture<'a, Result<String, ClientError>> {
        Box::pin(async move {
            let client = self.client_for(&instance_id).await?;
            crate::Connection::start_instance(
                client,
                instance_type,
                version,
                instance_id,
                input,
                options,
            )
            .await
        })
    }

    fn result_payload<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<(String, Payload), ClientError>> {
        Box::pin(async move {
            crate::Connection::result_payload(self.client_for(instance_id).await?, instance_id)
                .await
        })
    }

    fn signal_payload<'a>(
        &'a self,
        instance_id: &'a str,
        name: &'a str,
        value: Payload,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            crate::Connection::signal_payload(
                self.client_for(instance_id).await?,
                instance_id,
                name,
                value,
            )
            .await
        })
    }

    fn cancel<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            crate::Connection::cancel(self.client_for(instance_id).await?, instance_id, reason)
                .await
        })
    }

    fn terminate<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>> {
        Box::pin(async move {
            crate::Connection::terminate(self.client_for(instance_id).await?, instance_id, reason)
                .await
        })
    }

    fn describe<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<InstanceRecord, ClientError>> {
        Box::pin(async move {
            crate::Connection::describe(self.client_for(instance_id).await?, instance_id).await
        })
    }

    fn query_payload<'a>(
        &'a self,
        instance_id: &'a str,
        name: &'a str,
        input: Payload,
    ) -> BoxFuture<'a, Result<Payload, ClientError>> {
        Box::pin(async move {
            crate::Connection::query_payload(
                self.client_for(instance_id).await?,
                instance_id,
                name,
                input,
            )
            .await
        })
    }

    fn update_payload<'a>(
        &'a self,
        instance_id: &'a str,
        update_id: &'a str,
        name: &'a str,
        input: Payload,
    ) -> BoxFuture<'a, Result<Payload, ClientError>> {
        Box::pin(async move {
            crate::Connection::update_payload(
                self.client_for(instance_id).await?,
                instance_id,
                update_id,
                name,
                input,
            )
            .await
        })
    }
}

impl crate::WorkflowClient for ShardedClient {
    fn connection(&self) -> Arc<dyn crate::Connection> {
        Arc::new(self.clone())
    }
}
