//! Replays the kept fuzz corpus of the unit parser through the properties the `unit_parser` fuzz
//! target checks, so the normal test suite catches a regression on any input the fuzzer found
//! interesting. Needs no cluster. See docs/fuzzing.md.

use std::fs;
use std::path::Path;

#[path = "fuzz/unit_properties.rs"]
mod unit_properties;

#[test]
fn kept_corpus_keeps_the_parser_properties() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/unit_parser");
    let mut paths: Vec<_> = fs::read_dir(&corpus)
        .unwrap_or_else(|error| panic!("cannot list {}: {error}", corpus.display()))
        .map(|entry| entry.expect("corpus entries are readable").path())
        .collect();
    paths.sort();
    assert!(!paths.is_empty(), "{} holds no inputs", corpus.display());

    for path in &paths {
        let input = fs::read(path).unwrap_or_else(|error| panic!("cannot read {path:?}: {error}"));
        let replay = std::panic::catch_unwind(|| unit_properties::check(&input));
        assert!(replay.is_ok(), "corpus input {} breaks a property", path.display());
    }
}
