//! Measurements on the three-host test cluster, run by `scripts/bench`: failover, placement
//! throughput against etcd's own write rate, etcd writes per unit, listing latency and flotd's
//! idle footprint.
//!
//! Every test is `#[ignore]`d, so a plain `cargo test` skips them. Each one writes its trials
//! to `target/bench/<measurement>.csv` and its figures, with their targets and verdicts, to
//! `target/bench/summary-<measurement>.csv`, which `scripts/bench` prints as one table. Counts
//! and durations come from `BENCH_*` variables, listed in `scripts/bench`.
//!
//! Moments are taken from an etcd watch of the whole keyspace, not by polling flotctl: a unit
//! is claimed when its `claims/` key is written, active when a `states/` record of it says
//! `"active":"active"`, and a host's lease has ended when its `machines/` key is deleted.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{HOSTS, Scenario, scenario};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, EventType, GetOptions, PutOptions,
    Txn, TxnOp, WatchOptions,
};

/// The keyspace prefix the cluster runs with.
const PREFIX: &str = "/flotilla/";

/// Where the baseline writes; outside the flotilla prefix, so no agent wakes up for it.
const BASELINE_PREFIX: &str = "/bench/baseline/";

/// The member whose `/metrics` counts the writes; every member applies every write.
const METRICS_MEMBER: &str = "127.0.0.1:23791";

/// The members at their addresses on the cluster's network, the path flotd itself uses.
const MEMBERS: [&str; 3] = ["172.31.90.11:2379", "172.31.90.12:2379", "172.31.90.13:2379"];

/// The unit that is failed over, again and again.
const FAILOVER_UNIT: &str = "bench-failover.service";

const SLEEPER: &str =
    "[Unit]\nDescription=bench failover\n\n[Service]\nExecStart=/bin/sleep infinity\n";

/// The unit that is placed in bulk, as the issue specifies it.
const ONESHOT: &str = "[Unit]\nDescription=bench placement\n\n[Service]\nType=oneshot\n\
    ExecStart=/bin/true\nRemainAfterExit=yes\n";

/// A count or a number of seconds from the environment, or its default.
fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(text) => text.parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number")),
        Err(_) => default,
    }
}

fn bench_dir() -> PathBuf {
    let dir = common::root().join("target/bench");
    std::fs::create_dir_all(&dir).expect("create target/bench");
    dir
}

/// Writes one CSV file, header first; fields never contain commas.
fn write_csv(name: &str, header: &str, rows: &[String]) {
    let mut text = format!("{header}\n");
    for row in rows {
        text.push_str(row);
        text.push('\n');
    }
    let path = bench_dir().join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The nearest-rank percentile `p` (0-100) of `values`.
fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn seconds_since(start: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(start).as_secs_f64()
}

/// The figures of one measurement: rows of the table `scripts/bench` prints.
struct Summary {
    name: String,
    rows: Vec<String>,
}

impl Summary {
    fn new(name: &str) -> Summary {
        Summary { name: name.to_string(), rows: Vec::new() }
    }

    /// Adds a figure; `pass` is `None` where no target applies, e.g. at a count the issue sets
    /// none for. `order` sorts the rows of all measurements into one table.
    fn figure(&mut self, order: &str, what: &str, figure: &str, target: &str, pass: Option<bool>) {
        let verdict = match pass {
            Some(true) => "pass",
            Some(false) => "FAIL",
            None => "-",
        };
        eprintln!("bench: {what}: {figure} (target {target}: {verdict})");
        for field in [order, what, figure, target] {
            assert!(!field.contains(','), "summary field {field:?} contains a comma");
        }
        self.rows.push(format!("{order},{what},{figure},{target},{verdict}"));
    }

    fn write(&self) {
        let file = format!("summary-{}.csv", self.name);
        write_csv(&file, "order,measurement,figure,target,result", &self.rows);
    }
}

/// One change seen on the watch, with the moment it arrived.
struct Change {
    at: Instant,
    /// The revision that made the change; changes of one transaction share it.
    revision: i64,
    put: bool,
    key: String,
    value: Vec<u8>,
}

/// etcd's write counters: the cluster's revision and one member's `/metrics`.
///
/// Every write request that changes the keyspace (a put, a delete, a transaction, a lease
/// expiry) moves the revision by exactly one, however many keys it touches: unbatched, that is
/// the number of writes. `etcd_mvcc_put_total` and `etcd_mvcc_delete_total` count keys.
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    revisions: f64,
    put: f64,
    delete: f64,
    txn: f64,
    proposals: f64,
}

impl Counters {
    fn read(etcd: &Etcd) -> Counters {
        let revisions = etcd.revision() as f64;
        let address: SocketAddr = METRICS_MEMBER.parse().unwrap();
        let mut stream = TcpStream::connect_timeout(&address, Duration::from_secs(3))
            .expect("connect to etcd's metrics");
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(stream, "GET /metrics HTTP/1.0\r\nHost: {METRICS_MEMBER}\r\n\r\n").unwrap();
        let mut page = String::new();
        stream.read_to_string(&mut page).expect("read etcd's metrics");
        let mut counters = Counters { revisions, ..Counters::default() };
        for line in page.lines() {
            let Some((name, value)) = line.split_once(' ') else { continue };
            let value: f64 = value.trim().parse().unwrap_or(0.0);
            match name {
                "etcd_mvcc_put_total" => counters.put = value,
                "etcd_mvcc_delete_total" => counters.delete = value,
                "etcd_mvcc_txn_total" => counters.txn = value,
                "etcd_server_proposals_committed_total" => counters.proposals = value,
                _ => {}
            }
        }
        counters
    }

    fn since(&self, earlier: &Counters) -> Counters {
        Counters {
            revisions: self.revisions - earlier.revisions,
            put: self.put - earlier.put,
            delete: self.delete - earlier.delete,
            txn: self.txn - earlier.txn,
            proposals: self.proposals - earlier.proposals,
        }
    }

    /// Keys written or deleted: each is one new revision of one key, however batched.
    fn key_writes(&self) -> f64 {
        self.put + self.delete
    }

    /// Key writes plus transactions of more than one operation, read-only ones included.
    fn with_txns(&self) -> f64 {
        self.put + self.delete + self.txn
    }

    fn csv(&self) -> String {
        let Counters { revisions, put, delete, txn, proposals } = self;
        format!("{revisions},{put},{delete},{txn},{proposals}")
    }
}

/// The benchmark's own etcd client, on a runtime of its own so that the tests stay synchronous.
struct Etcd {
    rt: tokio::runtime::Runtime,
    client: Client,
    endpoints: Vec<String>,
}

impl Etcd {
    /// Connects straight to the members on the cluster's network when this machine reaches
    /// them, as flotd does, and through the published loopback ports otherwise.
    fn connect() -> Etcd {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let reachable = MEMBERS.iter().all(|member| {
            let address: SocketAddr = member.parse().unwrap();
            TcpStream::connect_timeout(&address, Duration::from_millis(500)).is_ok()
        });
        let endpoints: Vec<String> = match reachable {
            true => MEMBERS.iter().map(|m| format!("http://{m}")).collect(),
            false => common::ENDPOINTS.split(',').map(str::to_string).collect(),
        };
        let options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(3));
        let client = rt
            .block_on(Client::connect(&endpoints, Some(options)))
            .expect("connect to the cluster's etcd");
        Etcd { rt, client, endpoints }
    }

    /// The current revision of the cluster.
    fn revision(&self) -> i64 {
        let mut client = self.client.clone();
        let options = GetOptions::new().with_prefix().with_count_only();
        let response = self.rt.block_on(client.get(PREFIX, Some(options))).expect("read etcd");
        response.header().expect("a response header").revision()
    }

    /// One key's value and lease, if it exists.
    fn get(&self, key: &str) -> Option<(Vec<u8>, i64)> {
        let mut client = self.client.clone();
        let response = self.rt.block_on(client.get(key, None)).expect("read etcd");
        response.kvs().first().map(|kv| (kv.value().to_vec(), kv.lease()))
    }

    /// The TTL a lease was granted with, in seconds.
    fn granted_ttl(&self, lease: i64) -> i64 {
        let mut client = self.client.clone();
        let response = self.rt.block_on(client.lease_time_to_live(lease, None));
        response.expect("read a lease").granted_ttl()
    }

    /// Every change to the keyspace after revision `after`, as it arrives.
    fn watch(&self, after: i64) -> mpsc::Receiver<Change> {
        let (tx, rx) = mpsc::channel();
        let (opened_tx, opened_rx) = mpsc::channel();
        let mut client = self.client.clone();
        self.rt.spawn(async move {
            let options = WatchOptions::new().with_prefix().with_start_revision(after + 1);
            let mut stream = client.watch(PREFIX, Some(options)).await.expect("open a watch");
            let _ = opened_tx.send(());
            // The watch ends with the test: the first send to a dropped receiver fails.
            while let Ok(Some(response)) = stream.message().await {
                let at = Instant::now();
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let change = Change {
                        at,
                        revision: kv.mod_revision(),
                        put: event.event_type() == EventType::Put,
                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                        value: kv.value().to_vec(),
                    };
                    if tx.send(change).is_err() {
                        return;
                    }
                }
            }
        });
        opened_rx.recv_timeout(Duration::from_secs(10)).expect("the watch opened");
        rx
    }

    /// Single-key puts per second that one client sustains with `in_flight` requests
    /// outstanding for `duration`, and the puts completed in each whole second.
    fn baseline(&self, in_flight: usize, duration: Duration) -> (f64, Vec<u64>) {
        let per_second = Arc::new(Mutex::new(BTreeMap::<u64, u64>::new()));
        let (total, elapsed) = self.rt.block_on(async {
            let start = Instant::now();
            let tasks: Vec<_> = (0..in_flight)
                .map(|task| {
                    let mut client = self.client.clone();
                    let per_second = per_second.clone();
                    tokio::spawn(async move {
                        // About the size of a claim record.
                        let value = vec![b'x'; 48];
                        let key = format!("{BASELINE_PREFIX}{task}");
                        let mut done = 0u64;
                        while start.elapsed() < duration {
                            client.put(key.as_str(), value.clone(), None).await.expect("put");
                            done += 1;
                            let second = start.elapsed().as_secs();
                            *per_second.lock().unwrap().entry(second).or_default() += 1;
                        }
                        done
                    })
                })
                .collect();
            let mut total = 0;
            for task in tasks {
                total += task.await.expect("a baseline task");
            }
            (total, start.elapsed())
        });
        let mut client = self.client.clone();
        let options = DeleteOptions::new().with_prefix();
        self.rt.block_on(client.delete(BASELINE_PREFIX, Some(options))).expect("clean up");
        let seconds = per_second.lock().unwrap().values().copied().collect();
        (total as f64 / elapsed.as_secs_f64(), seconds)
    }
}

impl Etcd {
    /// Claims per second etcd commits when they come as the engine writes them: transactions
    /// of `per_txn` fresh keys bound to a lease, each key guarded by a create-only compare and
    /// the whole by one compare on the lease of a machine key, `in_flight` transactions at a
    /// time, `rounds` each. No agent watches these keys, so nothing else is written meanwhile:
    /// this is the most an engine could reach on this etcd, with the cluster otherwise idle.
    fn claim_ceiling(&self, per_txn: usize, in_flight: usize, rounds: usize) -> f64 {
        let mut client = self.client.clone();
        let (claims, elapsed) = self.rt.block_on(async {
            let lease = client.lease_grant(60, None).await.expect("grant a lease").id();
            let machine = format!("{BASELINE_PREFIX}machine");
            let bound = Some(PutOptions::new().with_lease(lease));
            client.put(machine.as_str(), "m", bound.clone()).await.expect("put the machine key");
            let start = Instant::now();
            let tasks: Vec<_> = (0..in_flight)
                .map(|task| {
                    let (mut client, machine, bound) =
                        (client.clone(), machine.clone(), bound.clone());
                    tokio::spawn(async move {
                        let record = format!("{{\"version\":1,\"machine\":\"{:032x}\"}}", task);
                        let mut done = 0usize;
                        for _ in 0..rounds {
                            let keys: Vec<String> = (0..per_txn)
                                .map(|i| format!("{BASELINE_PREFIX}claims/{task}-{done}-{i}"))
                                .collect();
                            let mut guards =
                                vec![Compare::lease(machine.as_str(), CompareOp::Equal, lease)];
                            guards.extend(keys.iter().map(|k| {
                                Compare::create_revision(k.as_str(), CompareOp::Equal, 0)
                            }));
                            let puts: Vec<TxnOp> = keys
                                .iter()
                                .map(|k| TxnOp::put(k.as_str(), record.as_str(), bound.clone()))
                                .collect();
                            let txn = Txn::new().when(guards).and_then(puts);
                            let response = client.txn(txn).await.expect("a claim transaction");
                            assert!(response.succeeded(), "a fresh claim's guard failed");
                            done += per_txn;
                        }
                        done
                    })
                })
                .collect();
            let mut claims = 0;
            for task in tasks {
                claims += task.await.expect("a ceiling task");
            }
            let elapsed = start.elapsed();
            client.lease_revoke(lease).await.expect("revoke the lease");
            (claims, elapsed)
        });
        let options = DeleteOptions::new().with_prefix();
        self.rt.block_on(client.delete(BASELINE_PREFIX, Some(options))).expect("clean up");
        claims as f64 / elapsed.as_secs_f64()
    }

    /// Compacts etcd's history and defragments every member, as a kept cluster would: the
    /// versions an earlier measurement wrote would otherwise slow the ones after it.
    fn compact(&self) {
        let revision = self.revision();
        self.rt.block_on(async {
            let mut client = self.client.clone();
            let options = etcd_client::CompactionOptions::new().with_physical();
            client.compact(revision, Some(options)).await.expect("compact etcd");
            for endpoint in &self.endpoints {
                let mut member = Client::connect([endpoint], None).await.expect("reach a member");
                member.defragment().await.expect("defragment a member");
            }
        });
    }
}

/// The unit a `states/<machine>/<unit>` key reports on, with its machine.
fn state_key(key: &str) -> Option<(&str, &str)> {
    key.strip_prefix(PREFIX)?.strip_prefix("states/")?.split_once('/')
}

/// The unit of a `claims/<unit>` key; copies of global units do not count.
fn claim_key(key: &str) -> Option<&str> {
    key.strip_prefix(PREFIX)?.strip_prefix("claims/").filter(|unit| !unit.contains('/'))
}

fn json_field(value: &[u8], field: &str) -> Option<String> {
    let record: serde_json::Value = serde_json::from_slice(value).ok()?;
    record.get(field)?.as_str().map(str::to_string)
}

/// Destroys the benchmark's units when a test ends, however it ends.
struct Cleanup<'a> {
    scenario: &'a Scenario,
    /// Units whose names start with one of these are the benchmark's.
    prefixes: Vec<String>,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        for prefix in &self.prefixes {
            if let Err(error) = try_destroy(self.scenario, prefix) {
                eprintln!("bench: destroying {prefix}* failed: {}", error.trim());
            }
        }
    }
}

/// How a host is taken away in a failover trial.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    /// `docker kill` of the whole host: its lease must expire.
    Hard,
    /// `systemctl stop flotd`: the agent stops its units and revokes its lease.
    Graceful,
}

/// One failover, from the fault to the unit reported active on another host.
struct FailoverTrial {
    victim: &'static str,
    victim_was_engine: bool,
    lease: i64,
    ttl: i64,
    /// Fault to the deletion of the victim's machine key (its lease's end).
    to_lease_end: f64,
    /// Fault to the unit's new claim.
    to_claim: f64,
    /// Fault to the unit active elsewhere.
    total: f64,
}

fn failover_trial(s: &Scenario, etcd: &Etcd, fault: Fault) -> FailoverTrial {
    let victim = s.wait_for("the unit active on one host", Duration::from_secs(60), || {
        match s.active_on(FAILOVER_UNIT).as_slice() {
            [host] => Some(*host),
            _ => None,
        }
    });
    let victim_id = s.machine_id(victim);
    let machine_key = format!("{PREFIX}machines/{victim_id}");
    let (_, lease) = etcd.get(&machine_key).expect("the victim is registered");
    let ttl = etcd.granted_ttl(lease);
    let engine = etcd.get(&format!("{PREFIX}engine"));
    let victim_was_engine =
        engine.is_some_and(|(value, _)| json_field(&value, "machine") == Some(victim_id.clone()));
    let changes = etcd.watch(etcd.revision());

    let start = Instant::now();
    match fault {
        Fault::Hard => s.docker(&["kill", victim]),
        Fault::Graceful => {
            s.host(victim, &["systemctl", "stop", "--no-block", "flotd"]);
        }
    }
    let deadline = start + Duration::from_secs(60);
    let (mut lease_end, mut claimed) = (None, None);
    let active_at = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let change = changes.recv_timeout(left).expect("the unit active elsewhere within 60 s");
        if !change.put && change.key == machine_key {
            lease_end.get_or_insert(change.at);
        }
        if change.put && claim_key(&change.key) == Some(FAILOVER_UNIT) {
            claimed.get_or_insert(change.at);
        }
        let elsewhere = state_key(&change.key)
            .is_some_and(|(machine, unit)| unit == FAILOVER_UNIT && machine != victim_id);
        if change.put
            && elsewhere
            && json_field(&change.value, "active").as_deref() == Some("active")
        {
            break change.at;
        }
    };
    let lease_end = lease_end.expect("the victim's machine key deleted before the move");
    let claimed = claimed.expect("the unit claimed again before it was active");
    FailoverTrial {
        victim,
        victim_was_engine,
        lease,
        ttl,
        to_lease_end: seconds_since(start, lease_end),
        to_claim: seconds_since(start, claimed),
        total: seconds_since(start, active_at),
    }
}

/// Brings the victim of a trial back and waits until all three hosts are registered.
fn restore(s: &Scenario, victim: &str, fault: Fault) {
    match fault {
        Fault::Hard => s.docker(&["start", victim]),
        Fault::Graceful => {
            s.host(victim, &["systemctl", "start", "flotd"]);
        }
    }
    s.ensure_host_up(victim);
    s.wait_for("three machines registered", Duration::from_secs(90), || {
        (s.machines().len() == 3).then_some(())
    });
}

fn failover(fault: Fault) {
    let trials = setting("BENCH_TRIALS", 20);
    let s = scenario();
    let _cleanup = Cleanup { scenario: &s, prefixes: vec![FAILOVER_UNIT.to_string()] };
    let etcd = Etcd::connect();
    let files = s.unit_files(&[(FAILOVER_UNIT, SLEEPER)]);
    s.ok(&["start", &files[0]]);

    let kind = match fault {
        Fault::Hard => "hard",
        Fault::Graceful => "graceful",
    };
    let mut rows = Vec::new();
    let (mut totals, mut after_lease) = (Vec::new(), Vec::new());
    let mut ttls = BTreeSet::new();
    for trial in 1..=trials {
        let t = failover_trial(&s, &etcd, fault);
        let after = t.total - t.to_lease_end;
        eprintln!(
            "bench: {kind} failover {trial}/{trials}: {:.3} s ({:.3} s after the lease ended)",
            t.total, after
        );
        rows.push(format!(
            "{kind},{trial},{:.3},{:.3},{:.3},{:.3},{},{},{:x},{}",
            t.total,
            t.to_lease_end,
            t.to_claim,
            after,
            t.victim,
            t.victim_was_engine,
            t.lease,
            t.ttl
        ));
        ttls.insert(t.ttl);
        totals.push(t.total);
        after_lease.push(after);
        restore(&s, t.victim, fault);
    }
    write_failover_csv(kind, &rows);

    let (p50, p99) = (percentile(&totals, 50.0), percentile(&totals, 99.0));
    let lease_p99 = percentile(&after_lease, 99.0);
    let mut summary = Summary::new(&format!("failover-{kind}"));
    let n = totals.len();
    match fault {
        Fault::Hard => {
            let ttl: Vec<String> = ttls.iter().map(i64::to_string).collect();
            let ttl = ttl.join("/");
            let what = format!("hard failover: docker kill -> active elsewhere (TTL {ttl} s; {n})");
            let figure = format!("p50 {p50:.2} s / p99 {p99:.2} s");
            let pass = p50 <= 5.5 && p99 <= 6.5;
            summary.figure("10", &what, &figure, "p50 <= 5.5 s / p99 <= 6.5 s", Some(pass));
            let what = "hard failover: lease expiry -> active elsewhere";
            let figure =
                format!("p50 {:.2} s / p99 {lease_p99:.2} s", percentile(&after_lease, 50.0));
            summary.figure("11", what, &figure, "p99 <= 0.5 s", Some(lease_p99 <= 0.5));
        }
        Fault::Graceful => {
            let what = format!("graceful failover: systemctl stop flotd -> active elsewhere ({n})");
            let figure = format!("p50 {p50:.2} s / p99 {p99:.2} s");
            summary.figure("20", &what, &figure, "p99 <= 1 s", Some(p99 <= 1.0));
        }
    }
    summary.write();
}

/// Rewrites this kind's rows of `failover.csv`, keeping the other kind's.
fn write_failover_csv(kind: &str, rows: &[String]) {
    let path = bench_dir().join("failover.csv");
    let old = std::fs::read_to_string(&path).unwrap_or_default();
    let header = "kind,trial,seconds,to_lease_end_s,to_claim_s,after_lease_end_s,victim,\
        victim_was_engine,lease,ttl_s";
    let mut kept: Vec<String> = old
        .lines()
        .skip(1)
        .filter(|line| !line.starts_with(&format!("{kind},")) && !line.is_empty())
        .map(str::to_string)
        .collect();
    // Rows from an older layout of the file are dropped rather than mixed in.
    if !old.starts_with(header) {
        kept.clear();
    }
    kept.extend(rows.iter().cloned());
    write_csv("failover.csv", header, &kept);
}

#[test]
#[ignore = "benchmark; run by scripts/bench"]
fn failover_hard() {
    failover(Fault::Hard);
}

#[test]
#[ignore = "benchmark; run by scripts/bench"]
fn failover_graceful() {
    failover(Fault::Graceful);
}

/// Unit files `<prefix>-<i>.service` for `i` in `1..=n`, all with the same text.
fn unit_files(s: &Scenario, prefix: &str, n: usize, text: &str) -> Vec<String> {
    let names: Vec<String> = (1..=n).map(|i| format!("{prefix}-{i}.service")).collect();
    let files: Vec<(&str, &str)> = names.iter().map(|name| (name.as_str(), text)).collect();
    s.unit_files(&files)
}

/// How a bulk start went, in seconds from the first `flotctl start`.
struct BulkStart {
    units: usize,
    /// Every `flotctl start --no-block` returned.
    submitted: f64,
    first_claim: f64,
    /// `None` when the wait timed out, with the counts reached in `claimed` and `active`.
    all_claimed: Option<f64>,
    all_active: Option<f64>,
    claimed: usize,
    active: usize,
    /// Distinct revisions that wrote the units' claims: the engine's claim transactions.
    claim_txns: usize,
    writes: Counters,
    /// Per unit: the host, when it was claimed and at which revision, and when it was active.
    timeline: BTreeMap<String, UnitTimeline>,
}

/// One unit's way through a bulk start, in seconds from the first `flotctl start`.
#[derive(Default)]
struct UnitTimeline {
    machine: String,
    claimed: Option<(f64, i64)>,
    active: Option<f64>,
}

impl BulkStart {
    /// Claims per second, submission included; with a timeout, what was claimed by then.
    fn claims_per_second(&self, timeout: f64) -> f64 {
        self.claimed as f64 / self.all_claimed.unwrap_or(timeout)
    }

    /// Claims per second between the first and the last claim: the engine's own pace.
    fn engine_claims_per_second(&self, timeout: f64) -> f64 {
        let span = self.all_claimed.unwrap_or(timeout) - self.first_claim;
        self.claimed as f64 / span.max(0.001)
    }
}

/// Starts `files` with `flotctl start --no-block` in chunks and follows the watch until every
/// unit named `<prefix>-*` is claimed and reported active, or `timeout` passes.
fn start_in_bulk(
    s: &Scenario,
    etcd: &Etcd,
    prefix: &str,
    files: &[String],
    timeout: Duration,
) -> BulkStart {
    let chunk = setting("BENCH_SUBMIT_CHUNK", 1000).max(1) as usize;
    let n = files.len();
    let before = Counters::read(etcd);
    let changes = etcd.watch(etcd.revision());

    let start = Instant::now();
    for paths in files.chunks(chunk) {
        let mut args = vec!["start", "--no-block"];
        args.extend(paths.iter().map(String::as_str));
        s.ok(&args);
    }
    let submitted = start.elapsed().as_secs_f64();

    let ours = |unit: &str| unit.starts_with(prefix) && unit.ends_with(".service");
    let (mut claimed, mut active) = (BTreeSet::new(), BTreeSet::new());
    let (mut first_claim, mut all_claimed, mut all_active) = (None, None, None);
    let mut claim_revisions = BTreeSet::new();
    let mut timeline: BTreeMap<String, UnitTimeline> = BTreeMap::new();
    let deadline = start + timeout;
    while all_active.is_none() || all_claimed.is_none() {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(change) = changes.recv_timeout(left) else { break };
        if let Some(unit) = claim_key(&change.key).filter(|u| ours(u)) {
            match change.put {
                true => claimed.insert(unit.to_string()),
                false => claimed.remove(unit),
            };
            first_claim.get_or_insert(change.at);
            if change.put {
                claim_revisions.insert(change.revision);
                let entry = timeline.entry(unit.to_string()).or_default();
                entry.machine = json_field(&change.value, "machine").unwrap_or_default();
                entry.claimed = Some((seconds_since(start, change.at), change.revision));
            }
            if claimed.len() == n {
                all_claimed.get_or_insert(change.at);
            }
        }
        if let Some((_, unit)) = state_key(&change.key).filter(|(_, u)| ours(u)) {
            let is_active = json_field(&change.value, "active").as_deref() == Some("active");
            match change.put && is_active {
                true => active.insert(unit.to_string()),
                false => active.remove(unit),
            };
            if change.put && is_active {
                let entry = timeline.entry(unit.to_string()).or_default();
                entry.active.get_or_insert(seconds_since(start, change.at));
            }
            if active.len() == n {
                all_active.get_or_insert(change.at);
            }
        }
    }
    let writes = Counters::read(etcd).since(&before);
    let at = |moment: Option<Instant>| moment.map(|m| seconds_since(start, m));
    BulkStart {
        units: n,
        submitted,
        first_claim: at(first_claim).unwrap_or(f64::NAN),
        all_claimed: at(all_claimed),
        all_active: at(all_active),
        claimed: claimed.len(),
        active: active.len(),
        claim_txns: claim_revisions.len(),
        writes,
        timeline,
    }
}

/// CPU seconds the cluster's processes have used so far, by name: each etcd member, and on
/// each host systemd, dbus-daemon and flotd; `machine` is this machine's busy time on all cores.
fn cpu_seconds(s: &Scenario) -> BTreeMap<String, f64> {
    let ticks_per_second = 100.0;
    // utime + stime, from the fields after the command name (which may hold spaces).
    let ticks = |stat: &str| -> Option<(String, f64)> {
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let used = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
        Some((comm, used / ticks_per_second))
    };
    let mut cpu = BTreeMap::new();
    for member in ["flotilla-etcd1", "flotilla-etcd2", "flotilla-etcd3"] {
        let out = std::process::Command::new("docker")
            .args(["inspect", "-f", "{{.State.Pid}}", member])
            .output()
            .expect("run docker inspect");
        let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        if let Some((_, seconds)) = ticks(&stat) {
            cpu.insert(member.to_string(), seconds);
        }
    }
    let script = "for pid in 1 $(pidof systemd-journald dbus-daemon) \
        $(systemctl show -p MainPID --value flotd); do cat /proc/$pid/stat; done";
    for host in HOSTS {
        for line in s.host(host, &["sh", "-c", script]).lines() {
            if let Some((comm, seconds)) = ticks(line) {
                cpu.insert(format!("{host}/{comm}"), seconds);
            }
        }
    }
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    if let Some((_, seconds)) = ticks(&own) {
        cpu.insert("bench".to_string(), seconds);
    }
    let stat = std::fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let all: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).flat_map(str::parse).collect();
    // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    let busy = all.iter().sum::<f64>() - all.get(3).unwrap_or(&0.0) - all.get(4).unwrap_or(&0.0);
    cpu.insert("machine".to_string(), busy / ticks_per_second);
    cpu
}

/// How many times systemd on `host` reloaded its units since `since`.
fn reloads_since(s: &Scenario, host: &str, since: std::time::SystemTime) -> usize {
    let epoch = since.duration_since(std::time::UNIX_EPOCH).expect("a clock after 1970");
    let since = format!("@{}", epoch.as_secs());
    let journal = s.host(host, &["journalctl", "-q", "-o", "cat", "_PID=1", "--since", &since]);
    journal.lines().filter(|line| line.starts_with("Reloading")).count()
}

/// Rows `process,cpu_s,share_of_one_core` for the CPU used between two readings.
fn cpu_rows(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    wall: f64,
) -> Vec<String> {
    after
        .iter()
        .filter_map(|(name, end)| {
            let used = end - before.get(name)?;
            Some(format!("{name},{used:.2},{:.1}", used / wall * 100.0))
        })
        .collect()
}

/// Wall times in milliseconds of `flotctl list-units`, run `runs` times.
fn time_list_units(s: &Scenario, runs: u64) -> Result<Vec<f64>, String> {
    (0..runs)
        .map(|_| {
            let start = Instant::now();
            let run = s.flotctl(&["list-units"]);
            match run.code {
                0 => Ok(start.elapsed().as_secs_f64() * 1000.0),
                _ => Err(run.stderr.trim().to_string()),
            }
        })
        .collect()
}

/// The list-units row of the table; the issue sets targets at 100 and 10,000 units.
fn list_figure(summary: &mut Summary, units: usize, times: &Result<Vec<f64>, String>) {
    let target_ms = match units {
        100 => Some(50.0),
        10_000 => Some(250.0),
        _ => None,
    };
    let target = target_ms.map_or("-".to_string(), |t| format!("p50 <= {t} ms"));
    let order = format!("60-{units:06}");
    let times = match times {
        Ok(times) => times,
        Err(error) => {
            let what = format!("flotctl list-units wall time: {units} units");
            let error: String = error.replace(',', ";").chars().take(90).collect();
            summary.figure(&order, &what, &format!("failed: {error}"), &target, Some(false));
            return;
        }
    };
    let rows: Vec<String> =
        times.iter().enumerate().map(|(i, ms)| format!("{units},{},{ms:.1}", i + 1)).collect();
    write_csv(&format!("list-units-{units}.csv"), "units,run,ms", &rows);
    let (p50, p99) = (percentile(times, 50.0), percentile(times, 99.0));
    let what = format!("flotctl list-units wall time: {units} units ({} runs)", times.len());
    let figure = format!("p50 {p50:.0} ms / p99 {p99:.0} ms");
    summary.figure(&order, &what, &figure, &target, target_ms.map(|t| p50 <= t));
}

/// Destroys every unit whose name starts with `prefix`, `BENCH_DESTROY_CHUNK` at a time, and
/// returns how long it took, or the first error.
///
/// In chunks because flotd stops all the units it loses at once: with about a thousand on one
/// host, dbus-daemon refuses the excess stop calls (`LimitsExceeded`) and the agent can stall
/// for good, so one `flotctl destroy` of them all would never return.
fn try_destroy(s: &Scenario, prefix: &str) -> Result<f64, String> {
    let chunk = setting("BENCH_DESTROY_CHUNK", 300).max(1) as usize;
    let start = Instant::now();
    let listing = s.flotctl(&["list-unit-files", "--no-legend", "--fields", "unit"]);
    if listing.code != 0 {
        return Err(listing.stderr);
    }
    let names: Vec<&str> =
        listing.stdout.lines().map(str::trim).filter(|unit| unit.starts_with(prefix)).collect();
    for names in names.chunks(chunk) {
        let mut args = vec!["destroy", "--timeout", "30m"];
        args.extend(names);
        let run = s.flotctl(&args);
        if run.code != 0 {
            return Err(run.stderr);
        }
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Destroys every unit whose name starts with `prefix` and returns how long it took.
fn destroy(s: &Scenario, prefix: &str) -> f64 {
    try_destroy(s, prefix).unwrap_or_else(|error| panic!("destroying {prefix}*: {error}"))
}

/// Counts etcd's writes over `idle` while `n` units run and nothing changes: there should be
/// none at all.
fn idle_writes(
    etcd: &Etcd,
    summary: &mut Summary,
    rows: &mut Vec<String>,
    n: usize,
    idle: Duration,
) {
    let before = Counters::read(etcd);
    sleep(idle);
    let quiet = Counters::read(etcd).since(&before);
    rows.push(format!("idle-{}s,{n},{}", idle.as_secs(), quiet.csv()));
    let what = format!("etcd writes while idle: {n} units active ({} s)", idle.as_secs());
    let figure = format!(
        "{:.0} writes ({:.3} per unit; {:.0} keys; {:.0} proposals)",
        quiet.revisions,
        quiet.revisions / n as f64,
        quiet.key_writes(),
        quiet.proposals
    );
    let idle_ok = quiet.revisions == 0.0 && quiet.with_txns() == 0.0 && quiet.proposals == 0.0;
    summary.figure(&format!("52-{n:06}"), &what, &figure, "0 per unit", Some(idle_ok));
}

#[test]
#[ignore = "benchmark; run by scripts/bench"]
fn placement() {
    let n = setting("BENCH_UNITS", 500) as usize;
    let timeout = Duration::from_secs(setting("BENCH_TIMEOUT", 480));
    let idle = Duration::from_secs(setting("BENCH_IDLE_SECS", 30));
    let s = scenario();
    let etcd = Etcd::connect();
    let prefix = "bench-p";
    let _cleanup = Cleanup { scenario: &s, prefixes: vec![prefix.to_string()] };
    let mut summary = Summary::new(&format!("placement-{n}"));
    let mut write_rows = Vec::new();

    // The baseline, in the same run and on the same etcd, just before the units arrive.
    let (in_flight, seconds) = (16, setting("BENCH_BASELINE_SECS", 5));
    etcd.compact();
    let (baseline, per_second) = etcd.baseline(in_flight, Duration::from_secs(seconds));
    let rows: Vec<String> =
        per_second.iter().enumerate().map(|(i, puts)| format!("{i},{puts}")).collect();
    write_csv(&format!("baseline-{n}.csv"), "second,puts", &rows);
    let what = format!("baseline: etcd-client single-key puts/s ({in_flight} in flight)");
    let endpoints = match etcd.endpoints[0].contains("127.0.0.1") {
        true => "loopback ports",
        false => "member addresses",
    };
    let figure = format!("{baseline:.0} puts/s ({seconds} s; {endpoints})");
    summary.figure(&format!("30-{n:06}"), &what, &figure, "-", None);
    let ceiling = etcd.claim_ceiling(116, 16, 6);
    etcd.compact();
    let what = "ceiling: engine-style claim txns etcd commits/s (116 a txn; 16 in flight; idle)";
    let figure = format!("{ceiling:.0} claims/s = {:.2}x baseline", ceiling / baseline);
    summary.figure(&format!("31-{n:06}"), what, &figure, "-", None);

    // Unbatched: one unit, one `flotctl start`, counted until the write traffic settles.
    let one = unit_files(&s, "bench-p1", 1, ONESHOT);
    let before = Counters::read(&etcd);
    s.ok(&["start", &one[0]]);
    sleep(Duration::from_secs(2));
    let single = Counters::read(&etcd).since(&before);
    write_rows.push(format!("start-one,1,{}", single.csv()));
    let before = Counters::read(&etcd);
    destroy(&s, "bench-p1-");
    sleep(Duration::from_secs(2));
    write_rows.push(format!("destroy-one,1,{}", Counters::read(&etcd).since(&before).csv()));
    let figure = format!(
        "{:.0} writes ({:.0} keys: put {:.0} / delete {:.0}; +{:.0} txn)",
        single.revisions,
        single.key_writes(),
        single.put,
        single.delete,
        single.txn
    );
    let what = "etcd writes per unit: submit -> active (1 unit; 1 flotctl start)";
    summary.figure("50-0", what, &figure, "<= 3 unbatched", Some(single.revisions <= 3.0));

    let files = unit_files(&s, prefix, n, ONESHOT);
    let (cpu_before, cpu_start) = (cpu_seconds(&s), Instant::now());
    let clock_start = std::time::SystemTime::now();
    let bulk = start_in_bulk(&s, &etcd, prefix, &files, timeout);
    let (cpu_after, wall) = (cpu_seconds(&s), cpu_start.elapsed().as_secs_f64());
    let header = "process,cpu_s,percent_of_one_core";
    write_csv(&format!("placement-{n}-cpu.csv"), header, &cpu_rows(&cpu_before, &cpu_after, wall));
    let rows: Vec<String> = HOSTS
        .iter()
        .map(|host| {
            let id = s.machine_id(host);
            let units = bulk.timeline.values().filter(|t| t.machine == id).count();
            format!("{host},{units},{}", reloads_since(&s, host, clock_start))
        })
        .collect();
    write_csv(&format!("placement-{n}-hosts.csv"), "host,units,daemon_reloads", &rows);
    let limit = timeout.as_secs_f64();
    let claims_per_second = bulk.claims_per_second(limit);
    let ratio = claims_per_second / baseline;
    let show = |t: Option<f64>, count: usize| match t {
        Some(t) => format!("{t:.2} s"),
        None => format!("timed out at {limit:.0} s with {count} of {n}"),
    };
    let what = format!("placement: {n} units submitted in bulk -> all claimed");
    // Judged from the first `flotctl start`; the engine's own pace, from its first claim to
    // its last, is given beside it.
    let engine = bulk.engine_claims_per_second(limit);
    let figure = format!(
        "{}; {claims_per_second:.0} claims/s = {ratio:.2}x baseline (engine {engine:.0}/s = \
         {:.2}x)",
        show(bulk.all_claimed, bulk.claimed),
        engine / baseline
    );
    let claimed_ok = bulk.all_claimed.is_some() && ratio >= 5.0;
    summary.figure(&format!("40-{n:06}"), &what, &figure, ">= 5x baseline", Some(claimed_ok));
    let what = format!("placement: {n} units submitted in bulk -> all active");
    let figure = show(bulk.all_active, bulk.active);
    let (target, pass) = match n {
        500 => ("<= 3 s", Some(bulk.all_active.is_some_and(|t| t <= 3.0))),
        _ => ("-", None),
    };
    summary.figure(&format!("41-{n:06}"), &what, &figure, target, pass);
    write_rows.push(format!("start-bulk,{n},{}", bulk.writes.csv()));
    let what = format!("etcd writes per unit: submit -> active ({n} units in bulk)");
    let per_unit = |count: f64| count / n as f64;
    let figure = format!(
        "{:.2} writes ({:.2} keys; +{:.2} txn)",
        per_unit(bulk.writes.revisions),
        per_unit(bulk.writes.key_writes()),
        per_unit(bulk.writes.txn)
    );
    // Batches share revisions, so the target is judged on the unbatched row above.
    summary.figure(&format!("51-{n:06}"), &what, &figure, "- (batched)", None);

    // A start that timed out is still writing: there is no idle to measure.
    match bulk.all_active {
        Some(_) => idle_writes(&etcd, &mut summary, &mut write_rows, n, idle),
        None => {
            let what = format!("etcd writes while idle: {n} units");
            let figure = "not measured: the start had not finished";
            summary.figure(&format!("52-{n:06}"), &what, figure, "0 per unit", Some(false));
        }
    }

    let times = time_list_units(&s, setting("BENCH_LIST_RUNS", 20));
    list_figure(&mut summary, n, &times);

    let destroyed = destroy(&s, prefix);
    let header = "units,submitted_s,first_claim_s,all_claimed_s,all_active_s,claimed,active,\
        claim_txns,claims_per_s,engine_claims_per_s,baseline_puts_per_s,ratio,destroy_s";
    let row = format!(
        "{},{:.3},{:.3},{},{},{},{},{},{:.1},{:.1},{:.1},{:.3},{:.3}",
        bulk.units,
        bulk.submitted,
        bulk.first_claim,
        bulk.all_claimed.map_or("timeout".into(), |t| format!("{t:.3}")),
        bulk.all_active.map_or("timeout".into(), |t| format!("{t:.3}")),
        bulk.claimed,
        bulk.active,
        bulk.claim_txns,
        claims_per_second,
        bulk.engine_claims_per_second(limit),
        baseline,
        ratio,
        destroyed
    );
    write_csv(&format!("placement-{n}.csv"), header, &[row]);
    let show = |t: Option<f64>| t.map_or("-".to_string(), |t| format!("{t:.3}"));
    let rows: Vec<String> = bulk
        .timeline
        .iter()
        .map(|(unit, t)| {
            let revision = t.claimed.map_or("-".to_string(), |(_, r)| r.to_string());
            let claimed = show(t.claimed.map(|(at, _)| at));
            format!("{unit},{},{claimed},{revision},{}", t.machine, show(t.active))
        })
        .collect();
    let header = "unit,machine,claimed_s,claim_revision,active_s";
    write_csv(&format!("placement-{n}-units.csv"), header, &rows);
    write_csv(
        &format!("writes-{n}.csv"),
        "phase,units,revisions,put,delete,txn,proposals",
        &write_rows,
    );
    summary.write();
}

#[test]
#[ignore = "benchmark; run by scripts/bench"]
fn list_units() {
    let n = setting("BENCH_LIST_UNITS", 100) as usize;
    let timeout = Duration::from_secs(setting("BENCH_TIMEOUT", 480));
    let s = scenario();
    let etcd = Etcd::connect();
    let prefix = "bench-l";
    let _cleanup = Cleanup { scenario: &s, prefixes: vec![prefix.to_string()] };
    let files = unit_files(&s, prefix, n, ONESHOT);
    let bulk = start_in_bulk(&s, &etcd, prefix, &files, timeout);
    assert!(bulk.all_active.is_some(), "only {} of {n} units became active", bulk.active);
    let mut summary = Summary::new(&format!("list-units-{n}"));
    let times = time_list_units(&s, setting("BENCH_LIST_RUNS", 20));
    list_figure(&mut summary, n, &times);
    destroy(&s, prefix);
    summary.write();
}

/// flotd on one host at one moment: its pid, CPU ticks used so far, resident memory (all of
/// it, then its anonymous and file-backed parts) and how long it has run.
struct Sample {
    at: Instant,
    pid: u32,
    ticks: u64,
    rss_kb: u64,
    anon_kb: u64,
    file_kb: u64,
    uptime_s: u64,
}

fn sample(s: &Scenario, host: &str) -> Sample {
    let script = "pid=$(systemctl show -p MainPID --value flotd); echo $pid; \
        cat /proc/$pid/stat; grep -E '^(VmRSS|RssAnon|RssFile):' /proc/$pid/status; \
        ps -o etimes= -p $pid";
    let at = Instant::now();
    let out = s.host(host, &["sh", "-c", script]);
    let mut lines = out.lines();
    let pid = lines.next().and_then(|l| l.trim().parse().ok()).expect("flotd's pid");
    // The fields after the command name, which may itself hold spaces, start at field 3.
    let stat = lines.next().expect("/proc/<pid>/stat");
    let fields: Vec<&str> =
        stat.rsplit_once(')').expect("a stat line").1.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    let mut kb = || -> u64 {
        let line = lines.next().expect("a line of /proc/<pid>/status");
        line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("a size in kB")
    };
    let (rss_kb, anon_kb, file_kb) = (kb(), kb(), kb());
    let uptime_s = lines.next().and_then(|l| l.trim().parse().ok()).expect("flotd's uptime");
    Sample { at, pid, ticks, rss_kb, anon_kb, file_kb, uptime_s }
}

/// One host's footprint over a window: the largest RSS seen and the share of one core used.
struct Footprint {
    host: &'static str,
    local_units: usize,
    rss_mb: f64,
    /// Anonymous and file-backed (mostly the binary's code) parts of the RSS at the end.
    anon_mb: f64,
    file_mb: f64,
    /// How long flotd had run when the window opened.
    uptime_s: u64,
    cpu_percent: f64,
    seconds: f64,
}

/// Samples flotd on every host every 5 s over `window`.
fn footprint(s: &Scenario, window: Duration) -> Vec<Footprint> {
    let ticks_per_second: f64 = s.host(HOSTS[0], &["getconf", "CLK_TCK"]).parse().expect("CLK_TCK");
    let first: Vec<Sample> = HOSTS.iter().map(|host| sample(s, host)).collect();
    let mut max_rss: Vec<u64> = first.iter().map(|sample| sample.rss_kb).collect();
    let end = Instant::now() + window;
    let mut last = Vec::new();
    while last.is_empty() {
        sleep(end.saturating_duration_since(Instant::now()).min(Duration::from_secs(5)));
        let now: Vec<Sample> = HOSTS.iter().map(|host| sample(s, host)).collect();
        for (max, sample) in max_rss.iter_mut().zip(&now) {
            *max = (*max).max(sample.rss_kb);
        }
        if Instant::now() >= end {
            last = now;
        }
    }
    HOSTS
        .iter()
        .zip(first.iter().zip(&last))
        .zip(max_rss)
        .map(|((host, (a, b)), rss_kb)| {
            assert_eq!(a.pid, b.pid, "flotd restarted on {host} during the window");
            let seconds = b.at.duration_since(a.at).as_secs_f64();
            let cpu = (b.ticks - a.ticks) as f64 / ticks_per_second / seconds * 100.0;
            let listing = s.host(host, &["ls", "/run/flotilla/units"]);
            Footprint {
                host,
                local_units: listing.lines().filter(|l| !l.is_empty()).count(),
                rss_mb: rss_kb as f64 * 1024.0 / 1e6,
                anon_mb: b.anon_kb as f64 * 1024.0 / 1e6,
                file_mb: b.file_kb as f64 * 1024.0 / 1e6,
                uptime_s: a.uptime_s,
                cpu_percent: cpu,
                seconds,
            }
        })
        .collect()
}

/// Waits until flotd has run for `settle` on every host, so that a window measures an idle
/// agent, not one still starting up (a test before may have restarted it).
fn wait_for_uptime(s: &Scenario, settle: Duration) {
    let uptime = |host: &str| sample(s, host).uptime_s;
    let youngest = HOSTS.iter().map(|host| uptime(host)).min().unwrap_or(0);
    sleep(settle.saturating_sub(Duration::from_secs(youngest)));
    s.wait_for("flotd settled on every host", settle * 2, || {
        HOSTS.iter().all(|host| uptime(host) >= settle.as_secs()).then_some(())
    });
}

fn footprint_figure(summary: &mut Summary, per_host: usize, hosts: &[Footprint]) {
    let rss = hosts.iter().map(|h| h.rss_mb).fold(0.0, f64::max);
    let cpu = hosts.iter().map(|h| h.cpu_percent).fold(0.0, f64::max);
    let seconds = hosts.iter().map(|h| h.seconds).fold(0.0, f64::max);
    let units: Vec<String> = hosts.iter().map(|h| h.local_units.to_string()).collect();
    let what =
        format!("flotd idle: {} local units ({:.0} s; worst of 3 hosts)", units.join("/"), seconds);
    let figure = format!("{rss:.1} MB RSS / {cpu:.2} % of a core");
    let (target, limits) = match per_host {
        0 => ("<= 12 MB / <= 0.1 %", Some((12.0, 0.1))),
        1000 => ("<= 30 MB / <= 1 %", Some((30.0, 1.0))),
        _ => ("-", None),
    };
    let pass = limits.map(|(mb, percent)| rss <= mb && cpu <= percent);
    summary.figure(&format!("70-{per_host:06}"), &what, &figure, target, pass);
}

#[test]
#[ignore = "benchmark; run by scripts/bench"]
fn idle_footprint() {
    let per_host = setting("BENCH_FOOTPRINT_UNITS", 1000) as usize;
    let window = Duration::from_secs(setting("BENCH_FOOTPRINT_SECS", 60));
    let timeout = Duration::from_secs(setting("BENCH_TIMEOUT", 480));
    let s = scenario();
    let etcd = Etcd::connect();
    let prefix = "bench-f";
    let _cleanup = Cleanup { scenario: &s, prefixes: vec![prefix.to_string()] };
    let mut summary = Summary::new("footprint");
    let mut rows = Vec::new();
    let mut record = |per_host: usize, hosts: &[Footprint]| {
        for h in hosts {
            rows.push(format!(
                "{per_host},{},{},{:.2},{:.2},{:.2},{:.3},{:.1},{}",
                h.host,
                h.local_units,
                h.rss_mb,
                h.anon_mb,
                h.file_mb,
                h.cpu_percent,
                h.seconds,
                h.uptime_s
            ));
        }
    };

    let settle = Duration::from_secs(setting("BENCH_FOOTPRINT_SETTLE", 30));
    wait_for_uptime(&s, settle);
    let empty = footprint(&s, window);
    record(0, &empty);
    footprint_figure(&mut summary, 0, &empty);

    // The least-loaded host wins each placement, so the units spread evenly.
    let files = unit_files(&s, prefix, per_host * HOSTS.len(), ONESHOT);
    let bulk = start_in_bulk(&s, &etcd, prefix, &files, timeout);
    assert!(bulk.all_active.is_some(), "only {} of {} became active", bulk.active, files.len());
    // Let the last reports and reloads settle before the window opens.
    sleep(settle);
    let loaded = footprint(&s, window);
    record(per_host, &loaded);
    footprint_figure(&mut summary, per_host, &loaded);

    let destroyed = destroy(&s, prefix);
    eprintln!(
        "bench: {} units active after {:.1} s; destroyed in {destroyed:.1} s",
        files.len(),
        bulk.all_active.unwrap_or(f64::NAN)
    );
    let header = "units_per_host,host,local_units,rss_mb,rss_anon_mb,rss_file_mb,\
        cpu_percent_of_core,seconds,flotd_uptime_s";
    write_csv("footprint.csv", header, &rows);
    summary.write();
}
