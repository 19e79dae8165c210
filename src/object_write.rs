//! One destination's object for one message: [`ObjectWrite`] takes it from its first byte
//! to `cur/`, or back to nothing.
//!
//! Every write goes through the same steps, whether the message is held in memory or
//! streamed to the store while DATA arrives:
//!
//! 1. [`ObjectWrite::stream`] (messages past `stream_threshold` only): bytes go into a
//!    multipart upload at a staging key under `tmp/` as they arrive, a few parts in flight;
//! 2. [`ObjectWrite::finish`]: the object is complete and verified. A buffered message is
//!    one PUT, retried until the deadline (the store layer checks the ETag against the MD5
//!    of the bytes); a streamed one's upload is completed. A write that is its transaction's
//!    only step goes straight to `cur/`; otherwise it is staged under `tmp/`, where no
//!    worker looks, until every other step succeeded;
//! 3. [`ObjectWrite::publish`]: a staged object is moved into `cur/`: on a Maildir by a link
//!    that never replaces a taken name, on Swift and S3 by a server-side copy verified by
//!    ETag or size (adding the SHA-256 a streamed object could not carry from its start),
//!    then the staged object is deleted;
//! 4. [`ObjectWrite::abort`]: every key the write may have created (staged, final, a move
//!    half done) is deleted and an open upload is aborted. A write dropped unfinished does
//!    the same in the background ([`crate::cleanup`]).
//!
//! A name found taken is never replaced: the write takes a new one ([`MessageKey::renamed`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, join_all};
use object_store::path::Path;
use object_store::{
    MultipartUpload, ObjectMeta, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions,
    PutPayload, PutPayloadMut,
};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::deliver::DeliveryError;
use crate::envelope::Client;
use crate::store::key::{self, MessageKey};
use crate::store::swift::hex;
use crate::store::{Destination, metadata};

/// Size of one part of a streamed upload: S3's minimum for all parts but the last.
pub const PART_SIZE: usize = 5 << 20;
/// Parts of one destination being sent at once.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Bound on each clean-up request; what fails is retried in the background.
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(5);
/// Wait before the first retry of a failed remote write; doubled for each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// New names a write tries after finding its name taken.
const MAX_RENAMES: u32 = 3;
/// Tries of one clean-up step in all (1 s, doubling to 2 min between them: ~10 min).
const CLEANUP_TRIES: u32 = 10;

/// What one destination's copy of a message is about: its recipients and the envelope
/// metadata a remote object carries.
#[derive(Debug, Clone)]
pub struct ObjectEnvelope {
    /// Envelope sender.
    pub sender: String,
    /// This destination's recipients.
    pub recipients: Vec<String>,
    /// The client, with XFORWARD attributes.
    pub client: Client,
    /// When the message was received.
    pub received: chrono::DateTime<chrono::Utc>,
    /// The message's Message-ID (remote destinations only).
    pub message_id: Option<String>,
}

impl ObjectEnvelope {
    fn attributes(&self, sha256: Option<String>) -> object_store::Attributes {
        let recipients: Vec<&str> = self.recipients.iter().map(String::as_str).collect();
        metadata::attributes(&metadata::Envelope {
            sender: &self.sender,
            recipients: &recipients,
            client: &self.client,
            received: self.received,
            sha256,
            message_id: self.message_id.clone(),
        })
    }
}

/// A multipart upload in progress. Its parts are sent by hand rather than through
/// object_store's `WriteMultipart`, which gives up its upload on `finish`: a completion
/// that times out must still be abortable, or its parts stay in the store.
struct Upload {
    staging: Path,
    upload: Box<dyn MultipartUpload>,
    /// The part being filled.
    part: PutPayloadMut,
    /// Parts being sent.
    sending: JoinSet<object_store::Result<()>>,
}

impl Upload {
    /// Appends `bytes`, sending each part that fills up once fewer than
    /// [`PARTS_IN_FLIGHT`] are on their way.
    async fn write(&mut self, mut bytes: &[u8]) -> object_store::Result<()> {
        while !bytes.is_empty() {
            let room = PART_SIZE - self.part.content_length();
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.part.extend_from_slice(now);
            bytes = later;
            if self.part.content_length() == PART_SIZE {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> object_store::Result<()> {
        self.wait_for_parts(PARTS_IN_FLIGHT - 1).await?;
        let part = std::mem::take(&mut self.part).freeze();
        self.sending.spawn(self.upload.put_part(part));
        Ok(())
    }

    /// Waits until at most `in_flight` parts are still being sent.
    async fn wait_for_parts(&mut self, in_flight: usize) -> object_store::Result<()> {
        while self.sending.len() > in_flight {
            match self.sending.join_next().await {
                Some(Ok(sent)) => sent?,
                Some(Err(e)) => {
                    return Err(object_store::Error::Generic {
                        store: "upload",
                        source: Box::new(e),
                    });
                }
                None => break,
            }
        }
        Ok(())
    }

    /// Sends the last part, waits for all, and completes the upload.
    async fn complete(&mut self) -> object_store::Result<()> {
        if self.part.content_length() > 0 {
            self.send_part().await?;
        }
        self.wait_for_parts(0).await?;
        self.upload.complete().await.map(|_| ())
    }

    /// Stops sending parts and asks the store to drop those it has (again if need be).
    async fn abort(&mut self) -> object_store::Result<()> {
        self.sending.shutdown().await;
        self.upload.abort().await
    }
}

/// Where a finished object is.
#[derive(Debug, Clone)]
enum Placed {
    /// Under `cur/`, as the transaction's only step.
    Final(String),
    /// Under `tmp/` until [`ObjectWrite::publish`] moves it to `cur/` under the key given;
    /// the staged object's size and ETag verify the copy.
    Staged(ObjectMeta, MessageKey),
}

/// One destination's object for one message (see the module documentation).
pub struct ObjectWrite {
    dest: Destination,
    hostname: String,
    envelope: ObjectEnvelope,
    /// `Return-Path:` and `Delivered-To:` lines, the object's first bytes.
    header: Bytes,
    /// Over every byte of the object so far (remote destinations only: their metadata).
    sha256: Option<Sha256>,
    size: usize,
    upload: Option<Upload>,
    placed: Option<Placed>,
    /// Every key this write may have created: what an abort deletes.
    touched: Vec<Path>,
}

impl std::fmt::Debug for ObjectWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectWrite")
            .field("destination", &self.dest.name)
            .field("size", &self.size)
            .field("touched", &self.touched)
            .finish()
    }
}

fn failed(dest: &Destination, e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Store {
        destination: dest.name.clone(),
        error: e.to_string(),
    }
}

fn timed_out(dest: &Destination) -> DeliveryError {
    DeliveryError::Timeout {
        destination: dest.name.clone(),
    }
}

/// Runs `work` until `deadline`; past it, the destination's timeout error.
async fn until<T>(
    dest: &Destination,
    deadline: Instant,
    work: impl Future<Output = Result<T, DeliveryError>>,
) -> Result<T, DeliveryError> {
    tokio::time::timeout_at(deadline, work)
        .await
        .unwrap_or_else(|_| Err(timed_out(dest)))
}

impl ObjectWrite {
    /// A write of `envelope`'s copy to `dest`; nothing is sent yet. `hostname` goes into
    /// the object's name.
    pub fn new(dest: Destination, hostname: &str, envelope: ObjectEnvelope) -> Self {
        let recipients: Vec<&str> = envelope.recipients.iter().map(String::as_str).collect();
        let header = Bytes::from(trace_headers(&envelope.sender, &recipients));
        let mut sha256 = dest.remote.then(Sha256::new);
        if let Some(sha) = &mut sha256 {
            sha.update(&header);
        }
        ObjectWrite {
            size: header.len(),
            header,
            sha256,
            hostname: hostname.to_string(),
            envelope,
            dest,
            upload: None,
            placed: None,
            touched: Vec::new(),
        }
    }

    /// The destination's name.
    pub fn destination(&self) -> &str {
        &self.dest.name
    }

    /// Sends `bytes` on to the store, starting the upload the first time; each wait for
    /// the store ends at `deadline`.
    pub async fn stream(&mut self, bytes: &[u8], deadline: Instant) -> Result<(), DeliveryError> {
        if self.upload.is_none() {
            let staging = Path::from(key::stream_staging_path(self.envelope.received));
            let mut options = PutMultipartOptions::default();
            if self.dest.remote {
                // The SHA-256 of the whole message is not known before its end: publish adds it.
                options.attributes = self.envelope.attributes(None);
            }
            // Segments may be written under the staging key from here on.
            self.touched.push(staging.clone());
            let upload = until(&self.dest, deadline, async {
                self.dest
                    .store
                    .put_multipart_opts(&staging, options)
                    .await
                    .map_err(|e| failed(&self.dest, e))
            })
            .await?;
            let mut part = PutPayloadMut::new();
            part.extend_from_slice(&self.header);
            self.upload = Some(Upload {
                staging,
                upload,
                part,
                sending: JoinSet::new(),
            });
        }
        let dest = &self.dest;
        let upload = self.upload.as_mut().expect("started above");
        until(dest, deadline, async {
            upload.write(bytes).await.map_err(|e| failed(dest, e))
        })
        .await?;
        if let Some(sha) = &mut self.sha256 {
            sha.update(bytes);
        }
        self.size += bytes.len();
        Ok(())
    }

    /// Completes the object with `rest` (for a buffered message, all of it) by `deadline`:
    /// under `cur/` when `stage` is false and nothing was streamed, else under `tmp/`.
    pub async fn finish(
        &mut self,
        rest: &Bytes,
        stage: bool,
        deadline: Instant,
    ) -> Result<(), DeliveryError> {
        if self.upload.is_some() && !rest.is_empty() {
            self.stream(rest, deadline).await?;
        }
        if let Some(upload) = &mut self.upload {
            let dest = &self.dest;
            until(dest, deadline, async {
                upload.complete().await.map_err(|e| failed(dest, e))
            })
            .await?;
            let staging = self.upload.take().expect("matched above").staging;
            // A streamed object's ETag is not the MD5 of its bytes: its copy is checked by
            // size. Its name, which holds the size, could not be chosen before now.
            let key = MessageKey::new(&self.hostname, self.size as u64);
            self.placed = Some(Placed::Staged(staged_meta(staging, self.size, None), key));
            return Ok(());
        }
        if let Some(sha) = &mut self.sha256 {
            sha.update(rest);
        }
        self.size += rest.len();
        let key = MessageKey::new(&self.hostname, self.size as u64);
        let mut options = PutOptions::from(write_mode(&self.dest));
        if self.dest.remote {
            let sha256 = self.sha256.clone().map(|s| hex(&s.finalize()));
            options.attributes = self.envelope.attributes(sha256);
        }
        let payload = PutPayload::from_iter([self.header.clone(), rest.clone()]);
        let (path, key, e_tag) = put_until_deadline(
            &self.dest,
            key,
            stage,
            payload,
            options,
            deadline,
            &mut self.touched,
        )
        .await?;
        self.placed = Some(if stage {
            Placed::Staged(staged_meta(path, self.size, e_tag), key)
        } else {
            Placed::Final(path.to_string())
        });
        Ok(())
    }

    /// Moves a staged object into `cur/` by `deadline` and returns its key there.
    pub async fn publish(&mut self, deadline: Instant) -> Result<String, DeliveryError> {
        let (staged, mut key) = match self.placed.clone() {
            Some(Placed::Final(key)) => return Ok(key),
            Some(Placed::Staged(meta, key)) => (meta, key),
            None => unreachable!("publish follows a successful finish"),
        };
        let mut renames = 0;
        loop {
            let target = Path::from(key.cur_path());
            self.touched.push(target.clone());
            let moved = tokio::time::timeout_at(
                deadline,
                move_staged(&self.dest, &staged, &target, self.sha256.as_ref()),
            )
            .await;
            match moved {
                Ok(Ok(())) => {
                    self.placed = Some(Placed::Final(target.to_string()));
                    return Ok(target.to_string());
                }
                Ok(Err(object_store::Error::AlreadyExists { .. })) if renames < MAX_RENAMES => {
                    // Someone else's object: never ours to delete.
                    self.touched.pop();
                    renames += 1;
                    key = key.renamed();
                    tracing::warn!(destination = %self.dest.name, taken = %target, key = %key.cur_path(), "name already taken: publishing under a new name");
                }
                Ok(Err(e)) => return Err(failed(&self.dest, e)),
                Err(_) => return Err(timed_out(&self.dest)),
            }
        }
    }

    /// The published key; the write is done and nothing will take it back.
    pub fn commit(mut self) -> String {
        self.touched.clear();
        match self.placed.take() {
            Some(Placed::Final(key)) => key,
            _ => unreachable!("commit follows a successful publish"),
        }
    }

    /// Takes back everything this write may have created (see the module documentation).
    pub async fn abort(mut self) {
        if let Some(cleanup) = self.take_cleanup() {
            cleanup.await;
        }
    }

    /// The clean-up still owed, leaving nothing for a second call or for `Drop`.
    fn take_cleanup(&mut self) -> Option<BoxFuture<'static, ()>> {
        let upload = self.upload.take();
        let touched = std::mem::take(&mut self.touched);
        if upload.is_none() && touched.is_empty() {
            return None;
        }
        let dest = self.dest.clone();
        let abort = upload.map(|upload| {
            let staging = upload.staging.clone();
            let upload = Arc::new(tokio::sync::Mutex::new(upload));
            let step = move || {
                let upload = upload.clone();
                async move { upload.lock().await.abort().await }
            };
            clean_up(dest.clone(), staging, "abort the upload at", step)
        });
        let deletes: Vec<_> = touched
            .into_iter()
            .map(|path| {
                let store = dest.store.clone();
                let key = path.clone();
                let step = move || {
                    let (store, path) = (store.clone(), path.clone());
                    async move {
                        match store.delete(&path).await {
                            Err(object_store::Error::NotFound { .. }) => Ok(()),
                            done => done,
                        }
                    }
                };
                clean_up(dest.clone(), key, "remove", step)
            })
            .collect();
        Some(Box::pin(async move {
            tokio::join!(join_all(abort), join_all(deletes));
        }))
    }
}

impl Drop for ObjectWrite {
    /// A write dropped before its end (client gone, message refused, a failed step) takes
    /// itself back in the background.
    fn drop(&mut self) {
        if let Some(cleanup) = self.take_cleanup() {
            crate::cleanup::spawn(cleanup);
        }
    }
}

fn staged_meta(location: Path, size: usize, e_tag: Option<String>) -> ObjectMeta {
    ObjectMeta {
        location,
        last_modified: chrono::Utc::now(),
        size: size as u64,
        e_tag,
        version: None,
    }
}

/// Moves a staged object to `target`: a Maildir links it without replacing a taken name;
/// Swift and S3 copy it (verified, with the SHA-256 added) and delete the staged object.
async fn move_staged(
    dest: &Destination,
    staged: &ObjectMeta,
    target: &Path,
    sha256: Option<&Sha256>,
) -> object_store::Result<()> {
    if !dest.remote {
        return dest
            .store
            .rename_if_not_exists(&staged.location, target)
            .await;
    }
    let update: Vec<(String, String)> = sha256
        .map(|s| ("sha256".to_string(), hex(&s.clone().finalize())))
        .into_iter()
        .collect();
    let mover = dest.mover();
    mover.copy_verified(staged, target, &update).await?;
    if let Err(e) = mover.delete_source(staged).await {
        // The message is in cur/ whole: a leftover under tmp/ costs space, not mail.
        tracing::warn!(destination = %dest.name, key = %staged.location, error = %e, "could not delete a staged object after publishing it");
    }
    Ok(())
}

/// Puts one object under `cur/` (staged: `tmp/`), retrying a remote store's failures with backoff until
/// `deadline`; returns its path, its key (renamed if the first name was taken) and ETag. Every key that may have been written is added to
/// `touched`. A retry writes the same key again, so it replaces, never duplicates; a name
/// found taken is a collision, written under a new name.
async fn put_until_deadline(
    dest: &Destination,
    mut key: MessageKey,
    stage: bool,
    payload: PutPayload,
    options: PutOptions,
    deadline: Instant,
    touched: &mut Vec<Path>,
) -> Result<(Path, MessageKey, Option<String>), DeliveryError> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    let mut renames = 0;
    loop {
        let path = Path::from(if stage {
            key.staged_path()
        } else {
            key.cur_path()
        });
        if touched.last() != Some(&path) {
            touched.push(path.clone());
        }
        let put = dest.store.put_opts(&path, payload.clone(), options.clone());
        let error = match tokio::time::timeout_at(deadline, put).await {
            Ok(Ok(result)) => return Ok((path, key, result.e_tag)),
            Ok(Err(e @ object_store::Error::AlreadyExists { .. })) => {
                // Nothing of ours is there: never take that object back.
                touched.pop();
                if renames == MAX_RENAMES {
                    return Err(failed(dest, e));
                }
                key = key.renamed();
                renames += 1;
                tracing::warn!(destination = %dest.name, taken = %path, key = %key.file_name(), "name already taken: writing under a new name");
                continue;
            }
            Ok(Err(e)) => e,
            Err(_) => return Err(timed_out(dest)),
        };
        let retry = dest.remote
            && !matches!(
                error,
                object_store::Error::NotImplemented { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::InvalidPath { .. }
            )
            && Instant::now() + backoff < deadline;
        if !retry {
            return Err(failed(dest, error));
        }
        tracing::warn!(destination = %dest.name, key = %path, attempt, error = %error, retry_in_ms = backoff.as_millis() as u64, "write failed; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}

/// How a message is written to `dest`. Never replace a stored message: a Maildir refuses a
/// taken name atomically. Swift's If-None-Match is not atomic and its S3 API refuses it:
/// there the name's random part keeps writers apart.
fn write_mode(dest: &Destination) -> PutMode {
    if dest.remote {
        PutMode::Overwrite
    } else {
        PutMode::Create
    }
}

/// Runs one clean-up `step` of a failed message (a delete, an upload's abort) within
/// [`CLEANUP_TIMEOUT`]; if it fails, tries again in the background with backoff for about
/// ten minutes, logging the key, so that an operator can find what stays.
async fn clean_up<F, Fut>(dest: Destination, key: Path, what: &'static str, mut step: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = object_store::Result<()>> + Send + 'static,
{
    if try_clean_up(&dest, &key, what, 1, &mut step).await {
        return;
    }
    // The client waits for the first try only.
    crate::cleanup::spawn(async move {
        let mut pause = Duration::from_secs(1);
        for attempt in 2..=CLEANUP_TRIES {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(120));
            if try_clean_up(&dest, &key, what, attempt, &mut step).await {
                return;
            }
        }
        tracing::error!(destination = %dest.name, %key, "clean-up of a failed delivery: gave up trying to {what} this key: do it by hand, or a duplicate (or stray parts) stays");
    });
}

/// One try of a clean-up step; true when it succeeded.
async fn try_clean_up<F, Fut>(
    dest: &Destination,
    key: &Path,
    what: &str,
    attempt: u32,
    step: &mut F,
) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = object_store::Result<()>>,
{
    let error = match tokio::time::timeout(CLEANUP_TIMEOUT, step()).await {
        Ok(Ok(())) => {
            tracing::info!(destination = %dest.name, %key, attempt, "clean-up of a failed delivery: {what} this key: done");
            return true;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    tracing::warn!(destination = %dest.name, %key, attempt, error, "clean-up of a failed delivery: could not {what} this key; trying again in the background");
    false
}

/// `Return-Path:` and `Delivered-To:` lines for one destination's copy. CR and LF are
/// dropped from addresses so that an address can never add a header of its own.
pub fn trace_headers(sender: &str, recipients: &[&str]) -> Vec<u8> {
    let clean = |s: &str| s.replace(['\r', '\n'], "");
    let mut out = format!("Return-Path: <{}>\r\n", clean(sender));
    for rcpt in recipients {
        out.push_str(&format!("Delivered-To: {}\r\n", clean(rcpt)));
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn maildir(root: &std::path::Path) -> Destination {
        let vars = vec![
            (
                "SWIFTDROP_DEFAULT_PATH".to_string(),
                root.display().to_string(),
            ),
            ("SWIFTDROP_SERVER_RELAY".to_string(), "off".to_string()),
        ];
        let config = crate::config::Config::from_sources(None, vars).unwrap();
        Destination::open(&config.destinations[0]).unwrap()
    }

    fn envelope() -> ObjectEnvelope {
        ObjectEnvelope {
            sender: "a@example.org".into(),
            recipients: vec!["b@example.com".into()],
            client: Client {
                peer: "127.0.0.1:25".parse().unwrap(),
                helo: None,
                forwarded: Default::default(),
            },
            received: chrono::Utc::now(),
            message_id: None,
        }
    }

    /// A name already taken on a Maildir (a collision) is never overwritten: the message is
    /// written under a new name, and what was there stays as it was.
    #[tokio::test]
    async fn a_taken_name_is_never_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("maildir");
        let dest = maildir(&root);
        let key = MessageKey::new("h", 5);
        let taken = root.join(key.cur_path());
        std::fs::write(&taken, b"first").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let options = PutOptions::from(write_mode(&dest));
        let payload = PutPayload::from_static(b"other");
        let mut touched = Vec::new();
        let (written, _, _) = put_until_deadline(
            &dest,
            key.clone(),
            false,
            payload,
            options,
            deadline,
            &mut touched,
        )
        .await
        .unwrap();
        assert_ne!(written.as_ref(), key.cur_path());
        assert_eq!(touched, vec![written.clone()], "the taken name is not ours");
        assert_eq!(std::fs::read(&taken).unwrap(), b"first");
        assert_eq!(
            std::fs::read(root.join(written.as_ref())).unwrap(),
            b"other"
        );
    }

    /// A staged write is under `tmp/` until published; an aborted one leaves nothing, and
    /// neither does a streamed one dropped halfway.
    #[tokio::test]
    async fn staged_writes_appear_only_when_published_and_aborts_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("maildir");
        let dest = maildir(&root);
        let count = |folder: &str| std::fs::read_dir(root.join(folder)).unwrap().count();
        let deadline = Instant::now() + Duration::from_secs(5);
        let body = Bytes::from_static(b"Subject: x\r\n\r\nbody\r\n");

        let mut write = ObjectWrite::new(dest.clone(), "h", envelope());
        write.finish(&body, true, deadline).await.unwrap();
        assert_eq!((count("tmp"), count("cur")), (1, 0));
        let key = write.publish(deadline).await.unwrap();
        assert_eq!((count("tmp"), count("cur")), (0, 1));
        assert_eq!(write.commit(), key);
        let stored = std::fs::read(root.join(&key)).unwrap();
        assert!(stored.ends_with(&body), "{stored:?}");

        let mut write = ObjectWrite::new(dest.clone(), "h", envelope());
        write.finish(&body, true, deadline).await.unwrap();
        write.publish(deadline).await.unwrap();
        write.abort().await;
        assert_eq!(
            (count("tmp"), count("cur")),
            (0, 1),
            "published, then taken back"
        );

        let mut write = ObjectWrite::new(dest.clone(), "h", envelope());
        write.stream(&body, deadline).await.unwrap();
        drop(write);
        crate::cleanup::wait(Duration::from_secs(5)).await;
        assert_eq!(
            (count("tmp"), count("cur")),
            (0, 1),
            "a dropped stream is aborted"
        );
    }
}
