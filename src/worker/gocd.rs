//! mail2alert's `gocd` manager at run time, in two parts:
//!
//! - [`GocdClient`] asks the GoCD server: its pipeline groups (`GET
//!   <url>/api/config/pipeline_groups`, the API mail2alert used; where the server no longer
//!   has it (404: GoCD 20.3 and later) `GET <url>/api/admin/pipeline_groups`, version 1),
//!   re-read when older than [`GROUPS_FRESH`] by one request at a time, the last good
//!   answer used while GoCD is down or slow; and each pipeline's last state from `GET
//!   <url>/cctray.xml`. Both with HTTP basic auth.
//! - [`History`] keeps each pipeline's recent notifications in the queue's lock engine
//!   (Redis, or the local table's directory), so every worker of the queue reads the same
//!   one: a stage's `failed` after a success is BREAKS, `passed` after a failure FIXED.
//!
//! A pipeline's history is one shared value, `gocd:<server>:<pipeline>` = `v2 <state before
//! the entries> <message>|<state> ...`, changed by compare-and-set: the last
//! [`HISTORY_ENTRIES`] notifications in the order the filter stored them (their names
//! begin with the time). A message handled again (after a failure or a crash) finds its
//! own entry and gets the same event as the first time; one stored before others that
//! were handled first is weighed against the one stored before it, and does not change
//! the pipeline's current state (the newest entry's).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quick_xml::events::Event as XmlEvent;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::queue::lock::{LockEngine, is_shared_key};
use crate::worker::rules::gocd::{
    Event, GocdFacts, PipelineGroups, PipelineState, StageResult, stage_result,
};
use crate::worker::rules::{GocdSettings, Manager};

/// How long an answer of the pipeline groups is used before it is asked again
/// (mail2alert's 30 s); a failed attempt waits as long before the next.
pub const GROUPS_FRESH: Duration = Duration::from_secs(30);
/// How long one request to GoCD may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a compare-and-set of the history is tried against other workers' changes.
const SWAP_TRIES: usize = 20;
/// How many notifications a pipeline's history keeps.
pub const HISTORY_ENTRIES: usize = 8;

/// A GoCD server's HTTP API, as the `gocd` manager reads it.
pub struct GocdClient {
    settings: GocdSettings,
    http: reqwest::Client,
    /// The last good groups (`None`: none yet) and when they were last asked for.
    groups: Mutex<(Option<Arc<PipelineGroups>>, Option<Instant>)>,
    /// Held by the one request for the groups in flight.
    fetching: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for GocdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GocdClient({})", self.settings.url)
    }
}

/// `api/config/pipeline_groups`: `[{"name": .., "pipelines": [{"name": ..}]}]`.
#[derive(Deserialize)]
struct GroupDoc {
    name: String,
    #[serde(default)]
    pipelines: Vec<PipelineDoc>,
}

#[derive(Deserialize)]
struct PipelineDoc {
    name: String,
}

/// `api/admin/pipeline_groups` (v1): `{"_embedded": {"groups": [...]}}`.
#[derive(Deserialize)]
struct AdminGroupsDoc {
    #[serde(rename = "_embedded")]
    embedded: AdminEmbedded,
}

#[derive(Deserialize)]
struct AdminEmbedded {
    groups: Vec<GroupDoc>,
}

/// An answer that is not a success: its status, and what to say.
struct Refused(reqwest::StatusCode, String);

impl GocdClient {
    /// A client for the server `settings` name.
    pub fn new(settings: GocdSettings) -> Result<GocdClient, String> {
        let http = crate::store::http_client()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("gocd: {e}"))?;
        Ok(GocdClient {
            settings,
            http,
            groups: Mutex::new((None, None)),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    /// The server's base URL (`url`).
    pub fn url(&self) -> &str {
        &self.settings.url
    }

    async fn get(&self, path: &str, accept: Option<&str>) -> Result<String, Refused> {
        let url = format!("{}/{path}", self.settings.url);
        let mut request = self.http.get(&url);
        if let Some((user, passwd)) = &self.settings.login {
            request = request.basic_auth(user, Some(passwd.expose()));
        }
        if let Some(accept) = accept {
            request = request.header(reqwest::header::ACCEPT, accept);
        }
        let response = request.send().await.map_err(|e| {
            Refused(
                reqwest::StatusCode::BAD_GATEWAY,
                format!("GET {url}: {}", crate::util::error_chain(&e)),
            )
        })?;
        let status = response.status();
        if !status.is_success() {
            return Err(Refused(status, format!("GET {url}: {status}")));
        }
        response
            .text()
            .await
            .map_err(|e| Refused(reqwest::StatusCode::BAD_GATEWAY, format!("GET {url}: {e}")))
    }

    /// Asks GoCD for its pipeline groups now.
    pub async fn fetch_groups(&self) -> Result<PipelineGroups, String> {
        let groups = match self.get("api/config/pipeline_groups", None).await {
            Ok(text) => serde_json::from_str::<Vec<GroupDoc>>(&text)
                .map_err(|e| format!("api/config/pipeline_groups is not GoCD's JSON: {e}"))?,
            Err(Refused(reqwest::StatusCode::NOT_FOUND, _)) => {
                // GoCD 20.3 took the API mail2alert used away.
                let text = self
                    .get(
                        "api/admin/pipeline_groups",
                        Some("application/vnd.go.cd.v1+json"),
                    )
                    .await
                    .map_err(|Refused(_, why)| {
                        format!("{why} (the server has no api/config/pipeline_groups either)")
                    })?;
                serde_json::from_str::<AdminGroupsDoc>(&text)
                    .map_err(|e| format!("api/admin/pipeline_groups is not GoCD's JSON: {e}"))?
                    .embedded
                    .groups
            }
            Err(Refused(_, why)) => return Err(why),
        };
        Ok(groups
            .into_iter()
            .map(|g| (g.name, g.pipelines.into_iter().map(|p| p.name).collect()))
            .collect())
    }

    /// The pipeline groups: asked again by one request when the last answer is older
    /// than [`GROUPS_FRESH`], while the others use the last good answer; while GoCD fails,
    /// the last good answer (the failure logged). An error: GoCD never answered.
    pub async fn groups(&self) -> Result<Arc<PipelineGroups>, String> {
        let stale = {
            let cached = self.groups.lock().unwrap();
            match &*cached {
                (Some(groups), Some(at)) if at.elapsed() < GROUPS_FRESH => {
                    return Ok(groups.clone());
                }
                (groups, _) => groups.clone(),
            }
        };
        let _fetching = match (self.fetching.try_lock(), &stale) {
            (Ok(guard), _) => guard,
            // Another job asks now: the last answer will do meanwhile.
            (Err(_), Some(groups)) => return Ok(groups.clone()),
            (Err(_), None) => self.fetching.lock().await,
        };
        {
            let cached = self.groups.lock().unwrap();
            if let (Some(groups), Some(at)) = &*cached {
                if at.elapsed() < GROUPS_FRESH {
                    return Ok(groups.clone());
                }
            }
        }
        let fetched = self.fetch_groups().await;
        let mut cached = self.groups.lock().unwrap();
        cached.1 = Some(Instant::now());
        match fetched {
            Ok(groups) => {
                let groups = Arc::new(groups);
                cached.0 = Some(groups.clone());
                Ok(groups)
            }
            Err(e) => match &cached.0 {
                Some(groups) => {
                    tracing::warn!(error = %e, "gocd: cannot read the pipeline groups; the last good ones are used");
                    Ok(groups.clone())
                }
                None => Err(format!("no pipeline groups from GoCD yet: {e}")),
            },
        }
    }

    /// Each pipeline's last state by cctray.xml.
    pub async fn fetch_states(&self) -> Result<Vec<(String, PipelineState)>, String> {
        let text = self
            .get("cctray.xml", None)
            .await
            .map_err(|Refused(_, why)| why)?;
        parse_cctray(&text)
    }
}

/// The pipelines' history of one GoCD server, shared through the queue's lock engine.
pub struct History {
    lock: Arc<dyn LockEngine>,
    /// Names the server in the keys (8 hex digits of the SHA-256 of its URL), so that two
    /// servers' pipelines of one name keep apart.
    server: String,
}

impl History {
    /// The history of the server at `url`, kept in `lock`.
    pub fn new(url: &str, lock: Arc<dyn LockEngine>) -> History {
        let digest = Sha256::digest(url.as_bytes());
        History {
            lock,
            server: crate::util::hex::hex(&digest[..4]),
        }
    }

    /// The shared value's key for `pipeline`, when the engine can keep it.
    fn key(&self, pipeline: &str) -> Option<String> {
        let key = format!("gocd:{}:{pipeline}", self.server);
        is_shared_key(&key).then_some(key)
    }

    /// Seeds the history with `states` (cctray.xml's) for the pipelines it does not know
    /// yet (what workers learnt since stays); how many were seeded.
    pub async fn seed(&self, states: &[(String, PipelineState)]) -> Result<usize, String> {
        let mut seeded = 0;
        for (pipeline, state) in states {
            let Some(key) = self.key(pipeline) else {
                continue;
            };
            let log = Log {
                before: *state,
                entries: Vec::new(),
            };
            if self
                .lock
                .swap_shared_value(&key, None, &log.render())
                .await
                .map_err(|e| e.to_string())?
            {
                seeded += 1;
            }
        }
        Ok(seeded)
    }

    /// The event `stage` means for the message `message` (its name), after the pipeline's
    /// shared history, which it joins when `join` (not a copy of what a worker sent, come
    /// back: it must not count as a new notification). The same message asked again gets
    /// the same event.
    pub async fn event(
        &self,
        stage: &StageResult,
        message: &str,
        join: bool,
    ) -> Result<Option<Event>, String> {
        let Some(said) = stage.said else {
            return Ok(None);
        };
        let Some(key) = self.key(&stage.pipeline) else {
            // A name the engine cannot keep: no history, the subject's event stands.
            return Ok(Some(said));
        };
        for _ in 0..SWAP_TRIES {
            let held = self
                .lock
                .shared_value(&key)
                .await
                .map_err(|e| e.to_string())?;
            let mut log = held.as_deref().map_or_else(Log::default, Log::parse);
            if let Some(at) = log.entries.iter().position(|(m, _)| m == message) {
                return Ok(Some(said.after(log.state_before(at))));
            }
            if !join {
                return Ok(Some(said.after(log.state_before(log.entries.len()))));
            }
            let event = said.after(log.insert(message, said.state_after()));
            if self
                .lock
                .swap_shared_value(&key, held.as_deref(), &log.render())
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok(Some(event));
            }
        }
        Err(format!(
            "the history of pipeline {} changed under {SWAP_TRIES} tries",
            stage.pipeline
        ))
    }
}

/// One pipeline's recent notifications, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Log {
    /// The state before the first entry (cctray.xml's, or of entries since forgotten).
    before: PipelineState,
    /// The messages (names) and the state each left, in the order they were stored.
    entries: Vec<(String, PipelineState)>,
}

impl Default for Log {
    fn default() -> Log {
        Log {
            before: PipelineState::Unknown,
            entries: Vec::new(),
        }
    }
}

impl Log {
    /// Reads a shared value (one this version does not know reads as empty).
    fn parse(value: &str) -> Log {
        let mut words = value.split(' ');
        if words.next() != Some("v2") {
            return Log::default();
        }
        let before = PipelineState::from_word(words.next().unwrap_or_default());
        let entries = words
            .filter_map(|w| {
                let (message, state) = w.rsplit_once('|')?;
                Some((message.to_string(), PipelineState::from_word(state)))
            })
            .collect();
        Log { before, entries }
    }

    fn render(&self) -> String {
        let mut value = format!("v2 {}", self.before.word());
        for (message, state) in &self.entries {
            value.push_str(&format!(" {message}|{}", state.word()));
        }
        value
    }

    /// The state before entry `at`.
    fn state_before(&self, at: usize) -> PipelineState {
        match at {
            0 => self.before,
            n => self.entries[n - 1].1,
        }
    }

    /// Adds `message` where its stored time puts it (after entries of the same time), the
    /// oldest entries forgotten past [`HISTORY_ENTRIES`]; the state before it. A message
    /// older than every entry of a full log is not kept (it would be forgotten at once,
    /// and the state before the log is not its).
    fn insert(&mut self, message: &str, state: PipelineState) -> PipelineState {
        let order = stored_order(message);
        let at = self
            .entries
            .iter()
            .rposition(|(m, _)| stored_order(m) <= order)
            .map_or(0, |i| i + 1);
        let before = self.state_before(at);
        if at == 0 && self.entries.len() >= HISTORY_ENTRIES {
            return before;
        }
        self.entries.insert(at, (message.to_string(), state));
        while self.entries.len() > HISTORY_ENTRIES {
            self.before = self.entries.remove(0).1;
        }
        before
    }
}

/// When the filter stored the message named `name` (`<seconds>.M<microseconds>...`), for
/// ordering; a name of another form sorts after all (it is newest).
fn stored_order(name: &str) -> (u64, u64) {
    let parsed = name.split_once('.').and_then(|(seconds, rest)| {
        let micros: String = rest
            .strip_prefix('M')?
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        Some((seconds.parse().ok()?, micros.parse().ok()?))
    });
    parsed.unwrap_or((u64::MAX, 0))
}

/// A GoCD server and its pipelines' history: what the rules of a `gocd` manager see.
pub struct Gocd {
    pub client: GocdClient,
    pub history: History,
    /// Whether a rule asks about groups: then a message waits until GoCD has answered
    /// once (rather than be judged against no groups at all).
    needs_groups: bool,
}

impl Gocd {
    /// The `gocd` manager `manager` (which has GoCD settings), its history in `lock`.
    pub fn new(manager: &Manager, lock: Arc<dyn LockEngine>) -> Result<Gocd, String> {
        let settings = manager
            .gocd
            .clone()
            .ok_or_else(|| format!("manager {:?} is not a gocd manager", manager.name))?;
        let needs_groups =
            manager.rules.iter().any(|r| {
                r.filter.gocd.function.as_ref().is_some_and(|f| {
                    !matches!(f, crate::worker::rules::gocd::PipelineFunction::Any)
                })
            });
        Ok(Gocd {
            history: History::new(&settings.url, lock),
            client: GocdClient::new(settings)?,
            needs_groups,
        })
    }

    /// Seeds the history from cctray.xml (logged: a GoCD or lock engine that fails only
    /// leaves pipelines without a known state).
    pub async fn seed_history(&self) {
        let seeded = match self.client.fetch_states().await {
            Ok(states) => self.history.seed(&states).await,
            Err(e) => Err(e),
        };
        match seeded {
            Ok(seeded) => {
                tracing::info!(
                    url = self.client.url(),
                    seeded,
                    "gocd: pipeline states read from cctray.xml"
                )
            }
            Err(e) => {
                tracing::warn!(url = self.client.url(), error = %e, "gocd: no pipeline states from cctray.xml; pipelines start unknown")
            }
        }
    }

    /// The stage result in `subject` and the event it means (`message`: its name; `join`:
    /// it joins the pipeline's history, see [`History::event`]; `decided`: the event an
    /// earlier attempt decided, which stands). An error: the history cannot be read.
    pub async fn event(
        &self,
        subject: &str,
        message: &str,
        join: bool,
        decided: Option<Event>,
    ) -> Result<(Option<StageResult>, Option<Event>), String> {
        let stage = stage_result(subject);
        let event = match (&stage, decided) {
            (Some(_), Some(event)) => Some(event),
            (Some(stage), None) => self.history.event(stage, message, join).await?,
            (None, _) => None,
        };
        Ok((stage, event))
    }

    /// The pipeline groups for the rules. An error: GoCD never gave groups and a rule
    /// needs them (try later).
    pub async fn groups(&self) -> Result<Arc<PipelineGroups>, String> {
        match self.client.groups().await {
            Ok(groups) => Ok(groups),
            Err(e) if self.needs_groups => Err(e),
            Err(_) => Ok(Arc::default()),
        }
    }
}

/// One pipeline group in the self-test report (mail2alert's `--test`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GroupReport {
    pub pipeline_group: String,
    pub pipelines: Vec<PipelineReport>,
}

/// One pipeline: which events alert whom (no `alerts` when none does).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PipelineReport {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertReport>,
    pub pipeline: String,
}

/// The actions some events of a pipeline take.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AlertReport {
    pub actions: Vec<String>,
    pub events: Vec<String>,
}

/// mail2alert's self-test for a `gocd` manager: for each group and pipeline GoCD has, the
/// actions each event's notification would take (the rules' `events:` and `pipelines.*`
/// functions; other filter conditions need a message and are not weighed). Events with
/// the same actions are one alert.
pub fn report(manager: &Manager, groups: &Arc<PipelineGroups>) -> Vec<GroupReport> {
    groups
        .iter()
        .map(|(group, pipelines)| GroupReport {
            pipeline_group: group.clone(),
            pipelines: pipelines
                .iter()
                .map(|pipeline| {
                    let mut alerts: Vec<AlertReport> = Vec::new();
                    for event in Event::ALL {
                        let facts = GocdFacts {
                            stage: Some(StageResult {
                                pipeline: pipeline.clone(),
                                stage: String::new(),
                                said: Some(event),
                            }),
                            event: Some(event),
                            groups: groups.clone(),
                        };
                        // As mail2alert's self-test: an alert per rule, those with the
                        // same actions one.
                        for rule in &manager.rules {
                            if !rule.filter.gocd.matches(Some(&facts)) {
                                continue;
                            }
                            let actions: Vec<String> =
                                rule.actions.iter().map(ToString::to_string).collect();
                            match alerts.iter_mut().find(|a| a.actions == actions) {
                                Some(alert) if !alert.events.contains(&event.to_string()) => {
                                    alert.events.push(event.to_string())
                                }
                                Some(_) => {}
                                None => alerts.push(AlertReport {
                                    actions,
                                    events: vec![event.to_string()],
                                }),
                            }
                        }
                    }
                    PipelineReport {
                        alerts,
                        pipeline: pipeline.clone(),
                    }
                })
                .collect(),
        })
        .collect()
}

/// Each pipeline's state in a cctray.xml: of its `<Project>`s (`<pipeline> :: <stage>`, and
/// `... :: <job>`), the one with the latest `lastBuildTime` gives it.
pub fn parse_cctray(xml: &str) -> Result<Vec<(String, PipelineState)>, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut latest: std::collections::BTreeMap<String, (i64, PipelineState)> =
        std::collections::BTreeMap::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("cctray.xml at byte {}: {e}", reader.buffer_position()))?;
        let project = match &event {
            XmlEvent::Start(e) | XmlEvent::Empty(e) if e.name().as_ref() == b"Project" => e,
            XmlEvent::Eof => break,
            _ => continue,
        };
        let mut attributes = std::collections::BTreeMap::new();
        for attribute in project.attributes() {
            let attribute = attribute.map_err(|e| format!("cctray.xml: {e}"))?;
            let value = attribute
                .normalized_value(quick_xml::XmlVersion::Implicit1_0)
                .map_err(|e| format!("cctray.xml: {e}"))?;
            attributes.insert(attribute.key.as_ref().to_vec(), value.into_owned());
        }
        let attribute = |name: &[u8]| attributes.get(name).map(String::as_str).unwrap_or("");
        let pipeline = attribute(b"name")
            .split(" :: ")
            .next()
            .unwrap_or_default()
            .to_string();
        if pipeline.is_empty() {
            continue;
        }
        let at = build_time(attribute(b"lastBuildTime"));
        let state = PipelineState::from_cctray(attribute(b"lastBuildStatus"));
        let newer = latest.get(&pipeline).is_none_or(|(seen, _)| at > *seen);
        if newer {
            latest.insert(pipeline, (at, state));
        }
    }
    Ok(latest
        .into_iter()
        .map(|(pipeline, (_, state))| (pipeline, state))
        .collect())
}

/// A `lastBuildTime` in Unix ms (GoCD writes ISO 8601 with `Z` or an offset, with or
/// without a colon; older releases without a zone, read as UTC); an unreadable one counts
/// as the oldest.
fn build_time(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%z"))
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .map(|t| t.timestamp_millis())
        .or_else(|_| {
            chrono::NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S")
                .map(|t| t.and_utc().timestamp_millis())
        })
        .unwrap_or(i64::MIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cctray_gives_each_pipeline_its_latest_state() {
        let xml = r#"<?xml version="1.0" encoding="utf-8"?>
<Projects>
  <Project name="b-test :: test" activity="Sleeping" lastBuildStatus="Success" lastBuildLabel="8" lastBuildTime="2026-11-30T10:00:00Z" webUrl="x"/>
  <Project name="b-test :: test :: unit" activity="Sleeping" lastBuildStatus="Failure" lastBuildLabel="7" lastBuildTime="2026-11-29T10:00:00Z" webUrl="x"/>
  <Project name="a-build :: compile" activity="Building" lastBuildStatus="Failure" lastBuildLabel="3" lastBuildTime="2026-11-30T12:00:00+0100" webUrl="x"></Project>
  <Project name="a-build :: package" activity="Sleeping" lastBuildStatus="Success" lastBuildLabel="2" lastBuildTime="2026-11-30T10:30:00Z" webUrl="x"/>
  <Project name="c &amp; d :: s" lastBuildStatus="Unknown" lastBuildTime="2026-11-30T10:30:00Z"/>
  <Project name="old :: first" lastBuildStatus="Failure" lastBuildTime="2019-02-20T10:12:35"/>
  <Project name="old :: second" lastBuildStatus="Success" lastBuildTime="2019-02-20T11:12:35"/>
</Projects>"#;
        let states: std::collections::BTreeMap<String, PipelineState> =
            parse_cctray(xml).unwrap().into_iter().collect();
        assert_eq!(states["b-test"], PipelineState::Success);
        // 12:00+01:00 is 11:00Z, after the package stage's 10:30Z.
        assert_eq!(states["a-build"], PipelineState::Failure);
        assert_eq!(states["c & d"], PipelineState::Unknown);
        // Times without a zone (older GoCD) still order.
        assert_eq!(states["old"], PipelineState::Success);
        assert_eq!(states.len(), 4);
        assert!(parse_cctray("<Projects><Project name=\"x").is_err());
    }

    #[test]
    fn a_log_orders_messages_by_when_they_were_stored_and_forgets_the_oldest() {
        use PipelineState::*;
        let mut log = Log {
            before: Success,
            entries: Vec::new(),
        };
        assert_eq!(log.insert("1700000002.M5P1.h,S=1", Failure), Success);
        // Stored before, handled after: weighed against cctray's state, and the newest
        // entry still gives the current state.
        assert_eq!(log.insert("1700000001.M900000P1.h,S=1", Success), Success);
        assert_eq!(log.state_before(1), Success);
        assert_eq!(log.entries.last().unwrap().1, Failure);
        assert_eq!(Log::parse(&log.render()), log);
        for n in 0..HISTORY_ENTRIES {
            log.insert(&format!("17000001{n:02}.M1P1.h"), Success);
        }
        assert_eq!(log.entries.len(), HISTORY_ENTRIES);
        assert_eq!(log.before, Failure, "the forgotten entries' last state");
        // Older than all of a full log: weighed against the state before it, not kept.
        let full = log.clone();
        assert_eq!(log.insert("1600000000.M1P1.h", Success), Failure);
        assert_eq!(log, full);
        assert_eq!(stored_order("1700000001.M12P3.h"), (1_700_000_001, 12));
        assert_eq!(stored_order("not-a-maildir-name"), (u64::MAX, 0));
        assert_eq!(Log::parse("failure success m1"), Log::default());
    }
}
