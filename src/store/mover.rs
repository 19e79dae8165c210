//! What the queue (and the filter's publishing of staged objects) needs of a store beyond
//! [`object_store::ObjectStore`]: moves that carry metadata, in-place metadata updates, and
//! listings by a raw key prefix, in key order, one page at a time.
//!
//! A move takes an object to another key and sets metadata on the way. Each backend does it
//! the cheapest way its API allows:
//!
//! | backend | move | listing |
//! |---|---|---|
//! | Maildir | [`Renamer`]: `rename`, then the record in one extended attribute, fsyncs; one atomic step, the source is gone | `readdir` of the folder, names filtered and sorted |
//! | Swift | [`Mover::copy_verified`]: `PUT` + `X-Copy-From` + `X-Object-Meta-*`, Etag = the source's MD5, else size; then [`Mover::remove`] | `GET` with `prefix`, `marker`, `limit` |
//! | S3 | `CopyObject` with `x-amz-metadata-directive: REPLACE`; ETag, else size; then `DELETE` | `ListObjectsV2` with `prefix`, `start-after`, `max-keys` |
//!
//! A copy replaces what is at the target: the queue's keys carry the fencing number of the
//! lease they are written under, so a target is only ever the writer's own. A copy's request
//! may take [`copy_timeout`] (longer for larger objects). A missing source is
//! [`object_store::Error::NotFound`]. The fail-point `move.copied` (see
//! [`crate::util::failpoint`]) sits between a copy and its check.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use object_store::path::Path;
use object_store::{Attributes, MultipartUpload, ObjectMeta, PutResult, Result};

/// Metadata keys and values to set; keys not named keep their value.
pub type MetadataUpdate = [(String, String)];

/// Moves, metadata updates and paged listings of one store.
#[async_trait]
pub trait Mover: Send + Sync + Debug {
    /// Copies `from` (as listed or headed: its size and ETag are used to verify the copy) to
    /// `to`, setting `update` on the way, and verifies the copy; the source stays. On a
    /// Maildir it is a rename, and the source is gone afterwards. A copy that does not match
    /// ([`is_copy_mismatch`]) is left where it landed: deleting it is the caller's call (a
    /// queue's fenced copy may already be what others weighed as the newest; a try again
    /// overwrites it).
    async fn copy_verified(
        &self,
        from: &ObjectMeta,
        to: &Path,
        update: &MetadataUpdate,
    ) -> Result<()>;

    /// Deletes the object `at` (a large object with its segments); a missing one is fine.
    async fn remove(&self, at: &ObjectMeta) -> Result<()>;

    /// Sets `update` on the object at `at`, keeping its bytes and its other metadata.
    async fn update_metadata(&self, at: &ObjectMeta, update: &MetadataUpdate) -> Result<()>;

    /// Up to `max` objects whose keys begin with `prefix` (a string, not only a folder) and
    /// sort after `after`, in key order.
    async fn list_page(&self, prefix: &str, after: Option<&str>, max: usize) -> Result<Page>;

    /// For a store whose moves are one atomic rename (a Maildir): the blocking steps the
    /// queue runs under its lease table's lock.
    fn renamer(&self) -> Option<Arc<dyn Renamer>> {
        None
    }

    /// For a store that can complete a multipart upload at any key without copying its
    /// bytes (Swift writes an SLO's manifest last): an upload whose key is chosen when it
    /// completes ([`NamedAtEnd::complete_at`]). `None`: uploads are named when they
    /// begin, and a finished one is copied to its key.
    async fn upload_named_at_end(&self) -> Result<Option<Box<dyn NamedAtEnd>>> {
        Ok(None)
    }
}

/// A multipart upload whose object gets its key, and its metadata, only when it completes:
/// a streamed message's name holds its size, and its metadata its SHA-256. Completing it
/// again (after a failure or a lost answer) writes the same object again.
#[async_trait]
pub trait NamedAtEnd: MultipartUpload + Sync {
    /// Completes the upload as the object at `location` carrying `attributes`; the parts
    /// belong to that object from then on (deleting it deletes them).
    async fn complete_at(&self, location: &Path, attributes: &Attributes) -> Result<PutResult>;

    /// The ETag the completed object has (as a HEAD of it answers, quotes and all), once
    /// every part is stored. A completion whose answer was lost is checked against it.
    fn e_tag(&self) -> Option<String>;
}

/// One page of a listing in key order.
#[derive(Debug, Default)]
pub struct Page {
    /// The objects, in key order.
    pub objects: Vec<ObjectMeta>,
    /// Whether keys after the last one may match too (list again after it).
    pub more: bool,
}

/// Blocking moves of a store where a move is one atomic rename: the source is gone once it
/// returns, so a move made under the lease table's lock can never race another holder's.
pub trait Renamer: Send + Sync + Debug {
    /// Renames `from` to `to` and sets `update` on it. A missing source is
    /// [`object_store::Error::NotFound`].
    fn rename(&self, from: &Path, to: &Path, update: &MetadataUpdate) -> Result<()>;

    /// Sets `update` on the object at `at` (durable once [`Renamer::sync_file`] ran).
    fn update(&self, at: &Path, update: &MetadataUpdate) -> Result<()>;

    /// Makes the object at `at`, and what was set on it, durable.
    fn sync_file(&self, at: &Path) -> Result<()>;

    /// Makes a rename of `from` to `to`, and what was set on `to`, durable.
    fn sync(&self, from: &Path, to: &Path) -> Result<()>;

    /// Deletes the object at `at`, durably; a missing one is fine.
    fn delete(&self, at: &Path) -> Result<()>;

    /// Whether an object is at `at` (a stat: cheap enough for an async thread).
    fn exists(&self, at: &Path) -> bool;
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

/// A copy whose result does not match its source.
#[derive(Debug)]
pub struct CopyMismatch(String);

impl std::fmt::Display for CopyMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CopyMismatch {}

/// The error for a copy whose result does not match its source.
pub fn copy_mismatch(store: &'static str, from: &Path, what: String) -> object_store::Error {
    object_store::Error::Generic {
        store,
        source: Box::new(CopyMismatch(format!(
            "copy of {from} does not match its source: {what}"
        ))),
    }
}

/// Whether `e` says that a copy landed but does not match its source.
pub fn is_copy_mismatch(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { source, .. } if source.is::<CopyMismatch>())
}
