//! Unit names, unit files and the `[X-Fleet]` options that steer where a unit runs.
//!
//! Everything here is a pure function of its input: a name is checked against systemd's naming
//! rules, a unit file is split into sections and entries the way systemd reads it (while its
//! original bytes are kept for hashing and for handing to systemd unchanged), and the `[X-Fleet]`
//! section is turned into [`FleetOptions`], refusing options that could never be satisfied.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;

use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use thiserror::Error;

/// The longest unit name systemd accepts, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// The largest unit file we accept, in bytes.
pub const MAX_UNIT_FILE_SIZE: usize = 1_048_576;

/// The unit type suffixes a unit name may end with: systemd's own plus `.container`.
pub const UNIT_SUFFIXES: &[&str] = &[
    ".service",
    ".socket",
    ".device",
    ".mount",
    ".automount",
    ".swap",
    ".target",
    ".path",
    ".timer",
    ".slice",
    ".scope",
    ".container",
];

/// The section of a unit file that holds flotilla's scheduling options.
pub const FLEET_SECTION: &str = "X-Fleet";

/// Punctuation allowed in unit names besides ASCII letters and digits.
const NAME_PUNCTUATION: &str = ":_.@-";

/// The instance a template's own file is checked with, so that `%i` still yields valid values.
const TEMPLATE_PLACEHOLDER: &str = "0";

/// The longest excerpt of an offending line quoted back in an error message, in characters.
const MAX_EXCERPT_CHARS: usize = 80;

/// Why a string is not a valid unit name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NameError {
    /// The name is the empty string.
    #[error("unit name is empty")]
    Empty,
    /// The name is longer than [`MAX_NAME_LEN`] bytes.
    #[error("unit name is {len} bytes long (at most {max} allowed)", max = MAX_NAME_LEN)]
    TooLong {
        /// Length of the refused name in bytes.
        len: usize,
    },
    /// The name contains a character outside letters, digits and `:_.@-`.
    #[error(
        "unit name {name:?} contains '{}' (allowed: letters, digits and \"{}\")",
        .character.escape_debug(),
        NAME_PUNCTUATION
    )]
    BadCharacter {
        /// The refused name.
        name: String,
        /// The first character that is not allowed.
        character: char,
    },
    /// The name contains `..`.
    #[error("unit name {name:?} contains \"..\"")]
    DoubleDot {
        /// The refused name.
        name: String,
    },
    /// The name has no `.` and so no unit type suffix.
    #[error(
        "unit name {name:?} has no unit type suffix (expected one of {})",
        UNIT_SUFFIXES.join(" ")
    )]
    MissingSuffix {
        /// The refused name.
        name: String,
    },
    /// The name ends in a suffix that is not a unit type.
    #[error(
        "unit name {name:?} has unknown suffix {suffix:?} (expected one of {})",
        UNIT_SUFFIXES.join(" ")
    )]
    UnknownSuffix {
        /// The refused name.
        name: String,
        /// The suffix found, with its leading dot.
        suffix: String,
    },
    /// Nothing comes before the suffix, as in `.service`.
    #[error("unit name {name:?} has nothing before its suffix")]
    EmptyStem {
        /// The refused name.
        name: String,
    },
    /// The name contains more than one `@`.
    #[error("unit name {name:?} contains more than one '@'")]
    TooManyAts {
        /// The refused name.
        name: String,
    },
    /// Nothing comes before the `@`, as in `@1.service`.
    #[error("unit name {name:?} has nothing before '@'")]
    EmptyPrefix {
        /// The refused name.
        name: String,
    },
    /// [`UnitName::instantiate`] was called on a name that is not a template.
    #[error("unit name {name:?} is not a template")]
    NotTemplate {
        /// The name that was to be instantiated.
        name: String,
    },
    /// [`UnitName::instantiate`] was given an empty instance.
    #[error("instance name for template {template:?} is empty")]
    EmptyInstance {
        /// The template that was to be instantiated.
        template: String,
    },
}

/// A validated unit name such as `web.service`, `web@.service` or `web@1.service`.
///
/// # Guarantees
///
/// The name is 1 to 255 bytes of ASCII letters, digits and `:_.@-`, contains no `..`, ends in one
/// of [`UNIT_SUFFIXES`] with something before it, and has at most one `@`, which is preceded by
/// a non-empty prefix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UnitName(String);

impl UnitName {
    /// Checks `name` against the unit naming rules.
    ///
    /// # Errors
    ///
    /// Returns the first rule the name breaks, naming the offending character or part.
    pub fn parse(name: &str) -> Result<UnitName, NameError> {
        check_name(name)?;
        Ok(UnitName(name.to_owned()))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The unit type suffix with its leading dot, such as `.service`.
    pub fn suffix(&self) -> &str {
        &self.0[self.suffix_start()..]
    }

    /// True for a template such as `web@.service`.
    pub fn is_template(&self) -> bool {
        self.stem().ends_with('@')
    }

    /// True for an instance of a template such as `web@1.service`.
    pub fn is_instance(&self) -> bool {
        self.instance().is_some()
    }

    /// The instance part of an instance name (`1` for `web@1.service`); `None` otherwise.
    pub fn instance(&self) -> Option<&str> {
        match self.stem().split_once('@') {
            Some((_, instance)) if !instance.is_empty() => Some(instance),
            _ => None,
        }
    }

    /// The part before the `@`, or for names without `@` the name without its suffix.
    pub fn prefix(&self) -> &str {
        let stem = self.stem();
        match stem.split_once('@') {
            Some((prefix, _)) => prefix,
            None => stem,
        }
    }

    /// The template an instance was made from (`web@.service` for `web@1.service`).
    ///
    /// Returns `None` for names that are not instances, templates included.
    pub fn template(&self) -> Option<UnitName> {
        self.instance()?;
        // Dropping the instance keeps every naming rule intact, so no re-validation is needed.
        Some(UnitName(format!("{}@{}", self.prefix(), self.suffix())))
    }

    /// Makes the instance `instance` of this template (`web@1.service` from `web@.service`).
    ///
    /// # Errors
    ///
    /// Fails if this name is not a template, if `instance` is empty, or if the resulting name
    /// breaks a naming rule (for example an instance containing `/` or `@`).
    pub fn instantiate(&self, instance: &str) -> Result<UnitName, NameError> {
        if !self.is_template() {
            return Err(NameError::NotTemplate { name: self.0.clone() });
        }
        if instance.is_empty() {
            return Err(NameError::EmptyInstance { template: self.0.clone() });
        }
        UnitName::parse(&format!("{}@{}{}", self.prefix(), instance, self.suffix()))
    }

    /// The name without its suffix (`web@1` for `web@1.service`).
    fn stem(&self) -> &str {
        &self.0[..self.suffix_start()]
    }

    fn suffix_start(&self) -> usize {
        // Every validated name contains a dot; zero only guards against a broken invariant.
        self.0.rfind('.').unwrap_or(0)
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(&self.0)
    }
}

impl AsRef<str> for UnitName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for UnitName {
    type Err = NameError;

    fn from_str(name: &str) -> Result<UnitName, NameError> {
        UnitName::parse(name)
    }
}

impl TryFrom<String> for UnitName {
    type Error = NameError;

    fn try_from(name: String) -> Result<UnitName, NameError> {
        check_name(&name)?;
        Ok(UnitName(name))
    }
}

impl TryFrom<&str> for UnitName {
    type Error = NameError;

    fn try_from(name: &str) -> Result<UnitName, NameError> {
        UnitName::parse(name)
    }
}

impl From<UnitName> for String {
    fn from(name: UnitName) -> String {
        name.0
    }
}

fn check_name(name: &str) -> Result<(), NameError> {
    let owned = || name.to_owned();
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong { len: name.len() });
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || NAME_PUNCTUATION.contains(c);
    if let Some(character) = name.chars().find(|&c| !allowed(c)) {
        return Err(NameError::BadCharacter { name: owned(), character });
    }
    if name.contains("..") {
        return Err(NameError::DoubleDot { name: owned() });
    }

    let Some(dot) = name.rfind('.') else {
        return Err(NameError::MissingSuffix { name: owned() });
    };
    let (stem, suffix) = name.split_at(dot);
    if !UNIT_SUFFIXES.contains(&suffix) {
        return Err(NameError::UnknownSuffix { name: owned(), suffix: suffix.to_owned() });
    }
    if stem.is_empty() {
        return Err(NameError::EmptyStem { name: owned() });
    }

    if stem.matches('@').count() > 1 {
        return Err(NameError::TooManyAts { name: owned() });
    }
    if stem.starts_with('@') {
        return Err(NameError::EmptyPrefix { name: owned() });
    }
    Ok(())
}

/// Why a unit file or its `[X-Fleet]` options were refused.
///
/// Line numbers count physical lines from 1; an entry continued over several lines is reported
/// at the line where it starts.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    /// The file has no bytes at all.
    #[error("unit file is empty")]
    Empty,
    /// The file is larger than [`MAX_UNIT_FILE_SIZE`].
    #[error("unit file is {size} bytes (at most {max} allowed)", max = MAX_UNIT_FILE_SIZE)]
    TooLarge {
        /// Size of the refused file in bytes.
        size: usize,
    },
    /// The file contains a NUL byte, which no text unit file has.
    #[error("line {line}: unit file contains a NUL byte at byte offset {offset} (binary data?)")]
    Binary {
        /// Line of the first NUL byte.
        line: usize,
        /// Offset of the first NUL byte from the start of the file.
        offset: usize,
    },
    /// The file is not valid UTF-8.
    #[error("line {line}: unit file is not valid UTF-8 at byte offset {offset}")]
    NotUtf8 {
        /// Line of the first invalid byte.
        line: usize,
        /// Offset of the first invalid byte from the start of the file.
        offset: usize,
    },
    /// The file has no `[Section]` header at all.
    #[error("unit file has no sections")]
    NoSections,
    /// A `Key=Value` line comes before the first section header.
    #[error("line {line}: assignment {found:?} comes before any [Section] header")]
    OutsideSection {
        /// Line of the assignment.
        line: usize,
        /// The assignment, shortened if long.
        found: String,
    },
    /// A line is neither an assignment, a section header, a comment nor blank.
    #[error("line {line}: expected \"Key=Value\" or \"[Section]\", found {found:?}")]
    Garbage {
        /// Line of the offending text.
        line: usize,
        /// The offending text, shortened if long.
        found: String,
    },
    /// A line starts with `[` but does not end with `]`.
    #[error("line {line}: section header {found:?} is not closed by ']'")]
    UnterminatedSection {
        /// Line of the header.
        line: usize,
        /// The header, shortened if long.
        found: String,
    },
    /// A section header `[]` names no section.
    #[error("line {line}: section header \"[]\" has an empty name")]
    EmptySectionName {
        /// Line of the header.
        line: usize,
    },
    /// An assignment has nothing before its `=`.
    #[error("line {line}: assignment {found:?} has an empty key")]
    EmptyKey {
        /// Line of the assignment.
        line: usize,
        /// The assignment, shortened if long.
        found: String,
    },
    /// A section spelled `[X-Fleet]` in another case, whose options neither flotilla nor
    /// systemd would read.
    #[error(
        "line {line}: section [{found}] is not [X-Fleet]: section names are case-sensitive, \
         so its options would be ignored"
    )]
    MisspelledFleetSection {
        /// Line of the header.
        line: usize,
        /// The section name as written.
        found: String,
    },
    /// An `[X-Fleet]` key that flotilla does not know.
    #[error("line {line}: unknown [X-Fleet] option {key:?}{hint}")]
    UnknownOption {
        /// Line of the option.
        line: usize,
        /// The key as written.
        key: String,
        /// A suggestion such as ` (did you mean "MachineID"?)`, or empty.
        hint: String,
    },
    /// A `%` specifier other than `%n %N %p %i %%`.
    #[error("line {line}: unknown specifier \"%{specifier}\" in {value:?} (known: %n %N %p %i %%)")]
    UnknownSpecifier {
        /// Line of the option.
        line: usize,
        /// The character after `%`.
        specifier: char,
        /// The value as written.
        value: String,
    },
    /// A value ends in a `%` with nothing after it.
    #[error("line {line}: {value:?} ends in a lone '%' (write %% for a literal percent sign)")]
    LoneSpecifier {
        /// Line of the option.
        line: usize,
        /// The value as written.
        value: String,
    },
    /// A list value opens a double quote that it never closes.
    #[error("line {line}: {key} value {value:?} has an unterminated quote")]
    UnterminatedQuote {
        /// Line of the option.
        line: usize,
        /// The option's canonical name.
        key: &'static str,
        /// The value after specifier resolution.
        value: String,
    },
    /// A single-valued option was given again with a different value.
    #[error("line {line}: {key} is already set to {first:?} on line {first_line}")]
    ConflictingValue {
        /// Line of the second setting.
        line: usize,
        /// The option's canonical name.
        key: &'static str,
        /// The value set first.
        first: String,
        /// Line of the first setting.
        first_line: usize,
    },
    /// A boolean option with a value that is not a boolean.
    #[error("line {line}: {key} expects true/false, yes/no, 1/0 or on/off, found {value:?}")]
    BadBool {
        /// Line of the option.
        line: usize,
        /// The option's canonical name.
        key: &'static str,
        /// The value after specifier resolution.
        value: String,
    },
    /// A `MachineMetadata` pair that is not `key=value` with both sides non-empty.
    #[error("line {line}: MachineMetadata {pair:?} {problem}")]
    BadMetadata {
        /// Line of the option.
        line: usize,
        /// The offending pair.
        pair: String,
        /// What is wrong with it, as a phrase such as `has an empty key`.
        problem: &'static str,
    },
    /// A `MachineID` that is not 1 to 32 lowercase hex digits.
    #[error("line {line}: MachineID {value:?} is not 1 to 32 lowercase hexadecimal digits")]
    BadMachineId {
        /// Line of the option.
        line: usize,
        /// The value after specifier resolution.
        value: String,
    },
    /// A `MachineOf` or `Replaces` value that is not a valid unit name.
    #[error("line {line}: invalid {key} value: {reason}")]
    BadUnitName {
        /// Line of the option.
        line: usize,
        /// The option's canonical name.
        key: &'static str,
        /// Why the value is not a unit name.
        reason: NameError,
    },
    /// A `Conflicts` pattern that is not a valid glob.
    #[error("line {line}: Conflicts pattern {pattern:?} is not a valid glob: {reason}")]
    BadGlob {
        /// Line of the option.
        line: usize,
        /// The refused pattern.
        pattern: String,
        /// The glob parser's explanation.
        reason: String,
    },
    /// `Conflicts` patterns that are valid one by one but too large to compile into one matcher.
    #[error("line {line}: Conflicts patterns are too large to compile together: {reason}")]
    ConflictsTooLarge {
        /// Line of the last `Conflicts` pattern.
        line: usize,
        /// The glob compiler's explanation.
        reason: String,
    },
    /// Options that contradict each other, so no machine could ever satisfy them.
    #[error("line {line}: unit can never be placed: {reason}")]
    Unsatisfiable {
        /// The later of the lines that contradict each other.
        line: usize,
        /// Which options contradict each other.
        reason: String,
    },
}

/// One `Key=Value` assignment of a unit file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The key, with surrounding whitespace trimmed.
    pub key: String,
    /// The value, with surrounding whitespace trimmed and continuations joined; empty for a reset.
    pub value: String,
    /// The line where the assignment starts.
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Section {
    name: String,
    /// The line of the section's first header.
    line: usize,
    entries: Vec<Entry>,
}

/// A parsed unit file that still holds its original text byte for byte.
///
/// Sections that appear more than once are merged, as systemd merges them: their entries are
/// kept in file order under the first appearance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    name: UnitName,
    text: String,
    sections: Vec<Section>,
}

impl UnitFile {
    /// Parses `bytes` as the unit file of `name`, following systemd's syntax.
    ///
    /// Comment lines (`#` or `;` as first non-blank character) are skipped, also in the middle
    /// of a continuation; a line ending in an odd number of backslashes continues on the next
    /// line with its last backslash replaced by a space; `\r\n` counts as `\n`; a leading UTF-8
    /// byte order mark is ignored for parsing but kept in [`UnitFile::text`].
    ///
    /// # Errors
    ///
    /// Refuses empty, oversized, binary and non-UTF-8 files, assignments before any section,
    /// lines that are neither assignment nor section header, malformed headers, empty keys and
    /// files without any section.
    pub fn parse(name: &UnitName, bytes: &[u8]) -> Result<UnitFile, UnitError> {
        if bytes.is_empty() {
            return Err(UnitError::Empty);
        }
        if bytes.len() > MAX_UNIT_FILE_SIZE {
            return Err(UnitError::TooLarge { size: bytes.len() });
        }
        if let Some(offset) = bytes.iter().position(|&byte| byte == 0) {
            return Err(UnitError::Binary { line: line_of_offset(bytes, offset), offset });
        }
        let text = match std::str::from_utf8(bytes) {
            Ok(text) => text,
            Err(error) => {
                let offset = error.valid_up_to();
                return Err(UnitError::NotUtf8 { line: line_of_offset(bytes, offset), offset });
            }
        };

        let sections = parse_sections(text)?;
        if sections.is_empty() {
            return Err(UnitError::NoSections);
        }
        Ok(UnitFile { name: name.clone(), text: text.to_owned(), sections })
    }

    /// The unit this file was parsed for.
    pub fn name(&self) -> &UnitName {
        &self.name
    }

    /// The file's original text, byte for byte.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Section names in order of first appearance.
    pub fn sections(&self) -> impl Iterator<Item = &str> {
        self.sections.iter().map(|section| section.name.as_str())
    }

    /// True if the file has a section called `section`.
    pub fn has_section(&self, section: &str) -> bool {
        self.section(section).is_some()
    }

    /// All entries of `section` in file order, resets and repeats included; none if absent.
    pub fn entries<'file>(
        &'file self,
        section: &str,
    ) -> impl Iterator<Item = &'file Entry> + use<'file> {
        self.section(section).into_iter().flat_map(|section| section.entries.iter())
    }

    /// The unit's `Description=` as systemd shows it: `%n %N %p %i %%` are resolved, and
    /// specifiers only the host can resolve (`%H`, `%m` …) are left as written, as are those
    /// of a template that depend on the instance.
    pub fn description(&self) -> Option<String> {
        let value = self.values("Unit", "Description").last()?.to_string();
        let specifiers = Specifiers::for_unit(&self.name);
        let mut text = String::with_capacity(value.len());
        let mut characters = value.chars();
        while let Some(character) = characters.next() {
            if character != '%' {
                text.push(character);
                continue;
            }
            match characters.next() {
                // A template's own file has no instance to put in.
                Some(specifier) => match specifiers.expand(specifier) {
                    Some((expansion, varies)) if !(varies && specifiers.template) => {
                        text.push_str(expansion);
                    }
                    _ => text.extend(['%', specifier]),
                },
                None => text.push('%'),
            }
        }
        Some(text)
    }

    /// The effective values of a list-valued `key`: an empty assignment clears what came before.
    pub fn values(&self, section: &str, key: &str) -> Vec<&str> {
        let mut values = Vec::new();
        for entry in self.entries(section).filter(|entry| entry.key == key) {
            if entry.value.is_empty() {
                values.clear();
            } else {
                values.push(entry.value.as_str());
            }
        }
        values
    }

    /// The effective value of a single-valued `key`: the last one, unless that is a reset.
    pub fn value(&self, section: &str, key: &str) -> Option<&str> {
        let last = self.entries(section).filter(|entry| entry.key == key).last()?;
        match last.value.as_str() {
            "" => None,
            value => Some(value),
        }
    }

    /// The full lowercase hex SHA-256 of [`UnitFile::text`].
    pub fn hash(&self) -> String {
        const HEX_DIGITS: &[u8; 16] = b"0123456789abcdef";
        let digest = Sha256::digest(self.text.as_bytes());
        let mut hex = String::with_capacity(digest.len() * 2);
        for byte in digest.iter() {
            hex.push(char::from(HEX_DIGITS[usize::from(byte >> 4)]));
            hex.push(char::from(HEX_DIGITS[usize::from(byte & 0x0f)]));
        }
        hex
    }

    fn section(&self, section: &str) -> Option<&Section> {
        self.sections.iter().find(|candidate| candidate.name == section)
    }
}

fn line_of_offset(bytes: &[u8], offset: usize) -> usize {
    bytes[..offset].iter().filter(|&&byte| byte == b'\n').count() + 1
}

/// Whitespace as systemd strips it around keys, values and lines.
fn is_blank(character: char) -> bool {
    matches!(character, ' ' | '\t' | '\r' | '\n')
}

/// Shortens `text` for quoting in an error message.
fn excerpt(text: &str) -> String {
    match text.char_indices().nth(MAX_EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Joins continued lines into logical lines, each with the number of its first physical line.
fn logical_lines(text: &str) -> Vec<(usize, String)> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = Vec::new();
    let mut pending: Option<(usize, String)> = None;

    for (index, raw) in text.split('\n').enumerate() {
        let line = raw.strip_suffix('\r').unwrap_or(raw);
        // Comment lines are dropped before continuations are joined, so a comment in the middle
        // of a continued value neither ends it nor becomes part of it.
        if line.trim_start_matches(is_blank).starts_with(['#', ';']) {
            continue;
        }

        let (start, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
        joined.push_str(line);
        let trailing_backslashes = line.chars().rev().take_while(|&c| c == '\\').count();
        if trailing_backslashes % 2 == 1 {
            joined.pop();
            joined.push(' ');
            pending = Some((start, joined));
        } else {
            lines.push((start, joined));
        }
    }

    // A continuation still open at the end of the file is parsed as it stands.
    lines.extend(pending);
    lines
}

fn parse_sections(text: &str) -> Result<Vec<Section>, UnitError> {
    let mut sections: Vec<Section> = Vec::new();
    // Where each section is in `sections`, so that finding a repeated header's section does
    // not take a search through every section before it.
    let mut index_of: HashMap<String, usize> = HashMap::new();
    let mut current: Option<usize> = None;

    for (line, logical) in logical_lines(text) {
        let content = logical.trim_matches(is_blank);
        if content.is_empty() {
            continue;
        }

        if content.starts_with('[') {
            let Some(name) = content.strip_prefix('[').and_then(|rest| rest.strip_suffix(']'))
            else {
                return Err(UnitError::UnterminatedSection { line, found: excerpt(content) });
            };
            if name.is_empty() {
                return Err(UnitError::EmptySectionName { line });
            }
            let index = match index_of.get(name) {
                Some(&index) => index,
                None => {
                    sections.push(Section { name: name.to_owned(), line, entries: Vec::new() });
                    index_of.insert(name.to_owned(), sections.len() - 1);
                    sections.len() - 1
                }
            };
            current = Some(index);
            continue;
        }

        let Some((key, value)) = content.split_once('=') else {
            return Err(UnitError::Garbage { line, found: excerpt(content) });
        };
        let Some(index) = current else {
            return Err(UnitError::OutsideSection { line, found: excerpt(content) });
        };
        let key = key.trim_matches(is_blank);
        if key.is_empty() {
            return Err(UnitError::EmptyKey { line, found: excerpt(content) });
        }
        let value = value.trim_matches(is_blank);
        let entry = Entry { key: key.to_owned(), value: value.to_owned(), line };
        sections[index].entries.push(entry);
    }
    Ok(sections)
}

/// Scheduling options read from a unit's `[X-Fleet]` section, specifiers resolved.
///
/// # Guarantees
///
/// Values returned by [`FleetOptions::from_unit`] are well-formed (valid names, globs and machine
/// id prefixes) and free of the contradictions listed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetOptions {
    /// Run only on a machine whose id starts with this lowercase hex prefix.
    pub machine_id: Option<String>,
    /// Run on the same machine as each of these units.
    pub machine_of: Vec<UnitName>,
    /// Run only where every key matches; several values of one key are alternatives.
    pub metadata: BTreeMap<String, Vec<String>>,
    /// Never share a machine with units whose names match these globs (the unit itself aside).
    pub conflicts: Vec<String>,
    /// Run on every machine that matches, rather than on one.
    pub global: bool,
    /// Take the machine of these units, which then move elsewhere.
    pub replaces: Vec<UnitName>,
    /// Stop the unit when its host can no longer renew its lease (the default). `Fencing=false`
    /// keeps it running through a partition, at the price of a possible second copy elsewhere.
    pub fencing: bool,
}

impl Default for FleetOptions {
    /// No constraints, fenced.
    fn default() -> FleetOptions {
        FleetOptions {
            machine_id: None,
            machine_of: Vec::new(),
            metadata: BTreeMap::new(),
            conflicts: Vec::new(),
            global: false,
            replaces: Vec::new(),
            fencing: true,
        }
    }
}

impl FleetOptions {
    /// Reads the `[X-Fleet]` section of `file`, the unit file of `name`.
    ///
    /// Values may use the specifiers `%n` (full name), `%N` (name without suffix), `%p`
    /// (prefix), `%i` (instance) and `%%`. List-valued options (`MachineOf`, `MachineMetadata`,
    /// `Conflicts`, `Replaces`) may hold several space-separated items, each optionally in
    /// double quotes; an empty assignment clears the option. fleet's `X-Conflicts`,
    /// `X-ConditionMachineID`, `X-ConditionMachineOf` and `X-ConditionMachineMetadata` are
    /// accepted as aliases.
    ///
    /// # Errors
    ///
    /// Refuses unknown keys and specifiers, malformed values, a single-valued option set twice
    /// to different values, and options that can never be satisfied together: `Global` with
    /// `MachineOf`, `Replaces` or `MachineID`; `MachineOf` or `Replaces` naming the unit itself
    /// or a template; and a `MachineOf` target that is also replaced or matched by `Conflicts`.
    ///
    /// # Caveats
    ///
    /// A template's own file is checked as if for a placeholder instance: syntax is checked in
    /// full, but checks that depend on the instance (self-references, and pairs involving `%i`,
    /// `%n` or `%N`) are left to the instances. The options returned for a template are for
    /// checking only and are not meant for placement.
    pub fn from_unit(name: &UnitName, file: &UnitFile) -> Result<FleetOptions, UnitError> {
        if let Some(section) = file.sections.iter().find(|section| {
            section.name != FLEET_SECTION && section.name.eq_ignore_ascii_case(FLEET_SECTION)
        }) {
            let found = section.name.clone();
            return Err(UnitError::MisspelledFleetSection { line: section.line, found });
        }
        let specifiers = Specifiers::for_unit(name);
        let mut collected = Collected::default();
        for entry in file.entries(FLEET_SECTION) {
            let key = OptionKey::from_key(&entry.key).ok_or_else(|| unknown_option(entry))?;
            // An empty assignment clears the option, as it would in a systemd section.
            if entry.value.is_empty() {
                collected.reset(key);
                continue;
            }
            let value = specifiers.resolve(entry)?;
            collected.apply(key, entry.line, value)?;
        }

        collected.check_satisfiable(name)?;
        Ok(collected.into_options())
    }

    /// True if a machine with this id satisfies `MachineID` (always true when it is unset).
    pub fn matches_machine_id(&self, machine_id: &str) -> bool {
        match &self.machine_id {
            Some(prefix) => machine_id.starts_with(prefix.as_str()),
            None => true,
        }
    }

    /// True if a machine with this metadata satisfies every `MachineMetadata` key.
    pub fn matches_metadata(&self, metadata: &BTreeMap<String, String>) -> bool {
        self.metadata.iter().all(|(key, alternatives)| {
            metadata.get(key).is_some_and(|value| alternatives.contains(value))
        })
    }

    /// Compiles the `Conflicts` patterns into one matcher.
    ///
    /// # Errors
    ///
    /// Fails only for patterns that did not come through [`FleetOptions::from_unit`].
    pub fn conflict_set(&self) -> Result<GlobSet, globset::Error> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &self.conflicts {
            builder.add(Glob::new(pattern)?);
        }
        builder.build()
    }
}

/// Why [`verify`] refused a unit.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VerifyError {
    /// The file name is not a valid unit name.
    #[error(transparent)]
    Name(#[from] NameError),
    /// The file or its `[X-Fleet]` options were refused.
    #[error("{name}: {error}")]
    Unit {
        /// The unit whose file was refused.
        name: UnitName,
        /// What was wrong with it.
        error: UnitError,
    },
}

/// Checks a unit file end to end: its name (the last `/`-separated part of `path_name`), its
/// syntax and its `[X-Fleet]` options.
///
/// # Errors
///
/// Returns the first problem found, in that order.
pub fn verify(
    path_name: &str,
    bytes: &[u8],
) -> Result<(UnitName, UnitFile, FleetOptions), VerifyError> {
    let file_name = path_name.rsplit('/').next().unwrap_or(path_name);
    let name = UnitName::parse(file_name)?;
    let in_unit = |error| VerifyError::Unit { name: name.clone(), error };
    let file = UnitFile::parse(&name, bytes).map_err(in_unit)?;
    let options = FleetOptions::from_unit(&name, &file).map_err(in_unit)?;
    Ok((name, file, options))
}

/// The `[X-Fleet]` options flotilla knows, whatever alias they were written with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OptionKey {
    MachineId,
    MachineOf,
    MachineMetadata,
    Conflicts,
    Global,
    Replaces,
    Fencing,
}

impl OptionKey {
    const ALL: [OptionKey; 7] = [
        OptionKey::MachineId,
        OptionKey::MachineOf,
        OptionKey::MachineMetadata,
        OptionKey::Conflicts,
        OptionKey::Global,
        OptionKey::Replaces,
        OptionKey::Fencing,
    ];

    fn from_key(key: &str) -> Option<OptionKey> {
        let key = match key {
            "X-ConditionMachineID" => "MachineID",
            "X-ConditionMachineOf" => "MachineOf",
            "X-ConditionMachineMetadata" => "MachineMetadata",
            "X-Conflicts" => "Conflicts",
            other => other,
        };
        OptionKey::ALL.into_iter().find(|option| option.name() == key)
    }

    fn name(self) -> &'static str {
        match self {
            OptionKey::MachineId => "MachineID",
            OptionKey::MachineOf => "MachineOf",
            OptionKey::MachineMetadata => "MachineMetadata",
            OptionKey::Conflicts => "Conflicts",
            OptionKey::Global => "Global",
            OptionKey::Replaces => "Replaces",
            OptionKey::Fencing => "Fencing",
        }
    }
}

fn unknown_option(entry: &Entry) -> UnitError {
    let suggestion =
        OptionKey::ALL.into_iter().find(|option| option.name().eq_ignore_ascii_case(&entry.key));
    let hint = match suggestion {
        Some(option) => format!(" (did you mean {:?}?)", option.name()),
        None => String::new(),
    };
    UnitError::UnknownOption { line: entry.line, key: entry.key.clone(), hint }
}

/// What the specifiers of one unit expand to.
struct Specifiers {
    full: String,
    without_suffix: String,
    prefix: String,
    instance: String,
    /// For a template, `%n`, `%N` and `%i` stand for a placeholder instance.
    template: bool,
}

/// A value after specifier resolution.
struct Resolved {
    text: String,
    /// True if the text came from a placeholder instance and so differs between instances.
    instance_dependent: bool,
}

impl Specifiers {
    fn for_unit(name: &UnitName) -> Specifiers {
        let template = name.is_template();
        let instance = match name.instance() {
            Some(instance) => instance,
            None if template => TEMPLATE_PLACEHOLDER,
            None => "",
        };
        let without_suffix = if name.as_str().contains('@') {
            format!("{}@{}", name.prefix(), instance)
        } else {
            name.prefix().to_owned()
        };
        Specifiers {
            full: format!("{without_suffix}{}", name.suffix()),
            without_suffix,
            prefix: name.prefix().to_owned(),
            instance: instance.to_owned(),
            template,
        }
    }

    /// What `%specifier` stands for, and whether it differs between a template's instances
    /// (only %p and %% expand the same way for all of them); `None` for one flotilla does not
    /// know.
    fn expand(&self, specifier: char) -> Option<(&str, bool)> {
        match specifier {
            '%' => Some(("%", false)),
            'p' => Some((self.prefix.as_str(), false)),
            'n' => Some((self.full.as_str(), true)),
            'N' => Some((self.without_suffix.as_str(), true)),
            'i' => Some((self.instance.as_str(), true)),
            _ => None,
        }
    }

    fn resolve(&self, entry: &Entry) -> Result<Resolved, UnitError> {
        let mut text = String::with_capacity(entry.value.len());
        let mut instance_dependent = false;
        let mut characters = entry.value.chars();
        while let Some(character) = characters.next() {
            if character != '%' {
                text.push(character);
                continue;
            }
            let (expansion, varies) = match characters.next() {
                Some(specifier) => self.expand(specifier).ok_or_else(|| {
                    let value = entry.value.clone();
                    UnitError::UnknownSpecifier { line: entry.line, specifier, value }
                })?,
                None => {
                    let value = entry.value.clone();
                    return Err(UnitError::LoneSpecifier { line: entry.line, value });
                }
            };
            text.push_str(expansion);
            instance_dependent |= self.template && varies;
        }
        Ok(Resolved { text, instance_dependent })
    }
}

/// An option value together with where it came from.
#[derive(Debug, Clone)]
struct Located<T> {
    value: T,
    line: usize,
    instance_dependent: bool,
}

impl<T> Located<T> {
    fn new(value: T, line: usize, instance_dependent: bool) -> Located<T> {
        Located { value, line, instance_dependent }
    }
}

/// Options gathered entry by entry, before the cross-option checks.
#[derive(Default)]
struct Collected {
    machine_id: Option<Located<String>>,
    global: Option<Located<bool>>,
    fencing: Option<Located<bool>>,
    machine_of: Vec<Located<UnitName>>,
    metadata: Vec<Located<(String, String)>>,
    conflicts: Vec<Located<Glob>>,
    replaces: Vec<Located<UnitName>>,
}

impl Collected {
    fn apply(&mut self, key: OptionKey, line: usize, value: Resolved) -> Result<(), UnitError> {
        let dependent = value.instance_dependent;
        let text = value.text.as_str();
        match key {
            OptionKey::MachineId => {
                let machine_id = Located::new(parse_machine_id(line, text)?, line, dependent);
                set_once(&mut self.machine_id, key, machine_id, String::clone)
            }
            OptionKey::Global => {
                let global = Located::new(parse_bool(line, key, text)?, line, dependent);
                set_once(&mut self.global, key, global, bool::to_string)
            }
            OptionKey::Fencing => {
                let fencing = Located::new(parse_bool(line, key, text)?, line, dependent);
                set_once(&mut self.fencing, key, fencing, bool::to_string)
            }
            OptionKey::MachineOf => {
                for item in split_items(line, key, text)? {
                    let target = parse_unit_name(line, key, &item)?;
                    self.machine_of.push(Located::new(target, line, dependent));
                }
                Ok(())
            }
            OptionKey::Replaces => {
                for item in split_items(line, key, text)? {
                    let target = parse_unit_name(line, key, &item)?;
                    self.replaces.push(Located::new(target, line, dependent));
                }
                Ok(())
            }
            OptionKey::MachineMetadata => {
                for item in split_items(line, key, text)? {
                    let pair = parse_metadata(line, item)?;
                    self.metadata.push(Located::new(pair, line, dependent));
                }
                Ok(())
            }
            OptionKey::Conflicts => {
                for pattern in split_items(line, key, text)? {
                    let glob = match Glob::new(&pattern) {
                        Ok(glob) => glob,
                        Err(error) => {
                            let reason = glob_error_reason(&error);
                            return Err(UnitError::BadGlob { line, pattern, reason });
                        }
                    };
                    self.conflicts.push(Located::new(glob, line, dependent));
                }
                Ok(())
            }
        }
    }

    fn reset(&mut self, key: OptionKey) {
        match key {
            OptionKey::MachineId => self.machine_id = None,
            OptionKey::Global => self.global = None,
            OptionKey::Fencing => self.fencing = None,
            OptionKey::MachineOf => self.machine_of.clear(),
            OptionKey::MachineMetadata => self.metadata.clear(),
            OptionKey::Conflicts => self.conflicts.clear(),
            OptionKey::Replaces => self.replaces.clear(),
        }
    }

    fn check_satisfiable(&self, name: &UnitName) -> Result<(), UnitError> {
        let unsatisfiable = |line, reason: String| Err(UnitError::Unsatisfiable { line, reason });

        if let Some(global) = self.global.as_ref().filter(|global| global.value) {
            let later = |line: usize| line.max(global.line);
            if let Some(target) = self.machine_of.first() {
                return unsatisfiable(later(target.line), "Global=true rules out MachineOf".into());
            }
            if let Some(target) = self.replaces.first() {
                return unsatisfiable(later(target.line), "Global=true rules out Replaces".into());
            }
            if let Some(machine_id) = &self.machine_id {
                let line = later(machine_id.line);
                return unsatisfiable(line, "Global=true rules out MachineID".into());
            }
        }

        for (key, targets) in [("MachineOf", &self.machine_of), ("Replaces", &self.replaces)] {
            for target in targets {
                if target.value.is_template() {
                    let reason = format!(
                        "{key} names template {:?}, which never runs",
                        target.value.as_str()
                    );
                    return unsatisfiable(target.line, reason);
                }
                // A template's placeholder instance may differ from every real instance.
                if !name.is_template() && target.value == *name {
                    return unsatisfiable(target.line, format!("{key} names the unit itself"));
                }
            }
        }

        // Compiled once, from every pattern, the way placement compiles them.
        let conflicts = self.conflict_set()?;
        for target in &self.machine_of {
            for replaced in &self.replaces {
                if comparable(target, replaced) && target.value == replaced.value {
                    let reason = format!(
                        "{:?} is both a MachineOf target and replaced by this unit",
                        target.value.as_str()
                    );
                    return unsatisfiable(target.line.max(replaced.line), reason);
                }
            }
            // The indices come in ascending order, so the first match in the file is reported.
            for index in conflicts.matches(target.value.as_str()) {
                let pattern = &self.conflicts[index];
                if comparable(target, pattern) {
                    let reason = format!(
                        "MachineOf target {:?} matches Conflicts pattern {:?}",
                        target.value.as_str(),
                        pattern.value.glob()
                    );
                    return unsatisfiable(target.line.max(pattern.line), reason);
                }
            }
        }
        Ok(())
    }

    /// Compiles the `Conflicts` patterns into one matcher, as [`FleetOptions::conflict_set`]
    /// does, so that the options accepted here compile there too.
    ///
    /// Each pattern is a valid glob on its own, but together they can outgrow the size limit of
    /// globset's regex compiler.
    fn conflict_set(&self) -> Result<GlobSet, UnitError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in &self.conflicts {
            builder.add(pattern.value.clone());
        }
        builder.build().map_err(|error| UnitError::ConflictsTooLarge {
            // An empty set always compiles, so there is a last pattern.
            line: self.conflicts.last().map_or(0, |pattern| pattern.line),
            reason: glob_error_reason(&error),
        })
    }

    fn into_options(self) -> FleetOptions {
        let mut metadata: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for pair in self.metadata {
            let (key, value) = pair.value;
            let alternatives = metadata.entry(key).or_default();
            if !alternatives.contains(&value) {
                alternatives.push(value);
            }
        }
        FleetOptions {
            machine_id: self.machine_id.map(|machine_id| machine_id.value),
            machine_of: self.machine_of.into_iter().map(|target| target.value).collect(),
            metadata,
            conflicts: self
                .conflicts
                .into_iter()
                .map(|pattern| pattern.value.glob().to_owned())
                .collect(),
            global: self.global.is_some_and(|global| global.value),
            replaces: self.replaces.into_iter().map(|target| target.value).collect(),
            fencing: self.fencing.is_none_or(|fencing| fencing.value),
        }
    }
}

/// Two values can be compared for a contradiction unless either depends on the instance.
fn comparable<A, B>(left: &Located<A>, right: &Located<B>) -> bool {
    !left.instance_dependent && !right.instance_dependent
}

fn set_once<T: PartialEq>(
    slot: &mut Option<Located<T>>,
    key: OptionKey,
    value: Located<T>,
    show: impl Fn(&T) -> String,
) -> Result<(), UnitError> {
    match slot {
        Some(first) if first.value != value.value => Err(UnitError::ConflictingValue {
            line: value.line,
            key: key.name(),
            first: show(&first.value),
            first_line: first.line,
        }),
        Some(_) => Ok(()),
        None => {
            *slot = Some(value);
            Ok(())
        }
    }
}

/// A duration as whole seconds (`30`) or with units (`1m30s`, `500ms`).
pub fn parse_seconds(text: &str) -> Result<std::time::Duration, String> {
    match text.parse::<u64>() {
        Ok(seconds) => Ok(std::time::Duration::from_secs(seconds)),
        // humantime's own words ("expected number at 0") do not say what was wanted.
        Err(_) => humantime::parse_duration(text).map_err(|_| {
            "not a duration: give whole seconds (30) or units (1m30s, 500ms)".to_string()
        }),
    }
}

/// Why globset refused a glob, as one line.
///
/// globset quotes the ends of an invalid range as raw characters, and a carriage return there
/// would break the message in two; they are escaped like every other value we quote.
fn glob_error_reason(error: &globset::Error) -> String {
    match error.kind() {
        globset::ErrorKind::InvalidRange(start, end) => {
            format!("invalid range; '{}' > '{}'", start.escape_debug(), end.escape_debug())
        }
        kind => kind.to_string(),
    }
}

fn parse_machine_id(line: usize, value: &str) -> Result<String, UnitError> {
    let is_hex = |c: char| c.is_ascii_digit() || ('a'..='f').contains(&c);
    if value.is_empty() || value.len() > 32 || !value.chars().all(is_hex) {
        return Err(UnitError::BadMachineId { line, value: value.to_owned() });
    }
    Ok(value.to_owned())
}

fn parse_bool(line: usize, key: OptionKey, value: &str) -> Result<bool, UnitError> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "yes" | "1" | "on" => Ok(true),
        "false" | "no" | "0" | "off" => Ok(false),
        _ => Err(UnitError::BadBool { line, key: key.name(), value: value.to_owned() }),
    }
}

fn parse_unit_name(line: usize, key: OptionKey, item: &str) -> Result<UnitName, UnitError> {
    UnitName::parse(item).map_err(|reason| UnitError::BadUnitName { line, key: key.name(), reason })
}

fn parse_metadata(line: usize, pair: String) -> Result<(String, String), UnitError> {
    let problem = match pair.split_once('=') {
        None => "is not key=value",
        Some(("", _)) => "has an empty key",
        Some((_, "")) => "has an empty value",
        Some((key, value)) => return Ok((key.to_owned(), value.to_owned())),
    };
    Err(UnitError::BadMetadata { line, pair, problem })
}

/// Splits a list value at whitespace; double quotes group an item and are removed.
fn split_items(line: usize, key: OptionKey, value: &str) -> Result<Vec<String>, UnitError> {
    let mut items = Vec::new();
    let mut current = String::new();
    let mut in_item = false;
    let mut quoted = false;
    for character in value.chars() {
        match character {
            '"' => {
                quoted = !quoted;
                in_item = true;
            }
            c if is_blank(c) && !quoted => {
                if in_item {
                    items.push(std::mem::take(&mut current));
                }
                in_item = false;
            }
            c => {
                current.push(c);
                in_item = true;
            }
        }
    }
    if quoted {
        let value = value.to_owned();
        return Err(UnitError::UnterminatedQuote { line, key: key.name(), value });
    }
    if in_item {
        items.push(current);
    }
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALLOWED: &str = "(allowed: letters, digits and \":_.@-\")";

    fn name(text: &str) -> UnitName {
        UnitName::parse(text).expect("test unit names are valid")
    }

    fn file(text: &str) -> UnitFile {
        UnitFile::parse(&name("test.service"), text.as_bytes()).expect("test unit file parses")
    }

    /// Parses `[X-Fleet]` options for `unit`; the first `fleet_lines` line is line 5.
    fn options_for(unit: &str, fleet_lines: &str) -> Result<FleetOptions, UnitError> {
        let unit_name = name(unit);
        let text = format!("[Unit]\nDescription=test\n\n[X-Fleet]\n{fleet_lines}\n");
        let unit_file = UnitFile::parse(&unit_name, text.as_bytes())?;
        FleetOptions::from_unit(&unit_name, &unit_file)
    }

    fn error_for(unit: &str, fleet_lines: &str) -> String {
        match options_for(unit, fleet_lines) {
            Ok(options) => panic!("{fleet_lines:?} was accepted as {options:?}"),
            Err(error) => error.to_string(),
        }
    }

    #[test]
    fn name_validation_accepts_names_systemd_accepts() {
        let longest = format!("{}.service", "a".repeat(MAX_NAME_LEN - ".service".len()));
        let cases = [
            "web.service",
            "web@.service",
            "web@1.service",
            "db@a.b.service",
            "a:b_c-d.socket",
            "-.mount",
            "home.automount",
            "x.device",
            "x.swap",
            "x.target",
            "x.path",
            "x.timer",
            "x.slice",
            "x.scope",
            "nginx.container",
            longest.as_str(),
        ];
        for case in cases {
            assert_eq!(UnitName::parse(case).map(String::from), Ok(case.to_owned()), "{case}");
        }
    }

    #[test]
    fn name_validation_refusals_name_the_reason() {
        let too_long = format!("{}.service", "a".repeat(MAX_NAME_LEN + 1 - ".service".len()));
        let suffixes = UNIT_SUFFIXES.join(" ");
        let cases = [
            ("", "unit name is empty".to_owned()),
            (too_long.as_str(), "unit name is 256 bytes long (at most 255 allowed)".to_owned()),
            ("a/b.service", format!("unit name \"a/b.service\" contains '/' {ALLOWED}")),
            ("../x.service", format!("unit name \"../x.service\" contains '/' {ALLOWED}")),
            ("a b.service", format!("unit name \"a b.service\" contains ' ' {ALLOWED}")),
            ("x.service\n", format!("unit name \"x.service\\n\" contains '\\n' {ALLOWED}")),
            (
                "b\u{7}.service",
                format!("unit name \"b\\u{{7}}.service\" contains '\\u{{7}}' {ALLOWED}"),
            ),
            ("wéb.service", format!("unit name \"wéb.service\" contains 'é' {ALLOWED}")),
            ("a..b.service", "unit name \"a..b.service\" contains \"..\"".to_owned()),
            (
                "web",
                format!("unit name \"web\" has no unit type suffix (expected one of {suffixes})"),
            ),
            (
                "web.exe",
                format!(
                    "unit name \"web.exe\" has unknown suffix \".exe\" (expected one of {suffixes})"
                ),
            ),
            (
                "web.Service",
                format!(
                    "unit name \"web.Service\" has unknown suffix \".Service\" (expected one of \
                     {suffixes})"
                ),
            ),
            (".service", "unit name \".service\" has nothing before its suffix".to_owned()),
            (
                "web@@1.service",
                "unit name \"web@@1.service\" contains more than one '@'".to_owned(),
            ),
            ("a@b@c.service", "unit name \"a@b@c.service\" contains more than one '@'".to_owned()),
            ("@.service", "unit name \"@.service\" has nothing before '@'".to_owned()),
            ("@1.service", "unit name \"@1.service\" has nothing before '@'".to_owned()),
        ];
        for (input, expected) in cases {
            let error = UnitName::parse(input).expect_err(input);
            assert_eq!(error.to_string(), expected, "{input:?}");
        }
    }

    #[test]
    fn name_parts_follow_template_and_instance_shape() {
        // (name, suffix, prefix, instance, is_template, template)
        let cases = [
            ("web.service", ".service", "web", None, false, None),
            ("web@.service", ".service", "web", None, true, None),
            ("web@1.service", ".service", "web", Some("1"), false, Some("web@.service")),
            ("db@a.b.socket", ".socket", "db", Some("a.b"), false, Some("db@.socket")),
            ("app.v2.container", ".container", "app.v2", None, false, None),
        ];
        for (input, suffix, prefix, instance, is_template, template) in cases {
            let unit = name(input);
            assert_eq!(unit.as_str(), input);
            assert_eq!(unit.suffix(), suffix, "{input}");
            assert_eq!(unit.prefix(), prefix, "{input}");
            assert_eq!(unit.instance(), instance, "{input}");
            assert_eq!(unit.is_template(), is_template, "{input}");
            assert_eq!(unit.is_instance(), instance.is_some(), "{input}");
            assert_eq!(unit.template(), template.map(name), "{input}");
        }
    }

    #[test]
    fn instantiate_makes_instances_of_templates_only() {
        let cases = [
            ("web@.service", "1", Ok("web@1.service")),
            ("web@.service", "blue.eu", Ok("web@blue.eu.service")),
            ("web@.service", "", Err("instance name for template \"web@.service\" is empty")),
            ("web.service", "1", Err("unit name \"web.service\" is not a template")),
            ("web@1.service", "2", Err("unit name \"web@1.service\" is not a template")),
            (
                "web@.service",
                "a@b",
                Err("unit name \"web@a@b.service\" contains more than one '@'"),
            ),
        ];
        for (template, instance, expected) in cases {
            let result = name(template).instantiate(instance);
            let result = result.map(String::from).map_err(|error| error.to_string());
            let expected = expected.map(str::to_owned).map_err(str::to_owned);
            assert_eq!(result, expected, "{template} with {instance:?}");
        }
        let bad_char = name("web@.service").instantiate("a/b").expect_err("slash");
        assert_eq!(
            bad_char.to_string(),
            format!("unit name \"web@a/b.service\" contains '/' {ALLOWED}")
        );
    }

    #[test]
    fn unit_name_converts_only_through_validation() {
        use serde::de::IntoDeserializer;
        use serde::de::value::{Error as ValueError, StrDeserializer};

        let accepted: StrDeserializer<'_, ValueError> = "web@1.service".into_deserializer();
        assert_eq!(UnitName::deserialize(accepted), Ok(name("web@1.service")));
        let refused: StrDeserializer<'_, ValueError> = "web".into_deserializer();
        let error = UnitName::deserialize(refused).expect_err("no suffix");
        assert!(error.to_string().contains("has no unit type suffix"), "{error}");

        let unit = name("web.service");
        assert_eq!(unit.to_string(), "web.service");
        assert_eq!(unit.as_ref(), "web.service");
        assert_eq!("web.service".parse::<UnitName>(), Ok(unit.clone()));
        assert_eq!(UnitName::try_from("web.service".to_owned()), Ok(unit.clone()));
        assert_eq!(String::from(unit), "web.service");
        assert!(UnitName::try_from("a b.service").is_err());
    }

    #[test]
    fn parse_reads_sections_entries_and_keeps_the_text() {
        let text = "# leading comment\n\
                    [Unit]\n\
                    Description = the web server \n\
                    \t; indented comment\n\
                    After=network.target\n\
                    \n\
                    [Service]\n\
                    ExecStart=/bin/web --port=80\n\
                    Environment=A=1\n\
                    Environment=B=2\n";
        let unit_file = file(text);

        assert_eq!(unit_file.text(), text);
        assert_eq!(unit_file.name(), &name("test.service"));
        assert_eq!(unit_file.sections().collect::<Vec<_>>(), ["Unit", "Service"]);
        assert!(unit_file.has_section("Service"));
        assert!(!unit_file.has_section("X-Fleet"));
        assert_eq!(unit_file.value("Unit", "Description"), Some("the web server"));
        assert_eq!(unit_file.value("Service", "ExecStart"), Some("/bin/web --port=80"));
        assert_eq!(unit_file.values("Service", "Environment"), ["A=1", "B=2"]);
        assert_eq!(unit_file.values("Missing", "Environment"), Vec::<&str>::new());

        let entries: Vec<_> = unit_file
            .entries("Unit")
            .map(|entry| (entry.key.as_str(), entry.value.as_str(), entry.line))
            .collect();
        assert_eq!(entries, [("Description", "the web server", 3), ("After", "network.target", 5)]);
    }

    #[test]
    fn continuation_joins_lines_as_systemd_does() {
        let cases = [
            ("backslash becomes a space", "K=a\\\nb", "a b"),
            ("whitespace is kept inside", "K=a \\\n  b", "a    b"),
            ("three lines", "K=a\\\nb\\\nc", "a b c"),
            ("hash comment inside is skipped", "K=a\\\n# note\nb", "a b"),
            ("semicolon comment inside is skipped", "K=a\\\n  ; note\nb", "a b"),
            ("even backslashes do not continue", "K=a\\\\\nL=b", "a\\\\"),
            ("odd backslashes continue", "K=a\\\\\\\nb", "a\\\\ b"),
            ("continuation at end of file", "K=a\\", "a"),
            ("blank line ends it", "K=a\\\n\nL=b", "a"),
            ("space after backslash does not continue", "K=a\\ \nL=b", "a\\"),
            ("crlf endings", "K=a\\\r\nb\r\n", "a b"),
        ];
        for (behaviour, body, expected) in cases {
            let unit_file = file(&format!("[S]\n{body}\n"));
            assert_eq!(unit_file.value("S", "K"), Some(expected), "{behaviour}");
        }
    }

    #[test]
    fn entries_are_numbered_by_their_first_line() {
        let unit_file = file("[S]\nA=1\\\n# c\n2\nB=3\n");
        let lines: Vec<_> =
            unit_file.entries("S").map(|entry| (entry.key.as_str(), entry.line)).collect();
        assert_eq!(lines, [("A", 2), ("B", 5)]);
    }

    #[test]
    fn repeated_keys_keep_order_and_empty_assignment_resets() {
        let unit_file = file("[S]\nL=a\nL=b\nL=\nL=c\nL=d\nOne=x\nOne=\n");
        let all: Vec<_> = unit_file
            .entries("S")
            .filter(|entry| entry.key == "L")
            .map(|entry| entry.value.as_str())
            .collect();
        assert_eq!(all, ["a", "b", "", "c", "d"]);
        assert_eq!(unit_file.values("S", "L"), ["c", "d"]);
        assert_eq!(unit_file.value("S", "One"), None);
        assert_eq!(unit_file.values("S", "One"), Vec::<&str>::new());
    }

    #[test]
    fn crlf_line_endings_parse_like_lf_and_text_is_kept() {
        let lf = "[Unit]\nDescription=x\n\n[Service]\nExecStart=/bin/true\n";
        let crlf = lf.replace('\n', "\r\n");
        let (lf_file, crlf_file) = (file(lf), file(&crlf));
        assert_eq!(crlf_file.text(), crlf);
        for section in ["Unit", "Service"] {
            assert!(lf_file.entries(section).eq(crlf_file.entries(section)), "{section}");
        }
        assert_ne!(lf_file.hash(), crlf_file.hash());
    }

    #[test]
    fn repeated_sections_merge_in_file_order() {
        let unit_file = file("[A]\nK=1\n[B]\nK=2\n[A]\nK=3\n");
        assert_eq!(unit_file.sections().collect::<Vec<_>>(), ["A", "B"]);
        assert_eq!(unit_file.values("A", "K"), ["1", "3"]);
    }

    #[test]
    fn byte_order_mark_is_skipped_for_parsing_but_kept_in_text() {
        let text = "\u{feff}[Unit]\nDescription=x\n";
        let unit_file = file(text);
        assert_eq!(unit_file.sections().collect::<Vec<_>>(), ["Unit"]);
        assert_eq!(unit_file.text(), text);
    }

    #[test]
    fn hash_is_lowercase_hex_sha256_of_the_text() {
        let unit_file = file("[Unit]\nDescription=x\n");
        assert_eq!(
            unit_file.hash(),
            "81e91454ee419600fb432ef848b5199e8abfec857e47a8a2cd83a0d601a4ce30"
        );
    }

    #[test]
    fn file_of_exactly_the_size_limit_is_accepted() {
        let header = "[Unit]\n#";
        let text = format!("{header}{}", "x".repeat(MAX_UNIT_FILE_SIZE - header.len()));
        assert_eq!(text.len(), MAX_UNIT_FILE_SIZE);
        assert!(UnitFile::parse(&name("big.service"), text.as_bytes()).is_ok());
    }

    #[test]
    fn unit_file_refusals_name_their_line() {
        let oversized = vec![b'#'; MAX_UNIT_FILE_SIZE + 1];
        let long_garbage = format!("[Unit]\n{}\n", "g".repeat(100));
        let cases: [(&[u8], String); 13] = [
            (b"", "unit file is empty".into()),
            (&oversized, "unit file is 1048577 bytes (at most 1048576 allowed)".into()),
            (
                b"[Unit]\nA=b\0c\n",
                "line 2: unit file contains a NUL byte at byte offset 10 (binary data?)".into(),
            ),
            (b"[Unit]\nA=\xff\n", "line 2: unit file is not valid UTF-8 at byte offset 9".into()),
            (b"\n\n# only comments\n", "unit file has no sections".into()),
            (
                b"A=b\n[Unit]\n",
                "line 1: assignment \"A=b\" comes before any [Section] header".into(),
            ),
            (
                b"[Unit]\nA=b\n\ngarbage\n",
                "line 4: expected \"Key=Value\" or \"[Section]\", found \"garbage\"".into(),
            ),
            (
                b"garbage\n[Unit]\n",
                "line 1: expected \"Key=Value\" or \"[Section]\", found \"garbage\"".into(),
            ),
            (
                long_garbage.as_bytes(),
                format!(
                    "line 2: expected \"Key=Value\" or \"[Section]\", found \"{}...\"",
                    "g".repeat(MAX_EXCERPT_CHARS)
                ),
            ),
            (
                b"[Unit]\nA=b\n[Service\n",
                "line 3: section header \"[Service\" is not closed by ']'".into(),
            ),
            (b"[Unit] # x\n", "line 1: section header \"[Unit] # x\" is not closed by ']'".into()),
            (b"[]\nA=b\n", "line 1: section header \"[]\" has an empty name".into()),
            (b"[Unit]\n = b\n", "line 2: assignment \"= b\" has an empty key".into()),
        ];
        for (bytes, expected) in cases {
            let error = UnitFile::parse(&name("x.service"), bytes).expect_err(&expected);
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn fleet_options_read_every_key() {
        let options = options_for(
            "web.service",
            "MachineID=0123456789abcdef0123456789abcdef\n\
             MachineOf=db.service cache.service\n\
             MachineMetadata=region=eu\n\
             Conflicts=web@*.service\n\
             Conflicts=other.service\n\
             Replaces=web-old.service\n\
             Global=false",
        )
        .expect("options are valid");
        let expected = FleetOptions {
            machine_id: Some("0123456789abcdef0123456789abcdef".into()),
            machine_of: vec![name("db.service"), name("cache.service")],
            metadata: BTreeMap::from([("region".into(), vec!["eu".into()])]),
            conflicts: vec!["web@*.service".into(), "other.service".into()],
            global: false,
            replaces: vec![name("web-old.service")],
            fencing: true,
        };
        assert_eq!(options, expected);
    }

    #[test]
    fn fencing_is_on_unless_switched_off() {
        let options = |text: &str| {
            let unit_name = name("keep.service");
            let file = UnitFile::parse(&unit_name, text.as_bytes()).expect("parses");
            FleetOptions::from_unit(&unit_name, &file)
        };
        assert!(options("[X-Fleet]\nMachineOf=a.service\n").unwrap().fencing);
        assert!(!options("[X-Fleet]\nFencing=no\n").unwrap().fencing);
        assert!(options("[X-Fleet]\nFencing=no\nFencing=\n").unwrap().fencing);
        let twice = options("[X-Fleet]\nFencing=no\nFencing=yes\n").unwrap_err().to_string();
        assert!(twice.contains("line 3"), "{twice}");
        let bad = options("[X-Fleet]\nFencing=sometimes\n").unwrap_err().to_string();
        assert!(bad.contains("line 2") && bad.contains("Fencing"), "{bad}");
    }

    #[test]
    fn file_without_fleet_section_has_default_options() {
        let unit_name = name("web.service");
        let unit_file =
            UnitFile::parse(&unit_name, b"[Service]\nExecStart=/bin/web\n").expect("parses");
        assert_eq!(FleetOptions::from_unit(&unit_name, &unit_file), Ok(FleetOptions::default()));
    }

    #[test]
    fn legacy_x_prefixed_keys_are_aliases() {
        let options = options_for(
            "web.service",
            "X-ConditionMachineID=abc\n\
             X-ConditionMachineOf=db.service\n\
             X-ConditionMachineMetadata=disk=ssd\n\
             X-Conflicts=web*",
        )
        .expect("aliases are accepted");
        assert_eq!(options.machine_id.as_deref(), Some("abc"));
        assert_eq!(options.machine_of, [name("db.service")]);
        assert_eq!(options.metadata["disk"], ["ssd"]);
        assert_eq!(options.conflicts, ["web*"]);
    }

    #[test]
    fn metadata_pairs_share_lines_and_collect_alternatives() {
        let options = options_for(
            "web.service",
            "MachineMetadata=region=eu disk=ssd\n\
             MachineMetadata=region=us\n\
             MachineMetadata=\"role=web server\" region=eu",
        )
        .expect("metadata is valid");
        let expected = BTreeMap::from([
            ("disk".to_owned(), vec!["ssd".to_owned()]),
            ("region".to_owned(), vec!["eu".to_owned(), "us".to_owned()]),
            ("role".to_owned(), vec!["web server".to_owned()]),
        ]);
        assert_eq!(options.metadata, expected);
    }

    #[test]
    fn list_options_reset_on_empty_assignment() {
        let options = options_for(
            "web.service",
            "MachineOf=a.service\nMachineOf=\nMachineOf=b.service\n\
             Conflicts=x*\nConflicts=\n\
             MachineMetadata=k=v\nMachineMetadata=\n\
             Replaces=old.service\nReplaces=\n\
             MachineID=abc\nMachineID=\nMachineID=def\n\
             Global=true\nGlobal=",
        )
        .expect("resets are valid");
        let expected = FleetOptions {
            machine_id: Some("def".into()),
            machine_of: vec![name("b.service")],
            ..FleetOptions::default()
        };
        assert_eq!(options, expected);
    }

    #[test]
    fn global_accepts_systemd_booleans() {
        let cases = [
            ("true", true),
            ("yes", true),
            ("1", true),
            ("on", true),
            ("TRUE", true),
            ("false", false),
            ("no", false),
            ("0", false),
            ("off", false),
        ];
        for (value, expected) in cases {
            let options = options_for("web.service", &format!("Global={value}")).expect(value);
            assert_eq!(options.global, expected, "{value}");
        }
    }

    #[test]
    fn same_value_twice_is_not_a_conflict() {
        let machine_id = options_for("web.service", "MachineID=abc\nMachineID=abc");
        assert_eq!(machine_id.expect("same id twice").machine_id.as_deref(), Some("abc"));
        let global = options_for("web.service", "Global=yes\nGlobal=true");
        assert!(global.expect("same boolean twice").global);
    }

    #[test]
    fn specifiers_resolve_for_an_instance() {
        let options = options_for(
            "web@blue.service",
            "MachineOf=db@%i.service\n\
             Conflicts=%p@*.service\n\
             Replaces=%p-old@%i.service\n\
             MachineMetadata=unit=%n stem=%N color=%i share=100%%",
        )
        .expect("specifiers resolve");
        assert_eq!(options.machine_of, [name("db@blue.service")]);
        assert_eq!(options.conflicts, ["web@*.service"]);
        assert_eq!(options.replaces, [name("web-old@blue.service")]);
        let metadata: Vec<_> = options
            .metadata
            .iter()
            .map(|(key, values)| (key.as_str(), values[0].as_str()))
            .collect();
        assert_eq!(
            metadata,
            [
                ("color", "blue"),
                ("share", "100%"),
                ("stem", "web@blue"),
                ("unit", "web@blue.service")
            ]
        );
    }

    #[test]
    fn specifiers_resolve_for_a_plain_unit() {
        let options = options_for("web.service", "MachineMetadata=a=%n b=%N c=%p d=x%i")
            .expect("specifiers resolve");
        let metadata: Vec<_> = options
            .metadata
            .iter()
            .map(|(key, values)| (key.as_str(), values[0].as_str()))
            .collect();
        assert_eq!(metadata, [("a", "web.service"), ("b", "web"), ("c", "web"), ("d", "x")]);
    }

    #[test]
    fn a_description_resolves_the_specifiers_of_its_unit_name() {
        let text = "[Unit]\nDescription=web %i of %p (%n, %N) on %H, 100%%\n";
        let name = UnitName::parse("web@blue.service").unwrap();
        let file = UnitFile::parse(&name, text.as_bytes()).unwrap();
        let expected = "web blue of web (web@blue.service, web@blue) on %H, 100%";
        assert_eq!(file.description().as_deref(), Some(expected));
        let template = UnitName::parse("web@.service").unwrap();
        let file = UnitFile::parse(&template, text.as_bytes()).unwrap();
        let expected = "web %i of web (%n, %N) on %H, 100%";
        assert_eq!(file.description().as_deref(), Some(expected));
        let bare = UnitFile::parse(&name, b"[Service]\nExecStart=/bin/true\n").unwrap();
        assert_eq!(bare.description(), None);
    }

    #[test]
    fn an_x_fleet_section_in_another_case_is_refused_with_its_line() {
        let name = UnitName::parse("web.service").unwrap();
        for header in ["x-fleet", "X-FLEET", "x-Fleet"] {
            let text = format!("[Unit]\nDescription=web\n\n[{header}]\nConflicts=web*\n");
            let file = UnitFile::parse(&name, text.as_bytes()).unwrap();
            let error = FleetOptions::from_unit(&name, &file).unwrap_err().to_string();
            let expected = format!("line 4: section [{header}] is not [X-Fleet]");
            assert!(error.starts_with(&expected), "{header}: {error}");
        }
    }

    #[test]
    fn fleet_option_refusals_name_their_line() {
        let bad_name = format!("unit name \"a/b.service\" contains '/' {ALLOWED}");
        let no_suffix = format!(
            "unit name \"b\" has no unit type suffix (expected one of {})",
            UNIT_SUFFIXES.join(" ")
        );
        // (X-Fleet lines, line of the error, message after the line number)
        let cases = [
            ("Bogus=1", 5, "unknown [X-Fleet] option \"Bogus\""),
            (
                "machineid=abc",
                5,
                "unknown [X-Fleet] option \"machineid\" (did you mean \"MachineID\"?)",
            ),
            ("MachineID=abc\nMachineID=abd", 6, "MachineID is already set to \"abc\" on line 5"),
            ("Global=on\n\nGlobal=no", 7, "Global is already set to \"true\" on line 5"),
            (
                "Global=maybe",
                5,
                "Global expects true/false, yes/no, 1/0 or on/off, found \"maybe\"",
            ),
            ("MachineMetadata=region", 5, "MachineMetadata \"region\" is not key=value"),
            ("MachineMetadata==eu", 5, "MachineMetadata \"=eu\" has an empty key"),
            ("MachineMetadata=a=b region=", 5, "MachineMetadata \"region=\" has an empty value"),
            (
                "MachineMetadata=\"region=eu",
                5,
                "MachineMetadata value \"\\\"region=eu\" has an unterminated quote",
            ),
            ("MachineID=ABC", 5, "MachineID \"ABC\" is not 1 to 32 lowercase hexadecimal digits"),
            (
                "MachineID=0123456789abcdef0123456789abcdef0",
                5,
                "MachineID \"0123456789abcdef0123456789abcdef0\" is not 1 to 32 lowercase \
                 hexadecimal digits",
            ),
            ("MachineOf=a/b.service", 5, &format!("invalid MachineOf value: {bad_name}")),
            (
                "Replaces=@.service",
                5,
                "invalid Replaces value: unit name \"@.service\" has nothing before '@'",
            ),
            (
                "Conflicts=web[.service",
                5,
                "Conflicts pattern \"web[.service\" is not a valid glob: unclosed character class; \
                 missing ']'",
            ),
            (
                "MachineOf=%x.service",
                5,
                "unknown specifier \"%x\" in \"%x.service\" (known: %n %N %p %i %%)",
            ),
            (
                "MachineMetadata=a=5%",
                5,
                "\"a=5%\" ends in a lone '%' (write %% for a literal percent sign)",
            ),
            ("MachineOf=a.service \\\n  b\n", 5, &format!("invalid MachineOf value: {no_suffix}")),
        ];
        for (fleet_lines, line, message) in cases {
            let expected = format!("line {line}: {message}");
            assert_eq!(error_for("web.service", fleet_lines), expected, "{fleet_lines:?}");
        }
    }

    #[test]
    fn unsatisfiable_combinations_are_refused() {
        // (X-Fleet lines, line of the error, reason)
        let cases = [
            ("Global=true\nMachineOf=db.service", 6, "Global=true rules out MachineOf"),
            ("Replaces=old.service\nGlobal=true", 6, "Global=true rules out Replaces"),
            ("Global=true\nMachineID=abc", 6, "Global=true rules out MachineID"),
            ("MachineOf=web.service", 5, "MachineOf names the unit itself"),
            ("Replaces=%n", 5, "Replaces names the unit itself"),
            (
                "MachineOf=db.service\nConflicts=db*",
                6,
                "MachineOf target \"db.service\" matches Conflicts pattern \"db*\"",
            ),
            (
                "Conflicts=*.service\n\nMachineOf=db.service",
                7,
                "MachineOf target \"db.service\" matches Conflicts pattern \"*.service\"",
            ),
            (
                "MachineOf=db.service\nReplaces=db.service",
                6,
                "\"db.service\" is both a MachineOf target and replaced by this unit",
            ),
            (
                "MachineOf=db@.service",
                5,
                "MachineOf names template \"db@.service\", which never runs",
            ),
            (
                "Replaces=old@%i.service",
                5,
                "Replaces names template \"old@.service\", which never runs",
            ),
        ];
        for (fleet_lines, line, reason) in cases {
            let expected = format!("line {line}: unit can never be placed: {reason}");
            assert_eq!(error_for("web.service", fleet_lines), expected, "{fleet_lines:?}");
        }
    }

    #[test]
    fn satisfiable_neighbours_of_the_refused_combinations_are_accepted() {
        let cases = [
            ("a Conflicts glob matching the unit itself", "Conflicts=web*"),
            ("Global=false with MachineOf", "Global=false\nMachineOf=db.service"),
            (
                "Global with metadata and Conflicts",
                "Global=true\nMachineMetadata=a=b\nConflicts=x*",
            ),
            (
                "MachineOf and a Conflicts glob that misses it",
                "MachineOf=db.service\nConflicts=web*",
            ),
            (
                "MachineOf and Replaces of different units",
                "MachineOf=db.service\nReplaces=old.service",
            ),
        ];
        for (behaviour, fleet_lines) in cases {
            assert!(options_for("web.service", fleet_lines).is_ok(), "{behaviour}");
        }
    }

    #[test]
    fn template_files_check_syntax_but_leave_instance_checks_to_instances() {
        let accepted = [
            ("%n is the instance itself", "MachineOf=%n"),
            ("only instance 1 would name itself", "MachineOf=web@1.service"),
            ("MachineID from the instance", "MachineID=%i"),
            ("target and pattern differ per instance", "MachineOf=db@%i.service\nConflicts=db@1*"),
            ("metadata from the instance", "MachineMetadata=host=%i"),
        ];
        for (behaviour, fleet_lines) in accepted {
            assert!(options_for("web@.service", fleet_lines).is_ok(), "{behaviour}");
        }

        let refused = [
            (
                "Global=maybe",
                "line 5: Global expects true/false, yes/no, 1/0 or on/off, found \"maybe\"",
            ),
            ("Bogus=%i", "line 5: unknown [X-Fleet] option \"Bogus\""),
            ("MachineOf=%q", "line 5: unknown specifier \"%q\" in \"%q\" (known: %n %N %p %i %%)"),
            (
                "Global=true\nMachineOf=db.service",
                "line 6: unit can never be placed: Global=true rules out MachineOf",
            ),
            (
                "MachineOf=db.service\nConflicts=db*",
                "line 6: unit can never be placed: MachineOf target \"db.service\" matches \
                 Conflicts pattern \"db*\"",
            ),
        ];
        for (fleet_lines, expected) in refused {
            assert_eq!(error_for("web@.service", fleet_lines), expected, "{fleet_lines:?}");
        }

        let instance_error = error_for("web@1.service", "MachineOf=web@1.service");
        assert_eq!(
            instance_error,
            "line 5: unit can never be placed: MachineOf names the unit itself"
        );
    }

    #[test]
    fn options_match_machine_ids_by_prefix_and_metadata_by_alternatives() {
        let options = options_for(
            "web.service",
            "MachineID=ab\nMachineMetadata=region=eu region=us disk=ssd",
        )
        .expect("options are valid");
        assert!(options.matches_machine_id("abcdef"));
        assert!(!options.matches_machine_id("bacdef"));
        assert!(FleetOptions::default().matches_machine_id("anything"));

        let machine = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|&(key, value)| (key.to_owned(), value.to_owned())).collect()
        };
        let cases = [
            (machine(&[("region", "eu"), ("disk", "ssd")]), true),
            (machine(&[("region", "us"), ("disk", "ssd"), ("extra", "x")]), true),
            (machine(&[("region", "mars"), ("disk", "ssd")]), false),
            (machine(&[("region", "eu")]), false),
            (machine(&[]), false),
        ];
        for (metadata, expected) in cases {
            assert_eq!(options.matches_metadata(&metadata), expected, "{metadata:?}");
        }
    }

    #[test]
    fn conflict_set_matches_the_conflicts_globs() {
        let options = options_for("web.service", "Conflicts=db*.service cache.service")
            .expect("options are valid");
        let globs = options.conflict_set().expect("validated globs compile");
        assert!(globs.is_match("db@1.service"));
        assert!(globs.is_match("cache.service"));
        assert!(!globs.is_match("web.service"));
    }

    #[test]
    fn verify_checks_name_file_and_options_in_turn() {
        let good = b"[Service]\nExecStart=/bin/web\n[X-Fleet]\nMachineOf=db@%i.service\n";
        let (unit_name, unit_file, options) =
            verify("/srv/units/web@1.service", good).expect("unit verifies");
        assert_eq!(unit_name, name("web@1.service"));
        assert_eq!(unit_file.text().as_bytes(), good);
        assert_eq!(options.machine_of, [name("db@1.service")]);

        let cases: [(&str, &[u8], &str); 3] = [
            (
                "units/web",
                good,
                "unit name \"web\" has no unit type suffix (expected one of .service .socket \
                 .device .mount .automount .swap .target .path .timer .slice .scope .container)",
            ),
            (
                "web.service",
                b"[Service]\nnonsense\n",
                "web.service: line 2: expected \"Key=Value\" or \"[Section]\", found \"nonsense\"",
            ),
            (
                "web.service",
                b"[X-Fleet]\nGlobal=2\n",
                "web.service: line 2: Global expects true/false, yes/no, 1/0 or on/off, \
                 found \"2\"",
            ),
        ];
        for (path, bytes, expected) in cases {
            let error = verify(path, bytes).expect_err(expected);
            assert_eq!(error.to_string(), expected);
        }
    }

    #[test]
    fn glob_errors_escape_the_characters_they_quote() {
        // A carriage return inside a line is part of the value, and globset quotes the ends of
        // a bad range raw, which split the message over two lines.
        let expected = "line 5: Conflicts pattern \"[z-\\r]\" is not a valid glob: invalid range; \
                        'z' > '\\r'";
        assert_eq!(error_for("web.service", "Conflicts=\"[z-\r]\""), expected);
    }

    #[test]
    fn conflicts_that_compile_only_one_by_one_are_refused() {
        // Each pattern is a valid glob, but together they outgrow globset's regex size limit,
        // so placement could never build the matcher that `conflict_set` promises.
        let fleet_lines = format!("Conflicts=a*\nConflicts={}", "?".repeat(200_000));
        let error = error_for("web.service", &fleet_lines);
        assert!(
            error.starts_with("line 6: Conflicts patterns are too large to compile together: "),
            "{error}"
        );
    }

    #[test]
    fn machine_of_is_checked_against_a_long_conflicts_pattern_without_panicking() {
        // globset panics when a single pattern that is too large is compiled on its own.
        let fleet_lines = format!("MachineOf=db.service\nConflicts={}", "a".repeat(600_000));
        let options = options_for("web.service", &fleet_lines).expect("options are valid");
        assert!(options.conflict_set().is_ok_and(|globs| !globs.is_match("db.service")));
        let fleet_lines = format!("MachineOf=db.service\nConflicts={} db*", "a".repeat(600_000));
        let error = error_for("web.service", &fleet_lines);
        assert!(error.ends_with("matches Conflicts pattern \"db*\""), "{error}");
    }

    #[test]
    fn a_header_repeated_after_many_sections_merges_into_the_first() {
        // What the section index must keep: a repeated header adds to the first section.
        let n_sections = 10_000;
        let mut text: String = (0..n_sections).map(|index| format!("[s{index}]\n")).collect();
        text.push_str("[s7]\nKey=merged\n");
        let unit_file = file(&text);
        assert_eq!(unit_file.sections().count(), n_sections);
        assert_eq!(unit_file.value("s7", "Key"), Some("merged"));
    }
}
