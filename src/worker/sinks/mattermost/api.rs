//! The calls of the Mattermost REST API v4 that a bot needs to post (see
//! `../shared/mattermost.md`): bearer token, JSON bodies, multipart uploads. A 429 is
//! waited out (`Retry-After`, else `X-Ratelimit-Reset`) and tried again a few times; every
//! other answer is mapped to an [`ApiError`] that says whether trying later can help.

use std::time::Duration;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use reqwest::{RequestBuilder, Response, StatusCode};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::config::Secret;
use crate::worker::mail_view::Attachment;

/// How many times a rate-limited request is sent again before it counts as a failure.
const RATE_LIMIT_TRIES: u32 = 5;
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
    /// 413: a file over the server's limit; 501: file uploads are turned off.
    TooLarge(String),
    /// 401 or 403: the bot's token is refused, or the bot may not do this (see e-mail
    /// addresses, post in the channel): the whole action fails, not one recipient.
    Unauthorized(String),
    /// Another 4xx: this request will not succeed as it is.
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

/// A Mattermost server's v4 API.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
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
            http,
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

    /// `GET /users/me`: the bot itself.
    pub async fn me(&self, token: &Secret) -> Result<User, ApiError> {
        let url = self.url(&["users", "me"]);
        self.json(token, || self.http.get(&url)).await
    }

    /// `GET /users/email/{email}`.
    pub async fn user_by_email(&self, token: &Secret, email: &str) -> Result<User, ApiError> {
        let url = self.url(&["users", "email", email]);
        self.json(token, || self.http.get(&url)).await
    }

    /// `GET /users/username/{username}`.
    pub async fn user_by_name(&self, token: &Secret, name: &str) -> Result<User, ApiError> {
        let url = self.url(&["users", "username", name]);
        self.json(token, || self.http.get(&url)).await
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
            .json(token, || self.http.post(&url).json(&body))
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
        let found: Value = self.json(token, || self.http.get(&url)).await?;
        id_of(&found)
    }

    /// `POST /files`: uploads one file into a channel; its file id.
    pub async fn upload(
        &self,
        token: &Secret,
        channel_id: &str,
        file: &Attachment,
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
        let answer: Value = self
            .json(token, || self.http.post(&url).multipart(form()))
            .await?;
        answer["file_infos"]
            .get(0)
            .map(id_of)
            .unwrap_or_else(|| Err(unreadable("no file_infos in the upload answer")))
    }

    /// `POST /posts`: one post (in the thread of `root_id` when given); its id.
    pub async fn post(
        &self,
        token: &Secret,
        channel_id: &str,
        message: &str,
        file_ids: &[String],
        root_id: Option<&str>,
    ) -> Result<String, ApiError> {
        let url = self.url(&["posts"]);
        let mut body = json!({ "channel_id": channel_id, "message": message });
        if !file_ids.is_empty() {
            body["file_ids"] = json!(file_ids);
        }
        if let Some(root) = root_id {
            body["root_id"] = json!(root);
        }
        let post: Value = self
            .json(token, || self.http.post(&url).json(&body))
            .await?;
        id_of(&post)
    }

    /// `GET /config/client?format=old`: the server's post and file limits (values the
    /// server leaves out or garbles are `None`).
    pub async fn limits(&self, token: &Secret) -> Result<Limits, ApiError> {
        let url = self.url(&["config", "client"]);
        let config: Value = self
            .json(token, || self.http.get(&url).query(&[("format", "old")]))
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
    pub async fn webhook(&self, url: &Secret, payload: &Value) -> Result<(), ApiError> {
        let response = self
            .send(|| self.http.post(url.expose()).json(payload))
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
        build: impl Fn() -> RequestBuilder,
    ) -> Result<T, ApiError> {
        let response = self.send(|| build().bearer_auth(token.expose())).await?;
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
            let mut error = classify(status, &what, &String::from_utf8_lossy(&body));
            // A 403 is the bot's lack of rights only where it asks about itself or looks
            // users up (hidden addresses); elsewhere (a direct channel, a post) it is about
            // that one user or channel.
            let about_the_bot = ["/users/me", "/users/email/", "/config/client"]
                .iter()
                .any(|p| what.contains(p));
            if let (403, ApiError::Unauthorized(why), false) =
                (status.as_u16(), &error, about_the_bot)
            {
                error = ApiError::Refused(why.clone());
            }
            return Err(error);
        }
        serde_json::from_slice(&body).map_err(|e| unreadable(&format!("{what}: {e}")))
    }

    /// Sends the request `build` makes, again while the server says 429 and the wait it
    /// asks for is short.
    async fn send(&self, build: impl Fn() -> RequestBuilder) -> Result<Response, ApiError> {
        let mut tries = 0;
        loop {
            let response = build().send().await.map_err(|e| {
                // reqwest's error text holds the URL, which for a webhook is a secret.
                ApiError::Transient(format!("mattermost unreachable: {}", e.without_url()))
            })?;
            if response.status() != StatusCode::TOO_MANY_REQUESTS {
                return Ok(response);
            }
            tries += 1;
            let wait = rate_limit_wait(response.headers());
            if tries >= RATE_LIMIT_TRIES || wait > MAX_RATE_LIMIT_WAIT {
                return Err(ApiError::Transient(format!(
                    "rate limited (429) {tries} times; the server asks to wait {wait:?}"
                )));
            }
            tracing::debug!(?wait, "mattermost rate limit: waiting");
            tokio::time::sleep(wait).await;
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

/// An error answer as an [`ApiError`], with the server's `message` when it sent one.
fn classify(status: StatusCode, what: &str, body: &str) -> ApiError {
    let message = serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect());
    let text = format!("{what}: {} {message}", status.as_u16());
    match status.as_u16() {
        404 => ApiError::NotFound(text),
        413 | 501 => ApiError::TooLarge(text),
        401 | 403 => ApiError::Unauthorized(text),
        408 => ApiError::Transient(text),
        400..=499 => ApiError::Refused(text),
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
            classify(StatusCode::FORBIDDEN, "f", ""),
            ApiError::Unauthorized(_)
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
