//! `quark.v1.WorkerService`: the registered workers, with what they last reported.

use std::sync::Arc;

use quark_history::{Pressure, Scope, Store};
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::convert::time_out;
use super::proto::{self, worker_service_server::WorkerService};
use super::status;

/// The implementation of `quark.v1.WorkerService` over a store.
#[derive(Debug, Clone)]
pub struct Workers {
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
}

impl Workers {
    /// The service over `store`, its calls checked by `auth`.
    pub fn new(store: Arc<dyn Store>, auth: Arc<Authenticator>) -> Workers {
        Workers { store, auth }
    }
}

#[tonic::async_trait]
impl WorkerService for Workers {
    async fn list_workers(
        &self,
        request: Request<proto::ListWorkersRequest>,
    ) -> Result<Response<proto::ListWorkersResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "ListWorkers", Scope::Read)
            .await?;
        let mut workers = self.store.list_workers().await.map_err(status::store)?;
        // A namespace sees the workers that serve its queues, and only those queues.
        for w in &mut workers {
            w.queues.retain(|q| caller.sees(q));
        }
        workers.retain(|w| caller.namespace.is_none() || !w.queues.is_empty());
        Ok(Response::new(proto::ListWorkersResponse {
            workers: workers
                .into_iter()
                .map(|w| proto::Worker {
                    id: w.id,
                    queues: w.queues,
                    labels_json: w.labels,
                    heartbeat_at: Some(time_out(w.heartbeat_at)),
                    pressure: match w.load.pressure {
                        Pressure::Normal => proto::Pressure::Normal,
                        Pressure::Warning => proto::Pressure::Warning,
                        Pressure::Critical => proto::Pressure::Critical,
                        Pressure::Reject => proto::Pressure::Reject,
                    } as i32,
                    rss_bytes: w.load.rss_bytes,
                    memory_limit: w.load.memory_limit,
                    cached_instances: w.load.cached_instances,
                    cached_bytes: w.load.cached_bytes,
                    live_entities: w.load.live_entities,
                    entity_bytes: w.load.entity_bytes,
                })
                .collect(),
        }))
    }
}
