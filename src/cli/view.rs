//! One consistent snapshot of the cluster, read in a single etcd transaction.

use std::collections::BTreeMap;

use crate::container::image_to_pre_pull;
use crate::keyspace::{
    self, ClaimRecord, DesiredRecord, DesiredState, ImageRecord, Key, MachineRecord, ProblemRecord,
    StateRecord, UnitRecord,
};
use crate::store::{Listing, Store};
use crate::unit::UnitName;

/// Which hosts hold a container unit's image: see [`View::image_holders`].
pub struct ImageHolders<'view> {
    /// The image reference.
    pub image: String,
    /// Each eligible host with its report, if it sent one for this image.
    pub eligible: Vec<(&'view str, Option<&'view ImageRecord>)>,
    /// How many eligible hosts report holding it.
    pub holding: usize,
}

/// Everything the listings show, at one revision.
#[derive(Default)]
pub struct View {
    /// The revision read.
    pub revision: i64,
    /// Unit files.
    pub units: BTreeMap<UnitName, UnitRecord>,
    /// Desired states.
    pub desired: BTreeMap<UnitName, DesiredState>,
    /// Live machines.
    pub machines: BTreeMap<String, MachineRecord>,
    /// Machines each unit is claimed on.
    pub claims: BTreeMap<UnitName, Vec<String>>,
    /// Reported states by unit, one per reporting host.
    pub states: BTreeMap<UnitName, Vec<StateRecord>>,
    /// Why units cannot be placed.
    pub problems: BTreeMap<UnitName, String>,
    /// Images pulled ahead of need, by container unit, one per host that reported.
    pub images: BTreeMap<UnitName, Vec<ImageRecord>>,
}

impl View {
    /// Reads the whole keyspace at one revision; records that do not decode are left out.
    pub async fn read(store: &Store) -> anyhow::Result<View> {
        Ok(View::from_listing(store, store.list(&store.keys.root()).await?))
    }

    /// Reads only some kinds of record (`units`, `states`, ...), all at one revision. Unit files
    /// are most of the keyspace's bytes, and a listing that shows none need not read them.
    pub async fn read_dirs(store: &Store, dirs: &[&str]) -> anyhow::Result<View> {
        let prefixes: Vec<String> = dirs.iter().map(|dir| store.keys.dir(dir)).collect();
        let prefixes: Vec<&str> = prefixes.iter().map(String::as_str).collect();
        Ok(View::from_listing(store, store.list_many(&prefixes).await?))
    }

    fn from_listing(store: &Store, listing: Listing) -> View {
        let mut view = View { revision: listing.revision, ..View::default() };
        for kv in &listing.kvs {
            let Some(key) = store.keys.parse(kv.key()) else {
                continue;
            };
            let value = kv.value();
            match key {
                Key::Unit(name) => {
                    if let Ok(r) = keyspace::decode::<UnitRecord>(value) {
                        view.units.insert(name, r);
                    }
                }
                Key::Desired(name) => {
                    if let Ok(r) = keyspace::decode::<DesiredRecord>(value) {
                        view.desired.insert(name, r.state);
                    }
                }
                Key::Machine(id) => {
                    if let Ok(r) = keyspace::decode::<MachineRecord>(value) {
                        view.machines.insert(id, r);
                    }
                }
                Key::Claim(name, _) => {
                    if let Ok(r) = keyspace::decode::<ClaimRecord>(value) {
                        view.claims.entry(name).or_default().push(r.machine);
                    }
                }
                Key::State(_, name) => {
                    if let Ok(r) = keyspace::decode::<StateRecord>(value) {
                        view.states.entry(name).or_default().push(r);
                    }
                }
                Key::Image(_, name) => {
                    if let Ok(r) = keyspace::decode::<ImageRecord>(value) {
                        view.images.entry(name).or_default().push(r);
                    }
                }
                Key::Problem(name) => {
                    if let Ok(r) = keyspace::decode::<ProblemRecord>(value) {
                        view.problems.insert(name, r.reason);
                    }
                }
                Key::Engine => {}
            }
        }
        view
    }

    /// The desired state of a unit, inactive when none is stored.
    pub fn desired_state(&self, name: &UnitName) -> DesiredState {
        self.desired.get(name).copied().unwrap_or(DesiredState::Inactive)
    }

    /// For a container unit whose image is pulled ahead of need: the image, the live hosts that
    /// could run the unit, and those of them that report holding the image.
    pub fn image_holders(&self, name: &UnitName) -> Option<ImageHolders<'_>> {
        let unit = self.units.get(name)?;
        let mut holders = ImageHolders { image: String::new(), eligible: Vec::new(), holding: 0 };
        for machine in self.machines.values() {
            let wanted = image_to_pre_pull(name, &unit.text, &machine.id, &machine.metadata);
            let Some(image) = wanted else { continue };
            let record = self
                .images
                .get(name)
                .and_then(|records| records.iter().find(|r| r.machine == machine.id))
                .filter(|r| r.image == image);
            holders.holding += usize::from(record.is_some_and(|r| r.present));
            holders.eligible.push((machine.id.as_str(), record));
            holders.image = image;
        }
        (!holders.eligible.is_empty()).then_some(holders)
    }

    /// `id.../IP` for a machine, as fleetctl prints it.
    pub fn machine_label(&self, id: &str, full: bool) -> String {
        let ip = self.machines.get(id).map_or("-", |m| m.ip.as_str());
        format!("{}/{ip}", super::short_id(id, full))
    }
}
