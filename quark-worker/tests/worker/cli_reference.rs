//! The book's CLI reference, `book/src/cli.md`, is rendered from the clap definitions, so it
//! cannot drift from the binary: this test fails when the file differs from what the definitions
//! render now, and `QUARK_UPDATE_CLI_REFERENCE=1` writes it instead.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Arg, ArgAction, Command, CommandFactory};
use quark_worker::cli::Cli;

#[test]
fn the_books_cli_reference_matches_the_clap_definitions() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../book/src/cli.md");
    let rendered = render(Cli::command());
    if std::env::var_os("QUARK_UPDATE_CLI_REFERENCE").is_some_and(|v| v == "1") {
        std::fs::write(&path, &rendered).unwrap();
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        current == rendered,
        "{} is stale: the clap definitions changed. Regenerate it with \
         `QUARK_UPDATE_CLI_REFERENCE=1 cargo test -p quark-worker --test worker cli_reference`",
        path.display()
    );
}

fn render(mut root: Command) -> String {
    root.build();
    let mut out = String::from(
        "# CLI reference\n\n\
         <!-- Generated from the clap definitions by quark-worker/tests/worker/cli_reference.rs; \
         do not edit. Regenerate with \
         `QUARK_UPDATE_CLI_REFERENCE=1 cargo test -p quark-worker --test worker cli_reference`. -->\n\n\
         `quark` is the stock binary; a binary built around `quark_worker::cli::main_with(registry)` \
         has the same commands, with the registry's orchestrations and activities linked in. \
         Options marked *global* may be given after any subcommand.\n",
    );
    let globals: Vec<Arg> = root
        .get_arguments()
        .filter(|a| a.is_global_set())
        .cloned()
        .collect();
    section(&mut out, &root, "quark", &globals, true);
    // A command with neither arguments nor subcommands leaves blank lines behind.
    while out.contains("\n\n\n") {
        out = out.replace("\n\n\n", "\n\n");
    }
    out
}

fn section(out: &mut String, cmd: &Command, path: &str, globals: &[Arg], root: bool) {
    let depth = path.split(' ').count().min(4);
    let _ = writeln!(out, "\n{} `{path}`\n", "#".repeat(depth + 1));
    if let Some(about) = cmd.get_long_about().or(cmd.get_about()) {
        let _ = writeln!(out, "{about}\n");
    }
    let aliases: Vec<&str> = cmd.get_all_aliases().collect();
    if !aliases.is_empty() {
        let _ = writeln!(out, "Also: `{}`.\n", aliases.join("`, `"));
    }
    let usage = cmd.clone().bin_name(path).render_usage().to_string();
    let usage = usage.trim_start_matches("Usage: ");
    let _ = writeln!(out, "```text\n{usage}\n```\n");
    let args: Vec<&Arg> = cmd
        .get_arguments()
        .filter(|a| !a.is_hide_set())
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .filter(|a| root || !globals.iter().any(|g| g.get_id() == a.get_id()))
        .collect();
    for arg in args {
        let _ = writeln!(out, "- {}", describe(arg));
    }
    let subcommands: Vec<&Command> = cmd
        .get_subcommands()
        .filter(|c| !c.is_hide_set() && c.get_name() != "help")
        .collect();
    if !subcommands.is_empty() {
        let _ = writeln!(out, "\nSubcommands:\n");
        for sub in &subcommands {
            let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
            let first = about.split(". ").next().unwrap_or_default();
            let _ = writeln!(
                out,
                "- `{}`: {}",
                sub.get_name(),
                first.trim_end_matches('.')
            );
        }
    }
    for sub in subcommands {
        section(
            out,
            sub,
            &format!("{path} {}", sub.get_name()),
            globals,
            false,
        );
    }
}

fn describe(arg: &Arg) -> String {
    let value = arg
        .get_value_names()
        .map(|names| {
            names
                .iter()
                .map(|n| format!("<{n}>"))
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| format!("<{}>", arg.get_id().as_str().to_uppercase()));
    let takes_value = !matches!(
        arg.get_action(),
        ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count
    );
    let mut name = match (arg.get_long(), arg.get_short()) {
        (Some(long), Some(short)) => format!("-{short}, --{long}"),
        (Some(long), None) => format!("--{long}"),
        (None, Some(short)) => format!("-{short}"),
        (None, None) => String::new(),
    };
    if arg.is_positional() {
        name = value.clone();
        if matches!(arg.get_action(), ArgAction::Append) {
            name.push_str("...");
        }
    } else if takes_value {
        name = format!("{name} {value}");
    }
    let mut line = format!("`{name}`");
    if let Some(aliases) = arg.get_visible_aliases() {
        for alias in aliases {
            let _ = write!(line, ", `--{alias}`");
        }
    }
    let help = arg
        .get_long_help()
        .or(arg.get_help())
        .map(|h| h.to_string())
        .unwrap_or_default();
    let _ = write!(line, ": {}", help.replace('\n', " "));
    let mut notes = Vec::new();
    if arg.is_required_set() {
        notes.push("required".to_owned());
    }
    if arg.is_global_set() {
        notes.push("global".to_owned());
    }
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| v.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() && takes_value {
        notes.push(format!("default `{}`", defaults.join(",")));
    }
    if let Some(env) = arg.get_env() {
        notes.push(format!("env `{}`", env.to_string_lossy()));
    }
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|v| !v.is_hide_set())
        .map(|v| format!("`{}`", v.get_name()))
        .collect();
    if !possible.is_empty() && takes_value {
        notes.push(format!("one of {}", possible.join(", ")));
    }
    if !notes.is_empty() {
        let _ = write!(line, " ({})", notes.join("; "));
    }
    line
}
