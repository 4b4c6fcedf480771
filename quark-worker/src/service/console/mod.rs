//! The web console, under `/ui` on the API's own port: server-rendered pages over the API's
//! services, called in-process with the signed-in user's token, so that a page shows and does
//! exactly what that token may through gRPC (same scopes, same rate limit, same refusals).
//!
//! Signing in takes a token (`quark token create`) and keeps it in an `HttpOnly`,
//! `SameSite=Strict` cookie scoped to `/ui`; every form that changes something also carries a
//! value derived from the token, checked on the way in. Pages refresh their tables in place every
//! few seconds (`live.js`, a few lines of plain JavaScript); nothing needs a JavaScript toolchain.

mod html;
mod jobs;
mod operations;
mod queues;
mod timeline;
mod workflows;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use quark_history::Scope;
use tonic::{Code, Status};

use super::auth::Authenticator;
use super::{Jobs, Outbox, Queues, Sagas, Schedules, Workers, Workflows};

/// The cookie that holds the signed-in token.
const COOKIE: &str = "quark_token";

/// What the console's pages call: the API's services, and its authenticator (for signing in).
pub(crate) struct Services {
    pub(crate) workflows: Workflows,
    pub(crate) jobs: Jobs,
    pub(crate) queues: Queues,
    pub(crate) workers: Workers,
    pub(crate) schedules: Schedules,
    pub(crate) outbox: Outbox,
    pub(crate) sagas: Sagas,
    pub(crate) auth: Arc<Authenticator>,
    /// Whether calls need a token (off: every page is open, as every call is).
    pub(crate) authenticate: bool,
    /// Whether the server speaks TLS (the cookie is then `Secure`).
    pub(crate) tls: bool,
    /// A secret of this process that forms' values are derived with (random at start).
    pub(crate) secret: [u8; 32],
}

type Console = Arc<Services>;

/// The console's routes.
pub(crate) fn router(services: Services) -> Router {
    let console = Arc::new(services);
    Router::new()
        .route("/ui", get(|| async { Redirect::to("/ui/workflows") }))
        .route("/ui/", get(|| async { Redirect::to("/ui/workflows") }))
        .route("/ui/login", get(login_page).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/style.css", get(style))
        .route("/ui/assets/live.js", get(script))
        .merge(workflows::routes())
        .merge(queues::routes())
        .merge(jobs::routes())
        .merge(operations::routes())
        .route_layer(axum::middleware::from_fn_with_state(
            Arc::clone(&console),
            guard,
        ))
        .with_state(console)
}

/// Refuses what a page of another site makes a browser send: a post whose `Origin` is not this
/// server (browsers send it with every post; a client that is not a browser sends none), and,
/// with authentication off, a request whose `Host` is not a loopback name (a page that rebinds
/// its own name to 127.0.0.1 could otherwise read and drive the open console).
async fn guard(
    State(console): State<Console>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !console.authenticate && !is_loopback(host) {
        return refusal(&Status::permission_denied(format!(
            "without authentication the console answers only to a loopback name (127.0.0.1, \
             localhost, [::1]), not `{host}`"
        )));
    }
    if request.method() == axum::http::Method::POST
        && let Some(origin) = headers.get(header::ORIGIN).and_then(|o| o.to_str().ok())
    {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        if authority != host {
            return refusal(&Status::permission_denied(
                "the form was sent by another site, not this console",
            ));
        }
    }
    next.run(request).await
}

/// Whether `host` (a `Host` header: name and port) names this machine's loopback.
fn is_loopback(host: &str) -> bool {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    matches!(name, "127.0.0.1" | "localhost" | "[::1]")
}

/// The signed-in user: the token every call of a page is made with.
pub(super) struct Session {
    token: Option<String>,
    secret: [u8; 32],
}

impl Session {
    /// The session of a request: its cookie's token. A console without authentication has an
    /// anonymous session; one with has none without the cookie.
    fn of(console: &Services, headers: &HeaderMap) -> Option<Session> {
        let token = cookie(headers, COOKIE);
        let secret = console.secret;
        match (token, console.authenticate) {
            (Some(token), _) => Some(Session {
                token: Some(token),
                secret,
            }),
            (None, false) => Some(Session {
                token: None,
                secret,
            }),
            (None, true) => None,
        }
    }

    /// `message` as a call of this session.
    pub(super) fn call<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(token) = &self.token
            && let Ok(value) = format!("Bearer {token}").parse()
        {
            request.metadata_mut().insert("authorization", value);
        }
        request
    }

    /// The value every form of this session carries, and that a form's post must bring back:
    /// another site cannot know it.
    pub(super) fn csrf(&self) -> String {
        let token = self.token.as_deref().unwrap_or("");
        blake3::keyed_hash(
            &self.secret,
            format!("quark console form:{token}").as_bytes(),
        )
        .to_hex()[..32]
            .to_string()
    }
}

/// What a page handler comes to: a page, or a refusal of the API to render.
pub(super) type Page = Result<Response, Status>;

/// Runs a page handler for the request's session and renders its outcome: a page; the sign-in
/// page for a missing or refused token; an error page with the API's message otherwise.
pub(super) async fn signed_in<F, Fut>(console: Console, headers: &HeaderMap, render: F) -> Response
where
    F: FnOnce(Session, Console) -> Fut,
    Fut: std::future::Future<Output = Page>,
{
    let Some(session) = Session::of(&console, headers) else {
        return Redirect::to("/ui/login").into_response();
    };
    match render(session, console).await {
        Ok(page) => page,
        Err(status) => refusal(&status),
    }
}

/// A form post: its fields, once its CSRF value is checked.
pub(super) struct Posted(Vec<(String, String)>);

impl Posted {
    /// The fields of `body`, if it carries `session`'s CSRF value.
    pub(super) fn check(session: &Session, body: &Bytes) -> Result<Posted, Status> {
        let fields: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
        let csrf = fields.iter().find(|(k, _)| k == "csrf").map(|(_, v)| v);
        if csrf.map(String::as_str) != Some(session.csrf().as_str()) {
            return Err(Status::permission_denied(
                "the form was not sent from this console (reload the page and try again)",
            ));
        }
        Ok(Posted(fields))
    }

    /// The value of field `name` (empty if absent).
    pub(super) fn get(&self, name: &str) -> &str {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map_or("", |(_, v)| v.as_str())
    }

    /// Every value of field `name` (checkboxes).
    pub(super) fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The ids checked in a form, as numbers.
pub(super) fn ids(form: &Posted, name: &str) -> Result<Vec<i64>, Status> {
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

/// The fields of a query string.
pub(super) fn query(raw: Option<&str>) -> Vec<(String, String)> {
    form_urlencoded::parse(raw.unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// The value of `name` in parsed query fields (empty if absent).
pub(super) fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// The page for a refused call: the sign-in page for a missing or invalid token, otherwise the
/// API's message under the matching HTTP status.
fn refusal(status: &Status) -> Response {
    let code = match status.code() {
        Code::Unauthenticated => return Redirect::to("/ui/login?expired=1").into_response(),
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::InvalidArgument | Code::FailedPrecondition | Code::AlreadyExists => {
            StatusCode::BAD_REQUEST
        }
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = format!(
        "{}<p><a href=\"javascript:history.back()\">Back</a></p>",
        html::notice("error", status.message())
    );
    (code, Html(html::page("Refused", "", None, &body))).into_response()
}

/// The value of cookie `name`.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

async fn login_page(axum::extract::RawQuery(raw): axum::extract::RawQuery) -> Html<String> {
    let expired = field(&query(raw.as_deref()), "expired") == "1";
    Html(login_form(if expired {
        Some("Your token is no longer valid: sign in again.")
    } else {
        None
    }))
}

fn login_form(message: Option<&str>) -> String {
    let notice = message.map_or(String::new(), |m| html::notice("error", m));
    let body = format!(
        "{notice}<form method=\"post\" action=\"/ui/login\" class=\"login\">\
         <label>API token <input type=\"password\" name=\"token\" autocomplete=\"off\" \
         placeholder=\"qk_…\" required autofocus></label>\
         <button type=\"submit\">Sign in</button></form>\
         <p class=\"hint\">Issue one with <code>quark token create --name NAME --scope read|write|admin</code>. \
         It is kept in a cookie for this site only, until you sign out or close the browser.</p>"
    );
    html::page("Sign in", "", None, &body)
}

async fn login(State(console): State<Console>, body: Bytes) -> Response {
    let fields: Vec<(String, String)> = form_urlencoded::parse(&body).into_owned().collect();
    let token = field(&fields, "token").trim().to_string();
    let session = Session {
        token: Some(token.clone()),
        secret: console.secret,
    };
    // The token is checked as any call's would be (the least scope: reading).
    if let Err(status) = console
        .auth
        .check(&session.call(()), "Console", Scope::Read)
        .await
    {
        let page = login_form(Some(&format!("Not signed in: {}", status.message())));
        return (StatusCode::UNAUTHORIZED, Html(page)).into_response();
    }
    let secure = if console.tls { "; Secure" } else { "" };
    let cookie = format!("{COOKIE}={token}; Path=/ui; HttpOnly; SameSite=Strict{secure}");
    let mut response = Redirect::to("/ui/workflows").into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

async fn logout(State(console): State<Console>, headers: HeaderMap, body: Bytes) -> Response {
    signed_in(console, &headers, |session, _console| async move {
        Posted::check(&session, &body)?;
        let mut response = Redirect::to("/ui/login").into_response();
        response.headers_mut().insert(
            header::SET_COOKIE,
            HeaderValue::from_static(
                "quark_token=; Path=/ui; HttpOnly; SameSite=Strict; Max-Age=0",
            ),
        );
        Ok(response)
    })
    .await
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("style.css"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("live.js"),
    )
}

/// A rendered page, as a response.
pub(super) fn ok(title: &str, current: &str, session: &Session, body: &str) -> Page {
    Ok(Html(html::page(title, current, Some(&session.csrf()), body)).into_response())
}

/// After a form's action: back to `to`, with `message` shown there.
pub(super) fn done(to: &str, message: &str) -> Page {
    let sep = if to.contains('?') { '&' } else { '?' };
    Ok(Redirect::to(&format!("{to}{sep}done={}", html::url(message))).into_response())
}

/// The notice of a page reached after an action (`?done=...`), if any.
pub(super) fn done_notice(fields: &[(String, String)]) -> String {
    match field(fields, "done") {
        "" => String::new(),
        message => html::notice("ok", message),
    }
}
