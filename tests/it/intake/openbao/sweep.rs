//! The sweeper against a real OpenBao and a real PostgreSQL: the sessions of dynamic
//! credentials OpenBao revoked (role dropped) or let expire end, each audited with the login
//! name sever learned while the role existed; the sessions of valid credentials, of other
//! logins and of protected logins survive.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::sever::{Workspace, create_admin};
use serde_json::Value;
use sever::context::Context;
use sever_testkit::openbao::{DbCreds, TestBao};
use sever_testkit::pg::TestPostgres;
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

/// A PostgreSQL target `main` sweeping OpenBao's dynamic logins (`v-%`), with the OpenBao
/// database engine pointed at it: dynamic role `app` (1 h leases) and `brief` (5 s leases),
/// and static role `svc` managing the login `svc_app`.
struct Fixture {
    pg: TestPostgres,
    bao: TestBao,
    ws: Workspace,
    config: PathBuf,
    /// Sessions kept open for the test's length.
    conns: Vec<PgConnection>,
}

async fn fixture(sweep: &str) -> Fixture {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    let bao = TestBao::start().await;
    bao.enable_database("", "database", &pg).await;
    bao.create_dynamic_role("", "database", "app", "1h", "2h")
        .await;
    // Longer than the sweeper's default learn_interval (2 s): a shorter-lived login can come
    // and go unseen, which is the window that remains.
    bao.create_dynamic_role("", "database", "brief", "5s", "5s")
        .await;
    pg.create_login("svc_app", "initial").await;
    bao.create_static_role("", "database", "svc", "svc_app", "1h")
        .await;
    let ws = Workspace::new();
    let config = ws.write_config(
        &ws.target_config(ws.config(), "main", &pg)
            .merge_toml(&format!("[targets.main.sweep]\n{sweep}\n"))
            .toml(),
    );
    Fixture {
        pg,
        bao,
        ws,
        config,
        conns: Vec::new(),
    }
}

impl Fixture {
    /// Opens a session as `login` and keeps it; returns its pid.
    async fn open(&mut self, login: &str, password: &str) -> i64 {
        let (conn, pid) = self.pg.session(login, password, "postgres", "svc").await;
        self.conns.push(conn);
        i64::from(pid)
    }

    /// The context a running sever builds from this config.
    async fn context(&self) -> Arc<Context> {
        sever::install_crypto_provider();
        let config = sever::config::Config::load(&self.config).unwrap();
        Arc::new(Context::build(config).await.unwrap())
    }

    /// Whether a role named `login` exists on the target.
    async fn role_exists(&self, login: &str) -> bool {
        let mut conn = PgConnection::connect(&self.pg.superuser_url("postgres"))
            .await
            .unwrap();
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)")
                .bind(login)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        let _ = conn.close().await;
        exists
    }

    /// Waits (bounded) until OpenBao has dropped `login`'s role.
    async fn wait_dropped(&self, login: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.role_exists(login).await {
            assert!(Instant::now() < deadline, "OpenBao never dropped {login}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Waits (bounded) until the running sever has learned every one of `logins`: only then does
/// it know their sessions are a dynamic login's once the role is gone.
async fn wait_learned(ctx: &Context, logins: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let learned = ctx.store.learned_roles("main").await.unwrap();
        if logins.iter().all(|l| learned.iter().any(|r| r.login == *l)) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the running sever never learned {logins:?} while they existed (learned: {learned:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The details of every audit record of `kind` by pid.
async fn by_pid(ws: &Workspace, kind: &str) -> BTreeMap<i64, Value> {
    ws.records(kind)
        .await
        .into_iter()
        .map(|d| (d["pid"].as_i64().unwrap(), d))
        .collect()
}

#[tokio::test]
async fn revoked_and_expired_dynamic_logins_created_and_dropped_between_sweeps_are_swept_and_named()
{
    // Sweeps an hour apart: nothing but the running sweeper's own learning sees these logins
    // exist before OpenBao drops them.
    let mut f = fixture("pattern = \"v-%\"\ninterval = \"1h\"").await;
    let ctx = f.context().await;
    let stop = CancellationToken::new();
    let sweeper = tokio::spawn(sever::sweep::run_sweeper(ctx.clone(), stop.clone()));

    let revoked: DbCreds = f.bao.dynamic_creds("", "database", "app").await;
    let expiring = f.bao.dynamic_creds("", "database", "brief").await;
    let kept = f.bao.dynamic_creds("", "database", "app").await;
    let (svc, svc_password) = f.bao.static_creds("", "database", "svc").await;
    let revoked_pids = [
        f.open(&revoked.username, &revoked.password).await,
        f.open(&revoked.username, &revoked.password).await,
    ];
    let expired_pid = f.open(&expiring.username, &expiring.password).await;
    let kept_pid = f.open(&kept.username, &kept.password).await;
    let svc_pid = f.open(&svc, &svc_password).await;
    wait_learned(
        &ctx,
        &[&revoked.username, &expiring.username, &kept.username],
    )
    .await;

    // OpenBao's revocation drops the role at once; the expired lease's role goes at its end.
    f.bao.revoke_lease("", &revoked.lease_id).await;
    assert!(!f.role_exists(&revoked.username).await);
    f.wait_dropped(&expiring.username).await;
    // A login revoked right after it is issued, before sever can learn it, is the window
    // that remains; here it is learned first.
    let report = sever::runner::sweep(&ctx, "main", false, sever::sweep::ACTOR)
        .await
        .unwrap();
    let t = &report.targets[0];
    let mut terminated: Vec<i64> = t.outcome.terminated.iter().map(|s| s.pid).collect();
    terminated.sort();
    let mut expected = vec![revoked_pids[0], revoked_pids[1], expired_pid];
    expected.sort();
    assert_eq!(terminated, expected, "{t:?}");
    assert!(t.outcome.skipped.is_empty(), "{t:?}");
    for pid in expected {
        assert!(
            f.pg.wait_gone(pid as i32, Duration::from_secs(5)).await,
            "{pid} survived"
        );
    }
    for pid in [kept_pid, svc_pid] {
        assert!(f.pg.is_alive(pid as i32).await, "{pid} was swept");
    }

    // The audit trail names each ended session's login, learned while it existed.
    let records = by_pid(&f.ws, "session.terminated").await;
    let logins: BTreeMap<i64, (&str, &str)> = records
        .iter()
        .map(|(pid, d)| {
            (
                *pid,
                (
                    d["login"].as_str().unwrap_or("null"),
                    d["sweep_reason"].as_str().unwrap(),
                ),
            )
        })
        .collect();
    assert_eq!(
        logins,
        BTreeMap::from([
            (
                revoked_pids[0],
                (revoked.username.as_str(), "login_dropped")
            ),
            (
                revoked_pids[1],
                (revoked.username.as_str(), "login_dropped")
            ),
            (expired_pid, (expiring.username.as_str(), "login_dropped")),
        ])
    );
    assert!(by_pid(&f.ws, "session.skipped").await.is_empty());

    stop.cancel();
    sweeper.await.unwrap();
}

#[tokio::test]
async fn the_running_sweeper_ends_a_revoked_logins_sessions_and_spares_newer_and_other_ones() {
    let mut f = fixture("pattern = \"v-%\"\ninterval = \"500ms\"").await;
    let ctx = f.context().await;
    let stop = CancellationToken::new();
    let sweeper = tokio::spawn(sever::sweep::run_sweeper(ctx.clone(), stop.clone()));

    let revoked = f.bao.dynamic_creds("", "database", "app").await;
    let kept = f.bao.dynamic_creds("", "database", "app").await;
    let (svc, svc_password) = f.bao.static_creds("", "database", "svc").await;
    let revoked_pid = f.open(&revoked.username, &revoked.password).await;
    let older_kept_pid = f.open(&kept.username, &kept.password).await;
    let svc_pid = f.open(&svc, &svc_password).await;
    wait_learned(&ctx, &[&revoked.username, &kept.username]).await;
    f.bao.revoke_lease("", &revoked.lease_id).await;
    // Sessions opened after the revocation, by valid logins: none of the sweep's business.
    let newer = f.bao.dynamic_creds("", "database", "app").await;
    let newer_pid = f.open(&newer.username, &newer.password).await;
    let newer_kept_pid = f.open(&kept.username, &kept.password).await;

    assert!(
        f.pg.wait_gone(revoked_pid as i32, Duration::from_secs(8))
            .await,
        "the sweeper never ended the revoked login's session"
    );
    stop.cancel();
    sweeper.await.unwrap();
    for pid in [older_kept_pid, svc_pid, newer_pid, newer_kept_pid] {
        assert!(f.pg.is_alive(pid as i32).await, "{pid} was swept");
    }
    let audit = f.ws.audit().await;
    let terminated: Vec<_> = audit
        .list(&sever::audit::ListFilter {
            kind: Some("session.terminated".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(terminated.len(), 1, "{terminated:?}");
    assert_eq!(terminated[0].actor, sever::sweep::ACTOR);
    let detail: Value = serde_json::from_str(&terminated[0].detail).unwrap();
    assert_eq!(detail["pid"], revoked_pid);
    assert_eq!(detail["login"], revoked.username.as_str());
    assert_eq!(detail["sweep_reason"], "login_dropped");
    assert!(by_pid(&f.ws, "session.skipped").await.is_empty());
}

#[tokio::test]
async fn logins_past_valid_until_whose_lease_openbao_could_not_revoke_are_swept_as_expired() {
    let mut f = fixture("pattern = \"v-%\"\ninterval = \"1h\"").await;
    f.bao
        .create_dynamic_role("", "database", "short", "2s", "2s")
        .await;
    let short = f.bao.dynamic_creds("", "database", "short").await;
    let kept = f.bao.dynamic_creds("", "database", "app").await;
    let expired_pid = f.open(&short.username, &short.password).await;
    let kept_pid = f.open(&kept.username, &kept.password).await;
    // OpenBao down: nothing revokes the lease, VALID UNTIL passes and the role stays.
    f.bao.stop();
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let mut conn = PgConnection::connect(&f.pg.superuser_url("postgres"))
            .await
            .unwrap();
        let expired: bool =
            sqlx::query_scalar("SELECT rolvaliduntil < now() FROM pg_roles WHERE rolname = $1")
                .bind(&short.username)
                .fetch_one(&mut conn)
                .await
                .unwrap();
        let _ = conn.close().await;
        if expired {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} never expired",
            short.username
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // From the CLI, as an operator would.
    let out = crate::support::sever::cli(&f.config, &["sweep", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        crate::support::sever::stderr(&out)
    );
    let reports: Value = serde_json::from_str(&crate::support::sever::stdout(&out)).unwrap();
    let t = &reports[0]["targets"][0];
    assert_eq!(t["terminated"].as_array().unwrap().len(), 1, "{t}");
    assert_eq!(t["terminated"][0]["pid"], expired_pid, "{t}");
    assert_eq!(t["sweep_reasons"][expired_pid.to_string()], "login_expired");
    assert!(
        f.pg.wait_gone(expired_pid as i32, Duration::from_secs(5))
            .await
    );
    assert!(f.pg.is_alive(kept_pid as i32).await);
    let records = by_pid(&f.ws, "session.terminated").await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[&expired_pid]["login"], short.username.as_str());
    assert_eq!(records[&expired_pid]["sweep_reason"], "login_expired");
}
