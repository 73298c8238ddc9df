//! The `silt` command line: definitions, dispatch, output and passphrases.

mod files;
mod identity;
mod init;
mod key;
mod share;
mod suppliers;

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use common::crypto::Passphrase;
use common::id::{Alias, KeyId};
use customer::home::Home;

/// Silt: end-to-end encrypted peer-to-peer storage.
#[derive(Debug, Parser)]
#[command(name = "silt", version, about)]
struct Cli {
    /// Home directory (default ~/.silt).
    #[arg(long, global = true, env = "SILT_HOME")]
    home: Option<PathBuf>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    /// File holding the passphrase of the master key or of a backup
    /// (SILT_PASSPHRASE is read too; otherwise you are asked on the terminal).
    #[arg(long, global = true, env = "SILT_PASSPHRASE_FILE")]
    passphrase_file: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make your master key and identity, and publish the identity.
    Init(init::InitArgs),
    /// Show, publish, back up or restore your identity.
    #[command(subcommand)]
    Identity(identity::IdentityCommand),
    /// Create, list, delete, export, import, back up and restore keys.
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Hire suppliers and see how they are.
    #[command(subcommand)]
    Suppliers(suppliers::SuppliersCommand),
    /// Create, list, grant and delete shares, and see whom you granted them to.
    #[command(subcommand)]
    Share(share::ShareCommand),
    /// Upload a file or directory: LOCAL [REMOTE], REMOTE being
    /// [KEY_ID:]PATH (default: your master location, the file's name).
    Put {
        /// Local file or directory.
        local: PathBuf,
        /// Remote path.
        remote: Option<String>,
    },
    /// Download a file or directory: REMOTE [LOCAL]; PATH#N fetches version N.
    Get {
        /// Remote path.
        remote: String,
        /// Local file or directory.
        local: Option<PathBuf>,
    },
    /// List the files of a location: [KEY_ID:][PATH].
    Ls {
        /// Location or directory.
        location: Option<String>,
    },
    /// Remove a file (every version, or PATH#N).
    Rm {
        /// Remote path.
        remote: String,
    },
    /// Identity, suppliers and their health, shares, whether your daemon
    /// answers, and the DHT as seen from here.
    Status,
    /// Run until stopped: answer online checks and key audits, and receive
    /// the shares others grant you.
    Daemon,
}

/// Global options every command sees.
pub(crate) struct Ctx {
    pub(crate) home: Home,
    pub(crate) out: Output,
    passphrase_file: Option<PathBuf>,
}

impl Ctx {
    /// The passphrase from `--passphrase-file`, `SILT_PASSPHRASE`, or the
    /// terminal, in that order. `confirm` asks twice on the terminal.
    pub(crate) fn passphrase(&self, prompt: &str, confirm: bool) -> Result<Passphrase> {
        if let Some(path) = &self.passphrase_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read passphrase file {}", path.display()))?;
            return non_empty(Passphrase::new(text));
        }
        if let Ok(text) = std::env::var("SILT_PASSPHRASE") {
            return non_empty(Passphrase::new(text));
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "a passphrase is needed: use --passphrase-file FILE, SILT_PASSPHRASE_FILE or SILT_PASSPHRASE"
            );
        }
        let first = Passphrase::new(rpassword::prompt_password(format!("{prompt}: "))?);
        if confirm {
            let second = Passphrase::new(rpassword::prompt_password("Repeat it: ")?);
            if !first.same_as(&second) {
                bail!("the passphrases do not match");
            }
        }
        non_empty(first)
    }

    /// A key ID given on the command line: `alias$user@idhost`, or a bare
    /// alias meaning one of our own keys.
    pub(crate) fn key_id(&self, text: &str) -> Result<KeyId> {
        if text.contains('$') {
            return Ok(text.parse()?);
        }
        let alias: Alias = text.parse()?;
        Ok(KeyId::new(alias, self.home.config()?.user_id))
    }
}

fn non_empty(pass: Passphrase) -> Result<Passphrase> {
    if pass.is_empty() {
        bail!("the passphrase is empty");
    }
    Ok(pass)
}

/// Prints results as text or JSON.
pub(crate) struct Output {
    json: bool,
}

impl Output {
    /// Prints `human` as text, or `json` with `--json`.
    pub(crate) fn print(&self, human: impl std::fmt::Display, json: serde_json::Value) {
        if self.json {
            println!("{json}");
        } else {
            println!("{human}");
        }
    }

    /// Whether output is for machines (no progress bars).
    pub(crate) fn is_quiet(&self) -> bool {
        self.json
    }

    /// A warning for a person; silent with `--json` (the JSON says it).
    pub(crate) fn warn(&self, text: impl std::fmt::Display) {
        if !self.json {
            eprintln!("warning: {text}");
        }
    }
}

pub(crate) fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .init();
    // Before the runtime's threads start, so every allocation sees it.
    let tuning = common::allocator::tune();
    tracing::debug!(?tuning, "allocator");
    let json = cli.json;
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let text = net::error_chain(e.as_ref());
            if json {
                println!("{}", serde_json::json!({ "error": text }));
            }
            eprintln!("error: {text}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let home = match cli.home {
        Some(home) => home,
        None => std::env::home_dir()
            .context("no home directory; use --home or SILT_HOME")?
            .join(".silt"),
    };
    let ctx = Ctx {
        home: Home::new(home),
        out: Output { json: cli.json },
        passphrase_file: cli.passphrase_file,
    };
    match cli.command {
        Command::Init(args) => init::run(&ctx, args).await,
        Command::Identity(command) => identity::run(&ctx, command).await,
        Command::Key(command) => key::run(&ctx, command).await,
        Command::Suppliers(command) => suppliers::run(&ctx, command).await,
        Command::Share(command) => share::run(&ctx, command).await,
        Command::Put { local, remote } => files::put(&ctx, local, remote).await,
        Command::Get { remote, local } => files::get(&ctx, remote, local).await,
        Command::Ls { location } => files::ls(&ctx, location).await,
        Command::Rm { remote } => files::rm(&ctx, remote).await,
        Command::Status => suppliers::status(&ctx).await,
        Command::Daemon => daemon(&ctx).await,
    }
}

/// `silt daemon`: serves on the configured listen address until SIGINT or
/// SIGTERM.
async fn daemon(ctx: &Ctx) -> Result<()> {
    let config = ctx.home.config()?;
    let session = std::sync::Arc::new(session(ctx)?);
    if session.identity().document().endpoints.is_empty() {
        ctx.out.warn(format_args!(
            "your identity advertises no address (listen is {}), so nobody can reach this daemon; run `silt init` with --listen HOST:PORT",
            config.listen
        ));
    }
    if let Err(e) = session.ensure_published().await {
        ctx.out
            .warn(format_args!("could not publish your identity: {e}"));
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let daemon = customer::daemon::Daemon::spawn(session.clone(), listener)?;
    ctx.out.print(
        format!("daemon of {} listening on {}", session.user(), daemon.local_addr()),
        serde_json::json!({ "user_id": session.user().to_string(), "listen": daemon.local_addr().to_string() }),
    );
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("cannot watch SIGTERM")?;
        tokio::select! {
            _ = term.recv() => {}
            result = tokio::signal::ctrl_c() => result.context("cannot watch SIGINT")?,
        }
    }
    daemon.shutdown().await;
    Ok(())
}

/// Opens a session: the home's master key (asking for its passphrase if it
/// is protected), identity and suppliers.
pub(crate) fn session(ctx: &Ctx) -> Result<customer::session::Session> {
    let master = identity::master_key(ctx)?;
    Ok(customer::session::Session::open(ctx.home.clone(), master)?)
}

/// Seconds since the epoch as an RFC 3339 date.
pub(crate) fn date(unix: i64) -> String {
    let time =
        std::time::UNIX_EPOCH + std::time::Duration::from_secs(u64::try_from(unix).unwrap_or(0));
    humantime::format_rfc3339_seconds(time).to_string()
}
