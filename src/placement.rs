//! placeholder until the placement module lands
#![allow(missing_docs)]
use crate::unit::{FleetOptions, UnitName};
use std::collections::{BTreeMap, BTreeSet};
#[derive(Clone, Debug)]
pub struct Machine {
    pub id: String,
    pub metadata: BTreeMap<String, String>,
}
#[derive(Clone, Debug)]
pub struct Placeable {
    pub name: UnitName,
    pub options: FleetOptions,
}
#[derive(Clone, Debug)]
pub struct Snapshot {
    pub machines: Vec<Machine>,
    pub units: Vec<Placeable>,
    pub claims: BTreeMap<UnitName, BTreeSet<String>>,
}
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub claim: Vec<(UnitName, String)>,
    pub release: Vec<(UnitName, String)>,
    pub unplaceable: BTreeMap<UnitName, String>,
}
pub fn plan(_s: &Snapshot) -> Plan {
    Plan::default()
}
