//! `flotctl status`: what each host reports of a unit, and its recent transitions.

use std::time::{Duration, UNIX_EPOCH};

use super::{NamesArgs, Output, View, existing, printable};
use crate::store::Store;
use crate::unit::UnitFile;

fn timestamp(ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// `flotctl status`
pub async fn status(store: &Store, args: &NamesArgs) -> anyhow::Result<()> {
    let view = View::read(store).await?;
    let names = existing(&view, &args.units)?;
    if args.output == Output::Json {
        let mut out = serde_json::Map::new();
        for name in &names {
            let states = view.states.get(name).cloned().unwrap_or_default();
            let images = view.image_holders(name).map(|h| {
                let hosts: Vec<_> = h
                    .eligible
                    .iter()
                    .map(|(machine, record)| {
                        serde_json::json!({
                            "machine": machine,
                            "present": record.is_some_and(|r| r.present),
                            "error": record.and_then(|r| r.error.as_ref()),
                        })
                    })
                    .collect();
                serde_json::json!({ "image": h.image, "holding": h.holding, "hosts": hosts })
            });
            out.insert(
                name.to_string(),
                serde_json::json!({
                    "dstate": view.desired_state(name).to_string(),
                    "machines": view.claims.get(name).cloned().unwrap_or_default(),
                    "problem": view.problems.get(name),
                    "states": states,
                    "images": images,
                }),
            );
        }
        outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    for (index, name) in names.iter().enumerate() {
        if index > 0 {
            outln!();
        }
        let description = view
            .units
            .get(name)
            .and_then(|u| UnitFile::parse(name, u.text.as_bytes()).ok())
            .and_then(|f| f.description().map(|d| printable(&d)));
        match description {
            Some(d) => outln!("● {name} - {d}"),
            None => outln!("● {name}"),
        }
        outln!("   Desired: {}", view.desired_state(name));
        if let Some(reason) = view.problems.get(name) {
            outln!("   Not placed: {reason}");
        }
        if let Some(holders) = view.image_holders(name) {
            let (image, holding, eligible) =
                (&holders.image, holders.holding, holders.eligible.len());
            outln!("   Image: {image} (on {holding} of {eligible} eligible hosts)");
            for (machine, record) in &holders.eligible {
                if let Some(error) = record.and_then(|r| r.error.as_ref()) {
                    outln!("   Pull failed on {}: {error}", view.machine_label(machine, false));
                }
            }
        }
        let states = view.states.get(name).map(Vec::as_slice).unwrap_or_default();
        if states.is_empty() {
            let claims = view.claims.get(name).map(Vec::len).unwrap_or(0);
            outln!(
                "   State: {}",
                if claims > 0 { "placed, not reported yet" } else { "not placed" }
            );
        }
        for state in states {
            outln!("   Machine: {}", view.machine_label(&state.machine, false));
            outln!("   Loaded: {}", state.load);
            outln!(
                "   Active: {} ({}) since {}",
                state.active,
                state.sub,
                timestamp(state.since_ms)
            );
            if state.main_pid != 0 {
                outln!("   Main PID: {}", state.main_pid);
            }
            if state.retries > 0 {
                outln!("   Restarts after failure: {}", state.retries);
            }
            if let Some(error) = &state.error {
                outln!("   Error: {error}");
            }
            outln!("   Transitions:");
            for t in &state.transitions {
                outln!("     {}  {}/{}", timestamp(t.at_ms), t.active, t.sub);
            }
        }
    }
    Ok(())
}
