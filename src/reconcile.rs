//! The agent's decision for one unit: a plain function from (wanted, installed, observed) to
//! the actions that move systemd toward what etcd says.
//!
//! The decision compares with what systemd reports now, never with what the agent last asked
//! for, so a unit that failed, was stopped by hand or vanished is noticed and put right. It does
//! no I/O; the agent applies the actions at the edge.

use std::time::Duration;

use tokio::time::Instant;

use crate::keyspace::DesiredState;
use crate::systemd::Observed;

/// What etcd says this host should have for one unit.
#[derive(Clone, Debug)]
pub struct Want {
    /// Hash of the unit file.
    pub hash: String,
    /// The unit file itself.
    pub text: String,
    /// Loaded or launched.
    pub target: DesiredState,
    /// When a unit that stopped by itself is started again.
    pub restart: Restart,
    /// The least pause before such a restart (a container's `RestartSec=`).
    pub restart_sec: Duration,
}

/// When the agent starts a unit again that stopped by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// After a failure, with backoff (systemd units; `Restart=on-failure` containers).
    OnFailure,
    /// After any exit, with backoff (`Restart=always` containers).
    Always,
    /// Never (`Restart=no` containers).
    Never,
}

/// What the agent remembers about a unit between passes.
#[derive(Clone, Debug, Default)]
pub struct Local {
    /// Restarts after failures since the unit last ran.
    pub retries: u32,
    /// When the next restart after a failure is due.
    pub retry_at: Option<Instant>,
    /// The last error met while converging.
    pub error: Option<String>,
    /// Whether the agent started this unit since its file last changed or it was stopped.
    pub started: bool,
    /// Since when the unit has been seen up without interruption.
    pub up_since: Option<Instant>,
    /// The file hash the last install attempt was for.
    pub installing: Option<String>,
}

/// How long a unit must stay up before its earlier failures are forgiven.
pub const STABLE_AFTER: Duration = Duration::from_secs(10);

/// One step of converging a unit, applied in this order within a pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Stop the unit and wait for systemd to finish stopping it.
    Stop,
    /// Write the wanted file and link it into systemd.
    Install,
    /// Unlink the unit and remove its file.
    Remove,
    /// Queue a start.
    Start,
}

/// The longest pause between restarts of a failing unit.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The pause before the restart that follows `retries` earlier ones: 1 s, 2 s, 4 s … 30 s.
pub fn backoff(retries: u32) -> Duration {
    Duration::from_secs(1u64 << retries.min(5)).min(MAX_BACKOFF)
}

/// Records that the call to start a unit failed (systemd or Docker did not take it), so the
/// start is tried again after a backoff; a unit that started and then failed is handled by its
/// restart policy instead.
pub fn start_failed(local: &mut Local, now: Instant) {
    local.started = false;
    local.retry_at = Some(now + backoff(local.retries));
    local.retries += 1;
}

/// Decides what to do with one unit; `local` is updated with the bookkeeping the decision implies.
pub fn decide(
    want: Option<&Want>,
    installed: Option<&str>,
    observed: Option<&Observed>,
    local: &mut Local,
    now: Instant,
) -> Vec<Action> {
    let actions = decide_now(want, installed, observed, local, now);
    // A retry time is a wake-up call: one left in the past would wake the agent at once, pass
    // after pass, for a unit with nothing to do.
    if local.retry_at.is_some_and(|due| due <= now) {
        local.retry_at = None;
    }
    actions
}

fn decide_now(
    want: Option<&Want>,
    installed: Option<&str>,
    observed: Option<&Observed>,
    local: &mut Local,
    now: Instant,
) -> Vec<Action> {
    let Some(want) = want else {
        // Not ours (any more): stop it before its file goes, so ExecStop still finds the file.
        return match installed {
            Some(_) => vec![Action::Stop, Action::Remove],
            None => Vec::new(),
        };
    };
    let launch = want.target == DesiredState::Launched;

    if installed != Some(want.hash.as_str()) {
        // A new or replaced file is a new life: forget the old one's failures.
        if local.installing.as_deref() != Some(want.hash.as_str()) {
            *local = Local { installing: Some(want.hash.clone()), ..Local::default() };
        }
        // An install that failed (an image that cannot be pulled) waits for its backoff.
        if local.retry_at.is_some_and(|due| now < due) {
            return Vec::new();
        }
        local.retry_at = None;
        let mut actions = Vec::new();
        if installed.is_some() && observed.is_some_and(Observed::is_up) {
            actions.push(Action::Stop);
        }
        actions.push(Action::Install);
        if launch {
            local.started = true;
            actions.push(Action::Start);
        }
        return actions;
    }

    // A start that was refused, or a claim not yet confirmed, is tried again when it is due.
    let start_due = local.retry_at.is_none_or(|due| now >= due);
    let Some(observed) = observed else {
        // systemd could not tell us anything; a start will either work or say why.
        if launch && !local.started && start_due {
            local.started = true;
            return vec![Action::Start];
        }
        return Vec::new();
    };

    if !launch {
        // A stopped unit starts afresh when it is launched again.
        local.retry_at = None;
        local.started = false;
        local.up_since = None;
        return if observed.is_up() { vec![Action::Stop] } else { Vec::new() };
    }
    if observed.is_up() {
        local.retry_at = None;
        local.error = None;
        local.up_since.get_or_insert(now);
        return Vec::new();
    }
    // A service that fails right after starting is briefly "active" first; only a unit that
    // stayed up a while has its failure count reset.
    if local.up_since.take().is_some_and(|since| now.duration_since(since) >= STABLE_AFTER) {
        local.retries = 0;
    }
    if observed.load != "loaded" {
        // systemd refused the file; starting it again cannot help until the file changes.
        local.error = Some(format!("systemd could not load the unit ({})", observed.load));
        return Vec::new();
    }
    // A unit never started (since its file changed or it was stopped) is started now.
    if !local.started {
        if start_due {
            local.started = true;
            return vec![Action::Start];
        }
        return Vec::new();
    }
    // It ran and stopped by itself: the restart policy says whether it runs again.
    let failed = observed.active == "failed";
    let restarts = match want.restart {
        Restart::Never => false,
        Restart::OnFailure => failed,
        Restart::Always => true,
    };
    if !restarts {
        return Vec::new();
    }
    match local.retry_at {
        Some(due) if now >= due => {
            local.retry_at = None;
            local.retries += 1;
            vec![Action::Start]
        }
        Some(_) => Vec::new(),
        None => {
            local.retry_at = Some(now + backoff(local.retries).max(want.restart_sec));
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn want(target: DesiredState) -> Want {
        Want {
            hash: "h1".into(),
            text: "[Service]\n".into(),
            target,
            restart: Restart::OnFailure,
            restart_sec: Duration::ZERO,
        }
    }

    fn observed(active: &str) -> Observed {
        Observed {
            load: "loaded".into(),
            active: active.into(),
            sub: String::new(),
            main_pid: 0,
            since_ms: 0,
            detail: None,
        }
    }

    #[test]
    fn a_new_unit_is_installed_and_started() {
        let mut local = Local::default();
        let actions =
            decide(Some(&want(DesiredState::Launched)), None, None, &mut local, Instant::now());
        assert_eq!(actions, [Action::Install, Action::Start]);
    }

    #[test]
    fn a_loaded_unit_is_installed_but_not_started() {
        let mut local = Local::default();
        let actions =
            decide(Some(&want(DesiredState::Loaded)), None, None, &mut local, Instant::now());
        assert_eq!(actions, [Action::Install]);
    }

    #[test]
    fn a_running_unit_is_left_alone() {
        let mut local = Local::default();
        let running = observed("active");
        let actions = decide(
            Some(&want(DesiredState::Launched)),
            Some("h1"),
            Some(&running),
            &mut local,
            Instant::now(),
        );
        assert!(actions.is_empty());
    }

    #[test]
    fn a_replaced_file_restarts_a_running_unit() {
        let mut local = Local::default();
        let running = observed("active");
        let actions = decide(
            Some(&want(DesiredState::Launched)),
            Some("old"),
            Some(&running),
            &mut local,
            Instant::now(),
        );
        assert_eq!(actions, [Action::Stop, Action::Install, Action::Start]);
    }

    #[test]
    fn an_unclaimed_unit_is_stopped_then_removed() {
        let mut local = Local::default();
        let running = observed("active");
        let actions = decide(None, Some("h1"), Some(&running), &mut local, Instant::now());
        assert_eq!(actions, [Action::Stop, Action::Remove]);
    }

    #[test]
    fn stopping_to_loaded_stops_only_running_units() {
        for (active, expected) in [("active", vec![Action::Stop]), ("inactive", vec![])] {
            let mut local = Local::default();
            let state = observed(active);
            let actions = decide(
                Some(&want(DesiredState::Loaded)),
                Some("h1"),
                Some(&state),
                &mut local,
                Instant::now(),
            );
            assert_eq!(actions, expected, "{active}");
        }
    }

    #[test]
    fn a_failed_unit_is_restarted_after_a_growing_backoff() {
        let mut local = Local { started: true, ..Local::default() };
        let failed = observed("failed");
        let w = want(DesiredState::Launched);
        let t0 = Instant::now();

        assert!(decide(Some(&w), Some("h1"), Some(&failed), &mut local, t0).is_empty());
        assert_eq!(local.retry_at, Some(t0 + Duration::from_secs(1)));
        let early = t0 + Duration::from_millis(500);
        assert!(decide(Some(&w), Some("h1"), Some(&failed), &mut local, early).is_empty());
        let due = t0 + Duration::from_secs(1);
        assert_eq!(decide(Some(&w), Some("h1"), Some(&failed), &mut local, due), [Action::Start]);
        assert_eq!(local.retries, 1);

        assert!(decide(Some(&w), Some("h1"), Some(&failed), &mut local, due).is_empty());
        assert_eq!(local.retry_at, Some(due + Duration::from_secs(2)));
    }

    #[test]
    fn a_start_that_was_refused_is_tried_again_after_a_backoff() {
        let mut local = Local::default();
        let w = want(DesiredState::Launched);
        let inactive = observed("inactive");
        let t0 = Instant::now();
        assert_eq!(decide(Some(&w), None, None, &mut local, t0), [Action::Install, Action::Start]);
        start_failed(&mut local, t0);

        let early = t0 + Duration::from_millis(500);
        assert!(decide(Some(&w), Some("h1"), Some(&inactive), &mut local, early).is_empty());
        assert_eq!(local.retry_at, Some(t0 + Duration::from_secs(1)));
        let due = t0 + Duration::from_secs(1);
        assert_eq!(decide(Some(&w), Some("h1"), Some(&inactive), &mut local, due), [Action::Start]);

        start_failed(&mut local, due);
        assert_eq!(local.retry_at, Some(due + Duration::from_secs(2)));
    }

    #[test]
    fn a_unit_systemd_cannot_load_leaves_no_wake_up_behind() {
        let mut local = Local::default();
        let w = want(DesiredState::Launched);
        let t0 = Instant::now();
        decide(Some(&w), None, None, &mut local, t0);
        start_failed(&mut local, t0);
        let broken = Observed { load: "bad-setting".into(), ..observed("inactive") };

        let later = t0 + Duration::from_secs(5);
        assert!(decide(Some(&w), Some("h1"), Some(&broken), &mut local, later).is_empty());
        assert_eq!(local.retry_at, None);
        assert!(local.error.as_deref().unwrap_or("").contains("bad-setting"));
    }

    #[test]
    fn a_unit_that_fails_right_after_starting_keeps_its_backoff() {
        let mut local = Local { started: true, retries: 3, ..Local::default() };
        let w = want(DesiredState::Launched);
        let t0 = Instant::now();
        decide(Some(&w), Some("h1"), Some(&observed("active")), &mut local, t0);
        let soon = t0 + Duration::from_millis(50);
        decide(Some(&w), Some("h1"), Some(&observed("failed")), &mut local, soon);
        assert_eq!(local.retries, 3);
        assert_eq!(local.retry_at, Some(soon + backoff(3)));
    }

    #[test]
    fn a_unit_that_stayed_up_is_forgiven_its_failures() {
        let mut local = Local { started: true, retries: 3, ..Local::default() };
        let w = want(DesiredState::Launched);
        let t0 = Instant::now();
        decide(Some(&w), Some("h1"), Some(&observed("active")), &mut local, t0);
        let later = t0 + STABLE_AFTER;
        decide(Some(&w), Some("h1"), Some(&observed("failed")), &mut local, later);
        assert_eq!(local.retries, 0);
        assert_eq!(local.retry_at, Some(later + backoff(0)));
    }

    #[test]
    fn a_stopped_unit_is_started_again_when_launched() {
        let mut local = Local { started: true, ..Local::default() };
        let stopped = observed("inactive");
        let now = Instant::now();
        let loaded = want(DesiredState::Loaded);
        assert!(decide(Some(&loaded), Some("h1"), Some(&stopped), &mut local, now).is_empty());
        let launched = want(DesiredState::Launched);
        let actions = decide(Some(&launched), Some("h1"), Some(&stopped), &mut local, now);
        assert_eq!(actions, [Action::Start]);
    }

    #[test]
    fn the_restart_policy_decides_what_follows_an_exit() {
        let t0 = Instant::now();
        let cases = [
            (Restart::Never, "failed", false),
            (Restart::OnFailure, "failed", true),
            (Restart::OnFailure, "inactive", false),
            (Restart::Always, "inactive", true),
        ];
        for (restart, active, expected) in cases {
            let mut local = Local { started: true, ..Local::default() };
            let w = Want { restart, ..want(DesiredState::Launched) };
            decide(Some(&w), Some("h1"), Some(&observed(active)), &mut local, t0);
            let due = t0 + backoff(0);
            let actions = decide(Some(&w), Some("h1"), Some(&observed(active)), &mut local, due);
            assert_eq!(actions == [Action::Start], expected, "{restart:?} after {active}");
        }
    }

    #[test]
    fn restart_sec_lengthens_the_pause_but_never_shortens_it() {
        let t0 = Instant::now();
        for (restart_sec, expected) in [(5, 5), (0, 1)] {
            let mut local = Local { started: true, ..Local::default() };
            let w = Want {
                restart_sec: Duration::from_secs(restart_sec),
                ..want(DesiredState::Launched)
            };
            decide(Some(&w), Some("h1"), Some(&observed("failed")), &mut local, t0);
            assert_eq!(local.retry_at, Some(t0 + Duration::from_secs(expected)));
        }
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let pauses: Vec<u64> = (0..8).map(|r| backoff(r).as_secs()).collect();
        assert_eq!(pauses, [1, 2, 4, 8, 16, 30, 30, 30]);
    }

    #[test]
    fn a_unit_systemd_cannot_load_is_not_restarted() {
        let mut local = Local { started: true, ..Local::default() };
        let bad = Observed { load: "bad-setting".into(), ..observed("inactive") };
        let actions = decide(
            Some(&want(DesiredState::Launched)),
            Some("h1"),
            Some(&bad),
            &mut local,
            Instant::now(),
        );
        assert!(actions.is_empty());
        assert!(local.error.as_deref().unwrap().contains("bad-setting"));
    }

    #[test]
    fn a_finished_unit_is_not_started_again() {
        let mut local = Local { started: true, ..Local::default() };
        let done = observed("inactive");
        let actions = decide(
            Some(&want(DesiredState::Launched)),
            Some("h1"),
            Some(&done),
            &mut local,
            Instant::now(),
        );
        assert!(actions.is_empty());
    }

    #[test]
    fn an_inactive_unit_found_at_start_up_is_started() {
        let mut local = Local::default();
        let stopped = observed("inactive");
        let actions = decide(
            Some(&want(DesiredState::Launched)),
            Some("h1"),
            Some(&stopped),
            &mut local,
            Instant::now(),
        );
        assert_eq!(actions, [Action::Start]);
    }
}
