//! The outbox relay's webhooks against servers started here: plain HTTP that fails first (a 500
//! is retried with the same idempotency key, a 404 is not), and HTTPS with a certificate authority
//! of the test's own, where requests are signed, share one kept-alive connection, and a name the
//! certificate does not cover is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use quark_history::testing::{TestStore, eventually};
use quark_history::{Destination, MessageState, OutboxMessage};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

use super::outbox::{message, messages, relay, start};

quark_history::backend_tests!(
    it_posts_to_a_webhook_retrying_a_500_with_the_same_idempotency_key,
    it_posts_signed_over_https_on_one_kept_alive_connection,
);

#[derive(Debug, Clone)]
struct Request {
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

/// A webhook server: records each request and answers with the next status of its path's script
/// (then 200). It keeps connections open for further requests (HTTP/1.1 keep-alive) and counts
/// them.
struct Webhook {
    addr: std::net::SocketAddr,
    requests: Arc<Mutex<Vec<Request>>>,
    connections: Arc<AtomicUsize>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Script = Arc<Mutex<HashMap<String, Vec<u16>>>>;

async fn webhook(
    script: HashMap<String, Vec<u16>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
) -> Webhook {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let requests: Arc<Mutex<Vec<Request>>> = Arc::default();
    let connections = Arc::new(AtomicUsize::new(0));
    let script: Script = Arc::new(Mutex::new(script));
    let (recorded, counted) = (Arc::clone(&requests), Arc::clone(&connections));
    let server = tokio::spawn(async move {
        loop {
            let Ok((conn, _)) = listener.accept().await else {
                return;
            };
            let (recorded, script, tls) = (Arc::clone(&recorded), Arc::clone(&script), tls.clone());
            let counted = Arc::clone(&counted);
            tokio::spawn(async move {
                match tls {
                    Some(acceptor) => {
                        // A client that refuses the certificate ends the handshake: not a
                        // connection that carries requests.
                        if let Ok(conn) = acceptor.accept(conn).await {
                            counted.fetch_add(1, Ordering::SeqCst);
                            serve(conn, &recorded, &script).await;
                        }
                    }
                    None => {
                        counted.fetch_add(1, Ordering::SeqCst);
                        serve(conn, &recorded, &script).await;
                    }
                }
            });
        }
    });
    Webhook {
        addr,
        requests,
        connections,
        server,
    }
}

/// Answers the requests of one connection until the client closes it.
async fn serve(
    conn: impl AsyncRead + AsyncWrite + Unpin,
    recorded: &Mutex<Vec<Request>>,
    script: &Script,
) {
    let mut conn = BufReader::new(conn);
    loop {
        let mut line = String::new();
        if conn.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = line.split(' ').nth(1).expect("a request line").to_string();
        let mut headers = HashMap::new();
        loop {
            let mut line = String::new();
            conn.read_line(&mut line).await.unwrap();
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            let (k, v) = line.split_once(": ").expect("a header line");
            headers.insert(k.to_ascii_lowercase(), v.to_string());
        }
        let len: usize = headers["content-length"].parse().unwrap();
        let mut body = vec![0; len];
        conn.read_exact(&mut body).await.unwrap();
        let status = {
            let mut script = script.lock().unwrap();
            let next = script.get_mut(&path).filter(|s| !s.is_empty());
            next.map_or(200, |s| s.remove(0))
        };
        recorded.lock().unwrap().push(Request {
            path,
            headers,
            body,
        });
        let answer = format!("HTTP/1.1 {status} X\r\nContent-Length: 2\r\n\r\nok");
        if conn.get_mut().write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

async fn it_posts_to_a_webhook_retrying_a_500_with_the_same_idempotency_key(t: &TestStore) {
    let hook = webhook(
        HashMap::from([
            ("/flaky".to_string(), vec![500, 503]),
            ("/gone".to_string(), vec![404]),
        ]),
        None,
    )
    .await;
    let worker = start(t, "relay-http", relay(), None).await;
    let url = |path: &str| format!("http://{}{path}", hook.addr);
    let ids = t
        .store
        .send(vec![
            OutboxMessage::json(
                Destination::http(url("/flaky")),
                &serde_json::json!({"order": 7}),
            )
            .unwrap()
            .header("x-trace", "t-1"),
            OutboxMessage::new(Destination::http(url("/gone")), b"bye".to_vec()),
            OutboxMessage::new(Destination::http("ftp://example.invalid/x"), b"no".to_vec()),
        ])
        .await
        .unwrap();
    // Retries are due on the store's clock: move it until the flaky one gets through.
    t.advance_until(
        Duration::from_millis(250),
        "the flaky webhook accepts",
        async || message(t.store.as_ref(), ids[0]).await.state == MessageState::Sent,
    )
    .await;
    eventually("the refused messages are dead", async || {
        messages(t.store.as_ref(), MessageState::Dead).await.len() == 2
    })
    .await;
    let flaky: Vec<Request> = hook
        .requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.path == "/flaky")
        .cloned()
        .collect();
    assert_eq!(flaky.len(), 3, "two failures, then success");
    let sent = message(t.store.as_ref(), ids[0]).await;
    assert_eq!(sent.attempts, 3);
    for r in &flaky {
        assert_eq!(r.headers["idempotency-key"], sent.idempotency_key);
        assert_eq!(r.headers["webhook-id"], sent.idempotency_key);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["x-trace"], "t-1");
        assert!(
            !r.headers.contains_key("webhook-signature"),
            "no secret, no signature"
        );
        assert_eq!(r.body, br#"{"order":7}"#);
    }
    let gone = message(t.store.as_ref(), ids[1]).await;
    assert_eq!(gone.attempts, 1, "a 404 is not retried");
    assert!(
        gone.last_error.as_deref().unwrap().contains("404"),
        "{gone:?}"
    );
    let ftp = message(t.store.as_ref(), ids[2]).await;
    assert_eq!(
        ftp.attempts, 1,
        "a scheme other than http(s) is not retried"
    );
    assert!(
        ftp.last_error
            .as_deref()
            .unwrap()
            .contains("http:// or https://"),
        "{ftp:?}"
    );
    // Re-driven, the 404 path now answers 200.
    t.store.redrive_message(ids[1]).await.unwrap();
    eventually("the re-driven message is sent", async || {
        message(t.store.as_ref(), ids[1]).await.state == MessageState::Sent
    })
    .await;
    worker.shutdown().await;
}

/// A certificate authority, and a server certificate for `localhost` that it signed.
fn authority() -> (String, tokio_rustls::TlsAcceptor) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
        )
        .unwrap();
    (ca.pem(), tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The Standard Webhooks signature, computed here independently of the relay.
fn expected_signature(secret: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let signed = [id.as_bytes(), b".", timestamp.as_bytes(), b".", body].concat();
    let tag = ring::hmac::sign(&key, &signed);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(tag.as_ref())
    )
}

async fn it_posts_signed_over_https_on_one_kept_alive_connection(t: &TestStore) {
    let (ca, acceptor) = authority();
    let hook = webhook(HashMap::new(), Some(acceptor)).await;
    let secret = b"the receiver knows this";
    let worker = start(
        t,
        "relay-https",
        relay()
            .webhook_root_certificate(ca.into_bytes())
            .webhook_secret(
                "whsec_".to_string() + &base64::engine::general_purpose::STANDARD.encode(secret),
            ),
        None,
    )
    .await;
    let port = hook.addr.port();
    // One ordering key, so the relay delivers them one after the other: each can reuse the
    // connection the previous one left open.
    let ids = t
        .store
        .send(
            (0..10)
                .map(|i| {
                    OutboxMessage::json(
                        Destination::http(format!("https://localhost:{port}/orders")),
                        &serde_json::json!({ "n": i }),
                    )
                    .unwrap()
                    .ordering_key("orders")
                })
                .collect(),
        )
        .await
        .unwrap();
    eventually("the ten https messages are sent", async || {
        messages(t.store.as_ref(), MessageState::Sent).await.len() == 10
    })
    .await;
    let requests = hook.requests.lock().unwrap().clone();
    assert_eq!(requests.len(), 10);
    assert_eq!(
        hook.connections.load(Ordering::SeqCst),
        1,
        "ten requests in a row share one kept-alive connection"
    );
    // The store's clock (the wall clock in production) stands still in this test.
    let now = t.store.config().clock.now().as_micros() / 1_000_000;
    for (i, (r, id)) in requests.iter().zip(&ids).enumerate() {
        assert_eq!(r.body, format!(r#"{{"n":{i}}}"#).into_bytes(), "in order");
        let sent = message(t.store.as_ref(), *id).await;
        assert_eq!(r.headers["webhook-id"], sent.idempotency_key);
        let timestamp = &r.headers["webhook-timestamp"];
        assert_eq!(timestamp.parse::<i64>().unwrap(), now, "signed as of now");
        assert_eq!(
            r.headers["webhook-signature"],
            expected_signature(secret, &sent.idempotency_key, timestamp, &r.body)
        );
    }
    // The certificate names `localhost`; reached as 127.0.0.1 the server is refused, and the
    // message waits for a retry with the reason recorded.
    let refused = t
        .store
        .send(vec![OutboxMessage::new(
            Destination::http(format!("https://127.0.0.1:{port}/orders")),
            b"x".to_vec(),
        )])
        .await
        .unwrap()[0];
    eventually("the refused https message records why", async || {
        message(t.store.as_ref(), refused)
            .await
            .last_error
            .is_some()
    })
    .await;
    let m = message(t.store.as_ref(), refused).await;
    assert_eq!(m.state, MessageState::Pending, "retried later: {m:?}");
    assert!(
        m.last_error.as_deref().unwrap().contains("certificate"),
        "{m:?}"
    );
    assert_eq!(
        hook.requests.lock().unwrap().len(),
        10,
        "nothing reached the server"
    );
    worker.shutdown().await;
}
