//! Why a session that matched was left alone: the reasons reports and audit records carry,
//! and how they are written.

use serde::{Deserialize, Serialize};

/// Why a matching session was left alone. Requests and reports spell it as one word
/// (`reason`), with the rule beside it for `excluded` (`rule`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "SkipWire", try_from = "SkipWire")]
pub enum SkipReason {
    /// A session of sever's own login.
    OwnLogin,
    /// A superuser session: sever never signals those.
    Superuser,
    /// A protected login.
    Protected,
    /// Its start time is unreadable, so it cannot be compared with the cutoff
    /// (PostgreSQL: grant `pg_read_all_stats` to sever's login).
    StartUnknown,
    /// Sweeps only: its login was dropped before sever learned what it was, so it may have
    /// been protected or a superuser.
    LoginUnknown,
    /// It ended on its own between being found and being signalled (or its id now names
    /// another session).
    AlreadyGone,
    /// It is already rolling back (being killed): signalling it again would only restart
    /// or lengthen the rollback.
    RollingBack,
    /// Whether its login is an administrator could not be read, so it is treated as one
    /// (MySQL/MariaDB: grant sever's login `SELECT` on the privilege tables; SQL Server:
    /// `VIEW ANY DEFINITION`).
    PrivilegesUnknown,
    /// A selector rule keeps it out: the rule, e.g. `exclude_application_names: pg_dump`, or
    /// the inclusion it does not meet, e.g. `databases`.
    Excluded(String),
    /// A value the selector needs could not be read (the session field, e.g. `state`), so
    /// it is spared: `unknown_<field>`.
    Unknown(String),
    /// It connected at or after the cutoff, so it cannot hold the old credential.
    NotBeforeCutoff,
    /// Not a client session (replication, walsender, background worker): never ended.
    SystemBackend,
    /// `cancel` only: it runs no statement, so there is nothing to cancel.
    NoStatement,
    /// Policies: selected, but the policy's `victims` rule spares it (the oldest under
    /// `all_but_oldest`, all but the oldest under `oldest`).
    NotAVictim,
    /// Policies: a victim beyond what this run may end on the target (`max_per_run`, or a
    /// quarter of the target's client sessions); a later run may end it.
    OverLimit,
    /// Policies: the policy's threshold (`when`) does not hold on the target.
    BelowThreshold,
}

/// How a [`SkipReason`] is written: `{"reason": "excluded", "rule": "databases"}`.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct SkipWire {
    /// The reason's word (`excluded`, `protected`, `superuser`, …).
    reason: String,
    /// The selector rule, for `excluded`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
}

impl From<SkipReason> for SkipWire {
    fn from(r: SkipReason) -> Self {
        let word = |w: &str| SkipWire {
            reason: w.to_owned(),
            rule: None,
        };
        match r {
            SkipReason::OwnLogin => word("own_login"),
            SkipReason::Superuser => word("superuser"),
            SkipReason::Protected => word("protected"),
            SkipReason::StartUnknown => word("start_unknown"),
            SkipReason::LoginUnknown => word("login_unknown"),
            SkipReason::AlreadyGone => word("already_gone"),
            SkipReason::RollingBack => word("rolling_back"),
            SkipReason::PrivilegesUnknown => word("privileges_unknown"),
            SkipReason::Excluded(rule) => SkipWire {
                reason: "excluded".into(),
                rule: Some(rule),
            },
            SkipReason::Unknown(field) => word(&format!("unknown_{field}")),
            SkipReason::NotBeforeCutoff => word("not_before_cutoff"),
            SkipReason::SystemBackend => word("system_backend"),
            SkipReason::NoStatement => word("no_statement"),
            SkipReason::NotAVictim => word("not_a_victim"),
            SkipReason::OverLimit => word("over_limit"),
            SkipReason::BelowThreshold => word("below_threshold"),
        }
    }
}

impl TryFrom<SkipWire> for SkipReason {
    type Error = String;

    fn try_from(w: SkipWire) -> Result<Self, String> {
        Ok(match w.reason.as_str() {
            "own_login" => SkipReason::OwnLogin,
            "superuser" => SkipReason::Superuser,
            "protected" => SkipReason::Protected,
            "start_unknown" => SkipReason::StartUnknown,
            "login_unknown" => SkipReason::LoginUnknown,
            "already_gone" => SkipReason::AlreadyGone,
            "rolling_back" => SkipReason::RollingBack,
            "privileges_unknown" => SkipReason::PrivilegesUnknown,
            "excluded" => SkipReason::Excluded(w.rule.unwrap_or_default()),
            "not_before_cutoff" => SkipReason::NotBeforeCutoff,
            "system_backend" => SkipReason::SystemBackend,
            "no_statement" => SkipReason::NoStatement,
            "not_a_victim" => SkipReason::NotAVictim,
            "over_limit" => SkipReason::OverLimit,
            "below_threshold" => SkipReason::BelowThreshold,
            other => match other.strip_prefix("unknown_") {
                Some(field) if !field.is_empty() => SkipReason::Unknown(field.to_owned()),
                _ => return Err(format!("not a skip reason: {other:?}")),
            },
        })
    }
}

impl SkipReason {
    /// The reason as reports write it (`unknown_state`, `excluded`).
    pub fn word(&self) -> String {
        SkipWire::from(self.clone()).reason
    }
}
