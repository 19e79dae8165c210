//! The Mattermost sink: posts from a bot per source application (the sender address says
//! which, `sender_app`), as direct messages to each allowed recipient (`mattermost:dm`),
//! to a user (`mattermost:@user`), in a channel (`mattermost:~team/channel`), or through an
//! incoming webhook (`mattermost:webhook`).
//!
//! One delivery is a thread: the text (the rule's Markdown) cut under the server's post
//! limit, the attachments uploaded five per post, later posts answering the first. Files
//! over the server's limit are named instead. What an attempt did is recorded on the claim
//! ([`Progress`]), so that the next attempt posts only what is missing, in the same
//! thread, cut the same way:
//!
//! - `plan`: the post and file limits the first attempt cut with (later attempts use them,
//!   whatever the server says by then);
//! - `<target>#<n>`: post `n` of a thread is posted (the first with its id when there are
//!   more, for the replies);
//! - `<target>`: the whole thread to a user or channel is posted (it replaces the posts'
//!   records);
//! - `dm`: the direct-message recipients whose threads are posted, one bit each in the
//!   order of the envelope, in hex (it replaces the posts' records of each recipient as
//!   it is served: 1000 recipients, Postfix's default limit, take 250 bytes of the
//!   record).
//!
//! | what went wrong | result |
//! |---|---|
//! | the sender names no application, or it has no bot | permanent |
//! | the bot's token refused (401), or the bot may not look users up (403) | permanent |
//! | a recipient, user or channel unknown (404) or refused (another 4xx, a 403 on it) | that one is named, the others get theirs |
//! | a recipient not allowed ([`access`]) | skipped and named |
//! | 5xx, no connection, a timeout, 429 for too long, the directory down | transient: the rest is tried again later |
//! | no room left on the claim to record the rest of a thread | permanent, before posting |

pub mod access;
pub mod api;
pub mod text;

use std::collections::HashMap;

use serde_json::json;
use tokio::sync::Mutex;

use crate::config::Secret;
use crate::worker::chat_text::quiet;
use crate::worker::mail_view::{Attachment, MailView};
use crate::worker::rules::{MattermostSettings, MattermostTarget};
use crate::worker::sinks::{Progress, SinkError};
use access::{Access, Verdict};
use api::{Api, ApiError, Limits, NewPost};
use text::{plan, split};

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
    /// Recipients not allowed to receive (`address: why`), or why there was nobody.
    pub skipped: Vec<String>,
}

/// Why a thread was not posted.
enum Failure {
    /// For this recipient, user or channel only (unknown, refused): the others go on.
    Target(String),
    /// For the whole action.
    Action(SinkError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        match e {
            ApiError::NotFound(why)
            | ApiError::Forbidden(why)
            | ApiError::RootGone(why)
            | ApiError::Refused(why)
            | ApiError::TooLarge(why) => Failure::Target(why),
            ApiError::Unauthorized(why) => Failure::Action(SinkError::Permanent(format!(
                "the bot is refused: {why} (its token, or its rights: see the README)"
            ))),
            ApiError::Transient(why) => Failure::Action(SinkError::Transient(why)),
        }
    }
}

impl From<SinkError> for Failure {
    fn from(e: SinkError) -> Failure {
        Failure::Action(e)
    }
}

/// Posts to one Mattermost server.
#[derive(Debug)]
pub struct MattermostSink {
    settings: MattermostSettings,
    api: Api,
    access: Access,
    /// Each application's bot user id, asked once.
    bot_ids: Mutex<HashMap<String, String>>,
}

/// The limits a thread is cut with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cut {
    max_chars: usize,
    /// 0: no file limit known.
    max_file_bytes: u64,
}

impl MattermostSink {
    pub fn new(settings: MattermostSettings) -> Result<MattermostSink, String> {
        Ok(MattermostSink {
            api: Api::new(&settings.url, settings.timeout)?,
            settings,
            access: Access::default(),
            bot_ids: Mutex::new(HashMap::new()),
        })
    }

    /// Whether the server answers its ping (the worker's readiness).
    pub async fn reachable(&self) -> Result<(), String> {
        self.api.ping().await
    }

    /// Delivers `markdown` (and the message's attachments) to `target`.
    pub async fn deliver(
        &self,
        target: &MattermostTarget,
        mail: &MailView,
        markdown: &str,
        progress: &mut impl Progress,
    ) -> Result<Delivery, SinkError> {
        if *target == MattermostTarget::Webhook {
            return self.webhook(mail, markdown, progress).await;
        }
        let (app, token) = self.bot(mail)?;
        let files = &mail.attachments;
        // An earlier attempt acted for this action (its plan is recorded before its first
        // post; a requeued message keeps it): it may have posted without recording it.
        let earlier = progress.done(PLAN).is_some();
        let cut = self.cut(token, progress).await?;
        let posts = thread_plan(markdown, files, cut);
        let mut delivery = Delivery::default();
        let mut thread = Thread {
            token,
            posts: &posts,
            files,
            look_since: earlier.then(|| progress.stored_at_ms() - LOOK_MARGIN_MS),
        };
        match target {
            MattermostTarget::Dm => {
                let mut recipients: Vec<String> = mail
                    .envelope_to
                    .iter()
                    .map(|r| r.to_ascii_lowercase())
                    .collect();
                let mut seen = std::collections::HashSet::new();
                recipients.retain(|r| seen.insert(r.clone()));
                if recipients.is_empty() {
                    delivery.skipped.push("no envelope recipient".into());
                }
                let mut served = Served::read(progress, recipients.len());
                for (i, address) in recipients.iter().enumerate() {
                    let key = format!("dm:{address}");
                    if served.has(i) {
                        delivery.delivered += 1;
                        continue;
                    }
                    let verdict = if thread_done(progress, &key, posts.len()) {
                        None
                    } else {
                        Some(self.access.check(&self.settings, &app, address).await?)
                    };
                    if let Some(Verdict::Refused(why)) = verdict {
                        tracing::info!(recipient = address, app, why, "mattermost: not allowed");
                        delivery.skipped.push(format!("{address}: {why}"));
                        continue;
                    }
                    let sent = async {
                        if !thread_done(progress, &key, posts.len()) {
                            let user = self.api.user_by_email(token, address).await?;
                            let channel = self.direct_channel(&app, token, &user.id).await?;
                            let room = [served.room(i)];
                            self.post_thread(&mut thread, &channel, &key, progress, &room)
                                .await?;
                        }
                        served.record(progress, i, &key, posts.len()).await
                    };
                    match sent.await {
                        Ok(()) => delivery.delivered += 1,
                        Err(Failure::Target(why)) => {
                            tracing::info!(
                                recipient = address,
                                app,
                                why,
                                "mattermost: not delivered"
                            );
                            delivery.refused.push(format!("{address}: {why}"))
                        }
                        Err(Failure::Action(e)) => return Err(e),
                    }
                }
            }
            MattermostTarget::User(name) => {
                let key = format!("user:{name}");
                let sent = async {
                    if thread_done(progress, &key, posts.len()) {
                        return self
                            .sum_up(progress, &key, posts.len())
                            .await
                            .map(|()| None);
                    }
                    let user = self.api.user_by_name(token, name).await?;
                    if let Some(why) = self.refusal(&app, &user.email).await? {
                        return Ok(Some(why));
                    }
                    let channel = self.direct_channel(&app, token, &user.id).await?;
                    self.post_thread(&mut thread, &channel, &key, progress, &[])
                        .await?;
                    self.sum_up(progress, &key, posts.len())
                        .await
                        .map(|()| None)
                };
                match sent.await {
                    Ok(None) => delivery.delivered += 1,
                    Ok(Some(why)) => delivery.skipped.push(format!("@{name}: {why}")),
                    Err(Failure::Target(why)) => delivery.refused.push(format!("@{name}: {why}")),
                    Err(Failure::Action(e)) => return Err(e),
                }
            }
            MattermostTarget::Channel { team, channel } => {
                let key = format!("channel:{team}/{channel}");
                let sent = async {
                    if thread_done(progress, &key, posts.len()) {
                        return self.sum_up(progress, &key, posts.len()).await;
                    }
                    let id = self.api.channel_by_name(token, team, channel).await?;
                    self.post_thread(&mut thread, &id, &key, progress, &[])
                        .await?;
                    self.sum_up(progress, &key, posts.len()).await
                };
                match sent.await {
                    Ok(()) => delivery.delivered += 1,
                    Err(Failure::Target(why)) => {
                        delivery.refused.push(format!("~{team}/{channel}: {why}"))
                    }
                    Err(Failure::Action(e)) => return Err(e),
                }
            }
            MattermostTarget::Webhook => unreachable!("handled above"),
        }
        Ok(delivery)
    }

    /// Why a user (by the address the server shows) may not receive, if not: with an
    /// allow list, a block list or a directory, a user whose address the bot cannot see
    /// is refused.
    async fn refusal(&self, app: &str, email: &str) -> Result<Option<String>, Failure> {
        let s = &self.settings;
        if email.is_empty() {
            let checked = !s.allow.is_empty() || !s.block.is_empty() || s.ldap.is_some();
            return Ok(checked.then(|| "its address is hidden from the bot".to_string()));
        }
        Ok(match self.access.check(s, app, email).await? {
            Verdict::Allowed => None,
            Verdict::Refused(why) => Some(why),
        })
    }

    /// The application the message comes from (the envelope sender, which the filter
    /// wrote, matched by `sender_app`) and its bot's token.
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
        if self.settings.require_sasl_login {
            // The login Postfix recorded, without the realm it appends ($myhostname).
            let login = mail.sasl_login.as_deref();
            let name = login.map(|l| l.split('@').next().unwrap_or(l));
            if name != Some(app.as_str()) {
                return Err(SinkError::Permanent(format!(
                    "sender {:?} (application {app:?}) was not submitted with the {app:?} login ({}): require_sasl_login",
                    mail.envelope_from,
                    login.map_or("no login".to_string(), |l| format!("logged in as {l:?}")),
                )));
            }
        }
        Ok((app, token))
    }

    /// The application the envelope sender names (lower case).
    fn app(&self, mail: &MailView) -> Option<String> {
        let found = self.settings.sender_app.captures(&mail.envelope_from)?;
        Some(found.name("app")?.as_str().to_ascii_lowercase())
    }

    /// The limits to cut this action's threads with: those an earlier attempt recorded,
    /// else the server's (`max_post_chars` lower still if set), recorded before the first
    /// post. A server that cannot be asked now is a failure for now; one that will not say
    /// is an old one ([`FALLBACK_POST_CHARS`], no file limit).
    async fn cut(&self, token: &Secret, progress: &mut impl Progress) -> Result<Cut, SinkError> {
        if let Some(recorded) = progress.done(PLAN).and_then(|v| parse_cut(&v)) {
            return Ok(recorded);
        }
        let limits = match self.api.limits(token).await {
            Ok(limits) => limits,
            Err(e @ (ApiError::Transient(_) | ApiError::Unauthorized(_))) => {
                return match Failure::from(e) {
                    Failure::Action(e) => Err(e),
                    Failure::Target(why) => Err(SinkError::Permanent(why)),
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "mattermost: the server does not say its limits; posts are cut at {FALLBACK_POST_CHARS}");
                Limits {
                    max_post_chars: None,
                    max_file_bytes: None,
                }
            }
        };
        let server = limits.max_post_chars.unwrap_or(FALLBACK_POST_CHARS);
        let cut = Cut {
            max_chars: self
                .settings
                .max_post_chars
                .map_or(server, |m| m.min(server)),
            max_file_bytes: limits.max_file_bytes.unwrap_or(0),
        };
        let value = format!("{}.{}", cut.max_chars, cut.max_file_bytes);
        if !progress.has_room(&[(PLAN.to_string(), value.len())]) {
            return Err(SinkError::Permanent(NO_ROOM.into()));
        }
        progress.record(PLAN, Some(&value), &[]).await?;
        Ok(cut)
    }

    /// Posts `thread` into `channel`, skipping the posts an earlier attempt recorded under
    /// `key`; each post is recorded (`key#n`) only when the record has room for the rest of
    /// the thread and for `then` (what the caller records after it).
    async fn post_thread(
        &self,
        thread: &mut Thread<'_>,
        channel: &str,
        key: &str,
        progress: &mut impl Progress,
        then: &[(String, usize)],
    ) -> Result<(), Failure> {
        let Thread {
            token,
            posts,
            files,
            ..
        } = *thread;
        let mut root: Option<String> = None;
        let mut looked = false;
        for (n, post) in posts.iter().enumerate() {
            let step = format!("{key}#{n}");
            if let Some(value) = progress.done(&step) {
                if n == 0 && !value.is_empty() {
                    root = Some(value);
                }
                continue;
            }
            // The first post's id is kept only when later posts answer it.
            let keeps_root = n == 0 && posts.len() > 1;
            // Room for the rest of the thread, not only this post: never half a thread.
            let rest: Vec<(String, usize)> = (n..posts.len())
                .map(|m| {
                    (
                        format!("{key}#{m}"),
                        if m == 0 && keeps_root { ID_LEN } else { 0 },
                    )
                })
                .chain(then.iter().cloned())
                .collect();
            if !progress.has_room(&rest) {
                return Err(SinkError::Permanent(NO_ROOM.into()).into());
            }
            let identity = progress.identity(&step);
            // The first post of this thread not recorded may be where an earlier attempt
            // stopped: posted, its answer lost (a timeout, a proxy's 502, a crash before
            // the record). It is looked for before it is posted again (once per thread:
            // the posts after it were not tried).
            if let Some(since) = thread.look_since.filter(|_| !looked) {
                looked = true;
                if let Some(id) = self.api.find_post(token, channel, since, &identity).await? {
                    tracing::info!(
                        channel,
                        step,
                        "mattermost: an earlier attempt made this post; not posted again"
                    );
                    progress
                        .record(&step, keeps_root.then_some(id.as_str()), &[])
                        .await?;
                    if n == 0 {
                        root = Some(id);
                    }
                    continue;
                }
            }
            let mut ids = Vec::new();
            let mut left_out = Vec::new();
            for &i in &post.files {
                ensure_held(progress)?;
                let held = || progress.held();
                match self.api.upload(token, channel, &files[i], &held).await {
                    Ok(id) => ids.push(id),
                    // The bot's token, or the server unreachable: the action's.
                    Err(e @ (ApiError::Unauthorized(_) | ApiError::Transient(_))) => {
                        return Err(e.into());
                    }
                    // This file refused (too large, an image over the server's resolution
                    // limit, attachments turned off, a plugin's veto): the text still goes,
                    // naming it.
                    Err(e) => {
                        tracing::info!(file = files[i].name, error = %e, "mattermost: a file was refused");
                        left_out.push(format!("{} ({})", quiet(&files[i].name), refusal(&e)));
                    }
                }
            }
            let mut text = post.text.clone();
            if !left_out.is_empty() {
                text.push_str(&not_attached_note(&left_out));
            }
            ensure_held(progress)?;
            let new_post = NewPost {
                channel_id: channel,
                message: text.trim(),
                file_ids: &ids,
                root_id: root.as_deref(),
                identity: &identity,
            };
            let held = || progress.held();
            // An answer that does not come is not met by sending again at once (the
            // server may still be saving the post, or another node have it): the retry
            // looks for the post first.
            let answer = match self.api.post(token, &new_post, &held).await {
                // A root the server calls bad is gone for that recipient only when the
                // server says so when asked for it (a store error reads the same).
                Err(ApiError::RootGone(why)) => match root.as_deref() {
                    Some(root) if self.api.post_gone(token, root).await? => Err(Failure::Target(
                        format!("the thread's first post is gone: {why}"),
                    )),
                    _ => Err(Failure::Action(SinkError::Transient(why))),
                },
                // A post the server finds malformed (too long after a lowered limit,
                // over a proxy's size limit): ours, not the recipient's; trying it
                // elsewhere would not help.
                Err(ApiError::Refused(why) | ApiError::TooLarge(why)) => Err(Failure::Action(
                    SinkError::Permanent(format!("the server refused the post: {why}")),
                )),
                other => other.map_err(Failure::from),
            };
            let id = answer?;
            progress
                .record(&step, keeps_root.then_some(id.as_str()), &[])
                .await?;
            if n == 0 {
                root = Some(id);
            }
        }
        Ok(())
    }

    /// Records the thread under `key` as posted, in place of its posts' records.
    async fn sum_up(
        &self,
        progress: &mut impl Progress,
        key: &str,
        posts: usize,
    ) -> Result<(), Failure> {
        if progress.done(key).is_some() {
            return Ok(());
        }
        let steps: Vec<String> = (0..posts).map(|n| format!("{key}#{n}")).collect();
        progress.record(key, None, &steps).await?;
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
        if !progress.has_room(&[("webhook".to_string(), 0)]) {
            return Err(SinkError::Permanent(NO_ROOM.into()));
        }
        let names: Vec<String> = mail.attachments.iter().map(|a| a.name.clone()).collect();
        let mut text = markdown.to_string();
        let names: Vec<String> = names.iter().map(|n| quiet(n)).collect();
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
        if !progress.held() {
            return Err(SinkError::Transient(LEASE_LOST.into()));
        }
        let held = || progress.held();
        self.api
            .webhook(url, &payload, &held)
            .await
            .map_err(|e| match e {
                ApiError::Transient(why) => SinkError::Transient(why),
                other => SinkError::Permanent(other.to_string()),
            })?;
        progress.record("webhook", None, &[]).await?;
        Ok(done)
    }
}

/// The step that holds the limits a message's threads are cut with.
const PLAN: &str = "plan";
/// The steps that hold which direct-message recipients are served ([`Served`]): `dm.<n>`.
const DM_SERVED: &str = "dm";
/// How long before a message was stored an earlier attempt's post is looked for (the
/// clocks of the storing host and of the Mattermost server may differ).
const LOOK_MARGIN_MS: i64 = 10 * 60 * 1000;
/// Bytes of a post id (recorded for a thread's first post).
const ID_LEN: usize = 26;
const NO_ROOM: &str = "no room left on the message to record the next post";
const LEASE_LOST: &str = "the claim's lease is lost: nothing more is posted";

/// `max_chars.max_file_bytes` as recorded under [`PLAN`].
fn parse_cut(value: &str) -> Option<Cut> {
    let (chars, bytes) = value.split_once('.')?;
    Some(Cut {
        max_chars: chars.parse().ok().filter(|&c| c > 0)?,
        max_file_bytes: bytes.parse().ok()?,
    })
}

/// An error when the claim's lease is lost: nothing may be sent any more.
fn ensure_held(progress: &impl Progress) -> Result<(), Failure> {
    if progress.held() {
        Ok(())
    } else {
        Err(SinkError::Transient(LEASE_LOST.into()).into())
    }
}

/// The posts of a thread: the text (with a note on files over the file limit) cut under
/// the post limit, and which files each post carries.
fn thread_plan(markdown: &str, files: &[Attachment], cut: Cut) -> Vec<Post> {
    let too_large =
        |f: &Attachment| cut.max_file_bytes > 0 && f.bytes.len() as u64 > cut.max_file_bytes;
    let mut text = markdown.to_string();
    let left_out: Vec<String> = files
        .iter()
        .filter(|f| too_large(f))
        .map(|f| {
            format!(
                "{} ({} bytes, over the server's file size limit)",
                quiet(&f.name),
                f.bytes.len()
            )
        })
        .collect();
    if !left_out.is_empty() {
        text.push_str(&not_attached_note(&left_out));
    }
    let kept: Vec<usize> = (0..files.len())
        .filter(|&i| !too_large(&files[i]))
        .collect();
    // Room for the note a post gets when the server refuses one of its files.
    let room = if kept.is_empty() {
        cut.max_chars
    } else {
        cut.max_chars
            .saturating_sub(NOTE_ROOM)
            .max(cut.max_chars / 2)
    };
    plan(split(&text, room), kept.len())
        .into_iter()
        .map(|p| Post {
            text: p.text,
            files: p.files.into_iter().map(|i| kept[i]).collect(),
        })
        .collect()
}

/// What every thread of one action posts, and where an earlier attempt may have stopped.
struct Thread<'a> {
    token: &'a Secret,
    posts: &'a [Post],
    files: &'a [Attachment],
    /// Since when (ms) an earlier attempt may have posted without recording it: each
    /// thread's first post not recorded is looked for in its channel first; `None` on the
    /// action's first attempt.
    look_since: Option<i64>,
}

/// One post of a thread: its text and the indexes of the files it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Post {
    text: String,
    files: Vec<usize>,
}

/// The direct-message recipients whose threads are posted: one bit per recipient, in the
/// order of the envelope (which a stored message keeps), recorded in hex under the steps
/// `dm.0`, `dm.1`, ... of [`Served::CHUNK`] recipients each (a recorded value must fit in
/// one metadata value).
struct Served {
    bits: Vec<u8>,
}

impl Served {
    /// Recipients per recorded chunk (160 hex digits).
    const CHUNK: usize = 640;

    /// What earlier attempts recorded for `count` recipients (none served where they
    /// recorded nothing).
    fn read(progress: &impl Progress, count: usize) -> Served {
        let mut bits = vec![0; count.div_ceil(8)];
        for (c, chunk) in bits.chunks_mut(Self::CHUNK / 8).enumerate() {
            let recorded = progress
                .done(&Self::step(c))
                .filter(|hex| hex.len() == 2 * chunk.len())
                .and_then(|hex| {
                    (0..chunk.len())
                        .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok())
                        .collect::<Option<Vec<u8>>>()
                });
            if let Some(recorded) = recorded {
                chunk.copy_from_slice(&recorded);
            }
        }
        Served { bits }
    }

    fn step(chunk: usize) -> String {
        format!("{DM_SERVED}.{chunk}")
    }

    fn has(&self, i: usize) -> bool {
        self.bits[i / 8] & (1 << (i % 8)) != 0
    }

    /// The chunk holding recipient `i`: its step and hex.
    fn chunk(&self, i: usize) -> (String, String) {
        let c = i / Self::CHUNK;
        let bytes =
            &self.bits[c * Self::CHUNK / 8..((c + 1) * Self::CHUNK / 8).min(self.bits.len())];
        (
            Self::step(c),
            bytes.iter().map(|b| format!("{b:02x}")).collect(),
        )
    }

    /// What recording recipient `i` takes: its chunk's step and value length.
    fn room(&self, i: usize) -> (String, usize) {
        let (step, hex) = self.chunk(i);
        (step, hex.len())
    }

    /// Records recipient `i` (whose thread is under `key`) as served, in place of the
    /// thread's own records.
    async fn record(
        &mut self,
        progress: &mut impl Progress,
        i: usize,
        key: &str,
        posts: usize,
    ) -> Result<(), Failure> {
        self.bits[i / 8] |= 1 << (i % 8);
        let (step, hex) = self.chunk(i);
        let replaced: Vec<String> = [step.clone(), key.to_string()]
            .into_iter()
            .chain((0..posts).map(|n| format!("{key}#{n}")))
            .collect();
        progress.record(&step, Some(&hex), &replaced).await?;
        Ok(())
    }
}

/// Whether the thread under `key` was posted: recorded as a whole, or post by post.
fn thread_done(progress: &impl Progress, key: &str, posts: usize) -> bool {
    progress.done(key).is_some()
        || (0..posts).all(|n| progress.done(&format!("{key}#{n}")).is_some())
}

/// Why the server refused a file, short enough for the note: over the size limit, or
/// the server's own words (the first 60 characters).
fn refusal(e: &ApiError) -> String {
    match e {
        ApiError::TooLarge(_) => "over the server's file size limit".into(),
        other => {
            let why = other.to_string();
            // `<path> <reason>: <status> <message>`: the status and message.
            let said = why.split_once(": ").map_or(why.as_str(), |(_, s)| s);
            let mut short: String = said.chars().take(60).collect();
            if said.chars().count() > 60 {
                short = short.trim_end().to_string() + "…";
            }
            format!("refused: {short}")
        }
    }
}

/// The note naming files that were not attached (`name (why)`), within [`NOTE_ROOM`]
/// characters.
fn not_attached_note(names: &[String]) -> String {
    const HEAD: &str = "\n\n_Not attached: ";
    let mut note = HEAD.to_string();
    for (i, name) in names.iter().enumerate() {
        let more = format!(" and {} more_", names.len() - i);
        let sep = if i == 0 { "" } else { ", " };
        if note.chars().count() + sep.len() + name.chars().count() + more.len() > NOTE_ROOM {
            return note + &more;
        }
        note = note + sep + name;
    }
    note + "_"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_on_files_left_out_stays_short() {
        let names: Vec<String> = (0..40)
            .map(|i| format!("a-very-long-file-name-{i}.log"))
            .collect();
        let note = not_attached_note(&names);
        assert!(note.chars().count() <= NOTE_ROOM, "{note}");
        assert!(note.ends_with(" more_"), "{note}");
        assert_eq!(
            not_attached_note(&["a.bin (over the server's file size limit)".into()]),
            "\n\n_Not attached: a.bin (over the server's file size limit)_"
        );
        let plugin = ApiError::Refused(
            "/api/v4/files Bad Request: 400 File rejected by plugin. Reason: no executables please, ever".into(),
        );
        assert_eq!(
            refusal(&plugin),
            "refused: 400 File rejected by plugin. Reason: no executables please,…"
        );
    }

    #[test]
    fn a_recorded_cut_reads_back() {
        assert_eq!(
            parse_cut("16383.104857600"),
            Some(Cut {
                max_chars: 16383,
                max_file_bytes: 104_857_600
            })
        );
        assert_eq!(parse_cut("0.1"), None);
        assert_eq!(parse_cut("x"), None);
    }
}
