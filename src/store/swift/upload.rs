//! Multipart uploads as Swift static large objects (SLO).
//!
//! Each part is a verified PUT into `<container>_segments` under
//! `<key>/<upload id>/<part number>`; `complete` PUTs the manifest at the key, which is when
//! the object appears, whole. `abort` deletes the segments. Swift checks each segment's
//! Etag against the manifest, and the manifest's Etag (the MD5 of the segment MD5s) is
//! compared with the one computed here.
//!
//! Since the manifest comes last, an upload may also begin without a key and get one when
//! it completes ([`NamedAtEnd::complete_at`]): a streamed message goes straight to its
//! final name under `cur/`, which holds its size, without a server-side copy of its bytes.
//! Its segments are named `streamed/<upload id>/<part number>`: once the manifest stands
//! they are mail, deleted with it.

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::join_all;
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{Attributes, MultipartUpload, PutPayload, PutResult, Result, UploadPart};
use reqwest::Method;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use super::client::{Inner, Request, attribute_headers, generic, response_etag, status_error};
use crate::store::mover::NamedAtEnd;
use crate::util::hex::hex;

/// A segment that Swift confirmed.
#[derive(Debug, Clone)]
struct Segment {
    name: String,
    md5: String,
    size: usize,
}

/// An SLO being uploaded.
#[derive(Debug)]
pub struct SloUpload {
    inner: Arc<Inner>,
    /// Where [`MultipartUpload::complete`] puts the manifest; `None` for an upload named at
    /// its end, which only [`NamedAtEnd::complete_at`] completes.
    location: Option<Path>,
    segments_container: String,
    prefix: String,
    headers: HeaderMap,
    parts: Arc<Mutex<Vec<Option<Segment>>>>,
}

impl SloUpload {
    pub(super) fn new(
        inner: Arc<Inner>,
        location: Path,
        segments_container: String,
        headers: HeaderMap,
    ) -> Self {
        let prefix = format!("{}/{}", location.as_ref(), uuid::Uuid::new_v4().simple());
        SloUpload {
            inner,
            location: Some(location),
            segments_container,
            prefix,
            headers,
            parts: Arc::new(Mutex::new(Vec::new())),
        }
    }

    /// An upload whose key and metadata are given when it completes.
    pub(super) fn named_at_end(inner: Arc<Inner>, segments_container: String) -> Self {
        SloUpload {
            inner,
            location: None,
            segments_container,
            prefix: format!("streamed/{}", uuid::Uuid::new_v4().simple()),
            headers: HeaderMap::new(),
            parts: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn segments(&self) -> Vec<Option<Segment>> {
        self.parts.lock().expect("parts lock").clone()
    }

    /// The manifest of the segments (every one confirmed) and the SLO's Etag: the MD5 of
    /// their MD5s, as Swift computes it.
    fn manifest(&self, location: &Path) -> Result<(Vec<serde_json::Value>, String)> {
        let parts = self.segments();
        let mut manifest = Vec::with_capacity(parts.len());
        let mut etags = Md5::new();
        for (i, part) in parts.iter().enumerate() {
            let part = part
                .as_ref()
                .ok_or_else(|| generic(format!("part {i} of {location} was not uploaded")))?;
            etags.update(part.md5.as_bytes());
            manifest.push(serde_json::json!({
                "path": format!("/{}/{}", self.segments_container, part.name),
                "etag": part.md5,
                "size_bytes": part.size,
            }));
        }
        Ok((manifest, hex(&etags.finalize())))
    }

    /// PUTs the manifest of the segments confirmed so far at `location` with `headers`.
    async fn put_manifest(&self, location: &Path, headers: HeaderMap) -> Result<PutResult> {
        if self.segments().is_empty() {
            // An SLO needs at least one segment; an empty upload is an empty object.
            let md5 = self
                .inner
                .put_verified(
                    &self.inner.container,
                    location.as_ref(),
                    Bytes::new(),
                    headers,
                )
                .await?;
            return Ok(PutResult {
                e_tag: Some(md5),
                version: None,
                extensions: Default::default(),
            });
        }
        let (manifest, expected) = self.manifest(location)?;
        let mut request = Request::object(Method::PUT, &self.inner.container, location.as_ref())
            .query("multipart-manifest", "put")
            .body(Bytes::from(serde_json::to_vec(&manifest).expect("JSON")));
        request.headers.extend(headers);
        let response = self.inner.send(request).await?;
        let status = response.status();
        if status != StatusCode::CREATED {
            return Err(status_error(status, location.as_ref(), response).await);
        }
        let etag = response_etag(&response);
        if etag.as_deref() != Some(expected.as_str()) {
            return Err(generic(format!(
                "PUT manifest {}: Swift confirmed Etag {etag:?}, expected {expected}",
                location
            )));
        }
        Ok(PutResult {
            e_tag: Some(format!("\"{expected}\"")),
            version: None,
            extensions: Default::default(),
        })
    }
}

#[async_trait::async_trait]
impl MultipartUpload for SloUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let index = {
            let mut parts = self.parts.lock().expect("parts lock");
            parts.push(None);
            parts.len() - 1
        };
        let name = format!("{}/{index:08}", self.prefix);
        let inner = self.inner.clone();
        let container = self.segments_container.clone();
        let parts = self.parts.clone();
        Box::pin(async move {
            let body = Bytes::from(data);
            let size = body.len();
            let md5 = inner
                .put_verified(&container, &name, body, HeaderMap::new())
                .await?;
            parts.lock().expect("parts lock")[index] = Some(Segment { name, md5, size });
            Ok(())
        })
    }

    async fn complete(&mut self) -> Result<PutResult> {
        let Some(location) = self.location.clone() else {
            return Err(generic(
                "an upload named at its end completes with complete_at".into(),
            ));
        };
        self.put_manifest(&location, self.headers.clone()).await
    }

    async fn abort(&mut self) -> Result<()> {
        // Every part ever started, confirmed or not: a PUT cancelled on our side may still
        // land, and Swift lets the later DELETE win over it (newer timestamp).
        let started = self.segments().len();
        let deletes = (0..started).map(|index| {
            let inner = self.inner.clone();
            let container = self.segments_container.clone();
            let name = format!("{}/{index:08}", self.prefix);
            async move {
                let response = inner
                    .send(Request::object(Method::DELETE, &container, &name))
                    .await?;
                match response.status() {
                    s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
                    s => Err(status_error(s, &name, response).await),
                }
            }
        });
        join_all(deletes).await.into_iter().collect()
    }
}

#[async_trait::async_trait]
impl NamedAtEnd for SloUpload {
    async fn complete_at(&self, location: &Path, attributes: &Attributes) -> Result<PutResult> {
        let headers = attribute_headers(attributes)?;
        self.put_manifest(location, headers).await
    }

    fn e_tag(&self) -> Option<String> {
        if self.segments().is_empty() {
            // An empty object, PUT plainly: the MD5 of nothing.
            return Some(hex(&Md5::digest(b"")));
        }
        let (_, etag) = self.manifest(&Path::default()).ok()?;
        Some(format!("\"{etag}\""))
    }
}
