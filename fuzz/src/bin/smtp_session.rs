//! AFL++ target: `swiftdrop::fuzzing::smtp_session` (a client's bytes in, replies out).
use std::panic::AssertUnwindSafe;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let target = swiftdrop::fuzzing::smtp_session::SmtpSession::new();
    // A panic ends the process (AFL++ counts the crash): nothing is used after one.
    let (runtime, target) = (AssertUnwindSafe(runtime), AssertUnwindSafe(target));
    afl::fuzz!(|data: &[u8]| {
        runtime.block_on(target.run(data));
    });
}
