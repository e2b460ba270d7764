//! Images ready before they are needed: every host pulls the image of each container unit it
//! could run as soon as the unit is submitted, so that a failover onto it starts at once.
//!
//! The puller runs beside the reconciler and never delays it. It reports what it holds as
//! `images/<id>/<unit>` records bound to the host's lease, which `flotctl list-unit-files` counts
//! and `flotctl status` shows, failures included.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::container::image_to_pre_pull;
use crate::docker::DockerEngine;
use crate::keyspace::{self, ImageRecord, Key, RECORD_VERSION};
use crate::mirror::SharedMirror;
use crate::reconcile;
use crate::store::Store;
use crate::unit::UnitName;

/// How often held images are checked again, in case someone removed one from the engine.
const RECHECK: Duration = Duration::from_secs(30);

/// What one host pulls ahead of need.
pub struct PrePuller {
    /// The etcd connection records are written through.
    pub store: Store,
    /// The keyspace copy the wanted images are read from.
    pub mirror: SharedMirror,
    /// The host's engine.
    pub docker: DockerEngine,
    /// This host's machine id.
    pub machine: String,
    /// This host's metadata, for `MachineMetadata=`.
    pub metadata: BTreeMap<String, String>,
    /// The lease records are bound to.
    pub lease: i64,
}

/// A failed pull and when to try again.
struct Failure {
    retries: u32,
    retry_at: Instant,
}

impl PrePuller {
    /// Pulls and reports until `token` is cancelled, waking on every keyspace change.
    pub async fn run(self, mut changed: watch::Receiver<i64>, token: CancellationToken) {
        let mut reported = self.adopt_reports().await;
        let mut failures: BTreeMap<String, Failure> = BTreeMap::new();
        let mut recheck_at = Instant::now() + RECHECK;
        loop {
            let wanted = self.wanted();
            let recheck = Instant::now() >= recheck_at;
            if recheck {
                recheck_at = Instant::now() + RECHECK;
            }
            // One look (and at most one pull) per image, however many units share it.
            let mut outcomes: BTreeMap<&str, Option<String>> = BTreeMap::new();
            for (name, image) in &wanted {
                if token.is_cancelled() {
                    return;
                }
                let previous = reported.get(name);
                let settled = previous.is_some_and(|r| &r.image == image && r.present);
                let waiting = failures.get(image).is_some_and(|f| Instant::now() < f.retry_at);
                let unchanged = previous.is_some_and(|r| &r.image == image);
                if (settled && !recheck) || (waiting && unchanged) {
                    continue;
                }
                if !outcomes.contains_key(image.as_str()) {
                    let outcome = self.ensure(image, &mut failures).await;
                    outcomes.insert(image, outcome);
                }
                let error = outcomes[image.as_str()].clone();
                let record = ImageRecord {
                    version: RECORD_VERSION,
                    machine: self.machine.clone(),
                    image: image.clone(),
                    present: error.is_none(),
                    error,
                };
                if previous != Some(&record) {
                    self.write(name, &record, &mut reported).await;
                }
            }
            let gone: Vec<UnitName> =
                reported.keys().filter(|name| !wanted.contains_key(*name)).cloned().collect();
            for name in gone {
                match self.store.delete(&self.store.keys.image(&self.machine, &name)).await {
                    Ok(()) => {
                        reported.remove(&name);
                    }
                    Err(error) => {
                        let error = format!("{error:#}");
                        warn!(unit.name = %name, error = %error, "failed to clear image record");
                    }
                }
            }
            failures.retain(|image, _| wanted.values().any(|w| w == image));

            let retry = failures.values().map(|f| f.retry_at).min();
            let wake = retry.map_or(recheck_at, |r| r.min(recheck_at));
            tokio::select! {
                _ = token.cancelled() => return,
                result = changed.changed() => if result.is_err() { return },
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// The image of each container unit this host could run, by unit.
    fn wanted(&self) -> BTreeMap<UnitName, String> {
        let mirror = self.mirror.read().expect("mirror lock");
        mirror
            .units
            .iter()
            .filter_map(|(name, record)| {
                image_to_pre_pull(name, &record.text, &self.machine, &self.metadata)
                    .map(|image| (name.clone(), image))
            })
            .collect()
    }

    /// Makes the engine hold `image`; the reason when it cannot.
    async fn ensure(
        &self,
        image: &str,
        failures: &mut BTreeMap<String, Failure>,
    ) -> Option<String> {
        if self.docker.has_image(image).await {
            failures.remove(image);
            return None;
        }
        match self.docker.pull(image).await {
            Ok(()) => {
                failures.remove(image);
                None
            }
            Err(error) => {
                let error = format!("{error:#}");
                let failure = failures
                    .entry(image.to_string())
                    .or_insert(Failure { retries: 0, retry_at: Instant::now() });
                failure.retry_at = Instant::now() + reconcile::backoff(failure.retries);
                failure.retries += 1;
                warn!(image = %image, error = %error, retries = failure.retries, "pre-pull failed");
                Some(error)
            }
        }
    }

    async fn write(
        &self,
        name: &UnitName,
        record: &ImageRecord,
        reported: &mut BTreeMap<UnitName, ImageRecord>,
    ) {
        let key = self.store.keys.image(&self.machine, name);
        match self.store.put_leased(&key, record, self.lease).await {
            Ok(()) => {
                let (image, present) = (&record.image, record.present);
                debug!(unit.name = %name, image = %image, present, "image reported");
                reported.insert(name.clone(), record.clone());
            }
            Err(error) => {
                warn!(unit.name = %name, error = %format!("{error:#}"), "failed to report image");
            }
        }
    }

    /// Records this host wrote under the same lease before a restart of flotd alone.
    async fn adopt_reports(&self) -> BTreeMap<UnitName, ImageRecord> {
        let mut reported = BTreeMap::new();
        let dir = self.store.keys.dir(&format!("images/{}", self.machine));
        let listing = match self.store.list(&dir).await {
            Ok(listing) => listing,
            Err(error) => {
                debug!(error = %format!("{error:#}"), "could not list earlier image records");
                return reported;
            }
        };
        for kv in &listing.kvs {
            let Some(Key::Image(_, name)) = self.store.keys.parse(kv.key()) else { continue };
            if let Ok(record) = keyspace::decode::<ImageRecord>(kv.value()) {
                reported.insert(name, record);
            }
        }
        reported
    }
}
