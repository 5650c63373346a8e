//! `allot`: the operator's and the framework author's command line.
//!
//! - `allot agents | frameworks | tasks | offers | roles [--json]`: what the cluster holds now;
//! - `allot roles set ROLE --weight W [--quota RES]`: configure a role;
//! - `allot execute`: run one command (or N instances) as a framework, like `mesos-execute`;
//! - `allot batch JOBFILE`: run a job file's commands under a concurrency cap;
//! - `allot policy load|list|activate|rollback|status`: manage the allocator's policy at runtime;
//! - `allot sim SCENARIO`: run an allocation scenario on a simulated clock;
//! - `allot traces serve|list|cycles`, `allot trace TASK_ID`: a local trace store and why a task landed where
//!   it did.

mod attempts;
mod batch;
mod certs;
mod execute;
mod fit;
mod journal;
mod ops;
mod policy;
mod traces;

use clap::{Parser, Subcommand};

/// Allot's command line.
#[derive(Debug, Parser)]
#[command(
    name = "allot",
    version,
    about = "Allot cluster manager: operator views and frameworks"
)]
struct Cli {
    /// The registry's gRPC address; for replicated registries, every replica's, comma-separated (calls follow
    /// the leader).
    #[arg(
        long,
        global = true,
        env = "ALLOT_REGISTRY",
        default_value = "127.0.0.1:5050"
    )]
    registry: String,
    /// The offer-broker's gRPC address; for replicated brokers, every replica's, comma-separated (the
    /// leader is found).
    #[arg(
        long,
        global = true,
        env = "ALLOT_BROKER",
        default_value = "127.0.0.1:5052"
    )]
    broker: String,
    /// The allocator's gRPC address (policy administration); for replicas, every one's, comma-separated.
    #[arg(
        long,
        global = true,
        env = "ALLOT_ALLOCATOR",
        default_value = "127.0.0.1:5051"
    )]
    allocator: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// The certificate to present (`--tls-dir`, `--tls-name`), or `--insecure`.
    #[command(flatten)]
    tls: allot_server::config::TlsArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Registered agents, their resources and reachability.
    Agents,
    /// Recent operator actions of every service (roles, policies, teardowns), allowed or refused.
    Audit {
        /// How many, newest first.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Frameworks, their roles, connection and resources.
    Frameworks,
    /// Tasks and their latest states.
    Tasks {
        /// Only this framework's tasks.
        #[arg(long)]
        framework: Option<String>,
    },
    /// Outstanding offers.
    Offers,
    /// Roles with weights and quota limits; `allot roles set` configures one.
    Roles {
        #[command(subcommand)]
        set: Option<ops::RolesCommand>,
    },
    /// Reserve part of an agent's unreserved resources for a role (a dynamic reservation, Mesos'
    /// RESERVE_RESOURCES): offered only to that role's frameworks from then on, under every policy.
    Reserve(ops::ReserveArgs),
    /// Release (part of) a role's dynamic reservation on an agent; without RESOURCES, all of it.
    Unreserve(ops::ReserveArgs),
    /// Every agent's dynamic reservations.
    Reservations,
    /// Run a command as a one-off framework and exit with its exit code (like mesos-execute).
    Execute(execute::Args),
    /// Run every command of a job file under a concurrency cap, then print a summary.
    Batch(batch::Args),
    /// Certificates: `allot certs init` makes a certificate authority and a cluster's certificates.
    Certs {
        #[command(subcommand)]
        command: certs::CertsCommand,
    },
    /// Allocation policies: load an artifact, list, activate, roll back, status.
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// A local trace store: `serve` receives spans over OTLP and keeps them on disk; `list` and `cycles`
    /// show recent task traces and allocation cycles.
    Traces {
        #[command(subcommand)]
        command: traces::TracesCommand,
    },
    /// One task's trace from the trace store as a waterfall, and why it landed on its agent (the offer its
    /// framework accepted, the allocation cycle and policy that made the offer).
    Trace(traces::TraceArgs),
    /// Run an allocation scenario through the allocator and a policy on a simulated clock; print every offer
    /// and launch as a JSON line.
    Sim {
        /// The scenario file (YAML; format in `docs/plugin-guide.md` and `examples/scenarios/`).
        scenario: std::path::PathBuf,
        /// Policy to use instead of the scenario's: a built-in (`drf`, `priority`) or the path of a policy
        /// library (`lib<name>.so` native, `<name>.wasm` component), as `allot policy load` takes.
        #[arg(long)]
        policy: Option<String>,
        /// Shuffle agents every cycle in an order drawn from this seed (default: sorted by ID).
        #[arg(long)]
        seed: Option<u64>,
        /// End with a summary line: offers and launches per framework, dominant shares, Jain's fairness index.
        #[arg(long)]
        summary: bool,
    },
}

fn sim(
    path: &std::path::Path,
    policy: Option<String>,
    seed: Option<u64>,
    summary: bool,
) -> anyhow::Result<i32> {
    use anyhow::Context;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let opts = allot_allocator::sim::SimOptions {
        policy,
        seed,
        summary,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    allot_allocator::sim::run(&text, &opts, &mut out)
        .with_context(|| path.display().to_string())?;
    std::io::Write::flush(&mut out)?;
    Ok(0)
}

// The CLI's work is one framework or one call at a time: one thread, no hand-offs between threads (on a
// multi-threaded runtime context switches were about a fifth of `allot batch`'s CPU; issue 24).
#[tokio::main(flavor = "current_thread")]
async fn main() {
    let cli: Cli = allot_server::config::parse();
    let telemetry = allot_telemetry::init("allot", env!("CARGO_PKG_VERSION"));
    ops::secure_with(cli.tls.clone());
    let result = match cli.command {
        Command::Agents => ops::agents(&cli.registry, cli.json).await,
        Command::Audit { limit } => ops::audit(&cli.registry, limit, cli.json).await,
        Command::Frameworks => ops::frameworks(&cli.broker, cli.json).await,
        Command::Tasks { framework } => {
            ops::tasks(&cli.broker, framework.as_deref(), cli.json).await
        }
        Command::Offers => ops::offers(&cli.broker, cli.json).await,
        Command::Roles { set } => ops::roles(&cli.registry, &cli.broker, set, cli.json).await,
        Command::Reserve(args) => ops::reserve(&cli.allocator, args, true, cli.json).await,
        Command::Unreserve(args) => ops::reserve(&cli.allocator, args, false, cli.json).await,
        Command::Reservations => ops::reservations(&cli.allocator, cli.json).await,
        Command::Execute(args) => execute::run(&cli.broker, args).await,
        Command::Batch(args) => batch::run(&cli.broker, args, cli.json).await,
        Command::Certs {
            command: certs::CertsCommand::Init(args),
        } => certs::init(&args).map(|()| 0),
        Command::Certs {
            command: certs::CertsCommand::Issue(args),
        } => certs::issue(&args).map(|()| 0),
        Command::Policy { command } => policy::run(&cli.allocator, command, cli.json).await,
        Command::Traces { command } => traces::run(command, cli.json).await,
        Command::Trace(args) => traces::trace(args, cli.json),
        Command::Sim {
            scenario,
            policy,
            seed,
            summary,
        } => sim(&scenario, policy, seed, summary),
    };
    // process::exit runs no destructor: end telemetry first, so that the spans of this run (a framework's
    // ACCEPTs, an operator's calls) are exported.
    drop(telemetry);
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
