//! The outbox relay against a NATS server of the test's own (the machine's `nats-server`,
//! started here): TLS with a certificate authority made here, a user and password, and a server
//! restart in the middle, after which the relay's connection comes back by itself.
//!
//! The server binary is `QUARK_TEST_NATS_SERVER` (default `nats-server` on the `PATH`, then
//! `/usr/sbin/nats-server`). Without it the test skips with a notice, unless `CI` or
//! `QUARK_REQUIRE_NATS` is set, which makes it a failure.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quark_history::testing::{self, eventually};
use quark_history::{Destination, MessageState, OutboxMessage};

use super::outbox::{message, relay, start};

/// A `nats-server` process with JetStream, TLS and a password, killed on drop.
struct Server {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_binary() -> Option<String> {
    if let Ok(path) = std::env::var("QUARK_TEST_NATS_SERVER") {
        return Some(path);
    }
    let on_path = Command::new("nats-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok();
    if on_path {
        return Some("nats-server".into());
    }
    Path::new("/usr/sbin/nats-server")
        .exists()
        .then(|| "/usr/sbin/nats-server".into())
}

impl Server {
    /// Starts the server on `port` (0: a free one) with its files in `dir`; returns once it
    /// accepts connections.
    async fn start(binary: &str, dir: &Path, port: u16) -> Server {
        let port = if port == 0 {
            let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            probe.local_addr().unwrap().port()
        } else {
            port
        };
        let config = format!(
            "host: 127.0.0.1\nport: {port}\njetstream {{ store_dir: \"{store}\" }}\n\
             tls {{ cert_file: \"{cert}\", key_file: \"{key}\" }}\n\
             authorization {{ user: quark, password: \"s3cret\" }}\n",
            store = dir.join("js").display(),
            cert = dir.join("server.pem").display(),
            key = dir.join("server.key").display(),
        );
        std::fs::write(dir.join("nats.conf"), config).unwrap();
        let child = Command::new(binary)
            .arg("-c")
            .arg(dir.join("nats.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let server = Server {
            child,
            port,
            dir: dir.to_path_buf(),
        };
        eventually("the test's NATS server accepts connections", async || {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
        })
        .await;
        server
    }

    fn url(&self) -> String {
        format!("tls://localhost:{}", self.port)
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A JetStream context with the relay's credentials.
    async fn jetstream(&self) -> async_nats::jetstream::Context {
        let client = async_nats::ConnectOptions::new()
            .user_and_password("quark".into(), "s3cret".into())
            .add_root_certificates(self.ca())
            .require_tls(true)
            .connect(self.url())
            .await
            .expect("connect to the test's NATS server");
        async_nats::jetstream::new(client)
    }
}

/// A certificate authority and a server certificate for `localhost`, written to `dir`.
fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

async fn stored(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    let mut stream = js.get_stream(stream).await.expect("the stream");
    stream.info().await.expect("its info").state.messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn it_publishes_over_tls_with_a_password_and_comes_back_after_a_server_restart() {
    let Some(binary) = server_binary() else {
        assert!(
            !(std::env::var_os("CI").is_some() || std::env::var_os("QUARK_REQUIRE_NATS").is_some()),
            "NATS is required (CI or QUARK_REQUIRE_NATS is set) but no nats-server binary was found"
        );
        eprintln!("quark: NATS TLS test SKIPPED: no nats-server binary");
        return;
    };
    let dir = std::env::temp_dir().join(format!("quark-nats-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    certificates(&dir);
    let server = Server::start(&binary, &dir, 0).await;
    let js = server.jetstream().await;
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        storage: async_nats::jetstream::stream::StorageType::File,
        ..Default::default()
    })
    .await
    .expect("create the stream");

    let t = testing::sqlite().await;
    let relay = relay()
        .nats(server.url())
        .nats_user_password("quark", "s3cret")
        .nats_root_certificate(server.ca())
        .nats_require_tls(true)
        .timeout(Duration::from_secs(2));
    let worker = start(&t, "relay-nats-tls", relay, None).await;
    let first = t
        .store
        .send(vec![
            OutboxMessage::json(Destination::nats("orders.placed"), &1).unwrap(),
        ])
        .await
        .unwrap()[0];
    eventually("the first message is published over TLS", async || {
        message(t.store.as_ref(), first).await.state == MessageState::Sent
    })
    .await;
    assert_eq!(stored(&js, "ORDERS").await, 1);

    // The server goes away and comes back on the same port with the same files; the relay's
    // connection (and the test's) reconnect by themselves.
    let port = server.port;
    drop(server);
    let second = t
        .store
        .send(vec![
            OutboxMessage::json(Destination::nats("orders.placed"), &2).unwrap(),
        ])
        .await
        .unwrap()[0];
    let server = Server::start(&binary, &dir, port).await;
    // Attempts made while the server was down wait for a retry, due on the store's clock.
    t.advance_until(
        Duration::from_millis(500),
        "the second message is published after the restart",
        async || message(t.store.as_ref(), second).await.state == MessageState::Sent,
    )
    .await;
    assert_eq!(stored(&js, "ORDERS").await, 2);
    worker.shutdown().await;
    drop(server);
    t.cleanup().await;
    let _ = std::fs::remove_dir_all(&dir);
}
