//! Real failures and heavy or hostile load: stopped targets and killed processes, a stalled
//! target among healthy ones, replicas sharing a store, slow and numerous clients.

mod fairness;
mod faults;
mod hardening;
mod replicas;
