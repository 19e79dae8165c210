//! swiftdrop: a before-queue SMTP filter for Postfix that turns mail into durable objects.
//!
//! Postfix's `smtpd_proxy_filter` hands each transaction to [`server`]; a [`session`] speaks
//! ESMTP over any byte stream, [`route`] maps recipients to destinations, and [`deliver`]
//! writes the message into every destination's [`store`] before the session answers `250`.
//! [`config`] is the only place configuration (environment and ini file) is read. Workers
//! claim stored mail with [`queue`].
//!
//! See `ARCHITECTURE.md` for the data flow and the invariants that hold it together.

pub mod check;
pub mod cleanup;
pub mod config;
pub mod deliver;
pub mod dequeue;
pub mod envelope;
pub mod failpoint;
pub mod mail_view;
pub mod memory;
pub mod message;
pub mod object_write;
pub mod postfix_config;
pub mod queue;
pub mod relay;
pub mod reply;
pub mod route;
pub mod rules;
pub mod server;
pub mod session;
pub mod sinks;
pub mod spool;
pub mod store;
pub mod sweep;
pub mod xforward;
pub mod xtext;
