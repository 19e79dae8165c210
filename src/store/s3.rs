//! S3 destinations: object_store's [`AmazonS3`], set up for S3-compatible stores (Swift's
//! s3api, Ceph, MinIO), behind [`Md5Verified`] so that a put counts only when the store's
//! ETag is the MD5 of the bytes sent.
//!
//! object_store signs each payload (`x-amz-content-sha256`), which the store checks, but it
//! does not compare the ETag that comes back; [`Md5Verified`] does. Conditional puts are
//! switched off ([`S3ConditionalPut::Disabled`]): Swift's s3api answers them 501, and
//! object_store would retry that as a server error.
//!
//! Queue moves ([`Mover`]) need a copy that replaces metadata, which object_store's copy does
//! not offer: it is one signed `CopyObject` request made here with object_store's signer.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use md5::{Digest, Md5};
use object_store::aws::{AmazonS3, AmazonS3Builder, S3ConditionalPut};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions, Result, RetryConfig,
};

use crate::config::S3Config;
use crate::store::mover::{MetadataUpdate, Mover, Page, copy_mismatch, copy_timeout, is_plain_md5};
use crate::util::failpoint;
use crate::util::hex::hex;

/// Builds the S3 store a destination describes.
pub fn open(config: &S3Config) -> std::result::Result<Md5Verified<AmazonS3>, String> {
    // Client options first: with_client_options replaces them all, allow_http included.
    let mut builder = AmazonS3Builder::new()
        .with_client_options(ClientOptions::new().with_timeout(config.timeout))
        .with_bucket_name(&config.bucket)
        .with_region(&config.region)
        .with_access_key_id(&config.access_key_id)
        .with_secret_access_key(config.secret_access_key.expose())
        .with_virtual_hosted_style_request(!config.path_style)
        .with_allow_http(config.allow_http)
        .with_conditional_put(S3ConditionalPut::Disabled)
        // swiftdrop retries a failed message itself within store_timeout; object_store's
        // own retries are kept short so that one attempt cannot use the whole deadline.
        .with_retry(RetryConfig {
            backoff: BackoffConfig::default(),
            max_retries: 2,
            retry_timeout: Duration::from_secs(10),
        });
    if let Some(endpoint) = &config.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    // object_store builds its reqwest client with the process's TLS provider.
    let client = super::http_client()
        .timeout(config.timeout)
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let store = builder.build().map_err(|e| e.to_string())?;
    Ok(Md5Verified {
        inner: Arc::new(store),
        bucket: config.bucket.clone(),
        endpoint: config.endpoint.clone().unwrap_or_else(|| "AWS".into()),
        region: config.region.clone(),
        client,
        timeout: config.timeout,
    })
}

/// Wraps a store whose single-part ETag is the MD5 of the object (S3 and its clones) and
/// fails a put whose ETag is anything else.
#[derive(Debug)]
pub struct Md5Verified<T> {
    inner: Arc<T>,
    bucket: String,
    endpoint: String,
    /// For the requests object_store cannot make (a copy that replaces metadata).
    region: String,
    client: reqwest::Client,
    /// The per-request timeout (`timeout`), which a copy's scales from.
    timeout: Duration,
}

impl<T> Md5Verified<T> {
    /// The endpoint (`AWS` for Amazon's) and bucket this store writes to.
    pub fn address(&self) -> (&str, &str) {
        (&self.endpoint, &self.bucket)
    }

    /// The per-request timeout (`timeout`).
    pub fn request_timeout(&self) -> Duration {
        self.timeout
    }
}

impl<T> fmt::Display for Md5Verified<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "S3(bucket {} at {})", self.bucket, self.endpoint)
    }
}

#[async_trait]
impl<T: ObjectStore> ObjectStore for Md5Verified<T> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        let mut md5 = Md5::new();
        for chunk in payload.iter() {
            md5.update(chunk);
        }
        let expected = hex(&md5.finalize());
        let result = self
            .inner
            .put_opts(location, payload, opts)
            .await
            .map_err(shorten)?;
        let confirmed = result.e_tag.as_deref().map(|e| e.trim_matches('"'));
        if confirmed != Some(expected.as_str()) {
            return Err(object_store::Error::Generic {
                store: "S3",
                source: format!(
                    "PUT {location}: the store confirmed ETag {:?}, but the bytes sent have MD5 {expected}",
                    result.e_tag
                )
                .into(),
            });
        }
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        // A multipart ETag is the MD5 of the part MD5s; each part is signed and checked.
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.inner.get_ranges(location, ranges).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(&self, from: &Path, to: &Path, options: RenameOptions) -> Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

impl Md5Verified<AmazonS3> {
    /// Makes sure the bucket exists: creates it when `create` is set, otherwise says that it
    /// is missing. Listing a prefix that holds nothing proves both the credentials and
    /// the bucket.
    pub async fn ensure_bucket(&self, create: bool) -> std::result::Result<(), String> {
        let probe = Path::from(crate::store::key::PROBE_FOLDER);
        match self.inner.list_with_delimiter(Some(&probe)).await {
            Ok(_) => Ok(()),
            Err(e) if summary(&e.to_string()).contains("NoSuchBucket") => {
                if create {
                    self.create_bucket().await
                } else {
                    Err(format!(
                        "bucket {:?} does not exist (set create_container = yes to create it)",
                        self.bucket
                    ))
                }
            }
            Err(e) => Err(summary(&e.to_string())),
        }
    }

    /// object_store cannot create buckets; a presigned PUT of the bucket's URL can. The
    /// request is the one AWS documents for CreateBucket: a `Content-Length` always (AWS and
    /// its emulations answer `411` without one), and outside `us-east-1` the region as the
    /// body's `LocationConstraint`. An S3 of another kind that names its regions otherwise
    /// (Swift's s3api, Ceph) is asked again without one. A conflict (`409`:
    /// `OperationAborted` while another gateway creates it, `BucketAlreadyOwnedByYou`, or
    /// `BucketAlreadyExists`, which some S3s answer for a bucket of one's own) is fine once
    /// the bucket answers a listing, asked for a few seconds.
    async fn create_bucket(&self) -> std::result::Result<(), String> {
        let body = create_bucket_body(&self.region);
        let (status, code) = match self.put_bucket(body.clone()).await? {
            None => return Ok(()),
            Some(refused) => refused,
        };
        let (status, code) = if !body.is_empty()
            && self.endpoint != "AWS"
            && matches!(
                code.as_str(),
                "InvalidLocationConstraint" | "IllegalLocationConstraintException"
            ) {
            match self.put_bucket(String::new()).await? {
                None => return Ok(()),
                Some(refused) => refused,
            }
        } else {
            (status, code)
        };
        if status == reqwest::StatusCode::CONFLICT {
            let probe = Path::from(crate::store::key::PROBE_FOLDER);
            for wait in [0, 1, 2, 3, 4] {
                tokio::time::sleep(Duration::from_secs(wait)).await;
                if self.inner.list_with_delimiter(Some(&probe)).await.is_ok() {
                    return Ok(());
                }
            }
        }
        let code = if code.is_empty() {
            String::new()
        } else {
            format!(" ({code})")
        };
        Err(format!(
            "cannot create bucket {:?}: the store answered {status}{code}",
            self.bucket
        ))
    }

    /// One CreateBucket request with `body`: `None` when the bucket was created, else the
    /// status and error code of the refusal.
    async fn put_bucket(
        &self,
        body: String,
    ) -> std::result::Result<Option<(reqwest::StatusCode, String)>, String> {
        use object_store::signer::Signer;
        let url = self
            .inner
            .signed_url(
                reqwest::Method::PUT,
                &Path::from(""),
                Duration::from_secs(60),
            )
            .await
            .map_err(|e| format!("cannot sign the bucket creation: {e}"))?;
        let response = self
            .client
            .put(url)
            .header(reqwest::header::CONTENT_LENGTH, body.len())
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot create bucket {:?}: {e}", self.bucket))?;
        let status = response.status();
        if status.is_success() {
            tracing::info!(bucket = %self.bucket, "created S3 bucket");
            return Ok(None);
        }
        let text = response.text().await.unwrap_or_default();
        let code = xml_value(&text, "Code").unwrap_or("").to_string();
        Ok(Some((status, code)))
    }
}

/// The body of a CreateBucket request: empty in `us-east-1` (AWS refuses that region named as
/// a constraint), elsewhere the region as the bucket's `LocationConstraint`.
fn create_bucket_body(region: &str) -> String {
    if region == "us-east-1" {
        String::new()
    } else {
        let region = region
            .replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;");
        format!(
            "<CreateBucketConfiguration xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\">\
             <LocationConstraint>{region}</LocationConstraint></CreateBucketConfiguration>"
        )
    }
}

/// The part of a CopyObject answer between `<tag>` and `</tag>`.
fn xml_value<'a>(text: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = text.find(&open)? + open.len();
    let end = text[start..].find(&format!("</{tag}>"))? + start;
    Some(&text[start..end])
}

/// Key characters kept as they are in `x-amz-copy-source`: RFC 3986 unreserved.
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Tries of a CopyObject that failed with a 5xx or on the connection.
const COPY_TRIES: u32 = 3;

impl Md5Verified<AmazonS3> {
    /// A server-side CopyObject of the `size` bytes at `from` that replaces the metadata
    /// with `headers` (object_store's copy keeps the source's), tried again after a 5xx or a
    /// connection failure. Returns the new object's ETag, unquoted.
    async fn copy_replacing_metadata(
        &self,
        from: &Path,
        to: &Path,
        size: u64,
        headers: &[(String, String)],
    ) -> Result<String> {
        let mut tries = 1;
        loop {
            match self.copy_once(from, to, size, headers).await {
                Err(CopyError::Transient(message)) if tries < COPY_TRIES => {
                    tracing::debug!(%from, %to, message, "copy failed; trying again");
                    tokio::time::sleep(Duration::from_millis(200 * u64::from(tries))).await;
                    tries += 1;
                }
                Err(CopyError::Transient(message) | CopyError::Final(message)) => {
                    return Err(object_store::Error::Generic {
                        store: "S3",
                        source: message.into(),
                    });
                }
                Err(CopyError::NoSource(message)) => {
                    return Err(object_store::Error::NotFound {
                        path: from.to_string(),
                        source: message.into(),
                    });
                }
                Ok(etag) => return Ok(etag),
            }
        }
    }

    async fn copy_once(
        &self,
        from: &Path,
        to: &Path,
        size: u64,
        headers: &[(String, String)],
    ) -> std::result::Result<String, CopyError> {
        use object_store::aws::AwsAuthorizer;
        use object_store::client::{HttpRequest, HttpRequestBody};
        use object_store::signer::Signer;
        let context = |e: &dyn fmt::Display| format!("copy {from} to {to}: {e}");
        // object_store builds the target's URL (style, encoding); the query of a presigned
        // URL is dropped and the request is signed with its headers instead.
        let mut url = self
            .inner
            .signed_url(reqwest::Method::PUT, to, Duration::from_secs(60))
            .await
            .map_err(|e| CopyError::Final(context(&e)))?;
        url.set_query(None);
        // The source is named by bucket and key, whatever the URL style or endpoint path.
        let key: Vec<String> = from
            .as_ref()
            .split('/')
            .map(|segment| percent_encoding::utf8_percent_encode(segment, COPY_SOURCE).to_string())
            .collect();
        let copy_source = format!("{}/{}", self.bucket, key.join("/"));
        let mut builder = http::Request::builder()
            .method(http::Method::PUT)
            .uri(url.as_str())
            .header("x-amz-copy-source", copy_source)
            .header("x-amz-metadata-directive", "REPLACE");
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let mut request: HttpRequest = builder
            .body(HttpRequestBody::empty())
            .map_err(|e| CopyError::Final(context(&e)))?;
        let credential = self
            .inner
            .credentials()
            .get_credential()
            .await
            .map_err(|e| CopyError::Transient(context(&e)))?;
        AwsAuthorizer::new(&credential, "s3", &self.region)
            .try_authorize(&mut request, None)
            .map_err(|e| CopyError::Final(context(&e)))?;
        let mut send = self
            .client
            .put(url.as_str())
            .timeout(copy_timeout(self.timeout, size));
        for (name, value) in request.headers() {
            send = send.header(name.as_str(), value.as_bytes());
        }
        let response = send
            .send()
            .await
            .map_err(|e| CopyError::Transient(context(&e)))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        // S3 can answer 200 and still report an error in the body.
        if !status.is_success() || text.contains("<Error>") {
            let code = xml_value(&text, "Code").unwrap_or("");
            let message = context(&format!(
                "{status} {code}: {}",
                xml_value(&text, "Message").unwrap_or("")
            ));
            return Err(match (status.as_u16(), code) {
                // A missing bucket is not a message moved on by another worker.
                (_, "NoSuchBucket") => CopyError::Final(message),
                (404, _) | (_, "NoSuchKey") => CopyError::NoSource(message),
                (500..=599, _) | (_, "InternalError" | "SlowDown" | "ServiceUnavailable") => {
                    CopyError::Transient(message)
                }
                _ => CopyError::Final(message),
            });
        }
        xml_value(&text, "ETag")
            .map(|e| e.replace("&quot;", "").trim_matches('"').to_string())
            .ok_or_else(|| CopyError::Final(context(&"no ETag in the answer")))
    }
}

/// How a CopyObject failed.
enum CopyError {
    /// Worth another try (5xx, connection).
    Transient(String),
    /// The source does not exist.
    NoSource(String),
    /// Anything else.
    Final(String),
}

#[async_trait]
impl Mover for Md5Verified<AmazonS3> {
    async fn copy_verified(
        &self,
        from: &ObjectMeta,
        to: &Path,
        update: &MetadataUpdate,
    ) -> Result<()> {
        // A copy that replaces metadata must send all of it: read the source's first.
        let source = self
            .get_opts(&from.location, GetOptions::new().with_head(true))
            .await?;
        let headers = replacement_headers(&source.attributes, update);
        let copied = self
            .copy_replacing_metadata(&from.location, to, source.meta.size, &headers)
            .await?;
        failpoint::hit("move.copied");
        let source_etag = source.meta.e_tag.as_deref().map(|e| e.trim_matches('"'));
        let verified = match source_etag {
            Some(etag) if is_plain_md5(etag) => copied == etag,
            // A multipart ETag is not the MD5 of the bytes: compare sizes.
            _ => self.head(to).await?.size == source.meta.size,
        };
        if !verified {
            return Err(copy_mismatch(
                "S3",
                &from.location,
                format!("ETag {copied}, source {source_etag:?}"),
            ));
        }
        Ok(())
    }

    async fn remove(&self, at: &ObjectMeta) -> Result<()> {
        match self.inner.delete(&at.location).await {
            Err(object_store::Error::NotFound { .. }) => Ok(()),
            other => other,
        }
    }

    async fn list_page(&self, prefix: &str, after: Option<&str>, max: usize) -> Result<Page> {
        use object_store::list::{PaginatedListOptions, PaginatedListStore};
        let options = PaginatedListOptions {
            offset: after.map(String::from),
            max_keys: Some(max),
            ..PaginatedListOptions::default()
        };
        let page = self.inner.list_paginated(Some(prefix), options).await?;
        let mut objects = page.result.objects;
        // ListObjectsV2 answers in key order; say so rather than trust every S3.
        objects.sort_by(|a, b| a.location.as_ref().cmp(b.location.as_ref()));
        Ok(Page {
            // IsTruncated (a continuation token): a store may cut a page short.
            more: page.page_token.is_some(),
            objects,
        })
    }

    async fn update_metadata(&self, at: &ObjectMeta, update: &MetadataUpdate) -> Result<()> {
        let current = self
            .get_opts(&at.location, GetOptions::new().with_head(true))
            .await?;
        let headers = replacement_headers(&current.attributes, update);
        self.copy_replacing_metadata(&at.location, &at.location, current.meta.size, &headers)
            .await
            .map(drop)
    }
}

/// The headers a metadata-replacing copy sends: the object's content headers and user
/// metadata, with `update` over the metadata.
fn replacement_headers(
    attributes: &object_store::Attributes,
    update: &MetadataUpdate,
) -> Vec<(String, String)> {
    use object_store::Attribute;
    let mut headers: Vec<(String, String)> = Vec::new();
    for (attribute, value) in attributes {
        let name = match (crate::store::http::content_header(attribute), attribute) {
            (Some(header), _) => header.to_string(),
            (None, Attribute::Metadata(key)) if !update.iter().any(|(k, _)| k == key.as_ref()) => {
                format!("x-amz-meta-{key}")
            }
            _ => continue,
        };
        headers.push((name, value.to_string()));
    }
    headers.extend(
        update
            .iter()
            .map(|(k, v)| (format!("x-amz-meta-{k}"), v.clone())),
    );
    headers
}

/// object_store's S3 errors carry the whole XML body; keep the status, code and message.
fn summary(text: &str) -> String {
    let between = |open: &str, close: &str| {
        let start = text.find(open)? + open.len();
        let end = text[start..].find(close)? + start;
        Some(&text[start..end])
    };
    let (Some(code), Some(status)) = (between("<Code>", "</Code>"), between("status code: ", ":"))
    else {
        return text.to_string();
    };
    let head = text.split(" - ").next().unwrap_or(text);
    let message = between("<Message>", "</Message>").unwrap_or("");
    format!("{head} - {status} {code}: {message}")
}

/// A Generic error with its text shortened by [`summary`]; other variants as they are.
fn shorten(error: object_store::Error) -> object_store::Error {
    match error {
        object_store::Error::Generic { store, source } => object_store::Error::Generic {
            store,
            source: summary(&source.to_string()).into(),
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xml_errors_are_summarised() {
        let text = "Error performing GET http://h/b?x in 9ms - Server returned non-2xx status code: 403 Forbidden: <?xml version='1.0'?><Error><Code>SignatureDoesNotMatch</Code><Message>Check your key.</Message><StringToSign>long</StringToSign></Error>";
        assert_eq!(
            summary(text),
            "Error performing GET http://h/b?x in 9ms - 403 Forbidden SignatureDoesNotMatch: Check your key."
        );
        assert_eq!(summary("connection refused"), "connection refused");
    }
}
