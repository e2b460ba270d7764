//! A small scenario language for the cluster tests: a three-host cluster, flotctl against it,
//! commands inside a host, and waits with deadlines.
//!
//! The cluster is the one `scripts/cluster up` starts (three etcd members, three hosts running
//! systemd as PID 1 and flotd as a service). Tests share it and run one at a time; each works
//! on units of its own name and leaves none behind.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// The hosts' container names.
pub const HOSTS: [&str; 3] = ["flotilla-host1", "flotilla-host2", "flotilla-host3"];

/// The lease TTL the test cluster runs with.
pub const TTL: Duration = Duration::from_secs(5);

/// etcd as this machine reaches it.
pub const ENDPOINTS: &str = "http://127.0.0.1:23791,http://127.0.0.1:23792,http://127.0.0.1:23793";

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn bin(name: &str) -> PathBuf {
    // The binaries cargo built for this run: where CARGO_TARGET_DIR puts them, if it is set.
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or(root().join("target"), PathBuf::from);
    let dir =
        std::env::var_os("FLOTILLA_BIN_DIR").map(PathBuf::from).unwrap_or(target.join("release"));
    dir.join(name)
}

/// One test's hold on the shared cluster; dropping it after a panic prints the agents' logs.
pub struct Scenario {
    _serial: MutexGuard<'static, ()>,
}

/// Takes the cluster for one test, starting it on first use.
pub fn scenario() -> Scenario {
    static SERIAL: Mutex<()> = Mutex::new(());
    static UP: OnceLock<()> = OnceLock::new();
    let serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    UP.get_or_init(|| {
        let status = Command::new(root().join("scripts/cluster"))
            .arg("up")
            .env("FLOTD_TTL", TTL.as_secs().to_string())
            .env("FLOTD_BIN", bin("flotd"))
            .status()
            .expect("run scripts/cluster up");
        assert!(status.success(), "scripts/cluster up failed");
    });
    let scenario = Scenario { _serial: serial };
    // A previous test may have left a host down; every test starts from three live hosts.
    for host in HOSTS {
        scenario.ensure_host_up(host);
    }
    scenario.wait_for("three machines registered", Duration::from_secs(60), || {
        (scenario.machines().len() == 3).then_some(())
    });
    // A test that failed may have left units behind; each test starts from an empty cluster.
    let leftover = scenario.flotctl(&["list-unit-files", "--no-legend", "--fields", "unit"]);
    if !leftover.stdout.trim().is_empty() {
        scenario.flotctl(&["destroy", "*"]);
    }
    scenario
}

impl Drop for Scenario {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for host in HOSTS {
            let out =
                self.host_output(host, &["journalctl", "-u", "flotd", "--no-pager", "-n", "60"]);
            let text = String::from_utf8_lossy(&out.stdout);
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            eprintln!("--- flotd on {host} ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// flotctl's outcome.
pub struct Run {
    /// Exit code.
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Scenario {
    /// Runs flotctl with the test cluster's endpoints.
    /// flotctl with `args`, set up as [`Scenario::flotctl`] runs it, to be spawned.
    pub fn flotctl_command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(bin("flotctl"));
        command.args(args).env("FLOTCTL_ENDPOINTS", ENDPOINTS).current_dir(root());
        command
    }

    /// Starts `flotctl journal -f --lines <lines> unit`; its lines arrive on the receiver.
    pub fn follow_journal(
        &self,
        unit: &str,
        lines: &str,
    ) -> (std::process::Child, std::sync::mpsc::Receiver<String>) {
        let mut child = self
            .flotctl_command(&["journal", "-f", "--lines", lines, unit])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn flotctl journal -f");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        (child, rx)
    }

    /// The numbers of the next `count` lines from `lines` that end in `<marker><number>`.
    pub fn numbered_lines(
        &self,
        lines: &std::sync::mpsc::Receiver<String>,
        marker: &str,
        count: usize,
    ) -> Vec<u64> {
        let mut numbers = Vec::new();
        while numbers.len() < count {
            let line = lines.recv_timeout(Duration::from_secs(10)).expect("a followed line");
            if let Some(n) = line.rsplit(marker).next().and_then(|n| n.trim().parse().ok()) {
                numbers.push(n);
            }
        }
        numbers
    }

    pub fn flotctl(&self, args: &[&str]) -> Run {
        let out = Command::new(bin("flotctl"))
            .args(args)
            .env("FLOTCTL_ENDPOINTS", ENDPOINTS)
            .current_dir(root())
            .output()
            .expect("run flotctl");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs flotctl and fails the test unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.flotctl(args);
        assert_eq!(run.code, 0, "flotctl {args:?} failed: {}{}", run.stdout, run.stderr);
        run.stdout
    }

    /// Writes unit files into a fresh directory and returns their paths.
    pub fn unit_files(&self, files: &[(&str, &str)]) -> Vec<String> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = root().join(format!("target/test-units/{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        files
            .iter()
            .map(|(name, text)| {
                let path = dir.join(name);
                std::fs::write(&path, text).unwrap();
                path.display().to_string()
            })
            .collect()
    }

    /// A command's output inside a host container.
    pub fn host_output(&self, host: &str, cmd: &[&str]) -> Output {
        Command::new("docker").arg("exec").arg(host).args(cmd).output().expect("run docker exec")
    }

    /// A command's standard output inside a host; fails the test if it fails.
    pub fn host(&self, host: &str, cmd: &[&str]) -> String {
        let out = self.host_output(host, cmd);
        assert!(
            out.status.success(),
            "{cmd:?} on {host} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Runs docker on this machine.
    pub fn docker(&self, args: &[&str]) {
        let out = Command::new("docker").args(args).output().expect("run docker");
        assert!(out.status.success(), "docker {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// The machine id of a host.
    pub fn machine_id(&self, host: &str) -> String {
        let path = root().join(format!("target/cluster/{host}/machine-id"));
        std::fs::read_to_string(path).expect("machine id of a test host").trim().to_string()
    }

    /// The host whose machine id is `id`.
    pub fn host_by_id(&self, id: &str) -> &'static str {
        HOSTS.into_iter().find(|h| self.machine_id(h) == id).expect("a known machine id")
    }

    /// Registered machine ids, from `flotctl list-machines`.
    pub fn machines(&self) -> Vec<String> {
        let run = self.flotctl(&["list-machines", "--full", "--no-legend", "--fields", "machine"]);
        run.stdout.lines().map(|l| l.trim().to_string()).filter(|l| !l.is_empty()).collect()
    }

    /// Placed units as (unit, machine id, active, sub), from `flotctl list-units -o json`.
    pub fn units(&self) -> Vec<(String, String, String, String)> {
        let run = self.flotctl(&["list-units", "--full", "-o", "json"]);
        if run.code != 0 {
            return Vec::new();
        }
        let rows: Vec<BTreeMap<String, serde_json::Value>> =
            serde_json::from_str(&run.stdout).unwrap();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or("-").to_string();
        rows.into_iter()
            .map(|r| (text(&r["unit"]), text(&r["machine"]), text(&r["active"]), text(&r["sub"])))
            .collect()
    }

    /// The hosts a unit is active on.
    pub fn active_on(&self, unit: &str) -> Vec<&'static str> {
        self.units()
            .into_iter()
            .filter(|(u, _, active, _)| u == unit && active == "active")
            .map(|(_, machine, _, _)| self.host_by_id(&machine))
            .collect()
    }

    /// The keys under `prefix`, read straight from etcd.
    pub fn etcd_keys(&self, prefix: &str) -> Vec<String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let endpoints: Vec<&str> = ENDPOINTS.split(',').collect();
            let mut client = etcd_client::Client::connect(endpoints, None).await.unwrap();
            let options = etcd_client::GetOptions::new().with_prefix().with_keys_only();
            let response = client.get(prefix, Some(options)).await.unwrap();
            response.kvs().iter().map(|kv| String::from_utf8_lossy(kv.key()).into_owned()).collect()
        })
    }

    /// Polls `probe` every 100 ms until it returns a value or `timeout` passes.
    pub fn wait_for<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut probe: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(value) = probe() {
                return value;
            }
            assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
            sleep(Duration::from_millis(100));
        }
    }

    /// systemd's view of a unit on a host: (ActiveState, MainPID).
    pub fn systemd_state(&self, host: &str, unit: &str) -> (String, u32) {
        let out = self.host(host, &["systemctl", "show", "-p", "ActiveState,MainPID", unit]);
        let mut active = String::new();
        let mut pid = 0;
        for line in out.lines() {
            match line.split_once('=') {
                Some(("ActiveState", v)) => active = v.to_string(),
                Some(("MainPID", v)) => pid = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        (active, pid)
    }

    /// Whether any trace of a unit is left on a host: a file in flotd's directory or a unit
    /// systemd still knows.
    pub fn traces_on(&self, host: &str, unit: &str) -> Vec<String> {
        let mut traces = Vec::new();
        let file = format!("/run/flotilla/units/{unit}");
        if self.host_output(host, &["test", "-e", &file]).status.success() {
            traces.push(format!("{host}: {file} exists"));
        }
        let link = format!("/run/systemd/system/{unit}");
        if self.host_output(host, &["test", "-L", &link]).status.success() {
            traces.push(format!("{host}: {link} exists"));
        }
        let load = self.host(host, &["systemctl", "show", "-p", "LoadState", "--value", unit]);
        if load != "not-found" {
            traces.push(format!("{host}: systemd still has {unit} ({load})"));
        }
        traces
    }

    /// Kills flotd on a host with SIGKILL and waits until systemd has started it again.
    pub fn kill_flotd(&self, host: &str) {
        let main_pid =
            || self.host(host, &["systemctl", "show", "-p", "MainPID", "--value", "flotd"]);
        let killed = main_pid();
        self.host(host, &["kill", "-9", &killed]);
        self.wait_for("flotd restarted by systemd", Duration::from_secs(10), || {
            let now = main_pid();
            (now != killed && now != "0").then_some(())
        });
    }

    /// Makes sure a host container runs and its flotd is active.
    pub fn ensure_host_up(&self, host: &str) {
        let running = Command::new("docker")
            .args(["container", "inspect", "-f", "{{.State.Running}}", host])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "true")
            .unwrap_or(false);
        if !running {
            self.docker(&["start", host]);
        }
        // A test that failed may have left a drop-in changing how flotd runs.
        let dropin = "/run/systemd/system/flotd.service.d";
        if self.host_output(host, &["test", "-d", dropin]).status.success() {
            self.host(host, &["rm", "-rf", dropin]);
            self.host(host, &["systemctl", "daemon-reload"]);
            self.host(host, &["systemctl", "restart", "flotd"]);
        }
        self.wait_for(&format!("flotd active on {host}"), Duration::from_secs(90), || {
            let out = self.host_output(host, &["systemctl", "is-active", "flotd"]);
            if String::from_utf8_lossy(&out.stdout).trim() == "active" {
                return Some(());
            }
            // After a stop in a test, flotd needs starting again.
            let _ = self.host_output(host, &["systemctl", "start", "flotd"]);
            None
        });
    }

    /// Destroys units by name or glob, ignoring ones that are already gone.
    pub fn cleanup(&self, patterns: &[&str]) {
        for pattern in patterns {
            let _ = self.flotctl(&["destroy", pattern]);
        }
    }

    /// Every key under the flotilla prefix, with its value, read straight from etcd.
    pub fn etcd_dump(&self) -> BTreeMap<String, String> {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let endpoints: Vec<&str> = ENDPOINTS.split(',').collect();
            let mut client = etcd_client::Client::connect(endpoints, None).await.unwrap();
            let options = etcd_client::GetOptions::new().with_prefix();
            let response = client.get("/flotilla/", Some(options)).await.unwrap();
            response
                .kvs()
                .iter()
                .map(|kv| {
                    (
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        String::from_utf8_lossy(kv.value()).into_owned(),
                    )
                })
                .collect()
        })
    }
}

/// A path relative to the repository, as a string.
pub fn repo_path(relative: &str) -> String {
    Path::new(&root()).join(relative).display().to_string()
}
