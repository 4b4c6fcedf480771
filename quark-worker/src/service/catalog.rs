//! The catalog of registered types as the API reads it: each lookup remembered for
//! [`CATALOG_TTL`] (by the store's clock), so that a start costs no catalog read; a type a worker
//! has just registered is seen within that time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::{RegisteredType, Store, Timestamp, TypeKind};
use tonic::Status;

/// How long a lookup is remembered, found or not.
pub const CATALOG_TTL: Duration = Duration::from_secs(1);

/// (Kind, name) → (what the catalog said, when).
type Cache = HashMap<(TypeKind, String), (Option<RegisteredType>, Timestamp)>;

#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    store: Arc<dyn Store>,
    cache: Arc<Mutex<Cache>>,
}

impl Catalog {
    pub(crate) fn new(store: Arc<dyn Store>) -> Catalog {
        Catalog {
            store,
            cache: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The registered orchestration `name`, if a worker registered one.
    pub(crate) async fn orchestration(&self, name: &str) -> Result<Option<RegisteredType>, Status> {
        self.get(TypeKind::Orchestration, name).await
    }

    /// The registered activity `name`, if a worker registered one.
    pub(crate) async fn activity(&self, name: &str) -> Result<Option<RegisteredType>, Status> {
        self.get(TypeKind::Activity, name).await
    }

    async fn get(&self, kind: TypeKind, name: &str) -> Result<Option<RegisteredType>, Status> {
        let key = (kind, name.to_string());
        let now = self.store.config().clock.now();
        let fresh = |at: &Timestamp| {
            now.as_micros().saturating_sub(at.as_micros()) < CATALOG_TTL.as_micros() as i64
        };
        if let Some((known, _)) = self
            .cache
            .lock()
            .unwrap()
            .get(&key)
            .filter(|(_, at)| fresh(at))
        {
            return Ok(known.clone());
        }
        let known = self
            .store
            .registered_type(kind, name)
            .await
            .map_err(super::status::store)?;
        self.cache.lock().unwrap().insert(key, (known.clone(), now));
        Ok(known)
    }
}
