//! `quark.v1.SagaService`: the sagas whose compensation never succeeded.

use std::sync::Arc;

use quark_history::{Scope, Store};
use tonic::{Request, Response, Status};

use super::auth::Authenticator;
use super::proto::{self, saga_service_server::SagaService};
use super::status;

/// The most failed instances one call looks at (a larger `scan` is served as this).
const MAX_SCAN: u32 = 100_000;

/// The implementation of `quark.v1.SagaService` over a store.
#[derive(Debug, Clone)]
pub struct Sagas {
    store: Arc<dyn Store>,
    auth: Arc<Authenticator>,
}

impl Sagas {
    /// The service over `store`, its calls checked by `auth`.
    pub fn new(store: Arc<dyn Store>, auth: Arc<Authenticator>) -> Sagas {
        Sagas { store, auth }
    }
}

#[tonic::async_trait]
impl SagaService for Sagas {
    async fn list_stuck_sagas(
        &self,
        request: Request<proto::ListStuckSagasRequest>,
    ) -> Result<Response<proto::ListStuckSagasResponse>, Status> {
        let caller = self
            .auth
            .check(&request, "ListStuckSagas", Scope::Read)
            .await?;
        let r = request.into_inner();
        let limit = match r.limit {
            0 => 50,
            n => n.min(1000),
        } as usize;
        let scan = match r.scan {
            0 => 10_000,
            n => n.min(MAX_SCAN),
        } as usize;
        let workflow_type = (!r.workflow_type.is_empty()).then_some(r.workflow_type);
        let mut stuck = crate::sagas::stuck_sagas(&self.store, workflow_type, limit, scan)
            .await
            .map_err(status::store)?;
        stuck.retain(|s| caller.sees(&s.instance_id));
        Ok(Response::new(proto::ListStuckSagasResponse {
            sagas: stuck
                .into_iter()
                .map(|s| proto::StuckSaga {
                    instance_id: s.instance_id,
                    workflow_type: s.instance_type,
                    failed_at: s.failed_at,
                    compensation: s.stuck.compensation,
                    input_json: s.stuck.input.to_string(),
                    attempts: s.stuck.attempts,
                    last_error: s.stuck.last_error,
                    cause: s.stuck.cause,
                    skipped: s.stuck.skipped,
                })
                .collect(),
        }))
    }
}
