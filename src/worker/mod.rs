//! The dequeue worker: claimed mail in, messages out.
//!
//! [`dequeue`] claims stored mail with the queue, [`mail_view`] reads what the rules see of
//! it, [`rules`] decide what it means ([`gocd`] asks a GoCD server and keeps its pipelines'
//! history for them), [`plan`] turns a decision into actions with their receipts, and the
//! [`sinks`] take them (e-mail, XMPP, Mattermost). `examples/dequeue.rs` is its command.
//!
//! Owns: rules files, templates, sinks and their progress records. May use: `queue/`,
//! `store/`, `config/`, `util/`; never `cli/` or `filter/`. Within the room, [`sinks`] use
//! [`rules`]' settings and never the other way round.

pub mod chat_text;
pub mod dequeue;
pub mod gocd;
pub mod mail_view;
pub mod plan;
pub mod rules;
pub mod sinks;
