//! The determinism rules as data: which paths an orchestration must not call, why, and what to
//! use instead. `#[orchestration]` matches call paths against [`RULES`]; the clippy configuration
//! users copy (`quark-workflow/clippy-orchestrations.toml`) is rendered from the same table, and
//! a test keeps the two equal.
//!
//! A pattern is a path with a `|` where the shortest form a user writes starts:
//! `"std::time::|Instant::now"` matches `Instant::now`, `time::Instant::now` and
//! `std::time::Instant::now`, but not `now`. A trailing `*` stands for one or more segments
//! (`"std::|fs::*"` matches `fs::read` and `std::fs::File::open`). The part after `|` is at least
//! two segments, or a crate's name and `*`, so that a user's own `sleep` or `process::run` is not
//! mistaken for the standard one.

/// A family of calls with one reason and one replacement.
pub(crate) struct Family {
    /// What the calls do, as the error's predicate: "`Instant::now` reads the clock".
    pub(crate) what: &'static str,
    /// The advice, naming the replacement: "use `ctx.now()` instead".
    pub(crate) instead: &'static str,
    /// The call paths the macro rejects.
    pub(crate) patterns: &'static [&'static str],
    /// Extra `disallowed-methods` entries for the lint file, where a pattern ends in `*` (clippy
    /// takes whole paths only). Every pattern without `*` is one entry already.
    // Read only where the lint file is rendered, a test.
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) methods: &'static [&'static str],
    /// `disallowed-types` entries for the lint file (`Type::*` patterns).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) types: &'static [&'static str],
}

const ACTIVITY: &str = "do it in an activity instead";
const INPUT: &str =
    "pass it in the workflow input instead, or read it in an activity or `ctx.side_effect(..)`";

/// Every rule, first match wins.
pub(crate) static RULES: &[Family] = &[
    Family {
        what: "reads the clock",
        instead: "use `ctx.now()` instead",
        patterns: &[
            "std::time::|SystemTime::now",
            "std::time::|Instant::now",
            "tokio::time::|Instant::now",
            "chrono::|Utc::now",
            "chrono::|Local::now",
            "time::|OffsetDateTime::now_utc",
            "time::|OffsetDateTime::now_local",
            "jiff::|Timestamp::now",
            "jiff::|Zoned::now",
        ],
        methods: &[],
        types: &[],
    },
    Family {
        what: "sleeps outside the history",
        instead: "use `ctx.sleep(duration).await` (or `ctx.sleep_until(at)`) instead",
        patterns: &[
            "std::|thread::sleep",
            "std::|thread::sleep_ms",
            "tokio::|time::sleep",
            "tokio::|time::sleep_until",
        ],
        methods: &[],
        types: &[],
    },
    Family {
        what: "ticks on the worker's clock",
        instead: "loop over `ctx.sleep(period).await` instead",
        patterns: &["tokio::|time::interval", "tokio::|time::interval_at"],
        methods: &[],
        types: &[],
    },
    Family {
        what: "times out on the worker's clock",
        instead: "use `ctx.timeout(duration, future).await` instead",
        patterns: &["tokio::|time::timeout", "tokio::|time::timeout_at"],
        methods: &[],
        types: &[],
    },
    Family {
        what: "moves the runtime's clock",
        instead: "in tests, move the virtual clock with `TestEnv::advance` instead",
        patterns: &[
            "tokio::|time::pause",
            "tokio::|time::resume",
            "tokio::|time::advance",
        ],
        methods: &[],
        types: &[],
    },
    Family {
        what: "runs work outside the orchestration",
        instead: "use `ctx.join`/`ctx.select` over `ctx` futures, a child orchestration \
                  (`ctx.call_child`), or an activity instead",
        patterns: &[
            "|tokio::spawn",
            "tokio::|task::spawn",
            "tokio::|task::spawn_local",
            "tokio::task::|JoinSet::*",
            "tokio::task::|LocalSet::*",
            "std::|thread::spawn",
            "std::|thread::scope",
            "std::|thread::Builder::*",
        ],
        methods: &[],
        types: &[
            "tokio::task::JoinSet",
            "tokio::task::LocalSet",
            "std::thread::Builder",
        ],
    },
    Family {
        what: "blocks a worker thread",
        instead: "do blocking work in an activity instead",
        patterns: &[
            "tokio::|task::spawn_blocking",
            "tokio::|task::block_in_place",
            "std::|thread::park",
            "std::|thread::park_timeout",
        ],
        methods: &[],
        types: &[],
    },
    Family {
        what: "yields to the worker's scheduler, outside the history",
        instead: "remove it: a turn runs alone and has nothing to yield to",
        patterns: &[
            "tokio::|task::yield_now",
            "tokio::|task::consume_budget",
            "std::|thread::yield_now",
        ],
        methods: &[],
        types: &[],
    },
    Family {
        what: "reads a fact of the worker process or machine",
        instead: INPUT,
        patterns: &[
            "std::|process::id",
            "std::|thread::current",
            "std::|thread::available_parallelism",
            "tokio::|task::id",
            "tokio::|task::try_id",
            "|hostname::get",
            "|gethostname::gethostname",
        ],
        methods: &[],
        types: &[],
    },
    Family {
        what: "reads the process environment",
        instead: INPUT,
        patterns: &[
            "std::|env::var",
            "std::|env::var_os",
            "std::|env::vars",
            "std::|env::vars_os",
            "std::|env::args",
            "std::|env::args_os",
            "std::|env::current_dir",
            "std::|env::current_exe",
            "std::|env::home_dir",
            "std::|env::temp_dir",
        ],
        methods: &[],
        types: &[],
    },
    Family {
        what: "changes the worker process's environment",
        instead: "configure the worker when it starts instead",
        patterns: &[
            "std::|env::set_var",
            "std::|env::remove_var",
            "std::|env::set_current_dir",
        ],
        methods: &[],
        types: &[],
    },
    Family {
        what: "ends the worker process",
        instead: "return an `OrchestrationError` to end the orchestration instead",
        patterns: &["std::|process::exit", "std::|process::abort"],
        methods: &[],
        types: &[],
    },
    Family {
        what: "runs a process",
        instead: "run it in an activity instead",
        patterns: &["std::process::|Command::*", "tokio::process::|Command::*"],
        methods: &[],
        types: &["std::process::Command", "tokio::process::Command"],
    },
    Family {
        what: "does file I/O",
        instead: ACTIVITY,
        patterns: &["std::|fs::*", "tokio::|fs::*"],
        methods: &[
            "std::fs::read",
            "std::fs::read_to_string",
            "std::fs::write",
            "std::fs::read_dir",
            "std::fs::metadata",
            "std::fs::exists",
            "std::fs::copy",
            "std::fs::rename",
            "std::fs::create_dir",
            "std::fs::create_dir_all",
            "std::fs::remove_file",
            "std::fs::remove_dir",
            "std::fs::remove_dir_all",
            "tokio::fs::read",
            "tokio::fs::read_to_string",
            "tokio::fs::write",
            "tokio::fs::read_dir",
            "tokio::fs::metadata",
            "tokio::fs::try_exists",
            "tokio::fs::copy",
            "tokio::fs::rename",
            "tokio::fs::create_dir",
            "tokio::fs::create_dir_all",
            "tokio::fs::remove_file",
            "tokio::fs::remove_dir",
            "tokio::fs::remove_dir_all",
        ],
        types: &[
            "std::fs::File",
            "std::fs::OpenOptions",
            "tokio::fs::File",
            "tokio::fs::OpenOptions",
        ],
    },
    Family {
        what: "reads the terminal",
        instead: "pass it in the workflow input instead, or wait for it with `ctx.wait_for_signal(name)`",
        patterns: &["std::|io::stdin", "tokio::|io::stdin"],
        methods: &[],
        types: &[],
    },
    Family {
        what: "waits for an OS signal to the worker",
        instead: "use `ctx.wait_for_signal(name)` instead",
        patterns: &["tokio::|signal::ctrl_c", "tokio::signal::|unix::signal"],
        methods: &[],
        types: &[],
    },
    Family {
        what: "does network I/O",
        instead: ACTIVITY,
        patterns: &[
            "std::net::|TcpStream::*",
            "std::net::|TcpListener::*",
            "std::net::|UdpSocket::*",
            "tokio::|net::*",
        ],
        methods: &["tokio::net::lookup_host"],
        types: &[
            "std::net::TcpStream",
            "std::net::TcpListener",
            "std::net::UdpSocket",
            "tokio::net::TcpStream",
            "tokio::net::TcpListener",
            "tokio::net::TcpSocket",
            "tokio::net::UdpSocket",
            "tokio::net::UnixStream",
            "tokio::net::UnixListener",
            "tokio::net::UnixDatagram",
        ],
    },
    Family {
        what: "does network or database I/O",
        instead: ACTIVITY,
        patterns: &[
            "|reqwest::*",
            "|hyper::*",
            "|ureq::*",
            "|sqlx::*",
            "|tokio_postgres::*",
            "|redis::*",
        ],
        methods: &[
            "reqwest::get",
            "reqwest::blocking::get",
            "hyper::client::conn::http1::handshake",
            "hyper::client::conn::http2::handshake",
            "ureq::get",
            "ureq::post",
            "sqlx::query",
            "sqlx::query_as",
            "sqlx::query_scalar",
            "tokio_postgres::connect",
            "redis::cmd",
        ],
        types: &[
            "reqwest::Client",
            "reqwest::blocking::Client",
            "ureq::Agent",
            "sqlx::Pool",
            "tokio_postgres::Client",
            "redis::Client",
        ],
    },
    Family {
        what: "is random",
        instead: "use `ctx.random()` instead",
        patterns: &[
            "|rand::*",
            "|fastrand::*",
            "|getrandom::*",
            "std::hash::|RandomState::new",
            "std::collections::hash_map::|RandomState::new",
        ],
        methods: &[
            "rand::random",
            "rand::random_range",
            "rand::random_bool",
            "rand::rng",
            "rand::thread_rng",
            "fastrand::u8",
            "fastrand::u16",
            "fastrand::u32",
            "fastrand::u64",
            "fastrand::usize",
            "fastrand::i32",
            "fastrand::i64",
            "fastrand::bool",
            "fastrand::f32",
            "fastrand::f64",
            "fastrand::shuffle",
            "fastrand::choice",
            "fastrand::alphanumeric",
            "getrandom::fill",
            "getrandom::getrandom",
            "getrandom::u32",
            "getrandom::u64",
        ],
        types: &[
            "rand::rngs::ThreadRng",
            "rand::rngs::OsRng",
            "fastrand::Rng",
        ],
    },
    Family {
        what: "is random",
        instead: "use `ctx.uuid()` instead",
        patterns: &[
            "uuid::|Uuid::new_v4",
            "uuid::|Uuid::now_v1",
            "uuid::|Uuid::now_v6",
            "uuid::|Uuid::now_v7",
            "ulid::|Ulid::new",
        ],
        methods: &[],
        types: &[],
    },
];

/// The `HashMap`/`HashSet` methods that visit entries in hash order, for the lint file. The macro
/// catches these (and `for` loops) on bindings it can see are hash maps; clippy catches them on
/// any receiver, but not `for` loops.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const HASH_ITERATION: &[&str] = &[
    "std::collections::HashMap::iter",
    "std::collections::HashMap::iter_mut",
    "std::collections::HashMap::keys",
    "std::collections::HashMap::values",
    "std::collections::HashMap::values_mut",
    "std::collections::HashMap::drain",
    "std::collections::HashMap::into_keys",
    "std::collections::HashMap::into_values",
    "std::collections::HashSet::iter",
    "std::collections::HashSet::drain",
];

/// Why a hash iteration is rejected, and what to do instead.
pub(crate) const HASH_ITERATION_WHY: &str = "visits entries in a different order in every process";
pub(crate) const HASH_ITERATION_INSTEAD: &str =
    "use a `BTreeMap`/`BTreeSet` instead, or sort the entries first";

/// The family whose pattern matches the path `segments`, if any.
pub(crate) fn find<S: AsRef<str>>(segments: &[S]) -> Option<&'static Family> {
    RULES
        .iter()
        .find(|f| f.patterns.iter().any(|p| matches(p, segments)))
}

/// Whether the written path `segments` matches `pattern` (see the module docs).
pub(crate) fn matches<S: AsRef<str>>(pattern: &str, segments: &[S]) -> bool {
    let (optional, required) = pattern.split_once('|').unwrap_or(("", pattern));
    let optional: Vec<&str> = optional.split("::").filter(|s| !s.is_empty()).collect();
    let mut required: Vec<&str> = required.split("::").collect();
    let wildcard = required.last() == Some(&"*");
    if wildcard {
        required.pop();
    }
    let segments: Vec<&str> = segments.iter().map(AsRef::as_ref).collect();
    // Every way to write it: the required part after a suffix of the optional one.
    (0..=optional.len()).any(|k| {
        let prefix = &optional[optional.len() - k..];
        let fixed = prefix.len() + required.len();
        let tail_ok = if wildcard {
            segments.len() > fixed
        } else {
            segments.len() == fixed
        };
        tail_ok && segments[..prefix.len()] == *prefix && segments[prefix.len()..fixed] == *required
    })
}

/// The full path a pattern names (`*` and `|` removed), as the lint file spells it.
#[cfg(test)]
pub(crate) fn full_path(pattern: &str) -> String {
    pattern.replace('|', "").trim_end_matches("::*").to_string()
}

/// The clippy configuration mirroring [`RULES`], as checked in at
/// `quark-workflow/clippy-orchestrations.toml`.
#[cfg(test)]
pub(crate) fn render_lints() -> String {
    let entry = |path: &str, reason: &str| {
        // Paths outside `std` name crates a user may not depend on: clippy would warn that they
        // do not resolve.
        let invalid = if path.starts_with("std::") {
            ""
        } else {
            ", allow-invalid = true"
        };
        format!("    {{ path = \"{path}\", reason = \"{reason}\"{invalid} }},\n")
    };
    let reason = |f: &Family| {
        format!(
            "{}, which an orchestration must not do; {}",
            f.what, f.instead
        )
    };
    let mut out = String::from(
        "# Clippy settings for crates (or modules) that hold Quark orchestrations: the calls\n\
         # `#[orchestration]` rejects, for clippy to find where the macro cannot look (imported or\n\
         # aliased names, helper functions, other modules). Copy this file to the orchestration\n\
         # crate's `clippy.toml` and add `#![deny(clippy::disallowed_methods, clippy::disallowed_types)]`\n\
         # to it; see the book's Determinism chapter.\n\
         #\n\
         # Generated from quark-workflow-macros/src/rules.rs; do not edit by hand. Regenerate with\n\
         # `QUARK_BLESS_LINTS=1 cargo test -p quark-workflow-macros --lib rules`.\n\
         \n\
         disallowed-methods = [\n",
    );
    for f in RULES {
        let exact = f
            .patterns
            .iter()
            .filter(|p| !p.ends_with('*'))
            .map(|p| full_path(p));
        for path in exact.chain(f.methods.iter().map(|m| m.to_string())) {
            out.push_str(&entry(&path, &reason(f)));
        }
    }
    let hash_reason = format!(
        "{HASH_ITERATION_WHY}, which an orchestration must not rely on; {HASH_ITERATION_INSTEAD}"
    );
    for path in HASH_ITERATION {
        out.push_str(&entry(path, &hash_reason));
    }
    out.push_str("]\n\ndisallowed-types = [\n");
    for f in RULES {
        for path in f.types {
            out.push_str(&entry(path, &reason(f)));
        }
    }
    out.push_str("]\n");
    out
}
