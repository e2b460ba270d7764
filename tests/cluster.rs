//! Cluster tests on the real topology: three etcd members, three hosts running systemd as PID 1
//! with flotd as a service, driven through flotctl as an operator would.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{HOSTS, TTL, scenario};

const SLEEPER: &str =
    "[Unit]\nDescription=test sleeper\n\n[Service]\nExecStart=/bin/sleep infinity\n";

fn names(template: &str, range: std::ops::RangeInclusive<u32>) -> Vec<String> {
    range.map(|i| template.replace("@.", &format!("@{i}."))).collect()
}

fn with<'a>(verb: &'a str, units: &'a [String]) -> Vec<&'a str> {
    let mut args = vec![verb];
    args.extend(units.iter().map(String::as_str));
    args
}

#[test]
fn twelve_units_spread_four_per_host() {
    let s = scenario();
    s.cleanup(&["spread@*"]);
    let files = s.unit_files(&[("spread@.service", SLEEPER)]);
    s.ok(&["submit", &files[0]]);
    let units = names("spread@.service", 1..=12);
    s.ok(&with("start", &units));

    let mut per_machine: BTreeMap<String, usize> = BTreeMap::new();
    for (unit, machine, active, _) in s.units() {
        if unit.starts_with("spread@") {
            assert_eq!(active, "active", "{unit}");
            *per_machine.entry(machine).or_default() += 1;
        }
    }
    assert_eq!(per_machine.values().copied().collect::<Vec<_>>(), [4, 4, 4]);
    for host in HOSTS {
        let listed =
            s.host(host, &["systemctl", "list-units", "--no-legend", "--state=active", "spread@*"]);
        assert_eq!(listed.lines().count(), 4, "systemd on {host} runs:\n{listed}");
    }
    s.ok(&["destroy", "spread@*"]);
}

#[test]
fn metadata_machine_id_and_machine_of_choose_the_host() {
    let s = scenario();
    s.cleanup(&[
        "pin.service",
        "west.service",
        "eastssd.service",
        "db.service",
        "dbsidecar.service",
    ]);
    let host2 = s.machine_id("flotilla-host2");
    let pin = format!("{SLEEPER}\n[X-Fleet]\nMachineID={host2}\n");
    let west = format!("{SLEEPER}\n[X-Fleet]\nMachineMetadata=region=west\n");
    let eastssd =
        format!("{SLEEPER}\n[X-Fleet]\nMachineMetadata=region=east\nMachineMetadata=disk=ssd\n");
    let db = format!("{SLEEPER}\n[X-Fleet]\nMachineMetadata=disk=hdd region=east\n");
    let sidecar = format!("{SLEEPER}\n[X-Fleet]\nMachineOf=db.service\n");
    let files = s.unit_files(&[
        ("pin.service", &pin),
        ("west.service", &west),
        ("eastssd.service", &eastssd),
        ("db.service", &db),
        ("dbsidecar.service", &sidecar),
    ]);
    s.ok(&with("start", &files));

    assert_eq!(s.active_on("pin.service"), ["flotilla-host2"]);
    assert_eq!(s.active_on("west.service"), ["flotilla-host2"]);
    assert_eq!(s.active_on("eastssd.service"), ["flotilla-host1"]);
    assert_eq!(s.active_on("db.service"), ["flotilla-host3"]);
    assert_eq!(s.active_on("dbsidecar.service"), ["flotilla-host3"]);
    s.ok(&[
        "destroy",
        "pin.service",
        "west.service",
        "eastssd.service",
        "db.service",
        "dbsidecar.service",
    ]);
}

#[test]
fn conflicts_keep_instances_apart_and_an_unplaceable_start_says_why() {
    let s = scenario();
    s.cleanup(&["excl@*", "nowhere.service"]);
    let excl = format!("{SLEEPER}\n[X-Fleet]\nConflicts=excl@*.service\n");
    let nowhere = format!("{SLEEPER}\n[X-Fleet]\nMachineMetadata=region=mars\n");
    let files = s.unit_files(&[("excl@.service", &excl), ("nowhere.service", &nowhere)]);
    s.ok(&["submit", &files[0]]);
    s.ok(&with("start", &names("excl@.service", 1..=3)));
    let mut hosts: Vec<&str> =
        (1..=3).flat_map(|i| s.active_on(&format!("excl@{i}.service"))).collect();
    hosts.sort();
    assert_eq!(hosts, HOSTS);

    // Both units that cannot be placed are named, each with its own reason.
    let run = s.flotctl(&["start", "excl@4.service", &files[1], "--timeout", "20s"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("2 units failed"), "{}", run.stderr);
    assert!(run.stderr.contains("unit excl@4.service cannot be placed"), "{}", run.stderr);
    assert!(run.stderr.contains("conflict"), "{}", run.stderr);
    assert!(run.stderr.contains("unit nowhere.service cannot be placed"), "{}", run.stderr);
    assert!(run.stderr.contains("region=mars"), "{}", run.stderr);
    let listing = s.ok(&["list-unit-files"]);
    let row = listing.lines().find(|l| l.starts_with("nowhere.service")).unwrap();
    assert!(row.contains("region=mars"), "list-unit-files shows no reason: {row}");
    s.ok(&["destroy", "excl@*", "nowhere.service"]);
}

#[test]
fn global_units_run_on_every_matching_host() {
    let s = scenario();
    s.cleanup(&["everywhere.service", "easterly.service"]);
    let everywhere = format!("{SLEEPER}\n[X-Fleet]\nGlobal=true\n");
    let easterly = format!("{SLEEPER}\n[X-Fleet]\nGlobal=true\nMachineMetadata=region=east\n");
    let files =
        s.unit_files(&[("everywhere.service", &everywhere), ("easterly.service", &easterly)]);
    s.ok(&with("start", &files));
    let mut on = s.active_on("everywhere.service");
    on.sort();
    assert_eq!(on, HOSTS);
    let mut east = s.active_on("easterly.service");
    east.sort();
    assert_eq!(east, ["flotilla-host1", "flotilla-host3"]);
    s.ok(&["destroy", "everywhere.service", "easterly.service"]);
    for host in HOSTS {
        assert!(s.traces_on(host, "everywhere.service").is_empty());
    }
}

#[test]
fn replaces_takes_the_host_and_moves_the_other_unit_away() {
    let s = scenario();
    s.cleanup(&["old.service", "new.service"]);
    let host1 = s.machine_id("flotilla-host1");
    let old = SLEEPER.to_string();
    let new = format!("{SLEEPER}\n[X-Fleet]\nReplaces=old.service\n");
    let files = s.unit_files(&[("old.service", &old), ("new.service", &new)]);
    s.ok(&["start", &files[0]]);
    let old_host = s.active_on("old.service")[0];
    s.ok(&["start", &files[1]]);
    assert_eq!(s.active_on("new.service"), [old_host]);
    let moved = s.wait_for("old.service active elsewhere", Duration::from_secs(20), || {
        let on = s.active_on("old.service");
        (on.len() == 1 && on[0] != old_host).then_some(on[0])
    });
    assert_ne!(moved, old_host);
    let _ = host1;
    s.ok(&["destroy", "old.service", "new.service"]);
}

#[test]
fn template_instances_resolve_specifiers() {
    let s = scenario();
    s.cleanup(&["geo@*"]);
    let geo = "[Unit]\nDescription=geo %i\n\n[Service]\n\
        ExecStart=/bin/sh -c 'echo %n %p %i > /run/geo-%i; exec sleep infinity'\n\n\
        [X-Fleet]\nMachineMetadata=region=%i\n";
    let files = s.unit_files(&[("geo@.service", geo)]);
    // The instance is made from the template beside the named file.
    let instance = files[0].replace("geo@.service", "geo@west.service");
    s.ok(&["start", &instance]);
    assert_eq!(s.active_on("geo@west.service"), ["flotilla-host2"]);
    let written = s.host("flotilla-host2", &["cat", "/run/geo-west"]);
    assert_eq!(written, "geo@west.service geo west");
    // And from the template already in the cluster.
    s.ok(&["start", "geo@east.service"]);
    let on = s.active_on("geo@east.service");
    assert!(on == ["flotilla-host1"] || on == ["flotilla-host3"], "{on:?}");
    // Several files are told apart by a line naming each; one alone is printed as stored.
    let both = s.ok(&["cat", "geo@west.service", "geo@east.service"]);
    assert_eq!(both, format!("# geo@west.service\n{geo}\n# geo@east.service\n{geo}"));
    assert_eq!(s.ok(&["cat", "geo@east.service"]), geo);
    s.ok(&["destroy", "geo@*"]);
}

#[test]
fn loading_a_unit_never_started_waits_for_it_loaded_and_inactive() {
    let s = scenario();
    s.cleanup(&["loadonly.service"]);
    let files = s.unit_files(&[("loadonly.service", "[Service]\nExecStart=/bin/sleep infinity\n")]);
    // Twice: fresh, and again after an unload took it off its host.
    for _ in 0..2 {
        s.ok(&["load", "--timeout", "20s", &files[0]]);
        let listed = s.ok(&["list-units", "--no-legend", "--fields", "unit,active,load"]);
        let row = listed.lines().find(|l| l.starts_with("loadonly.service")).unwrap_or_default();
        assert_eq!(
            row.split_whitespace().collect::<Vec<_>>(),
            ["loadonly.service", "inactive", "loaded"]
        );
        s.ok(&["unload", "loadonly.service"]);
    }
    s.ok(&["destroy", "loadonly.service"]);
}

#[test]
fn stop_unload_and_destroy_leave_no_trace() {
    let s = scenario();
    s.cleanup(&["trace.service"]);
    let unit = "[Service]\nExecStart=/bin/sleep infinity\n\
        ExecStop=/bin/sh -c 'sleep 2; touch /run/trace-stopped'\n";
    let files = s.unit_files(&[("trace.service", unit)]);
    s.ok(&["start", &files[0]]);
    let host = s.active_on("trace.service")[0];

    s.ok(&["stop", "trace.service"]);
    assert_eq!(s.systemd_state(host, "trace.service").0, "inactive");
    // stop waited for ExecStop to finish.
    assert!(s.host_output(host, &["test", "-e", "/run/trace-stopped"]).status.success());
    // Stopping a stopped unit is not an error.
    s.ok(&["stop", "trace.service"]);

    s.ok(&["unload", "trace.service"]);
    for h in HOSTS {
        assert_eq!(s.traces_on(h, "trace.service"), Vec::<String>::new());
    }
    let keys: Vec<String> =
        s.etcd_dump().into_keys().filter(|k| k.contains("trace.service")).collect();
    assert_eq!(keys, ["/flotilla/desired/trace.service", "/flotilla/units/trace.service"]);

    s.ok(&["start", "trace.service"]);
    let host = s.active_on("trace.service")[0];
    // Every name that is not there is named, and the one that is stays.
    let partly = s.flotctl(&["destroy", "trace.service", "nosuch-a.service", "nosuch-b*"]);
    assert_eq!(partly.code, 1, "{}", partly.stderr);
    assert!(partly.stderr.contains("nothing was destroyed"), "{}", partly.stderr);
    assert!(partly.stderr.contains("nosuch-a.service does not exist"), "{}", partly.stderr);
    assert!(partly.stderr.contains("no unit matches \"nosuch-b*\""), "{}", partly.stderr);
    assert_eq!(s.active_on("trace.service"), [host]);
    s.host(host, &["rm", "-f", "/run/trace-stopped"]);
    s.ok(&["destroy", "trace.service"]);
    assert!(s.host_output(host, &["test", "-e", "/run/trace-stopped"]).status.success());
    for h in HOSTS {
        assert_eq!(s.traces_on(h, "trace.service"), Vec::<String>::new());
    }
    let keys: Vec<String> =
        s.etcd_dump().into_keys().filter(|k| k.contains("trace.service")).collect();
    assert_eq!(keys, Vec::<String>::new());

    let missing = s.flotctl(&["destroy", "trace.service"]);
    assert_ne!(missing.code, 0);
    assert!(missing.stderr.contains("does not exist"), "{}", missing.stderr);
}

/// Starts one unit per host and returns the host of the first.
fn one_per_host(s: &common::Scenario, template: &str) -> (Vec<String>, &'static str) {
    s.cleanup(&[&template.replace("@.service", "@*")]);
    let files = s.unit_files(&[(template, SLEEPER)]);
    s.ok(&["submit", &files[0]]);
    let units = names(template, 1..=3);
    s.ok(&with("start", &units));
    let host = s.active_on(&units[0])[0];
    (units, host)
}

/// Waits until every unit is active on a host other than `gone`; returns the time taken.
fn wait_moved(s: &common::Scenario, units: &[String], gone: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    s.wait_for("units active on survivors", timeout, || {
        units
            .iter()
            .all(|u| {
                let on = s.active_on(u);
                on.len() == 1 && on[0] != gone
            })
            .then_some(())
    });
    start.elapsed()
}

#[test]
fn a_killed_host_loses_its_units_to_the_survivors_and_rejoins() {
    let s = scenario();
    let global =
        s.unit_files(&[("hardglobal.service", &format!("{SLEEPER}\n[X-Fleet]\nGlobal=true\n"))]);
    s.ok(&["start", &global[0]]);
    let (units, victim) = one_per_host(&s, "hard@.service");
    let on_victim: Vec<String> =
        units.iter().filter(|u| s.active_on(u) == [victim]).cloned().collect();

    s.docker(&["kill", victim]);
    let took = wait_moved(&s, &on_victim, victim, TTL * 2 + Duration::from_secs(5));
    eprintln!("hard failover took {took:?}");

    s.docker(&["start", victim]);
    s.ensure_host_up(victim);
    s.wait_for("the host back in list-machines", Duration::from_secs(60), || {
        s.machines().contains(&s.machine_id(victim)).then_some(())
    });
    // A global unit comes back on the rejoined host promptly, with no other change to wake it.
    s.wait_for("the global unit on the rejoined host", Duration::from_secs(5), || {
        s.active_on("hardglobal.service").contains(&victim).then_some(())
    });
    // New work goes to the rejoined host, the least loaded one.
    let more = names("hard@.service", 4..=4);
    s.ok(&with("start", &more));
    assert_eq!(s.active_on(&more[0]), [victim]);
    s.ok(&["destroy", "hard@*", "hardglobal.service"]);
}

#[test]
fn stopping_flotd_hands_units_over_within_three_seconds() {
    let s = scenario();
    let (units, victim) = one_per_host(&s, "soft@.service");
    let unit = &units[0];
    let pid_before = s.systemd_state(victim, unit).1;
    assert_ne!(pid_before, 0);

    let start = Instant::now();
    s.host(victim, &["systemctl", "stop", "--no-block", "flotd"]);
    s.wait_for("unit active on a survivor", Duration::from_secs(3), || {
        let on = s.active_on(unit);
        (on.len() == 1 && on[0] != victim).then_some(())
    });
    eprintln!("graceful failover took {:?}", start.elapsed());
    assert_eq!(s.systemd_state(victim, unit).0, "inactive");
    s.host(victim, &["systemctl", "start", "flotd"]);
    s.ok(&["destroy", "soft@*"]);
}

#[test]
fn killing_the_engine_host_loses_no_placement() {
    let s = scenario();
    let (units, _) = one_per_host(&s, "eng@.service");
    let engine: serde_json::Value =
        serde_json::from_str(&s.etcd_dump()["/flotilla/engine"]).unwrap();
    let victim = s.host_by_id(engine["machine"].as_str().unwrap());

    s.docker(&["kill", victim]);
    let fresh = names("eng@.service", 4..=6);
    s.ok(&with("start", &fresh).into_iter().chain(["--no-block"]).collect::<Vec<_>>());
    let all: Vec<String> = units.iter().chain(&fresh).cloned().collect();
    wait_moved(&s, &all, victim, TTL * 2 + Duration::from_secs(10));
    let engine: serde_json::Value =
        serde_json::from_str(&s.etcd_dump()["/flotilla/engine"]).unwrap();
    assert_ne!(s.host_by_id(engine["machine"].as_str().unwrap()), victim);

    s.docker(&["start", victim]);
    s.ensure_host_up(victim);
    s.ok(&["destroy", "eng@*"]);
}

#[test]
fn a_flotd_killed_and_restarted_within_the_ttl_keeps_units_running() {
    let s = scenario();
    let (units, host) = one_per_host(&s, "keep@.service");
    let before: Vec<(String, u32)> = units
        .iter()
        .map(|u| {
            let on = s.active_on(u)[0];
            (on.to_string(), s.systemd_state(on, u).1)
        })
        .collect();

    s.kill_flotd(host);
    // Give the restarted agent time to converge; it must find nothing to change.
    std::thread::sleep(TTL + Duration::from_secs(2));

    for (unit, (on, pid)) in units.iter().zip(&before) {
        assert_eq!(s.active_on(unit), [on.as_str()], "{unit} moved");
        assert_eq!(s.systemd_state(on, unit), ("active".to_string(), *pid), "{unit} restarted");
    }
    s.ok(&["destroy", "keep@*"]);
}

#[test]
fn a_malformed_unit_is_refused_and_etcd_is_unchanged() {
    let s = scenario();
    s.cleanup(&["good.service"]);
    let before = s.etcd_dump();
    let big = format!("[Service]\nExecStart=/bin/true\n#{}\n", "x".repeat(1 << 20));
    // Under the file size limit, but JSON doubles every quote.
    let quotes = format!("[Service]\nExecStart=/bin/true\n#{}\n", "\"".repeat(1_000_000));
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("garbage.service", b"[Service]\nExecStart=/bin/true\nnonsense\n".to_vec(), "line 3"),
        ("nosection.service", b"ExecStart=/bin/true\n".to_vec(), "line 1"),
        ("empty.service", Vec::new(), "empty"),
        ("binary.service", b"[Service]\n\x00\x01\x02".to_vec(), "NUL"),
        ("latin1.service", b"[Unit]\nDescription=caf\xe9\n".to_vec(), "UTF-8"),
        ("big.service", big.into_bytes(), "1 MiB"),
        ("quotes.service", quotes.into_bytes(), "once encoded for etcd"),
        (
            "fleet.service",
            b"[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineOff=x.service\n".to_vec(),
            "MachineOff",
        ),
        (
            "self.service",
            b"[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineOf=self.service\n".to_vec(),
            "itself",
        ),
        (
            "twice.service",
            b"[Service]\nExecStart=/bin/true\n[X-Fleet]\nMachineID=abc\nMachineID=def\n".to_vec(),
            "line 5",
        ),
        (
            "contradiction.service",
            b"[Service]\nExecStart=/bin/true\n[X-Fleet]\nGlobal=true\nMachineOf=a.service\n"
                .to_vec(),
            "Global=true rules out MachineOf",
        ),
        ("bad name.service", b"[Service]\nExecStart=/bin/true\n".to_vec(), "' '"),
        ("noext", b"[Service]\nExecStart=/bin/true\n".to_vec(), "suffix"),
        ("unknown.suffix", b"[Service]\nExecStart=/bin/true\n".to_vec(), "suffix"),
    ];
    let dir = common::root().join("target/test-units/malformed");
    std::fs::create_dir_all(&dir).unwrap();
    for (name, bytes, expected) in &cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let path = path.display().to_string();
        // A good file in the same command must not be stored either.
        let good = s.unit_files(&[("good.service", SLEEPER)]);
        let run = s.flotctl(&["submit", &good[0], &path]);
        assert_ne!(run.code, 0, "{name} was accepted");
        assert!(
            run.stderr.to_lowercase().contains(&expected.to_lowercase()),
            "{name}: error does not mention {expected:?}: {}",
            run.stderr
        );
        assert_eq!(run.stderr.trim().lines().count(), 1, "{name}: not one line: {}", run.stderr);
        let verify = s.flotctl(&["verify", &path]);
        assert_ne!(verify.code, 0, "verify accepted {name}");
    }
    // Names given without a file, as for units already in the cluster, meet the same door.
    let long = format!("{}.service", "n".repeat(300));
    for name in ["../escape.service", "dir/unit.service", "ctl\u{7}.service", &long, "x.unknown"] {
        let run = s.flotctl(&["start", name]);
        assert_ne!(run.code, 0, "{name:?} was accepted");
        assert_eq!(run.stderr.trim().lines().count(), 1, "{name:?}: not one line: {}", run.stderr);
    }
    assert_eq!(s.etcd_dump(), before);
}

#[test]
fn a_unit_systemd_rejects_is_reported_and_does_not_block_the_others() {
    let s = scenario();
    let bad = "[Service]\nExecStart=relative/path\n";
    let files = s.unit_files(&[
        ("rejected.service", bad),
        ("fine1.service", SLEEPER),
        ("fine2.service", SLEEPER),
    ]);
    let run = s.flotctl(
        &with("start", &files).into_iter().chain(["--timeout", "20s"]).collect::<Vec<_>>(),
    );
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("rejected.service"), "{}", run.stderr);
    s.ok(&["start", "fine1.service", "fine2.service"]);
    assert_eq!(s.active_on("fine1.service").len(), 1);
    assert_eq!(s.active_on("fine2.service").len(), 1);
    let status = s.ok(&["status", "rejected.service"]);
    assert!(status.contains("Loaded: bad-setting"), "{status}");
    s.ok(&["destroy", "rejected.service", "fine1.service", "fine2.service"]);
    for host in HOSTS {
        assert!(s.traces_on(host, "rejected.service").is_empty());
    }
}

#[test]
fn a_failing_unit_is_restarted_with_backoff_and_the_count_is_shown() {
    let s = scenario();
    // A failing ExecStartPre= fails the start job itself, so the unit is never seen active, not
    // even for the moment a failing ExecStart= would be.
    let flaky = "[Service]\nExecStartPre=/bin/false\nExecStart=/bin/sleep infinity\n";
    let files = s.unit_files(&[("flaky.service", flaky)]);
    let run = s.flotctl(&["start", &files[0], "--timeout", "20s"]);
    assert_ne!(run.code, 0);
    assert!(run.stderr.contains("failed"), "{}", run.stderr);
    s.wait_for("two restarts after failure", Duration::from_secs(15), || {
        let json = s.ok(&["status", "flaky.service", "-o", "json"]);
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        let retries = status["flaky.service"]["states"][0]["retries"].as_u64().unwrap_or(0);
        (retries >= 2).then_some(())
    });
    let status = s.ok(&["status", "flaky.service"]);
    assert!(status.contains("Restarts after failure:"), "{status}");
    assert!(status.contains("failed"), "{status}");
    s.ok(&["destroy", "flaky.service"]);
}

#[test]
fn an_install_section_enables_the_unit_for_this_boot() {
    let s = scenario();
    let unit = format!("{SLEEPER}\n[Install]\nWantedBy=multi-user.target\n");
    let files = s.unit_files(&[("installed.service", &unit)]);
    s.ok(&["start", &files[0]]);
    let host = s.active_on("installed.service")[0];
    let link = "/run/systemd/system/multi-user.target.wants/installed.service";
    assert!(s.host_output(host, &["test", "-L", link]).status.success(), "{link} missing");
    let enabled = s.host(host, &["systemctl", "is-enabled", "installed.service"]);
    assert_eq!(enabled, "enabled-runtime");
    s.ok(&["destroy", "installed.service"]);
    assert!(!s.host_output(host, &["test", "-L", link]).status.success(), "{link} left behind");
}

#[test]
fn a_unit_file_no_claim_backs_is_stopped_and_removed() {
    let s = scenario();
    let host = "flotilla-host1";
    let file = "/run/flotilla/units/orphan.service";
    s.host(
        host,
        &["sh", "-c", &format!("printf '[Service]\\nExecStart=/bin/sleep infinity\\n' > {file}")],
    );
    s.host(host, &["systemctl", "link", "--runtime", file]);
    s.host(host, &["systemctl", "start", "orphan.service"]);
    s.host(host, &["systemctl", "restart", "flotd"]);
    s.wait_for("the orphan gone", Duration::from_secs(20), || {
        s.traces_on(host, "orphan.service").is_empty().then_some(())
    });
}

#[test]
fn destroying_and_at_once_resubmitting_gives_a_clean_new_life() {
    let s = scenario();
    let first = s.unit_files(&[("life.service", SLEEPER)]);
    s.ok(&["start", &first[0]]);
    let second_text = SLEEPER.replace("test sleeper", "second life");
    let second = s.unit_files(&[("life.service", &second_text)]);
    s.ok(&["destroy", "--no-block", "life.service"]);
    s.ok(&["start", &second[0]]);

    let listing = s.ok(&["list-unit-files", "--full", "--no-legend", "--fields", "unit,hash"]);
    let hash = listing.split_whitespace().nth(1).unwrap().to_string();
    let running: Vec<&str> =
        HOSTS.into_iter().filter(|h| s.systemd_state(h, "life.service").0 == "active").collect();
    assert_eq!(running.len(), 1, "life.service runs on {running:?}");
    let description =
        s.host(running[0], &["systemctl", "show", "-p", "Description", "--value", "life.service"]);
    assert_eq!(description, "second life");
    let json = s.ok(&["status", "life.service", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(status["life.service"]["states"][0]["hash"], hash.as_str());
    s.ok(&["destroy", "life.service"]);
}

#[test]
fn a_second_host_with_the_same_machine_id_is_refused() {
    let s = scenario();
    let host1 = s.machine_id("flotilla-host1");
    let script = format!(
        "set -a; . /etc/flotilla/flotd.env; echo {host1} > /tmp/dup-id; \
         FLOTD_MACHINE_ID_FILE=/tmp/dup-id FLOTD_RUNTIME_DIR=/tmp/dup-run FLOTD_TTL=3 \
         FLOTD_PUBLIC_IP=10.9.9.9 exec timeout 60 /usr/local/bin/flotd"
    );
    let out = s.host_output("flotilla-host2", &["sh", "-c", &script]);
    let logs =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{logs}");
    assert!(logs.contains("already registered by another live host"), "{logs}");
    assert!(logs.contains("172.31.90.21"), "the error does not name the other host: {logs}");
    let machines = s.ok(&["list-machines", "--full", "--no-legend", "--fields", "machine,ip"]);
    let row = machines.lines().find(|l| l.starts_with(&host1)).unwrap();
    assert!(row.ends_with("172.31.90.21"), "host1's record was overwritten: {row}");
}

#[test]
fn a_planned_restart_of_flotd_keeps_units_and_lease() {
    let s = scenario();
    let host = "flotilla-host1";
    // The flag is read at start: the running agent must have been started with it.
    let dropin = "/run/systemd/system/flotd.service.d";
    s.host(host, &["mkdir", "-p", dropin]);
    let conf = format!(
        "printf '[Service]\\nEnvironment=FLOTD_KEEP_UNITS_ON_EXIT=true\\n' > {dropin}/keep.conf"
    );
    s.host(host, &["sh", "-c", &conf]);
    s.host(host, &["systemctl", "daemon-reload"]);
    s.host(host, &["systemctl", "restart", "flotd"]);
    s.wait_for("three machines", Duration::from_secs(20), || {
        (s.machines().len() == 3).then_some(())
    });

    let (units, _) = one_per_host(&s, "planned@.service");
    let unit = units.iter().find(|u| s.active_on(u) == [host]).unwrap().clone();
    let pid = s.systemd_state(host, &unit).1;
    s.host(host, &["systemctl", "restart", "flotd"]);
    std::thread::sleep(TTL + Duration::from_secs(2));
    assert_eq!(s.active_on(&unit), [host]);
    assert_eq!(s.systemd_state(host, &unit), ("active".to_string(), pid));
    s.host(host, &["rm", "-rf", dropin]);
    s.host(host, &["systemctl", "daemon-reload"]);
    s.ok(&["destroy", "planned@*"]);
}

#[test]
fn replace_updates_a_running_unit_and_is_required_for_a_changed_file() {
    let s = scenario();
    let first = s.unit_files(&[("swap.service", SLEEPER)]);
    s.ok(&["start", &first[0]]);
    let host = s.active_on("swap.service")[0];
    let changed = SLEEPER.replace("test sleeper", "replaced sleeper");
    let second = s.unit_files(&[("swap.service", &changed)]);

    let refused = s.flotctl(&["start", &second[0]]);
    assert_ne!(refused.code, 0);
    assert!(refused.stderr.contains("--replace"), "{}", refused.stderr);
    assert_eq!(s.ok(&["cat", "swap.service"]), SLEEPER);

    let replaced_at =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
            as u64;
    s.ok(&["start", "--replace", &second[0]]);
    assert_eq!(s.ok(&["cat", "swap.service"]), changed);
    s.wait_for("the new file running", Duration::from_secs(20), || {
        let d =
            s.host(host, &["systemctl", "show", "-p", "Description", "--value", "swap.service"]);
        (d == "replaced sleeper" && s.systemd_state(host, "swap.service").0 == "active")
            .then_some(())
    });
    // status tells of the new run, not only of the first.
    s.wait_for("the new run in status", Duration::from_secs(10), || {
        let json = s.ok(&["status", "swap.service", "-o", "json"]);
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        let transitions = status["swap.service"]["states"][0]["transitions"].as_array()?.clone();
        let last = transitions.last()?;
        (last["at_ms"].as_u64()? >= replaced_at && last["active"] == "active").then_some(())
    });
    s.ok(&["destroy", "swap.service"]);
}

/// The hosts where systemd has `unit` running or on its way up or down.
fn copies(s: &common::Scenario, unit: &str) -> Vec<&'static str> {
    HOSTS
        .into_iter()
        .filter(|h| {
            let state = s.systemd_state(h, unit).0;
            matches!(state.as_str(), "active" | "activating" | "deactivating" | "reloading")
        })
        .collect()
}

#[test]
fn a_graceful_stop_slower_than_the_ttl_never_runs_the_unit_twice() {
    let s = scenario();
    let slow = "[Service]\nExecStart=/bin/sleep infinity\nExecStop=/bin/sleep 8\n";
    let files = s.unit_files(&[("slowstop.service", slow)]);
    s.ok(&["start", &files[0]]);
    let victim = s.active_on("slowstop.service")[0];

    s.host(victim, &["systemctl", "stop", "--no-block", "flotd"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut moved = false;
    while Instant::now() < deadline && !moved {
        let on = copies(&s, "slowstop.service");
        assert!(on.len() <= 1, "slowstop.service runs on {on:?} at once");
        moved = on.len() == 1 && on[0] != victim;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(moved, "slowstop.service did not move off {victim}");
    s.host(victim, &["systemctl", "start", "flotd"]);
    s.ok(&["destroy", "slowstop.service"]);
}

#[test]
fn losing_one_etcd_member_disturbs_neither_flotctl_nor_units() {
    let s = scenario();
    let (units, _) = one_per_host(&s, "quorum@.service");
    let before: Vec<(&str, u32)> = units
        .iter()
        .map(|u| {
            let on = s.active_on(u)[0];
            (on, s.systemd_state(on, u).1)
        })
        .collect();

    s.docker(&["stop", "flotilla-etcd1"]);
    let outcome = std::panic::catch_unwind(|| {
        for _ in 0..10 {
            s.ok(&["list-machines"]);
        }
        std::thread::sleep(TTL * 2);
        s.ok(&with("start", &names("quorum@.service", 4..=4)));
        for (unit, (host, pid)) in units.iter().zip(&before) {
            assert_eq!(s.systemd_state(host, unit), ("active".to_string(), *pid), "{unit}");
        }
    });
    s.docker(&["start", "flotilla-etcd1"]);
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
    s.ok(&["destroy", "quorum@*"]);
}

#[test]
fn a_batch_of_150_units_starts_stops_and_is_destroyed_by_glob() {
    let s = scenario();
    let files = s.unit_files(&[("big@.service", SLEEPER)]);
    s.ok(&["submit", &files[0]]);
    let units = names("big@.service", 1..=150);
    s.ok(&with("start", &units));
    let running = |host: &str| {
        let listed =
            s.host(host, &["systemctl", "list-units", "--no-legend", "--state=active", "big@*"]);
        listed.lines().count()
    };
    assert_eq!(HOSTS.iter().map(|h| running(h)).sum::<usize>(), 150);

    s.ok(&["stop", "big@*"]);
    assert_eq!(HOSTS.iter().map(|h| running(h)).sum::<usize>(), 0);
    s.ok(&["start", "big@*"]);
    assert_eq!(HOSTS.iter().map(|h| running(h)).sum::<usize>(), 150);
    // The glob matched the template too, which is never started itself.
    let files = s.ok(&["list-unit-files", "--no-legend", "--fields", "unit,dstate"]);
    let template = files.lines().find(|l| l.starts_with("big@.service")).unwrap_or_default();
    assert_eq!(template.split_whitespace().collect::<Vec<_>>(), ["big@.service", "inactive"]);
    s.ok(&["destroy", "big@*"]);
    for host in HOSTS {
        assert_eq!(running(host), 0, "{host} still runs big@ units");
        let files = s.host(host, &["sh", "-c", "ls /run/flotilla/units | grep -c '^big@' || true"]);
        assert_eq!(files, "0", "{host} still has big@ files");
    }
    // The agents still take new work afterwards.
    let after = s.unit_files(&[("after-big.service", SLEEPER)]);
    s.ok(&["start", &after[0]]);
    s.ok(&["destroy", "after-big.service"]);
}

#[test]
fn a_keyspace_larger_than_one_grpc_message_is_still_listed_and_watched() {
    let s = scenario();
    // Five files near the size limit make a keyspace over the 4 MiB a gRPC message may hold.
    let body = format!("#{}\n", "x".repeat(1_000_000));
    let files: Vec<(String, String)> =
        (1..=5).map(|i| (format!("huge{i}.service"), format!("{SLEEPER}{body}"))).collect();
    let files: Vec<(&str, &str)> = files.iter().map(|(n, t)| (n.as_str(), t.as_str())).collect();
    let paths = s.unit_files(&files);
    s.ok(&with("submit", &paths));
    let listed = s.ok(&["list-unit-files", "--no-legend", "--fields", "unit"]);
    assert_eq!(listed.lines().filter(|l| l.starts_with("huge")).count(), 5, "{listed}");
    assert!(s.ok(&["cat", "huge3.service"]).contains(&body.trim_end()[..1000]));
    // The agents' watches and listings carry the big files too: work still gets done.
    s.ok(&["start", "huge1.service"]);
    assert_eq!(s.active_on("huge1.service").len(), 1);
    s.kill_flotd(s.active_on("huge1.service")[0]);
    let small = s.unit_files(&[("after-huge.service", SLEEPER)]);
    s.ok(&["start", &small[0]]);
    s.ok(&["destroy", "huge*", "after-huge.service"]);
}

#[test]
fn an_unknown_listing_field_is_a_usage_error_before_etcd_is_asked() {
    let s = scenario();
    // Nothing listens on the discard port: an answer naming the field cannot come from etcd.
    let nowhere = "http://127.0.0.1:9";
    for (verb, fields, available) in [
        ("list-units", "unit,bogus", "unit, machine, ip"),
        ("list-unit-files", "unit,bogus", "unit, hash, dstate"),
        ("list-machines", "machine,bogus", "machine, ip, metadata"),
    ] {
        let run = s.flotctl(&["--endpoints", nowhere, verb, "--fields", fields]);
        assert_eq!(run.code, 2, "{verb}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains("unknown field \"bogus\""), "{verb}: {}", run.stderr);
        assert!(run.stderr.contains(available), "{verb} lists no fields: {}", run.stderr);
        assert!(!run.stderr.contains("unreachable"), "{verb} tried etcd first: {}", run.stderr);
        // The usage shown is the verb's, as for the errors clap finds itself.
        assert!(run.stderr.contains(&format!("Usage: flotctl {verb}")), "{}", run.stderr);
    }
    let empty = s.flotctl(&["--endpoints", "", "list-units"]);
    assert_eq!(empty.code, 2, "{}", empty.stderr);
    assert!(empty.stderr.contains("an endpoint is empty"), "{}", empty.stderr);
    for (url, why) in [("ftp://127.0.0.1:1", "unknown scheme"), ("https://127.0.0.1:1", "https")] {
        let run = s.flotctl(&["--endpoints", url, "list-units"]);
        assert_eq!(run.code, 2, "{url}: {}", run.stderr);
        assert!(run.stderr.contains(why) && !run.stderr.contains("unreachable"), "{}", run.stderr);
    }
    for prefix in ["", "flotilla", "/"] {
        let run = s.flotctl(&["--endpoints", nowhere, "--prefix", prefix, "list-units"]);
        assert_eq!(run.code, 2, "--prefix {prefix:?}: {}", run.stderr);
        assert!(run.stderr.contains("a key prefix starts with '/'"), "{}", run.stderr);
    }
}

#[test]
fn journal_prints_a_units_last_lines_from_its_host_and_leaves_nothing_behind() {
    let s = scenario();
    let unit = "[Service]\nExecStart=/bin/sh -c 'for i in 1 2 3 4 5; do echo journal-line-$i; \
        done; exec sleep infinity'\n";
    let files = s.unit_files(&[("journal-test.service", unit)]);
    s.ok(&["start", &files[0]]);
    let host = s.active_on("journal-test.service")[0];
    let journal = s.wait_for("the unit's lines in its journal", Duration::from_secs(10), || {
        let run = s.flotctl(&["journal", "--lines", "3", "journal-test.service"]);
        (run.code == 0 && run.stdout.contains("journal-line-5")).then_some(run.stdout)
    });
    // The last three lines: two of the echoes and systemd's or the shell's last word.
    assert!(!journal.contains("journal-line-1"), "more than 3 lines: {journal}");
    assert!(journal.lines().count() <= 3, "more than 3 lines: {journal}");
    let local = s.host(host, &["journalctl", "-u", "journal-test.service", "--no-pager"]);
    assert!(local.contains("journal-line-5"), "the host's own journal differs: {local}");

    let nowhere = s.flotctl(&["journal", "no-such.service"]);
    assert_eq!(nowhere.code, 1, "{}", nowhere.stderr);
    assert!(nowhere.stderr.contains("unit no-such.service does not exist"), "{}", nowhere.stderr);
    s.ok(&["stop", "journal-test.service"]);
    s.ok(&["unload", "journal-test.service"]);
    let unplaced = s.flotctl(&["journal", "journal-test.service"]);
    assert_eq!(unplaced.code, 1, "{}", unplaced.stderr);
    assert!(unplaced.stderr.contains("is not placed on any host"), "{}", unplaced.stderr);
    let bad = s.flotctl(&["journal", "--lines", "0", "journal-test.service"]);
    assert_eq!(bad.code, 2, "{}", bad.stderr);

    // Requests and answers go with flotctl's lease.
    let left = s.etcd_keys("/flotilla/journal/");
    assert!(left.is_empty(), "journal keys left behind: {left:?}");
    s.ok(&["destroy", "journal-test.service"]);
}

/// How many `journalctl --follow` processes run on `host` for `unit`.
fn journal_followers(s: &common::Scenario, host: &str, unit: &str) -> usize {
    // The bracket keeps this script's own command line from matching.
    let script = format!(
        "cat /proc/[0-9]*/cmdline 2>/dev/null | tr '\\0' ' ' | tr '\\n' ' ' | \
         grep -o '[j]ournalctl[^/]*--follow[^/]*--unit={unit}' | wc -l"
    );
    s.host(host, &["sh", "-c", &script]).parse().unwrap()
}

#[test]
fn journal_follow_prints_new_lines_until_stopped_and_the_host_stops_with_it() {
    let s = scenario();
    let unit = "[Service]\nExecStart=/bin/sh -c 'i=0; while true; do i=$((i+1)); \
        echo follow-line-$i; sleep 0.2; done'\n";
    let files = s.unit_files(&[("follow-test.service", unit)]);
    s.ok(&["start", &files[0]]);
    let host = s.active_on("follow-test.service")[0];

    for signal in ["-INT", "-KILL"] {
        let (mut child, lines) = s.follow_journal("follow-test.service", "1");
        // Lines written after the follow began keep coming, in order.
        let numbers = s.numbered_lines(&lines, "follow-line-", 4);
        assert!(numbers.windows(2).all(|w| w[1] > w[0]), "lines out of order: {numbers:?}");
        assert_eq!(journal_followers(&s, host, "follow-test.service"), 1);

        let pid = child.id().to_string();
        assert!(
            std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success()
        );
        let status = child.wait().unwrap();
        if signal == "-INT" {
            assert!(status.success(), "flotctl journal -f ended with {status} on SIGINT");
        }
        // Revoked at once on SIGINT; after SIGKILL the lease runs out.
        s.wait_for("the host's journalctl gone", Duration::from_secs(20), || {
            (journal_followers(&s, host, "follow-test.service") == 0).then_some(())
        });
        s.wait_for("the journal keys gone", Duration::from_secs(10), || {
            s.etcd_keys("/flotilla/journal/").is_empty().then_some(())
        });
    }

    // With no old lines, the first line printed is newer than the last one already written.
    let refused = s.flotctl(&["journal", "-n", "0", "follow-test.service"]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("--follow"), "{}", refused.stderr);
    let before = s.ok(&["journal", "-n", "1", "follow-test.service"]);
    let before: u64 = before.rsplit("follow-line-").next().unwrap().trim().parse().unwrap();
    let (mut child, lines) = s.follow_journal("follow-test.service", "0");
    let first = s.numbered_lines(&lines, "follow-line-", 1)[0];
    assert!(first > before, "an old line was printed: {first} after {before}");
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    s.ok(&["destroy", "follow-test.service"]);
}

#[test]
fn journal_follow_ends_with_an_error_when_the_host_lets_the_unit_go() {
    let s = scenario();
    let unit =
        "[Service]\nExecStart=/bin/sh -c 'while true; do echo still-here; sleep 0.2; done'\n";
    let files = s.unit_files(&[("follow-gone.service", unit)]);
    s.ok(&["start", &files[0]]);
    let host = s.active_on("follow-gone.service")[0];
    let label = s.machine_id(host)[..8].to_string();

    let mut child = s
        .flotctl_command(&["journal", "-f", "-n", "0", "follow-gone.service"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn flotctl journal -f");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut line).unwrap();
    assert!(line.contains("still-here"), "first line: {line:?}");

    // Unloaded, the unit has no host: the follow says so instead of going quiet.
    s.ok(&["unload", "follow-gone.service"]);
    let status = s.wait_for("flotctl journal -f to end", Duration::from_secs(15), || {
        child.try_wait().unwrap()
    });
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("no longer runs it"), "{stderr}");
    assert!(stderr.contains(&label), "the host is not named: {stderr}");
    s.wait_for("the host's journalctl gone", Duration::from_secs(20), || {
        (journal_followers(&s, host, "follow-gone.service") == 0).then_some(())
    });
    s.ok(&["destroy", "follow-gone.service"]);
}

#[test]
fn a_unit_name_of_255_bytes_runs_and_destroy_refuses_a_path_to_nothing() {
    let s = scenario();
    let long = format!("{}.service", "a".repeat(247));
    assert_eq!(long.len(), 255);
    let files = s.unit_files(&[(long.as_str(), "[Service]\nExecStart=/bin/sleep infinity\n")]);
    s.ok(&["start", &files[0]]);
    assert_eq!(s.active_on(&long).len(), 1, "{long} is not active on one host");

    // Only the last part of this path matches a unit; nothing is there, so nothing is destroyed.
    let nowhere = format!("/nonexistent/{long}");
    let run = s.flotctl(&["destroy", &nowhere]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("no such file"), "{}", run.stderr);
    assert_eq!(s.active_on(&long).len(), 1, "a path to nothing destroyed {long}");

    s.ok(&["destroy", &files[0]]);
    assert!(s.active_on(&long).is_empty(), "{long} is still active");
}

#[test]
fn stopping_or_unloading_an_instance_never_made_is_refused_and_stores_nothing() {
    let s = scenario();
    s.cleanup(&["ghost@*"]);
    let files = s.unit_files(&[("ghost@.service", SLEEPER)]);
    s.ok(&["submit", &files[0]]);
    for verb in ["stop", "unload", "restart"] {
        let run = s.flotctl(&[verb, "ghost@7.service"]);
        assert_eq!(run.code, 1, "{verb}: {}", run.stderr);
        assert!(
            run.stderr.contains("unit ghost@7.service does not exist"),
            "{verb}: {}",
            run.stderr
        );
    }
    // A path to an instance with no file of its own names the instance too.
    let path = files[0].replace("ghost@.", "ghost@8.");
    for verb in ["stop", "unload"] {
        let run = s.flotctl(&[verb, &path]);
        assert_eq!(run.code, 1, "{verb}: {}", run.stderr);
        assert!(
            run.stderr.contains("unit ghost@8.service does not exist"),
            "{verb}: {}",
            run.stderr
        );
    }
    let listing = s.ok(&["list-unit-files", "--no-legend"]);
    assert!(!listing.contains("ghost@7") && !listing.contains("ghost@8"), "stored:\n{listing}");
    s.ok(&["destroy", "ghost@.service"]);
}

#[test]
fn list_unit_files_json_has_the_same_keys_whatever_the_cluster_holds() {
    let s = scenario();
    s.cleanup(&["plain.service"]);
    let files = s.unit_files(&[("plain.service", SLEEPER)]);
    s.ok(&["submit", &files[0]]);
    // No container unit and nothing unplaceable among these: the optional fields are null,
    // not absent, so a script reads the same keys on every cluster.
    let json = s.ok(&["list-unit-files", "-o", "json"]);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let plain = rows.as_array().unwrap().iter().find(|r| r["unit"] == "plain.service").unwrap();
    for key in ["unit", "hash", "dstate", "state", "target", "images", "reason"] {
        assert!(plain.get(key).is_some(), "no {key:?} in {plain}");
    }
    assert!(plain["reason"].is_null() && plain["images"].is_null(), "{plain}");
    s.ok(&["destroy", "plain.service"]);
}

#[test]
fn a_start_systemd_refuses_fails_with_the_reason_instead_of_timing_out() {
    let s = scenario();
    s.cleanup(&["needy.service"]);
    let needy = "[Unit]\nRequires=flotilla-absent.service\nAfter=flotilla-absent.service\n\n\
        [Service]\nExecStart=/bin/sleep infinity\n";
    let files = s.unit_files(&[("needy.service", needy)]);
    let run = s.flotctl(&["start", &files[0], "--timeout", "60s"]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(!run.stderr.contains("timed out"), "{}", run.stderr);
    assert!(run.stderr.contains("unit needy.service could not be started"), "{}", run.stderr);
    assert!(run.stderr.contains("flotilla-absent.service"), "no reason given: {}", run.stderr);
    // The unit stays launched and is still retried.
    let status = s.ok(&["status", "needy.service"]);
    assert!(status.contains("launched"), "{status}");
    s.ok(&["destroy", "needy.service"]);
}

#[test]
fn stopping_or_unloading_a_template_named_outright_is_refused() {
    let s = scenario();
    let files = s.unit_files(&[("tmpl@.service", "[Service]\nExecStart=/bin/sleep infinity\n")]);
    s.ok(&["submit", &files[0]]);
    for verb in ["stop", "unload"] {
        let run = s.flotctl(&[verb, "tmpl@.service"]);
        assert_eq!(run.code, 1, "{verb}: {}", run.stderr);
        assert!(run.stderr.contains("tmpl@.service is a template"), "{verb}: {}", run.stderr);
        assert!(run.stderr.contains("tmpl@1.service"), "{verb} gives no example: {}", run.stderr);
    }
    s.ok(&["destroy", "tmpl@.service"]);
}

#[test]
fn every_bad_file_is_named_before_etcd_is_asked_and_none_is_stored() {
    let s = scenario();
    let files = s.unit_files(&[
        ("bad-one.service", "junk\n"),
        ("bad-two.service", "[Service]\nExecStart=/bin/true\n[X-Fleet]\nBogus=1\n"),
        ("good-one.service", "[Service]\nExecStart=/bin/true\n"),
    ]);
    let nowhere = "http://127.0.0.1:9";
    let mut args = vec!["--endpoints", nowhere, "submit"];
    args.extend(files.iter().map(String::as_str));
    let run = s.flotctl(&args);
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(run.stderr.contains("2 unit files are refused"), "{}", run.stderr);
    assert!(run.stderr.contains("bad-one.service: line 1"), "{}", run.stderr);
    assert!(run.stderr.contains("bad-two.service: line 4"), "{}", run.stderr);
    assert!(!run.stderr.contains("unreachable"), "etcd was asked first: {}", run.stderr);

    // Against the cluster: nothing of the three is stored.
    let mut args = vec!["start"];
    args.extend(files.iter().map(String::as_str));
    assert_eq!(s.flotctl(&args).code, 1);
    let stored = s.ok(&["list-unit-files", "--no-legend", "--fields", "unit"]);
    assert!(!stored.contains("good-one.service"), "a file was stored: {stored}");
}
