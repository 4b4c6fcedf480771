//! Namespaces: tenants of one database. A namespace's instances, queues and schedules are named
//! `<namespace>::<name>` (`acme::order-7`, `acme::orders`); names without `::` belong to no
//! namespace. Everything that stores them is unchanged: a namespace is a part of the name, which
//! the API checks against its callers' tokens and the runtime keeps: an instance's children,
//! the instances it signals by a plain name and the queues its activities name go to its own
//! namespace.

/// What separates a namespace from the rest of a name.
pub const NAMESPACE_SEPARATOR: &str = "::";

/// The longest namespace, in bytes.
pub const MAX_NAMESPACE: usize = 63;

/// The namespace `name` belongs to, if any: what comes before its first `::`.
pub fn namespace_of(name: &str) -> Option<&str> {
    name.split_once(NAMESPACE_SEPARATOR)
        .map(|(ns, _)| ns)
        .filter(|ns| !ns.is_empty())
}

/// `name` in `namespace`: unchanged if it names a namespace already (or `namespace` is `None`),
/// otherwise `<namespace>::<name>`.
pub fn qualify(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) if !name.contains(NAMESPACE_SEPARATOR) => {
            format!("{ns}{NAMESPACE_SEPARATOR}{name}")
        }
        _ => name.to_string(),
    }
}

/// Whether `namespace` is a valid namespace: 1 to 63 lowercase letters, digits and dashes,
/// starting with a letter or a digit.
pub fn check_namespace(namespace: &str) -> Result<(), String> {
    let valid = !namespace.is_empty()
        && namespace.len() <= MAX_NAMESPACE
        && namespace
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !namespace.starts_with('-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{namespace}` is not a namespace: 1 to {MAX_NAMESPACE} lowercase letters, digits \
             and dashes, not starting with a dash"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_qualified_once_and_read_back() {
        assert_eq!(qualify(Some("acme"), "order-7"), "acme::order-7");
        assert_eq!(qualify(Some("acme"), "acme::order-7"), "acme::order-7");
        assert_eq!(
            qualify(Some("acme"), "globex::x"),
            "globex::x",
            "left to the caller to refuse"
        );
        assert_eq!(qualify(None, "order-7"), "order-7");
        assert_eq!(namespace_of("acme::order-7:3"), Some("acme"));
        assert_eq!(namespace_of("order-7:3"), None);
        assert_eq!(namespace_of("::x"), None);
        assert!(check_namespace("acme-2").is_ok());
        for bad in ["", "Acme", "a b", "-x", "a::b", &"x".repeat(64)] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }
}
