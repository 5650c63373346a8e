//! Mutual TLS for Allot's links (issue 23; see `docs/security.md`): the TLS material of a process, loaded from
//! the files `allot certs init` writes and re-read when they change, and the principal a peer's certificate
//! names.
//!
//! A process presents `<name>.pem` with `<name>-key.pem` and trusts exactly the authority in `ca.pem`; as a
//! server it requires a certificate from every caller, signed by that authority ([`TlsConfigs::server`]); as
//! a client it presents its own ([`TlsConfigs::client`]). Cryptography is rustls with the ring provider.
//!
//! Rotation without a restart: [`Tls`] is a [`crate::reload::Watched`] value: whenever a configuration is
//! asked for, i.e. for each new connection, the files are loaded again if they changed (looked at no more than
//! once every [`RELOAD_CHECK`]); a set that does not load (a key that does not match its certificate, a
//! half-written file) is logged and the previous one kept.

pub use crate::reload::RELOAD_CHECK;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS material could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the kind expected.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// A PEM input of [`from_pem`] holds no usable item of its kind.
    #[error("{item:?}: {message}")]
    Pem {
        /// Which input.
        item: PemItem,
        /// What is wrong with it.
        message: String,
    },
    /// rustls refused the material (e.g. a key that does not match its certificate).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The authority cannot verify client certificates (e.g. an empty `ca.pem`).
    #[error("client verifier: {0}")]
    Verifier(String),
    /// The directory holds no certificate authority, and plaintext was not asked for.
    #[error(
        "no TLS material in {} (no ca.pem): make it with `allot certs init {}`, point --tls-dir or ALLOT_TLS_DIR \
         at it, or run with --insecure (ALLOT_INSECURE=1: plaintext, no identities)",
        dir.display(), dir.display()
    )]
    Missing {
        /// The directory looked in.
        dir: PathBuf,
    },
}

/// Where TLS material is looked for when no directory is named: `.allot/tls` (relative to the working
/// directory), where `allot certs init` writes by default.
pub const DEFAULT_DIR: &str = ".allot/tls";

/// How every Allot process (service, agent, CLI, framework through the SDK) decides how to secure its links:
/// plaintext when `insecure` (with a warning, logged at every start), otherwise the material of principal
/// `name` in `dir` (default [`DEFAULT_DIR`]). There is no silent fallback to plaintext.
///
/// # Errors
/// [`TlsError::Missing`] when `dir` has no `ca.pem`; otherwise as [`Tls::open`].
pub fn open_or_insecure(
    dir: Option<&Path>,
    name: &str,
    insecure: bool,
) -> Result<Option<Arc<Tls>>, TlsError> {
    if insecure {
        tracing::warn!(
            "running without TLS (--insecure): links are plaintext, callers are not authenticated and anyone \
             who can reach this process can act as any principal"
        );
        return Ok(None);
    }
    let dir = dir.unwrap_or(Path::new(DEFAULT_DIR));
    if !dir.join("ca.pem").exists() {
        return Err(TlsError::Missing {
            dir: dir.to_path_buf(),
        });
    }
    Tls::open(TlsFiles::in_dir(dir, name)).map(Some)
}

/// [`open_or_insecure`] from the environment, for the CLI and frameworks: `ALLOT_INSECURE` (set to anything
/// but empty, `0`, `false`, `no` or `off`), `ALLOT_TLS_DIR` and `ALLOT_TLS_NAME` (default `default_name`).
///
/// # Errors
/// As [`open_or_insecure`].
pub fn from_env(default_name: &str) -> Result<Option<Arc<Tls>>, TlsError> {
    let insecure = std::env::var("ALLOT_INSECURE").is_ok_and(|v| {
        !matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "" | "0" | "false" | "no" | "off"
        )
    });
    let dir = std::env::var_os("ALLOT_TLS_DIR").map(PathBuf::from);
    let name = std::env::var("ALLOT_TLS_NAME").unwrap_or_else(|_| default_name.to_string());
    open_or_insecure(dir.as_deref(), &name, insecure)
}

/// Where a process's TLS material is: the authority it trusts, its certificate (chain) and its private key,
/// all PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate authority (`ca.pem`).
    pub ca: PathBuf,
    /// This process's certificate (`<name>.pem`).
    pub cert: PathBuf,
    /// Its private key (`<name>-key.pem`).
    pub key: PathBuf,
}

impl TlsFiles {
    /// The files `allot certs init` writes for principal `name` into `dir`.
    pub fn in_dir(dir: &Path, name: &str) -> Self {
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}-key.pem")),
        }
    }
}

/// A server and a client configuration made from one set of [`TlsFiles`].
#[derive(Clone)]
pub struct TlsConfigs {
    /// Presents the certificate; requires one signed by the authority from every client.
    pub server: Arc<rustls::ServerConfig>,
    /// Presents the certificate; trusts servers signed by the authority only.
    pub client: Arc<rustls::ClientConfig>,
    /// HTTPS for clients that may not hold a certificate (the Mesos HTTP API): presents the certificate,
    /// verifies a client certificate when one is presented (it must be the authority's) and accepts clients
    /// without one, who then authenticate in HTTP; HTTP/1.1 by ALPN.
    pub https: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsConfigs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsConfigs { .. }")
    }
}

/// Loads `files` into a server and a client configuration (HTTP/2 by ALPN, as gRPC needs).
///
/// # Errors
/// [`TlsError::File`] for a missing, unreadable or malformed file (naming it), [`TlsError::Verifier`] for an
/// unusable authority, [`TlsError::Config`] for a key that does not match the certificate.
pub fn load(files: &TlsFiles) -> Result<TlsConfigs, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| TlsError::File {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    };
    let (ca, cert, key) = (read(&files.ca)?, read(&files.cert)?, read(&files.key)?);
    from_pem(&ca, &cert, &key).map_err(|e| match e {
        TlsError::Pem { item, message } => TlsError::File {
            path: match item {
                PemItem::Authority => files.ca.clone(),
                PemItem::Certificate => files.cert.clone(),
                PemItem::Key => files.key.clone(),
            },
            message,
        },
        e => e,
    })
}

/// Which of the three PEM inputs of [`from_pem`] is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PemItem {
    /// The authority (`ca.pem`).
    Authority,
    /// The certificate chain (`<name>.pem`).
    Certificate,
    /// The private key (`<name>-key.pem`).
    Key,
}

/// Makes the configurations of [`load`] from PEM bytes: the authority's certificates, this principal's
/// certificate chain and its private key. Never panics on malformed input (fuzzed:
/// `allot_tests::fuzz::credentials`).
///
/// # Errors
/// [`TlsError::Pem`] for an input with no usable PEM item of its kind; [`TlsError::Verifier`],
/// [`TlsError::Config`] as for [`load`].
pub fn from_pem(ca: &[u8], cert: &[u8], key: &[u8]) -> Result<TlsConfigs, TlsError> {
    let bad = |item, message: String| TlsError::Pem { item, message };
    let certs = |item, bytes: &[u8]| -> Result<Vec<CertificateDer<'static>>, TlsError> {
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
            .collect::<Result<_, _>>()
            .map_err(|e| bad(item, e.to_string()))?;
        if certs.is_empty() {
            return Err(bad(item, "no certificate in it".into()));
        }
        Ok(certs)
    };
    let ca = certs(PemItem::Authority, ca)?;
    let chain = certs(PemItem::Certificate, cert)?;
    let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| bad(PemItem::Key, e.to_string()))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in ca {
        roots
            .add(c)
            .map_err(|e| bad(PemItem::Authority, format!("not a usable authority: {e}")))?;
    }
    let roots = Arc::new(roots);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut server = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain.clone(), key.clone_key())?;
    server.alpn_protocols = vec![b"h2".to_vec()];
    let optional = rustls::server::WebPkiClientVerifier::builder_with_provider(
        roots.clone(),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut https = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(optional)
        .with_single_cert(chain.clone(), key.clone_key())?;
    https.alpn_protocols = vec![b"http/1.1".to_vec()];
    let mut client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsConfigs {
        server: Arc::new(server),
        client: Arc::new(client),
        https: Arc::new(https),
    })
}

/// A process's TLS material, re-read when its files change (see the module documentation). Cheap to share.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    configs: crate::reload::Watched<TlsConfigs>,
}

impl Tls {
    /// Loads `files`.
    ///
    /// # Errors
    /// As [`load`]: a process must not start with material it cannot use.
    pub fn open(files: TlsFiles) -> Result<Arc<Self>, TlsError> {
        let paths = vec![files.cert.clone(), files.key.clone(), files.ca.clone()];
        let configs = crate::reload::Watched::open("TLS material", paths, || load(&files))?;
        Ok(Arc::new(Self { files, configs }))
    }

    /// The current configurations, loaded again first if the files changed since they were last loaded
    /// (looked at no more than once every [`RELOAD_CHECK`]).
    pub fn configs(&self) -> TlsConfigs {
        self.configs.current(|| load(&self.files))
    }
}

/// Opens a TCP connection to `uri`'s host and port and runs the TLS handshake on it as a client of `tls`
/// (the connector of [`crate::grpc::tls_channel`]). The server must present a certificate the authority
/// signed for that host.
///
/// # Errors
/// An I/O error if the address is incomplete, the connection fails or the handshake is refused.
pub async fn connect(
    uri: &http::Uri,
    tls: &Tls,
) -> std::io::Result<hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>>
{
    use std::io::{Error, ErrorKind};
    let host = uri
        .host()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, format!("{uri}: no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri
        .port_u16()
        .ok_or_else(|| Error::new(ErrorKind::InvalidInput, format!("{uri}: no port")))?;
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{host}: {e}")))?;
    let tcp = tokio::net::TcpStream::connect((host, port)).await?;
    tcp.set_nodelay(true)?;
    let connector = tokio_rustls::TlsConnector::from(tls.configs().client);
    let stream = connector.connect(name, tcp).await?;
    Ok(hyper_util::rt::TokioIo::new(stream))
}

/// Who a certificate names: its subject's common name (CN) is the principal, its organization (O) the kind
/// (`service`, `agent`, `operator`, `framework`), as `allot certs init` writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The principal, e.g. `offer-broker`, `agent-node1`, `framework-batch`.
    pub name: String,
    /// Its kind; empty if the certificate names no organization.
    pub kind: String,
}

/// The principal `cert` (DER) names, or `None` if it is not a certificate or has no common name.
pub fn principal_of(cert: &[u8]) -> Option<Principal> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert).ok()?;
    let subject = parsed.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let kind = subject
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Some(Principal { name, kind })
}

/// The principal the first certificate in `pem` names (see [`principal_of`]).
pub fn principal_of_pem(pem: &[u8]) -> Option<Principal> {
    let der = CertificateDer::from_pem_slice(pem).ok()?;
    principal_of(&der)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    use std::time::Duration;

    /// A CA and, signed by it, a certificate for `cn` of kind `o` with SAN localhost: (ca pem, cert pem, key pem).
    fn material(cn: &str, o: &str) -> (String, String, String) {
        let mut ca = CertificateParams::default();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, "test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_pem = ca.self_signed(&ca_key).unwrap().pem();
        let issuer = Issuer::new(ca, ca_key);
        let mut leaf = CertificateParams::new(vec!["localhost".into()]).unwrap();
        leaf.distinguished_name.push(DnType::CommonName, cn);
        leaf.distinguished_name.push(DnType::OrganizationName, o);
        let key = KeyPair::generate().unwrap();
        let cert = leaf.signed_by(&key, &issuer).unwrap();
        (ca_pem, cert.pem(), key.serialize_pem())
    }

    fn write(dir: &Path, name: &str, (ca, cert, key): &(String, String, String)) -> TlsFiles {
        std::fs::write(dir.join("ca.pem"), ca).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert).unwrap();
        std::fs::write(dir.join(format!("{name}-key.pem")), key).unwrap();
        TlsFiles::in_dir(dir, name)
    }

    /// Runs a TLS handshake between `client` and `server` in memory; returns the certificate the server saw.
    fn handshake(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> Result<Option<Vec<u8>>, rustls::Error> {
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut c = rustls::ClientConnection::new(client, name)?;
        let mut s = rustls::ServerConnection::new(server)?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            s.read_tls(&mut buf.as_slice()).unwrap();
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            c.read_tls(&mut buf.as_slice()).unwrap();
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        Ok(s.peer_certificates()
            .and_then(|certs| certs.first())
            .map(|c| c.to_vec()))
    }

    #[test]
    fn peers_of_one_authority_handshake_and_the_server_learns_the_principal() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = material("offer-broker", "service");
        let server = load(&write(dir.path(), "offer-broker", &(ca.clone(), cert, key))).unwrap();
        // The client is the broker itself (its certificate from the same authority), calling a replica.
        let seen = handshake(server.client.clone(), server.server.clone())
            .unwrap()
            .expect("the client presented a certificate");
        assert_eq!(
            principal_of(&seen),
            Some(Principal {
                name: "offer-broker".into(),
                kind: "service".into()
            })
        );
    }

    #[test]
    fn a_peer_of_another_authority_is_refused() {
        let ours = tempfile::tempdir().unwrap();
        let theirs = tempfile::tempdir().unwrap();
        let server = load(&write(
            ours.path(),
            "registry",
            &material("registry", "service"),
        ))
        .unwrap();
        let stranger = load(&write(
            theirs.path(),
            "agent-x",
            &material("agent-x", "agent"),
        ))
        .unwrap();
        assert!(handshake(stranger.client, server.server).is_err());
    }

    #[test]
    fn bad_material_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let files = TlsFiles::in_dir(dir.path(), "nobody");
        let e = load(&files).unwrap_err().to_string();
        assert!(e.contains("ca.pem"), "{e}");
        // A key that is not the certificate's.
        let (ca, cert, _) = material("a", "agent");
        let (_, _, other_key) = material("b", "agent");
        let e = load(&write(dir.path(), "a", &(ca, cert, other_key))).unwrap_err();
        assert!(matches!(e, TlsError::Config(_)), "{e}");
        assert_eq!(principal_of(b"not a certificate"), None);
    }

    #[test]
    fn changed_files_are_loaded_again_and_broken_ones_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let first = material("agent-a", "agent");
        let tls = Tls::open(write(dir.path(), "agent-a", &first)).unwrap();
        let before = tls.configs();
        // Rotated: a new authority and certificate (mtimes move on; RELOAD_CHECK passes).
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        let second = material("agent-a", "agent");
        write(dir.path(), "agent-a", &second);
        let after = tls.configs();
        assert!(!Arc::ptr_eq(&before.server, &after.server), "reloaded");
        // A peer of the new authority is now accepted; one of the old is not.
        let peer = tempfile::tempdir().unwrap();
        let new_peer = load(&write(peer.path(), "agent-a", &second)).unwrap();
        assert!(handshake(new_peer.client, after.server.clone()).is_ok());
        assert!(handshake(before.client, after.server.clone()).is_err());
        // Broken on disk: the previous set stays.
        std::thread::sleep(RELOAD_CHECK + Duration::from_millis(50));
        std::fs::write(dir.path().join("agent-a-key.pem"), "garbage").unwrap();
        let kept = tls.configs();
        assert!(Arc::ptr_eq(&kept.server, &after.server));
    }
}
