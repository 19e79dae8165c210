//! Helpers of `bench/queue.sh`, on the destination the `SWIFTDROP_*` settings describe:
//!
//! ```text
//! queue_bench load COUNT [SIZE] [CONCURRENCY]
//!     stores COUNT messages of SIZE bytes under cur/ as the filter names them (on object
//!     stores with their sha256 metadata); prints nothing
//! queue_bench bare [CONCURRENCY] [LIMIT]
//!     the reference: lists the first LIMIT messages of cur/ once, then moves each to
//!     processing/, reads it, and moves it to done/, CONCURRENCY at a time, with nothing
//!     around it (no lease, no metadata, no checks); prints "<messages> <seconds>"
//! ```
//!
//! The bare moves use plain HTTP for Swift (one `PUT` with `X-Copy-From`, one `DELETE`) and
//! plain file operations for a Maildir (`rename`, fsync of the file and both folders), not
//! swiftdrop's code. On a Maildir `load` writes plain files (setup, not measured).

use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use futures::stream::{self, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{Attribute, Attributes, PutOptions, PutPayload};
use sha2::{Digest, Sha256};
use swiftdrop::config::{Backend, Config};
use swiftdrop::store::Destination;
use swiftdrop::store::key::MessageKey;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = Config::load(None).map_err(|e| anyhow::anyhow!("{e}"))?;
    let dest_config = config
        .destinations
        .first()
        .context("no destination")?
        .clone();
    let destination = Destination::open(&dest_config).map_err(|e| anyhow::anyhow!("{e}"))?;
    destination
        .ensure_container()
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let number = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i)
            .map(|s| s.parse().context("a number"))
            .unwrap_or(Ok(default))
    };
    match args.first().map(String::as_str) {
        Some("load") => {
            load(
                &destination,
                number(1, 100)?,
                number(2, 1024)?,
                number(3, 16)?,
            )
            .await
        }
        Some("bare") => {
            let (moves, seconds) = bare(
                &dest_config.backend,
                &destination,
                number(1, 8)?,
                number(2, usize::MAX)?,
            )
            .await?;
            println!("{moves} {seconds:.3}");
            Ok(())
        }
        _ => {
            bail!("usage: queue_bench load COUNT [SIZE] [CONCURRENCY] | bare [CONCURRENCY] [LIMIT]")
        }
    }
}

/// A message of about `size` bytes that differs from every other.
fn message(i: usize, size: usize) -> Vec<u8> {
    let mut body = format!(
        "Return-Path: <bench@example.org>\r\nDelivered-To: ops@example.com\r\nSubject: bench {i}\r\nMessage-ID: <{i}.{}@example.org>\r\n\r\n",
        uuid::Uuid::new_v4().simple()
    )
    .into_bytes();
    while body.len() + 2 < size {
        body.extend_from_slice(b"x");
    }
    body.extend_from_slice(b"\r\n");
    body
}

async fn load(
    destination: &Destination,
    count: usize,
    size: usize,
    concurrency: usize,
) -> anyhow::Result<()> {
    if let Some(root) = destination.maildir_root() {
        // Setup, not what is measured: plain writes, one fsync of the folder at the end.
        let cur = root.join("cur");
        for i in 0..count {
            let body = message(i, size);
            let key = MessageKey::new("bench.test", body.len() as u64);
            std::fs::write(cur.join(key.file_name()), body)?;
        }
        std::fs::File::open(&cur)?.sync_all()?;
        return Ok(());
    }
    stream::iter(0..count)
        .map(|i| async move {
            let body = message(i, size);
            let key = MessageKey::new("bench.test", body.len() as u64);
            let mut options = PutOptions::default();
            if destination.remote {
                let sha: String = Sha256::digest(&body)
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect();
                let mut attributes = Attributes::new();
                attributes.insert(Attribute::Metadata("sha256".into()), sha.into());
                options.attributes = attributes;
            }
            destination
                .store
                .put_opts(&Path::from(key.cur_path()), PutPayload::from(body), options)
                .await
                .map(drop)
        })
        .buffer_unordered(concurrency)
        .try_collect::<Vec<()>>()
        .await?;
    Ok(())
}

/// The reference: what durability requires of any queue, with nothing around it (no lease,
/// no metadata, no checks): for each of the first `limit` messages of `cur/` (one listing),
/// two moves, `cur/` → `processing/` → `done/`, and a read between them, as a worker reads
/// the message it works on. A Maildir move is a rename with the fsyncs that make it durable
/// (the file, both folders); a Swift move is a server-side copy (`PUT` + `X-Copy-From`) and
/// the `DELETE` of its source.
async fn bare(
    backend: &Backend,
    destination: &Destination,
    concurrency: usize,
    limit: usize,
) -> anyhow::Result<(usize, f64)> {
    let started = Instant::now();
    let moves = match backend {
        Backend::Maildir { .. } => {
            let root = destination
                .maildir_root()
                .context("a Maildir")?
                .to_path_buf();
            for folder in ["processing", "done"] {
                std::fs::create_dir_all(root.join(folder))?;
            }
            let mut names: Vec<_> = std::fs::read_dir(root.join("cur"))?
                .map(|e| e.map(|e| e.file_name()))
                .collect::<Result<_, _>>()?;
            names.sort();
            names.truncate(limit);
            let root = Arc::new(root);
            stream::iter(names.iter().cloned())
                .map(|name| {
                    let root = root.clone();
                    tokio::task::spawn_blocking(move || {
                        let durable_move = |from: &str, to: &str| {
                            let target = root.join(to).join(&name);
                            std::fs::rename(root.join(from).join(&name), &target)?;
                            std::fs::File::open(&target)?.sync_all()?;
                            std::fs::File::open(root.join(to))?.sync_all()?;
                            std::fs::File::open(root.join(from))?.sync_all()
                        };
                        durable_move("cur", "processing")?;
                        std::fs::read(root.join("processing").join(&name))?;
                        durable_move("processing", "done")
                    })
                })
                .buffer_unordered(concurrency)
                .map(|r| anyhow::Ok(r??))
                .try_collect::<Vec<()>>()
                .await?;
            names.len()
        }
        Backend::Swift(swift) => {
            let swiftdrop::config::SwiftAuth::V1 {
                authurl, user, key, ..
            } = &swift.auth
            else {
                bail!("the bare reference speaks auth v1 only");
            };
            let client = swiftdrop::store::http_client().build().unwrap();
            let auth = client
                .get(authurl)
                .header("X-Auth-User", user)
                .header("X-Auth-Key", key.expose())
                .send()
                .await?
                .error_for_status()?;
            let token = auth.headers()["x-auth-token"].to_str()?.to_string();
            let url = auth.headers()["x-storage-url"].to_str()?.to_string();
            let container = swift.container.clone();
            let listing: Vec<serde_json::Value> = client
                .get(format!(
                    "{url}/{container}?prefix=cur/&format=json&limit={}",
                    limit.min(10_000)
                ))
                .header("X-Auth-Token", &token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let names: Vec<String> = listing
                .iter()
                .filter_map(|e| e["name"].as_str())
                .filter_map(|n| n.strip_prefix("cur/"))
                .map(|n| n.replace(',', "%2C").replace('=', "%3D"))
                .collect();
            let (client, token) = (&client, &token);
            let (url, container) = (&url, &container);
            stream::iter(names.iter())
                .map(|name| async move {
                    let copy = |from: &str, to: &str| {
                        client
                            .put(format!("{url}/{container}/{to}/{name}"))
                            .header("X-Auth-Token", token)
                            .header("X-Copy-From", format!("/{container}/{from}/{name}"))
                            .header("Content-Length", "0")
                            .send()
                    };
                    let delete = |folder: &str| {
                        client
                            .delete(format!("{url}/{container}/{folder}/{name}"))
                            .header("X-Auth-Token", token)
                            .send()
                    };
                    copy("cur", "processing").await?.error_for_status()?;
                    delete("cur").await?.error_for_status()?;
                    client
                        .get(format!("{url}/{container}/processing/{name}"))
                        .header("X-Auth-Token", token)
                        .send()
                        .await?
                        .error_for_status()?
                        .bytes()
                        .await?;
                    copy("processing", "done").await?.error_for_status()?;
                    delete("processing").await?.error_for_status()?;
                    anyhow::Ok(())
                })
                .buffer_unordered(concurrency)
                .try_collect::<Vec<()>>()
                .await?;
            names.len()
        }
        Backend::S3(_) => bail!("the bare reference covers Maildir and Swift"),
    };
    Ok((moves, started.elapsed().as_secs_f64()))
}
