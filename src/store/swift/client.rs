//! The HTTP side of the Swift store: one authenticated client for one container
//! ([`Inner`]), the requests it sends and how Swift's answers become `object_store` results.
//! [`super::SwiftStore`] and the multipart upload ([`super::upload`]) share it.

use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, NaiveDateTime, Utc};
use md5::{Digest, Md5};
use object_store::path::Path;
use object_store::{Attribute, AttributeValue, Attributes, ObjectMeta, Result};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;

use super::auth::{self, TokenCache};
use crate::util::error_chain;
use crate::util::hex::hex;

/// Name of this store in `object_store` errors.
pub(super) const STORE: &str = "Swift";
/// Objects per listing request (Swift's maximum).
pub(super) const LIST_LIMIT: usize = 10_000;
/// Deletes sent at once by `delete_stream`.
pub(super) const DELETE_CONCURRENCY: usize = 8;
/// Header prefix of user metadata.
pub(super) const META_PREFIX: &str = "x-object-meta-";

/// Characters kept as they are in a URL path segment: RFC 3986 unreserved.
pub(super) const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[derive(Debug)]
pub(super) struct Inner {
    pub(super) client: reqwest::Client,
    pub(super) tokens: TokenCache,
    pub(super) container: String,
    /// Whether `<container>_segments` is known to exist.
    pub(super) segments_ready: AtomicBool,
    /// Where the credentials point, for Display (no secrets).
    pub(super) authurl: String,
    /// The per-request timeout (`timeout`), which a copy's scales from.
    pub(super) timeout: Duration,
}

/// One request to the account: method, container and object, query and headers.
#[derive(Debug, Clone)]
pub(super) struct Request {
    pub(super) method: Method,
    pub(super) container: String,
    pub(super) object: Option<String>,
    pub(super) query: Vec<(&'static str, String)>,
    pub(super) headers: HeaderMap,
    pub(super) body: Bytes,
    /// Overrides the client's per-request timeout.
    pub(super) timeout: Option<Duration>,
}

impl Request {
    pub(super) fn container(method: Method, container: &str) -> Self {
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

    pub(super) fn object(method: Method, container: &str, object: &str) -> Self {
        Request {
            object: Some(object.to_string()),
            ..Request::container(method, container)
        }
    }

    pub(super) fn query(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.query.push((name, value.into()));
        self
    }

    pub(super) fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    pub(super) fn header(mut self, name: &'static str, value: &str) -> Result<Self> {
        let value = HeaderValue::from_str(value).map_err(|_| {
            generic(format!(
                "header {name}: value {value:?} cannot be sent in HTTP"
            ))
        })?;
        self.headers.insert(HeaderName::from_static(name), value);
        Ok(self)
    }

    pub(super) fn body(mut self, body: Bytes) -> Self {
        self.body = body;
        self
    }
}

/// `/container/object` with each path segment percent-encoded.
pub(super) fn encoded_path(container: &str, object: Option<&str>) -> String {
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
    pub(super) async fn send(&self, request: Request) -> Result<reqwest::Response> {
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
    pub(super) async fn put_verified(
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
    pub(super) async fn ensure_segments_container(&self) -> Result<String> {
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
    pub(super) async fn delete_one(&self, location: &Path) -> Result<()> {
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
    pub(super) async fn delete_plain(&self, object: &str) -> Result<()> {
        let response = self
            .send(Request::object(Method::DELETE, &self.container, object))
            .await?;
        match response.status() {
            s if s.is_success() || s == StatusCode::NOT_FOUND => Ok(()),
            s => Err(status_error(s, object, response).await),
        }
    }

    /// One page of a container listing.
    pub(super) async fn list_page(
        &self,
        prefix: &str,
        delimiter: bool,
        marker: &str,
        limit: usize,
    ) -> Result<Vec<ListEntry>> {
        let mut request = Request::container(Method::GET, &self.container)
            .query("format", "json")
            .query("limit", limit.min(LIST_LIMIT).to_string());
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
pub(super) struct BulkReport {
    #[serde(rename = "Errors", default)]
    pub(super) errors: Vec<Vec<String>>,
    /// Such as `200 OK` or `400 Bad Request`.
    #[serde(rename = "Response Status")]
    pub(super) status: Option<String>,
}

/// One entry of a JSON container listing: an object, or a `subdir` with a delimiter.
#[derive(Debug, Deserialize)]
pub(super) struct ListEntry {
    pub(super) name: Option<String>,
    pub(super) subdir: Option<String>,
    #[serde(default)]
    pub(super) bytes: u64,
    pub(super) hash: Option<String>,
    pub(super) slo_etag: Option<String>,
    pub(super) last_modified: Option<String>,
}

impl ListEntry {
    pub(super) fn into_meta(self) -> Option<ObjectMeta> {
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

pub(super) fn generic(message: String) -> object_store::Error {
    object_store::Error::Generic {
        store: STORE,
        source: message.into(),
    }
}

/// Maps an unexpected status to the error variant object_store callers match on.
pub(super) async fn status_error(
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

pub(super) fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

pub(super) fn response_etag(response: &reqwest::Response) -> Option<String> {
    response
        .headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim_matches('"').to_string())
}

/// Headers for object attributes: content headers and `X-Object-Meta-*`.
pub(super) fn attribute_headers(attributes: &Attributes) -> Result<HeaderMap> {
    let mut headers = HeaderMap::new();
    for (attribute, value) in attributes {
        let name = match (crate::store::http::content_header(attribute), attribute) {
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
pub(super) fn response_attributes(headers: &HeaderMap) -> Attributes {
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

pub(super) fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

pub(super) fn http_date(t: &DateTime<Utc>) -> String {
    t.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
}

/// `bytes a-b/total` → (a..b+1, total).
pub(super) fn content_range(value: &str) -> Option<(Range<u64>, u64)> {
    let rest = value.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.parse().ok()?;
    let end: u64 = end.parse().ok()?;
    Some((start..end + 1, total.parse().ok()?))
}
