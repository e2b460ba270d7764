//! flotd, the flotilla agent: one per host, run by systemd.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use flotilla::agent::{self, AgentConfig};
use flotilla::cli::parse_seconds;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// The flotilla agent: registers this host and runs the units the cluster places on it.
#[derive(Parser, Debug)]
#[command(name = "flotd", version)]
struct Args {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        env = "FLOTD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    endpoints: Vec<String>,
    /// Key prefix in etcd.
    #[arg(long, env = "FLOTD_PREFIX", default_value = "/flotilla")]
    prefix: String,
    /// Lease TTL: how long a silent host keeps its units (seconds, or e.g. "10s"; minimum 3s).
    #[arg(long, env = "FLOTD_TTL", default_value = "10", value_parser = parse_seconds)]
    ttl: Duration,
    /// The address published for this host.
    #[arg(long, env = "FLOTD_PUBLIC_IP", default_value = "")]
    public_ip: String,
    /// Host metadata matched by MachineMetadata=, as key=value,key=value.
    #[arg(long, env = "FLOTD_METADATA", default_value = "")]
    metadata: String,
    /// File holding this host's machine id.
    #[arg(long, env = "FLOTD_MACHINE_ID_FILE", default_value = "/etc/machine-id")]
    machine_id_file: PathBuf,
    /// Directory for flotd's unit files and lease record.
    #[arg(long, env = "FLOTD_RUNTIME_DIR", default_value = "/run/flotilla")]
    runtime_dir: PathBuf,
    /// On SIGTERM, leave units running and the lease alive (for restarting flotd alone).
    #[arg(long, env = "FLOTD_KEEP_UNITS_ON_EXIT")]
    keep_units_on_exit: bool,
    /// How long one unit may take to stop (seconds, or e.g. "90s").
    #[arg(long, env = "FLOTD_STOP_TIMEOUT", default_value = "90", value_parser = parse_seconds)]
    stop_timeout: Duration,
    /// Pull each container unit's image on every host that could run it as soon as the unit is
    /// submitted, unless the unit says PrePull=no (true or false).
    #[arg(long, env = "FLOTD_PRE_PULL", default_value_t = true, action = clap::ArgAction::Set)]
    pre_pull: bool,
}

fn config(args: Args) -> anyhow::Result<AgentConfig> {
    Ok(AgentConfig {
        endpoints: args.endpoints,
        prefix: args.prefix,
        ttl: args.ttl,
        public_ip: args.public_ip,
        metadata: agent::parse_metadata(&args.metadata)?,
        machine_id_file: args.machine_id_file,
        runtime_dir: args.runtime_dir,
        keep_units_on_exit: args.keep_units_on_exit,
        stop_timeout: args.stop_timeout,
        pre_pull: args.pre_pull,
    })
}

/// How often freed heap memory is handed back to the kernel.
const TRIM_EVERY: Duration = Duration::from_secs(30);

/// Hands the pages of freed heap memory back to the kernel. glibc keeps them otherwise: after a
/// burst of thousands of units, an agent left with none still held 17 MB it no longer used.
#[allow(unsafe_code)]
fn release_free_memory() {
    // SAFETY: malloc_trim takes no pointers and only returns free pages of glibc's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_from_env("FLOTD_LOG").unwrap_or_else(|_| "info".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false);
    // Under systemd the journal stamps every line already; a second timestamp is noise.
    if std::env::var_os("JOURNAL_STREAM").is_some() {
        logs.without_time().init();
    } else {
        logs.init();
    }

    let shutdown = CancellationToken::new();
    let trigger = shutdown.clone();
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) =
            (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            return;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        info!("shutdown requested");
        trigger.cancel();
    });

    tokio::spawn(async {
        let mut every = tokio::time::interval(TRIM_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            release_free_memory();
        }
    });

    let outcome = match config(args) {
        Ok(config) => agent::run(config, shutdown).await,
        Err(error) => Err(error),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            error!(error = %format!("{error:#}"), "flotd stopped");
            ExitCode::FAILURE
        }
    }
}
