//! The web console in a real browser: headless Chromium driven through chromedriver (Debian's
//! `chromium` and `chromium-driver`; `.ci/run` installs them). It signs in with a token, finds a
//! workflow with the search, opens its history, signals it and watches the page update itself,
//! re-drives a dead job, and takes the screenshots the book shows. With
//! `QUARK_CONSOLE_SCREENSHOTS=DIR` they are written there (`book/src/console` to refresh the
//! book's); otherwise to a temporary directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use fantoccini::{Client as Browser, ClientBuilder, Locator};
use quark_history::testing::eventually;
use quark_history::{JobState, Scope, StoreConfig};
use quark_worker::Worker;
use quark_worker::service::{ServiceOptions, serve};
use quark_workflow::{
    ActivityContext, ActivityError, Client, JobOptions, OrchestrationContext, OrchestrationError,
    Registry, activity, orchestration,
};

#[activity]
async fn ship(_ctx: ActivityContext, id: String) -> Result<String, ActivityError> {
    Ok(format!("shipped {id}"))
}

/// Refuses every import, for good: its job goes to the dead-letter list.
#[activity(retry(max_attempts = 1))]
async fn import_file(_ctx: ActivityContext, path: String) -> Result<(), ActivityError> {
    if path.contains("broken") {
        return Err(ActivityError::message(format!("{path}: not a CSV file")).terminal());
    }
    Ok(())
}

/// Waits for `approve`, then ships.
#[orchestration]
async fn order(ctx: OrchestrationContext, id: String) -> Result<String, OrchestrationError> {
    let approved: bool = ctx.wait_for_signal("approve").await?;
    if !approved {
        return Ok("not approved".into());
    }
    ctx.call(ship, &id).await
}

/// chromedriver on a free port, stopped with the test.
struct Driver {
    child: Child,
    port: u16,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn chromedriver() -> Driver {
    let port = free_port();
    let mut child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect(
            "chromedriver is missing: install Debian's `chromium` and `chromium-driver` \
             (.ci/run does)",
        );
    // Ready when it accepts connections.
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Driver { child, port };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("chromedriver did not listen on port {port} within 10 s");
}

async fn browser(driver: &Driver) -> Browser {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1100",
                     // This machine's network is closed: no background connections to refuse.
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&format!("http://127.0.0.1:{}", driver.port))
        .await
        .expect("a Chromium session")
}

fn screenshots() -> PathBuf {
    let dir = match std::env::var_os("QUARK_CONSOLE_SCREENSHOTS") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::temp_dir().join(format!("quark-console-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shoot(b: &Browser, dir: &std::path::Path, name: &str) {
    let png = b.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
}

/// The text of the first element matching `css`, once there is one (the page may still be
/// loading after a click). An element that the page replaced between finding and reading it is
/// found again.
async fn text(b: &Browser, css: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let found = b.wait().at_most(left).for_element(Locator::Css(css)).await;
        match found {
            Ok(element) => match element.text().await {
                Ok(text) => return text,
                Err(e) if e.is_stale_element_reference() && !left.is_zero() => continue,
                Err(e) => panic!("`{css}` on {:?}: {e}", b.current_url().await),
            },
            Err(e) => panic!("no `{css}` on {:?}: {e}", b.current_url().await),
        }
    }
}

/// Marks the page now shown, to tell later when the browser has left it: a page the browser goes
/// to has a window of its own, without the mark.
async fn mark_page(b: &Browser) {
    b.execute("window.quarkTestMark = true;", vec![])
        .await
        .unwrap();
}

/// Waits until the browser shows a page other than the one [`mark_page`] marked (a form was sent,
/// a link followed), so that what the test reads next comes from the page it went to, not from
/// the one it was on. While the next page loads, the question may fail; it is asked again.
async fn left(b: &Browser) {
    eventually("the browser leaves the page", async || {
        matches!(
            b.execute("return window.quarkTestMark === undefined;", vec![])
                .await,
            Ok(serde_json::Value::Bool(true))
        )
    })
    .await;
}

/// Clicks the element matching `locator` and waits until the browser has left the page.
async fn click_away(b: &Browser, locator: Locator<'_>) {
    mark_page(b).await;
    b.find(locator).await.unwrap().click().await.unwrap();
    left(b).await;
}

#[tokio::test]
async fn an_operator_signs_in_finds_a_workflow_signals_it_and_redrives_a_dead_job() {
    // Alone among the suites that run workers: beside a crash loop, the signalled instance once
    // took longer than the page's deadline to complete.
    let _alone = crate::support::one_at_a_time().await;
    let dir = std::env::temp_dir().join(format!("quark-console-db-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}/quark.db", dir.display());
    let store = quark_history::open(&url, StoreConfig::default())
        .await
        .unwrap();
    let running = Worker::builder()
        .store(Arc::clone(&store))
        .poll_interval(Duration::from_millis(20))
        .workflows(
            Registry::new()
                .register(order)
                .register(ship)
                .register(import_file),
        )
        .build()
        .unwrap()
        .start()
        .await
        .unwrap();
    let client = Client::new(Arc::clone(&store));
    for id in ["order-1041", "order-1042", "refund-77"] {
        order::start(&client, id, &id.to_string()).await.unwrap();
    }
    client.signal("order-1042", "approve", &true).await.unwrap();
    let dead = client
        .enqueue::<import_file>(&"imports/broken.txt".to_string(), JobOptions::default())
        .await
        .unwrap();
    client
        .enqueue::<import_file>(&"imports/daily.csv".to_string(), JobOptions::default())
        .await
        .unwrap();
    let job = async || store.job(dead.get()).await.unwrap().unwrap();
    eventually("the broken import is dead", async || {
        job().await.state == JobState::Dead
    })
    .await;
    let died_at = job().await.finished_at.unwrap();
    client.result::<String>("order-1042").await.unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(serve(
        Arc::clone(&store),
        listener,
        ServiceOptions::default(),
        std::future::pending(),
    ));
    let token = quark_worker::service::auth::issue(&*store, "operator", Scope::Admin, None)
        .await
        .unwrap()
        .token;

    let driver = chromedriver().await;
    let b = browser(&driver).await;
    let shots = screenshots();

    // Signing in: a page without a session goes to the sign-in page; a wrong token is refused.
    b.goto(&format!("{base}/ui/workflows")).await.unwrap();
    assert!(b.current_url().await.unwrap().path().ends_with("/ui/login"));
    b.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys("qk_0000000000000000_wrong")
        .await
        .unwrap();
    click_away(&b, Locator::Css("form.login button")).await;
    assert!(text(&b, ".notice.error").await.contains("Not signed in"));
    shoot(&b, &shots, "login").await;
    b.find(Locator::Css("input[name=token]"))
        .await
        .unwrap()
        .send_keys(&token)
        .await
        .unwrap();
    click_away(&b, Locator::Css("form.login button")).await;
    assert!(text(&b, "#workflows").await.contains("refund-77"));
    shoot(&b, &shots, "workflows").await;

    // Finding a workflow: the search keeps only the ids it starts.
    b.find(Locator::Css("input[name=id_prefix]"))
        .await
        .unwrap()
        .send_keys("order-104")
        .await
        .unwrap();
    click_away(&b, Locator::Css("form.filters button")).await;
    let listed = text(&b, "#workflows").await;
    assert!(
        listed.contains("order-1041") && listed.contains("order-1042"),
        "{listed}"
    );
    assert!(!listed.contains("refund-77"), "{listed}");

    // Its history, and a signal, confirmed; the page then updates itself as the instance ends.
    click_away(&b, Locator::LinkText("order-1041")).await;
    assert!(text(&b, "#history").await.contains("WorkflowStarted"));
    assert!(text(&b, "#summary").await.contains("running"));
    b.find(Locator::Css("form[action$='/signal'] input[name=name]"))
        .await
        .unwrap()
        .send_keys("approve")
        .await
        .unwrap();
    b.find(Locator::Css("form[action$='/signal'] input[name=value]"))
        .await
        .unwrap()
        .send_keys("true")
        .await
        .unwrap();
    mark_page(&b).await;
    b.find(Locator::Css("form[action$='/signal'] button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    assert_eq!(
        b.get_alert_text().await.unwrap(),
        "Send this signal?",
        "asked first"
    );
    b.accept_alert().await.unwrap();
    left(&b).await;
    assert!(text(&b, ".notice").await.contains("Signal `approve` sent."));
    let page = b.current_url().await.unwrap();
    // A deadline, not a timing: the page refreshes every 3 s, and on a loaded machine the
    // signalled instance may take a while to complete (one CI run missed a 20 s deadline).
    b.wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::XPath(
            "//div[@data-live='summary' and @data-refreshed]//span[contains(@class,'badge') and text()='completed']",
        ))
        .await
        .expect("the page shows the instance completed without being reloaded");
    assert_eq!(b.current_url().await.unwrap(), page, "no navigation");
    assert!(text(&b, "#history").await.contains("SignalReceived"));
    assert_eq!(
        client.result::<String>("order-1041").await.unwrap(),
        "shipped order-1041"
    );
    shoot(&b, &shots, "instance-completed").await;

    // The dead job, re-driven.
    b.goto(&format!("{base}/ui/dead-letters")).await.unwrap();
    let listed = text(&b, "#dead").await;
    assert!(listed.contains("not a CSV file"), "{listed}");
    shoot(&b, &shots, "dead-letters").await;
    b.find(Locator::Css("#dead input[type=checkbox]"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    mark_page(&b).await;
    b.find(Locator::Css("form#redrive button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    b.accept_alert().await.unwrap();
    left(&b).await;
    assert!(text(&b, ".notice").await.contains("Re-drove 1 of 1."));
    // It ran again (and, still broken, died again, later).
    eventually("the re-driven import ran again", async || {
        job().await.finished_at.is_some_and(|at| at > died_at)
    })
    .await;

    for (page, name) in [
        ("/ui/queues", "queues"),
        ("/ui/jobs", "jobs"),
        ("/ui/workers", "workers"),
    ] {
        b.goto(&format!("{base}{page}")).await.unwrap();
        text(&b, "main h1").await;
        shoot(&b, &shots, name).await;
    }
    b.close().await.unwrap();
    running.shutdown().await;
}
