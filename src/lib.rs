//! swiftdrop: a before-queue SMTP filter for Postfix that turns mail into durable objects,
//! and a worker that turns that mail into messages where people work.
//!
//! The crate is a house of rooms, each importing only from the rooms below it:
//!
//! ```text
//! main.rs ─▶ cli/     the commands besides `serve`: queue, check, postfix-config
//! fuzzing/   (the fuzz targets, over filter/ and worker/ like main.rs)
//!            filter/  the SMTP filter: SMTP in, objects out (`serve`)
//!            worker/  the dequeue worker: claimed mail in, messages out
//!              ▼
//!            queue/   claims under fenced leases; moves between state folders
//!              ▼
//!            store/   destinations: Maildir, Swift, S3 as `ObjectStore`s; object names
//!              ▼
//!            config/  the only place configuration (environment, ini file) is read
//!              ▼
//!            util/    small helpers that know nothing of mail (hex, fail-points)
//! ```
//!
//! `cli/`, `filter/` and `worker/` do not import each other. Within a room, sibling files
//! import each other in one direction only. `tests/it/house.rs` keeps both rules.
//! See `ARCHITECTURE.md` for the data flow and the invariants that hold it together.

pub mod admin;
pub mod cli;
pub mod config;
pub mod filter;
pub mod fuzzing;
pub mod queue;
pub mod store;
pub mod telemetry;
pub mod util;
pub mod worker;
