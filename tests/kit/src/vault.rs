//! A stand-in for HashiCorp Vault ONLY for what OpenBao lacks (the events websocket, Kubernetes auth, `rotation_schedule` roles, Enterprise-only behaviour); everything else is tested against a real OpenBao (`tests/kit/src/openbao.rs`).
//!
//! It serves only the endpoints sever calls, with bodies shaped like Vault's documented
//! responses and events.
//!
//! It listens on `127.0.0.1:<free port>` in the test's own process and is driven through
//! methods: which tokens and logins it accepts, which database static roles exist, which
//! events it publishes to the websocket subscribers. Every request is recorded.
//!
//! Served (all under `/v1`, Vault's JSON envelope, `403 {"errors":["permission denied"]}` for a
//! missing or unknown token, `404 {"errors":[]}` for anything else):
//! - `GET {mount}/static-roles/{name}`, `LIST {mount}/static-roles`, `GET …?list=true`;
//! - `POST auth/{mount}/login` (AppRole and Kubernetes bodies);
//! - `POST auth/token/renew-self`, `GET auth/token/lookup-self`;
//! - `GET sys/events/subscribe/{event_type}?json=true`, upgraded to a websocket.
//!
//! The namespace is `X-Vault-Namespace` joined with any namespace prefix of the path
//! (`/v1/team-a/database/...`), as Vault does.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{FromRequestParts, Request};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Datelike, Duration as ChronoDuration, Timelike, Utc};
use rand::Rng;
use rand::distr::Alphanumeric;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// Lease of every token the stand-in issues or renews, in seconds.
const TOKEN_TTL: i64 = 3600;

/// When a database static role's password is rotated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// `rotation_period`, in seconds.
    Period(u64),
    /// `rotation_schedule` (standard 5-field cron, UTC) and `rotation_window` in seconds
    /// (0 = none; Vault then leaves `rotation_window` out of the response).
    Schedule { schedule: String, window: u64 },
}

/// One request the stand-in received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// `GET`, `POST`, `LIST`, ...
    pub method: String,
    /// Path and query as sent, e.g. `/v1/database/static-roles?list=true`.
    pub path: String,
    /// The `X-Vault-Namespace` header, or "".
    pub namespace: String,
    /// The token sent (`X-Vault-Token`, or `Authorization: Bearer`), if any.
    pub token: Option<String>,
}

struct StaticRole {
    username: String,
    db_name: String,
    last_vault_rotation: DateTime<Utc>,
    rotation: Rotation,
}

struct Token {
    accessor: String,
    display_name: String,
    policies: Vec<String>,
    metadata: Value,
    entity_id: String,
    issued: DateTime<Utc>,
    expires: DateTime<Utc>,
}

struct Subscriber {
    /// The subscribed event type, possibly with `*` wildcards.
    pattern: String,
    /// Namespaces (normalized, "" = root) whose events this subscription receives.
    namespaces: Vec<String>,
    tx: mpsc::UnboundedSender<Outgoing>,
}

enum Outgoing {
    Event(String),
    Close,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, Token>,
    /// (mount, role_id, secret_id).
    approles: Vec<(String, String, String)>,
    /// (mount, role, jwt).
    kubernetes: Vec<(String, String, String)>,
    /// Keyed by (namespace joined with mount, role name).
    roles: BTreeMap<(String, String), StaticRole>,
    subscribers: HashMap<u64, Subscriber>,
    requests: Vec<Recorded>,
}

#[derive(Default)]
struct State {
    inner: Mutex<Inner>,
    next_subscriber: AtomicU64,
    renewals: AtomicUsize,
}

impl State {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An in-process Vault stand-in; the server stops when this is dropped.
pub struct VaultStandIn {
    state: Arc<State>,
    addr: SocketAddr,
    server: JoinHandle<()>,
}

impl Drop for VaultStandIn {
    fn drop(&mut self) {
        self.drop_subscribers();
        self.server.abort();
    }
}

impl VaultStandIn {
    pub async fn start() -> VaultStandIn {
        let state = Arc::new(State::default());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0 for the Vault stand-in");
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .fallback(handle)
            .with_state(Arc::clone(&state));
        let server = tokio::spawn(async move {
            axum::serve(listener, app)
                .await
                .expect("Vault stand-in server");
        });
        VaultStandIn {
            state,
            addr,
            server,
        }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `ws://127.0.0.1:PORT`.
    pub fn ws_address(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Tokens the stand-in accepts in X-Vault-Token (add one, e.g. "root-token").
    pub fn allow_token(&self, token: &str) {
        let mut inner = self.state.lock();
        inner.tokens.insert(
            token.to_string(),
            new_token("token", json!(null), &["root"]),
        );
    }

    /// Stops accepting `token` (as if it expired or was revoked).
    pub fn revoke_token(&self, token: &str) {
        self.state.lock().tokens.remove(token);
    }

    /// AppRole credentials accepted at POST /v1/auth/{mount}/login; issues a fresh token (lease 3600 s, renewable).
    pub fn allow_approle(&self, mount: &str, role_id: &str, secret_id: &str) {
        self.state.lock().approles.push((
            normalize(mount),
            role_id.to_string(),
            secret_id.to_string(),
        ));
    }

    /// Kubernetes: accepted (role, jwt) at POST /v1/auth/{mount}/login.
    pub fn allow_kubernetes(&self, mount: &str, role: &str, jwt: &str) {
        self.state
            .lock()
            .kubernetes
            .push((normalize(mount), role.to_string(), jwt.to_string()));
    }

    /// Creates or replaces a database static role `name` on `mount` in `namespace` ("" = root).
    #[allow(clippy::too_many_arguments)]
    pub fn set_static_role(
        &self,
        namespace: &str,
        mount: &str,
        name: &str,
        username: &str,
        db_name: &str,
        last_vault_rotation: DateTime<Utc>,
        rotation: Rotation,
    ) {
        self.state.lock().roles.insert(
            (join(namespace, mount), name.to_string()),
            StaticRole {
                username: username.to_string(),
                db_name: db_name.to_string(),
                last_vault_rotation,
                rotation,
            },
        );
    }

    /// Deletes a static role; false if there was none.
    pub fn remove_static_role(&self, namespace: &str, mount: &str, name: &str) -> bool {
        self.state
            .lock()
            .roles
            .remove(&(join(namespace, mount), name.to_string()))
            .is_some()
    }

    /// Publishes an event to every connected subscriber whose subscribed type matches (exact or trailing `*` wildcard, e.g. "database/*") and whose namespace matches.
    pub fn publish(&self, event: &Value) {
        let event_type = event["type"]
            .as_str()
            .or_else(|| event["data"]["event_type"].as_str())
            .unwrap_or_default();
        let namespace = normalize(event["data"]["namespace"].as_str().unwrap_or_default());
        let text = event.to_string();
        let inner = self.state.lock();
        for subscriber in inner.subscribers.values() {
            if glob(&subscriber.pattern, event_type) && subscriber.namespaces.contains(&namespace) {
                let _ = subscriber.tx.send(Outgoing::Event(text.clone()));
            }
        }
    }

    /// Closes every open websocket (simulates Vault dropping subscribers).
    pub fn drop_subscribers(&self) {
        let dropped: Vec<Subscriber> = self
            .state
            .lock()
            .subscribers
            .drain()
            .map(|(_, s)| s)
            .collect();
        for subscriber in dropped {
            let _ = subscriber.tx.send(Outgoing::Close);
        }
    }

    /// How many websocket subscriptions are open right now.
    pub fn subscribers(&self) -> usize {
        self.state.lock().subscribers.len()
    }

    /// Waits (up to 10 s, else panics) until at least `n` subscriptions are open.
    pub async fn wait_for_subscribers(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.subscribers() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Vault stand-in: {} subscribers after 10 s, wanted {n}",
                self.subscribers()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every request received: (method, path with query, X-Vault-Namespace header or "", token header present?)
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.lock().requests.clone()
    }

    /// How many times `auth/token/renew-self` succeeded.
    pub fn renewals(&self) -> usize {
        self.state.renewals.load(Ordering::SeqCst)
    }

    /// Builds a Vault event notification exactly like Vault emits it (CloudEvents envelope).
    pub fn event(
        event_type: &str,
        mount_path: &str,
        plugin: &str,
        metadata: Value,
        namespace: Option<&str>,
    ) -> Value {
        let id = uuid::Uuid::now_v7().to_string();
        let metadata: serde_json::Map<String, Value> = match metadata {
            Value::Object(map) => map
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        Value::String(s) => s,
                        Value::Null => String::new(),
                        other => other.to_string(),
                    };
                    (k, Value::String(v))
                })
                .collect(),
            Value::Null => serde_json::Map::new(),
            other => panic!("event metadata must be a JSON object, not {other}"),
        };
        let mut data = json!({
            "event": {"id": id, "metadata": metadata},
            "event_type": event_type,
            "plugin_info": {
                "mount_class": "secret",
                "mount_accessor": format!("{plugin}_1a2b3c4d"),
                "mount_path": format!("{}/", normalize(mount_path)),
                "plugin": plugin,
            },
        });
        if let Some(namespace) = namespace {
            data["namespace"] = json!(namespace);
        }
        json!({
            "id": id,
            "source": "https://vaultproject.io/",
            "specversion": "1.0",
            "type": event_type,
            "data": data,
            "datacontentype": "application/cloudevents",
            "time": go_time(Utc::now()),
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Request handling
// ---------------------------------------------------------------------------------------------

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    request: Request,
) -> Response {
    let (mut parts, body) = request.into_parts();
    let header_namespace = header(&parts.headers, "x-vault-namespace").unwrap_or_default();
    let token = header(&parts.headers, "x-vault-token").or_else(|| {
        header(&parts.headers, "authorization")
            .and_then(|a| a.strip_prefix("Bearer ").map(str::to_string))
    });
    let method = parts.method.as_str().to_string();
    let raw_path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or_default().to_string();
    state.lock().requests.push(Recorded {
        method: method.clone(),
        path: parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_else(|| raw_path.clone()),
        namespace: header_namespace.clone(),
        token: token.clone(),
    });

    let Some(rest) = raw_path.strip_prefix("/v1/") else {
        return not_found();
    };
    let segments: Vec<String> = rest
        .trim_end_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let query: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();

    // Logins are the only unauthenticated paths.
    if let Some(i) = segments.iter().position(|s| s == "auth")
        && segments.len() >= i + 3
        && segments.last().is_some_and(|s| s == "login")
    {
        if parts.method != Method::POST && parts.method != Method::PUT {
            return unsupported();
        }
        let mount = segments[i + 1..segments.len() - 1].join("/");
        let body = match axum::body::to_bytes(body, 1 << 20).await {
            Ok(body) => body,
            Err(_) => return error(StatusCode::BAD_REQUEST, "failed to read the request body"),
        };
        return login(&state, &mount, &body);
    }

    let Some(token) = token.filter(|t| state.lock().tokens.contains_key(t)) else {
        return permission_denied();
    };

    // sys/events/subscribe/{event_type}
    if let Some(i) = segments
        .windows(3)
        .position(|w| w[0] == "sys" && w[1] == "events" && w[2] == "subscribe")
    {
        let event_type = segments[i + 3..].join("/");
        if event_type.is_empty() {
            return not_found();
        }
        if parts.method != Method::GET {
            return unsupported();
        }
        if !query.iter().any(|(k, v)| k == "json" && v == "true") {
            return error(
                StatusCode::BAD_REQUEST,
                "the Vault stand-in only emits json=true (CloudEvents JSON), not protobuf",
            );
        }
        let namespace = join(&header_namespace, &segments[..i].join("/"));
        let mut namespaces = vec![namespace.clone()];
        for (_, pattern) in query.iter().filter(|(k, _)| k == "namespaces") {
            for pattern in pattern.split(',').filter(|p| !p.is_empty()) {
                namespaces.push(join(&namespace, pattern));
            }
        }
        let upgrade = match WebSocketUpgrade::from_request_parts(&mut parts, &()).await {
            Ok(upgrade) => upgrade,
            Err(rejection) => return rejection.into_response(),
        };
        return subscribe(state, upgrade, event_type, namespaces);
    }

    if let Some(i) = segments.iter().position(|s| s == "auth") {
        return match (&segments[i + 1..], &parts.method) {
            ([t, op], &Method::POST | &Method::PUT) if t == "token" && op == "renew-self" => {
                renew_self(&state, &token)
            }
            ([t, op], &Method::GET) if t == "token" && op == "lookup-self" => {
                lookup_self(&state, &token)
            }
            ([t, op], _) if t == "token" && (op == "renew-self" || op == "lookup-self") => {
                unsupported()
            }
            _ => not_found(),
        };
    }

    if let Some(i) = segments.iter().rposition(|s| s == "static-roles")
        && i > 0
    {
        let mount = join(&header_namespace, &segments[..i].join("/"));
        let listing = method == "LIST"
            || (parts.method == Method::GET
                && query.iter().any(|(k, v)| k == "list" && v == "true"));
        return match &segments[i + 1..] {
            [] if listing => list_static_roles(&state, &mount),
            [name] if !listing && parts.method == Method::GET => {
                read_static_role(&state, &mount, name)
            }
            [] | [_] => unsupported(),
            _ => not_found(),
        };
    }

    not_found()
}

fn login(state: &State, mount: &str, body: &Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(body) else {
        return error(StatusCode::BAD_REQUEST, "failed to parse JSON input");
    };
    let mount = normalize(mount);
    let field = |name: &str| body[name].as_str().unwrap_or_default().to_string();
    let mut inner = state.lock();
    let (display_name, metadata) = if body.get("role_id").is_some() {
        let (role_id, secret_id) = (field("role_id"), field("secret_id"));
        let known = inner
            .approles
            .iter()
            .any(|(m, r, s)| *m == mount && *r == role_id && *s == secret_id);
        if !known {
            return error(StatusCode::BAD_REQUEST, "invalid role or secret ID");
        }
        (mount.clone(), json!({"role_name": "sever"}))
    } else if body.get("jwt").is_some() {
        let (role, jwt) = (field("role"), field("jwt"));
        let roles: Vec<&(String, String, String)> = inner
            .kubernetes
            .iter()
            .filter(|(m, r, _)| *m == mount && *r == role)
            .collect();
        if roles.is_empty() {
            return error(
                StatusCode::BAD_REQUEST,
                &format!("invalid role name \"{role}\""),
            );
        }
        if !roles.iter().any(|(_, _, j)| *j == jwt) {
            return permission_denied();
        }
        (
            format!("{mount}-default-sever"),
            json!({
                "role": role,
                "service_account_name": "sever",
                "service_account_namespace": "default",
                "service_account_secret_name": "",
                "service_account_uid": uuid::Uuid::now_v7().to_string(),
            }),
        )
    } else {
        return error(StatusCode::BAD_REQUEST, "missing role_id");
    };
    let client_token = format!("hvs.{}", random(24));
    let token = new_token(&display_name, metadata, &["default", "sever"]);
    let response = auth_response(&client_token, &token);
    inner.tokens.insert(client_token, token);
    response
}

fn renew_self(state: &State, client_token: &str) -> Response {
    let mut inner = state.lock();
    let Some(token) = inner.tokens.get_mut(client_token) else {
        return permission_denied();
    };
    token.expires = Utc::now() + ChronoDuration::seconds(TOKEN_TTL);
    state.renewals.fetch_add(1, Ordering::SeqCst);
    auth_response(client_token, token)
}

fn lookup_self(state: &State, client_token: &str) -> Response {
    let inner = state.lock();
    let Some(token) = inner.tokens.get(client_token) else {
        return permission_denied();
    };
    envelope(json!({
        "accessor": token.accessor,
        "creation_time": token.issued.timestamp(),
        "creation_ttl": TOKEN_TTL,
        "display_name": token.display_name,
        "entity_id": token.entity_id,
        "expire_time": go_time(token.expires),
        "explicit_max_ttl": 0,
        "id": client_token,
        "issue_time": go_time(token.issued),
        "meta": token.metadata,
        "num_uses": 0,
        "orphan": true,
        "path": "auth/token/create",
        "policies": token.policies,
        "renewable": true,
        "ttl": remaining(token.expires),
        "type": "service",
    }))
}

fn read_static_role(state: &State, mount: &str, name: &str) -> Response {
    let inner = state.lock();
    let Some(role) = inner.roles.get(&(mount.to_string(), name.to_string())) else {
        return not_found();
    };
    let mut data = json!({
        "credential_type": "password",
        "db_name": role.db_name,
        "last_vault_rotation": go_time(role.last_vault_rotation),
        "rotation_statements": [],
        "username": role.username,
    });
    let next_rotation = match &role.rotation {
        Rotation::Period(period) => {
            data["rotation_period"] = json!(period);
            Some(role.last_vault_rotation + ChronoDuration::seconds(*period as i64))
        }
        Rotation::Schedule { schedule, window } => {
            data["rotation_schedule"] = json!(schedule);
            if *window != 0 {
                data["rotation_window"] = json!(window);
            }
            next_scheduled_rotation(schedule, Utc::now())
        }
    };
    data["ttl"] = json!(next_rotation.map_or(0, remaining));
    envelope(data)
}

fn list_static_roles(state: &State, mount: &str) -> Response {
    let inner = state.lock();
    let keys: Vec<&str> = inner
        .roles
        .keys()
        .filter(|(m, _)| m == mount)
        .map(|(_, name)| name.as_str())
        .collect();
    if keys.is_empty() {
        // Vault answers an empty list with a 404.
        return not_found();
    }
    envelope(json!({"keys": keys}))
}

fn subscribe(
    state: Arc<State>,
    upgrade: WebSocketUpgrade,
    pattern: String,
    namespaces: Vec<String>,
) -> Response {
    // Registered before the 101 goes out, so an event published as soon as the client's
    // handshake completes is not lost.
    let (tx, rx) = mpsc::unbounded_channel();
    let id = state.next_subscriber.fetch_add(1, Ordering::SeqCst);
    state.lock().subscribers.insert(
        id,
        Subscriber {
            pattern,
            namespaces,
            tx,
        },
    );
    let registration = Registration { state, id };
    upgrade.on_upgrade(move |socket| serve_subscriber(socket, rx, registration))
}

/// Unregisters a subscription when its websocket task ends (or never starts).
struct Registration {
    state: Arc<State>,
    id: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.state.lock().subscribers.remove(&self.id);
    }
}

async fn serve_subscriber(
    mut socket: WebSocket,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    registration: Registration,
) {
    loop {
        tokio::select! {
            outgoing = rx.recv() => match outgoing {
                Some(Outgoing::Event(text)) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                Some(Outgoing::Close) | None => {
                    let close = CloseFrame {
                        code: close_code::AWAY,
                        reason: "Vault stand-in dropped its subscribers".into(),
                    };
                    if socket.send(Message::Close(Some(close))).await.is_ok() {
                        // Give the client a moment to answer the close handshake.
                        let _ = tokio::time::timeout(Duration::from_secs(1), async {
                            while let Some(Ok(message)) = socket.recv().await {
                                if matches!(message, Message::Close(_)) {
                                    break;
                                }
                            }
                        })
                        .await;
                    }
                    break;
                }
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
        }
    }
    drop(registration);
}

// ---------------------------------------------------------------------------------------------
// Response shapes
// ---------------------------------------------------------------------------------------------

fn base_envelope() -> Value {
    json!({
        "request_id": uuid::Uuid::now_v7().to_string(),
        "lease_id": "",
        "renewable": false,
        "lease_duration": 0,
        "data": null,
        "wrap_info": null,
        "warnings": null,
        "auth": null,
    })
}

fn envelope(data: Value) -> Response {
    let mut body = base_envelope();
    body["data"] = data;
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn auth_response(client_token: &str, token: &Token) -> Response {
    let mut body = base_envelope();
    body["auth"] = json!({
        "client_token": client_token,
        "accessor": token.accessor,
        "policies": token.policies,
        "token_policies": token.policies,
        "metadata": token.metadata,
        "lease_duration": TOKEN_TTL,
        "renewable": true,
        "entity_id": token.entity_id,
        "token_type": "service",
        "orphan": true,
        "mfa_requirement": null,
        "num_uses": 0,
    });
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, axum::Json(json!({"errors": [message]}))).into_response()
}

fn permission_denied() -> Response {
    error(StatusCode::FORBIDDEN, "permission denied")
}

fn unsupported() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "unsupported operation")
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, axum::Json(json!({"errors": []}))).into_response()
}

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn new_token(display_name: &str, metadata: Value, policies: &[&str]) -> Token {
    let now = Utc::now();
    Token {
        accessor: random(24),
        display_name: display_name.to_string(),
        policies: policies.iter().map(|p| p.to_string()).collect(),
        metadata,
        entity_id: uuid::Uuid::now_v7().to_string(),
        issued: now,
        expires: now + ChronoDuration::seconds(TOKEN_TTL),
    }
}

fn random(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Whole seconds from now until `at` (Go's `Round(time.Second)`), never negative.
fn remaining(at: DateTime<Utc>) -> i64 {
    let ms = (at - Utc::now()).num_milliseconds();
    ((ms + 500).div_euclid(1000)).max(0)
}

/// A namespace or mount path without leading or trailing slashes ("" = root).
fn normalize(path: &str) -> String {
    path.trim_matches('/').to_string()
}

fn join(namespace: &str, path: &str) -> String {
    let (namespace, path) = (normalize(namespace), normalize(path));
    match (namespace.is_empty(), path.is_empty()) {
        (true, _) => path,
        (_, true) => namespace,
        _ => format!("{namespace}/{path}"),
    }
}

/// `pattern` with `*` matching any run of characters (Vault's subscription globs).
fn glob(pattern: &str, value: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == value;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if value.len() < first.len() + last.len() || !value.starts_with(first) || !value.ends_with(last)
    {
        return false;
    }
    let mut rest = &value[first.len()..value.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(at) => rest = &rest[at + middle.len()..],
            None => return false,
        }
    }
    true
}

fn percent_decode(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(high << 4 | low);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(digit: u8) -> Option<u8> {
    (digit as char).to_digit(16).map(|d| d as u8)
}

/// Go's `time.RFC3339Nano` in UTC, as Vault's JSON renders a `time.Time`: nanoseconds with
/// trailing zeros removed, and no fraction at all on a whole second.
fn go_time(at: DateTime<Utc>) -> String {
    let nanos = at.timestamp_subsec_nanos().min(999_999_999);
    let fraction = if nanos == 0 {
        String::new()
    } else {
        format!(".{nanos:09}").trim_end_matches('0').to_string()
    };
    format!("{}{fraction}Z", at.format("%Y-%m-%dT%H:%M:%S"))
}

/// When Vault would next rotate a role with `rotation_schedule = schedule`: the first whole
/// minute strictly after `after` that the standard 5-field cron `schedule` selects (UTC); `None`
/// if it does not parse. The stand-in's `ttl` for scheduled roles counts down to this.
pub fn next_scheduled_rotation(schedule: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    Cron::parse(schedule)?.next_after(after)
}

/// A standard 5-field cron schedule (minute hour day-of-month month day-of-week), evaluated the
/// way Vault's scheduler (robfig/cron) does, in UTC.
struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    /// Day-of-month or day-of-week started with `*`/`?`: both must match, else either.
    day_star: bool,
}

impl Cron {
    fn parse(spec: &str) -> Option<Cron> {
        const MONTHS: [&str; 12] = [
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let fields: Vec<&str> = spec.split_whitespace().collect();
        let [minute, hour, dom, month, dow] = fields.as_slice() else {
            return None;
        };
        let (minutes, _) = field(minute, 0, 59, &[])?;
        let (hours, _) = field(hour, 0, 23, &[])?;
        let (days, dom_star) = field(dom, 1, 31, &[])?;
        let (months, _) = field(month, 1, 12, &MONTHS)?;
        let (mut weekdays, dow_star) = field(dow, 0, 7, &DAYS)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1;
        }
        Some(Cron {
            minutes,
            hours,
            days,
            months,
            weekdays,
            day_star: dom_star || dow_star,
        })
    }

    fn day_matches(&self, t: DateTime<Utc>) -> bool {
        let dom = self.days & (1 << t.day()) != 0;
        let dow = self.weekdays & (1 << t.weekday().num_days_from_sunday()) != 0;
        if self.day_star {
            dom && dow
        } else {
            dom || dow
        }
    }

    /// The first whole minute strictly after `after` that the schedule selects.
    fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.with_second(0)?.with_nanosecond(0)? + ChronoDuration::minutes(1);
        let limit = after + ChronoDuration::days(5 * 366);
        while t < limit {
            if self.months & (1 << t.month()) == 0 {
                let (y, m) = if t.month() == 12 {
                    (t.year() + 1, 1)
                } else {
                    (t.year(), t.month() + 1)
                };
                t = t
                    .with_day(1)?
                    .with_hour(0)?
                    .with_minute(0)?
                    .with_month(m)?
                    .with_year(y)?;
            } else if !self.day_matches(t) {
                t = t.with_hour(0)?.with_minute(0)? + ChronoDuration::days(1);
            } else if self.hours & (1 << t.hour()) == 0 {
                t = t.with_minute(0)? + ChronoDuration::hours(1);
            } else if self.minutes & (1 << t.minute()) == 0 {
                t += ChronoDuration::minutes(1);
            } else {
                return Some(t);
            }
        }
        None
    }
}

/// One cron field as a bit set, and whether it started with `*` or `?` (robfig's star bit).
fn field(text: &str, min: u32, max: u32, names: &[&str]) -> Option<(u64, bool)> {
    let value = |s: &str| -> Option<u32> {
        let lower = s.to_ascii_lowercase();
        let n = match names.iter().position(|n| *n == lower) {
            // Month names count from 1 (min), weekday names from 0 (min).
            Some(i) => i as u32 + min,
            None => s.parse().ok()?,
        };
        (min..=max).contains(&n).then_some(n)
    };
    let mut bits = 0u64;
    let mut star = false;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((range, step)) => (range, Some(step.parse::<u32>().ok().filter(|s| *s > 0)?)),
            None => (part, None),
        };
        let (low, high) = if range == "*" || range == "?" {
            if step.is_none_or(|s| s == 1) {
                star = true;
            }
            (min, max)
        } else if let Some((low, high)) = range.split_once('-') {
            (value(low)?, value(high)?)
        } else {
            let low = value(range)?;
            (low, if step.is_some() { max } else { low })
        };
        if low > high {
            return None;
        }
        let step = step.unwrap_or(1);
        let mut n = low;
        while n <= high {
            bits |= 1 << n;
            n += step;
        }
    }
    Some((bits, star))
}
