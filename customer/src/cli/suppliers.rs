//! `silt suppliers`: hire suppliers and see how they are.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use bytesize::ByteSize;
use clap::Subcommand;
use customer::pipeline::{default_scheme, parse_scheme};
use customer::replace::{Options, Unreadable};
use customer::session::{CALL_TIMEOUT, Session};
use customer::suppliers::SupplierSet;
use customer::transfer::Progress;
use indicatif::{ProgressBar, ProgressStyle};
use proto::storage::v1::OfferRequest;
use serde_json::json;

use super::Ctx;

#[derive(Debug, Subcommand)]
pub(crate) enum SuppliersCommand {
    /// Hire suppliers: one per position, in the order given.
    Hire {
        /// A supplier's HOST:PORT (repeatable; DNS names work).
        #[arg(long = "supplier")]
        suppliers: Vec<String>,
        /// How many suppliers to find through the DHT (without --supplier).
        #[arg(long)]
        count: Option<u32>,
        /// Erasure scheme k+m (default: by supplier count: 2 → 1+1, 4 → 2+2, 6 → 4+2, 8 → 5+3).
        #[arg(long)]
        ecc: Option<String>,
        /// Storage to ask each supplier for.
        #[arg(long, default_value = "1 GiB")]
        quota: ByteSize,
    },
    /// List the hired suppliers and whether they answer.
    List,
    /// Find your suppliers again after `silt identity restore`: from the
    /// supplier list your master key signed in the DHT (seeds: bootstrap
    /// in config.toml).
    Recover,
    /// Replace the supplier at a position: hire another and rebuild onto it,
    /// from the other positions, every file version the position held.
    Replace {
        /// The position to replace (see `silt suppliers list`).
        position: u32,
        /// The new supplier's HOST:PORT; without it, one outside the set is
        /// found through the DHT.
        #[arg(long)]
        supplier: Option<String>,
        /// Storage to ask the new supplier for.
        #[arg(long, default_value = "1 GiB")]
        quota: ByteSize,
        /// Leave out versions that too few suppliers answer with now,
        /// instead of stopping; the position's fragments of those are lost.
        #[arg(long)]
        skip_unreadable: bool,
        /// At the end, release the old supplier if it answers and nothing
        /// was left out: it deletes everything it holds for you, in every
        /// location, including any whose key is not in this home.
        #[arg(long)]
        release_old: bool,
    },
}

pub(crate) async fn run(ctx: &Ctx, command: SuppliersCommand) -> Result<()> {
    match command {
        SuppliersCommand::Hire {
            suppliers,
            count,
            ecc,
            quota,
        } => hire(ctx, suppliers, count, ecc, quota).await,
        SuppliersCommand::List => list(ctx).await,
        SuppliersCommand::Recover => {
            let mut session = super::session(ctx)?;
            let (human, json) = recover(&mut session).await?;
            ctx.out.print(human, json);
            Ok(())
        }
        SuppliersCommand::Replace {
            position,
            supplier,
            quota,
            skip_unreadable,
            release_old,
        } => {
            let options = Options {
                unreadable: if skip_unreadable {
                    Unreadable::Skip
                } else {
                    Unreadable::Stop
                },
                release_old,
            };
            replace(ctx, position, supplier, quota, options).await
        }
    }
}

async fn replace(
    ctx: &Ctx,
    position: u32,
    supplier: Option<String>,
    quota: ByteSize,
    options: Options,
) -> Result<()> {
    let mut session = super::session(ctx)?;
    let set = session.suppliers()?.clone();
    if position as usize >= set.suppliers.len() {
        bail!(
            "there is no position {position}: the suppliers are at 0 to {}",
            set.suppliers.len().saturating_sub(1)
        );
    }
    let addr = match supplier {
        Some(addr) => addr,
        None => {
            let current: Vec<_> = set.suppliers.iter().map(|e| e.node_id).collect();
            let found = session.find_suppliers_except(1, &current).await.map_err(|e| {
                anyhow::anyhow!(
                    "no supplier outside the set was found through the DHT ({e}); name one with --supplier HOST:PORT"
                )
            })?;
            match found.into_iter().next() {
                Some((_, addr)) => addr,
                None => bail!("no supplier outside the set was found through the DHT"),
            }
        }
    };
    let (report, bar) = rebuild_progress(ctx);
    let result = session
        .replace_supplier(position, &addr, quota.as_u64(), options, report)
        .await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let done = result?;
    if let Err(e) = &done.published {
        ctx.out.warn(format_args!(
            "could not publish the supplier list in the DHT: {e}"
        ));
    }
    for skipped in &done.rebuilt.skipped {
        ctx.out.warn(format_args!("left out: {skipped}"));
    }
    let human = format!(
        "position {position}: {} ({}) replaced by {} ({})\n\
         stored {} versions ({}) in {} locations; {} were there already, {} removed since\n\
         old supplier {}",
        done.old.addr,
        done.old.node_id.fmt_short(),
        done.new.addr,
        done.new.node_id.fmt_short(),
        done.rebuilt.versions,
        ByteSize::b(done.rebuilt.bytes),
        done.locations,
        done.rebuilt.already,
        done.rebuilt.removed,
        if done.released {
            "released"
        } else if done.old.node_id == done.new.node_id {
            "is the new one (a repair)"
        } else if !options.release_old {
            "keeps its copy and your contract (see --release-old)"
        } else if done.rebuilt.skipped.is_empty() {
            "could not be released (see the log)"
        } else {
            "kept, since versions were left out"
        },
    );
    ctx.out.print(
        &human,
        json!({
            "position": position,
            "old": done.old,
            "new": done.new,
            "locations": done.locations,
            "versions_rebuilt": done.rebuilt.versions,
            "versions_present": done.rebuilt.already,
            "versions_removed": done.rebuilt.removed,
            "bytes_rebuilt": done.rebuilt.bytes,
            "skipped": done.rebuilt.skipped,
            "released": done.released,
            "published_to": done.published.ok(),
        }),
    );
    Ok(())
}

/// A byte counter on a terminal, nothing otherwise.
fn rebuild_progress(ctx: &Ctx) -> (Progress, Option<ProgressBar>) {
    if ctx.out.is_quiet() || !std::io::stderr().is_terminal() {
        return (Arc::new(|_| {}), None);
    }
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("rebuilding {spinner} {bytes} {bytes_per_sec}")
    {
        bar.set_style(style);
    }
    bar.enable_steady_tick(Duration::from_millis(200));
    let handle = bar.clone();
    (Arc::new(move |n| handle.inc(n)), Some(bar))
}

async fn hire(
    ctx: &Ctx,
    addrs: Vec<String>,
    count: Option<u32>,
    ecc: Option<String>,
    quota: ByteSize,
) -> Result<()> {
    if addrs.is_empty() && count.is_none() {
        bail!(
            "name the suppliers with --supplier HOST:PORT (repeatable), or find them with --count N"
        );
    }
    if let Some(count) = count
        && !addrs.is_empty()
        && count as usize != addrs.len()
    {
        bail!(
            "--count {count} does not match the {} suppliers given",
            addrs.len()
        );
    }
    if SupplierSet::load(ctx.home.dir())?.is_some() {
        bail!("suppliers are already hired (see `silt suppliers list`)");
    }
    let mut session = super::session(ctx)?;
    let addrs = match (addrs.is_empty(), count) {
        (true, Some(count)) => {
            if count == 0 || count > 64 {
                bail!("--count must be 1 to 64");
            }
            session
                .find_suppliers(count as usize)
                .await?
                .into_iter()
                .map(|(_, addr)| addr)
                .collect()
        }
        _ => addrs,
    };
    let n = u32::try_from(addrs.len())?;
    let scheme = match &ecc {
        Some(text) => parse_scheme(text, n)?,
        None => default_scheme(n)?,
    };
    let entries = session.hire(&addrs, quota.as_u64()).await?;
    let set = SupplierSet {
        data: scheme.data,
        parity: scheme.parity,
        suppliers: entries,
    };
    set.save(ctx.home.dir())?;
    session.set_suppliers(set.clone());
    // Publish the new list so others can find our data.
    let published = match session.publish_suppliers().await {
        Ok(stored) => Some(stored),
        Err(e) => {
            ctx.out.warn(format_args!(
                "could not publish the supplier list in the DHT: {e}"
            ));
            None
        }
    };
    let mut human = format!(
        "hired {} suppliers, scheme {scheme}, {quota} each\n",
        set.suppliers.len()
    );
    for entry in &set.suppliers {
        human.push_str(&format!(
            "  position {}: {} ({})\n",
            entry.position,
            entry.addr,
            entry.node_id.fmt_short()
        ));
    }
    ctx.out.print(
        human.trim_end(),
        json!({
            "scheme": scheme.to_string(),
            "quota_bytes": quota.as_u64(),
            "suppliers": set.suppliers,
            "published_to": published,
        }),
    );
    Ok(())
}

/// Recovers our supplier set from the DHT and says where it is and which
/// suppliers answer: the report of `silt suppliers recover`, also given by
/// `silt identity restore --bootstrap`.
pub(crate) async fn recover(session: &mut Session) -> Result<(String, serde_json::Value)> {
    let set = session.recover_suppliers().await?;
    let mut human = format!(
        "found your {} suppliers (scheme {}) in the DHT\n",
        set.suppliers.len(),
        set.scheme()
    );
    let mut rows = Vec::new();
    for entry in &set.suppliers {
        let online = probe(session, entry.position).await.is_ok();
        human.push_str(&format!(
            "  position {}: {} ({}) {}\n",
            entry.position,
            entry.addr,
            entry.node_id.fmt_short(),
            if online { "online" } else { "offline" }
        ));
        rows.push(json!({
            "position": entry.position,
            "addr": entry.addr,
            "node_id": entry.node_id.to_string(),
            "online": online,
        }));
    }
    human.push_str("your keys other than the master key: `silt key restore`");
    Ok((
        human,
        json!({ "scheme": set.scheme().to_string(), "suppliers": rows }),
    ))
}

async fn list(ctx: &Ctx) -> Result<()> {
    let session = super::session(ctx)?;
    let set = session.suppliers()?.clone();
    let mut rows = Vec::new();
    let mut human = format!("scheme {}\n", set.scheme());
    for entry in &set.suppliers {
        let started = Instant::now();
        let health = probe(&session, entry.position).await;
        let latency = started.elapsed();
        let (status, detail) = match &health {
            Ok(available) => ("online", format!("{} free", ByteSize::b(*available))),
            Err(e) => ("offline", e.to_string()),
        };
        human.push_str(&format!(
            "  position {}: {} ({}) {status}, {} ms, {detail}\n",
            entry.position,
            entry.addr,
            entry.node_id.fmt_short(),
            latency.as_millis()
        ));
        rows.push(json!({
            "position": entry.position,
            "addr": entry.addr,
            "node_id": entry.node_id.to_string(),
            "online": health.is_ok(),
            "latency_ms": latency.as_millis() as u64,
            "detail": detail,
        }));
    }
    ctx.out.print(
        human.trim_end(),
        json!({ "scheme": set.scheme().to_string(), "suppliers": rows }),
    );
    Ok(())
}

async fn probe(session: &Session, position: u32) -> Result<u64> {
    let mut client = session.client(position).await?;
    let mut request = tonic::Request::new(OfferRequest { requested_bytes: 0 });
    request.set_timeout(CALL_TIMEOUT.min(Duration::from_secs(5)));
    Ok(client.offer(request).await?.into_inner().available_bytes)
}

/// `silt status`.
pub(crate) async fn status(ctx: &Ctx) -> Result<()> {
    let session = super::session(ctx)?;
    let identity = session.identity().document().clone();
    let published = ctx
        .home
        .state()?
        .published_revision
        .is_some_and(|r| r >= identity.revision);
    let mut human = format!(
        "user:      {}\nnode id:   {}\npublished: {}\n",
        identity.user_id,
        identity.node_id(),
        if published { "yes" } else { "no" }
    );
    let mut suppliers = Vec::new();
    match session.suppliers() {
        Ok(set) => {
            human.push_str(&format!(
                "suppliers: {} (scheme {})\n",
                set.suppliers.len(),
                set.scheme()
            ));
            for entry in set.suppliers.clone() {
                let online = probe(&session, entry.position).await.is_ok();
                human.push_str(&format!(
                    "  position {}: {} {}\n",
                    entry.position,
                    entry.addr,
                    if online { "online" } else { "offline" }
                ));
                suppliers.push(
                    json!({ "position": entry.position, "addr": entry.addr, "online": online }),
                );
            }
        }
        Err(_) => human.push_str("suppliers: none hired\n"),
    }
    let (yours, given): (Vec<_>, Vec<_>) = ctx
        .home
        .keystore()?
        .list()?
        .keys
        .into_iter()
        .filter(|meta| meta.kind == common::keystore::KeyKind::Private && !meta.key_id.is_master())
        .partition(|meta| meta.key_id.owner() == session.user());
    human.push_str(&format!(
        "shares:    {} yours, {} shared with you (silt share list)\n",
        yours.len(),
        given.len()
    ));
    let daemon = match session.own_daemon().await {
        None => {
            human.push_str("daemon:    no address advertised (see `silt init --listen`)\n");
            json!({ "running": false, "endpoint": null })
        }
        Some(Ok(endpoint)) => {
            human.push_str(&format!("daemon:    running at {endpoint}\n"));
            json!({ "running": true, "endpoint": endpoint })
        }
        Some(Err(reason)) => {
            human.push_str(&format!("daemon:    not running ({reason})\n"));
            json!({ "running": false, "endpoint": session.identity().document().endpoints.first(), "error": reason })
        }
    };
    let dht = match session.dht().await {
        Ok(handle) => {
            let contacts = handle.stats().await.map(|s| s.contacts).unwrap_or(0);
            let listed = session.suppliers_of(session.user()).await.ok();
            human.push_str(&format!(
                "dht:       joined, {contacts} contacts; our supplier list {}\n",
                match &listed {
                    Some(list) => format!("found ({} suppliers)", list.suppliers.len()),
                    None => "not found".to_owned(),
                }
            ));
            json!({ "joined": true, "contacts": contacts, "supplier_list_found": listed.is_some() })
        }
        Err(e) => {
            human.push_str(&format!("dht:       not joined ({e})\n"));
            json!({ "joined": false, "error": e.to_string() })
        }
    };
    ctx.out.print(
        human.trim_end(),
        json!({
            "user_id": identity.user_id.to_string(),
            "node_id": identity.node_id().to_string(),
            "published": published,
            "suppliers": suppliers,
            "shares": { "yours": yours.len(), "shared_with_you": given.len() },
            "dht": dht,
            "daemon": daemon,
        }),
    );
    Ok(())
}
