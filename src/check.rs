//! `swiftdrop check` and the startup check of `swiftdrop serve`.
//!
//! Both authenticate and confirm that each destination's container or bucket exists
//! (creating it with `create_container = yes`); `check` then proves the destination
//! writable by writing, reading back and deleting a probe object outside `cur/`.

use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};

use crate::store::Destination;

/// Folder of probe objects; never `cur/`, so no worker ever sees them.
pub const PROBE_FOLDER: &str = "swiftdrop-check";

/// Checks every destination's container, concurrently; returns one line per failure,
/// `[NAME] reason`, in configuration order.
pub async fn containers(destinations: &[Destination]) -> Vec<String> {
    let checks = destinations.iter().map(|d| async move {
        d.ensure_container()
            .await
            .map_err(|reason| format!("[{}] {reason}", d.name))
    });
    futures::future::join_all(checks)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect()
}

/// Confirms the container, then writes, reads back and deletes a probe object. `Err` holds
/// a one-line reason.
pub async fn probe(destination: &Destination) -> Result<(), String> {
    destination.ensure_container().await?;
    let key = Path::from(format!(
        "{PROBE_FOLDER}/{}.P{}",
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
