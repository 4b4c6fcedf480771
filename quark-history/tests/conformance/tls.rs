//! TLS to PostgreSQL (PostgreSQL only): `sslmode=require` encrypts, `verify-full` checks the
//! server's certificate against `sslrootcert` and its name, and a certificate that does not check
//! out is refused with a clear, non-retryable error.
//!
//! The server's own certificate (its `ssl_cert_file`) serves as the trusted root: the test server
//! runs with a self-signed certificate for `localhost`. The test fails, never skips, when the
//! server has TLS off while PostgreSQL is required.

use std::str::FromStr;

use quark_history::testing::{self, TestStore};
use quark_history::{
    Error, IdReusePolicy, NewInstance, Payload, PostgresStore, Store, StoreConfig,
};
use sqlx::postgres::PgConnectOptions;

/// A fresh test database, and the path of the certificate its server presents.
async fn setup() -> Option<(TestStore, String)> {
    let t = testing::postgres().await?;
    let ssl: String = sqlx::query_scalar("SHOW ssl")
        .fetch_one(pool(&t))
        .await
        .expect("read the server's ssl setting");
    assert_eq!(
        ssl, "on",
        "the PostgreSQL test server must have ssl = on for the TLS tests"
    );
    let cert: String = sqlx::query_scalar("SHOW ssl_cert_file")
        .fetch_one(pool(&t))
        .await
        .expect("read the server's certificate path");
    Some((t, cert))
}

fn pool(t: &TestStore) -> &sqlx::PgPool {
    match t.raw() {
        testing::Raw::Postgres(pool) => pool,
        _ => unreachable!("a PostgreSQL test store"),
    }
}

/// The test database's URL with `host` and the query `params` in place of its own.
fn url(t: &TestStore, host: &str, params: &str) -> String {
    let url = t.database_url().expect("a PostgreSQL test database");
    let options = PgConnectOptions::from_str(&url).expect("the test database URL parses");
    format!(
        "postgres://{}@{host}:{}/{}?{params}",
        options.get_username(),
        options.get_port(),
        options.get_database().expect("the URL names its database"),
    )
}

/// Whether the store's own connections are encrypted, by the server's account.
async fn encrypted(store: &PostgresStore) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(store.pool())
        .await
        .expect("read pg_stat_ssl")
}

/// A write and a read through the store: the connection carries real work.
async fn round_trip(store: &PostgresStore, id: &str) {
    let created = store
        .create_instance(
            NewInstance::new(id, "greet", Payload::json(&"tls").unwrap()),
            IdReusePolicy::RejectDuplicate,
        )
        .await
        .expect("create an instance over TLS");
    assert!(created.created);
    let read = store.get_instance(id).await.expect("read it back");
    assert_eq!(read.map(|r| r.id), Some(id.to_string()));
}

#[tokio::test]
async fn it_encrypts_with_sslmode_require() {
    let Some((t, _)) = setup().await else { return };
    let store = PostgresStore::connect_with(
        &url(&t, "127.0.0.1", "sslmode=require"),
        StoreConfig::default(),
    )
    .await
    .expect("connect with sslmode=require");
    assert!(encrypted(&store).await, "sslmode=require must encrypt");
    round_trip(&store, "tls-require").await;
    // And without TLS the same server answers in plain text: the check above can tell.
    let plain = PostgresStore::connect_without_migrating(
        &url(&t, "127.0.0.1", "sslmode=disable"),
        StoreConfig::default(),
    )
    .await
    .expect("connect with sslmode=disable");
    assert!(!encrypted(&plain).await);
    t.cleanup().await;
}

#[tokio::test]
async fn it_verifies_the_server_with_sslmode_verify_full() {
    let Some((t, cert)) = setup().await else {
        return;
    };
    let params = format!("sslmode=verify-full&sslrootcert={cert}");
    let store = PostgresStore::connect_with(&url(&t, "localhost", &params), StoreConfig::default())
        .await
        .expect("connect with sslmode=verify-full to the name the certificate covers");
    assert!(encrypted(&store).await);
    round_trip(&store, "tls-verify-full").await;
    t.cleanup().await;
}

#[tokio::test]
async fn it_refuses_a_server_whose_certificate_another_ca_signed() {
    let Some((t, _)) = setup().await else { return };
    // The public web's roots: none of them signed the server's self-signed certificate.
    let params = "sslmode=verify-full&sslrootcert=/etc/ssl/certs/ca-certificates.crt";
    let err = PostgresStore::connect_without_migrating(
        &url(&t, "localhost", params),
        StoreConfig::default(),
    )
    .await
    .expect_err("a certificate no trusted root signed must be refused");
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(!err.is_retryable(), "a TLS refusal is not retryable");
    let text = err.to_string();
    assert!(
        text.contains("TLS") && text.contains("sslrootcert"),
        "{text}"
    );
    t.cleanup().await;
}

#[tokio::test]
async fn it_refuses_a_name_the_certificate_does_not_cover() {
    let Some((t, cert)) = setup().await else {
        return;
    };
    // The certificate is for `localhost`; 127.0.0.1 is the same server under another name.
    let params = format!("sslmode=verify-full&sslrootcert={cert}");
    let err = PostgresStore::connect_without_migrating(
        &url(&t, "127.0.0.1", &params),
        StoreConfig::default(),
    )
    .await
    .expect_err("verify-full must check the server's name");
    assert!(matches!(err, Error::Tls(_)), "{err:?}");
    assert!(!err.is_retryable());
    // verify-ca checks the chain only, so the same name passes.
    let params = format!("sslmode=verify-ca&sslrootcert={cert}");
    let store = PostgresStore::connect_without_migrating(
        &url(&t, "127.0.0.1", &params),
        StoreConfig::default(),
    )
    .await
    .expect("verify-ca does not check the name");
    assert!(encrypted(&store).await);
    t.cleanup().await;
}
