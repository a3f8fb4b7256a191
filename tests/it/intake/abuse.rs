//! Issue 6, abuse: 10,000 randomised bad requests of every kind, 32 in flight, while slow
//! clients hold connections open and valid signed events keep arriving. Every bad request
//! must be refused with its documented status and code, no session they name may end, every
//! valid event must be acted on and answered in time, and the service must stay ready.
//!
//! The store is SQLite, the default and what a single instance runs on: its one writer is
//! the narrowest point an audited flood can squeeze. The target is a real PostgreSQL whose
//! `app` sessions are reachable from almost every bad request (the events name `orders`,
//! whose policy ends all of `app`'s sessions; the operator calls revoke `app`), so a single
//! request accepted by mistake shows up as a dead session.
//!
//! The requests come from a seeded RNG: the seed is printed, and `SEVER_ABUSE_SEED=<n>`
//! replays a run. Timestamps are taken when a request is sent, not when it is generated, so
//! a slow run cannot turn a "future" timestamp into a valid one.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::sever::{
    API_KEY, SECRET, TOKEN, TestServer, WRONG_SECRET, Workspace, create_admin, now, pids,
};
use crate::support::sns::TestSns;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sever::http::rejections;
use sever::intake::webhook::sign;
use sever::operator::token_hash;
use sever_testkit::pg::TestPostgres;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Mutex;

/// Bad requests in the flood.
const BAD_REQUESTS: usize = 10_000;
/// Requests in flight at once.
const IN_FLIGHT: usize = 32;
/// A valid signed event is sent after every this many bad ones, by the same senders.
const VALID_EVERY: usize = 250;
/// `webhooks.tolerance` of the config, in seconds.
const TOLERANCE: i64 = 900;
/// `server.max_body_bytes` of the config.
const MAX_BODY: usize = 64 * 1024;
/// `server.header_read_timeout` and `server.request_timeout` of the config.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Sessions of `app` that must survive.
const APP_SESSIONS: usize = 8;
/// Slow clients trickling headers, and trickling bodies, during the flood.
const SLOW_HEADERS: usize = 3;
const SLOW_BODIES: usize = 3;
/// Gap between a slow client's bytes, and how long it keeps sending before concluding the
/// server never cut it off (far beyond both server timeouts).
const TRICKLE: Duration = Duration::from_millis(100);
const TRICKLE_FOR: Duration = Duration::from_secs(60);
/// Upper bound for any one answer: generous, it only turns a hang into a clear failure.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

const TOPIC: &str = "arn:aws:sns:us-east-1:123456789012:sever-rotations";
const FOREIGN_TOPIC: &str = "arn:aws:sns:us-east-1:999999999999:not-ours";
const SECRET_ARN: &str = "arn:aws:secretsmanager:us-east-1:123456789012:secret:prod/orders-AbCdEf";

/// How the `webhook-timestamp` header is set.
#[derive(Debug, Clone)]
enum Ts {
    /// Now plus this many seconds, when the request is sent.
    Offset(i64),
    /// This value (a replay, or an extreme).
    Fixed(i64),
    /// A literal that is not a number.
    Raw(&'static str),
}

/// How the `webhook-signature` header is made from the id, timestamp and body sent.
#[derive(Debug, Clone)]
enum Sig {
    /// With the configured secret.
    Valid,
    /// With a secret sever does not trust.
    WrongKey,
    /// The valid signature's base64 cut to this many characters (a multiple of 4: it decodes).
    Truncated(usize),
    /// The valid signature under another scheme than `v1,`.
    Scheme(&'static str),
    /// A fixed value.
    Literal(String),
    /// With the configured secret, over another id, timestamp or body than the ones sent.
    Over {
        id: Option<String>,
        ts_shift: i64,
        body: Option<Vec<u8>>,
    },
    /// Several, space-separated.
    Several(Vec<Sig>),
}

/// The Standard Webhooks headers of a request; `None` leaves a header out.
#[derive(Debug, Clone)]
struct Webhook {
    id: Option<String>,
    ts: Option<Ts>,
    sig: Option<Sig>,
}

/// A request, as sent apart from the time-dependent webhook headers.
#[derive(Debug, Clone)]
struct Recipe {
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    webhook: Option<Webhook>,
}

/// A bad request and the refusal it must get.
#[derive(Debug, Clone)]
struct Bad {
    category: &'static str,
    variant: String,
    recipe: Recipe,
    status: StatusCode,
    code: &'static str,
}

impl Bad {
    /// Whether the refusal is audited: sever's own refusals are, the router's 404/405 (no
    /// route was reached) and a missing action (an operator's lookup) are not.
    fn audited(&self) -> bool {
        !matches!(
            self.code,
            "not_found" | "method_not_allowed" | "unknown_action"
        )
    }
}

enum Item {
    Bad(Box<Bad>),
    Valid(usize),
}

/// A delivery accepted before the flood, exactly as it was sent.
#[derive(Debug, Clone)]
struct Delivery {
    id: String,
    ts: i64,
    signature: String,
    body: Vec<u8>,
}

/// What the generator draws on besides the RNG.
struct Fixtures {
    replays: Vec<Delivery>,
    /// An action that exists, for `/v1/actions/{id}`.
    action_id: String,
    /// A genuinely signed notification from the trusted topic, to tamper with.
    sns_trusted: Value,
    /// Genuinely signed messages that must still be refused.
    sns_foreign: Vec<u8>,
    sns_foreign_confirmation: Vec<u8>,
    sns_stale: Vec<u8>,
}

fn to_vec(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).unwrap()
}

fn random_b64(rng: &mut StdRng, n: usize) -> String {
    let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
    STANDARD.encode(bytes)
}

fn random_id(rng: &mut StdRng) -> String {
    format!("msg_{:032x}", rng.random::<u128>())
}

/// An event that, were it accepted, would end every `app` session.
fn orders_event(rng: &mut StdRng) -> Value {
    let mut event =
        json!({"credential": "orders", "kind": *["revoked", "rotated"].choose(rng).unwrap()});
    if rng.random_bool(0.5) {
        event["reason"] = json!(format!("abuse {}", rng.random::<u32>()));
    }
    event
}

/// A Lambda hook call for a final rotation step.
fn hook_event(rng: &mut StdRng) -> Value {
    json!({"SecretId": SECRET_ARN, "ClientRequestToken": format!("{:032x}", rng.random::<u128>()),
           "Step": "finishSecret"})
}

/// A Vault `database/rotate` notification.
fn vault_event(rng: &mut StdRng) -> Value {
    let id = format!("{:032x}", rng.random::<u128>());
    json!({"id": id, "source": "https://vault.example:8200/", "specversion": "1.0",
           "type": "database/rotate", "time": "2026-01-01T00:00:00Z",
           "data": {"event": {"id": id, "metadata": {"name": "orders", "operation": "rotate",
                                                       "modified": "true", "path": "database/rotate-role/orders"}},
                    "event_type": "database/rotate",
                    "plugin_info": {"mount_path": "database/", "plugin": "database"}}})
}

/// An EventBridge "Secret Label Updated" event.
fn eventbridge_event(rng: &mut StdRng) -> Value {
    json!({"version": "0", "id": format!("{:032x}", rng.random::<u128>()),
           "detail-type": "Secret Label Updated", "source": "aws.secretsmanager",
           "account": "123456789012", "time": "2026-01-01T00:00:00Z", "region": "us-east-1",
           "resources": [SECRET_ARN],
           "detail": {"labelUpdated": "AWSCURRENT", "versionId": "v2", "name": "prod/orders"}})
}

/// The revocation every operator-API abuse asks for: all of `app`'s sessions.
fn revoke_app() -> Vec<u8> {
    to_vec(&json!({"login": "app", "targets": "all", "reason": "abuse"}))
}

/// A Standard Webhooks endpoint and a fitting body for it.
fn webhook_endpoint(rng: &mut StdRng) -> (&'static str, Vec<u8>) {
    match rng.random_range(0..4) {
        0 | 1 => ("/v1/events", to_vec(&orders_event(rng))),
        2 => ("/v1/events/aws", to_vec(&hook_event(rng))),
        _ => ("/v1/events/vault", to_vec(&vault_event(rng))),
    }
}

fn post(path: &str, body: Vec<u8>, webhook: Option<Webhook>) -> Recipe {
    Recipe {
        method: Method::POST,
        path: path.to_owned(),
        headers: vec![("content-type", "application/json".to_owned())],
        body,
        webhook,
    }
}

fn signed(rng: &mut StdRng, sig: Sig) -> Webhook {
    Webhook {
        id: Some(random_id(rng)),
        ts: Some(Ts::Offset(0)),
        sig: Some(sig),
    }
}

fn bad(
    category: &'static str,
    variant: impl Into<String>,
    recipe: Recipe,
    status: StatusCode,
    code: &'static str,
) -> Bad {
    Bad {
        category,
        variant: variant.into(),
        recipe,
        status,
        code,
    }
}

/// A signature that is not valid but is well-formed (so the refusal is `invalid_signature`).
fn wrong_sig(rng: &mut StdRng) -> Sig {
    match rng.random_range(0..4) {
        0 => Sig::WrongKey,
        1 => Sig::Truncated(4 * rng.random_range(1..=10)),
        2 => Sig::Literal(format!("v1,{}", random_b64(rng, 32))),
        _ => Sig::Over {
            id: None,
            ts_shift: rng.random_range(1..=5),
            body: None,
        },
    }
}

fn bad_signature(rng: &mut StdRng) -> Bad {
    const C: &str = "bad_signature";
    let (path, body) = webhook_endpoint(rng);
    let unauthorized = |variant: &str, sig: Sig, rng: &mut StdRng, body: Vec<u8>| {
        bad(
            C,
            format!("{variant} on {path}"),
            post(path, body, Some(signed(rng, sig))),
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
        )
    };
    match rng.random_range(0..9) {
        0 => unauthorized("wrong key", Sig::WrongKey, rng, body),
        1 => {
            let n = 4 * rng.random_range(1..=10);
            unauthorized(&format!("truncated to {n}"), Sig::Truncated(n), rng, body)
        }
        2 => {
            let sig = Sig::Literal(format!("v1,{}", random_b64(rng, 32)));
            unauthorized("random bytes", sig, rng, body)
        }
        3 => {
            let n = rng.random_range(2..=20);
            let sigs = (0..n).map(|_| wrong_sig(rng)).collect();
            unauthorized(
                &format!("{n} signatures, none valid"),
                Sig::Several(sigs),
                rng,
                body,
            )
        }
        4 => {
            let other = to_vec(&json!({"credential": "noop", "kind": "rotated"}));
            let sig = Sig::Over {
                id: None,
                ts_shift: 0,
                body: Some(other),
            };
            unauthorized("signed over another body", sig, rng, body)
        }
        5 => {
            let sig = Sig::Over {
                id: Some(random_id(rng)),
                ts_shift: 0,
                body: None,
            };
            unauthorized("signed for another webhook-id", sig, rng, body)
        }
        6 => {
            // The valid signature is there, but under v2: only v1 counts, and the v1 is wrong.
            let sig = Sig::Several(vec![Sig::Scheme("v2,"), Sig::WrongKey]);
            unauthorized("valid under v2 beside a wrong v1", sig, rng, body)
        }
        7 => {
            let scheme = *["v2,", "v0,", "V1,", "v1=", "sha256=", "v1;", ""]
                .choose(rng)
                .unwrap();
            bad(
                C,
                format!("valid signature under scheme {scheme:?} on {path}"),
                post(path, body, Some(signed(rng, Sig::Scheme(scheme)))),
                StatusCode::BAD_REQUEST,
                "malformed_header",
            )
        }
        _ => {
            // (`v1,` with nothing after it decodes, to an empty signature: 401, not this.)
            let value = ["v1,!!!not-base64!!!", "", "v1,AAA", "garbage"]
                .choose(rng)
                .unwrap();
            bad(
                C,
                format!("undecodable signature {value:?} on {path}"),
                post(
                    path,
                    body,
                    Some(signed(rng, Sig::Literal((*value).to_owned()))),
                ),
                StatusCode::BAD_REQUEST,
                "malformed_header",
            )
        }
    }
}

fn replay(rng: &mut StdRng, fixtures: &Fixtures) -> Bad {
    const C: &str = "replay";
    let (i, delivery) = {
        let i = rng.random_range(0..fixtures.replays.len());
        (i, &fixtures.replays[i])
    };
    let webhook = Webhook {
        id: Some(delivery.id.clone()),
        ts: Some(Ts::Fixed(delivery.ts)),
        sig: Some(Sig::Literal(delivery.signature.clone())),
    };
    match rng.random_range(0..5) {
        // The same delivery to another endpoint authenticates, but is not that endpoint's
        // event: refused before its webhook-id is looked at.
        0 => {
            let path = *["/v1/events/aws", "/v1/events/vault"].choose(rng).unwrap();
            bad(
                C,
                format!("delivery {i} to {path}"),
                post(path, delivery.body.clone(), Some(webhook)),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            )
        }
        _ => {
            let path = *["/v1/events", "/v1/events?wait=true"].choose(rng).unwrap();
            bad(
                C,
                format!("delivery {i} to {path}"),
                post(path, delivery.body.clone(), Some(webhook)),
                StatusCode::CONFLICT,
                "replayed_delivery",
            )
        }
    }
}

fn stale_timestamp(rng: &mut StdRng) -> Bad {
    let (path, body) = webhook_endpoint(rng);
    let ts = match rng.random_range(0..6) {
        0 => Ts::Fixed(0),
        1 => Ts::Fixed(i64::MIN),
        _ => Ts::Offset(-(TOLERANCE + 30 + rng.random_range(0..10 * 365 * 86_400))),
    };
    let webhook = Webhook {
        id: Some(random_id(rng)),
        ts: Some(ts.clone()),
        sig: Some(Sig::Valid),
    };
    bad(
        "stale_timestamp",
        format!("{ts:?} on {path}"),
        post(path, body, Some(webhook)),
        StatusCode::UNAUTHORIZED,
        "timestamp_out_of_tolerance",
    )
}

fn future_timestamp(rng: &mut StdRng) -> Bad {
    let (path, body) = webhook_endpoint(rng);
    let ts = match rng.random_range(0..5) {
        0 => Ts::Fixed(i64::MAX),
        _ => Ts::Offset(TOLERANCE + 30 + rng.random_range(0..10 * 365 * 86_400)),
    };
    let webhook = Webhook {
        id: Some(random_id(rng)),
        ts: Some(ts.clone()),
        sig: Some(Sig::Valid),
    };
    bad(
        "future_timestamp",
        format!("{ts:?} on {path}"),
        post(path, body, Some(webhook)),
        StatusCode::UNAUTHORIZED,
        "timestamp_out_of_tolerance",
    )
}

fn oversized(rng: &mut StdRng) -> Bad {
    let size = MAX_BODY + 1 + rng.random_range(0..MAX_BODY);
    let mut event = orders_event(rng);
    event["reason"] = json!("x".repeat(size));
    let body = to_vec(&event);
    let (variant, recipe) = match rng.random_range(0..5) {
        // Correctly signed: the size is refused before the signature is even looked at.
        0 | 1 => {
            let path = *["/v1/events", "/v1/events/vault", "/v1/events/aws"]
                .choose(rng)
                .unwrap();
            (path, post(path, body, Some(signed(rng, Sig::Valid))))
        }
        2 => ("/v1/events unsigned", post("/v1/events", body, None)),
        3 => {
            let mut r = post("/v1/events/aws", body, None);
            r.headers.push(("x-sever-api-key", API_KEY.to_owned()));
            ("/v1/events/aws with the API key", r)
        }
        _ => {
            let mut r = post("/v1/revocations", body, None);
            r.headers.push(("authorization", format!("Bearer {TOKEN}")));
            ("/v1/revocations with the token", r)
        }
    };
    bad(
        "oversized",
        format!("{size} bytes to {variant}"),
        recipe,
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
    )
}

fn malformed_json(rng: &mut StdRng) -> Bad {
    let (path, good) = webhook_endpoint(rng);
    let (variant, body): (&str, Vec<u8>) = match rng.random_range(0..9) {
        0 => {
            let cut = rng.random_range(1..good.len() - 1);
            ("truncated", good[..cut].to_vec())
        }
        1 => {
            let mut bytes: Vec<u8> = (0..rng.random_range(8..512))
                .map(|_| rng.random())
                .collect();
            bytes[0] = 0xff; // never valid JSON (nor UTF-8)
            ("random bytes", bytes)
        }
        2 => ("empty", Vec::new()),
        3 => (
            "single quotes",
            b"{'credential': 'orders', 'kind': 'revoked'}".to_vec(),
        ),
        4 => (
            "bare words",
            b"{\"credential\": orders, \"kind\": revoked}".to_vec(),
        ),
        5 => {
            let mut body = good.clone();
            body.extend_from_slice(b" trailing");
            ("trailing garbage", body)
        }
        6 => {
            // Balanced, so JSON's grammar allows it: only the parser's depth limit refuses it,
            // where the body is read as any JSON (Vault's envelope). Read into a fixed shape
            // (the other endpoints), the first `[` is already the wrong type: 422.
            let depth = rng.random_range(200..2000);
            let body = format!("{}{}", "[".repeat(depth), "]".repeat(depth)).into_bytes();
            if path != "/v1/events/vault" {
                return bad(
                    "malformed_json",
                    format!("nested {depth} deep, to {path}"),
                    post(path, body, Some(signed(rng, Sig::Valid))),
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "invalid_request",
                );
            }
            ("nested too deep", body)
        }
        7 => {
            let mut body = "\u{feff}".as_bytes().to_vec();
            body.extend_from_slice(&good);
            ("byte-order mark", body)
        }
        _ => (
            "NaN",
            b"{\"credential\": \"orders\", \"kind\": NaN}".to_vec(),
        ),
    };
    bad(
        "malformed_json",
        format!("{variant} to {path}"),
        post(path, body, Some(signed(rng, Sig::Valid))),
        StatusCode::BAD_REQUEST,
        "malformed_json",
    )
}

fn wrong_shape(rng: &mut StdRng) -> Bad {
    const C: &str = "wrong_shape";
    let invalid = |variant: &str, path: &str, body: Value, rng: &mut StdRng| {
        bad(
            C,
            format!("{variant} to {path}"),
            post(path, to_vec(&body), Some(signed(rng, Sig::Valid))),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
    };
    let future = chrono::Utc::now() + chrono::Duration::days(rng.random_range(1..3650));
    match rng.random_range(0..17) {
        0 => invalid("array", "/v1/events", json!([]), rng),
        1 => invalid("string", "/v1/events", json!("orders"), rng),
        2 => invalid("number", "/v1/events", json!(42), rng),
        3 => invalid("null", "/v1/events", Value::Null, rng),
        4 => invalid(
            "missing kind",
            "/v1/events",
            json!({"credential": "orders"}),
            rng,
        ),
        5 => invalid(
            "unknown kind",
            "/v1/events",
            json!({"credential": "orders", "kind": "expired"}),
            rng,
        ),
        6 => invalid(
            "credential of the wrong type",
            "/v1/events",
            json!({"credential": ["orders"], "kind": "revoked"}),
            rng,
        ),
        7 => invalid(
            "misspelt rotated_at",
            "/v1/events",
            json!({"credential": "orders", "kind": "rotated", "rotatedAt": "2020-01-01T00:00:00Z"}),
            rng,
        ),
        8 => invalid(
            "unknown field dry_run",
            "/v1/events",
            json!({"credential": "orders", "kind": "revoked", "dry_run": true}),
            rng,
        ),
        9 => invalid(
            "rotated_at not a time",
            "/v1/events",
            json!({"credential": "orders", "kind": "rotated", "rotated_at": "yesterday"}),
            rng,
        ),
        10 => invalid(
            "rotated_at beyond the tolerance",
            "/v1/events",
            json!({"credential": "orders", "kind": "rotated", "rotated_at": future.to_rfc3339()}),
            rng,
        ),
        11 => invalid(
            "reason too long",
            "/v1/events",
            json!({"credential": "orders", "kind": "revoked", "reason": "r".repeat(1025)}),
            rng,
        ),
        12 => {
            // serde refuses a repeated field rather than letting the last one win.
            let body = br#"{"credential": "noop", "credential": "orders", "kind": "revoked"}"#;
            bad(
                C,
                "duplicate credential field",
                post("/v1/events", body.to_vec(), Some(signed(rng, Sig::Valid))),
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
            )
        }
        13 => {
            let path = *["/v1/events?wait=maybe", "/v1/events?wait=true&dry_run=true"]
                .choose(rng)
                .unwrap();
            invalid("bad query", path, orders_event(rng), rng)
        }
        14 => {
            let name = format!("cred_{:08x}", rng.random::<u32>());
            bad(
                C,
                format!("unknown credential {name}"),
                post(
                    "/v1/events",
                    to_vec(&json!({"credential": name, "kind": "revoked"})),
                    Some(signed(rng, Sig::Valid)),
                ),
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_credential",
            )
        }
        15 => {
            let mut hook = hook_event(rng);
            let variant = if rng.random_bool(0.5) {
                hook["Step"] = json!("deleteSecret");
                "unknown Step"
            } else {
                hook.as_object_mut().unwrap().remove("SecretId");
                "no SecretId"
            };
            invalid(variant, "/v1/events/aws", hook, rng)
        }
        _ => {
            let body = [
                json!({}),
                json!({"data": {}}),
                json!({"data": {"event_type": "database/rotate"}}),
            ]
            .choose(rng)
            .unwrap()
            .clone();
            invalid("not a Vault event", "/v1/events/vault", body, rng)
        }
    }
}

fn content_type(rng: &mut StdRng) -> Bad {
    const C: &str = "content_type";
    let form = b"credential=orders&kind=revoked".to_vec();
    let xml = b"<event><credential>orders</credential><kind>revoked</kind></event>".to_vec();
    let multipart =
        b"--X\r\nContent-Disposition: form-data; name=\"credential\"\r\n\r\norders\r\n--X--\r\n"
            .to_vec();
    let with_type = |mut recipe: Recipe, content_type: &str| {
        recipe.headers = vec![("content-type", content_type.to_owned())];
        recipe
    };
    match rng.random_range(0..7) {
        // Signed, so only the body's format is wrong: sever reads JSON whatever the type says.
        0 => bad(
            C,
            "signed form body",
            with_type(
                post("/v1/events", form, Some(signed(rng, Sig::Valid))),
                "application/x-www-form-urlencoded",
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        1 => bad(
            C,
            "signed XML body",
            with_type(
                post("/v1/events", xml, Some(signed(rng, Sig::Valid))),
                "application/xml",
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        2 => bad(
            C,
            "signed multipart body",
            with_type(
                post("/v1/events", multipart, Some(signed(rng, Sig::Valid))),
                "multipart/form-data; boundary=X",
            ),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        3 => bad(
            C,
            "JSON as text/plain, wrong key",
            with_type(
                post(
                    "/v1/events",
                    to_vec(&orders_event(rng)),
                    Some(signed(rng, Sig::WrongKey)),
                ),
                "text/plain",
            ),
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
        ),
        4 => bad(
            C,
            "JSON as octet-stream, unsigned",
            with_type(
                post("/v1/events", to_vec(&orders_event(rng)), None),
                "application/octet-stream",
            ),
            StatusCode::UNAUTHORIZED,
            "missing_header",
        ),
        5 => {
            let mut recipe = with_type(
                post("/v1/revocations", form, None),
                "application/x-www-form-urlencoded",
            );
            recipe
                .headers
                .push(("authorization", format!("Bearer {TOKEN}")));
            bad(
                C,
                "form revocation with the token",
                recipe,
                StatusCode::BAD_REQUEST,
                "malformed_json",
            )
        }
        _ => {
            let mut recipe = with_type(
                post("/v1/events/aws", to_vec(&eventbridge_event(rng)), None),
                "text/plain",
            );
            recipe
                .headers
                .push(("x-sever-api-key", "not-the-key".to_owned()));
            bad(
                C,
                "EventBridge event as text/plain, wrong key",
                recipe,
                StatusCode::UNAUTHORIZED,
                "invalid_api_key",
            )
        }
    }
}

fn missing_headers(rng: &mut StdRng) -> Bad {
    const C: &str = "missing_headers";
    if rng.random_range(0..5) == 0 {
        // No way of authenticating at all on the AWS endpoint.
        let mut recipe = post("/v1/events/aws", to_vec(&eventbridge_event(rng)), None);
        if rng.random_bool(0.5) {
            // A timestamp alone does not make it a Standard Webhooks delivery.
            recipe
                .headers
                .push(("webhook-timestamp", now().to_string()));
        }
        return bad(
            C,
            "nothing on /v1/events/aws",
            recipe,
            StatusCode::UNAUTHORIZED,
            "missing_credentials",
        );
    }
    let path = *["/v1/events", "/v1/events/vault"].choose(rng).unwrap();
    let body = to_vec(&orders_event(rng));
    let keep: u8 = rng.random_range(0..7); // bit i set: header i is sent; never all three
    let webhook = Webhook {
        id: (keep & 1 != 0).then(|| random_id(rng)),
        ts: (keep & 2 != 0).then_some(Ts::Offset(0)),
        sig: (keep & 4 != 0).then_some(Sig::Valid),
    };
    bad(
        C,
        format!("headers kept {keep:03b} on {path}"),
        post(path, body, Some(webhook)),
        StatusCode::UNAUTHORIZED,
        "missing_header",
    )
}

fn malformed_headers(rng: &mut StdRng) -> Bad {
    let (path, body) = webhook_endpoint(rng);
    let mut webhook = signed(rng, Sig::Valid);
    let variant = if rng.random_bool(0.5) {
        let id = match rng.random_range(0..3) {
            0 => String::new(),
            1 => "msg with spaces".to_owned(),
            _ => format!("msg_{}", "x".repeat(rng.random_range(253..2000))),
        };
        let variant = format!("webhook-id of {} characters", id.len());
        webhook.id = Some(id);
        variant
    } else {
        let raw = *[
            "",
            "abc",
            "1e9",
            "12.5",
            "0x10",
            "99999999999999999999",
            "+-1",
            "1_700_000_000",
            "NaN",
        ]
        .choose(rng)
        .unwrap();
        webhook.ts = Some(Ts::Raw(raw));
        format!("webhook-timestamp {raw:?}")
    };
    bad(
        "malformed_headers",
        format!("{variant} on {path}"),
        post(path, body, Some(webhook)),
        StatusCode::BAD_REQUEST,
        "malformed_header",
    )
}

fn method_path(rng: &mut StdRng) -> Bad {
    const C: &str = "method_path";
    let request = |method: Method, path: String| Recipe {
        method,
        path,
        headers: Vec::new(),
        body: Vec::new(),
        webhook: None,
    };
    if rng.random_bool(0.5) {
        let (method, path) = [
            (Method::GET, "/v1/events"),
            (Method::PUT, "/v1/events"),
            (Method::DELETE, "/v1/events"),
            (Method::PATCH, "/v1/events/aws"),
            (Method::GET, "/v1/events/vault"),
            (Method::OPTIONS, "/v1/events"),
            (Method::GET, "/v1/revocations"),
            (Method::DELETE, "/v1/revocations"),
            (Method::POST, "/v1/sessions"),
            (Method::POST, "/healthz"),
            (Method::PUT, "/readyz"),
        ]
        .choose(rng)
        .unwrap()
        .clone();
        let mut recipe = request(method.clone(), path.to_owned());
        if rng.random_bool(0.5) {
            // Even properly authenticated: the method is what is wrong.
            recipe
                .headers
                .push(("authorization", format!("Bearer {TOKEN}")));
        }
        return bad(
            C,
            format!("{method} {path}"),
            recipe,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        );
    }
    let path = match rng.random_range(0..14) {
        0 => "/".to_owned(),
        1 => "/v1".to_owned(),
        2 => "/v1/event".to_owned(),
        3 => "/v2/events".to_owned(),
        4 => "/v1/events/".to_owned(),
        5 => "/v1/events/gcp".to_owned(),
        6 => "/admin".to_owned(),
        7 => "/.env".to_owned(),
        // `/v1/actions` is a route (the list); its singular is not.
        8 => "/v1/action".to_owned(),
        9 => "/v1/revocations/all".to_owned(),
        10 => "/%2e%2e/%2e%2e/etc/passwd".to_owned(),
        11 => "/V1/EVENTS".to_owned(),
        12 => "//v1/events".to_owned(),
        _ => format!("/{}", "a".repeat(rng.random_range(100..4000))),
    };
    let method = [Method::GET, Method::POST].choose(rng).unwrap().clone();
    bad(
        C,
        format!("{method} {}", &path[..path.len().min(40)]),
        request(method, path),
        StatusCode::NOT_FOUND,
        "not_found",
    )
}

fn operator_token(rng: &mut StdRng, fixtures: &Fixtures) -> Bad {
    let (target, mut recipe) = match rng.random_range(0..5) {
        0 | 1 => ("revoke app", post("/v1/revocations", revoke_app(), None)),
        2 => (
            "an existing action",
            Recipe {
                method: Method::GET,
                path: format!("/v1/actions/{}", fixtures.action_id),
                headers: Vec::new(),
                body: Vec::new(),
                webhook: None,
            },
        ),
        3 => (
            "an action id that is not one",
            Recipe {
                method: Method::GET,
                path: "/v1/actions/not-a-uuid".to_owned(),
                headers: Vec::new(),
                body: Vec::new(),
                webhook: None,
            },
        ),
        _ => (
            "the session list",
            Recipe {
                method: Method::GET,
                path: "/v1/sessions?login=app".to_owned(),
                headers: Vec::new(),
                body: Vec::new(),
                webhook: None,
            },
        ),
    };
    let (variant, authorization, code) = match rng.random_range(0..10) {
        0 => ("no Authorization", None, "missing_token"),
        1 => (
            "Bearer and nothing",
            Some("Bearer ".to_owned()),
            "missing_token",
        ),
        2 => (
            "Basic credentials",
            Some(format!(
                "Basic {}",
                STANDARD.encode(format!("alice:{TOKEN}"))
            )),
            "missing_token",
        ),
        3 => (
            "the token without a scheme",
            Some(TOKEN.to_owned()),
            "missing_token",
        ),
        4 => (
            "a random token",
            Some(format!("Bearer sev_{:064x}", rng.random::<u128>())),
            "invalid_token",
        ),
        5 => (
            "the token cut short",
            Some(format!(
                "Bearer {}",
                &TOKEN[..rng.random_range(1..TOKEN.len())]
            )),
            "invalid_token",
        ),
        6 => (
            "the token with a suffix",
            Some(format!("Bearer {TOKEN}x")),
            "invalid_token",
        ),
        7 => (
            "the configured hash as the token",
            Some(format!("Bearer {}", token_hash(TOKEN))),
            "invalid_token",
        ),
        8 => (
            "the token in upper case",
            Some(format!("Bearer {}", TOKEN.to_uppercase())),
            "invalid_token",
        ),
        _ => (
            "the webhook secret as the token",
            Some(format!("Bearer {SECRET}")),
            "invalid_token",
        ),
    };
    if let Some(value) = authorization {
        recipe.headers.push(("authorization", value));
    }
    bad(
        "operator_token",
        format!("{variant} for {target}"),
        recipe,
        StatusCode::UNAUTHORIZED,
        code,
    )
}

fn operator_input(rng: &mut StdRng) -> Bad {
    const C: &str = "operator_input";
    let with_token = |mut recipe: Recipe| {
        recipe
            .headers
            .push(("authorization", format!("Bearer {TOKEN}")));
        recipe
    };
    let revocation = |variant: &str, body: Value, status: StatusCode, code: &'static str| {
        bad(
            C,
            variant,
            with_token(post("/v1/revocations", to_vec(&body), None)),
            status,
            code,
        )
    };
    let invalid = StatusCode::UNPROCESSABLE_ENTITY;
    match rng.random_range(0..11) {
        0 => revocation(
            "blank reason",
            json!({"login": "app", "targets": "all", "reason": "  "}),
            invalid,
            "invalid_request",
        ),
        1 => revocation(
            "no reason",
            json!({"login": "app", "targets": "all"}),
            invalid,
            "invalid_request",
        ),
        2 => revocation(
            "misspelt dry_run",
            json!({"login": "app", "targets": "all", "reason": "x", "dryrun": true}),
            invalid,
            "invalid_request",
        ),
        3 => revocation(
            "targets neither a list nor all",
            json!({"login": "app", "targets": "everything", "reason": "x"}),
            invalid,
            "invalid_request",
        ),
        4 => revocation(
            "no targets",
            json!({"login": "app", "targets": [], "reason": "x"}),
            invalid,
            "invalid_request",
        ),
        5 => revocation(
            "a known and an unknown target",
            json!({"login": "app", "targets": ["main", "nope"], "reason": "x"}),
            invalid,
            "unknown_target",
        ),
        6 => revocation(
            "a protected login",
            json!({"login": "postgres", "targets": "all", "reason": "x"}),
            invalid,
            "protected_login",
        ),
        7 => revocation(
            "login too long",
            json!({"login": "a".repeat(129), "targets": "all", "reason": "x"}),
            invalid,
            "invalid_request",
        ),
        8 => bad(
            C,
            "malformed JSON",
            with_token(post(
                "/v1/revocations",
                b"{\"login\": \"app\",".to_vec(),
                None,
            )),
            StatusCode::BAD_REQUEST,
            "malformed_json",
        ),
        9 => bad(
            C,
            "an action id that is not a UUID",
            with_token(Recipe {
                method: Method::GET,
                path: format!("/v1/actions/{:x}", rng.random::<u64>()),
                headers: Vec::new(),
                body: Vec::new(),
                webhook: None,
            }),
            invalid,
            "invalid_request",
        ),
        _ => bad(
            C,
            "an action that does not exist",
            with_token(Recipe {
                method: Method::GET,
                path: format!("/v1/actions/{}", uuid::Uuid::from_u128(rng.random())),
                headers: Vec::new(),
                body: Vec::new(),
                webhook: None,
            }),
            StatusCode::NOT_FOUND,
            "unknown_action",
        ),
    }
}

fn eventbridge_key(rng: &mut StdRng) -> Bad {
    let mut recipe = post("/v1/events/aws", to_vec(&eventbridge_event(rng)), None);
    let (variant, header, value, code) = match rng.random_range(0..7) {
        0 => (
            "a random key",
            "x-sever-api-key",
            format!("{:032x}", rng.random::<u128>()),
            "invalid_api_key",
        ),
        1 => (
            "an empty key",
            "x-sever-api-key",
            String::new(),
            "invalid_api_key",
        ),
        2 => (
            "the key cut short",
            "x-sever-api-key",
            API_KEY[..rng.random_range(1..API_KEY.len())].to_owned(),
            "invalid_api_key",
        ),
        3 => (
            "the key with a suffix",
            "x-sever-api-key",
            format!("{API_KEY}0"),
            "invalid_api_key",
        ),
        4 => (
            "the key in upper case",
            "x-sever-api-key",
            API_KEY.to_uppercase(),
            "invalid_api_key",
        ),
        5 => (
            "the key in another header",
            "x-api-key",
            API_KEY.to_owned(),
            "missing_credentials",
        ),
        _ => (
            "the key as a bearer token",
            "authorization",
            format!("Bearer {API_KEY}"),
            "missing_credentials",
        ),
    };
    recipe.headers.push((header, value));
    bad(
        "eventbridge_key",
        variant,
        recipe,
        StatusCode::UNAUTHORIZED,
        code,
    )
}

fn sns_forged(rng: &mut StdRng, fixtures: &Fixtures) -> Bad {
    const C: &str = "sns_forged";
    let sns = |variant: &str, body: Vec<u8>, status: StatusCode, code: &'static str| {
        let mut recipe = post("/v1/events/aws", body, None);
        recipe.headers = vec![
            ("content-type", "text/plain; charset=UTF-8".to_owned()),
            ("x-amz-sns-message-type", "Notification".to_owned()),
        ];
        bad(C, variant, recipe, status, code)
    };
    let unauthorized = StatusCode::UNAUTHORIZED;
    let mut message = fixtures.sns_trusted.clone();
    match rng.random_range(0..12) {
        0 => {
            // A genuine signature over another message: pointed at the `orders` secret.
            let mut event = eventbridge_event(rng);
            event["detail"]["versionId"] = json!(format!("v{}", rng.random::<u32>()));
            message["Message"] = json!(event.to_string());
            sns(
                "tampered Message",
                to_vec(&message),
                unauthorized,
                "invalid_sns_signature",
            )
        }
        1 => {
            message["MessageId"] = json!(random_id(rng));
            sns(
                "tampered MessageId",
                to_vec(&message),
                unauthorized,
                "invalid_sns_signature",
            )
        }
        2 => {
            message["Signature"] = json!(random_b64(rng, 256));
            sns(
                "random signature",
                to_vec(&message),
                unauthorized,
                "invalid_sns_signature",
            )
        }
        3 => {
            let version = *["3", "0", "", "2 "].choose(rng).unwrap();
            message["SignatureVersion"] = json!(version);
            sns(
                &format!("SignatureVersion {version:?}"),
                to_vec(&message),
                unauthorized,
                "invalid_sns_signature",
            )
        }
        4 => {
            let url = *[
                "https://evil.example.com/SimpleNotificationService-test.pem",
                "http://sns.us-east-1.amazonaws.com/SimpleNotificationService-test.pem",
                "https://sns.us-east-1.amazonaws.com.evil.example/cert.pem",
                "https://user@sns.us-east-1.amazonaws.com/cert.pem",
                "https://sns.us-east-1.amazonaws.com:8443/cert.pem",
                "https://sns.us-east-1.amazonaws.com/cert.txt",
                "file:///etc/passwd",
            ]
            .choose(rng)
            .unwrap();
            message["SigningCertURL"] = json!(url);
            sns(
                &format!("SigningCertURL {url}"),
                to_vec(&message),
                unauthorized,
                "invalid_sns_signature",
            )
        }
        5 => {
            message["Signature"] = json!("!!! not base64 !!!");
            sns(
                "Signature not base64",
                to_vec(&message),
                StatusCode::BAD_REQUEST,
                "malformed_sns_message",
            )
        }
        6 => {
            let field = *["Signature", "TopicArn", "Message", "Timestamp", "MessageId"]
                .choose(rng)
                .unwrap();
            message.as_object_mut().unwrap().remove(field);
            sns(
                &format!("no {field}"),
                to_vec(&message),
                StatusCode::BAD_REQUEST,
                "malformed_sns_message",
            )
        }
        7 => {
            message["Type"] = json!("Broadcast");
            sns(
                "unknown Type",
                to_vec(&message),
                StatusCode::BAD_REQUEST,
                "malformed_sns_message",
            )
        }
        8 => sns(
            "not JSON",
            b"Type=Notification&Message=rotate".to_vec(),
            StatusCode::BAD_REQUEST,
            "malformed_sns_message",
        ),
        9 => sns(
            "genuinely signed, foreign topic",
            fixtures.sns_foreign.clone(),
            StatusCode::FORBIDDEN,
            "untrusted_topic",
        ),
        10 => sns(
            "genuinely signed subscription to a foreign topic",
            fixtures.sns_foreign_confirmation.clone(),
            StatusCode::FORBIDDEN,
            "untrusted_topic",
        ),
        _ => sns(
            "genuinely signed, two days old",
            fixtures.sns_stale.clone(),
            unauthorized,
            "stale_sns_message",
        ),
    }
}

/// One bad request, of a category drawn evenly.
fn generate(rng: &mut StdRng, fixtures: &Fixtures) -> Bad {
    match rng.random_range(0..14) {
        0 => bad_signature(rng),
        1 => replay(rng, fixtures),
        2 => stale_timestamp(rng),
        3 => future_timestamp(rng),
        4 => oversized(rng),
        5 => malformed_json(rng),
        6 => wrong_shape(rng),
        7 => content_type(rng),
        8 => missing_headers(rng),
        9 => malformed_headers(rng),
        10 => method_path(rng),
        11 => operator_token(rng, fixtures),
        12 => eventbridge_key(rng),
        _ => match rng.random_range(0..3) {
            0 => operator_input(rng),
            _ => sns_forged(rng, fixtures),
        },
    }
}

fn render(sig: &Sig, id: &str, ts: i64, body: &[u8]) -> String {
    let valid = || sign(SECRET, id, ts, body).unwrap();
    match sig {
        Sig::Valid => valid(),
        Sig::WrongKey => sign(WRONG_SECRET, id, ts, body).unwrap(),
        Sig::Truncated(n) => valid()[..3 + n].to_owned(),
        Sig::Scheme(scheme) => format!("{scheme}{}", &valid()[3..]),
        Sig::Literal(value) => value.clone(),
        Sig::Over {
            id: other_id,
            ts_shift,
            body: other_body,
        } => sign(
            SECRET,
            other_id.as_deref().unwrap_or(id),
            ts + ts_shift,
            other_body.as_deref().unwrap_or(body),
        )
        .unwrap(),
        Sig::Several(sigs) => sigs
            .iter()
            .map(|s| render(s, id, ts, body))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// The request, with its webhook headers made now.
fn build(client: &reqwest::Client, base: &str, recipe: &Recipe) -> reqwest::RequestBuilder {
    let mut request = client.request(recipe.method.clone(), format!("{base}{}", recipe.path));
    for (name, value) in &recipe.headers {
        request = request.header(*name, value);
    }
    if let Some(webhook) = &recipe.webhook {
        let ts = match &webhook.ts {
            Some(Ts::Offset(offset)) => Some(now().saturating_add(*offset).to_string()),
            Some(Ts::Fixed(ts)) => Some(ts.to_string()),
            Some(Ts::Raw(raw)) => Some((*raw).to_owned()),
            None => None,
        };
        // A signature needs a numeric timestamp; where there is none, any will do.
        let signed_ts: i64 = ts.as_deref().and_then(|t| t.parse().ok()).unwrap_or(0);
        let id = webhook.id.clone().unwrap_or_default();
        if let Some(id) = &webhook.id {
            request = request.header("webhook-id", id);
        }
        if let Some(ts) = ts {
            request = request.header("webhook-timestamp", ts);
        }
        if let Some(sig) = &webhook.sig {
            request = request.header(
                "webhook-signature",
                render(sig, &id, signed_ts, &recipe.body),
            );
        }
    }
    request.body(recipe.body.clone())
}

/// What a bad request got: status and error code, or why there was no answer.
type Answer = Result<(StatusCode, String), String>;

async fn send_bad(client: &reqwest::Client, base: &str, bad: &Bad) -> Answer {
    let request = build(client, base, &bad.recipe);
    let response = tokio::time::timeout(ANSWER_WITHIN, request.send())
        .await
        .map_err(|_| format!("no answer within {ANSWER_WITHIN:?}"))?
        .map_err(|e| format!("transport error: {e:?}"))?;
    let status = response.status();
    let body = tokio::time::timeout(ANSWER_WITHIN, response.bytes())
        .await
        .map_err(|_| "no body".to_owned())?
        .map_err(|e| format!("body: {e}"))?;
    let code = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("<no error code in {:?}>", String::from_utf8_lossy(&body)));
    Ok((status, code))
}

/// Signs and sends an event for `credential` with `?wait=true`; returns the delivery as sent,
/// the status and the body.
async fn valid_event(
    client: &reqwest::Client,
    base: &str,
    event: &Value,
) -> (Delivery, StatusCode, Value) {
    let body = to_vec(event);
    let id = format!("msg_valid_{}", uuid::Uuid::now_v7().simple());
    let ts = now();
    let signature = sign(SECRET, &id, ts, &body).unwrap();
    let request = client
        .post(format!("{base}/v1/events?wait=true"))
        .header("webhook-id", &id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", &signature)
        .header("content-type", "application/json")
        .body(body.clone());
    let response = tokio::time::timeout(ANSWER_WITHIN, request.send())
        .await
        .unwrap_or_else(|_| panic!("a valid event got no answer within {ANSWER_WITHIN:?}"))
        .unwrap();
    let status = response.status();
    let report: Value = response.json().await.unwrap();
    let delivery = Delivery {
        id,
        ts,
        signature,
        body,
    };
    (delivery, status, report)
}

/// A valid `batch` revocation during the flood: a fresh `batch` session, the event, and
/// the report, which must have ended exactly that session.
struct ValidOutcome {
    latency: Duration,
    pid: i32,
    status: StatusCode,
    report: Value,
}

async fn valid_batch_event(
    pg: &TestPostgres,
    client: &reqwest::Client,
    base: &str,
    k: usize,
) -> ValidOutcome {
    let (conn, pid) = pg.session("batch", "pw", "postgres", "batch-job").await;
    let event =
        json!({"credential": "batch", "kind": "revoked", "reason": format!("valid event {k}")});
    let started = Instant::now();
    let (_, status, report) = valid_event(client, base, &event).await;
    let latency = started.elapsed();
    drop(conn);
    ValidOutcome {
        latency,
        pid,
        status,
        report,
    }
}

/// How a slow client's connection ended.
#[derive(Debug)]
struct Trickled {
    /// The server closed it (rather than the client giving up after [`TRICKLE_FOR`]).
    closed: bool,
    received: Vec<u8>,
}

/// Sends `head`, then one byte every [`TRICKLE`] until the server closes the connection.
async fn trickle(addr: SocketAddr, head: &[u8]) -> Trickled {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(head).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + TRICKLE_FOR;
    while Instant::now() < deadline {
        tokio::select! {
            n = read.read(&mut buf) => match n {
                Ok(0) | Err(_) => return Trickled { closed: true, received },
                Ok(n) => received.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(TRICKLE) => {
                if write.write_all(b"a").await.is_err() {
                    return Trickled { closed: true, received };
                }
            }
        }
    }
    Trickled {
        closed: false,
        received,
    }
}

/// A slow client: connection after connection, each trickled until the server cuts it
/// off, for as long as the flood lasts (and at least once).
async fn slow_client(addr: SocketAddr, body: bool, flooding: Arc<AtomicBool>) -> Vec<Trickled> {
    let head: &[u8] = if body {
        b"POST /v1/events HTTP/1.1\r\nhost: sever\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{"
    } else {
        b"POST /v1/events HTTP/1.1\r\nhost: sever\r\nx-slow: "
    };
    let mut connections = Vec::new();
    loop {
        connections.push(trickle(addr, head).await);
        if !flooding.load(Ordering::SeqCst) {
            return connections;
        }
    }
}

fn config(ws: &Workspace, pg: &TestPostgres) -> String {
    let config = ws
        .config()
        .set("server.max_body_bytes", MAX_BODY as i64)
        .set(
            "server.header_read_timeout",
            format!("{}s", HEADER_READ_TIMEOUT.as_secs()),
        )
        .set(
            "server.request_timeout",
            format!("{}s", REQUEST_TIMEOUT.as_secs()),
        )
        .set("webhooks.tolerance", format!("{TOLERANCE}s"));
    let config = ws.target_config(config, "main", pg);
    // Port 1: no Secrets Manager is needed, as no credential is an AWS secret.
    ws.aws(config, "http://127.0.0.1:1", &[TOPIC])
        .set("credentials.orders.policy", "terminate_all")
        .credential("orders", &[("main", "app")])
        .set("credentials.noop.policy", "none")
        .credential("noop", &[("main", "app")])
        .set("credentials.batch.policy", "terminate_all")
        .credential("batch", &[("main", "batch")])
        .toml()
}

fn seed() -> u64 {
    match std::env::var("SEVER_ABUSE_SEED") {
        Ok(s) => s.parse().expect("SEVER_ABUSE_SEED is a u64"),
        Err(_) => rand::rng().random(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_bad_requests_are_refused_while_valid_events_are_served() {
    let seed = seed();
    println!("abuse seed: {seed} (rerun with SEVER_ABUSE_SEED={seed})");

    let pg = Arc::new(TestPostgres::start());
    create_admin(&pg).await;
    pg.create_login("app", "pw").await;
    pg.create_login("batch", "pw").await;
    let sns = TestSns::new();
    let ws = Workspace::new();
    let options = sever::RunOptions {
        sns_http: sns.clone(),
        ..Default::default()
    };
    let up = Instant::now();
    let server = TestServer::start_with(&ws.write_config(&config(&ws, &pg)), options).await;
    let base = format!("http://{}", server.addr);
    // Like any client that keeps connections: let go of idle ones before the server's idle
    // limit (the header deadline) closes them, so that no request races that close.
    let client = reqwest::Client::builder()
        .pool_idle_timeout(HEADER_READ_TIMEOUT / 2)
        .build()
        .unwrap();

    // The sessions that must survive, each on a connection of its own.
    let mut app = Vec::new();
    for i in 0..APP_SESSIONS {
        app.push(
            pg.session("app", "pw", "postgres", &format!("app-{i}"))
                .await,
        );
    }

    // Deliveries accepted before the flood, replayed during it: three that need no action,
    // and one that ended a `batch` session (its replay, if accepted, would end the session
    // of a valid event sent later, and that event's report would show it).
    let mut replays = Vec::new();
    let mut action_id = String::new();
    for _ in 0..3 {
        let (delivery, status, report) = valid_event(
            &client,
            &base,
            &json!({"credential": "noop", "kind": "rotated"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{report}");
        assert_eq!(report["scope"], Value::Null, "{report}");
        action_id = report["action_id"].as_str().unwrap().to_owned();
        replays.push(delivery);
    }
    let (conn, pid) = pg.session("batch", "pw", "postgres", "batch-job").await;
    let (delivery, status, report) = valid_event(
        &client,
        &base,
        &json!({"credential": "batch", "kind": "revoked", "reason": "before the flood"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), vec![i64::from(pid)]);
    drop(conn);
    replays.push(delivery);
    let mut batch_pids = BTreeSet::from([pid]);

    let sns_trusted = serde_json::from_slice(&sns.notification(
        TOPIC,
        "template",
        &eventbridge_event(&mut StdRng::seed_from_u64(0)),
    ))
    .unwrap();
    let stale_at = (chrono::Utc::now() - chrono::Duration::days(2))
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let fixtures = Fixtures {
        replays,
        action_id,
        sns_trusted,
        sns_foreign: sns.notification(FOREIGN_TOPIC, "foreign", &json!({"detail-type": "x"})),
        sns_foreign_confirmation: sns.confirmation(FOREIGN_TOPIC, "foreign-token"),
        sns_stale: sns.notification_at(TOPIC, "stale", &json!({"detail-type": "x"}), &stale_at),
    };

    let mut rng = StdRng::seed_from_u64(seed);
    let mut items = Vec::new();
    for i in 0..BAD_REQUESTS {
        if i % VALID_EVERY == VALID_EVERY / 2 {
            items.push(Item::Valid(i / VALID_EVERY));
        }
        items.push(Item::Bad(Box::new(generate(&mut rng, &fixtures))));
    }
    let items = Arc::new(items);
    let valid_count = items.iter().filter(|i| matches!(i, Item::Valid(_))).count();

    // Slow clients first, so they hold connections for the whole flood.
    let flooding = Arc::new(AtomicBool::new(true));
    let slow: Vec<_> = (0..SLOW_HEADERS + SLOW_BODIES)
        .map(|i| {
            tokio::spawn(slow_client(
                server.addr,
                i >= SLOW_HEADERS,
                flooding.clone(),
            ))
        })
        .collect();

    // The flood: IN_FLIGHT senders take the next item until none is left. Valid events are
    // sent one at a time, so each one's report can name exactly the session it ended.
    let next = Arc::new(AtomicUsize::new(0));
    let one_valid_at_a_time = Arc::new(Mutex::new(()));
    let started = Instant::now();
    let senders: Vec<_> = (0..IN_FLIGHT)
        .map(|_| {
            let (items, next, client, base, pg) = (
                items.clone(),
                next.clone(),
                client.clone(),
                base.clone(),
                pg.clone(),
            );
            let one_valid_at_a_time = one_valid_at_a_time.clone();
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut valid = Vec::new();
                loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    match items.get(i) {
                        None => return (answers, valid),
                        Some(Item::Bad(bad)) => {
                            answers.push((i, send_bad(&client, &base, bad).await))
                        }
                        Some(Item::Valid(k)) => {
                            let _one = one_valid_at_a_time.lock().await;
                            valid.push(valid_batch_event(&pg, &client, &base, *k).await);
                        }
                    }
                }
            })
        })
        .collect();
    let mut answers = BTreeMap::new();
    let mut valid = Vec::new();
    for sender in senders {
        let (a, v) = sender.await.unwrap();
        answers.extend(a);
        valid.extend(v);
    }
    let flood = started.elapsed();
    flooding.store(false, Ordering::SeqCst);

    // Every bad request got exactly its refusal.
    let mut expected_audited: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_category: BTreeMap<&str, usize> = BTreeMap::new();
    let mut wrong = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let Item::Bad(bad) = item else { continue };
        *per_category.entry(bad.category).or_default() += 1;
        if bad.audited() {
            *expected_audited.entry(bad.code).or_default() += 1;
        }
        match &answers[&i] {
            Ok((status, code)) if *status == bad.status && code == bad.code => {}
            got => wrong.push(format!(
                "#{i} {} ({}): expected {} {}, got {got:?}",
                bad.category, bad.variant, bad.status, bad.code
            )),
        }
    }
    println!("abuse: categories {per_category:?}");
    assert!(
        wrong.is_empty(),
        "{} of {BAD_REQUESTS} bad requests were not refused as expected (seed {seed}):\n{}",
        wrong.len(),
        wrong[..wrong.len().min(40)].join("\n")
    );

    // Every valid event was acted on: its session, and only its session, ended.
    assert_eq!(valid.len(), valid_count);
    for v in &valid {
        assert_eq!(v.status, StatusCode::OK, "{}", v.report);
        assert_eq!(v.report["status"], "completed", "{}", v.report);
        assert_eq!(
            pids(&v.report, "main", "terminated"),
            vec![i64::from(v.pid)],
            "{}",
            v.report
        );
        batch_pids.insert(v.pid);
    }
    let mut latencies: Vec<Duration> = valid.iter().map(|v| v.latency).collect();
    latencies.sort();
    println!(
        "abuse: {BAD_REQUESTS} bad requests and {valid_count} valid events in {flood:.2?} \
         ({:.0} requests/s); valid events answered in median {:.0?}, max {:.0?}",
        (BAD_REQUESTS + valid_count) as f64 / flood.as_secs_f64(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1],
    );

    // The slow clients were cut off, each time, by the server's deadlines.
    let mut cut_off = 0;
    for (i, client) in slow.into_iter().enumerate() {
        let body = i >= SLOW_HEADERS;
        for connection in client.await.unwrap() {
            let response = String::from_utf8_lossy(&connection.received);
            assert!(
                connection.closed,
                "a slow client was never cut off: {response}"
            );
            if body {
                assert!(
                    response.starts_with("HTTP/1.1 503") && response.contains("\"timeout\""),
                    "a slow body got: {response}"
                );
            } else {
                assert!(
                    response.is_empty() || response.starts_with("HTTP/1.1 408"),
                    "unfinished headers got: {response}"
                );
            }
            cut_off += 1;
        }
    }
    println!("abuse: {cut_off} slow connections cut off");

    // The service is still ready, and every `app` session is still there and usable.
    let r = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let readiness: Value = r.json().await.unwrap();
    assert_eq!(readiness["status"], "ready", "{readiness}");
    for (conn, pid) in &mut app {
        let one: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(conn)
            .await
            .unwrap_or_else(|e| panic!("app session {pid} no longer works: {e}"));
        assert_eq!(one, 1);
        assert!(pg.is_alive(*pid).await);
    }
    assert!(
        sns.confirmations().is_empty(),
        "a foreign topic's subscription was confirmed"
    );
    server.stop().await;

    // The trail: intact; no action but the valid ones; only `batch` sessions ended; every
    // refusal recorded under its code.
    let audit = ws.audit().await;
    let report = audit.verify().await.unwrap();
    assert!(report.ok, "{report:?}");
    let planned = ws.records("action.planned").await;
    assert_eq!(
        planned.len(),
        4 + valid_count,
        "actions other than the valid events"
    );
    for terminated in ws.records("session.terminated").await {
        assert_eq!(terminated["login"], "batch", "{terminated}");
        let pid = terminated["pid"].as_i64().unwrap();
        assert!(
            batch_pids.contains(&(pid as i32)),
            "an unexpected session ended: {terminated}"
        );
    }
    // Every refusal is accounted for: recorded on its own or counted in a summary.
    let rejected = audit
        .list(&sever::audit::ListFilter {
            kind: Some("request.rejected".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    let mut audited: BTreeMap<String, u64> = BTreeMap::new();
    let mut keys = BTreeSet::new();
    for record in &rejected {
        let detail: Value = serde_json::from_str(&record.detail).unwrap();
        let code = detail["code"].as_str().unwrap().to_owned();
        keys.insert((record.actor.clone(), code.clone()));
        *audited.entry(code).or_default() += rejections::count(&detail);
    }
    let expected: BTreeMap<String, u64> = expected_audited
        .iter()
        .map(|(code, n)| ((*code).to_owned(), *n as u64))
        .collect();
    assert_eq!(audited, expected, "refusals on record, by code");
    // And the trail stayed small: all from one address, so per actor and code at most a
    // burst of single records and one summary in each window the server was up.
    let windows = 1 + up.elapsed().as_secs() / rejections::WINDOW.as_secs();
    let bound = keys.len() as u64 * u64::from(rejections::BURST + 1) * windows;
    assert!(
        rejected.len() as u64 <= bound,
        "{} request.rejected records, more than {bound}",
        rejected.len()
    );
    println!(
        "abuse: {} request.rejected records for {} audited refusals",
        rejected.len(),
        expected.values().sum::<u64>()
    );
}
