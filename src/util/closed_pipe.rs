//! Commands whose output goes to a reader that may leave early (`swiftdrop queue list |
//! head -1`): Rust ignores SIGPIPE, so a write to the closed pipe fails and `println!`
//! panics ("failed printing to stdout: Broken pipe", exit 101). Such a command restores
//! SIGPIPE's default action and ends quietly when its reader goes away, as `ls` does.
//! Not for `serve` or the worker's loop: a long-running process must not die of a pipe;
//! their sockets use `MSG_NOSIGNAL` either way.

/// Lets SIGPIPE end this process, as it ends other command-line tools.
pub fn end_quietly_when_the_reader_leaves() {
    // SAFETY: setting a signal's disposition to its default, before other threads that
    // could depend on it start; no handler runs Rust code.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
