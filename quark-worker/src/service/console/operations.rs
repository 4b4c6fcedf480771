//! The console's other operator pages: schedules, the outbox, stuck sagas and workers.

use std::fmt::Write;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};

use super::super::proto::{
    self, outbox_service_server::OutboxService, saga_service_server::SagaService,
    schedule_service_server::ScheduleService, worker_service_server::WorkerService,
};
use super::html::{self, attr, esc, url};
use super::{Console, Posted, done, done_notice, field, ids, ok, query, signed_in};

pub(super) fn routes() -> Router<Console> {
    Router::new()
        .route("/ui/schedules", get(schedules))
        .route("/ui/outbox", get(outbox))
        .route("/ui/outbox/redrive", post(redrive_outbox))
        .route("/ui/sagas", get(sagas))
        .route("/ui/workers", get(workers))
}

async fn schedules(State(console): State<Console>, headers: HeaderMap) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let listed = console
            .schedules
            .list_schedules(session.call(proto::ListSchedulesRequest::default()))
            .await?
            .into_inner()
            .schedules;
        let rows: Vec<Vec<String>> = listed
            .iter()
            .map(|s| {
                vec![
                    esc(&s.name),
                    format!("<code>{}</code>", esc(&s.cron)),
                    esc(&s.timezone),
                    esc(&s.activity),
                    esc(&s.queue),
                    html::time(s.next_at.as_ref()),
                    html::time(s.last_fired_at.as_ref()),
                ]
            })
            .collect();
        let body = html::table(
            "schedules",
            &[
                "Name",
                "Cron",
                "Time zone",
                "Activity",
                "Queue",
                "Next",
                "Last fired",
            ],
            &rows,
            "No schedules.",
        );
        ok("Schedules", "/ui/schedules", &session, &body)
    })
    .await
}

const MESSAGE_STATES: [(proto::MessageState, &str); 3] = [
    (proto::MessageState::Pending, "pending"),
    (proto::MessageState::Sent, "sent"),
    (proto::MessageState::Dead, "dead"),
];

async fn outbox(
    State(console): State<Console>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let fields = query(raw.as_deref());
        let state = match field(&fields, "state") {
            "" => "dead",
            s => s,
        };
        let wanted = MESSAGE_STATES
            .iter()
            .find(|(_, n)| *n == state)
            .map_or(proto::MessageState::Dead, |(s, _)| *s);
        let listed = console
            .outbox
            .list_outbox_messages(session.call(proto::ListOutboxMessagesRequest {
                state: wanted as i32,
                ordering_key: String::new(),
                page_size: 200,
            }))
            .await?
            .into_inner()
            .messages;
        let mut tabs = String::from("<p class=\"tabs\">");
        for (_, name) in MESSAGE_STATES {
            let here = if name == state { " aria-current=\"page\"" } else { "" };
            let _ = write!(tabs, "<a href=\"/ui/outbox?state={name}\"{here}>{name}</a> ");
        }
        tabs.push_str("</p>");
        let rows: Vec<Vec<String>> = listed
            .iter()
            .map(|m| {
                vec![
                    format!(
                        "<input type=\"checkbox\" name=\"message\" value=\"{}\" form=\"redrive\" aria-label=\"select {}\">",
                        m.id, m.id
                    ),
                    m.id.to_string(),
                    esc(&m.destination),
                    esc(&m.ordering_key),
                    m.attempts.to_string(),
                    html::bytes(m.payload_bytes),
                    html::time(m.next_attempt_at.as_ref()),
                    format!("<code>{}</code>", esc(&m.last_error)),
                ]
            })
            .collect();
        let mut body = done_notice(&fields);
        body.push_str(&tabs);
        if state == "dead" {
            let _ = write!(
                body,
                "<form id=\"redrive\" method=\"post\" action=\"/ui/outbox/redrive\" \
                 data-confirm=\"Send the selected messages again?\">\
                 <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
                 <button type=\"submit\">Re-drive selected</button></form>",
                attr(&session.csrf())
            );
        }
        body.push_str(&html::table(
            "messages",
            &["", "Id", "Destination", "Ordering key", "Attempts", "Size", "Next attempt", "Last error"],
            &rows,
            &format!("No {state} messages."),
        ));
        ok("Outbox", "/ui/outbox", &session, &body)
    })
    .await
}

async fn redrive_outbox(
    State(console): State<Console>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let form = Posted::check(&session, &body)?;
        let results = console
            .outbox
            .redrive_outbox_messages(session.call(proto::RedriveOutboxMessagesRequest {
                message_ids: ids(&form, "message")?,
            }))
            .await?
            .into_inner()
            .results;
        let count = results.iter().filter(|r| r.redriven).count();
        done(
            "/ui/outbox?state=dead",
            &format!("Re-drove {count} of {}.", results.len()),
        )
    })
    .await
}

async fn sagas(State(console): State<Console>, headers: HeaderMap) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let stuck = console
            .sagas
            .list_stuck_sagas(session.call(proto::ListStuckSagasRequest::default()))
            .await?
            .into_inner()
            .sagas;
        let rows: Vec<Vec<String>> = stuck
            .iter()
            .map(|s| {
                vec![
                    format!(
                        "<a href=\"/ui/workflows/{}\">{}</a>",
                        url(&s.instance_id),
                        esc(&s.instance_id)
                    ),
                    esc(&s.workflow_type),
                    esc(&s.failed_at),
                    esc(&s.compensation),
                    s.attempts.to_string(),
                    format!("<code>{}</code>", esc(&s.last_error)),
                    esc(&s.skipped.join(", ")),
                ]
            })
            .collect();
        let body = html::table(
            "sagas",
            &[
                "Instance",
                "Type",
                "Failed at",
                "Compensation",
                "Attempts",
                "Last error",
                "Skipped",
            ],
            &rows,
            "No saga is stuck in its compensation.",
        );
        ok("Stuck sagas", "/ui/sagas", &session, &body)
    })
    .await
}

fn pressure(value: i32) -> &'static str {
    match proto::Pressure::try_from(value) {
        Ok(proto::Pressure::Normal) => "normal",
        Ok(proto::Pressure::Warning) => "warning",
        Ok(proto::Pressure::Critical) => "critical",
        Ok(proto::Pressure::Reject) => "reject",
        _ => "unknown",
    }
}

async fn workers(State(console): State<Console>, headers: HeaderMap) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let listed = console
            .workers
            .list_workers(session.call(proto::ListWorkersRequest::default()))
            .await?
            .into_inner()
            .workers;
        let rows: Vec<Vec<String>> = listed
            .iter()
            .map(|w| {
                let memory = match w.memory_limit {
                    0 => html::bytes(w.rss_bytes),
                    limit => format!(
                        "{} of {} ({:.0} %)",
                        html::bytes(w.rss_bytes),
                        html::bytes(limit),
                        w.rss_bytes as f64 / limit as f64 * 100.0
                    ),
                };
                vec![
                    esc(&w.id),
                    esc(&w.queues.join(", ")),
                    html::time(w.heartbeat_at.as_ref()),
                    html::badge(pressure(w.pressure)),
                    memory,
                    format!("{} ({})", w.cached_instances, html::bytes(w.cached_bytes)),
                    format!("{} ({})", w.live_entities, html::bytes(w.entity_bytes)),
                    format!("<code>{}</code>", esc(&w.labels_json)),
                ]
            })
            .collect();
        let body = html::table(
            "workers",
            &[
                "Worker",
                "Queues",
                "Heartbeat",
                "Pressure",
                "Memory",
                "Warm instances",
                "Live entities",
                "Labels",
            ],
            &rows,
            "No worker has registered.",
        );
        ok("Workers", "/ui/workers", &session, &body)
    })
    .await
}
