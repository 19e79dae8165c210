//! mail2alert's `gocd` manager at run time: the pipeline groups from the GoCD server
//! (`GET <url>/api/config/pipeline_groups`, HTTP basic auth, re-read when older than
//! [`GROUPS_FRESH`], the last good answer kept while GoCD is down), each pipeline's last
//! state from `GET <url>/cctray.xml` at start, and the history that turns a stage's
//! `failed` into BREAKS after a success (and `passed` into FIXED after a failure).
//!
//! The history is kept in the queue's lock engine (Redis, or the local table's directory),
//! so every worker of the queue sees the same one. One value per pipeline,
//! `gocd:<pipeline>` = `<state> <state before> <message name>`, changed by compare-and-set:
//! a message handled again (after a failure or a crash) finds its own name there and gets
//! the same event as the first time, never FAILS where it first said BREAKS.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use quick_xml::events::Event as XmlEvent;
use serde::Deserialize;

use crate::queue::lock::{LockEngine, is_shared_key};
use crate::worker::rules::gocd::{Event, GocdFacts, PipelineGroups, PipelineState, StageResult};
use crate::worker::rules::{GocdSettings, Manager};

/// How long an answer of `pipeline_groups` is used before it is asked again (mail2alert's
/// 30 s); a failed attempt waits as long before the next.
pub const GROUPS_FRESH: Duration = Duration::from_secs(30);
/// How long one request to GoCD may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a compare-and-set of the history is tried against other workers' changes.
const SWAP_TRIES: usize = 20;

/// One GoCD server and the pipelines' shared history.
pub struct Gocd {
    settings: GocdSettings,
    http: reqwest::Client,
    lock: Arc<dyn LockEngine>,
    /// The last good groups, and when they were last asked for.
    groups: tokio::sync::Mutex<(Arc<PipelineGroups>, Option<Instant>)>,
}

impl std::fmt::Debug for Gocd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gocd({})", self.settings.url)
    }
}

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

impl Gocd {
    /// A client for the server `settings` name, keeping the history in `lock`.
    pub fn new(settings: GocdSettings, lock: Arc<dyn LockEngine>) -> Result<Gocd, String> {
        let http = crate::store::http_client()
            .timeout(REQUEST_TIMEOUT)
            .build()
            .map_err(|e| format!("gocd: {e}"))?;
        Ok(Gocd {
            settings,
            http,
            lock,
            groups: tokio::sync::Mutex::new((Arc::default(), None)),
        })
    }

    /// The server's base URL (`url`).
    pub fn url(&self) -> &str {
        &self.settings.url
    }

    async fn get(&self, path: &str) -> Result<String, String> {
        let url = format!("{}/{path}", self.settings.url);
        let mut request = self.http.get(&url);
        if let Some((user, passwd)) = &self.settings.login {
            request = request.basic_auth(user, Some(passwd.expose()));
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", crate::util::error_chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url}: {status}"));
        }
        response.text().await.map_err(|e| format!("GET {url}: {e}"))
    }

    /// Asks GoCD for its pipeline groups now.
    pub async fn fetch_groups(&self) -> Result<PipelineGroups, String> {
        let text = self.get("api/config/pipeline_groups").await?;
        let groups: Vec<GroupDoc> = serde_json::from_str(&text)
            .map_err(|e| format!("pipeline_groups is not GoCD's JSON: {e}"))?;
        Ok(groups
            .into_iter()
            .map(|g| (g.name, g.pipelines.into_iter().map(|p| p.name).collect()))
            .collect())
    }

    /// The pipeline groups: asked again when the last answer is older than
    /// [`GROUPS_FRESH`]; while GoCD fails, the last good answer (the failure logged).
    pub async fn groups(&self) -> Arc<PipelineGroups> {
        let mut cached = self.groups.lock().await;
        if cached.1.is_some_and(|at| at.elapsed() < GROUPS_FRESH) {
            return cached.0.clone();
        }
        cached.1 = Some(Instant::now());
        match self.fetch_groups().await {
            Ok(groups) => cached.0 = Arc::new(groups),
            Err(e) => tracing::warn!(
                error = %e,
                kept = cached.0.len(),
                "gocd: cannot read the pipeline groups; the last good ones are used"
            ),
        }
        cached.0.clone()
    }

    /// Each pipeline's last state by cctray.xml.
    pub async fn fetch_states(&self) -> Result<BTreeMap<String, PipelineState>, String> {
        parse_cctray(&self.get("cctray.xml").await?)
    }

    /// Seeds the shared history with cctray.xml's states for pipelines it does not know
    /// yet (what other workers learnt since stays); how many were seeded. A GoCD that does
    /// not answer is logged: the history then starts unknown.
    pub async fn seed_history(&self) -> usize {
        let states = match self.fetch_states().await {
            Ok(states) => states,
            Err(e) => {
                tracing::warn!(error = %e, "gocd: cannot read cctray.xml; pipelines start with no known state");
                return 0;
            }
        };
        let mut seeded = 0;
        for (pipeline, state) in states {
            let Some(key) = history_key(&pipeline) else {
                continue;
            };
            let value = format!("{} unknown cctray.xml", state.word());
            match self.lock.swap_shared_value(&key, None, &value).await {
                Ok(true) => seeded += 1,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "gocd: cannot seed the pipelines' history");
                    break;
                }
            }
        }
        seeded
    }

    /// The event `stage` means for the message `message` (its name), after the pipeline's
    /// shared history, which it updates. The same message asked again gets the same event.
    pub async fn event(&self, stage: &StageResult, message: &str) -> Result<Event, String> {
        let Some(key) = history_key(&stage.pipeline) else {
            // A name the engine cannot keep: no history, the subject's event stands.
            return Ok(stage.said);
        };
        for _ in 0..SWAP_TRIES {
            let held = self
                .lock
                .shared_value(&key)
                .await
                .map_err(|e| e.to_string())?;
            let entry = held.as_deref().map(HistoryEntry::parse);
            if let Some(entry) = entry.as_ref().filter(|e| e.message == message) {
                return Ok(stage.said.after(entry.before));
            }
            let before = entry.map_or(PipelineState::Unknown, |e| e.state);
            let value = format!(
                "{} {} {message}",
                stage.said.state_after().word(),
                before.word()
            );
            if self
                .lock
                .swap_shared_value(&key, held.as_deref(), &value)
                .await
                .map_err(|e| e.to_string())?
            {
                return Ok(stage.said.after(before));
            }
        }
        Err(format!(
            "the history of pipeline {} changed under {SWAP_TRIES} tries",
            stage.pipeline
        ))
    }

    /// What the rules see of a message with `subject` (`message`: its name).
    pub async fn facts(&self, subject: &str, message: &str) -> Result<GocdFacts, String> {
        let stage = crate::worker::rules::gocd::stage_result(subject);
        let event = match &stage {
            Some(stage) => Some(self.event(stage, message).await?),
            None => None,
        };
        Ok(GocdFacts {
            stage,
            event,
            groups: self.groups().await,
        })
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
                                said: event,
                            }),
                            event: Some(event),
                            groups: groups.clone(),
                        };
                        let mut actions: Vec<String> = Vec::new();
                        for rule in &manager.rules {
                            if rule.filter.gocd.matches(Some(&facts)) {
                                for action in &rule.actions {
                                    let action = action.to_string();
                                    if !actions.contains(&action) {
                                        actions.push(action);
                                    }
                                }
                            }
                        }
                        if actions.is_empty() {
                            continue;
                        }
                        match alerts.iter_mut().find(|a| a.actions == actions) {
                            Some(alert) => alert.events.push(event.to_string()),
                            None => alerts.push(AlertReport {
                                actions,
                                events: vec![event.to_string()],
                            }),
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

/// The shared value's key for `pipeline`, when the engine can keep it.
fn history_key(pipeline: &str) -> Option<String> {
    let key = format!("gocd:{pipeline}");
    is_shared_key(&key).then_some(key)
}

/// One pipeline's history entry: `<state> <state before> <message name>`.
struct HistoryEntry {
    state: PipelineState,
    before: PipelineState,
    message: String,
}

impl HistoryEntry {
    fn parse(value: &str) -> HistoryEntry {
        let mut words = value.split(' ');
        let mut next = || words.next().unwrap_or_default();
        HistoryEntry {
            state: PipelineState::from_word(next()),
            before: PipelineState::from_word(next()),
            message: next().to_string(),
        }
    }
}

/// Each pipeline's state in a cctray.xml: of its `<Project>`s (`<pipeline> :: <stage>`, and
/// `... :: <job>`), the one with the latest `lastBuildTime` gives it.
pub fn parse_cctray(xml: &str) -> Result<BTreeMap<String, PipelineState>, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut latest: BTreeMap<String, (i64, PipelineState)> = BTreeMap::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|e| format!("cctray.xml at byte {}: {e}", reader.buffer_position()))?;
        let project = match &event {
            XmlEvent::Start(e) | XmlEvent::Empty(e) if e.name().as_ref() == b"Project" => e,
            XmlEvent::Eof => break,
            _ => continue,
        };
        let mut attributes = BTreeMap::new();
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
/// without a colon); an unreadable one counts as the oldest.
fn build_time(text: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(text)
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%z"))
        .or_else(|_| chrono::DateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f%z"))
        .map_or(i64::MIN, |t| t.timestamp_millis())
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
</Projects>"#;
        let states = parse_cctray(xml).unwrap();
        assert_eq!(states["b-test"], PipelineState::Success);
        // 12:00+01:00 is 11:00Z, after the package stage's 10:30Z.
        assert_eq!(states["a-build"], PipelineState::Failure);
        assert_eq!(states["c & d"], PipelineState::Unknown);
        assert_eq!(states.len(), 3);
        assert!(parse_cctray("<Projects><Project name=\"x").is_err());
    }

    #[test]
    fn history_entries_read_back() {
        let e = HistoryEntry::parse("failure success 1700000000.M1P2Q3.host,S=10");
        assert_eq!(
            (e.state, e.before, e.message.as_str()),
            (
                PipelineState::Failure,
                PipelineState::Success,
                "1700000000.M1P2Q3.host,S=10"
            )
        );
        assert!(history_key("my-pipeline_1.2").is_some());
        assert!(history_key("a b").is_none());
    }
}
