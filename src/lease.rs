//! The host's etcd lease: everything the host owns in etcd is bound to it.
//!
//! The lease id is kept in flotd's runtime directory, so an agent restarted within the TTL picks
//! the same lease up again and its claims, and the units behind them, survive the restart.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::store::Store;

/// A granted lease.
#[derive(Clone, Debug)]
pub struct Lease {
    /// etcd's lease id.
    pub id: i64,
    /// Its time-to-live.
    pub ttl: Duration,
}

/// Reuses the lease recorded in `file` if etcd still holds it, or grants a new one.
pub async fn acquire(store: &Store, ttl: Duration, file: &Path) -> anyhow::Result<Lease> {
    if let Some(id) = std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse::<i64>().ok())
    {
        // etcd answers an expired or unknown lease with a negative TTL; an error means it could
        // not say (no leader yet after a quorum loss), and the lease may well be alive.
        let give_up = Instant::now() + ttl;
        loop {
            match store.client().lease_time_to_live(id, None).await {
                Ok(response) if response.ttl() > 0 => {
                    info!(
                        lease.id = id,
                        remaining = response.ttl(),
                        "reusing the lease of this host"
                    );
                    let lease = Lease { id, ttl };
                    // Renew at once: what is left of the TTL may be less than a renewal interval.
                    refresh(store, &lease).await;
                    return Ok(lease);
                }
                Ok(_) => debug!(lease.id = id, "recorded lease has expired"),
                Err(error) if Instant::now() < give_up => {
                    debug!(lease.id = id, error = %error, "cannot ask about the lease yet");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
                Err(error) => debug!(lease.id = id, error = %error, "recorded lease is unknown"),
            }
            break;
        }
    }
    let response = store
        .client()
        .lease_grant(ttl.as_secs() as i64, None)
        .await
        .context("failed to grant a lease")?;
    let lease = Lease { id: response.id(), ttl };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    std::fs::write(file, lease.id.to_string())
        .with_context(|| format!("failed to record the lease in {}", file.display()))?;
    Ok(lease)
}

/// How long before the lease may expire in etcd the agent gives it up: by then its units are
/// being stopped, before the engine can place them elsewhere.
pub fn safety_margin(ttl: Duration) -> Duration {
    (ttl / 5).max(Duration::from_secs(1))
}

/// Renews the lease every third of its TTL until `shutdown`; sends on `lost` once etcd says the
/// lease is gone, or once no renewal has been answered for the TTL minus the safety margin.
///
/// The deadline runs on the monotonic clock from the sending of the last answered renewal, which
/// is no later than the moment etcd last extended the lease; so when it passes, the lease may be
/// about to expire in etcd and the caller must act as if it had.
pub async fn keep_alive(
    store: Store,
    lease: Lease,
    lost: mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    tokio::select! {
        _ = shutdown.cancelled() => {}
        () = renew_until_lost(&store, &lease) => {
            warn!(lease.id = lease.id, "lease lost");
            let _ = lost.send(()).await;
        }
    }
}

async fn renew_until_lost(store: &Store, lease: &Lease) {
    let interval = lease.ttl / 3;
    let give_up_after = lease.ttl - safety_margin(lease.ttl);
    let mut last_renewed = Instant::now();
    loop {
        tokio::time::sleep_until(last_renewed + interval).await;
        match renew(store, lease, last_renewed + give_up_after).await {
            Some(Renewal::Renewed(sent)) => last_renewed = sent,
            Some(Renewal::Expired) | None => return,
        }
    }
}

/// What etcd said to a renewal.
enum Renewal {
    /// The lease was extended by a renewal sent at this moment (or later).
    Renewed(Instant),
    /// etcd no longer holds the lease.
    Expired,
}

/// Renews the lease once, or gives up at `deadline`.
///
/// Each attempt opens a stream of its own, and while none has been answered another follows
/// every tenth of the TTL, the third after a reconnect. Waiting on one request is not enough:
/// a request can sit on a connection to a member that died, and a member forwards renewals to
/// the leader one at a time, so one forwarded to a leader that just died holds the stream for
/// seconds after a new leader was elected.
async fn renew(store: &Store, lease: &Lease, deadline: Instant) -> Option<Renewal> {
    let retry_after = lease.ttl / 10;
    let mut attempts = FuturesUnordered::new();
    let mut made = 0;
    let mut next_attempt = Instant::now();
    let started = next_attempt;
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return None,
            () = tokio::time::sleep_until(next_attempt) => {
                let reconnect = made == 2;
                made += 1;
                if reconnect {
                    let waited_ms = started.elapsed().as_millis() as u64;
                    warn!(lease.id = lease.id, waited_ms, "lease renewal unanswered, reconnecting");
                }
                attempts.push(attempt(store, lease.id, reconnect));
                next_attempt = Instant::now() + retry_after;
            }
            Some((sent, result)) = attempts.next() => match result {
                Ok(()) => {
                    let answered_ms = sent.elapsed().as_millis() as u64;
                    debug!(lease.id = lease.id, answered_ms, "lease renewed");
                    return Some(Renewal::Renewed(sent));
                }
                Err(etcd_client::Error::LeaseKeepAliveError(message))
                    if message == LEASE_NOT_FOUND => return Some(Renewal::Expired),
                Err(error) => {
                    debug!(lease.id = lease.id, error = %error, "lease renewal failed");
                    // A refused request is no reason to wait the whole pause for the next.
                    next_attempt = next_attempt.min(Instant::now() + Duration::from_millis(100));
                }
            },
        }
    }
}

/// How etcd-client reports a renewal that etcd answered with a TTL of zero.
const LEASE_NOT_FOUND: &str = "lease not found";

/// One renewal on a new stream; opening it sends the request and waits for etcd's answer.
async fn attempt(
    store: &Store,
    id: i64,
    reconnect: bool,
) -> (Instant, Result<(), etcd_client::Error>) {
    if reconnect {
        store.reconnect().await;
    }
    let sent = Instant::now();
    let result = store.client().lease_keep_alive(id).await.map(|_| ());
    (sent, result)
}

/// Renews the lease once, for a successor that picks it up after this process exits.
pub async fn refresh(store: &Store, lease: &Lease) {
    match tokio::time::timeout(Duration::from_secs(2), attempt(store, lease.id, false)).await {
        Ok((_, Ok(()))) => {}
        Ok((_, Err(error))) => warn!(lease.id = lease.id, error = %error, "lease renewal failed"),
        Err(_) => warn!(lease.id = lease.id, "lease renewal timed out"),
    }
}

/// Revokes the lease, so the host's claims go at once, and forgets it.
pub async fn release(store: &Store, lease: &Lease, file: &Path) {
    if let Err(error) = store.client().lease_revoke(lease.id).await {
        warn!(lease.id = lease.id, error = %error, "failed to revoke the lease");
    }
    let _ = std::fs::remove_file(file);
}
