//! Fail-points: named places in multi-step operations where a crash test can kill the
//! process, as SIGKILL would at that instant.
//!
//! `SWIFTDROP_FAILPOINT=<name>` makes the process send itself SIGKILL the first time it
//! reaches [`hit`] with that name. Without the variable, [`hit`] is one comparison with a
//! cached `None`. The names are listed where they are hit; tests name them one by one.

use std::sync::OnceLock;

/// Kills the process with SIGKILL when `name` is the configured fail-point.
pub fn hit(name: &str) {
    static CONFIGURED: OnceLock<Option<String>> = OnceLock::new();
    let configured = CONFIGURED.get_or_init(crate::config::failpoint);
    if configured.as_deref() == Some(name) {
        eprintln!("swiftdrop: fail-point {name}: killing the process");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
        // SIGKILL cannot be caught: this line is never reached.
        std::process::abort();
    }
}
