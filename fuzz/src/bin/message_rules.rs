//! AFL++ target: `swiftdrop::fuzzing::message_rules` (the worker's rules on any message).
use std::panic::AssertUnwindSafe;

fn main() {
    // Read once, before the loop: every run then does the same work for the same input.
    let target = AssertUnwindSafe(swiftdrop::fuzzing::message_rules::MessageRules::new());
    afl::fuzz!(|data: &[u8]| {
        target.run(data);
    });
}
