//! OpenStack Swift's native API as an [`ObjectStore`].
//!
//! - put: one PUT that sends `ETag: <md5>`, so Swift refuses (422) bytes that arrived
//!   damaged; the Etag Swift answers is compared with the MD5 as well, so a store that
//!   claims success for other bytes is caught.
//! - multipart: segments in `<container>_segments`, then a static large object (SLO)
//!   manifest at the key ([`upload`]); deleting an SLO deletes its segments.
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
mod upload;

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use futures::stream::{self, BoxStream, StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{
    Attribute, AttributeValue, Attributes, CopyMode, CopyOptions, GetOptions, GetRange, GetResult,
    GetResultPayload, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use crate::config::SwiftConfig;
use crate::failpoint;
use crate::store::mover::{MetadataUpdate, Mover, copy_mismatch, copy_timeout, is_plain_md5};
use auth::{TokenCache, error_chain};

/// Name of this store in `object_store` errors.
const STORE: &str = "Swift";
/// Objects per listing request (Swift's maximum).
const LIST_LIMIT: usize = 10_000;
/// Deletes sent at once by `delete_stream`.
const DELETE_CONCURRENCY: usize = 8;
/// Header prefix of user metadata.
const META_PREFIX: &str = "x-object-meta-";

/// Characters kept as they are in a URL path segment: RFC 3986 unreserved.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A Swift container served through the [`ObjectStore`] interface.
#[derive(Debug, Clone)]
pub struct SwiftStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    tokens: TokenCache,
    container: String,
    /// Whether `<container>_segments` is known to exist.
    segments_ready: AtomicBool,
    /// Where the credentials point, for Display (no secrets).
    authurl: String,
    /// The per-request timeout (`timeout`), which a copy's scales from.
    timeout: Duration,
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

/// One request to the account: method, container and object, query and headers.
#[derive(Debug, Clone)]
struct Request {
    method: Method,
    container: String,
    object: Option<String>,
    query: Vec<(&'static str, String)>,
    headers: HeaderMap,
    body: Bytes,
    /// Overrides the client's per-request timeout.
    timeout: Option<Duration>,
}

impl Request {
    fn container(method: Method, container: &str) -> Self {
        Request {
            method,
            container: container.to_string(),
            object: None,
            query: Vec::new(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
            timeout: None,
        }
    }

    fn object(method: Method, container: &str, object: &str) -> Self {
        Request {
            object: Some(object.to_string()),
            ..Request::container(method, container)
        }
    }

    fn query(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }

    fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    fn header(mut self, name: &'static str, value: &str) -> Result<Self> {
        let value = HeaderValue::from_str(value).map_err(|_| {
            generic(format!(
                "header {name}: value {value:?} cannot be sent in HTTP"
            ))
        })?;
        self.headers.insert(HeaderName::from_static(name), value);
        Ok(self)
    }

    fn body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }
}

/// `/container/object` with each path segment percent-encoded.
fn encoded_path(container: &str, object: Option<&str>) -> String {
    let mut out = String::from("/");
    out.extend(utf8_percent_encode(container, SEGMENT));
    if let Some(object) = object {
        for (i, segment) in object.split('/').enumerate() {
            out.push('/');
            if i > 0 || !segment.is_empty() {
                out.extend(utf8_percent_encode(segment, SEGMENT));
            }
        }
    }
    out
}

impl Inner {
    /// Sends `request` with the cached token; on 401 renews the token and sends it once more.
    async fn send(&self, request: Request) -> Result<reqwest::Response> {
        let mut renewed = false;
        loop {
            let token = self.tokens.token().await.map_err(|e| match e {
                auth::AuthError::Refused(_) => object_store::Error::Unauthenticated {
                    path: request.object.clone().unwrap_or_default(),
                    source: Box::new(e),
                },
                auth::AuthError::Failed(_) => object_store::Error::Generic {
                    store: STORE,
                    source: Box::new(e),
                },
            })?;
            let url = format!(
                "{}{}",
                token.storage_url,
                encoded_path(&request.container, request.object.as_deref())
            );
            let mut builder = self
                .client
                .request(request.method.clone(), &url)
                .query(&request.query)
                .headers(request.headers.clone())
                .header("X-Auth-Token", token.value.expose())
                .body(request.body.clone());
            if let Some(timeout) = request.timeout {
                builder = builder.timeout(timeout);
            }
            let response = builder.send().await.map_err(|e| {
                generic(format!(
                    "{} {}: {}",
                    request.method,
                    encoded_path(&request.container, request.object.as_deref()),
                    error_chain(&e)
                ))
            })?;
            if response.status() == StatusCode::UNAUTHORIZED && !renewed {
                tracing::info!("Swift refused the cached token (401); authenticating again");
                self.tokens.invalidate(&token).await;
                renewed = true;
                continue;
            }
            return Ok(response);
        }
    }

    /// PUTs `body` with `ETag: <md5>` and checks the Etag Swift answers.
    async fn put_verified(
        &self,
        container: &str,
        object: &str,
        body: Bytes,
        headers: HeaderMap,
    ) -> Result<String> {
        let md5 = md5_hex(&body);
        // Swift answers 411 to a PUT without Content-Length, which reqwest omits when empty.
        let length = body.len().to_string();
        let mut request = Request::object(Method::PUT, container, object)
            .body(body)
            .header("etag", &md5)?
            .header("content-length", &length)?;
        request.headers.extend(headers);
        let response = self.send(request).await?;
        let status = response.status();
        if status == StatusCode::UNPROCESSABLE_ENTITY {
            return Err(generic(format!(
                "PUT {object}: Swift found that the bytes it received do not match their MD5 (422)"
            )));
        }
        if status != StatusCode::CREATED {
            return Err(status_error(status, object, response).await);
        }
        let etag = response_etag(&response);
        if etag.as_deref() != Some(md5.as_str()) {
            return Err(generic(format!(
                "PUT {object}: Swift confirmed Etag {etag:?}, but the bytes sent have MD5 {md5}"
            )));
        }
        Ok(md5)
    }

    /// Creates `<container>_segments` once per process.
    async fn ensure_segments_container(&self) -> Result<String> {
        let name = format!("{}_segments", self.container);
        if !self.segments_ready.load(Ordering::Acquire) {
            let response = self.send(Request::container(Method::PUT, &name)).await?;
            if !response.status().is_success() {
                return Err(status_error(response.status(), &name, response).await);
            }
            self.segments_ready.store(true, Ordering::Release);
        }
        Ok(name)
    }

    /// Deletes one object; an SLO with its segments. A missing object is `Ok`.
    async fn delete_one(&self, location: &Path) -> Result<()> {
        let object = location.as_ref();
        // Swift deletes an SLO's segments only when asked with multipart-manifest=delete,
        // and answers that request for a plain object with "Not an SLO manifest".
        let response = self
            .send(
                Request::object(Method::DELETE, &self.container, object)
                    .query("multipart-manifest", "delete")
                    .header("accept", "application/json")?,
            )
            .await?;
        let status = response.status();
        if status == StatusCode::NOT_FOUND {
            return Ok(());
        }
        if !status.is_success() {
            return Err(status_error(status, object, response).await);
        }
        let text = response.text().await.map_err(|e| generic(e.to_string()))?;
        // The HTTP status of a bulk answer is sent before the work is done: the body says
        // how it went. An answer that cannot be read is a failure, never a success.
        let report: BulkReport = serde_json::from_str(&text).map_err(|e| {
            let start: String = text.chars().take(200).collect();
            generic(format!(
                "DELETE {object}: unreadable answer from Swift ({e}): {start:?}"
            ))
        })?;
        let done = report
            .status
            .as_deref()
            .is_none_or(|s| s.starts_with('2') || s.starts_with("404"));
        if report.errors.is_empty() && done {
            return Ok(());
        }
        if !report.errors.is_empty()
            && report
                .errors
                .iter()
                .all(|e| e.get(1).is_some_and(|m| m.contains("Not an SLO manifest")))
        {
            let response = self
                .send(Request::object(Method::DELETE, &self.container, object))
                .await?;
            return match response.status() {
                s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
                s => Err(status_error(s, object, response).await),
            };
        }
        Err(generic(format!(
            "DELETE {object}: Swift reported {:?}, {:?}",
            report.status, report.errors
        )))
    }

    /// Deletes an object that is known not to be an SLO manifest, in one request. A
    /// missing object is `Ok`.
    async fn delete_plain(&self, object: &str) -> Result<()> {
        let response = self
            .send(Request::object(Method::DELETE, &self.container, object))
            .await?;
        match response.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(status_error(s, object, response).await),
        }
    }

    /// One page of a container listing.
    async fn list_page(
        &self,
        prefix: &str,
        delimiter: bool,
        marker: &str,
    ) -> Result<Vec<ListEntry>> {
        let mut request = Request::container(Method::GET, &self.container)
            .query("format", "json")
            .query("limit", LIST_LIMIT.to_string());
        if !prefix.is_empty() {
            request = request.query("prefix", prefix);
        }
        if delimiter {
            request = request.query("delimiter", "/");
        }
        if !marker.is_empty() {
            request = request.query("marker", marker);
        }
        let response = self.send(request).await?;
        let status = response.status();
        if status == StatusCode::NO_CONTENT {
            return Ok(Vec::new());
        }
        if !status.is_success() {
            return Err(status_error(status, &self.container, response).await);
        }
        response
            .json()
            .await
            .map_err(|e| generic(format!("unreadable listing of {}: {e}", self.container)))
    }
}

/// The JSON answer of a `multipart-manifest=delete`.
#[derive(Debug, Default, Deserialize)]
struct BulkReport {
    #[serde(rename = "Errors", default)]
    errors: Vec<Vec<String>>,
    /// Such as `200 OK` or `400 Bad Request`.
    #[serde(rename = "Response Status")]
    status: Option<String>,
}

/// One entry of a JSON container listing: an object, or a `subdir` with a delimiter.
#[derive(Debug, Deserialize)]
struct ListEntry {
    name: Option<String>,
    subdir: Option<String>,
    #[serde(default)]
    bytes: u64,
    hash: Option<String>,
    slo_etag: Option<String>,
    last_modified: Option<String>,
}

impl ListEntry {
    fn into_meta(self) -> Option<ObjectMeta> {
        let name = self.name?;
        let last_modified = self
            .last_modified
            .as_deref()
            .and_then(|s| NaiveDateTime::parse_from_str(s, "%Y-%m-%dT%H:%M:%S%.f").ok())
            .map(|t| t.and_utc())
            .unwrap_or_default();
        Some(ObjectMeta {
            location: Path::parse(&name).unwrap_or_else(|_| Path::from(name.as_str())),
            last_modified,
            size: self.bytes,
            // A HEAD of an SLO answers its slo_etag; keep listing and HEAD alike.
            e_tag: self.slo_etag.or(self.hash),
            version: None,
        })
    }
}

fn generic(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: message.into(),
    }
}

/// Maps an unexpected status to the error variant object_store callers match on.
async fn status_error(
    status: StatusCode,
    path: &str,
    response: reqwest::Response,
) -> object_store::Error {
    let body = response.text().await.unwrap_or_default();
    let detail: String = body.trim().chars().take(200).collect();
    let source: Box<dyn std::error::Error + Send + Sync> =
        format!("Swift answered {status}: {detail}").into();
    let path = path.to_string();
    match status {
        StatusCode::NOT_FOUND => object_store::Error::NotFound { path, source },
        StatusCode::UNAUTHORIZED => object_store::Error::Unauthenticated { path, source },
        StatusCode::FORBIDDEN => object_store::Error::PermissionDenied { path, source },
        StatusCode::PRECONDITION_FAILED => object_store::Error::Precondition { path, source },
        StatusCode::NOT_MODIFIED => object_store::Error::NotModified { path, source },
        _ => object_store::Error::Generic {
            store: STORE,
            source: format!("{path}: Swift answered {status}: {detail}").into(),
        },
    }
}

fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// Lowercase hexadecimal.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn response_etag(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim_matches('"').to_string())
}

/// Headers for object attributes: content headers and `X-Object-Meta-*`.
fn attribute_headers(attributes: &Attributes) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (attribute, value) in attributes {
        let name = match (super::content_header(attribute), attribute) {
            (Some(header), _) => header.to_string(),
            (None, Attribute::Metadata(key)) if key.contains('_') => {
                // Swift's WSGI server turns `_` into `-` in header names: such a key would
                // come back under another name.
                return Err(object_store::Error::NotImplemented {
                    operation: format!("metadata key {key:?} (Swift cannot keep `_` in names)"),
                    implementer: STORE.to_string(),
                });
            }
            (None, Attribute::Metadata(key)) => format!("{META_PREFIX}{key}"),
            (None, other) => {
                return Err(object_store::Error::NotImplemented {
                    operation: format!("attribute {other:?}"),
                    implementer: STORE.to_string(),
                });
            }
        };
        let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
            generic(format!(
                "attribute name {name:?} is not an HTTP header name"
            ))
        })?;
        let value = HeaderValue::from_str(value.as_ref()).map_err(|_| {
            generic(format!(
                "attribute {name}: value {:?} cannot be sent in HTTP",
                value.as_ref()
            ))
        })?;
        headers.insert(name, value);
    }
    Ok(headers)
}

/// Attributes from the headers of a GET or HEAD answer.
fn response_attributes(headers: &HeaderMap) -> Attributes {
    let mut attributes = Attributes::new();
    for (name, value) in headers {
        let Ok(value) = value.to_str() else { continue };
        let value = AttributeValue::from(value.to_string());
        let name = name.as_str();
        let attribute = match name {
            "content-type" => Attribute::ContentType,
            "content-encoding" => Attribute::ContentEncoding,
            "content-disposition" => Attribute::ContentDisposition,
            "content-language" => Attribute::ContentLanguage,
            "cache-control" => Attribute::CacheControl,
            _ => match name.strip_prefix(META_PREFIX) {
                Some(key) => Attribute::Metadata(key.to_string().into()),
                None => continue,
            },
        };
        attributes.insert(attribute, value);
    }
    attributes
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn http_date(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `bytes a-b/total` → (a..b+1, total).
fn content_range(value: &str) -> Option<(Range<u64>, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.parse().ok()?;
    let end: u64 = end.parse().ok()?;
    Some((start..end + 1, total.parse().ok()?))
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
            let page = self.inner.list_page(&prefix, true, &marker).await?;
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
            Some(etag) => {
                self.inner.delete_plain(to.as_ref()).await?;
                Err(copy_mismatch(
                    STORE,
                    &from.location,
                    format!("Etag {copied:?}, source {etag}"),
                ))
            }
            None => {
                // An SLO is copied into one plain object: its Etag differs, its size must not.
                let head = self.get_opts(to, GetOptions::new().with_head(true)).await?;
                if head.meta.size == from.size {
                    return Ok(());
                }
                self.inner.delete_plain(to.as_ref()).await?;
                Err(copy_mismatch(
                    STORE,
                    &from.location,
                    format!("{} bytes, source {}", head.meta.size, from.size),
                ))
            }
        }
    }

    async fn delete_source(&self, from: &ObjectMeta) -> Result<()> {
        match plain_etag(from) {
            Some(_) => self.inner.delete_plain(from.location.as_ref()).await,
            None => self.inner.delete_one(&from.location).await,
        }
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
                let page = inner.list_page(&prefix, false, &marker).await?;
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
