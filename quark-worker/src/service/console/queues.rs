//! The console's queue pages: each queue's counts and controls (pause, resume, rate limit), and
//! the dead-letter list with its re-drive.

use std::collections::BTreeSet;
use std::fmt::Write;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::{get, post};
use tonic::Status;

use super::super::proto::{
    self, queue_service_server::QueueService, worker_service_server::WorkerService,
    workflow_service_server::WorkflowService,
};
use super::html::{self, attr, esc, url};
use super::{Console, Posted, done, done_notice, field, ids, ok, query, signed_in};

pub(super) fn routes() -> Router<Console> {
    Router::new()
        .route("/ui/queues", get(queues))
        .route("/ui/queues/{queue}/{action}", post(queue_action))
        .route("/ui/dead-letters", get(dead_letters))
        .route("/ui/dead-letters/redrive", post(redrive_dead))
}

async fn queues(
    State(console): State<Console>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let fields = query(raw.as_deref());
        // The queues worth showing: those workers serve, types start on, and dead letters sit in.
        let mut names = BTreeSet::new();
        let workers = console
            .workers
            .list_workers(session.call(proto::ListWorkersRequest::default()))
            .await?
            .into_inner()
            .workers;
        names.extend(workers.into_iter().flat_map(|w| w.queues));
        let types = console
            .workflows
            .list_workflow_types(session.call(proto::ListWorkflowTypesRequest {}))
            .await?
            .into_inner()
            .types;
        names.extend(types.into_iter().map(|t| t.queue));
        let dead = console
            .queues
            .list_dead_letters(session.call(proto::ListDeadLettersRequest {
                queue: String::new(),
                page_size: 500,
            }))
            .await?
            .into_inner()
            .dead_letters;
        names.extend(dead.into_iter().map(|d| d.queue));
        let csrf = session.csrf();
        let mut rows = Vec::new();
        // A token of a namespace is answered for its own queues (a plain name taken in it);
        // the names of others are refused and left out, each queue shown once.
        let mut shown = BTreeSet::new();
        for name in &names {
            let answered = console
                .queues
                .get_queue(session.call(proto::GetQueueRequest {
                    queue: name.clone(),
                }))
                .await;
            let q = match answered {
                Ok(q) => q.into_inner().queue.unwrap_or_default(),
                Err(status) if status.code() == tonic::Code::PermissionDenied => continue,
                Err(status) => return Err(status),
            };
            if !shown.insert(q.name.clone()) {
                continue;
            }
            let name = &q.name;
            let rate = match &q.rate_limit {
                Some(r) => format!(
                    "{} per {} s",
                    r.limit,
                    r.per.as_ref().map_or(0, |d| d.seconds)
                ),
                None => "none".into(),
            };
            let base = format!("/ui/queues/{}", url(name));
            let toggle = if q.paused {
                html::form(&format!("{base}/resume"), &csrf, "", "Resume", None)
            } else {
                html::form(
                    &format!("{base}/pause"),
                    &csrf,
                    "",
                    "Pause",
                    Some("Pause this queue? No task is claimed from it until it is resumed."),
                )
            };
            let limit = html::form(
                &format!("{base}/rate"),
                &csrf,
                &format!(
                    "{}{}",
                    html::input("limit", "Limit", "", "calls (0: none)"),
                    html::input("per", "per s", "1", "1")
                ),
                "Set",
                None,
            );
            rows.push(vec![
                format!("<a href=\"/ui/jobs?queue={}\">{}</a>", url(name), esc(name)),
                if q.paused {
                    html::badge("paused")
                } else {
                    html::badge("serving")
                },
                q.pending.to_string(),
                q.leased.to_string(),
                q.held.to_string(),
                format!(
                    "<a href=\"/ui/dead-letters?queue={}\">{}</a>",
                    url(name),
                    q.dead
                ),
                esc(&rate),
                format!("{toggle}{limit}"),
            ]);
        }
        let mut body = done_notice(&fields);
        body.push_str(&html::table(
            "queues",
            &[
                "Queue",
                "State",
                "Pending",
                "Running",
                "Held",
                "Dead",
                "Rate limit",
                "",
            ],
            &rows,
            "No queue is served or used yet.",
        ));
        ok("Queues", "/ui/queues", &session, &body)
    })
    .await
}

async fn queue_action(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((queue, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let form = Posted::check(&session, &body)?;
        let q = &console.queues;
        let said = match action.as_str() {
            "pause" => {
                q.pause_queue(session.call(proto::PauseQueueRequest {
                    queue: queue.clone(),
                }))
                .await?;
                format!("Queue `{queue}` paused.")
            }
            "resume" => {
                q.resume_queue(session.call(proto::ResumeQueueRequest {
                    queue: queue.clone(),
                }))
                .await?;
                format!("Queue `{queue}` resumed.")
            }
            "rate" => {
                let number = |name: &str| -> Result<u32, Status> {
                    let text = form.get(name).trim();
                    if text.is_empty() {
                        return Ok(0);
                    }
                    text.parse().map_err(|_| {
                        Status::invalid_argument(format!("{name}: `{text}` is not a whole number"))
                    })
                };
                let (limit, per) = (number("limit")?, number("per")?.max(1));
                let rate_limit = (limit > 0).then(|| proto::QueueRateLimit {
                    limit,
                    per: Some(prost_types::Duration {
                        seconds: i64::from(per),
                        nanos: 0,
                    }),
                });
                q.set_queue_rate_limit(session.call(proto::SetQueueRateLimitRequest {
                    queue: queue.clone(),
                    rate_limit,
                }))
                .await?;
                match limit {
                    0 => format!("Queue `{queue}` has no rate limit."),
                    n => format!("Queue `{queue}` is limited to {n} per {per} s."),
                }
            }
            other => return Err(Status::not_found(format!("no action `{other}`"))),
        };
        done("/ui/queues", &said)
    })
    .await
}

async fn dead_letters(
    State(console): State<Console>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let fields = query(raw.as_deref());
        let queue = field(&fields, "queue");
        let dead = console
            .queues
            .list_dead_letters(session.call(proto::ListDeadLettersRequest {
                queue: queue.to_string(),
                page_size: 200,
            }))
            .await?
            .into_inner()
            .dead_letters;
        let rows: Vec<Vec<String>> = dead
            .iter()
            .map(|d| {
                let instance = if d.instance_id.is_empty() {
                    "–".to_string()
                } else {
                    format!("<a href=\"/ui/workflows/{}\">{}</a>", url(&d.instance_id), esc(&d.instance_id))
                };
                vec![
                    format!(
                        "<input type=\"checkbox\" name=\"task\" value=\"{}\" form=\"redrive\" aria-label=\"select {}\">",
                        d.task_id, d.task_id
                    ),
                    d.task_id.to_string(),
                    esc(&d.kind),
                    esc(&d.queue),
                    instance,
                    d.attempts.to_string(),
                    html::time(d.died_at.as_ref()),
                    format!("<code>{}</code>", esc(&d.error)),
                ]
            })
            .collect();
        let mut body = done_notice(&fields);
        let _ = write!(
            body,
            "<form id=\"redrive\" method=\"post\" action=\"/ui/dead-letters/redrive\" \
             data-confirm=\"Re-drive the selected tasks? Each runs again from its queue.\">\
             <input type=\"hidden\" name=\"csrf\" value=\"{}\">\
             <button type=\"submit\">Re-drive selected</button></form>",
            attr(&session.csrf())
        );
        body.push_str(&html::table(
            "dead",
            &["", "Task", "Kind", "Queue", "Instance", "Attempts", "Died", "Error"],
            &rows,
            "The dead-letter list is empty.",
        ));
        ok("Dead letters", "/ui/dead-letters", &session, &body)
    })
    .await
}

async fn redrive_dead(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let form = Posted::check(&session, &body)?;
        let results = console
            .queues
            .redrive_dead_letters(session.call(proto::RedriveDeadLettersRequest {
                task_ids: ids(&form, "task")?,
            }))
            .await?
            .into_inner()
            .results;
        let done_count = results.iter().filter(|r| r.redriven).count();
        let failed: Vec<String> = results
            .iter()
            .filter(|r| !r.redriven)
            .map(|r| format!("{}: {}", r.task_id, r.error))
            .collect();
        let mut said = format!("Re-drove {done_count} of {}.", results.len());
        if !failed.is_empty() {
            let _ = write!(said, " Not re-driven: {}", failed.join("; "));
        }
        done("/ui/dead-letters", &said)
    })
    .await
}
