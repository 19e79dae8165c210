//! One destination's object for one message: [`ObjectWrite`] takes it from its first byte
//! to `cur/`, or back to nothing.
//!
//! Every write goes through the same steps, whether the message is held in memory or
//! streamed to the store while DATA arrives:
//!
//! 1. [`ObjectWrite::stream`] (messages past `stream_threshold` only): bytes go into a
//!    multipart upload as they arrive, a few parts in flight. The upload is named at a
//!    staging key under `tmp/`, or, where the store allows it (Swift: an SLO's manifest
//!    comes last), only when it completes ([`NamedAtEnd`]);
//! 2. [`ObjectWrite::finish`]: the object is complete and verified. A buffered message is
//!    one PUT (the store layer checks the ETag against the MD5 of the bytes; a remote
//!    store's failures are retried until the deadline); a streamed one's upload is
//!    completed. A write that is its transaction's only step goes straight to `cur/`
//!    (a streamed one only if its upload is named at its end: its name holds its size);
//!    otherwise it is staged under `tmp/`, where no worker looks, until every other step
//!    succeeded;
//! 3. [`ObjectWrite::publish`]: a staged object is moved into `cur/`: on a Maildir by a link
//!    that never replaces a taken name, on Swift and S3 by a server-side copy verified by
//!    ETag or size (adding the SHA-256 a streamed object could not carry from its start,
//!    retried until the deadline), then the staged object is deleted;
//! 4. [`ObjectWrite::abort`]: every key the write may have created (staged, final, a move
//!    half done) is deleted and an open upload is aborted. A write dropped unfinished does
//!    the same in the background ([`crate::filter::cleanup`]). When a step was cut off by the
//!    deadline, its request may still land after that: the deletes are repeated later.
//!
//! A name found taken is never replaced: the write takes a new one ([`MessageKey::renamed`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::{BoxFuture, join_all};
use object_store::path::Path;
use object_store::{
    Attributes, MultipartUpload, ObjectMeta, ObjectStoreExt, PutMode, PutMultipartOptions,
    PutOptions, PutPayload, PutPayloadMut,
};
use sha2::{Digest, Sha256};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::memory::{PART_SIZE, PARTS_IN_FLIGHT};
use crate::filter::outcome::DeliveryError;
use crate::queue::{LockEngine, moved_on};
use crate::store::key::{self, MessageKey};
use crate::store::mover::{NamedAtEnd, is_copy_mismatch};
use crate::store::{Destination, metadata, trace};
use crate::telemetry::metrics::{Dest, Kind, metrics};
use crate::util::hex::hex;
use crate::util::logging::list;

/// Bound on each clean-up request; what fails is retried in the background. A failed
/// message's clean-up makes at most two in a row while its client waits (an upload's abort,
/// then the deletes).
pub const CLEANUP_TIMEOUT: Duration = Duration::from_secs(4);
/// Wait before the first retry of a failed remote write; doubled for each next one.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest wait between retries.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// New names a write tries after finding its name taken.
const MAX_RENAMES: u32 = 3;
/// Tries of one clean-up step in all (1 s, doubling to 2 min between them: about 7 min).
const CLEANUP_TRIES: u32 = 10;
/// When a try ended without a definite answer, how long after its clean-up the deletes
/// are repeated: longer than one store request may take (`timeout`, default 20 s), and
/// at least a server-side copy's time plus [`LATE_MARGIN`] (see [`late_landing`]).
const LATE_LANDING: Duration = Duration::from_secs(60);
/// What a late delete waits beyond the longest a copy may take.
const LATE_MARGIN: Duration = Duration::from_secs(10);

/// How long after a clean-up a request that got no answer may still land: a server-side
/// copy of `size` bytes goes on at the store after swiftdrop gave up on it.
fn late_landing(dest: &Destination, size: usize) -> Duration {
    LATE_LANDING.max(dest.copy_time(size as u64) + LATE_MARGIN)
}

/// A multipart upload in progress. Its parts are sent by hand rather than through
/// object_store's `WriteMultipart`, which gives up its upload on `finish`: a completion
/// that times out must still be abortable, or its parts stay in the store.
struct Upload {
    staging: Path,
    upload: Parts,
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
            // The first part also holds the trace headers, which may pass PART_SIZE alone.
            let room = PART_SIZE.saturating_sub(self.part.content_length());
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            self.part.extend_from_slice(now);
            bytes = later;
            if self.part.content_length() >= PART_SIZE {
                self.send_part().await?;
            }
        }
        Ok(())
    }

    async fn send_part(&mut self) -> object_store::Result<()> {
        self.wait_for_parts(PARTS_IN_FLIGHT - 1).await?;
        let part = std::mem::take(&mut self.part).freeze();
        self.sending.spawn(self.upload.as_upload().put_part(part));
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

    /// Sends the last part and waits until every part is stored.
    async fn send_rest(&mut self) -> object_store::Result<()> {
        if self.part.content_length() > 0 {
            self.send_part().await?;
        }
        self.wait_for_parts(0).await
    }

    /// Completes the upload at its staging key (every part is stored), with `attributes`
    /// when it is named at its end (one named when it began has its attributes already).
    async fn complete_staged(&mut self, attributes: &Attributes) -> object_store::Result<()> {
        match &mut self.upload {
            Parts::AtStaging(upload) => upload.complete().await.map(|_| ()),
            Parts::NamedAtEnd(upload) => upload
                .complete_at(&self.staging, attributes)
                .await
                .map(|_| ()),
        }
    }

    /// Stops sending parts and asks the store to drop those it has (again if need be).
    async fn abort(&mut self) -> object_store::Result<()> {
        self.sending.shutdown().await;
        self.upload.as_upload().abort().await
    }
}

/// The store's side of an upload.
enum Parts {
    /// Named at the staging key when it began: completed there, then copied to `cur/`.
    AtStaging(Box<dyn MultipartUpload>),
    /// Named when it completes: straight at its key under `cur/` when it is its
    /// transaction's only step.
    NamedAtEnd(Box<dyn NamedAtEnd>),
}

impl Parts {
    fn as_upload(&mut self) -> &mut dyn MultipartUpload {
        match self {
            Parts::AtStaging(upload) => upload.as_mut(),
            Parts::NamedAtEnd(upload) => upload.as_mut(),
        }
    }
}

/// Where a finished object is.
#[derive(Debug, Clone)]
enum Placed {
    /// Under `cur/` at this key: written there as its message's only step, or published.
    InCur(String),
    /// Under `tmp/` (`staged`: its size and ETag verify the copy) until
    /// [`ObjectWrite::publish`] moves it to `cur/` under `key`.
    Staged { staged: ObjectMeta, key: MessageKey },
}

/// One destination's object for one message (see the module documentation).
pub struct ObjectWrite {
    dest: Destination,
    hostname: String,
    envelope: metadata::Envelope,
    /// `Return-Path:` and `Delivered-To:` lines, the object's first bytes.
    header: Bytes,
    /// Over every byte of the object so far (remote destinations only: their metadata).
    sha256: Option<Sha256>,
    size: usize,
    upload: Option<Upload>,
    placed: Option<Placed>,
    /// Every key this write may have created: what an abort deletes.
    touched: Vec<Path>,
    /// A try failed without a definite answer (cut off by the deadline, a request timeout,
    /// a lost connection): its request may still land after the clean-up.
    outcome_unknown: bool,
    /// The lock engine workers take this destination's mail under, when the filter knows
    /// it: asked whether a worker took on a message whose write's answer was lost.
    claims: Option<Arc<dyn LockEngine>>,
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

/// Runs `work` until `deadline`; past it, the destination's timeout error, and `outcome_unknown`
/// is set.
async fn until<T>(
    dest: &Destination,
    deadline: Instant,
    outcome_unknown: &mut bool,
    work: impl Future<Output = Result<T, DeliveryError>>,
) -> Result<T, DeliveryError> {
    match tokio::time::timeout_at(deadline, work).await {
        Ok(result) => result,
        Err(_) => {
            *outcome_unknown = true;
            Err(timed_out(dest))
        }
    }
}

impl ObjectWrite {
    /// A write of `envelope`'s copy to `dest`; nothing is sent yet. `hostname` goes into
    /// the object's name.
    pub fn new(dest: Destination, hostname: &str, envelope: metadata::Envelope) -> Self {
        let recipients: Vec<&str> = envelope.recipients.iter().map(String::as_str).collect();
        let header = Bytes::from(trace::lines_for(&envelope.sender, &recipients));
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
            outcome_unknown: false,
            claims: None,
        }
    }

    /// The same write, asking `claims` (the queue's lock engine) whether a worker took on
    /// the message before it writes it again after a lost answer.
    pub fn watching(mut self, claims: Option<Arc<dyn LockEngine>>) -> Self {
        self.claims = claims;
        self
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
            // Segments may be written under the staging key from here on.
            self.touched.push(staging.clone());
            let upload = until(&self.dest, deadline, &mut self.outcome_unknown, async {
                start_upload(&self.dest, &self.envelope, &staging)
                    .await
                    .map_err(|e| failed(&self.dest, e))
            })
            .await?;
            if matches!(upload, Parts::NamedAtEnd(_)) {
                // Nothing is written at the staging key unless the upload completes there.
                self.touched.pop();
            }
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
        until(dest, deadline, &mut self.outcome_unknown, async {
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
    /// under `cur/` when `stage` is false and the store can name it there (nothing was
    /// streamed, or the upload is named at its end), else under `tmp/`.
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
            until(dest, deadline, &mut self.outcome_unknown, async {
                upload.send_rest().await.map_err(|e| failed(dest, e))
            })
            .await?;
            // Its name, which holds the size, could not be chosen before now.
            let key = MessageKey::new(&self.hostname, self.size as u64);
            if !stage && matches!(upload.upload, Parts::NamedAtEnd(_)) {
                return self.complete_in_cur(key, deadline).await;
            }
            if matches!(upload.upload, Parts::NamedAtEnd(_)) {
                self.touched.push(upload.staging.clone());
            }
            // The SHA-256 of the whole message is not known yet: publish adds it.
            let attributes = if dest.remote {
                metadata::attributes(&self.envelope, None)
            } else {
                Attributes::new()
            };
            until(dest, deadline, &mut self.outcome_unknown, async {
                upload
                    .complete_staged(&attributes)
                    .await
                    .map_err(|e| failed(dest, e))
            })
            .await?;
            let staging = self.upload.take().expect("matched above").staging;
            // A streamed object's ETag is not the MD5 of its bytes: its copy is checked by
            // size.
            self.placed = Some(Placed::Staged {
                staged: staged_meta(staging, self.size, None),
                key,
            });
            return Ok(());
        }
        // The SHA-256 (metadata) and the MD5 (to check a lost answer; only remote stores try
        // again) of a large message are CPU work: off the runtime's worker threads.
        let (sha, header, body, remote) = (
            self.sha256.take(),
            self.header.clone(),
            rest.clone(),
            self.dest.remote,
        );
        let (sha, md5) = if rest.len() < HASH_INLINE {
            digests(sha, &header, &body, remote)
        } else {
            tokio::task::spawn_blocking(move || digests(sha, &header, &body, remote))
                .await
                .map_err(|e| failed(&self.dest, e))?
        };
        self.sha256 = sha;
        self.size += rest.len();
        let key = MessageKey::new(&self.hostname, self.size as u64);
        let mut options = PutOptions::from(write_mode(&self.dest));
        if self.dest.remote {
            let sha256 = self.sha256.clone().map(|s| hex(&s.finalize()));
            options.attributes = metadata::attributes(&self.envelope, sha256);
        }
        let payload = PutPayload::from_iter([self.header.clone(), rest.clone()]);
        let place = if stage {
            MessageKey::staged_path
        } else {
            MessageKey::cur_path
        };
        let store = &self.dest.store;
        let put = |path: Path| {
            let (payload, options) = (payload.clone(), options.clone());
            async move {
                let put = store.put_opts(&path, payload, options).await?;
                Ok(put.e_tag)
            }
        };
        let (dest, claims) = (&self.dest, self.claims.as_deref());
        let landed = |path: Path| put_landed(dest, claims, path, &md5);
        let (path, key, e_tag) = write_under_free_name(
            &self.dest,
            Attempts {
                touched: &mut self.touched,
                outcome_unknown: &mut self.outcome_unknown,
            },
            key,
            place,
            deadline,
            put,
            landed,
        )
        .await?;
        self.placed = Some(if stage {
            Placed::Staged {
                staged: staged_meta(path, self.size, e_tag),
                key,
            }
        } else {
            Placed::InCur(path.to_string())
        });
        Ok(())
    }

    /// Completes an upload named at its end as the object at `key` under `cur/`, carrying all
    /// of its metadata (the SHA-256 included): no copy. Tried again as any remote write is;
    /// a try whose answer was lost counts as landed when the object there has this
    /// message's size, SHA-256 and the ETag its parts make. Once it stands, its parts are
    /// its own: the upload is never aborted after that.
    async fn complete_in_cur(
        &mut self,
        key: MessageKey,
        deadline: Instant,
    ) -> Result<(), DeliveryError> {
        let hash = self.sha256.clone().map(|s| hex(&s.finalize()));
        let attributes = &metadata::attributes(&self.envelope, hash.clone());
        let Some(Upload {
            upload: Parts::NamedAtEnd(upload),
            ..
        }) = &self.upload
        else {
            unreachable!("finish completes only uploads named at their end in cur/");
        };
        let upload: &dyn NamedAtEnd = upload.as_ref();
        let (dest, claims, size) = (&self.dest, self.claims.as_deref(), self.size as u64);
        let Some(e_tag) = upload.e_tag() else {
            return Err(failed(dest, "the upload's parts are not all stored"));
        };
        let complete =
            move |path: Path| async move { Ok(upload.complete_at(&path, attributes).await?.e_tag) };
        let landed = |path: Path| {
            let (hash, e_tag) = (hash.clone(), e_tag.clone());
            async move { move_landed(dest, claims, path, size, hash, Some(&e_tag)).await }
        };
        let (path, _, _) = write_under_free_name(
            dest,
            Attempts {
                touched: &mut self.touched,
                outcome_unknown: &mut self.outcome_unknown,
            },
            key,
            MessageKey::cur_path,
            deadline,
            complete,
            landed,
        )
        .await?;
        self.upload = None;
        self.placed = Some(Placed::InCur(path.to_string()));
        Ok(())
    }

    /// Moves a staged object into `cur/` by `deadline` and returns its key there (for an
    /// object written there directly, just that key).
    pub async fn publish(&mut self, deadline: Instant) -> Result<String, DeliveryError> {
        let (staged, key) = match self.placed.clone() {
            Some(Placed::InCur(key)) => return Ok(key),
            Some(Placed::Staged { staged, key }) => (staged, key),
            None => return Err(failed(&self.dest, "publish before the object was finished")),
        };
        let (dest, sha256, claims) = (&self.dest, self.sha256.as_ref(), self.claims.as_deref());
        let staged = &staged;
        let move_to = |target: Path| async move {
            move_staged(dest, staged, &target, sha256).await?;
            Ok(None)
        };
        // A copy that landed although its answer was lost carries our SHA-256 (only remote
        // stores try a move again, and their objects carry it).
        let hash = sha256.map(|s| hex(&s.clone().finalize()));
        let landed =
            |target: Path| move_landed(dest, claims, target, staged.size, hash.clone(), None);
        let (target, _, _) = write_under_free_name(
            dest,
            Attempts {
                touched: &mut self.touched,
                outcome_unknown: &mut self.outcome_unknown,
            },
            key,
            MessageKey::cur_path,
            deadline,
            move_to,
            landed,
        )
        .await?;
        self.placed = Some(Placed::InCur(target.to_string()));
        if self.dest.remote {
            // The message is in cur/ whole: what stays under tmp/ costs space, not mail.
            // It is removed after the deadline's work: one try now, the rest in the
            // background.
            let location = staged.location.clone();
            let (mover, staged) = (self.dest.mover(), staged.clone());
            let step = move || {
                let (mover, staged) = (mover.clone(), staged.clone());
                async move { mover.remove(&staged).await }
            };
            clean_up(self.dest.clone(), location, "remove the staged copy", step).await;
        }
        Ok(target.to_string())
    }

    /// The published key; the write is done and nothing will take it back.
    pub fn commit(mut self) -> String {
        self.touched.clear();
        match self.placed.take() {
            Some(Placed::InCur(key)) => key,
            _ => unreachable!("Delivery commits only writes whose publish succeeded"),
        }
    }

    /// Takes back everything this write may have created (see the module documentation).
    pub async fn abort(mut self) {
        if let Some(cleanup) = self.take_cleanup() {
            cleanup.await;
        }
    }

    /// The clean-up still owed, leaving nothing for a second call or for `Drop`: an open
    /// upload's abort first (a completion it races with would else land after the deletes),
    /// then the deletes; all of it again after [`LATE_LANDING`] if a step was cut off or a
    /// part was still in flight (an abort cancels it on our side only).
    fn take_cleanup(&mut self) -> Option<BoxFuture<'static, ()>> {
        let upload = self.upload.take();
        let touched = std::mem::take(&mut self.touched);
        if upload.is_none() && touched.is_empty() {
            return None;
        }
        let dest = self.dest.clone();
        // A part cut off in flight may still land after the abort, as may a try that
        // ended without an answer.
        let in_flight = upload.as_ref().is_some_and(|u| !u.sending.is_empty());
        let outcome_unknown = self.outcome_unknown || in_flight;
        let late = late_landing(&dest, self.size);
        let upload = upload.map(|u| (u.staging.clone(), Arc::new(tokio::sync::Mutex::new(u))));
        Some(Box::pin(async move {
            abort_upload(&dest, upload.as_ref()).await;
            delete_all(&dest, &touched).await;
            if outcome_unknown {
                crate::filter::cleanup::spawn(async move {
                    if !crate::filter::cleanup::pause(late).await {
                        let keys: Vec<String> = touched.iter().map(ToString::to_string).collect();
                        tracing::warn!(destination = %dest.name, keys = list(&keys), "shutdown: deleting again before the minute for late landings is over; a write still in flight may land after this");
                    }
                    abort_upload(&dest, upload.as_ref()).await;
                    delete_all(&dest, &touched).await;
                });
            }
        }))
    }
}

/// An upload for `envelope`'s message, named when it completes where `dest` can (asked of
/// its mover, as the moves of staged objects are), else at `staging`.
async fn start_upload(
    dest: &Destination,
    envelope: &metadata::Envelope,
    staging: &Path,
) -> object_store::Result<Parts> {
    if let Some(upload) = dest.mover().upload_named_at_end().await? {
        return Ok(Parts::NamedAtEnd(upload));
    }
    let mut options = PutMultipartOptions::default();
    if dest.remote {
        // The SHA-256 of the whole message is not known before its end: publish adds it.
        options.attributes = metadata::attributes(envelope, None);
    }
    let upload = dest.store.put_multipart_opts(staging, options).await?;
    Ok(Parts::AtStaging(upload))
}

/// Aborts `upload` (its staging key and the upload), through [`clean_up`]; an upload
/// already gone (a repeated abort, a completion that won) counts as aborted.
async fn abort_upload(
    dest: &Destination,
    upload: Option<&(Path, Arc<tokio::sync::Mutex<Upload>>)>,
) {
    let Some((staging, upload)) = upload else {
        return;
    };
    let upload = upload.clone();
    let step = move || {
        let upload = upload.clone();
        async move {
            match upload.lock().await.abort().await {
                Err(object_store::Error::NotFound { .. }) => Ok(()),
                done => done,
            }
        }
    };
    clean_up(dest.clone(), staging.clone(), "abort the upload at", step).await;
}

/// Deletes every key in `paths` at once, each through [`clean_up`] (a missing one is fine).
async fn delete_all(dest: &Destination, paths: &[Path]) {
    let deletes = paths.iter().map(|path| {
        let store = dest.store.clone();
        let key = path.clone();
        let step = move || {
            let (store, key) = (store.clone(), key.clone());
            async move {
                match store.delete(&key).await {
                    Err(object_store::Error::NotFound { .. }) => Ok(()),
                    done => done,
                }
            }
        };
        clean_up(dest.clone(), path.clone(), "remove", step)
    });
    join_all(deletes).await;
}

impl Drop for ObjectWrite {
    /// A write dropped before its end (client gone, message refused, a failed step) takes
    /// itself back in the background.
    fn drop(&mut self) {
        if let Some(cleanup) = self.take_cleanup() {
            crate::filter::cleanup::spawn(cleanup);
        }
    }
}

/// Bytes hashed on the runtime's thread; larger messages are hashed on a blocking thread.
const HASH_INLINE: usize = 256 * 1024;

/// `sha` (the SHA-256 so far, remote stores only) updated with `body`, and for a remote
/// store the MD5 of `header` and `body` (hex; empty otherwise).
fn digests(
    sha: Option<Sha256>,
    header: &[u8],
    body: &[u8],
    remote: bool,
) -> (Option<Sha256>, String) {
    let sha = sha.map(|mut s| {
        s.update(body);
        s
    });
    let md5 = if remote {
        let mut md5 = md5::Md5::new();
        md5.update(header);
        md5.update(body);
        hex(&md5.finalize())
    } else {
        String::new()
    };
    (sha, md5)
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

/// Moves a staged object to `target`: a Maildir links it without replacing a taken name
/// (and unlinks the staged name); Swift and S3 copy it, verified, with the SHA-256 added
/// (the caller deletes the staged object).
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
    match mover.copy_verified(staged, target, &update).await {
        // A copy that is not the message must not stand under cur/ (the try again, or the
        // landed check, would take it for the message).
        Err(e) if is_copy_mismatch(&e) => {
            if let Err(deleted) = dest.store.delete(target).await {
                tracing::warn!(key = %target, error = %deleted, "cannot delete a copy that does not match; the clean-up tries again");
            }
            Err(e)
        }
        other => other,
    }
}

/// Whether a failed try of a write landed after all (its answer lost).
enum Landed {
    /// Not there, or not what was written: try again.
    No,
    /// There, whole; with the object's ETag.
    Whole(Option<String>),
}

/// What the tries of a write leave behind in its [`ObjectWrite`].
struct Attempts<'a> {
    /// Every key tried, for the clean-up.
    touched: &'a mut Vec<Path>,
    /// Set when a try failed without a definite answer from the store.
    outcome_unknown: &'a mut bool,
}

/// Writes at the path `place` gives `key` with `write`, until it succeeds or `deadline`:
/// a remote store's failures are tried again with backoff (after `landed` says whether
/// the failed try landed after all: a lost answer must not become a second copy that a
/// worker may take); a taken name (a collision) is never replaced nor taken back, the
/// write goes to a new name. Every path tried is added to `attempts.touched`. Returns the path,
/// the key and what `write` returned (an ETag).
async fn write_under_free_name<W, WF, L, LF>(
    dest: &Destination,
    attempts: Attempts<'_>,
    mut key: MessageKey,
    place: fn(&MessageKey) -> String,
    deadline: Instant,
    mut write: W,
    mut landed: L,
) -> Result<(Path, MessageKey, Option<String>), DeliveryError>
where
    W: FnMut(Path) -> WF,
    WF: Future<Output = object_store::Result<Option<String>>>,
    L: FnMut(Path) -> LF,
    LF: Future<Output = object_store::Result<Landed>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    let mut renames = 0;
    loop {
        let path = Path::from(place(&key));
        if attempts.touched.last() != Some(&path) {
            attempts.touched.push(path.clone());
        }
        let error = match tokio::time::timeout_at(deadline, write(path.clone())).await {
            Ok(Ok(e_tag)) => return Ok((path, key, e_tag)),
            Ok(Err(e @ object_store::Error::AlreadyExists { .. })) => {
                // Nothing of ours is there: never take that object back.
                attempts.touched.pop();
                if renames == MAX_RENAMES {
                    return Err(failed(dest, e));
                }
                renames += 1;
                key = key.renamed();
                tracing::warn!(destination = %dest.name, taken = %path, key = %place(&key), "name already taken: writing under a new name");
                continue;
            }
            Ok(Err(e)) => {
                // Only a refusal by the store is definite; a timeout or a lost connection
                // may still land later.
                if !matches!(
                    e,
                    object_store::Error::NotFound { .. }
                        | object_store::Error::Precondition { .. }
                        | object_store::Error::NotImplemented { .. }
                        | object_store::Error::NotSupported { .. }
                        | object_store::Error::InvalidPath { .. }
                        | object_store::Error::PermissionDenied { .. }
                        | object_store::Error::Unauthenticated { .. }
                ) {
                    *attempts.outcome_unknown = true;
                }
                e
            }
            Err(_) => {
                *attempts.outcome_unknown = true;
                return Err(timed_out(dest));
            }
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
        metrics()
            .store_retries
            .get_or_create(&Dest {
                destination: dest.name.clone(),
            })
            .inc();
        tokio::time::sleep(backoff).await;
        match tokio::time::timeout_at(deadline, landed(path.clone())).await {
            Ok(Ok(Landed::Whole(e_tag))) => {
                tracing::info!(destination = %dest.name, key = %path, attempt, "the failed write had landed whole");
                return Ok((path, key, e_tag));
            }
            Ok(Ok(Landed::No)) => {}
            // Whether the lost try landed (and a worker took it) is not known: writing it
            // again could hand a worker a second copy. The client tries again instead.
            Ok(Err(e)) => {
                *attempts.outcome_unknown = true;
                return Err(failed(
                    dest,
                    format!("cannot tell whether a failed write landed: {e}"),
                ));
            }
            Err(_) => {
                *attempts.outcome_unknown = true;
                return Err(timed_out(dest));
            }
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
        attempt += 1;
    }
}

/// Whether the object at `path` is the one written: its ETag is `md5` (the MD5 of the
/// bytes sent, hex).
async fn put_landed(
    dest: &Destination,
    claims: Option<&dyn LockEngine>,
    path: Path,
    md5: &str,
) -> object_store::Result<Landed> {
    let head = match dest.store.head(&path).await {
        Ok(head) => head,
        Err(object_store::Error::NotFound { .. }) => return taken_on(dest, claims, &path).await,
        Err(e) => return Err(e),
    };
    let found = head.e_tag.as_deref().map(|e| e.trim_matches('"'));
    Ok(if found == Some(md5) {
        Landed::Whole(head.e_tag)
    } else {
        Landed::No
    })
}

/// For a `cur/` name that is not there: whether a worker already took it on (a claim moved
/// it to `processing/`, and on). Names are unique, so any copy under the same name in a
/// later queue folder is this message: it landed, and writing it again would hand a worker
/// a second copy.
async fn taken_on(
    dest: &Destination,
    claims: Option<&dyn LockEngine>,
    path: &Path,
) -> object_store::Result<Landed> {
    let Some(name) = path.as_ref().strip_prefix("cur/") else {
        return Ok(Landed::No);
    };
    match moved_on(dest, claims, name).await {
        Ok(true) => Ok(Landed::Whole(None)),
        Ok(false) => Ok(Landed::No),
        Err(e) => Err(object_store::Error::Generic {
            store: "queue",
            source: Box::new(e),
        }),
    }
}

/// Whether the object at `target` is this message as a move into `cur/` or an upload
/// completed there wrote it: it carries the message's `sha256` (which only those writes set),
/// its size and, when given, the ETag `e_tag` (what the store made of an upload's parts).
async fn move_landed(
    dest: &Destination,
    claims: Option<&dyn LockEngine>,
    target: Path,
    size: u64,
    sha256: Option<String>,
    e_tag: Option<&str>,
) -> object_store::Result<Landed> {
    let head = match dest
        .store
        .get_opts(&target, object_store::GetOptions::new().with_head(true))
        .await
    {
        Ok(head) => head,
        Err(object_store::Error::NotFound { .. }) => {
            return taken_on(dest, claims, &target).await;
        }
        Err(e) => return Err(e),
    };
    let carried = head
        .attributes
        .get(&object_store::Attribute::Metadata("sha256".into()))
        .map(|v| v.as_ref().to_string());
    Ok(
        if head.meta.size == size
            && sha256.is_some()
            && carried == sha256
            && e_tag.is_none_or(|e| head.meta.e_tag.as_deref() == Some(e))
        {
            Landed::Whole(None)
        } else {
            Landed::No
        },
    )
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

/// Runs one clean-up `step` (a delete, an upload's abort) within
/// [`CLEANUP_TIMEOUT`]; if it fails, tries again in the background with backoff for about
/// seven minutes ([`CLEANUP_TRIES`]), logging the key, so that an operator can find what
/// stays.
async fn clean_up<F, Fut>(dest: Destination, key: Path, what: &'static str, mut step: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = object_store::Result<()>> + Send + 'static,
{
    if try_clean_up(&dest, &key, what, 1, &mut step).await {
        return;
    }
    // The client waits for the first try only.
    crate::filter::cleanup::spawn(async move {
        let mut pause = Duration::from_secs(1);
        for attempt in 2..=CLEANUP_TRIES {
            crate::filter::cleanup::pause(pause).await;
            pause = (pause * 2).min(Duration::from_secs(120));
            if try_clean_up(&dest, &key, what, attempt, &mut step).await {
                return;
            }
        }
        tracing::error!(destination = %dest.name, %key, "clean-up: gave up trying to {what} this key: do it by hand, or a duplicate (or stray parts) stays");
        metrics()
            .rollback_steps
            .get_or_create(&Kind { kind: "gave_up" })
            .inc();
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
            tracing::info!(destination = %dest.name, %key, attempt, "clean-up: {what} this key: done");
            metrics()
                .rollback_steps
                .get_or_create(&Kind { kind: "done" })
                .inc();
            return true;
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_string(),
    };
    tracing::warn!(destination = %dest.name, %key, attempt, error, "clean-up: could not {what} this key; trying again in the background");
    if attempt == 1 {
        // Once per step: it then ends `done` or `gave_up`.
        metrics()
            .rollback_steps
            .get_or_create(&Kind { kind: "failed" })
            .inc();
    }
    false
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

    fn envelope() -> metadata::Envelope {
        metadata::Envelope {
            sender: "a@example.org".into(),
            recipients: vec!["b@example.com".into()],
            client_addr: "127.0.0.1".into(),
            client_helo: None,
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
        let (mut touched, mut outcome_unknown) = (Vec::new(), false);
        let put = |path: Path| {
            let (store, payload, options) = (dest.store.clone(), payload.clone(), options.clone());
            async move { Ok(store.put_opts(&path, payload, options).await?.e_tag) }
        };
        let never = |_: Path| async { Ok(Landed::No) };
        let attempts = Attempts {
            touched: &mut touched,
            outcome_unknown: &mut outcome_unknown,
        };
        let (written, _, _) = write_under_free_name(
            &dest,
            attempts,
            key.clone(),
            MessageKey::cur_path,
            deadline,
            put,
            never,
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

        // Trace headers longer than a part (many long recipients) go out as parts too.
        let mut many = envelope();
        many.recipients = (0..60_000)
            .map(|i| format!("recipient-{i:08}-{}@example.com", "x".repeat(60)))
            .collect();
        let mut write = ObjectWrite::new(dest.clone(), "h", many);
        assert!(write.size > PART_SIZE);
        write.stream(&body, deadline).await.unwrap();
        write.finish(&Bytes::new(), true, deadline).await.unwrap();
        let key = write.publish(deadline).await.unwrap();
        let stored = std::fs::read(root.join(write.commit())).unwrap();
        assert!(stored.ends_with(&body) && stored.len() > PART_SIZE, "{key}");
        std::fs::remove_file(root.join(&key)).unwrap();

        let mut write = ObjectWrite::new(dest.clone(), "h", envelope());
        write.stream(&body, deadline).await.unwrap();
        drop(write);
        crate::filter::cleanup::wait(Duration::from_secs(5)).await;
        assert_eq!(
            (count("tmp"), count("cur")),
            (0, 1),
            "a dropped stream is aborted"
        );
    }
}
