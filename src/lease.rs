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
    if let Some(id) = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
    {
        match store.client().lease_time_to_live(id, None).await {
            Ok(response) if response.ttl() > 0 => {
                info!(
                    lease.id = id,
                    remaining = response.ttl(),
                    "reusing the lease of this host"
                );
                return Ok(Lease { id, ttl });
            }
            Ok(_) => debug!(lease.id = id, "recorded lease has expired"),
            Err(error) => debug!(lease.id = id, error = %error, "recorded lease is unknown"),
        }
    }
    let response = store
        .client()
        .lease_grant(ttl.as_secs() as i64, None)
        .await
        .context("failed to grant a lease")?;
    let lease = Lease {
        id: response.id(),
        ttl,
    };
    if let Some(dir) = file.parent() {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
    }
    std::fs::write(file, lease.id.to_string())
        .with_context(|| format!("failed to record the lease in {}", file.display()))?;
    Ok(lease)
}

/// Renews the lease every third of its TTL until `shutdown`; sends on `lost` once etcd says the
/// lease is gone or no renewal has succeeded for a whole TTL.
pub async fn keep_alive(
    store: Store,
    lease: Lease,
    lost: mpsc::Sender<()>,
    shutdown: CancellationToken,
) {
    let interval = lease.ttl / 3;
    let mut last_renewed = Instant::now();
    loop {
        let renew = async {
            let mut client = store.client();
            let (mut keeper, mut stream) = client.lease_keep_alive(lease.id).await?;
            loop {
                keeper.keep_alive().await?;
                match stream.message().await? {
                    Some(response) if response.ttl() > 0 => {
                        last_renewed = Instant::now();
                    }
                    Some(_) => return Ok::<bool, etcd_client::Error>(true),
                    None => return Ok(false),
                }
                tokio::time::sleep(interval).await;
            }
        };
        let expired = tokio::select! {
            _ = shutdown.cancelled() => return,
            result = renew => match result {
                Ok(expired) => expired,
                Err(error) => {
                    warn!(lease.id = lease.id, error = %error, "lease renewal failed");
                    false
                }
            },
        };
        if expired || last_renewed.elapsed() >= lease.ttl {
            warn!(lease.id = lease.id, "lease lost");
            let _ = lost.send(()).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Revokes the lease, so the host's claims go at once, and forgets it.
pub async fn release(store: &Store, lease: &Lease, file: &Path) {
    if let Err(error) = store.client().lease_revoke(lease.id).await {
        warn!(lease.id = lease.id, error = %error, "failed to revoke the lease");
    }
    let _ = std::fs::remove_file(file);
}
