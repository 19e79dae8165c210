//! The fuzz targets (`swiftdrop::fuzzing`) on every input of the committed corpus
//! (`fuzz/corpus/<target>/`): the seeds, and what AFL++ kept as new coverage (`fuzz/run.sh`
//! adds it), so every crash a fuzzing run found and every road it opened is tried again
//! in each test run, without AFL++.

use std::path::{Path, PathBuf};

use swiftdrop::fuzzing::{message_rules, names, smtp_session};

/// The inputs of one target's corpus, by file name.
fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect();
    inputs.sort();
    // A corpus that went missing would pass every time.
    assert!(
        inputs.len() >= 10,
        "{}: {} inputs",
        dir.display(),
        inputs.len()
    );
    inputs
}

#[test]
fn the_smtp_session_corpus_keeps_every_invariant() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let target = smtp_session::SmtpSession::new();
    let (mut stored, mut not_stored) = (0, 0);
    for (path, input) in corpus("smtp_session") {
        eprintln!("{}", path.display());
        let answered = runtime.block_on(target.run(&input));
        stored += answered.stored;
        not_stored += answered.not_stored;
    }
    // The seeds store mail, and make writes fail (`!F`): both roads' checks ran.
    assert!(stored >= 5, "{stored} messages stored");
    assert!(not_stored >= 5, "{not_stored} writes failed");
}

#[test]
fn the_names_corpus_keeps_every_invariant() {
    for (path, input) in corpus("names") {
        eprintln!("{}", path.display());
        names::names(&input);
    }
}

#[test]
fn the_message_rules_corpus_keeps_every_invariant() {
    let target = message_rules::MessageRules::new();
    for (path, input) in corpus("message_rules") {
        eprintln!("{}", path.display());
        target.run(&input);
    }
}
