//! `allot certs init`: a certificate authority and the certificates a cluster needs, into one directory (see
//! `allot_server::certs` for what is issued to whom); `allot certs issue`: one more certificate from the same
//! authority (a new agent or framework, or a rotation).

use allot_server::certs::{self, Principal, Validity};
use anyhow::bail;
use std::path::PathBuf;

/// `allot certs ...`.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Make a certificate authority and the certificates of a cluster: the services, etcd, the operator, agents
    /// and frameworks.
    Init(InitArgs),
    /// Issue (or re-issue: rotation) one principal's certificate from the authority in the directory.
    Issue(IssueArgs),
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
    #[arg(long = "agent", default_values_t = ["node1".to_string(), "node2".into(), "node3".into()])]
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

/// `allot certs issue`.
#[derive(Debug, clap::Args)]
pub struct IssueArgs {
    /// The principal (the certificate's CN and its files' stem), e.g. `agent-node4`, `framework-etl`.
    pub name: String,
    /// Its kind: service, agent, operator or framework. Default: from the name's prefix (`agent-`,
    /// `framework-`; `operator`; otherwise service).
    #[arg(long)]
    pub kind: Option<String>,
    /// The directory holding the authority (`ca.pem`, `ca-key.pem`).
    #[arg(long, env = "ALLOT_TLS_DIR", default_value = allot_common::tls::DEFAULT_DIR)]
    pub dir: PathBuf,
    /// An address the principal may serve at, as for `init`; repeat for several.
    #[arg(long = "host")]
    pub hosts: Vec<String>,
    /// Days the certificate is valid for.
    #[arg(long, default_value_t = 365)]
    pub days: u32,
}

/// Runs `allot certs init`: writes the authority and every principal's certificate and key into `args.dir`,
/// and prints what it wrote.
///
/// # Errors
/// An existing `ca.pem` without `--force`; bad principal names or hosts; a file that cannot be written.
pub fn init(args: &InitArgs) -> anyhow::Result<()> {
    let principals = certs::cluster(&args.agents, &args.frameworks)?;
    let validity = Validity::days(args.days);
    certs::init_authority(&args.dir, validity, args.force)?;
    certs::issue(&args.dir, &principals, &args.hosts, validity)?;
    println!(
        "wrote a certificate authority and {} certificates to {} (valid {} days, hosts {}):",
        principals.len(),
        args.dir.display(),
        args.days,
        hosts(&args.hosts)
    );
    for p in &principals {
        println!("  {:<24} {}", p.name, p.kind);
    }
    Ok(())
}

/// Runs `allot certs issue`.
///
/// # Errors
/// A bad name, kind or host; no authority in the directory; a file that cannot be written.
pub fn issue(args: &IssueArgs) -> anyhow::Result<()> {
    let kind = match &args.kind {
        Some(k) => k.clone(),
        None => certs::kind_of(&args.name).to_string(),
    };
    if !args.dir.join("ca-key.pem").exists() {
        bail!(
            "{} holds no authority key (ca-key.pem): make one with `allot certs init {}`",
            args.dir.display(),
            args.dir.display()
        );
    }
    let p = Principal::new(args.name.clone(), &kind);
    certs::issue(&args.dir, &[p], &args.hosts, Validity::days(args.days))?;
    println!(
        "issued {} ({kind}) in {} (valid {} days, hosts {}); processes presenting it load it within a second",
        args.name,
        args.dir.display(),
        args.days,
        hosts(&args.hosts)
    );
    Ok(())
}

fn hosts(hosts: &[String]) -> String {
    if hosts.is_empty() {
        "localhost, 127.0.0.1".into()
    } else {
        hosts.join(", ")
    }
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

    fn parse(line: &[&str]) -> CertsCommand {
        Cli::try_parse_from(line).expect("parses").certs
    }

    #[test]
    fn init_then_issue_one_more_and_refuse_to_replace_the_authority() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tls");
        let CertsCommand::Init(a) = parse(&["x", "init", path.to_str().unwrap(), "--days", "2"])
        else {
            panic!("init")
        };
        assert_eq!(a.agents, ["node1", "node2", "node3"]);
        init(&a).unwrap();
        assert!(path.join("agent-node3.pem").exists());
        let again = init(&a).unwrap_err().to_string();
        assert!(again.contains("--force"), "{again}");
        let CertsCommand::Issue(i) =
            parse(&["x", "issue", "agent-node4", "--dir", path.to_str().unwrap()])
        else {
            panic!("issue")
        };
        issue(&i).unwrap();
        let pem = std::fs::read(path.join("agent-node4.pem")).unwrap();
        let who = allot_common::tls::principal_of_pem(&pem).unwrap();
        assert_eq!(
            (who.name.as_str(), who.kind.as_str()),
            ("agent-node4", "agent")
        );
    }
}
