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

const SLEEPER: &str = "[Container]\nImage=flotilla-workload:latest\nExec=sleep 1000000\n";

#[test]
fn a_container_unit_publishes_its_port_and_gets_its_settings() {
    let s = scenario();
    let unit = "[Unit]\nDescription=web container\n\n[Container]\n\
        Image=flotilla-workload:latest\nPullPolicy=never\n\
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
    let unit = "[Container]\nImage=flotilla-workload:latest\nExec=/bin/sh -c 'sleep 1; exit 3'\n\
        \n[Service]\nRestart=on-failure\n";
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
fn a_killed_host_s_container_comes_up_on_a_survivor_without_a_pull_and_the_stale_copy_goes() {
    let s = scenario();
    let files = s.unit_files(&[("move.container", SLEEPER)]);
    s.ok(&["start", &files[0]]);
    let victim = s.active_on("move.container")[0];
    let epoch = || {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        now.as_secs().to_string()
    };
    let since = epoch();

    let start = Instant::now();
    s.docker(&["kill", victim]);
    let survivor =
        s.wait_for("the container on a survivor", TTL * 2 + Duration::from_secs(5), || {
            let on = s.active_on("move.container");
            (on.len() == 1 && on[0] != victim).then(|| on[0])
        });
    eprintln!("container failover took {:?}", start.elapsed());
    let until = epoch();
    let pulls = s.host(
        survivor,
        &[
            "docker",
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "type=image",
            "--filter",
            "event=pull",
        ],
    );
    assert_eq!(pulls, "", "the survivor pulled during failover");

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
fn an_image_that_does_not_exist_fails_clearly_and_stays_put() {
    let s = scenario();
    let unit = "[Container]\nImage=flotilla-workload:no-such-tag\nPullPolicy=never\n";
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
