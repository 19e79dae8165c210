//! The rules target: an arbitrary message as the worker claims it, seen through
//! [`MailView`], routed by a fixed set of rules in mail2alert's form that uses every kind of
//! filter (envelope and header address patterns, words in the subject, subject and header
//! regexes with captures) and every kind of action, and planned.

use std::sync::LazyLock;

use crate::store::trace;
use crate::worker::chat_text;
use crate::worker::mail_view::MailView;
use crate::worker::plan::plan;
use crate::worker::rules::{Decision, Purpose, Rules, parse_for};

/// The rules every message is routed by (tokens are read from unset variables: `--check`
/// reading, so none is needed).
const RULES: &str = r#"
remote-smtp: 127.0.0.1:2525
body_limit: 40
xmpp:
  jabberid: bot@example.com
  password: not-used-here
mattermost:
  url: http://127.0.0.1:8065/
  bots:
    ci: {token_env: FUZZ_UNSET_CI_TOKEN}
unmatched: forward
managers:
  - name: monitoring
    messages-we-want:
      from: "@mon.example.org"
    rules:
      - name: disk
        filter:
          function: mail.in_subject
          args: [DISK, full]
          subject: '^(?P<state>\w+): disk full on (?P<host>\S+)'
        actions:
          - xmpp:ops@conference.example.com
          - mailto:oncall@example.com
        template: "{{ captures.host }} is {{ captures.state }} ({{ rule }}@{{ manager }}) {{ headers['x-priority'] }}"
      - name: everything
        actions: [xmpp:audit@example.com, mailto:ONCALL@example.com]
  - name: ci
    messages-we-want:
      to: "*-ci@example.com"
    rules:
      - name: failed
        filter:
          headers:
            X-Build-Status: '^(?P<status>failed|broken)$'
        actions: [mattermost:dm, xmpp:ci@conference.example.com]
        template: "{{ subject }} {{ captures.status }} {{ body }} {{ date }} {{ message_id }}"
  - name: apps
    messages-we-want:
      from: '/^svc-[a-z]+@/'
    rules:
      - name: post
        actions: ["mattermost:~ops/alerts", "mattermost:@oncall"]
"#;

static ROUTED_BY: LazyLock<Rules> = LazyLock::new(|| {
    parse_for(RULES, "fuzz.yml", Purpose::Check).expect("the fuzzing rules are valid")
});

/// Routes `input` as a stored message and plans its actions.
///
/// Invariants: nothing panics (parsing, matching, rendering, the Markdown of an HTML body,
/// quieting mentions, planning); the decision is the same when taken twice; the envelope
/// read from the trace lines holds no line break (its addresses go into SMTP commands when
/// the mail is forwarded); a body given to a template is at most `body_limit` characters
/// and its ellipsis.
pub fn message_rules(input: &[u8]) {
    let rules = &*ROUTED_BY;
    let envelope = trace::envelope(input);
    for address in envelope.sender.iter().chain(&envelope.recipients) {
        assert!(
            !address.contains(['\r', '\n']),
            "an envelope address with a line break: {address:?}"
        );
    }
    let mail = MailView::parse(input);
    let decision = rules.decide(&mail, None);
    let again = rules.decide(&mail, None);
    assert_eq!(
        format!("{decision:?}"),
        format!("{again:?}"),
        "one message, one decision"
    );
    let _ = chat_text::quiet(&mail.body);
    let _ = plan(&decision);
    check_body_limit(&decision, &mail, rules.body_limit);
}

/// The `monitoring/everything` rule's default template ends with the body: at most the
/// limit's characters of it (and `…`).
fn check_body_limit(decision: &Decision, mail: &MailView, limit: usize) {
    for fired in decision.fired.iter().filter(|f| f.rule == "everything") {
        let Ok(text) = &fired.text else { continue };
        let prefix = format!("[{}] {}: ", mail.subject, mail.from);
        if let Some(body) = text.strip_prefix(&prefix) {
            assert!(
                body.chars().count() <= limit + 1,
                "{} characters of body, limit {limit}",
                body.chars().count()
            );
        }
    }
}
