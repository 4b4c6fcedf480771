//! Namespaces at the API: a token limited to a namespace sees and touches only the names in it.
//!
//! The names a call carries (instance ids, queues, schedule names) are taken in the caller's
//! namespace: a plain name is qualified (`order-7` is `acme::order-7` for a token of `acme`), a
//! name of the caller's own namespace is taken as it is, and a name of another namespace is
//! refused with PERMISSION_DENIED before anything is read. Listings show only the caller's
//! namespace. What has no namespace (the outbox, whose messages are the whole cluster's) is for
//! tokens of every namespace only. A token without a namespace sees everything, as before.

use quark_history::{namespace_of, qualify};
use tonic::Status;

use super::auth::Caller;

impl Caller {
    /// `name` (the request's field `field`) as this caller means it: qualified with its
    /// namespace, or refused if it names another.
    pub(crate) fn name(&self, field: &str, name: &str) -> Result<String, Status> {
        let qualified = qualify(self.namespace.as_deref(), name);
        // A name that starts with the separator names no namespace: not this caller's either.
        if let Some(prefix) = self.prefix()
            && !qualified.starts_with(&prefix)
            && namespace_of(&qualified).is_none()
        {
            return Err(Status::permission_denied(format!(
                "{field}: `{name}` is in no namespace; this token is limited to namespace `{}`",
                self.namespace.as_deref().unwrap_or_default()
            )));
        }
        match (&self.namespace, namespace_of(&qualified)) {
            (Some(mine), Some(theirs)) if mine != theirs => {
                Err(Status::permission_denied(format!(
                    "{field}: `{name}` is in namespace `{theirs}`; this token is limited to \
                     namespace `{mine}`"
                )))
            }
            _ => Ok(qualified),
        }
    }

    /// Whether this caller may see `name` (an instance id, a queue, a schedule's name).
    pub(crate) fn sees(&self, name: &str) -> bool {
        match &self.namespace {
            None => true,
            Some(mine) => namespace_of(name) == Some(mine.as_str()),
        }
    }

    /// The prefix every name this caller may see starts with, if it is limited to a namespace.
    pub(crate) fn prefix(&self) -> Option<String> {
        self.namespace
            .as_ref()
            .map(|ns| format!("{ns}{}", quark_history::NAMESPACE_SEPARATOR))
    }

    /// Refuses a caller limited to a namespace: `what` belongs to no namespace.
    pub(crate) fn cluster_wide(&self, what: &str) -> Result<(), Status> {
        match &self.namespace {
            None => Ok(()),
            Some(ns) => Err(Status::permission_denied(format!(
                "{what} belongs to no namespace: a token limited to namespace `{ns}` cannot \
                 reach it"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(ns: Option<&str>) -> Caller {
        Caller {
            token_id: Some("t".into()),
            scope: quark_history::Scope::Admin,
            namespace: ns.map(str::to_string),
        }
    }

    #[test]
    fn a_namespaced_caller_names_only_its_own() {
        let acme = caller(Some("acme"));
        assert_eq!(acme.name("id", "order-7").unwrap(), "acme::order-7");
        assert_eq!(acme.name("id", "acme::order-7").unwrap(), "acme::order-7");
        let refused = acme.name("id", "globex::order-7").unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(acme.sees("acme::x") && !acme.sees("globex::x") && !acme.sees("x"));
        assert!(acme.name("id", "::x").is_err() && !acme.sees("::x"));
        let everyone = caller(None);
        assert_eq!(everyone.name("id", "globex::x").unwrap(), "globex::x");
        assert!(everyone.sees("x") && everyone.sees("globex::x"));
        assert!(acme.cluster_wide("the outbox").is_err() && everyone.cluster_wide("x").is_ok());
    }
}
