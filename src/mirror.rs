//! An in-memory copy of the keyspace, kept current by one etcd watch.
//!
//! The agent and the engine decide from this copy and never from a cold one: [`Mirror::ready`]
//! is false until the first complete listing has been loaded. The watch runs as a small state
//! machine (list, then watch from the listed revision, and list again when etcd says the revision
//! was compacted or the stream broke), so the copy is always a state etcd actually had.
//!
//! Host state reports (`states/`) are not mirrored: no decision depends on another host's report.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use etcd_client::{EventType, KeyValue, WatchOptions, WatchStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::keyspace::{
    self, ClaimRecord, DesiredRecord, DesiredState, EngineRecord, Key, MachineRecord,
    ProblemRecord, UnitRecord,
};
use crate::store::Store;
use crate::unit::UnitName;

/// A machine as the mirror knows it.
#[derive(Clone, Debug)]
pub struct MachineEntry {
    /// What the host registered.
    pub record: MachineRecord,
    /// The lease the record is bound to.
    pub lease: i64,
}

/// A claim as the mirror knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClaimEntry {
    /// The host that holds it.
    pub machine: String,
    /// The revision the claim was written at.
    pub revision: i64,
    /// The lease the claim is bound to; a claim the engine wrote has its machine's lease.
    pub lease: i64,
}

/// The decoded keyspace at one revision.
#[derive(Default, Debug)]
pub struct Mirror {
    /// The etcd revision this copy reflects; 0 until the first listing.
    pub revision: i64,
    /// Unit files by name.
    pub units: BTreeMap<UnitName, UnitRecord>,
    /// Desired states by unit.
    pub desired: BTreeMap<UnitName, DesiredState>,
    /// Live machines by id.
    pub machines: BTreeMap<String, MachineEntry>,
    /// Claims of non-global units.
    pub claims: BTreeMap<UnitName, ClaimEntry>,
    /// Claims of global units, one per host.
    pub global_claims: BTreeMap<UnitName, BTreeMap<String, ClaimEntry>>,
    /// Units the engine could not place, with the reason.
    pub problems: BTreeMap<UnitName, String>,
    /// The host that runs the engine.
    pub engine: Option<String>,
    /// Keys whose value could not be decoded, so each is reported once.
    bad_keys: HashSet<Vec<u8>>,
}

impl Mirror {
    /// Whether the first complete listing has been loaded.
    pub fn ready(&self) -> bool {
        self.revision > 0
    }

    /// The desired state of a unit; units without a record are inactive.
    pub fn desired_state(&self, unit: &UnitName) -> DesiredState {
        self.desired.get(unit).copied().unwrap_or(DesiredState::Inactive)
    }

    /// Replaces the whole copy with a fresh listing.
    pub fn reset(&mut self, store: &Store, revision: i64, kvs: &[KeyValue]) {
        let bad_keys = std::mem::take(&mut self.bad_keys);
        *self = Mirror { bad_keys, ..Mirror::default() };
        for kv in kvs {
            self.put(store, kv);
        }
        self.revision = revision;
    }

    /// Applies one put; a value that does not decode is logged once and treated as absent.
    pub fn put(&mut self, store: &Store, kv: &KeyValue) {
        let Some(key) = store.keys.parse(kv.key()) else {
            return;
        };
        if let Err(error) = self.try_put(&key, kv) {
            // A garbage value must not erase what a good one said before it.
            if self.bad_keys.insert(kv.key().to_vec()) {
                let key = String::from_utf8_lossy(kv.key());
                warn!(key = %key, error = %error, "skipping bad record");
            }
            self.delete(&key);
            return;
        }
        self.bad_keys.remove(kv.key());
    }

    fn try_put(&mut self, key: &Key, kv: &KeyValue) -> Result<(), keyspace::DecodeError> {
        let value = kv.value();
        match key {
            Key::Unit(name) => {
                let record: UnitRecord = keyspace::decode(value)?;
                self.units.insert(name.clone(), record);
            }
            Key::Desired(name) => {
                let record: DesiredRecord = keyspace::decode(value)?;
                self.desired.insert(name.clone(), record.state);
            }
            Key::Machine(id) => {
                let record: MachineRecord = keyspace::decode(value)?;
                if &record.id != id {
                    return Err(keyspace::DecodeError::Json(serde::de::Error::custom(
                        "machine record names another machine",
                    )));
                }
                self.machines.insert(id.clone(), MachineEntry { record, lease: kv.lease() });
            }
            Key::Claim(name, global_on) => {
                let record: ClaimRecord = keyspace::decode(value)?;
                let entry = ClaimEntry {
                    machine: record.machine,
                    revision: kv.mod_revision(),
                    lease: kv.lease(),
                };
                match global_on {
                    None => {
                        self.claims.insert(name.clone(), entry);
                    }
                    Some(machine) => {
                        self.global_claims
                            .entry(name.clone())
                            .or_default()
                            .insert(machine.clone(), entry);
                    }
                }
            }
            Key::Engine => {
                let record: EngineRecord = keyspace::decode(value)?;
                self.engine = Some(record.machine);
            }
            Key::Problem(name) => {
                let record: ProblemRecord = keyspace::decode(value)?;
                self.problems.insert(name.clone(), record.reason);
            }
            Key::State(..) | Key::Image(..) => {}
        }
        Ok(())
    }

    /// Applies one delete.
    pub fn delete(&mut self, key: &Key) {
        match key {
            Key::Unit(name) => {
                self.units.remove(name);
            }
            Key::Desired(name) => {
                self.desired.remove(name);
            }
            Key::Machine(id) => {
                self.machines.remove(id);
            }
            Key::Claim(name, None) => {
                self.claims.remove(name);
            }
            Key::Claim(name, Some(machine)) => {
                if let Some(copies) = self.global_claims.get_mut(name) {
                    copies.remove(machine);
                    if copies.is_empty() {
                        self.global_claims.remove(name);
                    }
                }
            }
            Key::Engine => self.engine = None,
            Key::Problem(name) => {
                self.problems.remove(name);
            }
            Key::State(..) | Key::Image(..) => {}
        }
    }
}

/// A mirror shared between the watch task and its readers.
pub type SharedMirror = Arc<RwLock<Mirror>>;

/// Where the watch loop is.
enum WatchState {
    /// Read the whole keyspace, then watch from the revision after it.
    Listing,
    /// Receiving changes on an open stream.
    Watching(Box<WatchStream>),
    /// Something failed; list again after a pause.
    Backoff(Duration),
}

/// Keeps `mirror` current until `shutdown`, sending the new revision after every change.
pub async fn run(
    store: Store,
    mirror: SharedMirror,
    changed: watch::Sender<i64>,
    shutdown: CancellationToken,
) {
    let mut state = WatchState::Listing;
    let mut failures = 0u32;
    let mut reconnects = store.reconnects();
    loop {
        state = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = step(&store, &mirror, &changed, &mut reconnects, state) => next,
        };
        // Consecutive failures back off 100 ms, 200 ms … up to 2 s; a working watch resets it.
        match &mut state {
            WatchState::Backoff(pause) => {
                *pause = (Duration::from_millis(100) * 2u32.pow(failures.min(4))).min(MAX_BACKOFF);
                failures += 1;
            }
            WatchState::Watching(_) => failures = 0,
            WatchState::Listing => {}
        }
    }
}

/// Opens the keyspace watch from revision `from` on the store's current client.
async fn open_watch(store: &Store, reconnects: &mut watch::Receiver<u64>, from: i64) -> WatchState {
    reconnects.borrow_and_update();
    let options = WatchOptions::new().with_prefix().with_start_revision(from);
    // One watch response may carry several unit files near their size limit.
    let mut watcher = store.client().watch_client().max_decoding_message_size(64 << 20);
    match watcher.watch(store.keys.root(), Some(options)).await {
        Ok(stream) => WatchState::Watching(Box::new(stream)),
        Err(error) => {
            warn!(error = %error, "failed to open the keyspace watch");
            WatchState::Backoff(Duration::ZERO)
        }
    }
}

/// The longest pause between attempts to list the keyspace again.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

async fn step(
    store: &Store,
    mirror: &SharedMirror,
    changed: &watch::Sender<i64>,
    reconnects: &mut watch::Receiver<u64>,
    state: WatchState,
) -> WatchState {
    match state {
        WatchState::Listing => {
            let listing = match store.list(&store.keys.root()).await {
                Ok(listing) => listing,
                Err(error) => {
                    warn!(error = %format!("{error:#}"), "failed to list the keyspace");
                    return WatchState::Backoff(Duration::ZERO);
                }
            };
            mirror.write().expect("mirror lock").reset(store, listing.revision, &listing.kvs);
            changed.send_replace(listing.revision);
            debug!(etcd.revision = listing.revision, keys = listing.kvs.len(), "keyspace listed");

            // Watch from the revision after the listing, so no change falls in between.
            open_watch(store, reconnects, listing.revision + 1).await
        }
        WatchState::Watching(mut stream) => {
            let message = tokio::select! {
                message = stream.message() => message,
                // Another task found a dead member and moved to a new client; this stream may
                // be on the dead one, where nothing would ever arrive.
                Ok(()) = reconnects.changed() => {
                    let from = mirror.read().expect("mirror lock").revision + 1;
                    debug!(etcd.revision = from, "moving the keyspace watch to the new connection");
                    return open_watch(store, reconnects, from).await;
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => {
                    debug!("keyspace watch closed by etcd");
                    return WatchState::Backoff(Duration::ZERO);
                }
                Err(error) => {
                    debug!(error = %error, "keyspace watch failed");
                    return WatchState::Backoff(Duration::ZERO);
                }
            };
            // A compacted start revision means events were lost: only a new listing is safe.
            if response.canceled() || response.compact_revision() > 0 {
                debug!(compact_revision = response.compact_revision(), "keyspace watch cancelled");
                return WatchState::Listing;
            }
            let events = response.events();
            if events.is_empty() {
                return WatchState::Watching(stream);
            }
            let mut mirrored = false;
            let revision = {
                let mut mirror = mirror.write().expect("mirror lock");
                for event in events {
                    let Some(kv) = event.kv() else { continue };
                    let Some(key) = store.keys.parse(kv.key()) else { continue };
                    mirrored |= !matches!(key, Key::State(..) | Key::Image(..));
                    match event.event_type() {
                        EventType::Put => mirror.put(store, kv),
                        EventType::Delete => mirror.delete(&key),
                    }
                }
                let last = events.iter().filter_map(|e| e.kv()).map(|kv| kv.mod_revision()).max();
                mirror.revision = last.unwrap_or(mirror.revision).max(mirror.revision);
                mirror.revision
            };
            // Hosts' state and image reports are most of the traffic in a bulk start, and no
            // reader of the mirror decides from them: waking every agent and the engine for
            // each batch cost each a full pass over its units.
            if mirrored {
                changed.send_replace(revision);
            } else {
                changed.send_if_modified(|seen| {
                    *seen = revision;
                    false
                });
            }
            WatchState::Watching(stream)
        }
        WatchState::Backoff(pause) => {
            tokio::time::sleep(pause).await;
            // The member we talked to may be the one that failed.
            store.reconnect().await;
            WatchState::Listing
        }
    }
}
