//! Faults injected into the real topology: a partitioned host, a dead etcd leader, a lost
//! quorum, a flotd left dead past its TTL, and hosts restarted while units come and go. After
//! each, every launched unit runs on exactly one host, and never on two at the same moment.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{HOSTS, Scenario, TTL, scenario};

const SLEEPER: &str = "[Service]\nExecStart=/bin/sleep infinity\n";

fn ip_of(host: &str) -> &'static str {
    match host {
        "flotilla-host1" => "172.31.90.21",
        "flotilla-host2" => "172.31.90.22",
        _ => "172.31.90.23",
    }
}

/// On which hosts each of `units` runs right now, as systemd (for services) or the host's Docker
/// engine (for containers) says; the three hosts are asked side by side.
fn running_on(units: &[&str]) -> BTreeMap<String, Vec<&'static str>> {
    let asks: Vec<_> = HOSTS
        .into_iter()
        .map(|host| {
            let units: Vec<String> = units.iter().map(|u| u.to_string()).collect();
            thread::spawn(move || {
                let mut found = Vec::new();
                let services: Vec<&String> =
                    units.iter().filter(|u| !u.ends_with(".container")).collect();
                if !services.is_empty() {
                    let mut cmd = std::process::Command::new("docker");
                    cmd.args(["exec", host, "systemctl", "is-active"]).args(&services);
                    if let Ok(out) = cmd.output() {
                        let states = String::from_utf8_lossy(&out.stdout).into_owned();
                        for (unit, state) in services.iter().zip(states.lines()) {
                            if state == "active" {
                                found.push((*unit).clone());
                            }
                        }
                    }
                }
                if units.iter().any(|u| u.ends_with(".container")) {
                    let format = "{{.Label \"flotilla.unit\"}}";
                    let out = std::process::Command::new("docker")
                        .args(["exec", host, "docker", "ps", "--format", format])
                        .output();
                    if let Ok(out) = out {
                        let listed = String::from_utf8_lossy(&out.stdout).into_owned();
                        found.extend(
                            listed
                                .lines()
                                .filter(|l| units.iter().any(|u| u == l))
                                .map(String::from),
                        );
                    }
                }
                (host, found)
            })
        })
        .collect();
    let mut on: BTreeMap<String, Vec<&'static str>> =
        units.iter().map(|u| (u.to_string(), Vec::new())).collect();
    for ask in asks {
        let (host, found) = ask.join().unwrap();
        for unit in found {
            on.entry(unit).or_default().push(host);
        }
    }
    on
}

/// Samples where `units` run every 200 ms until dropped; keeps the samples that saw a unit on
/// two hosts at once.
struct Sampler {
    stop: Arc<AtomicBool>,
    worker: Option<thread::JoinHandle<(usize, Vec<String>)>>,
}

impl Sampler {
    fn start(units: &[&'static str]) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let units = units.to_vec();
        let flag = stop.clone();
        let worker = thread::spawn(move || {
            let (mut samples, mut doubles) = (0, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let at = Instant::now();
                for (unit, hosts) in running_on(&units) {
                    if hosts.len() > 1 {
                        doubles.push(format!("{unit} on {hosts:?}"));
                    }
                }
                samples += 1;
                thread::sleep(Duration::from_millis(200).saturating_sub(at.elapsed()));
            }
            (samples, doubles)
        });
        Sampler { stop, worker: Some(worker) }
    }

    /// How many samples were taken, and the ones that saw two copies.
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        self.worker.take().unwrap().join().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Runs `fault`, then always `heal`, then re-raises a panic from `fault`.
fn with_fault(fault: impl FnOnce(), heal: impl FnOnce()) {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(fault));
    heal();
    if let Err(panic) = outcome {
        std::panic::resume_unwind(panic);
    }
}

/// Waits until each unit runs on exactly one host, as both the hosts and flotctl say.
fn wait_running_once(s: &Scenario, units: &[&str], timeout: Duration) {
    s.wait_for("every unit running exactly once", timeout, || {
        let on = running_on(units);
        let hosts_agree = on.values().all(|hosts| hosts.len() == 1);
        let listed = units.iter().all(|u| s.active_on(u).len() == 1);
        (hosts_agree && listed).then_some(())
    });
}

fn etcd(s: &Scenario, member: usize, verb: &str) {
    s.docker(&[verb, &format!("flotilla-etcd{member}")]);
}

/// Waits until every etcd member answers and the cluster has a leader.
fn wait_etcd_healthy(s: &Scenario) {
    // Each probe connects to one member alone, so that a dead one cannot hide behind the others.
    s.wait_for("etcd healthy", Duration::from_secs(60), || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            for port in [23791, 23792, 23793] {
                let endpoint = format!("http://127.0.0.1:{port}");
                let options = etcd_client::ConnectOptions::new()
                    .with_connect_timeout(Duration::from_secs(1))
                    .with_timeout(Duration::from_secs(1));
                let mut client =
                    etcd_client::Client::connect([endpoint], Some(options)).await.ok()?;
                client.get("health-probe", None).await.ok()?;
            }
            Some(())
        })
    });
}

/// The etcd member (1 to 3) that leads the cluster now.
fn etcd_leader() -> usize {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        for (index, port) in [23791, 23792, 23793].into_iter().enumerate() {
            let endpoint = format!("http://127.0.0.1:{port}");
            let Ok(mut client) = etcd_client::Client::connect([endpoint], None).await else {
                continue;
            };
            let Ok(status) = client.status().await else { continue };
            let member = status.header().map(|h| h.member_id());
            if member == Some(status.leader()) {
                return index + 1;
            }
        }
        panic!("no etcd member says it leads");
    })
}

/// The units' keys and desired states, which no fault may lose.
fn stored(s: &Scenario) -> BTreeMap<String, String> {
    let keep =
        |k: &String| k.starts_with("/flotilla/units/") || k.starts_with("/flotilla/desired/");
    s.etcd_dump().into_iter().filter(|(k, _)| keep(k)).collect()
}

#[test]
fn a_partitioned_host_never_runs_a_unit_twice_and_keeps_its_global_units() {
    let s = scenario();
    let container = "[Container]\nImage=172.31.90.30:5000/flotilla/workload:latest\n\
        Exec=sleep 1000000\n\n[X-Fleet]\nMachineOf=part.service\n";
    let global = format!("{SLEEPER}\n[X-Fleet]\nGlobal=true\n");
    let unfenced = format!("{SLEEPER}\n[X-Fleet]\nMachineOf=part.service\nFencing=false\n");
    let files = s.unit_files(&[
        ("part.service", SLEEPER),
        ("part.container", container),
        ("part-global.service", &global),
        ("part-unfenced.service", &unfenced),
    ]);
    let paths: Vec<&str> = files.iter().map(String::as_str).collect();
    s.ok(&[&["start"][..], &paths].concat());
    let victim = s.active_on("part.service")[0];
    let global_pid = s.systemd_state(victim, "part-global.service").1;
    let unfenced_pid = s.systemd_state(victim, "part-unfenced.service").1;
    let fenced = ["part.service", "part.container"];

    let sampler = Sampler::start(&fenced);
    let cut = Instant::now();
    with_fault(
        || {
            s.docker(&["network", "disconnect", "flotilla-net", victim]);
            s.wait_for(
                "the fenced units stopped on the cut-off host",
                TTL + Duration::from_secs(2),
                || running_on(&fenced).values().all(|hosts| !hosts.contains(&victim)).then_some(()),
            );
            eprintln!("fenced after {:?}", cut.elapsed());
            s.wait_for("the units on a survivor", TTL * 2 + Duration::from_secs(5), || {
                let on = running_on(&fenced);
                on.values().all(|hosts| hosts.len() == 1 && hosts[0] != victim).then_some(())
            });
            eprintln!("running elsewhere after {:?}", cut.elapsed());
            thread::sleep((TTL * 3).saturating_sub(cut.elapsed()));
            // Cut off, the host kept what fencing spares.
            assert_eq!(
                s.systemd_state(victim, "part-global.service"),
                ("active".into(), global_pid)
            );
            let unfenced_now = s.systemd_state(victim, "part-unfenced.service");
            assert_eq!(unfenced_now, ("active".into(), unfenced_pid));
        },
        || {
            let ip = ip_of(victim);
            s.docker(&["network", "connect", "--ip", ip, "flotilla-net", victim]);
        },
    );
    s.ensure_host_up(victim);
    s.wait_for("three machines", Duration::from_secs(30), || {
        (s.machines().len() == 3).then_some(())
    });
    wait_running_once(&s, &["part.service", "part.container", "part-unfenced.service"], TTL * 4);
    let (samples, doubles) = sampler.finish();
    assert!(samples > 3 * TTL.as_secs() as usize, "only {samples} samples");
    assert_eq!(doubles, Vec::<String>::new(), "two copies at once in {samples} samples");
    // The global unit was never stopped, and runs on every host again.
    assert_eq!(s.systemd_state(victim, "part-global.service"), ("active".into(), global_pid));
    s.wait_for("the global unit listed on every host", TTL * 2, || {
        (s.active_on("part-global.service").len() == 3).then_some(())
    });
    s.ok(&["destroy", "part*"]);
}

#[test]
fn killing_the_etcd_leader_restarts_no_unit() {
    let s = scenario();
    let files = s.unit_files(&[("leader@.service", SLEEPER)]);
    s.ok(&["submit", &files[0]]);
    let units = ["leader@1.service", "leader@2.service", "leader@3.service", "leader@4.service"];
    s.ok(&[&["start"][..], &units].concat());
    let pids = |s: &Scenario| -> Vec<(String, &'static str, u32)> {
        units
            .iter()
            .map(|u| {
                let host = s.active_on(u)[0];
                (u.to_string(), host, s.systemd_state(host, u).1)
            })
            .collect()
    };
    let before = pids(&s);
    let leader = etcd_leader();
    with_fault(
        || {
            etcd(&s, leader, "kill");
            thread::sleep(TTL * 2);
            s.ok(&["list-units"]);
            assert_eq!(pids(&s), before, "a unit moved or restarted");
        },
        || etcd(&s, leader, "start"),
    );
    wait_etcd_healthy(&s);
    assert_eq!(pids(&s), before, "a unit moved or restarted");
    s.ok(&["destroy", "leader@*"]);
}

#[test]
fn two_etcd_members_down_for_thirty_seconds_lose_nothing() {
    let s = scenario();
    let files = s.unit_files(&[
        ("quorum-loss@.service", SLEEPER),
        ("quorum-global.service", &format!("{SLEEPER}\n[X-Fleet]\nGlobal=true\n")),
    ]);
    s.ok(&["submit", &files[0]]);
    let units = ["quorum-loss@1.service", "quorum-loss@2.service", "quorum-loss@3.service"];
    s.ok(&[&["start"][..], &units, &[files[1].as_str()]].concat());
    let before = stored(&s);

    with_fault(
        || {
            etcd(&s, 2, "stop");
            etcd(&s, 3, "stop");
            thread::sleep(Duration::from_secs(30));
        },
        || {
            etcd(&s, 2, "start");
            etcd(&s, 3, "start");
        },
    );
    wait_etcd_healthy(&s);
    let back = Instant::now();
    for host in HOSTS {
        s.ensure_host_up(host);
    }
    wait_running_once(&s, &units, Duration::from_secs(60));
    s.wait_for("the global unit on every host", Duration::from_secs(30), || {
        (s.active_on("quorum-global.service").len() == 3).then_some(())
    });
    eprintln!("every unit running once {:?} after quorum returned", back.elapsed());
    assert_eq!(stored(&s), before, "the keyspace lost or changed unit records");
    s.ok(&["destroy", "quorum-*"]);
}

#[test]
fn a_flotd_dead_past_its_ttl_loses_its_units_and_its_stale_copies_go_when_it_returns() {
    let s = scenario();
    let files = s.unit_files(&[("orphaned.service", SLEEPER)]);
    s.ok(&["start", &files[0]]);
    let victim = s.active_on("orphaned.service")[0];
    let dropin = "/run/systemd/system/flotd.service.d";
    with_fault(
        || {
            // Keep systemd from restarting it, so that flotd stays dead.
            s.host(victim, &["mkdir", "-p", dropin]);
            let conf = format!("printf '[Service]\\nRestart=no\\n' > {dropin}/no-restart.conf");
            s.host(victim, &["sh", "-c", &conf]);
            s.host(victim, &["systemctl", "daemon-reload"]);
            s.host(victim, &["systemctl", "kill", "-s", "KILL", "flotd"]);
            s.wait_for("the unit on a survivor", TTL * 2 + Duration::from_secs(5), || {
                let on = s.active_on("orphaned.service");
                (on.len() == 1 && on[0] != victim).then_some(())
            });
        },
        || {
            s.host(victim, &["rm", "-rf", dropin]);
            s.host(victim, &["systemctl", "daemon-reload"]);
            s.host(victim, &["systemctl", "start", "flotd"]);
        },
    );
    s.wait_for("the stale copy gone", Duration::from_secs(30), || {
        s.traces_on(victim, "orphaned.service").is_empty().then_some(())
    });
    wait_running_once(&s, &["orphaned.service"], Duration::from_secs(10));
    s.ok(&["destroy", "orphaned.service"]);
}

#[test]
fn hosts_restarted_again_and_again_while_units_come_and_go_leave_each_unit_once() {
    let s = scenario();
    let files = s.unit_files(&[("churn@.service", SLEEPER)]);
    s.ok(&["submit", &files[0]]);
    let names: Vec<String> = (1..=8).map(|i| format!("churn@{i}.service")).collect();
    let churn = {
        let names = names.clone();
        thread::spawn(move || {
            // A second handle on the cluster: flotctl only, no host commands.
            let run = |args: &[&str]| {
                std::process::Command::new(common::root().join("target/release/flotctl"))
                    .args(args)
                    .env("FLOTCTL_ENDPOINTS", common::ENDPOINTS)
                    .output()
                    .map(|o| o.status.success())
                    .unwrap_or(false)
            };
            let deadline = Instant::now() + Duration::from_secs(50);
            let mut round = 0;
            while Instant::now() < deadline {
                let name = &names[round % names.len()];
                let verb = if round / names.len() % 2 == 0 { "start" } else { "stop" };
                run(&[verb, "--no-block", name]);
                round += 1;
                thread::sleep(Duration::from_millis(300));
            }
        })
    };
    for (round, host) in
        ["flotilla-host2", "flotilla-host3", "flotilla-host2"].into_iter().enumerate()
    {
        match round % 2 {
            0 => s.docker(&["restart", "-t", "5", host]),
            _ => {
                s.docker(&["kill", host]);
                s.docker(&["start", host]);
            }
        }
        s.ensure_host_up(host);
    }
    churn.join().unwrap();
    for host in HOSTS {
        s.ensure_host_up(host);
    }
    // Whatever the churn left launched runs once; the rest runs nowhere.
    let launched: Vec<String> = names
        .iter()
        .filter(|n| {
            // A unit the churn never started does not exist, and status says so.
            let run = s.flotctl(&["status", n, "-o", "json"]);
            let status: serde_json::Value =
                serde_json::from_str(&run.stdout).unwrap_or(serde_json::Value::Null);
            status[n.as_str()]["dstate"] == "launched"
        })
        .cloned()
        .collect();
    let launched: Vec<&str> = launched.iter().map(String::as_str).collect();
    wait_running_once(&s, &launched, Duration::from_secs(60));
    let all: Vec<&str> = names.iter().map(String::as_str).collect();
    s.wait_for("stopped units running nowhere", Duration::from_secs(30), || {
        let on = running_on(&all);
        on.iter().all(|(u, hosts)| launched.contains(&u.as_str()) || hosts.is_empty()).then_some(())
    });
    s.ok(&["destroy", "churn@*"]);
}

/// Writes raw bytes at a key under the prefix, as a broken tool or a hand with etcdctl would.
fn put_raw(key: &str, value: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let endpoints: Vec<&str> = common::ENDPOINTS.split(',').collect();
        let mut client = etcd_client::Client::connect(endpoints, None).await.unwrap();
        client.put(format!("/flotilla/{key}"), value, None).await.unwrap();
    });
}

fn delete_raw(key: &str) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let endpoints: Vec<&str> = common::ENDPOINTS.split(',').collect();
        let mut client = etcd_client::Client::connect(endpoints, None).await.unwrap();
        client.delete(format!("/flotilla/{key}"), None).await.unwrap();
    });
}

#[test]
fn garbage_in_the_keyspace_is_skipped_by_every_agent() {
    let s = scenario();
    let flotd_pids: Vec<String> = HOSTS
        .iter()
        .map(|h| s.host(h, &["systemctl", "show", "-p", "MainPID", "--value", "flotd"]))
        .collect();
    let files = s.unit_files(&[
        ("garbage-ghost.service", SLEEPER),
        ("garbage-unleased.service", SLEEPER),
        ("garbage-fine.service", SLEEPER),
    ]);
    s.ok(&["submit", &files[0], &files[1]]);
    let nobody = "00000000000000000000000000000000";
    let real = s.machine_id("flotilla-host1");
    let garbage = [
        ("units/garbage-json.service".to_string(), "{not json".to_string()),
        ("desired/garbage-json.service".to_string(), r#"{"version":2,"state":"launched"}"#.into()),
        (format!("machines/{nobody}"), format!(r#"{{"version":1,"id":"{nobody}","extra":1}}"#)),
        (
            "claims/garbage-ghost.service".to_string(),
            format!(r#"{{"version":1,"machine":"{nobody}"}}"#),
        ),
        (
            "claims/garbage-unleased.service".to_string(),
            format!(r#"{{"version":1,"machine":"{real}"}}"#),
        ),
    ];
    for (key, value) in &garbage {
        put_raw(key, value);
    }
    with_fault(
        || {
            // Claims no live lease backs are dropped, and the units are placed for real.
            s.ok(&["start", "garbage-ghost.service", "garbage-unleased.service", &files[2]]);
            let units =
                ["garbage-ghost.service", "garbage-unleased.service", "garbage-fine.service"];
            wait_running_once(&s, &units, Duration::from_secs(20));
            s.ok(&["list-units"]);
            s.ok(&["list-unit-files"]);
            s.ok(&["list-machines"]);
        },
        || {
            for (key, _) in &garbage {
                delete_raw(key);
            }
        },
    );
    let now: Vec<String> = HOSTS
        .iter()
        .map(|h| s.host(h, &["systemctl", "show", "-p", "MainPID", "--value", "flotd"]))
        .collect();
    assert_eq!(now, flotd_pids, "an agent restarted");
    let logs = s.host("flotilla-host1", &["journalctl", "-u", "flotd", "--no-pager", "-n", "400"]);
    assert!(logs.contains("skipping bad record"), "no agent logged the bad records");
    s.ok(&["destroy", "garbage-*"]);
}
