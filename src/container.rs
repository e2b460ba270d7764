//! Container units: the `[Container]` section of a `.container` unit, in the spirit of Podman's
//! Quadlet files, checked at the door like every other option we own.
//!
//! Beside `[Container]` a container unit may carry `[Unit]` (Description), `[X-Fleet]` and a
//! `[Service]` section whose `Restart=` and `RestartSec=` are honoured by the agent. Unknown keys
//! and bad values are refused with the line they are on.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::unit::{Entry, FleetOptions, UnitFile, UnitName};

/// The section that describes the container.
pub const CONTAINER_SECTION: &str = "Container";

/// When the engine's image is refreshed from the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull only when the image is not present.
    Missing,
    /// Pull before every start.
    Always,
    /// Never pull; the image must be present.
    Never,
}

/// When the agent restarts a container that exited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartPolicy {
    /// Never.
    No,
    /// After a non-zero exit, a signal or an OOM kill.
    OnFailure,
    /// After any exit.
    Always,
}

/// A published port: `[ip:]host:container[/tcp|udp]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortMapping {
    /// The host address to bind, empty for all.
    pub host_ip: String,
    /// The port on the host.
    pub host_port: u16,
    /// The port in the container.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// A bind mount: `host:container[:ro|rw]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeMount {
    /// Absolute path on the host, or a named volume.
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Everything needed to create and run a container unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerSpec {
    /// The image reference.
    pub image: String,
    /// The command, replacing the image's.
    pub exec: Option<Vec<String>>,
    /// The entry point, replacing the image's.
    pub entrypoint: Option<Vec<String>>,
    /// Environment variables, in order.
    pub environment: BTreeMap<String, String>,
    /// Files on the host with more variables, read at start.
    pub environment_files: Vec<String>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Mounts.
    pub volumes: Vec<VolumeMount>,
    /// The network to join, the engine's default when absent.
    pub network: Option<String>,
    /// The user to run as.
    pub user: Option<String>,
    /// The working directory.
    pub working_dir: Option<String>,
    /// Labels, beside the ones flotilla sets.
    pub labels: BTreeMap<String, String>,
    /// When to pull.
    pub pull_policy: PullPolicy,
    /// Whether every host that could run the unit pulls its image as soon as it is submitted.
    pub pre_pull: bool,
    /// The health check command, run by the engine.
    pub health_cmd: Option<Vec<String>>,
    /// How long `stop` waits before killing.
    pub stop_timeout: Duration,
    /// When to restart after an exit.
    pub restart: RestartPolicy,
    /// The pause before a restart.
    pub restart_sec: Duration,
}

/// A `[Container]` or `[Service]` setting that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ContainerError {
    /// The unit has no `[Container]` section.
    #[error("container unit has no [Container] section")]
    NoSection,
    /// `Image=` is missing.
    #[error("[Container] has no Image=")]
    NoImage,
    /// A key this section does not know.
    #[error("line {line}: unknown key {key:?} in [{section}]")]
    UnknownKey {
        /// Where.
        line: usize,
        /// The section.
        section: &'static str,
        /// The key.
        key: String,
    },
    /// A value that does not parse.
    #[error("line {line}: bad {key}= value {value:?}: {reason}")]
    BadValue {
        /// Where.
        line: usize,
        /// The key.
        key: &'static str,
        /// The value.
        value: String,
        /// Why.
        reason: String,
    },
}

const CONTAINER_KEYS: &[&str] = &[
    "Image",
    "Exec",
    "Entrypoint",
    "Environment",
    "EnvironmentFile",
    "PublishPort",
    "Volume",
    "Network",
    "User",
    "WorkingDir",
    "Label",
    "PullPolicy",
    "PrePull",
    "HealthCmd",
    "StopTimeout",
];

/// The `[Service]` keys a container unit may use; the rest belong to systemd services.
const SERVICE_KEYS: &[&str] = &["Restart", "RestartSec"];

impl ContainerSpec {
    /// Reads the container settings of a `.container` unit.
    pub fn from_unit(file: &UnitFile) -> Result<ContainerSpec, ContainerError> {
        if !file.has_section(CONTAINER_SECTION) {
            return Err(ContainerError::NoSection);
        }
        for entry in file.entries(CONTAINER_SECTION) {
            if !CONTAINER_KEYS.contains(&entry.key.as_str()) {
                return Err(unknown(entry, "Container"));
            }
        }
        for entry in file.entries("Service") {
            if !SERVICE_KEYS.contains(&entry.key.as_str()) {
                return Err(unknown(entry, "Service"));
            }
        }

        let last = |key: &str| file.entries(CONTAINER_SECTION).filter(|e| e.key == key).last();
        let all = |key: &'static str| {
            file.entries(CONTAINER_SECTION).filter(move |e| e.key == key && !e.value.is_empty())
        };
        let words = |entry: &Entry, key: &'static str| {
            shell_words::split(&entry.value).map_err(|e| bad(entry, key, &e.to_string()))
        };

        let image = last("Image").filter(|e| !e.value.is_empty()).ok_or(ContainerError::NoImage)?;
        if let Err(reason) = check_image_reference(&image.value) {
            return Err(bad(image, "Image", reason));
        }
        let exec = last("Exec").map(|e| words(e, "Exec")).transpose()?;
        let entrypoint = last("Entrypoint").map(|e| words(e, "Entrypoint")).transpose()?;
        let health_cmd = last("HealthCmd").map(|e| words(e, "HealthCmd")).transpose()?;

        let mut environment = BTreeMap::new();
        for entry in all("Environment") {
            for pair in words(entry, "Environment")? {
                let (key, value) = pair
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty())
                    .ok_or_else(|| bad(entry, "Environment", "expected NAME=VALUE"))?;
                environment.insert(key.to_string(), value.to_string());
            }
        }
        let mut labels = BTreeMap::new();
        for entry in all("Label") {
            for pair in words(entry, "Label")? {
                let (key, value) = pair
                    .split_once('=')
                    .filter(|(k, _)| !k.is_empty() && !k.starts_with("flotilla."))
                    .ok_or_else(|| bad(entry, "Label", "expected KEY=VALUE, not in flotilla.*"))?;
                labels.insert(key.to_string(), value.to_string());
            }
        }
        let environment_files = all("EnvironmentFile")
            .map(|e| match e.value.starts_with('/') {
                true => Ok(e.value.clone()),
                false => Err(bad(e, "EnvironmentFile", "expected an absolute path on the host")),
            })
            .collect::<Result<_, _>>()?;
        let ports = all("PublishPort").map(parse_port).collect::<Result<_, _>>()?;
        let volumes = all("Volume").map(parse_volume).collect::<Result<_, _>>()?;

        let pull_policy = match last("PullPolicy").map(|e| (e, e.value.as_str())) {
            None | Some((_, "missing")) => PullPolicy::Missing,
            Some((_, "always")) => PullPolicy::Always,
            Some((_, "never")) => PullPolicy::Never,
            Some((e, _)) => return Err(bad(e, "PullPolicy", "expected missing, always or never")),
        };
        let pre_pull = match last("PrePull").map(|e| (e, e.value.as_str())) {
            None => true,
            Some((_, "yes" | "true" | "on" | "1")) => true,
            Some((_, "no" | "false" | "off" | "0")) => false,
            Some((e, _)) => return Err(bad(e, "PrePull", "expected yes or no")),
        };
        let stop_timeout = match last("StopTimeout") {
            None => Duration::from_secs(10),
            Some(e) => seconds(e, "StopTimeout")?,
        };
        let service = |key: &str| file.entries("Service").filter(|e| e.key == key).last();
        let restart = match service("Restart").map(|e| (e, e.value.as_str())) {
            None | Some((_, "no")) => RestartPolicy::No,
            Some((_, "on-failure")) => RestartPolicy::OnFailure,
            Some((_, "always")) => RestartPolicy::Always,
            Some((e, _)) => return Err(bad(e, "Restart", "expected no, on-failure or always")),
        };
        let restart_sec = match service("RestartSec") {
            None => Duration::from_millis(100),
            Some(e) => seconds(e, "RestartSec")?,
        };

        let optional = |key: &str| last(key).map(|e| e.value.clone()).filter(|v| !v.is_empty());
        Ok(ContainerSpec {
            image: image.value.clone(),
            exec,
            entrypoint,
            environment,
            environment_files,
            ports,
            volumes,
            network: optional("Network"),
            user: optional("User"),
            working_dir: optional("WorkingDir"),
            labels,
            pull_policy,
            pre_pull,
            health_cmd,
            stop_timeout,
            restart,
            restart_sec,
        })
    }
}

/// The image `machine` should hold ahead of need for the unit `name` with file `text`, if any.
///
/// That is the image of a container unit (not a template) that keeps the default `PrePull=yes`,
/// may pull (`PullPolicy=` is not `never`) and whose `[X-Fleet]` `MachineID=` and
/// `MachineMetadata=` admit the machine. Conflicts and `MachineOf=` are left out: they depend on
/// where other units run at the moment, and an image pulled in vain costs only disk.
pub fn image_to_pre_pull(
    name: &UnitName,
    text: &str,
    machine_id: &str,
    metadata: &BTreeMap<String, String>,
) -> Option<String> {
    if name.suffix() != ".container" || name.is_template() {
        return None;
    }
    let file = UnitFile::parse(name, text.as_bytes()).ok()?;
    let spec = ContainerSpec::from_unit(&file).ok()?;
    if !spec.pre_pull || spec.pull_policy == PullPolicy::Never {
        return None;
    }
    let options = FleetOptions::from_unit(name, &file).ok()?;
    (options.matches_machine_id(machine_id) && options.matches_metadata(metadata))
        .then_some(spec.image)
}

fn unknown(entry: &Entry, section: &'static str) -> ContainerError {
    ContainerError::UnknownKey { line: entry.line, section, key: entry.key.clone() }
}

/// Checks an image reference against Docker's grammar, `[host[:port]/]path[:tag][@digest]`,
/// so that a name the engine would refuse is refused at submit instead of on a host.
///
/// The crates that parse references were either a regex port of Docker's whose automaton takes
/// tens of megabytes, too much for flotd, or not under a licence we can ship.
fn check_image_reference(reference: &str) -> Result<(), &'static str> {
    let (rest, digest) = match reference.split_once('@') {
        Some((rest, digest)) => (rest, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        let (algorithm, hex) = digest.split_once(':').ok_or("a digest is algorithm:hex")?;
        let algorithm_ok = algorithm.split(['+', '.', '_', '-']).all(|part| {
            part.starts_with(|c: char| c.is_ascii_alphabetic())
                && part.chars().all(|c| c.is_ascii_alphanumeric())
        });
        if !algorithm_ok || hex.len() < 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err("a digest is algorithm:hex, such as sha256: and 64 hex digits");
        }
    }
    // A colon after the last slash starts the tag; one before it is the registry's port.
    let tag_at = rest.rfind(':').filter(|&at| !rest[at..].contains('/'));
    let (name, tag) = match tag_at {
        Some(at) => (&rest[..at], Some(&rest[at + 1..])),
        None => (rest, None),
    };
    if let Some(tag) = tag {
        let first_ok = tag.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_');
        let rest_ok = tag.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
        if !first_ok || !rest_ok || tag.len() > 128 {
            return Err(
                "a tag is up to 128 letters, digits, '_', '.' and '-', not starting with                         '.' or '-'",
            );
        }
    }
    if name.is_empty() {
        return Err("the image has no name");
    }
    if name.len() > 255 {
        return Err("an image name is at most 255 characters");
    }
    let mut components: Vec<&str> = name.split('/').collect();
    // Docker reads the first component as a registry when it could not be a repository.
    let first = components[0];
    let is_registry = components.len() > 1
        && (first.contains(['.', ':'])
            || first == "localhost"
            || first.contains(char::is_uppercase));
    if is_registry {
        check_registry(first)?;
        components.remove(0);
    }
    if !components.iter().all(|c| is_path_component(c)) {
        return Err(
            "a repository name is lower-case letters and digits, split by '/' and                     joined by '.', '_', '__' or '-'",
        );
    }
    Ok(())
}

/// `host[:port]`, where the host is a DNS name, an IPv4 address or a bracketed IPv6 address.
fn check_registry(registry: &str) -> Result<(), &'static str> {
    let (host, port) = match registry.strip_prefix('[') {
        Some(v6) => {
            let (address, after) = v6.split_once(']').ok_or("a bracketed IPv6 host lacks ']'")?;
            if address.parse::<std::net::Ipv6Addr>().is_err() {
                return Err("the registry's IPv6 address is not valid");
            }
            let port = match after {
                "" => None,
                _ => Some(after.strip_prefix(':').ok_or("a registry is host[:port]")?),
            };
            (None, port)
        }
        None => match registry.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(registry), None),
        },
    };
    if port.is_some_and(|port| port.parse::<u16>().is_err()) {
        return Err("a registry's port is a number up to 65535");
    }
    let label_ok = |label: &str| {
        !label.is_empty()
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    };
    if host.is_some_and(|host| !host.split('.').all(label_ok)) {
        return Err("a registry's host is a DNS name or an IP address");
    }
    Ok(())
}

/// Runs of `[a-z0-9]` joined by one separator each: `.`, `_`, `__` or any number of `-`.
fn is_path_component(component: &str) -> bool {
    let alphanumeric = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    if !component.starts_with(alphanumeric) || !component.ends_with(alphanumeric) {
        return false;
    }
    let mut separator = String::new();
    for c in component.chars() {
        if alphanumeric(c) {
            let ok = matches!(separator.as_str(), "" | "." | "_" | "__")
                || separator.chars().all(|s| s == '-');
            if !ok {
                return false;
            }
            separator.clear();
        } else if matches!(c, '.' | '_' | '-') {
            separator.push(c);
        } else {
            return false;
        }
    }
    true
}

fn bad(entry: &Entry, key: &'static str, reason: &str) -> ContainerError {
    ContainerError::BadValue {
        line: entry.line,
        key,
        value: entry.value.clone(),
        reason: reason.to_string(),
    }
}

fn seconds(entry: &Entry, key: &'static str) -> Result<Duration, ContainerError> {
    crate::unit::parse_seconds(&entry.value).map_err(|reason| bad(entry, key, &reason))
}

fn parse_port(entry: &Entry) -> Result<PortMapping, ContainerError> {
    let fail = |reason: &str| bad(entry, "PublishPort", reason);
    let (spec, protocol) = match entry.value.rsplit_once('/') {
        Some((spec, proto @ ("tcp" | "udp"))) => (spec, proto),
        Some(_) => return Err(fail("protocol must be tcp or udp")),
        None => (entry.value.as_str(), "tcp"),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [host, container] => ("", *host, *container),
        [ip, host, container] => (*ip, *host, *container),
        _ => return Err(fail("expected [IP:]HOSTPORT:CONTAINERPORT[/PROTOCOL]")),
    };
    let port = |p: &str| p.parse::<u16>().ok().filter(|p| *p != 0);
    let (Some(host_port), Some(container_port)) = (port(host_port), port(container_port)) else {
        return Err(fail("ports are numbers from 1 to 65535"));
    };
    if !host_ip.is_empty() && host_ip.parse::<std::net::IpAddr>().is_err() {
        return Err(fail("the host address is not an IP address"));
    }
    Ok(PortMapping {
        host_ip: host_ip.to_string(),
        host_port,
        container_port,
        protocol: protocol.to_string(),
    })
}

fn parse_volume(entry: &Entry) -> Result<VolumeMount, ContainerError> {
    let fail = |reason: &str| bad(entry, "Volume", reason);
    let parts: Vec<&str> = entry.value.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [source, target] => (*source, *target, false),
        [source, target, "ro"] => (*source, *target, true),
        [source, target, "rw"] => (*source, *target, false),
        _ => return Err(fail("expected SOURCE:TARGET[:ro|rw]")),
    };
    if !target.starts_with('/') || source.is_empty() {
        return Err(fail("the target must be an absolute path and the source not empty"));
    }
    if source.contains("..") || target.contains("..") {
        return Err(fail("paths may not contain \"..\""));
    }
    Ok(VolumeMount { source: source.to_string(), target: target.to_string(), read_only })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(text: &str) -> Result<ContainerSpec, ContainerError> {
        let name = UnitName::parse("app.container").unwrap();
        let file = UnitFile::parse(&name, text.as_bytes()).unwrap();
        ContainerSpec::from_unit(&file)
    }

    #[test]
    fn image_references_follow_docker_s_grammar() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let good = [
            "busybox".to_string(),
            "registry:5000/workload:1".to_string(),
            "172.31.90.30:5000/flotilla/workload:latest".to_string(),
            "localhost/a_b__c-d---e.f".to_string(),
            "Registry.Example.com/team/app:v1.2_3-rc".to_string(),
            "[::1]:5000/app".to_string(),
            format!("app@{digest}"),
            format!("ghcr.io/team/app:1@{digest}"),
        ];
        for image in &good {
            assert_eq!(check_image_reference(image), Ok(()), "{image}");
        }
        let bad = [
            ("UPPER/Case::bad", "repository name"),
            ("Busybox", "repository name"),
            ("app:", "a tag is"),
            ("app:-x", "a tag is"),
            (":latest", "has no name"),
            ("team//app", "repository name"),
            ("team/app/", "repository name"),
            ("-app", "repository name"),
            ("app.", "repository name"),
            ("a___b", "repository name"),
            ("app@sha256:xyz", "a digest is"),
            ("app@nocolon", "a digest is"),
            ("registry:99999/app", "port"),
            ("bad_host.io/app", "registry's host"),
            ("[::zz]/app", "IPv6"),
            ("app name", "repository name"),
        ];
        for (image, reason) in bad {
            let error = check_image_reference(image).expect_err(image);
            assert!(error.contains(reason), "{image}: {error}");
        }
        assert!(check_image_reference(&"a".repeat(256)).is_err());
        let error = spec("[Container]\nImage=UPPER/Case::bad\n").unwrap_err().to_string();
        assert!(error.contains("line 2: bad Image="), "{error}");
    }

    #[test]
    fn every_key_is_read() {
        let spec = spec(
            "[Container]\nImage=registry:5000/workload:1\nExec=httpd -f -p \"8080\"\n\
             Entrypoint=/bin/busybox\nEnvironment=A=1 \"B=two words\"\n\
             EnvironmentFile=/etc/app.env\n\
             PublishPort=8080:80\nPublishPort=127.0.0.1:5353:53/udp\nVolume=/srv:/data:ro\n\
             Network=host\nUser=nobody\nWorkingDir=/data\nLabel=team=web\nPullPolicy=never\n\
             HealthCmd=wget -q -O- localhost\nStopTimeout=5\n\
             [Service]\nRestart=on-failure\nRestartSec=2s\n",
        )
        .unwrap();
        assert_eq!(spec.image, "registry:5000/workload:1");
        assert_eq!(spec.exec.unwrap(), ["httpd", "-f", "-p", "8080"]);
        assert_eq!(spec.environment["B"], "two words");
        assert_eq!(spec.ports[1].protocol, "udp");
        assert_eq!(spec.ports[1].host_ip, "127.0.0.1");
        assert!(spec.volumes[0].read_only);
        assert_eq!(spec.pull_policy, PullPolicy::Never);
        assert_eq!(spec.stop_timeout, Duration::from_secs(5));
        assert_eq!(spec.restart, RestartPolicy::OnFailure);
        assert_eq!(spec.restart_sec, Duration::from_secs(2));
        assert_eq!(spec.labels["team"], "web");
    }

    #[test]
    fn refusals_name_the_line() {
        let cases = [
            ("[Unit]\nDescription=x\n", "no [Container] section"),
            ("[Container]\nExec=true\n", "no Image="),
            ("[Container]\nImage=a\nImagePull=yes\n", "line 3: unknown key \"ImagePull\""),
            ("[Container]\nImage=a\n[Service]\nExecStart=/bin/true\n", "line 4: unknown key"),
            ("[Container]\nImage=a\nPublishPort=80\n", "line 3: bad PublishPort="),
            ("[Container]\nImage=a\nPublishPort=70000:80\n", "1 to 65535"),
            ("[Container]\nImage=a\nVolume=/a:rel\n", "absolute path"),
            ("[Container]\nImage=a\nVolume=/a/../b:/c\n", "\"..\""),
            ("[Container]\nImage=a\nPullPolicy=sometimes\n", "line 3: bad PullPolicy="),
            ("[Container]\nImage=a\nEnvironment=NOVALUE\n", "NAME=VALUE"),
            ("[Container]\nImage=a\nExec=\"unterminated\n", "line 3: bad Exec="),
            ("[Container]\nImage=a\nLabel=flotilla.unit=x\n", "flotilla.*"),
            ("[Container]\nImage=a\nStopTimeout=soon\n", "line 3: bad StopTimeout="),
            ("[Container]\nImage=a\nStopTimeout=-1\n", "whole seconds (30) or units"),
            ("[Container]\nImage=a\nPrePull=later\n", "line 3: bad PrePull="),
            ("[Container]\nImage=a\n[Service]\nRestart=sometimes\n", "line 4: bad Restart="),
        ];
        for (text, expected) in cases {
            let error = spec(text).unwrap_err().to_string();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn defaults_apply_when_keys_are_absent() {
        let spec = spec("[Container]\nImage=busybox\n").unwrap();
        assert_eq!(spec.pull_policy, PullPolicy::Missing);
        assert_eq!(spec.restart, RestartPolicy::No);
        assert_eq!(spec.stop_timeout, Duration::from_secs(10));
        assert!(spec.pre_pull);
        assert!(spec.exec.is_none() && spec.ports.is_empty());
    }

    #[test]
    fn images_are_pre_pulled_only_where_the_unit_could_run() {
        let east = BTreeMap::from([("region".to_string(), "east".to_string())]);
        let west = BTreeMap::from([("region".to_string(), "west".to_string())]);
        let id = "0123456789abcdef0123456789abcdef";
        let pull = |name: &str, text: &str, metadata: &BTreeMap<String, String>| {
            image_to_pre_pull(&UnitName::parse(name).unwrap(), text, id, metadata)
        };
        let plain = "[Container]\nImage=reg:5000/app:1\n";
        assert_eq!(pull("app.container", plain, &west).as_deref(), Some("reg:5000/app:1"));
        let pinned = format!("{plain}[X-Fleet]\nMachineMetadata=region=east\n");
        assert!(pull("app.container", &pinned, &east).is_some());
        assert!(pull("app.container", &pinned, &west).is_none());
        let elsewhere = format!("{plain}[X-Fleet]\nMachineID=fedcba\n");
        assert!(pull("app.container", &elsewhere, &east).is_none());
        assert!(pull("app.container", &format!("{plain}PrePull=no\n"), &east).is_none());
        assert!(pull("app.container", &format!("{plain}PullPolicy=never\n"), &east).is_none());
        assert!(pull("app@.container", plain, &east).is_none());
        assert!(pull("app.service", "[Service]\nExecStart=/bin/true\n", &east).is_none());
        assert!(pull("app@1.container", plain, &east).is_some());
    }
}
