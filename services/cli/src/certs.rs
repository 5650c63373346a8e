//! `allot certs init`: a certificate authority and the certificates a cluster needs, into one directory.
//!
//! Every principal gets `<name>.pem` (its certificate) and `<name>-key.pem` (its private key, mode 0600),
//! signed by `ca.pem` (kept with `ca-key.pem`, mode 0600, for issuing more later). A principal is named by its
//! certificate's subject: the common name (CN) is the principal, the organization (O) its kind, as Kubernetes
//! names users and groups in client certificates:
//!
//! | file | CN (principal) | O (kind) | used for |
//! |---|---|---|---|
//! | `registry`, `allocator`, `offer-broker` | the service | `service` | serving, calling other services and etcd |
//! | `agent-<name>` | `agent-<name>` | `agent` | one per agent: it may register and report only as itself |
//! | `operator` | `operator` | `operator` | the `allot` CLI's operator commands |
//! | `framework-<name>` | `framework-<name>` | `framework` | a framework's principal |
//! | `etcd` | `etcd` | `service` | etcd's own serving certificate |
//!
//! Every certificate is good for both TLS server and client authentication and names the `--host` addresses
//! (default `localhost` and `127.0.0.1`) as subject alternative names, so that any of them may serve.
//! Certificates are ECDSA P-256 keys (rcgen's default), valid from an hour ago for `--days` days.

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::path::{Path, PathBuf};

/// `allot certs ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a certificate authority and the certificates of a cluster (see the module documentation).
    Init(InitArgs),
}

/// `allot certs init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// The directory to write into (made if missing).
    #[arg(env = "ALLOT_TLS_DIR", default_value = ".allot/tls")]
    pub dir: PathBuf,
    /// An address the services may be reached at (DNS name or IP), as a subject alternative name of every
    /// certificate; repeat for several. Default: localhost and 127.0.0.1.
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Agent principals to issue (`agent-<name>` each); repeat for several.
    #[arg(long = "agent", default_values_t = ["agent1".to_string(), "agent2".into(), "agent3".into()])]
    pub agents: Vec<String>,
    /// Framework principals to issue (`framework-<name>` each); repeat for several.
    #[arg(long = "framework", default_values_t = ["default".to_string()])]
    pub frameworks: Vec<String>,
    /// Days the certificates are valid for.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
    /// Replace the files of an existing authority (otherwise an existing `ca.pem` is an error: certificates
    /// signed by the old authority would stop being trusted).
    #[arg(long)]
    pub force: bool,
}

/// One certificate to issue: principal (CN) and kind (O).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal's name: the certificate's CN and its files' stem.
    pub name: String,
    /// `service`, `agent`, `operator` or `framework`: the certificate's O.
    pub kind: &'static str,
}

/// The principals `args` asks for, in the order they are written.
///
/// # Errors
/// A name that is not 1-64 characters of `[A-Za-z0-9._-]`, or a name asked for twice.
pub fn principals(args: &InitArgs) -> anyhow::Result<Vec<Principal>> {
    let mut out: Vec<Principal> = ["registry", "allocator", "offer-broker", "etcd"]
        .iter()
        .map(|n| Principal {
            name: n.to_string(),
            kind: "service",
        })
        .collect();
    out.push(Principal {
        name: "operator".into(),
        kind: "operator",
    });
    for a in &args.agents {
        out.push(Principal {
            name: format!("agent-{a}"),
            kind: "agent",
        });
    }
    for f in &args.frameworks {
        out.push(Principal {
            name: format!("framework-{f}"),
            kind: "framework",
        });
    }
    let mut seen = std::collections::HashSet::new();
    for p in &out {
        let ok = !p.name.is_empty()
            && p.name.len() <= 64
            && p.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !ok {
            bail!(
                "principal '{}' must be 1-64 characters of [A-Za-z0-9._-]",
                p.name
            );
        }
        if !seen.insert(p.name.clone()) {
            bail!("principal '{}' is asked for twice", p.name);
        }
    }
    Ok(out)
}

/// Runs `allot certs init`: writes the authority and every principal's certificate and key into `args.dir`,
/// and prints what it wrote.
///
/// # Errors
/// An existing `ca.pem` without `--force`; bad principal names or hosts; a file that cannot be written.
pub fn init(args: &InitArgs) -> anyhow::Result<()> {
    let principals = principals(args)?;
    let hosts = if args.hosts.is_empty() {
        vec!["localhost".to_string(), "127.0.0.1".to_string()]
    } else {
        args.hosts.clone()
    };
    let dir = &args.dir;
    if dir.join("ca.pem").exists() && !args.force {
        bail!(
            "{} already holds a certificate authority (ca.pem); pass --force to replace it and every \
             certificate it signed",
            dir.display()
        );
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot make {}", dir.display()))?;
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(args.days));

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
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_key = KeyPair::generate().context("cannot make the authority's key")?;
    let ca_cert = ca
        .self_signed(&ca_key)
        .context("cannot sign the authority's certificate")?;
    write(dir, "ca.pem", &ca_cert.pem(), false)?;
    write(dir, "ca-key.pem", &ca_key.serialize_pem(), true)?;
    let issuer = Issuer::new(ca, ca_key);

    let sans = hosts
        .iter()
        .map(|h| match h.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => Ok(SanType::DnsName(h.as_str().try_into().with_context(
                || format!("--host '{h}' is neither an IP address nor a DNS name"),
            )?)),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    for p in &principals {
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, p.name.as_str());
        params
            .distinguished_name
            .push(DnType::OrganizationName, p.kind);
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
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate().with_context(|| format!("cannot make {}'s key", p.name))?;
        let cert = params
            .signed_by(&key, &issuer)
            .with_context(|| format!("cannot sign {}'s certificate", p.name))?;
        write(dir, &format!("{}.pem", p.name), &cert.pem(), false)?;
        write(
            dir,
            &format!("{}-key.pem", p.name),
            &key.serialize_pem(),
            true,
        )?;
    }
    println!(
        "wrote a certificate authority and {} certificates to {} (valid {} days, hosts {}):",
        principals.len(),
        dir.display(),
        args.days,
        hosts.join(", ")
    );
    for p in &principals {
        println!("  {:<24} {}", p.name, p.kind);
    }
    Ok(())
}

/// Writes `contents` to `dir/name`; a `secret` file is made readable by its owner only.
fn write(dir: &Path, name: &str, contents: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::PermissionsExt as _;
    let path = dir.join(name);
    let failed = || format!("cannot write {}", path.display());
    // Written whole to a fresh temporary file (mode 0600) beside it, then renamed over it: a service that
    // re-reads its files never sees half of one.
    let mut f = tempfile::NamedTempFile::new_in(dir).with_context(failed)?;
    if !secret {
        f.as_file()
            .set_permissions(std::fs::Permissions::from_mode(0o644))
            .with_context(failed)?;
    }
    f.write_all(contents.as_bytes())
        .and_then(|()| f.as_file().sync_all())
        .with_context(failed)?;
    f.persist(&path).with_context(failed)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(subcommand)]
        certs: CertsCommand,
    }

    fn args(line: &[&str]) -> InitArgs {
        let CertsCommand::Init(a) = Cli::try_parse_from(line).expect("parses").certs;
        a
    }

    #[test]
    fn a_cluster_gets_services_agents_an_operator_and_a_framework() {
        let a = args(&["x", "init", "/tmp/none"]);
        let names: Vec<String> = principals(&a)
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
                "agent-agent1",
                "agent-agent2",
                "agent-agent3",
                "framework-default"
            ]
        );
    }

    #[test]
    fn bad_or_repeated_names_are_refused() {
        let a = args(&["x", "init", "/tmp/none", "--agent", "a b"]);
        assert!(principals(&a).unwrap_err().to_string().contains("a b"));
        let a = args(&["x", "init", "/tmp/none", "--agent", "n1", "--agent", "n1"]);
        assert!(principals(&a).unwrap_err().to_string().contains("twice"));
    }

    #[test]
    fn init_writes_keys_only_their_owner_reads_and_refuses_to_replace_an_authority() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls");
        let a = args(&["x", "init", path.to_str().unwrap(), "--days", "2"]);
        init(&a).unwrap();
        for f in [
            "ca.pem",
            "offer-broker.pem",
            "agent-agent2.pem",
            "framework-default.pem",
        ] {
            let pem = std::fs::read_to_string(path.join(f)).unwrap();
            assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{f}");
        }
        let mode = std::fs::metadata(path.join("operator-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = init(&a).unwrap_err().to_string();
        assert!(again.contains("--force"), "{again}");
        let forced = args(&["x", "init", path.to_str().unwrap(), "--force"]);
        init(&forced).unwrap();
    }
}
