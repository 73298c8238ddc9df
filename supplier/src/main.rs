//! `silt-supplier`: parse the command line, load the config, start tracing,
//! run the node until SIGTERM or SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand};
use common::allocator::Tuning;
use common::id::{IdHost, UserName};
use supplier::config::{CONFIG_FILE, Config};
use supplier::{Supplier, init_data_dir};

/// The Silt storage node.
#[derive(Debug, Parser)]
#[command(name = "silt-supplier", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create the data directory, the node key and a config file.
    Init {
        /// Data directory.
        #[arg(long, env = "SILT_SUPPLIER_DATA")]
        data: PathBuf,
        /// The supplier's user name (3-20 of a-z0-9_-, starting with a letter).
        #[arg(long)]
        name: String,
        /// Identity server, HOST[:PORT].
        #[arg(long = "id-server")]
        id_server: String,
        /// Storage offered to customers, e.g. "100 GiB".
        #[arg(long, default_value = "10 GiB")]
        capacity: ByteSize,
        /// RSA size of the node key: 2048, 3072 or 4096.
        #[arg(long, default_value_t = common::crypto::DEFAULT_KEY_BITS)]
        key_size: usize,
    },
    /// Run the node.
    Run(RunArgs),
}

#[derive(Debug, Args)]
struct RunArgs {
    /// TOML config file. Default: supplier.toml in the data directory.
    #[arg(long, env = "SILT_SUPPLIER_CONFIG")]
    config: Option<PathBuf>,
    /// Data directory.
    #[arg(long, env = "SILT_SUPPLIER_DATA")]
    data: Option<PathBuf>,
    /// Address of the mutual-TLS port.
    #[arg(long, env = "SILT_SUPPLIER_LISTEN")]
    listen: Option<SocketAddr>,
    /// HOST:PORT others reach this node at.
    #[arg(long, env = "SILT_SUPPLIER_PUBLIC_ADDR")]
    public_addr: Option<String>,
    /// DHT seed HOST:PORT (repeatable).
    #[arg(long, env = "SILT_SUPPLIER_BOOTSTRAP", value_delimiter = ',')]
    bootstrap: Vec<String>,
    /// Serve the identity server role.
    #[arg(long, env = "SILT_SUPPLIER_IDENTITY_SERVER")]
    identity_server: bool,
    /// Prometheus metrics address, e.g. 127.0.0.1:9100.
    #[arg(long, env = "SILT_SUPPLIER_METRICS")]
    metrics: Option<SocketAddr>,
    /// Storage offered to customers.
    #[arg(long, env = "SILT_SUPPLIER_CAPACITY")]
    capacity: Option<ByteSize>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing();
    match run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", net::error_chain(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .init();
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Init {
            data,
            name,
            id_server,
            capacity,
            key_size,
        } => init(data, name, id_server, capacity, key_size),
        Command::Run(args) => serve(args).await,
    }
}

fn init(
    data: PathBuf,
    name: String,
    id_server: String,
    capacity: ByteSize,
    key_size: usize,
) -> Result<()> {
    let name: UserName = name.parse()?;
    let id_host = IdHost::from_server_addr(&id_server)?;
    let config_path = data.join(CONFIG_FILE);
    if config_path.exists() {
        bail!(
            "{} already exists; refusing to overwrite it",
            config_path.display()
        );
    }
    let node_id = init_data_dir(&data, key_size)?;
    let config = Config {
        data: data.clone(),
        name: Some(name.to_string()),
        id_server: Some(id_host.server_addr()),
        capacity,
        ..Config::default()
    };
    common::atomic_file::write_new(&config_path, config.to_toml()?.as_bytes(), 0o644)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    println!("initialised supplier {name}@{id_host}");
    println!("node id: {node_id}");
    println!("config:  {}", config_path.display());
    Ok(())
}

async fn serve(args: RunArgs) -> Result<()> {
    match common::allocator::tune() {
        Tuning::Applied => tracing::info!(
            mmap_threshold = common::allocator::MMAP_THRESHOLD,
            trim_threshold = common::allocator::TRIM_THRESHOLD,
            "allocator tuned"
        ),
        Tuning::OperatorSettings => {
            tracing::info!("allocator: keeping the malloc settings of GLIBC_TUNABLES")
        }
        Tuning::Refused => {
            tracing::warn!("allocator: glibc refused a setting and keeps some of its defaults")
        }
        Tuning::Unsupported => {}
    }
    let mut config = match (&args.config, &args.data) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(data)) if data.join(CONFIG_FILE).exists() => {
            Config::load(&data.join(CONFIG_FILE))?
        }
        _ => Config::default(),
    };
    if let Some(data) = args.data {
        config.data = data;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if args.public_addr.is_some() {
        config.public_addr = args.public_addr;
    }
    if !args.bootstrap.is_empty() {
        config.bootstrap = args.bootstrap;
    }
    if args.identity_server {
        config.identity_server = true;
    }
    if args.metrics.is_some() {
        config.metrics = args.metrics;
    }
    if let Some(capacity) = args.capacity {
        config.capacity = capacity;
    }
    let mut node = Supplier::spawn(config).await?;
    shutdown_signal().await?;
    tracing::info!("shutting down");
    node.shutdown().await;
    Ok(())
}

async fn shutdown_signal() -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
    tokio::select! {
        _ = term.recv() => {}
        result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT")?,
    }
    Ok(())
}
