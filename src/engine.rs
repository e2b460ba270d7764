//! The placement engine: one per cluster, elected through etcd, turning the mirror into claims.
//!
//! Every agent runs this task; only the one holding the `engine` key acts. That key is bound to
//! the holder's lease, so when the holder dies etcd deletes it and the others campaign again at
//! once. The engine never trusts its own view for safety: each claim is written by a transaction
//! that fails if the unit is already claimed or the chosen host's lease has changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use futures_util::future::join_all;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::keyspace::{self, ClaimRecord, EngineRecord, Keyspace, ProblemRecord, RECORD_VERSION};
use crate::mirror::{ClaimEntry, Mirror, SharedMirror};
use crate::placement::{self, Machine, Placeable, Plan, Snapshot};
use crate::store::{OPS_PER_TXN, Store};
use crate::unit::{FleetOptions, UnitFile, UnitName};

/// What the engine needs to know about the host it runs on.
pub struct EngineConfig {
    /// This host's machine id.
    pub machine: String,
    /// This host's lease; the engine key and problem reports are bound to it.
    pub lease: i64,
}

/// Campaigns for the engine key and, while holding it, places units until `shutdown`.
pub async fn run(
    store: Store,
    mirror: SharedMirror,
    mut changed: watch::Receiver<i64>,
    config: EngineConfig,
    shutdown: CancellationToken,
) {
    let mut options = OptionsCache::default();
    loop {
        let campaign = async {
            loop {
                match campaign(&store, &config).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(error) => debug!(error = %format!("{error:#}"), "engine campaign failed"),
                }
                // Wait until the mirror shows the engine key gone, then try again.
                loop {
                    if changed.changed().await.is_err() {
                        return;
                    }
                    if mirror.read().expect("mirror lock").engine.is_none() {
                        break;
                    }
                }
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = campaign => {}
        }
        info!(machine.id = %config.machine, "became the placement engine");
        let lead = lead(&store, &mirror, &mut changed, &config, &mut options)
            .instrument(info_span!("engine", machine.id = %config.machine));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = lead => info!("no longer the placement engine"),
        }
    }
}

/// Gives the engine key up if this host holds it, so another host takes over at once.
pub async fn resign(store: &Store, lease: i64) {
    let key = store.keys.engine();
    // Delete only our own key: the compare on the lease keeps a successor's key intact.
    let txn = Txn::new()
        .when([Compare::lease(key.as_str(), CompareOp::Equal, lease)])
        .and_then([TxnOp::delete(key.as_str(), None)]);
    if let Err(error) = store.client().txn(txn).await {
        debug!(error = %error, "failed to resign as the placement engine");
    }
}

/// Tries to take the engine key; true when this host now holds it.
async fn campaign(store: &Store, config: &EngineConfig) -> anyhow::Result<bool> {
    let key = store.keys.engine();
    let record = EngineRecord { version: RECORD_VERSION, machine: config.machine.clone() };
    // Create-only: an existing key means another engine is alive, or this host's own earlier
    // life still holds it under the same lease.
    let txn = Txn::new()
        .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
        .and_then([TxnOp::put(
            key.as_str(),
            keyspace::encode(&record),
            Some(PutOptions::new().with_lease(config.lease)),
        )])
        .or_else([TxnOp::get(key.as_str(), None)]);
    let response = store.client().txn(txn).await?;
    if response.succeeded() {
        return Ok(true);
    }
    for op in response.op_responses() {
        if let etcd_client::TxnOpResponse::Get(get) = op
            && let Some(kv) = get.kvs().first()
        {
            return Ok(kv.lease() == config.lease);
        }
    }
    Ok(false)
}

/// Places units whenever the mirror changes, until another host holds the engine key.
async fn lead(
    store: &Store,
    mirror: &SharedMirror,
    changed: &mut watch::Receiver<i64>,
    config: &EngineConfig,
    options: &mut OptionsCache,
) {
    // Writes this engine made are only planned on again once the mirror has seen them.
    let mut written_revision = 0;
    let mut seen_self = false;
    loop {
        let work = {
            let mirror = mirror.read().expect("mirror lock");
            if mirror.engine.as_deref() == Some(config.machine.as_str()) {
                seen_self = true;
            }
            match mirror.engine.as_deref() {
                Some(holder) if holder != config.machine => return,
                None if seen_self => return,
                // The mirror has not yet seen this engine's own election; nothing to do before.
                None => None,
                Some(_) if mirror.revision < written_revision => None,
                Some(_) => {
                    seen_self = true;
                    Some(Work::from_mirror(&mirror, options))
                }
            }
        };
        if let Some(work) = work {
            let started = std::time::Instant::now();
            match apply(store, config, &work).await {
                Ok(revision) => {
                    written_revision = revision;
                    let (claims, releases) = (work.plan.claim.len(), work.plan.release.len());
                    if claims + releases + work.stale.len() > 0 {
                        let planned_ms = work.planned_ms;
                        let applied_ms = started.elapsed().as_millis();
                        debug!(claims, releases, planned_ms, applied_ms, "placement round");
                    }
                }
                Err(error) => {
                    warn!(error = %format!("{error:#}"), "failed to apply placement");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            }
        }
        if changed.changed().await.is_err() {
            return;
        }
    }
}

/// Parsed `[X-Fleet]` options by unit and file hash, so unchanged files are parsed once.
#[derive(Default)]
struct OptionsCache {
    parsed: HashMap<(UnitName, String), Option<FleetOptions>>,
}

impl OptionsCache {
    fn get(&mut self, name: &UnitName, hash: &str, text: &str) -> Option<FleetOptions> {
        let key = (name.clone(), hash.to_string());
        self.parsed
            .entry(key)
            .or_insert_with(|| {
                let file = UnitFile::parse(name, text.as_bytes()).ok()?;
                FleetOptions::from_unit(name, &file).ok()
            })
            .clone()
    }

    /// Forgets files that are no longer in the keyspace, so replaced units do not pile up.
    fn retain_current(&mut self, mirror: &Mirror) {
        self.parsed
            .retain(|(name, hash), _| mirror.units.get(name).is_some_and(|u| &u.hash == hash));
    }
}

/// Everything one round of placement writes or deletes.
struct Work {
    plan: Plan,
    /// Claims whose unit is gone, inactive or a template: (unit, global host, claim revision).
    stale: Vec<(UnitName, Option<String>, i64)>,
    /// Which units are global, for the claim key layout.
    global: BTreeSet<UnitName>,
    /// Machine leases, for binding claims.
    leases: BTreeMap<String, i64>,
    /// Problems the mirror shows, to write only those that changed.
    problems: BTreeMap<UnitName, String>,
    /// How long reading the mirror and planning took.
    planned_ms: u128,
}

impl Work {
    fn from_mirror(mirror: &Mirror, options: &mut OptionsCache) -> Work {
        let started = std::time::Instant::now();
        options.retain_current(mirror);
        let mut units = Vec::new();
        let mut global = BTreeSet::new();
        let mut unparsable = BTreeMap::new();
        for (name, record) in &mirror.units {
            if name.is_template() || !mirror.desired_state(name).is_placed() {
                continue;
            }
            match options.get(name, &record.hash, &record.text) {
                Some(options) => {
                    if options.global {
                        global.insert(name.clone());
                    }
                    units.push(Placeable { name: name.clone(), options });
                }
                None => {
                    unparsable.insert(name.clone(), "unit file does not parse".to_string());
                }
            }
        }
        let placeable: BTreeSet<&UnitName> = units.iter().map(|u| &u.name).collect();

        let mut stale = Vec::new();
        let mut claims: BTreeMap<UnitName, BTreeSet<String>> = BTreeMap::new();
        // A claim not bound to its machine's live lease was not written by an engine (or names
        // a machine that does not exist): it is garbage, and the unit is placed afresh.
        let unbacked = |claim: &ClaimEntry| {
            mirror.machines.get(&claim.machine).is_none_or(|m| m.lease != claim.lease)
        };
        for (name, claim) in &mirror.claims {
            if !placeable.contains(name) || global.contains(name) || unbacked(claim) {
                if unbacked(claim) {
                    let machine = &claim.machine;
                    warn!(unit.name = %name, machine.id = %machine, "dropping an unbacked claim");
                }
                stale.push((name.clone(), None, claim.revision));
            } else {
                claims.entry(name.clone()).or_default().insert(claim.machine.clone());
            }
        }
        for (name, copies) in &mirror.global_claims {
            for (machine, claim) in copies {
                if !global.contains(name) || machine != &claim.machine || unbacked(claim) {
                    stale.push((name.clone(), Some(machine.clone()), claim.revision));
                } else {
                    claims.entry(name.clone()).or_default().insert(machine.clone());
                }
            }
        }

        let machines = mirror
            .machines
            .values()
            .map(|m| Machine { id: m.record.id.clone(), metadata: m.record.metadata.clone() })
            .collect();
        let mut plan = placement::plan(&Snapshot { machines, units, claims });
        plan.unplaceable.extend(unparsable);
        let leases = mirror.machines.iter().map(|(id, m)| (id.clone(), m.lease)).collect();
        let planned_ms = started.elapsed().as_millis();
        Work { plan, stale, global, leases, problems: mirror.problems.clone(), planned_ms }
    }
}

/// One guarded operation: applied only if all its compares hold and, when it names a machine,
/// that machine's key is still bound to the given lease.
struct GuardedOp {
    guards: Vec<Compare>,
    machine: Option<(String, i64)>,
    op: TxnOp,
}

impl GuardedOp {
    fn new(guards: Vec<Compare>, op: TxnOp) -> GuardedOp {
        GuardedOp { guards, machine: None, op }
    }
}

/// Writes one round of placement; returns the highest revision written.
///
/// Releases go first, in their own transactions, so a unit moved by `Replaces` never has its
/// claim key deleted and written in one transaction (etcd refuses duplicate keys in a txn).
async fn apply(store: &Store, config: &EngineConfig, work: &Work) -> anyhow::Result<i64> {
    let keys = &store.keys;
    let mut releases: Vec<GuardedOp> = Vec::new();
    let mut writes: Vec<GuardedOp> = Vec::new();

    for (name, global_on, revision) in &work.stale {
        // Delete only the claim we saw: a newer one was written for a reason we have not seen.
        let key = keys.claim(name, global_on.as_deref());
        let guard = Compare::mod_revision(key.as_str(), CompareOp::Equal, *revision);
        releases.push(GuardedOp::new(vec![guard], TxnOp::delete(key, None)));
    }
    for (name, machine) in &work.plan.release {
        let global_on = work.global.contains(name).then_some(machine.as_str());
        let key = keys.claim(name, global_on);
        // The claim must still name the machine it is released from.
        let record = ClaimRecord { version: RECORD_VERSION, machine: machine.clone() };
        let guard = Compare::value(key.as_str(), CompareOp::Equal, keyspace::encode(&record));
        releases.push(GuardedOp::new(vec![guard], TxnOp::delete(key, None)));
    }
    for (name, machine) in &work.plan.claim {
        let Some(&lease) = work.leases.get(machine) else {
            continue;
        };
        let global_on = work.global.contains(name).then_some(machine.as_str());
        let key = keys.claim(name, global_on);
        let record = ClaimRecord { version: RECORD_VERSION, machine: machine.clone() };
        // Two guards: nobody claimed the unit since we looked, and the host is still alive under
        // the lease we bind the claim to (a host that died and came back has a new lease). The
        // second is shared by every claim for the host in a transaction.
        let guards = vec![Compare::create_revision(key.as_str(), CompareOp::Equal, 0)];
        let put =
            TxnOp::put(key, keyspace::encode(&record), Some(PutOptions::new().with_lease(lease)));
        writes.push(GuardedOp { guards, machine: Some((machine.clone(), lease)), op: put });
        debug!(unit.name = %name, machine.id = %machine, "placing unit");
    }
    for (name, reason) in &work.plan.unplaceable {
        if work.problems.get(name) != Some(reason) {
            let record = ProblemRecord { version: RECORD_VERSION, reason: reason.clone() };
            let options = PutOptions::new().with_lease(config.lease);
            let put = TxnOp::put(keys.problem(name), keyspace::encode(&record), Some(options));
            writes.push(GuardedOp::new(Vec::new(), put));
        }
    }
    for name in work.problems.keys() {
        if !work.plan.unplaceable.contains_key(name) {
            writes.push(GuardedOp::new(Vec::new(), TxnOp::delete(keys.problem(name), None)));
        }
    }

    let mut revision = commit(store, config, &releases).await?;
    revision = revision.max(commit(store, config, &writes).await?);
    Ok(revision)
}

/// Splits guarded operations into batches etcd accepts: it limits the compares of a transaction
/// as it limits its operations. A batch over either limit is refused whole, and each of its
/// claims would then cost a transaction of its own.
fn batches(ops: &[GuardedOp]) -> Vec<&[GuardedOp]> {
    let mut batches = Vec::new();
    let mut start = 0;
    // One compare of every batch is the engine guard.
    let mut compares = 1;
    let mut machines = BTreeSet::new();
    for (index, op) in ops.iter().enumerate() {
        let new_machine = op.machine.as_ref().is_some_and(|(m, _)| !machines.contains(m.as_str()));
        let needed = op.guards.len() + usize::from(new_machine);
        let full = index - start == OPS_PER_TXN || compares + needed > OPS_PER_TXN;
        if full && index > start {
            batches.push(&ops[start..index]);
            (start, compares) = (index, 1);
            machines.clear();
        }
        if let Some((machine, _)) = &op.machine
            && machines.insert(machine.as_str())
        {
            compares += 1;
        }
        compares += op.guards.len();
    }
    if start < ops.len() {
        batches.push(&ops[start..]);
    }
    batches
}

/// The transaction of one batch: the engine guard, each machine's lease once, every op's own.
fn transaction(keys: &Keyspace, engine_guard: &Compare, batch: &[GuardedOp]) -> Txn {
    let mut compares = vec![engine_guard.clone()];
    let machines: BTreeMap<&str, i64> =
        batch.iter().filter_map(|op| op.machine.as_ref()).map(|(m, l)| (m.as_str(), *l)).collect();
    compares.extend(
        machines
            .into_iter()
            .map(|(machine, lease)| Compare::lease(keys.machine(machine), CompareOp::Equal, lease)),
    );
    compares.extend(batch.iter().flat_map(|op| op.guards.iter().cloned()));
    Txn::new().when(compares).and_then(batch.iter().map(|op| op.op.clone()).collect::<Vec<_>>())
}

/// Commits guarded operations in batches, side by side since each stands on its own guards; a
/// batch whose guard fails is retried one operation at a time, so one stale operation does not
/// hold back the rest.
async fn commit(store: &Store, config: &EngineConfig, ops: &[GuardedOp]) -> anyhow::Result<i64> {
    // Only the engine may write; if the key moved on, the whole round is void.
    let engine_guard = Compare::lease(store.keys.engine(), CompareOp::Equal, config.lease);
    let batches = batches(ops);
    let results =
        join_all(batches.into_iter().map(|b| commit_batch(store, &engine_guard, b))).await;
    let mut revision = 0;
    for result in results {
        revision = revision.max(result?);
    }
    Ok(revision)
}

async fn commit_batch(store: &Store, guard: &Compare, batch: &[GuardedOp]) -> anyhow::Result<i64> {
    let revision_of = |r: &etcd_client::TxnResponse| r.header().map_or(0, |h| h.revision());
    match store.client().txn(transaction(&store.keys, guard, batch)).await {
        Ok(response) if response.succeeded() => return Ok(revision_of(&response)),
        Ok(_) => {}
        Err(error) => debug!(error = %error, "placement batch refused; retrying one by one"),
    }
    let mut revision = 0;
    for one in batch.chunks(1) {
        let response = store.client().txn(transaction(&store.keys, guard, one)).await?;
        if response.succeeded() {
            revision = revision.max(revision_of(&response));
        }
    }
    Ok(revision)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claim(n: usize, machine: &str) -> GuardedOp {
        let key = format!("/flotilla/claims/u{n}.service");
        let guards = vec![Compare::create_revision(key.as_str(), CompareOp::Equal, 0)];
        GuardedOp {
            guards,
            machine: Some((machine.to_string(), 7)),
            op: TxnOp::put(key, "x", None),
        }
    }

    fn compares(batch: &[GuardedOp]) -> usize {
        let machines: BTreeSet<&str> =
            batch.iter().filter_map(|op| op.machine.as_ref()).map(|(m, _)| m.as_str()).collect();
        1 + machines.len() + batch.iter().map(|op| op.guards.len()).sum::<usize>()
    }

    #[test]
    fn batches_keep_compares_and_operations_within_etcd_s_limit() {
        let hosts = ["a", "b", "c"];
        let claims: Vec<GuardedOp> = (0..500).map(|n| claim(n, hosts[n % 3])).collect();
        let batches = batches(&claims);
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 500);
        for batch in &batches {
            assert!(compares(batch) <= OPS_PER_TXN && batch.len() <= OPS_PER_TXN);
        }
        // The lease of each host is compared once a batch: the engine guard and three hosts
        // leave room for 116 claims, not the 59 a lease compare per claim would allow.
        assert_eq!(batches.len(), 500_usize.div_ceil(116));

        let unguarded: Vec<GuardedOp> = (0..250)
            .map(|n| GuardedOp::new(Vec::new(), TxnOp::delete(format!("k{n}"), None)))
            .collect();
        let sizes: Vec<usize> = super::batches(&unguarded).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, [120, 120, 10]);
    }

    #[test]
    fn a_batch_compares_each_host_s_lease_once() {
        let claims: Vec<GuardedOp> = (0..10).map(|n| claim(n, ["a", "b"][n % 2])).collect();
        let keys = Keyspace::new("/flotilla");
        let engine = Compare::lease(keys.engine(), CompareOp::Equal, 7);
        let txn = format!("{:?}", transaction(&keys, &engine, &claims));
        // The engine's key and the two hosts' keys; then one create guard per claim.
        assert_eq!(txn.matches("target: Lease").count(), 3, "{txn}");
        assert_eq!(txn.matches("target: Create").count(), 10, "{txn}");
    }
}
