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

/// Installs the subscriber, unless the application installed its own before calling
/// [`main_with`](super::main_with): then the application's is kept.
pub(super) fn init(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    };
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
