//! The rules target: an arbitrary message as the worker claims it, seen through
//! [`MailView`], routed by a fixed set of rules in mail2alert's form that uses every kind of
//! filter (envelope and header address patterns, words in the subject, subject and header
//! regexes with captures) and every kind of action, and planned; and an address through the
//! filter's trace lines and back.

use smtp_proto::Request;

use crate::filter::envelope::mailbox;
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

/// The rules, read once: each run routes one message by them.
pub struct MessageRules {
    rules: Rules,
}

impl Default for MessageRules {
    fn default() -> Self {
        MessageRules::new()
    }
}

impl MessageRules {
    /// Reads [`RULES`].
    pub fn new() -> MessageRules {
        MessageRules {
            rules: parse_for(RULES, "fuzz.yml", Purpose::Check)
                .expect("the fuzzing rules are valid"),
        }
    }

    /// Routes `input` as a stored message and plans its actions; its first line, as the
    /// address of a `MAIL FROM:<...>` command, goes through the filter's trace lines.
    ///
    /// Invariants: nothing panics (parsing, matching, rendering, the Markdown of an HTML
    /// body, quieting mentions, planning); a template gets at most `body_limit` characters
    /// of the body (and `…`); an address the filter accepts reads back from the trace
    /// lines it writes as the same address (the worker's rules, bots and forwards see
    /// the envelope the client gave).
    pub fn run(&self, input: &[u8]) {
        let mail = MailView::parse(input);
        let decision = self.rules.decide(&mail, None);
        let _ = chat_text::quiet(&mail.body);
        let _ = plan(&decision);
        check_body_limit(&decision, &mail, self.rules.body_limit);
        check_trace_lines(input);
    }
}

/// The `monitoring/everything` rule's default template ends with the body: at most the
/// limit's characters of it (and `…`).
fn check_body_limit(decision: &Decision, mail: &MailView, limit: usize) {
    for fired in decision.fired.iter().filter(|f| f.rule == "everything") {
        let text = fired.text.as_ref().expect("the default template renders");
        let prefix = format!("[{}] {}: ", mail.subject, mail.from);
        let body = text
            .strip_prefix(&prefix)
            .unwrap_or_else(|| panic!("{text:?} begins with {prefix:?}"));
        assert!(
            body.chars().count() <= limit + 1,
            "{} characters of body, limit {limit}",
            body.chars().count()
        );
    }
}

/// The first line of `input` as the client's `MAIL FROM:<...>`, parsed as the filter parses
/// it: if the filter takes the address, its trace lines give it back unchanged.
fn check_trace_lines(input: &[u8]) {
    let first = input.split(|&b| b == b'\n').next().unwrap_or_default();
    let mut command = b"MAIL FROM:<".to_vec();
    command.extend_from_slice(first.strip_suffix(b"\r").unwrap_or(first));
    command.extend_from_slice(b">\r\n");
    let Ok(Request::Mail { from }) = Request::parse(&mut command.iter()) else {
        return;
    };
    let Some(address) = mailbox(&from.address) else {
        return;
    };
    let read = trace::envelope(&trace::lines_for(&address, &[&address]));
    assert_eq!(
        read,
        trace::Envelope {
            sender: Some(address.clone()),
            recipients: vec![address.clone()],
        },
        "{address:?} is read back from its trace lines"
    );
}
