//! What the HTTP-speaking backends (Swift, S3) share: the client builder with its TLS
//! provider, and the headers of an object's content attributes.

/// A builder for the HTTP clients of the object stores, after [`install_tls_provider`].
pub fn http_client() -> reqwest::ClientBuilder {
    install_tls_provider();
    reqwest::Client::builder()
}

/// Installs rustls' ring crypto provider for the whole process, once: reqwest,
/// object_store and tokio-xmpp take the process default and fail without one (redis and
/// mail-send find ring by themselves).
pub fn install_tls_provider() {
    static PROVIDER: std::sync::Once = std::sync::Once::new();
    PROVIDER.call_once(|| {
        // Err: a provider is already installed (by the embedding program), which is fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The HTTP header of an object's content attribute (`Content-Type` and the like), the same
/// for Swift and S3; `None` for metadata and other attributes.
pub fn content_header(attribute: &object_store::Attribute) -> Option<&'static str> {
    use object_store::Attribute;
    match attribute {
        Attribute::ContentType => Some("content-type"),
        Attribute::ContentEncoding => Some("content-encoding"),
        Attribute::ContentDisposition => Some("content-disposition"),
        Attribute::ContentLanguage => Some("content-language"),
        Attribute::CacheControl => Some("cache-control"),
        _ => None,
    }
}
