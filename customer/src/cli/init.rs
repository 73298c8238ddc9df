//! `silt init`: make the master key and the signed identity, then publish.

use std::net::SocketAddr;

use anyhow::{Result, bail};
use clap::Args;
use common::id::{IdHost, UserId, UserName};
use customer::home::InitOptions;
use customer::idserver::IdServerError;
use serde_json::json;

use super::Ctx;

#[derive(Debug, Args)]
pub(crate) struct InitArgs {
    /// Your user name: 3-20 of a-z0-9_-, starting with a letter.
    #[arg(long)]
    name: String,
    /// The identity server that will hold your identity, HOST[:PORT]
    /// (default port 7700). Your user ID is NAME@HOST.
    #[arg(long = "id-server")]
    id_server: String,
    /// DHT seed HOST:PORT (repeatable).
    #[arg(long)]
    bootstrap: Vec<String>,
    /// RSA size of the master key: 2048, 3072 or 4096.
    #[arg(long, default_value_t = common::crypto::DEFAULT_KEY_BITS)]
    key_size: usize,
    /// Where `silt daemon` will listen.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Protect the master key with a passphrase.
    #[arg(long)]
    protect: bool,
}

pub(crate) async fn run(ctx: &Ctx, args: InitArgs) -> Result<()> {
    // Check everything before making a key.
    let name: UserName = args.name.parse()?;
    let idhost = IdHost::from_server_addr(&args.id_server)?;
    let user_id = UserId::new(name, idhost.clone());
    if !common::crypto::ALLOWED_KEY_BITS.contains(&args.key_size) {
        bail!(
            "--key-size must be 2048, 3072 or 4096, not {}",
            args.key_size
        );
    }
    ctx.home.ensure_empty()?;
    let passphrase = if args.protect {
        Some(ctx.passphrase("Passphrase for the new master key", true)?)
    } else {
        None
    };
    let options = InitOptions {
        user_id: user_id.clone(),
        id_server: idhost.server_addr(),
        bootstrap: args.bootstrap,
        listen: args.listen,
    };
    let identity = ctx
        .home
        .init(&options, args.key_size, passphrase.as_ref())?;
    let master = ctx.home.master_key(passphrase.as_ref())?;
    let node_id = identity.document().node_id();
    let published = match super::identity::publish(ctx, &master, &identity).await {
        Ok(revision) => Some(revision),
        Err(IdServerError::Taken(user)) => {
            ctx.home.discard_new_identity()?;
            bail!(
                "the name {user} is already taken on its identity server by another key; nothing was kept, choose another name"
            );
        }
        Err(e @ IdServerError::Unreachable { .. }) => {
            ctx.out.warn(format_args!(
                "{e}\nyour identity is saved locally; publish it later with `silt identity publish` \
                 (commands that use the network publish it too)"
            ));
            None
        }
        Err(e) => {
            ctx.out.warn(format_args!(
                "{e}\nyour identity is saved locally; fix the problem and run `silt identity publish`"
            ));
            None
        }
    };
    let human = format!(
        "created identity {user_id}\nnode id:    {node_id}\nmaster key: {}-bit RSA{}\n{}",
        args.key_size,
        if args.protect {
            ", passphrase-protected"
        } else {
            ""
        },
        match published {
            Some(revision) => format!(
                "published to {} (revision {revision})",
                idhost.server_addr()
            ),
            None => "not published yet".to_owned(),
        }
    );
    ctx.out.print(
        human,
        json!({
            "user_id": user_id.to_string(),
            "node_id": node_id.to_string(),
            "key_bits": args.key_size,
            "protected": args.protect,
            "published": published.is_some(),
            "published_revision": published,
            "home": ctx.home.dir().display().to_string(),
        }),
    );
    Ok(())
}
