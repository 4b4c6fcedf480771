//! The attribute macros, documented where users meet them.

/// Turns an `async fn` into a registered, replayable orchestration.
///
/// The function takes the context and at most one input, and returns
/// `Result<Output, OrchestrationError>`:
///
/// ```
/// use quark_workflow::{orchestration, OrchestrationContext, OrchestrationError};
///
/// #[orchestration(name = "greeting", version = 2, queue = "greetings")]
/// async fn greet(ctx: OrchestrationContext, name: String) -> Result<String, OrchestrationError> {
///     ctx.sleep(std::time::Duration::from_secs(1)).await?;
///     Ok(format!("hello, {name}"))
/// }
///
/// use quark_workflow::Orchestration;
/// assert_eq!(<greet as Orchestration>::NAME, "greeting");
/// assert_eq!(<greet as Orchestration>::VERSION, 2);
/// assert_eq!(<greet as Orchestration>::queue(), "greetings");
/// ```
///
/// It generates a unit type named like the function that implements [`Orchestration`] and
/// [`Registration`] (`Registry::new().register(greet)`), with typed client stubs:
/// `greet::start(&client, "id", input).await?` returns a [`Handle`] whose `.result().await` is the
/// output type, and `greet::handle(&client, "id")` reopens one.
///
/// Inside the body the function's own name is free for bindings (`fn order(ctx, order: Order)`
/// works), but, as with any unit struct, a binding named like *another* generated activity or
/// orchestration in scope is read as that type: name such bindings differently.
///
/// # Arguments
///
/// - `name = "..."`: the registered type name (default: the function's name). Never rename a
///   type with running instances.
/// - `version = N`: the code version recorded when an instance starts (default 1).
/// - `queue = "..."`: the queue of its orchestration tasks (default `"default"`).
/// - `crate = "path"`: where the SDK is, for a crate that re-exports it
///   (`#[orchestration(crate = "my_sdk::quark")]`).
///
/// # Determinism check
///
/// The body is checked for calls that make a replay differ, each rejected with the replacement
/// to use: `SystemTime::now`/`Instant::now`/`chrono::Utc::now` (`ctx.now()`),
/// `std::thread::sleep`/`tokio::time::sleep` (`ctx.sleep`), `tokio::spawn`/`std::thread::spawn`
/// (`ctx.join`, `ctx.select`, an activity), `rand::*`/`fastrand::*` (`ctx.random()`),
/// `Uuid::new_v4` (`ctx.uuid()`), `std::env::var`, `std::fs`/`tokio::fs`, `std::net`/
/// `tokio::net`, `std::process`, `reqwest`/`sqlx`/`redis` clients (an activity), `select!`
/// without `biased;` (`ctx.select`), and `for` loops or `.iter()`-like calls over a local or
/// parameter declared as a `HashMap`/`HashSet` (a `BTreeMap`/`BTreeSet`).
///
/// ```compile_fail
/// # use quark_workflow::{orchestration, OrchestrationContext, OrchestrationError};
/// #[orchestration]
/// async fn stamp(_ctx: OrchestrationContext) -> Result<u64, OrchestrationError> {
///     // error: `std::time::SystemTime::now` reads the clock ...; use `ctx.now()` instead
///     let now = std::time::SystemTime::now();
///     Ok(now.elapsed().map(|d| d.as_secs()).unwrap_or(0))
/// }
/// ```
///
/// The check is syntactic: it sees calls by path (also inside macro arguments that parse as
/// expressions), not a function imported under another name, a map reached through a field,
/// or a nondeterministic call inside a helper function the body calls.
///
/// **Escape hatch.** `#[allow_nondeterministic]` on a statement skips that statement (and
/// everything inside it). Use it for code whose result does not influence the commands, such as
/// logging how long a step took:
///
/// ```
/// # use quark_workflow::{orchestration, OrchestrationContext, OrchestrationError};
/// #[orchestration]
/// async fn timed(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
///     #[allow_nondeterministic]
///     let started = std::time::Instant::now();
///     ctx.sleep(std::time::Duration::from_secs(1)).await?;
///     #[allow_nondeterministic]
///     tracing::debug!(elapsed = ?started.elapsed(), "replayed or not, this is only a log line");
///     Ok(())
/// }
/// ```
///
/// [`Orchestration`]: crate::Orchestration
/// [`Registration`]: crate::Registration
/// [`Handle`]: crate::Handle
#[doc(inline)]
pub use quark_workflow_macros::orchestration;

/// Turns an `async fn` into a registered activity.
///
/// The function takes an [`ActivityContext`] and at most one input, and returns
/// `Result<Output, ActivityError>`. It generates a unit type named like the function that
/// implements [`Activity`] and [`Registration`]; pass it to `ctx.call(charge_card, &input)`, which
/// only compiles with an input of the activity's input type:
///
/// ```compile_fail
/// # use quark_workflow::{activity, orchestration, ActivityContext, ActivityError, OrchestrationContext, OrchestrationError};
/// #[activity]
/// async fn charge_card(_ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
///     Ok(cents.to_string())
/// }
///
/// #[orchestration]
/// async fn order(ctx: OrchestrationContext) -> Result<String, OrchestrationError> {
///     ctx.call(charge_card, &"five dollars").await // error: expected `&u64`
/// }
/// ```
///
/// # Arguments
///
/// ```
/// use quark_workflow::{activity, Activity, ActivityContext, ActivityError};
///
/// #[activity(
///     name = "charge_card",                                // default: the function's name
///     queue = "payments",                                  // default: the orchestration's queue
///     retry(max_attempts = 5, initial = "1s", max = "1m"), // exponential backoff
///     start_to_close = "30s",                              // limit on one attempt
///     schedule_to_close = "10m",                           // limit on all attempts
///     heartbeat = "10s",                                   // heartbeat at least this often
///     transactional,                                       // same transaction as its result
/// )]
/// async fn charge_card(ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
///     ctx.heartbeat(&"contacting the bank");
///     Ok(format!("receipt for {cents}"))
/// }
///
/// let options = <charge_card as Activity>::options();
/// assert_eq!(options.retry.max_attempts, 5);
/// assert_eq!(options.start_to_close, Some(std::time::Duration::from_secs(30)));
/// ```
///
/// Durations are a whole number followed by `ms`, `s`, `m`, `h` or `d`. Any error converts into
/// a retryable [`ActivityError`] with `?`; `ActivityError::message(..).terminal()` fails the
/// activity at once. `crate = "path"` works as for `#[orchestration]`.
///
/// [`ActivityContext`]: crate::ActivityContext
/// [`ActivityError`]: crate::ActivityError
/// [`Activity`]: crate::Activity
/// [`Registration`]: crate::Registration
#[doc(inline)]
pub use quark_workflow_macros::activity;
