//! Self-test of the stand-in's login locks (`tds/logins.rs`): the gate queries, ALTER LOGIN
//! DISABLE/ENABLE with a disabled login refused at LOGIN7, REVOKE/GRANT CONNECT through a
//! database's sp_executesql, the permission errors, and refusal of anything else.

use sever_testkit::tds::TdsStandIn;

use crate::tds::{ADMIN, ADMIN_PW, Conn, connect, server_code, standin};

const LOGIN_GATE: &str = "SELECT HAS_PERMS_BY_NAME(NULL, NULL, 'ALTER ANY LOGIN') AS may_alter, \
    (SELECT CAST(p.is_disabled AS int) FROM sys.server_principals AS p \
     WHERE p.name = @P1 AND p.type IN ('S', 'U', 'G', 'E', 'X')) AS is_disabled";

const USER_GATE: &str = "SELECT HAS_PERMS_BY_NAME(@P2, 'DATABASE', 'CONTROL') AS may_alter, \
    (SELECT CASE WHEN EXISTS (SELECT 1 FROM [orders].sys.database_permissions AS d \
        WHERE d.grantee_principal_id = u.principal_id AND d.class = 0 AND d.type = 'CO' \
        AND d.state IN ('G', 'W')) THEN 1 ELSE 0 END \
     FROM [orders].sys.database_principals AS u WHERE u.name = @P1) AS can_connect";

async fn two_ints(c: &mut Conn, sql: &str, p: &[&str]) -> (Option<i32>, Option<i32>) {
    let params: Vec<&dyn tiberius::ToSql> = p.iter().map(|s| s as &dyn tiberius::ToSql).collect();
    let row = c
        .query(sql, &params)
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    (row.get(0), row.get(1))
}

async fn batch(c: &mut Conn, sql: &str) -> tiberius::Result<()> {
    c.simple_query(sql).await?.into_results().await.map(drop)
}

async fn in_database(c: &mut Conn, db: &str, statement: &str) -> tiberius::Result<()> {
    let sql = format!("EXEC [{db}].sys.sp_executesql @P1");
    c.query(sql, &[&statement])
        .await?
        .into_results()
        .await
        .map(drop)
}

#[tokio::test]
async fn logins_are_disabled_enabled_and_refused_while_disabled() {
    let sql: TdsStandIn = standin().await;
    sql.allow_login("o]brien", "pw");
    let mut c = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    assert_eq!(
        two_ints(&mut c, LOGIN_GATE, &["o]brien"]).await,
        (Some(1), Some(0))
    );
    assert_eq!(
        two_ints(&mut c, LOGIN_GATE, &["nobody"]).await,
        (Some(1), None)
    );

    batch(&mut c, "ALTER LOGIN [o]]brien] DISABLE")
        .await
        .unwrap();
    assert_eq!(sql.login_disabled("o]brien"), Some(true));
    assert_eq!(
        two_ints(&mut c, LOGIN_GATE, &["O]BRIEN"]).await,
        (Some(1), Some(1))
    );
    let refused = connect(sql.port(), "o]brien", "pw").await.err().unwrap();
    assert_eq!(server_code(&refused), 18470);
    batch(&mut c, "alter login [o]]brien] enable;")
        .await
        .unwrap();
    connect(sql.port(), "o]brien", "pw").await.unwrap();

    let e = batch(&mut c, "ALTER LOGIN [nobody] DISABLE")
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), 15151);
    sql.set_alter_any_login(false);
    let e = batch(&mut c, "ALTER LOGIN [o]]brien] DISABLE")
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), 15151);
    assert_eq!(sql.login_disabled("o]brien"), Some(false));
    sql.set_view_any_definition(false);
    assert_eq!(
        two_ints(&mut c, LOGIN_GATE, &["o]brien"]).await,
        (Some(0), None)
    );
    assert_eq!(
        two_ints(&mut c, LOGIN_GATE, &[ADMIN]).await,
        (Some(0), Some(0))
    );

    // Nothing else that alters, grants or executes is simulated.
    for other in [
        "ALTER LOGIN [o]]brien] WITH PASSWORD = 'x'",
        "ALTER USER [app] WITH LOGIN = [app]",
        "GRANT CONNECT TO [app]",
        "EXEC sp_who",
    ] {
        let e = batch(&mut c, other).await.unwrap_err();
        assert_eq!(server_code(&e), 50000, "{other}");
    }
}

#[tokio::test]
async fn contained_users_lose_and_regain_connect_in_their_database() {
    let sql = standin().await;
    sql.set_contained_user("orders", "app", true);
    let mut c = connect(sql.port(), ADMIN, ADMIN_PW).await.unwrap();
    assert_eq!(
        two_ints(&mut c, USER_GATE, &["app", "orders"]).await,
        (Some(1), Some(1))
    );
    assert_eq!(
        two_ints(&mut c, USER_GATE, &["nobody", "orders"]).await,
        (Some(1), None)
    );

    in_database(&mut c, "orders", "REVOKE CONNECT FROM [app]")
        .await
        .unwrap();
    assert_eq!(sql.contained_user_connect("orders", "app"), Some(false));
    assert_eq!(
        two_ints(&mut c, USER_GATE, &["app", "orders"]).await,
        (Some(1), Some(0))
    );
    in_database(&mut c, "orders", "GRANT CONNECT TO [app]")
        .await
        .unwrap();
    assert_eq!(sql.contained_user_connect("orders", "app"), Some(true));

    let e = in_database(&mut c, "billing", "GRANT CONNECT TO [app]")
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), 911);
    let e = in_database(&mut c, "orders", "GRANT CONNECT TO [nobody]")
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), 15151);
    let e = in_database(&mut c, "orders", "GRANT SELECT TO [app]")
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), 50000);
    sql.set_control_database(false);
    let e = in_database(&mut c, "orders", "REVOKE CONNECT FROM [app]")
        .await
        .unwrap_err();
    assert_eq!(server_code(&e), 15151);
    assert_eq!(sql.contained_user_connect("orders", "app"), Some(true));
}
