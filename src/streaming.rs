//! Large messages, streamed to the stores while DATA arrives.
//!
//! Past `stream_threshold` (default 8 MiB) a session stops buffering: each destination gets
//! a multipart upload (an SLO on Swift, a multipart upload on S3, a file under `tmp/` in a
//! Maildir) at a staging key under `tmp/`, fed part by part. At the end of data each upload
//! is completed and renamed to its final `cur/` key, which names the size and so could not
//! be chosen earlier. Nothing is under `cur/` until the whole message is; a message that
//! is refused, too big or abandoned has its uploads aborted and staging objects deleted.
//! Memory stays bounded: a part being filled and at most [`PARTS_IN_FLIGHT`] being sent,
//! per destination.

use futures::future::join_all;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutMultipartOptions, WriteMultipart};

use crate::deliver::{Delivered, Deliverer, DeliveryError, StoredObject, rollback, trace_headers};
use crate::envelope::{Client, Envelope};
use crate::store::key::MessageKey;
use crate::store::{Destination, metadata};

/// Size of one part: S3's minimum for all parts but the last.
pub const PART_SIZE: usize = 5 << 20;
/// Parts of one destination being sent at once.
pub const PARTS_IN_FLIGHT: usize = 2;
/// Where uploads are staged; never under `cur/`.
pub const STAGING_FOLDER: &str = "tmp";

/// One destination's upload.
struct Upload {
    dest: Destination,
    staging: Path,
    size: usize,
    writer: Option<WriteMultipart>,
}

/// A message being streamed to its destinations.
pub struct MessageStream {
    uploads: Vec<Upload>,
}

impl std::fmt::Debug for MessageStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageStream")
            .field("uploads", &self.uploads.len())
            .finish()
    }
}

fn failed(dest: &Destination, e: impl std::fmt::Display) -> DeliveryError {
    DeliveryError::Store {
        destination: dest.name.clone(),
        error: e.to_string(),
    }
}

impl Deliverer {
    /// Starts uploads for every destination of `envelope`; `head` is the start of the
    /// message, read for its Message-ID.
    pub async fn start_stream(
        &self,
        envelope: &Envelope,
        client: &Client,
        head: &[u8],
    ) -> Result<MessageStream, DeliveryError> {
        let groups = envelope.by_destination();
        let received = chrono::Utc::now();
        let message_id = metadata::message_id(head);
        let mut stream = MessageStream {
            uploads: Vec::new(),
        };
        for (idx, rcpts) in groups {
            let dest = self.destinations()[idx].clone();
            let mut options = PutMultipartOptions::default();
            if dest.remote {
                // The SHA-256 of the whole message is not known before its end.
                options.attributes = metadata::attributes(&metadata::Envelope {
                    sender: &envelope.sender,
                    recipients: &rcpts,
                    client,
                    received,
                    sha256: None,
                    message_id: message_id.clone(),
                });
            }
            let staging = Path::from(format!(
                "{STAGING_FOLDER}/{}.{}.streaming",
                received.timestamp(),
                uuid::Uuid::new_v4().simple()
            ));
            let started = tokio::time::timeout(
                self.timeout(),
                dest.store.put_multipart_opts(&staging, options),
            )
            .await;
            let upload = match started {
                Ok(Ok(upload)) => upload,
                Ok(Err(e)) => {
                    stream.abort().await;
                    return Err(failed(&dest, e));
                }
                Err(_) => {
                    stream.abort().await;
                    return Err(DeliveryError::Timeout {
                        destination: dest.name.clone(),
                    });
                }
            };
            let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let header = trace_headers(&envelope.sender, &rcpts);
            writer.write(&header);
            stream.uploads.push(Upload {
                dest,
                staging,
                size: header.len(),
                writer: Some(writer),
            });
        }
        Ok(stream)
    }
}

impl MessageStream {
    /// Appends message bytes to every upload, waiting while too many parts are in flight.
    pub async fn write(&mut self, bytes: &[u8]) -> Result<(), DeliveryError> {
        for upload in &mut self.uploads {
            let writer = upload
                .writer
                .as_mut()
                .expect("writer until finish or abort");
            writer
                .wait_for_capacity(PARTS_IN_FLIGHT)
                .await
                .map_err(|e| failed(&upload.dest, e))?;
            writer.write(bytes);
            upload.size += bytes.len();
        }
        Ok(())
    }

    /// Completes every upload and moves it to its `cur/` key, within the store deadline;
    /// on any failure takes everything back.
    pub async fn finish(mut self, deliverer: &Deliverer) -> Result<Delivered, DeliveryError> {
        let deadline = tokio::time::Instant::now() + deliverer.timeout();
        let hostname = deliverer.hostname().to_string();
        let finishes = self.uploads.iter_mut().map(|upload| {
            let writer = upload.writer.take().expect("writer until finish");
            let key = MessageKey::new(&hostname, upload.size as u64).cur_path();
            let dest = upload.dest.clone();
            let staging = upload.staging.clone();
            async move {
                let work = async {
                    writer.finish().await.map_err(|e| failed(&dest, e))?;
                    dest.store
                        .rename(&staging, &Path::from(key.as_str()))
                        .await
                        .map_err(|e| failed(&dest, e))
                };
                let result = match tokio::time::timeout_at(deadline, work).await {
                    Ok(r) => r,
                    Err(_) => Err(DeliveryError::Timeout {
                        destination: dest.name.clone(),
                    }),
                };
                (dest, staging, key, result)
            }
        });
        let results = join_all(finishes).await;
        let failure = results.iter().find_map(|(_, _, _, r)| r.clone().err());
        match failure {
            None => Ok(Delivered {
                stored: results
                    .into_iter()
                    .map(|(dest, _, key, _)| StoredObject {
                        destination: dest.name,
                        key,
                    })
                    .collect(),
                relayed: None,
            }),
            Some(err) => {
                // Take back both final and staging objects: a rename may have half-happened.
                let mut written: Vec<(&Destination, String)> = Vec::new();
                for (dest, staging, key, _) in &results {
                    written.push((dest, key.clone()));
                    written.push((dest, staging.to_string()));
                }
                rollback(&written).await;
                Err(err)
            }
        }
    }

    /// Aborts every upload that is still open and deletes its staged parts.
    pub async fn abort(&mut self) {
        let aborts = self.uploads.iter_mut().filter_map(|u| {
            let writer = u.writer.take()?;
            let name = u.dest.name.clone();
            Some(async move {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(destination = %name, error = %e, "could not abort a streamed upload; its parts stay in the store");
                }
            })
        });
        join_all(aborts).await;
    }

    /// Bytes of the first destination's object so far (trace headers included).
    pub fn size(&self) -> usize {
        self.uploads.first().map(|u| u.size).unwrap_or(0)
    }
}

impl Drop for MessageStream {
    /// A stream dropped before its end (client gone, message refused) aborts its uploads
    /// in the background, so that no staged parts are left.
    fn drop(&mut self) {
        let writers: Vec<(String, WriteMultipart)> = self
            .uploads
            .iter_mut()
            .filter_map(|u| Some((u.dest.name.clone(), u.writer.take()?)))
            .collect();
        if writers.is_empty() {
            return;
        }
        crate::cleanup::spawn(async move {
            for (name, writer) in writers {
                if let Err(e) = writer.abort().await {
                    tracing::warn!(destination = %name, error = %e, "could not abort a streamed upload; its parts stay in the store");
                }
            }
        });
    }
}
