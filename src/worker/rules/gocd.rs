//! What mail2alert's `gocd` manager knows of a GoCD stage notification, as pure logic: the
//! stage result in its subject, the event it means once the pipeline's last state is known,
//! and the rule functions over pipeline groups. Fetching the groups and keeping the history
//! is the worker's ([`crate::worker::gocd`]).

use std::collections::BTreeSet;
use std::fmt;
use std::sync::{Arc, LazyLock};

use regex::Regex;

/// What a stage notification says happened, or what it means after the history
/// (mail2alert's events).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Event {
    /// `is broken`, or `failed` after a success.
    Breaks,
    /// `is cancelled`.
    Cancelled,
    /// `failed`.
    Fails,
    /// `is fixed`, or `passed` after a failure.
    Fixed,
    /// `passed`.
    Passes,
}

impl Event {
    /// Every event, in mail2alert's order (its self-test lists them so).
    pub const ALL: [Event; 5] = [
        Event::Breaks,
        Event::Cancelled,
        Event::Fails,
        Event::Fixed,
        Event::Passes,
    ];

    /// The event named so in a rule (`BREAKS`, any case).
    pub fn parse(name: &str) -> Option<Event> {
        Event::ALL
            .into_iter()
            .find(|e| e.to_string().eq_ignore_ascii_case(name.trim()))
    }

    /// The pipeline's state after this event.
    pub fn state_after(self) -> PipelineState {
        match self {
            Event::Passes | Event::Fixed => PipelineState::Success,
            Event::Fails | Event::Breaks => PipelineState::Failure,
            Event::Cancelled => PipelineState::Unknown,
        }
    }

    /// What the subject's own event means after `previous`: a failure after a success
    /// breaks the pipeline, a pass after a failure fixes it; anything else stands.
    pub fn after(self, previous: PipelineState) -> Event {
        match (self, previous) {
            (Event::Fails, PipelineState::Success) => Event::Breaks,
            (Event::Passes, PipelineState::Failure) => Event::Fixed,
            (said, _) => said,
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Event::Passes => "PASSES",
            Event::Fails => "FAILS",
            Event::Breaks => "BREAKS",
            Event::Fixed => "FIXED",
            Event::Cancelled => "CANCELLED",
        })
    }
}

/// A pipeline's last known result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineState {
    Success,
    Failure,
    /// Never seen, or last cancelled.
    Unknown,
}

impl PipelineState {
    /// The word kept in the shared history.
    pub fn word(self) -> &'static str {
        match self {
            PipelineState::Success => "success",
            PipelineState::Failure => "failure",
            PipelineState::Unknown => "unknown",
        }
    }

    /// The state a [`PipelineState::word`] names (anything else: unknown).
    pub fn from_word(word: &str) -> PipelineState {
        match word {
            "success" => PipelineState::Success,
            "failure" => PipelineState::Failure,
            _ => PipelineState::Unknown,
        }
    }

    /// The state a cctray.xml `lastBuildStatus` says (`Success`, `Failure`; others unknown).
    pub fn from_cctray(status: &str) -> PipelineState {
        match status {
            "Success" => PipelineState::Success,
            "Failure" => PipelineState::Failure,
            _ => PipelineState::Unknown,
        }
    }
}

/// The stage result a notification's subject reports:
/// `Stage [<pipeline>/<n>/<stage>/<n>] <passed | failed | is broken | is fixed | is cancelled>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageResult {
    pub pipeline: String,
    pub stage: String,
    /// The event the subject names, before the history is applied (`None`: words after
    /// `]` that name none; mail2alert keeps such a notification's pipeline).
    pub said: Option<Event>,
}

/// The stage result in `subject` (folded subjects included: runs of white space count as
/// one space), if it is a GoCD stage notification: as mail2alert reads it, the words after
/// `]` are the whole rest of the subject.
pub fn stage_result(subject: &str) -> Option<StageResult> {
    static SUBJECT: LazyLock<Regex> = LazyLock::new(|| {
        Regex::new(
            r"Stage \[(?P<pipeline>[^/\]]+)/[^/\]]+/(?P<stage>[^/\]]+)/[^/\]]+\] (?P<verb>.+)$",
        )
        .expect("valid")
    });
    let subject = subject.split_whitespace().collect::<Vec<_>>().join(" ");
    let found = SUBJECT.captures(&subject)?;
    let said = match &found["verb"] {
        "passed" => Some(Event::Passes),
        "failed" => Some(Event::Fails),
        "is broken" => Some(Event::Breaks),
        "is fixed" => Some(Event::Fixed),
        "is cancelled" => Some(Event::Cancelled),
        _ => None,
    };
    Some(StageResult {
        pipeline: found["pipeline"].to_string(),
        stage: found["stage"].to_string(),
        said,
    })
}

/// Pipeline groups in GoCD's order, each with the names of its pipelines.
pub type PipelineGroups = Vec<(String, Vec<String>)>;

/// A GoCD rule's function (`function:` and `args:`).
#[derive(Debug, Clone)]
pub enum PipelineFunction {
    /// `pipelines.any` (older configurations: `pipelines.all`): every pipeline.
    Any,
    /// `pipelines.in_group [group]`: the pipeline is in the group.
    InGroup(String),
    /// `pipelines.name_like_in_group [regex, group]`: the regex's first group, searched in
    /// the pipeline's name, names a pipeline of the group.
    NameLikeInGroup(Regex, String),
}

impl PipelineFunction {
    /// Whether `pipeline` passes, with `groups` as GoCD last gave them.
    pub fn matches(&self, pipeline: &str, groups: &PipelineGroups) -> bool {
        let in_group = |group: &str, name: &str| {
            groups
                .iter()
                .any(|(g, pipelines)| g == group && pipelines.iter().any(|p| p == name))
        };
        match self {
            PipelineFunction::Any => true,
            PipelineFunction::InGroup(group) => in_group(group, pipeline),
            PipelineFunction::NameLikeInGroup(re, group) => re
                .captures(pipeline)
                .and_then(|c| c.get(1))
                .is_some_and(|m| in_group(group, m.as_str())),
        }
    }
}

/// What the rules of a `gocd` manager know of one message.
#[derive(Debug, Clone)]
pub struct GocdFacts {
    /// The stage result in its subject, if it is a notification.
    pub stage: Option<StageResult>,
    /// The event after the pipeline's history (`None` without a stage result).
    pub event: Option<Event>,
    /// The pipeline groups (empty when GoCD never answered).
    pub groups: Arc<PipelineGroups>,
}

/// A GoCD rule's filter part (`events:` and a `pipelines.*` function).
#[derive(Debug, Clone, Default)]
pub struct GocdFilter {
    /// The rule fires only for these events (empty: any, or none).
    pub events: BTreeSet<Event>,
    pub function: Option<PipelineFunction>,
}

impl GocdFilter {
    /// Whether the rule may fire for a message with `facts` (`None`: not a GoCD manager's
    /// message, so only an empty filter passes). A rule with events needs a notification
    /// with one of them; a group function needs a notification's pipeline
    /// (`pipelines.any` does not, as in mail2alert).
    pub fn matches(&self, facts: Option<&GocdFacts>) -> bool {
        if self.events.is_empty() && self.function.is_none() {
            return true;
        }
        let Some(facts) = facts else { return false };
        if !self.events.is_empty() && !facts.event.is_some_and(|e| self.events.contains(&e)) {
            return false;
        }
        match (&self.function, &facts.stage) {
            (None, _) => true,
            (Some(function), Some(stage)) => function.matches(&stage.pipeline, &facts.groups),
            (Some(PipelineFunction::Any), None) => true,
            (Some(_), None) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_give_the_stage_and_what_it_said() {
        let r = stage_result("Stage [my-pipeline/232/my-stage/1] failed").unwrap();
        assert_eq!(
            (r.pipeline.as_str(), r.stage.as_str(), r.said),
            ("my-pipeline", "my-stage", Some(Event::Fails))
        );
        for (subject, said) in [
            ("Stage [p/2/s/1] passed", Event::Passes),
            ("Stage [p/2/s/1] is broken", Event::Breaks),
            ("Stage [p/2/s/1] is fixed", Event::Fixed),
            ("Stage [p/2/s/1] is cancelled", Event::Cancelled),
            ("Stage [p/2/s/1] \r\n failed", Event::Fails),
            ("Stage [p/2/s/1]\r\n\tis\r\n  broken", Event::Breaks),
        ] {
            assert_eq!(
                stage_result(subject).unwrap().said,
                Some(said),
                "{subject:?}"
            );
        }
        for unknown in ["Stage [p/2/s/1] failedx", "Stage [p/2/s/1] failed again"] {
            let r = stage_result(unknown).unwrap();
            assert_eq!((r.pipeline.as_str(), r.said), ("p", None), "{unknown:?}");
        }
        for other in ["Stage [p/2/s] failed", "disk full", ""] {
            assert_eq!(stage_result(other), None, "{other:?}");
        }
    }

    #[test]
    fn the_history_turns_failures_into_breaks_and_passes_into_fixes() {
        use PipelineState::*;
        assert_eq!(Event::Fails.after(Success), Event::Breaks);
        assert_eq!(Event::Fails.after(Failure), Event::Fails);
        assert_eq!(Event::Fails.after(Unknown), Event::Fails);
        assert_eq!(Event::Passes.after(Failure), Event::Fixed);
        assert_eq!(Event::Passes.after(Success), Event::Passes);
        assert_eq!(Event::Cancelled.after(Success), Event::Cancelled);
        assert_eq!(Event::Breaks.state_after(), Failure);
        assert_eq!(Event::Fixed.state_after(), Success);
        assert_eq!(Event::Cancelled.state_after(), Unknown);
        assert_eq!(Event::parse("breaks"), Some(Event::Breaks));
        assert_eq!(Event::parse("BROKEN"), None);
    }

    #[test]
    fn functions_look_pipelines_up_in_their_groups() {
        let groups: PipelineGroups = vec![(
            "my-group".to_string(),
            vec!["ppp".to_string(), "a-build".to_string()],
        )];
        let like = PipelineFunction::NameLikeInGroup(
            Regex::new("(.+)-release.*").unwrap(),
            "my-group".into(),
        );
        assert!(like.matches("ppp-release-1.2.3", &groups));
        assert!(!like.matches("qqq-release-1", &groups));
        assert!(!like.matches("ppp", &groups));
        let in_group = PipelineFunction::InGroup("my-group".into());
        assert!(in_group.matches("a-build", &groups));
        assert!(!in_group.matches("b-build", &groups));
        assert!(!PipelineFunction::InGroup("nope".into()).matches("a-build", &groups));
        assert!(PipelineFunction::Any.matches("anything", &groups));
    }

    #[test]
    fn a_rule_with_events_needs_a_notification_with_one() {
        let filter = GocdFilter {
            events: [Event::Breaks].into(),
            function: Some(PipelineFunction::Any),
        };
        let facts = |subject: &str, event: Option<Event>| GocdFacts {
            stage: stage_result(subject),
            event,
            groups: Arc::default(),
        };
        assert!(filter.matches(Some(&facts("Stage [p/1/s/1] failed", Some(Event::Breaks)))));
        assert!(!filter.matches(Some(&facts("Stage [p/1/s/1] failed", Some(Event::Fails)))));
        assert!(!filter.matches(Some(&facts("hello", None))));
        assert!(!filter.matches(None));
        assert!(GocdFilter::default().matches(None));
    }
}
