//! The OpenBao set-up helpers of [`TestBao`]: database engine (static and dynamic roles),
//! kv-v2, AppRole, tokens, namespaces, policies. Every helper acts as root, panics with
//! OpenBao's answer when OpenBao refuses (except [`TestBao::write_policy`], whose refusal is
//! a test subject), and takes the namespace first ("" = the root namespace).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use super::{DB_CONNECTION, ROOT_TOKEN, TestBao, TestPostgres, db_config, parse_time, str_at};

/// A database static role as `GET {mount}/static-roles/{role}` reports it.
#[derive(Debug, Clone)]
pub struct StaticRole {
    /// The PostgreSQL login the role manages.
    pub username: String,
    /// When OpenBao last rotated its password.
    pub last_vault_rotation: DateTime<Utc>,
    /// `last_vault_rotation` exactly as OpenBao wrote it (nanoseconds).
    pub last_vault_rotation_raw: String,
    /// The whole `data` object.
    pub data: Value,
}

/// Credentials of a dynamic database role (`GET {mount}/creds/{role}`).
#[derive(Debug, Clone)]
pub struct DbCreds {
    /// The PostgreSQL login OpenBao created (`v-<display name>-<role>-<random>-<time>`).
    pub username: String,
    /// Its password.
    pub password: String,
    /// The lease; revoking it drops the login.
    pub lease_id: String,
    /// The lease's TTL in seconds.
    pub lease_duration: u64,
}

/// What [`TestBao::enable_approle`] sets on the AppRole role (`auth/approle/role/{name}`).
#[derive(Debug, Clone)]
pub struct AppRoleOptions {
    /// `token_ttl`, e.g. "3s"; "" leaves the default.
    pub token_ttl: String,
    /// `token_max_ttl`, e.g. "10s"; "" leaves the default.
    pub token_max_ttl: String,
    /// `token_type`: "service" (renewable) or "batch" (not renewable).
    pub token_type: String,
    /// `secret_id_ttl`; "" leaves the default (no expiry).
    pub secret_id_ttl: String,
}

impl Default for AppRoleOptions {
    fn default() -> Self {
        AppRoleOptions {
            token_ttl: String::new(),
            token_max_ttl: String::new(),
            token_type: "service".into(),
            secret_id_ttl: String::new(),
        }
    }
}

/// What [`TestBao::create_token`] asks for (`auth/token/create`).
#[derive(Debug, Clone)]
pub struct TokenOptions {
    /// Policies; the `default` policy is added unless `no_default_policy`.
    pub policies: Vec<String>,
    /// `ttl`, e.g. "10s"; "" = the default (32 days in dev mode).
    pub ttl: String,
    /// `explicit_max_ttl`; "" = none.
    pub explicit_max_ttl: String,
    /// Whether renew-self may extend it.
    pub renewable: bool,
    /// "service" or "batch".
    pub token_type: String,
    /// Leave out the `default` policy (then the token cannot even look itself up).
    pub no_default_policy: bool,
}

impl Default for TokenOptions {
    fn default() -> Self {
        TokenOptions {
            policies: Vec::new(),
            ttl: String::new(),
            explicit_max_ttl: String::new(),
            renewable: true,
            token_type: "service".into(),
            no_default_policy: false,
        }
    }
}

/// A token [`TestBao::create_token`] or an AppRole login issued.
#[derive(Debug, Clone)]
pub struct CreatedToken {
    /// The token itself (`s.…` for service, `b.…` for batch tokens).
    pub token: String,
    /// Its accessor ("" for batch tokens).
    pub accessor: String,
    /// Its TTL in seconds at issue.
    pub lease_duration: u64,
    /// Whether it can be renewed.
    pub renewable: bool,
    /// The whole `auth` object.
    pub auth: Value,
}

impl CreatedToken {
    fn from_auth(reply: &Value) -> CreatedToken {
        let auth = reply["auth"].clone();
        CreatedToken {
            token: str_at(&auth, "/client_token"),
            accessor: auth["accessor"].as_str().unwrap_or_default().to_owned(),
            lease_duration: auth["lease_duration"].as_u64().unwrap_or_default(),
            renewable: auth["renewable"].as_bool().unwrap_or_default(),
            auth,
        }
    }
}

impl TestBao {
    /// Mounts a database secrets engine at `mount` and writes its connection
    /// [`DB_CONNECTION`] ("pg") to `pg` as superuser, every role allowed.
    pub async fn enable_database(&self, ns: &str, mount: &str, pg: &TestPostgres) {
        self.mount(ns, mount, json!({"type": "database"})).await;
        self.ok(
            ns,
            "PUT",
            &format!("{mount}/config/{DB_CONNECTION}"),
            Some(&db_config(pg)),
        )
        .await;
    }

    /// Creates static role `role` managing the existing PostgreSQL login `username` (create it
    /// first, e.g. `pg.create_login`), rotated every `rotation_period` ("1h"). OpenBao sets a
    /// new password at once: read it with [`static_creds`](Self::static_creds).
    pub async fn create_static_role(
        &self,
        ns: &str,
        mount: &str,
        role: &str,
        username: &str,
        rotation_period: &str,
    ) {
        let body = json!({
            "db_name": DB_CONNECTION,
            "username": username,
            "rotation_period": rotation_period,
        });
        self.ok(
            ns,
            "PUT",
            &format!("{mount}/static-roles/{role}"),
            Some(&body),
        )
        .await;
    }

    /// Rotates a static role's password now (`POST {mount}/rotate-role/{role}`).
    pub async fn rotate_role(&self, ns: &str, mount: &str, role: &str) {
        self.ok(
            ns,
            "POST",
            &format!("{mount}/rotate-role/{role}"),
            Some(&json!({})),
        )
        .await;
    }

    /// `GET {mount}/static-roles/{role}`.
    pub async fn read_static_role(&self, ns: &str, mount: &str, role: &str) -> StaticRole {
        let reply = self
            .ok(ns, "GET", &format!("{mount}/static-roles/{role}"), None)
            .await;
        let data = reply["data"].clone();
        let raw = str_at(&data, "/last_vault_rotation");
        StaticRole {
            username: str_at(&data, "/username"),
            last_vault_rotation: parse_time(&raw),
            last_vault_rotation_raw: raw,
            data,
        }
    }

    /// The static role's current (username, password): `GET {mount}/static-creds/{role}`.
    pub async fn static_creds(&self, ns: &str, mount: &str, role: &str) -> (String, String) {
        let reply = self
            .ok(ns, "GET", &format!("{mount}/static-creds/{role}"), None)
            .await;
        (
            str_at(&reply, "/data/username"),
            str_at(&reply, "/data/password"),
        )
    }

    /// Creates dynamic role `role`: each credential is a new PostgreSQL login with
    /// `VALID UNTIL` its lease's end, dropped by OpenBao when the lease is revoked or expires.
    /// TTLs as OpenBao durations ("2s", "1h").
    pub async fn create_dynamic_role(
        &self,
        ns: &str,
        mount: &str,
        role: &str,
        default_ttl: &str,
        max_ttl: &str,
    ) {
        let body = json!({
            "db_name": DB_CONNECTION,
            "creation_statements": [
                "CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '{{password}}' \
                 VALID UNTIL '{{expiration}}';"
            ],
            "default_ttl": default_ttl,
            "max_ttl": max_ttl,
        });
        self.ok(ns, "PUT", &format!("{mount}/roles/{role}"), Some(&body))
            .await;
    }

    /// Issues a credential of dynamic role `role` (as root: usernames start `v-token-`).
    pub async fn dynamic_creds(&self, ns: &str, mount: &str, role: &str) -> DbCreds {
        let reply = self
            .ok(ns, "GET", &format!("{mount}/creds/{role}"), None)
            .await;
        DbCreds {
            username: str_at(&reply, "/data/username"),
            password: str_at(&reply, "/data/password"),
            lease_id: str_at(&reply, "/lease_id"),
            lease_duration: reply["lease_duration"].as_u64().unwrap_or_default(),
        }
    }

    /// Revokes a lease now (`PUT sys/leases/revoke`); for a database credential, OpenBao drops
    /// the login before answering.
    pub async fn revoke_lease(&self, ns: &str, lease_id: &str) {
        self.ok(
            ns,
            "PUT",
            "sys/leases/revoke",
            Some(&json!({"lease_id": lease_id})),
        )
        .await;
    }

    /// Mounts a kv version 2 engine at `mount`.
    pub async fn enable_kv2(&self, ns: &str, mount: &str) {
        self.mount(
            ns,
            mount,
            json!({"type": "kv", "options": {"version": "2"}}),
        )
        .await;
    }

    /// Writes `data` as the next version of `path` in kv-v2 `mount`; returns the version.
    /// Retries briefly while a fresh mount is still setting itself up.
    pub async fn kv_put(&self, ns: &str, mount: &str, path: &str, data: &Value) -> u64 {
        let url = format!("{mount}/data/{path}");
        let body = json!({"data": data});
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (status, reply) = self.request(ROOT_TOKEN, ns, "PUT", &url, Some(&body)).await;
            if status.is_success() {
                return reply["data"]["version"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no version in {reply}"));
            }
            // A just-mounted kv-v2 answers "upgrading" (or not yet routed) for a moment.
            let transient =
                status.is_server_error() || status == 404 || reply.to_string().contains("pgrad");
            assert!(
                transient && std::time::Instant::now() < deadline,
                "OpenBao PUT {url} (ns {ns:?}) answered {status}: {reply}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// `GET {mount}/metadata/{path}`'s `data` (current_version, versions, updated_time, …).
    pub async fn kv_metadata(&self, ns: &str, mount: &str, path: &str) -> Value {
        self.ok(ns, "GET", &format!("{mount}/metadata/{path}"), None)
            .await["data"]
            .clone()
    }

    /// Enables AppRole at `auth/approle` (once per namespace), creates role `role` with
    /// `policies` and `options`, and returns a fresh (role_id, secret_id).
    pub async fn enable_approle(
        &self,
        ns: &str,
        role: &str,
        policies: &[&str],
        options: &AppRoleOptions,
    ) -> (String, String) {
        let enabled = self.ok(ns, "GET", "sys/auth", None).await["data"]
            .get("approle/")
            .is_some();
        if !enabled {
            self.ok(
                ns,
                "POST",
                "sys/auth/approle",
                Some(&json!({"type": "approle"})),
            )
            .await;
        }
        let mut body = json!({
            "token_policies": policies,
            "token_type": options.token_type,
        });
        for (key, value) in [
            ("token_ttl", &options.token_ttl),
            ("token_max_ttl", &options.token_max_ttl),
            ("secret_id_ttl", &options.secret_id_ttl),
        ] {
            if !value.is_empty() {
                body[key] = json!(value);
            }
        }
        let base = format!("auth/approle/role/{role}");
        self.ok(ns, "PUT", &base, Some(&body)).await;
        let role_id = str_at(
            &self.ok(ns, "GET", &format!("{base}/role-id"), None).await,
            "/data/role_id",
        );
        let secret_id = str_at(
            &self
                .ok(ns, "POST", &format!("{base}/secret-id"), Some(&json!({})))
                .await,
            "/data/secret_id",
        );
        (role_id, secret_id)
    }

    /// Logs in with AppRole (`auth/approle/login`), as sever would.
    pub async fn approle_login(&self, ns: &str, role_id: &str, secret_id: &str) -> CreatedToken {
        let (status, reply) = self
            .request(
                "",
                ns,
                "POST",
                "auth/approle/login",
                Some(&json!({"role_id": role_id, "secret_id": secret_id})),
            )
            .await;
        assert!(
            status.is_success(),
            "AppRole login answered {status}: {reply}"
        );
        CreatedToken::from_auth(&reply)
    }

    /// Creates a token in `ns` (`auth/token/create`, as root).
    pub async fn create_token(&self, ns: &str, options: &TokenOptions) -> CreatedToken {
        let mut body = json!({
            "policies": options.policies,
            "renewable": options.renewable,
            "type": options.token_type,
            "no_default_policy": options.no_default_policy,
        });
        if !options.ttl.is_empty() {
            body["ttl"] = json!(options.ttl);
        }
        if !options.explicit_max_ttl.is_empty() {
            body["explicit_max_ttl"] = json!(options.explicit_max_ttl);
        }
        let reply = self.ok(ns, "POST", "auth/token/create", Some(&body)).await;
        CreatedToken::from_auth(&reply)
    }

    /// `auth/token/lookup-self` as `token`: (status, body); the TTL left is `data.ttl`.
    pub async fn lookup_self(&self, ns: &str, token: &str) -> (reqwest::StatusCode, Value) {
        self.request(token, ns, "GET", "auth/token/lookup-self", None)
            .await
    }

    /// Revokes `token` (and its children) now, as root.
    pub async fn revoke_token(&self, ns: &str, token: &str) {
        self.ok(
            ns,
            "POST",
            "auth/token/revoke",
            Some(&json!({"token": token})),
        )
        .await;
    }

    /// Creates namespace `name` (a child of the root namespace; `a/b` nests).
    pub async fn create_namespace(&self, name: &str) {
        let (parent, child) = name.rsplit_once('/').unwrap_or(("", name));
        self.ok(
            parent,
            "POST",
            &format!("sys/namespaces/{child}"),
            Some(&json!({})),
        )
        .await;
    }

    /// Writes ACL policy `name`. `Err` carries OpenBao's refusal (e.g. a parse error naming
    /// `subscribe_event_types`).
    pub async fn write_policy(&self, ns: &str, name: &str, hcl: &str) -> Result<(), String> {
        let (status, reply) = self
            .put(
                ns,
                &format!("sys/policies/acl/{name}"),
                &json!({"policy": hcl}),
            )
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("{status}: {reply}"))
        }
    }

    /// Mounts a secrets engine (`sys/mounts/{mount}`). An existing mount of the same type
    /// and version is kept: dev mode mounts kv-v2 at `secret/` in the root namespace.
    async fn mount(&self, ns: &str, mount: &str, body: Value) {
        let path = format!("sys/mounts/{mount}");
        let (status, reply) = self.post(ns, &path, &body).await;
        if status.is_success() {
            return;
        }
        let (_, existing) = self.get(ns, &path).await;
        let same = existing["data"]["type"] == body["type"]
            && existing["data"]["options"]["version"] == body["options"]["version"];
        assert!(
            same && reply.to_string().contains("already in use"),
            "OpenBao POST {path} (ns {ns:?}) answered {status}: {reply} (existing: {existing})"
        );
    }
}
