//! `silt share`: create, list, grant and delete shares.
//!
//! A share is a location with a key of its own, `alias$owner`. Its data
//! lives on the owner's suppliers, which serve it to whoever proves they
//! hold its private key. `silt share grant` hands that key to another
//! user's daemon; `silt key export --private` and `silt key import` do it by
//! hand. See `docs/design/sharing.md`.

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use common::crypto::PrivateKey;
use common::id::{KeyId, UserId};
use common::keystore::{KeyKind, KeyMeta, NewKey, Origin};
use customer::keybackup::LeaveOut;
use customer::members::Members;
use serde_json::json;

use super::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum ShareCommand {
    /// Create a share: a new key (without ALIAS a random `share_<32 hex>`)
    /// registered with the suppliers you hired. Given the ALIAS of a share
    /// you created before, registers that key again with suppliers that
    /// missed it (--label and --size apply to new keys only).
    Create {
        /// 3-50 of a-z0-9_-, starting with a letter.
        alias: Option<String>,
        /// A note for yourself.
        #[arg(long, default_value = "")]
        label: String,
        /// RSA size of a new key: 2048, 3072 or 4096.
        #[arg(long, default_value_t = common::crypto::DEFAULT_KEY_BITS)]
        size: usize,
    },
    /// List the shares you created and those whose key you were given.
    List,
    /// Give a share's key to USER, whose `silt daemon` must be running.
    Grant {
        /// `alias$user@idhost`, or an alias of your own.
        share: String,
        /// `user@idhost`.
        user: String,
    },
    /// List whom you granted one of your shares to (keys handed over by
    /// hand are not known).
    Members {
        /// `alias$user@idhost`, or an alias of your own.
        share: String,
    },
    /// Delete one of your shares: every file in it on every supplier, then
    /// its key, so that nobody can use it any more.
    Delete {
        /// `alias$user@idhost`, or an alias of your own.
        share: String,
        /// Do not ask first.
        #[arg(long)]
        yes: bool,
    },
}

pub(crate) async fn run(ctx: &Ctx, command: ShareCommand) -> Result<()> {
    ctx.home.config()?;
    match command {
        ShareCommand::Create { alias, label, size } => create(ctx, alias, label, size).await,
        ShareCommand::List => list(ctx),
        ShareCommand::Grant { share, user } => grant(ctx, &share, &user).await,
        ShareCommand::Members { share } => members(ctx, &share),
        ShareCommand::Delete { share, yes } => delete(ctx, &share, yes).await,
    }
}

fn members(ctx: &Ctx, share: &str) -> Result<()> {
    let key_id = ctx.key_id(share)?;
    if key_id.owner() != &ctx.home.config()?.user_id {
        bail!(
            "{key_id} belongs to {}; only its owner knows whom it was granted to",
            key_id.owner()
        );
    }
    // A share of ours that exists.
    ctx.home.keystore()?.load_public(&key_id)?;
    let members = Members::new(ctx.home.dir()).of(&key_id)?;
    let mut human = format!(
        "{key_id}: granted to {} user{}",
        members.len(),
        if members.len() == 1 { "" } else { "s" }
    );
    for member in &members {
        human.push_str(&format!(
            "\n  {} (epoch {}, {})",
            member.user,
            member.epoch,
            super::date(member.granted_unix)
        ));
    }
    ctx.out.print(
        human,
        json!({ "share": key_id.to_string(), "members": members }),
    );
    Ok(())
}

async fn grant(ctx: &Ctx, share: &str, user: &str) -> Result<()> {
    let key_id = ctx.key_id(share)?;
    let user: UserId = user
        .parse()
        .with_context(|| format!("{user:?} is not a user ID (user@idhost)"))?;
    let session = super::session(ctx)?;
    let keys = session.location_keys(&key_id)?;
    let granted = session.grant(&keys, &user).await?;
    if let Some(reason) = &granted.unrecorded {
        ctx.out.warn(format_args!(
            "the grant is not in `silt share members`: {reason}"
        ));
    }
    ctx.out.print(
        format!(
            "granted {key_id} to {user} (their daemon at {}; {} files in the share)",
            granted.endpoint, granted.files
        ),
        json!({ "granted": key_id.to_string(), "user": user.to_string(), "endpoint": granted.endpoint, "files": granted.files }),
    );
    Ok(())
}

async fn delete(ctx: &Ctx, share: &str, yes: bool) -> Result<()> {
    let key_id = ctx.key_id(share)?;
    let me = ctx.home.config()?.user_id;
    if key_id.is_master() {
        bail!("the master location is not a share; remove its files with `silt rm`");
    }
    if key_id.owner() != &me {
        bail!(
            "{key_id} belongs to {}, and only its owner deletes it; to drop your copy of its key, run `silt key delete {key_id}`",
            key_id.owner()
        );
    }
    let keystore = ctx.home.keystore()?;
    // Before asking: the share must be one we can delete.
    keystore.load_public(&key_id)?;
    if !yes {
        super::key::confirm(
            &format!(
                "Delete the share {key_id}: every file in it, for you and everyone you gave its key to, and then the key?"
            ),
            "delete a share",
            "nothing deleted",
        )?;
    }
    let session = super::session(ctx)?;
    let keys = session.location_keys(&key_id)?;
    let deleted = session.delete_share(&keys).await?;
    keystore.delete(&key_id)?;
    if let Err(e) = Members::new(ctx.home.dir()).forget(&key_id) {
        ctx.out
            .warn(format_args!("could not forget its members: {e}"));
    }
    // So that a later `silt key restore` does not bring the key back.
    if let Err(e) = session
        .backup_keys(LeaveOut::These(std::slice::from_ref(&key_id)))
        .await
    {
        ctx.out.warn(format_args!(
            "your key backup still holds {key_id} ({e}); `silt key backup --prune` drops it"
        ));
    }
    ctx.out.print(
        format!(
            "deleted {key_id}: {} files removed from {} suppliers, and its key",
            deleted.files, deleted.suppliers
        ),
        json!({ "deleted": key_id.to_string(), "files": deleted.files, "suppliers": deleted.suppliers }),
    );
    Ok(())
}

async fn create(ctx: &Ctx, alias: Option<String>, label: String, size: usize) -> Result<()> {
    let me = ctx.home.config()?.user_id;
    let alias = super::key::new_alias(alias, size)?;
    let session = super::session(ctx)?;
    // Before a key is made: without suppliers there is nowhere to share from.
    let set = session.own_suppliers()?;
    let positions = set.suppliers.len();
    let key_id = KeyId::new(alias, me);
    let keystore = ctx.home.keystore()?;
    let (meta, created) = if keystore.contains(&key_id) {
        let (_, meta) = keystore.load_public(&key_id)?;
        if meta.kind != KeyKind::Private {
            bail!("only the public part of {key_id} is here; a share needs its private key");
        }
        (meta, false)
    } else {
        let key = PrivateKey::generate(size)?;
        let meta = keystore.add_private(
            NewKey {
                key_id: key_id.clone(),
                label,
                epoch: 0,
                origin: Origin::Created,
            },
            &key,
            None,
        )?;
        (meta, true)
    };
    let keys = session.location_keys(&key_id)?;
    let missed = session.register_location(&keys).await.with_context(|| {
        if created {
            format!(
                "created {key_id} but could not register it; once the suppliers answer, run `silt share create {}` again",
                key_id.alias()
            )
        } else {
            format!("could not register {key_id}")
        }
    })?;
    for error in &missed {
        ctx.out.warn(format_args!(
            "not registered there ({error}); run `silt share create {}` again later",
            key_id.alias()
        ));
    }
    let registered = positions - missed.len();
    // A new key is kept on our suppliers at once: without it, everything
    // in the share would be lost with this device.
    let backed_up = if created {
        match session.backup_keys(LeaveOut::Nothing).await {
            Ok(done) => Some(done.version),
            Err(e) => {
                ctx.out.warn(format_args!(
                    "{key_id} is not in your key backup yet ({e}); run `silt key backup`"
                ));
                None
            }
        }
    } else {
        None
    };
    ctx.out.print(
        format!(
            "{} {key_id}, registered with {registered} of {positions} suppliers\n\
             give it to someone you trust with `silt key export --private {key_id}`",
            if created { "created" } else { "registered" }
        ),
        json!({
            "key_id": key_id.to_string(),
            "created": created,
            "registered": registered,
            "suppliers": positions,
            "missed": missed.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "epoch": meta.epoch,
            "key_backup_version": backed_up,
        }),
    );
    Ok(())
}

fn list(ctx: &Ctx) -> Result<()> {
    let me = ctx.home.config()?.user_id;
    let listing = ctx.home.keystore()?.list()?;
    for problem in &listing.damaged {
        ctx.out.warn(problem);
    }
    let shares: Vec<&KeyMeta> = listing
        .keys
        .iter()
        .filter(|meta| meta.kind == KeyKind::Private && !meta.key_id.is_master())
        .collect();
    let mut human = String::new();
    for meta in &shares {
        let owner = meta.key_id.owner();
        human.push_str(&format!(
            "{}\n    {}, epoch {}, {}, since {}{}\n",
            meta.key_id,
            if owner == &me {
                "yours".to_owned()
            } else {
                format!("shared by {owner}")
            },
            meta.epoch,
            meta.origin,
            super::date(meta.created_unix),
            if meta.label.is_empty() {
                String::new()
            } else {
                format!(", label {:?}", meta.label)
            },
        ));
    }
    if shares.is_empty() {
        human.push_str("no shares (create one with `silt share create`)\n");
    }
    ctx.out.print(
        human.trim_end(),
        json!({
            "shares": shares.iter().map(|meta| json!({
                "key_id": meta.key_id.to_string(),
                "owner": meta.key_id.owner().to_string(),
                "mine": meta.key_id.owner() == &me,
                "epoch": meta.epoch,
                "origin": meta.origin.to_string(),
                "label": meta.label,
                "created_unix": meta.created_unix,
            })).collect::<Vec<_>>(),
            "damaged": listing.damaged.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}
