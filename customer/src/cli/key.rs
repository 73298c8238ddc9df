//! `silt key`: create, list, delete, export and import keys, and back them
//! up to and restore them from your own suppliers.
//!
//! Exports are PEM with `Silt-*:` header lines before the `BEGIN` line (which
//! OpenSSL skips), so an export carries its key ID and can be imported as is.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Subcommand;
use common::crypto::{PrivateKey, PublicKey};
use common::id::{Alias, KeyId};
use common::keystore::{KeyKind, KeyMeta, NewKey, Origin, Restored};
use customer::grant::AuditKind;
use customer::keybackup::LeaveOut;
use serde_json::json;

use super::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum KeyCommand {
    /// Create a key; without ALIAS a random `share_<32 hex>` one.
    Create {
        /// 3-50 of a-z0-9_-, starting with a letter.
        alias: Option<String>,
        /// A note for yourself.
        #[arg(long, default_value = "")]
        label: String,
        /// RSA size: 2048, 3072 or 4096.
        #[arg(long, default_value_t = common::crypto::DEFAULT_KEY_BITS)]
        size: usize,
    },
    /// List every key, created or received.
    List,
    /// Delete a key (never the master key).
    Delete {
        /// `alias$user@idhost`, or an alias of your own.
        key_id: String,
        /// Do not ask before deleting a private key.
        #[arg(long)]
        yes: bool,
    },
    /// Print a key: the public part, or with --private the private part.
    Export {
        /// `alias$user@idhost`, or an alias of your own.
        key_id: String,
        /// Print the private key (asks for confirmation unless --yes).
        #[arg(long)]
        private: bool,
        /// Do not ask before printing a private key.
        #[arg(long)]
        yes: bool,
    },
    /// Import a key from a file written by `silt key export` or any PKCS#8 /
    /// SubjectPublicKeyInfo PEM.
    Import {
        /// The PEM file.
        file: PathBuf,
        /// The key ID to store it under (needed when the file has no
        /// Silt-Key-Id header).
        #[arg(long = "as")]
        key_id: Option<String>,
        /// A note for yourself.
        #[arg(long)]
        label: Option<String>,
    },
    /// Check that USER holds the same key as you: the public key (a digest
    /// salted with a fresh nonce), or with --private the private key (a
    /// signature of the nonce). Their `silt daemon` must be running; it
    /// answers anyone about its master key and a key's owner about others.
    Audit {
        /// `alias$user@idhost`, an alias of your own, or `master$USER`.
        key_id: String,
        /// `user@idhost`.
        user: String,
        /// Audit the private key.
        #[arg(long)]
        private: bool,
    },
    /// Store a copy of every key but the master key on your suppliers,
    /// sealed like your own files (protected keys stay protected).
    Backup {
        /// Leave out keys that the newest backup holds and this home does
        /// not (without it, such a backup is refused).
        #[arg(long)]
        prune: bool,
    },
    /// Add the keys of the newest `silt key backup` on your suppliers that
    /// are not in this home; keys held here are never replaced.
    Restore,
}

pub(crate) async fn run(ctx: &Ctx, command: KeyCommand) -> Result<()> {
    // Every key command works on an initialised home.
    ctx.home.config()?;
    match command {
        KeyCommand::Create { alias, label, size } => create(ctx, alias, label, size),
        KeyCommand::List => list(ctx),
        KeyCommand::Delete { key_id, yes } => {
            let key_id = ctx.key_id(&key_id)?;
            let keystore = ctx.home.keystore()?;
            let (_, meta) = keystore.load_public(&key_id)?;
            if meta.kind == KeyKind::Private && !key_id.is_master() && !yes {
                confirm(
                    &format!(
                        "Delete the PRIVATE key {key_id}? Without it, nothing stored under it can be read again; `silt key export --private` keeps a copy."
                    ),
                    "delete a private key",
                    "nothing deleted",
                )?;
            }
            let meta = keystore.delete(&key_id)?;
            ctx.out.print(
                format!("deleted {}", meta.key_id),
                json!({ "deleted": meta.key_id.to_string() }),
            );
            Ok(())
        }
        KeyCommand::Export {
            key_id,
            private,
            yes,
        } => export(ctx, &key_id, private, yes),
        KeyCommand::Import {
            file,
            key_id,
            label,
        } => import(ctx, file, key_id, label),
        KeyCommand::Audit {
            key_id,
            user,
            private,
        } => audit(ctx, &key_id, &user, private).await,
        KeyCommand::Backup { prune } => backup(ctx, prune).await,
        KeyCommand::Restore => restore(ctx).await,
    }
}

async fn audit(ctx: &Ctx, key_id: &str, user: &str, private: bool) -> Result<()> {
    let key_id = ctx.key_id(key_id)?;
    let user: common::id::UserId = user
        .parse()
        .with_context(|| format!("{user:?} is not a user ID (user@idhost)"))?;
    let user = &user;
    let session = super::session(ctx)?;
    let (kind, half) = if private {
        (AuditKind::Private, "private")
    } else {
        (AuditKind::Public, "public")
    };
    let endpoint = session.audit_key(&key_id, user, kind).await?;
    ctx.out.print(
        format!("{user} holds the same {half} key {key_id} as you (their daemon at {endpoint})"),
        json!({ "key_id": key_id.to_string(), "user": user.to_string(), "private": private, "matches": true, "endpoint": endpoint }),
    );
    Ok(())
}

async fn backup(ctx: &Ctx, prune: bool) -> Result<()> {
    let session = super::session(ctx)?;
    let done = session
        .backup_keys(if prune {
            LeaveOut::All
        } else {
            LeaveOut::Nothing
        })
        .await?;
    ctx.out.print(
        format!(
            "stored {} key{} on your suppliers (backup version {}); `silt key restore` brings them back",
            done.keys,
            if done.keys == 1 { "" } else { "s" },
            done.version
        ),
        json!({ "keys": done.keys, "version": done.version }),
    );
    Ok(())
}

async fn restore(ctx: &Ctx) -> Result<()> {
    let session = super::session(ctx)?;
    let done = session.restore_keys().await?;
    let mut lines = vec![format!("key backup version {}:", done.version)];
    let mut entries = Vec::with_capacity(done.keys.len());
    let mut trouble = 0;
    for restored in &done.keys {
        let (key_id, outcome, note) = match restored {
            Restored::Added(meta) => (meta.key_id.to_string(), "added", String::new()),
            Restored::Held(meta) => (meta.key_id.to_string(), "held", String::new()),
            Restored::Differs(key_id) => {
                trouble += 1;
                (
                    key_id.to_string(),
                    "differs",
                    "another key is held under this ID; kept it".to_owned(),
                )
            }
            Restored::Invalid { key_id, reason } => {
                trouble += 1;
                (key_id.to_string(), "invalid", reason.clone())
            }
            Restored::Failed { key_id, reason } => {
                trouble += 1;
                (key_id.to_string(), "failed", reason.clone())
            }
        };
        lines.push(if note.is_empty() {
            format!("  {outcome:8} {key_id}")
        } else {
            format!("  {outcome:8} {key_id}: {note}")
        });
        entries.push(json!({ "key_id": key_id, "outcome": outcome, "note": note }));
    }
    ctx.out.print(
        lines.join("\n"),
        json!({ "version": done.version, "keys": entries }),
    );
    if trouble > 0 {
        bail!("{trouble} key(s) of the backup were not restored (see above)");
    }
    Ok(())
}

/// The alias of a new key: the one given (never `master`), or a random
/// `share_<32 hex>` one; and a check of its RSA size.
pub(crate) fn new_alias(alias: Option<String>, size: usize) -> Result<Alias> {
    let alias = match alias {
        Some(text) => {
            let alias: Alias = text.parse()?;
            if alias.is_master() {
                bail!("`master` is the identity key's alias; choose another");
            }
            alias
        }
        None => Alias::random_share(),
    };
    if !common::crypto::ALLOWED_KEY_BITS.contains(&size) {
        bail!("--size must be 2048, 3072 or 4096, not {size}");
    }
    Ok(alias)
}

fn create(ctx: &Ctx, alias: Option<String>, label: String, size: usize) -> Result<()> {
    let owner = ctx.home.config()?.user_id;
    let key_id = KeyId::new(new_alias(alias, size)?, owner);
    let keystore = ctx.home.keystore()?;
    if keystore.contains(&key_id) {
        bail!("a key {key_id} already exists");
    }
    let key = PrivateKey::generate(size)?;
    let meta = keystore.add_private(
        NewKey {
            key_id,
            label,
            epoch: 0,
            origin: Origin::Created,
        },
        &key,
        None,
    )?;
    ctx.out
        .print(format!("created {}", meta.key_id), meta_json(&meta));
    Ok(())
}

fn list(ctx: &Ctx) -> Result<()> {
    let listing = ctx.home.keystore()?.list()?;
    for problem in &listing.damaged {
        ctx.out.warn(problem);
    }
    let mut human = String::new();
    for meta in &listing.keys {
        human.push_str(&format!(
            "{}\n    {} {}-bit, {}, epoch {}, created {}{}\n",
            meta.key_id,
            match meta.kind {
                KeyKind::Private => "private",
                KeyKind::Public => "public ",
            },
            meta.bits,
            meta.origin,
            meta.epoch,
            super::date(meta.created_unix),
            if meta.label.is_empty() {
                String::new()
            } else {
                format!(", label {:?}", meta.label)
            },
        ));
    }
    if listing.keys.is_empty() {
        human.push_str("no keys (run `silt init` first)\n");
    }
    ctx.out.print(
        human.trim_end(),
        json!({
            "keys": listing.keys.iter().map(meta_json).collect::<Vec<_>>(),
            "damaged": listing.damaged.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

fn meta_json(meta: &KeyMeta) -> serde_json::Value {
    json!({
        "key_id": meta.key_id.to_string(),
        "kind": meta.kind,
        "label": meta.label,
        "created_unix": meta.created_unix,
        "epoch": meta.epoch,
        "origin": meta.origin.to_string(),
        "bits": meta.bits,
        "encrypted": meta.encrypted,
        "fingerprint": meta.fingerprint,
    })
}

fn export(ctx: &Ctx, key_id: &str, private: bool, yes: bool) -> Result<()> {
    let key_id = ctx.key_id(key_id)?;
    let keystore = ctx.home.keystore()?;
    let (public, meta) = keystore.load_public(&key_id)?;
    let pem = if private {
        if key_id.is_master() {
            bail!(
                "the master key never leaves this device unencrypted; use `silt identity backup --out FILE`"
            );
        }
        if !yes {
            confirm(
                &format!(
                    "Print the PRIVATE key {key_id}? Anyone who sees it can read the data it protects."
                ),
                "print a private key",
                "nothing printed",
            )?;
        }
        let (key, _) = keystore.load_private(&key_id, None)?;
        key.to_pkcs8_pem()?.to_string()
    } else {
        public.to_pem()?
    };
    let text = format!(
        "Silt-Key-Id: {key_id}\nSilt-Epoch: {}\nSilt-Label: {}\n{}",
        meta.epoch,
        meta.label.replace('\n', " "),
        pem
    );
    ctx.out.print(
        text.trim_end(),
        json!({ "key_id": key_id.to_string(), "private": private, "pem": pem, "epoch": meta.epoch, "label": meta.label }),
    );
    Ok(())
}

/// Asks `question` on the terminal; without one, refuses to `action`
/// unless the caller passed `--yes`.
pub(crate) fn confirm(question: &str, action: &str, refused: &str) -> Result<()> {
    if !std::io::stdin().is_terminal() {
        bail!("refusing to {action} without confirmation; pass --yes");
    }
    eprint!("{question}\nType yes to continue: ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    if answer.trim() != "yes" {
        bail!("not confirmed; {refused}");
    }
    Ok(())
}

/// What an export file says about its key.
#[derive(Debug, Default)]
struct Headers {
    key_id: Option<String>,
    epoch: Option<u64>,
    label: Option<String>,
}

fn import(ctx: &Ctx, file: PathBuf, key_id: Option<String>, label: Option<String>) -> Result<()> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(&file)
            .with_context(|| format!("cannot read {}", file.display()))?,
    );
    let begin = text
        .find("-----BEGIN ")
        .with_context(|| format!("{} holds no PEM key", file.display()))?;
    let mut headers = Headers::default();
    for line in text[..begin].lines() {
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            match name.trim() {
                "Silt-Key-Id" => headers.key_id = Some(value.to_owned()),
                "Silt-Epoch" => {
                    headers.epoch =
                        Some(value.parse().context("Silt-Epoch header is not a number")?);
                }
                "Silt-Label" => headers.label = Some(value.to_owned()),
                _ => {}
            }
        }
    }
    let key_id_text = key_id
        .or(headers.key_id)
        .context("the file names no key; give one with --as alias$user@idhost")?;
    let key_id = ctx.key_id(&key_id_text)?;
    let pem = &text[begin..];
    let new = NewKey {
        key_id: key_id.clone(),
        label: label.or(headers.label).unwrap_or_default(),
        epoch: headers.epoch.unwrap_or(0),
        origin: Origin::Imported,
    };
    let keystore = ctx.home.keystore()?;
    let meta = if pem.starts_with("-----BEGIN PUBLIC KEY-----") {
        keystore.add_public(new, &PublicKey::from_pem(pem)?)?
    } else if pem.starts_with("-----BEGIN PRIVATE KEY-----") {
        if key_id.is_master() {
            bail!("master keys are restored with `silt identity restore`, not imported");
        }
        keystore.add_private(new, &PrivateKey::from_pkcs8_pem(pem)?, None)?
    } else {
        bail!(
            "{} holds an unsupported PEM block; expected PUBLIC KEY or PRIVATE KEY (PKCS#8)",
            file.display()
        );
    };
    ctx.out
        .print(format!("imported {}", meta.key_id), meta_json(&meta));
    Ok(())
}
