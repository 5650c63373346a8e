//! The ACL file (issue 23, `docs/security.md`): which principals may register frameworks in which roles, run
//! tasks as which Unix users, tear down whose frameworks, set which roles' weights and quotas, and load,
//! activate or shadow policies. One TOML file that operators edit (`--acls FILE`, `ALLOT_ACLS`), read by the
//! offer-broker, the registry and the allocator, and read again when it changes.
//!
//! The semantics are Mesos' (`docs/authorization.md` there): each action has an ordered list of rules; the
//! first rule whose `principals` match the caller decides, allowing the call exactly when its objects match
//! too; when no rule matches, `permissive` decides (default `false`: denied).
//!
//! ```toml
//! permissive = false
//!
//! [[register_frameworks]]
//! principals = ["framework-etl", "framework-default"]   # names, "kind:framework", or "*"
//! roles = ["etl", "analytics", "eng/*"]                 # "eng/*": every role below eng; or ["*"]
//!
//! [[run_tasks]]
//! principals = ["kind:framework"]
//! users = ["nobody", "etl"]                             # "root" only where listed
//!
//! [[teardown_frameworks]]
//! principals = ["kind:operator"]
//! framework_principals = ["*"]
//!
//! [[update_weights]]
//! principals = ["kind:operator"]
//! roles = ["*"]
//! ```
//!
//! The other actions (`update_quotas`, `reserve_resources` and `unreserve_resources` with `roles`,
//! `load_policies`, `activate_policies` and
//! `shadow_policies` with `policies`) take rules of the same shape. Without a file, the built-in rules by
//! principal kind apply alone (see [`crate::authz`]); the ACL file narrows them, never widens them.

pub use allot_common::reload::RELOAD_CHECK;
use std::path::{Path, PathBuf};

/// The actions an ACL file may have rules for, each with the name of its objects' list.
pub const ACTIONS: [(&str, &str); 10] = [
    ("register_frameworks", "roles"),
    ("run_tasks", "users"),
    ("teardown_frameworks", "framework_principals"),
    ("update_weights", "roles"),
    ("update_quotas", "roles"),
    ("load_policies", "policies"),
    ("activate_policies", "policies"),
    ("shadow_policies", "policies"),
    ("reserve_resources", "roles"),
    ("unreserve_resources", "roles"),
];

/// Why an ACL file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AclError {
    /// The file cannot be read.
    #[error("ACL file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a rule is malformed (the message names the rule and the key).
    #[error("ACL file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// One rule: who (`principals`) may act on what (`objects`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Principal names, `kind:<kind>` or `*`.
    pub principals: Vec<String>,
    /// Objects (roles, users, framework principals, policy references), or `*`.
    pub objects: Vec<String>,
}

/// A parsed ACL file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AclSet {
    /// Whether a call that no rule matches is allowed.
    pub permissive: bool,
    /// Each action's rules, in file order.
    pub rules: std::collections::BTreeMap<String, Vec<Rule>>,
}

/// What an ACL decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Allowed.
    Allow,
    /// Denied.
    Deny,
}

/// Whether `value` is among `patterns`: `*` matches anything, `base/*` every object strictly below `base` in a
/// role tree (Mesos' hierarchical role ACLs: `eng/*` matches `eng/web` and `eng/web/canary`, not `eng`), any
/// other pattern only itself.
fn matches(patterns: &[String], value: &str) -> bool {
    patterns.iter().any(|p| {
        p == "*"
            || p == value
            || p.strip_suffix("/*").is_some_and(|base| {
                value
                    .strip_prefix(base)
                    .is_some_and(|rest| rest.len() > 1 && rest.starts_with('/'))
            })
    })
}

fn principal_matches(patterns: &[String], name: &str, kind: &str) -> bool {
    patterns
        .iter()
        .any(|p| p == "*" || p == name || p.strip_prefix("kind:") == Some(kind))
}

impl AclSet {
    /// Parses an ACL file's text.
    ///
    /// # Errors
    /// A message naming what is wrong: not TOML, an unknown action or key, a rule without `principals` or
    /// without its objects list, a value that is not a list of strings.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: toml::Table = text.parse().map_err(|e| format!("not valid TOML: {e}"))?;
        let mut set = AclSet::default();
        for (key, value) in table {
            if key == "permissive" {
                set.permissive = value
                    .as_bool()
                    .ok_or("`permissive` must be true or false")?;
                continue;
            }
            let Some((_, objects_key)) = ACTIONS.iter().find(|(a, _)| *a == key) else {
                return Err(format!(
                    "unknown action '{key}' (known: {})",
                    ACTIONS.map(|(a, _)| a).join(", ")
                ));
            };
            let rules = value
                .as_array()
                .ok_or_else(|| format!("'{key}' must be a list of rules ([[{key}]])"))?;
            for (i, rule) in rules.iter().enumerate() {
                let at = format!("{key} rule {}", i + 1);
                let rule = rule
                    .as_table()
                    .ok_or_else(|| format!("{at}: not a table"))?;
                let list = |name: &str| -> Result<Vec<String>, String> {
                    let v = rule
                        .get(name)
                        .ok_or_else(|| format!("{at}: `{name}` is missing"))?;
                    v.as_array()
                        .ok_or_else(|| format!("{at}: `{name}` must be a list of strings"))?
                        .iter()
                        .map(|s| {
                            s.as_str()
                                .map(str::to_string)
                                .ok_or_else(|| format!("{at}: `{name}` must be a list of strings"))
                        })
                        .collect()
                };
                if let Some(extra) = rule
                    .keys()
                    .find(|k| *k != "principals" && *k != objects_key)
                {
                    return Err(format!(
                        "{at}: unknown key '{extra}' (a rule has `principals` and `{objects_key}`)"
                    ));
                }
                set.rules.entry(key.clone()).or_default().push(Rule {
                    principals: list("principals")?,
                    objects: list(objects_key)?,
                });
            }
        }
        Ok(set)
    }

    /// Whether principal `name` of kind `kind` may do `action` to every one of `objects`: the first rule of
    /// the action whose principals match decides (all objects must be among its objects); with none,
    /// `permissive`.
    pub fn decide(&self, action: &str, name: &str, kind: &str, objects: &[&str]) -> Decision {
        let rule = self.rules.get(action).and_then(|rules| {
            rules
                .iter()
                .find(|r| principal_matches(&r.principals, name, kind))
        });
        let allowed = match rule {
            Some(r) => objects.iter().all(|o| matches(&r.objects, o)),
            None => self.permissive,
        };
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }
}

/// An ACL file, read again when it changes (an [`allot_common::reload::Watched`] value: checked at most once
/// every [`RELOAD_CHECK`], when a decision is asked for; a version that does not parse is logged and the
/// previous one kept). Cheap to share.
#[derive(Debug)]
pub struct Acls {
    path: PathBuf,
    set: allot_common::reload::Watched<std::sync::Arc<AclSet>>,
}

fn read(path: &Path) -> Result<std::sync::Arc<AclSet>, AclError> {
    let text = std::fs::read_to_string(path).map_err(|source| AclError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    AclSet::parse(&text)
        .map(std::sync::Arc::new)
        .map_err(|message| AclError::Invalid {
            path: path.to_path_buf(),
            message,
        })
}

impl Acls {
    /// Reads the ACL file at `path`.
    ///
    /// # Errors
    /// [`AclError`]: a service must not start with ACLs it cannot read.
    pub fn open(path: &Path) -> Result<Self, AclError> {
        let set =
            allot_common::reload::Watched::open("ACL file", vec![path.to_path_buf()], || {
                read(path)
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            set,
        })
    }

    /// The current rules, read again first if the file changed.
    pub fn current(&self) -> std::sync::Arc<AclSet> {
        self.set.current(|| read(&self.path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const FILE: &str = r#"
[[register_frameworks]]
principals = ["framework-etl"]
roles = ["etl"]

[[register_frameworks]]
principals = ["kind:framework"]
roles = ["*"]

[[run_tasks]]
principals = ["*"]
users = ["nobody"]
"#;

    #[test]
    fn a_subtree_pattern_matches_the_roles_below_its_base_only() {
        let p = ["eng/*".to_string()];
        assert!(matches(&p, "eng/web"));
        assert!(matches(&p, "eng/web/canary"));
        assert!(!matches(&p, "eng"));
        assert!(!matches(&p, "engineering/web"));
        assert!(!matches(&p, "ops/eng/web"));
    }

    #[test]
    fn the_first_rule_whose_principals_match_decides_and_none_denies() {
        let acls = AclSet::parse(FILE).unwrap();
        let d = |action, name, kind, objects: &[&str]| acls.decide(action, name, kind, objects);
        // framework-etl's first matching rule allows only role etl (the broader rule below never applies).
        assert_eq!(
            d(
                "register_frameworks",
                "framework-etl",
                "framework",
                &["etl"]
            ),
            Decision::Allow
        );
        assert_eq!(
            d(
                "register_frameworks",
                "framework-etl",
                "framework",
                &["web"]
            ),
            Decision::Deny
        );
        assert_eq!(
            d(
                "register_frameworks",
                "framework-etl",
                "framework",
                &["etl", "web"]
            ),
            Decision::Deny,
            "every object must be allowed"
        );
        assert_eq!(
            d(
                "register_frameworks",
                "framework-web",
                "framework",
                &["web"]
            ),
            Decision::Allow
        );
        assert_eq!(
            d("register_frameworks", "agent-n1", "agent", &["web"]),
            Decision::Deny
        );
        assert_eq!(
            d("run_tasks", "framework-web", "framework", &["nobody"]),
            Decision::Allow
        );
        assert_eq!(
            d("run_tasks", "framework-web", "framework", &["root"]),
            Decision::Deny
        );
        assert_eq!(
            d("update_weights", "operator", "operator", &["etl"]),
            Decision::Deny,
            "no rule: denied"
        );
        let open = AclSet::parse("permissive = true").unwrap();
        assert_eq!(
            open.decide("update_weights", "operator", "operator", &["etl"]),
            Decision::Allow
        );
    }

    #[test]
    fn a_malformed_file_is_refused_naming_what_is_wrong() {
        for (text, says) in [
            (
                "[[register_frameworks]]\nroles = ['a']\n",
                "`principals` is missing",
            ),
            (
                "[[run_tasks]]\nprincipals = ['*']\nroles = ['a']\n",
                "unknown key 'roles'",
            ),
            (
                "[[launch]]\nprincipals = ['*']\n",
                "unknown action 'launch'",
            ),
            (
                "[[run_tasks]]\nprincipals = '*'\nusers = ['a']\n",
                "list of strings",
            ),
            ("permissive = 'yes'", "true or false"),
            ("[[run_tasks", "not valid TOML"),
        ] {
            let e = AclSet::parse(text).unwrap_err();
            assert!(e.contains(says), "{text:?}: {e}");
        }
    }

    #[test]
    fn a_changed_file_is_read_again_and_a_broken_one_keeps_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("acls.toml");
        std::fs::write(&path, "permissive = false").unwrap();
        let acls = Acls::open(&path).unwrap();
        assert!(!acls.current().permissive);
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        std::fs::write(&path, "permissive = true").unwrap();
        assert!(acls.current().permissive, "the change is read");
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        std::fs::write(&path, "permissive = ").unwrap();
        assert!(
            acls.current().permissive,
            "a broken file keeps the previous rules"
        );
    }
}
