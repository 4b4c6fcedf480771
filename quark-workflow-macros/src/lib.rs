//! Procedural macros for Quark: `#[orchestration]` and `#[activity]`.
//!
//! Use them through their re-exports in `quark_workflow`, where they are documented with every
//! argument. Each macro is `parse` (arguments into spans and literals) → `validate` (the rules,
//! collecting every error) → `expand` (tokens); `determinism` is the orchestration body check.

mod determinism;
mod expand;
mod parse;
mod rules;
mod validate;

use proc_macro2::TokenStream;

use parse::Kind;

/// Turns an `async fn` into a registered, replayable orchestration. See `quark_workflow::orchestration`.
#[proc_macro_attribute]
pub fn orchestration(
    args: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    entry(Kind::Orchestration, args.into(), item.into()).into()
}

/// Turns an `async fn` into a registered activity. See `quark_workflow::activity`.
#[proc_macro_attribute]
pub fn activity(
    args: proc_macro::TokenStream,
    item: proc_macro::TokenStream,
) -> proc_macro::TokenStream {
    entry(Kind::Activity, args.into(), item.into()).into()
}

/// The whole pipeline on `proc_macro2` tokens (testable outside a compiler).
pub(crate) fn entry(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let stripped = determinism::strip_allow(item.clone());
    let func: syn::ItemFn = match syn::parse2(item) {
        Ok(f) => f,
        // Not a function: say so, and give rustc the item back untouched.
        Err(e) => {
            let e = syn::Error::new(
                e.span(),
                format!("#[{}] goes on an `async fn`", kind.as_str()),
            );
            let mut out = e.to_compile_error();
            out.extend(stripped);
            return out;
        }
    };
    let mut errors = Vec::new();
    let args = parse::args(kind, args).unwrap_or_else(|e| {
        errors.push(e);
        Vec::new()
    });
    let mut model = validate::validate(kind, args, func, &mut errors);
    // Checked with the escape hatches in place; emitted without them.
    if let Ok(f) = syn::parse2(stripped) {
        model.func = f;
    }
    // The generated type and its impls go out even with errors, so that one mistake does not
    // cascade (`.register(f)` failing elsewhere, `f::start` not found).
    let mut out: TokenStream = errors.iter().map(syn::Error::to_compile_error).collect();
    out.extend(expand::expand(&model));
    out
}

#[cfg(test)]
mod rules_tests;
#[cfg(test)]
mod snapshots;
