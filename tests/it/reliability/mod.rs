//! Real failures and heavy or hostile load: stopped targets and killed processes, a stalled
//! target among healthy ones, replicas sharing a store, slow and numerous clients.
//! Uses `crate::support` and the kit's servers and stalling proxy; runs sever in-process and
//! as processes.

mod fairness;
mod faults;
mod hardening;
mod replicas;
