//! Chaos rounds on the three-host cluster. Thirty units run while, round after round, a host is
//! killed or cut off from the network, an agent is killed, or etcd loses its leader, a member or
//! its quorum. Throughout, a sampler asks every host's own systemd and Docker what runs, and no
//! sample may show a unit on two hosts at once; after each fault is healed every unit must be
//! back, once, within a bound, with its keys intact.
//!
//! `CHAOS_ROUNDS` sets the number of rounds (default 2, so a plain `cargo test` runs a short
//! one), `CHAOS_SEED` the seed of the fault sequence (default from the clock; it is printed), and
//! `CHAOS_SECONDS` a time budget after which no new round starts (default 30 s per round plus
//! 120 s). Every round is written to `target/bench/chaos.csv`. `scripts/chaos ROUNDS` runs it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{ENDPOINTS, HOSTS, Scenario, TTL, scenario};

/// The hosts' addresses on the cluster network, in the order of `HOSTS`.
const HOST_IPS: [&str; 3] = ["172.31.90.21", "172.31.90.22", "172.31.90.23"];
/// The etcd members' containers, in the order of `ENDPOINTS`.
const ETCD: [&str; 3] = ["flotilla-etcd1", "flotilla-etcd2", "flotilla-etcd3"];
const REGISTRY: &str = "flotilla-registry";
const NETWORK: &str = "flotilla-net";

const SERVICE: &str = "[Service]\nExecStart=/bin/sleep infinity\n";
const CONTAINER: &str =
    "[Container]\nImage=172.31.90.30:5000/flotilla/workload:latest\nExec=sleep 1000000\n";
const GLOBAL: &str = "chaos-global.service";

/// How long a healed cluster may take until every rule holds again.
const RECOVERY_BOUND: Duration = Duration::from_secs(60);
/// How often the sampler looks at the hosts.
const SAMPLE_EVERY: Duration = Duration::from_millis(250);

/// One exec per host: the chaos units systemd knows, then the containers carrying a unit label.
const PROBE: &str = "systemctl list-units --all --plain --no-legend --no-pager 'chaos-*'; \
    echo '-- docker'; \
    docker ps --filter label=flotilla.unit --format '{{.Label \"flotilla.unit\"}}' 2>/dev/null";

#[test]
fn chaos_rounds_keep_every_unit_running_once() {
    let config = ChaosConfig::from_env();
    // The test harness has printed the test's name without a line break.
    println!();
    println!(
        "chaos: {} rounds, seed {} (CHAOS_SEED={} repeats the faults), budget {} s",
        config.rounds,
        config.seed,
        config.seed,
        config.budget.as_secs()
    );
    let started = Instant::now();
    let s = scenario();
    // Declared after the scenario and before the sampler, so it heals after the sampler stops
    // and before the scenario prints the agents' logs of a failure.
    let _healer = Healer;

    let units = launch(&s);
    let ids: BTreeMap<String, &'static str> =
        HOSTS.into_iter().map(|host| (s.machine_id(host), host)).collect();
    let keys_before = unit_keys(&s.etcd_dump());
    let baseline = await_recovery(&s, &units, &ids, &keys_before);
    assert!(baseline.took.is_some(), "the units never ran once each: {:?}", baseline.problems);

    let sampler = Sampler::start();
    let mut rng = Rng(config.seed);
    let mut deck = Vec::new();
    let mut rounds: Vec<RoundResult> = Vec::new();
    for round in 1..=config.rounds {
        if round > 1 && out_of_budget(&config, started, &rounds) {
            println!("time budget of {} s used up: stopping", config.budget.as_secs());
            break;
        }
        sampler.round.store(round, Ordering::SeqCst);
        let round_started = Instant::now();
        let fault = inject(&s, draw(&mut deck, &mut rng), &mut rng);

        let recovery = await_recovery(&s, &units, &ids, &keys_before);
        let lost = if recovery.took.is_some() { 0 } else { recovery.failing.len() };
        let took = round_started.elapsed();
        let double_runs = sampler.double_runs_in(round);
        let result = RoundResult {
            round,
            fault,
            recovery: recovery.took,
            lost,
            double_runs: double_runs.len(),
            took,
        };
        println!("{}", result.progress_line());
        // The evidence is taken now, while the agents' logs of this round are recent.
        if !double_runs.is_empty() {
            print_double_runs(&double_runs);
            print_journals();
        }
        if lost > 0 {
            println!("round {round}: not recovered after {RECOVERY_BOUND:?}:");
            for problem in &recovery.problems {
                println!("  {problem}");
            }
            print_journals();
        }
        rounds.push(result);
        if lost > 0 {
            // The cluster no longer starts from the state the rules describe.
            break;
        }
    }
    // A copy that comes back late would only show after the last recovery.
    thread::sleep(TTL);
    let (double_runs, n_samples) = sampler.finish();
    let mut late = Vec::new();
    for result in &mut rounds {
        let in_round: Vec<&DoubleRun> =
            double_runs.iter().filter(|d| d.round == result.round).collect();
        late.extend(in_round[result.double_runs..].iter().map(|d| (*d).clone()));
        result.double_runs = in_round.len();
    }
    if !late.is_empty() {
        println!("double runs seen after their round had recovered:");
        print_double_runs(&late);
        print_journals();
    }

    print_report(&config, &rounds, n_samples);
    write_csv(&rounds);
    let lost: usize = rounds.iter().map(|r| r.lost).sum();
    assert_eq!(lost, 0, "units were lost");
    assert!(double_runs.is_empty(), "{} samples saw a unit on two hosts", double_runs.len());

    s.ok(&["destroy", "chaos-*"]);
    for host in HOSTS {
        s.ensure_host_up(host);
    }
    s.wait_for("three machines registered", Duration::from_secs(60), || {
        (s.machines().len() == 3).then_some(())
    });
    s.wait_for("etcd healthy", Duration::from_secs(60), || etcd_healthy().then_some(()));
}

/// The run's settings, from the environment.
struct ChaosConfig {
    rounds: usize,
    seed: u64,
    budget: Duration,
}

impl ChaosConfig {
    fn from_env() -> ChaosConfig {
        let number = |name: &str| -> Option<u64> {
            let value = std::env::var(name).ok()?;
            Some(value.trim().parse().unwrap_or_else(|_| panic!("{name}={value} is not a number")))
        };
        let rounds = number("CHAOS_ROUNDS").unwrap_or(2) as usize;
        assert!(rounds > 0, "CHAOS_ROUNDS must be at least 1");
        let seed = number("CHAOS_SEED").unwrap_or_else(|| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            now.as_nanos() as u64
        });
        let budget = number("CHAOS_SECONDS").unwrap_or(30 * rounds as u64 + 120);
        ChaosConfig { rounds, seed, budget: Duration::from_secs(budget) }
    }
}

/// Whether the next round, if it lasts as long as the rounds so far did on average, would end
/// past the time budget.
fn out_of_budget(config: &ChaosConfig, started: Instant, rounds: &[RoundResult]) -> bool {
    let total: Duration = rounds.iter().map(|r| r.took).sum();
    let mean = total / rounds.len().max(1) as u32;
    started.elapsed() + mean > config.budget
}

/// splitmix64: enough randomness to pick faults, and a failing run can be replayed from its
/// seed without a crate for it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    /// A duration in `low..=high`, to the millisecond.
    fn between(&mut self, low: Duration, high: Duration) -> Duration {
        let span = (high - low).as_millis() as usize;
        low + Duration::from_millis(self.below(span + 1) as u64)
    }
}

/// The kinds of fault, one per round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `docker kill` a host, `docker start` it 0-8 s later.
    KillHost,
    /// Take a host off the network for one to three TTLs.
    Partition,
    /// `kill -9` flotd on a host; systemd starts it again.
    KillFlotd,
    /// `docker kill` the etcd leader, start it a few seconds later.
    KillEtcdLeader,
    /// Stop one etcd member for 5-15 s.
    StopEtcdMember,
    /// Stop two etcd members, so the cluster loses quorum, for 10-20 s.
    StopEtcdQuorum,
}

const KINDS: [Kind; 6] = [
    Kind::KillHost,
    Kind::Partition,
    Kind::KillFlotd,
    Kind::KillEtcdLeader,
    Kind::StopEtcdMember,
    Kind::StopEtcdQuorum,
];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::KillHost => "kill-host",
            Kind::Partition => "partition-host",
            Kind::KillFlotd => "kill-flotd",
            Kind::KillEtcdLeader => "kill-etcd-leader",
            Kind::StopEtcdMember => "stop-etcd-member",
            Kind::StopEtcdQuorum => "stop-etcd-quorum",
        }
    }
}

/// The next fault kind. Kinds are dealt from a shuffled deck of all six, so that every six
/// rounds try each kind once, in an order the seed decides.
fn draw(deck: &mut Vec<Kind>, rng: &mut Rng) -> Kind {
    if deck.is_empty() {
        deck.extend(KINDS);
        for i in (1..deck.len()).rev() {
            let j = rng.below(i + 1);
            deck.swap(i, j);
        }
    }
    deck.pop().expect("a refilled deck")
}

/// A fault as it was injected: what, where, and how long it lasted before it was healed.
struct Fault {
    kind: Kind,
    target: String,
    held: Duration,
}

/// Injects one fault of `kind`, keeps it for its random duration and heals it. The sampler
/// watches the hosts meanwhile; a panic here leaves the healing to `Healer`.
fn inject(s: &Scenario, kind: Kind, rng: &mut Rng) -> Fault {
    let host_idx = rng.below(HOSTS.len());
    let host = HOSTS[host_idx];
    let begun = Instant::now();
    let target = match kind {
        Kind::KillHost => {
            let down = rng.between(Duration::ZERO, Duration::from_secs(8));
            s.docker(&["kill", host]);
            thread::sleep(down);
            s.docker(&["start", host]);
            host.to_string()
        }
        Kind::Partition => {
            let cut = rng.between(TTL, TTL * 3);
            s.docker(&["network", "disconnect", NETWORK, host]);
            thread::sleep(cut);
            s.docker(&["network", "connect", "--ip", HOST_IPS[host_idx], NETWORK, host]);
            host.to_string()
        }
        Kind::KillFlotd => {
            s.kill_flotd(host);
            host.to_string()
        }
        Kind::KillEtcdLeader => {
            let leader = s.wait_for("an etcd leader", Duration::from_secs(30), etcd_leader);
            let down = rng.between(Duration::from_secs(2), Duration::from_secs(5));
            s.docker(&["kill", ETCD[leader]]);
            thread::sleep(down);
            s.docker(&["start", ETCD[leader]]);
            ETCD[leader].to_string()
        }
        Kind::StopEtcdMember => {
            let member = rng.below(ETCD.len());
            let down = rng.between(Duration::from_secs(5), Duration::from_secs(15));
            s.docker(&["stop", ETCD[member]]);
            thread::sleep(down);
            s.docker(&["start", ETCD[member]]);
            ETCD[member].to_string()
        }
        Kind::StopEtcdQuorum => {
            let first = rng.below(ETCD.len());
            let second = (first + 1 + rng.below(2)) % ETCD.len();
            let down = rng.between(Duration::from_secs(10), Duration::from_secs(20));
            s.docker(&["stop", ETCD[first], ETCD[second]]);
            thread::sleep(down);
            s.docker(&["start", ETCD[first], ETCD[second]]);
            format!("{}+{}", ETCD[first], ETCD[second])
        }
    };
    Fault { kind, target, held: begun.elapsed() }
}

/// Submits and starts the thirty chaos units and returns their names: plain services, a few
/// bound to `region=east`, one global unit and three containers.
fn launch(s: &Scenario) -> Vec<String> {
    s.cleanup(&["chaos-*"]);
    let east = format!("{SERVICE}\n[X-Fleet]\nMachineMetadata=region=east\n");
    let global = format!("{SERVICE}\n[X-Fleet]\nGlobal=true\n");
    let files = s.unit_files(&[
        ("chaos-svc@.service", SERVICE),
        ("chaos-east@.service", &east),
        (GLOBAL, &global),
        ("chaos-box1.container", CONTAINER),
        ("chaos-box2.container", CONTAINER),
        ("chaos-box3.container", CONTAINER),
    ]);
    s.ok(&["submit", &files[0], &files[1]]);

    let mut units: Vec<String> = (1..=23).map(|i| format!("chaos-svc@{i}.service")).collect();
    units.extend((1..=3).map(|i| format!("chaos-east@{i}.service")));
    units.push(GLOBAL.to_string());
    units.extend((1..=3).map(|i| format!("chaos-box{i}.container")));

    let mut args = vec!["start", "--timeout", "120s"];
    args.extend(units.iter().filter(|u| u.contains('@')).map(String::as_str));
    args.extend(files[2..].iter().map(String::as_str));
    s.ok(&args);
    units
}

/// The `units/` and `desired/` keys: what the operator submitted, which no fault may touch.
fn unit_keys(dump: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    dump.iter()
        .filter(|(key, _)| {
            key.starts_with("/flotilla/units/") || key.starts_with("/flotilla/desired/")
        })
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// What the rules said after a fault was healed.
struct Recovery {
    /// From healing to the rules holding, if they came to hold within `RECOVERY_BOUND`.
    took: Option<Duration>,
    /// The units that broke a rule at the last look.
    failing: BTreeSet<String>,
    /// Why, in words.
    problems: Vec<String>,
}

/// Waits, within `RECOVERY_BOUND`, until the rules hold: etcd is healthy, the three machines
/// are registered, every non-global unit is active on exactly one host (by flotctl and by the
/// hosts themselves, the same one), the global unit on all of them, and the unit keys are as
/// they were before the first fault.
fn await_recovery(
    s: &Scenario,
    units: &[String],
    ids: &BTreeMap<String, &'static str>,
    keys_before: &BTreeMap<String, String>,
) -> Recovery {
    let healed = Instant::now();
    loop {
        let (failing, problems) = check_rules(s, units, ids, keys_before);
        if problems.is_empty() {
            return Recovery { took: Some(healed.elapsed()), failing, problems };
        }
        if healed.elapsed() > RECOVERY_BOUND {
            return Recovery { took: None, failing, problems };
        }
        thread::sleep(Duration::from_millis(300));
    }
}

/// One look at the rules: the units that break one, and every broken rule in words.
fn check_rules(
    s: &Scenario,
    units: &[String],
    ids: &BTreeMap<String, &'static str>,
    keys_before: &BTreeMap<String, String>,
) -> (BTreeSet<String>, Vec<String>) {
    let mut failing = BTreeSet::new();
    let mut problems = Vec::new();
    if !etcd_healthy() {
        problems.push("etcd is not healthy".to_string());
        failing.extend(units.iter().cloned());
        return (failing, problems);
    }
    let registered: BTreeSet<&str> =
        s.machines().iter().filter_map(|id| ids.get(id).copied()).collect();
    if registered.len() != HOSTS.len() {
        problems.push(format!("registered machines: {registered:?}"));
    }

    let mut reported: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for (unit, machine, active, _) in s.units() {
        if let (Some(host), "active") = (ids.get(&machine), active.as_str()) {
            reported.entry(unit).or_default().insert(host);
        }
    }
    let seen = sample_hosts();
    let everywhere: BTreeSet<&str> = HOSTS.into_iter().collect();
    for unit in units {
        let by_flotctl = reported.get(unit).cloned().unwrap_or_default();
        let by_hosts = seen.get(unit).cloned().unwrap_or_default();
        let holds = match unit.as_str() {
            GLOBAL => by_flotctl == everywhere && by_hosts == everywhere,
            _ => by_flotctl.len() == 1 && by_flotctl == by_hosts,
        };
        if !holds {
            failing.insert(unit.clone());
            problems.push(format!("{unit}: flotctl says {by_flotctl:?}, hosts say {by_hosts:?}"));
        }
    }

    // A dump can fail in the moment etcd elects a leader; the next look tries again.
    let dump = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| s.etcd_dump()));
    let Ok(dump) = dump else {
        problems.push("could not read the keyspace".to_string());
        return (failing, problems);
    };
    let keys_now = unit_keys(&dump);
    for key in keys_before.keys().chain(keys_now.keys()) {
        if keys_before.get(key) != keys_now.get(key) {
            failing.insert(key.rsplit('/').next().unwrap_or(key).to_string());
            problems.push(format!("{key} changed or went missing"));
        }
    }
    (failing, problems)
}

/// The hosts each chaos unit runs on, by the hosts' own systemd and Docker.
type Sample = BTreeMap<String, BTreeSet<&'static str>>;

/// Looks at the three hosts in parallel. A host that is down or does not answer within 5 s
/// counts as running nothing.
fn sample_hosts() -> Sample {
    let per_host: Vec<(&'static str, Vec<String>)> = thread::scope(|scope| {
        let looks: Vec<_> =
            HOSTS.into_iter().map(|host| scope.spawn(move || (host, running_on(host)))).collect();
        looks.into_iter().map(|look| look.join().expect("a host probe")).collect()
    });
    let mut sample = Sample::new();
    for (host, units) in per_host {
        for unit in units {
            sample.entry(unit).or_default().insert(host);
        }
    }
    sample
}

/// The chaos units that have a process on `host`: systemd units on their way up, up or on their
/// way down, and running containers.
fn running_on(host: &str) -> Vec<String> {
    let out = Command::new("timeout")
        .args(["-k", "1", "5", "docker", "exec", host, "sh", "-c", PROBE])
        .output();
    let Ok(out) = out else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let (systemd, docker) = text.split_once("-- docker\n").unwrap_or((&text, ""));
    let mut units: Vec<String> = systemd
        .lines()
        .filter_map(|line| match line.split_whitespace().collect::<Vec<_>>()[..] {
            [name, _, "active" | "activating" | "deactivating" | "reloading", ..] => {
                Some(name.to_string())
            }
            _ => None,
        })
        .collect();
    units.extend(
        docker.lines().map(str::trim).filter(|u| u.starts_with("chaos-")).map(String::from),
    );
    units
}

/// A sample in which a non-global unit ran on more than one host.
#[derive(Clone)]
struct DoubleRun {
    round: usize,
    /// Since the sampler started.
    at: Duration,
    copies: Vec<(String, Vec<&'static str>)>,
}

/// Samples the hosts every `SAMPLE_EVERY` on its own thread, from the first fault until it is
/// finished, and keeps every sample that shows a unit twice.
struct Sampler {
    round: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    double_runs: Arc<Mutex<Vec<DoubleRun>>>,
    handle: Option<JoinHandle<usize>>,
}

impl Sampler {
    fn start() -> Sampler {
        let round = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let double_runs = Arc::new(Mutex::new(Vec::new()));
        let (round_seen, stop_seen, found) = (round.clone(), stop.clone(), double_runs.clone());
        let handle = thread::spawn(move || {
            let started = Instant::now();
            let mut n_samples = 0;
            while !stop_seen.load(Ordering::SeqCst) {
                let at = started.elapsed();
                let copies: Vec<(String, Vec<&'static str>)> = sample_hosts()
                    .into_iter()
                    .filter(|(unit, hosts)| unit != GLOBAL && hosts.len() > 1)
                    .map(|(unit, hosts)| (unit, hosts.into_iter().collect()))
                    .collect();
                n_samples += 1;
                if !copies.is_empty() {
                    let round = round_seen.load(Ordering::SeqCst);
                    let mut found = found.lock().unwrap_or_else(|p| p.into_inner());
                    found.push(DoubleRun { round, at, copies });
                }
                thread::sleep(SAMPLE_EVERY.saturating_sub(started.elapsed() - at));
            }
            n_samples
        });
        Sampler { round, stop, double_runs, handle: Some(handle) }
    }

    /// The double-run samples taken so far during `round`.
    fn double_runs_in(&self, round: usize) -> Vec<DoubleRun> {
        let found = self.double_runs.lock().unwrap_or_else(|p| p.into_inner());
        found.iter().filter(|d| d.round == round).cloned().collect()
    }

    /// Stops sampling; returns the double-run samples and the number of samples taken.
    fn finish(mut self) -> (Vec<DoubleRun>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        let handle = self.handle.take().expect("a running sampler");
        let n_samples = handle.join().expect("the sampler thread");
        let found =
            std::mem::take(&mut *self.double_runs.lock().unwrap_or_else(|p| p.into_inner()));
        (found, n_samples)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// Undoes whatever a fault may have left behind, also when a round panicked: reconnects hosts
/// cut off from the network, starts stopped containers, then waits for etcd and the agents.
struct Healer;

impl Drop for Healer {
    fn drop(&mut self) {
        for (host, ip) in HOSTS.into_iter().zip(HOST_IPS) {
            let format =
                format!("{{{{if index .NetworkSettings.Networks \"{NETWORK}\"}}}}yes{{{{end}}}}");
            if docker_output(&["container", "inspect", "-f", &format, host]) != "yes" {
                eprintln!("healer: reconnecting {host} to {NETWORK}");
                docker_output(&["network", "connect", "--ip", ip, NETWORK, host]);
            }
        }
        for name in ETCD.into_iter().chain([REGISTRY]).chain(HOSTS) {
            if docker_output(&["container", "inspect", "-f", "{{.State.Running}}", name]) != "true"
            {
                eprintln!("healer: starting {name}");
                docker_output(&["start", name]);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(90);
        while !etcd_healthy() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(500));
        }
        for host in HOSTS {
            let active = || {
                let out = Command::new("docker")
                    .args(["exec", host, "systemctl", "is-active", "flotd"])
                    .output();
                out.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "active")
            };
            while !active() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// Runs docker and returns its trimmed standard output, empty if it failed.
fn docker_output(args: &[&str]) -> String {
    match Command::new("docker").args(args).output() {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_string(),
        _ => String::new(),
    }
}

/// etcdctl against the three members with short timeouts; standard output if it succeeded.
fn etcdctl(args: &[&str]) -> Option<String> {
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={ENDPOINTS}"))
        .args(["--dial-timeout=2s", "--command-timeout=3s"])
        .args(args)
        .output()
        .ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether all three members answer as healthy.
fn etcd_healthy() -> bool {
    etcdctl(&["endpoint", "health"]).is_some()
}

/// The index in `ETCD` of the current leader: the member whose own id is the leader it reports.
fn etcd_leader() -> Option<usize> {
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&etcdctl(&["endpoint", "status", "-w", "json"])?).ok()?;
    rows.iter().find_map(|row| {
        let status = &row["Status"];
        let leader = status["leader"].as_u64()?;
        if status["header"]["member_id"].as_u64()? != leader {
            return None;
        }
        let endpoint = row["Endpoint"].as_str()?;
        ENDPOINTS.split(',').position(|e| e == endpoint)
    })
}

/// One round's outcome.
struct RoundResult {
    round: usize,
    fault: Fault,
    recovery: Option<Duration>,
    lost: usize,
    double_runs: usize,
    /// The whole round, fault and recovery.
    took: Duration,
}

impl RoundResult {
    fn recovery_text(&self) -> String {
        match self.recovery {
            Some(took) => format!("{:.1}", took.as_secs_f64()),
            None => format!(">{}", RECOVERY_BOUND.as_secs()),
        }
    }

    fn progress_line(&self) -> String {
        format!(
            "round {}: {} {} for {:.1} s, recovered in {} s, {} double-run samples",
            self.round,
            self.fault.kind.name(),
            self.fault.target,
            self.fault.held.as_secs_f64(),
            self.recovery_text(),
            self.double_runs
        )
    }
}

fn print_report(config: &ChaosConfig, rounds: &[RoundResult], n_samples: usize) {
    println!();
    println!(
        "{:>5}  {:<18} {:<32} {:>6} {:>10} {:>11} {:>4}",
        "round", "fault", "target", "held_s", "recovery_s", "double_runs", "lost"
    );
    for r in rounds {
        println!(
            "{:>5}  {:<18} {:<32} {:>6.1} {:>10} {:>11} {:>4}",
            r.round,
            r.fault.kind.name(),
            r.fault.target,
            r.fault.held.as_secs_f64(),
            r.recovery_text(),
            r.double_runs,
            r.lost
        );
    }

    let mut recoveries: Vec<Duration> = rounds.iter().filter_map(|r| r.recovery).collect();
    recoveries.sort();
    let seconds = |d: Option<&Duration>| match d {
        Some(d) => format!("{:.1} s", d.as_secs_f64()),
        None => "-".to_string(),
    };
    let worst = if rounds.iter().any(|r| r.recovery.is_none()) {
        format!(">{} s", RECOVERY_BOUND.as_secs())
    } else {
        seconds(recoveries.last())
    };
    let median = seconds(recoveries.get(recoveries.len().saturating_sub(1) / 2));
    let double_runs: usize = rounds.iter().map(|r| r.double_runs).sum();
    let lost: usize = rounds.iter().map(|r| r.lost).sum();

    println!();
    println!("{:<28} {} of {} (seed {})", "rounds", rounds.len(), config.rounds, config.seed);
    for kind in KINDS {
        let n = rounds.iter().filter(|r| r.fault.kind == kind).count();
        println!("{:<28} {n}", format!("faults: {}", kind.name()));
    }
    println!("{:<28} {lost}", "units lost");
    println!("{:<28} {double_runs} (of {n_samples} samples)", "double-run samples");
    println!("{:<28} {worst}", "worst recovery");
    println!("{:<28} {median}", "median recovery");
}

/// One row per round in `target/bench/chaos.csv`.
fn write_csv(rounds: &[RoundResult]) {
    let dir = common::root().join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    let mut csv = String::from("round,fault,target,recovery_s,double_run_samples,lost\n");
    for r in rounds {
        let recovery = r.recovery.map(|d| format!("{:.3}", d.as_secs_f64())).unwrap_or_default();
        csv.push_str(&format!(
            "{},{},{},{},{},{}\n",
            r.round,
            r.fault.kind.name(),
            r.fault.target,
            recovery,
            r.double_runs,
            r.lost
        ));
    }
    let path = dir.join("chaos.csv");
    std::fs::write(&path, csv).expect("write target/bench/chaos.csv");
    println!("rounds written to {}", path.display());
}

/// The samples that showed a unit twice, the first twenty of them.
fn print_double_runs(double_runs: &[DoubleRun]) {
    for run in double_runs.iter().take(20) {
        let at = run.at.as_secs_f64();
        println!("double run in round {} at {at:.1} s: {:?}", run.round, run.copies);
    }
    if double_runs.len() > 20 {
        println!("... and {} more double-run samples", double_runs.len() - 20);
    }
}

/// The agents' recent logs, from every host.
fn print_journals() {
    for host in HOSTS {
        println!("--- journalctl -u flotd -n 100 on {host} ---");
        let args = ["exec", host, "journalctl", "-u", "flotd", "--no-pager", "-n", "100"];
        println!("{}", docker_output(&args));
    }
}
