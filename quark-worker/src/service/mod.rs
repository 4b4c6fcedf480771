//! The gRPC API (`quark serve`): package `quark.v1` over tonic, with the standard health and
//! reflection services, and the web console under `/ui` on the same port.
//!
//! The server holds no workflow code. It reads and writes the same database as the workers, and
//! starts an instance by its type's name with the version and queue that workers registered in
//! the catalog ([`CatalogStore`](quark_history::CatalogStore)): a type no worker ever
//! registered is refused, not started to wait forever.
//!
//! The .proto files live in `quark-worker/proto`; the API lock beside them
//! ([`api_lock`]) records every published message, field, enum value and method, and its test
//! refuses a change that removes or alters one.

pub mod api_lock;
pub mod auth;
mod catalog;
mod console;
pub(crate) mod convert;
pub(crate) mod jobs;
pub mod metrics;
mod outbox;
mod queues;
mod remote;
mod sagas;
mod schedules;
pub mod starts;
mod status;
mod tenancy;
mod workers;
mod workflows;

use std::net::SocketAddr;
use std::sync::Arc;

use quark_history::Store;

pub use catalog::{CATALOG_TTL, MAX_NAME};
pub use jobs::Jobs;
pub use outbox::Outbox;
pub use queues::Queues;
pub use remote::{ApiClient, Authed, BearerToken, ConnectError, RemoteClient};
pub use sagas::Sagas;
pub use schedules::Schedules;
pub use workers::Workers;
pub use workflows::Workflows;

/// The generated messages, clients and servers of package `quark.v1`.
#[allow(missing_docs, clippy::all, clippy::pedantic)]
pub mod proto {
    tonic::include_proto!("quark.v1");
}

/// The encoded descriptor set of the API's .proto files (what reflection serves).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/quark_v1_descriptor.bin"));

/// The fully qualified names of the services `quark serve` serves, besides health and reflection.
pub const SERVICES: &[&str] = &[
    "quark.v1.WorkflowService",
    "quark.v1.JobService",
    "quark.v1.QueueService",
    "quark.v1.WorkerService",
    "quark.v1.ScheduleService",
    "quark.v1.OutboxService",
    "quark.v1.SagaService",
];

/// How the API server behaves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceOptions {
    /// The largest request message accepted, in bytes (default 4 MiB). A larger one is refused
    /// with OUT_OF_RANGE before it is decoded; payloads are also held to the store's own
    /// limit.
    pub max_request_bytes: usize,
    /// Whether every call must carry a valid token (default true). Turn it off only for
    /// development on a loopback address: every call is then let through as admin.
    pub authenticate: bool,
    /// TLS, with client certificates if it names a certificate authority for them; `None`:
    /// plain text (only behind a proxy that terminates TLS, or on a private network).
    pub tls: Option<TlsSettings>,
    /// How long the calls in progress at shutdown may go on (default [`SHUTDOWN_GRACE`]).
    pub shutdown_grace: std::time::Duration,
}

/// The server's certificate and key, and optionally the authority its clients' certificates must
/// be signed by, all PEM.
#[derive(Clone)]
pub struct TlsSettings {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for TlsSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsSettings")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"<redacted>")
            .field("client_certificates", &self.client_ca_pem.is_some())
            .finish()
    }
}

impl TlsSettings {
    /// TLS with this certificate chain and private key (PEM).
    pub fn new(cert_pem: impl Into<Vec<u8>>, key_pem: impl Into<Vec<u8>>) -> TlsSettings {
        TlsSettings {
            cert_pem: cert_pem.into(),
            key_pem: key_pem.into(),
            client_ca_pem: None,
        }
    }

    /// Requires every client to present a certificate signed by this authority (PEM): the
    /// connection is refused in the handshake otherwise, before any call. Tokens are still
    /// required on top.
    pub fn client_ca(mut self, ca_pem: impl Into<Vec<u8>>) -> TlsSettings {
        self.client_ca_pem = Some(ca_pem.into());
        self
    }

    /// Checks that the certificate and key are PEM and belong together, and that the client
    /// authority is PEM, as serving would.
    pub fn check(&self) -> Result<(), ServeError> {
        tonic::transport::Server::builder()
            .tls_config(self.config())
            .map(drop)
            .map_err(ServeError::Tls)
    }

    fn config(&self) -> tonic::transport::ServerTlsConfig {
        let identity = tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem);
        let config = tonic::transport::ServerTlsConfig::new().identity(identity);
        match &self.client_ca_pem {
            Some(ca) => config.client_ca_root(tonic::transport::Certificate::from_pem(ca)),
            None => config,
        }
    }
}

impl ServiceOptions {
    /// Sets [`authenticate`](Self::authenticate).
    pub fn authenticate(mut self, required: bool) -> Self {
        self.authenticate = required;
        self
    }

    /// Sets [`shutdown_grace`](Self::shutdown_grace).
    pub fn shutdown_grace(mut self, grace: std::time::Duration) -> Self {
        self.shutdown_grace = grace;
        self
    }

    /// Sets [`tls`](Self::tls).
    pub fn tls(mut self, tls: TlsSettings) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets [`max_request_bytes`](Self::max_request_bytes).
    pub fn max_request_bytes(mut self, bytes: usize) -> Self {
        self.max_request_bytes = bytes;
        self
    }
}

impl Default for ServiceOptions {
    fn default() -> Self {
        ServiceOptions {
            max_request_bytes: 4 * 1024 * 1024,
            authenticate: true,
            tls: None,
            shutdown_grace: SHUTDOWN_GRACE,
        }
    }
}

/// Errors of starting the API server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The address could not be bound or served.
    #[error("serving the API on {addr}: {source}")]
    Transport {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: tonic::transport::Error,
    },
    /// The TLS settings were refused: a certificate or key that is not PEM, a key that does not
    /// match the certificate.
    #[error("the API's TLS settings: {0}")]
    Tls(#[source] tonic::transport::Error),
    /// The reflection service could not read the API's descriptors.
    #[error("the API's descriptors: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// The system gave no randomness for the console's secret.
    #[error("no randomness for the console's secret")]
    Random,
}

/// The API's routes over `store`: every `quark.v1` service, health (each service reported
/// serving) and reflection. The `quark.v1` services check tokens ([`auth`]); health and
/// reflection, which tell nothing of the data, answer anyone. Call it inside a Tokio runtime: it
/// spawns the task that batches starts ([`starts`]) and the one that reports health.
pub fn routes(
    store: Arc<dyn Store>,
    options: &ServiceOptions,
) -> Result<tonic::service::Routes, ServeError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let auth = Arc::new(auth::Authenticator::new(
        Arc::clone(&store),
        options.authenticate,
    ));
    let limit = options.max_request_bytes;
    // One instance of each service, shared by gRPC and the console (which calls it in-process
    // with the signed-in token).
    let services = console::Services {
        workflows: Workflows::new(Arc::clone(&store), Arc::clone(&auth)),
        jobs: Jobs::new(Arc::clone(&store), Arc::clone(&auth)),
        queues: Queues::new(Arc::clone(&store), Arc::clone(&auth)),
        workers: Workers::new(Arc::clone(&store), Arc::clone(&auth)),
        schedules: Schedules::new(Arc::clone(&store), Arc::clone(&auth)),
        outbox: Outbox::new(Arc::clone(&store), Arc::clone(&auth)),
        sagas: Sagas::new(Arc::clone(&store), Arc::clone(&auth)),
        auth,
        authenticate: options.authenticate,
        tls: options.tls.is_some(),
        secret: {
            use ring::rand::SecureRandom as _;
            let mut secret = [0u8; 32];
            ring::rand::SystemRandom::new()
                .fill(&mut secret)
                .map_err(|_| ServeError::Random)?;
            secret
        },
    };
    let workflows =
        proto::workflow_service_server::WorkflowServiceServer::new(services.workflows.clone())
            .max_decoding_message_size(limit);
    let jobs = proto::job_service_server::JobServiceServer::new(services.jobs.clone())
        .max_decoding_message_size(limit);
    let queues = proto::queue_service_server::QueueServiceServer::new(services.queues.clone())
        .max_decoding_message_size(limit);
    let workers = proto::worker_service_server::WorkerServiceServer::new(services.workers.clone())
        .max_decoding_message_size(limit);
    let schedules =
        proto::schedule_service_server::ScheduleServiceServer::new(services.schedules.clone())
            .max_decoding_message_size(limit);
    let outbox = proto::outbox_service_server::OutboxServiceServer::new(services.outbox.clone())
        .max_decoding_message_size(limit);
    let sagas = proto::saga_service_server::SagaServiceServer::new(services.sagas.clone())
        .max_decoding_message_size(limit);
    // The reporter only flips statuses; the services are serving from the start.
    tokio::spawn(async move {
        for service in SERVICES {
            health_reporter
                .set_service_status(*service, tonic_health::ServingStatus::Serving)
                .await;
        }
    });
    let mut routes = tonic::service::Routes::new(health);
    routes = routes
        .add_service(reflection)
        .add_service(workflows)
        .add_service(jobs)
        .add_service(queues)
        .add_service(workers)
        .add_service(schedules)
        .add_service(outbox)
        .add_service(sagas);
    // The console, beside the services, on the same port (HTTP/1.1 for browsers).
    let router = routes.into_axum_router().merge(console::router(services));
    Ok(tonic::service::Routes::from(router))
}

/// Serves the API on `listener` until `shutdown` resolves, then stops taking calls and lets the
/// ones in progress finish, for at most [`ServiceOptions::shutdown_grace`].
pub async fn serve(
    store: Arc<dyn Store>,
    listener: tokio::net::TcpListener,
    options: ServiceOptions,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let routes = routes(store, &options)?;
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    // HTTP/1.1 too, for the console's browsers; gRPC stays on HTTP/2.
    let mut server = tonic::transport::Server::builder().accept_http1(true);
    if let Some(tls) = &options.tls {
        server = server.tls_config(tls.config()).map_err(ServeError::Tls)?;
    }
    // The server stops taking calls when `shutdown` resolves, and lets the calls in progress
    // finish for at most `options.shutdown_grace`: a followed history or a result awaited on a workflow
    // that runs for days would otherwise hold the process forever. The calls cut short are
    // abandoned (`quark serve` exits with them, and their clients see the connection close).
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut stopped_too = stopped.clone();
    let serving = server
        .layer(metrics::ApiMetricsLayer)
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming, async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        });
    let grace_period = options.shutdown_grace;
    let grace = async move {
        let _ = stopped_too.wait_for(|s| *s).await;
        tokio::time::sleep(grace_period).await;
    };
    let signal = async move {
        shutdown.await;
        let _ = stop.send(true);
        std::future::pending::<()>().await;
    };
    tokio::select! {
        served = serving => served.map_err(|source| ServeError::Transport { addr, source }),
        () = grace => {
            tracing::warn!(%addr, grace = ?grace_period, "calls still in progress at shutdown were cut short");
            Ok(())
        }
        () = signal => unreachable!("the signal future never ends"),
    }
}

/// How long the calls in progress at shutdown may go on, by default ([`serve`]).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);
