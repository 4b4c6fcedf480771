//! `quark serve`: the gRPC API ([`crate::service`]) on the database the command line points at,
//! until SIGINT or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use quark_history::Store;
use serde::Serialize;

use super::output::Output;
use crate::service::{ServiceOptions, TlsSettings, serve};

/// `quark serve`: every flag also reads an environment variable, for containers.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The address to serve gRPC on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:7411", env = "QUARK_LISTEN")]
    pub listen: SocketAddr,
    /// The largest request accepted, in bytes; a larger one is refused with
    /// OUT_OF_RANGE.
    #[arg(long, default_value_t = 4 * 1024 * 1024, env = "QUARK_MAX_REQUEST_BYTES")]
    pub max_request_bytes: usize,
    /// Lets every call through without a token, as admin: for development only, and refused
    /// on an address other than a loopback one.
    #[arg(long, env = "QUARK_NO_AUTH")]
    pub no_auth: bool,
    /// Serves TLS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "QUARK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "QUARK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Requires clients to present a certificate signed by this authority (PEM); needs
    /// --tls-cert.
    #[arg(long, env = "QUARK_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Serves `/metrics` (Prometheus: calls by method and status code, their durations),
    /// `/healthz` and `/readyz` on this address, e.g. `0.0.0.0:9091`.
    #[arg(long, env = "QUARK_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

fn read(what: &str, path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("reading the {what} {}", path.display()))
}

/// What `quark serve` announces: a line of text, or one JSON object a line.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Announce {
    ApiServing { addr: String },
    ApiStopped { addr: String },
}

fn announce(out: &mut dyn Write, output: Output, event: &Announce) -> anyhow::Result<()> {
    if output != Output::Table {
        serde_json::to_writer(&mut *out, event)?;
        writeln!(out)?;
    } else {
        match event {
            Announce::ApiServing { addr } => writeln!(
                out,
                "API serving on {addr} (gRPC: quark.v1, health, reflection; the console at \
                 /ui); Ctrl-C to stop"
            )?,
            Announce::ApiStopped { addr } => writeln!(out, "API on {addr} stopped")?,
        }
    }
    out.flush()?;
    Ok(())
}

pub(super) async fn run(
    store: Arc<dyn Store>,
    args: ServeArgs,
    output: Output,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    if args.no_auth && !args.listen.ip().is_loopback() {
        bail!(
            "--no-auth lets anyone who reaches {} do anything; it is only allowed on a loopback \
             address (127.0.0.1, ::1). Issue a token with `quark token create` instead",
            args.listen
        );
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut options = ServiceOptions::default()
        .max_request_bytes(args.max_request_bytes)
        .authenticate(!args.no_auth);
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        let mut tls = TlsSettings::new(
            read("TLS certificate", cert)?,
            read("TLS private key", key)?,
        );
        if let Some(ca) = &args.tls_client_ca {
            tls = tls.client_ca(read("client certificate authority", ca)?);
        }
        tls.check()?;
        options = options.tls(tls);
    }
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let addr = format!("{scheme}://{addr}");
    announce(out, output, &Announce::ApiServing { addr: addr.clone() })?;
    serve(store, listener, options, crate::shutdown_signal()).await?;
    announce(out, output, &Announce::ApiStopped { addr })?;
    Ok(())
}
