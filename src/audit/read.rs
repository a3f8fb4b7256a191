//! Reading the trail for verification so that its content can never pass for an outage:
//! a dropped table, a changed column type or a value of the wrong type in one cell is a
//! problem at a sequence number (exit code 2), and only failing to reach the store is an
//! error (exit code 1).

use sqlx::any::AnyRow;
use sqlx::postgres::PgDatabaseError;
use sqlx::sqlite::SqliteError;
use sqlx::{Any, AnyPool, Decode, Row, Type, TypeInfo, ValueRef};

use super::AuditError;

/// Rows read per query.
pub(super) const PAGE: i64 = 1000;
/// Longest database message quoted in a problem (a type error can quote a whole cell).
const MAX_MESSAGE: usize = 200;

/// The statements that read one table in key order, leniently.
pub(super) struct Table {
    /// Rows with a key above `$1`, in key order, at most `$2`.
    pub page: &'static str,
    /// Only the keys of those rows.
    pub keys: &'static str,
    /// The row with key `$1`.
    pub one: &'static str,
    /// The key column's name.
    pub key: &'static str,
}

/// A table that cannot be read from some key on: it is missing, or its key column changed.
#[derive(Debug)]
pub(super) struct TableFault {
    /// The last key read before the failure (0: none).
    pub after: i64,
    /// The database's words.
    pub what: String,
}

/// Whether a failed statement is about the store's content or schema (a missing table or
/// column, a value or column of the wrong type, a corrupt page) rather than about reaching
/// the store (connection, authentication, I/O, resources, timeouts).
pub(super) fn is_content_error(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. }
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::AnyDriverError(_)
        | sqlx::Error::RowNotFound => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<PgDatabaseError>() {
                let code = pg.code();
                // 42: undefined table, column or operator, datatype mismatch (but 42501, a
                // missing privilege, is about the login); 22: data exceptions; 23: integrity;
                // XX001/XX002: corrupt data or index.
                (code.starts_with("42") && code != "42501")
                    || code.starts_with("22")
                    || code.starts_with("23")
                    || code == "XX001"
                    || code == "XX002"
            } else if db.try_downcast_ref::<SqliteError>().is_some() {
                // The extended result code; its low byte is the primary code.
                let primary = db
                    .code()
                    .and_then(|c| c.parse::<i32>().ok())
                    .map(|c| c & 0xff);
                // SQLITE_ERROR (no such table or column), CORRUPT, CONSTRAINT, MISMATCH, RANGE.
                matches!(primary, Some(1 | 11 | 19 | 20 | 25))
            } else {
                false
            }
        }
        _ => false,
    }
}

/// A failed statement in words for a problem: the database's own message, shortened.
pub(super) fn describe(e: &sqlx::Error) -> String {
    let text = match e.as_database_error() {
        Some(db) => db.message().to_owned(),
        None => e.to_string(),
    };
    let mut short: String = text.chars().take(MAX_MESSAGE).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    short
}

/// Column `col` of `row` as a `T`, or in words why it is not one (never quoting the value).
pub(super) fn column<T>(row: &AnyRow, col: &str) -> Result<T, String>
where
    T: for<'r> Decode<'r, Any> + Type<Any>,
{
    let raw = row
        .try_get_raw(col)
        .map_err(|_| format!("it has no column {col}: the table was altered"))?;
    let found = if raw.is_null() {
        "NULL".to_owned()
    } else {
        raw.type_info().name().to_owned()
    };
    row.try_get::<T, _>(col).map_err(|_| {
        format!(
            "its {col} holds {found}, not {}: the row was edited or the table altered",
            T::type_info().name()
        )
    })
}

/// Reads `table` in key order and hands each row (or why it cannot be read) to `visit`. A
/// page the driver cannot map as a whole is read row by row, so one bad cell is pinned to
/// its key. Returns where the table stopped being readable, if it did; `Err` only for
/// failures to reach the store (or from `visit`).
pub(super) async fn scan<T>(
    pool: &AnyPool,
    table: &Table,
    decode: impl Fn(&AnyRow) -> Result<T, String>,
    mut visit: impl FnMut(i64, Result<T, String>) -> Result<(), AuditError>,
) -> Result<Option<TableFault>, AuditError> {
    let mut after = 0i64;
    loop {
        let page = sqlx::query(table.page)
            .bind(after)
            .bind(PAGE)
            .fetch_all(pool)
            .await;
        let read = match page {
            Ok(rows) => {
                for row in &rows {
                    let key = match row.try_get::<i64, _>(table.key) {
                        Ok(key) => key,
                        Err(e) => {
                            return Ok(Some(TableFault {
                                after,
                                what: e.to_string(),
                            }));
                        }
                    };
                    visit(key, decode(row))?;
                    after = key;
                }
                rows.len()
            }
            Err(e) if is_content_error(&e) => {
                let keys: Vec<i64> = match sqlx::query_scalar(table.keys)
                    .bind(after)
                    .bind(PAGE)
                    .fetch_all(pool)
                    .await
                {
                    Ok(keys) => keys,
                    Err(e) if is_content_error(&e) => {
                        return Ok(Some(TableFault {
                            after,
                            what: describe(&e),
                        }));
                    }
                    Err(e) => return Err(e.into()),
                };
                for &key in &keys {
                    let row = sqlx::query(table.one).bind(key).fetch_one(pool).await;
                    let decoded = match row {
                        Ok(row) => decode(&row),
                        Err(e) if is_content_error(&e) => {
                            Err(format!("it cannot be read: {}", describe(&e)))
                        }
                        Err(e) => return Err(e.into()),
                    };
                    visit(key, decoded)?;
                    after = key;
                }
                keys.len()
            }
            Err(e) => return Err(e.into()),
        };
        if (read as i64) < PAGE {
            return Ok(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use secrecy::SecretString;
    use serde_json::json;

    use crate::audit::{Audit, Entry, Kind, VerifyOptions, VerifyReport, Writer};
    use crate::store::Store;

    async fn trail() -> (tempfile::TempDir, Audit) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("a.db").display());
        let store = Store::connect(&SecretString::from(url)).await.unwrap();
        let audit = Audit::new(store);
        for i in 0..3 {
            let entry = Entry::new(Kind::RequestRejected, "test", None, json!({"i": i}));
            audit.append(entry).await.unwrap();
            Writer::new(None, None).write(&audit).await.unwrap();
        }
        (dir, audit)
    }

    async fn verify_after(sql: &str) -> VerifyReport {
        let (_dir, audit) = trail().await;
        sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
            .execute(audit.store.pool())
            .await
            .unwrap();
        let report = audit.verify_with(&VerifyOptions::default()).await;
        report.expect("content problems are reported, not errors")
    }

    #[tokio::test]
    async fn a_text_cell_turned_blob_is_named_at_its_seq() {
        let report =
            verify_after("UPDATE audit_records SET detail = CAST(detail AS BLOB) WHERE seq = 2")
                .await;
        assert!(!report.ok);
        assert_eq!(report.records, 3);
        assert_eq!(report.problems.len(), 1, "{report:?}");
        assert_eq!(report.problems[0].seq, 2);
        assert!(
            report.problems[0]
                .what
                .contains("its detail holds BLOB, not TEXT"),
            "{report:?}"
        );
    }

    #[tokio::test]
    async fn text_in_an_integer_column_is_named_at_its_checkpoint() {
        let report =
            verify_after("UPDATE audit_checkpoints SET head_seq = 'two' WHERE idx = 2").await;
        assert!(!report.ok);
        assert!(report.problems.is_empty(), "{report:?}");
        let found = &report.checkpoints.problems;
        assert_eq!(found[0].index, Some(2), "{found:?}");
        assert!(
            found[0].what.contains("its head_seq holds TEXT"),
            "{found:?}"
        );
    }

    #[tokio::test]
    async fn a_dropped_table_is_named_from_its_first_index() {
        let report = verify_after("DROP TABLE audit_checkpoints").await;
        assert!(!report.ok);
        let found = &report.checkpoints.problems;
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].index, Some(1));
        assert!(
            found[0]
                .what
                .contains("audit_checkpoints table cannot be read from checkpoint 1 on"),
            "{found:?}"
        );
        let report = verify_after("DROP TABLE audit_records").await;
        assert!(!report.ok);
        assert_eq!(report.problems[0].seq, 1);
        assert!(report.problems[0].what.contains("audit_records table"));
    }

    #[test]
    fn only_content_and_schema_errors_count_as_content() {
        use super::is_content_error;
        assert!(is_content_error(&sqlx::Error::ColumnNotFound("x".into())));
        assert!(!is_content_error(&sqlx::Error::PoolTimedOut));
        assert!(!is_content_error(&sqlx::Error::Io(std::io::Error::from(
            std::io::ErrorKind::ConnectionReset
        ))));
    }
}
