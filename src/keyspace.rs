//! The etcd keyspace: where each record lives and what it holds.
//!
//! Every key sits under one configurable prefix (default `/flotilla`). Values are JSON objects
//! with a `version` field; readers refuse unknown fields and unknown versions, so a record written
//! by a newer agent is skipped rather than misread. docs/keyspace.md describes the same layout for
//! operators.
//!
//! | key | value | bound to |
//! | --- | --- | --- |
//! | `units/<unit>` | [`UnitRecord`]: the file, byte for byte, and its hash | nothing |
//! | `desired/<unit>` | [`DesiredRecord`]: inactive, loaded or launched | nothing |
//! | `machines/<id>` | [`MachineRecord`]: one per host | that host's lease |
//! | `claims/<unit>` | [`ClaimRecord`]: the host that runs a unit | that host's lease |
//! | `claims/<unit>/<id>` | [`ClaimRecord`]: one copy of a global unit | that host's lease |
//! | `states/<id>/<unit>` | [`StateRecord`]: what systemd reports there | that host's lease |
//! | `images/<id>/<unit>` | [`ImageRecord`]: a host holds a container unit's image | its lease |
//! | `engine` | [`EngineRecord`]: the host running the placement engine | that host's lease |
//! | `problems/<unit>` | [`ProblemRecord`]: why a unit cannot be placed | the engine's lease |

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::unit::UnitName;

/// The only record version this build reads and writes.
pub const RECORD_VERSION: u32 = 1;

/// The prefix used when none is configured.
pub const DEFAULT_PREFIX: &str = "/flotilla";

/// What the operator wants a unit to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DesiredState {
    /// Stored in the cluster, not placed on any host.
    Inactive,
    /// Placed on a host and known to its systemd, not started.
    Loaded,
    /// Placed on a host and started.
    Launched,
}

impl DesiredState {
    /// Whether a unit in this state needs a host.
    pub fn is_placed(self) -> bool {
        !matches!(self, DesiredState::Inactive)
    }
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DesiredState::Inactive => "inactive",
            DesiredState::Loaded => "loaded",
            DesiredState::Launched => "launched",
        })
    }
}

/// A unit file as submitted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitRecord {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// Lower-case hex SHA-256 of `text`.
    pub hash: String,
    /// The unit file, byte for byte.
    pub text: String,
}

/// The desired state of one unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DesiredRecord {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// What the operator asked for.
    pub state: DesiredState,
}

/// One host of the cluster, present while its agent keeps the lease alive.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineRecord {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// The host's /etc/machine-id.
    pub id: String,
    /// The address other hosts and operators reach it at.
    pub ip: String,
    /// The host name, for operators.
    pub hostname: String,
    /// Free-form key=value pairs matched by `MachineMetadata=`.
    pub metadata: BTreeMap<String, String>,
    /// The flotd version running there.
    pub agent_version: String,
}

/// A unit placed on a host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimRecord {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// The machine id of the host that runs the unit.
    pub machine: String,
}

/// One state change a host observed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// Wall-clock time in milliseconds since the epoch.
    pub at_ms: u64,
    /// systemd's ActiveState.
    pub active: String,
    /// systemd's SubState.
    pub sub: String,
}

/// What systemd reports about a unit on the host that runs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRecord {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// The host's machine id.
    pub machine: String,
    /// Hash of the unit file the host runs.
    pub hash: String,
    /// systemd's LoadState.
    pub load: String,
    /// systemd's ActiveState.
    pub active: String,
    /// systemd's SubState.
    pub sub: String,
    /// The main process, 0 when there is none.
    pub main_pid: u32,
    /// When systemd last changed the unit's state, in milliseconds since the epoch.
    pub since_ms: u64,
    /// How many times the agent restarted the unit after a failure since it last ran.
    pub retries: u32,
    /// The last error the agent met while converging the unit.
    pub error: Option<String>,
    /// The most recent transitions, oldest first.
    pub transitions: Vec<Transition>,
}

/// Whether a host holds the image of a container unit it could run, pulled ahead of need.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImageRecord {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// The host's machine id.
    pub machine: String,
    /// The image reference, as the unit's `Image=` names it.
    pub image: String,
    /// Whether the host's engine holds the image.
    pub present: bool,
    /// Why the last pull failed, while the image is not present.
    pub error: Option<String>,
}

/// The host that runs the placement engine.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineRecord {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// Its machine id.
    pub machine: String,
}

/// Why the engine could not place a unit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProblemRecord {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// A phrase naming the constraint that failed.
    pub reason: String,
}

/// A request from flotctl for the last lines of a unit's journal on one host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalRequest {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// The unit whose journal is asked for.
    pub unit: String,
    /// How many of the last lines.
    pub lines: u32,
    /// Whether to go on sending lines as they come, in numbered parts, until the request is
    /// gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub follow: bool,
}

/// A host's answer to a [`JournalRequest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JournalOutput {
    /// Always [`RECORD_VERSION`].
    pub version: u32,
    /// The lines, as journalctl (or Docker, for a container unit) printed them.
    pub text: String,
    /// Why the journal could not be read, if it could not.
    pub error: Option<String>,
}

/// Records that carry a version field.
pub trait Record: Serialize + DeserializeOwned {
    /// The record's version field.
    fn version(&self) -> u32;
}

macro_rules! impl_record {
    ($($ty:ty),*) => {
        $(impl Record for $ty {
            fn version(&self) -> u32 {
                self.version
            }
        })*
    };
}

impl_record!(
    UnitRecord,
    DesiredRecord,
    MachineRecord,
    ClaimRecord,
    StateRecord,
    ImageRecord,
    EngineRecord,
    ProblemRecord,
    JournalRequest,
    JournalOutput
);

/// A value in the keyspace that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not the JSON record expected at this key.
    #[error("malformed record")]
    Json(#[from] serde_json::Error),
    /// The record was written by an incompatible version.
    #[error("record version {0} is not supported (expected {RECORD_VERSION})")]
    Version(u32),
}

/// Decodes and checks one record.
pub fn decode<T: Record>(bytes: &[u8]) -> Result<T, DecodeError> {
    let record: T = serde_json::from_slice(bytes)?;
    match record.version() {
        RECORD_VERSION => Ok(record),
        other => Err(DecodeError::Version(other)),
    }
}

/// Encodes one record.
pub fn encode<T: Record>(record: &T) -> Vec<u8> {
    // Serialising these plain structs cannot fail: every map key is a string.
    serde_json::to_vec(record).expect("records serialise to JSON")
}

/// Which record a key holds, parsed from its path below the prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Key {
    /// `units/<unit>`
    Unit(UnitName),
    /// `desired/<unit>`
    Desired(UnitName),
    /// `machines/<id>`
    Machine(String),
    /// `claims/<unit>` or, for a global unit, `claims/<unit>/<id>`
    Claim(UnitName, Option<String>),
    /// `states/<id>/<unit>`
    State(String, UnitName),
    /// `images/<id>/<unit>`
    Image(String, UnitName),
    /// `engine`
    Engine,
    /// `problems/<unit>`
    Problem(UnitName),
}

/// Builds and parses keys under one prefix.
#[derive(Clone, Debug)]
pub struct Keyspace {
    prefix: String,
}

impl Keyspace {
    /// A keyspace under `prefix`; a trailing slash is ignored.
    pub fn new(prefix: &str) -> Keyspace {
        Keyspace { prefix: prefix.trim_end_matches('/').to_string() }
    }

    /// The prefix every key starts with, with a trailing slash.
    pub fn root(&self) -> String {
        format!("{}/", self.prefix)
    }

    /// The prefix of one kind of record, e.g. `units/`.
    pub fn dir(&self, dir: &str) -> String {
        format!("{}/{dir}/", self.prefix)
    }

    /// `units/<unit>`
    pub fn unit(&self, unit: &UnitName) -> String {
        format!("{}/units/{unit}", self.prefix)
    }

    /// `desired/<unit>`
    pub fn desired(&self, unit: &UnitName) -> String {
        format!("{}/desired/{unit}", self.prefix)
    }

    /// `machines/<id>`
    pub fn machine(&self, machine: &str) -> String {
        format!("{}/machines/{machine}", self.prefix)
    }

    /// `claims/<unit>`, or `claims/<unit>/<id>` for one copy of a global unit.
    pub fn claim(&self, unit: &UnitName, global_on: Option<&str>) -> String {
        match global_on {
            None => format!("{}/claims/{unit}", self.prefix),
            Some(machine) => format!("{}/claims/{unit}/{machine}", self.prefix),
        }
    }

    /// `states/<id>/<unit>`
    pub fn state(&self, machine: &str, unit: &UnitName) -> String {
        format!("{}/states/{machine}/{unit}", self.prefix)
    }

    /// `images/<id>/<unit>`
    pub fn image(&self, machine: &str, unit: &UnitName) -> String {
        format!("{}/images/{machine}/{unit}", self.prefix)
    }

    /// `engine`
    pub fn engine(&self) -> String {
        format!("{}/engine", self.prefix)
    }

    /// `problems/<unit>`
    pub fn problem(&self, unit: &UnitName) -> String {
        format!("{}/problems/{unit}", self.prefix)
    }

    /// `journal/requests/<machine-id>/`: the journal requests for one host.
    pub fn journal_requests(&self, machine: &str) -> String {
        format!("{}/journal/requests/{machine}/", self.prefix)
    }

    /// `journal/requests/<machine-id>/<request>`
    pub fn journal_request(&self, machine: &str, request: &str) -> String {
        format!("{}/journal/requests/{machine}/{request}", self.prefix)
    }

    /// `journal/output/<request>`
    pub fn journal_output(&self, request: &str) -> String {
        format!("{}/journal/output/{request}", self.prefix)
    }

    /// `journal/output/<request>/<part>`: one part of a followed journal, numbered from 0
    /// with ten digits, so that the parts sort in order.
    pub fn journal_part(&self, request: &str, part: u64) -> String {
        format!("{}/journal/output/{request}/{part:010}", self.prefix)
    }

    /// Parses a full key; `None` for keys that are not ours or are malformed.
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(&self.prefix)?.strip_prefix('/')?;
        if rest == "engine" {
            return Some(Key::Engine);
        }
        let (dir, rest) = rest.split_once('/')?;
        let unit = |s: &str| UnitName::parse(s).ok();
        match dir {
            "units" => Some(Key::Unit(unit(rest)?)),
            "desired" => Some(Key::Desired(unit(rest)?)),
            "problems" => Some(Key::Problem(unit(rest)?)),
            "machines" if is_machine_id(rest) => Some(Key::Machine(rest.to_string())),
            "claims" => match rest.split_once('/') {
                None => Some(Key::Claim(unit(rest)?, None)),
                Some((name, machine)) if is_machine_id(machine) => {
                    Some(Key::Claim(unit(name)?, Some(machine.to_string())))
                }
                Some(_) => None,
            },
            "states" | "images" => {
                let (machine, name) = rest.split_once('/')?;
                is_machine_id(machine).then_some(())?;
                match dir {
                    "states" => Some(Key::State(machine.to_string(), unit(name)?)),
                    _ => Some(Key::Image(machine.to_string(), unit(name)?)),
                }
            }
            _ => None,
        }
    }
}

/// Why `prefix` cannot be a keyspace prefix, if it cannot: it must be an absolute key path
/// such as `/flotilla`, with no spaces or control characters.
pub fn prefix_problem(prefix: &str) -> Option<&'static str> {
    if !prefix.starts_with('/') || prefix.trim_end_matches('/').is_empty() {
        return Some("a key prefix starts with '/' and names something, such as /flotilla");
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Some("a key prefix has no spaces or control characters");
    }
    None
}

/// Whether `id` looks like an /etc/machine-id: 32 lower-case hex digits.
pub fn is_machine_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Lower-case hex SHA-256 of a unit file.
pub fn hash_text(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn name(s: &str) -> UnitName {
        UnitName::parse(s).unwrap()
    }

    #[test]
    fn a_prefix_is_an_absolute_key_path() {
        assert_eq!(prefix_problem("/flotilla"), None);
        assert_eq!(prefix_problem("/a/b/"), None);
        for bad in ["", "/", "//", "flotilla", "/flo tilla", "/a\nb"] {
            assert!(prefix_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn keys_round_trip_through_parse() {
        let ks = Keyspace::new("/flotilla/");
        let cases = [
            (ks.unit(&name("web@1.service")), Key::Unit(name("web@1.service"))),
            (ks.desired(&name("a.service")), Key::Desired(name("a.service"))),
            (ks.machine(ID), Key::Machine(ID.into())),
            (ks.claim(&name("a.service"), None), Key::Claim(name("a.service"), None)),
            (
                ks.claim(&name("g.service"), Some(ID)),
                Key::Claim(name("g.service"), Some(ID.into())),
            ),
            (ks.state(ID, &name("a.service")), Key::State(ID.into(), name("a.service"))),
            (ks.image(ID, &name("web.container")), Key::Image(ID.into(), name("web.container"))),
            (ks.engine(), Key::Engine),
            (ks.problem(&name("a.service")), Key::Problem(name("a.service"))),
        ];
        for (key, expected) in cases {
            assert_eq!(ks.parse(key.as_bytes()), Some(expected), "{key}");
        }
    }

    #[test]
    fn foreign_and_malformed_keys_are_not_parsed() {
        let ks = Keyspace::new("/flotilla");
        for key in [
            "/other/units/a.service",
            "/flotillax/units/a.service",
            "/flotilla/units/a b.service",
            "/flotilla/units/",
            "/flotilla/machines/short",
            "/flotilla/claims/a.service/not-a-machine",
            "/flotilla/states/a.service",
            "/flotilla/what/a.service",
        ] {
            assert_eq!(ks.parse(key.as_bytes()), None, "{key}");
        }
    }

    #[test]
    fn decode_refuses_unknown_fields_and_versions() {
        let good = br#"{"version":1,"state":"launched"}"#;
        let record: DesiredRecord = decode(good).unwrap();
        assert_eq!(record.state, DesiredState::Launched);

        let unknown = br#"{"version":1,"state":"launched","extra":1}"#;
        assert!(matches!(decode::<DesiredRecord>(unknown), Err(DecodeError::Json(_))));

        let newer = br#"{"version":2,"state":"launched"}"#;
        assert!(matches!(decode::<DesiredRecord>(newer), Err(DecodeError::Version(2))));

        assert!(decode::<DesiredRecord>(b"\xff garbage").is_err());
    }
}
