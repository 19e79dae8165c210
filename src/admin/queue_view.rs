//! The queue's web view (`/queue`): the states of each destination's queue with counts and
//! ages, a page of messages per state, one message (envelope, record, headers, text), and,
//! for an operator who gives the admin token and confirms, requeue and purge. Plain HTML
//! rendered on the server (minijinja, every value escaped), no JavaScript, no remote
//! content (a Content-Security-Policy forbids it).

use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};

use axum::Form;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use futures::StreamExt;
use minijinja::{Environment, context};
use serde::Deserialize;

use super::state::AdminState;
use crate::queue::{CopyKey, MessageRef, Queue, QueueError, State as QueueState};

/// Messages on one page of a state.
const PAGE: usize = 50;
/// The states the web view purges: mail that was handled. `cur/`, `processing/` and
/// `retry/` hold mail still to deliver; `swiftdrop queue purge` reaches them.
const PURGEABLE: [QueueState; 2] = [QueueState::Done, QueueState::Failed];
/// The youngest messages a purge from the web may delete.
const MIN_PURGE_AGE: std::time::Duration = std::time::Duration::from_secs(3600);
/// How long a refused token waits for its answer.
const REFUSAL_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);
/// Bytes of a message read to show its text.
const TEXT_BYTES: u64 = 1024 * 1024;

static TEMPLATES: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    // `.html` names turn HTML escaping on for every value.
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("overview.html", include_str!("templates/overview.html")),
        ("list.html", include_str!("templates/list.html")),
        ("message.html", include_str!("templates/message.html")),
        ("done.html", include_str!("templates/done.html")),
    ] {
        env.add_template(name, source)
            .expect("the admin templates compile (a unit test renders each)");
    }
    env
});

/// `template` rendered with `values` and the page's common ones, with the security headers.
fn page(
    state: &AdminState,
    status: StatusCode,
    template: &str,
    values: minijinja::Value,
) -> Response {
    let common = context! {
        role => state.role,
        read_only => !state.can_change(),
        can_change => state.can_change(),
    };
    let rendered = TEMPLATES
        .get_template(template)
        .and_then(|t| t.render(context! { ..common, ..values }));
    match rendered {
        Ok(html) => (status, Html(html)).into_response(),
        Err(e) => {
            tracing::error!(template, error = %e, "admin page does not render");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the page does not render (see the log)\n",
            )
                .into_response()
        }
    }
}

/// A page that says what happened (or why not).
fn outcome(
    state: &AdminState,
    status: StatusCode,
    title: &str,
    text: String,
    back: Option<String>,
) -> Response {
    page(
        state,
        status,
        "done.html",
        context! { title, text, back, failed => !status.is_success() },
    )
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn age(t: DateTime<Utc>) -> String {
    let s = (Utc::now() - t).num_seconds().max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m", s / 60),
        3600..86400 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}

/// Why a page cannot do what it was asked: said by [`outcome`].
pub struct Refusal {
    status: StatusCode,
    title: &'static str,
    text: String,
    back: Option<String>,
}

impl Refusal {
    fn page(self, state: &AdminState) -> Response {
        outcome(state, self.status, self.title, self.text, self.back)
    }
}

/// The queue of destination `name`, or why there is none.
fn queue_of<'a>(state: &'a AdminState, name: &str) -> Result<&'a Queue, Refusal> {
    match state.queue(name) {
        Some(Ok(queue)) => Ok(queue),
        Some(Err(e)) => Err(Refusal {
            status: StatusCode::SERVICE_UNAVAILABLE,
            title: "No queue",
            text: format!("[{name}]: {e}"),
            back: None,
        }),
        None => Err(Refusal {
            status: StatusCode::NOT_FOUND,
            title: "No such destination",
            text: format!("no destination [{name}]"),
            back: Some("/queue".into()),
        }),
    }
}

/// The page for a queue error (a store or lock engine that failed: 503; a refusal: 409).
fn queue_error(state: &AdminState, e: &QueueError, back: Option<String>) -> Response {
    let status = match e {
        QueueError::NotFound(_) => StatusCode::NOT_FOUND,
        QueueError::Refused(_) | QueueError::LeaseLost { .. } => StatusCode::CONFLICT,
        QueueError::Store(_) | QueueError::Lock(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    outcome(state, status, "Not done", e.to_string(), back)
}

/// `/queue`: every destination's states (counts at most `queue_stats_interval` old).
pub async fn overview(State(state): State<Arc<AdminState>>) -> Response {
    let mut destinations = Vec::new();
    for (name, queue) in &state.queues {
        let queue = match queue {
            Ok(queue) => queue,
            Err(e) => {
                destinations.push(context! { name, error => e });
                continue;
            }
        };
        let store = queue.destination().store.to_string();
        let entry = match state.stats.of(name).await {
            None => context! { name, store, error => "not counted" },
            Some((_, Err(e))) => context! { name, store, error => e },
            Some((counted, Ok(stats))) => {
                let states: Vec<minijinja::Value> = stats
                    .iter()
                    .map(|(s, st)| {
                        context! {
                            state => s.folder(),
                            count => st.count,
                            bytes => st.bytes,
                            oldest => st.oldest.map(time),
                            age => st.oldest.map(age),
                            foreign => st.foreign,
                        }
                    })
                    .collect();
                context! { name, store, states, counted => counted.as_secs() }
            }
        };
        destinations.push(entry);
    }
    page(
        &state,
        StatusCode::OK,
        "overview.html",
        context! { page => "overview", destinations },
    )
}

/// `?after=KEY`: where a page of a state begins.
#[derive(Deserialize)]
pub struct After {
    after: Option<String>,
}

/// `/queue/{dest}/{state}`: a page of the state's messages at a glance.
pub async fn list(
    State(state): State<Arc<AdminState>>,
    Path((dest, folder)): Path<(String, String)>,
    Query(After { after }): Query<After>,
) -> Response {
    let queue = match queue_of(&state, &dest) {
        Ok(q) => q,
        Err(refusal) => return refusal.page(&state),
    };
    let Ok(folder_state) = folder.parse::<QueueState>() else {
        return outcome(
            &state,
            StatusCode::NOT_FOUND,
            "No such state",
            format!("{folder:?} is not a state: cur, processing, retry, failed or done"),
            Some("/queue".into()),
        );
    };
    let after = after.filter(|a| !a.is_empty());
    let mut entries = match queue
        .list_after(folder_state, after.as_deref(), PAGE + 1)
        .await
    {
        Ok(entries) => entries,
        Err(e) => return queue_error(&state, &e, Some("/queue".into())),
    };
    let next = (entries.len() > PAGE).then(|| entries[PAGE - 1].key.clone());
    entries.truncate(PAGE);
    // Two requests a message, eight messages at a time.
    let keys: Vec<Option<CopyKey>> = entries.iter().map(|e| CopyKey::parse(&e.key)).collect();
    let glances: Vec<_> = futures::stream::iter(keys)
        .map(|key| {
            let queue = queue.clone();
            async move { queue.glance(&key?).await.ok().flatten() }
        })
        .buffered(8)
        .collect()
        .await;
    let rows: Vec<minijinja::Value> = entries
        .iter()
        .zip(glances)
        .map(|(e, glance)| {
            let (copy, glance) = match glance {
                Some((copy, glance)) => (Some(copy), glance),
                None => (None, Default::default()),
            };
            context! {
                key => e.key.clone(),
                name => e.name.clone(),
                received => time(e.received),
                sender => glance.sender.clone().unwrap_or_default(),
                recipients => glance.recipients.join(", "),
                subject => glance.header("subject").unwrap_or_default(),
                size => e.size,
                attempt => e.attempt,
                reason => copy.and_then(|c| c.record.reason).unwrap_or_default(),
            }
        })
        .collect();
    let purgeable = PURGEABLE.contains(&folder_state);
    page(
        &state,
        StatusCode::OK,
        "list.html",
        context! { dest, state => folder_state.folder(), rows, after, next, purgeable },
    )
}

/// `?key=KEY`: one message.
#[derive(Deserialize)]
pub struct KeyQuery {
    key: String,
}

/// `/queue/{dest}/message?key=KEY`: one message in full (its digests are `swiftdrop queue
/// show`'s: they read all of it).
pub async fn message(
    State(state): State<Arc<AdminState>>,
    Path(dest): Path<String>,
    Query(KeyQuery { key }): Query<KeyQuery>,
) -> Response {
    let queue = match queue_of(&state, &dest) {
        Ok(q) => q,
        Err(refusal) => return refusal.page(&state),
    };
    if let Err(e) = key.parse::<MessageRef>() {
        return outcome(
            &state,
            StatusCode::BAD_REQUEST,
            "Not a key",
            e,
            Some("/queue".into()),
        );
    }
    let seen = match queue.inspect(&key, false).await {
        Ok(seen) => seen,
        Err(e) => return queue_error(&state, &e, Some("/queue".into())),
    };
    let newest = seen.newest();
    let text_bytes = match queue.read_range(newest, TEXT_BYTES).await {
        Ok(bytes) => bytes,
        Err(e) => return queue_error(&state, &e, Some("/queue".into())),
    };
    // The text part (an HTML-only message as text): nothing of it is rendered as HTML.
    let text = mail_parser::MessageParser::default()
        .parse(&text_bytes[..])
        .and_then(|m| m.body_text(0).map(|t| t.into_owned()))
        .unwrap_or_default();
    let record = &newest.record;
    let lease = match &seen.holder {
        Some(h) => format!(
            "held by {} for another {} s (fence {})",
            h.token.owner(),
            h.remaining.as_secs(),
            h.token.fence()
        ),
        None => "none".into(),
    };
    let requeue = matches!(
        newest.state(),
        QueueState::Failed | QueueState::Retry | QueueState::Done
    ) || (newest.state() == QueueState::Processing && seen.holder.is_none());
    let received =
        crate::queue::record::received(&newest.key.name).unwrap_or(newest.meta.last_modified);
    let also_in: Vec<String> = seen.copies[1..].iter().map(|c| c.key.to_string()).collect();
    let m = context! {
        key => newest.key.to_string(),
        name => newest.key.name.clone(),
        state => newest.state().folder(),
        also_in => also_in.join(", "),
        received => time(received),
        size => newest.meta.size,
        sender => seen.glance.sender.clone().unwrap_or_default(),
        recipients => seen.glance.recipients.join(", "),
        attempt => record.attempt,
        reason => record.reason.clone(),
        not_before => record.not_before.map(time),
        lease,
        metadata => seen.glance.metadata.clone(),
        headers => seen.glance.headers.clone(),
        text,
        cut => newest.meta.size > TEXT_BYTES,
        shown => TEXT_BYTES,
        requeue,
    };
    page(&state, StatusCode::OK, "message.html", context! { dest, m })
}

/// The form of a change: the admin token and the confirmation.
#[derive(Deserialize)]
pub struct Change {
    token: String,
    confirm: Option<String>,
    key: Option<String>,
    state: Option<String>,
    older_than: Option<String>,
}

/// Whether `form` may change the queue: the token is set and given, the box ticked.
fn allowed(state: &AdminState, form: &Change) -> Result<(), Refusal> {
    let refuse = |status, title, text: &str| {
        Err(Refusal {
            status,
            title,
            text: text.to_string(),
            back: None,
        })
    };
    if !state.can_change() {
        return refuse(
            StatusCode::FORBIDDEN,
            "Read-only",
            "this view is read-only: no admin_token is set",
        );
    }
    if !state.token_matches(&form.token) {
        tracing::warn!("admin: a change was refused: wrong token");
        return refuse(StatusCode::FORBIDDEN, "Refused", "wrong admin token");
    }
    if form.confirm.as_deref() != Some("yes") {
        return refuse(
            StatusCode::BAD_REQUEST,
            "Not confirmed",
            "tick the box to confirm",
        );
    }
    Ok(())
}

/// The queue of `dest` when `form` may change it ([`allowed`]); a refused token waits a
/// second for its answer, so that guessing it is slow.
async fn changeable<'a>(
    state: &'a AdminState,
    dest: &str,
    form: &Change,
) -> Result<&'a Queue, Refusal> {
    if let Err(refusal) = allowed(state, form) {
        tokio::time::sleep(REFUSAL_PAUSE).await;
        return Err(refusal);
    }
    queue_of(state, dest)
}

/// `POST /queue/{dest}/requeue`: moves a finished (or abandoned) message back to `cur/`.
pub async fn requeue(
    State(state): State<Arc<AdminState>>,
    Path(dest): Path<String>,
    Form(form): Form<Change>,
) -> Response {
    let queue = match changeable(&state, &dest, &form).await {
        Ok(q) => q,
        Err(refusal) => return refusal.page(&state),
    };
    let key = form.key.unwrap_or_default();
    if let Err(e) = key.parse::<MessageRef>() {
        return outcome(&state, StatusCode::BAD_REQUEST, "Not a key", e, None);
    }
    match queue.requeue(&key, false).await {
        Ok(finished) => {
            tracing::info!(destination = dest, key, to = %finished.key, "admin: requeued");
            let back = format!(
                "/queue/{}/message?key={}",
                urlencoding(&dest),
                urlencoding(&finished.key.to_string())
            );
            outcome(
                &state,
                StatusCode::OK,
                "Requeued",
                format!("requeued to {}", finished.key),
                Some(back),
            )
        }
        Err(e) => queue_error(&state, &e, None),
    }
}

/// `POST /queue/{dest}/purge`: deletes the messages of `done/` or `failed/` that entered it
/// more than an hour (at least) ago. One purge at a time; it runs to its end even when the
/// browser leaves.
pub async fn purge(
    State(state): State<Arc<AdminState>>,
    Path(dest): Path<String>,
    Form(form): Form<Change>,
) -> Response {
    let queue = match changeable(&state, &dest, &form).await {
        Ok(q) => q.clone(),
        Err(refusal) => return refusal.page(&state),
    };
    let folder = form
        .state
        .as_deref()
        .and_then(|s| s.parse::<QueueState>().ok());
    let Some(folder) = folder.filter(|f| PURGEABLE.contains(f)) else {
        return outcome(
            &state,
            StatusCode::BAD_REQUEST,
            "Not done",
            "only done/ and failed/ are purged here (swiftdrop queue purge does the others)".into(),
            None,
        );
    };
    let older_than =
        match crate::config::parse_duration(form.older_than.as_deref().unwrap_or_default()) {
            Ok(d) if d >= MIN_PURGE_AGE => d,
            Ok(_) => {
                return outcome(
                    &state,
                    StatusCode::BAD_REQUEST,
                    "Not done",
                    "older than: an hour at least".into(),
                    None,
                );
            }
            Err(e) => {
                return outcome(
                    &state,
                    StatusCode::BAD_REQUEST,
                    "Not done",
                    format!("older than: {e}"),
                    None,
                );
            }
        };
    let back = Some(format!("/queue/{}/{}", urlencoding(&dest), folder.folder()));
    if state.purging.swap(true, Ordering::AcqRel) {
        return outcome(
            &state,
            StatusCode::CONFLICT,
            "Not done",
            "a purge is running; try again when it is over".into(),
            back,
        );
    }
    // Its own task: a browser that leaves does not cut the purge short.
    /// Lets the next purge run when this one ends, however it ends.
    struct Purging(Arc<AdminState>);
    impl Drop for Purging {
        fn drop(&mut self) {
            self.0.purging.store(false, Ordering::Release);
        }
    }
    let running = Purging(Arc::clone(&state));
    let purged = tokio::spawn(async move {
        let _running = running;
        queue.purge(folder, older_than, false, &|_, _| {}).await
    })
    .await;
    let report = match purged {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => return queue_error(&state, &e, back),
        Err(e) => {
            return outcome(
                &state,
                StatusCode::INTERNAL_SERVER_ERROR,
                "Not done",
                format!("the purge ended: {e}"),
                back,
            );
        }
    };
    tracing::info!(
        destination = dest,
        state = folder.folder(),
        deleted = report.deleted,
        "admin: purged"
    );
    let failed = if report.failed > 0 {
        format!("; {} deletions failed (see the log)", report.failed)
    } else {
        String::new()
    };
    let text = format!(
        "deleted {} of {} messages ({} bytes) from {}/ older than {}{failed}",
        report.deleted,
        report.matched,
        report.bytes,
        folder.folder(),
        humantime::format_duration(older_than),
    );
    let status = if report.failed > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    outcome(&state, status, "Purged", text, back)
}

/// `s` for a URL's path segment or query value.
fn urlencoding(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every template compiles, and a value is escaped (a subject cannot write HTML).
    #[test]
    fn templates_compile_and_escape() {
        let html = TEMPLATES
            .get_template("done.html")
            .unwrap()
            .render(context! { role => "serve", title => "t", text => "<script>alert(1)</script>", failed => true })
            .unwrap();
        assert!(html.contains("&lt;script&gt;alert(1)&lt;"), "{html}");
        assert!(!html.contains("<script>"), "{html}");
        for name in ["overview.html", "list.html", "message.html"] {
            TEMPLATES.get_template(name).unwrap();
        }
    }
}
