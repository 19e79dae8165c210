//! The Mattermost sink: posts from a bot per source application (the sender address says
//! which, `sender_app`), as direct messages to each allowed recipient (`mattermost:dm`),
//! to a user (`mattermost:@user`), in a channel (`mattermost:~team/channel`), or through an
//! incoming webhook (`mattermost:webhook`).
//!
//! One delivery is a thread: the text (the rule's Markdown) cut under the server's post
//! limit, the attachments uploaded five per post, later posts answering the first. Files
//! over the server's limit are named instead. Each post is recorded as done on the claim
//! when the server has it (the thread's first post with its id), so an attempt after a
//! failure posts only what is missing, in the same thread.
//!
//! | what went wrong | result |
//! |---|---|
//! | the sender names no application, or it has no bot | permanent |
//! | a recipient unknown (404) or refused (other 4xx) | that recipient is named, the others get theirs |
//! | a recipient not allowed ([`access`]) | skipped and named |
//! | 5xx, no connection, a timeout, 429 for too long, the directory down | transient: the rest is tried again later |

pub mod access;
pub mod api;
pub mod text;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::json;
use tokio::sync::{Mutex, OnceCell};

use crate::config::Secret;
use crate::mail_view::{Attachment, MailView, attachments};
use crate::rules::{MattermostSettings, MattermostTarget};
use crate::sinks::{Progress, SinkError};
use access::{Access, Verdict};
use api::{Api, ApiError, Limits};
use text::{plan, split};

/// `sender_app` when not set: `svc-jira@example.com` is application `jira`.
pub const DEFAULT_SENDER_APP: &str = r"^svc-(?P<app>[^@]+)@";
/// How long one request may take when `timeout` is not set.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The post limit of servers that do not announce theirs (old servers: 4000).
pub const FALLBACK_POST_CHARS: usize = 4000;
/// Characters kept free in each piece of text for the note on files left out.
const NOTE_ROOM: usize = 300;

/// What a delivery did, recipient by recipient.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    /// Threads posted (or found done by an earlier attempt).
    pub delivered: usize,
    /// Recipients the server refused for good (`address: why`): unknown users, 4xx.
    pub refused: Vec<String>,
    /// Recipients not allowed to receive (`address: why`).
    pub skipped: Vec<String>,
}

/// Posts to one Mattermost server.
#[derive(Debug)]
pub struct MattermostSink {
    settings: MattermostSettings,
    api: Api,
    access: Access,
    /// Each application's bot user id, asked once.
    bot_ids: Mutex<HashMap<String, String>>,
    /// The server's limits, asked once.
    limits: OnceCell<Limits>,
}

impl MattermostSink {
    pub fn new(settings: MattermostSettings) -> Result<MattermostSink, String> {
        Ok(MattermostSink {
            api: Api::new(&settings.url, settings.timeout)?,
            settings,
            access: Access::default(),
            bot_ids: Mutex::new(HashMap::new()),
            limits: OnceCell::new(),
        })
    }

    /// Delivers `markdown` (and the attachments of the message `bytes`) to `target`.
    pub async fn deliver(
        &self,
        target: &MattermostTarget,
        mail: &MailView,
        markdown: &str,
        bytes: &[u8],
        progress: &mut impl Progress,
    ) -> Result<Delivery, SinkError> {
        if *target == MattermostTarget::Webhook {
            return self.webhook(mail, markdown, bytes, progress).await;
        }
        let (app, token) = self.bot(mail)?;
        let files = attachments(bytes);
        let limits = self.limits(token).await?;
        let posts = self.thread_plan(markdown, &files, &limits);
        let mut delivery = Delivery::default();
        match target {
            MattermostTarget::Dm => {
                let mut recipients: Vec<String> = mail
                    .envelope_to
                    .iter()
                    .map(|r| r.to_ascii_lowercase())
                    .collect();
                let mut seen = std::collections::HashSet::new();
                recipients.retain(|r| seen.insert(r.clone()));
                for address in recipients {
                    let key = format!("dm:{address}");
                    if all_done(progress, &key, posts.len()) {
                        delivery.delivered += 1;
                        continue;
                    }
                    let verdict = self
                        .access
                        .check(&self.settings, &app, &address)
                        .await
                        .map_err(SinkError::Transient)?;
                    if let Verdict::Refused(why) = verdict {
                        tracing::info!(recipient = address, app, why, "mattermost: not allowed");
                        delivery.skipped.push(format!("{address}: {why}"));
                        continue;
                    }
                    let sent = async {
                        let user = self.api.user_by_email(token, &address).await?;
                        let channel = self.direct_channel(&app, token, &user.id).await?;
                        self.post_thread(token, &channel, &key, &posts, &files, progress)
                            .await
                    };
                    match sent.await {
                        Ok(()) => delivery.delivered += 1,
                        Err(ApiError::Transient(why)) => return Err(SinkError::Transient(why)),
                        Err(e) => delivery.refused.push(format!("{address}: {e}")),
                    }
                }
            }
            MattermostTarget::User(name) => {
                let key = format!("user:{name}");
                if !all_done(progress, &key, posts.len()) {
                    let user = self
                        .api
                        .user_by_name(token, name)
                        .await
                        .map_err(permanent)?;
                    if !user.email.is_empty() {
                        let verdict = self
                            .access
                            .check(&self.settings, &app, &user.email)
                            .await
                            .map_err(SinkError::Transient)?;
                        if let Verdict::Refused(why) = verdict {
                            delivery.skipped.push(format!("@{name}: {why}"));
                            return Ok(delivery);
                        }
                    }
                    let channel = self
                        .direct_channel(&app, token, &user.id)
                        .await
                        .map_err(permanent)?;
                    self.post_thread(token, &channel, &key, &posts, &files, progress)
                        .await
                        .map_err(permanent)?;
                }
                delivery.delivered += 1;
            }
            MattermostTarget::Channel { team, channel } => {
                let key = format!("channel:{team}/{channel}");
                if !all_done(progress, &key, posts.len()) {
                    let id = self
                        .api
                        .channel_by_name(token, team, channel)
                        .await
                        .map_err(permanent)?;
                    self.post_thread(token, &id, &key, &posts, &files, progress)
                        .await
                        .map_err(permanent)?;
                }
                delivery.delivered += 1;
            }
            MattermostTarget::Webhook => unreachable!("handled above"),
        }
        Ok(delivery)
    }

    /// The application the message comes from and its bot's token.
    fn bot(&self, mail: &MailView) -> Result<(String, &Secret), SinkError> {
        let app = self.app(mail).ok_or_else(|| {
            SinkError::Permanent(format!(
                "sender {:?} names no application (sender_app {})",
                mail.envelope_from,
                self.settings.sender_app.as_str()
            ))
        })?;
        let token = self.settings.bots.get(&app).ok_or_else(|| {
            SinkError::Permanent(format!(
                "no bot for application {app:?}: add it under mattermost.bots"
            ))
        })?;
        Ok((app, token))
    }

    /// The application named by the envelope sender, else by the header From.
    fn app(&self, mail: &MailView) -> Option<String> {
        [mail.envelope_from.as_str(), mail.from.as_str()]
            .into_iter()
            .find_map(|sender| {
                let found = self.settings.sender_app.captures(sender)?;
                Some(found.name("app")?.as_str().to_ascii_lowercase())
            })
    }

    /// The server's limits, asked once. A server that cannot be asked now is a failure for
    /// now (a guess could cut the text differently from a later attempt, which would then
    /// post pieces twice); one that refuses to say is taken as an old server (no limits
    /// known: posts cut at [`FALLBACK_POST_CHARS`]).
    async fn limits(&self, token: &Secret) -> Result<Limits, SinkError> {
        if let Some(limits) = self.limits.get() {
            return Ok(*limits);
        }
        let limits = match self.api.limits(token).await {
            Ok(limits) => limits,
            Err(ApiError::Transient(why)) => return Err(SinkError::Transient(why)),
            Err(e) => {
                tracing::warn!(error = %e, "mattermost: the server does not say its limits; posts are cut at {FALLBACK_POST_CHARS}");
                Limits {
                    max_post_chars: None,
                    max_file_bytes: None,
                }
            }
        };
        Ok(*self.limits.get_or_init(|| async { limits }).await)
    }

    /// The posts of a thread: the text (with a note on files over the server's limit)
    /// cut under the post limit, and which files each post carries.
    fn thread_plan(&self, markdown: &str, files: &[Attachment], limits: &Limits) -> Vec<Post> {
        let max_chars = self
            .settings
            .max_post_chars
            .or(limits.max_post_chars)
            .unwrap_or(FALLBACK_POST_CHARS);
        let too_large = |f: &Attachment| {
            limits
                .max_file_bytes
                .is_some_and(|max| f.bytes.len() as u64 > max)
        };
        let mut text = markdown.to_string();
        let left_out: Vec<String> = files
            .iter()
            .filter(|f| too_large(f))
            .map(|f| format!("{} ({} bytes)", f.name, f.bytes.len()))
            .collect();
        if !left_out.is_empty() {
            text.push_str(&too_large_note(&left_out));
        }
        let kept: Vec<usize> = (0..files.len())
            .filter(|&i| !too_large(&files[i]))
            .collect();
        let room = if kept.is_empty() {
            max_chars
        } else {
            max_chars.saturating_sub(NOTE_ROOM).max(max_chars / 2)
        };
        plan(split(&text, room), kept.len())
            .into_iter()
            .map(|p| Post {
                text: p.text,
                files: p.files.into_iter().map(|i| kept[i]).collect(),
            })
            .collect()
    }

    /// Posts the thread `posts` into `channel`, skipping the posts an earlier attempt
    /// recorded under `key`.
    async fn post_thread(
        &self,
        token: &Secret,
        channel: &str,
        key: &str,
        posts: &[Post],
        files: &[Attachment],
        progress: &mut impl Progress,
    ) -> Result<(), ApiError> {
        let mut root: Option<String> = None;
        for (n, post) in posts.iter().enumerate() {
            let step = format!("{key}#{n}");
            if let Some(value) = progress.done(&step) {
                if n == 0 && !value.is_empty() {
                    root = Some(value);
                }
                continue;
            }
            let mut ids = Vec::new();
            let mut left_out = Vec::new();
            for &i in &post.files {
                match self.api.upload(token, channel, &files[i]).await {
                    Ok(id) => ids.push(id),
                    Err(ApiError::TooLarge(_)) => left_out.push(files[i].name.clone()),
                    Err(e) => return Err(e),
                }
            }
            let mut text = post.text.clone();
            if !left_out.is_empty() {
                text.push_str(&too_large_note(&left_out));
            }
            let id = self
                .api
                .post(token, channel, text.trim(), &ids, root.as_deref())
                .await?;
            // The first post's id is kept only when later posts answer it.
            let keep = (n == 0 && posts.len() > 1).then_some(id.as_str());
            progress
                .record(&step, keep)
                .await
                .map_err(ApiError::Transient)?;
            if n == 0 {
                root = Some(id);
            }
        }
        Ok(())
    }

    /// The direct channel of the application's bot and `user_id`.
    async fn direct_channel(
        &self,
        app: &str,
        token: &Secret,
        user_id: &str,
    ) -> Result<String, ApiError> {
        let bot_id = {
            let mut ids = self.bot_ids.lock().await;
            match ids.get(app) {
                Some(id) => id.clone(),
                None => {
                    let me = self.api.me(token).await?;
                    ids.insert(app.to_string(), me.id.clone());
                    me.id
                }
            }
        };
        self.api.direct_channel(token, &bot_id, user_id).await
    }

    /// Posts through the incoming webhook: the text with the attachments named (a webhook
    /// cannot carry files), under the application's name when the sender names one.
    async fn webhook(
        &self,
        mail: &MailView,
        markdown: &str,
        bytes: &[u8],
        progress: &mut impl Progress,
    ) -> Result<Delivery, SinkError> {
        let done = Delivery {
            delivered: 1,
            ..Delivery::default()
        };
        if progress.done("webhook").is_some() {
            return Ok(done);
        }
        let url =
            self.settings.webhook.as_ref().ok_or_else(|| {
                SinkError::Permanent("mattermost:webhook needs webhook_env".into())
            })?;
        let names: Vec<String> = attachments(bytes).into_iter().map(|a| a.name).collect();
        let mut text = markdown.to_string();
        if !names.is_empty() {
            text.push_str(&format!(
                "\n\n_Attachments (not carried by the webhook): {}_",
                names.join(", ")
            ));
        }
        let mut payload = json!({ "text": text });
        if let Some(app) = self.app(mail) {
            payload["username"] = json!(app);
        }
        self.api.webhook(url, &payload).await.map_err(|e| match e {
            ApiError::Transient(why) => SinkError::Transient(why),
            other => SinkError::Permanent(other.to_string()),
        })?;
        progress
            .record("webhook", None)
            .await
            .map_err(SinkError::Transient)?;
        Ok(done)
    }
}

/// One post of a thread: its text and the indexes of the files it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Post {
    text: String,
    files: Vec<usize>,
}

/// Whether every post of the thread under `key` was recorded as done.
fn all_done(progress: &impl Progress, key: &str, posts: usize) -> bool {
    (0..posts).all(|n| progress.done(&format!("{key}#{n}")).is_some())
}

fn too_large_note(names: &[String]) -> String {
    format!(
        "\n\n_Not attached (over the server's file size limit): {}_",
        names.join(", ")
    )
}

/// An API error for a single target: anything but a transient one is for good.
fn permanent(e: ApiError) -> SinkError {
    match e {
        ApiError::Transient(why) => SinkError::Transient(why),
        other => SinkError::Permanent(other.to_string()),
    }
}
