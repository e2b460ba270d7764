//! The executor: the host's systemd, driven over the system bus.
//!
//! Unit files live in a runtime directory of flotd's own and are linked into systemd's runtime
//! search path, so a reboot forgets them and nothing flotd writes survives outside `/run`. State
//! changes arrive as `PropertiesChanged` signals from systemd; this module turns them into unit
//! names and leaves the decision of what to do to the reconciler.

use std::collections::BTreeMap;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow};
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::{debug, warn};
use zbus::proxy::CacheProperties;
use zbus::{Connection, MatchRule, MessageStream};
use zbus_systemd::systemd1::{ManagerProxy, ServiceProxy, UnitProxy};

use crate::keyspace;
use crate::unit::{UnitFile, UnitName};

/// What systemd says about one unit right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// LoadState: loaded, not-found, bad-setting, error, masked.
    pub load: String,
    /// ActiveState: active, reloading, inactive, failed, activating, deactivating.
    pub active: String,
    /// SubState, specific to the unit type.
    pub sub: String,
    /// The main process of a service, 0 if none.
    pub main_pid: u32,
    /// When the unit last changed state, in milliseconds since the epoch.
    pub since_ms: u64,
    /// A word on why the unit is in this state, when the executor knows one.
    pub detail: Option<String>,
}

impl Observed {
    /// Whether the unit runs or is on its way to running.
    pub fn is_up(&self) -> bool {
        matches!(self.active.as_str(), "active" | "activating" | "reloading")
    }
}

/// A connection to the host's systemd and the directory flotd keeps unit files in.
#[derive(Clone)]
pub struct Systemd {
    conn: Connection,
    manager: ManagerProxy<'static>,
    unit_dir: PathBuf,
}

const SYSTEMD: &str = "org.freedesktop.systemd1";
const UNIT_PATHS: &str = "/org/freedesktop/systemd1/unit";

impl Systemd {
    /// Connects to the system bus and subscribes to systemd's signals.
    pub async fn connect(unit_dir: &Path) -> anyhow::Result<Systemd> {
        let conn = Connection::system().await.context("failed to connect to the system bus")?;
        let manager = ManagerProxy::new(&conn).await.context("failed to reach systemd")?;
        // systemd only emits unit and job signals to clients that subscribed.
        manager.subscribe().await.context("failed to subscribe to systemd signals")?;
        tokio::fs::create_dir_all(unit_dir)
            .await
            .with_context(|| format!("failed to create {}", unit_dir.display()))?;
        Ok(Systemd { conn, manager, unit_dir: unit_dir.to_path_buf() })
    }

    /// Sends the name of every unit whose state systemd reports changed, until `tx` closes.
    pub async fn follow_changes(&self, tx: mpsc::UnboundedSender<UnitName>) -> anyhow::Result<()> {
        let rule = MatchRule::builder()
            .msg_type(zbus::message::Type::Signal)
            .sender(SYSTEMD)
            .interface("org.freedesktop.DBus.Properties")
            .member("PropertiesChanged")
            .path_namespace(UNIT_PATHS)
            .build()?;
        let mut stream = MessageStream::for_match_rule(rule, &self.conn, None)
            .await
            .context("failed to watch systemd unit changes")?;
        while let Some(message) = stream.next().await {
            let Ok(message) = message else { continue };
            let header = message.header();
            let Some(path) = header.path() else { continue };
            let Some(label) =
                path.as_str().strip_prefix(UNIT_PATHS).and_then(|p| p.strip_prefix('/'))
            else {
                continue;
            };
            let Ok(name) = UnitName::parse(&zbus_systemd::bus_label_unescape(label)) else {
                continue;
            };
            if tx.send(name).is_err() {
                return Ok(());
            }
        }
        Err(anyhow!("systemd signal stream ended"))
    }

    /// Reads a unit's current state, loading it into systemd if needed.
    pub async fn observe(&self, unit: &UnitName) -> anyhow::Result<Observed> {
        let path = self
            .manager
            .load_unit(unit.to_string())
            .await
            .with_context(|| format!("failed to load {unit}"))?;
        let proxy = UnitProxy::builder(&self.conn)
            .path(path.clone())
            .cache_properties(CacheProperties::No)
            .build()
            .await?;
        let load = proxy.load_state().await?;
        let active = proxy.active_state().await?;
        let sub = proxy.sub_state().await?;
        let since_us = proxy.state_change_timestamp().await?;
        let mut main_pid = 0;
        if unit.suffix() == ".service" && load == "loaded" {
            let service = ServiceProxy::builder(&self.conn)
                .path(path)
                .cache_properties(CacheProperties::No)
                .build()
                .await?;
            main_pid = service.main_pid().await?;
        }
        Ok(Observed { load, active, sub, main_pid, since_ms: since_us / 1000, detail: None })
    }

    /// The hash of each unit file in flotd's directory.
    pub async fn installed(&self) -> anyhow::Result<BTreeMap<UnitName, String>> {
        let mut files = BTreeMap::new();
        let mut dir = tokio::fs::read_dir(&self.unit_dir)
            .await
            .with_context(|| format!("failed to list {}", self.unit_dir.display()))?;
        while let Some(entry) = dir.next_entry().await? {
            let file_name = entry.file_name();
            let Some(Ok(name)) = file_name.to_str().map(UnitName::parse) else {
                warn!(path = %entry.path().display(), "ignoring a file that is not a unit");
                continue;
            };
            let text = tokio::fs::read_to_string(entry.path()).await.unwrap_or_default();
            files.insert(name, keyspace::hash_text(&text));
        }
        Ok(files)
    }

    fn path_of(&self, unit: &UnitName) -> PathBuf {
        // UnitName admits no '/' and no "..", so the join stays inside the directory.
        self.unit_dir.join(unit.as_str())
    }

    /// Writes a unit file and links it into systemd; a unit with `[Install]` is enabled for
    /// this boot only, so its `WantedBy=` and friends behave as systemd says.
    ///
    /// The caller reloads systemd once after a batch of installs.
    pub async fn install(&self, unit: &UnitName, text: &str) -> anyhow::Result<()> {
        let path = self.path_of(unit);
        let tmp = path.with_extension("flotilla-tmp");
        tokio::fs::write(&tmp, text)
            .await
            .with_context(|| format!("failed to write {}", tmp.display()))?;
        tokio::fs::rename(&tmp, &path)
            .await
            .with_context(|| format!("failed to move {} into place", path.display()))?;

        let file = path.display().to_string();
        let has_install =
            UnitFile::parse(unit, text.as_bytes()).is_ok_and(|f| f.has_section("Install"));
        if has_install {
            self.manager
                .enable_unit_files(vec![file], true, true)
                .await
                .with_context(|| format!("failed to enable {unit}"))?;
        } else {
            self.manager
                .link_unit_files(vec![file], true, true)
                .await
                .with_context(|| format!("failed to link {unit}"))?;
        }
        Ok(())
    }

    /// Unlinks a unit and removes its file; the caller stops it first and reloads after.
    pub async fn uninstall(&self, unit: &UnitName) -> anyhow::Result<()> {
        if let Err(error) = self.manager.disable_unit_files(vec![unit.to_string()], true).await {
            debug!(unit.name = %unit, error = %error, "disable failed");
        }
        match tokio::fs::remove_file(self.path_of(unit)).await {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("failed to remove the file of {unit}"));
            }
        }
        // A runtime link left behind would keep pointing at the removed file.
        let link = Path::new("/run/systemd/system").join(unit.as_str());
        if tokio::fs::symlink_metadata(&link).await.is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = tokio::fs::remove_file(&link).await;
        }
        Ok(())
    }

    /// Makes systemd re-read unit files.
    pub async fn reload(&self) -> anyhow::Result<()> {
        self.manager.reload().await.context("failed to reload systemd")
    }

    /// Queues a start job; the outcome arrives later as a state change.
    pub async fn start(&self, unit: &UnitName) -> anyhow::Result<()> {
        // A failed unit keeps its failed state across starts unless it is reset.
        let _ = self.manager.reset_failed_unit(unit.to_string()).await;
        self.manager
            .start_unit(unit.to_string(), "replace".into())
            .await
            .with_context(|| format!("failed to start {unit}"))?;
        Ok(())
    }

    /// Stops a unit and waits until systemd finished stopping it, ExecStop included.
    pub async fn stop(&self, unit: &UnitName, timeout: Duration) -> anyhow::Result<()> {
        // Listen before asking, so the job's end cannot slip by unseen.
        let mut removed = self.manager.receive_job_removed().await?;
        let job = match self.manager.stop_unit(unit.to_string(), "replace".into()).await {
            Ok(job) => job,
            Err(zbus::Error::MethodError(name, _, _))
                if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
            {
                return Ok(());
            }
            Err(error) => return Err(error).with_context(|| format!("failed to stop {unit}")),
        };
        let wait = async {
            while let Some(signal) = removed.next().await {
                if signal.args().is_ok_and(|args| args.job == job) {
                    return;
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| {
            anyhow!("{unit} did not stop within {}", humantime::format_duration(timeout))
        })
    }

    /// Stops a unit, and kills what is left of it with SIGKILL once `grace` has passed: the
    /// stop job then ends at once, and the unit is not restarted as a killed one would be.
    pub async fn stop_within(&self, unit: &UnitName, grace: Duration) -> anyhow::Result<()> {
        if self.stop(unit, grace).await.is_ok() {
            return Ok(());
        }
        warn!(unit.name = %unit, "still stopping; killing it");
        const SIGKILL: i32 = 9;
        self.manager
            .kill_unit(unit.to_string(), "all".into(), SIGKILL)
            .await
            .with_context(|| format!("failed to kill {unit}"))
    }
}

/// Milliseconds since the epoch, for state records.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
