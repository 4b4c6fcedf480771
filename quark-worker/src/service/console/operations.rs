//! The console's operator pages: queues, jobs (with their throughput and latency over time), the
//! dead-letter list, schedules, the outbox, stuck sagas and workers.

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
    self, job_service_server::JobService, outbox_service_server::OutboxService,
    queue_service_server::QueueService, saga_service_server::SagaService,
    schedule_service_server::ScheduleService, worker_service_server::WorkerService,
    workflow_service_server::WorkflowService,
};
use super::html::{self, attr, esc, url};
use super::{Console, Posted, done, done_notice, field, ok, query, signed_in};

pub(super) fn routes() -> Router<Console> {
    Router::new()
        .route("/ui/queues", get(queues))
        .route("/ui/queues/{queue}/{action}", post(queue_action))
        .route("/ui/jobs", get(jobs))
        .route("/ui/jobs/{id}/{action}", post(job_action))
        .route("/ui/dead-letters", get(dead_letters))
        .route("/ui/dead-letters/redrive", post(redrive_dead))
        .route("/ui/schedules", get(schedules))
        .route("/ui/outbox", get(outbox))
        .route("/ui/outbox/redrive", post(redrive_outbox))
        .route("/ui/sagas", get(sagas))
        .route("/ui/workers", get(workers))
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
        for name in &names {
            let q = console
                .queues
                .get_queue(session.call(proto::GetQueueRequest {
                    queue: name.clone(),
                }))
                .await?
                .into_inner()
                .queue
                .unwrap_or_default();
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

const JOB_STATES: [(proto::JobState, &str); 10] = [
    (proto::JobState::Pending, "pending"),
    (proto::JobState::Scheduled, "scheduled"),
    (proto::JobState::Retrying, "retrying"),
    (proto::JobState::Paused, "paused"),
    (proto::JobState::Waiting, "waiting"),
    (proto::JobState::Running, "running"),
    (proto::JobState::Cancelling, "cancelling"),
    (proto::JobState::Completed, "completed"),
    (proto::JobState::Cancelled, "cancelled"),
    (proto::JobState::Dead, "dead"),
];

fn job_state(value: i32) -> &'static str {
    JOB_STATES
        .iter()
        .find(|(s, _)| *s as i32 == value)
        .map_or("unknown", |(_, n)| n)
}

fn micros(t: Option<&prost_types::Timestamp>) -> Option<i64> {
    t.map(|t| t.seconds * 1_000_000 + i64::from(t.nanos) / 1_000)
}

/// Throughput (jobs finished a minute) and latency (seconds from due to finished, on average)
/// over time, from the jobs that finished: `BUCKETS` buckets over the span they cover.
fn job_chart(finished: &[proto::Job]) -> String {
    const BUCKETS: usize = 30;
    let points: Vec<(i64, f64)> = finished
        .iter()
        .filter_map(|j| {
            let end = micros(j.finished_at.as_ref())?;
            let due = micros(j.run_at.as_ref()).or(micros(j.created_at.as_ref()))?;
            Some((end, (end - due).max(0) as f64 / 1e6))
        })
        .collect();
    if points.len() < 2 {
        return html::notice(
            "ok",
            "Too few finished jobs yet for a chart of throughput and latency.",
        );
    }
    let start = points.iter().map(|p| p.0).min().unwrap_or(0);
    let end = points.iter().map(|p| p.0).max().unwrap_or(0);
    let width = ((end - start) / BUCKETS as i64).max(1_000_000);
    let mut counts = [0u32; BUCKETS + 1];
    let mut waits = [0f64; BUCKETS + 1];
    for (at, wait) in &points {
        let i = (((at - start) / width) as usize).min(BUCKETS);
        counts[i] += 1;
        waits[i] += wait;
    }
    let minutes = width as f64 / 60e6;
    let throughput = html::Series {
        name: "finished per minute",
        points: counts
            .iter()
            .enumerate()
            .map(|(i, n)| (i as f64, f64::from(*n) / minutes))
            .collect(),
    };
    let latency = html::Series {
        name: "latency",
        points: counts
            .iter()
            .zip(&waits)
            .enumerate()
            .filter(|(_, (n, _))| **n > 0)
            .map(|(i, (n, w))| (i as f64, w / f64::from(*n)))
            .collect(),
    };
    let label = |t: i64| {
        let full = quark_history::Timestamp::from_micros(t).to_string();
        full.get(..16).unwrap_or(&full).replace('T', " ")
    };
    html::line_chart(
        "Jobs over time",
        &[throughput, latency],
        (&label(start), &label(end)),
        &["/min", " s"],
    )
}

async fn jobs(
    State(console): State<Console>,
    headers: HeaderMap,
    RawQuery(raw): RawQuery,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        let fields = query(raw.as_deref());
        let (queue, state) = (field(&fields, "queue"), field(&fields, "state"));
        let states = JOB_STATES
            .iter()
            .filter(|(_, n)| *n == state)
            .map(|(s, _)| *s as i32)
            .collect();
        let listed = console
            .jobs
            .list_jobs(session.call(proto::ListJobsRequest {
                queue: queue.to_string(),
                states,
                page_size: 100,
                page_token: field(&fields, "page").to_string(),
            }))
            .await?
            .into_inner();
        let finished = console
            .jobs
            .list_jobs(session.call(proto::ListJobsRequest {
                queue: queue.to_string(),
                states: vec![
                    proto::JobState::Completed as i32,
                    proto::JobState::Dead as i32,
                ],
                page_size: 1000,
                page_token: String::new(),
            }))
            .await?
            .into_inner()
            .jobs;
        let csrf = session.csrf();
        let mut state_options = String::from("<option value=\"\">any state</option>");
        for (_, name) in JOB_STATES {
            let selected = if name == state { " selected" } else { "" };
            let _ = write!(
                state_options,
                "<option value=\"{name}\"{selected}>{name}</option>"
            );
        }
        let mut body = done_notice(&fields);
        let _ = write!(
            body,
            "<form method=\"get\" action=\"/ui/jobs\" class=\"filters\">\
             <label>Queue <input name=\"queue\" value=\"{}\" placeholder=\"any queue\"></label>\
             <label>State <select name=\"state\">{state_options}</select></label>\
             <button type=\"submit\">Filter</button></form>",
            attr(queue)
        );
        body.push_str("<div class=\"live\" data-live=\"chart\" id=\"chart\">");
        body.push_str(&job_chart(&finished));
        body.push_str("</div>");
        let rows: Vec<Vec<String>> = listed
            .jobs
            .iter()
            .map(|j| {
                let s = job_state(j.state);
                let base = format!("/ui/jobs/{}", j.id);
                let mut actions = String::new();
                if matches!(
                    s,
                    "pending" | "scheduled" | "retrying" | "paused" | "waiting" | "running"
                ) {
                    actions.push_str(&html::form(
                        &format!("{base}/cancel"),
                        &csrf,
                        "",
                        "Cancel",
                        Some("Cancel this job?"),
                    ));
                }
                if matches!(s, "dead" | "cancelled") {
                    actions.push_str(&html::form(
                        &format!("{base}/retry"),
                        &csrf,
                        "",
                        "Retry",
                        None,
                    ));
                }
                if matches!(s, "pending" | "scheduled" | "retrying") {
                    actions.push_str(&html::form(
                        &format!("{base}/pause"),
                        &csrf,
                        "",
                        "Pause",
                        None,
                    ));
                }
                if s == "paused" {
                    actions.push_str(&html::form(
                        &format!("{base}/resume"),
                        &csrf,
                        "",
                        "Resume",
                        None,
                    ));
                }
                let progress = j.progress.as_ref().map_or(String::new(), |p| {
                    let percent = p.percent.map_or(String::new(), |v| format!("{v:.0} % "));
                    esc(&format!("{percent}{}", p.message))
                });
                vec![
                    j.id.to_string(),
                    esc(&j.activity),
                    esc(&j.queue),
                    html::badge(s),
                    j.attempts.to_string(),
                    progress,
                    html::time(j.created_at.as_ref()),
                    html::time(j.finished_at.as_ref()),
                    esc(&j.error),
                    actions,
                ]
            })
            .collect();
        body.push_str(&html::table(
            "jobs",
            &[
                "Id", "Activity", "Queue", "State", "Attempts", "Progress", "Created", "Finished",
                "Error", "",
            ],
            &rows,
            "No job matches these filters.",
        ));
        ok("Jobs", "/ui/jobs", &session, &body)
    })
    .await
}

async fn job_action(
    State(console): State<Console>,
    headers: HeaderMap,
    Path((id, action)): Path<(i64, String)>,
    body: Bytes,
) -> Response {
    signed_in(console, &headers, |session, console| async move {
        Posted::check(&session, &body)?;
        let j = &console.jobs;
        match action.as_str() {
            "cancel" => drop(
                j.cancel_job(session.call(proto::CancelJobRequest { job_id: id }))
                    .await?,
            ),
            "retry" => drop(
                j.retry_job(session.call(proto::RetryJobRequest { job_id: id }))
                    .await?,
            ),
            "pause" => drop(
                j.pause_job(session.call(proto::PauseJobRequest { job_id: id }))
                    .await?,
            ),
            "resume" => drop(
                j.resume_job(session.call(proto::ResumeJobRequest { job_id: id }))
                    .await?,
            ),
            other => return Err(Status::not_found(format!("no action `{other}`"))),
        }
        done("/ui/jobs", &format!("Job {id}: {action} done."))
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

/// The ids checked in a form, as numbers.
fn ids(form: &Posted, name: &str) -> Result<Vec<i64>, Status> {
    let ids = form
        .all(name)
        .into_iter()
        .map(|v| {
            v.parse()
                .map_err(|_| Status::invalid_argument(format!("`{v}` is not an id")))
        })
        .collect::<Result<Vec<i64>, Status>>()?;
    if ids.is_empty() {
        return Err(Status::invalid_argument("nothing was selected"));
    }
    Ok(ids)
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
