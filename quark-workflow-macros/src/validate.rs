//! Validation: the semantic rules, turning arguments and the function into a [`Model`].
//!
//! Every problem is collected (not just the first), each on the smallest offending token.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::{FnArg, ItemFn, LitStr, PatType, ReturnType, Type};

use crate::determinism;
use crate::parse::{Arg, Kind, RetryArg};

/// Everything `expand` needs, checked.
pub(crate) struct Model {
    pub(crate) kind: Kind,
    pub(crate) func: ItemFn,
    pub(crate) name: String,
    pub(crate) version: u32,
    pub(crate) queue: Option<String>,
    pub(crate) krate: syn::Path,
    pub(crate) retry: Option<Retry>,
    pub(crate) start_to_close: Option<u64>,
    pub(crate) schedule_to_close: Option<u64>,
    pub(crate) heartbeat: Option<u64>,
    pub(crate) transactional: bool,
    /// The input parameter (`None`: the input is `()`).
    pub(crate) input: Option<PatType>,
    /// `T` of the declared `Result<T, E>`.
    pub(crate) output: Type,
    /// Whether the signature is one the generated `run` can call. When it is not, the type and
    /// its impls are still generated (around a body that never runs), so that the signature's
    /// error is the only one and `.register(f)` elsewhere still compiles.
    pub(crate) callable: bool,
}

/// `retry(...)`, in milliseconds; unset keys keep the SDK's defaults.
#[derive(Default)]
pub(crate) struct Retry {
    pub(crate) max_attempts: Option<u32>,
    pub(crate) initial: Option<u64>,
    pub(crate) max: Option<u64>,
}

/// Validates `args` and `func` for `kind`, adding every error found to `errors`. The model is
/// returned either way, with defaults where an argument was invalid, for the expansion to emit.
pub(crate) fn validate(
    kind: Kind,
    args: Vec<Arg>,
    func: ItemFn,
    errors: &mut Vec<syn::Error>,
) -> Model {
    let mut seen: Vec<&'static str> = Vec::new();
    let mut model = Model {
        kind,
        name: func.sig.ident.to_string(),
        version: 1,
        queue: None,
        krate: syn::parse_quote!(::quark_workflow),
        retry: None,
        start_to_close: None,
        schedule_to_close: None,
        heartbeat: None,
        transactional: false,
        input: None,
        output: syn::parse_quote!(()),
        callable: false,
        func: func.clone(),
    };
    for arg in args {
        let (key, span) = arg.key();
        if seen.contains(&key) {
            errors.push(syn::Error::new(span, format!("duplicate argument `{key}`")));
            continue;
        }
        seen.push(key);
        let allowed = match (&arg, kind) {
            (Arg::Name(_) | Arg::Queue(_) | Arg::Crate(_), _) => true,
            (Arg::Version(_), k) => k == Kind::Orchestration,
            (_, k) => k == Kind::Activity,
        };
        if !allowed {
            errors.push(syn::Error::new(
                span,
                format!(
                    "`{key}` does not apply to an {}; expected one of: {}",
                    kind.as_str(),
                    kind.keys()
                ),
            ));
            continue;
        }
        match arg {
            Arg::Name(l) => model.name = non_empty(&l, errors),
            Arg::Queue(l) => model.queue = Some(non_empty(&l, errors)),
            Arg::Version(l) => match l.base10_parse::<u32>() {
                Ok(v) if v >= 1 => model.version = v,
                _ => errors.push(syn::Error::new(
                    l.span(),
                    "expected a version number from 1 to 4294967295",
                )),
            },
            Arg::Crate(l) => match l.parse::<syn::Path>() {
                Ok(p) => model.krate = p,
                Err(_) => errors.push(syn::Error::new(
                    l.span(),
                    "expected a path to the quark-workflow crate, e.g. `crate = \"my_sdk::quark\"`",
                )),
            },
            Arg::Retry(_, settings) => {
                let mut retry = Retry::default();
                for s in settings {
                    match s {
                        RetryArg::MaxAttempts(l) => match l.base10_parse::<u32>() {
                            Ok(n) if n >= 1 => retry.max_attempts = Some(n),
                            _ => errors.push(syn::Error::new(
                                l.span(),
                                "expected `max_attempts` of at least 1 (1 means no retries)",
                            )),
                        },
                        RetryArg::Initial(l) => retry.initial = duration(&l, errors),
                        RetryArg::Max(l) => retry.max = duration(&l, errors),
                    }
                }
                model.retry = Some(retry);
            }
            Arg::StartToClose(l) => model.start_to_close = duration(&l, errors),
            Arg::ScheduleToClose(l) => model.schedule_to_close = duration(&l, errors),
            Arg::Heartbeat(l) => model.heartbeat = duration(&l, errors),
            Arg::Transactional(_) => model.transactional = true,
        }
    }
    let before = errors.len();
    signature(&mut model, errors);
    model.callable = errors.len() == before;
    if kind == Kind::Orchestration {
        let params: Vec<&PatType> = typed_params(&model.func).collect();
        errors.extend(determinism::check(&model.func.block, &params));
    }
    model
}

fn non_empty(l: &LitStr, errors: &mut Vec<syn::Error>) -> String {
    let v = l.value();
    if v.trim().is_empty() {
        errors.push(syn::Error::new(l.span(), "expected a non-empty name"));
    }
    v
}

/// `"30s"` and friends, as milliseconds.
pub(crate) fn parse_duration(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = text.split_at(split);
    let n: u64 = n.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

fn duration(l: &LitStr, errors: &mut Vec<syn::Error>) -> Option<u64> {
    let parsed = parse_duration(&l.value());
    if parsed.is_none() {
        errors.push(syn::Error::new(
            l.span(),
            format!(
                "invalid duration `{}`; expected a whole number followed by ms, s, m, h or d, \
                 e.g. \"30s\" or \"1m\"",
                l.value()
            ),
        ));
    }
    parsed
}

fn typed_params(func: &ItemFn) -> impl Iterator<Item = &PatType> {
    func.sig.inputs.iter().filter_map(|a| match a {
        FnArg::Typed(t) => Some(t),
        FnArg::Receiver(_) => None,
    })
}

/// The function's shape: `async fn name(ctx: Context, input: In) -> Result<Out, Error>`.
fn signature(model: &mut Model, errors: &mut Vec<syn::Error>) {
    let sig = &model.func.sig;
    let context = match model.kind {
        Kind::Orchestration => "OrchestrationContext",
        Kind::Activity => "ActivityContext",
    };
    let error = match model.kind {
        Kind::Orchestration => "OrchestrationError",
        Kind::Activity => "ActivityError",
    };
    if sig.asyncness.is_none() {
        errors.push(syn::Error::new(
            sig.fn_token.span,
            format!("an {} must be an `async fn`", model.kind.as_str()),
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        errors.push(syn::Error::new(
            sig.generics.span(),
            format!(
                "an {} cannot be generic: it is registered under one name with one input type",
                model.kind.as_str()
            ),
        ));
    }
    if let Some(FnArg::Receiver(r)) = sig.inputs.first() {
        errors.push(syn::Error::new(
            r.span(),
            format!(
                "an {} is a free function; remove `self`",
                model.kind.as_str()
            ),
        ));
    }
    let params: Vec<PatType> = typed_params(&model.func).cloned().collect();
    match params.len() {
        0 => errors.push(syn::Error::new(
            sig.paren_token.span.join(),
            format!("expected the context as the first argument, e.g. `ctx: {context}`"),
        )),
        1 => {}
        2 => model.input = Some(params[1].clone()),
        _ => errors.push(syn::Error::new(
            params[2].span(),
            "expected at most one input argument after the context; group the inputs in a \
             struct or a tuple",
        )),
    }
    match result_ok_type(&sig.output) {
        Some(t) => model.output = t,
        None => errors.push(syn::Error::new(
            return_span(&sig.output, sig.paren_token.span.close()),
            format!("expected the return type `Result<T, {error}>`"),
        )),
    }
}

fn return_span(output: &ReturnType, fallback: Span) -> Span {
    match output {
        ReturnType::Default => fallback,
        ReturnType::Type(_, ty) => ty.span(),
    }
}

/// `T` in `Result<T, E>` (any path ending in `Result` with two type arguments).
fn result_ok_type(output: &ReturnType) -> Option<Type> {
    let ReturnType::Type(_, ty) = output else {
        return None;
    };
    let Type::Path(p) = &**ty else { return None };
    let last = p.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let syn::PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    let mut types = args.args.iter().filter_map(|a| match a {
        syn::GenericArgument::Type(t) => Some(t.clone()),
        _ => None,
    });
    let ok = types.next()?;
    types.next()?;
    Some(ok)
}

#[cfg(test)]
mod tests {
    use super::parse_duration;

    #[test]
    fn durations_read_as_milliseconds() {
        assert_eq!(parse_duration("30s"), Some(30_000));
        assert_eq!(parse_duration("1m"), Some(60_000));
        assert_eq!(parse_duration("250ms"), Some(250));
        assert_eq!(parse_duration("2d"), Some(172_800_000));
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration("3x"), None);
        assert_eq!(parse_duration("10"), None);
    }
}
