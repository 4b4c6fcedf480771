//! The catalog: the orchestrations and activities that workers run, as they registered them.
//!
//! Workers publish what their registry holds when they start. A process without the workflow
//! code (the `quark serve` API, the command line) reads it to start an instance by its type's name
//! with the version and queue the code declares, to refuse a type no worker ever registered, and
//! to list what can be started.

use futures::future::BoxFuture;

use crate::clock::Timestamp;
use crate::error::Result;

/// What a catalog entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TypeKind {
    /// An `#[orchestration]`.
    Orchestration,
    /// An `#[activity]` (which can also run as a job).
    Activity,
}

impl TypeKind {
    /// Its name in the database and in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            TypeKind::Orchestration => "orchestration",
            TypeKind::Activity => "activity",
        }
    }
}

impl std::str::FromStr for TypeKind {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "orchestration" => Ok(TypeKind::Orchestration),
            "activity" => Ok(TypeKind::Activity),
            other => Err(format!("unknown type kind `{other}`")),
        }
    }
}

impl std::fmt::Display for TypeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An orchestration or activity as a worker registered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegisteredType {
    /// Orchestration or activity.
    pub kind: TypeKind,
    /// Its registered name.
    pub name: String,
    /// The version its code declares (an activity's is 0).
    pub version: u32,
    /// The queue its tasks go to by default.
    pub queue: String,
    /// An activity's options (retries, timeouts) as JSON, which a job enqueued by name runs
    /// with; empty for an orchestration.
    pub options: String,
    /// The worker that registered it last.
    pub worker_id: String,
    /// When, by the store's clock (set by the store on publishing).
    pub registered_at: Timestamp,
}

impl RegisteredType {
    /// An entry for `name` of `kind`, at `version`, on `queue`, registered by `worker_id`.
    pub fn new(
        kind: TypeKind,
        name: impl Into<String>,
        version: u32,
        queue: impl Into<String>,
        worker_id: impl Into<String>,
    ) -> RegisteredType {
        RegisteredType {
            kind,
            name: name.into(),
            version,
            queue: queue.into(),
            options: String::new(),
            worker_id: worker_id.into(),
            registered_at: Timestamp::from_micros(0),
        }
    }

    /// With an activity's options, as JSON.
    pub fn options(mut self, options: impl Into<String>) -> RegisteredType {
        self.options = options.into();
        self
    }
}

/// The catalog of registered types. A capability of every [`Store`](crate::Store); sealed.
pub trait CatalogStore: Send + Sync {
    /// Records `types` as registered now, in one transaction. An entry of the same kind and name
    /// is replaced: the last registration wins (during a rolling deploy, the newest worker's).
    fn publish_types(&self, types: Vec<RegisteredType>) -> BoxFuture<'_, Result<()>>;

    /// Every registered type, by kind and name.
    fn registered_types(&self) -> BoxFuture<'_, Result<Vec<RegisteredType>>>;

    /// The registered type `name` of `kind`, if any worker registered one.
    fn registered_type<'a>(
        &'a self,
        kind: TypeKind,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<RegisteredType>>>;
}
