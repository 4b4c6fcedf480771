//! The catalog of registered types as the API reads it: each type found is remembered for
//! [`CATALOG_TTL`] (by the store's clock), so that a start costs no catalog read. A name not
//! found is not remembered (what callers may send is unbounded; what workers register is not),
//! and a name longer than [`MAX_NAME`] is refused before any lookup.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quark_history::{RegisteredType, Store, Timestamp, TypeKind};
use tonic::Status;

/// How long a type found is remembered.
pub const CATALOG_TTL: Duration = Duration::from_secs(1);

/// The longest type name looked up, in bytes.
pub const MAX_NAME: usize = 256;

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
        if name.len() > MAX_NAME {
            return Err(Status::invalid_argument(format!(
                "a type name is at most {MAX_NAME} bytes"
            )));
        }
        let key = (kind, name.to_string());
        let now = self.store.config().clock.now();
        let fresh = |at: &Timestamp| {
            let age = now.as_micros().saturating_sub(at.as_micros());
            (0..CATALOG_TTL.as_micros() as i64).contains(&age)
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
