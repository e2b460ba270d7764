//! `flotctl journal`: a unit's last journal lines, from the host that runs it.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::{EventType, PutOptions, WatchOptions};
use tokio::signal::unix::{SignalKind, signal};
use tokio::time::Instant;

use super::{JournalArgs, View, existing};
use crate::keyspace::{self, ClaimRecord, JournalOutput, JournalRequest, Key, RECORD_VERSION};
use crate::store::Store;
use crate::unit::UnitName;

/// How often the answers are looked for.
const POLL: Duration = Duration::from_millis(100);

/// The lease of a followed journal: the hosts stop within about this long of a flotctl that
/// died without revoking it.
const FOLLOW_TTL: i64 = 6;

/// How often that lease is kept alive.
const FOLLOW_RENEW: Duration = Duration::from_secs(2);

/// `flotctl journal`
pub async fn journal(store: &Store, args: &JournalArgs) -> anyhow::Result<()> {
    let view = View::read_dirs(store, &["units", "claims", "machines"]).await?;
    let mut names = existing(&view, std::slice::from_ref(&args.unit))?;
    // A template is never placed: only its instances have a journal.
    if let [name] = names.as_slice()
        && name.is_template()
    {
        let example = name.instantiate("1").map(|n| n.to_string()).unwrap_or_default();
        bail!("{name} is a template; name an instance such as {example}");
    }
    names.retain(|name| !name.is_template());
    let [name] = names.as_slice() else {
        bail!("{} names {} units; journal reads one", args.unit, names.len());
    };
    let machines = view.claims.get(name).cloned().unwrap_or_default();
    if machines.is_empty() {
        bail!("unit {name} is not placed on any host");
    }
    if args.follow {
        let mut client = store.client();
        let lease =
            client.lease_grant(FOLLOW_TTL, None).await.context("failed to grant a lease")?;
        let result = follow(store, &view, name, &machines, args, lease.id()).await;
        let _ = client.lease_revoke(lease.id()).await;
        return result;
    }

    // The requests and answers live as long as this lease: revoked at the end, or expiring
    // shortly after the wait if this process dies.
    let mut client = store.client();
    let ttl = args.timeout.as_secs().max(1) as i64 + 5;
    let lease = client.lease_grant(ttl, None).await.context("failed to grant a lease")?.id();
    let (ids, _) = ask(store, name, &machines, args, lease).await?;

    let result = collect(store, &ids, args.timeout).await;
    let _ = client.lease_revoke(lease).await;
    let answers = result?;

    let mut out = std::io::stdout().lock();
    let mut failed = Vec::new();
    for (machine, answer) in machines.iter().zip(answers) {
        let label = view.machine_label(machine, false);
        let Some(answer) = answer else {
            failed.push(format!(
                "no answer from {label} within {}",
                humantime::format_duration(args.timeout)
            ));
            continue;
        };
        if machines.len() > 1 {
            writeln!(out, "-- {name} on {label} --")?;
        }
        match answer.error {
            Some(error) => failed.push(format!("{label}: {error}")),
            None => out.write_all(answer.text.as_bytes())?,
        }
    }
    out.flush()?;
    if !failed.is_empty() {
        bail!("cannot read the journal of {name}: {}", failed.join("; "));
    }
    Ok(())
}

/// Asks each of `machines` for `name`'s journal, under `lease`; returns the requests' ids,
/// one a machine, and the revision of the first request.
async fn ask(
    store: &Store,
    name: &UnitName,
    machines: &[String],
    args: &JournalArgs,
    lease: i64,
) -> anyhow::Result<(Vec<String>, i64)> {
    let request = JournalRequest {
        version: RECORD_VERSION,
        unit: name.to_string(),
        lines: args.lines,
        follow: args.follow,
    };
    let ids: Vec<String> = (0..machines.len()).map(|i| format!("{lease:x}-{i}")).collect();
    let mut first_revision = i64::MAX;
    for (machine, id) in machines.iter().zip(&ids) {
        let key = store.keys.journal_request(machine, id);
        let options = PutOptions::new().with_lease(lease);
        let put = store
            .client()
            .put(key, keyspace::encode(&request), Some(options))
            .await
            .context("failed to ask for the journal")?;
        first_revision = first_revision.min(put.header().map_or(0, |h| h.revision()));
    }
    Ok((ids, first_revision))
}

/// Waits until every request is answered or `timeout` passes; `None` for those unanswered.
async fn collect(
    store: &Store,
    ids: &[String],
    timeout: Duration,
) -> anyhow::Result<Vec<Option<JournalOutput>>> {
    let deadline = Instant::now() + timeout;
    let mut answers: Vec<Option<JournalOutput>> = vec![None; ids.len()];
    loop {
        for (id, answer) in ids.iter().zip(answers.iter_mut()).filter(|(_, a)| a.is_none()) {
            let key = store.keys.journal_output(id);
            let response = store.client().get(key.as_str(), None).await?;
            if let Some(kv) = response.kvs().first() {
                let output =
                    keyspace::decode(kv.value()).with_context(|| format!("bad answer at {key}"))?;
                *answer = Some(output);
            }
        }
        if answers.iter().all(Option::is_some) || Instant::now() >= deadline {
            return Ok(answers);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `flotctl journal --follow`: prints each host's parts as they come, until a signal, or
/// until every host has stopped; `lease` binds the requests and the parts.
async fn follow(
    store: &Store,
    view: &View,
    name: &UnitName,
    machines: &[String],
    args: &JournalArgs,
    lease: i64,
) -> anyhow::Result<()> {
    let mut client = store.client();
    let (mut keeper, mut kept) =
        client.lease_keep_alive(lease).await.context("failed to keep a lease")?;
    let (ids, from_revision) = ask(store, name, machines, args, lease).await?;
    // Every part is written after the first request, so a watch from there misses none.
    let prefix = store.keys.journal_output(&format!("{lease:x}-"));
    let options = WatchOptions::new().with_prefix().with_start_revision(from_revision);
    let mut parts =
        client.watch(prefix.as_str(), Some(options)).await.context("failed to watch")?;

    let mut interrupt = signal(SignalKind::interrupt()).context("cannot catch SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot catch SIGTERM")?;
    let mut renew = tokio::time::interval(FOLLOW_RENEW);
    let begin_by = Instant::now() + args.timeout;
    let (mut begun, mut ended) = (vec![false; ids.len()], vec![false; ids.len()]);
    let mut failed = Vec::new();
    let mut last_host = None;
    let mut out = std::io::stdout();
    while !ended.iter().all(|&e| e) {
        let response = tokio::select! {
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
            _ = renew.tick() => {
                keeper.keep_alive().await.context("failed to keep the lease")?;
                match kept.message().await.context("failed to keep the lease")? {
                    Some(answer) if answer.ttl() > 0 => {}
                    _ => bail!("the journal's lease ended; nothing more will come"),
                }
                // A host that died or let the unit go writes nothing more; say so and stop
                // waiting for it rather than go quiet.
                let now_on = placed_on(store, name).await?;
                for (i, machine) in machines.iter().enumerate() {
                    if ended[i] || now_on.contains(machine) {
                        continue;
                    }
                    let label = view.machine_label(machine, false);
                    let mut why = format!("{label} no longer runs it");
                    if !now_on.is_empty() {
                        let labels: Vec<String> =
                            now_on.iter().map(|m| view.machine_label(m, false)).collect();
                        why += &format!("; it runs on {} now", labels.join(", "));
                    }
                    failed.push(why);
                    ended[i] = true;
                }
                continue;
            }
            () = tokio::time::sleep_until(begin_by), if begun.contains(&false) => {
                for (i, machine) in machines.iter().enumerate() {
                    if begun[i] {
                        continue;
                    }
                    let label = view.machine_label(machine, false);
                    let waited = humantime::format_duration(args.timeout);
                    failed.push(format!("no answer from {label} within {waited}"));
                    (begun[i], ended[i]) = (true, true);
                }
                continue;
            }
            message = parts.message() => match message.context("the journal's watch broke")? {
                Some(response) => response,
                None => bail!("the journal's watch ended"),
            },
        };
        for event in response.events() {
            let (EventType::Put, Some(kv)) = (event.event_type(), event.kv()) else { continue };
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(host) = part_host(&key, &prefix).filter(|&i| i < ids.len()) else { continue };
            let part: JournalOutput =
                keyspace::decode(kv.value()).with_context(|| format!("bad part at {key}"))?;
            begun[host] = true;
            let label = view.machine_label(&machines[host], false);
            if !part.text.is_empty() {
                if machines.len() > 1 && last_host != Some(host) {
                    writeln!(out, "-- {name} on {label} --")?;
                }
                last_host = Some(host);
                out.write_all(part.text.as_bytes())?;
                out.flush()?;
            }
            if let Some(error) = part.error {
                failed.push(format!("{label}: {error}"));
                ended[host] = true;
            }
            // Printed parts go at once, so a long follow does not pile them up in etcd.
            let _ = client.delete(kv.key(), None).await;
        }
    }
    if !failed.is_empty() {
        bail!("cannot follow the journal of {name}: {}", failed.join("; "));
    }
    Ok(())
}

/// The machines that hold a claim on `name` now.
async fn placed_on(store: &Store, name: &UnitName) -> anyhow::Result<Vec<String>> {
    let listing = store.list(&store.keys.claim(name, None)).await?;
    let mut machines = Vec::new();
    for kv in &listing.kvs {
        // The prefix also matches longer names, such as `web.service.service`.
        let Some(Key::Claim(unit, _)) = store.keys.parse(kv.key()) else { continue };
        if unit == *name
            && let Ok(claim) = keyspace::decode::<ClaimRecord>(kv.value())
        {
            machines.push(claim.machine);
        }
    }
    Ok(machines)
}

/// Which host's part `key` is: the number after the lease in `<prefix><host>/<part>`.
fn part_host(key: &str, prefix: &str) -> Option<usize> {
    let (host, part) = key.strip_prefix(prefix)?.split_once('/')?;
    part.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
    host.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_key_names_its_host() {
        let prefix = "/flotilla/journal/output/7f-";
        assert_eq!(part_host("/flotilla/journal/output/7f-2/0000000003", prefix), Some(2));
        assert_eq!(part_host("/flotilla/journal/output/7f-2", prefix), None);
        assert_eq!(part_host("/flotilla/journal/output/7f-x/0000000003", prefix), None);
        assert_eq!(part_host("/flotilla/journal/output/80-0/0000000000", prefix), None);
    }
}
