//! The web console's guards over plain HTTP, on both backends: no page without a signed-in
//! token, a wrong token refused at sign-in, a change refused outside the token's scope or from a
//! form the console did not serve (and nothing changes), and values from the database escaped.
//! The browser test (`tests/tests/end_to_end/console.rs`) drives the pages themselves.

use std::sync::Arc;

use quark_history::testing::TestStore;
use quark_history::{HistoryEvent, HistoryRange, Scope};
use quark_worker::service::{ServiceOptions, serve};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};

use crate::service::{greet, worker};

quark_history::backend_tests!(
    it_keeps_the_console_behind_tokens_and_its_own_forms,
    it_answers_an_open_console_only_on_a_loopback_name,
);

/// A client that follows no redirect (on rustls's ring provider, the engine's).
fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Signs in with `token`: the session cookie.
async fn sign_in(http: &reqwest::Client, base: &str, token: &str) -> reqwest::Response {
    http.post(format!("{base}/ui/login"))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("token={token}"))
        .send()
        .await
        .unwrap()
}

/// The CSRF value of a page's forms.
fn csrf(page: &str) -> String {
    let at = page.find("name=\"csrf\" value=\"").expect("a form") + 19;
    page[at..at + 32].to_string()
}

async fn signals(t: &TestStore, id: &str) -> usize {
    t.store
        .read_history(id, HistoryRange::All)
        .await
        .unwrap()
        .iter()
        .filter(|e| matches!(e.event, HistoryEvent::SignalReceived { .. }))
        .count()
}

async fn it_keeps_the_console_behind_tokens_and_its_own_forms(t: &TestStore) {
    let running = worker(t).start().await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        Arc::clone(&t.store),
        listener,
        ServiceOptions::default(),
        std::future::pending(),
    ));
    let http = http();
    let client = quark_workflow::Client::new(Arc::clone(&t.store));
    greet::start(
        &client,
        "guest-1",
        "<img src=x onerror=alert(1)>".to_string(),
    )
    .await
    .unwrap();

    // No session: the sign-in page.
    let page = http
        .get(format!("{base}/ui/workflows/guest-1"))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()[LOCATION], "/ui/login");
    let refused = sign_in(&http, &base, "qk_0000000000000000_nope").await;
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert!(refused.headers().get(SET_COOKIE).is_none());
    assert!(refused.text().await.unwrap().contains("Not signed in"));

    let token = async |scope| {
        quark_worker::service::auth::issue(&*t.store, "console", scope, None)
            .await
            .unwrap()
            .token
    };
    let session = async |scope| {
        let signed = sign_in(&http, &base, &token(scope).await).await;
        assert_eq!(signed.status(), StatusCode::SEE_OTHER);
        let cookie = signed.headers()[SET_COOKIE].to_str().unwrap().to_string();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        cookie.split(';').next().unwrap().to_string()
    };
    let reader = session(Scope::Read).await;
    let writer = session(Scope::Write).await;

    // A value from the database is shown escaped.
    let page = http
        .get(format!("{base}/ui/workflows/guest-1"))
        .header(COOKIE, &reader)
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let page = page.text().await.unwrap();
    assert!(
        page.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{page}"
    );
    assert!(!page.contains("<img src=x"), "{page}");

    let signal = async |cookie: &str, csrf: &str| {
        http.post(format!("{base}/ui/workflows/guest-1/signal"))
            .header(COOKIE, cookie)
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(format!("csrf={csrf}&name=polite&value=true"))
            .send()
            .await
            .unwrap()
    };
    // A read token may not signal, even from the console's own form.
    let denied = signal(&reader, &csrf(&page)).await;
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);
    assert!(denied.text().await.unwrap().contains("needs write"));
    // A write token's post without the form's value (sent from elsewhere) is refused.
    let forged = signal(&writer, &"0".repeat(32)).await;
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    assert!(
        forged
            .text()
            .await
            .unwrap()
            .contains("not sent from this console")
    );
    assert_eq!(signals(t, "guest-1").await, 0, "nothing changed");

    // The write token's own form goes through.
    let page = http
        .get(format!("{base}/ui/workflows/guest-1"))
        .header(COOKIE, &writer)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let sent = signal(&writer, &csrf(&page)).await;
    assert_eq!(sent.status(), StatusCode::SEE_OTHER);
    assert!(
        sent.headers()[LOCATION]
            .to_str()
            .unwrap()
            .starts_with("/ui/workflows/guest-1?done="),
        "{:?}",
        sent.headers()
    );
    assert_eq!(signals(t, "guest-1").await, 1);

    // A form another site makes the browser post is refused, token and form value or not.
    let crossed = http
        .post(format!("{base}/ui/workflows/guest-1/signal"))
        .header(COOKIE, &writer)
        .header("origin", "http://evil.example")
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("csrf={}&name=polite&value=true", csrf(&page)))
        .send()
        .await
        .unwrap();
    assert_eq!(crossed.status(), StatusCode::FORBIDDEN);
    assert!(crossed.text().await.unwrap().contains("another site"));
    assert_eq!(signals(t, "guest-1").await, 1, "nothing changed");
    running.shutdown().await;
}

async fn it_answers_an_open_console_only_on_a_loopback_name(t: &TestStore) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        Arc::clone(&t.store),
        listener,
        ServiceOptions::default().authenticate(false),
        std::future::pending(),
    ));
    let http = http();
    let page = async |host: &str| {
        http.get(format!("http://{addr}/ui/workflows"))
            .header("host", host)
            .send()
            .await
            .unwrap()
    };
    // Without authentication no sign-in is asked; a rebinding page's name is refused.
    assert_eq!(page(&addr.to_string()).await.status(), StatusCode::OK);
    assert_eq!(
        page(&format!("localhost:{}", addr.port())).await.status(),
        StatusCode::OK
    );
    let rebound = page(&format!("evil.example:{}", addr.port())).await;
    assert_eq!(rebound.status(), StatusCode::FORBIDDEN);
    assert!(rebound.text().await.unwrap().contains("loopback name"));
}
