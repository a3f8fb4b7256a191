//! `GET /v1/audit` and `GET /v1/audit/export`: the audit trail over the operator API, a
//! page at a time newest first (as a console shows it) or as JSON lines in chain order;
//! and, in [`verifications`], its verification in the background.

pub mod verifications;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::auth::Operator;
use crate::audit::{Audit, AuditRecord, ListFilter};
use crate::context::Context;
use crate::http::Actor;
use crate::http::error::ApiError;

/// Records one page of `GET /v1/audit` holds unless `limit` says otherwise.
pub const DEFAULT_PAGE: i64 = 100;
/// The most records one page of `GET /v1/audit` holds.
pub const MAX_PAGE: i64 = 1000;
/// Records an export reads per query: its memory bound.
const EXPORT_PAGE: i64 = 1000;

/// `GET /v1/audit`'s query: filters, the page size and the cursor.
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this action's records.
    pub action_id: Option<Uuid>,
    /// Only this kind, exactly (`session.terminated`).
    pub kind: Option<String>,
    /// Only this actor, exactly (`operator:alice`, `webhook`).
    pub actor: Option<String>,
    /// Only records with a greater sequence number.
    pub after_seq: Option<i64>,
    /// Only records with a smaller sequence number: the previous page's `next_before_seq`.
    pub before_seq: Option<i64>,
    /// How many (default 100, at most 1000).
    pub limit: Option<i64>,
}

/// `GET /v1/audit/export`'s query: [`ListQuery`]'s filters, without a page size (it
/// writes every record they select).
#[derive(Debug, Clone, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExportQuery {
    /// Only this action's records.
    pub action_id: Option<Uuid>,
    /// Only this kind, exactly.
    pub kind: Option<String>,
    /// Only this actor, exactly.
    pub actor: Option<String>,
    /// Only records with a greater sequence number.
    pub after_seq: Option<i64>,
    /// Only records with a smaller sequence number.
    pub before_seq: Option<i64>,
}

/// One page of records, newest first, and the cursor of the next (older) page.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    /// The records, highest `seq` first.
    pub records: Vec<AuditRecord>,
    /// Pass as `before_seq` for the next, older page; `null` when there is none.
    pub next_before_seq: Option<i64>,
}

/// Lists audit records with filters, newest first, a bounded page at a time.
#[utoipa::path(get,
    path = "/v1/audit",
    tag = "operator",
    security(("operator_token" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "One page, newest first.", body = AuditPage),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request`: an unknown key, a bad value, or a `limit` outside 1..=1000.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn list_records(
    State(ctx): State<Arc<Context>>,
    operator: Operator,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> (Extension<Actor>, Result<Json<AuditPage>, ApiError>) {
    let answer = async {
        let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
        list(&ctx.audit, &q).await.map(Json)
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

/// One page of the records `q` selects; bad values are refused, never ignored.
pub async fn list(audit: &Audit, q: &ListQuery) -> Result<AuditPage, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::Invalid(format!(
            "limit: {limit} is not between 1 and {MAX_PAGE}"
        )));
    }
    let mut filter = filter(q.action_id, &q.kind, &q.actor, q.after_seq, q.before_seq)?;
    // One more than asked says whether an older page exists.
    filter.limit = Some(limit + 1);
    let mut records = audit
        .list(&filter)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    records.reverse();
    let more = records.len() as i64 > limit;
    records.truncate(limit as usize);
    let next_before_seq = more.then(|| records.last().map(|r| r.seq)).flatten();
    Ok(AuditPage {
        records,
        next_before_seq,
    })
}

/// The store filter of the query's filters, refusing sequence bounds below zero.
fn filter(
    action_id: Option<Uuid>,
    kind: &Option<String>,
    actor: &Option<String>,
    after_seq: Option<i64>,
    before_seq: Option<i64>,
) -> Result<ListFilter, ApiError> {
    for (name, seq) in [("after_seq", after_seq), ("before_seq", before_seq)] {
        if seq.is_some_and(|s| s < 0) {
            return Err(ApiError::Invalid(format!("{name}: must not be negative")));
        }
    }
    Ok(ListFilter {
        action_id: action_id.map(|id| id.to_string()),
        kind: kind.clone(),
        actor: actor.clone(),
        after_seq,
        before_seq,
        limit: None,
    })
}

/// Writes the records the filters select as JSON lines, in chain order (oldest first),
/// streamed a page at a time.
#[utoipa::path(get,
    path = "/v1/audit/export",
    tag = "operator",
    security(("operator_token" = [])),
    params(ExportQuery),
    responses(
        (status = 200, description = "One `AuditRecord` per line, oldest first (`Content-Disposition: attachment; filename=\"sever-audit.jsonl\"`). A store failure part way ends the stream early, without a last newline.", body = AuditRecord, content_type = "application/x-ndjson"),
        (status = 401, description = "`missing_token` or `invalid_token`.", body = crate::http::openapi::ErrorBody),
        (status = 503, description = "`unavailable`: the store or audit trail is down.", body = crate::http::openapi::ErrorBody),
        (status = 422, description = "`invalid_request`: an unknown key or a bad value.", body = crate::http::openapi::ErrorBody),
    ))]
pub async fn export_records(
    State(ctx): State<Arc<Context>>,
    operator: Operator,
    query: Result<Query<ExportQuery>, QueryRejection>,
) -> (Extension<Actor>, Result<Response, ApiError>) {
    let answer = async {
        let Query(q) = query.map_err(|e| ApiError::Invalid(e.body_text()))?;
        let mut filter = filter(q.action_id, &q.kind, &q.actor, q.after_seq, q.before_seq)?;
        filter.limit = Some(EXPORT_PAGE);
        // The first page is read before answering, so a store that is down is a 503, not
        // an empty download.
        let first = ctx
            .audit
            .list_from(&filter)
            .await
            .map_err(|e| ApiError::Unavailable(e.to_string()))?;
        Ok(export_response(ctx.audit.clone(), filter, first))
    };
    let answer = answer.await;
    (Extension(operator.actor()), answer)
}

/// Where an export is: the filter (its `after_seq` moving on) and the page in hand.
struct Cursor {
    audit: Audit,
    filter: ListFilter,
    page: Option<Vec<AuditRecord>>,
}

/// The streamed download, starting with `first` and reading page after page until a
/// short one.
fn export_response(audit: Audit, filter: ListFilter, first: Vec<AuditRecord>) -> Response {
    let cursor = Cursor {
        audit,
        filter,
        page: Some(first),
    };
    let stream = futures_util::stream::try_unfold(cursor, |mut cursor| async move {
        let page = match cursor.page.take() {
            Some(page) => page,
            None => match cursor.audit.list_from(&cursor.filter).await {
                Ok(page) => page,
                Err(e) => {
                    tracing::error!(error = %e, "audit export failed part way");
                    return Err(std::io::Error::other(e.to_string()));
                }
            },
        };
        let Some(last) = page.last().map(|r| r.seq) else {
            return Ok(None);
        };
        let mut chunk = Vec::with_capacity(page.len() * 512);
        for record in &page {
            serde_json::to_writer(&mut chunk, record).map_err(std::io::Error::other)?;
            chunk.push(b'\n');
        }
        if (page.len() as i64) < EXPORT_PAGE {
            // A short page is the end: an empty page stops the stream without another read.
            cursor.page = Some(Vec::new());
        }
        cursor.filter.after_seq = Some(last);
        Ok(Some((Bytes::from(chunk), cursor)))
    });
    (
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"sever-audit.jsonl\"",
            ),
        ],
        Body::from_stream(stream),
    )
        .into_response()
}
