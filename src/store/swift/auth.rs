//! Swift authentication: auth v1 (tempauth, swauth, most public clouds' legacy endpoint) and
//! Keystone v3 password auth, with a token cache shared by every request of a destination.
//!
//! A token is fetched once and reused until it is about to expire or Swift answers 401;
//! renewal is single-flight (one request authenticates, the others wait for its token), so
//! a burst of mail never turns into a burst of authentications (Keystone takes ~0.5 s each).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::Mutex;

use crate::config::{Secret, SwiftAuth};

/// Renew a token this long before the server says it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// Lifetime assumed when the server does not say (tempauth's default is a day).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// A token and the storage URL it is valid for.
#[derive(Debug)]
pub struct Token {
    /// Value for `X-Auth-Token`.
    pub value: Secret,
    /// Account URL, such as `http://127.0.0.1:8080/v1/AUTH_test`, without a trailing slash.
    pub storage_url: String,
    renew_at: Instant,
}

/// Why authentication failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The identity service refused the credentials (401/403).
    Refused(String),
    /// Anything else: unreachable, unexpected answer, no object-store endpoint.
    Failed(String),
}

impl std::fmt::Display for AuthError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthError::Refused(m) => write!(f, "authentication refused: {m}"),
            AuthError::Failed(m) => write!(f, "authentication failed: {m}"),
        }
    }
}

impl std::error::Error for AuthError {}

/// The token of one set of credentials, fetched on demand and renewed when stale.
#[derive(Debug)]
pub struct TokenCache {
    auth: SwiftAuth,
    client: reqwest::Client,
    current: Mutex<Option<Arc<Token>>>,
    authentications: AtomicU64,
}

impl TokenCache {
    /// A cache that authenticates with `auth` through `client`.
    pub fn new(auth: SwiftAuth, client: reqwest::Client) -> Self {
        TokenCache {
            auth,
            client,
            current: Mutex::new(None),
            authentications: AtomicU64::new(0),
        }
    }

    /// A valid token: the cached one, or a new one when there is none or it is stale.
    pub async fn token(&self) -> Result<Arc<Token>, AuthError> {
        let mut current = self.current.lock().await;
        if let Some(token) = current.as_ref() {
            if Instant::now() < token.renew_at {
                return Ok(token.clone());
            }
        }
        let token = Arc::new(self.authenticate().await?);
        *current = Some(token.clone());
        Ok(token)
    }

    /// Drops `stale` (Swift answered 401 to it), unless another request already replaced it.
    pub async fn invalidate(&self, stale: &Arc<Token>) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|t| Arc::ptr_eq(t, stale)) {
            *current = None;
        }
    }

    /// How many times this cache has authenticated (for logs and tests).
    pub fn authentications(&self) -> u64 {
        self.authentications.load(Ordering::Relaxed)
    }

    async fn authenticate(&self) -> Result<Token, AuthError> {
        self.authentications.fetch_add(1, Ordering::Relaxed);
        let token = match &self.auth {
            SwiftAuth::V1 {
                authurl,
                user,
                key,
                tenant_name,
            } => {
                self.auth_v1(authurl, user, key, tenant_name.as_deref())
                    .await
            }
            SwiftAuth::V3(v3) => self.auth_v3(v3).await,
        }?;
        tracing::info!(storage_url = %token.storage_url, "authenticated to Swift");
        Ok(token)
    }

    async fn auth_v1(
        &self,
        authurl: &str,
        user: &str,
        key: &Secret,
        tenant_name: Option<&str>,
    ) -> Result<Token, AuthError> {
        // tempauth and swauth name users `account:user`; the original SwiftDrop passed
        // `tenant_name` alongside, so join them when the user has no account part.
        let user = match tenant_name {
            Some(t) if !user.contains(':') && !t.is_empty() => format!("{t}:{user}"),
            _ => user.to_string(),
        };
        let response = self
            .client
            .get(authurl)
            .header("X-Auth-User", &user)
            .header("X-Auth-Key", key.expose())
            .send()
            .await
            .map_err(|e| {
                AuthError::Failed(format!("{authurl}: {}", crate::util::error_chain(&e)))
            })?;
        let status = response.status();
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(AuthError::Refused(format!(
                "{authurl} answered {status} for user {user:?}"
            )));
        }
        if !status.is_success() {
            return Err(AuthError::Failed(format!("{authurl} answered {status}")));
        }
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let value = header("x-auth-token").ok_or_else(|| {
            AuthError::Failed(format!("{authurl} answered {status} without X-Auth-Token"))
        })?;
        let storage_url = header("x-storage-url").ok_or_else(|| {
            AuthError::Failed(format!("{authurl} answered {status} without X-Storage-Url"))
        })?;
        let lifetime = header("x-auth-token-expires")
            .and_then(|s| s.trim().parse::<f64>().ok())
            .map(Duration::from_secs_f64)
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(Token {
            value: Secret::new(value),
            storage_url: storage_url.trim_end_matches('/').to_string(),
            renew_at: renew_at(lifetime),
        })
    }

    async fn auth_v3(&self, v3: &crate::config::KeystoneV3) -> Result<Token, AuthError> {
        let base = v3.authurl.trim_end_matches('/');
        let url = if base.ends_with("/v3") {
            format!("{base}/auth/tokens")
        } else {
            format!("{base}/v3/auth/tokens")
        };
        let project = match &v3.project_id {
            Some(id) => serde_json::json!({ "id": id }),
            None => serde_json::json!({
                "name": v3.project_name,
                "domain": { "name": v3.project_domain_name },
            }),
        };
        let body = serde_json::json!({
            "auth": {
                "identity": {
                    "methods": ["password"],
                    "password": { "user": {
                        "name": v3.user,
                        "domain": { "name": v3.user_domain_name },
                        "password": v3.key.expose(),
                    }},
                },
                "scope": { "project": project },
            }
        });
        let response = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(|e| AuthError::Failed(format!("{url}: {}", crate::util::error_chain(&e))))?;
        let status = response.status();
        if status.as_u16() == 401 || status.as_u16() == 403 {
            return Err(AuthError::Refused(format!(
                "{url} answered {status} for user {:?}",
                v3.user
            )));
        }
        if !status.is_success() {
            return Err(AuthError::Failed(format!("{url} answered {status}")));
        }
        let value = response
            .headers()
            .get("x-subject-token")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| {
                AuthError::Failed(format!("{url} answered {status} without X-Subject-Token"))
            })?;
        let reply: TokenReply = response
            .json()
            .await
            .map_err(|e| AuthError::Failed(format!("{url}: unreadable token body: {e}")))?;
        let storage_url = match &v3.object_storage_url {
            Some(url) => url.clone(),
            None => reply.token.object_store_endpoint(v3)?,
        };
        let lifetime = reply
            .token
            .expires_at
            .as_deref()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .and_then(|t| {
                (t.with_timezone(&chrono::Utc) - chrono::Utc::now())
                    .to_std()
                    .ok()
            })
            .unwrap_or(DEFAULT_LIFETIME);
        Ok(Token {
            value: Secret::new(value),
            storage_url: storage_url.trim_end_matches('/').to_string(),
            renew_at: renew_at(lifetime),
        })
    }
}

fn renew_at(lifetime: Duration) -> Instant {
    // A token shorter-lived than the margin is still used once rather than never.
    Instant::now() + lifetime.saturating_sub(RENEW_BEFORE).max(lifetime / 2)
}

/// The parts of a Keystone v3 token body that Swift clients use.
#[derive(Debug, Deserialize)]
struct TokenReply {
    token: TokenBody,
}

#[derive(Debug, Deserialize)]
struct TokenBody {
    expires_at: Option<String>,
    #[serde(default)]
    catalog: Vec<CatalogEntry>,
}

#[derive(Debug, Deserialize)]
struct CatalogEntry {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

#[derive(Debug, Deserialize)]
struct Endpoint {
    interface: String,
    url: String,
    region: Option<String>,
    region_id: Option<String>,
}

impl TokenBody {
    /// The `object-store` endpoint for the configured interface and region.
    fn object_store_endpoint(&self, v3: &crate::config::KeystoneV3) -> Result<String, AuthError> {
        let wanted_region = |e: &Endpoint| match &v3.region_name {
            None => true,
            Some(r) => e.region.as_deref() == Some(r) || e.region_id.as_deref() == Some(r),
        };
        self.catalog
            .iter()
            .filter(|c| c.kind == v3.service_type)
            .flat_map(|c| &c.endpoints)
            .find(|e| e.interface == v3.interface && wanted_region(e))
            .map(|e| e.url.clone())
            .ok_or_else(|| {
                AuthError::Failed(format!(
                    "the token's catalog has no {:?} endpoint with interface {:?}{}",
                    v3.service_type,
                    v3.interface,
                    v3.region_name
                        .as_ref()
                        .map(|r| format!(" in region {r:?}"))
                        .unwrap_or_default()
                ))
            })
    }
}
