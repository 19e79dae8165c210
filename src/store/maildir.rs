//! The embedded default backend: a local Maildir, as an [`ObjectStore`].
//!
//! Writes follow the Maildir delivery protocol so that a reader never sees a partial file:
//! the bytes go to a fresh file under `tmp/`, which is fsynced, then renamed (or hard-linked,
//! for [`PutMode::Create`]) to its key, and the target directory is fsynced before the put
//! returns. Writers that publish into one folder at the same time share its fsync
//! ([`DirSyncs`]: group commit). Every other operation is delegated to object_store's
//! [`LocalFileSystem`].
//!
//! The staged file is named (not `O_TMPFILE`): it is fsynced with a link count of one, so
//! that what the folder's fsync makes durable points to an inode that is durable too, also
//! on file systems without a journal (where a folder's fsync does not write the inodes its
//! entries name).
//!
//! Metadata (the queue's record of a message) lives in one extended attribute,
//! `user.swiftdrop` (`key=value` lines), which travels with the file through renames; reads
//! return it as [`Attribute::Metadata`]. Queue moves ([`Renamer`]) rename (one atomic step: a
//! crash leaves the file in one folder or the other), then set the record on the renamed
//! file and its time to the move's, and fsync it and both folders.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult,
    RenameOptions, Result,
};

use crate::store::dir_sync::DirSyncs;
use crate::store::mover::{MetadataUpdate, Mover, Page, Renamer};
use crate::util::failpoint;

/// The extended attribute that holds an object's metadata: `key=value` lines, written in
/// one call so that a crash never leaves half a record.
const METADATA_XATTR: &str = "user.swiftdrop";

/// Counter that makes staging file names unique within this process.
static STAGED: AtomicU64 = AtomicU64::new(0);

/// A Maildir-shaped directory tree served through the [`ObjectStore`] interface.
#[derive(Debug)]
pub struct MaildirStore {
    root: PathBuf,
    local: LocalFileSystem,
    /// The folders' fsyncs, shared by the writers of the moment.
    syncs: Arc<DirSyncs>,
}

impl MaildirStore {
    /// Opens (creating when missing) the Maildir at `root` with its `tmp/`, `new/` and `cur/`.
    pub fn open(root: impl AsRef<FsPath>) -> io::Result<Self> {
        let root = root.as_ref();
        for sub in ["tmp", "new", "cur"] {
            fs::create_dir_all(root.join(sub))?;
        }
        let root = fs::canonicalize(root)?;
        let local = LocalFileSystem::new_with_prefix(&root)
            .map_err(io::Error::other)?
            .with_fsync(true);
        Ok(MaildirStore {
            root,
            local,
            syncs: Arc::default(),
        })
    }

    /// The directory this store writes to.
    pub fn root(&self) -> &FsPath {
        &self.root
    }
}

impl fmt::Display for MaildirStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Maildir({})", self.root.display())
    }
}

/// Tells the blocking writer that nobody waits for its result any more (the caller's deadline
/// passed and the future was dropped), so it must not publish, or must take back, the file.
struct AbandonOnDrop {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl Drop for AbandonOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::SeqCst);
        }
    }
}

fn generic(err: io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "Maildir",
        source: Box::new(err),
    }
}

/// Writes `payload` to `staged`, fsyncs it and publishes it at `target`.
fn write_durably(
    syncs: &DirSyncs,
    staged: &FsPath,
    target: &FsPath,
    location: &Path,
    payload: &PutPayload,
    mode: &PutMode,
    abandoned: &AtomicBool,
) -> Result<PutResult> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(staged)
        .map_err(generic)?;
    // The ETag comes from the open file: renaming keeps inode, mtime and size.
    let written = payload
        .iter()
        .try_for_each(|chunk| file.write_all(chunk))
        .and_then(|()| file.sync_all())
        .and_then(|()| file.metadata());
    drop(file);
    let meta = match written {
        Ok(meta) => meta,
        Err(err) => {
            let _ = fs::remove_file(staged);
            return Err(generic(err));
        }
    };
    if let Err(err) = publish(syncs, staged, target, location, mode, abandoned) {
        let _ = fs::remove_file(staged);
        return Err(err);
    }
    // Raced with the deadline while publishing: take the file back so that a 4xx reply
    // never leaves a visible object behind.
    if abandoned.load(Ordering::SeqCst) {
        let _ = fs::remove_file(target);
        let _ = sync_parent(syncs, target);
        return Err(generic(io::Error::new(
            io::ErrorKind::TimedOut,
            "write abandoned by its caller",
        )));
    }
    Ok(PutResult {
        e_tag: Some(etag(&meta)),
        version: None,
        extensions: Default::default(),
    })
}

/// Moves the staged file to `target` (creating missing parent folders) and fsyncs the
/// target's folder. The staged name is gone afterwards.
fn publish(
    syncs: &DirSyncs,
    staged: &FsPath,
    target: &FsPath,
    location: &Path,
    mode: &PutMode,
    abandoned: &AtomicBool,
) -> Result<()> {
    if abandoned.load(Ordering::SeqCst) {
        return Err(generic(io::Error::new(
            io::ErrorKind::TimedOut,
            "write abandoned by its caller",
        )));
    }
    let place = || match mode {
        PutMode::Overwrite => fs::rename(staged, target),
        PutMode::Create => fs::hard_link(staged, target).and_then(|()| fs::remove_file(staged)),
        PutMode::Update(_) => unreachable!("rejected before writing"),
    };
    // Folders are created only when missing: one syscall fewer on every message.
    let placed = match place() {
        Err(e) if e.kind() == io::ErrorKind::NotFound && staged.exists() => match target.parent() {
            Some(parent) => fs::create_dir_all(parent).and_then(|()| place()),
            None => Err(e),
        },
        other => other,
    };
    match placed {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: Box::new(e),
            })
        }
        other => other.map_err(generic),
    }?;
    // Placed but not durable: take it back, so that a failed write never leaves a message.
    sync_parent(syncs, target).map_err(|e| {
        let _ = fs::remove_file(target);
        generic(e)
    })
}

/// Makes the renames into `path`'s folder durable (an fsync of the folder, shared with the
/// writers of the moment).
fn sync_parent(syncs: &DirSyncs, path: &FsPath) -> io::Result<()> {
    match path.parent() {
        Some(dir) => syncs.sync(dir),
        None => Ok(()),
    }
}

/// The same ETag scheme as [`LocalFileSystem`] (inode, mtime, size), so that a put's ETag
/// matches what a later head or get reports.
fn etag(meta: &fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default()
        .as_micros();
    format!("\"{:x}-{:x}-{:x}\"", meta.ino(), mtime, meta.len())
}

#[async_trait]
impl ObjectStore for MaildirStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if matches!(opts.mode, PutMode::Update(_)) {
            return Err(object_store::Error::NotImplemented {
                operation: "`put_opts` with mode `PutMode::Update`".into(),
                implementer: self.to_string(),
            });
        }
        if !opts.attributes.is_empty() {
            return Err(object_store::Error::NotImplemented {
                operation: "`put_opts` with attributes".into(),
                implementer: self.to_string(),
            });
        }
        let target = self.local.path_to_filesystem(location)?;
        let staged = self.root.join("tmp").join(format!(
            "{}.P{}S{}",
            chrono::Utc::now().timestamp_micros(),
            std::process::id(),
            STAGED.fetch_add(1, Ordering::Relaxed)
        ));
        let location = location.clone();
        let syncs = Arc::clone(&self.syncs);
        let flag = Arc::new(AtomicBool::new(false));
        let mut guard = AbandonOnDrop {
            flag: Arc::clone(&flag),
            armed: true,
        };
        let result = tokio::task::spawn_blocking(move || {
            write_durably(
                &syncs, &staged, &target, &location, &payload, &opts.mode, &flag,
            )
        })
        .await;
        guard.armed = false;
        result?
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.local.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        let mut result = self.local.get_opts(location, options).await?;
        let path = self.local.path_to_filesystem(location)?;
        result.attributes = match read_metadata(&path) {
            Ok(attributes) => attributes,
            // Renamed away since it was opened: the caller meets it where it went.
            Err(e) => return Err(not_found(location, e)),
        };
        Ok(result)
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.local.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.local.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.local.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.local.copy_opts(from, to, options).await
    }

    /// A rename within one file system: atomic, so a streamed message staged under `tmp/`
    /// appears under `cur/` whole. The directory is fsynced, as for a put.
    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.local.rename_opts(from, to, options).await?;
        let (target, syncs) = (self.root.join(to.as_ref()), Arc::clone(&self.syncs));
        tokio::task::spawn_blocking(move || sync_parent(&syncs, &target))
            .await
            .map_err(|e| generic(io::Error::other(e)))?
            .map_err(generic)
    }
}

/// The metadata in `path`'s extended attribute (none when the attribute is missing or the
/// file system keeps no extended attributes).
fn read_metadata(path: &FsPath) -> io::Result<Attributes> {
    let mut attributes = Attributes::new();
    for line in read_record(path)?.lines() {
        if let Some((key, value)) = line.split_once('=') {
            attributes.insert(
                Attribute::Metadata(key.to_string().into()),
                value.to_string().into(),
            );
        }
    }
    Ok(attributes)
}

/// The raw record attribute of `path`, empty when there is none.
fn read_record(path: &FsPath) -> io::Result<String> {
    let mut value = vec![0u8; 4096];
    loop {
        match rustix::fs::getxattr(path, METADATA_XATTR, &mut value[..]) {
            Ok(n) => return Ok(String::from_utf8_lossy(&value[..n]).into_owned()),
            Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => {
                return Ok(String::new());
            }
            Err(rustix::io::Errno::RANGE) => value.resize(value.len() * 4, 0),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Merges `update` into `path`'s metadata attribute, in one write.
fn write_metadata(path: &FsPath, update: &MetadataUpdate) -> io::Result<()> {
    let mut record: Vec<(String, String)> = read_record(path)?
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !update.iter().any(|(u, _)| u == k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    record.extend(update.iter().cloned());
    let text: String = record.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    rustix::fs::setxattr(
        path,
        METADATA_XATTR,
        text.as_bytes(),
        rustix::fs::XattrFlags::empty(),
    )?;
    Ok(())
}

/// Renames `from` to `to` (replacing a leftover there), creating `to`'s folder when missing.
fn rename_creating_folder(from: &FsPath, to: &FsPath) -> io::Result<()> {
    match fs::rename(from, to) {
        Err(e) if e.kind() == io::ErrorKind::NotFound && from.exists() => match to.parent() {
            Some(parent) => fs::create_dir_all(parent).and_then(|()| fs::rename(from, to)),
            None => Err(e),
        },
        other => other,
    }
}

/// Sets a file's modification time to now: it tells when the queue last moved or updated the
/// message, which `purge --older-than` reads.
fn touch(path: &FsPath) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Timespec, Timestamps, UTIME_NOW, UTIME_OMIT, utimensat};
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_NOW,
        },
    };
    Ok(utimensat(CWD, path, &times, AtFlags::empty())?)
}

fn not_found(location: &Path, err: io::Error) -> object_store::Error {
    if err.kind() == io::ErrorKind::NotFound {
        object_store::Error::NotFound {
            path: location.to_string(),
            source: Box::new(err),
        }
    } else {
        generic(err)
    }
}

#[async_trait]
impl Mover for MaildirStore {
    /// A rename ([`Renamer::rename`] and its fsyncs): the source is gone when it returns.
    async fn copy_verified(
        &self,
        from: &ObjectMeta,
        to: &Path,
        update: &MetadataUpdate,
    ) -> Result<()> {
        let (from, to, update) = (from.location.clone(), to.clone(), update.to_vec());
        let renamer = self.renamer_of();
        blocking(move || {
            renamer.rename(&from, &to, &update)?;
            renamer.sync(&from, &to)
        })
        .await
    }

    async fn remove(&self, at: &ObjectMeta) -> Result<()> {
        let (at, renamer) = (at.location.clone(), self.renamer_of());
        blocking(move || renamer.delete(&at)).await
    }

    async fn update_metadata(&self, at: &ObjectMeta, update: &MetadataUpdate) -> Result<()> {
        let (at, update, renamer) = (at.location.clone(), update.to_vec(), self.renamer_of());
        blocking(move || {
            renamer.update(&at, &update)?;
            renamer.sync_file(&at)
        })
        .await
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, max: usize) -> Result<Page> {
        let (root, prefix, after) = (
            self.root.clone(),
            prefix.to_string(),
            after.map(String::from),
        );
        blocking(move || list_page(&root, &prefix, after.as_deref(), max).map_err(generic)).await
    }

    fn renamer(&self) -> Option<Arc<dyn Renamer>> {
        Some(self.renamer_of())
    }
}

impl MaildirStore {
    fn renamer_of(&self) -> Arc<MaildirRenamer> {
        Arc::new(MaildirRenamer {
            root: self.root.clone(),
            syncs: Arc::clone(&self.syncs),
        })
    }
}

/// The blocking side of a Maildir's queue moves, on paths under its root.
#[derive(Debug)]
struct MaildirRenamer {
    root: PathBuf,
    syncs: Arc<DirSyncs>,
}

impl MaildirRenamer {
    /// The file of `location`: object keys are relative paths of plain names (the queue
    /// makes them), never `..`.
    fn file(&self, location: &Path) -> Result<PathBuf> {
        if location
            .parts()
            .any(|p| p.as_ref() == ".." || p.as_ref() == ".")
        {
            return Err(generic(io::Error::other(format!(
                "not a key of this Maildir: {location}"
            ))));
        }
        Ok(self.root.join(location.as_ref()))
    }
}

impl Renamer for MaildirRenamer {
    /// The rename first, then the record on the file that now carries the new key (which
    /// only its writer touches), then its time: a crash in between leaves the message
    /// under its new key with the record it had.
    fn rename(&self, from: &Path, to: &Path, update: &MetadataUpdate) -> Result<()> {
        let (source, target) = (self.file(from)?, self.file(to)?);
        rename_creating_folder(&source, &target).map_err(|e| not_found(from, e))?;
        failpoint::hit("move.copied");
        write_metadata(&target, update)
            .and_then(|()| touch(&target))
            .map_err(|e| not_found(to, e))
    }

    fn update(&self, at: &Path, update: &MetadataUpdate) -> Result<()> {
        let path = self.file(at)?;
        write_metadata(&path, update)
            .and_then(|()| touch(&path))
            .map_err(|e| not_found(at, e))
    }

    fn sync_file(&self, at: &Path) -> Result<()> {
        let path = self.file(at)?;
        File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| not_found(at, e))
    }

    fn sync(&self, from: &Path, to: &Path) -> Result<()> {
        let target = self.file(to)?;
        File::open(&target)
            .and_then(|f| f.sync_all())
            .and_then(|()| sync_parent(&self.syncs, &target))
            .and_then(|()| sync_parent(&self.syncs, &self.file(from)?))
            .map_err(|e| not_found(to, e))
    }

    fn delete(&self, at: &Path) -> Result<()> {
        let path = self.file(at)?;
        match fs::remove_file(&path) {
            Ok(()) => sync_parent(&self.syncs, &path).map_err(generic),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(generic(e)),
        }
    }

    /// Only a missing file says no: any other error is met by the rename, which reports it.
    fn exists(&self, at: &Path) -> bool {
        match self.file(at).map(fs::symlink_metadata) {
            Ok(Err(e)) => e.kind() != io::ErrorKind::NotFound,
            _ => true,
        }
    }
}

/// Up to `max` files whose keys begin with `prefix` (`<folder>/<start of a name>`) and sort
/// after `after`, in key order. One `readdir` of the folder, keeping only the first `max`
/// names (a heap, so memory stays bounded whatever the folder holds); only those are looked at.
fn list_page(root: &FsPath, prefix: &str, after: Option<&str>, max: usize) -> io::Result<Page> {
    let (folder, start) = prefix.rsplit_once('/').unwrap_or(("", prefix));
    let dir = root.join(folder);
    let entries = match fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Page::default()),
        Err(e) => return Err(e),
    };
    let after = after.and_then(|a| a.strip_prefix(folder)?.strip_prefix('/').or(Some("")));
    let mut first: std::collections::BinaryHeap<String> = std::collections::BinaryHeap::new();
    let mut more = false;
    for entry in entries {
        let entry = entry?;
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if !name.starts_with(start) || after.is_some_and(|a| name.as_str() <= a) {
            continue;
        }
        if first.len() < max {
            first.push(name);
            continue;
        }
        more = true;
        if first.peek().is_some_and(|last| name < *last) {
            first.pop();
            first.push(name);
        }
    }
    let names = first.into_sorted_vec();
    let mut objects = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(&name);
        let meta = match fs::metadata(&path) {
            Ok(meta) if meta.is_file() => meta,
            // Moved on since the directory was read, or not a message.
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let last_modified = meta
            .modified()
            .map(chrono::DateTime::<chrono::Utc>::from)
            .unwrap_or_default();
        objects.push(ObjectMeta {
            location: Path::from(if folder.is_empty() {
                name
            } else {
                format!("{folder}/{name}")
            }),
            last_modified,
            size: meta.len(),
            e_tag: Some(etag(&meta)),
            version: None,
        });
    }
    Ok(Page { objects, more })
}

/// Runs blocking file work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| generic(io::Error::other(e)))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::ObjectStoreExt;

    #[tokio::test]
    async fn queue_moves_rename_and_pages_list_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = MaildirStore::open(dir.path()).unwrap();
        for name in ["3.M1P1Q1.h,S=5", "1.M1P1Q1.h,S=5", "2.M1P1Q1.h,S=5"] {
            let key = Path::from(format!("cur/{name}"));
            store
                .put(&key, PutPayload::from_static(b"hello"))
                .await
                .unwrap();
        }
        let names = |page: Page| -> Vec<String> {
            page.objects
                .into_iter()
                .map(|m| m.location.to_string())
                .collect()
        };
        assert_eq!(
            names(store.list_page("cur/", None, 2).await.unwrap()),
            ["cur/1.M1P1Q1.h,S=5", "cur/2.M1P1Q1.h,S=5"]
        );
        assert_eq!(
            names(
                store
                    .list_page("cur/", Some("cur/2.M1P1Q1.h,S=5"), 2)
                    .await
                    .unwrap()
            ),
            ["cur/3.M1P1Q1.h,S=5"]
        );
        assert_eq!(
            names(store.list_page("cur/2", None, 10).await.unwrap()),
            ["cur/2.M1P1Q1.h,S=5"]
        );
        assert!(
            store
                .list_page("done/2", None, 10)
                .await
                .unwrap()
                .objects
                .is_empty()
        );

        let from = store.head(&Path::from("cur/1.M1P1Q1.h,S=5")).await.unwrap();
        let to = Path::from("processing/1.M1P1Q1.h,S=5@7");
        let record = vec![("queue-fence".to_string(), "7".to_string())];
        store.copy_verified(&from, &to, &record).await.unwrap();
        assert!(
            store.head(&from.location).await.is_err(),
            "a rename leaves no source"
        );
        let moved = store
            .get_opts(&to, GetOptions::new().with_head(true))
            .await
            .unwrap();
        assert_eq!(
            moved
                .attributes
                .get(&Attribute::Metadata("queue-fence".into()))
                .map(|v| v.as_ref()),
            Some("7")
        );
        let again = store
            .copy_verified(&from, &Path::from("done/x@7"), &record)
            .await;
        assert!(
            matches!(again, Err(object_store::Error::NotFound { .. })),
            "{again:?}"
        );
        Mover::remove(&store, &moved.meta).await.unwrap();
        Mover::remove(&store, &moved.meta).await.unwrap();
        assert!(store.head(&to).await.is_err());
    }

    #[tokio::test]
    async fn put_publishes_whole_file_and_leaves_tmp_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = MaildirStore::open(dir.path().join("m")).unwrap();
        let key = Path::from("cur/1.M2P3Q4.host,S=5");
        let put = store
            .put(&key, PutPayload::from_static(b"hello"))
            .await
            .unwrap();
        let got = store.get(&key).await.unwrap();
        assert_eq!(got.meta.e_tag, put.e_tag);
        assert_eq!(got.bytes().await.unwrap().as_ref(), b"hello");
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn create_mode_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let store = MaildirStore::open(dir.path()).unwrap();
        let key = Path::from("cur/x");
        let create = PutOptions::from(PutMode::Create);
        store
            .put_opts(&key, PutPayload::from_static(b"1"), create.clone())
            .await
            .unwrap();
        let again = store
            .put_opts(&key, PutPayload::from_static(b"2"), create)
            .await;
        assert!(matches!(
            again,
            Err(object_store::Error::AlreadyExists { .. })
        ));
        let kept = store.get(&key).await.unwrap().bytes().await.unwrap();
        assert_eq!(kept.as_ref(), b"1");
    }

    #[tokio::test]
    async fn a_failed_publish_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = MaildirStore::open(dir.path()).unwrap();
        // `cur` turned into a plain file: the rename into it must fail (even for root).
        fs::remove_dir(dir.path().join("cur")).unwrap();
        fs::write(dir.path().join("cur"), b"not a directory").unwrap();
        let err = store
            .put(&Path::from("cur/y"), PutPayload::from_static(b"data"))
            .await;
        assert!(err.is_err());
        assert_eq!(fs::read_dir(store.root().join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn abandoned_writes_are_not_published() {
        let dir = tempfile::tempdir().unwrap();
        let store = MaildirStore::open(dir.path()).unwrap();
        let target = store.root().join("cur/z");
        let staged = store.root().join("tmp/z");
        let abandoned = AtomicBool::new(true);
        let result = write_durably(
            &DirSyncs::default(),
            &staged,
            &target,
            &Path::from("cur/z"),
            &PutPayload::from_static(b"late"),
            &PutMode::Overwrite,
            &abandoned,
        );
        assert!(result.is_err());
        assert!(!target.exists());
        assert!(!staged.exists());
    }
}
