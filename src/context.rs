//! What the server and the CLI share: the config, the store, the audit trail and the targets.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use tracing::Instrument;

use crate::audit::{Audit, ChainHealth, CheckpointFileHealth};
use crate::config::{Config, ConfigError};
use crate::queue::Queue;
use crate::store::{Store, StoreError};
use crate::terminate::{Learn, Targets};

/// Failures while bringing the service up.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A setting or secret is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Everything an action needs, built once from the config.
#[derive(Debug)]
pub struct Context {
    /// The validated configuration.
    pub config: Arc<Config>,
    /// State store.
    pub store: Store,
    /// Audit trail.
    pub audit: Audit,
    /// Engines per target.
    pub targets: Targets,
    /// The durable work queue every action runs from.
    pub queue: Arc<Queue>,
    /// How the last append to `audit.checkpoint_file` went, for readiness.
    pub checkpoint_file: Arc<CheckpointFileHealth>,
    /// Tampering the checkpoint writer noticed since start, for readiness.
    pub audit_chain: Arc<ChainHealth>,
}

impl Context {
    /// Opens the store (applying migrations) and prepares every target (without connecting).
    pub async fn build(config: Config) -> Result<Self, ContextError> {
        let store = Store::connect(&config.store.url.load("store.url")?).await?;
        let targets = Targets::from_config(&config, &store)?;
        let queue = Queue::new(
            store.clone(),
            Queue::owner_name("sever"),
            config.queue.clone(),
        );
        Ok(Self {
            queue: Arc::new(queue),
            audit: Audit::new(store.clone()),
            checkpoint_file: Arc::new(CheckpointFileHealth::new(
                config.audit.checkpoint_file.is_some(),
            )),
            audit_chain: Arc::default(),
            config: Arc::new(config),
            store,
            targets,
        })
    }

    /// Looks up and remembers the identities every target needs told apart after a drop:
    /// its mapped logins, its protected logins, the logins its sweep pattern matches, and
    /// (PostgreSQL) sever's own logins and the superusers. Failures are logged, not fatal: a
    /// target that is down now is learned at its next sweep or action.
    pub async fn learn_logins(&self) {
        let mut mapped: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
        for credential in self.config.credentials.values() {
            for mapping in &credential.logins {
                mapped
                    .entry(&mapping.target)
                    .or_default()
                    .insert(mapping.login.clone());
            }
        }
        let work = self.targets.iter().map(|(target, engine)| {
            let what = Learn {
                mapped: mapped
                    .remove(target.as_str())
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                protected: self.config.protected_on(target),
                sweep_pattern: self
                    .config
                    .targets
                    .get(target)
                    .and_then(|t| t.sweep.as_ref())
                    .map(|s| s.pattern.clone()),
            };
            async move {
                // The span names the target in the engines' own warnings (e.g. an
                // administrator mapped as a login).
                let learning = engine
                    .learn(&what)
                    .instrument(tracing::info_span!("learn_logins", target_id = %target));
                if let Err(e) = learning.await {
                    tracing::warn!(target_id = %target, error = %e, "could not learn login identities");
                }
            }
        });
        let work: Vec<_> = work.collect();
        futures_util::future::join_all(work).await;
    }
}
