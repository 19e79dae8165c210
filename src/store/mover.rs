//! Server-side moves that carry metadata: what the queue needs beyond [`ObjectStore`].
//!
//! A queue move takes a message from one state folder to another and rewrites the queue's
//! metadata keys on the way (attempt count, fencing number, reason, not-before time). Each
//! backend does it the cheapest way its API allows, always in the same order: **copy, verify,
//! then delete**, so that a crash at any instant leaves the message in at least one place:
//!
//! | backend | copy | verify | delete |
//! |---|---|---|---|
//! | Maildir | extended attributes on the file, then `rename` | the rename itself | (the rename) |
//! | Swift | `PUT` + `X-Copy-From` + `X-Object-Meta-*` | Etag = the source's MD5, else size | `DELETE` |
//! | S3 | `CopyObject` with `x-amz-metadata-directive: REPLACE` | ETag, else size | `DELETE` |
//!
//! A copy replaces what is at the target. Moves run under the message's lease, so the only
//! thing that can be there is the leftover of an earlier interrupted move of the same
//! message, which the new copy supersedes. (Swift applies `If-None-Match` of a copy to its
//! source, and Swift's S3 API refuses conditional writes: neither could refuse it anyway.)
//! A missing source is [`object_store::Error::NotFound`]. Fail-points (see
//! [`crate::failpoint`]) named `move.copied` and `move.verified` sit between the steps.

use std::fmt::Debug;

use async_trait::async_trait;
use object_store::path::Path;
use object_store::{ObjectMeta, Result};

/// Metadata keys and values to set; keys not named keep their value.
pub type MetadataUpdate = [(String, String)];

/// Moves and in-place metadata updates, verified.
#[async_trait]
pub trait Mover: Send + Sync + Debug {
    /// Moves `from` (as listed or headed: its size and ETag are used to verify the copy) to
    /// `to`, setting `update` on the way.
    async fn move_object(
        &self,
        from: &ObjectMeta,
        to: &Path,
        update: &MetadataUpdate,
    ) -> Result<()>;

    /// Sets `update` on the object at `at`, keeping its bytes and its other metadata.
    async fn update_metadata(&self, at: &ObjectMeta, update: &MetadataUpdate) -> Result<()>;
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
