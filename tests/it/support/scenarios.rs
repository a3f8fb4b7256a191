//! Behavioural scenarios every engine must pass, written once against [`Database`] and run
//! for each engine's real throwaway server by `terminate::engines` and `terminate::cutoff`.

use std::time::Duration;

use async_trait::async_trait;
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::config::ConfigBuilder;
use super::sever::{TestServer, Workspace, create_admin, pids, sorted_ids};
use sever_testkit::mariadb::TestMariaDb;
use sever_testkit::pg::TestPostgres;
use sever_testkit::tds::TdsStandIn;

const GONE: Duration = Duration::from_secs(5);

/// What the scenarios need from a real database server.
#[async_trait]
pub trait Database: Send + Sync {
    /// Creates sever's least-privilege admin login and returns the `[targets.<id>]` table.
    async fn target(&self, ws: &Workspace, id: &str) -> String;
    /// Creates a login with a password.
    async fn create_login(&self, login: &str, password: &str);
    /// Changes a login's password (the rotation itself).
    async fn set_password(&self, login: &str, password: &str);
    /// Opens `n` sessions that stay connected; returns their ids.
    async fn open(&self, login: &str, password: &str, n: usize) -> Vec<i64>;
    /// Whether a session is still connected.
    async fn is_alive(&self, id: i64) -> bool;
    /// Waits until a session is gone; false on timeout.
    async fn wait_gone(&self, id: i64) -> bool;
    /// How many sessions sever itself has open.
    async fn own_sessions(&self) -> usize;
}

#[async_trait]
impl Database for TestPostgres {
    async fn target(&self, ws: &Workspace, id: &str) -> String {
        create_admin(self).await;
        ws.target(id, self, "")
    }
    async fn create_login(&self, login: &str, password: &str) {
        TestPostgres::create_login(self, login, password).await;
    }
    async fn set_password(&self, login: &str, password: &str) {
        self.exec(&format!("ALTER ROLE {login} PASSWORD '{password}'"))
            .await;
    }
    async fn open(&self, login: &str, password: &str, n: usize) -> Vec<i64> {
        self.open_sessions(login, password, n)
            .await
            .into_iter()
            .map(i64::from)
            .collect()
    }
    async fn is_alive(&self, id: i64) -> bool {
        TestPostgres::is_alive(self, id as i32).await
    }
    async fn wait_gone(&self, id: i64) -> bool {
        TestPostgres::wait_gone(self, id as i32, GONE).await
    }
    async fn own_sessions(&self) -> usize {
        let mut conn = self.session("postgres", "", "postgres", "").await.0;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = 'sever_admin'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        n as usize
    }
}

#[async_trait]
impl Database for TestMariaDb {
    async fn target(&self, ws: &Workspace, id: &str) -> String {
        // Least privilege: see every thread, kill others' threads, read accounts and their
        // privileges (to tell accounts apart and to spare administrators).
        self.exec(
            "CREATE USER 'sever_admin'@'%' IDENTIFIED BY 'severadminpw'; \
             GRANT PROCESS, CONNECTION ADMIN ON *.* TO 'sever_admin'@'%'; \
             GRANT SELECT ON mysql.global_priv TO 'sever_admin'@'%'; \
             GRANT SELECT ON mysql.roles_mapping TO 'sever_admin'@'%';",
        )
        .await;
        let url = ws.secret_path(
            &format!("{id}.url"),
            &self.url("sever_admin", "severadminpw"),
        );
        ConfigBuilder::new().target(id, "mysql", &url).toml()
    }
    async fn create_login(&self, login: &str, password: &str) {
        self.create_account(login, "%", password).await;
    }
    async fn set_password(&self, login: &str, password: &str) {
        self.exec(&format!(
            "ALTER USER '{login}'@'%' IDENTIFIED BY '{password}'"
        ))
        .await;
    }
    async fn open(&self, login: &str, password: &str, n: usize) -> Vec<i64> {
        self.open_sessions(login, password, n)
            .await
            .into_iter()
            .map(|id| id as i64)
            .collect()
    }
    async fn is_alive(&self, id: i64) -> bool {
        TestMariaDb::is_alive(self, id as u64).await
    }
    async fn wait_gone(&self, id: i64) -> bool {
        TestMariaDb::wait_gone(self, id as u64, GONE).await
    }
    async fn own_sessions(&self) -> usize {
        let mut conn = self.root_connection().await;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.PROCESSLIST WHERE USER = 'sever_admin'",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap();
        n as usize
    }
}

/// Opens a real TDS connection to the stand-in as `login`, kept open, and returns its
/// session id (`SELECT @@SPID`).
pub async fn tds_session(db: &TdsStandIn, login: &str, password: &str) -> i64 {
    use tokio_util::compat::TokioAsyncWriteCompatExt;
    let mut config = tiberius::Config::new();
    config.host("127.0.0.1");
    config.port(db.port());
    config.authentication(tiberius::AuthMethod::sql_server(login, password));
    config.encryption(tiberius::EncryptionLevel::NotSupported);
    config.application_name("orders-api");
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", db.port()))
        .await
        .unwrap();
    let mut client = tiberius::Client::connect(config, tcp.compat_write())
        .await
        .unwrap();
    let row = client
        .simple_query("SELECT @@SPID")
        .await
        .unwrap()
        .into_row()
        .await
        .unwrap()
        .unwrap();
    let spid: i16 = row.get(0).unwrap();
    std::mem::forget(client);
    i64::from(spid)
}

/// The SQL Server stand-in: logins are accepted passwords, sessions are real TDS connections.
#[async_trait]
impl Database for TdsStandIn {
    async fn target(&self, ws: &Workspace, id: &str) -> String {
        self.allow_login("sever_admin", "severadminpw");
        let ado = format!(
            "Server=tcp:127.0.0.1,{};User Id=sever_admin;Password=severadminpw;Encrypt=DANGER_PLAINTEXT",
            self.port()
        );
        let url = ws.secret_path(&format!("{id}.url"), &ado);
        ConfigBuilder::new().target(id, "sqlserver", &url).toml()
    }
    async fn create_login(&self, login: &str, password: &str) {
        self.allow_login(login, password);
    }
    async fn set_password(&self, login: &str, password: &str) {
        self.allow_login(login, password);
    }
    async fn open(&self, login: &str, password: &str, n: usize) -> Vec<i64> {
        let mut ids = Vec::new();
        for _ in 0..n {
            ids.push(tds_session(self, login, password).await);
        }
        ids
    }
    async fn is_alive(&self, id: i64) -> bool {
        self.sessions()
            .iter()
            .any(|s| i64::from(s.session_id) == id)
    }
    async fn wait_gone(&self, id: i64) -> bool {
        let deadline = tokio::time::Instant::now() + GONE;
        while tokio::time::Instant::now() < deadline {
            if !Database::is_alive(self, id).await {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
    async fn own_sessions(&self) -> usize {
        self.sessions()
            .iter()
            .filter(|s| s.program_name.as_deref() == Some("sever"))
            .count()
    }
}

/// A server with logins `app`, `bystander` and the protected `ops`, a credential `orders`
/// for `app`, and sever running against it.
async fn setup(db: &dyn Database) -> (Workspace, TestServer) {
    for login in ["app", "bystander", "ops"] {
        db.create_login(login, "pw0").await;
    }
    let ws = Workspace::new();
    let config = ws
        .config()
        .remove("protected_logins")
        .merge_toml(&db.target(&ws, "main").await)
        .set("targets.main.protected_logins", vec!["ops"])
        .credential("orders", &[("main", "app")])
        .toml();
    let server = TestServer::start(&ws.write_config(&config)).await;
    (ws, server)
}

/// A rotation ends the sessions that predate it, and nothing else: not later sessions, not
/// other logins, not protected logins, not sever's own.
pub async fn rotation_ends_only_older_sessions(db: &dyn Database) {
    let (ws, server) = setup(db).await;
    let old = db.open("app", "pw0", 2).await;
    let bystander = db.open("bystander", "pw0", 1).await;
    let ops = db.open("ops", "pw0", 1).await;
    db.set_password("app", "pw1").await;

    let (status, report) = server
        .event(&json!({"credential": "orders", "kind": "rotated"}))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["status"], "completed", "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted_ids(&old));
    for id in &old {
        assert!(db.wait_gone(*id).await, "old session {id} survived");
    }
    let newer = db.open("app", "pw1", 1).await;
    for id in bystander.iter().chain(&ops).chain(&newer) {
        assert!(db.is_alive(*id).await, "session {id} should have survived");
    }
    assert!(
        db.own_sessions().await >= 1,
        "sever's own connection must survive"
    );
    let terminated = ws.records("session.terminated").await;
    assert_eq!(terminated.len(), 2);
    assert!(
        terminated
            .iter()
            .all(|r| r["login"] == "app" && r["target"] == "main")
    );
    server.stop().await;
}

/// An operator's dry run changes nothing; the real revocation ends every session of the
/// login; a protected login cannot be revoked.
pub async fn revocation_dry_run_then_all(db: &dyn Database) {
    let (ws, server) = setup(db).await;
    let sessions = db.open("app", "pw0", 2).await;
    let revoke = |dry_run: bool| json!({"login": "app", "targets": ["main"], "reason": "INC-1", "dry_run": dry_run});

    let (status, report) = server.operator_post("/v1/revocations", &revoke(true)).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "matched"), sorted_ids(&sessions));
    for id in &sessions {
        assert!(db.is_alive(*id).await, "a dry run terminated {id}");
    }
    let (status, report) = server
        .operator_post("/v1/revocations", &revoke(false))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), sorted_ids(&sessions));
    for id in &sessions {
        assert!(db.wait_gone(*id).await);
    }
    let (status, body) = server
        .operator_post(
            "/v1/revocations",
            &json!({"login": "ops", "targets": "all", "reason": "no"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("protected_login"))
    );
    assert_eq!(ws.records("session.would_terminate").await.len(), 2);
    server.stop().await;
}

/// Listing by login shows exactly that login's sessions.
pub async fn sessions_are_listed_by_login(db: &dyn Database) {
    let (_ws, server) = setup(db).await;
    let app = db.open("app", "pw0", 2).await;
    db.open("bystander", "pw0", 1).await;
    let (status, body) = server.operator_get("/v1/sessions?login=app").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let listed: Vec<i64> = body["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s: &Value| s["pid"].as_i64().unwrap())
        .collect();
    let mut listed = listed;
    listed.sort();
    assert_eq!(listed, sorted_ids(&app));
    server.stop().await;
}
