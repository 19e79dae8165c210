//! `swiftdrop check`: authenticates, confirms that each destination's container or bucket
//! exists (creating it with `create_container = yes`), and proves the destination writable
//! by writing, reading back and deleting a probe object under `tmp/` (where workers never
//! look, and a Maildir has its folder already: the check leaves nothing behind); then checks the
//! queue's lock engine when one is set. `serve`'s startup check is the first step alone
//! ([`crate::store::check_containers`]).

use std::process::ExitCode;

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::config::{Config, LOCK_VARIABLE};

use crate::store::Destination;
use crate::store::key::STAGING;

/// Confirms the container, then writes, reads back and deletes a probe object. `Err` holds
/// a one-line reason.
pub async fn probe(destination: &Destination) -> Result<(), String> {
    destination.ensure_container().await?;
    let key = Path::from(format!(
        "{STAGING}/swiftdrop-check.{}.P{}",
        chrono::Utc::now().timestamp_micros(),
        std::process::id()
    ));
    let body = format!("swiftdrop check {key}\r\n").into_bytes();
    destination
        .store
        .put(&key, PutPayload::from(body.clone()))
        .await
        .map_err(|e| format!("write failed: {e}"))?;
    let read = async {
        destination
            .store
            .get(&key)
            .await
            .map_err(|e| format!("read back failed: {e}"))?
            .bytes()
            .await
            .map_err(|e| format!("read back failed: {e}"))
    };
    let result = match read.await {
        Ok(got) if got.as_ref() == body.as_slice() => Ok(()),
        Ok(got) => Err(format!(
            "read back {} bytes that differ from the {} written",
            got.len(),
            body.len()
        )),
        Err(e) => Err(e),
    };
    let deleted = destination
        .store
        .delete(&key)
        .await
        .map_err(|e| format!("delete failed: {e}"));
    result.and(deleted)
}

/// `swiftdrop check`: proves every destination writable and, when one is configured, the
/// queue's lock engine reachable; prints `ok:` or `FAILED:` per item. Fails when any failed.
pub async fn run(config: &Config) -> ExitCode {
    let mut failed = false;
    for dest_config in &config.destinations {
        let result = match Destination::open(dest_config) {
            Ok(dest) => probe(&dest).await.map(|()| dest.describe()),
            Err(e) => Err(e.reason),
        };
        match result {
            Ok(shown) => println!("ok: {shown}"),
            Err(reason) => {
                failed = true;
                println!("FAILED: [{}] {reason}", dest_config.name);
            }
        }
    }
    // The queue's lock engine, when one is configured: a filter alone needs none.
    if config.queue.lock.is_some() {
        for dest_config in &config.destinations {
            let checked = match Destination::open(dest_config) {
                Ok(dest) => match crate::queue::open_lock(&dest, &config.queue) {
                    Ok(lock) => lock
                        .check()
                        .await
                        .map(|shown| format!("{shown}, queue id {}", crate::queue::queue_id(&dest)))
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                },
                Err(e) => Err(e.reason),
            };
            match checked {
                Ok(shown) => println!("ok: [{}] queue lock: {shown}", dest_config.name),
                Err(reason) => {
                    failed = true;
                    println!(
                        "FAILED: [{}] queue lock ({LOCK_VARIABLE}): {reason}",
                        dest_config.name
                    );
                }
            }
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
