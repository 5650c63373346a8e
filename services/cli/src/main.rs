//! `allot`: the operator's and the framework author's command line.
//!
//! - `allot agents | frameworks | tasks | offers | roles [--json]`: what the cluster holds now;
//! - `allot roles set ROLE --weight W [--quota RES]`: configure a role;
//! - `allot execute`: run one command (or N instances) as a framework, like `mesos-execute`;
//! - `allot batch JOBFILE`: run a job file's commands under a concurrency cap.

mod batch;
mod execute;
mod fit;
mod ops;

use clap::{Parser, Subcommand};

/// Allot's command line.
#[derive(Debug, Parser)]
#[command(
    name = "allot",
    version,
    about = "Allot cluster manager: operator views and frameworks"
)]
struct Cli {
    /// The registry's gRPC address.
    #[arg(
        long,
        global = true,
        env = "ALLOT_REGISTRY",
        default_value = "127.0.0.1:5050"
    )]
    registry: String,
    /// The offer-broker's gRPC address.
    #[arg(
        long,
        global = true,
        env = "ALLOT_BROKER",
        default_value = "127.0.0.1:5052"
    )]
    broker: String,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Registered agents, their resources and reachability.
    Agents,
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
    /// Run a command as a one-off framework and exit with its exit code (like mesos-execute).
    Execute(execute::Args),
    /// Run every command of a job file under a concurrency cap, then print a summary.
    Batch(batch::Args),
}

#[tokio::main]
async fn main() {
    let cli: Cli = allot_common::config::parse();
    let _telemetry = allot_telemetry::init("allot", env!("CARGO_PKG_VERSION"));
    let result = match cli.command {
        Command::Agents => ops::agents(&cli.registry, cli.json).await,
        Command::Frameworks => ops::frameworks(&cli.broker, cli.json).await,
        Command::Tasks { framework } => {
            ops::tasks(&cli.broker, framework.as_deref(), cli.json).await
        }
        Command::Offers => ops::offers(&cli.broker, cli.json).await,
        Command::Roles { set } => ops::roles(&cli.registry, &cli.broker, set, cli.json).await,
        Command::Execute(args) => execute::run(&cli.broker, args).await,
        Command::Batch(args) => batch::run(&cli.broker, args, cli.json).await,
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}
