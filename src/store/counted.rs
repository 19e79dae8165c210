//! A destination whose store requests are counted: every call of its [`ObjectStore`], its
//! [`Mover`] and a Maildir's [`Renamer`] is one request. For benchmarks that report store
//! requests per message (`queue_worker --report`, `bench/queue.sh`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, Result,
};

use super::mover::{MetadataUpdate, Mover, NamedAtEnd, Page, Renamer};

/// Requests made so far, shared by a destination's store, mover and renamer.
pub type RequestCount = Arc<AtomicU64>;

/// An [`ObjectStore`] that counts the requests it passes on.
#[derive(Debug)]
pub struct CountedStore {
    inner: Arc<dyn ObjectStore>,
    count: RequestCount,
}

impl CountedStore {
    /// Counts the requests made through `inner` in `count`.
    pub fn new(inner: Arc<dyn ObjectStore>, count: RequestCount) -> CountedStore {
        CountedStore { inner, count }
    }

    fn one(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl fmt::Display for CountedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl ObjectStore for CountedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.one();
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.one();
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.one();
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.one();
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.one();
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.one();
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.one();
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.one();
        self.inner.rename_opts(from, to, options).await
    }
}

/// A [`Mover`] that counts the requests it passes on.
#[derive(Debug)]
pub struct CountedMover {
    inner: Arc<dyn Mover>,
    count: RequestCount,
}

impl CountedMover {
    /// Counts the requests made through `inner` in `count`.
    pub fn new(inner: Arc<dyn Mover>, count: RequestCount) -> CountedMover {
        CountedMover { inner, count }
    }

    fn one(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

#[async_trait]
impl Mover for CountedMover {
    async fn copy_verified(
        &self,
        from: &ObjectMeta,
        to: &Path,
        update: &MetadataUpdate,
    ) -> Result<()> {
        self.one();
        self.inner.copy_verified(from, to, update).await
    }

    async fn remove(&self, at: &ObjectMeta) -> Result<()> {
        self.one();
        self.inner.remove(at).await
    }

    async fn update_metadata(&self, at: &ObjectMeta, update: &MetadataUpdate) -> Result<()> {
        self.one();
        self.inner.update_metadata(at, update).await
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, max: usize) -> Result<Page> {
        self.one();
        self.inner.list_page(prefix, after, max).await
    }

    async fn upload_named_at_end(&self) -> Result<Option<Box<dyn NamedAtEnd>>> {
        self.one();
        self.inner.upload_named_at_end().await
    }

    fn renamer(&self) -> Option<Arc<dyn Renamer>> {
        let inner = self.inner.renamer()?;
        Some(Arc::new(CountedRenamer {
            inner,
            count: self.count.clone(),
        }))
    }
}

/// A [`Renamer`] that counts the steps it passes on.
#[derive(Debug)]
struct CountedRenamer {
    inner: Arc<dyn Renamer>,
    count: RequestCount,
}

impl CountedRenamer {
    fn one(&self) {
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

impl Renamer for CountedRenamer {
    fn rename(&self, from: &Path, to: &Path, update: &MetadataUpdate) -> Result<()> {
        self.one();
        self.inner.rename(from, to, update)
    }

    fn update(&self, at: &Path, update: &MetadataUpdate) -> Result<()> {
        self.one();
        self.inner.update(at, update)
    }

    fn sync_file(&self, at: &Path) -> Result<()> {
        self.one();
        self.inner.sync_file(at)
    }

    fn sync(&self, from: &Path, to: &Path) -> Result<()> {
        self.one();
        self.inner.sync(from, to)
    }

    fn delete(&self, at: &Path) -> Result<()> {
        self.one();
        self.inner.delete(at)
    }

    fn exists(&self, at: &Path) -> bool {
        self.one();
        self.inner.exists(at)
    }
}
