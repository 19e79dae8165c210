//! Where the dequeue worker's actions go. Each sink takes one kind of action and says
//! whether a failure is permanent (the message goes to `failed/`) or transient (`retry/`).
//!
//! | sink | actions | permanent | transient |
//! |---|---|---|---|
//! | [`mail`] | `mailto:`, forwarding unmatched mail | a 5xx reply | anything else |
//! | [`xmpp`] | `xmpp:` rooms and users | an error reply other than "not in the room", a refused join | no session, no confirmation in time |
//! | [`mattermost`] | `mattermost:` direct messages, channels, webhook | no bot for the sender, an unknown user or channel, a 4xx | 5xx, no connection, a timeout, a long rate limit |

pub mod mail;
pub mod mattermost;
pub mod xmpp;

use std::fmt;

/// The steps of one action that earlier attempts did (a sink that posts in several steps
/// skips those), and the way to record more: kept with the claim, so they survive a crash.
pub trait Progress: Sync {
    /// The value recorded with `step` (empty when none), or `None` when it is not done.
    fn done(&self, step: &str) -> Option<String>;
    /// Whether the claim still holds its lease: nothing may be sent once it does not.
    fn held(&self) -> bool;
    /// A stable name for `step` of this message's action: the same on every attempt,
    /// different for every message (32 hex digits), for a server to know a repeat by.
    fn identity(&self, step: &str) -> String;
    /// When the message was stored (ms since the Unix epoch; 0 when its name does not
    /// say): nothing was done for it before.
    fn stored_at_ms(&self) -> i64;
    /// Whether every step of `steps` (each with a value of so many bytes) can still be
    /// recorded, with room kept for the action itself.
    fn has_room(&self, steps: &[(String, usize)]) -> bool;
    /// Records `step` as done, with a short value to remember (an id), in place of the
    /// steps `replaced` (which it sums up). An error says whether to try later (a lost
    /// lease, a store error) or not (no room left).
    fn record(
        &mut self,
        step: &str,
        value: Option<&str>,
        replaced: &[String],
    ) -> impl std::future::Future<Output = Result<(), SinkError>> + Send;
}

/// Why an action did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// Trying again will not help (an SMTP 5xx, an unknown room or user, a rule error).
    Permanent(String),
    /// Worth another attempt later (no connection, a timeout, an SMTP 4xx, an HTTP 5xx).
    Transient(String),
}

impl SinkError {
    /// Whether trying again will not help.
    pub fn is_permanent(&self) -> bool {
        matches!(self, SinkError::Permanent(_))
    }
}

impl fmt::Display for SinkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SinkError::Permanent(why) => write!(f, "permanent: {why}"),
            SinkError::Transient(why) => write!(f, "transient: {why}"),
        }
    }
}
