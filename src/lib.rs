//! flotilla schedules systemd units across a cluster of hosts that share one etcd.
//!
//! The modules, in reading order:
//!
//! - [`unit`]: unit names, unit files and their `[X-Fleet]` options, checked at the door.
//! - [`container`]: the `[Container]` section of `.container` units.
//! - [`keyspace`]: where each record lives in etcd and what it holds.
//! - [`store`]: the etcd connection and the transactions on the keyspace.
//! - [`mirror`]: an in-memory copy of the keyspace kept current by a watch.
//! - [`placement`]: the pure function that chooses a host for each unit.
//! - [`engine`]: the elected placement engine that writes claims.
//! - [`lease`]: the host lease every claim is bound to.
//! - [`reconcile`]: the pure decision of what to do with one local unit.
//! - [`systemd`]: the executor, driving the host's systemd over D-Bus.
//! - [`docker`]: the executor for `.container` units, on the host's Docker engine.
//! - [`agent`]: flotd, tying the above together on one host.
//! - [`cli`]: flotctl, one file per verb.

pub mod agent;
pub mod cli;
pub mod container;
pub mod docker;
pub mod engine;
pub mod journal;
pub mod keyspace;
pub mod lease;
pub mod mirror;
pub mod placement;
pub mod prepull;
pub mod reconcile;
pub mod store;
pub mod systemd;
pub mod unit;
