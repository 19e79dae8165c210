//! The calls of the Mattermost REST API v4 that a bot needs to post (see
//! `../shared/mattermost.md`): bearer token, JSON bodies, multipart uploads. The server's
//! rate limit paces every request of the worker (one [`Api`] serves all its jobs): a 429,
//! or an answer that says none are left (`X-Ratelimit-Remaining: 0`), holds every request
//! until the limit resets (`Retry-After`, else `X-Ratelimit-Reset`); a 429 is tried again a
//! few times, and a write (a post, an upload, a webhook) is not sent after a wait once the
//! claim's lease is lost ([`Held`]). Every other answer is mapped to an [`ApiError`] that
//! says whether trying later can help.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Secret;
use crate::worker::mail_view::Attachment;

/// Bytes per second an upload is given at least, beyond `timeout` (1 MiB/s: a 50 MiB file
/// gets 50 s more).
const UPLOAD_RATE: u64 = 1024 * 1024;
/// The most posts `GET /channels/{id}/posts?since=` gives.
const SINCE_LIMIT: usize = 1000;
/// Pages of 200 posts [`Api::find_post`] reads at most when `since` may have left some out.
const MAX_LOOK_PAGES: usize = 25;
/// The post property that names a post's identity (see [`Api::post`]).
pub const IDENTITY_PROP: &str = "swiftdrop_post";
/// How many times a rate-limited request is sent again before it counts as a failure.
const RATE_LIMIT_TRIES: u32 = 5;
/// Why a write was not sent after a rate limit's wait.
pub const LEASE_LOST_WAITING: &str =
    "the claim's lease was lost while the rate limit was waited out: nothing more is sent";
/// The longest wait for a rate limit to reset; past it the action is retried later.
const MAX_RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
/// Bytes in a path segment that are percent-encoded (an e-mail address keeps `@`, `.`, ...).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'@')
    .remove(b'.')
    .remove(b'-')
    .remove(b'_')
    .remove(b'+');

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiError {
    /// 404: no such user, channel or team.
    NotFound(String),
    /// 413: a file over the server's limit.
    TooLarge(String),
    /// 401, or a 403 about the bot itself (its own user, the client configuration, e-mail
    /// addresses hidden from it: `PrivacySettings.ShowEmailAddress`): the whole action
    /// fails, not one recipient.
    Unauthorized(String),
    /// Another 403: the bot may not see this user, post in this channel or upload here
    /// (the server answers so for an unknown address too when the bot's view of users is
    /// restricted).
    Forbidden(String),
    /// A reply's thread root the server could not read (400
    /// `api.post.create_post.root_id.app_error`: deleted since, or a store error; see
    /// [`Api::post_gone`]).
    RootGone(String),
    /// Another 4xx, or a 501: this request will not succeed as it is.
    Refused(String),
    /// 5xx, 429 for too long, no connection, a timeout, an unreadable answer.
    Transient(String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::NotFound(m)
            | ApiError::TooLarge(m)
            | ApiError::Unauthorized(m)
            | ApiError::Forbidden(m)
            | ApiError::RootGone(m)
            | ApiError::Refused(m)
            | ApiError::Transient(m) => f.write_str(m),
        }
    }
}

/// A user as the API returns it (the fields used here).
#[derive(Debug, Clone, Deserialize)]
pub struct User {
    pub id: String,
    pub username: String,
    #[serde(default)]
    pub email: String,
}

/// The limits the server announces in its client configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// `MaxPostSize`: characters in one post.
    pub max_post_chars: Option<usize>,
    /// `MaxFileSize`: bytes in one file.
    pub max_file_bytes: Option<u64>,
}

/// A post to make ([`Api::post`]).
#[derive(Debug, Clone, Copy)]
pub struct NewPost<'a> {
    pub channel_id: &'a str,
    /// Markdown, at most the server's `MaxPostSize` characters.
    pub message: &'a str,
    /// Files uploaded into the channel, five at most.
    pub file_ids: &'a [String],
    /// The thread's first post, for a reply.
    pub root_id: Option<&'a str>,
    /// The post's stable identity (the same on every attempt).
    pub identity: &'a str,
}

/// For a write: whether the claim still holds its lease (asked after every wait).
pub type Held<'a> = &'a (dyn Fn() -> bool + Sync);

/// A Mattermost server's v4 API.
#[derive(Debug, Clone)]
pub struct Api {
    /// When requests may go again (the rate limit), shared by every job of the worker.
    not_before: Arc<Mutex<Option<Instant>>>,
    http: reqwest::Client,
    /// How long one request may take (an upload: more, by its size).
    timeout: Duration,
    /// `<url>/api/v4`.
    base: String,
}

impl Api {
    /// The API of the server at `url` (its base URL), each request limited to `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Result<Api, String> {
        let http = crate::store::http_client()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .build()
            .map_err(|e| format!("mattermost client: {e}"))?;
        Ok(Api {
            not_before: Arc::default(),
            http,
            timeout,
            base: format!("{}/api/v4", url.trim_end_matches('/')),
        })
    }

    fn url(&self, segments: &[&str]) -> String {
        let mut url = self.base.clone();
        for segment in segments {
            url.push('/');
            url.extend(utf8_percent_encode(segment, SEGMENT));
        }
        url
    }

    /// `GET /system/ping`: whether the server answers (no session needed).
    pub async fn ping(&self) -> Result<(), String> {
        let url = self.url(&["system", "ping"]);
        match self.http.get(&url).send().await {
            Ok(response) if response.status().is_success() => Ok(()),
            Ok(response) => Err(format!("/system/ping answered {}", response.status())),
            Err(e) => Err(format!("mattermost unreachable: {}", e.without_url())),
        }
    }

    /// `GET /users/me`: the bot itself.
    pub async fn me(&self, token: &Secret) -> Result<User, ApiError> {
        let url = self.url(&["users", "me"]);
        self.json(token, None, || self.http.get(&url)).await
    }

    /// `GET /users/email/{email}`.
    pub async fn user_by_email(&self, token: &Secret, email: &str) -> Result<User, ApiError> {
        let url = self.url(&["users", "email", email]);
        self.json(token, None, || self.http.get(&url)).await
    }

    /// `GET /users/username/{username}`.
    pub async fn user_by_name(&self, token: &Secret, name: &str) -> Result<User, ApiError> {
        let url = self.url(&["users", "username", name]);
        self.json(token, None, || self.http.get(&url)).await
    }

    /// `POST /channels/direct`: the direct channel of the bot and a user (made, or the
    /// one there is); its id.
    pub async fn direct_channel(
        &self,
        token: &Secret,
        bot_id: &str,
        user_id: &str,
    ) -> Result<String, ApiError> {
        let url = self.url(&["channels", "direct"]);
        let body = json!([bot_id, user_id]);
        let channel: Value = self
            .json(token, None, || self.http.post(&url).json(&body))
            .await?;
        id_of(&channel)
    }

    /// `GET /teams/name/{team}/channels/name/{channel}`: a channel's id.
    pub async fn channel_by_name(
        &self,
        token: &Secret,
        team: &str,
        channel: &str,
    ) -> Result<String, ApiError> {
        let url = self.url(&["teams", "name", team, "channels", "name", channel]);
        let found: Value = self.json(token, None, || self.http.get(&url)).await?;
        id_of(&found)
    }

    /// `POST /files`: uploads one file into a channel; its file id.
    pub async fn upload(
        &self,
        token: &Secret,
        channel_id: &str,
        file: &Attachment,
        held: Held<'_>,
    ) -> Result<String, ApiError> {
        let url = self.url(&["files"]);
        // The bytes are shared, not copied, by every attempt's form.
        let part_of = || {
            reqwest::multipart::Part::stream_with_length(
                reqwest::Body::from(file.bytes.clone()),
                file.bytes.len() as u64,
            )
            .file_name(file.name.clone())
        };
        let form = || {
            let part = part_of()
                .mime_str(&file.content_type)
                .unwrap_or_else(|_| part_of());
            reqwest::multipart::Form::new()
                .text("channel_id", channel_id.to_string())
                .part("files", part)
        };
        // A large file needs longer than a small request: its time grows with its size.
        let timeout = self.timeout + Duration::from_secs(file.bytes.len() as u64 / UPLOAD_RATE);
        let answer: Value = self
            .json(token, Some(held), || {
                self.http.post(&url).timeout(timeout).multipart(form())
            })
            .await?;
        answer["file_infos"]
            .get(0)
            .map(id_of)
            .unwrap_or_else(|| Err(unreadable("no file_infos in the upload answer")))
    }

    /// `POST /posts`: one post (in the thread of `root_id` when given); its id. The post
    /// carries `identity` twice: as `pending_post_id` (a server that saw it in the last 30 s
    /// answers with the post it made then) and in its props under [`IDENTITY_PROP`] (for
    /// [`Api::find_post`] later).
    pub async fn post(
        &self,
        token: &Secret,
        post: &NewPost<'_>,
        held: Held<'_>,
    ) -> Result<String, ApiError> {
        let NewPost {
            channel_id,
            message,
            file_ids,
            root_id,
            identity,
        } = *post;
        let url = self.url(&["posts"]);
        let mut body = json!({
            "channel_id": channel_id,
            "message": message,
            "pending_post_id": identity,
            "props": { IDENTITY_PROP: identity },
        });
        if !file_ids.is_empty() {
            body["file_ids"] = json!(file_ids);
        }
        if let Some(root) = root_id {
            body["root_id"] = json!(root);
        }
        let post: Value = self
            .json(token, Some(held), || self.http.post(&url).json(&body))
            .await?;
        id_of(&post)
    }

    /// The id of the post made in `channel_id` since `since_ms` (ms) with `identity` in
    /// its props, if any: `GET /channels/{channel_id}/posts?since=` (posts changed since
    /// then; the server gives at most 1000 of them, in no set order), and when that may
    /// have left some out, the channel's pages newest first (`page`, `per_page=200`) back
    /// to `since_ms`, [`MAX_LOOK_PAGES`] at most. Deleted posts and edit history (a post's
    /// older versions, with an `original_id`) are not it.
    pub async fn find_post(
        &self,
        token: &Secret,
        channel_id: &str,
        since_ms: i64,
        identity: &str,
    ) -> Result<Option<String>, ApiError> {
        let url = self.url(&["channels", channel_id, "posts"]);
        // The list's posts in `order` (the `posts` map also holds the roots of their
        // threads, however old).
        let get = |query: Vec<(&'static str, String)>| {
            let url = &url;
            async move {
                let list: Value = self
                    .json(token, None, || self.http.get(url).query(&query))
                    .await?;
                let order = list["order"]
                    .as_array()
                    .ok_or_else(|| unreadable("no order in the post list"))?;
                Ok::<_, ApiError>(
                    order
                        .iter()
                        .filter_map(|id| list["posts"].get(id.as_str()?).cloned())
                        .collect::<Vec<Value>>(),
                )
            }
        };
        let is_it = |p: &Value| {
            p["props"][IDENTITY_PROP].as_str() == Some(identity)
                && p["delete_at"].as_i64().unwrap_or(0) == 0
                && p["original_id"].as_str().unwrap_or("").is_empty()
        };
        if since_ms > 0 {
            let posts = get(vec![("since", since_ms.to_string())]).await?;
            if let Some(found) = posts.iter().find(|p| is_it(p)) {
                return Ok(id_of(found).ok());
            }
            if posts.len() < SINCE_LIMIT {
                return Ok(None);
            }
        }
        for page in 0..MAX_LOOK_PAGES {
            let posts = get(vec![
                ("page", page.to_string()),
                ("per_page", "200".to_string()),
            ])
            .await?;
            if let Some(found) = posts.iter().find(|p| is_it(p)) {
                return Ok(id_of(found).ok());
            }
            let oldest = posts
                .iter()
                .filter_map(|p| p["create_at"].as_i64())
                .min()
                .unwrap_or(0);
            if posts.len() < 200 || oldest < since_ms {
                return Ok(None);
            }
        }
        tracing::warn!(
            channel_id,
            "mattermost: an earlier post looked for in {MAX_LOOK_PAGES} pages, not found; posting"
        );
        Ok(None)
    }

    /// Whether the post `post_id` is gone: `GET /posts/{post_id}` answers 404, or the post
    /// is marked deleted.
    pub async fn post_gone(&self, token: &Secret, post_id: &str) -> Result<bool, ApiError> {
        let url = self.url(&["posts", post_id]);
        match self
            .json::<Value>(token, None, || self.http.get(&url))
            .await
        {
            Ok(post) => Ok(post["delete_at"].as_i64().unwrap_or(0) > 0),
            Err(ApiError::NotFound(_)) => Ok(true),
            Err(e) => Err(e),
        }
    }

    /// `GET /config/client?format=old`: the server's post and file limits (values the
    /// server leaves out or garbles are `None`).
    pub async fn limits(&self, token: &Secret) -> Result<Limits, ApiError> {
        let url = self.url(&["config", "client"]);
        let config: Value = self
            .json(token, None, || {
                self.http.get(&url).query(&[("format", "old")])
            })
            .await?;
        let number = |key: &str| -> Option<u64> {
            match &config[key] {
                Value::String(s) => s.trim().parse().ok(),
                Value::Number(n) => n.as_u64(),
                _ => None,
            }
        };
        Ok(Limits {
            max_post_chars: number("MaxPostSize").map(|n| n as usize).filter(|&n| n > 0),
            max_file_bytes: number("MaxFileSize").filter(|&n| n > 0),
        })
    }

    /// An incoming webhook (`POST <url>`, Slack-compatible payload): answered `200 ok`.
    pub async fn webhook(
        &self,
        url: &Secret,
        payload: &Value,
        held: Held<'_>,
    ) -> Result<(), ApiError> {
        let response = self
            .send(Some(held), || self.http.post(url.expose()).json(payload))
            .await?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // The webhook URL is a secret: only the status and the server's message are shown.
        Err(classify(
            status,
            "webhook",
            &response.text().await.unwrap_or_default(),
        ))
    }

    /// Sends the request `build` makes with the bot's token; its JSON answer.
    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        token: &Secret,
        held: Option<Held<'_>>,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<T, ApiError> {
        let response = self
            .send(held, || build().bearer_auth(token.expose()))
            .await?;
        let status = response.status();
        let what = format!(
            "{} {}",
            response.url().path(),
            status.canonical_reason().unwrap_or("")
        );
        let body = response
            .bytes()
            .await
            .map_err(|e| ApiError::Transient(format!("{what}: reading the answer: {e}")))?;
        if !status.is_success() {
            return Err(classify(status, &what, &String::from_utf8_lossy(&body)));
        }
        serde_json::from_slice(&body).map_err(|e| unreadable(&format!("{what}: {e}")))
    }

    /// Sends the request `build` makes once the rate limit lets it (a write only while
    /// `held`), again while the server says 429 and the wait it asks for is short.
    async fn send(
        &self,
        held: Option<Held<'_>>,
        build: impl Fn() -> RequestBuilder,
    ) -> Result<Response, ApiError> {
        let mut tries = 0;
        loop {
            let until = *self.not_before.lock().expect("pace");
            if let Some(until) = until.filter(|&u| u > Instant::now()) {
                let wait = until - Instant::now();
                if wait > MAX_RATE_LIMIT_WAIT {
                    return Err(ApiError::Transient(format!(
                        "rate limited: the server asks to wait {wait:?}"
                    )));
                }
                tracing::debug!(?wait, "mattermost rate limit: waiting");
                // Every job waits for the same reset: they go again spread over a quarter
                // of a second, not all at once.
                let spread = Duration::from_millis(u64::from(uuid::Uuid::new_v4().as_bytes()[0]));
                tokio::time::sleep_until(until + spread).await;
                if held.is_some_and(|held| !held()) {
                    return Err(ApiError::Transient(LEASE_LOST_WAITING.into()));
                }
            }
            let response = build().send().await.map_err(|e| {
                // reqwest's error text holds the URL, which for a webhook is a secret.
                ApiError::Transient(format!("mattermost unreachable: {}", e.without_url()))
            })?;
            let limited = response.status() == StatusCode::TOO_MANY_REQUESTS;
            let spent = response
                .headers()
                .get("x-ratelimit-remaining")
                .is_some_and(|v| v.as_bytes().trim_ascii() == b"0");
            let wait = rate_limit_wait(response.headers());
            if limited || spent {
                // Every request of the worker waits for the reset, not only this one.
                let mut not_before = self.not_before.lock().expect("pace");
                let until = Instant::now() + wait;
                if not_before.is_none_or(|u| u < until) {
                    *not_before = Some(until);
                }
            }
            if !limited {
                return Ok(response);
            }
            tries += 1;
            if tries >= RATE_LIMIT_TRIES || wait > MAX_RATE_LIMIT_WAIT {
                return Err(ApiError::Transient(format!(
                    "rate limited (429) {tries} times; the server asks to wait {wait:?}"
                )));
            }
        }
    }
}

/// How long a 429 asks to wait: `Retry-After` (seconds or an HTTP date), else
/// `X-Ratelimit-Reset` (seconds until the reset, or a Unix time), else one second.
pub fn rate_limit_wait(headers: &reqwest::header::HeaderMap) -> Duration {
    let text = |name: &str| -> Option<String> {
        Some(headers.get(name)?.to_str().ok()?.trim().to_string())
    };
    let seconds = |name: &str| -> Option<f64> {
        text(name)?
            .parse::<f64>()
            .ok()
            .filter(|s| s.is_finite() && *s >= 0.0)
    };
    let retry_after = seconds("retry-after").or_else(|| {
        let at = chrono::DateTime::parse_from_rfc2822(&text("retry-after")?).ok()?;
        Some(
            ((at.timestamp_millis() - chrono::Utc::now().timestamp_millis()) as f64 / 1000.0)
                .max(0.0),
        )
    });
    let wait = match (retry_after, seconds("x-ratelimit-reset")) {
        (Some(s), _) => s,
        // A value like 1.8e9 is a point in time, not a number of seconds.
        (None, Some(reset)) if reset > 1_000_000_000.0 => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0);
            (reset - now).max(0.0)
        }
        (None, Some(reset)) => reset,
        (None, None) => 1.0,
    };
    Duration::from_secs_f64(wait.clamp(0.05, 3600.0))
}

/// The error `id` of a reply whose thread root is not (or no longer) a root post of that
/// channel.
const ROOT_GONE: &str = "api.post.create_post.root_id.app_error";
/// The error `id` the server gives when it hides e-mail addresses from the caller
/// (`GET /users/email/{email}`, before it looks the address up).
const EMAILS_HIDDEN: &str = "api.user.get_user_by_email.permissions.app_error";

/// An error answer to `what` (`<path> <reason>`) as an [`ApiError`], with the server's
/// `message` when it sent one. A 403 is the bot's own only where it asks about itself or
/// where the server hides every address from it; elsewhere it is about the one user,
/// channel or file.
fn classify(status: StatusCode, what: &str, body: &str) -> ApiError {
    let answer = serde_json::from_str::<Value>(body).ok();
    let field = |key: &str| {
        answer
            .as_ref()
            .and_then(|v| v[key].as_str())
            .map(str::to_string)
    };
    let message = field("message").unwrap_or_else(|| body.chars().take(200).collect());
    let text = format!("{what}: {} {message}", status.as_u16());
    let about_the_bot = ["/users/me", "/config/client"]
        .iter()
        .any(|p| what.contains(p))
        || field("id").as_deref() == Some(EMAILS_HIDDEN);
    match status.as_u16() {
        404 => ApiError::NotFound(text),
        413 => ApiError::TooLarge(text),
        401 => ApiError::Unauthorized(text),
        403 if about_the_bot => ApiError::Unauthorized(text),
        403 => ApiError::Forbidden(text),
        400 if field("id").as_deref() == Some(ROOT_GONE) => ApiError::RootGone(text),
        408 => ApiError::Transient(text),
        400..=499 | 501 => ApiError::Refused(text),
        _ => ApiError::Transient(text),
    }
}

fn id_of(value: &Value) -> Result<String, ApiError> {
    value["id"]
        .as_str()
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .ok_or_else(|| unreadable("no id in the answer"))
}

fn unreadable(what: &str) -> ApiError {
    ApiError::Transient(format!("unreadable answer: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue};

    #[test]
    fn a_rate_limit_asks_for_seconds_or_a_point_in_time() {
        let mut headers = HeaderMap::new();
        assert_eq!(rate_limit_wait(&headers), Duration::from_secs(1));
        headers.insert("x-ratelimit-reset", HeaderValue::from_static("3"));
        assert_eq!(rate_limit_wait(&headers), Duration::from_secs(3));
        headers.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(rate_limit_wait(&headers), Duration::from_secs(2));
        let date = (chrono::Utc::now() + chrono::Duration::seconds(4)).to_rfc2822();
        headers.insert("retry-after", date.parse().unwrap());
        let wait = rate_limit_wait(&headers);
        assert!(
            wait <= Duration::from_secs(4) && wait >= Duration::from_secs(2),
            "{wait:?}"
        );
        headers.remove("retry-after");
        let soon = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 5;
        headers.insert("x-ratelimit-reset", soon.to_string().parse().unwrap());
        let wait = rate_limit_wait(&headers);
        assert!(wait <= Duration::from_secs(5) && wait >= Duration::from_secs(3));
    }

    #[test]
    fn answers_say_whether_trying_later_helps() {
        let body = r#"{"id":"x","message":"Unable to find the user.","status_code":404}"#;
        assert_eq!(
            classify(StatusCode::NOT_FOUND, "GET /u", body),
            ApiError::NotFound("GET /u: 404 Unable to find the user.".into())
        );
        assert!(matches!(
            classify(StatusCode::PAYLOAD_TOO_LARGE, "f", ""),
            ApiError::TooLarge(_)
        ));
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, "/api/v4/users/me Forbidden", ""),
            ApiError::Unauthorized(_)
        ));
        // Addresses hidden from the bot: all recipients alike. A user it may not see (or
        // an unknown one, under restricted visibility): that recipient.
        let hidden = r#"{"id":"api.user.get_user_by_email.permissions.app_error","message":"Unable to get user","status_code":403}"#;
        let restricted = r#"{"id":"api.context.permissions.app_error","message":"You do not have the appropriate permissions.","status_code":403}"#;
        let lookup = "/api/v4/users/email/a@b.c Forbidden";
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, lookup, hidden),
            ApiError::Unauthorized(_)
        ));
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, lookup, restricted),
            ApiError::Forbidden(_)
        ));
        assert!(matches!(
            classify(StatusCode::FORBIDDEN, "/api/v4/files Forbidden", restricted),
            ApiError::Forbidden(_)
        ));
        assert!(matches!(
            classify(StatusCode::NOT_IMPLEMENTED, "/api/v4/files", ""),
            ApiError::Refused(_)
        ));
        assert!(matches!(
            classify(StatusCode::CONFLICT, "f", ""),
            ApiError::Refused(_)
        ));
        assert!(matches!(
            classify(StatusCode::REQUEST_TIMEOUT, "f", ""),
            ApiError::Transient(_)
        ));
        assert!(matches!(
            classify(StatusCode::BAD_GATEWAY, "f", "<html>"),
            ApiError::Transient(_)
        ));
    }

    #[test]
    fn path_segments_are_encoded() {
        let api = Api::new("http://127.0.0.1:1/", Duration::from_secs(1)).unwrap();
        assert_eq!(
            api.url(&["users", "email", "a.b+c@x.org/../admin"]),
            "http://127.0.0.1:1/api/v4/users/email/a.b+c@x.org%2F..%2Fadmin"
        );
    }
}
