//! Where the command line's logs go: stderr, as text for people or JSON for a log pipeline
//! (`--log-format`), filtered by `RUST_LOG` (default `warn`).

use clap::ValueEnum;

/// A log format (`--log-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One line of text an event.
    #[default]
    Text,
    /// One JSON object an event (`timestamp`, `level`, `target`, the event's fields, and the
    /// spans it happened in), for log pipelines.
    Json,
}

/// What [`init`] installed that needs a last word at exit: the OTLP exporter, whose batches are
/// flushed when it shuts down.
pub(super) struct Telemetry {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
    /// Told when a command's span closes (see [`CommandClosed`]).
    #[cfg(feature = "otel")]
    closed: Option<std::sync::mpsc::Receiver<()>>,
}

impl Telemetry {
    /// Flushes the spans not exported yet, waiting at most as long as one export may take (the
    /// OTLP exporter's own timeout, 10 s unless `OTEL_EXPORTER_OTLP_TIMEOUT` says otherwise;
    /// the SDK's default wait, 5 s, could give up on an export still under way).
    /// `command`: whether a command's span was made (not for `worker` and `serve`); it is
    /// exported once closed, so the flush waits for that first, as long as an export may take.
    pub(super) fn shutdown(self, command: bool) {
        #[cfg(not(feature = "otel"))]
        let _ = command;
        #[cfg(feature = "otel")]
        if let Some(provider) = self.provider {
            let wait = std::env::var("OTEL_EXPORTER_OTLP_TIMEOUT")
                .ok()
                .and_then(|ms| ms.parse().ok())
                .map_or(
                    std::time::Duration::from_secs(10),
                    std::time::Duration::from_millis,
                );
            if command && let Some(closed) = &self.closed {
                let _ = closed.recv_timeout(wait);
            }
            // Its batch processor blocks until its thread has exported: not on a runtime thread.
            // A flush before the shutdown: with the shutdown alone, the command's span was missing
            // from the export about one run in eight (a shutdown reports nothing of its export,
            // a flush reports its export's outcome), and never in 120 runs with the flush first.
            let flushed = std::thread::spawn(move || {
                provider
                    .force_flush()
                    .and_then(|()| provider.shutdown_with_timeout(wait))
            })
            .join();
            if let Ok(Err(e)) = flushed {
                eprintln!("quark: exporting the last spans: {e}");
            }
        }
    }
}

/// Installs the subscriber, unless the application installed its own before calling
/// [`main_with`](super::main_with): then the application's is kept. With `otlp_endpoint` (the
/// `otel` feature), spans at `info` and above are also exported over OTLP, whatever `RUST_LOG`
/// says about logs.
pub(super) fn init(format: LogFormat, otlp_endpoint: Option<&str>) -> anyhow::Result<Telemetry> {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;

    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    let subscriber = tracing_subscriber::registry().with(logs.with_filter(filter));
    #[cfg(feature = "otel")]
    if let Some(endpoint) = otlp_endpoint {
        use opentelemetry::trace::TracerProvider as _;
        // Asked before the exporter is built: building it may set a scoped dispatcher of its own.
        if tracing::dispatcher::has_been_set() {
            // The application's own subscriber decides where spans go.
            return Ok(Telemetry {
                provider: None,
                closed: None,
            });
        }
        let provider = otlp::provider(endpoint)?;
        let traces = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("quark"))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
        let (tell, closed) = std::sync::mpsc::sync_channel(1);
        // Installed whatever the `log` bridge says (an application's `log` logger makes it
        // fail, and the spans must still be exported). The watch goes last: a layer hears of a
        // close after the layers inside it, so the span is with the exporter by then.
        let _ = subscriber.with(traces).with(CommandClosed(tell)).try_init();
        return Ok(Telemetry {
            provider: Some(provider),
            closed: Some(closed),
        });
    }
    #[cfg(not(feature = "otel"))]
    let _ = otlp_endpoint;
    let _ = subscriber.try_init();
    Ok(Telemetry {
        #[cfg(feature = "otel")]
        provider: None,
        #[cfg(feature = "otel")]
        closed: None,
    })
}

/// Tells when a command's span (a root span named `command`) closes. It closes when its last
/// handle is dropped, which may be a moment after the command returned: sqlx's SQLite worker
/// threads run each statement inside a clone of the caller's span and drop it after answering.
/// A span is exported only once closed, so the exit's flush waits for this.
#[cfg(feature = "otel")]
struct CommandClosed(std::sync::mpsc::SyncSender<()>);

#[cfg(feature = "otel")]
impl<S> tracing_subscriber::Layer<S> for CommandClosed
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_close(&self, id: tracing::span::Id, ctx: tracing_subscriber::layer::Context<'_, S>) {
        if let Some(span) = ctx.span(&id)
            && span.name() == "command"
            && span.parent().is_none()
        {
            let _ = self.0.try_send(());
        }
    }
}

#[cfg(feature = "otel")]
mod otlp {
    use anyhow::Context;
    use opentelemetry_otlp::{Protocol, SpanExporter, WithExportConfig};
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    /// A tracer provider that exports batches of spans to the collector at `endpoint` over
    /// OTLP/HTTP with protobuf bodies.
    pub(super) fn provider(endpoint: &str) -> anyhow::Result<SdkTracerProvider> {
        let url = format!("{}/v1/traces", endpoint.trim_end_matches('/'));
        // The HTTP client is reqwest on rustls with the ring provider, as the webhook relay's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        // Its blocking client owns a runtime of its own, which must not be made on this one's
        // threads.
        let build = {
            let url = url.clone();
            std::thread::spawn(move || {
                SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .with_endpoint(url)
                    .build()
            })
        };
        let exporter = build
            .join()
            .map_err(|_| anyhow::anyhow!("building the OTLP exporter panicked"))?
            .with_context(|| format!("the OTLP exporter for {url}"))?;
        let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "quark".into());
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(Resource::builder().with_service_name(service).build())
            .build())
    }
}

/// Reports the error a command ended with: as a line of text, or as one JSON log event, so that
/// a log pipeline reading JSON sees the failure too.
pub(super) fn report_failure(format: LogFormat, error: &anyhow::Error) {
    match format {
        LogFormat::Text => eprintln!("quark: {error:#}"),
        LogFormat::Json => {
            // Not through `tracing`: the filter (or an application's own subscriber) could drop
            // it, and the command's failure must always be reported.
            let line = serde_json::json!({
                "timestamp": quark_history::Clock::now(&quark_history::SystemClock).to_string(),
                "level": "ERROR",
                "target": "quark",
                "message": format!("{error:#}"),
            });
            eprintln!("{line}");
        }
    }
}
