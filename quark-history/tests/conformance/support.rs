//! The harness: `conformance!` turns each async test function into a SQLite and a PostgreSQL test.

use quark_history::testing::TestStore;
use quark_history::{ClaimRequest, ClaimedTask, IdReusePolicy, NewInstance, Payload, Store};

pub(crate) use quark_history::backend_tests as conformance;

/// Starts an instance of type `order` with a JSON input.
pub(crate) async fn start(t: &TestStore, id: &str) -> quark_history::InstanceRecord {
    t.store
        .create_instance(
            NewInstance::new(
                id,
                "order",
                Payload::json(&serde_json::json!({"id": id})).unwrap(),
            ),
            IdReusePolicy::RejectDuplicate,
        )
        .await
        .expect("create instance")
        .instance
}

/// Claims everything visible on `queue` for `worker`.
pub(crate) async fn claim_all(store: &dyn Store, worker: &str, queue: &str) -> Vec<ClaimedTask> {
    store
        .claim(ClaimRequest::new(worker, [queue]).limit(1000))
        .await
        .expect("claim")
}
