//! AFL++ target: `swiftdrop::fuzzing::message_rules` (the worker's rules on any message).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        swiftdrop::fuzzing::message_rules::message_rules(data);
    });
}
