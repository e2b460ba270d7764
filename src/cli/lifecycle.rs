//! The verbs that change what the cluster runs: submit, load, start, stop, restart, unload and
//! destroy.

use std::collections::BTreeSet;

use anyhow::{Context, bail};

use super::wait::{Goal, wait};
use super::{ChangeArgs, LocalFile, View, is_path, refuse_missing, resolve};
use crate::keyspace::DesiredState;
use crate::store::Store;
use crate::unit::UnitName;

/// The units a verb names, and those of them whose desired state is already written.
struct Prepared {
    names: Vec<UnitName>,
    with_state: BTreeSet<UnitName>,
}

impl Prepared {
    /// The units whose desired state is still to be written; a template a glob matched is
    /// never one of them.
    fn without_state(&self) -> Vec<UnitName> {
        let needs_state = |n: &&UnitName| !self.with_state.contains(*n) && !n.is_template();
        self.names.iter().filter(needs_state).cloned().collect()
    }
}

/// Stores `files`, the files named on the command line, and resolves the other arguments. With
/// `desired`, the files' units are stored with that state in the same transaction, which saves
/// the cluster a write per unit; templates never get one.
async fn prepare(
    store: &Store,
    args: &[String],
    files: Vec<LocalFile>,
    replace: bool,
    desired: Option<DesiredState>,
) -> anyhow::Result<Prepared> {
    let mut names: Vec<String> = args.iter().filter(|arg| !is_path(arg)).cloned().collect();
    let mut to_submit = Vec::new();
    let mut templates = Vec::new();
    for file in files {
        let made_from_template = file.template.is_some();
        templates.extend(file.template);
        // Without a state to give, an instance path with no file of its own only names the
        // instance, which must then be in the cluster; its template is still stored.
        match desired.is_none() && made_from_template {
            true => names.push(file.name.to_string()),
            false => to_submit.push((file.name, file.text)),
        }
    }
    let (mut resolved, instances) = match names.is_empty() {
        true => (Vec::new(), Vec::new()),
        false => resolve(&View::read(store).await?, &names)?,
    };
    // Only load and start make an instance from its template: stopping or unloading one that
    // was never made would store a unit nobody asked for.
    if desired.is_none() {
        refuse_missing(
            instances.iter().map(|(name, _)| format!("unit {name} does not exist")).collect(),
        )?;
    }
    to_submit.extend(instances);
    // A file may name a template itself; it is stored without a state and refused later.
    let (templates_named, to_submit): (Vec<_>, Vec<_>) =
        to_submit.into_iter().partition(|(name, _)| name.is_template());
    templates.extend(templates_named.iter().cloned());
    if !templates.is_empty() {
        store.submit(&templates, None, replace).await?;
    }
    if !to_submit.is_empty() {
        store.submit(&to_submit, desired, replace).await?;
    }
    let with_state: BTreeSet<UnitName> = match desired {
        Some(_) => to_submit.iter().map(|(name, _)| name.clone()).collect(),
        None => BTreeSet::new(),
    };
    resolved.extend(to_submit.into_iter().map(|(name, _)| name));
    resolved.extend(templates_named.into_iter().map(|(name, _)| name));
    resolved.sort();
    resolved.dedup();
    Ok(Prepared { names: resolved, with_state })
}

/// Drops templates a glob matched and refuses templates named outright: a template is never
/// placed, only its instances are.
fn without_templates(names: Vec<UnitName>, args: &[String]) -> anyhow::Result<Vec<UnitName>> {
    for template in names.iter().filter(|n| n.is_template()) {
        let named =
            args.iter().any(|a| a == template.as_str() || a.ends_with(&format!("/{template}")));
        if named {
            let example = template.instantiate("1").map(|n| n.to_string()).unwrap_or_default();
            bail!("{template} is a template; name an instance such as {example}");
        }
    }
    let names: Vec<UnitName> = names.into_iter().filter(|n| !n.is_template()).collect();
    if names.is_empty() {
        bail!("no unit to act on: the patterns matched only templates");
    }
    Ok(names)
}

/// `flotctl submit` of `files`, read from its arguments.
pub async fn submit(store: &Store, files: Vec<LocalFile>, replace: bool) -> anyhow::Result<()> {
    let mut units = Vec::new();
    for file in files {
        units.extend(file.template);
        units.push((file.name, file.text));
    }
    store.submit(&units, None, replace).await
}

/// `flotctl load`
pub async fn load(store: &Store, args: &ChangeArgs, files: Vec<LocalFile>) -> anyhow::Result<()> {
    let prepared =
        prepare(store, &args.units, files, args.replace, Some(DesiredState::Loaded)).await?;
    let names = without_templates(prepared.names.clone(), &args.units)?;
    store.set_desired(&prepared.without_state(), DesiredState::Loaded).await?;
    if !args.no_block {
        wait(store, &names, Goal::Loaded, args.timeout).await?;
    }
    Ok(())
}

/// `flotctl start`
pub async fn start(store: &Store, args: &ChangeArgs, files: Vec<LocalFile>) -> anyhow::Result<()> {
    let prepared =
        prepare(store, &args.units, files, args.replace, Some(DesiredState::Launched)).await?;
    let names = without_templates(prepared.names.clone(), &args.units)?;
    store.set_desired(&prepared.without_state(), DesiredState::Launched).await?;
    if !args.no_block {
        wait(store, &names, Goal::Active, args.timeout).await?;
    }
    Ok(())
}

/// `flotctl stop`: units that were never placed are left inactive, not loaded.
pub async fn stop(store: &Store, args: &ChangeArgs, files: Vec<LocalFile>) -> anyhow::Result<()> {
    let names = prepare(store, &args.units, files, args.replace, None).await?.names;
    let names = without_templates(names, &args.units)?;
    let view = View::read_dirs(store, &["desired"]).await?;
    let placed: Vec<UnitName> =
        names.iter().filter(|n| view.desired_state(n).is_placed()).cloned().collect();
    if !placed.is_empty() {
        store.set_desired(&placed, DesiredState::Loaded).await?;
    }
    if !args.no_block {
        wait(store, &placed, Goal::Stopped, args.timeout).await?;
    }
    Ok(())
}

/// `flotctl restart`: the stop is always waited for, or the agent would never see it.
pub async fn restart(
    store: &Store,
    args: &ChangeArgs,
    files: Vec<LocalFile>,
) -> anyhow::Result<()> {
    let names = prepare(store, &args.units, files, args.replace, None).await?.names;
    let names = without_templates(names, &args.units)?;
    store.set_desired(&names, DesiredState::Loaded).await?;
    wait(store, &names, Goal::Stopped, args.timeout).await?;
    store.set_desired(&names, DesiredState::Launched).await?;
    if !args.no_block {
        wait(store, &names, Goal::Active, args.timeout).await?;
    }
    Ok(())
}

/// `flotctl unload`
pub async fn unload(store: &Store, args: &ChangeArgs, files: Vec<LocalFile>) -> anyhow::Result<()> {
    let names = prepare(store, &args.units, files, args.replace, None).await?.names;
    let names = without_templates(names, &args.units)?;
    store.set_desired(&names, DesiredState::Inactive).await?;
    if !args.no_block {
        wait(store, &names, Goal::Gone, args.timeout).await?;
    }
    Ok(())
}

/// The unit a file argument names. The file must exist (or, for an instance, its template beside
/// it), as for the other verbs: a path that names nothing would otherwise pick a unit by its
/// last part alone.
fn local_unit_name(arg: &str) -> anyhow::Result<&str> {
    let path = std::path::Path::new(arg);
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or(arg);
    let unit = UnitName::parse(name).with_context(|| format!("{arg}: bad unit name"))?;
    let from_template = unit.template().is_some_and(|t| path.with_file_name(t.as_str()).exists());
    if !path.exists() && !from_template {
        bail!("{arg}: no such file (to destroy a unit by name, give the name alone)");
    }
    Ok(name)
}

/// `flotctl destroy`: unlike the other verbs, a file path only names the unit; it is not
/// submitted first.
pub async fn destroy(store: &Store, args: &ChangeArgs) -> anyhow::Result<()> {
    let view = View::read(store).await?;
    let mut patterns = Vec::new();
    let mut missing = Vec::new();
    for arg in &args.units {
        let name = match is_path(arg) {
            true => local_unit_name(arg)?,
            false => arg,
        };
        let plain = !name.contains(['*', '?', '[']);
        if plain && !view.units.contains_key(&UnitName::parse(name)?) {
            missing.push(format!("unit {name} does not exist"));
            continue;
        }
        if let Err(error) = resolve(&view, &[name.to_string()]) {
            missing.push(format!("{error:#}"));
            continue;
        }
        patterns.push(name.to_string());
    }
    // All or nothing: the units that do exist are kept too.
    refuse_missing(missing).context("nothing was destroyed")?;
    let (names, _) = resolve(&view, &patterns)?;
    store.destroy(&names).await?;
    if !args.no_block {
        wait(store, &names, Goal::Gone, args.timeout).await?;
    }
    Ok(())
}
