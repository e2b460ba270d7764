//! The listings: list-units, list-unit-files and list-machines.

use std::collections::BTreeMap;

use anyhow::bail;
use comfy_table::{Table, presets};

use super::{ListArgs, Output, View, printable, short_id};
use crate::store::Store;
use crate::unit::UnitFile;

/// One listing row: field name to value.
type Row = BTreeMap<&'static str, String>;

/// Prints rows as a table or JSON, with the fields asked for.
fn print(
    args: &ListArgs,
    all: &[&'static str],
    default: &[&'static str],
    rows: &[Row],
) -> anyhow::Result<()> {
    let fields: Vec<&'static str> = match &args.fields {
        None => default.to_vec(),
        Some(asked) => {
            let mut fields = Vec::new();
            for field in asked {
                match all.iter().find(|f| **f == field.as_str()) {
                    Some(f) => fields.push(*f),
                    None => bail!(unknown_field(field, all)),
                }
            }
            fields
        }
    };
    if args.output == Output::Json {
        let objects: Vec<serde_json::Map<String, serde_json::Value>> = rows
            .iter()
            .map(|row| {
                // Scripts get null for "nothing here", not the table's placeholder.
                let value = |f: &str| match row[f].as_str() {
                    "-" => serde_json::Value::Null,
                    text => text.into(),
                };
                fields.iter().map(|f| (f.to_string(), value(f))).collect()
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&objects)?);
        return Ok(());
    }
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    if !args.no_legend {
        table.set_header(fields.iter().map(|f| f.to_uppercase()));
    }
    for row in rows {
        table.add_row(fields.iter().map(|f| row[f].as_str()));
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in table.lines() {
        outln!("{}", line.trim_end());
    }
    Ok(())
}

/// The fields of each listing, in the order `--fields` documents them.
pub const UNIT_FIELDS: [&str; 9] =
    ["unit", "machine", "ip", "active", "sub", "load", "pid", "hash", "dstate"];
/// The fields of list-unit-files.
pub const UNIT_FILE_FIELDS: [&str; 9] =
    ["unit", "hash", "dstate", "state", "target", "images", "desc", "global", "reason"];
/// The fields of list-machines.
pub const MACHINE_FIELDS: [&str; 6] = ["machine", "ip", "metadata", "hostname", "version", "units"];

fn unknown_field(field: &str, all: &[&str]) -> String {
    format!("unknown field {field:?} (available: {})", all.join(", "))
}

/// The first field of `args` that the listing does not have, as a message.
pub fn check_fields(args: &ListArgs, all: &[&str]) -> Result<(), String> {
    let asked = args.fields.iter().flatten();
    match asked.into_iter().find(|f| !all.contains(&f.as_str())) {
        Some(field) => Err(unknown_field(field, all)),
        None => Ok(()),
    }
}

/// `flotctl list-units`
pub async fn list_units(store: &Store, args: &ListArgs) -> anyhow::Result<()> {
    let args = &json_is_full(args);
    let mut dirs = vec!["claims", "states", "machines", "desired"];
    // Only the hash column needs the unit files.
    if args.fields.as_ref().is_some_and(|fields| fields.iter().any(|f| f == "hash")) {
        dirs.push("units");
    }
    let view = View::read_dirs(store, &dirs).await?;
    let mut rows = Vec::new();
    for (name, machines) in &view.claims {
        let hash = view.units.get(name).map_or("-", |u| u.hash.as_str());
        for machine in machines {
            let state =
                view.states.get(name).and_then(|s| s.iter().find(|s| &s.machine == machine));
            let field =
                |f: fn(&crate::keyspace::StateRecord) -> String| state.map_or("-".into(), f);
            rows.push(Row::from([
                ("unit", name.to_string()),
                ("machine", machine_field(&view, machine, args)),
                ("ip", view.machines.get(machine).map_or("-".into(), |m| m.ip.clone())),
                ("active", field(|s| s.active.clone())),
                ("sub", field(|s| s.sub.clone())),
                ("load", field(|s| s.load.clone())),
                ("pid", field(|s| s.main_pid.to_string())),
                ("hash", if args.full { hash.to_string() } else { short_hash(hash) }),
                ("dstate", view.desired_state(name).to_string()),
            ]));
        }
    }
    print(args, &UNIT_FIELDS, &["unit", "machine", "active", "sub"], &rows)
}

/// JSON output never shortens ids and hashes.
fn json_is_full(args: &ListArgs) -> ListArgs {
    ListArgs { full: args.full || args.output == Output::Json, ..args.clone() }
}

/// fleetctl's `id.../IP` in a table; the whole machine id in JSON, where `ip` is its own field.
fn machine_field(view: &View, machine: &str, args: &ListArgs) -> String {
    match args.output {
        Output::Table => view.machine_label(machine, args.full),
        Output::Json => machine.to_string(),
    }
}

fn short_hash(hash: &str) -> String {
    hash.chars().take(7).collect()
}

/// `flotctl list-unit-files`
pub async fn list_unit_files(store: &Store, args: &ListArgs) -> anyhow::Result<()> {
    let args = &json_is_full(args);
    let view = View::read(store).await?;
    let mut rows = Vec::new();
    for (name, unit) in &view.units {
        let claims = view.claims.get(name).map(Vec::as_slice).unwrap_or_default();
        let states = view.states.get(name).map(Vec::as_slice).unwrap_or_default();
        let current = if states.iter().any(|s| matches!(s.active.as_str(), "active" | "activating"))
        {
            "launched"
        } else if states.iter().any(|s| s.load == "loaded") {
            "loaded"
        } else {
            "inactive"
        };
        let target = match claims {
            [] => "-".to_string(),
            [one] => view.machine_label(one, args.full),
            many => format!("{} hosts", many.len()),
        };
        let file = UnitFile::parse(name, unit.text.as_bytes()).ok();
        let description = file
            .as_ref()
            .and_then(|f| f.description().map(|d| printable(&d)))
            .unwrap_or_else(|| "-".into());
        let global = file
            .as_ref()
            .and_then(|f| crate::unit::FleetOptions::from_unit(name, f).ok())
            .is_some_and(|o| o.global);
        let images = view
            .image_holders(name)
            .map_or("-".into(), |h| format!("{}/{}", h.holding, h.eligible.len()));
        rows.push(Row::from([
            ("unit", name.to_string()),
            ("hash", if args.full { unit.hash.clone() } else { short_hash(&unit.hash) }),
            ("images", images),
            ("dstate", view.desired_state(name).to_string()),
            ("state", current.to_string()),
            ("target", target),
            ("desc", description),
            ("global", global.to_string()),
            ("reason", view.problems.get(name).cloned().unwrap_or_else(|| "-".into())),
        ]));
    }
    let mut default = vec!["unit", "hash", "dstate", "state", "target"];
    // JSON keeps one shape whatever the cluster holds: its optional fields are always there,
    // null when empty. A table shows them only when they say something.
    let json = args.output == Output::Json;
    // How many eligible hosts hold the image, once there is a container unit to count for.
    if json || rows.iter().any(|row| row["images"] != "-") {
        default.push("images");
    }
    // The reason column appears only when some unit cannot be placed.
    if json || !view.problems.is_empty() {
        default.push("reason");
    }
    print(args, &UNIT_FILE_FIELDS, &default, &rows)
}

/// `flotctl list-machines`
pub async fn list_machines(store: &Store, args: &ListArgs) -> anyhow::Result<()> {
    let args = &json_is_full(args);
    let view = View::read(store).await?;
    let rows: Vec<Row> = view
        .machines
        .values()
        .map(|m| {
            let metadata = if m.metadata.is_empty() {
                "-".to_string()
            } else {
                m.metadata.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            };
            let units = view.claims.values().filter(|c| c.contains(&m.id)).count();
            Row::from([
                ("machine", short_id(&m.id, args.full)),
                ("ip", if m.ip.is_empty() { "-".into() } else { m.ip.clone() }),
                ("metadata", metadata),
                ("hostname", m.hostname.clone()),
                ("version", m.agent_version.clone()),
                ("units", units.to_string()),
            ])
        })
        .collect();
    print(args, &MACHINE_FIELDS, &["machine", "ip", "metadata"], &rows)
}
