//! `flotctl journal`: the last lines of a unit's journal, read on the host that runs it.
//!
//! flotctl has no way onto a host, so the request goes through etcd. flotctl writes it under
//! the host's `journal/requests/` bound to a lease of its own; the host's agent reads the
//! journal (or, for a container unit, Docker's log) and writes the lines to
//! `journal/output/<request>` under that same lease, and flotctl revokes the lease once it
//! has printed them. A flotctl that dies leaves nothing behind for longer than its lease.

use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, PutOptions, WatchOptions};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::docker::DockerEngine;
use crate::keyspace::{self, JournalOutput, JournalRequest, RECORD_VERSION};
use crate::store::Store;
use crate::unit::UnitName;

/// The most lines one request may ask for.
pub const MAX_LINES: u32 = 10_000;

/// The most bytes sent back: etcd refuses values much larger. The oldest lines are dropped.
const MAX_OUTPUT_BYTES: usize = 1_000_000;

/// How long reading one journal may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether `id` can name a request: it becomes part of a key, so it must not break one.
pub fn is_request_id(id: &str) -> bool {
    (1..=64).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Answers this host's journal requests until `shutdown`.
pub async fn serve(
    store: Store,
    machine: String,
    docker: Option<DockerEngine>,
    shutdown: CancellationToken,
) {
    let prefix = store.keys.journal_requests(&machine);
    loop {
        let answered = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = watch_requests(&store, &prefix, docker.as_ref()) => result,
        };
        if let Err(error) = answered {
            debug!(error = %format!("{error:#}"), "journal requests: watch broke");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// Answers the requests already waiting, then each new one, until the watch breaks.
async fn watch_requests(
    store: &Store,
    prefix: &str,
    docker: Option<&DockerEngine>,
) -> anyhow::Result<()> {
    let mut reconnects = store.reconnects();
    reconnects.borrow_and_update();
    let mut client = store.client();
    let waiting = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let revision = waiting.header().map_or(0, |h| h.revision());
    for kv in waiting.kvs() {
        spawn_answer(store, prefix, kv, docker);
    }
    let options = WatchOptions::new().with_prefix().with_start_revision(revision + 1);
    let mut stream = client.watch(prefix, Some(options)).await?;
    loop {
        let response = tokio::select! {
            message = stream.message() => match message? {
                Some(response) => response,
                None => return Ok(()),
            },
            // The stream may be on the member another task found dead: open it anew.
            Ok(()) = reconnects.changed() => return Ok(()),
        };
        for event in response.events() {
            if let (EventType::Put, Some(kv)) = (event.event_type(), event.kv()) {
                spawn_answer(store, prefix, kv, docker);
            }
        }
    }
}

fn spawn_answer(store: &Store, prefix: &str, kv: &KeyValue, docker: Option<&DockerEngine>) {
    let (store, docker) = (store.clone(), docker.cloned());
    let key = kv.key().to_vec();
    let id = String::from_utf8_lossy(kv.key()).strip_prefix(prefix).map(str::to_string);
    let (value, lease) = (kv.value().to_vec(), kv.lease());
    tokio::spawn(async move {
        let answer = async {
            let id = id.filter(|id| is_request_id(id)).ok_or("a malformed request key")?;
            // An answer outlives its asker by no more than the asker's lease.
            if lease == 0 {
                return Err("a request bound to no lease");
            }
            let request: JournalRequest =
                keyspace::decode(&value).map_err(|_| "an unreadable request")?;
            let output = read(&request, docker.as_ref()).await;
            let options = PutOptions::new().with_lease(lease);
            let key = store.keys.journal_output(&id);
            // The asker may have given up already, its lease gone with it: nothing to do then.
            if let Err(error) =
                store.client().put(key, keyspace::encode(&output), Some(options)).await
            {
                debug!(error = %error, "journal answer not written");
            }
            Ok(())
        };
        if let Err(what) = answer.await {
            warn!(key = %String::from_utf8_lossy(&key), "ignoring {what}");
        }
        let _ = store.client().delete(key, None).await;
    });
}

/// Reads the journal a request asks for; a failure is the answer's error, not the agent's.
async fn read(request: &JournalRequest, docker: Option<&DockerEngine>) -> JournalOutput {
    let lines = request.lines.clamp(1, MAX_LINES);
    let result = match UnitName::parse(&request.unit) {
        Err(error) => Err(error.to_string()),
        Ok(unit) if unit.suffix() == ".container" => match docker {
            None => Err("Docker is not reachable on this host".to_string()),
            Some(docker) => {
                match tokio::time::timeout(READ_TIMEOUT, docker.logs(&unit, lines)).await {
                    Ok(result) => result.map_err(|e| format!("{e:#}")),
                    Err(_) => Err("Docker did not answer within 10s".to_string()),
                }
            }
        },
        Ok(unit) => journalctl(&unit, lines).await,
    };
    let (text, error) = match result {
        Ok(text) => (keep_tail(text, MAX_OUTPUT_BYTES), None),
        Err(error) => (String::new(), Some(error)),
    };
    JournalOutput { version: RECORD_VERSION, text, error }
}

async fn journalctl(unit: &UnitName, lines: u32) -> Result<String, String> {
    let mut command = tokio::process::Command::new("journalctl");
    // The unit name was validated, and `--unit=` keeps it a value whatever it starts with.
    command
        .args(["--no-pager", "--output", "short-iso"])
        .arg(format!("--lines={lines}"))
        .arg(format!("--unit={unit}"))
        .kill_on_drop(true);
    let output = match tokio::time::timeout(READ_TIMEOUT, command.output()).await {
        Err(_) => return Err("journalctl did not finish within 10s".to_string()),
        Ok(Err(error)) => return Err(format!("cannot run journalctl: {error}")),
        Ok(Ok(output)) => output,
    };
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("journalctl failed ({}): {}", output.status, stderr.trim()));
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The end of `text` within `max` bytes, cut at a line start.
fn keep_tail(text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let start = text[start..].find('\n').map_or(start, |at| start + at + 1);
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_whole_lines_within_the_limit() {
        let text = "first line\nsecond line\nthird\n".to_string();
        assert_eq!(keep_tail(text.clone(), 100), text);
        assert_eq!(keep_tail(text.clone(), 20), "second line\nthird\n");
        assert_eq!(keep_tail(text.clone(), 10), "third\n");
        assert_eq!(keep_tail("é\né\n".to_string(), 4), "é\n");
    }

    #[test]
    fn request_ids_cannot_break_a_key() {
        assert!(is_request_id("1a2b-0"));
        for bad in ["", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!is_request_id(bad), "{bad:?}");
        }
    }
}
