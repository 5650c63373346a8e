//! A cluster's certificates (issue 23, `docs/security.md`): a certificate authority and, signed by it, one
//! certificate per principal, written into one directory. `allot certs init` and the test harness issue them
//! here; every process loads them with `allot_common::tls`.
//!
//! Every principal gets `<name>.pem` (its certificate) and `<name>-key.pem` (its private key, mode 0600),
//! signed by `ca.pem` (kept with `ca-key.pem`, mode 0600, for issuing more later with [`issue`]). A principal is
//! named by its certificate's subject: the common name (CN) is the principal, the organization (O) its kind,
//! as Kubernetes names users and groups in client certificates:
//!
//! | file | CN (principal) | O (kind) | used for |
//! |---|---|---|---|
//! | `registry`, `allocator`, `offer-broker` | the service | `service` | serving, calling other services and etcd |
//! | `agent-<name>` | `agent-<name>` | `agent` | one per agent: it may register and report only as itself |
//! | `operator` | `operator` | `operator` | the `allot` CLI's operator commands |
//! | `framework-<name>` | `framework-<name>` | `framework` | a framework's principal |
//! | `etcd` | `etcd` | `service` | etcd's own serving certificate |
//!
//! Every certificate is good for both TLS server and client authentication and names the hosts it is issued
//! for (default `localhost` and `127.0.0.1`) as subject alternative names, so that any of them may serve.
//! Keys are ECDSA P-256 (rcgen's default, with ring).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// The kinds of principal, each a certificate's O.
pub const KINDS: [&str; 4] = ["service", "agent", "operator", "framework"];

/// Why certificates could not be issued.
#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    /// A principal name, kind or host is not acceptable (the message says which and why).
    #[error("{0}")]
    Invalid(String),
    /// The directory already holds an authority and replacing it was not asked for.
    #[error(
        "{} already holds a certificate authority (ca.pem); pass --force to replace it and every certificate \
         it signed",
        .0.display()
    )]
    AuthorityExists(PathBuf),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A key could not be made, a certificate not signed, or the authority's files not parsed.
    #[error("{what}: {source}")]
    Sign {
        /// What was being done.
        what: String,
        /// rcgen's reason.
        source: rcgen::Error,
    },
}

/// One certificate to issue: principal (CN) and kind (O, one of [`KINDS`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal's name: the certificate's CN and its files' stem.
    pub name: String,
    /// `service`, `agent`, `operator` or `framework`: the certificate's O.
    pub kind: String,
}

impl Principal {
    /// Principal `name` of kind `kind`.
    pub fn new(name: impl Into<String>, kind: &str) -> Self {
        Self {
            name: name.into(),
            kind: kind.to_string(),
        }
    }
}

/// The kind a principal's name suggests: `agent` for `agent-*`, `framework` for `framework-*`, `operator` for
/// `operator`, otherwise `service`.
pub fn kind_of(name: &str) -> &'static str {
    if name.starts_with("agent-") {
        "agent"
    } else if name.starts_with("framework-") {
        "framework"
    } else if name == "operator" {
        "operator"
    } else {
        "service"
    }
}

/// The principals of a cluster: the three services and etcd, the operator, `agent-<a>` for each of `agents`
/// and `framework-<f>` for each of `frameworks`, in that order.
///
/// # Errors
/// [`CertsError::Invalid`] for a name that is not 1-64 characters of `[A-Za-z0-9._-]`, or one asked for twice.
pub fn cluster(agents: &[String], frameworks: &[String]) -> Result<Vec<Principal>, CertsError> {
    let mut out: Vec<Principal> = ["registry", "allocator", "offer-broker", "etcd"]
        .iter()
        .map(|n| Principal::new(*n, "service"))
        .collect();
    out.push(Principal::new("operator", "operator"));
    out.extend(
        agents
            .iter()
            .map(|a| Principal::new(format!("agent-{a}"), "agent")),
    );
    out.extend(
        frameworks
            .iter()
            .map(|f| Principal::new(format!("framework-{f}"), "framework")),
    );
    let mut seen = std::collections::HashSet::new();
    for p in &out {
        validate(p)?;
        if !seen.insert(p.name.clone()) {
            return Err(CertsError::Invalid(format!(
                "principal '{}' is asked for twice",
                p.name
            )));
        }
    }
    Ok(out)
}

fn validate(p: &Principal) -> Result<(), CertsError> {
    let ok = !p.name.is_empty()
        && p.name.len() <= 64
        && p.name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(CertsError::Invalid(format!(
            "principal '{}' must be 1-64 characters of [A-Za-z0-9._-]",
            p.name
        )));
    }
    if !KINDS.contains(&p.kind.as_str()) {
        return Err(CertsError::Invalid(format!(
            "principal '{}': kind '{}' is not one of {}",
            p.name,
            p.kind,
            KINDS.join(", ")
        )));
    }
    Ok(())
}

/// When a certificate is valid: from `not_before` to `not_after`.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    /// Start.
    pub not_before: time::OffsetDateTime,
    /// End.
    pub not_after: time::OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks differ) for `days` days.
    pub fn days(days: u32) -> Self {
        let now = time::OffsetDateTime::now_utc();
        Self {
            not_before: now - time::Duration::hours(1),
            not_after: now + time::Duration::days(i64::from(days)),
        }
    }
}

/// Makes a certificate authority in `dir` (`ca.pem`, `ca-key.pem`; the directory is made if missing).
///
/// # Errors
/// [`CertsError::AuthorityExists`] when `dir` has a `ca.pem` and not `force`; [`CertsError::Io`],
/// [`CertsError::Sign`].
pub fn init_authority(dir: &Path, validity: Validity, force: bool) -> Result<(), CertsError> {
    if dir.join("ca.pem").exists() && !force {
        return Err(CertsError::AuthorityExists(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(|source| CertsError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let ca = authority_params(validity);
    let key = KeyPair::generate().map_err(sign("making the authority's key"))?;
    let cert = ca
        .self_signed(&key)
        .map_err(sign("signing the authority's certificate"))?;
    write(dir, "ca.pem", &cert.pem(), false)?;
    write(dir, "ca-key.pem", &key.serialize_pem(), true)
}

fn authority_params(validity: Validity) -> CertificateParams {
    let mut ca = CertificateParams::default();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "Allot cluster CA");
    ca.distinguished_name
        .push(DnType::OrganizationName, "allot");
    ca.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
    ];
    ca.not_before = validity.not_before;
    ca.not_after = validity.not_after;
    ca
}

/// Issues each of `principals` a certificate and key in `dir`, signed by the authority there (`ca.pem`,
/// `ca-key.pem`), naming `hosts` (DNS names or IP addresses; none: `localhost` and `127.0.0.1`) as subject
/// alternative names. An existing certificate of the same principal is replaced (rotation: processes pick
/// the new files up by themselves).
///
/// # Errors
/// [`CertsError::Invalid`] for a bad principal or host; [`CertsError::Io`] when the authority's files cannot
/// be read or a file written; [`CertsError::Sign`].
pub fn issue(
    dir: &Path,
    principals: &[Principal],
    hosts: &[String],
    validity: Validity,
) -> Result<(), CertsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CertsError::Io { path, source })
    };
    let ca_key = KeyPair::from_pem(&read("ca-key.pem")?).map_err(sign("reading ca-key.pem"))?;
    let issuer =
        Issuer::from_ca_cert_pem(&read("ca.pem")?, ca_key).map_err(sign("reading ca.pem"))?;
    let default_hosts = ["localhost".to_string(), "127.0.0.1".to_string()];
    let hosts = if hosts.is_empty() {
        &default_hosts[..]
    } else {
        hosts
    };
    let sans = hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => h.as_str().try_into().map(SanType::DnsName).map_err(|_| {
                CertsError::Invalid(format!(
                    "host '{h}' is neither an IP address nor a DNS name"
                ))
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    for p in principals {
        validate(p)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, p.name.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, p.kind.as_str());
        params.subject_alt_names = sans.clone();
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = validity.not_before;
        params.not_after = validity.not_after;
        let key = KeyPair::generate().map_err(sign(&format!("making {}'s key", p.name)))?;
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(sign(&format!("signing {}'s certificate", p.name)))?;
        // The key first: a process that re-reads a changed certificate finds its key already there.
        write(
            dir,
            &format!("{}-key.pem", p.name),
            &key.serialize_pem(),
            true,
        )?;
        write(dir, &format!("{}.pem", p.name), &cert.pem(), false)?;
    }
    Ok(())
}

fn sign(what: &str) -> impl FnOnce(rcgen::Error) -> CertsError + '_ {
    move |source| CertsError::Sign {
        what: what.to_string(),
        source,
    }
}

/// Writes `contents` to `dir/name`; a `secret` file is made readable by its owner only.
fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> Result<(), CertsError> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    let failed = |source| CertsError::Io {
        path: path.clone(),
        source,
    };
    // Written whole to a fresh temporary file (mode 0600) beside it, then renamed over it: a service that
    // re-reads its files never sees half of one.
    let mut f = tempfile::NamedTempFile::new_in(dir).map_err(failed)?;
    if !secret {
        f.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .map_err(failed)?;
    }
    f.write_all(contents.as_bytes())
        .and_then(|()| f.as_file().sync_all())
        .map_err(failed)?;
    f.persist(&path).map_err(|e| failed(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_gets_services_an_operator_agents_and_frameworks() {
        let names: Vec<String> = cluster(&["node1".into()], &["default".into()])
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(
            names,
            [
                "registry",
                "allocator",
                "offer-broker",
                "etcd",
                "operator",
                "agent-node1",
                "framework-default"
            ]
        );
    }

    #[test]
    fn bad_or_repeated_names_are_refused() {
        let e = cluster(&["a b".into()], &[]).unwrap_err().to_string();
        assert!(e.contains("a b"), "{e}");
        let e = cluster(&["n1".into(), "n1".into()], &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("twice"), "{e}");
        let e = validate(&Principal::new("x", "root"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("kind 'root'"), "{e}");
    }

    #[test]
    fn keys_are_for_their_owner_only_an_authority_is_not_replaced_and_more_can_be_issued() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls");
        init_authority(&path, Validity::days(2), false).unwrap();
        let principals = cluster(&["node2".into()], &["default".into()]).unwrap();
        issue(&path, &principals, &[], Validity::days(2)).unwrap();
        for f in [
            "ca.pem",
            "offer-broker.pem",
            "agent-node2.pem",
            "framework-default.pem",
        ] {
            let pem = std::fs::read_to_string(path.join(f)).unwrap();
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{f}");
        }
        let mode = |f: &str| {
            std::fs::metadata(path.join(f))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("operator-key.pem"), 0o600);
        assert_eq!(mode("ca-key.pem"), 0o600);
        assert_eq!(mode("operator.pem"), 0o644);
        let again = init_authority(&path, Validity::days(2), false)
            .unwrap_err()
            .to_string();
        assert!(again.contains("--force"), "{again}");
        // Issued later by the same authority: the files load as a set with the authority.
        issue(
            &path,
            &[Principal::new("framework-late", "framework")],
            &["node.example".into()],
            Validity::days(1),
        )
        .unwrap();
        allot_common::tls::load(&allot_common::tls::TlsFiles::in_dir(
            &path,
            "framework-late",
        ))
        .unwrap();
        init_authority(&path, Validity::days(2), true).unwrap();
    }
}
