//! Framework credentials for clients that cannot hold a certificate: a principal and a secret, sent as HTTP
//! basic authentication to the Mesos v1 scheduler HTTP API (what pymesos sends; Mesos' `--credentials` and
//! `--authenticate_http_frameworks`). The file is Mesos' format, JSON
//! `{"credentials": [{"principal": "framework-etl", "secret": "..."}]}`, or text, one `principal secret` per
//! line (`#` comments); it is read again when it changes, like the ACL file. A principal authenticated this way
//! is of kind `framework`, so the ACL file and the ownership rules apply to it as to a certificate's.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Why the credentials file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// The file cannot be read.
    #[error("cannot read the credentials file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file does not parse.
    #[error("credentials file {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Principals and their secrets.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CredentialSet(HashMap<String, String>);

impl CredentialSet {
    /// Parses Mesos' JSON form or the text form (see the module docs).
    ///
    /// # Errors
    /// A message: JSON that is not `{"credentials": [{"principal", "secret"}]}`, a text line that is not two
    /// words, an empty principal or secret, a principal given twice.
    pub fn parse(text: &str) -> Result<CredentialSet, String> {
        #[derive(serde::Deserialize)]
        struct Entry {
            principal: String,
            secret: String,
        }
        #[derive(serde::Deserialize)]
        struct File {
            credentials: Vec<Entry>,
        }
        let pairs: Vec<(String, String)> = if text.trim_start().starts_with('{') {
            let f: File = serde_json::from_str(text).map_err(|e| e.to_string())?;
            f.credentials
                .into_iter()
                .map(|e| (e.principal, e.secret))
                .collect()
        } else {
            let mut pairs = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let words: Vec<&str> = line.split_whitespace().collect();
                let [p, s] = words[..] else {
                    return Err(format!("line {}: expected 'principal secret'", n + 1));
                };
                pairs.push((p.to_string(), s.to_string()));
            }
            pairs
        };
        let mut set = HashMap::new();
        for (p, s) in pairs {
            if p.is_empty() || s.is_empty() {
                return Err("a credential has an empty principal or secret".into());
            }
            if set.insert(p.clone(), s).is_some() {
                return Err(format!("principal '{p}' is given twice"));
            }
        }
        Ok(CredentialSet(set))
    }

    /// Whether `secret` is `principal`'s (compared in constant time).
    pub fn verify(&self, principal: &str, secret: &str) -> bool {
        let Some(known) = self.0.get(principal) else {
            return false;
        };
        let (a, b) = (known.as_bytes(), secret.as_bytes());
        let mut diff = a.len() ^ b.len();
        for i in 0..a.len().max(b.len()) {
            diff |= usize::from(a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0));
        }
        diff == 0
    }
}

fn read(path: &Path) -> Result<std::sync::Arc<CredentialSet>, CredentialsError> {
    let text = std::fs::read_to_string(path).map_err(|source| CredentialsError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    CredentialSet::parse(&text)
        .map(std::sync::Arc::new)
        .map_err(|message| CredentialsError::Invalid {
            path: path.to_path_buf(),
            message,
        })
}

/// A credentials file, read again when it changes (a version that does not parse is logged and the previous
/// one kept). Cheap to share.
#[derive(Debug)]
pub struct Credentials {
    path: PathBuf,
    set: allot_common::reload::Watched<std::sync::Arc<CredentialSet>>,
}

impl Credentials {
    /// Reads the file at `path`.
    ///
    /// # Errors
    /// [`CredentialsError`]: a service must not start with credentials it cannot read.
    pub fn open(path: &Path) -> Result<Self, CredentialsError> {
        let set = allot_common::reload::Watched::open(
            "credentials file",
            vec![path.to_path_buf()],
            || read(path),
        )?;
        Ok(Self {
            path: path.to_path_buf(),
            set,
        })
    }

    /// The principal an HTTP `Authorization` header value authenticates (`Basic base64(principal:secret)`),
    /// of kind `framework`; `None` for a missing, malformed or wrong credential.
    pub fn authenticate(
        &self,
        authorization: Option<&str>,
    ) -> Option<allot_common::tls::Principal> {
        use base64::Engine as _;
        let encoded = authorization?.strip_prefix("Basic ")?.trim();
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (principal, secret) = text.split_once(':')?;
        self.set
            .current(|| read(&self.path))
            .verify(principal, secret)
            .then(|| allot_common::tls::Principal {
                name: principal.to_string(),
                kind: "framework".into(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_parse_and_secrets_are_checked() {
        let json = r#"{"credentials": [{"principal": "framework-a", "secret": "s3cret"}]}"#;
        let text = "# comment\nframework-a s3cret\n\nframework-b other\n";
        for set in [json, text] {
            let set = CredentialSet::parse(set).unwrap();
            assert!(set.verify("framework-a", "s3cret"));
            assert!(!set.verify("framework-a", "s3cre"));
            assert!(!set.verify("framework-a", "s3cret!"));
            assert!(!set.verify("framework-c", "s3cret"));
        }
        for bad in [
            "framework-a",
            "a b c",
            "a s\na t",
            r#"{"credentials": [{"principal": "a"}]}"#,
        ] {
            assert!(CredentialSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_basic_authorization_names_a_framework_principal() {
        use base64::Engine as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        std::fs::write(&path, "framework-a s3cret:with:colons\n").unwrap();
        let c = Credentials::open(&path).unwrap();
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let p = c
            .authenticate(Some(&basic("framework-a:s3cret:with:colons")))
            .unwrap();
        assert_eq!(
            (p.name.as_str(), p.kind.as_str()),
            ("framework-a", "framework")
        );
        for wrong in [
            basic("framework-a:nope"),
            basic("nobody"),
            "Bearer x".into(),
            "Basic %%%".into(),
        ] {
            assert!(c.authenticate(Some(&wrong)).is_none(), "{wrong}");
        }
        assert!(c.authenticate(None).is_none());
    }
}
