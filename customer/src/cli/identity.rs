//! `silt identity`: show, publish, back up, restore, unpin.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use common::crypto::PrivateKey;
use common::id::UserId;
use common::identity::{self, SignedIdentity};
use customer::home::InitOptions;
use customer::idserver::{self, IdServerError};
use serde_json::json;

use super::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum IdentityCommand {
    /// Show your user ID, node ID (fingerprint) and publication state.
    Show,
    /// Publish your identity document to your identity server.
    Publish,
    /// Write your identity and master key, encrypted with a passphrase, to a file.
    Backup {
        /// The backup file to create (it must not exist).
        #[arg(long)]
        out: PathBuf,
    },
    /// Restore an identity from a backup file into an empty home.
    Restore {
        /// The backup file.
        file: PathBuf,
        /// Keep the restored master key protected by the backup's passphrase.
        #[arg(long)]
        protect: bool,
        /// Where `silt daemon` will listen.
        #[arg(long, default_value = "127.0.0.1:7700")]
        listen: SocketAddr,
        /// A DHT seed, HOST:PORT (repeatable): kept in config.toml, and used
        /// at once to find your suppliers again (`silt suppliers recover`).
        #[arg(long)]
        bootstrap: Vec<String>,
    },
    /// Forget the pinned master key of another user (after checking the new
    /// fingerprint with them out of band).
    Unpin {
        /// `user@idhost`.
        user: UserId,
    },
}

pub(crate) async fn run(ctx: &Ctx, command: IdentityCommand) -> Result<()> {
    match command {
        IdentityCommand::Show => show(ctx),
        IdentityCommand::Publish => {
            let identity = ctx.home.identity()?;
            let master = master_key(ctx)?;
            let server = ctx.home.config()?.id_server;
            let revision = publish(ctx, &master, &identity).await?;
            // Also in the DHT, when there is one to reach.
            let in_dht = match customer::session::Session::open(ctx.home.clone(), master) {
                Ok(session) => session.publish_identity_record().await.ok(),
                Err(_) => None,
            };
            ctx.out.print(
                format!("published {} to {server} (revision {revision})", identity.document().user_id),
                json!({ "user_id": identity.document().user_id.to_string(), "revision": revision, "server": server, "dht_nodes": in_dht }),
            );
            Ok(())
        }
        IdentityCommand::Backup { out } => backup(ctx, out),
        IdentityCommand::Restore {
            file,
            protect,
            listen,
            bootstrap,
        } => restore(ctx, file, protect, listen, bootstrap).await,
        IdentityCommand::Unpin { user } => {
            let removed = ctx.home.pins().remove(&user)?;
            ctx.out.print(
                if removed {
                    format!("forgot the pinned key of {user}")
                } else {
                    format!("no key was pinned for {user}")
                },
                json!({ "user_id": user.to_string(), "removed": removed }),
            );
            Ok(())
        }
    }
}

/// Loads the master key, asking for the passphrase if it is protected.
pub(crate) fn master_key(ctx: &Ctx) -> Result<PrivateKey> {
    let passphrase = if ctx.home.master_is_protected()? {
        Some(ctx.passphrase("Passphrase of your master key", false)?)
    } else {
        None
    };
    Ok(ctx.home.master_key(passphrase.as_ref())?)
}

/// Publishes our identity and records the revision the server stored.
pub(crate) async fn publish(
    ctx: &Ctx,
    master: &PrivateKey,
    identity: &SignedIdentity,
) -> Result<u64, IdServerError> {
    let unreachable = |reason: String| IdServerError::Unreachable {
        server: "(unknown)".into(),
        reason,
    };
    let config = ctx.home.config().map_err(|e| unreachable(e.to_string()))?;
    let dialer = customer::dialer(master).map_err(|e| unreachable(e.to_string()))?;
    let revision = idserver::publish(&dialer, &config.id_server, identity).await?;
    let mut state = ctx.home.state().unwrap_or_default();
    state.published_revision = Some(revision);
    if let Err(e) = ctx.home.set_state(&state) {
        ctx.out
            .warn(format_args!("published, but cannot record it: {e}"));
    }
    Ok(revision)
}

fn show(ctx: &Ctx) -> Result<()> {
    let identity = ctx.home.identity()?;
    let config = ctx.home.config()?;
    let state = ctx.home.state()?;
    let document = identity.document();
    let protected = ctx.home.master_is_protected()?;
    let published = state
        .published_revision
        .is_some_and(|r| r >= document.revision);
    ctx.out.print(
        format!(
            "user id:     {}\nnode id:     {}\nmaster key:  {}-bit RSA{}\nrevision:    {}\nendpoints:   {}\nid server:   {}\npublished:   {}",
            document.user_id,
            document.node_id(),
            document.master_key.bits(),
            if protected { ", passphrase-protected" } else { "" },
            document.revision,
            if document.endpoints.is_empty() { "(none)".to_owned() } else { document.endpoints.join(", ") },
            config.id_server,
            if published { "yes" } else { "no (run `silt identity publish`)" },
        ),
        json!({
            "user_id": document.user_id.to_string(),
            "node_id": document.node_id().to_string(),
            "key_bits": document.master_key.bits(),
            "protected": protected,
            "revision": document.revision,
            "endpoints": document.endpoints,
            "id_server": config.id_server,
            "published": published,
        }),
    );
    Ok(())
}

fn backup(ctx: &Ctx, out: PathBuf) -> Result<()> {
    if out.exists() {
        bail!("{} already exists; refusing to overwrite it", out.display());
    }
    let identity = ctx.home.identity()?;
    let master = master_key(ctx)?;
    let passphrase = ctx.passphrase("Passphrase for the backup", true)?;
    identity::write_backup(&out, &identity, &master, &passphrase)
        .with_context(|| format!("cannot write the backup {}", out.display()))?;
    let document = identity.document();
    ctx.out.print(
        format!(
            "wrote the backup of {} to {}\nkeep it and its passphrase safe: together they are your identity",
            document.user_id,
            out.display()
        ),
        json!({ "user_id": document.user_id.to_string(), "node_id": document.node_id().to_string(), "file": out.display().to_string() }),
    );
    Ok(())
}

async fn restore(
    ctx: &Ctx,
    file: PathBuf,
    protect: bool,
    listen: SocketAddr,
    bootstrap: Vec<String>,
) -> Result<()> {
    ctx.home.ensure_empty()?;
    let passphrase = ctx.passphrase("Passphrase of the backup", false)?;
    let (identity, master) = identity::read_backup(&file, &passphrase)?;
    let document = identity.document();
    let options = InitOptions {
        user_id: document.user_id.clone(),
        id_server: document.user_id.idhost().server_addr(),
        bootstrap: bootstrap.clone(),
        listen,
    };
    ctx.home
        .install(&options, &identity, &master, protect.then_some(&passphrase))?;
    let mut human = format!(
        "restored {} (node id {})",
        document.user_id,
        document.node_id()
    );
    let mut report = json!({ "user_id": document.user_id.to_string(), "node_id": document.node_id().to_string() });
    // The identity is back whatever happens next; finding the suppliers is
    // a second step, which `silt suppliers recover` can repeat.
    if !bootstrap.is_empty() {
        let found = match customer::session::Session::open(ctx.home.clone(), master) {
            Ok(mut session) => super::suppliers::recover(&mut session).await,
            Err(e) => Err(e.into()),
        };
        match found {
            Ok((text, suppliers)) => {
                human = format!("{human}\n{text}");
                report["suppliers"] = suppliers;
            }
            Err(e) => {
                ctx.out.warn(format_args!(
                    "your suppliers were not found yet ({e:#}); try `silt suppliers recover` later"
                ));
                report["suppliers"] = serde_json::Value::Null;
            }
        }
    }
    ctx.out.print(human, report);
    Ok(())
}
