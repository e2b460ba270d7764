//! The connection to etcd and the operations flotctl and flotd perform on the keyspace.
//!
//! Reads that must be consistent (listings, snapshots) are single range requests or a single
//! transaction, so they observe one revision. Writes that must not race (claims, the machine
//! record, the engine election) are transactions whose compare clause states the invariant.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, KeyValue, PutOptions, Txn, TxnOp,
    TxnResponse,
};
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use crate::keyspace::{
    self, DesiredRecord, DesiredState, Key, Keyspace, RECORD_VERSION, Record, UnitRecord,
};
use crate::unit::UnitName;

/// etcd refuses transactions with more operations than `--max-txn-ops` (128 by default).
pub const OPS_PER_TXN: usize = 120;

/// Transactions [`Store::commit`] keeps in flight at once.
const TXNS_IN_FLIGHT: usize = 16;

/// Keys in a listing's first page; later pages are sized from the largest record seen.
const FIRST_PAGE_KEYS: i64 = 1000;

/// The most keys one page asks for.
const MAX_PAGE_KEYS: i64 = 20_000;

/// The size a page of a listing aims to stay under.
const PAGE_BYTES: usize = 32 << 20;

/// The largest response the client accepts. A page that turns out larger, because its records
/// are much larger than those before it, is asked for again in fewer keys.
const MAX_PAGE_BYTES: usize = 256 << 20;

/// The first key after every key that starts with `prefix`, as etcd's range ends are given.
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Only bytes 0xff: the range runs to the end of the keyspace.
    vec![0]
}

/// The largest value written: etcd refuses requests over `--max-request-bytes` (1.5 MiB by
/// default), and a unit file of 1 MiB grows when escaped into JSON.
pub const MAX_VALUE_BYTES: usize = 1_400_000;

/// Groups guarded writes into transactions that stay within etcd's limits.
#[derive(Default)]
struct Batch {
    done: Vec<Txn>,
    compares: Vec<Compare>,
    ops: Vec<TxnOp>,
    bytes: usize,
}

impl Batch {
    /// Adds writes that must land in the same transaction as their compares; `values` is the
    /// size of the values they write.
    fn add(&mut self, compares: Vec<Compare>, ops: Vec<TxnOp>, values: usize) {
        // Keys and record overhead are small; 256 bytes an operation covers them.
        let bytes = if ops.is_empty() { 0 } else { values + ops.len() * 256 };
        let full = self.ops.len() + ops.len() > OPS_PER_TXN
            || self.compares.len() + compares.len() > OPS_PER_TXN;
        if !self.ops.is_empty() && (full || self.bytes + bytes > MAX_VALUE_BYTES) {
            self.flush();
        }
        self.compares.extend(compares);
        self.ops.extend(ops);
        self.bytes += bytes;
    }

    fn flush(&mut self) {
        let compares = std::mem::take(&mut self.compares);
        let ops = std::mem::take(&mut self.ops);
        self.bytes = 0;
        self.done.push(Txn::new().when(compares).and_then(ops));
    }

    /// The transactions, in order.
    fn finish(mut self) -> Vec<Txn> {
        if !self.ops.is_empty() {
            self.flush();
        }
        self.done
    }
}

/// What is wrong with an etcd client URL, if anything. `http://host:port` and a bare
/// `host:port` are taken; this build speaks no TLS, and any other scheme would only be reported
/// later as an etcd that cannot be reached.
pub fn endpoint_problem(endpoint: &str) -> Option<String> {
    let endpoint = endpoint.trim();
    if endpoint.is_empty() {
        return Some("an endpoint is empty".to_string());
    }
    match endpoint.split_once("://") {
        None => None,
        Some(("http", rest)) if !rest.is_empty() => None,
        Some(("http", _)) => Some(format!("{endpoint:?} names no host")),
        Some(("https", _)) => {
            Some(format!("{endpoint:?}: flotilla talks to etcd over plain http, not https"))
        }
        Some((scheme, _)) => Some(format!("{endpoint:?}: unknown scheme {scheme:?}")),
    }
}

/// An etcd error in a few words, without the transport's debug dump.
pub fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) if !status.message().is_empty() => {
            status.message().to_string()
        }
        other => other.to_string(),
    }
}

/// Which member answers a read.
#[derive(Clone, Copy)]
enum Read {
    /// The member the request reaches, from what it has applied: no round trip to the leader,
    /// but it may miss the latest writes.
    Nearest,
    /// Everything committed before the read, as the leader knows it.
    Latest,
}

/// A client for the cluster's etcd, scoped to one keyspace.
#[derive(Clone)]
pub struct Store {
    client: Arc<RwLock<Client>>,
    /// The key layout in use.
    pub keys: Keyspace,
    endpoints: Vec<String>,
    /// Counts the reconnects, so streams opened on an older client can move to the new one.
    generation: Arc<watch::Sender<u64>>,
}

/// What a consistent read of the keyspace returned.
pub struct Listing {
    /// The revision the read observed.
    pub revision: i64,
    /// Every key-value pair under the requested prefix.
    pub kvs: Vec<KeyValue>,
}

fn connect_options() -> ConnectOptions {
    ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(5))
        // etcd closes a connection that pings more often than its --grpc-keepalive-min-time
        // (5 s), and every such close cost a reconnect and a listing. A dead member is found
        // sooner than these pings would: the lease keeper reconnects when a renewal goes
        // unanswered, and the keyspace watch follows it to the new connection.
        .with_keep_alive(Duration::from_secs(6), Duration::from_secs(3))
        .with_keep_alive_while_idle(true)
}

/// How long [`open`] waits for the other members once one has answered: a dead member takes
/// the whole probe timeout to give up, and a reconnect must be quick when a lease is at stake.
const LAGGARD_GRACE: Duration = Duration::from_millis(250);

/// Asks one member for its status, so a dead member is left out of the client.
async fn probe(endpoint: &str) -> Result<(), String> {
    let ask = async {
        let mut client = Client::connect([endpoint], Some(connect_options())).await?;
        client.status().await.map(|_| ())
    };
    match tokio::time::timeout(Duration::from_secs(2), ask).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(describe(&error)),
        Err(_) => Err("no answer within 2s".to_string()),
    }
}

/// Connects to the members of `endpoints` that answer.
///
/// The client balances requests over its endpoints and does not skip dead ones, so with one
/// member down every other request would fail; only members that answered a probe are used.
async fn open(endpoints: &[String]) -> anyhow::Result<Client> {
    let mut probes: FuturesUnordered<_> =
        endpoints.iter().map(|e| async move { (e, probe(e).await) }).collect();
    let mut healthy = Vec::new();
    let mut last_error = String::new();
    let mut wait_until: Option<Instant> = None;
    loop {
        let next = match wait_until {
            None => probes.next().await,
            Some(at) => tokio::time::timeout_at(at, probes.next()).await.unwrap_or(None),
        };
        let Some((endpoint, result)) = next else { break };
        match result {
            Ok(()) => {
                healthy.push(endpoint.clone());
                wait_until.get_or_insert(Instant::now() + LAGGARD_GRACE);
            }
            Err(error) => last_error = error,
        }
    }
    debug!(healthy = ?healthy, "etcd members probed");
    if healthy.is_empty() {
        bail!("etcd is unreachable (tried {}): {last_error}", endpoints.join(", "));
    }
    Client::connect(&healthy, Some(connect_options())).await.map_err(|e| {
        anyhow!("failed to connect to etcd at {}: {}", healthy.join(", "), describe(&e))
    })
}

impl Store {
    /// Connects to the members of `endpoints` that answer; fails with the endpoints tried.
    pub async fn connect(endpoints: &[String], prefix: &str) -> anyhow::Result<Store> {
        if endpoints.is_empty() {
            bail!("no etcd endpoints given");
        }
        let client = open(endpoints).await?;
        Ok(Store {
            client: Arc::new(RwLock::new(client)),
            keys: Keyspace::new(prefix),
            endpoints: endpoints.to_vec(),
            generation: Arc::new(watch::Sender::new(0)),
        })
    }

    /// Probes the members again and switches to those that answer; on failure keeps the old
    /// client, so callers simply retry later.
    pub async fn reconnect(&self) {
        match open(&self.endpoints).await {
            Ok(client) => {
                *self.client.write().expect("client lock") = client;
                self.generation.send_modify(|generation| *generation += 1);
            }
            Err(error) => debug!(error = %format!("{error:#}"), "etcd reconnect failed"),
        }
    }

    /// Changes after every reconnect: a stream opened before it may sit on a dead member.
    pub fn reconnects(&self) -> watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// A handle on the underlying client, for watches and leases.
    pub fn client(&self) -> Client {
        self.client.read().expect("client lock").clone()
    }

    /// Reads every key under one prefix at a single revision, a page at a time: one response
    /// holding the whole keyspace would soon pass the gRPC message limit.
    pub async fn list(&self, prefix: &str) -> anyhow::Result<Listing> {
        self.list_many(&[prefix]).await
    }

    /// Reads every key under each prefix, all at one revision.
    pub async fn list_many(&self, prefixes: &[&str]) -> anyhow::Result<Listing> {
        let mut listing = Listing { revision: 0, kvs: Vec::new() };
        if prefixes.len() > 1 {
            // One revision for all, so that the prefixes can be read side by side: one after
            // another, 10,000 units' four directories took seven round trips in a row.
            let options = GetOptions::new().with_count_only();
            let response = self.client().get(prefixes[0], Some(options)).await;
            let response = response.context("failed to read the current revision")?;
            listing.revision = response.header().map_or(0, |h| h.revision());
        }
        let reads = prefixes.iter().map(|prefix| async move {
            let mut part = Listing { revision: listing.revision, kvs: Vec::new() };
            let read = self.list_into(prefix, &mut part).await;
            read.with_context(|| format!("failed to read {prefix}")).map(|()| part)
        });
        for part in futures_util::future::join_all(reads).await {
            let part = part?;
            listing.revision = part.revision;
            listing.kvs.extend(part.kvs);
        }
        Ok(listing)
    }

    async fn list_into(&self, prefix: &str, listing: &mut Listing) -> anyhow::Result<()> {
        let mut kv = self.client().kv_client().max_decoding_message_size(MAX_PAGE_BYTES);
        let end = prefix_end(prefix.as_bytes());
        let mut from = prefix.as_bytes().to_vec();
        let mut limit = FIRST_PAGE_KEYS;
        loop {
            let mut options = GetOptions::new().with_range(end.clone()).with_limit(limit);
            // Later pages read at the first page's revision, so the listing is one snapshot.
            if listing.revision > 0 {
                options = options.with_revision(listing.revision);
            }
            let mut response = match kv.get(from.clone(), Some(options)).await {
                Ok(response) => response,
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == tonic::Code::OutOfRange && limit > 1 =>
                {
                    limit = (limit / 8).max(1);
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            if listing.revision == 0 {
                listing.revision = response.header().map_or(0, |h| h.revision());
            }
            let more = response.more();
            let page = response.take_kvs();
            let largest = page.iter().map(|kv| kv.key().len() + kv.value().len()).max();
            limit =
                (PAGE_BYTES / largest.unwrap_or(1).max(1)).clamp(1, MAX_PAGE_KEYS as usize) as i64;
            match page.last() {
                Some(last) if more => {
                    // The next page starts just after the last key of this one.
                    from = last.key().to_vec();
                    from.push(0);
                    listing.kvs.extend(page);
                }
                _ => {
                    listing.kvs.extend(page);
                    return Ok(());
                }
            }
        }
    }

    /// Reads one record; `None` when the key is absent.
    pub async fn get<T: Record>(&self, key: &str) -> anyhow::Result<Option<(T, KeyValue)>> {
        let response =
            self.client().get(key, None).await.with_context(|| format!("failed to read {key}"))?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let record =
            keyspace::decode(kv.value()).with_context(|| format!("bad record at {key}"))?;
        Ok(Some((record, kv.clone())))
    }

    /// Stores unit files and, if given, their desired state.
    ///
    /// With `replace` false a unit that already exists with a different file is refused and
    /// nothing is written. Each transaction's compare clause checks every file it writes, so a
    /// unit is stored whole or not at all; a batch larger than one transaction (etcd allows 128
    /// operations and about 1.5 MiB per request) is written in several.
    pub async fn submit(
        &self,
        units: &[(UnitName, String)],
        desired: Option<DesiredState>,
        replace: bool,
    ) -> anyhow::Result<()> {
        let mut unique: BTreeMap<&UnitName, &String> = BTreeMap::new();
        for (name, text) in units {
            if unique.insert(name, text).is_some_and(|earlier| earlier != text) {
                bail!("unit {name} is given twice with different files");
            }
        }
        // The first look asks the nearest member, which may not have the latest writes yet;
        // the compares catch that, and the second look asks the leader.
        if self.try_submit(&unique, desired, replace, Read::Nearest).await? {
            return Ok(());
        }
        if self.try_submit(&unique, desired, replace, Read::Latest).await? {
            return Ok(());
        }
        bail!("unit files changed while submitting; try again")
    }

    /// One attempt of [`Store::submit`]: false when it must be tried again with the latest
    /// data, because a compare failed (some files may be stored) or the nearest member's
    /// data would refuse a file (none is).
    async fn try_submit(
        &self,
        unique: &BTreeMap<&UnitName, &String>,
        desired: Option<DesiredState>,
        replace: bool,
        read: Read,
    ) -> anyhow::Result<bool> {
        let names: Vec<UnitName> = unique.keys().map(|n| (*n).clone()).collect();
        let existing = self.existing_units(&names, read).await?;

        let mut batch = Batch::default();
        for (&name, &text) in unique {
            let hash = keyspace::hash_text(text);
            let unit_key = self.keys.unit(name);
            let record =
                UnitRecord { version: RECORD_VERSION, hash: hash.clone(), text: text.clone() };
            let value = keyspace::encode(&record);
            if value.len() > MAX_VALUE_BYTES {
                bail!(
                    "unit {name} takes {} bytes once encoded for etcd (at most {MAX_VALUE_BYTES})",
                    value.len()
                );
            }
            let mut compares = Vec::new();
            let mut ops = Vec::new();
            let size = value.len();
            match existing.get(name) {
                // Still the file we saw, or the desired state would outlive a racing destroy.
                Some((record, mod_revision)) if record.hash == hash => {
                    compares.push(Compare::mod_revision(
                        unit_key.as_str(),
                        CompareOp::Equal,
                        *mod_revision,
                    ));
                }
                // What the nearest member holds may have been destroyed since: ask the leader.
                Some(_) if !replace && matches!(read, Read::Nearest) => return Ok(false),
                Some(_) if !replace => {
                    bail!("unit {name} already exists with a different file (use --replace)");
                }
                Some((_, mod_revision)) => {
                    // Replace only the version we compared against.
                    compares.push(Compare::mod_revision(
                        unit_key.as_str(),
                        CompareOp::Equal,
                        *mod_revision,
                    ));
                    ops.push(TxnOp::put(unit_key, value, None));
                }
                None => {
                    // Create only if nobody created it since we looked.
                    compares.push(Compare::create_revision(unit_key.as_str(), CompareOp::Equal, 0));
                    ops.push(TxnOp::put(unit_key, value, None));
                    if desired.is_none() {
                        ops.push(self.desired_op(name, DesiredState::Inactive));
                    }
                }
            }
            if let Some(state) = desired {
                ops.push(self.desired_op(name, state));
            }
            batch.add(compares, ops, size);
        }
        let responses = self.commit(batch.finish()).await.context("failed to store unit files")?;
        Ok(responses.iter().all(TxnResponse::succeeded))
    }

    fn desired_op(&self, name: &UnitName, state: DesiredState) -> TxnOp {
        let record = DesiredRecord { version: RECORD_VERSION, state };
        TxnOp::put(self.keys.desired(name), keyspace::encode(&record), None)
    }

    /// The stored units among `names`, with the revision each was last written at.
    async fn existing_units(
        &self,
        names: &[UnitName],
        read: Read,
    ) -> anyhow::Result<BTreeMap<UnitName, (UnitRecord, i64)>> {
        let mut found = BTreeMap::new();
        let options = match read {
            Read::Nearest => Some(GetOptions::new().with_serializable()),
            Read::Latest => None,
        };
        let reads = names
            .chunks(OPS_PER_TXN)
            .map(|chunk| {
                let ops: Vec<TxnOp> =
                    chunk.iter().map(|n| TxnOp::get(self.keys.unit(n), options.clone())).collect();
                Txn::new().and_then(ops)
            })
            .collect();
        for response in self.commit(reads).await.context("failed to read units")? {
            for op in response.op_responses() {
                let etcd_client::TxnOpResponse::Get(get) = op else { continue };
                for kv in get.kvs() {
                    let Some(Key::Unit(name)) = self.keys.parse(kv.key()) else { continue };
                    let record: UnitRecord = keyspace::decode(kv.value())
                        .with_context(|| format!("bad record for unit {name}"))?;
                    found.insert(name, (record, kv.mod_revision()));
                }
            }
        }
        Ok(found)
    }

    /// Sets the desired state of units that exist; fails if one was destroyed meanwhile.
    pub async fn set_desired(&self, units: &[UnitName], state: DesiredState) -> anyhow::Result<()> {
        let mut batch = Batch::default();
        for name in units {
            // The unit must still exist when the state is written, or a racing destroy would
            // leave a desired record behind with no file.
            let guard = Compare::create_revision(self.keys.unit(name), CompareOp::Greater, 0);
            batch.add(vec![guard], vec![self.desired_op(name, state)], 0);
        }
        let responses =
            self.commit(batch.finish()).await.context("failed to set the desired state")?;
        if !responses.iter().all(TxnResponse::succeeded) {
            bail!("a unit was destroyed while its state was being set");
        }
        Ok(())
    }

    /// Removes units' files and desired states; claims follow when the engine sees them gone.
    pub async fn destroy(&self, units: &[UnitName]) -> anyhow::Result<()> {
        let mut batch = Batch::default();
        for name in units {
            let ops = vec![
                TxnOp::delete(self.keys.unit(name), None),
                TxnOp::delete(self.keys.desired(name), None),
            ];
            batch.add(Vec::new(), ops, 0);
        }
        self.commit(batch.finish()).await.context("failed to destroy units")?;
        Ok(())
    }

    /// Sends transactions that do not depend on one another, several at a time: one after
    /// another, a thousand units' worth took a round trip each. Fails if any failed.
    pub async fn commit(&self, txns: Vec<Txn>) -> Result<Vec<TxnResponse>, etcd_client::Error> {
        self.commit_each(txns).await.into_iter().collect()
    }

    /// Like [`Store::commit`], with each transaction's own outcome, in the order given.
    pub async fn commit_each(
        &self,
        txns: Vec<Txn>,
    ) -> Vec<Result<TxnResponse, etcd_client::Error>> {
        let client = self.client();
        futures_util::stream::iter(txns)
            .map(|txn| {
                let mut client = client.clone();
                async move { client.txn(txn).await }
            })
            .buffered(TXNS_IN_FLIGHT)
            .collect()
            .await
    }

    /// Puts a record bound to a lease.
    pub async fn put_leased<T: Record>(
        &self,
        key: &str,
        record: &T,
        lease: i64,
    ) -> anyhow::Result<()> {
        self.client()
            .put(key, keyspace::encode(record), Some(PutOptions::new().with_lease(lease)))
            .await
            .with_context(|| format!("failed to write {key}"))?;
        Ok(())
    }

    /// Deletes one key.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.client().delete(key, None).await.with_context(|| format!("failed to delete {key}"))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_plain_http_urls_or_host_and_port() {
        for good in ["http://10.0.0.1:2379", "127.0.0.1:2379", "etcd1:2379", " http://a:1 "] {
            assert_eq!(endpoint_problem(good), None, "{good}");
        }
        for (bad, why) in [
            ("https://10.0.0.1:2379", "not https"),
            ("ftp://10.0.0.1:2379", "unknown scheme \"ftp\""),
            ("http://", "names no host"),
            ("  ", "empty"),
        ] {
            let problem = endpoint_problem(bad).unwrap_or_default();
            assert!(problem.contains(why), "{bad:?}: {problem}");
        }
    }

    #[test]
    fn a_prefix_range_ends_after_its_last_key() {
        assert_eq!(prefix_end(b"/flotilla/"), b"/flotilla0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), [0]);
    }
}
