//! Container units on the real topology: each host runs its own Docker engine, and flotd runs
//! `.container` units on it through the Engine API.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::{HOSTS, TTL, scenario};

const IP: [(&str, &str); 3] = [
    ("flotilla-host1", "172.31.90.21"),
    ("flotilla-host2", "172.31.90.22"),
    ("flotilla-host3", "172.31.90.23"),
];

fn ip_of(host: &str) -> &'static str {
    IP.iter().find(|(h, _)| *h == host).map(|(_, ip)| *ip).unwrap()
}

fn http_get(address: &str) -> Option<String> {
    let mut stream =
        TcpStream::connect_timeout(&address.parse().ok()?, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(b"GET / HTTP/1.0\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    response.split("\r\n\r\n").nth(1).map(|body| body.trim().to_string())
}

/// Ids of the containers on a host that carry a unit's label.
fn containers_of(s: &common::Scenario, host: &str, unit: &str) -> Vec<String> {
    let filter = format!("label=flotilla.unit={unit}");
    let out = s.host(host, &["docker", "ps", "-a", "-q", "--no-trunc", "--filter", &filter]);
    out.lines().map(str::to_string).collect()
}

/// The workload image as the hosts pull it from the cluster's registry.
const WORKLOAD: &str = "172.31.90.30:5000/flotilla/workload";
/// The same repository as this machine pushes to it.
const WORKLOAD_PUSH: &str = "127.0.0.1:25000/flotilla/workload";

const SLEEPER: &str =
    "[Container]\nImage=172.31.90.30:5000/flotilla/workload:latest\nExec=sleep 1000000\n";

/// Pushes the workload image under a tag no host holds yet, so that getting it is a real pull;
/// returns the reference the hosts pull.
fn fresh_image(s: &common::Scenario) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let tag = format!("t{}", nanos.as_nanos());
    let pushed = format!("{WORKLOAD_PUSH}:{tag}");
    s.docker(&["tag", &format!("{WORKLOAD_PUSH}:latest"), &pushed]);
    s.docker(&["push", "-q", &pushed]);
    s.docker(&["rmi", &pushed]);
    format!("{WORKLOAD}:{tag}")
}

fn holds_image(s: &common::Scenario, host: &str, image: &str) -> bool {
    s.host_output(host, &["docker", "image", "inspect", image]).status.success()
}

/// Now, as `docker events` reads a moment: seconds and nanoseconds. Whole seconds would count
/// a pull logged earlier in the same second, such as the pre-pull just before a failover.
fn epoch() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    format!("{}.{:09}", now.as_secs(), now.subsec_nanos())
}

/// The image pulls a host's engine logged from an `epoch()` reading until now. `--until` takes
/// the next whole second: an event of this very second would otherwise be missed.
fn pulls_on(s: &common::Scenario, host: &str, since: &str) -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let until = (now.as_secs() + 1).to_string();
    let filters = ["--filter", "type=image", "--filter", "event=pull"];
    let mut args = vec!["docker", "events", "--since", since, "--until", &until];
    args.extend(filters);
    s.host(host, &args)
}

/// The `images` column of list-unit-files for one unit.
fn images_column(s: &common::Scenario, unit: &str) -> String {
    let json = s.ok(&["list-unit-files", "-o", "json", "--fields", "unit,images"]);
    let rows: serde_json::Value = serde_json::from_str(&json).unwrap();
    let row = rows.as_array().unwrap().iter().find(|r| r["unit"] == unit).cloned();
    row.map(|r| r["images"].as_str().unwrap_or("-").to_string()).unwrap_or_default()
}

#[test]
fn a_container_unit_publishes_its_port_and_gets_its_settings() {
    let s = scenario();
    let unit = "[Unit]\nDescription=web container\n\n[Container]\n\
        Image=172.31.90.30:5000/flotilla/workload:latest\n\
        Exec=/bin/sh -c 'mkdir -p /www; echo \"$GREETING\" > /www/index.html; \
        echo vol > /data/marker; exec httpd -f -p 8080 -h /www'\n\
        Environment=GREETING=hello-from-a-container\nVolume=/run/flotilla-test-vol:/data\n\
        Label=team=web\nPublishPort=18080:8080\n";
    let files = s.unit_files(&[("web.container", unit)]);
    s.ok(&["start", &files[0]]);
    let host = s.active_on("web.container")[0];

    let address = format!("{}:18080", ip_of(host));
    let body =
        s.wait_for("the published port answering", Duration::from_secs(10), || http_get(&address));
    assert_eq!(body, "hello-from-a-container");
    assert_eq!(s.host(host, &["cat", "/run/flotilla-test-vol/marker"]), "vol");
    let labels =
        s.host(host, &["docker", "inspect", "-f", "{{json .Config.Labels}}", "flotilla-web"]);
    let labels: serde_json::Value = serde_json::from_str(&labels).unwrap();
    assert_eq!(labels["team"], "web");
    assert_eq!(labels["flotilla.unit"], "web.container");
    assert_eq!(labels["flotilla.machine"], s.machine_id(host).as_str());

    s.ok(&["destroy", "web.container"]);
    for host in HOSTS {
        assert_eq!(containers_of(&s, host, "web.container"), Vec::<String>::new());
    }
}

#[test]
fn a_container_that_exits_non_zero_is_reported_failed_and_restarted_on_failure() {
    let s = scenario();
    let unit = "[Container]\nImage=172.31.90.30:5000/flotilla/workload:latest\n\
        Exec=/bin/sh -c 'sleep 1; exit 3'\n\n[Service]\nRestart=on-failure\n";
    let files = s.unit_files(&[("crash.container", unit)]);
    s.ok(&["start", "--no-block", &files[0]]);
    s.wait_for("the exit code and a restart in status", Duration::from_secs(30), || {
        let json = s.ok(&["status", "crash.container", "-o", "json"]);
        let status: serde_json::Value = serde_json::from_str(&json).unwrap();
        let state = &status["crash.container"]["states"][0];
        let code = state["error"].as_str().unwrap_or_default().contains("code 3");
        (code && state["retries"].as_u64().unwrap_or(0) >= 1).then_some(())
    });
    let text = s.ok(&["status", "crash.container"]);
    assert!(text.contains("Restarts after failure"), "{text}");
    s.ok(&["destroy", "crash.container"]);
}

#[test]
fn journal_reads_and_follows_a_containers_log() {
    let s = scenario();
    let unit = "[Container]\nImage=172.31.90.30:5000/flotilla/workload:latest\n\
        Exec=/bin/sh -c 'i=0; while true; do i=$((i+1)); echo tick-$i; sleep 0.2; done'\n";
    let files = s.unit_files(&[("ticker.container", unit)]);
    s.ok(&["start", &files[0]]);
    let last = s.wait_for("two lines of the log", Duration::from_secs(10), || {
        let run = s.ok(&["journal", "-n", "2", "ticker.container"]);
        (run.lines().count() == 2 && run.contains("tick-")).then_some(run)
    });
    let (mut child, lines) = s.follow_journal("ticker.container", "1");
    let numbers = s.numbered_lines(&lines, "tick-", 4);
    assert!(numbers.windows(2).all(|w| w[1] > w[0]), "lines out of order: {numbers:?}");
    let before: u64 = last.lines().last().unwrap().rsplit("tick-").next().unwrap().parse().unwrap();
    assert!(numbers[3] > before, "no line newer than the log read first: {numbers:?}");
    let pid = child.id().to_string();
    assert!(std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    assert!(child.wait().unwrap().success());
    s.ok(&["destroy", "ticker.container"]);
}

#[test]
fn restarting_flotd_adopts_its_containers() {
    let s = scenario();
    let files = s.unit_files(&[("adopt.container", SLEEPER)]);
    s.ok(&["start", &files[0]]);
    let host = s.active_on("adopt.container")[0];
    let before = containers_of(&s, host, "adopt.container");
    assert_eq!(before.len(), 1);

    s.kill_flotd(host);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(containers_of(&s, host, "adopt.container"), before);
    assert_eq!(s.active_on("adopt.container"), [host]);
    s.ok(&["destroy", "adopt.container"]);
}

#[test]
fn images_are_pulled_where_the_unit_could_run_and_a_failover_needs_no_pull() {
    let s = scenario();
    let image = fresh_image(&s);
    // Only the two east hosts may run it: they pull, the west host does not.
    let unit = format!(
        "[Container]\nImage={image}\nExec=sleep 1000000\n\n[X-Fleet]\nMachineMetadata=region=east\n"
    );
    let files = s.unit_files(&[("move.container", &unit)]);
    s.ok(&["submit", &files[0]]);
    s.wait_for("the image on both east hosts", Duration::from_secs(60), || {
        (images_column(&s, "move.container") == "2/2").then_some(())
    });
    assert!(holds_image(&s, "flotilla-host1", &image));
    assert!(holds_image(&s, "flotilla-host3", &image));
    assert!(!holds_image(&s, "flotilla-host2", &image), "the west host pulled");
    let status = s.ok(&["status", "move.container"]);
    assert!(status.contains(&format!("Image: {image} (on 2 of 2 eligible hosts)")), "{status}");

    s.ok(&["start", &files[0]]);
    let victim = s.active_on("move.container")[0];
    let since = epoch();
    let start = Instant::now();
    s.docker(&["kill", victim]);
    let survivor =
        s.wait_for("the container on a survivor", TTL * 2 + Duration::from_secs(5), || {
            let on = s.active_on("move.container");
            (on.len() == 1 && on[0] != victim).then(|| on[0])
        });
    eprintln!("container failover with the image present took {:?}", start.elapsed());
    assert_eq!(pulls_on(&s, survivor, &since), "", "the survivor pulled");

    // The host comes back with the killed copy in its engine; its agent removes it.
    s.docker(&["start", victim]);
    s.ensure_host_up(victim);
    s.wait_for("the stale copy removed", Duration::from_secs(30), || {
        containers_of(&s, victim, "move.container").is_empty().then_some(())
    });
    assert_eq!(s.active_on("move.container"), [survivor]);
    s.ok(&["destroy", "move.container"]);
}

#[test]
fn a_unit_with_pre_pull_off_is_pulled_only_where_it_starts() {
    let s = scenario();
    let image = fresh_image(&s);
    let unit = format!("[Container]\nImage={image}\nPrePull=no\nExec=sleep 1000000\n");
    let files = s.unit_files(&[("lazy.container", &unit)]);
    s.ok(&["submit", &files[0]]);
    // Give the hosts every chance to pull what they should not.
    std::thread::sleep(Duration::from_secs(3));
    for host in HOSTS {
        assert!(!holds_image(&s, host, &image), "{host} pulled a PrePull=no image");
    }
    assert_eq!(images_column(&s, "lazy.container"), "-");

    s.ok(&["start", &files[0]]);
    let victim = s.active_on("lazy.container")[0];
    for host in HOSTS {
        assert_eq!(holds_image(&s, host, &image), host == victim, "{host}");
    }
    let since = epoch();
    let start = Instant::now();
    s.docker(&["kill", victim]);
    let survivor =
        s.wait_for("the container on a survivor", TTL * 2 + Duration::from_secs(10), || {
            let on = s.active_on("lazy.container");
            (on.len() == 1 && on[0] != victim).then(|| on[0])
        });
    eprintln!("container failover with a pull took {:?}", start.elapsed());
    assert_ne!(pulls_on(&s, survivor, &since), "", "the survivor did not pull");
    s.docker(&["start", victim]);
    s.ensure_host_up(victim);
    s.ok(&["destroy", "lazy.container"]);
}

#[test]
fn a_pre_pull_that_fails_says_which_image_and_why() {
    let s = scenario();
    let image = format!("{WORKLOAD}-missing:1");
    let unit = format!("[Container]\nImage={image}\nExec=sleep 1000000\n");
    let files = s.unit_files(&[("absent.container", &unit)]);
    s.ok(&["submit", &files[0]]);
    let status = s.wait_for("three pull failures in status", Duration::from_secs(60), || {
        let status = s.ok(&["status", "absent.container"]);
        (status.matches("Pull failed on").count() == 3).then_some(status)
    });
    assert!(status.contains(&format!("Image: {image} (on 0 of 3 eligible hosts)")), "{status}");
    assert!(status.contains(&format!("failed to pull {image}")), "{status}");
    assert_eq!(images_column(&s, "absent.container"), "0/3");
    s.ok(&["destroy", "absent.container"]);
    s.wait_for("the image records gone", Duration::from_secs(10), || {
        let keys = s.etcd_dump();
        (!keys.keys().any(|k| k.contains("/images/"))).then_some(())
    });
}

#[test]
fn an_image_that_does_not_exist_fails_clearly_and_stays_put() {
    let s = scenario();
    let unit =
        "[Container]\nImage=172.31.90.30:5000/flotilla/workload:no-such-tag\nPullPolicy=never\n";
    let files = s.unit_files(&[("ghost.container", unit)]);
    let run = s.flotctl(&["start", &files[0], "--timeout", "20s"]);
    assert_ne!(run.code, 0);
    let status = s.ok(&["status", "ghost.container"]);
    assert!(status.contains("no-such-tag"), "{status}");
    let first = s.units();
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(s.units(), first, "the unit moved or changed state");
    s.ok(&["destroy", "ghost.container"]);
    for host in HOSTS {
        assert_eq!(containers_of(&s, host, "ghost.container"), Vec::<String>::new());
    }
}
