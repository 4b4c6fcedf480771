//! The API over TLS: a client that trusts the server's authority is served, one that speaks
//! plain text is not; with a client authority configured, only clients whose certificate it
//! signed get through the handshake; a certificate that is not PEM is refused at start.

use std::sync::Arc;

use quark_history::Scope;
use quark_worker::service::proto::workflow_service_client::WorkflowServiceClient;
use quark_worker::service::proto::{self};
use quark_worker::service::{ServeError, ServiceOptions, TlsSettings, serve};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::service::Bearer;

struct Authority(CertifiedIssuer<'static, KeyPair>);

impl Authority {
    fn new() -> Authority {
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        Authority(CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap())
    }

    /// A certificate for `name` and its key, PEM.
    fn issue(&self, name: &str) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .signed_by(&key, &self.0)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }
}

/// Serves the API with `tls` on a free port; returns its port.
async fn serve_tls(
    t: &quark_history::testing::TestStore,
    tls: TlsSettings,
) -> (u16, tokio::sync::oneshot::Sender<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        Arc::clone(&t.store),
        listener,
        ServiceOptions::default().tls(tls),
        async {
            let _ = stopped.await;
        },
    ));
    (port, stop)
}

/// One call through a client configured with `tls` (or plain text), with a valid token.
async fn list_types(
    port: u16,
    tls: Option<ClientTlsConfig>,
    bearer: &Bearer,
) -> Result<(), String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://127.0.0.1:{port}")).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).map_err(|e| e.to_string())?;
    }
    let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
    WorkflowServiceClient::with_interceptor(channel, bearer.clone())
        .list_workflow_types(proto::ListWorkflowTypesRequest {})
        .await
        .map(drop)
        .map_err(|e| format!("{e:?}"))
}

fn trusting(ca: &Authority) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca.pem()))
        .domain_name("localhost")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_serves_the_api_over_tls_and_refuses_plain_text() {
    let t = quark_history::testing::sqlite().await;
    let bearer = Bearer::issue(&t, Scope::Read).await;
    let ca = Authority::new();
    let (cert, key) = ca.issue("localhost");
    let (port, _stop) = serve_tls(&t, TlsSettings::new(cert, key)).await;
    list_types(port, Some(trusting(&ca)), &bearer)
        .await
        .unwrap();
    let plain = list_types(port, None, &bearer).await;
    assert!(
        plain.is_err(),
        "a plain-text call to a TLS server went through"
    );
    let stranger = Authority::new();
    let untrusted = list_types(port, Some(trusting(&stranger)), &bearer).await;
    assert!(
        untrusted.is_err(),
        "a client that does not trust the server's authority went through"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_lets_only_clients_with_a_certificate_of_its_authority_through() {
    let t = quark_history::testing::sqlite().await;
    let bearer = Bearer::issue(&t, Scope::Read).await;
    let servers = Authority::new();
    let clients = Authority::new();
    let (cert, key) = servers.issue("localhost");
    let tls = TlsSettings::new(cert, key).client_ca(clients.pem());
    let (port, _stop) = serve_tls(&t, tls).await;

    let (client_cert, client_key) = clients.issue("billing-service");
    let with_certificate = trusting(&servers).identity(Identity::from_pem(client_cert, client_key));
    list_types(port, Some(with_certificate), &bearer)
        .await
        .unwrap();

    let without = list_types(port, Some(trusting(&servers)), &bearer).await;
    assert!(
        without.is_err(),
        "a client without a certificate went through"
    );
    let (forged_cert, forged_key) = Authority::new().issue("billing-service");
    let forged = trusting(&servers).identity(Identity::from_pem(forged_cert, forged_key));
    let forged = list_types(port, Some(forged), &bearer).await;
    assert!(
        forged.is_err(),
        "a client certificate of another authority went through"
    );
}

#[tokio::test]
async fn it_refuses_tls_settings_that_are_not_a_certificate_and_its_key() {
    let ca = Authority::new();
    let (cert, _key) = ca.issue("localhost");
    let (_, other_key) = ca.issue("localhost");
    let garbage = TlsSettings::new("not a certificate", "not a key").check();
    assert!(matches!(garbage, Err(ServeError::Tls(_))), "{garbage:?}");
    let mismatched = TlsSettings::new(cert.clone(), other_key).check();
    assert!(
        matches!(mismatched, Err(ServeError::Tls(_))),
        "{mismatched:?}"
    );
    let (cert, key) = ca.issue("localhost");
    TlsSettings::new(cert, key).check().unwrap();
}
