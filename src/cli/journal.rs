//! `flotctl journal`: a unit's last journal lines, from the host that runs it.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use etcd_client::PutOptions;
use tokio::time::Instant;

use super::{JournalArgs, View, existing};
use crate::keyspace::{self, JournalOutput, JournalRequest, RECORD_VERSION};
use crate::store::Store;

/// How often the answers are looked for.
const POLL: Duration = Duration::from_millis(100);

/// `flotctl journal`
pub async fn journal(store: &Store, args: &JournalArgs) -> anyhow::Result<()> {
    let view = View::read_dirs(store, &["units", "claims", "machines"]).await?;
    let names = existing(&view, std::slice::from_ref(&args.unit))?;
    let [name] = names.as_slice() else {
        bail!("{} names {} units; journal reads one", args.unit, names.len());
    };
    let machines = view.claims.get(name).cloned().unwrap_or_default();
    if machines.is_empty() {
        bail!("unit {name} is not placed on any host");
    }

    // The requests and answers live as long as this lease: revoked at the end, or expiring
    // shortly after the wait if this process dies.
    let mut client = store.client();
    let ttl = args.timeout.as_secs().max(1) as i64 + 5;
    let lease = client.lease_grant(ttl, None).await.context("failed to grant a lease")?.id();
    let request =
        JournalRequest { version: RECORD_VERSION, unit: name.to_string(), lines: args.lines };
    let ids: Vec<String> = (0..machines.len()).map(|i| format!("{lease:x}-{i}")).collect();
    for (machine, id) in machines.iter().zip(&ids) {
        let key = store.keys.journal_request(machine, id);
        let options = PutOptions::new().with_lease(lease);
        client
            .put(key, keyspace::encode(&request), Some(options))
            .await
            .context("failed to ask for the journal")?;
    }

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
