//! Trace context across workers: one trace follows a workflow through its turns, activities,
//! child workflows, jobs and outbox messages.
//!
//! With the `otel` feature, whatever creates work (a client starting an instance, enqueueing a job
//! or sending a signal; a turn scheduling an activity or a child; a commit writing an outbox
//! message) stores the W3C trace context (`traceparent`) of the current `tracing` span with it:
//! in the task's row, or as the message's `traceparent` header. The worker that claims the task
//! makes its `task` span a child of that context, so spans recorded on different workers, hours
//! apart, join one trace, and the receiver of an outbox message can continue it from the header.
//! A span's context is known only when the subscriber records spans for OpenTelemetry (the
//! `tracing-opentelemetry` layer); without one nothing is stored.
//!
//! Without the feature, [`traceparent`] is always `None` and [`continue_from`] does nothing: no
//! trace context is stored and the task rows' column stays empty.

use quark_history::{Commit, NewInstance};

/// The header an outbox message carries its trace context in (the W3C name).
pub const TRACEPARENT: &str = "traceparent";

/// The W3C `traceparent` of the current span: `None` without the `otel` feature, outside any span,
/// or when no OpenTelemetry layer records the current span.
pub fn traceparent() -> Option<String> {
    imp::traceparent()
}

/// Makes `span` a child of the span `traceparent` names (a W3C `traceparent`, as stored with a
/// task or carried by a message). Does nothing without the `otel` feature, for `None`, or for a
/// value that is not a valid `traceparent`. Call it before the span is first entered.
pub fn continue_from(span: &tracing::Span, traceparent: Option<&str>) {
    if let Some(traceparent) = traceparent {
        imp::continue_from(span, traceparent);
    }
}

/// Stores the current trace context with every task and outbox message of `commit` that has none
/// (see the module's documentation).
pub fn stamp_commit(commit: &mut Commit) {
    let Some(current) = traceparent() else {
        return;
    };
    for task in &mut commit.tasks {
        task.traceparent.get_or_insert_with(|| current.clone());
    }
    for message in &mut commit.outbox {
        message
            .headers
            .entry(TRACEPARENT.to_string())
            .or_insert_with(|| current.clone());
    }
}

/// Stores the current trace context with `new` (its first turn continues it) if it has none.
pub fn stamp_instance(new: &mut NewInstance) {
    if new.traceparent.is_none() {
        new.traceparent = traceparent();
    }
}

#[cfg(feature = "otel")]
mod imp {
    use std::collections::HashMap;

    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use super::TRACEPARENT;

    pub(super) fn traceparent() -> Option<String> {
        let cx = tracing::Span::current().context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = HashMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        carrier.remove(TRACEPARENT)
    }

    pub(super) fn continue_from(span: &tracing::Span, traceparent: &str) {
        let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
        let cx = TraceContextPropagator::new().extract(&carrier);
        if cx.span().span_context().is_valid() {
            // An error means the span is not recorded for OpenTelemetry: nothing to continue.
            let _ = span.set_parent(cx);
        }
    }
}

#[cfg(not(feature = "otel"))]
mod imp {
    pub(super) fn traceparent() -> Option<String> {
        None
    }

    pub(super) fn continue_from(_span: &tracing::Span, _traceparent: &str) {}
}
