//! The API lock: every published part of the `quark.*` .proto files as one line of text, so that
//! a change that breaks a client is caught before it ships.
//!
//! A line names a file and its package, a service, a method with its request and response types
//! (and which of them stream), a message, a field with its number, label and type, an enum, or an
//! enum value with its number. Lines are only ever added: a removed line means a removed,
//! renamed, renumbered or retyped part, which breaks the clients built on it. The lock file
//! (`quark-worker/proto/api.lock`) is the published API; its test compares it with what the
//! .proto files compile to now, and `QUARK_BLESS_API=1` records additions (never a break).

use std::collections::BTreeSet;

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

/// The lines of the `quark.*` packages in an encoded descriptor set, sorted.
pub fn lines(encoded: &[u8]) -> Result<BTreeSet<String>, prost::DecodeError> {
    let set = FileDescriptorSet::decode(encoded)?;
    let mut out = BTreeSet::new();
    for file in &set.file {
        let package = file.package();
        if !package.starts_with("quark.") {
            continue;
        }
        out.insert(format!("file {} package {package}", file.name()));
        for service in &file.service {
            let name = format!("{package}.{}", service.name());
            out.insert(format!("service {name}"));
            for m in &service.method {
                out.insert(format!(
                    "rpc {name}.{}({}{}) returns ({}{})",
                    m.name(),
                    if m.client_streaming() { "stream " } else { "" },
                    m.input_type().trim_start_matches('.'),
                    if m.server_streaming() { "stream " } else { "" },
                    m.output_type().trim_start_matches('.'),
                ));
            }
        }
        for message in &file.message_type {
            message_lines(package, message, &mut out);
        }
        for e in &file.enum_type {
            enum_lines(package, e, &mut out);
        }
    }
    Ok(out)
}

fn message_lines(scope: &str, m: &DescriptorProto, out: &mut BTreeSet<String>) {
    let name = format!("{scope}.{}", m.name());
    out.insert(format!("message {name}"));
    for f in &m.field {
        let label = match f.label() {
            Label::Repeated => "repeated ",
            Label::Required => "required ",
            Label::Optional if f.proto3_optional() => "optional ",
            Label::Optional => "",
        };
        let ty = match f.r#type() {
            Type::Message | Type::Enum => f.type_name().trim_start_matches('.').to_string(),
            other => other
                .as_str_name()
                .trim_start_matches("TYPE_")
                .to_lowercase(),
        };
        let oneof = match f.oneof_index {
            Some(i) if !f.proto3_optional() => {
                format!(" in oneof {}", m.oneof_decl[i as usize].name())
            }
            _ => String::new(),
        };
        out.insert(format!(
            "field {name}.{} = {} {label}{ty}{oneof}",
            f.name(),
            f.number()
        ));
    }
    for nested in &m.nested_type {
        message_lines(&name, nested, out);
    }
    for e in &m.enum_type {
        enum_lines(&name, e, out);
    }
}

fn enum_lines(scope: &str, e: &prost_types::EnumDescriptorProto, out: &mut BTreeSet<String>) {
    let name = format!("{scope}.{}", e.name());
    out.insert(format!("enum {name}"));
    for v in &e.value {
        out.insert(format!("value {name}.{} = {}", v.name(), v.number()));
    }
}

/// How the API compiled now differs from the lock.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Diff {
    /// Lines of the lock that the API no longer has: each breaks its clients.
    pub removed: Vec<String>,
    /// Lines the lock does not record yet.
    pub added: Vec<String>,
}

/// Compares the lock's text with the lines of the API now.
pub fn diff(lock: &str, now: &BTreeSet<String>) -> Diff {
    let locked: BTreeSet<String> = lock
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    Diff {
        removed: locked.difference(now).cloned().collect(),
        added: now.difference(&locked).cloned().collect(),
    }
}

/// The text of a lock holding `lines`.
pub fn render(lines: &BTreeSet<String>) -> String {
    let mut text = String::from(
        "# The published Quark API: one line per file, service, method, message, field, enum and\n\
         # enum value of the quark.* packages. Lines are only ever added (see\n\
         # quark_worker::service::api_lock); `QUARK_BLESS_API=1 cargo test -p quark-worker\n\
         # --test worker api_lock` records additions.\n",
    );
    for line in lines {
        text.push_str(line);
        text.push('\n');
    }
    text
}
