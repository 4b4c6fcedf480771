//! What a client talks to: the database, through the in-process [`Client`], or a Quark API
//! server (`quark_worker::service::RemoteClient`). The typed stubs the macros generate
//! (`process_order::start(&client, ..)`) and the [`Handle`]s they return work with either.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;

use futures::future::BoxFuture;
use quark_history::{InstanceRecord, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::{ClientError, StartOptions};
use crate::definition::Orchestration;

/// The calls on instances that a client makes, with values already encoded. Implemented by
/// [`Client`](crate::Client) (on a store) and by the API's remote client.
pub trait Connection: Send + Sync + fmt::Debug {
    /// Starts an instance of `instance_type` at `version` (a remote server starts it at the
    /// version workers registered); returns its id.
    fn start_instance<'a>(
        &'a self,
        instance_type: &'a str,
        version: u32,
        instance_id: String,
        input: Payload,
        options: StartOptions,
    ) -> BoxFuture<'a, Result<String, ClientError>>;

    /// Waits until the instance (or the last run it continued as) ends; the run that completed
    /// and its output, or how it failed.
    fn result_payload<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<(String, Payload), ClientError>>;

    /// Sends signal `name` with `value`.
    fn signal_payload<'a>(
        &'a self,
        instance_id: &'a str,
        name: &'a str,
        value: Payload,
    ) -> BoxFuture<'a, Result<(), ClientError>>;

    /// Requests cancellation.
    fn cancel<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>>;

    /// Terminates the instance.
    fn terminate<'a>(
        &'a self,
        instance_id: &'a str,
        reason: &'a str,
    ) -> BoxFuture<'a, Result<(), ClientError>>;

    /// The instance's record.
    fn describe<'a>(
        &'a self,
        instance_id: &'a str,
    ) -> BoxFuture<'a, Result<InstanceRecord, ClientError>>;

    /// Asks query `name` with `input` (see [`Client::query`](crate::Client::query)).
    fn query_payload<'a>(
        &'a self,
        instance_id: &'a str,
        name: &'a str,
        input: Payload,
    ) -> BoxFuture<'a, Result<Payload, ClientError>>;

    /// Sends update `name` with `input` under `update_id` and waits for its result (see
    /// [`Client::update_with_id`](crate::Client::update_with_id)).
    fn update_payload<'a>(
        &'a self,
        instance_id: &'a str,
        update_id: &'a str,
        name: &'a str,
        input: Payload,
    ) -> BoxFuture<'a, Result<Payload, ClientError>>;
}

/// A client that typed stubs take: `process_order::start(&client, id, input)` with a
/// [`Client`](crate::Client) or a remote one.
pub trait WorkflowClient: Send + Sync {
    /// The connection its handles use.
    fn connection(&self) -> Arc<dyn Connection>;
}

/// Starts orchestration `O` through `client` (what `O::start` does).
pub async fn start<O: Orchestration>(
    client: &(impl WorkflowClient + ?Sized),
    instance_id: impl Into<String>,
    input: &O::Input,
) -> Result<Handle<O::Output>, ClientError> {
    let connection = client.connection();
    let input = Payload::json(input).map_err(|e| ClientError::Payload(e.to_string()))?;
    let id = connection
        .start_instance(
            O::NAME,
            O::VERSION,
            instance_id.into(),
            input,
            StartOptions::default().queue(O::queue()),
        )
        .await?;
    Ok(Handle::new(connection, id))
}

/// A typed handle on one instance: `.result().await` yields the orchestration's output type.
pub struct Handle<T> {
    client: Arc<dyn Connection>,
    id: String,
    _out: PhantomData<fn() -> T>,
}

impl<T> fmt::Debug for Handle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("id", &self.id).finish()
    }
}

impl<T> Clone for Handle<T> {
    fn clone(&self) -> Self {
        Handle {
            client: Arc::clone(&self.client),
            id: self.id.clone(),
            _out: PhantomData,
        }
    }
}

impl<T> Handle<T> {
    /// The handle of instance `instance_id` over `connection`.
    pub fn new(connection: Arc<dyn Connection>, instance_id: impl Into<String>) -> Handle<T> {
        Handle {
            client: connection,
            id: instance_id.into(),
            _out: PhantomData,
        }
    }
}

impl<T: DeserializeOwned> Handle<T> {
    /// The instance id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Waits for the end of the instance (following `continue_as_new`) and returns its output.
    pub async fn result(&self) -> Result<T, ClientError> {
        let (_, output) = self.client.result_payload(&self.id).await?;
        output
            .decode()
            .map_err(|e| ClientError::Payload(e.to_string()))
    }

    /// The instance's row.
    pub async fn describe(&self) -> Result<InstanceRecord, ClientError> {
        self.client.describe(&self.id).await
    }

    /// Sends `signal` with `value` (see [`Client::send`](crate::Client::send)).
    pub async fn send<S: Serialize>(
        &self,
        signal: crate::Signal<S>,
        value: &S,
    ) -> Result<(), ClientError> {
        self.signal(signal.name(), value).await
    }

    /// Sends signal `name` with `value`.
    pub async fn signal<S: Serialize>(&self, name: &str, value: &S) -> Result<(), ClientError> {
        let value = Payload::json(value).map_err(|e| ClientError::Payload(e.to_string()))?;
        self.client.signal_payload(&self.id, name, value).await
    }

    /// Requests cancellation.
    pub async fn cancel(&self, reason: &str) -> Result<(), ClientError> {
        self.client.cancel(&self.id, reason).await
    }

    /// Terminates the instance.
    pub async fn terminate(&self, reason: &str) -> Result<(), ClientError> {
        self.client.terminate(&self.id, reason).await
    }

    /// Asks `query` with `input` (see [`Client::query`](crate::Client::query)).
    pub async fn query<I: Serialize, O: DeserializeOwned>(
        &self,
        query: crate::Query<I, O>,
        input: &I,
    ) -> Result<O, ClientError> {
        let input = Payload::json(input).map_err(|e| ClientError::Payload(e.to_string()))?;
        self.client
            .query_payload(&self.id, query.name(), input)
            .await?
            .decode()
            .map_err(|e| ClientError::Payload(e.to_string()))
    }

    /// Sends `update` with `input` and waits for its result (see
    /// [`Client::update`](crate::Client::update)).
    pub async fn update<I: Serialize, O: DeserializeOwned>(
        &self,
        update: crate::Update<I, O>,
        input: &I,
    ) -> Result<O, ClientError> {
        let update_id = uuid::Uuid::now_v7().to_string();
        self.update_with_id(&update_id, update, input).await
    }

    /// [`update`](Self::update) under an id of the caller's: sent again with the same id, it is
    /// not applied twice.
    pub async fn update_with_id<I: Serialize, O: DeserializeOwned>(
        &self,
        update_id: &str,
        update: crate::Update<I, O>,
        input: &I,
    ) -> Result<O, ClientError> {
        let input = Payload::json(input).map_err(|e| ClientError::Payload(e.to_string()))?;
        self.client
            .update_payload(&self.id, update_id, update.name(), input)
            .await?
            .decode()
            .map_err(|e| ClientError::Payload(e.to_string()))
    }
}
