//! The container executor: `.container` units on the host's own Docker engine, through bollard.
//!
//! A container belongs to flotilla when it carries our labels: the unit it runs, the hash of the
//! unit file it was made from and the machine that made it. Those labels are this executor's
//! equivalent of systemd's runtime directory: the agent adopts a labelled container whose unit
//! it still holds (same container id across an agent restart) and removes the rest.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HealthConfig, HealthStatusEnum, HostConfig,
    PortBinding,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    ListContainersOptionsBuilder, LogsOptionsBuilder, RemoveContainerOptionsBuilder,
    StopContainerOptionsBuilder,
};
use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::container::{ContainerSpec, PullPolicy};
use crate::systemd::Observed;
use crate::unit::{UnitFile, UnitName};

/// The label naming the unit a container runs.
pub const LABEL_UNIT: &str = "flotilla.unit";
/// The label holding the hash of the unit file the container was made from.
pub const LABEL_HASH: &str = "flotilla.hash";
/// The label naming the machine that made the container.
pub const LABEL_MACHINE: &str = "flotilla.machine";

/// A connection to the host's Docker engine.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    machine: String,
}

/// The container name for a unit: Docker allows fewer characters than unit names do.
pub fn container_name(unit: &UnitName) -> String {
    let stem = unit.as_str().trim_end_matches(".container");
    let safe: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' })
        .collect();
    format!("flotilla-{safe}")
}

fn engine_error(error: bollard::errors::Error) -> anyhow::Error {
    match error {
        bollard::errors::Error::DockerResponseServerError { status_code, message } => {
            anyhow!("{message} (HTTP {status_code})")
        }
        other => anyhow!(other),
    }
}

impl DockerEngine {
    /// Connects to the engine at the default socket and checks that it answers.
    pub async fn connect(machine: &str) -> anyhow::Result<DockerEngine> {
        let docker =
            Docker::connect_with_unix_defaults().context("failed to open the Docker socket")?;
        docker.ping().await.map_err(engine_error).context("the Docker engine does not answer")?;
        Ok(DockerEngine { docker, machine: machine.to_string() })
    }

    /// The hash each of our containers was made from, by unit.
    pub async fn installed(&self) -> anyhow::Result<BTreeMap<UnitName, String>> {
        let filters = HashMap::from([("label", vec![LABEL_UNIT.to_string()])]);
        let options = ListContainersOptionsBuilder::new().all(true).filters(&filters).build();
        let containers = self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(engine_error)
            .context("failed to list containers")?;
        let mut found = BTreeMap::new();
        for container in containers {
            let labels = container.labels.unwrap_or_default();
            let (Some(unit), Some(hash)) = (labels.get(LABEL_UNIT), labels.get(LABEL_HASH)) else {
                continue;
            };
            if let Ok(unit) = UnitName::parse(unit) {
                found.insert(unit, hash.clone());
            }
        }
        Ok(found)
    }

    /// Whether the engine holds `image`.
    pub async fn has_image(&self, image: &str) -> bool {
        self.docker.inspect_image(image).await.is_ok()
    }

    /// Pulls `image` from its registry, logging the engine's progress.
    pub async fn pull(&self, image: &str) -> anyhow::Result<()> {
        info!(image = %image, "pulling image");
        let options = CreateImageOptionsBuilder::new().from_image(image).build();
        let mut progress = self.docker.create_image(Some(options), None, None);
        while let Some(step) = progress.next().await {
            let step =
                step.map_err(engine_error).with_context(|| format!("failed to pull {image}"))?;
            let (Some(status), layer) = (step.status, step.id.unwrap_or_default()) else {
                continue;
            };
            // Byte counts arrive many times a second per layer; the milestones are worth more.
            if matches!(status.as_str(), "Downloading" | "Extracting" | "Waiting") {
                debug!(image = %image, layer = %layer, status = %status, "pull progress");
            } else {
                info!(image = %image, layer = %layer, status = %status, "pull progress");
            }
        }
        info!(image = %image, "image pulled");
        Ok(())
    }

    /// The last `lines` lines the unit's container wrote, stdout and stderr interleaved.
    pub async fn logs(&self, unit: &UnitName, lines: u32) -> anyhow::Result<String> {
        let name = container_name(unit);
        let options =
            LogsOptionsBuilder::new().stdout(true).stderr(true).tail(&lines.to_string()).build();
        let mut stream = self.docker.logs(&name, Some(options));
        let mut text = String::new();
        while let Some(chunk) = stream.next().await {
            let chunk =
                chunk.map_err(engine_error).with_context(|| format!("no logs of {unit}"))?;
            text.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(text)
    }

    /// The unit's container log from its last `lines` lines on, as it grows.
    pub fn follow_logs(
        &self,
        unit: &UnitName,
        lines: u32,
    ) -> impl Stream<Item = Result<Vec<u8>, String>> + Send + use<> {
        let options = LogsOptionsBuilder::new()
            .stdout(true)
            .stderr(true)
            .follow(true)
            .tail(&lines.to_string())
            .build();
        let unit = unit.clone();
        self.docker.logs(&container_name(&unit), Some(options)).map(move |chunk| {
            chunk
                .map(|chunk| chunk.into_bytes().to_vec())
                .map_err(|e| format!("no logs of {unit}: {:#}", engine_error(e)))
        })
    }

    /// Makes the image present as the unit's pull policy says.
    async fn ensure_image(&self, spec: &ContainerSpec) -> anyhow::Result<()> {
        let present = self.has_image(&spec.image).await;
        match (spec.pull_policy, present) {
            (PullPolicy::Never, false) => {
                bail!("image {} is not present and PullPolicy=never", spec.image)
            }
            (PullPolicy::Never, true) | (PullPolicy::Missing, true) => Ok(()),
            (PullPolicy::Missing, false) | (PullPolicy::Always, _) => self.pull(&spec.image).await,
        }
    }

    /// Creates the unit's container from its file, replacing any older one.
    pub async fn install(&self, unit: &UnitName, text: &str, hash: &str) -> anyhow::Result<()> {
        let file = UnitFile::parse(unit, text.as_bytes())?;
        let spec = ContainerSpec::from_unit(&file)?;
        self.uninstall(unit).await?;
        self.ensure_image(&spec).await?;

        let mut labels: HashMap<String, String> = spec.labels.clone().into_iter().collect();
        labels.insert(LABEL_UNIT.into(), unit.to_string());
        labels.insert(LABEL_HASH.into(), hash.to_string());
        labels.insert(LABEL_MACHINE.into(), self.machine.clone());

        let mut env: Vec<String> = Vec::new();
        for path in &spec.environment_files {
            let content = tokio::fs::read_to_string(path)
                .await
                .with_context(|| format!("failed to read EnvironmentFile {path}"))?;
            env.extend(
                content
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty() && !l.starts_with('#') && l.contains('='))
                    .map(str::to_string),
            );
        }
        env.extend(spec.environment.iter().map(|(k, v)| format!("{k}={v}")));

        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for port in &spec.ports {
            let key = format!("{}/{}", port.container_port, port.protocol);
            exposed.push(key.clone());
            let binding = PortBinding {
                host_ip: (!port.host_ip.is_empty()).then(|| port.host_ip.clone()),
                host_port: Some(port.host_port.to_string()),
            };
            port_bindings
                .entry(key)
                .or_insert_with(|| Some(Vec::new()))
                .get_or_insert_default()
                .push(binding);
        }
        let binds = spec
            .volumes
            .iter()
            .map(|v| format!("{}:{}{}", v.source, v.target, if v.read_only { ":ro" } else { "" }))
            .collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: spec.exec.clone(),
            entrypoint: spec.entrypoint.clone(),
            env: Some(env),
            labels: Some(labels),
            user: spec.user.clone(),
            working_dir: spec.working_dir.clone(),
            exposed_ports: Some(exposed),
            stop_timeout: Some(spec.stop_timeout.as_secs() as i64),
            healthcheck: spec.health_cmd.as_ref().map(|cmd| HealthConfig {
                test: Some([vec!["CMD".to_string()], cmd.clone()].concat()),
                ..HealthConfig::default()
            }),
            host_config: Some(HostConfig {
                binds: Some(binds),
                port_bindings: Some(port_bindings),
                network_mode: spec.network.clone(),
                ..HostConfig::default()
            }),
            ..ContainerCreateBody::default()
        };
        let options = CreateContainerOptionsBuilder::new().name(&container_name(unit)).build();
        self.docker
            .create_container(Some(options), body)
            .await
            .map_err(engine_error)
            .with_context(|| format!("failed to create the container of {unit}"))?;
        Ok(())
    }

    /// Starts the unit's container.
    pub async fn start(&self, unit: &UnitName) -> anyhow::Result<()> {
        self.docker
            .start_container(&container_name(unit), None)
            .await
            .map_err(engine_error)
            .with_context(|| format!("failed to start {unit}"))
    }

    /// Stops the unit's container within its StopTimeout, or within `grace` when one is given,
    /// then kills it.
    pub async fn stop(&self, unit: &UnitName, grace: Option<Duration>) -> anyhow::Result<()> {
        let options =
            grace.map(|g| StopContainerOptionsBuilder::new().t(g.as_secs() as i32).build());
        match self.docker.stop_container(&container_name(unit), options).await {
            Ok(()) => Ok(()),
            // 304: already stopped; 404: no such container. Both mean stopped.
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304 | 404,
                ..
            }) => Ok(()),
            Err(error) => {
                Err(engine_error(error)).with_context(|| format!("failed to stop {unit}"))
            }
        }
    }

    /// Removes the unit's container, running or not.
    pub async fn uninstall(&self, unit: &UnitName) -> anyhow::Result<()> {
        let options = RemoveContainerOptionsBuilder::new().force(true).v(true).build();
        match self.docker.remove_container(&container_name(unit), Some(options)).await {
            Ok(()) => Ok(()),
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                Ok(())
            }
            Err(error) => {
                Err(engine_error(error)).with_context(|| format!("failed to remove {unit}"))
            }
        }
    }

    /// The container's state, in systemd's words.
    pub async fn observe(&self, unit: &UnitName) -> anyhow::Result<Observed> {
        let inspect = match self.docker.inspect_container(&container_name(unit), None).await {
            Ok(inspect) => inspect,
            Err(bollard::errors::Error::DockerResponseServerError { status_code: 404, .. }) => {
                return Ok(Observed {
                    load: "not-found".into(),
                    active: "inactive".into(),
                    sub: "dead".into(),
                    main_pid: 0,
                    since_ms: 0,
                    detail: None,
                });
            }
            Err(error) => return Err(engine_error(error)),
        };
        let state = inspect.state.unwrap_or_default();
        let exit_code = state.exit_code.unwrap_or(0);
        let (active, sub, detail) = match state.status {
            Some(ContainerStateStatusEnum::RUNNING) => {
                let unhealthy = state
                    .health
                    .as_ref()
                    .and_then(|h| h.status)
                    .is_some_and(|s| s == HealthStatusEnum::UNHEALTHY);
                ("active", "running", unhealthy.then(|| "health check failing".to_string()))
            }
            Some(ContainerStateStatusEnum::PAUSED) => ("active", "paused", None),
            Some(ContainerStateStatusEnum::RESTARTING) => ("activating", "auto-restart", None),
            Some(ContainerStateStatusEnum::REMOVING) => ("deactivating", "stop", None),
            Some(ContainerStateStatusEnum::EXITED) if state.oom_killed == Some(true) => {
                ("failed", "oom-kill", Some("container was killed for lack of memory".into()))
            }
            Some(ContainerStateStatusEnum::EXITED) if exit_code != 0 => {
                ("failed", "exited", Some(format!("container exited with code {exit_code}")))
            }
            Some(ContainerStateStatusEnum::DEAD) => ("failed", "dead", state.error.clone()),
            _ => ("inactive", "dead", None),
        };
        let running = active == "active";
        let stamp =
            if running { state.started_at.as_deref() } else { state.finished_at.as_deref() };
        let since_ms = stamp
            .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_millis() as u64);
        Ok(Observed {
            load: "loaded".into(),
            active: active.into(),
            sub: sub.into(),
            main_pid: if running { state.pid.unwrap_or(0) as u32 } else { 0 },
            since_ms,
            detail,
        })
    }

    /// Sends the unit name of every container event on our containers, until `tx` closes.
    pub async fn follow_changes(&self, tx: mpsc::UnboundedSender<UnitName>) -> anyhow::Result<()> {
        let filters = HashMap::from([
            ("type", vec!["container".to_string()]),
            ("label", vec![LABEL_UNIT.to_string()]),
        ]);
        let options = EventsOptionsBuilder::new().filters(&filters).build();
        let mut events = self.docker.events(Some(options));
        while let Some(event) = events.next().await {
            let event = event.map_err(engine_error).context("Docker event stream failed")?;
            let unit = event
                .actor
                .and_then(|a| a.attributes)
                .and_then(|attrs| attrs.get(LABEL_UNIT).cloned())
                .and_then(|u| UnitName::parse(&u).ok());
            if let Some(unit) = unit
                && tx.send(unit).is_err()
            {
                return Ok(());
            }
        }
        Err(anyhow!("Docker event stream ended"))
    }
}
