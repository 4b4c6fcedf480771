//! Parsing: the attribute's arguments into [`Args`], keeping every span for later diagnostics.
//!
//! Both macros accept the same grammar; which keys each allows is `validate`'s business.

use proc_macro2::{Span, TokenStream};
use syn::parse::{Parse, ParseStream};
use syn::punctuated::Punctuated;
use syn::{LitInt, LitStr, Token};

mod kw {
    syn::custom_keyword!(name);
    syn::custom_keyword!(version);
    syn::custom_keyword!(queue);
    syn::custom_keyword!(retry);
    syn::custom_keyword!(max_attempts);
    syn::custom_keyword!(initial);
    syn::custom_keyword!(max);
    syn::custom_keyword!(start_to_close);
    syn::custom_keyword!(schedule_to_close);
    syn::custom_keyword!(heartbeat);
    syn::custom_keyword!(transactional);
}

/// Which macro is expanding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Orchestration,
    Activity,
}

impl Kind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Orchestration => "orchestration",
            Kind::Activity => "activity",
        }
    }
}

impl Kind {
    /// The keys this macro accepts, as written in error messages.
    pub(crate) fn keys(self) -> &'static str {
        match self {
            Kind::Orchestration => "name, version, queue, crate",
            Kind::Activity => {
                "name, queue, retry, start_to_close, schedule_to_close, heartbeat, \
                 transactional, crate"
            }
        }
    }
}

/// One `key = value` (or `retry(...)`, or a flag).
pub(crate) enum Arg {
    Name(LitStr),
    Version(LitInt),
    Queue(LitStr),
    Crate(LitStr),
    Retry(Span, Vec<RetryArg>),
    StartToClose(LitStr),
    ScheduleToClose(LitStr),
    Heartbeat(LitStr),
    Transactional(Span),
}

/// One key inside `retry(...)`.
pub(crate) enum RetryArg {
    MaxAttempts(LitInt),
    Initial(LitStr),
    Max(LitStr),
}

impl Arg {
    /// The key's name and span, for "duplicate" and "not allowed here" errors.
    pub(crate) fn key(&self) -> (&'static str, Span) {
        match self {
            Arg::Name(l) => ("name", l.span()),
            Arg::Version(l) => ("version", l.span()),
            Arg::Queue(l) => ("queue", l.span()),
            Arg::Crate(l) => ("crate", l.span()),
            Arg::Retry(s, _) => ("retry", *s),
            Arg::StartToClose(l) => ("start_to_close", l.span()),
            Arg::ScheduleToClose(l) => ("schedule_to_close", l.span()),
            Arg::Heartbeat(l) => ("heartbeat", l.span()),
            Arg::Transactional(s) => ("transactional", *s),
        }
    }
}

fn value<T: Parse>(input: ParseStream<'_>) -> syn::Result<T> {
    input.parse::<Token![=]>()?;
    input.parse()
}

impl Arg {
    fn parse_for(input: ParseStream<'_>, kind: Kind) -> syn::Result<Self> {
        let la = input.lookahead1();
        if la.peek(kw::name) {
            input.parse::<kw::name>()?;
            Ok(Arg::Name(value(input)?))
        } else if la.peek(kw::version) {
            input.parse::<kw::version>()?;
            Ok(Arg::Version(value(input)?))
        } else if la.peek(kw::queue) {
            input.parse::<kw::queue>()?;
            Ok(Arg::Queue(value(input)?))
        } else if la.peek(Token![crate]) {
            input.parse::<Token![crate]>()?;
            Ok(Arg::Crate(value(input)?))
        } else if la.peek(kw::retry) {
            let span = input.parse::<kw::retry>()?.span;
            let content;
            syn::parenthesized!(content in input);
            let args = Punctuated::<RetryArg, Token![,]>::parse_terminated(&content)?;
            Ok(Arg::Retry(span, args.into_iter().collect()))
        } else if la.peek(kw::start_to_close) {
            input.parse::<kw::start_to_close>()?;
            Ok(Arg::StartToClose(value(input)?))
        } else if la.peek(kw::schedule_to_close) {
            input.parse::<kw::schedule_to_close>()?;
            Ok(Arg::ScheduleToClose(value(input)?))
        } else if la.peek(kw::heartbeat) {
            input.parse::<kw::heartbeat>()?;
            Ok(Arg::Heartbeat(value(input)?))
        } else if la.peek(kw::transactional) {
            Ok(Arg::Transactional(input.parse::<kw::transactional>()?.span))
        } else if input.peek(syn::Ident) {
            let ident: syn::Ident = input.parse()?;
            Err(syn::Error::new(
                ident.span(),
                format!(
                    "unknown argument `{ident}`; expected one of: {}",
                    kind.keys()
                ),
            ))
        } else {
            Err(la.error())
        }
    }
}

impl Parse for RetryArg {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let la = input.lookahead1();
        if la.peek(kw::max_attempts) {
            input.parse::<kw::max_attempts>()?;
            Ok(RetryArg::MaxAttempts(value(input)?))
        } else if la.peek(kw::initial) {
            input.parse::<kw::initial>()?;
            Ok(RetryArg::Initial(value(input)?))
        } else if la.peek(kw::max) {
            input.parse::<kw::max>()?;
            Ok(RetryArg::Max(value(input)?))
        } else if input.peek(syn::Ident) {
            let ident: syn::Ident = input.parse()?;
            Err(syn::Error::new(
                ident.span(),
                format!(
                    "unknown retry setting `{ident}`; expected one of: max_attempts, initial, max"
                ),
            ))
        } else {
            Err(la.error())
        }
    }
}

/// Parses the attribute's arguments.
pub(crate) fn args(kind: Kind, tokens: TokenStream) -> syn::Result<Vec<Arg>> {
    let parser = |input: ParseStream<'_>| {
        let mut args = Vec::new();
        while !input.is_empty() {
            args.push(Arg::parse_for(input, kind)?);
            if input.is_empty() {
                break;
            }
            input.parse::<Token![,]>()?;
        }
        Ok(args)
    };
    syn::parse::Parser::parse2(parser, tokens)
}
