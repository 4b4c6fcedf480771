//! Expansion: a checked [`Model`] into tokens.
//!
//! The function becomes a unit type of the same name (so `ctx.call(charge_card, &input)` passes a
//! value whose type carries the activity's input type), implementing `Orchestration` or
//! `Activity` and `Registration`; an orchestration type also gets typed client stubs (`start`,
//! `handle`). The body moves, unchanged, into a nested `async fn` so that `?` and `return` keep
//! their meaning and errors point at the user's code. Generated code names only `::core`,
//! `::std` and `<crate>::__private`.

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::parse::Kind;
use crate::validate::Model;

pub(crate) fn expand(model: &Model) -> TokenStream {
    let func = &model.func;
    let ident = &func.sig.ident;
    let vis = &func.vis;
    let docs: Vec<_> = func
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("doc"))
        .collect();
    let krate = &model.krate;
    let name = &model.name;
    let output = &model.output;
    let input_ty = match &model.input {
        Some(p) => {
            let ty = &p.ty;
            quote!(#ty)
        }
        None => quote!(()),
    };

    // The user's function, renamed and nested: its body, spans and return type untouched.
    let body_fn = format_ident!("__quark_{}", ident);
    let mut inner = func.clone();
    inner.sig.ident = body_fn.clone();
    inner.vis = syn::Visibility::Inherited;
    inner.attrs.retain(|a| !a.path().is_ident("doc"));
    if !model.callable {
        inner.attrs.push(syn::parse_quote!(#[allow(dead_code)]));
    }
    // Within the body, the function's name stays free for bindings: the unit type would
    // otherwise turn `order: Order` in `fn order(..)` into a unit-struct pattern. (The type
    // namespace is untouched.)
    let shadow = quote! {
        #[allow(dead_code, non_snake_case)]
        fn #ident() {}
    };
    let call = match (&model.input, model.callable) {
        (Some(_), true) => quote!(#body_fn(__quark_ctx, __quark_input)),
        (None, true) => quote!({
            let () = __quark_input;
            #body_fn(__quark_ctx)
        }),
        // The signature has an error already reported: the body is still type-checked (its own
        // mistakes show), but not called, which would only repeat that error in other words.
        (_, false) => quote!({
            let _ = (__quark_ctx, __quark_input);
            ::core::future::pending()
        }),
    };
    let sig_span = func.sig.span();

    let (trait_impl, stubs) = match model.kind {
        Kind::Orchestration => {
            let version = model.version;
            let queue = model.queue.as_deref().unwrap_or("default");
            let run = quote_spanned! {sig_span=>
                fn run(
                    __quark_ctx: __q::OrchestrationContext,
                    __quark_input: <Self as __q::Orchestration>::Input,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#output, __q::OrchestrationError>,
                > + 'static {
                    #shadow
                    #inner
                    #call
                }
            };
            let trait_impl = quote! {
                impl __q::Orchestration for #ident {
                    const NAME: &'static str = #name;
                    const VERSION: u32 = #version;
                    type Input = #input_ty;
                    type Output = #output;
                    fn queue() -> &'static str {
                        #queue
                    }
                    #run
                }
                impl __q::Registration for #ident {
                    fn register_into(self, registry: &mut __q::Registry) {
                        registry.add_orchestration::<Self>();
                    }
                }
            };
            let stubs = quote! {
                impl #ident {
                    /// Starts an instance under `instance_id` through `client` (the in-process
                    /// `Client`, or a remote one) and returns its typed handle.
                    #vis async fn start(
                        client: &(impl __q::WorkflowClient + ?::core::marker::Sized),
                        instance_id: impl ::core::convert::Into<::std::string::String>,
                        input: impl ::core::borrow::Borrow<#input_ty>,
                    ) -> ::core::result::Result<__q::Handle<#output>, __q::ClientError> {
                        __q::start_orchestration::<Self>(client, instance_id, input.borrow()).await
                    }

                    /// The typed handle of an existing instance.
                    #vis fn handle(
                        client: &(impl __q::WorkflowClient + ?::core::marker::Sized),
                        instance_id: impl ::core::convert::Into<::std::string::String>,
                    ) -> __q::Handle<#output> {
                        __q::Handle::new(client.connection(), instance_id)
                    }
                }
            };
            (trait_impl, stubs)
        }
        Kind::Activity => {
            let options = activity_options(model);
            let run = quote_spanned! {sig_span=>
                fn run(
                    __quark_ctx: __q::ActivityContext,
                    __quark_input: <Self as __q::Activity>::Input,
                ) -> impl ::core::future::Future<
                    Output = ::core::result::Result<#output, __q::ActivityError>,
                > + ::core::marker::Send + 'static {
                    #shadow
                    #inner
                    #call
                }
            };
            let trait_impl = quote! {
                impl __q::Activity for #ident {
                    const NAME: &'static str = #name;
                    type Input = #input_ty;
                    type Output = #output;
                    fn options() -> __q::ActivityOptions {
                        #options
                    }
                    #run
                }
                impl __q::Registration for #ident {
                    fn register_into(self, registry: &mut __q::Registry) {
                        registry.add_activity::<Self>();
                    }
                }
            };
            let stubs = quote! {
                impl #ident {
                    /// Enqueues this activity as a durable job; returns the job's id.
                    #[allow(dead_code)]
                    #vis async fn enqueue(
                        client: &__q::Client,
                        input: impl ::core::borrow::Borrow<#input_ty>,
                        options: __q::JobOptions,
                    ) -> ::core::result::Result<__q::JobId, __q::ClientError> {
                        client.enqueue::<Self>(input.borrow(), options).await
                    }
                }
            };
            (trait_impl, stubs)
        }
    };

    quote! {
        #(#docs)*
        #[allow(non_camel_case_types)]
        #[derive(
            ::core::fmt::Debug,
            ::core::clone::Clone,
            ::core::marker::Copy,
            ::core::default::Default,
        )]
        #vis struct #ident;

        const _: () = {
            use #krate::__private as __q;
            #trait_impl
            #stubs
        };
    }
}

fn activity_options(model: &Model) -> TokenStream {
    let ms = |v: u64| quote!(::core::time::Duration::from_millis(#v));
    let mut chain = quote!(__q::ActivityOptions::default());
    if let Some(queue) = &model.queue {
        chain = quote!(#chain.queue(#queue));
    }
    if let Some(retry) = &model.retry {
        let mut policy = quote!(__q::RetryPolicy::default());
        if let Some(n) = retry.max_attempts {
            policy = quote!(#policy.max_attempts(#n));
        }
        if let Some(v) = retry.initial {
            let d = ms(v);
            policy = quote!(#policy.initial(#d));
        }
        if let Some(v) = retry.max {
            let d = ms(v);
            policy = quote!(#policy.max(#d));
        }
        chain = quote!(#chain.retry(#policy));
    }
    for (setter, value) in [
        ("start_to_close", model.start_to_close),
        ("schedule_to_close", model.schedule_to_close),
        ("heartbeat", model.heartbeat),
    ] {
        if let Some(v) = value {
            let setter = format_ident!("{}", setter);
            let d = ms(v);
            chain = quote!(#chain.#setter(#d));
        }
    }
    if model.transactional {
        chain = quote!(#chain.transactional(true));
    }
    chain
}
