//! Who may call what (issue 23, `docs/security.md`): the caller's identity from its TLS certificate, and the
//! refusal every service gives in the same shape.
//!
//! A caller is the principal its certificate names (CN, with its kind in O: `service`, `agent`, `operator`,
//! `framework`; see `crate::certs`), or [`Caller::Anonymous`] on a server run `--insecure`, where there are no
//! identities and every check passes (the operator chose that, and was warned at start). A refusal is
//! `PERMISSION_DENIED` naming the principal, the action (Mesos' ACL vocabulary where it has a word:
//! `register_frameworks`, `teardown_frameworks`, `update_weights`, ...) and the object; it is counted in
//! `allot_authz_denied_total{action}` and logged at warning level with the same three fields.

use allot_common::tls::Principal;

/// `allot_authz_denied_total{action}`: calls refused for want of permission.
static DENIED: std::sync::LazyLock<allot_telemetry::metrics::prometheus::IntCounterVec> =
    std::sync::LazyLock::new(|| {
        allot_telemetry::metrics::counter_vec(
            "allot_authz_denied_total",
            "Calls refused PERMISSION_DENIED, by action",
            &["action"],
        )
    });

/// Who made a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A plaintext connection (a server run `--insecure`): no identity, nothing is checked.
    Anonymous,
    /// The principal of the caller's certificate.
    Principal(Principal),
}

/// Who made `request` (see [`crate::grpc::peer_principal`]).
pub fn caller<T>(request: &tonic::Request<T>) -> Caller {
    match crate::grpc::peer_principal(request) {
        Some(p) => Caller::Principal(p),
        None => Caller::Anonymous,
    }
}

impl Caller {
    /// The principal, `None` when anonymous.
    pub fn principal(&self) -> Option<&Principal> {
        match self {
            Caller::Anonymous => None,
            Caller::Principal(p) => Some(p),
        }
    }

    /// The principal's name (`anonymous` when there is none), for logs.
    pub fn name(&self) -> &str {
        self.principal().map_or("anonymous", |p| p.name.as_str())
    }

    /// Whether the caller is anonymous or of one of `kinds`.
    pub fn is(&self, kinds: &[&str]) -> bool {
        self.principal()
            .is_none_or(|p| kinds.contains(&p.kind.as_str()))
    }

    /// Allows the call if the caller is anonymous or of one of `kinds`.
    ///
    /// # Errors
    /// [`denied`] naming the caller, `action` and `object`.
    pub fn require(&self, kinds: &[&str], action: &str, object: &str) -> Result<(), tonic::Status> {
        if self.is(kinds) {
            Ok(())
        } else {
            Err(self.deny(action, object))
        }
    }

    /// Allows the caller to do `action` to `object`, which principal `owner` registered (the framework's
    /// subscriber, the agent's registrant): an anonymous caller, an object with no owner on record (unknown,
    /// so that the call itself answers it; or recorded by an insecure service), or its owner.
    ///
    /// # Errors
    /// [`denied`] naming the caller, `action` and `object` with its owner.
    pub fn require_owner(
        &self,
        owner: Option<&str>,
        action: &str,
        object: &str,
    ) -> Result<(), tonic::Status> {
        match (self.principal(), owner) {
            (Some(p), Some(owner)) if !owner.is_empty() && owner != p.name => Err(self.deny(
                action,
                &format!("{object} (registered by principal '{owner}')"),
            )),
            _ => Ok(()),
        }
    }

    /// The refusal of `action` on `object` by this caller (see [`denied`]).
    pub fn deny(&self, action: &str, object: &str) -> tonic::Status {
        let kind = self.principal().map_or("", |p| p.kind.as_str());
        denied(self.name(), kind, action, object)
    }
}

/// Applies the ACL file, if there is one, to `caller` doing `action` to `objects` (described by `object` in a
/// refusal); anonymous callers and services without a file pass.
///
/// # Errors
/// [`denied`] when the file's rules deny it.
pub fn check_acl(
    acls: Option<&crate::acl::Acls>,
    caller: &Caller,
    action: &str,
    objects: &[&str],
    object: &str,
) -> Result<(), tonic::Status> {
    let (Some(acls), Some(p)) = (acls, caller.principal()) else {
        return Ok(());
    };
    match acls.current().decide(action, &p.name, &p.kind, objects) {
        crate::acl::Decision::Allow => Ok(()),
        crate::acl::Decision::Deny => Err(caller.deny(action, object)),
    }
}

/// A refusal: `PERMISSION_DENIED` "principal P (kind K) may not ACTION OBJECT", counted in
/// `allot_authz_denied_total{action}` and logged.
pub fn denied(principal: &str, kind: &str, action: &str, object: &str) -> tonic::Status {
    DENIED.with_label_values(&[action]).inc();
    tracing::warn!(principal, kind, action, object, "permission denied");
    tonic::Status::permission_denied(format!(
        "principal '{principal}' (kind '{kind}') may not {action} {object}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_(name: &str, kind: &str) -> Caller {
        Caller::Principal(Principal {
            name: name.into(),
            kind: kind.into(),
        })
    }

    #[test]
    fn anonymous_passes_every_check_and_a_principal_only_its_kinds() {
        assert!(
            Caller::Anonymous
                .require(&["operator"], "update_weights", "role r")
                .is_ok()
        );
        assert!(
            as_("operator", "operator")
                .require(&["operator"], "update_weights", "role r")
                .is_ok()
        );
        let refused = as_("framework-a", "framework")
            .require(&["operator"], "update_weights", "role r")
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            refused.message(),
            "principal 'framework-a' (kind 'framework') may not update_weights role r"
        );
        assert!(
            DENIED.with_label_values(&["update_weights"]).get() >= 1,
            "the refusal is counted"
        );
    }

    #[test]
    fn only_the_owner_passes_unless_there_is_none_on_record() {
        let a = as_("framework-a", "framework");
        assert!(
            a.require_owner(Some("framework-a"), "kill_tasks", "framework f")
                .is_ok()
        );
        assert!(
            a.require_owner(None, "kill_tasks", "framework f").is_ok(),
            "unknown"
        );
        assert!(
            a.require_owner(Some(""), "kill_tasks", "framework f")
                .is_ok(),
            "recorded insecure"
        );
        assert!(
            Caller::Anonymous
                .require_owner(Some("framework-b"), "kill_tasks", "f")
                .is_ok()
        );
        let refused = a
            .require_owner(Some("framework-b"), "kill_tasks", "framework f")
            .unwrap_err();
        assert_eq!(
            refused.message(),
            "principal 'framework-a' (kind 'framework') may not kill_tasks framework f (registered by \
             principal 'framework-b')"
        );
    }
}
