//! The connection to etcd and the operations flotctl and flotd perform on the keyspace.
//!
//! Reads that must be consistent (listings, snapshots) are single range requests or a single
//! transaction, so they observe one revision. Writes that must not race (claims, the machine
//! record, the engine election) are transactions whose compare clause states the invariant.

use std::time::Duration;

use anyhow::{Context, anyhow};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KeyValue, PutOptions,
    Txn, TxnOp,
};

use crate::keyspace::{
    self, DesiredRecord, DesiredState, Key, Keyspace, RECORD_VERSION, Record, UnitRecord,
};
use crate::unit::UnitName;

/// A client for the cluster's etcd, scoped to one keyspace.
#[derive(Clone)]
pub struct Store {
    client: Client,
    /// The key layout in use.
    pub keys: Keyspace,
    endpoints: Vec<String>,
}

/// What a consistent read of the keyspace returned.
pub struct Listing {
    /// The revision the read observed.
    pub revision: i64,
    /// Every key-value pair under the requested prefix.
    pub kvs: Vec<KeyValue>,
}

impl Store {
    /// Connects to any of `endpoints`; fails with the list of endpoints tried.
    pub async fn connect(endpoints: &[String], prefix: &str) -> anyhow::Result<Store> {
        if endpoints.is_empty() {
            return Err(anyhow!("no etcd endpoints given"));
        }
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        let tried = endpoints.join(", ");
        let client = Client::connect(endpoints, Some(options))
            .await
            .with_context(|| format!("failed to connect to etcd (tried {tried})"))?;
        let store = Store {
            client,
            keys: Keyspace::new(prefix),
            endpoints: endpoints.to_vec(),
        };
        // The channel connects lazily; one cheap read proves that a member answers.
        store
            .client()
            .get(
                store.keys.engine(),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .with_context(|| format!("etcd is unreachable (tried {tried})"))?;
        Ok(store)
    }

    /// A handle on the underlying client, for watches and leases.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// The endpoints this store was opened with.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Reads every key under one prefix at a single revision.
    pub async fn list(&self, prefix: &str) -> anyhow::Result<Listing> {
        let response = self
            .client()
            .get(prefix, Some(GetOptions::new().with_prefix()))
            .await
            .with_context(|| format!("failed to read {prefix}"))?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut response = response;
        Ok(Listing {
            revision,
            kvs: response.take_kvs(),
        })
    }

    /// Reads several prefixes in one transaction, so they all reflect the same revision.
    pub async fn list_many(&self, prefixes: &[String]) -> anyhow::Result<(i64, Vec<KeyValue>)> {
        let ops: Vec<TxnOp> = prefixes
            .iter()
            .map(|p| TxnOp::get(p.as_str(), Some(GetOptions::new().with_prefix())))
            .collect();
        let response = self
            .client()
            .txn(Txn::new().and_then(ops))
            .await
            .context("failed to read the keyspace")?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut kvs = Vec::new();
        for op in response.op_responses() {
            if let etcd_client::TxnOpResponse::Get(mut get) = op {
                kvs.extend(get.take_kvs());
            }
        }
        Ok((revision, kvs))
    }

    /// Reads one record; `None` when the key is absent.
    pub async fn get<T: Record>(&self, key: &str) -> anyhow::Result<Option<(T, KeyValue)>> {
        let response = self
            .client()
            .get(key, None)
            .await
            .with_context(|| format!("failed to read {key}"))?;
        let Some(kv) = response.kvs().first() else {
            return Ok(None);
        };
        let record =
            keyspace::decode(kv.value()).with_context(|| format!("bad record at {key}"))?;
        Ok(Some((record, kv.clone())))
    }

    /// Stores unit files and their desired states in one transaction.
    ///
    /// With `replace` false a unit that already exists with a different file is refused, and
    /// nothing at all is written: the compare clause checks every file, so a batch is stored
    /// whole or not at all.
    pub async fn submit(
        &self,
        units: &[(UnitName, String)],
        desired: Option<DesiredState>,
        replace: bool,
    ) -> anyhow::Result<()> {
        let existing = self.existing_units(units).await?;
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for (name, text) in units {
            let hash = keyspace::hash_text(text);
            let unit_key = self.keys.unit(name);
            match existing.iter().find(|(n, _, _)| n == name) {
                Some((_, record, _)) if record.hash == hash => {}
                Some(_) if !replace => {
                    return Err(anyhow!(
                        "unit {name} already exists with a different file (use --replace)"
                    ));
                }
                Some((_, _, mod_revision)) => {
                    // Replace only the version we compared against.
                    compares.push(Compare::mod_revision(
                        unit_key.as_str(),
                        CompareOp::Equal,
                        *mod_revision,
                    ));
                    let record = UnitRecord {
                        version: RECORD_VERSION,
                        hash,
                        text: text.clone(),
                    };
                    ops.push(TxnOp::put(unit_key, keyspace::encode(&record), None));
                }
                None => {
                    // Create only if nobody created it since we looked.
                    compares.push(Compare::create_revision(
                        unit_key.as_str(),
                        CompareOp::Equal,
                        0,
                    ));
                    let record = UnitRecord {
                        version: RECORD_VERSION,
                        hash,
                        text: text.clone(),
                    };
                    ops.push(TxnOp::put(unit_key, keyspace::encode(&record), None));
                    if desired.is_none() {
                        let record = DesiredRecord {
                            version: RECORD_VERSION,
                            state: DesiredState::Inactive,
                        };
                        ops.push(TxnOp::put(
                            self.keys.desired(name),
                            keyspace::encode(&record),
                            None,
                        ));
                    }
                }
            }
            if let Some(state) = desired {
                let record = DesiredRecord {
                    version: RECORD_VERSION,
                    state,
                };
                ops.push(TxnOp::put(
                    self.keys.desired(name),
                    keyspace::encode(&record),
                    None,
                ));
            }
        }
        if ops.is_empty() {
            return Ok(());
        }
        let response = self
            .client()
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .context("failed to store unit files")?;
        if !response.succeeded() {
            return Err(anyhow!("unit files changed while submitting; try again"));
        }
        Ok(())
    }

    async fn existing_units(
        &self,
        units: &[(UnitName, String)],
    ) -> anyhow::Result<Vec<(UnitName, UnitRecord, i64)>> {
        let ops: Vec<TxnOp> = units
            .iter()
            .map(|(n, _)| TxnOp::get(self.keys.unit(n), None))
            .collect();
        let response = self
            .client()
            .txn(Txn::new().and_then(ops))
            .await
            .context("failed to read units")?;
        let mut found = Vec::new();
        for op in response.op_responses() {
            let etcd_client::TxnOpResponse::Get(get) = op else {
                continue;
            };
            for kv in get.kvs() {
                let Some(Key::Unit(name)) = self.keys.parse(kv.key()) else {
                    continue;
                };
                let record: UnitRecord = keyspace::decode(kv.value())
                    .with_context(|| format!("bad record for unit {name}"))?;
                found.push((name, record, kv.mod_revision()));
            }
        }
        Ok(found)
    }

    /// Sets the desired state of units that exist; fails naming the first that does not.
    pub async fn set_desired(&self, units: &[UnitName], state: DesiredState) -> anyhow::Result<()> {
        let mut compares = Vec::new();
        let mut ops = Vec::new();
        for name in units {
            // The unit must still exist when the state is written, or a racing destroy would
            // leave a desired record behind with no file.
            compares.push(Compare::create_revision(
                self.keys.unit(name),
                CompareOp::Greater,
                0,
            ));
            let record = DesiredRecord {
                version: RECORD_VERSION,
                state,
            };
            ops.push(TxnOp::put(
                self.keys.desired(name),
                keyspace::encode(&record),
                None,
            ));
        }
        let response = self
            .client()
            .txn(Txn::new().when(compares).and_then(ops))
            .await
            .context("failed to set desired state")?;
        if !response.succeeded() {
            return Err(anyhow!(
                "a unit was destroyed while its state was being set"
            ));
        }
        Ok(())
    }

    /// Removes units' files and desired states; claims follow when the engine sees them gone.
    pub async fn destroy(&self, units: &[UnitName]) -> anyhow::Result<()> {
        let mut ops = Vec::new();
        for name in units {
            ops.push(TxnOp::delete(self.keys.unit(name), None));
            ops.push(TxnOp::delete(self.keys.desired(name), None));
        }
        self.client()
            .txn(Txn::new().and_then(ops))
            .await
            .context("failed to destroy units")?;
        Ok(())
    }

    /// Deletes every key under a prefix.
    pub async fn delete_prefix(&self, prefix: &str) -> anyhow::Result<()> {
        self.client()
            .delete(prefix, Some(DeleteOptions::new().with_prefix()))
            .await
            .with_context(|| format!("failed to delete {prefix}"))?;
        Ok(())
    }

    /// Puts a record bound to a lease.
    pub async fn put_leased<T: Record>(
        &self,
        key: &str,
        record: &T,
        lease: i64,
    ) -> anyhow::Result<()> {
        self.client()
            .put(
                key,
                keyspace::encode(record),
                Some(PutOptions::new().with_lease(lease)),
            )
            .await
            .with_context(|| format!("failed to write {key}"))?;
        Ok(())
    }

    /// Deletes one key.
    pub async fn delete(&self, key: &str) -> anyhow::Result<()> {
        self.client()
            .delete(key, None)
            .await
            .with_context(|| format!("failed to delete {key}"))?;
        Ok(())
    }
}
