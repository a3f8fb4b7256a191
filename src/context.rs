//! What the server and the CLI share: the config, the store, the audit trail and the targets.
//!
//! Below the runner and the doors (`runner`, `sweep`, `intake`, `cli`), which it never calls;
//! it builds on `queue`, `notify`, `terminate`, `audit`, `store` and `config`.

use std::collections::BTreeSet;
use std::sync::Arc;

use tracing::Instrument;

use crate::audit::{Audit, ChainHealth, CheckpointFileHealth};
use crate::config::{Config, ConfigError};
use crate::notify::{Notifier, NotifyError};
use crate::queue::Queue;
use crate::store::{Store, StoreError};
use crate::terminate::selected::{self, SelectRequest};
use crate::terminate::{EngineError, Learn, Targets, TerminateOutcome};

/// Failures while bringing the service up.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// A setting or secret is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A notification channel's secret or endpoint is unusable.
    #[error(transparent)]
    Notify(#[from] NotifyError),
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
    /// Queues outbound notifications (the server also runs its delivery worker).
    pub notifier: Arc<Notifier>,
}

impl Context {
    /// Opens the store (applying migrations) and prepares every target (without connecting).
    pub async fn build(config: Config) -> Result<Self, ContextError> {
        let store = Store::connect(&config.store.url.load("store.url")?).await?;
        let targets = Targets::from_config(&config, &store)?;
        let audit = Audit::new(store.clone());
        let notifier = Arc::new(Notifier::new(&config, store.clone())?.with_audit(audit.clone()));
        let queue = Queue::new(
            store.clone(),
            Queue::owner_name("sever"),
            config.queue.clone(),
        )
        .with_notifier(notifier.clone());
        Ok(Self {
            queue: Arc::new(queue),
            audit,
            notifier,
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
        let work = self.targets.iter().map(|(target, _)| async move {
            if let Err(e) = self.learn_target(target).await {
                tracing::warn!(target_id = %target, error = %e, "could not learn login identities");
            }
        });
        let work: Vec<_> = work.collect();
        futures_util::future::join_all(work).await;
    }

    /// Learns what [`learn_logins`](Self::learn_logins) learns, on one target.
    pub async fn learn_target(&self, target: &str) -> Result<(), EngineError> {
        let mapped: BTreeSet<String> = self
            .config
            .credentials
            .values()
            .flat_map(|c| &c.logins)
            .filter(|m| m.target == target)
            .map(|m| m.login.clone())
            .collect();
        self.learn_on(target, mapped.into_iter().collect()).await
    }

    /// Learns what a sweep of `target` needs told apart after a drop (the roles matching its
    /// pattern, the protected logins, and on PostgreSQL sever's own logins and the
    /// superusers), not the mapped logins: cheap enough for the sweeper's short tick.
    pub async fn learn_sweep_roles(&self, target: &str) -> Result<(), EngineError> {
        self.learn_on(target, Vec::new()).await
    }

    async fn learn_on(&self, target: &str, mapped: Vec<String>) -> Result<(), EngineError> {
        let Some(engine) = self.targets.get(target) else {
            return Ok(());
        };
        let what = Learn {
            mapped,
            protected: self.config.protected_on(target),
            sweep_pattern: self
                .config
                .targets
                .get(target)
                .and_then(|t| t.sweep.as_ref())
                .map(|s| s.pattern.clone()),
        };
        // The span names the target in the engines' own warnings (e.g. an administrator
        // mapped as a login).
        engine
            .learn(&what)
            .instrument(tracing::info_span!("learn_logins", target_id = %target))
            .await
    }

    /// `request`'s dry run on `target` (the caller sets `dry_run`), bounded by the
    /// termination timeout: what a revocation's count check and a policy's preview see.
    pub async fn preview(
        &self,
        target: &str,
        request: &SelectRequest,
    ) -> Result<TerminateOutcome, EngineError> {
        let Some(engine) = self.targets.get(target) else {
            return Err(EngineError::Config(format!(
                "target {target:?} is not configured"
            )));
        };
        let limit = self.config.termination.timeout;
        tokio::time::timeout(limit, selected::end_selected(engine.as_ref(), request))
            .await
            .unwrap_or(Err(EngineError::Timeout(limit)))
    }
}
