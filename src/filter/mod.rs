//! The SMTP filter (`swiftdrop serve`): SMTP in, objects out.
//!
//! Postfix's `smtpd_proxy_filter` hands each transaction to [`server`]; a [`session`] speaks
//! ESMTP over any byte stream, [`crate::config::Router`] maps recipients to destinations, and [`deliver`]
//! writes the message into every destination's store ([`object_write`]) before the session
//! answers `250`; recipients no destination takes are relayed downstream ([`relay`]).
//!
//! Owns: sockets, the SMTP dialogue and its replies, the memory budget, the spool, the
//! relay, the sweep of `tmp/`. May use: `queue/` (to announce new mail, and to know the
//! folders a stored message moves on to), `store/`, `config/`, `util/`; never `cli/` or
//! `worker/`.

pub mod budget;
pub mod cleanup;
pub mod deliver;
pub mod envelope;
pub mod object_write;
pub mod outcome;
pub mod relay;
pub mod reply;
pub mod server;
pub mod session;
pub mod spool;
pub mod sweep;
pub mod xforward;
pub mod xtext;
