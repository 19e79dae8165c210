//! Integration tests: one binary, grouped by what they drive.
//!
//! `session` feeds bytes to a session without sockets; `server` runs the listener on an
//! ephemeral port with mail-send as an independent client; `cli` runs the built binary;
//! `postfix` goes through a real Postfix (`smtpd_proxy_filter`) started from a temporary
//! directory; `swift` stores into the real Swift that tests/run.sh starts, and `store_faults` into it
//! through `fault_proxy`, which injects faults; `process_faults` kills and stops the binary
//! mid-transaction; `house` reads `src/` and keeps the rooms' import rules. `support` and
//! `swift_support` hold the shared helpers. `aws_s3` runs the S3 path against moto's server, an S3
//! that behaves as AWS does.

mod admin;
mod alerts;
mod aws_s3;
mod cli;
mod dequeue;
mod fault_proxy;
mod fuzz_corpus;
mod gateway;
mod house;
mod load;
mod mattermost;
mod mattermost_support;
mod postfix;
mod private_postfix;
mod process_faults;
mod queue;
mod queue_chaos;
mod queue_pauses;
mod queue_support;
mod relay;
mod server;
mod session;
mod smtp_recorder;
mod store_failures;
mod store_faults;
mod support;
mod swift;
mod swift_support;
mod xmpp_support;
