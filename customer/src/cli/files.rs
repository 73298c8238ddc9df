//! `silt put`, `get`, `ls` and `rm`.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use common::manifest::ObjectId;
use customer::pipeline::NormalPath;
use customer::remote::RemotePath;
use customer::session::Session;
use customer::transfer::{Progress, catalog, newest, next_versions};
use futures_util::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;

use super::Ctx;

/// Files transferred at once by `put` and `get` of a directory.
const FILES_IN_FLIGHT: usize = 8;

/// A progress bar on a terminal, nothing otherwise.
fn progress(ctx: &Ctx, total: u64, label: &str) -> (Progress, Option<ProgressBar>) {
    if ctx.out.is_quiet() || !std::io::stderr().is_terminal() {
        return (Arc::new(|_| {}), None);
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(label.to_owned());
    let handle = bar.clone();
    (Arc::new(move |n| handle.inc(n)), Some(bar))
}

/// Files under `local` (itself if a file), with their paths relative to it.
fn walk(local: &Path) -> Result<Vec<(PathBuf, String)>> {
    let meta =
        std::fs::metadata(local).with_context(|| format!("cannot read {}", local.display()))?;
    if meta.is_file() {
        return Ok(vec![(local.to_owned(), String::new())]);
    }
    if !meta.is_dir() {
        bail!("{} is neither a file nor a directory", local.display());
    }
    let mut out = Vec::new();
    let mut stack = vec![(local.to_owned(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .with_context(|| format!("cannot read {}", dir.display()))?
            .collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            let rel = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push((entry.path(), rel));
            } else if kind.is_file() {
                out.push((entry.path(), rel));
            }
        }
    }
    out.sort_by(|a, b| a.1.cmp(&b.1));
    Ok(out)
}

pub(crate) async fn put(ctx: &Ctx, local: PathBuf, remote: Option<String>) -> Result<()> {
    let mut session = super::session(ctx)?;
    let me = session.user().clone();
    let files = walk(&local)?;
    let default_name = local
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .context("give the remote path explicitly")?;
    let target = RemotePath::parse(remote.as_deref().unwrap_or(&default_name), &me)?;
    if target.version.is_some() {
        bail!("a version is chosen by the upload; drop the #N");
    }
    let base = if target.path.is_empty() {
        default_name
    } else {
        target.path.clone()
    };
    let keys = session.location_keys(&target.location)?;
    session.enter(&keys).await?;
    // The owner and members check our signature on what we write with the
    // key our identity server holds.
    if let Err(e) = session.ensure_published().await {
        ctx.out
            .warn(format_args!("could not publish your identity: {e}"));
    }
    for missed in session.register_location(&keys).await? {
        ctx.out.warn(format_args!(
            "the key of {} is not registered there yet ({missed}); members cannot read that position",
            keys.key_id
        ));
    }
    let (existing, _) = session.versions(&keys, None).await?;
    let next = next_versions(&existing);
    let total: u64 = files
        .iter()
        .map(|(p, _)| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();
    let (report, bar) = progress(ctx, total, "put");
    let mut jobs = Vec::with_capacity(files.len());
    for (path, rel) in &files {
        let remote_path = if rel.is_empty() {
            base.clone()
        } else {
            format!("{base}/{rel}")
        };
        let normal = NormalPath::new(&remote_path)?;
        let object: ObjectId = keys.secrets.object_id(&normal);
        let version = next.get(&object).copied().unwrap_or(1);
        jobs.push((path, normal, version));
    }
    // Several files at once: small files are bound by round trips and one
    // RSA signature each, not by bandwidth.
    let (session_ref, keys_ref) = (&session, &keys);
    let mut uploads = futures_util::stream::iter(jobs.into_iter().map(|(path, normal, version)| {
        let report = report.clone();
        async move {
            let uploaded = session_ref
                .upload(keys_ref, path, &normal, version, report)
                .await
                .with_context(|| format!("cannot upload {}", path.display()))?;
            Ok::<_, anyhow::Error>(json!({ "path": normal.to_string(), "version": uploaded.version, "size": uploaded.size }))
        }
    }))
    .buffer_unordered(FILES_IN_FLIGHT);
    let mut done = Vec::new();
    while let Some(result) = uploads.next().await {
        done.push(result?);
    }
    drop(uploads);
    done.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let human = if done.len() == 1 {
        format!(
            "stored {} ({total} bytes) as version {}",
            done[0]["path"].as_str().unwrap_or(""),
            done[0]["version"]
        )
    } else {
        format!("stored {} files ({total} bytes) under {base}", done.len())
    };
    ctx.out.print(
        human,
        json!({ "location": keys.key_id.to_string(), "files": done }),
    );
    Ok(())
}

pub(crate) async fn get(ctx: &Ctx, remote: String, local: Option<PathBuf>) -> Result<()> {
    let mut session = super::session(ctx)?;
    let target = RemotePath::parse(&remote, session.user())?;
    let keys = session.location_keys(&target.location)?;
    session.enter(&keys).await?;
    // One object, if the path names one; otherwise a directory prefix.
    let single = if target.path.is_empty() {
        None
    } else {
        let normal = target.normal()?;
        let object = keys.secrets.object_id(&normal);
        let (versions, unreachable) = session.versions(&keys, Some(object)).await?;
        let chosen = match target.version {
            Some(v) => versions.get(&(object, v)).cloned(),
            None => {
                let chosen = newest(versions.values()).cloned();
                if let Some(chosen) = &chosen
                    && let Some(last) = versions.values().map(|v| v.manifest.version).max()
                    && last > chosen.manifest.version
                {
                    ctx.out.warn(format_args!(
                        "{}: version {last} reached too few suppliers to be read; \
                         fetching version {}",
                        target.path, chosen.manifest.version
                    ));
                }
                chosen
            }
        };
        match (chosen, target.version) {
            (Some(version), _) => Some((normal, version, unreachable)),
            (None, Some(v)) if !versions.is_empty() => {
                bail!(
                    "{} has no version {v} (versions: {:?})",
                    target.path,
                    versions.keys().map(|k| k.1).collect::<Vec<_>>()
                )
            }
            _ => None,
        }
    };
    if let Some((normal, version, unreachable)) = single {
        let name = normal
            .as_str()
            .rsplit('/')
            .next()
            .unwrap_or(normal.as_str())
            .to_owned();
        let dest = match local {
            Some(path) if path.is_dir() => path.join(&name),
            Some(path) => path,
            None => PathBuf::from(&name),
        };
        let data = u64::from(version.manifest.scheme.data);
        let size = version
            .manifest
            .blocks
            .iter()
            .map(|b| b.fragment_size.saturating_mul(data))
            .sum::<u64>();
        let (report, bar) = progress(ctx, size, "get");
        let metadata = session
            .download(&keys, &version, &dest, &unreachable, report)
            .await
            .with_context(|| format!("cannot download {remote}"))?;
        if let Some(bar) = bar {
            bar.finish_and_clear();
        }
        ctx.out.print(
            format!("wrote {} ({} bytes, version {})", dest.display(), metadata.size, version.manifest.version),
            json!({ "path": normal.to_string(), "file": dest.display().to_string(), "size": metadata.size, "version": version.manifest.version }),
        );
        return Ok(());
    }
    if target.version.is_some() {
        bail!("no file {}", target.path);
    }
    let (versions, unreachable) = session.versions(&keys, None).await?;
    let prefix = if target.path.is_empty() {
        String::new()
    } else {
        format!("{}/", target.path)
    };
    let chosen: Vec<_> = catalog(&keys, &versions)?
        .into_iter()
        .filter(|listed| listed.entry.path.starts_with(&prefix))
        .collect();
    if chosen.is_empty() {
        bail!(
            "no file or directory {}",
            if target.path.is_empty() {
                "in this location"
            } else {
                &target.path
            }
        );
    }
    let root = local.unwrap_or_else(|| {
        PathBuf::from(
            target
                .path
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty())
                .unwrap_or("."),
        )
    });
    let total: u64 = chosen.iter().map(|l| l.entry.size).sum();
    let (report, bar) = progress(ctx, total, "get");
    let (session_ref, keys_ref, unreachable_ref, root_ref) = (&session, &keys, &unreachable, &root);
    let prefix_len = prefix.len();
    let mut downloads = futures_util::stream::iter(chosen.into_iter().map(|listed| {
        let report = report.clone();
        async move {
            let dest = root_ref.join(&listed.entry.path[prefix_len..]);
            session_ref
                .download_decoded(keys_ref, &listed.version, listed.decoder, &dest, unreachable_ref, report)
                .await
                .with_context(|| format!("cannot download {}", listed.entry.path))?;
            Ok::<_, anyhow::Error>(json!({ "path": listed.entry.path, "file": dest.display().to_string(), "size": listed.entry.size }))
        }
    }))
    .buffer_unordered(FILES_IN_FLIGHT);
    let mut written = Vec::new();
    while let Some(result) = downloads.next().await {
        written.push(result?);
    }
    drop(downloads);
    written.sort_by(|a, b| a["path"].as_str().cmp(&b["path"].as_str()));
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    ctx.out.print(
        format!(
            "wrote {} files ({total} bytes) to {}",
            written.len(),
            root.display()
        ),
        json!({ "files": written }),
    );
    Ok(())
}

pub(crate) async fn ls(ctx: &Ctx, location: Option<String>) -> Result<()> {
    let mut session = super::session(ctx)?;
    let target = RemotePath::parse(location.as_deref().unwrap_or(""), session.user())?;
    let keys = session.location_keys(&target.location)?;
    session.enter(&keys).await?;
    let (versions, unreachable) = session.versions(&keys, None).await?;
    if !unreachable.is_empty() {
        ctx.out.warn(format_args!(
            "supplier positions {unreachable:?} did not answer; the list may be incomplete"
        ));
    }
    let prefix = target.path.clone();
    let entries: Vec<_> = catalog(&keys, &versions)?
        .into_iter()
        .map(|listed| listed.entry)
        .filter(|e| {
            prefix.is_empty() || e.path == prefix || e.path.starts_with(&format!("{prefix}/"))
        })
        .collect();
    let mut human = String::new();
    for entry in &entries {
        human.push_str(&format!(
            "{:>12}  {}  v{:<3} {}\n",
            entry.size,
            super::date(entry.mtime_unix),
            entry.version,
            entry.path
        ));
    }
    if entries.is_empty() {
        human.push_str("(empty)\n");
    }
    ctx.out.print(human.trim_end(), json!({ "location": keys.key_id.to_string(), "files": entries, "unreachable": unreachable }));
    Ok(())
}

pub(crate) async fn rm(ctx: &Ctx, remote: String) -> Result<()> {
    let session: Session = super::session(ctx)?;
    let target = RemotePath::parse(&remote, session.user())?;
    let keys = session.location_keys(&target.location)?;
    let normal = target.normal()?;
    session.remove(&keys, &normal, target.version).await?;
    ctx.out.print(
        format!("removed {target}"),
        json!({ "removed": normal.to_string(), "version": target.version }),
    );
    Ok(())
}
