//! Queries and updates: synchronous requests into a running orchestration.
//!
//! A **query** reads a value computed from the orchestration's state and changes nothing: no
//! history event records it. An **update** asks the orchestration to change: its validator (if
//! any) may reject it, and then nothing records it either; once accepted it is recorded
//! (`UpdateAccepted`), its handler runs like orchestration code (it may call activities, sleep,
//! wait for signals), and what it returns is recorded (`UpdateCompleted`) and handed to the
//! caller. A replay runs the handler again from its `UpdateAccepted`, so an update is as
//! deterministic as the rest of the code.
//!
//! Both are declared once, as constants, and used by the orchestration and by its callers:
//!
//! ```no_run
//! # //! # use std::rc::Rc;
//! # use quark_workflow::{Client, OrchestrationContext, OrchestrationError, Query, Signal, Update, orchestration};
//! /// How many items the cart holds.
//! pub const ITEMS: Query<(), u32> = Query::new("items");
//! /// Adds items; answers the new count.
//! pub const ADD: Update<u32, u32> = Update::new("add");
//! pub const CHECKOUT: Signal<()> = Signal::new("checkout");
//!
//! #[orchestration]
//! async fn cart(ctx: OrchestrationContext, _: ()) -> Result<u32, OrchestrationError> {
//!     let items = std::rc::Rc::new(std::cell::RefCell::new(0u32));
//!     let held = items.clone();
//!     ctx.on_query(ITEMS, move |()| *held.borrow());
//!     let held = items.clone();
//!     ctx.on_update(ADD, move |_ctx, n| {
//!         let held = held.clone();
//!         async move {
//!             *held.borrow_mut() += n;
//!             Ok(*held.borrow())
//!         }
//!     })
//!     .validate(|n| if *n == 0 { Err("add at least one item".into()) } else { Ok(()) });
//!     ctx.wait_for(CHECKOUT).await?;
//!     Ok(*items.borrow())
//! }
//!
//! # async fn demo(client: &Client) -> Result<(), quark_workflow::ClientError> {
//! let count = client.update("cart-7", ADD, &2).await?;
//! assert_eq!(client.query("cart-7", ITEMS, &()).await?, count);
//! # Ok(()) }
//! ```
//!
//! A request travels as a task on the instance's queue: a worker that runs the instance's code
//! answers it from the instance's replayed state. Register handlers before the first `await`
//! that can wait, so that they exist whenever a request comes: a request for a name with no
//! handler is refused, and nothing changes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::rc::Rc;

use futures::FutureExt;
use futures::future::LocalBoxFuture;
use quark_history::{CallSite, Payload};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::context::OrchestrationContext;
use crate::error::OrchestrationError;

/// A query: its name, its argument's type and its answer's type.
pub struct Query<I, O> {
    name: &'static str,
    _types: PhantomData<fn(I) -> O>,
}

/// An update: its name, its argument's type and its result's type.
pub struct Update<I, O> {
    name: &'static str,
    _types: PhantomData<fn(I) -> O>,
}

macro_rules! declaration {
    ($ty:ident) => {
        impl<I, O> $ty<I, O> {
            /// The one called `name`.
            pub const fn new(name: &'static str) -> Self {
                $ty {
                    name,
                    _types: PhantomData,
                }
            }

            /// Its name.
            pub const fn name(&self) -> &'static str {
                self.name
            }
        }

        impl<I, O> Clone for $ty<I, O> {
            fn clone(&self) -> Self {
                *self
            }
        }

        impl<I, O> Copy for $ty<I, O> {}

        impl<I, O> fmt::Debug for $ty<I, O> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "{}<{}, {}>({:?})",
                    stringify!($ty),
                    std::any::type_name::<I>(),
                    std::any::type_name::<O>(),
                    self.name
                )
            }
        }
    };
}

declaration!(Query);
declaration!(Update);

type QueryFn = Rc<dyn Fn(&Payload) -> Result<Payload, String>>;
type ValidateFn = Rc<dyn Fn(&Payload) -> Result<(), String>>;
type UpdateFn = Rc<
    dyn Fn(
        OrchestrationContext,
        Payload,
    ) -> LocalBoxFuture<'static, Result<Payload, OrchestrationError>>,
>;

/// One update's handler, and its validator.
#[derive(Clone)]
pub(crate) struct UpdateHandler {
    pub(crate) validate: Option<ValidateFn>,
    pub(crate) run: UpdateFn,
    /// Where the code declared it: `UpdateCompleted` names it as its call site.
    pub(crate) site: CallSite,
}

/// The handlers a run declared, by name. A later declaration of a name replaces the earlier.
#[derive(Default)]
pub(crate) struct Handlers {
    pub(crate) queries: HashMap<String, QueryFn>,
    pub(crate) updates: HashMap<String, UpdateHandler>,
}

impl fmt::Debug for Handlers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handlers")
            .field("queries", &self.queries.keys().collect::<Vec<_>>())
            .field("updates", &self.updates.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Handlers {
    /// The names of the declared handlers of one kind, sorted, for messages.
    fn names<V>(map: &HashMap<String, V>) -> String {
        let mut names: Vec<&str> = map.keys().map(String::as_str).collect();
        names.sort_unstable();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(", ")
        }
    }

    pub(crate) fn query(&self, name: &str) -> Result<QueryFn, String> {
        self.queries.get(name).cloned().ok_or_else(|| {
            format!(
                "the orchestration has no query `{name}` (it declares: {})",
                Self::names(&self.queries)
            )
        })
    }

    pub(crate) fn update(&self, name: &str) -> Result<UpdateHandler, String> {
        self.updates.get(name).cloned().ok_or_else(|| {
            format!(
                "the orchestration has no update `{name}` (it declares: {})",
                Self::names(&self.updates)
            )
        })
    }
}

/// The handle [`OrchestrationContext::on_update`] returns: adds a validator to the update.
pub struct UpdateDeclared<'a, I> {
    ctx: &'a OrchestrationContext,
    name: &'static str,
    _input: PhantomData<fn(I)>,
}

impl<I: DeserializeOwned + 'static> UpdateDeclared<'_, I> {
    /// Checks each request before it is accepted: an `Err` rejects it with that message, and
    /// nothing records it. It runs on the orchestration's current state and must not change it.
    pub fn validate(self, validator: impl Fn(&I) -> Result<(), String> + 'static) {
        let check: ValidateFn = Rc::new(move |payload: &Payload| {
            let input: I = payload
                .decode()
                .map_err(|e| format!("the update's argument cannot be decoded: {e}"))?;
            validator(&input)
        });
        let mut st = self.ctx.state.borrow_mut();
        if let Some(handler) = st.handlers.updates.get_mut(self.name) {
            handler.validate = Some(check);
        }
    }
}

impl<I> fmt::Debug for UpdateDeclared<'_, I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UpdateDeclared({:?})", self.name)
    }
}

impl OrchestrationContext {
    /// Declares how query `query` is answered: `answer` reads the orchestration's state (what
    /// it shares with the code, through an `Rc<RefCell<_>>`) and must not change it. It runs
    /// on the state of the instance at the moment of the request, on a worker that runs this
    /// code, and is recorded nowhere.
    pub fn on_query<I, O, F>(&self, query: Query<I, O>, answer: F)
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(I) -> O + 'static,
    {
        let run: QueryFn = Rc::new(move |payload: &Payload| {
            let input: I = payload
                .decode()
                .map_err(|e| format!("the query's argument cannot be decoded: {e}"))?;
            Payload::json(&answer(input)).map_err(|e| format!("the answer cannot be encoded: {e}"))
        });
        self.state
            .borrow_mut()
            .handlers
            .queries
            .insert(query.name().to_string(), run);
    }

    /// Declares the handler of update `update`: given a context and the update's argument, it
    /// returns a future that runs like orchestration code (it may call activities, sleep and
    /// wait) and whose value is the update's result. Add a validator with
    /// [`validate`](UpdateDeclared::validate).
    #[track_caller]
    pub fn on_update<I, O, F, Fut>(&self, update: Update<I, O>, handler: F) -> UpdateDeclared<'_, I>
    where
        I: DeserializeOwned + 'static,
        O: Serialize + 'static,
        F: Fn(OrchestrationContext, I) -> Fut + 'static,
        Fut: Future<Output = Result<O, OrchestrationError>> + 'static,
    {
        let site = crate::command::caller();
        let handler = Rc::new(handler);
        let run: UpdateFn = Rc::new(move |ctx: OrchestrationContext, payload: Payload| {
            let input: Result<I, _> = payload.decode();
            let handler = Rc::clone(&handler);
            async move {
                let input = input.map_err(|e| {
                    OrchestrationError::payload(format!(
                        "the update's argument cannot be decoded: {e}"
                    ))
                })?;
                let output = handler(ctx, input).await?;
                Payload::json(&output).map_err(OrchestrationError::payload)
            }
            .boxed_local()
        });
        let previous = self.state.borrow_mut().handlers.updates.insert(
            update.name().to_string(),
            UpdateHandler {
                validate: None,
                run,
                site,
            },
        );
        drop(previous);
        UpdateDeclared {
            ctx: self,
            name: update.name(),
            _input: PhantomData,
        }
    }
}

/// A handler's future, kept by the executor from the update's acceptance to its end.
pub(crate) struct Running {
    pub(crate) update_id: String,
    pub(crate) site: CallSite,
    pub(crate) future: LocalBoxFuture<'static, Result<Payload, OrchestrationError>>,
}
