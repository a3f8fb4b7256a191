//! Self-test of the stand-in's activity query (`tds/activity.rs`): what each session is
//! doing, read with tiberius as the engine reads it, and the refusal of anything else on
//! the views it simulates.

use chrono::{Duration, Utc};
use sever_testkit::tds::{FakeRequest, FakeSession, sql_datetime_precision};

use crate::tds::{ADMIN, ADMIN_PW, connect, my_spid, read_datetime, server_code, session, standin};

/// The engine's activity query (`src/terminate/sqlserver/activity.rs`), on other lines.
const ACTIVITY: &str = "SELECT s.session_id, s.login_time, s.last_request_start_time, \
    s.last_request_end_time, r.status AS request_status, r.command, r.start_time, r.wait_type, \
    r.blocking_session_id, t.xact_start, q.text AS query_text, GETDATE() AS now_local \
    FROM sys.dm_exec_sessions AS s \
    LEFT JOIN sys.dm_exec_requests AS r ON r.session_id = s.session_id \
    OUTER APPLY (SELECT MIN(a.transaction_begin_time) AS xact_start \
        FROM sys.dm_tran_session_transactions AS st \
        JOIN sys.dm_tran_active_transactions AS a ON a.transaction_id = st.transaction_id \
        WHERE st.session_id = s.session_id) AS t \
    OUTER APPLY sys.dm_exec_sql_text(CASE WHEN @P1 = 1 THEN r.sql_handle END) AS q \
    WHERE s.is_user_process = 1 AND s.session_id <> @@SPID \
    ORDER BY s.session_id, r.request_id";

#[tokio::test]
async fn activity_query_answers_requests_transactions_and_text_only_when_asked() {
    let sql = standin().await;
    sql.set_utc_offset_minutes(-300);
    let now = Utc::now();
    let began = now - Duration::seconds(3);
    sql.add_session(FakeSession {
        transaction_begin_time: Some(began),
        last_request_start_time: Some(began),
        last_request_end_time: Some(began + Duration::milliseconds(10)),
        ..session(60, "app", now - Duration::hours(1))
    });
    sql.add_session(FakeSession {
        status: "running".into(),
        request: Some(FakeRequest {
            status: "suspended".into(),
            command: "UPDATE".into(),
            start_time: now - Duration::seconds(2),
            wait_type: Some("LCK_M_X".into()),
            blocking_session_id: 60,
            text: Some("UPDATE orders SET paid = 1".into()),
        }),
        ..session(61, "app", now - Duration::hours(1))
    });
    sql.add_session(FakeSession {
        is_user_process: false,
        ..session(5, "sa", now - Duration::days(1))
    });
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    let me = my_spid(&mut client).await;
    let local = |t| sql_datetime_precision(t) - Duration::minutes(300);

    for include in [true, false] {
        let rows = client
            .query(ACTIVITY, &[&include])
            .await
            .unwrap()
            .into_first_result()
            .await
            .unwrap();
        let ids: Vec<i16> = rows.iter().map(|r| r.get::<i16, _>(0).unwrap()).collect();
        assert_eq!(
            ids,
            vec![60, 61],
            "no system session, not the caller ({me})"
        );
        let (idle, busy) = (&rows[0], &rows[1]);
        assert_eq!(read_datetime(idle, 9), local(began));
        assert_eq!(idle.get::<&str, _>(4), None);
        assert_eq!(idle.get::<i16, _>(8), None);
        assert_eq!(
            read_datetime(idle, 3),
            local(began + Duration::milliseconds(10))
        );
        assert_eq!(busy.get::<&str, _>(4), Some("suspended"));
        assert_eq!(busy.get::<&str, _>(5), Some("UPDATE"));
        assert_eq!(read_datetime(busy, 6), local(now - Duration::seconds(2)));
        assert_eq!(busy.get::<&str, _>(7), Some("LCK_M_X"));
        assert_eq!(busy.get::<i16, _>(8), Some(60));
        // Without a last request, it started when the session logged in.
        assert_eq!(read_datetime(busy, 2), read_datetime(busy, 1));
        let text = busy.get::<&str, _>(10);
        match include {
            true => assert_eq!(text, Some("UPDATE orders SET paid = 1")),
            false => assert_eq!(text, None),
        }
        let clock = read_datetime(busy, 11) + Duration::minutes(300);
        assert!((clock - Utc::now()).num_seconds().abs() < 5, "{clock}");
    }
}

#[tokio::test]
async fn other_sql_on_the_activity_views_is_refused() {
    let sql = standin().await;
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    let refused = [
        "SELECT r.session_id FROM sys.dm_exec_requests AS r".to_string(),
        "SELECT s.session_id FROM sys.dm_exec_sessions AS s \
         LEFT JOIN sys.dm_tran_session_transactions AS t ON t.session_id = s.session_id"
            .to_string(),
        // The text read unconditionally, whatever the caller asked for.
        ACTIVITY.replace("CASE WHEN @P1 = 1 THEN r.sql_handle END", "r.sql_handle"),
        // Sever's own session included.
        ACTIVITY.replace(" AND s.session_id <> @@SPID", ""),
    ];
    for statement in &refused {
        let err = client
            .query(statement.as_str(), &[&true])
            .await
            .unwrap_err();
        assert_eq!(server_code(&err), 50000, "{statement}");
    }
    // The flag must be the bit (or an int) it is compared with.
    let err = client.query(ACTIVITY, &[&"yes"]).await.unwrap_err();
    assert_eq!(server_code(&err), 50000);
}

#[tokio::test]
async fn kill_reports_a_killed_request_rolling_back_instead_of_ending_it() {
    let sql = standin().await;
    let now = Utc::now();
    sql.add_session(FakeSession {
        status: "running".into(),
        request: Some(FakeRequest {
            status: "running".into(),
            command: "KILLED/ROLLBACK".into(),
            start_time: now,
            wait_type: None,
            blocking_session_id: 0,
            text: None,
        }),
        ..session(60, "app", now - Duration::hours(1))
    });
    let mut client = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    client.simple_query("KILL 60").await.unwrap();
    assert!(sql.sessions().iter().any(|s| s.session_id == 60));
}
