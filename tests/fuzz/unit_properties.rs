//! Properties of the unit parser that hold for any input, shared by the `unit_parser` fuzz target
//! and the corpus replay in `tests/parser_corpus.rs`.
//!
//! An input is one selector byte followed by a unit file. The selector picks the name the file is
//! parsed for from [`NAMES`], so plain units, container units, templates and instances all get
//! exercised; the one selector past the end of [`NAMES`] instead reads the name from the input,
//! up to its first newline, and checks the name rules as well.
//!
//! Beyond "no panic", a check asserts that:
//! - every error message is non-empty, fits on one line, and names a line that exists;
//! - parsing is deterministic, and a parsed file keeps the input byte for byte;
//! - rendering the parsed sections and entries back to text and parsing that again gives the
//!   same sections, entries, `[X-Fleet]` options and container spec;
//! - `verify` agrees with the steps it is made of;
//! - accepted `[X-Fleet]` options keep the guarantees `FleetOptions` documents, and a template
//!   accepts whatever its placeholder instance accepts, with the same result;
//! - an accepted container spec holds only values `ContainerSpec::from_unit` promises to check.

use flotilla::container::ContainerSpec;
use flotilla::unit::{self, FleetOptions, MAX_UNIT_FILE_SIZE, UNIT_SUFFIXES, UnitFile, UnitName};

/// The names a selector byte chooses between, in selector order.
const NAMES: &[&str] = &[
    "fuzz.service",
    "fuzz.container",
    "fuzz@.service",
    "fuzz@1.service",
    "fuzz@.container",
    "fuzz@a.b.container",
    "fuzz.socket",
];

/// The instance a template's file is compared against: the one `FleetOptions` checks templates
/// with, so that the specifiers expand to the same text for both.
const PLACEHOLDER_INSTANCE: &str = "0";

/// A section with its entries as (key, value), line numbers left out.
type Shape = Vec<(String, Vec<(String, String)>)>;

/// Checks every property on one input; panics with a description of the first that fails.
pub fn check(input: &[u8]) {
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    match NAMES.get(usize::from(selector) % (NAMES.len() + 1)) {
        Some(name) => {
            let unit_name = UnitName::parse(name).expect("the selectable names are valid");
            check_file(&unit_name, rest);
        }
        None => {
            let (name_bytes, file_bytes) = match rest.iter().position(|&byte| byte == b'\n') {
                Some(newline) => (&rest[..newline], &rest[newline + 1..]),
                None => (rest, &[][..]),
            };
            let Ok(name) = std::str::from_utf8(name_bytes) else {
                return;
            };
            if let Some(unit_name) = check_name(name) {
                check_file(&unit_name, file_bytes);
            }
        }
    }
}

/// Checks the name rules on `name`, returning the name if it is valid.
fn check_name(name: &str) -> Option<UnitName> {
    let unit_name = match UnitName::parse(name) {
        Ok(unit_name) => unit_name,
        Err(error) => {
            check_message(&error.to_string(), usize::MAX);
            return None;
        }
    };
    assert_eq!(unit_name.as_str(), name, "a valid name is kept as written");
    assert_eq!(unit_name.to_string(), name, "a name displays as written");
    assert_eq!(name.parse::<UnitName>().as_ref(), Ok(&unit_name), "FromStr agrees with parse");
    assert!(UNIT_SUFFIXES.contains(&unit_name.suffix()), "{name:?} has a known suffix");
    assert!(name.starts_with(unit_name.prefix()) && name.ends_with(unit_name.suffix()));
    assert!(!(unit_name.is_template() && unit_name.is_instance()), "{name:?} is not both");

    if let Some(template) = unit_name.template() {
        let instance = unit_name.instance().expect("a name with a template is an instance");
        assert!(template.is_template(), "{template} is a template");
        assert_eq!(template.instantiate(instance), Ok(unit_name.clone()), "instance of {name}");
    }
    if unit_name.is_template() {
        // The instance may only fail by making the name one byte too long.
        if let Ok(instance) = unit_name.instantiate(PLACEHOLDER_INSTANCE) {
            assert_eq!(instance.template().as_ref(), Some(&unit_name), "template of {instance}");
        }
    }
    Some(unit_name)
}

/// Checks the file properties for `bytes` parsed as the unit file of `unit_name`.
fn check_file(unit_name: &UnitName, bytes: &[u8]) {
    let n_lines = bytes.split(|&byte| byte == b'\n').count();
    let parsed = UnitFile::parse(unit_name, bytes);
    assert_eq!(parsed, UnitFile::parse(unit_name, bytes), "parsing is deterministic");
    let verified = unit::verify(&format!("units/{unit_name}"), bytes);

    let unit_file = match parsed {
        Ok(unit_file) => unit_file,
        Err(error) => {
            check_message(&error.to_string(), n_lines);
            let verify_error = verified.expect_err("verify refuses what parse refuses");
            assert_eq!(verify_error.to_string(), format!("{unit_name}: {error}"));
            return;
        }
    };
    assert_eq!(unit_file.text().as_bytes(), bytes, "the file keeps its text byte for byte");
    assert_eq!(unit_file.name(), unit_name);
    let hash = unit_file.hash();
    assert!(hash.len() == 64 && hash.bytes().all(|byte| byte.is_ascii_hexdigit()), "{hash}");
    check_entries(&unit_file, n_lines);

    let options = FleetOptions::from_unit(unit_name, &unit_file);
    match (&options, verified) {
        (Ok(options), Ok((name, file, verified_options))) => {
            assert_eq!((&name, &file, &verified_options), (unit_name, &unit_file, options));
        }
        (Err(error), Err(verify_error)) => {
            check_message(&error.to_string(), n_lines);
            assert_eq!(verify_error.to_string(), format!("{unit_name}: {error}"));
        }
        (options, verified) => panic!("from_unit gave {options:?} but verify gave {verified:?}"),
    }
    if let Ok(options) = &options {
        check_options(unit_name, options);
    }
    if unit_name.is_template() {
        check_template_against_instance(unit_name, &unit_file, &options);
    }

    let spec = match unit_name.suffix() {
        ".container" => Some(ContainerSpec::from_unit(&unit_file)),
        _ => None,
    };
    match &spec {
        Some(Ok(spec)) => check_spec(spec),
        Some(Err(error)) => check_message(&error.to_string(), n_lines),
        None => {}
    }

    check_canonical_round_trip(&unit_file, &options, &spec);
}

/// Checks the entries of every section against what the parser documents about them.
fn check_entries(unit_file: &UnitFile, n_lines: usize) {
    let physical_lines: Vec<&str> = unit_file.text().split('\n').collect();
    for section in unit_file.sections() {
        assert!(!section.is_empty(), "section names are not empty");
        for entry in unit_file.entries(section) {
            let trimmed = |text: &str| text == text.trim_matches([' ', '\t', '\r', '\n']);
            assert!(!entry.key.is_empty() && !entry.key.contains('='), "key {:?}", entry.key);
            assert!(trimmed(&entry.key) && trimmed(&entry.value), "{entry:?} is trimmed");
            assert!((1..=n_lines).contains(&entry.line), "{entry:?} is on a line of the file");
            // The parser ignores a byte order mark at the start of the file, and only there.
            let mut first_line = physical_lines[entry.line - 1];
            if entry.line == 1 {
                first_line = first_line.strip_prefix('\u{feff}').unwrap_or(first_line);
            }
            let first_char = first_line.trim_start_matches([' ', '\t', '\r']).chars().next();
            assert!(!matches!(first_char, Some('#' | ';')), "{entry:?} starts on a comment");
        }
    }
}

/// Checks the guarantees [`FleetOptions::from_unit`] documents for the options it accepts.
fn check_options(unit_name: &UnitName, options: &FleetOptions) {
    if let Some(machine_id) = &options.machine_id {
        let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
        assert!((1..=32).contains(&machine_id.len()) && machine_id.chars().all(is_hex));
    }
    let conflicts = options.conflict_set().expect("accepted Conflicts patterns compile");
    if options.global {
        assert!(options.machine_of.is_empty() && options.replaces.is_empty());
        assert!(options.machine_id.is_none(), "Global=true rules out MachineID");
    }
    for target in options.machine_of.iter().chain(&options.replaces) {
        assert!(!target.is_template(), "{target} is a template, which never runs");
    }
    for (key, alternatives) in &options.metadata {
        assert!(!key.is_empty() && !alternatives.is_empty(), "metadata {key:?}");
        assert!(alternatives.iter().all(|value| !value.is_empty()), "metadata {key:?}");
    }

    // A template's options come from a placeholder instance, which may differ from every real
    // instance, so only a plain unit or an instance is held to the cross-option checks.
    if unit_name.is_template() {
        return;
    }
    assert!(!options.machine_of.contains(unit_name), "MachineOf names {unit_name} itself");
    assert!(!options.replaces.contains(unit_name), "Replaces names {unit_name} itself");
    for target in &options.machine_of {
        assert!(!options.replaces.contains(target), "{target} is MachineOf and replaced");
        assert!(!conflicts.is_match(target.as_str()), "MachineOf {target} is in Conflicts");
    }
}

/// Checks that a template accepts what its placeholder instance accepts, with the same options.
///
/// The placeholder instance expands every specifier to the same text as the template does and
/// is checked with every rule the template is checked with, and more.
fn check_template_against_instance(
    template: &UnitName,
    unit_file: &UnitFile,
    options: &Result<FleetOptions, unit::UnitError>,
) {
    let Ok(instance) = template.instantiate(PLACEHOLDER_INSTANCE) else {
        return;
    };
    let instance_file = UnitFile::parse(&instance, unit_file.text().as_bytes())
        .expect("the same bytes parse for any name");
    if let Ok(instance_options) = FleetOptions::from_unit(&instance, &instance_file) {
        assert_eq!(options.as_ref(), Ok(&instance_options), "{template} differs from {instance}");
    }
}

/// Checks the values [`ContainerSpec::from_unit`] validates.
fn check_spec(spec: &ContainerSpec) {
    assert!(!spec.image.is_empty() && !spec.image.contains(char::is_whitespace), "image");
    assert!(spec.environment.keys().all(|key| !key.is_empty()), "environment names");
    assert!(spec.environment_files.iter().all(|path| path.starts_with('/')), "env files");
    assert!(spec.labels.keys().all(|key| !key.is_empty() && !key.starts_with("flotilla.")));
    for port in &spec.ports {
        assert!(port.host_port != 0 && port.container_port != 0, "{port:?}");
        assert!(port.protocol == "tcp" || port.protocol == "udp", "{port:?}");
    }
    for volume in &spec.volumes {
        assert!(volume.target.starts_with('/') && !volume.source.is_empty(), "{volume:?}");
        assert!(!volume.source.contains("..") && !volume.target.contains(".."), "{volume:?}");
    }
}

/// Renders the parsed file back to text and checks that the text parses to the same thing.
fn check_canonical_round_trip(
    unit_file: &UnitFile,
    options: &Result<FleetOptions, unit::UnitError>,
    spec: &Option<Result<ContainerSpec, flotilla::container::ContainerError>>,
) {
    let canonical = render(unit_file);
    // Joining an input's last line to a newline can push a file at the size limit over it.
    if canonical.len() > MAX_UNIT_FILE_SIZE {
        return;
    }
    let unit_name = unit_file.name();
    let reparsed = match UnitFile::parse(unit_name, canonical.as_bytes()) {
        Ok(reparsed) => reparsed,
        Err(error) => panic!("canonical text {canonical:?} is refused: {error}"),
    };
    assert_eq!(shape(&reparsed), shape(unit_file), "canonical text {canonical:?}");

    // Errors name lines, which differ between the two texts, so only accepted results compare.
    let reparsed_options = FleetOptions::from_unit(unit_name, &reparsed);
    assert_eq!(reparsed_options.is_ok(), options.is_ok(), "canonical text {canonical:?}");
    if let (Ok(options), Ok(reparsed_options)) = (options, &reparsed_options) {
        assert_eq!(options, reparsed_options, "canonical text {canonical:?}");
    }
    if let Some(spec) = spec {
        let reparsed_spec = ContainerSpec::from_unit(&reparsed);
        assert_eq!(reparsed_spec.is_ok(), spec.is_ok(), "canonical text {canonical:?}");
        if let (Ok(spec), Ok(reparsed_spec)) = (spec, &reparsed_spec) {
            assert_eq!(spec, reparsed_spec, "canonical text {canonical:?}");
        }
    }
}

/// One `[Section]` line per section and one `Key=Value` line per entry, in file order.
fn render(unit_file: &UnitFile) -> String {
    let mut text = String::new();
    for section in unit_file.sections() {
        text.push_str(&format!("[{section}]\n"));
        for entry in unit_file.entries(section) {
            text.push_str(&format!("{}={}", entry.key, entry.value));
            // A value can end in a backslash when its line had trailing blanks; a blank keeps
            // the rendered line from continuing onto the next, and is trimmed off again.
            if entry.value.ends_with('\\') {
                text.push(' ');
            }
            text.push('\n');
        }
    }
    text
}

fn shape(unit_file: &UnitFile) -> Shape {
    let entries = |section: &str| {
        let pairs =
            unit_file.entries(section).map(|entry| (entry.key.clone(), entry.value.clone()));
        pairs.collect()
    };
    unit_file.sections().map(|section| (section.to_owned(), entries(section))).collect()
}

/// Checks that an error message is a non-empty single line, and that the `line N:` it may start
/// with names one of the file's `n_lines` lines.
fn check_message(message: &str, n_lines: usize) {
    assert!(!message.is_empty(), "error messages are not empty");
    // The line terminators of Unicode's line breaking rules: LF, VT, FF, CR, NEL, LS and PS.
    let breaks = ['\n', '\u{b}', '\u{c}', '\r', '\u{85}', '\u{2028}', '\u{2029}'];
    assert!(!message.contains(breaks), "error message {message:?} is more than one line");

    let Some(after) = message.strip_prefix("line ") else {
        return;
    };
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    if let Ok(line) = digits.parse::<usize>() {
        assert!((1..=n_lines).contains(&line), "{message:?} names a line of {n_lines}");
    }
}
