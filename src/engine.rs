//! The placement engine: one per cluster, elected through etcd, turning the mirror into claims.
//!
//! Every agent runs this task; only the one holding the `engine` key acts. That key is bound to
//! the holder's lease, so when the holder dies etcd deletes it and the others campaign again at
//! once. The engine never trusts its own view for safety: each claim is written by a transaction
//! that fails if the unit is already claimed or the chosen host's lease has changed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, trace, warn};

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

/// How many claim-only rounds may be written at once. Later rounds are planned with the
/// earlier ones' claims laid over the mirror, so a bulk start is claimed as its files arrive
/// rather than one commit and one watch delivery at a time.
const ROUNDS_IN_FLIGHT: usize = 4;

/// How long the engine waits after a round failed before it plans again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Claims of a round the mirror does not show yet.
struct PendingRound {
    id: u64,
    claims: Vec<(UnitName, String)>,
    /// The revision the round wrote at; `None` while it is being written.
    revision: Option<i64>,
}

/// Places units whenever the mirror changes, until another host holds the engine key.
///
/// A round that only adds claims goes out at once, beside rounds still being written. Every
/// other round (releases, stale claims, problem reports) waits until nothing is in flight and
/// the mirror has seen all this engine wrote: those operations are guarded by what the mirror
/// showed, and a view that lags behind our own writes would only make them fail.
async fn lead(
    store: &Store,
    mirror: &SharedMirror,
    changed: &mut watch::Receiver<i64>,
    config: &EngineConfig,
    options: &mut OptionsCache,
) {
    let mut written_revision = 0;
    let mut seen_self = false;
    let mut pending: Vec<PendingRound> = Vec::new();
    let mut rounds = FuturesUnordered::new();
    let mut next_id = 0;
    // After a failed round no new one starts before this moment.
    let mut paused_until: Option<tokio::time::Instant> = None;
    loop {
        let paused = paused_until.is_some_and(|at| tokio::time::Instant::now() < at);
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
                Some(_) if paused || rounds.len() >= ROUNDS_IN_FLIGHT => None,
                Some(_) => {
                    seen_self = true;
                    pending.retain(|r| r.revision.is_none_or(|rev| rev > mirror.revision));
                    let quiet = rounds.is_empty() && mirror.revision >= written_revision;
                    Some((Work::from_mirror(&mirror, options, &pending), quiet))
                }
            }
        };
        if let Some((work, quiet)) = work
            && !work.is_empty()
            && (quiet || work.only_claims())
        {
            let id = next_id;
            next_id += 1;
            pending.push(PendingRound { id, claims: work.plan.claim.clone(), revision: None });
            rounds.push(async move {
                let started = std::time::Instant::now();
                let result = apply(store, config, &work).await;
                if result.is_ok() {
                    let (claims, releases) = (work.plan.claim.len(), work.plan.release.len());
                    let (planned_ms, applied_ms) = (work.planned_ms, started.elapsed().as_millis());
                    debug!(claims, releases, planned_ms, applied_ms, "placement round");
                }
                (id, result)
            });
        }

        let resume = async {
            match paused_until {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = changed.changed() => {
                if result.is_err() {
                    return;
                }
            }
            Some((id, result)) = rounds.next(), if !rounds.is_empty() => {
                match result {
                    Ok(revision) => {
                        written_revision = written_revision.max(revision);
                        if let Some(round) = pending.iter_mut().find(|r| r.id == id) {
                            round.revision = Some(revision);
                        }
                    }
                    Err(error) => {
                        // What the round wrote, if anything, reaches the mirror as usual; what
                        // it did not is planned again once the pause is over.
                        pending.retain(|r| r.id != id);
                        warn!(error = %format!("{error:#}"), "failed to apply placement");
                        paused_until = Some(tokio::time::Instant::now() + RETRY_PAUSE);
                    }
                }
            }
            () = resume => paused_until = None,
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
    /// Plans from the mirror with the claims of `pending` rounds laid over it.
    fn from_mirror(mirror: &Mirror, options: &mut OptionsCache, pending: &[PendingRound]) -> Work {
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

        // A claim on its way to etcd holds its unit and loads its host as a seen one does.
        for (name, machine) in pending.iter().flat_map(|round| &round.claims) {
            if placeable.contains(name) {
                claims.entry(name.clone()).or_default().insert(machine.clone());
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

    /// Whether a problem report must be written or removed.
    fn changes_problems(&self) -> bool {
        let unplaceable = &self.plan.unplaceable;
        unplaceable.iter().any(|(name, reason)| self.problems.get(name) != Some(reason))
            || self.problems.keys().any(|name| !unplaceable.contains_key(name))
    }

    /// Whether the round adds claims and does nothing else.
    fn only_claims(&self) -> bool {
        self.plan.release.is_empty() && self.stale.is_empty() && !self.changes_problems()
    }

    /// Whether the round writes nothing at all.
    fn is_empty(&self) -> bool {
        self.plan.claim.is_empty() && self.only_claims()
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
        trace!(unit.name = %name, machine.id = %machine, "placing unit");
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

    /// A mirror with two idle hosts and `units` launched plain units.
    fn mirror_with(units: &[&str]) -> Mirror {
        let mut mirror = Mirror::default();
        mirror.revision = 10;
        for (lease, id) in [(1, "m1"), (2, "m2")] {
            let record = keyspace::MachineRecord {
                version: RECORD_VERSION,
                id: id.to_string(),
                ip: String::new(),
                hostname: id.to_string(),
                metadata: BTreeMap::new(),
                agent_version: String::new(),
            };
            mirror.machines.insert(id.to_string(), crate::mirror::MachineEntry { record, lease });
        }
        for unit in units {
            let name = UnitName::parse(unit).unwrap();
            let text = "[Service]\nExecStart=/bin/true\n".to_string();
            let hash = keyspace::hash_text(&text);
            mirror.units.insert(name.clone(), keyspace::UnitRecord { version: 1, hash, text });
            mirror.desired.insert(name, keyspace::DesiredState::Launched);
        }
        mirror
    }

    #[test]
    fn a_claim_on_its_way_is_not_made_again_and_loads_its_host() {
        let mirror = mirror_with(&["a.service", "b.service", "c.service"]);
        let a = UnitName::parse("a.service").unwrap();
        let b = UnitName::parse("b.service").unwrap();
        let pending = [PendingRound {
            id: 0,
            claims: vec![(a.clone(), "m1".to_string()), (b.clone(), "m1".to_string())],
            revision: None,
        }];
        let work = Work::from_mirror(&mirror, &mut OptionsCache::default(), &pending);
        // Only c is left to claim, and m1 already carries two units.
        let c = UnitName::parse("c.service").unwrap();
        assert_eq!(work.plan.claim, [(c, "m2".to_string())]);
        assert!(work.only_claims() && !work.is_empty());

        let work = Work::from_mirror(&mirror, &mut OptionsCache::default(), &[]);
        assert_eq!(work.plan.claim.len(), 3);
    }

    #[test]
    fn a_round_that_releases_or_reports_is_not_claims_only() {
        let mut mirror = mirror_with(&["a.service"]);
        let a = UnitName::parse("a.service").unwrap();
        let claim = ClaimEntry { machine: "m1".to_string(), revision: 5, lease: 1 };
        mirror.claims.insert(a.clone(), claim);
        let work = Work::from_mirror(&mirror, &mut OptionsCache::default(), &[]);
        assert!(work.is_empty());

        // The unit was unloaded: its claim is stale and must go.
        mirror.desired.insert(a.clone(), keyspace::DesiredState::Inactive);
        let work = Work::from_mirror(&mirror, &mut OptionsCache::default(), &[]);
        assert!(!work.only_claims() && !work.is_empty());

        // A problem the engine no longer has a reason for is removed.
        let mut mirror = mirror_with(&[]);
        mirror.problems.insert(a, "no machine matches".to_string());
        let work = Work::from_mirror(&mirror, &mut OptionsCache::default(), &[]);
        assert!(!work.only_claims());
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
