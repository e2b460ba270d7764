//! Placement: which machines should claim which units, as a pure function of cluster state.
//!
//! [`plan`] looks at the live machines, the units that should run and the claims already held,
//! and returns the claims to add and release plus the units that cannot be placed and why. It
//! never moves a running unit to even out load; the only unit that moves is one displaced by a
//! `Replaces`, or a global unit on a machine whose metadata no longer matches.

use std::collections::{BTreeMap, BTreeSet};

use globset::GlobSet;

use crate::unit::{FleetOptions, UnitName};

/// How many characters of a machine id a reason shows.
const SHORT_ID_CHARS: usize = 8;

/// How many conflicting units a reason lists before it elides the rest.
const MAX_LISTED_CONFLICTS: usize = 3;

/// A live machine of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Machine {
    /// The machine id (32 lowercase hex digits on systemd hosts).
    pub id: String,
    /// The machine's metadata, matched against `MachineMetadata`.
    pub metadata: BTreeMap<String, String>,
}

/// A unit whose desired state is loaded or launched, so it should run somewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placeable {
    /// The unit's name.
    pub name: UnitName,
    /// The unit's `[X-Fleet]` options.
    pub options: FleetOptions,
}

/// What placement looks at: machines, units to place and the claims already held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The live machines; for a repeated id the first entry counts.
    pub machines: Vec<Machine>,
    /// The units that should run; for a repeated name the first entry counts.
    pub units: Vec<Placeable>,
    /// For each unit, the ids of the machines that hold a claim on it.
    pub claims: BTreeMap<UnitName, BTreeSet<String>>,
}

/// What placement decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// New claims as (unit, machine id), sorted.
    pub claim: Vec<(UnitName, String)>,
    /// Claims to give up as (unit, machine id), sorted.
    pub release: Vec<(UnitName, String)>,
    /// Units that no machine can run, each with a reason naming the constraint.
    pub unplaceable: BTreeMap<UnitName, String>,
}

/// Decides which claims to add and release so that every unit of `snapshot` runs where its
/// options allow.
///
/// Units are taken in name order, except that a unit's `MachineOf` and `Replaces` targets (and
/// the units that replace its `MachineOf` targets) come before it. A non-global unit keeps any
/// claim it has; one without a claim takes the machine of a unit it replaces if it can, and
/// otherwise the eligible machine with the fewest non-global units, the smallest id breaking
/// ties. A global unit is claimed on every machine whose id and metadata match and that runs
/// nothing it conflicts with, and released where id or metadata no longer match.
///
/// # Guarantees
///
/// The plan depends only on the snapshot's content, not on the order of its lists. Claims on
/// machines outside `machines` are ignored (their leases are expiring) and never released;
/// claims of units outside `units` are never released but still count as load and as
/// residents for `Conflicts` and `MachineOf`.
///
/// # Caveats
///
/// A kept claim is not re-checked, so a unit whose constraints changed stays where it is until
/// its claim goes away. Templates are never placed. For global units `MachineOf` and `Replaces`
/// are ignored; [`FleetOptions::from_unit`] refuses those combinations.
pub fn plan(snapshot: &Snapshot) -> Plan {
    let mut planner = Planner::new(snapshot);
    for unit_name in planner.processing_order() {
        planner.place(unit_name);
    }
    planner.into_plan()
}

/// A unit's options with its `Conflicts` globs compiled once.
struct UnitInfo<'a> {
    options: &'a FleetOptions,
    conflicts: Result<GlobSet, String>,
}

impl UnitInfo<'_> {
    /// Whether the unit refuses any neighbour at all: most units name no `Conflicts` and
    /// replace nothing, and checking them against every resident made planning quadratic.
    fn is_picky(&self) -> bool {
        !self.options.replaces.is_empty() || self.conflicts.as_ref().is_ok_and(|g| !g.is_empty())
    }
}

/// The working state of one [`plan`] call.
struct Planner<'a> {
    machines: BTreeMap<&'a str, &'a Machine>,
    units: BTreeMap<&'a UnitName, UnitInfo<'a>>,
    /// Claims on live machines as the snapshot had them.
    initial: BTreeMap<&'a UnitName, BTreeSet<&'a str>>,
    /// Claims on live machines as planned so far; a unit is absent rather than mapped to an
    /// empty set.
    placed: BTreeMap<&'a UnitName, BTreeSet<&'a str>>,
    /// The inverse of `placed`: which units each machine runs.
    residents: BTreeMap<&'a str, BTreeSet<&'a UnitName>>,
    /// The residents that refuse some neighbours (see [`UnitInfo::is_picky`]).
    picky_residents: BTreeMap<&'a str, BTreeSet<&'a UnitName>>,
    /// The number of non-global residents of each machine.
    loads: BTreeMap<&'a str, usize>,
    /// Units caught in an ordering cycle, with the cycle as reason.
    cycles: BTreeMap<&'a UnitName, String>,
    unplaceable: BTreeMap<UnitName, String>,
}

impl<'a> Planner<'a> {
    fn new(snapshot: &'a Snapshot) -> Planner<'a> {
        let mut machines = BTreeMap::new();
        for machine in &snapshot.machines {
            machines.entry(machine.id.as_str()).or_insert(machine);
        }
        let mut units = BTreeMap::new();
        for unit in &snapshot.units {
            units.entry(&unit.name).or_insert_with(|| UnitInfo {
                options: &unit.options,
                conflicts: unit.options.conflict_set().map_err(|error| error.to_string()),
            });
        }

        let mut planner = Planner {
            machines,
            units,
            initial: BTreeMap::new(),
            placed: BTreeMap::new(),
            residents: BTreeMap::new(),
            picky_residents: BTreeMap::new(),
            loads: BTreeMap::new(),
            cycles: BTreeMap::new(),
            unplaceable: BTreeMap::new(),
        };
        for (unit_name, machine_ids) in &snapshot.claims {
            for machine_id in machine_ids {
                // A claim on a machine that left the cluster is ignored: its lease is expiring.
                if let Some((&live_id, _)) = planner.machines.get_key_value(machine_id.as_str()) {
                    planner.add(unit_name, live_id);
                }
            }
        }
        planner.initial = planner.placed.clone();
        planner
    }

    /// The order units are placed in: by name, each unit after the units it depends on.
    fn processing_order(&mut self) -> Vec<&'a UnitName> {
        let mut replaced_by: BTreeMap<&'a UnitName, BTreeSet<&'a UnitName>> = BTreeMap::new();
        for (&unit_name, info) in &self.units {
            for replaced in &info.options.replaces {
                replaced_by.entry(replaced).or_default().insert(unit_name);
            }
        }

        let mut ordering = Ordering {
            units: &self.units,
            replaced_by,
            marks: BTreeMap::new(),
            stack: Vec::new(),
            order: Vec::new(),
            cycles: BTreeMap::new(),
        };
        for &unit_name in self.units.keys() {
            ordering.visit(unit_name);
        }
        self.cycles = ordering.cycles;
        ordering.order
    }

    fn place(&mut self, unit_name: &'a UnitName) {
        let Some(info) = self.units.get(unit_name) else {
            return;
        };
        let options = info.options;
        if unit_name.is_template() {
            self.refuse(unit_name, "templates are not placed, only their instances".into());
            return;
        }
        if let Err(reason) = &info.conflicts {
            let reason = format!("Conflicts patterns do not compile: {reason}");
            self.refuse(unit_name, reason);
            return;
        }
        if options.global {
            self.place_global(unit_name, options);
            return;
        }

        // A unit that already runs somewhere stays there; at most the units it replaces move.
        if !self.placed.contains_key(unit_name) {
            if let Some(reason) = self.cycles.get(unit_name) {
                let reason = reason.clone();
                self.refuse(unit_name, reason);
                return;
            }
            if !self.take_replaced_machine(unit_name, options) {
                match self.choose(unit_name, options) {
                    Ok(machine_id) => self.add(unit_name, machine_id),
                    Err(reason) => {
                        self.refuse(unit_name, reason);
                        return;
                    }
                }
            }
        }
        self.displace_replaced(unit_name, options);
    }

    fn place_global(&mut self, unit_name: &'a UnitName, options: &FleetOptions) {
        let machines: Vec<&'a Machine> = self.machines.values().copied().collect();
        for machine in &machines {
            let machine_id = machine.id.as_str();
            let fits = options.matches_machine_id(machine_id)
                && options.matches_metadata(&machine.metadata);
            let claimed =
                self.placed.get(unit_name).is_some_and(|hosts| hosts.contains(machine_id));
            if claimed && !fits {
                self.remove(unit_name, machine_id);
            } else if !claimed && fits && self.conflict_on(unit_name, machine_id, None).is_none() {
                self.add(unit_name, machine_id);
            }
        }

        if !self.placed.contains_key(unit_name) {
            let reason = match self.eligible(unit_name, options, machines, None) {
                Err(reason) => reason,
                Ok(_) => "no machine can run it".to_owned(),
            };
            self.refuse(unit_name, reason);
        }
    }

    /// Puts an unclaimed unit on the machine of a unit it replaces, if its other constraints
    /// allow one of them.
    fn take_replaced_machine(&mut self, unit_name: &'a UnitName, options: &FleetOptions) -> bool {
        for replaced in &options.replaces {
            // Only a non-global unit of the snapshot is moved out of the way.
            if self.units.get(replaced).is_none_or(|info| info.options.global) {
                continue;
            }
            let Some(hosts) = self.placed.get(replaced) else {
                continue;
            };
            for &machine_id in hosts {
                let Some(&machine) = self.machines.get(machine_id) else {
                    continue;
                };
                if self.eligible(unit_name, options, vec![machine], Some(replaced)).is_ok() {
                    self.add(unit_name, machine_id);
                    return true;
                }
            }
        }
        false
    }

    /// Moves every unit this unit replaces off the machines they share with it.
    fn displace_replaced(&mut self, unit_name: &'a UnitName, options: &FleetOptions) {
        for replaced in &options.replaces {
            let Some((&replaced_name, info)) = self.units.get_key_value(replaced) else {
                continue;
            };
            let replaced_options = info.options;
            if replaced_options.global || replaced_name.is_template() {
                continue;
            }
            let (Some(ours), Some(theirs)) =
                (self.placed.get(unit_name), self.placed.get(replaced))
            else {
                continue;
            };
            let shared: Vec<&'a str> = ours.intersection(theirs).copied().collect();
            if shared.is_empty() {
                continue;
            }

            for machine_id in shared {
                self.remove(replaced_name, machine_id);
            }
            if self.placed.contains_key(replaced_name) {
                continue;
            }
            match self.choose(replaced_name, replaced_options) {
                Ok(machine_id) => self.add(replaced_name, machine_id),
                Err(reason) => {
                    let reason = format!("displaced by {unit_name} (Replaces), and {reason}");
                    self.refuse(replaced_name, reason);
                }
            }
        }
    }

    /// The least-loaded eligible machine for a non-global unit, or why there is none.
    fn choose(&self, unit_name: &UnitName, options: &FleetOptions) -> Result<&'a str, String> {
        let machines = self.machines.values().copied().collect();
        let candidates = self.eligible(unit_name, options, machines, None)?;
        candidates
            .into_iter()
            .min_by_key(|machine| (self.load(&machine.id), machine.id.as_str()))
            .map(|machine| machine.id.as_str())
            .ok_or_else(|| "no machines in the cluster".to_owned())
    }

    /// Narrows `candidates` constraint by constraint, naming the first one that leaves none.
    ///
    /// `ignore` is a resident that does not count as conflicting (the unit being replaced).
    /// `MachineOf` is only applied to non-global units.
    fn eligible(
        &self,
        unit_name: &UnitName,
        options: &FleetOptions,
        mut candidates: Vec<&'a Machine>,
        ignore: Option<&UnitName>,
    ) -> Result<Vec<&'a Machine>, String> {
        if candidates.is_empty() {
            return Err("no machines in the cluster".to_owned());
        }

        if let Some(prefix) = &options.machine_id {
            candidates.retain(|machine| options.matches_machine_id(&machine.id));
            if candidates.is_empty() {
                return Err(format!("MachineID {prefix} is not in the cluster"));
            }
        }

        let mut required = Vec::new();
        for (key, alternatives) in &options.metadata {
            required.push((key, alternatives));
            candidates.retain(|machine| {
                machine.metadata.get(key).is_some_and(|value| alternatives.contains(value))
            });
            if candidates.is_empty() {
                let scope = match &options.machine_id {
                    Some(prefix) => format!("no machine matching MachineID {prefix}"),
                    None => "no machine".to_owned(),
                };
                return Err(format!("{scope} has metadata {}", describe_metadata(&required)));
            }
        }

        if !options.global {
            for target in &options.machine_of {
                let Some(hosts) = self.placed.get(target) else {
                    return Err(format!("MachineOf target \"{target}\" is not placed"));
                };
                candidates.retain(|machine| hosts.contains(machine.id.as_str()));
                if candidates.is_empty() {
                    let hosts: Vec<String> = hosts.iter().map(|id| short_id(id)).collect();
                    return Err(format!(
                        "no eligible machine runs MachineOf target \"{target}\" (it is on {})",
                        hosts.join(", ")
                    ));
                }
            }
        }

        let mut blocked = Vec::new();
        candidates.retain(|machine| match self.conflict_on(unit_name, &machine.id, ignore) {
            Some(resident) => {
                blocked.push(format!("{resident} on {}", short_id(&machine.id)));
                false
            }
            None => true,
        });
        if candidates.is_empty() {
            return Err(format!(
                "every eligible machine runs a conflicting unit ({})",
                list_elided(&blocked)
            ));
        }
        Ok(candidates)
    }

    /// The first unit on `machine_id` that `unit_name` may not share a machine with.
    fn conflict_on(
        &self,
        unit_name: &UnitName,
        machine_id: &str,
        ignore: Option<&UnitName>,
    ) -> Option<&'a UnitName> {
        let refuses = |resident: &'a UnitName| {
            resident != unit_name
                && Some(resident) != ignore
                && (self.rejects(unit_name, resident) || self.rejects(resident, unit_name))
        };
        // A unit that refuses nobody can only be refused by a picky resident.
        match self.units.get(unit_name).is_some_and(UnitInfo::is_picky) {
            true => self.residents.get(machine_id)?.iter().copied().find(|&r| refuses(r)),
            false => self.picky_residents.get(machine_id)?.iter().copied().find(|&r| refuses(r)),
        }
    }

    /// True if `unit_name`'s own options forbid sharing a machine with `other`: a `Conflicts`
    /// glob matches it, or one replaces the other.
    fn rejects(&self, unit_name: &UnitName, other: &UnitName) -> bool {
        self.units.get(unit_name).is_some_and(|info| {
            info.options.replaces.contains(other)
                || info.conflicts.as_ref().is_ok_and(|globs| globs.is_match(other.as_str()))
        })
    }

    /// The number of non-global units on a machine; units outside the snapshot count too.
    fn load(&self, machine_id: &str) -> usize {
        self.loads.get(machine_id).copied().unwrap_or(0)
    }

    fn add(&mut self, unit_name: &'a UnitName, machine_id: &'a str) {
        self.placed.entry(unit_name).or_default().insert(machine_id);
        if self.residents.entry(machine_id).or_default().insert(unit_name) {
            let info = self.units.get(unit_name);
            if info.is_some_and(UnitInfo::is_picky) {
                self.picky_residents.entry(machine_id).or_default().insert(unit_name);
            }
            if !info.is_some_and(|info| info.options.global) {
                *self.loads.entry(machine_id).or_default() += 1;
            }
        }
        self.unplaceable.remove(unit_name);
    }

    fn remove(&mut self, unit_name: &'a UnitName, machine_id: &'a str) {
        if let Some(hosts) = self.placed.get_mut(unit_name) {
            hosts.remove(machine_id);
            if hosts.is_empty() {
                self.placed.remove(unit_name);
            }
        }
        let removed = self.residents.get_mut(machine_id).is_some_and(|r| r.remove(unit_name));
        if removed {
            if let Some(picky) = self.picky_residents.get_mut(machine_id) {
                picky.remove(unit_name);
            }
            if !self.units.get(unit_name).is_some_and(|info| info.options.global)
                && let Some(load) = self.loads.get_mut(machine_id)
            {
                *load -= 1;
            }
        }
    }

    fn refuse(&mut self, unit_name: &UnitName, reason: String) {
        self.unplaceable.insert(unit_name.clone(), reason);
    }

    fn into_plan(self) -> Plan {
        let held = |claims: &BTreeMap<&UnitName, BTreeSet<&str>>, unit_name, machine_id| {
            claims.get(unit_name).is_some_and(|hosts: &BTreeSet<&str>| hosts.contains(machine_id))
        };
        let mut plan = Plan { unplaceable: self.unplaceable, ..Plan::default() };
        for (&unit_name, hosts) in &self.placed {
            for &machine_id in hosts {
                if !held(&self.initial, unit_name, machine_id) {
                    plan.claim.push((unit_name.clone(), machine_id.to_owned()));
                }
            }
        }
        for (&unit_name, hosts) in &self.initial {
            for &machine_id in hosts {
                if !held(&self.placed, unit_name, machine_id) {
                    plan.release.push((unit_name.clone(), machine_id.to_owned()));
                }
            }
        }
        plan
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mark {
    Visiting,
    Done,
}

/// A depth-first walk that lists each unit after the units it depends on.
struct Ordering<'p, 'a> {
    units: &'p BTreeMap<&'a UnitName, UnitInfo<'a>>,
    replaced_by: BTreeMap<&'a UnitName, BTreeSet<&'a UnitName>>,
    marks: BTreeMap<&'a UnitName, Mark>,
    stack: Vec<&'a UnitName>,
    order: Vec<&'a UnitName>,
    cycles: BTreeMap<&'a UnitName, String>,
}

impl<'a> Ordering<'_, 'a> {
    fn visit(&mut self, unit_name: &'a UnitName) {
        match self.marks.get(unit_name) {
            Some(Mark::Done) => return,
            Some(Mark::Visiting) => {
                self.record_cycle(unit_name);
                return;
            }
            None => {}
        }

        self.marks.insert(unit_name, Mark::Visiting);
        self.stack.push(unit_name);
        for before in self.dependencies(unit_name) {
            self.visit(before);
        }
        self.stack.pop();
        self.marks.insert(unit_name, Mark::Done);
        self.order.push(unit_name);
    }

    /// The units that must be placed before `unit_name`: its `MachineOf` and `Replaces`
    /// targets, and whatever replaces a `MachineOf` target, since that moves the target.
    fn dependencies(&self, unit_name: &'a UnitName) -> BTreeSet<&'a UnitName> {
        let mut before = BTreeSet::new();
        let Some(info) = self.units.get(unit_name) else {
            return before;
        };
        if info.options.global {
            return before;
        }
        for target in info.options.machine_of.iter().chain(&info.options.replaces) {
            if let Some((&known, _)) = self.units.get_key_value(target) {
                before.insert(known);
            }
        }
        for target in &info.options.machine_of {
            let replacers = self.replaced_by.get(target).into_iter().flatten();
            before.extend(replacers.filter(|&&replacer| replacer != unit_name));
        }
        before
    }

    fn record_cycle(&mut self, unit_name: &'a UnitName) {
        let Some(start) = self.stack.iter().position(|&member| member == unit_name) else {
            return;
        };
        let members = &self.stack[start..];
        let path: Vec<&str> =
            members.iter().chain([&unit_name]).map(|member| member.as_str()).collect();
        let reason = format!("MachineOf/Replaces cycle: {}", path.join(" -> "));
        for &member in members {
            self.cycles.entry(member).or_insert_with(|| reason.clone());
        }
    }
}

/// `region=eu`, `region=eu or region=us`, `(region=eu or region=us) and disk=ssd`.
fn describe_metadata(required: &[(&String, &Vec<String>)]) -> String {
    let described: Vec<String> = required
        .iter()
        .map(|(key, alternatives)| {
            let pairs: Vec<String> =
                alternatives.iter().map(|value| format!("{key}={value}")).collect();
            match (pairs.len(), required.len()) {
                (1, _) | (_, 1) => pairs.join(" or "),
                _ => format!("({})", pairs.join(" or ")),
            }
        })
        .collect();
    described.join(" and ")
}

/// A machine id cut to its first characters, as fleetctl shows them (`9f2a1b3c...`).
pub fn short_id(machine_id: &str) -> String {
    match machine_id.char_indices().nth(SHORT_ID_CHARS) {
        Some((cut, _)) => format!("{}...", &machine_id[..cut]),
        None => machine_id.to_owned(),
    }
}

fn list_elided(items: &[String]) -> String {
    let mut listed =
        items.iter().take(MAX_LISTED_CONFLICTS).cloned().collect::<Vec<_>>().join(", ");
    if items.len() > MAX_LISTED_CONFLICTS {
        listed.push_str(", ...");
    }
    listed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::unit::UnitFile;

    fn name(text: &str) -> UnitName {
        UnitName::parse(text).expect("test unit names are valid")
    }

    fn machine(id: &str, metadata: &[(&str, &str)]) -> Machine {
        let metadata = metadata.iter().map(|&(key, value)| (key.into(), value.into())).collect();
        Machine { id: id.to_owned(), metadata }
    }

    fn machines(ids: &[&str]) -> Vec<Machine> {
        ids.iter().map(|id| machine(id, &[])).collect()
    }

    /// A placeable unit whose `[X-Fleet]` section holds `fleet_lines`, parsed the real way.
    fn unit(unit_name: &str, fleet_lines: &str) -> Placeable {
        let unit_name = name(unit_name);
        let text = format!("[Service]\nExecStart=/bin/true\n[X-Fleet]\n{fleet_lines}\n");
        let file = UnitFile::parse(&unit_name, text.as_bytes()).expect("test unit file parses");
        let options = FleetOptions::from_unit(&unit_name, &file).expect("test options are valid");
        Placeable { name: unit_name, options }
    }

    fn plain(unit_name: &str) -> Placeable {
        unit(unit_name, "")
    }

    fn snapshot(
        machines: Vec<Machine>,
        units: Vec<Placeable>,
        claims: &[(&str, &str)],
    ) -> Snapshot {
        let mut claimed: BTreeMap<UnitName, BTreeSet<String>> = BTreeMap::new();
        for &(unit_name, machine_id) in claims {
            claimed.entry(name(unit_name)).or_default().insert(machine_id.to_owned());
        }
        Snapshot { machines, units, claims: claimed }
    }

    fn pairs(list: &[(UnitName, String)]) -> Vec<(&str, &str)> {
        list.iter()
            .map(|(unit_name, machine_id)| (unit_name.as_str(), machine_id.as_str()))
            .collect()
    }

    /// Where each unit runs once the plan is applied to the snapshot's claims.
    fn after(snapshot: &Snapshot, plan: &Plan) -> BTreeMap<String, Vec<String>> {
        let mut claims: BTreeMap<String, BTreeSet<String>> = snapshot
            .claims
            .iter()
            .map(|(unit_name, hosts)| (unit_name.to_string(), hosts.clone()))
            .collect();
        for (unit_name, machine_id) in &plan.release {
            if let Some(hosts) = claims.get_mut(unit_name.as_str()) {
                hosts.remove(machine_id);
            }
        }
        for (unit_name, machine_id) in &plan.claim {
            claims.entry(unit_name.to_string()).or_default().insert(machine_id.clone());
        }
        claims
            .into_iter()
            .filter(|(_, hosts)| !hosts.is_empty())
            .map(|(unit_name, hosts)| (unit_name, hosts.into_iter().collect()))
            .collect()
    }

    fn reasons(plan: &Plan) -> Vec<(&str, &str)> {
        plan.unplaceable
            .iter()
            .map(|(unit_name, reason)| (unit_name.as_str(), reason.as_str()))
            .collect()
    }

    #[test]
    fn twelve_units_on_three_machines_spread_four_each() {
        let units = (1..=12).map(|index| plain(&format!("u{index:02}.service"))).collect();
        let input = snapshot(machines(&["m1", "m2", "m3"]), units, &[]);
        let plan = plan(&input);

        let mut per_machine: BTreeMap<&str, usize> = BTreeMap::new();
        for (_, machine_id) in &plan.claim {
            *per_machine.entry(machine_id.as_str()).or_default() += 1;
        }
        assert_eq!(per_machine, BTreeMap::from([("m1", 4), ("m2", 4), ("m3", 4)]));
        assert!(plan.release.is_empty());
        assert!(plan.unplaceable.is_empty());
    }

    #[test]
    fn existing_claims_are_kept_and_count_as_load() {
        // a.service no longer fits m1, but a kept claim is not re-checked.
        let input = snapshot(
            vec![machine("m1", &[("region", "eu")]), machine("m2", &[("region", "eu")])],
            vec![unit("a.service", "MachineMetadata=region=us"), plain("b.service")],
            &[("a.service", "m1")],
        );
        let plan = plan(&input);
        assert_eq!(pairs(&plan.claim), [("b.service", "m2")]);
        assert!(plan.release.is_empty());
        assert!(plan.unplaceable.is_empty());
    }

    #[test]
    fn ties_go_to_the_smallest_machine_id_whatever_the_input_order() {
        let forward = snapshot(
            machines(&["c", "a", "b"]),
            vec![plain("x.service"), plain("y.service"), plain("z.service"), plain("w.service")],
            &[],
        );
        let mut backward = forward.clone();
        backward.machines.reverse();
        backward.units.reverse();

        let expected =
            [("w.service", "a"), ("x.service", "b"), ("y.service", "c"), ("z.service", "a")];
        assert_eq!(pairs(&plan(&forward).claim), expected);
        assert_eq!(plan(&forward), plan(&backward));
        assert_eq!(plan(&forward), plan(&forward));
    }

    #[test]
    fn claims_on_departed_machines_are_ignored() {
        let input = snapshot(
            machines(&["m1", "m2"]),
            vec![plain("a.service"), plain("b.service")],
            &[("a.service", "gone"), ("b.service", "m1")],
        );
        let plan = plan(&input);
        assert_eq!(pairs(&plan.claim), [("a.service", "m2")]);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn claims_of_units_outside_the_snapshot_are_left_alone_but_occupy_their_machine() {
        let input = snapshot(
            machines(&["m1", "m2"]),
            vec![unit("a.service", "Conflicts=stopping.service"), plain("b.service")],
            &[("stopping.service", "m2")],
        );
        let plan = plan(&input);
        // a.service avoids m2 for its Conflicts; b.service then finds both machines at load 1.
        assert_eq!(pairs(&plan.claim), [("a.service", "m1"), ("b.service", "m1")]);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn metadata_alternatives_accept_any_listed_value() {
        let input = snapshot(
            vec![
                machine("m1", &[("region", "mars")]),
                machine("m2", &[("region", "eu")]),
                machine("m3", &[("region", "us"), ("disk", "ssd")]),
            ],
            vec![
                unit("a.service", "MachineMetadata=region=eu region=us"),
                unit("b.service", "MachineMetadata=region=eu\nMachineMetadata=region=us"),
                unit("c.service", "MachineMetadata=region=eu region=us disk=ssd"),
            ],
            &[],
        );
        let plan = plan(&input);
        assert_eq!(
            pairs(&plan.claim),
            [("a.service", "m2"), ("b.service", "m3"), ("c.service", "m3")]
        );
    }

    #[test]
    fn machine_id_prefix_selects_the_machine() {
        let ids = ["0a1b2c3d4e5f60718293a4b5c6d7e8f9", "ffe1d2c3b4a5968778695a4b3c2d1e0f"];
        let input = snapshot(
            machines(&ids),
            vec![
                unit("a.service", "MachineID=ffe1"),
                unit("b.service", &format!("MachineID={}", ids[0])),
            ],
            &[],
        );
        let plan = plan(&input);
        assert_eq!(pairs(&plan.claim), [("a.service", ids[1]), ("b.service", ids[0])]);
    }

    #[test]
    fn machine_of_chain_places_targets_first_and_follows_them() {
        // storage.service sorts last but is placed first, on the least-loaded m2.
        let input = snapshot(
            machines(&["m1", "m2"]),
            vec![
                unit("app.service", "MachineOf=db.service"),
                unit("db.service", "MachineOf=storage.service"),
                plain("busy.service"),
                plain("storage.service"),
            ],
            &[("busy.service", "m1")],
        );
        let plan = plan(&input);
        assert_eq!(
            pairs(&plan.claim),
            [("app.service", "m2"), ("db.service", "m2"), ("storage.service", "m2")]
        );
    }

    #[test]
    fn machine_of_accepts_any_machine_of_a_global_target() {
        let input = snapshot(
            machines(&["m1", "m2"]),
            vec![
                unit("agent.service", "Global=true"),
                unit("a.service", "MachineOf=agent.service"),
                unit("b.service", "MachineOf=agent.service"),
            ],
            &[],
        );
        let placed = after(&input, &plan(&input));
        assert_eq!(placed["a.service"], ["m1"]);
        assert_eq!(placed["b.service"], ["m2"]);
        assert_eq!(placed["agent.service"], ["m1", "m2"]);
    }

    #[test]
    fn conflicts_are_checked_in_both_directions() {
        let cases = [
            (
                "the new unit's glob matches a resident",
                "web@2.service",
                "Conflicts=web@*.service",
                "web@1.service",
                "",
            ),
            (
                "a resident's glob matches the new unit",
                "web@2.service",
                "",
                "web@1.service",
                "Conflicts=web@*.service",
            ),
        ];
        for (behaviour, new_unit, new_fleet, resident, resident_fleet) in cases {
            let input = snapshot(
                machines(&["m1", "m2"]),
                vec![
                    unit(new_unit, new_fleet),
                    unit(resident, resident_fleet),
                    plain("busy.service"),
                ],
                &[(resident, "m1"), ("busy.service", "m2")],
            );
            assert_eq!(pairs(&plan(&input).claim), [(new_unit, "m2")], "{behaviour}");
        }
    }

    #[test]
    fn a_units_glob_matching_itself_does_not_keep_it_off_a_machine() {
        let input = snapshot(
            machines(&["m1"]),
            vec![unit("web@1.service", "Conflicts=web@*.service")],
            &[],
        );
        assert_eq!(pairs(&plan(&input).claim), [("web@1.service", "m1")]);
    }

    #[test]
    fn global_units_run_on_matching_machines_and_leave_ones_that_stop_matching() {
        let input = snapshot(
            vec![
                machine("m1", &[("role", "edge")]),
                machine("m2", &[("role", "core")]),
                machine("m3", &[("role", "edge")]),
            ],
            vec![unit("proxy.service", "Global=true\nMachineMetadata=role=edge")],
            &[("proxy.service", "m2"), ("proxy.service", "m3")],
        );
        let plan = plan(&input);
        assert_eq!(pairs(&plan.claim), [("proxy.service", "m1")]);
        assert_eq!(pairs(&plan.release), [("proxy.service", "m2")]);
        assert!(plan.unplaceable.is_empty());
    }

    #[test]
    fn global_units_skip_machines_with_conflicting_units_and_add_no_load() {
        let input = snapshot(
            machines(&["m1", "m2", "m3"]),
            vec![
                unit("agent.service", "Global=true\nConflicts=legacy-agent.service"),
                plain("legacy-agent.service"),
                plain("web.service"),
            ],
            &[("legacy-agent.service", "m1")],
        );
        let placed = after(&input, &plan(&input));
        assert_eq!(placed["agent.service"], ["m2", "m3"]);
        // m2 and m3 each run only the global agent, which adds no load, so m2 wins the tie.
        assert_eq!(placed["web.service"], ["m2"]);
    }

    #[test]
    fn replaces_takes_the_machine_and_moves_the_replaced_unit() {
        let input = snapshot(
            machines(&["m1", "m2", "m3"]),
            vec![
                unit("web-v2.service", "Replaces=web-v1.service"),
                plain("web-v1.service"),
                plain("busy.service"),
            ],
            &[("web-v1.service", "m1"), ("busy.service", "m2")],
        );
        let plan = plan(&input);
        assert_eq!(pairs(&plan.claim), [("web-v1.service", "m3"), ("web-v2.service", "m1")]);
        assert_eq!(pairs(&plan.release), [("web-v1.service", "m1")]);
    }

    #[test]
    fn replaced_unit_never_joins_its_replacer() {
        // m1 is the least loaded, but it runs the unit that replaces old.service.
        let input = snapshot(
            machines(&["m1", "m2"]),
            vec![
                unit("new.service", "Replaces=old.service"),
                plain("old.service"),
                plain("busy.service"),
            ],
            &[("new.service", "m1"), ("busy.service", "m2")],
        );
        assert_eq!(pairs(&plan(&input).claim), [("old.service", "m2")]);
    }

    #[test]
    fn replaced_unit_sharing_its_replacers_machine_is_moved() {
        let input = snapshot(
            machines(&["m1", "m2"]),
            vec![unit("new.service", "Replaces=old.service"), plain("old.service")],
            &[("new.service", "m1"), ("old.service", "m1")],
        );
        let plan = plan(&input);
        assert_eq!(pairs(&plan.claim), [("old.service", "m2")]);
        assert_eq!(pairs(&plan.release), [("old.service", "m1")]);
    }

    #[test]
    fn replacer_that_cannot_use_the_replaced_machine_goes_elsewhere() {
        let input = snapshot(
            vec![machine("m1", &[("disk", "hdd")]), machine("m2", &[("disk", "ssd")])],
            vec![
                unit("new.service", "Replaces=old.service\nMachineMetadata=disk=ssd"),
                plain("old.service"),
            ],
            &[("old.service", "m1")],
        );
        let plan = plan(&input);
        assert_eq!(pairs(&plan.claim), [("new.service", "m2")]);
        assert!(plan.release.is_empty());
    }

    #[test]
    fn units_following_a_replaced_unit_are_placed_after_it_moves() {
        // app.service sorts before new.service, but must wait for new.service to move old.service.
        let input = snapshot(
            machines(&["m1", "m2"]),
            vec![
                unit("app.service", "MachineOf=old.service"),
                unit("new.service", "Replaces=old.service"),
                plain("old.service"),
            ],
            &[("old.service", "m1")],
        );
        let placed = after(&input, &plan(&input));
        assert_eq!(placed["new.service"], ["m1"]);
        assert_eq!(placed["old.service"], ["m2"]);
        assert_eq!(placed["app.service"], ["m2"]);
    }

    #[test]
    fn replaced_unit_with_nowhere_to_go_is_unplaceable() {
        let input = snapshot(
            machines(&["m1"]),
            vec![unit("new.service", "Replaces=old.service"), plain("old.service")],
            &[("old.service", "m1")],
        );
        let plan = plan(&input);
        assert_eq!(pairs(&plan.claim), [("new.service", "m1")]);
        assert_eq!(pairs(&plan.release), [("old.service", "m1")]);
        assert_eq!(
            reasons(&plan),
            [(
                "old.service",
                "displaced by new.service (Replaces), and every eligible machine runs a \
                 conflicting unit (new.service on m1)"
            )]
        );
    }

    /// One unplaceable unit: the cluster it meets and the reason it should get.
    struct ReasonCase {
        behaviour: &'static str,
        machines: Vec<Machine>,
        units: Vec<Placeable>,
        claims: Vec<(&'static str, &'static str)>,
        asked: &'static str,
        reason: &'static str,
    }

    #[test]
    fn unplaceable_reasons_name_the_constraint() {
        let long_id = "9f2a1b3c4d5e6f708192a3b4c5d6e7f8";
        let regions = || {
            vec![
                machine("m1", &[("region", "eu"), ("disk", "hdd")]),
                machine("m2", &[("region", "us"), ("disk", "ssd")]),
            ]
        };
        let residents = ["a.service", "b.service", "c.service", "d.service"];
        let cases = [
            ReasonCase {
                behaviour: "empty cluster",
                machines: vec![],
                units: vec![plain("a.service")],
                claims: vec![],
                asked: "a.service",
                reason: "no machines in the cluster",
            },
            ReasonCase {
                behaviour: "empty cluster for a global unit",
                machines: vec![],
                units: vec![unit("a.service", "Global=true")],
                claims: vec![],
                asked: "a.service",
                reason: "no machines in the cluster",
            },
            ReasonCase {
                behaviour: "unknown machine id",
                machines: machines(&["abcd"]),
                units: vec![unit("a.service", "MachineID=1234")],
                claims: vec![],
                asked: "a.service",
                reason: "MachineID 1234 is not in the cluster",
            },
            ReasonCase {
                behaviour: "missing metadata",
                machines: regions(),
                units: vec![unit("a.service", "MachineMetadata=region=mars")],
                claims: vec![],
                asked: "a.service",
                reason: "no machine has metadata region=mars",
            },
            ReasonCase {
                behaviour: "missing metadata for a global unit",
                machines: regions(),
                units: vec![unit("a.service", "Global=true\nMachineMetadata=region=mars")],
                claims: vec![],
                asked: "a.service",
                reason: "no machine has metadata region=mars",
            },
            ReasonCase {
                behaviour: "metadata split over machines",
                machines: regions(),
                units: vec![unit("a.service", "MachineMetadata=region=eu region=asia disk=ssd")],
                claims: vec![],
                asked: "a.service",
                reason: "no machine has metadata disk=ssd and (region=eu or region=asia)",
            },
            ReasonCase {
                behaviour: "metadata missing from the machines matching the id",
                machines: vec![machine("a1", &[]), machine("b1", &[("region", "mars")])],
                units: vec![unit("a.service", "MachineID=a\nMachineMetadata=region=mars")],
                claims: vec![],
                asked: "a.service",
                reason: "no machine matching MachineID a has metadata region=mars",
            },
            ReasonCase {
                behaviour: "target not placed",
                machines: regions(),
                units: vec![unit("a.service", "MachineOf=db.service")],
                claims: vec![],
                asked: "a.service",
                reason: "MachineOf target \"db.service\" is not placed",
            },
            ReasonCase {
                behaviour: "target on an ineligible machine",
                machines: regions(),
                units: vec![
                    unit("a.service", "MachineOf=db.service\nMachineMetadata=region=us"),
                    plain("db.service"),
                ],
                claims: vec![("db.service", "m1")],
                asked: "a.service",
                reason: "no eligible machine runs MachineOf target \"db.service\" (it is on m1)",
            },
            ReasonCase {
                behaviour: "conflict everywhere, machine id shortened",
                machines: vec![machine(long_id, &[])],
                units: vec![
                    unit("web@2.service", "Conflicts=web@*.service"),
                    plain("web@1.service"),
                ],
                claims: vec![("web@1.service", long_id)],
                asked: "web@2.service",
                reason: "every eligible machine runs a conflicting unit \
                         (web@1.service on 9f2a1b3c...)",
            },
            ReasonCase {
                behaviour: "conflicts listed up to three",
                machines: machines(&["m1", "m2", "m3", "m4"]),
                units: [unit("x.service", "Conflicts=*")]
                    .into_iter()
                    .chain(residents.map(plain))
                    .collect(),
                claims: residents.into_iter().zip(["m1", "m2", "m3", "m4"]).collect(),
                asked: "x.service",
                reason: "every eligible machine runs a conflicting unit (a.service on m1, \
                         b.service on m2, c.service on m3, ...)",
            },
            ReasonCase {
                behaviour: "template",
                machines: machines(&["m1"]),
                units: vec![plain("web@.service")],
                claims: vec![],
                asked: "web@.service",
                reason: "templates are not placed, only their instances",
            },
        ];
        for case in cases {
            let plan = plan(&snapshot(case.machines, case.units, &case.claims));
            let reason = plan.unplaceable.get(&name(case.asked)).map(String::as_str);
            assert_eq!(reason, Some(case.reason), "{}", case.behaviour);
        }
    }

    #[test]
    fn cycle_in_machine_of_makes_its_members_unplaceable() {
        let input = snapshot(
            machines(&["m1"]),
            vec![
                unit("a.service", "MachineOf=b.service"),
                unit("b.service", "MachineOf=a.service"),
                unit("c.service", "MachineOf=a.service"),
            ],
            &[],
        );
        let plan = plan(&input);
        let cycle = "MachineOf/Replaces cycle: a.service -> b.service -> a.service";
        assert_eq!(
            reasons(&plan),
            [
                ("a.service", cycle),
                ("b.service", cycle),
                ("c.service", "MachineOf target \"a.service\" is not placed"),
            ]
        );
        assert!(plan.claim.is_empty());
    }

    #[test]
    fn cycle_members_that_already_run_keep_their_claims() {
        let input = snapshot(
            machines(&["m1"]),
            vec![
                unit("a.service", "MachineOf=b.service"),
                unit("b.service", "MachineOf=a.service"),
            ],
            &[("a.service", "m1"), ("b.service", "m1")],
        );
        assert_eq!(plan(&input), Plan::default());
    }

    #[test]
    fn replaces_cycle_is_reported() {
        let input = snapshot(
            machines(&["m1", "m2"]),
            vec![unit("a.service", "Replaces=b.service"), unit("b.service", "Replaces=a.service")],
            &[],
        );
        let plan = plan(&input);
        let cycle = "MachineOf/Replaces cycle: a.service -> b.service -> a.service";
        assert_eq!(reasons(&plan), [("a.service", cycle), ("b.service", cycle)]);
    }

    #[test]
    fn repeated_machines_and_units_count_once() {
        let mut input = snapshot(
            machines(&["m1", "m1", "m2"]),
            vec![plain("a.service"), plain("a.service")],
            &[],
        );
        input.units[1].options.machine_id = Some("m2".into());
        assert_eq!(pairs(&plan(&input).claim), [("a.service", "m1")]);
    }
}
