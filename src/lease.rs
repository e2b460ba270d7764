//! The host's etcd lease: everything the host owns in etcd is bound to it.
//!
//! The lease id is kept in flotd's runtime directory, so an agent restarted within the TTL picks
//! the same lease up again and its claims, and the units behind them, survive the restart.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
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
        let deadline = last_renewed + give_up_after;
        let mut client = store.client();
        let (mut keeper, mut stream) =
            match tokio::time::timeout_at(deadline, client.lease_keep_alive(lease.id)).await {
                Err(_) => return,
                Ok(Ok(pair)) => pair,
                Ok(Err(error)) => {
                    warn!(lease.id = lease.id, error = %error, "lease renewal failed");
                    reconnect_before(store, deadline).await;
                    continue;
                }
            };
        loop {
            // etcd extends the lease when it handles the request, which is after it was sent:
            // counting from the send keeps the local deadline no later than etcd's.
            let sent = Instant::now();
            if let Err(error) = keeper.keep_alive().await {
                warn!(lease.id = lease.id, error = %error, "lease renewal failed");
                break;
            }
            let deadline = last_renewed + give_up_after;
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Err(_) => return,
                Ok(Ok(Some(response))) if response.ttl() > 0 => last_renewed = sent,
                // etcd answers a renewal of an expired lease with a TTL of zero.
                Ok(Ok(Some(_))) => return,
                Ok(Ok(None)) => break,
                Ok(Err(error)) => {
                    debug!(lease.id = lease.id, error = %error, "lease renewal stream broke");
                    break;
                }
            }
            tokio::time::sleep(interval).await;
        }
        if Instant::now() >= last_renewed + give_up_after {
            return;
        }
        reconnect_before(store, last_renewed + give_up_after).await;
    }
}

/// Pauses briefly and reconnects, but never past `deadline`: probing dead endpoints can take
/// seconds, and the deadline is when the units must be stopping.
async fn reconnect_before(store: &Store, deadline: Instant) {
    let _ = tokio::time::timeout_at(deadline, async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        store.reconnect().await;
    })
    .await;
}

/// Renews the lease once, for a successor that picks it up after this process exits.
pub async fn refresh(store: &Store, lease: &Lease) {
    let renew = async {
        let (mut keeper, mut stream) = store.client().lease_keep_alive(lease.id).await?;
        keeper.keep_alive().await?;
        stream.message().await.map(|_| ())
    };
    match tokio::time::timeout(Duration::from_secs(2), renew).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => warn!(lease.id = lease.id, error = %error, "lease renewal failed"),
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
