//! Tests of the rule table: the matcher, the families the issue names, the lint file rendered
//! from the table, and clippy reading that file over a fixture crate.

use crate::rules::*;

fn path(p: &str) -> Vec<&str> {
    p.split("::").collect()
}

#[test]
fn a_pattern_matches_every_suffix_from_its_marker_and_nothing_shorter() {
    let p = "std::time::|Instant::now";
    assert!(matches(p, &path("Instant::now")));
    assert!(matches(p, &path("time::Instant::now")));
    assert!(matches(p, &path("std::time::Instant::now")));
    assert!(!matches(p, &path("now")));
    assert!(!matches(p, &path("Instant::now::x")));
    assert!(!matches(p, &path("other::Instant::now")));
    assert!(matches("std::|fs::*", &path("fs::read")));
    assert!(matches("std::|fs::*", &path("std::fs::File::open")));
    assert!(!matches("std::|fs::*", &path("std::fs")));
    assert!(!matches("std::|fs::*", &path("read")));
    assert!(matches("|rand::*", &path("rand::random")));
    assert!(!matches("|rand::*", &path("my::rand::random")));
}

#[test]
fn a_users_own_modules_named_like_std_ones_are_not_rejected() {
    for p in [
        "process::run",
        "task::schedule",
        "time::format",
        "signal::Approve",
        "env::Settings::load",
        "sleep",
        "spawn",
        "Builder::new",
        "std::net::Ipv4Addr::new",
        "tokio::time::Duration::from_secs",
        "std::env::consts::OS",
    ] {
        assert!(find(&path(p)).is_none(), "{p} is rejected");
    }
}

#[test]
fn the_families_the_issue_names_are_rejected() {
    for p in [
        "tokio::time::timeout",
        "time::interval",
        "tokio::task::yield_now",
        "task::block_in_place",
        "JoinSet::new",
        "thread::scope",
        "std::process::id",
        "process::exit",
        "env::current_dir",
        "std::env::args",
        "hostname::get",
        "TcpStream::connect",
        "tokio::net::lookup_host",
        "tokio::process::Command::new",
        "getrandom::fill",
        "fastrand::u32",
        "reqwest::Client::new",
    ] {
        assert!(find(&path(p)).is_some(), "{p} is not rejected");
    }
}

#[test]
fn every_pattern_is_well_formed_and_every_lint_entry_is_a_rejected_call() {
    for f in RULES {
        // The advice names what to do, not only what is wrong.
        assert!(
            f.instead.contains("instead") || f.instead.starts_with("remove it"),
            "{}",
            f.instead
        );
        for p in f.patterns {
            let (_, required) = p.split_once('|').unwrap_or(("", p));
            let parts = required.split("::").count();
            assert!(
                parts >= 2,
                "{p}: the written form needs two segments at least"
            );
            // A wildcard needs a lint entry under it (clippy has no wildcards).
            if let Some(prefix) = p.strip_suffix("::*") {
                let prefix = prefix.replace('|', "");
                assert!(
                    f.methods
                        .iter()
                        .chain(f.types)
                        .any(|m| m.starts_with(&prefix)),
                    "{p}: no lint entry under it"
                );
            }
        }
        for m in f.methods {
            assert!(find(&path(m)).is_some_and(|g| std::ptr::eq(g, f)), "{m}");
        }
        for t in f.types {
            let call = format!("{t}::new");
            assert!(
                find(&path(&call)).is_some_and(|g| std::ptr::eq(g, f)),
                "{t}"
            );
        }
    }
}

#[test]
fn the_lint_file_is_the_rule_table() {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../quark-workflow/clippy-orchestrations.toml"
    );
    let rendered = render_lints();
    if std::env::var_os("QUARK_BLESS_LINTS").is_some() {
        std::fs::write(file, &rendered).unwrap();
    }
    let text = std::fs::read_to_string(file).unwrap();
    assert!(
        text == rendered,
        "{file} differs from the rule table; regenerate it with QUARK_BLESS_LINTS=1"
    );
    // Valid TOML, in the shape clippy reads, with every rule present.
    let parsed: toml::Table = toml::from_str(&text).unwrap();
    let paths = |key: &str| -> Vec<String> {
        parsed[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let e = e.as_table().unwrap();
                assert!(
                    e["reason"]
                        .as_str()
                        .is_some_and(|r| r.contains("orchestration"))
                );
                e["path"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let methods = paths("disallowed-methods");
    let types = paths("disallowed-types");
    for f in RULES {
        for p in f.patterns.iter().filter(|p| !p.ends_with('*')) {
            assert!(methods.contains(&full_path(p)), "{p} has no entry");
        }
        for t in f.types {
            assert!(types.iter().any(|x| x == t), "{t} has no entry");
        }
    }
    for m in HASH_ITERATION {
        let name = m.rsplit("::").next().unwrap_or_default();
        assert!(crate::determinism::ITERATING.contains(&name), "{m}");
        assert!(methods.iter().any(|x| x == m), "{m} has no entry");
    }
}

/// Clippy, with the lint file as its configuration, over `tests/lint`: exactly the lines
/// marked `// denied: <path>` are reported, with that path, and every path in the file
/// resolves. Slow (it builds tokio once), so opt-in; `.ci/run` runs it.
#[test]
#[ignore = "runs cargo clippy; cargo test -p quark-workflow-macros --lib -- --ignored clippy"]
fn clippy_with_the_lint_file_denies_every_marked_call_of_the_fixture() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixture = root.join("tests/lint");
    let conf = std::env::temp_dir().join(format!("quark-lint-conf-{}", std::process::id()));
    std::fs::create_dir_all(&conf).unwrap();
    std::fs::copy(
        root.join("../quark-workflow/clippy-orchestrations.toml"),
        conf.join("clippy.toml"),
    )
    .unwrap();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args([
            "clippy",
            "--offline",
            "--quiet",
            "--message-format",
            "short",
        ])
        .arg("--manifest-path")
        .arg(fixture.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(std::env::temp_dir().join("quark-lint-fixture-target"))
        .env("CLIPPY_CONF_DIR", &conf)
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&conf);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("does not refer to"), "{stderr}");
    let source = std::fs::read_to_string(fixture.join("src/lib.rs")).unwrap();
    let expected: std::collections::BTreeSet<(usize, String)> = source
        .lines()
        .enumerate()
        .filter_map(|(i, l)| Some((i + 1, l.split_once("// denied: ")?.1.trim().to_string())))
        .collect();
    // `src/lib.rs:21:9: error: use of a disallowed method `path``
    let reported: std::collections::BTreeSet<(usize, String)> = stderr
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("src/lib.rs:")?;
            let (line, rest) = rest.split_once(':')?;
            let path = rest.split_once("use of a disallowed ")?.1;
            let path = path.split_once('`')?.1.trim_end_matches('`');
            Some((line.parse().ok()?, path.to_string()))
        })
        .collect();
    assert!(!expected.is_empty());
    assert_eq!(reported, expected, "{stderr}");
}
