//! The projections a worker runs: each one stepped page by page while it has events to apply,
//! polled when it is up to date, and left to whichever worker holds its lease.

use std::sync::Arc;
use std::time::Duration;

use quark_workflow::projection::{CatchUp, RunProjection};

use crate::metrics::names;
use crate::shared::Shared;

/// How long a failed step waits before the next.
const BACKOFF: Duration = Duration::from_secs(1);

/// How often the lag is measured while a projection catches up.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// Runs `projection` until the worker stops, then gives up its lease.
pub(crate) async fn run(shared: Arc<Shared>, projection: Arc<dyn RunProjection>) {
    let (name, version) = (projection.name(), projection.version());
    let labels = [("projection", name.to_string())];
    if let Err(e) = projection.register().await {
        tracing::warn!(projection = name, version, error = %e, "registering the projection failed");
    }
    let mut last_report = tokio::time::Instant::now();
    while !shared.is_stopping() {
        let wait = match projection.step().await {
            Ok(CatchUp::Applied { events, .. }) => {
                metrics::counter!(names::PROJECTED, &labels).increment(events);
                // The lag, while catching up too, at most once a second.
                if last_report.elapsed() >= LAG_EVERY {
                    report_lag(&*projection, &labels).await;
                    last_report = tokio::time::Instant::now();
                }
                continue;
            }
            Ok(CatchUp::CaughtUp) => {
                if let Err(e) = projection.promote().await {
                    tracing::warn!(projection = name, version, error = %e, "promoting failed");
                }
                report_lag(&*projection, &labels).await;
                shared.settings.poll_interval
            }
            // Another worker runs it; look again in a while, in case that one stops.
            Ok(CatchUp::Busy) => shared.settings.lease / 3,
            Ok(other) => {
                tracing::debug!(projection = name, version, step = ?other, "unexpected step");
                shared.settings.poll_interval
            }
            Err(e) => {
                tracing::warn!(projection = name, version, error = %e, "a projection step failed; retrying");
                BACKOFF
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.stopped() => break,
        }
    }
    if let Err(e) = projection.release().await {
        tracing::debug!(projection = name, version, error = %e, "releasing the lease failed");
    }
}

async fn report_lag(projection: &dyn RunProjection, labels: &[(&'static str, String); 1]) {
    if let Ok(status) = projection.status().await {
        metrics::gauge!(names::PROJECTION_BEHIND, labels).set(status.behind.as_secs_f64());
        metrics::gauge!(names::PROJECTION_BEHIND_EVENTS, labels).set(status.behind_events as f64);
    }
}
