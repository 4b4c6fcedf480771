//! Snapshots of what the macros generate, formatted with prettyplease. Review changes with
//! `cargo insta review`, or accept them with `INSTA_UPDATE=always cargo test -p quark-workflow-macros`.

use quote::quote;

use crate::entry;
use crate::parse::Kind;

fn pretty(tokens: proc_macro2::TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(_) => tokens.to_string(),
    }
}

#[test]
fn an_orchestration_becomes_a_registered_type_with_client_stubs() {
    let out = entry(
        Kind::Orchestration,
        quote!(name = "process_order", version = 2, queue = "orders"),
        quote! {
            /// Processes an order.
            pub async fn process_order(
                ctx: OrchestrationContext,
                payment: Payment,
            ) -> Result<Receipt, OrchestrationError> {
                #[allow_nondeterministic]
                let started = std::time::Instant::now();
                ctx.call(charge_card, &payment).await
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn an_activity_carries_its_options() {
    let out = entry(
        Kind::Activity,
        quote!(
            queue = "payments",
            retry(max_attempts = 3, initial = "1s", max = "1m"),
            start_to_close = "30s",
            heartbeat = "10s",
            transactional,
            crate = "sdk::quark"
        ),
        quote! {
            async fn charge_card(ctx: ActivityContext, payment: Payment) -> Result<Receipt, ActivityError> {
                Ok(Receipt::for_payment(&payment))
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn an_input_less_activity_takes_unit() {
    let out = entry(
        Kind::Activity,
        quote!(),
        quote! {
            async fn ping(_ctx: ActivityContext) -> Result<(), ActivityError> {
                Ok(())
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}

#[test]
fn on_error_the_type_and_its_impls_are_still_emitted_without_the_escape_hatch() {
    let out = entry(
        Kind::Orchestration,
        quote!(version = 0),
        quote! {
            async fn broken(ctx: OrchestrationContext) -> Result<(), OrchestrationError> {
                #[allow_nondeterministic]
                let t = std::time::SystemTime::now();
                Ok(())
            }
        },
    );
    let text = out.to_string();
    assert!(text.contains("compile_error"), "{text}");
    assert!(text.contains("struct broken"), "{text}");
    assert!(
        text.contains("impl __q :: Registration for broken"),
        "{text}"
    );
    assert!(text.contains("async fn __quark_broken"), "{text}");
    assert!(!text.contains("allow_nondeterministic"), "{text}");
}

#[test]
fn a_signature_the_run_cannot_call_still_gets_its_type_around_a_body_that_never_runs() {
    let out = entry(
        Kind::Activity,
        quote!(),
        quote! {
            fn not_async(_ctx: ActivityContext, cents: u64) -> Result<String, ActivityError> {
                Ok(cents.to_string())
            }
        },
    );
    insta::assert_snapshot!(pretty(out));
}
