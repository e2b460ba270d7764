//! `flotctl journal`: the last lines of a unit's journal, read on the host that runs it.
//!
//! flotctl has no way onto a host, so the request goes through etcd. flotctl writes it under
//! the host's `journal/requests/` bound to a lease of its own; the host's agent reads the
//! journal (or, for a container unit, Docker's log) and writes the lines to
//! `journal/output/<request>` under that same lease, and flotctl revokes the lease once it
//! has printed them. A flotctl that dies leaves nothing behind for longer than its lease.
//!
//! A followed journal (`flotctl journal -f`) is sent in numbered parts,
//! `journal/output/<request>/<part>`, a few times a second while lines come; part 0 is sent at
//! once, so that flotctl knows the host has begun. The host stops when a part cannot be
//! written or the request is gone, which is when flotctl revokes its lease or stops keeping it.

use std::collections::BTreeSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{EventType, GetOptions, KeyValue, PutOptions, WatchOptions};
use futures_util::{Stream, StreamExt};
use tokio::io::AsyncReadExt;
use tokio::time::Instant;
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

/// How often a followed journal's new lines are sent.
const PART_EVERY: Duration = Duration::from_millis(200);

/// The most bytes of one part of a followed journal.
const MAX_PART_BYTES: usize = 64 << 10;

/// How long a followed journal may send nothing before the host checks that the request is
/// still there.
const IDLE_CHECK: Duration = Duration::from_secs(2);

/// A followed journal's output as it comes.
type Lines = Pin<Box<dyn Stream<Item = Result<Vec<u8>, String>> + Send>>;

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
    let answering = Answering::default();
    loop {
        let answered = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = watch_requests(&store, &prefix, docker.as_ref(), &answering) => result,
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
    answering: &Answering,
) -> anyhow::Result<()> {
    let mut reconnects = store.reconnects();
    reconnects.borrow_and_update();
    let mut client = store.client();
    let waiting = client.get(prefix, Some(GetOptions::new().with_prefix())).await?;
    let revision = waiting.header().map_or(0, |h| h.revision());
    for kv in waiting.kvs() {
        spawn_answer(store, prefix, kv, docker, answering);
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
                spawn_answer(store, prefix, kv, docker, answering);
            }
        }
    }
}

/// The request keys being answered: a watch opened anew lists a followed request again while
/// its answer is still being sent.
type Answering = Arc<Mutex<BTreeSet<Vec<u8>>>>;

fn spawn_answer(
    store: &Store,
    prefix: &str,
    kv: &KeyValue,
    docker: Option<&DockerEngine>,
    answering: &Answering,
) {
    let key = kv.key().to_vec();
    if !answering.lock().expect("answering lock").insert(key.clone()) {
        return;
    }
    let (store, docker, answering) = (store.clone(), docker.cloned(), answering.clone());
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
            if request.follow {
                follow(&store, &id, &request, lease, &key, docker.as_ref()).await;
                return Ok(());
            }
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
        let _ = store.client().delete(key.as_slice(), None).await;
        answering.lock().expect("answering lock").remove(&key);
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

/// Sends a unit's journal in parts as it grows, until the asker is gone or the journal
/// cannot be read any more; that last part carries the error.
async fn follow(
    store: &Store,
    id: &str,
    request: &JournalRequest,
    lease: i64,
    request_key: &[u8],
    docker: Option<&DockerEngine>,
) {
    // 0 lines: only those written from now on, as with `journalctl --follow --lines=0`.
    let lines = request.lines.min(MAX_LINES);
    let (mut source, mut error) = match follow_source(&request.unit, lines, docker) {
        Ok(source) => (Some(source), None),
        Err(error) => (None, Some(error)),
    };
    let mut pending: Vec<u8> = Vec::new();
    let mut part = 0;
    let mut last_sent = Instant::now();
    let mut tick = tokio::time::interval(PART_EVERY);
    loop {
        let next = async {
            match source.as_mut() {
                Some(source) => source.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            chunk = next => match chunk {
                Some(Ok(bytes)) => {
                    pending.extend_from_slice(&bytes);
                    if pending.len() < MAX_PART_BYTES {
                        continue;
                    }
                }
                Some(Err(reason)) => error = Some(reason),
                None => error = Some("the journal reader ended".to_string()),
            },
            _ = tick.tick() => {
                let nothing_new = pending.is_empty() && error.is_none();
                if nothing_new && part > 0 {
                    if last_sent.elapsed() >= IDLE_CHECK {
                        last_sent = Instant::now();
                        if !still_asked(store, request_key).await {
                            return;
                        }
                    }
                    continue;
                }
            }
        }
        // Whole lines only, unless the journal is over or a line alone fills a part.
        let cut = match error.is_some() || pending.len() >= MAX_PART_BYTES {
            true => pending.len(),
            false => pending.iter().rposition(|&b| b == b'\n').map_or(0, |at| at + 1),
        };
        if cut == 0 && part > 0 && error.is_none() {
            continue;
        }
        let text = String::from_utf8_lossy(&pending[..cut]).into_owned();
        pending.drain(..cut);
        let output = JournalOutput { version: RECORD_VERSION, text, error: error.clone() };
        let key = store.keys.journal_part(id, part);
        let options = PutOptions::new().with_lease(lease);
        if let Err(error) = store.client().put(key, keyspace::encode(&output), Some(options)).await
        {
            debug!(error = %error, "followed journal: the asker is gone");
            return;
        }
        part += 1;
        last_sent = Instant::now();
        if error.is_some() {
            return;
        }
    }
}

/// Whether the request at `key` is still there; true when etcd cannot say.
async fn still_asked(store: &Store, key: &[u8]) -> bool {
    let options = GetOptions::new().with_count_only();
    match store.client().get(key, Some(options)).await {
        Ok(response) => response.count() > 0,
        Err(_) => true,
    }
}

/// The output of the reader that follows `unit`'s journal, from its last `lines` lines on.
fn follow_source(unit: &str, lines: u32, docker: Option<&DockerEngine>) -> Result<Lines, String> {
    let unit = UnitName::parse(unit).map_err(|e| e.to_string())?;
    if unit.suffix() == ".container" {
        let docker = docker.ok_or("Docker is not reachable on this host")?;
        return Ok(Box::pin(docker.follow_logs(&unit, lines)));
    }
    let mut command = tokio::process::Command::new("journalctl");
    command
        .args(["--no-pager", "--output", "short-iso", "--follow"])
        .arg(format!("--lines={lines}"))
        .arg(format!("--unit={unit}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    let mut child = command.spawn().map_err(|e| format!("cannot run journalctl: {e}"))?;
    let stdout = child.stdout.take().ok_or("journalctl has no output")?;
    // The child goes along with the stream, so that dropping the stream kills journalctl.
    let reads = futures_util::stream::unfold((child, stdout), |(child, mut stdout)| async move {
        let mut buffer = vec![0; 16 << 10];
        match stdout.read(&mut buffer).await {
            Ok(0) => None,
            Ok(n) => {
                buffer.truncate(n);
                Some((Ok(buffer), (child, stdout)))
            }
            Err(error) => {
                Some((Err(format!("reading journalctl failed: {error}")), (child, stdout)))
            }
        }
    });
    Ok(Box::pin(reads))
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
