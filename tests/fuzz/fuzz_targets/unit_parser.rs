//! Feeds arbitrary bytes to the unit-file parser and checks the properties in
//! `unit_properties.rs`, the same ones `tests/parser_corpus.rs` replays the kept corpus through.

#![no_main]

#[path = "../unit_properties.rs"]
mod unit_properties;

libfuzzer_sys::fuzz_target!(|input: &[u8]| unit_properties::check(input));
