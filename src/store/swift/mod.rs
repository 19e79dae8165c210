//! OpenStack Swift's native API as an [`ObjectStore`].
//!
//! - put: one PUT that sends `ETag: <md5>`, so Swift refuses (422) bytes that arrived
//!   damaged; the Etag Swift answers is compared with the MD5 as well, so a store that
//!   claims success for other bytes is caught.
//! - multipart: segments in `<container>_segments`, then a static large object (SLO)
//!   manifest at the key (`upload.rs`); deleting an SLO deletes its segments.
//! - copy: server-side (`X-Copy-From`); an SLO is copied as one plain object.
//! - queue moves ([`Mover`]): a copy with the new metadata, checked against the source's
//!   Etag, then a plain `DELETE` (an SLO-aware one for an SLO source).
//! - conditional writes (`PutMode::Create`/`Update`, `CopyMode::Create`) are
//!   `NotImplemented`: Swift's `If-None-Match: *` is not atomic between concurrent writers,
//!   and `If-Match` on PUT is ignored.
//!
//! Requests carry the cached token of [`auth`]; a 401 drops it and the request is sent once
//! more with a fresh one.

pub mod auth;
mod client;
mod upload;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    Attribute, Attributes, CopyMode, CopyOptions, GetOptions, GetRange, GetResult,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};

use crate::config::SwiftConfig;
use crate::store::mover::{
    MetadataUpdate, Mover, NamedAtEnd, Page, copy_mismatch, copy_timeout, is_plain_md5,
};
use crate::util::error_chain;
use crate::util::failpoint;
use auth::TokenCache;
use client::{
    DELETE_CONCURRENCY, Inner, LIST_LIMIT, ListEntry, Request, STORE, attribute_headers,
    content_range, encoded_path, generic, header_str, http_date, response_attributes,
    response_etag, status_error,
};

/// A Swift container served through the [`ObjectStore`] interface.
#[derive(Debug, Clone)]
pub struct SwiftStore {
    inner: Arc<Inner>,
}

impl SwiftStore {
    /// A store for the container of `config`. Nothing is sent until the first request.
    pub fn new(config: &SwiftConfig) -> std::result::Result<Self, String> {
        let client = crate::store::http_client()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(50))
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(SwiftStore {
            inner: Arc::new(Inner {
                tokens: TokenCache::new(config.auth.clone(), client.clone()),
                client,
                container: config.container.clone(),
                segments_ready: AtomicBool::new(false),
                authurl: config.auth.authurl().to_string(),
                timeout: config.timeout,
            }),
        })
    }

    /// The container's name.
    pub fn container(&self) -> &str {
        &self.inner.container
    }

    /// The per-request timeout (`timeout`).
    pub fn request_timeout(&self) -> Duration {
        self.inner.timeout
    }

    /// How many times this store has authenticated since it was made.
    pub fn authentications(&self) -> u64 {
        self.inner.tokens.authentications()
    }

    /// Authenticates and makes sure the container exists: creates it when `create` is set,
    /// otherwise says that it is missing.
    pub async fn ensure_container(&self, create: bool) -> std::result::Result<(), String> {
        let container = self.inner.container.clone();
        let head = self
            .inner
            .send(Request::container(Method::HEAD, &container))
            .await
            .map_err(|e| match e {
                // The auth error alone says it best ("authentication refused: ...").
                object_store::Error::Unauthenticated { source, .. } => source.to_string(),
                e => e.to_string(),
            })?;
        match head.status() {
            s if s.is_success() => Ok(()),
            StatusCode::NOT_FOUND if create => {
                let put = self
                    .inner
                    .send(Request::container(Method::PUT, &container))
                    .await
                    .map_err(|e| e.to_string())?;
                if put.status().is_success() {
                    tracing::info!(container, "created Swift container");
                    Ok(())
                } else {
                    Err(format!(
                        "cannot create container {container:?}: Swift answered {}",
                        put.status()
                    ))
                }
            }
            StatusCode::NOT_FOUND => Err(format!(
                "container {container:?} does not exist (set create_container = yes to create it)"
            )),
            s => Err(format!("container {container:?}: Swift answered {s}")),
        }
    }
}

impl SwiftStore {
    /// The auth URL and container this store writes to.
    pub fn address(&self) -> (&str, &str) {
        (&self.inner.authurl, &self.inner.container)
    }
}

impl fmt::Display for SwiftStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Swift(container {} via {})",
            self.inner.container, self.inner.authurl
        )
    }
}

#[async_trait]
impl ObjectStore for SwiftStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        if !matches!(opts.mode, PutMode::Overwrite) {
            return Err(object_store::Error::NotImplemented {
                operation: format!(
                    "put with {:?} (Swift has no atomic conditional PUT)",
                    opts.mode
                ),
                implementer: STORE.to_string(),
            });
        }
        let headers = attribute_headers(&opts.attributes)?;
        let body = Bytes::from(payload);
        let md5 = self
            .inner
            .put_verified(&self.inner.container, location.as_ref(), body, headers)
            .await?;
        Ok(PutResult {
            e_tag: Some(md5),
            version: None,
            extensions: Default::default(),
        })
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        let headers = attribute_headers(&opts.attributes)?;
        let segments = self.inner.ensure_segments_container().await?;
        Ok(Box::new(upload::SloUpload::new(
            self.inner.clone(),
            location.clone(),
            segments,
            headers,
        )))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        if options.version.is_some() {
            return Err(object_store::Error::NotImplemented {
                operation: "get of an object version".into(),
                implementer: STORE.to_string(),
            });
        }
        let method = if options.head {
            Method::HEAD
        } else {
            Method::GET
        };
        let object = location.as_ref();
        let mut request = Request::object(method, &self.inner.container, object);
        if let Some(v) = &options.if_match {
            request = request.header("if-match", v)?;
        }
        if let Some(v) = &options.if_none_match {
            request = request.header("if-none-match", v)?;
        }
        if let Some(t) = &options.if_modified_since {
            request = request.header("if-modified-since", &http_date(t))?;
        }
        if let Some(t) = &options.if_unmodified_since {
            request = request.header("if-unmodified-since", &http_date(t))?;
        }
        if let Some(range) = &options.range {
            let value = match range {
                GetRange::Bounded(r) if r.start >= r.end => {
                    return Err(generic(format!("empty range {r:?} for {object}")));
                }
                GetRange::Bounded(r) => format!("bytes={}-{}", r.start, r.end - 1),
                GetRange::Offset(o) => format!("bytes={o}-"),
                GetRange::Suffix(n) => format!("bytes=-{n}"),
            };
            request = request.header("range", &value)?;
        }
        let response = self.inner.send(request).await?;
        let status = response.status();
        if !(status == StatusCode::OK || status == StatusCode::PARTIAL_CONTENT) {
            return Err(status_error(status, object, response).await);
        }
        let headers = response.headers().clone();
        let length: u64 = header_str(&headers, "content-length")
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let (range, size) = match header_str(&headers, "content-range").and_then(content_range) {
            Some((range, total)) if status == StatusCode::PARTIAL_CONTENT => (range, total),
            _ => (0..length, length),
        };
        let meta = ObjectMeta {
            location: location.clone(),
            last_modified: header_str(&headers, "last-modified")
                .and_then(|s| DateTime::parse_from_rfc2822(s).ok())
                .map(|t| t.with_timezone(&Utc))
                .unwrap_or_default(),
            size,
            e_tag: header_str(&headers, "etag").map(str::to_string),
            version: None,
        };
        let payload = if options.head {
            stream::empty().boxed()
        } else {
            let path = object.to_string();
            response
                .bytes_stream()
                .map_err(move |e| generic(format!("reading {path}: {}", error_chain(&e))))
                .boxed()
        };
        Ok(GetResult {
            payload: GetResultPayload::Stream(payload),
            meta,
            range,
            attributes: response_attributes(&headers),
            extensions: Default::default(),
        })
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let inner = self.inner.clone();
        locations
            .map(move |location| {
                let inner = inner.clone();
                async move {
                    let location = location?;
                    inner.delete_one(&location).await?;
                    Ok(location)
                }
            })
            .buffered(DELETE_CONCURRENCY)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.list_from(prefix, String::new())
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.list_from(prefix, offset.to_string())
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        let prefix = folder_prefix(prefix);
        let mut result = ListResult {
            common_prefixes: Vec::new(),
            objects: Vec::new(),
            extensions: Default::default(),
        };
        let mut marker = String::new();
        loop {
            let page = self
                .inner
                .list_page(&prefix, true, &marker, LIST_LIMIT)
                .await?;
            let full = page.len() >= LIST_LIMIT;
            for entry in page {
                if let Some(subdir) = &entry.subdir {
                    marker = subdir.clone();
                    let dir = subdir.trim_end_matches('/');
                    result
                        .common_prefixes
                        .push(Path::parse(dir).unwrap_or_else(|_| Path::from(dir)));
                } else if let Some(name) = &entry.name {
                    marker = name.clone();
                    if let Some(meta) = entry.into_meta() {
                        result.objects.push(meta);
                    }
                }
            }
            if !full {
                return Ok(result);
            }
        }
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        if !matches!(options.mode, CopyMode::Overwrite) {
            // A missing source is still NotFound, as for every other store.
            self.get_opts(from, GetOptions::new().with_head(true))
                .await?;
            return Err(object_store::Error::NotImplemented {
                operation: "copy if not exists (Swift has no atomic conditional write)".into(),
                implementer: STORE.to_string(),
            });
        }
        let source = encoded_path(&self.inner.container, Some(from.as_ref()));
        let request = Request::object(Method::PUT, &self.inner.container, to.as_ref())
            .header("x-copy-from", &source)?
            .header("content-length", "0")?;
        let response = self.inner.send(request).await?;
        match response.status() {
            StatusCode::CREATED => Ok(()),
            s => Err(status_error(s, from.as_ref(), response).await),
        }
    }
}

/// The MD5 of a plain object from its listed or headed Etag; `None` for a large object
/// (Swift quotes the Etag of an SLO, its manifest's, never a plain one's) or an unknown one.
fn plain_etag(meta: &ObjectMeta) -> Option<&str> {
    meta.e_tag
        .as_deref()
        .filter(|e| !e.starts_with('"') && is_plain_md5(e))
}

/// `X-Object-Meta-<key>` headers for a metadata update.
fn update_headers(update: &MetadataUpdate) -> Result<HeaderMap> {
    let mut attributes = Attributes::new();
    for (key, value) in update {
        attributes.insert(
            Attribute::Metadata(key.clone().into()),
            value.clone().into(),
        );
    }
    attribute_headers(&attributes)
}

#[async_trait]
impl Mover for SwiftStore {
    async fn copy_verified(
        &self,
        from: &ObjectMeta,
        to: &Path,
        update: &MetadataUpdate,
    ) -> Result<()> {
        let container = &self.inner.container;
        let source = encoded_path(container, Some(from.location.as_ref()));
        let mut request = Request::object(Method::PUT, container, to.as_ref())
            .header("x-copy-from", &source)?
            .header("content-length", "0")?
            .timeout(copy_timeout(self.inner.timeout, from.size));
        request.headers.extend(update_headers(update)?);
        let response = self.inner.send(request).await?;
        if response.status() != StatusCode::CREATED {
            return Err(status_error(response.status(), from.location.as_ref(), response).await);
        }
        let copied = response_etag(&response);
        failpoint::hit("move.copied");
        match plain_etag(from) {
            Some(etag) if copied.as_deref() == Some(etag) => Ok(()),
            Some(etag) => Err(copy_mismatch(
                STORE,
                &from.location,
                format!("Etag {copied:?}, source {etag}"),
            )),
            None => {
                // An SLO is copied into one plain object: its Etag differs, its size must not.
                let head = self.get_opts(to, GetOptions::new().with_head(true)).await?;
                if head.meta.size == from.size {
                    return Ok(());
                }
                Err(copy_mismatch(
                    STORE,
                    &from.location,
                    format!("{} bytes, source {}", head.meta.size, from.size),
                ))
            }
        }
    }

    async fn upload_named_at_end(&self) -> Result<Option<Box<dyn NamedAtEnd>>> {
        let segments = self.inner.ensure_segments_container().await?;
        Ok(Some(Box::new(upload::SloUpload::named_at_end(
            self.inner.clone(),
            segments,
        ))))
    }

    async fn remove(&self, at: &ObjectMeta) -> Result<()> {
        match plain_etag(at) {
            Some(_) => self.inner.delete_plain(at.location.as_ref()).await,
            None => self.inner.delete_one(&at.location).await,
        }
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, max: usize) -> Result<Page> {
        let max = max.min(LIST_LIMIT);
        let entries = self
            .inner
            .list_page(prefix, false, after.unwrap_or_default(), max)
            .await?;
        // Swift says nothing of more keys: a full page may have some after it.
        let more = entries.len() >= max;
        Ok(Page {
            objects: entries
                .into_iter()
                .filter_map(ListEntry::into_meta)
                .collect(),
            more,
        })
    }

    async fn update_metadata(&self, at: &ObjectMeta, update: &MetadataUpdate) -> Result<()> {
        // A POST replaces all user metadata: send the current set with the update over it.
        let head = self
            .get_opts(&at.location, GetOptions::new().with_head(true))
            .await?;
        let mut attributes = Attributes::new();
        for (attribute, value) in head.attributes.iter() {
            if let Attribute::Metadata(_) = attribute {
                attributes.insert(attribute.clone(), value.clone());
            }
        }
        for (key, value) in update {
            attributes.insert(
                Attribute::Metadata(key.clone().into()),
                value.clone().into(),
            );
        }
        let mut request =
            Request::object(Method::POST, &self.inner.container, at.location.as_ref());
        request.headers = attribute_headers(&attributes)?;
        let response = self.inner.send(request).await?;
        match response.status() {
            s if s.is_success() => Ok(()),
            s => Err(status_error(s, at.location.as_ref(), response).await),
        }
    }
}

impl SwiftStore {
    /// Lists objects under `prefix` (whole path segments) after `marker`, paging by itself.
    fn list_from(
        &self,
        prefix: Option<&Path>,
        marker: String,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        let inner = self.inner.clone();
        let prefix = folder_prefix(prefix);
        stream::try_unfold(Some(marker), move |marker| {
            let inner = inner.clone();
            let prefix = prefix.clone();
            async move {
                let Some(marker) = marker else {
                    return Ok::<_, object_store::Error>(None);
                };
                let page = inner.list_page(&prefix, false, &marker, LIST_LIMIT).await?;
                let next = (page.len() >= LIST_LIMIT)
                    .then(|| page.last().and_then(|e| e.name.clone()))
                    .flatten();
                let metas: Vec<Result<ObjectMeta>> = page
                    .into_iter()
                    .filter_map(ListEntry::into_meta)
                    .map(Ok)
                    .collect();
                Ok(Some((stream::iter(metas), next)))
            }
        })
        .try_flatten()
        .boxed()
    }
}

/// object_store prefixes are whole segments: `cur` lists `cur/...`, never `curious`.
fn folder_prefix(prefix: Option<&Path>) -> String {
    match prefix.map(|p| p.as_ref()) {
        None | Some("") => String::new(),
        Some(p) => format!("{p}/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_clients_have_a_tls_provider() {
        // reqwest is built without a provider of its own: one must be installed.
        let client = crate::store::http_client().build().expect("an HTTP client");
        let request = client.get("https://swift.example/v1/AUTH_x").build();
        assert!(request.is_ok());
        // What redis and mail-send use: rustls's default, from its ring feature.
        let _ = rustls::ClientConfig::builder();
    }

    #[test]
    fn paths_are_encoded_per_segment() {
        assert_eq!(
            encoded_path("mail", Some("cur/1.M2P3.host,S=4")),
            "/mail/cur/1.M2P3.host%2CS%3D4"
        );
        assert_eq!(encoded_path("a b", None), "/a%20b");
        assert_eq!(encoded_path("c", Some("x/ü?#")), "/c/x/%C3%BC%3F%23");
    }

    #[test]
    fn content_range_is_parsed() {
        assert_eq!(content_range("bytes 2-5/10"), Some((2..6, 10)));
        assert_eq!(content_range("bytes */10"), None);
    }

    #[test]
    fn listing_entries_become_metadata() {
        let entry: ListEntry = serde_json::from_str(
            r#"{"bytes": 7, "hash": "abc", "name": "cur/x", "last_modified": "2026-11-21T23:23:32.766030"}"#,
        )
        .unwrap();
        let meta = entry.into_meta().unwrap();
        assert_eq!(meta.location.as_ref(), "cur/x");
        assert_eq!(meta.size, 7);
        assert_eq!(meta.e_tag.as_deref(), Some("abc"));
        assert_eq!(meta.last_modified.timestamp(), 1795303412);
    }
}
