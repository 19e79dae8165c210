//! AFL++ target: `swiftdrop::fuzzing::names` (the object-name parsers).
fn main() {
    afl::fuzz!(|data: &[u8]| {
        swiftdrop::fuzzing::names::names(data);
    });
}
