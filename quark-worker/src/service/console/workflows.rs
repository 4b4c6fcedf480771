//! The console's workflow pages: the list with its filters, and one instance (its state, its
//! history as a timeline and as a table, its children and parent, and what can be done to it).

use std::fmt::Write;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use futures::StreamExt;
use tonic::Status;

use super::super::proto::{self, workflow_service_server::WorkflowService};
use super::html::{self, attr, esc, url};
use super::timeline::{Event, timeline};
use super::{Console, Posted, Services, Session, done, done_notice, field, ok, query, signed_in};

pub(super) fn routes() -> Router<Console> {
    Router::new()
        .route("/ui/workflows", get(list))
        .route("/ui/workflows/{id}", get(show))
        .route("/ui/workflows/{id}/{action}", post(act))
}

/// Statuses as the list's filter offers them: (value, label).
const STATUSES: [(proto::WorkflowStatus, &str); 7] = [
    (proto::WorkflowStatus::Running, "running"),
    (proto::WorkflowStatus::Blocked, "blocked"),
    (proto::WorkflowStatus::Completed, "completed"),
    (proto::WorkflowStatus::Failed, "failed"),
    (proto::WorkflowStatus::Cancelled, "cancelled"),
    (proto::WorkflowStatus::Terminated, "terminated"),
    (proto::WorkflowStatus::ContinuedAsNew, "continued_as_new"),
];

fn status_name(value: i32) -> &'static str {
    STATUSES
        .iter()
        .find(|(s, _)| *s as i32 == value)
        .map_or("unknown", |(_, n)| n)
}

/// A `datetime-local` value (`2026-01-02T03:04`, taken as UTC) as a timestamp.
fn local_time(text: &str) -> Result<Option<prost_types::Timestamp>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    let full = if text.len() == 16 {
        format!("{text}:00Z")
    } else {
        format!("{text}Z")
    };
    full.parse::<prost_types::Timestamp>()
        .map(Some)
        .map_err(|_| Status::invalid_argument(format!("`{text}` is not a date and time")))
}

async fn list(
    State(console): State<Console>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let fields = query(raw.as_deref());
        let page = list_page(&console, &session, &fields).await?;
        ok("Workflows", "/ui/workflows", &session, &page)
    })
    .await
}

async fn list_page(
    console: &Services,
    session: &Session,
    fields: &[(String, String)],
) -> Result<String, Status> {
    let (ty, status, prefix) = (
        field(fields, "type"),
        field(fields, "status"),
        field(fields, "id_prefix"),
    );
    let (from, until) = (field(fields, "from"), field(fields, "until"));
    let statuses = STATUSES
        .iter()
        .filter(|(_, n)| *n == status)
        .map(|(s, _)| *s as i32)
        .collect();
    let listed = console
        .workflows
        .list_workflows(session.call(proto::ListWorkflowsRequest {
            workflow_type: ty.to_string(),
            statuses,
            created_from: local_time(from)?,
            created_until: local_time(until)?,
            page_size: 50,
            page_token: field(fields, "page").to_string(),
            id_prefix: prefix.to_string(),
        }))
        .await?
        .into_inner();
    let types = console
        .workflows
        .list_workflow_types(session.call(proto::ListWorkflowTypesRequest {}))
        .await?
        .into_inner()
        .types;

    let mut options = String::from("<option value=\"\">any type</option>");
    for t in &types {
        let selected = if t.name == ty { " selected" } else { "" };
        let _ = write!(
            options,
            "<option value=\"{}\"{selected}>{}</option>",
            attr(&t.name),
            esc(&t.name)
        );
    }
    let mut status_options = String::from("<option value=\"\">any status</option>");
    for (_, name) in STATUSES {
        let selected = if name == status { " selected" } else { "" };
        let _ = write!(
            status_options,
            "<option value=\"{name}\"{selected}>{name}</option>"
        );
    }
    let mut out = done_notice(fields);
    let _ = write!(
        out,
        "<form method=\"get\" action=\"/ui/workflows\" class=\"filters\" role=\"search\">\
         <label>Search ids <input name=\"id_prefix\" value=\"{}\" placeholder=\"id starts with…\"></label>\
         <label>Type <select name=\"type\">{options}</select></label>\
         <label>Status <select name=\"status\">{status_options}</select></label>\
         <label>Created from <input type=\"datetime-local\" name=\"from\" value=\"{}\"></label>\
         <label>until <input type=\"datetime-local\" name=\"until\" value=\"{}\"></label>\
         <button type=\"submit\">Filter</button></form>",
        attr(prefix),
        attr(from),
        attr(until)
    );
    let rows: Vec<Vec<String>> = listed
        .workflows
        .iter()
        .map(|w| {
            vec![
                format!(
                    "<a href=\"/ui/workflows/{}\">{}</a>",
                    url(&w.instance_id),
                    esc(&w.instance_id)
                ),
                esc(&w.workflow_type),
                html::badge(status_name(w.status)),
                esc(&w.queue),
                w.history_length.to_string(),
                html::time(w.created_at.as_ref()),
                html::time(w.updated_at.as_ref()),
            ]
        })
        .collect();
    out.push_str(&html::table(
        "workflows",
        &[
            "Instance", "Type", "Status", "Queue", "Events", "Created", "Updated",
        ],
        &rows,
        "No workflow matches these filters.",
    ));
    if !listed.next_page_token.is_empty() {
        let mut next: Vec<(String, String)> = fields
            .iter()
            .filter(|(k, _)| k != "page" && k != "done")
            .cloned()
            .collect();
        next.push(("page".into(), listed.next_page_token));
        let query: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(next)
            .finish();
        let _ = write!(
            out,
            "<p><a class=\"next\" href=\"/ui/workflows?{}\">Next page</a></p>",
            attr(&query)
        );
    }
    Ok(out)
}

async fn show(
    State(console): State<Console>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let fields = query(raw.as_deref());
        let page = instance_page(&console, &session, &id, &fields).await?;
        ok(&id, "/ui/workflows", &session, &page)
    })
    .await
}

async fn instance_page(
    console: &Services,
    session: &Session,
    id: &str,
    fields: &[(String, String)],
) -> Result<String, Status> {
    let w = console
        .workflows
        .describe_workflow(session.call(proto::DescribeWorkflowRequest {
            instance_id: id.to_string(),
        }))
        .await?
        .into_inner()
        .workflow
        .ok_or_else(|| Status::internal("the API described no workflow"))?;
    let state = console
        .workflows
        .get_workflow_state(session.call(proto::GetWorkflowStateRequest {
            instance_id: id.to_string(),
            ..Default::default()
        }))
        .await?
        .into_inner()
        .state
        .unwrap_or_default();
    let mut stream = console
        .workflows
        .get_workflow_history(session.call(proto::GetWorkflowHistoryRequest {
            instance_id: id.to_string(),
            after_seq: 0,
            follow: false,
        }))
        .await?
        .into_inner();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event?);
    }
    let events: Vec<Event> = events.into_iter().map(Event::from).collect();
    let csrf = session.csrf();
    let status = status_name(w.status);
    let running = matches!(status, "running" | "blocked");

    let mut out = done_notice(fields);
    let parent = if w.parent_id.is_empty() {
        "–".to_string()
    } else {
        format!(
            "<a href=\"/ui/workflows/{}\">{}</a>",
            url(&w.parent_id),
            esc(&w.parent_id)
        )
    };
    let children: Vec<String> = events
        .iter()
        .filter(|e| e.kind == "ChildStarted")
        .filter_map(|e| e.body.get("instance_id").and_then(|v| v.as_str()))
        .map(|child| {
            format!(
                "<a href=\"/ui/workflows/{}\">{}</a>",
                url(child),
                esc(child)
            )
        })
        .collect();
    let _ = write!(
        out,
        "<div class=\"live\" data-live=\"summary\" id=\"summary\"><dl class=\"summary\">\
         <dt>Status</dt><dd>{}</dd><dt>Type</dt><dd>{} v{}</dd><dt>Queue</dt><dd>{}</dd>\
         <dt>Events</dt><dd>{} ({})</dd><dt>Created</dt><dd>{}</dd><dt>Updated</dt><dd>{}</dd>\
         <dt>Parent</dt><dd>{parent}</dd><dt>Children</dt><dd>{}</dd>\
         <dt>Input</dt><dd><code>{}</code></dd><dt>Output</dt><dd><code>{}</code></dd></dl>",
        html::badge(status),
        esc(&w.workflow_type),
        w.version,
        esc(&w.queue),
        w.history_length,
        html::bytes(w.history_bytes),
        html::time(w.created_at.as_ref()),
        html::time(w.updated_at.as_ref()),
        if children.is_empty() {
            "–".to_string()
        } else {
            children.join(", ")
        },
        html::payload(w.input.as_ref()),
        html::payload(w.output.as_ref()),
    );
    if let Some(blocked) = &w.blocked {
        out.push_str(&html::notice(
            "error",
            &format!(
                "Blocked: {} (re-drive dead letter {} once the code is fixed)",
                blocked.error, blocked.task_id
            ),
        ));
    }
    if !state.failure.is_empty() {
        out.push_str(&html::notice(
            "error",
            &format!("Failed: {}", state.failure),
        ));
    }
    // What it waits for.
    let mut pending: Vec<Vec<String>> = Vec::new();
    for a in &state.pending_activities {
        pending.push(vec![
            "activity".into(),
            esc(&a.name),
            a.command.to_string(),
            html::time(a.since.as_ref()),
        ]);
    }
    for c in &state.pending_children {
        pending.push(vec![
            "child".into(),
            esc(&c.name),
            c.command.to_string(),
            html::time(c.since.as_ref()),
        ]);
    }
    for t in &state.pending_timers {
        pending.push(vec![
            "timer".into(),
            format!("fires at {}", html::time(t.fire_at.as_ref())),
            t.command.to_string(),
            "–".into(),
        ]);
    }
    out.push_str("<h2>Waiting for</h2>");
    out.push_str(&html::table(
        "pending",
        &["What", "Name", "Command", "Since"],
        &pending,
        if running {
            "Nothing Quark drives: a signal, an update or a cancellation."
        } else {
            "Nothing: the instance has ended."
        },
    ));
    out.push_str("</div>");

    if running {
        out.push_str("<h2>Act on it</h2><div class=\"actions\">");
        let base = format!("/ui/workflows/{}", url(id));
        out.push_str(&html::form(
            &format!("{base}/signal"),
            &csrf,
            &format!(
                "{}{}",
                html::input("name", "Signal", "", "name"),
                html::input("value", "Value (JSON)", "", "null")
            ),
            "Send signal",
            Some("Send this signal?"),
        ));
        out.push_str(&html::form(
            &format!("{base}/update"),
            &csrf,
            &format!(
                "{}{}",
                html::input("name", "Update", "", "name"),
                html::input("value", "Argument (JSON)", "", "null")
            ),
            "Send update",
            Some("Send this update? The orchestration may change."),
        ));
        out.push_str(&html::form(
            &format!("{base}/query"),
            &csrf,
            &format!(
                "{}{}",
                html::input("name", "Query", "", "name"),
                html::input("value", "Argument (JSON)", "", "null")
            ),
            "Ask",
            None,
        ));
        out.push_str(&html::form(
            &format!("{base}/cancel"),
            &csrf,
            &html::input("reason", "Reason", "", "cancelled from the console"),
            "Cancel",
            Some("Request cancellation? The orchestration will compensate and end."),
        ));
        out.push_str(&html::form(
            &format!("{base}/terminate"),
            &csrf,
            &html::input("reason", "Reason", "", "terminated from the console"),
            "Terminate",
            Some("Terminate it now? None of its code runs again."),
        ));
        out.push_str("</div>");
    }

    out.push_str("<h2>Timeline</h2>");
    out.push_str(&timeline(&events));
    out.push_str("<h2>History</h2>");
    let rows: Vec<Vec<String>> = events
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                html::time(e.at.as_ref()),
                format!(
                    "<span class=\"kind {}\">{}</span>",
                    attr(&e.kind),
                    esc(&e.kind)
                ),
                format!("<code>{}</code>", esc(&e.detail)),
            ]
        })
        .collect();
    out.push_str(&html::table(
        "history",
        &["#", "Recorded", "Event", "Detail"],
        &rows,
        "No events.",
    ));
    Ok(out)
}

/// JSON from a form field (empty: `null`), as a payload.
fn json(text: &str) -> Result<proto::Payload, Status> {
    let text = if text.trim().is_empty() { "null" } else { text };
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| Status::invalid_argument(format!("the value is not JSON: {e}")))?;
    Ok(proto::Payload {
        codec: "json".into(),
        data: value.to_string().into_bytes(),
    })
}

async fn act(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let form = Posted::check(&session, &body)?;
        let back = format!("/ui/workflows/{}", url(&id));
        let w = &console.workflows;
        let said = match action.as_str() {
            "signal" => {
                let name = form.get("name").to_string();
                w.signal_workflow(session.call(proto::SignalWorkflowRequest {
                    instance_id: id.clone(),
                    name: name.clone(),
                    value: Some(json(form.get("value"))?),
                }))
                .await?;
                format!("Signal `{name}` sent.")
            }
            "cancel" => {
                w.cancel_workflow(session.call(proto::CancelWorkflowRequest {
                    instance_id: id.clone(),
                    reason: reason(form.get("reason"), "cancelled from the console"),
                }))
                .await?;
                "Cancellation requested.".to_string()
            }
            "terminate" => {
                w.terminate_workflow(session.call(proto::TerminateWorkflowRequest {
                    instance_id: id.clone(),
                    reason: reason(form.get("reason"), "terminated from the console"),
                }))
                .await?;
                "Terminated.".to_string()
            }
            "query" => {
                let name = form.get("name").to_string();
                let answered =
                    within(w.query_workflow(session.call(proto::QueryWorkflowRequest {
                        instance_id: id.clone(),
                        name: name.clone(),
                        input: Some(json(form.get("value"))?),
                    })))
                    .await??
                    .into_inner();
                format!(
                    "Query `{name}` answered {}",
                    shown(answered.answer.as_ref())
                )
            }
            "update" => {
                let name = form.get("name").to_string();
                let answered = within(w.update_workflow(session.call(
                    proto::UpdateWorkflowRequest {
                        instance_id: id.clone(),
                        name: name.clone(),
                        input: Some(json(form.get("value"))?),
                        update_id: String::new(),
                    },
                )))
                .await??
                .into_inner();
                if answered.error.is_empty() {
                    format!(
                        "Update `{name}` returned {}",
                        shown(answered.result.as_ref())
                    )
                } else {
                    format!("Update `{name}` failed: {}", answered.error)
                }
            }
            other => return Err(Status::not_found(format!("no action `{other}`"))),
        };
        done(&back, &said)
    })
    .await
}

fn reason(given: &str, default: &str) -> String {
    match given.trim() {
        "" => default.to_string(),
        given => given.to_string(),
    }
}

fn shown(p: Option<&proto::Payload>) -> String {
    match p {
        Some(p) if p.codec.is_empty() || p.codec == "json" => {
            String::from_utf8_lossy(&p.data).into_owned()
        }
        Some(p) => format!("<{} bytes of {}>", p.data.len(), p.codec),
        None => "nothing".into(),
    }
}

/// A query or an update waits for a worker: the page waits at most this long.
const REQUEST_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

async fn within<T>(
    call: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<Result<T, Status>, Status> {
    tokio::time::timeout(REQUEST_WAIT, call).await.map_err(|_| {
        Status::deadline_exceeded(
            "no worker answered within 10 s: is a worker that runs this orchestration serving its queue?",
        )
    })
}
