//! Server-side moves that carry metadata: what the queue needs beyond [`object_store::ObjectStore`].
//!
//! A queue move takes a message from one state folder to another and rewrites the queue's
//! metadata keys on the way (attempt count, fencing number, reason, not-before time). Each
//! backend does it the cheapest way its API allows, always in the same order: **copy, verify,
//! then delete**, so that a crash at any instant leaves the message in at least one place.
//! The two halves are separate calls, so that the queue can check the lease between them:
//!
//! | backend | [`Mover::copy_verified`] | [`Mover::delete_source`] |
//! |---|---|---|
//! | Maildir | the record in one extended attribute, then `rename`, fsync both folders | nothing (the rename moved it) |
//! | Swift | `PUT` + `X-Copy-From` + `X-Object-Meta-*`; Etag = the source's MD5, else size | `DELETE` |
//! | S3 | `CopyObject` with `x-amz-metadata-directive: REPLACE`; ETag, else size | `DELETE` |
//!
//! A copy replaces what is at the target. Moves run under the message's lease, so what is
//! there is normally the leftover of an earlier interrupted move of the same message, which
//! the new copy supersedes. A holder paused past its lease may still move, though: where
//! the backend can compare it at the object itself, a move or update whose
//! [`FENCE_KEY`] is below the one the source or target already carries is refused with
//! [`object_store::Error::Precondition`] (a Maildir does, since there a move takes the very
//! file a newer holder has updated in place; Swift and S3 cannot compare atomically, and
//! their stale copy is a separate object that the newer one outranks). (Swift applies `If-None-Match` of a copy to its
//! source, and Swift's S3 API refuses conditional writes: neither could refuse it anyway.)
//! A copy's request may take [`copy_timeout`] (longer for larger objects). A missing source is [`object_store::Error::NotFound`]. The fail-point `move.copied` (see
//! [`crate::util::failpoint`]) sits between a copy and its check.

use std::fmt::Debug;

use async_trait::async_trait;
use object_store::path::Path;
use object_store::{ObjectMeta, Result};

/// Metadata keys and values to set; keys not named keep their value.
pub type MetadataUpdate = [(String, String)];

/// The metadata key of the fencing number under which the queue wrote an object.
pub const FENCE_KEY: &str = "queue-fence";

/// The fencing number `update` sets, if any.
pub fn fence_of(update: &MetadataUpdate) -> Option<u64> {
    update
        .iter()
        .find(|(k, _)| k == FENCE_KEY)
        .and_then(|(_, v)| v.parse().ok())
}

/// The error for a move or update refused because a newer holder wrote the object.
pub fn superseded(at: &Path, found: u64, wanted: u64) -> object_store::Error {
    object_store::Error::Precondition {
        path: at.to_string(),
        source: format!("written under fencing number {found}, above this move's {wanted}").into(),
    }
}

/// Moves in two halves, and in-place metadata updates.
#[async_trait]
pub trait Mover: Send + Sync + Debug {
    /// Copies `from` (as listed or headed: its size and ETag are used to verify the copy) to
    /// `to`, setting `update` on the way, and verifies the copy. Where the copy is a rename
    /// (a Maildir), the source is gone afterwards.
    async fn copy_verified(
        &self,
        from: &ObjectMeta,
        to: &Path,
        update: &MetadataUpdate,
    ) -> Result<()>;

    /// Deletes the source of a verified copy; a missing source is fine.
    async fn delete_source(&self, from: &ObjectMeta) -> Result<()>;

    /// Sets `update` on the object at `at`, keeping its bytes and its other metadata.
    async fn update_metadata(&self, at: &ObjectMeta, update: &MetadataUpdate) -> Result<()>;
}

/// Bytes a server-side copy is given one more second for, beyond the per-request timeout.
pub const COPY_BYTES_PER_SECOND: u64 = 1 << 20;

/// The time a server-side copy of `size` bytes may take: the store's per-request `timeout`
/// plus one second per MiB. The store answers only once every byte is copied, so a fixed
/// timeout would cut off a large message's copy (50 MiB on a slow cluster) on every try.
pub fn copy_timeout(timeout: std::time::Duration, size: u64) -> std::time::Duration {
    timeout + std::time::Duration::from_secs(size.div_ceil(COPY_BYTES_PER_SECOND))
}

/// Whether an ETag (quoted or not) is a plain MD5, as for an object written in one piece;
/// a copy of such an object has the same ETag.
pub fn is_plain_md5(etag: &str) -> bool {
    let etag = etag.trim_matches('"');
    etag.len() == 32 && etag.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The error for a copy whose result does not match its source.
pub fn copy_mismatch(store: &'static str, from: &Path, what: String) -> object_store::Error {
    object_store::Error::Generic {
        store,
        source: format!("copy of {from} does not match its source: {what}").into(),
    }
}
