//! The compile-time determinism check: walks an orchestration body and rejects calls that would
//! make a replay differ from the original run, each with the replacement to use.
//!
//! It is syntactic, so it catches what it can see:
//! - calls by path to anything in [`rules::RULES`] (`SystemTime::now()`, `tokio::time::timeout`,
//!   `std::env::var`, `rand::random()`, `Command::new`, `reqwest::*`, ...), also inside macro
//!   arguments that parse as expressions (`println!("{:?}", Instant::now())`); a function
//!   imported by its bare name (`use std::thread::sleep;`) or under another one is not seen,
//!   nor is a call inside a helper function: the clippy configuration rendered from the same
//!   rules sees those;
//! - `tokio::select!` / `select!` whose first tokens are not `biased;`;
//! - `for` loops and `.iter()`-like calls over a local or parameter whose declared type, or
//!   initializer (`HashMap::new()`, `collect::<HashSet<_>>()`), names `HashMap`/`HashSet`. Names
//!   are matched across the whole body (shadowing is not tracked), and a map reached through a
//!   field or a function call is not seen.
//!
//! A statement marked `#[allow_nondeterministic]` is skipped, with everything inside it.

use std::collections::BTreeSet;

use proc_macro2::{TokenStream, TokenTree};
use quote::ToTokens;
use syn::punctuated::Punctuated;
use syn::visit::{self, Visit};
use syn::{Expr, Path, Token};

use crate::rules::{self, HASH_ITERATION_INSTEAD, HASH_ITERATION_WHY};

/// The escape hatch's name.
pub(crate) const ALLOW: &str = "allow_nondeterministic";

/// Checks `block`, returning one error per offending expression.
pub(crate) fn check(block: &syn::Block, params: &[&syn::PatType]) -> Vec<syn::Error> {
    let mut checker = Checker::default();
    for p in params {
        if let syn::Pat::Ident(id) = &*p.pat
            && names_hash_type(&p.ty.to_token_stream())
        {
            checker.hashed.insert(id.ident.to_string());
        }
    }
    // Declarations first, so a use before the `let` in source order (in a closure) is seen too.
    let mut decls = Declarations(&mut checker.hashed);
    decls.visit_block(block);
    checker.visit_block(block);
    checker.errors
}

#[derive(Default)]
struct Checker {
    errors: Vec<syn::Error>,
    hashed: BTreeSet<String>,
}

struct Declarations<'a>(&'a mut BTreeSet<String>);

impl Visit<'_> for Declarations<'_> {
    fn visit_local(&mut self, local: &syn::Local) {
        let (pat, ty) = match &local.pat {
            syn::Pat::Type(t) => (&*t.pat, Some(t.ty.to_token_stream())),
            other => (other, None),
        };
        let init = local.init.as_ref().map(|i| i.expr.to_token_stream());
        let hashed = ty.iter().chain(init.iter()).any(names_hash_type);
        if let (syn::Pat::Ident(id), true) = (pat, hashed) {
            self.0.insert(id.ident.to_string());
        }
        visit::visit_local(self, local);
    }
}

/// Whether tokens name `HashMap` or `HashSet` anywhere (a type, a constructor, a turbofish).
fn names_hash_type(tokens: &TokenStream) -> bool {
    tokens.clone().into_iter().any(|t| match t {
        TokenTree::Ident(i) => i == "HashMap" || i == "HashSet",
        TokenTree::Group(g) => names_hash_type(&g.stream()),
        _ => false,
    })
}

/// Whether the statement starts with `#[allow_nondeterministic]`.
pub(crate) fn is_allowed(tokens: TokenStream) -> bool {
    let mut it = tokens.into_iter();
    match (it.next(), it.next()) {
        (Some(TokenTree::Punct(p)), Some(TokenTree::Group(g))) if p.as_char() == '#' => {
            let mut inner = g.stream().into_iter();
            matches!((inner.next(), inner.next()), (Some(TokenTree::Ident(i)), None) if i == ALLOW)
        }
        _ => false,
    }
}

/// The rule a nondeterministic path breaks, if it breaks one.
fn replacement(path: &Path) -> Option<(&'static str, &'static str)> {
    let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    rules::find(&segs).map(|f| (f.what, f.instead))
}

fn display(path: &Path) -> String {
    let segs: Vec<String> = path.segments.iter().map(|s| s.ident.to_string()).collect();
    segs.join("::")
}

/// The methods that visit a map's entries in its order.
pub(crate) const ITERATING: [&str; 9] = [
    "iter",
    "iter_mut",
    "into_iter",
    "keys",
    "values",
    "values_mut",
    "drain",
    "into_keys",
    "into_values",
];

impl Checker {
    fn hashed_var(&self, expr: &Expr) -> Option<String> {
        match expr {
            Expr::Path(p) if p.path.segments.len() == 1 => {
                let name = p.path.segments[0].ident.to_string();
                self.hashed.contains(&name).then_some(name)
            }
            Expr::Reference(r) => self.hashed_var(&r.expr),
            Expr::Paren(p) => self.hashed_var(&p.expr),
            _ => None,
        }
    }

    fn hash_iteration(&mut self, span_of: &dyn ToTokens, name: &str) {
        self.errors.push(syn::Error::new_spanned(
            span_of,
            format!(
                "iterating `{name}`, a `HashMap`/`HashSet`, {HASH_ITERATION_WHY}; \
                 {HASH_ITERATION_INSTEAD}"
            ),
        ));
    }
}

impl Visit<'_> for Checker {
    fn visit_stmt(&mut self, stmt: &syn::Stmt) {
        if !is_allowed(stmt.to_token_stream()) {
            visit::visit_stmt(self, stmt);
        }
    }

    // An escape hatch the walk reaches was not at the start of a statement (those are skipped).
    fn visit_attribute(&mut self, attr: &syn::Attribute) {
        if attr.path().is_ident(ALLOW) {
            self.errors.push(syn::Error::new_spanned(
                attr,
                format!(
                    "`#[{ALLOW}]` goes on a statement (a `let`, or an expression ending in `;`)"
                ),
            ));
        }
    }

    fn visit_expr_path(&mut self, e: &syn::ExprPath) {
        if let Some((what, instead)) = replacement(&e.path) {
            self.errors.push(syn::Error::new_spanned(
                &e.path,
                format!(
                    "`{}` {what}, which an orchestration must not do: a replay would differ; \
                     {instead} (or mark the statement `#[{ALLOW}]`)",
                    display(&e.path)
                ),
            ));
        }
        visit::visit_expr_path(self, e);
    }

    fn visit_expr_for_loop(&mut self, e: &syn::ExprForLoop) {
        if let Some(name) = self.hashed_var(&e.expr) {
            self.hash_iteration(&e.expr, &name);
        }
        visit::visit_expr_for_loop(self, e);
    }

    fn visit_expr_method_call(&mut self, e: &syn::ExprMethodCall) {
        if ITERATING.iter().any(|m| e.method == m)
            && let Some(name) = self.hashed_var(&e.receiver)
        {
            self.hash_iteration(&e.method, &name);
        }
        visit::visit_expr_method_call(self, e);
    }

    fn visit_macro(&mut self, mac: &syn::Macro) {
        let last = mac.path.segments.last().map(|s| s.ident.to_string());
        let tokio_or_bare = mac.path.segments.len() == 1
            || mac
                .path
                .segments
                .first()
                .is_some_and(|s| s.ident == "tokio");
        if last.as_deref() == Some("select") && tokio_or_bare && !starts_biased(&mac.tokens) {
            self.errors.push(syn::Error::new_spanned(
                &mac.path,
                format!(
                    "`select!` picks a random ready branch, so a replay could take another one; \
                     start it with `biased;` or use `ctx.select` (or mark the statement `#[{ALLOW}]`)"
                ),
            ));
        }
        // Arguments that parse as expressions (format-like macros, `vec!`, `assert!`) are checked.
        let parser = Punctuated::<Expr, Token![,]>::parse_terminated;
        if let Ok(args) = syn::parse::Parser::parse2(parser, mac.tokens.clone()) {
            for arg in &args {
                self.visit_expr(arg);
            }
        }
    }
}

fn starts_biased(tokens: &TokenStream) -> bool {
    let mut it = tokens.clone().into_iter();
    matches!(
        (it.next(), it.next()),
        (Some(TokenTree::Ident(i)), Some(TokenTree::Punct(p))) if i == "biased" && p.as_char() == ';'
    )
}

/// Removes every `#[allow_nondeterministic]` from `tokens` (the attribute exists only for this
/// check; rustc would reject it as unknown).
pub(crate) fn strip_allow(tokens: TokenStream) -> TokenStream {
    let mut out = Vec::new();
    let mut it = tokens.into_iter().peekable();
    while let Some(t) = it.next() {
        match t {
            TokenTree::Punct(p) if p.as_char() == '#' => {
                let next = it.peek().cloned();
                let attr =
                    TokenStream::from_iter([TokenTree::Punct(p.clone())].into_iter().chain(next));
                if is_allowed(attr) {
                    it.next();
                } else {
                    out.push(TokenTree::Punct(p));
                }
            }
            TokenTree::Group(g) => {
                let mut ng = proc_macro2::Group::new(g.delimiter(), strip_allow(g.stream()));
                ng.set_span(g.span());
                out.push(TokenTree::Group(ng));
            }
            other => out.push(other),
        }
    }
    out.into_iter().collect()
}
