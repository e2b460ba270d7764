//! The executor: the host's systemd, driven over the system bus.
//!
//! Unit files live in a runtime directory of flotd's own and are linked into systemd's runtime
//! search path, so a reboot forgets them and nothing flotd writes survives outside `/run`. State
//! changes arrive as `PropertiesChanged` signals from systemd; this module turns them into unit
//! names and leaves the decision of what to do to the reconciler.
//!
//! A connection holds one `JobRemoved` subscription, shared by every call that waits for a job:
//! dbus-daemon limits the match rules of a connection, so a subscription per stop would fail
//! once a host stops a few hundred units at once.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, anyhow, bail};
use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, error, warn};
use zbus::fdo::PropertiesProxy;
use zbus::names::InterfaceName;
use zbus::{Connection, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant};
use zbus_systemd::systemd1::{JobRemovedStream, ManagerProxy};

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
    jobs: Arc<Mutex<Jobs>>,
    /// Whether systemd loads a unit file it has not seen without a reload (version 246 on).
    loads_new_files: bool,
}

/// Whether a systemd reporting `version` ("252.39-1~deb12u2", "246") reads a new unit file on
/// demand rather than only on reload.
fn loads_new_files(version: &str) -> bool {
    let major: String = version.trim().chars().take_while(char::is_ascii_digit).collect();
    major.parse::<u32>().is_ok_and(|major| major >= 246)
}

const SYSTEMD: &str = "org.freedesktop.systemd1";
const UNIT_PATHS: &str = "/org/freedesktop/systemd1/unit";
const UNIT_INTERFACE: InterfaceName<'static> =
    InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Unit");
const SERVICE_INTERFACE: InterfaceName<'static> =
    InterfaceName::from_static_str_unchecked("org.freedesktop.systemd1.Service");

/// How long a start waits for its job to end, so that the state read next is the one the start
/// led to. A unit slower than this is seen activating, and its outcome arrives as a change.
const START_SETTLE: Duration = Duration::from_secs(2);

/// How long the end of a job that nobody waits for is kept for a caller about to ask.
const ENDED_KEPT: Duration = Duration::from_secs(10);

/// The ends of systemd's jobs, on their way from the one `JobRemoved` subscription to the calls
/// that wait for them.
///
/// A job can end before the reply naming it has reached its caller, and then before the caller
/// could wait for it; such an end is kept for [`ENDED_KEPT`] so that the wait still finds it.
#[derive(Default)]
struct Jobs {
    /// Who waits for which job.
    waiting: HashMap<OwnedObjectPath, oneshot::Sender<String>>,
    /// The result of each job that ended with nobody waiting.
    ended: HashMap<OwnedObjectPath, String>,
    /// The jobs of `ended` in the order they ended, with when, for forgetting them.
    ended_order: VecDeque<(Instant, OwnedObjectPath)>,
    /// Whether the subscription ended, so that no job will be heard of again.
    closed: bool,
}

impl Jobs {
    /// Hands a job's result to its waiter, or keeps it for one.
    fn job_ended(&mut self, job: OwnedObjectPath, result: String, now: Instant) {
        while let Some((at, _)) = self.ended_order.front()
            && now.duration_since(*at) >= ENDED_KEPT
        {
            if let Some((_, old)) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
        match self.waiting.remove(&job) {
            // A waiter that gave up meanwhile no longer wants the result.
            Some(waiter) => drop(waiter.send(result)),
            None => {
                self.ended_order.push_back((now, job.clone()));
                self.ended.insert(job, result);
            }
        }
    }

    /// The result of `job` if it ended already, else a receiver of its result.
    fn wait_for(&mut self, job: &OwnedObjectPath) -> anyhow::Result<JobEnd> {
        if let Some(result) = self.ended.remove(job) {
            return Ok(JobEnd::Ended(result));
        }
        if self.closed {
            bail!("systemd's job signals are no longer received");
        }
        let (sender, receiver) = oneshot::channel();
        self.waiting.insert(job.clone(), sender);
        Ok(JobEnd::Pending(receiver))
    }
}

/// Where the result of a job will come from.
enum JobEnd {
    Ended(String),
    Pending(oneshot::Receiver<String>),
}

/// Takes a job's waiter out of the table when its wait ends or is dropped at a timeout, so that
/// the table only holds live waits.
struct WaitGuard {
    jobs: Arc<Mutex<Jobs>>,
    job: OwnedObjectPath,
}

impl Drop for WaitGuard {
    fn drop(&mut self) {
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.waiting.remove(&self.job);
        }
    }
}

/// The end of one job, as the connection's `JobRemoved` subscription reports it.
struct JobWait {
    end: JobEnd,
    _guard: WaitGuard,
}

impl JobWait {
    /// Waits for the job to end and returns its result: done, failed, canceled, timeout and so on.
    async fn result(self) -> anyhow::Result<String> {
        match self.end {
            JobEnd::Ended(result) => Ok(result),
            JobEnd::Pending(receiver) => {
                receiver.await.map_err(|_| anyhow!("systemd's job signals are no longer received"))
            }
        }
    }
}

/// A start job systemd has queued.
///
/// Starting and waiting are apart so that a caller can make its next call while earlier jobs
/// run: a unit slow to start then costs it [`START_SETTLE`] once, not once a unit.
pub struct StartJob {
    unit: UnitName,
    wait: anyhow::Result<JobWait>,
}

impl StartJob {
    /// Waits up to [`START_SETTLE`] for the job to end. A oneshot unit is then active or failed,
    /// and a simple service running, so the state read next is the one the start led to and is
    /// reported once. A unit still starting by then is left to it; its outcome arrives later as a
    /// state change.
    pub async fn settle(self) {
        let (unit, wait) = (self.unit, self.wait);
        let ended = async { wait?.result().await };
        match tokio::time::timeout(START_SETTLE, ended).await {
            Ok(Ok(result)) => debug!(unit.name = %unit, job.result = %result, "start job ended"),
            Ok(Err(error)) => {
                debug!(unit.name = %unit, error = %format!("{error:#}"), "start job not followed");
            }
            Err(_) => debug!(unit.name = %unit, "start job still running"),
        }
    }
}

/// Hands the end of every job systemd reports to its waiter, for as long as the bus lasts.
///
/// It never blocks: a reader that stopped would hold up the connection's other messages, the
/// replies to the agent's own calls among them.
async fn follow_jobs(mut removed: JobRemovedStream, jobs: Arc<Mutex<Jobs>>) {
    while let Some(signal) = removed.next().await {
        let Ok(args) = signal.args() else { continue };
        let (job, result) = (args.job, args.result);
        jobs.lock().expect("jobs lock").job_ended(job, result, Instant::now());
    }
    error!("lost systemd's job signals");
    let mut jobs = jobs.lock().expect("jobs lock");
    jobs.closed = true;
    // Dropping the senders ends every wait at once.
    jobs.waiting.clear();
}

/// The value of one property `Get`.
fn property<T>(value: zbus::fdo::Result<OwnedVariant>, name: &str) -> anyhow::Result<T>
where
    T: TryFrom<OwnedVariant, Error = zbus::Error>,
{
    let value = value.with_context(|| format!("failed to read {name}"))?;
    T::try_from(value).with_context(|| format!("systemd gave an unexpected {name}"))
}

impl Systemd {
    /// Connects to the system bus and subscribes to systemd's signals.
    pub async fn connect(unit_dir: &Path) -> anyhow::Result<Systemd> {
        let conn = Connection::system().await.context("failed to connect to the system bus")?;
        let manager = ManagerProxy::new(&conn).await.context("failed to reach systemd")?;
        // The match rule is in place before any job is asked for, so no job's end goes unseen.
        let removed = manager
            .receive_job_removed()
            .await
            .context("failed to subscribe to systemd's job signals")?;
        // systemd only emits unit and job signals to clients that subscribed.
        manager.subscribe().await.context("failed to subscribe to systemd signals")?;
        tokio::fs::create_dir_all(unit_dir)
            .await
            .with_context(|| format!("failed to create {}", unit_dir.display()))?;
        let version = manager.version().await.context("failed to read systemd's version")?;
        let loads_new_files = loads_new_files(&version);
        debug!(version, loads_new_files, "connected to systemd");
        let jobs = Arc::new(Mutex::new(Jobs::default()));
        tokio::spawn(follow_jobs(removed, jobs.clone()));
        Ok(Systemd { conn, manager, unit_dir: unit_dir.to_path_buf(), jobs, loads_new_files })
    }

    /// Follows `job`, which systemd has just queued, until it ends.
    fn follow_job(&self, job: OwnedObjectPath) -> anyhow::Result<JobWait> {
        let end = self.jobs.lock().expect("jobs lock").wait_for(&job)?;
        Ok(JobWait { end, _guard: WaitGuard { jobs: self.jobs.clone(), job } })
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
    ///
    /// One round trip: systemd loads a unit when its object is first addressed, so no
    /// `LoadUnit` call comes first, and the reads go out together. A unit systemd has no file
    /// for reads as `not-found` and `inactive`.
    ///
    /// The reads are single `Get`s, not one `GetAll`: to answer `GetAll` on a unit that just
    /// changed state, systemd works out `UnitFileState` and `UnitFilePreset`, which scan the unit
    /// directories. On the test hosts (systemd 252) that took it about 4 ms a unit, against well
    /// under 1 ms for the five `Get`s, and systemd's time is what a bulk start is short of.
    pub async fn observe(&self, unit: &UnitName) -> anyhow::Result<Observed> {
        let path = format!("{UNIT_PATHS}/{}", zbus_systemd::bus_label_escape(unit.as_str()));
        let proxy = PropertiesProxy::new(&self.conn, SYSTEMD, path).await?;
        let is_service = unit.suffix() == ".service";
        let (load, active, sub, since_us, main_pid) = tokio::join!(
            proxy.get(UNIT_INTERFACE, "LoadState"),
            proxy.get(UNIT_INTERFACE, "ActiveState"),
            proxy.get(UNIT_INTERFACE, "SubState"),
            proxy.get(UNIT_INTERFACE, "StateChangeTimestamp"),
            async {
                match is_service {
                    true => Some(proxy.get(SERVICE_INTERFACE, "MainPID").await),
                    false => None,
                }
            },
        );
        let read = || -> anyhow::Result<Observed> {
            let load: String = property(load, "LoadState")?;
            // Only a loaded service has a main process worth asking about.
            let main_pid = match main_pid {
                Some(value) if load == "loaded" => property(value, "MainPID")?,
                _ => 0,
            };
            Ok(Observed {
                load,
                active: property(active, "ActiveState")?,
                sub: property(sub, "SubState")?,
                main_pid,
                since_ms: property::<u64>(since_us, "StateChangeTimestamp")? / 1000,
                detail: None,
            })
        };
        read().with_context(|| format!("failed to read the state of {unit}"))
    }

    /// The hash of each unit file in flotd's directory.
    pub async fn installed(&self) -> anyhow::Result<BTreeMap<UnitName, String>> {
        let mut files = BTreeMap::new();
        let mut dir = tokio::fs::read_dir(&self.unit_dir)
            .await
            .with_context(|| format!("failed to list {}", self.unit_dir.display()))?;
        while let Some(entry) = dir.next_entry().await? {
            let file_name = entry.file_name();
            // A write that was cut short leaves its temporary file, which is no unit.
            if file_name.to_str().is_some_and(|n| n.starts_with('.') && n.ends_with(".tmp")) {
                continue;
            }
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
    /// The caller reloads systemd once after a batch of installs that replaced a file systemd
    /// may have read, or that returned true: the unit was enabled, or this systemd is older
    /// than 246 and reads new files only on reload. Since 246 a unit not loaded yet, or found
    /// missing before, is read from disk when it is first asked for.
    pub async fn install(&self, unit: &UnitName, text: &str) -> anyhow::Result<bool> {
        let path = self.path_of(unit);
        // A name of its own length: a unit name may take all 255 bytes a file name has.
        let tmp = self.unit_dir.join(format!(".{}.tmp", &keyspace::hash_text(unit.as_str())[..16]));
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
        Ok(has_install || !self.loads_new_files)
    }

    /// Removes the links systemd keeps to `units`, in one call: each `DisableUnitFiles` walks
    /// every link in systemd's unit directories, so one call per unit cost a host with
    /// thousands of units a walk of thousands of links for every unit it dropped.
    ///
    /// The caller then removes each file with [`Systemd::uninstall`].
    pub async fn unlink(&self, units: &[&UnitName]) {
        if units.is_empty() {
            return;
        }
        let names: Vec<String> = units.iter().map(|u| u.to_string()).collect();
        if let Err(error) = self.manager.disable_unit_files(names, true).await {
            // One name systemd refuses fails the call: try each alone.
            debug!(units = units.len(), error = %error, "disable failed; disabling one by one");
            for unit in units {
                if let Err(error) =
                    self.manager.disable_unit_files(vec![unit.to_string()], true).await
                {
                    debug!(unit.name = %unit, error = %error, "disable failed");
                }
            }
        }
    }

    /// Removes a unit's file; the caller stops it and unlinks it first, and reloads after.
    pub async fn uninstall(&self, unit: &UnitName) -> anyhow::Result<()> {
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

    /// Queues a start job; [`StartJob::settle`] waits for it to end.
    pub async fn start(&self, unit: &UnitName) -> anyhow::Result<StartJob> {
        // A failed unit keeps its failed state across starts unless it is reset.
        let _ = self.manager.reset_failed_unit(unit.to_string()).await;
        let job = self
            .manager
            .start_unit(unit.to_string(), "replace".into())
            .await
            .with_context(|| format!("failed to start {unit}"))?;
        Ok(StartJob { unit: unit.clone(), wait: self.follow_job(job) })
    }

    /// Stops a unit and waits until systemd finished stopping it, ExecStop included; the call
    /// and the wait together take at most `timeout`.
    pub async fn stop(&self, unit: &UnitName, timeout: Duration) -> anyhow::Result<()> {
        let stop = async {
            let job = match self.manager.stop_unit(unit.to_string(), "replace".into()).await {
                Ok(job) => job,
                Err(zbus::Error::MethodError(name, _, _))
                    if name.as_str() == "org.freedesktop.systemd1.NoSuchUnit" =>
                {
                    return Ok(());
                }
                Err(error) => {
                    return Err(error).with_context(|| format!("failed to stop {unit}"));
                }
            };
            let ended = async { self.follow_job(job)?.result().await };
            ended.await.map(drop).with_context(|| format!("failed to follow the stop of {unit}"))
        };
        tokio::time::timeout(timeout, stop).await.map_err(|_| {
            anyhow!("{unit} did not stop within {}", humantime::format_duration(timeout))
        })?
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

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u32) -> OwnedObjectPath {
        OwnedObjectPath::try_from(format!("/org/freedesktop/systemd1/job/{id}")).unwrap()
    }

    #[test]
    fn new_files_are_read_without_a_reload_from_systemd_246() {
        assert!(loads_new_files("252.39-1~deb12u2"));
        assert!(loads_new_files("246"));
        assert!(!loads_new_files("245.4-4ubuntu3"));
        assert!(!loads_new_files("239 (239-78.el8)"));
        assert!(!loads_new_files("unknown"));
    }

    #[test]
    fn an_end_heard_before_the_wait_is_found_by_it() {
        let mut jobs = Jobs::default();
        jobs.job_ended(job(1), "done".into(), Instant::now());
        assert!(matches!(jobs.wait_for(&job(1)), Ok(JobEnd::Ended(result)) if result == "done"));
        assert!(jobs.ended.is_empty());
    }

    #[test]
    fn an_end_heard_after_the_wait_goes_to_the_waiter() {
        let mut jobs = Jobs::default();
        let Ok(JobEnd::Pending(mut receiver)) = jobs.wait_for(&job(2)) else {
            panic!("the job has not ended yet");
        };
        jobs.job_ended(job(3), "done".into(), Instant::now());
        assert!(receiver.try_recv().is_err());
        jobs.job_ended(job(2), "failed".into(), Instant::now());
        assert_eq!(receiver.try_recv().unwrap(), "failed");
        assert!(jobs.waiting.is_empty());
    }

    #[test]
    fn an_end_nobody_waits_for_is_forgotten() {
        let mut jobs = Jobs::default();
        let t0 = Instant::now();
        jobs.job_ended(job(4), "done".into(), t0);
        jobs.job_ended(job(5), "done".into(), t0 + ENDED_KEPT / 2);
        jobs.job_ended(job(6), "done".into(), t0 + ENDED_KEPT);
        assert_eq!(jobs.ended.keys().count(), 2);
        assert!(!jobs.ended.contains_key(&job(4)));
        assert_eq!(jobs.ended_order.len(), 2);
    }

    #[test]
    fn no_wait_begins_once_the_signals_are_lost() {
        let mut jobs = Jobs { closed: true, ..Jobs::default() };
        assert!(jobs.wait_for(&job(7)).is_err());
    }
}
