//! flotd: registers its host, holds the host's lease, and converges the host's systemd to the
//! claims the engine gave it.
//!
//! Start-up is ordered so the agent never acts on a cold cache: it reuses or grants the lease,
//! registers the machine, loads the whole keyspace and the state of every unit file it already
//! has, and only then starts, stops or removes anything. That order is what keeps running units
//! running (same main PID) across a restart of flotd within the lease's TTL.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use futures_util::{StreamExt, stream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::container::{ContainerSpec, RestartPolicy};
use crate::docker::DockerEngine;
use crate::engine::{self, EngineConfig};
use crate::journal;
use crate::keyspace::{self, Keyspace, MachineRecord, RECORD_VERSION, StateRecord, Transition};
use crate::lease::{self, Lease};
use crate::mirror::{self, Mirror, SharedMirror};
use crate::prepull::PrePuller;
use crate::reconcile::{self, Action, Local, Restart, Want};
use crate::store::{self, MAX_VALUE_BYTES, OPS_PER_TXN, Store};
use crate::systemd::{self, Observed, StartJob, Systemd};
use crate::unit::{FleetOptions, UnitFile, UnitName};

/// How flotd is configured; every field comes from a flag or a `FLOTD_*` variable.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// etcd client URLs.
    pub endpoints: Vec<String>,
    /// Key prefix in etcd.
    pub prefix: String,
    /// Lease time-to-live: how long a silent host keeps its units.
    pub ttl: Duration,
    /// The address published for this host.
    pub public_ip: String,
    /// This host's metadata for `MachineMetadata=`.
    pub metadata: BTreeMap<String, String>,
    /// Where the machine id is read from.
    pub machine_id_file: PathBuf,
    /// Where flotd keeps its unit files and its lease.
    pub runtime_dir: PathBuf,
    /// On SIGTERM leave units running and the lease alive, for a restart of flotd alone.
    pub keep_units_on_exit: bool,
    /// How long one unit may take to stop.
    pub stop_timeout: Duration,
    /// Pull the image of every container unit this host could run as soon as it is submitted.
    pub pre_pull: bool,
}

/// The shortest lease TTL accepted: below it a keepalive round trip is too large a share.
pub const MIN_TTL: Duration = Duration::from_secs(3);

impl AgentConfig {
    /// Checks the configuration before anything touches etcd or systemd.
    pub fn validate(&self) -> anyhow::Result<()> {
        if self.ttl < MIN_TTL {
            bail!("lease ttl {} is below the minimum of 3s", humantime::format_duration(self.ttl));
        }
        if self.ttl.subsec_nanos() != 0 {
            bail!("lease ttl must be a whole number of seconds");
        }
        if self.endpoints.is_empty() {
            bail!("no etcd endpoints given");
        }
        if let Some(problem) = self.endpoints.iter().find_map(|e| crate::store::endpoint_problem(e))
        {
            bail!("bad --endpoints: {problem}");
        }
        if let Some(problem) = crate::keyspace::prefix_problem(&self.prefix) {
            bail!("bad --prefix {:?}: {problem}", self.prefix);
        }
        Ok(())
    }
}

/// Parses `key=value,key=value` metadata.
pub fn parse_metadata(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    let mut metadata = BTreeMap::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("metadata entry {pair:?} is not key=value");
        };
        let (key, value) = (key.trim(), value.trim());
        if key.is_empty() || value.is_empty() {
            bail!("metadata entry {pair:?} has an empty key or value");
        }
        if metadata.insert(key.to_string(), value.to_string()).is_some() {
            bail!("metadata key {key:?} is given twice");
        }
    }
    Ok(metadata)
}

/// One thing the main loop reacts to.
enum Event {
    /// The mirror moved to a new revision.
    Keyspace,
    /// systemd reported a change on a unit.
    Unit(UnitName),
    /// A retry deadline passed.
    Timer,
    /// The lease is gone; the host's claims are gone with it.
    LeaseLost,
    /// SIGTERM or SIGINT.
    Shutdown,
}

/// Runs the agent until `shutdown` is cancelled or the lease is lost.
pub async fn run(config: AgentConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    config.validate()?;
    let machine_id = read_machine_id(&config)?;
    let hostname = std::fs::read_to_string("/etc/hostname").unwrap_or_default().trim().to_string();

    let store = Store::connect(&config.endpoints, &config.prefix).await?;
    let unit_dir = config.runtime_dir.join("units");
    let systemd = Systemd::connect(&unit_dir).await?;

    let lease_file = config.runtime_dir.join("lease");
    let lease = lease::acquire(&store, config.ttl, &lease_file).await?;
    let record = MachineRecord {
        version: RECORD_VERSION,
        id: machine_id.clone(),
        ip: config.public_ip.clone(),
        hostname,
        metadata: config.metadata.clone(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    register(&store, &record, &lease, config.ttl).await?;
    info!(machine.id = %machine_id, lease.id = lease.id, ttl = ?config.ttl, "host registered");

    let tasks = CancellationToken::new();
    let mirror: SharedMirror = Arc::new(RwLock::new(Mirror::default()));
    let (changed_tx, mut changed_rx) = watch::channel(0);
    tokio::spawn(mirror::run(store.clone(), mirror.clone(), changed_tx, tasks.clone()));

    let (lost_tx, mut lost_rx) = mpsc::channel(1);
    tokio::spawn(lease::keep_alive(store.clone(), lease.clone(), lost_tx, tasks.clone()));

    // Unbounded on purpose: a follower that blocked on a full channel would stop reading the
    // bus, and the agent's own D-Bus calls, waiting behind it, would never be answered.
    let (unit_tx, mut unit_rx) = mpsc::unbounded_channel();
    let unit_tx_docker = unit_tx.clone();
    let follower = systemd.clone();
    tokio::spawn(async move {
        if let Err(error) = follower.follow_changes(unit_tx).await {
            error!(error = %format!("{error:#}"), "lost systemd's signals");
        }
    });

    // The cold-cache rule: no decision before the first full listing.
    while !mirror.read().expect("mirror lock").ready() {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            result = changed_rx.changed() => result.context("keyspace mirror stopped")?,
        }
    }
    let engine_config = EngineConfig { machine: machine_id.clone(), lease: lease.id };
    // The engine has a token of its own: at shutdown it resigns first, while the lease stays
    // alive until the local units have stopped.
    let engine_token = tasks.child_token();
    tokio::spawn(engine::run(
        store.clone(),
        mirror.clone(),
        changed_rx.clone(),
        engine_config,
        engine_token.clone(),
    ));

    let docker = match DockerEngine::connect(&machine_id).await {
        Ok(docker) => {
            let follower = docker.clone();
            let tx = unit_tx_docker;
            tokio::spawn(async move {
                if let Err(error) = follower.follow_changes(tx).await {
                    error!(error = %format!("{error:#}"), "lost Docker's events");
                }
            });
            if config.pre_pull {
                let puller = PrePuller {
                    store: store.clone(),
                    mirror: mirror.clone(),
                    docker: docker.clone(),
                    machine: machine_id.clone(),
                    metadata: config.metadata.clone(),
                    lease: lease.id,
                };
                tokio::spawn(puller.run(changed_rx.clone(), tasks.clone()));
            }
            Some(docker)
        }
        Err(error) => {
            warn!(error = %format!("{error:#}"), "container units cannot run on this host");
            None
        }
    };
    tokio::spawn(journal::serve(store.clone(), machine_id.clone(), docker.clone(), tasks.clone()));
    let mut agent =
        Agent::new(store.clone(), systemd, docker, machine_id.clone(), lease.id, &config).await?;
    // Converge once from the warm cache before waiting: claims made before the listing would
    // otherwise wait for the next, unrelated change.
    // For two TTLs after start-up the engine may not have claimed the global units again yet.
    let started = Instant::now();
    let keep_globals =
        |agent: &Agent| (started.elapsed() < config.ttl * 2).then(|| agent.installed.clone());
    let wants_now = wants(
        &mirror.read().expect("mirror lock"),
        &machine_id,
        keep_globals(&agent).as_ref(),
        &config.metadata,
    );
    agent.converge(&wants_now).await;
    let outcome = loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => Event::Shutdown,
            _ = lost_rx.recv() => Event::LeaseLost,
            result = changed_rx.changed() => match result {
                Ok(()) => Event::Keyspace,
                Err(_) => Event::LeaseLost,
            },
            Some(unit) = unit_rx.recv() => Event::Unit(unit),
            () = sleep_until(agent.next_wake()) => Event::Timer,
        };
        match event {
            Event::Shutdown => break Ok(()),
            Event::LeaseLost => break Err(anyhow!("the lease of this host expired")),
            Event::Unit(unit) => {
                agent.dirty.insert(unit);
                // Take every change already queued, so a burst costs one pass.
                while let Ok(unit) = unit_rx.try_recv() {
                    agent.dirty.insert(unit);
                }
            }
            Event::Keyspace | Event::Timer => {}
        }
        let wants = wants(
            &mirror.read().expect("mirror lock"),
            &machine_id,
            keep_globals(&agent).as_ref(),
            &config.metadata,
        );
        agent.converge(&wants).await;
    };

    engine_token.cancel();
    match &outcome {
        Ok(()) if config.keep_units_on_exit => {
            tasks.cancel();
            lease::refresh(&store, &lease).await;
            info!(lease.id = lease.id, "leaving units running and the lease alive");
        }
        Ok(()) => {
            engine::resign(&store, lease.id).await;
            // The lease is renewed while units stop, however long their ExecStop takes: until
            // it is revoked no other host may start them, so they never run twice.
            info!("stopping local units");
            agent.converge(&BTreeMap::new()).await;
            tasks.cancel();
            lease::release(&store, &lease, &lease_file).await;
            info!("shutdown complete");
        }
        Err(_) => {
            // Self-fencing: the lease is gone or about to be, and the units may soon be placed
            // elsewhere. Global units cannot run twice, and `Fencing=false` units accepted the
            // risk; the rest stop before the lease can expire in etcd. The lease file stays: if
            // etcd lost quorum rather than this host, the lease is still alive when it returns,
            // and the next flotd takes it up with its claims.
            tasks.cancel();
            let wants =
                wants(&mirror.read().expect("mirror lock"), &machine_id, None, &config.metadata);
            let keep: BTreeMap<UnitName, Want> =
                wants.into_iter().filter(|(name, want)| !is_fenced(name, &want.text)).collect();
            info!(kept = keep.len(), "fencing: stopping local units");
            agent.reporting = false;
            agent.fence_grace = Some(lease::safety_margin(config.ttl) / 2);
            agent.converge(&keep).await;
            info!("fenced");
        }
    }
    outcome
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn read_machine_id(config: &AgentConfig) -> anyhow::Result<String> {
    let path = &config.machine_id_file;
    let id = std::fs::read_to_string(path)
        .with_context(|| format!("failed to read the machine id from {}", path.display()))?;
    let id = id.trim().to_string();
    if !keyspace::is_machine_id(&id) {
        bail!("{} does not hold a machine id (32 lower-case hex digits)", path.display());
    }
    Ok(id)
}

/// Writes the machine record under the lease, refusing to overwrite another live host's.
async fn register(
    store: &Store,
    record: &MachineRecord,
    lease: &Lease,
    ttl: Duration,
) -> anyhow::Result<()> {
    let key = store.keys.machine(&record.id);
    let value = keyspace::encode(record);
    let deadline = Instant::now() + ttl + Duration::from_secs(2);
    loop {
        // Write if the key is absent or already ours (a restart within the TTL).
        let txn = Txn::new()
            .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(
                key.as_str(),
                value.clone(),
                Some(PutOptions::new().with_lease(lease.id)),
            )])
            .or_else([TxnOp::txn(
                Txn::new()
                    .when([Compare::lease(key.as_str(), CompareOp::Equal, lease.id)])
                    .and_then([TxnOp::put(
                        key.as_str(),
                        value.clone(),
                        Some(PutOptions::new().with_lease(lease.id)),
                    )]),
            )]);
        let response = store.client().txn(txn).await.context("failed to register the host")?;
        let nested_ok = response
            .op_responses()
            .iter()
            .any(|op| matches!(op, etcd_client::TxnOpResponse::Txn(inner) if inner.succeeded()));
        if response.succeeded() || nested_ok {
            return Ok(());
        }
        // Another lease holds this id: either this host's previous life, which expires within
        // one TTL, or a second host with a copied machine id, which never does.
        if Instant::now() >= deadline {
            let other = store.get::<MachineRecord>(&key).await?.map(|(r, _)| r);
            let (ip, host) = other.map_or((String::new(), String::new()), |r| (r.ip, r.hostname));
            bail!(
                "machine id {} is already registered by another live host (ip {ip}, hostname \
                 {host}); every host needs its own /etc/machine-id",
                record.id
            );
        }
        debug!(machine.id = %record.id, "waiting for an earlier registration to expire");
        // Nothing renews the new lease yet: the wait may be longer than its TTL.
        lease::refresh(store, lease).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The units this host should have, from the mirror: those claimed for it and, given
/// `installed`, the global units it already runs and may run, so that a restarted flotd keeps
/// them while the engine claims them again for its new lease.
fn wants(
    mirror: &Mirror,
    machine_id: &str,
    installed: Option<&BTreeMap<UnitName, String>>,
    metadata: &BTreeMap<String, String>,
) -> BTreeMap<UnitName, Want> {
    let mut wants = BTreeMap::new();
    let claimed = mirror
        .claims
        .iter()
        .filter(|(_, claim)| claim.machine == machine_id)
        .map(|(name, _)| name)
        .chain(
            mirror
                .global_claims
                .iter()
                .filter(|(_, copies)| copies.contains_key(machine_id))
                .map(|(name, _)| name),
        );
    let kept_global = installed.into_iter().flat_map(|i| i.keys()).filter(|name| {
        let Some(record) = mirror.units.get(*name) else { return false };
        let options = UnitFile::parse(name, record.text.as_bytes())
            .ok()
            .and_then(|file| FleetOptions::from_unit(name, &file).ok());
        options.is_some_and(|o| {
            o.global && o.matches_machine_id(machine_id) && o.matches_metadata(metadata)
        })
    });
    for name in claimed.chain(kept_global) {
        let Some(record) = mirror.units.get(name) else {
            continue;
        };
        let target = mirror.desired_state(name);
        if !target.is_placed() {
            continue;
        }
        let (restart, restart_sec) = restart_policy(name, &record.text);
        wants.insert(
            name.clone(),
            Want {
                hash: record.hash.clone(),
                text: record.text.clone(),
                target,
                restart,
                restart_sec,
            },
        );
    }
    wants
}

/// Whether a unit is stopped when its host can no longer renew its lease: all but global units
/// and those with `Fencing=false`.
fn is_fenced(name: &UnitName, text: &str) -> bool {
    let options = UnitFile::parse(name, text.as_bytes())
        .ok()
        .and_then(|file| FleetOptions::from_unit(name, &file).ok());
    options.is_none_or(|o| !o.global && o.fencing)
}

/// systemd units are retried after failures; containers follow their `Restart=` and
/// `RestartSec=`.
fn restart_policy(name: &UnitName, text: &str) -> (Restart, Duration) {
    if !is_container(name) {
        return (Restart::OnFailure, Duration::ZERO);
    }
    let spec = UnitFile::parse(name, text.as_bytes())
        .ok()
        .and_then(|file| ContainerSpec::from_unit(&file).ok());
    let Some(spec) = spec else {
        return (Restart::Never, Duration::ZERO);
    };
    let restart = match spec.restart {
        RestartPolicy::Always => Restart::Always,
        RestartPolicy::OnFailure => Restart::OnFailure,
        RestartPolicy::No => Restart::Never,
    };
    (restart, spec.restart_sec)
}

fn is_container(name: &UnitName) -> bool {
    name.suffix() == ".container"
}

/// How many transitions a state record keeps.
const TRANSITIONS_KEPT: usize = 10;

/// Installs, starts and state reads in flight at once: enough to keep systemd busy while the
/// replies travel, and far below what dbus-daemon lets one connection have pending.
const UNIT_CALLS_IN_FLIGHT: usize = 16;

/// Stops in flight at once. A stop mostly waits for its job, but systemd watches the caller of
/// every pending job with a match rule of its own bus connection, and dbus-daemon allows one
/// connection 512: past that systemd loses the bus, and every call pending with it.
const STOPS_IN_FLIGHT: usize = 32;

/// Start jobs this agent keeps pending in systemd at once, for the same limit as stops.
const STARTS_PENDING: usize = 128;

/// How soon a pass follows one that could not stop a unit or write a state report.
const PASS_RETRY: Duration = Duration::from_secs(1);

/// While fencing, the least time a unit is given to stop before it is killed: long enough for
/// its stop job to be queued, which keeps systemd from restarting it once killed.
const FENCE_GRACE_FLOOR: Duration = Duration::from_millis(100);

/// A change to one unit's state report.
#[derive(Debug)]
enum ReportChange {
    /// Write this record under the lease.
    Put(StateRecord),
    /// Delete the report: the unit left this host.
    Delete,
}

/// Report changes that go to etcd in one transaction.
#[derive(Default)]
struct ReportBatch {
    changes: Vec<(UnitName, ReportChange)>,
    ops: Vec<TxnOp>,
    bytes: usize,
}

/// Groups report changes into transactions within etcd's limits on operations and request size.
///
/// No compare is needed: the reports are this host's own keys, and a put bound to a lease that
/// is gone fails the whole transaction, which is what the caller wants.
fn report_batches(
    keys: &Keyspace,
    machine_id: &str,
    lease: i64,
    changes: Vec<(UnitName, ReportChange)>,
) -> Vec<ReportBatch> {
    let mut batches = Vec::new();
    let mut batch = ReportBatch::default();
    for (name, change) in changes {
        let key = keys.state(machine_id, &name);
        let (op, bytes) = match &change {
            ReportChange::Put(record) => {
                let value = keyspace::encode(record);
                let bytes = key.len() + value.len();
                (TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease))), bytes)
            }
            ReportChange::Delete => {
                let bytes = key.len();
                (TxnOp::delete(key, None), bytes)
            }
        };
        let full = batch.ops.len() == OPS_PER_TXN || batch.bytes + bytes > MAX_VALUE_BYTES;
        if !batch.ops.is_empty() && full {
            batches.push(std::mem::take(&mut batch));
        }
        batch.changes.push((name, change));
        batch.ops.push(op);
        batch.bytes += bytes;
    }
    if !batch.ops.is_empty() {
        batches.push(batch);
    }
    batches
}

/// The agent's memory of its units between passes.
struct Agent {
    store: Store,
    systemd: Systemd,
    /// The host's Docker engine, for `.container` units; absent when none answers.
    docker: Option<DockerEngine>,
    machine_id: String,
    /// The lease state reports are bound to.
    lease: i64,
    stop_timeout: Duration,
    /// Each unit file on disk with its hash.
    installed: BTreeMap<UnitName, String>,
    /// The last state read from systemd per unit.
    observed: BTreeMap<UnitName, Observed>,
    /// The last record written to etcd per unit.
    reported: BTreeMap<UnitName, StateRecord>,
    /// Local bookkeeping the reconciler decides from.
    local: BTreeMap<UnitName, Local>,
    /// Units whose systemd state must be read again.
    dirty: BTreeSet<UnitName>,
    /// Whether passes write state reports; not while fencing, when etcd cannot be reached.
    reporting: bool,
    /// While fencing: how long a unit may take to stop before it is killed, so that it is gone
    /// before the lease can expire in etcd.
    fence_grace: Option<Duration>,
    /// When a pass is due to try again the stops and state reports the last one failed at.
    ///
    /// Such a failure, a call nobody answered, changes nothing that would wake a pass. The pass
    /// decides afresh: a unit still up is stopped again, a report not written is written.
    retry_pass_at: Option<Instant>,
}

impl Agent {
    async fn new(
        store: Store,
        systemd: Systemd,
        docker: Option<DockerEngine>,
        machine_id: String,
        lease: i64,
        config: &AgentConfig,
    ) -> anyhow::Result<Agent> {
        let mut installed = systemd.installed().await?;
        if let Some(docker) = &docker {
            installed.extend(docker.installed().await?);
        }
        let dirty = installed.keys().cloned().collect();
        // Reports from this host's previous life are adopted, so unchanged units cost no write.
        let mut reported = BTreeMap::new();
        let listing = store.list(&store.keys.dir(&format!("states/{machine_id}"))).await?;
        for kv in &listing.kvs {
            let Some(keyspace::Key::State(_, name)) = store.keys.parse(kv.key()) else {
                continue;
            };
            if let Ok(record) = keyspace::decode::<StateRecord>(kv.value()) {
                reported.insert(name, record);
            }
        }
        Ok(Agent {
            store,
            systemd,
            docker,
            machine_id,
            lease,
            stop_timeout: config.stop_timeout,
            installed,
            observed: BTreeMap::new(),
            reported,
            local: BTreeMap::new(),
            dirty,
            reporting: true,
            fence_grace: None,
            retry_pass_at: None,
        })
    }

    fn docker(&self) -> anyhow::Result<&DockerEngine> {
        self.docker.as_ref().ok_or_else(|| anyhow!("no Docker engine answers on this host"))
    }

    /// Stops a unit; with a `grace`, what still runs after it is killed.
    async fn stop_unit(&self, name: &UnitName, grace: Option<Duration>) -> anyhow::Result<()> {
        match (is_container(name), grace) {
            (true, grace) => self.docker()?.stop(name, grace).await,
            (false, None) => self.systemd.stop(name, self.stop_timeout).await,
            (false, Some(grace)) => self.systemd.stop_within(name, grace).await,
        }
    }

    /// Installs a unit's file; returns whether systemd must reload for more than the file.
    async fn install_unit(&self, name: &UnitName, want: &Want) -> anyhow::Result<bool> {
        match is_container(name) {
            true => self.docker()?.install(name, &want.text, &want.hash).await.map(|()| false),
            false => self.systemd.install(name, &want.text).await,
        }
    }

    async fn uninstall_unit(&self, name: &UnitName) -> anyhow::Result<()> {
        match is_container(name) {
            true => self.docker()?.uninstall(name).await,
            false => self.systemd.uninstall(name).await,
        }
    }

    /// Starts a unit; for a systemd unit, returns the start job to wait for.
    async fn start_unit(&self, name: &UnitName) -> anyhow::Result<Option<StartJob>> {
        match is_container(name) {
            true => self.docker()?.start(name).await.map(|()| None),
            false => self.systemd.start(name).await.map(Some),
        }
    }

    async fn observe_unit(&self, name: &UnitName) -> anyhow::Result<Observed> {
        match is_container(name) {
            true => self.docker()?.observe(name).await,
            false => self.systemd.observe(name).await,
        }
    }

    fn next_wake(&self) -> Option<Instant> {
        self.local.values().filter_map(|l| l.retry_at).chain(self.retry_pass_at).min()
    }

    /// One reconcile pass: make systemd match `wants` and report what it says.
    async fn converge(&mut self, wants: &BTreeMap<UnitName, Want>) {
        let now = Instant::now();
        self.retry_pass_at = None;
        // Reported units are included so that a report outlives neither its unit nor its file.
        let names: BTreeSet<UnitName> = wants
            .keys()
            .chain(self.installed.keys())
            .chain(self.reported.keys())
            .cloned()
            .collect();
        for name in &names {
            if !self.observed.contains_key(name) {
                self.dirty.insert(name.clone());
            }
        }
        self.refresh_observed().await;

        let mut plans: Vec<(UnitName, Vec<Action>)> = Vec::new();
        for name in &names {
            let local = self.local.entry(name.clone()).or_default();
            let actions = reconcile::decide(
                wants.get(name),
                self.installed.get(name).map(String::as_str),
                self.observed.get(name),
                local,
                now,
            );
            if !actions.is_empty() {
                plans.push((name.clone(), actions));
            }
        }

        // A unit that did not stop keeps its file, and its other actions wait for the stop to
        // succeed on a later pass.
        let stuck = self.stop_units(&plans).await;
        plans.retain(|(name, _)| !stuck.contains(name));

        if self.change_files(&plans, wants).await
            && let Err(error) = self.systemd.reload().await
        {
            warn!(error = %format!("{error:#}"), "failed to reload systemd");
        }

        let starts: Vec<UnitName> = plans
            .iter()
            .filter(|(name, actions)| {
                actions.contains(&Action::Start) && self.installed.contains_key(name)
            })
            .map(|(name, _)| name.clone())
            .collect();
        let confirmed = self.confirm_claims(&starts).await;
        for name in starts.iter().filter(|name| !confirmed.contains(*name)) {
            // The mirror may lag behind etcd: a unit that moved meanwhile must not start here.
            debug!(unit.name = %name, "claim not confirmed; not starting");
            let local = self.local.entry(name.clone()).or_default();
            local.started = false;
            // Look again shortly, in case etcd could not be asked at all.
            local.retry_at = Some(Instant::now() + Duration::from_secs(1));
        }
        self.start_units(&confirmed).await;
        self.refresh_observed().await;

        if self.reporting {
            self.report(&names, wants).await;
        }
        self.local.retain(|name, _| wants.contains_key(name) || self.installed.contains_key(name));
    }

    /// Stops every unit whose plan holds a stop, several side by side so that one slow ExecStop
    /// does not hold the others; returns the units that did not stop.
    async fn stop_units(&mut self, plans: &[(UnitName, Vec<Action>)]) -> BTreeSet<UnitName> {
        // While fencing, the grace is the whole pass's: a unit whose stop waited for a free slot
        // is killed sooner, so that all are gone about when they would be if stopped at once.
        let fence_deadline = self.fence_grace.map(|grace| Instant::now() + grace);
        let grace = move || {
            let left = |deadline: Instant| deadline.saturating_duration_since(Instant::now());
            fence_deadline.map(|deadline| left(deadline).max(FENCE_GRACE_FLOOR))
        };
        let this = &*self;
        let results: Vec<(&UnitName, anyhow::Result<()>)> = stream::iter(plans)
            .filter(|(_, actions)| std::future::ready(actions.contains(&Action::Stop)))
            .map(|(name, _)| async move { (name, this.stop_unit(name, grace()).await) })
            .buffer_unordered(STOPS_IN_FLIGHT)
            .collect()
            .await;

        let mut stuck = BTreeSet::new();
        for (name, result) in results {
            self.dirty.insert(name.clone());
            let Err(error) = result else { continue };
            self.fail(name, &error);
            self.retry_pass_at = Some(Instant::now() + PASS_RETRY);
            stuck.insert(name.clone());
        }
        stuck
    }

    /// Writes the files of the plans' installs and removes those of their removals, several at
    /// a time; returns whether systemd must reload.
    async fn change_files(
        &mut self,
        plans: &[(UnitName, Vec<Action>)],
        wants: &BTreeMap<UnitName, Want>,
    ) -> bool {
        // Each file change pairs a unit with the file it should have, or with none.
        let changes = plans.iter().flat_map(|(name, actions)| {
            actions.iter().filter_map(move |action| match action {
                Action::Install => Some((name, Some(&wants[name]))),
                Action::Remove => Some((name, None)),
                Action::Stop | Action::Start => None,
            })
        });
        let changes: Vec<(&UnitName, Option<&Want>)> = changes.collect();
        let unlinks: Vec<&UnitName> = changes
            .iter()
            .filter(|(name, want)| want.is_none() && !is_container(name))
            .map(|(name, _)| *name)
            .collect();
        self.systemd.unlink(&unlinks).await;
        let this = &*self;
        let results: Vec<(&UnitName, Option<&Want>, anyhow::Result<bool>)> = stream::iter(changes)
            .map(|(name, want)| async move {
                let result = match want {
                    Some(want) => this.install_unit(name, want).await,
                    None => this.uninstall_unit(name).await.map(|()| true),
                };
                (name, want, result)
            })
            .buffer_unordered(UNIT_CALLS_IN_FLIGHT)
            .collect()
            .await;

        let mut reload = false;
        for (name, want, result) in results {
            // Read again after the change: a unit only loaded, never started, sends no signal
            // that would get it read later, and would go unreported.
            self.dirty.insert(name.clone());
            match (want, result) {
                (Some(want), Ok(enabled)) => {
                    // A new file needs no reload: systemd reads it when the unit is started.
                    let replaced = self.installed.insert(name.clone(), want.hash.clone());
                    reload |= enabled || (replaced.is_some() && !is_container(name));
                }
                (Some(_), Err(error)) => {
                    self.fail(name, &error);
                    let local = self.local.entry(name.clone()).or_default();
                    local.retry_at = Some(Instant::now() + reconcile::backoff(local.retries));
                    local.retries += 1;
                    reload = true;
                }
                (None, result) => {
                    if let Err(error) = result {
                        self.fail(name, &error);
                    }
                    self.installed.remove(name);
                    reload |= !is_container(name);
                }
            }
        }
        reload
    }

    /// Starts the units and waits for their start jobs, so that the state read next is the
    /// settled one.
    ///
    /// The calls go a few at a time, but many more jobs may be pending at once: a unit slow to
    /// start then holds one of many places for the settle time, and the quick ones pass it.
    async fn start_units(&mut self, names: &BTreeSet<UnitName>) {
        let this = &*self;
        let calls = Semaphore::new(UNIT_CALLS_IN_FLIGHT);
        let calls = &calls;
        let results: Vec<(&UnitName, anyhow::Result<()>)> = stream::iter(names)
            .map(|name| async move {
                let started = {
                    let _call = calls.acquire().await.expect("the semaphore is never closed");
                    debug!(unit.name = %name, "starting unit");
                    this.start_unit(name).await
                };
                match started {
                    Ok(job) => {
                        if let Some(job) = job {
                            job.settle().await;
                        }
                        (name, Ok(()))
                    }
                    Err(error) => (name, Err(error)),
                }
            })
            .buffer_unordered(STARTS_PENDING)
            .collect()
            .await;
        for (name, result) in results {
            if let Err(error) = result {
                self.fail(name, &error);
                let local = self.local.entry(name.clone()).or_default();
                reconcile::start_failed(local, Instant::now());
            }
            self.dirty.insert(name.clone());
        }
    }

    /// The units among `names` whose claim etcd says this host holds right now.
    ///
    /// Read straight from etcd, not from the mirror, just before starting: a stale agent (one
    /// whose watch lags, or that was cut off) then never starts a unit placed elsewhere.
    async fn confirm_claims(&self, names: &[UnitName]) -> BTreeSet<UnitName> {
        let mut confirmed = BTreeSet::new();
        // Two reads per unit: its single claim and its copy as a global unit.
        for chunk in names.chunks(OPS_PER_TXN / 2) {
            let keys = &self.store.keys;
            let ops: Vec<TxnOp> = chunk
                .iter()
                .flat_map(|n| {
                    [
                        TxnOp::get(keys.claim(n, None), None),
                        TxnOp::get(keys.claim(n, Some(&self.machine_id)), None),
                    ]
                })
                .collect();
            let response = match self.store.client().txn(Txn::new().and_then(ops)).await {
                Ok(response) => response,
                Err(error) => {
                    let error = store::describe(&error);
                    warn!(error = %error, "cannot confirm claims; not starting units");
                    return BTreeSet::new();
                }
            };
            for op in response.op_responses() {
                let etcd_client::TxnOpResponse::Get(get) = op else { continue };
                for kv in get.kvs() {
                    let Some(keyspace::Key::Claim(name, _)) = keys.parse(kv.key()) else {
                        continue;
                    };
                    // A claim is this host's only if it is bound to this host's lease too.
                    let claim = keyspace::decode::<keyspace::ClaimRecord>(kv.value());
                    if claim.is_ok_and(|c| c.machine == self.machine_id) && kv.lease() == self.lease
                    {
                        confirmed.insert(name);
                    }
                }
            }
        }
        confirmed
    }

    fn fail(&mut self, name: &UnitName, error: &anyhow::Error) {
        warn!(unit.name = %name, error = %format!("{error:#}"), "unit action failed");
        self.local.entry(name.clone()).or_default().error = Some(format!("{error:#}"));
    }

    /// Reads again the state of every dirty unit, several at a time.
    async fn refresh_observed(&mut self) {
        let (known, gone): (Vec<UnitName>, Vec<UnitName>) = std::mem::take(&mut self.dirty)
            .into_iter()
            .partition(|n| self.installed.contains_key(n));
        for name in &gone {
            self.observed.remove(name);
        }
        let this = &*self;
        let results: Vec<(UnitName, anyhow::Result<Observed>)> = stream::iter(known)
            .map(|name| async move {
                let result = this.observe_unit(&name).await;
                (name, result)
            })
            .buffer_unordered(UNIT_CALLS_IN_FLIGHT)
            .collect()
            .await;
        for (name, result) in results {
            match result {
                Ok(observed) => {
                    self.observed.insert(name, observed);
                }
                Err(error) => {
                    debug!(unit.name = %name, error = %format!("{error:#}"), "observe failed");
                }
            }
        }
    }

    /// Writes to etcd the state of every unit among `names` whose report changed, in as few
    /// transactions as etcd allows.
    ///
    /// Only what was written is remembered as reported: a unit whose transaction failed (the
    /// lease is gone, etcd did not answer) is reported again on the next pass.
    async fn report(&mut self, names: &BTreeSet<UnitName>, wants: &BTreeMap<UnitName, Want>) {
        let changes: Vec<(UnitName, ReportChange)> = names
            .iter()
            .filter_map(|name| Some((name.clone(), self.report_change(name, wants.get(name))?)))
            .collect();
        if changes.is_empty() {
            return;
        }
        let batches = report_batches(&self.store.keys, &self.machine_id, self.lease, changes);
        let (changes, txns): (Vec<_>, Vec<_>) =
            batches.into_iter().map(|b| (b.changes, Txn::new().and_then(b.ops))).unzip();
        let results = changes.into_iter().zip(self.store.commit_each(txns).await);

        let (mut unreported, mut last_error) = (0, None);
        for (changes, result) in results {
            if let Err(error) = result {
                unreported += changes.len();
                last_error = Some(store::describe(&error));
                continue;
            }
            for (name, change) in changes {
                match change {
                    ReportChange::Put(record) => {
                        let (active, sub) = (&record.active, &record.sub);
                        debug!(unit.name = %name, active = %active, sub = %sub, "state reported");
                        self.reported.insert(name, record);
                    }
                    ReportChange::Delete => {
                        self.reported.remove(&name);
                    }
                }
            }
        }
        if let Some(error) = last_error {
            warn!(units = unreported, error = %error, "failed to report unit states");
            self.retry_pass_at = Some(Instant::now() + PASS_RETRY);
        }
    }

    /// What the unit's state report must become, if it differs from the last one written.
    fn report_change(&self, name: &UnitName, want: Option<&Want>) -> Option<ReportChange> {
        // A unit that could not even be installed is reported failed, with the reason.
        let not_installed = Observed {
            load: "error".into(),
            active: "failed".into(),
            sub: "dead".into(),
            main_pid: 0,
            since_ms: 0,
            detail: None,
        };
        let local_error = self.local.get(name).is_some_and(|l| l.error.is_some());
        let observed = match self.observed.get(name) {
            None if want.is_some() && local_error && !self.installed.contains_key(name) => {
                Some(&not_installed)
            }
            observed => observed,
        };
        let (Some(want), Some(observed)) = (want, observed) else {
            return self.reported.contains_key(name).then_some(ReportChange::Delete);
        };
        let local = self.local.get(name).cloned().unwrap_or_default();
        let previous = self.reported.get(name);
        let transitions = transitions(previous, &want.hash, observed, systemd::now_ms());
        let record = StateRecord {
            version: RECORD_VERSION,
            machine: self.machine_id.clone(),
            hash: want.hash.clone(),
            load: observed.load.clone(),
            active: observed.active.clone(),
            sub: observed.sub.clone(),
            main_pid: observed.main_pid,
            since_ms: observed.since_ms,
            retries: local.retries,
            error: local.error.clone().or_else(|| observed.detail.clone()),
            transitions,
        };
        (previous != Some(&record)).then_some(ReportChange::Put(record))
    }
}

/// The transitions a state report keeps once `observed` is seen at `now_ms`: one more when the
/// state moved since the `previous` report.
fn transitions(
    previous: Option<&StateRecord>,
    hash: &str,
    observed: &Observed,
    now_ms: u64,
) -> Vec<Transition> {
    let mut transitions = previous.map(|r| r.transitions.clone()).unwrap_or_default();
    // A restart seen only after it finished leaves the same state behind, but systemd moved the
    // state's timestamp; and a replaced file is a new run in any case.
    let restarted = previous
        .is_some_and(|r| r.hash != hash || (r.since_ms != 0 && r.since_ms != observed.since_ms));
    let moved = restarted
        || transitions.last().is_none_or(|t| t.active != observed.active || t.sub != observed.sub);
    if moved {
        transitions.push(Transition {
            at_ms: now_ms,
            active: observed.active.clone(),
            sub: observed.sub.clone(),
        });
        let excess = transitions.len().saturating_sub(TRANSITIONS_KEPT);
        transitions.drain(..excess);
    }
    transitions
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(error: Option<String>) -> StateRecord {
        StateRecord {
            version: RECORD_VERSION,
            machine: "m".repeat(32),
            hash: "h1".into(),
            load: "loaded".into(),
            active: "active".into(),
            sub: "exited".into(),
            main_pid: 0,
            since_ms: 0,
            retries: 0,
            error,
            transitions: Vec::new(),
        }
    }

    fn changes(n: usize, error: Option<String>) -> Vec<(UnitName, ReportChange)> {
        (0..n)
            .map(|i| {
                let name = UnitName::parse(&format!("u{i}.service")).unwrap();
                let change = match i % 10 {
                    0 => ReportChange::Delete,
                    _ => ReportChange::Put(record(error.clone())),
                };
                (name, change)
            })
            .collect()
    }

    fn batch_sizes(changes: Vec<(UnitName, ReportChange)>) -> Vec<usize> {
        let keys = Keyspace::new("/flotilla");
        let batches = report_batches(&keys, &"m".repeat(32), 7, changes);
        for batch in &batches {
            assert_eq!(batch.ops.len(), batch.changes.len());
            assert!(batch.bytes <= MAX_VALUE_BYTES, "{} bytes", batch.bytes);
        }
        batches.iter().map(|b| b.ops.len()).collect()
    }

    fn observed(active: &str, sub: &str, since_ms: u64) -> Observed {
        Observed {
            load: "loaded".into(),
            active: active.into(),
            sub: sub.into(),
            main_pid: 0,
            since_ms,
            detail: None,
        }
    }

    /// The report an agent would write after seeing each of `seen` in turn, with its hash.
    fn report_after(seen: &[(&str, Observed)]) -> StateRecord {
        let mut report: Option<StateRecord> = None;
        for (at, (hash, observed)) in (1000..).step_by(1000).zip(seen) {
            let transitions = transitions(report.as_ref(), hash, observed, at);
            report = Some(StateRecord {
                hash: hash.to_string(),
                since_ms: observed.since_ms,
                active: observed.active.clone(),
                sub: observed.sub.clone(),
                transitions,
                ..record(None)
            });
        }
        report.expect("something seen")
    }

    fn moments(report: &StateRecord) -> Vec<(u64, String)> {
        report.transitions.iter().map(|t| (t.at_ms, format!("{}/{}", t.active, t.sub))).collect()
    }

    #[test]
    fn a_transition_is_kept_when_the_state_moves_and_only_then() {
        let report = report_after(&[
            ("h1", observed("activating", "start", 5)),
            ("h1", observed("active", "exited", 7)),
            ("h1", observed("active", "exited", 7)),
        ]);
        let want = [(1000, "activating/start".into()), (2000, "active/exited".into())];
        assert_eq!(moments(&report), want);
    }

    #[test]
    fn a_restart_seen_only_once_it_ended_is_a_transition() {
        // Stopped and started between two looks: the same state, a later timestamp.
        let restarted = report_after(&[
            ("h1", observed("active", "exited", 7)),
            ("h1", observed("active", "exited", 9)),
        ]);
        assert_eq!(moments(&restarted).len(), 2);
        // A file replaced with --replace is a new run even if systemd's clock did not move.
        let replaced = report_after(&[
            ("h1", observed("active", "exited", 7)),
            ("h2", observed("active", "exited", 7)),
        ]);
        assert_eq!(
            moments(&replaced),
            [(1000, "active/exited".into()), (2000, "active/exited".into())]
        );
    }

    #[test]
    fn reports_go_in_transactions_of_at_most_the_op_limit() {
        assert_eq!(batch_sizes(changes(0, None)), Vec::<usize>::new());
        assert_eq!(batch_sizes(changes(1, None)), [1]);
        assert_eq!(batch_sizes(changes(OPS_PER_TXN, None)), [OPS_PER_TXN]);
        assert_eq!(batch_sizes(changes(250, None)), [OPS_PER_TXN, OPS_PER_TXN, 10]);
    }

    #[test]
    fn large_reports_go_in_transactions_within_the_request_limit() {
        let long_error = Some("x".repeat(MAX_VALUE_BYTES / 20));
        let sizes = batch_sizes(changes(50, long_error));
        assert_eq!(sizes.iter().sum::<usize>(), 50);
        assert!(sizes.len() > 2, "{sizes:?}");
    }
}
