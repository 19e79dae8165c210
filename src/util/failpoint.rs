//! Fail-points: named places in multi-step operations where a crash test can kill the
//! process, as SIGKILL would at that instant, or pause it there.
//!
//! `SWIFTDROP_FAILPOINT=<name>` makes the process send itself SIGKILL the first time it
//! reaches [`hit`] with that name; `<name>@<n>` the n-th time. A `:stop` suffix
//! (`<name>[@<n>]:stop`) sends SIGSTOP instead: the process pauses there until a SIGCONT, as a
//! worker does that a long GC-like stall or a frozen VM catches mid-operation. Without the
//! variable, [`hit`] is one comparison with a cached `None`. Only debug builds (the tests')
//! have fail-points: in a release build [`hit`] does nothing, so a stray variable cannot
//! kill a server.
//!
//! | name | where |
//! |---|---|
//! | `claim.leased` | a claim holds the lease, nothing is moved yet |
//! | `delete.checked` | the delete of an outranked copy has its lease confirmed, before it looks at the copy again |
//! | `resolve.looked` | a claim or operator command under a lease has looked at every copy of a message, before it deletes the outranked ones |
//! | `move.copied` | a move's copy exists beside its source (Maildir: renamed, not yet fsynced) |
//! | `move.verified` | a move's copy is verified, the source not yet deleted (Maildir: fsynced) |
//! | `finish.checked` | a finish or release checked its lease, nothing is moved yet |
//! | `finish.moved` | a finish or release moved the message, its lease is not yet given up |
//! | `requeue.half` | a requeue moved the message to `processing/`, not yet on to `cur/` |

/// The variable that names a fail-point. It is read here, not by `config/`: it is no
/// configuration option, and the configuration ignores it.
pub const VARIABLE: &str = "SWIFTDROP_FAILPOINT";

#[cfg(debug_assertions)]
use std::sync::OnceLock;
#[cfg(debug_assertions)]
use std::sync::atomic::{AtomicU32, Ordering};

/// The configured fail-point: its name and the hit that kills.
#[cfg(debug_assertions)]
struct Configured {
    name: String,
    at: u32,
    /// SIGSTOP instead of SIGKILL.
    stop: bool,
    hits: AtomicU32,
}

/// Kills (or stops) the process when `name` is the configured fail-point.
#[cfg(not(debug_assertions))]
pub fn hit(_name: &str) {}

/// Kills (or stops) the process when `name` is the configured fail-point.
#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use rustix::process::{Signal, getpid, kill_process};
    static CONFIGURED: OnceLock<Option<Configured>> = OnceLock::new();
    let configured = CONFIGURED.get_or_init(|| {
        let value = std::env::var(VARIABLE).ok().filter(|s| !s.is_empty())?;
        let (value, stop) = match value.strip_suffix(":stop") {
            Some(value) => (value.to_string(), true),
            None => (value, false),
        };
        let (name, at) = match value.split_once('@') {
            Some((name, at)) => (name.to_string(), at.parse().unwrap_or(1)),
            None => (value, 1),
        };
        Some(Configured {
            name,
            at,
            stop,
            hits: AtomicU32::new(0),
        })
    });
    let Some(configured) = configured else { return };
    if configured.name != name
        || configured.hits.fetch_add(1, Ordering::SeqCst) + 1 != configured.at
    {
        return;
    }
    if configured.stop {
        eprintln!("swiftdrop: fail-point {name}: stopping the process");
        // To this thread, not the process: a process-directed signal may be taken by another
        // thread while this one runs on past the fail-point.
        // SAFETY: raise(3) has no memory-safety preconditions.
        unsafe { libc::raise(libc::SIGSTOP) };
        return;
    }
    eprintln!("swiftdrop: fail-point {name}: killing the process");
    let _ = kill_process(getpid(), Signal::KILL);
    // SIGKILL cannot be caught: this line is never reached.
    std::process::abort();
}
