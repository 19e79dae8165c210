//! Sweeps `tmp/`: what a delivery staged and then neither published nor removed.
//!
//! A message with more than one step is written under `tmp/` first ([`crate::store::key`]),
//! and a streamed message is staged there too. A crash between staging and publishing, or
//! a clean-up that gave up (the store was down for minutes), leaves such an object behind.
//! No worker looks under `tmp/`, so it is no mail: the client got no `250` for it and
//! sends again. The filter deletes what is older than [`STALE_AFTER`], far beyond any
//! delivery's life (`store_timeout`, then the clean-up's minutes), at start and then every
//! [`SWEEP_EVERY`]. Every filter sharing a store sweeps; they delete the same objects,
//! which is harmless. On a Maildir, `tmp/` is also where files are written before their
//! rename, and the Maildir convention (delete what is older than 36 hours) is looser than
//! this.

use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path;

use crate::store::Destination;
use crate::store::key::STAGING;

/// Age after which a staged object is a leftover.
pub const STALE_AFTER: Duration = Duration::from_secs(3600);
/// How often the filter sweeps.
pub const SWEEP_EVERY: Duration = Duration::from_secs(600);

/// Deletes the objects under `tmp/` of `dest` older than `older_than`; returns how many.
/// Failures are logged and left for the next sweep.
pub async fn sweep(dest: &Destination, older_than: Duration) -> usize {
    let Some(cutoff) = chrono::Duration::from_std(older_than)
        .ok()
        .and_then(|age| chrono::Utc::now().checked_sub_signed(age))
    else {
        return 0;
    };
    let prefix = Path::from(STAGING);
    let mut listing = dest.store.list(Some(&prefix));
    let mut stale = Vec::new();
    while let Some(entry) = listing.next().await {
        match entry {
            Ok(meta) if meta.last_modified < cutoff => stale.push(meta.location),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(destination = %dest.name, error = %e, "sweep of tmp/: cannot list; trying again at the next sweep");
                return 0;
            }
        }
    }
    let mut removed = 0;
    for location in stale {
        match dest.store.delete(&location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {
                tracing::info!(destination = %dest.name, key = %location, "sweep of tmp/: removed a leftover staged object");
                removed += 1;
            }
            Err(e) => {
                tracing::warn!(destination = %dest.name, key = %location, error = %e, "sweep of tmp/: cannot remove a leftover; trying again at the next sweep");
            }
        }
    }
    removed
}

/// Sweeps every destination now and then every [`SWEEP_EVERY`], for ever.
pub async fn run(destinations: Vec<Destination>) {
    loop {
        for dest in &destinations {
            sweep(dest, STALE_AFTER).await;
        }
        tokio::time::sleep(SWEEP_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use std::time::SystemTime;

    use super::*;

    #[tokio::test]
    async fn old_staged_objects_go_and_young_ones_stay() {
        let root = tempfile::tempdir().unwrap();
        let vars = vec![
            (
                "SWIFTDROP_DEFAULT_PATH".to_string(),
                root.path().display().to_string(),
            ),
            ("SWIFTDROP_SERVER_RELAY".to_string(), "off".to_string()),
        ];
        let config = crate::config::Config::from_sources(None, vars).unwrap();
        let dest = Destination::open(&config.destinations[0]).unwrap();
        let tmp = root.path().join("tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        let old = tmp.join("1.M1P1Q1R0123.host,S=5:2,");
        let young = tmp.join("2.M2P2Q2R4567.host,S=5:2,");
        let stored = root.path().join("cur").join("3.M3P3Q3R89ab.host,S=5:2,");
        for path in [&old, &young, &stored] {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, b"mail\n").unwrap();
        }
        let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
        for path in [&old, &stored] {
            let file = std::fs::File::options().write(true).open(path).unwrap();
            file.set_modified(two_hours_ago).unwrap();
        }

        assert_eq!(sweep(&dest, STALE_AFTER).await, 1);
        assert!(!old.exists(), "the leftover is removed");
        assert!(young.exists(), "a staged object in use stays");
        assert!(stored.exists(), "nothing outside tmp/ is touched");
    }
}
