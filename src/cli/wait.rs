//! Waiting until the cluster reports what a command asked for.

use std::time::Duration;

use anyhow::bail;
use tokio::time::Instant;

use super::View;
use crate::unit::UnitName;

/// What a command waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// Every placed copy reports active.
    Active,
    /// Every placed copy is known to systemd.
    Loaded,
    /// No copy reports itself running.
    Stopped,
    /// No copy is claimed or reported any more.
    Gone,
}

/// How many refused starts make a start fail instead of waiting on.
const START_REFUSALS: u32 = 2;

/// How far one unit is from a goal.
enum Progress {
    Done,
    Pending(String),
    Failed(String),
}

fn progress(view: &View, name: &UnitName, goal: Goal) -> Progress {
    let states = view.states.get(name).map(Vec::as_slice).unwrap_or_default();
    let claims = view.claims.get(name).map(Vec::as_slice).unwrap_or_default();
    let hash = view.units.get(name).map(|u| u.hash.as_str());
    match goal {
        Goal::Gone if claims.is_empty() && states.is_empty() => Progress::Done,
        Goal::Gone => Progress::Pending("still on a host".into()),
        Goal::Stopped => {
            let up = states.iter().any(|s| matches!(s.active.as_str(), "active" | "activating"));
            let unreported = claims.iter().any(|m| !states.iter().any(|s| &s.machine == m));
            if up || unreported {
                Progress::Pending("still running".into())
            } else {
                Progress::Done
            }
        }
        Goal::Active | Goal::Loaded => {
            if let Some(reason) = view.problems.get(name) {
                return Progress::Failed(format!("unit {name} cannot be placed: {reason}"));
            }
            if claims.is_empty() {
                return Progress::Pending("not placed yet".into());
            }
            for machine in claims {
                let state =
                    states.iter().find(|s| &s.machine == machine && Some(s.hash.as_str()) == hash);
                let Some(state) = state else {
                    return Progress::Pending("not reported yet".into());
                };
                if state.load != "loaded" {
                    let why = state.error.as_deref().unwrap_or("see flotctl status");
                    return Progress::Failed(format!(
                        "unit {name} could not be loaded on {} ({}): {why}",
                        view.machine_label(machine, false),
                        state.load
                    ));
                }
                if goal == Goal::Active {
                    match state.active.as_str() {
                        "active" => {}
                        // The start itself was refused twice (systemd or Docker would not take
                        // it); flotd keeps trying with its backoff, but waiting out the timeout
                        // would only hide the reason. One refusal may be a busy bus.
                        "inactive" if state.retries >= START_REFUSALS && state.error.is_some() => {
                            return Progress::Failed(format!(
                                "unit {name} could not be started on {} (refused {} times; \
                                 flotd keeps trying): {}",
                                view.machine_label(machine, false),
                                state.retries,
                                state.error.as_deref().unwrap_or_default()
                            ));
                        }
                        "failed" => {
                            return Progress::Failed(format!(
                                "unit {name} failed on {} ({}/{}); see flotctl status {name}",
                                view.machine_label(machine, false),
                                state.active,
                                state.sub
                            ));
                        }
                        _ => return Progress::Pending(format!("{}/{}", state.active, state.sub)),
                    }
                }
            }
            Progress::Done
        }
    }
}

/// Polls the cluster until every unit reaches `goal`, a unit fails, or `timeout` passes.
pub async fn wait(
    store: &crate::store::Store,
    names: &[UnitName],
    goal: Goal,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    // Unit files are most of the keyspace: read them only for the hash an active or loaded
    // copy must report.
    let dirs: &[&str] = match goal {
        Goal::Gone | Goal::Stopped => &["claims", "states"],
        Goal::Active | Goal::Loaded => &["claims", "states", "problems", "machines", "units"],
    };
    loop {
        let view = View::read_dirs(store, dirs).await?;
        let mut pending = None;
        let mut failed = Vec::new();
        for name in names {
            match progress(&view, name, goal) {
                Progress::Done => {}
                Progress::Failed(reason) => failed.push(reason),
                Progress::Pending(what) => {
                    pending.get_or_insert((name.clone(), what));
                }
            }
        }
        super::fail_naming_all(&failed, "units failed")?;
        let Some((name, what)) = pending else {
            return Ok(());
        };
        if Instant::now() >= deadline {
            bail!(
                "timed out after {} waiting for {name} ({what})",
                humantime::format_duration(timeout)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
