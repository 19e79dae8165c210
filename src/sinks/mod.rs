//! Where the dequeue worker's actions go. Each sink takes one kind of action and says
//! whether a failure is permanent (the message goes to `failed/`) or transient (`retry/`).
//!
//! | sink | actions | permanent | transient |
//! |---|---|---|---|
//! | [`mail`] | `mailto:`, forwarding unmatched mail | a 5xx reply | anything else |
//! | [`xmpp`] | `xmpp:` rooms and users | an error reply other than "not in the room", a refused join | no session, no confirmation in time |

pub mod mail;
pub mod xmpp;

use std::fmt;

/// Why an action did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SinkError {
    /// Trying again will not help (a 5xx, an unknown room or user, a rule error).
    Permanent(String),
    /// Worth another attempt later (a connection, a timeout, a 4xx).
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
