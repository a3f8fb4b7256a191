//! The HTTP front under hostile or heavy clients, over real sockets: slow headers and slow
//! bodies are cut off, the connection cap holds and lets go, shutdown finishes what is in
//! flight; and the operator API and event intake served on separate listeners.

use std::net::SocketAddr;
use std::time::Duration;

use crate::support::sever::{SECRET, TOKEN, TestServer, Workspace, create_admin, now, pids};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sever_testkit::pg::TestPostgres;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Gap between the bytes a slow client sends.
const TRICKLE: Duration = Duration::from_millis(100);
/// How many bytes a slow client sends at most: at [`TRICKLE`], far longer than any timeout
/// the tests configure, so running out means the server never cut it off.
const TRICKLE_BUDGET: usize = 200;

/// A config whose one credential needs no action (`policy = "none"`): a signed event for it
/// is verified, audited and answered without reaching its target, which is never listening.
fn config(ws: &Workspace, server: &str) -> String {
    ws.config()
        .merge_toml(&format!("[server]\n{server}\n"))
        .set("targets.nowhere.engine", "postgres")
        .set(
            "targets.nowhere.url",
            "postgres://sever@127.0.0.1:1/postgres",
        )
        .set("credentials.noop.policy", "none")
        .credential("noop", &[("nowhere", "app")])
        .toml()
}

/// Sends a signed event for the no-action credential to `url` (a `/v1/events` URL).
async fn signed_event(client: &reqwest::Client, url: &str) -> reqwest::Response {
    let body = serde_json::to_vec(&json!({"credential": "noop", "kind": "rotated"})).unwrap();
    let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
    let ts = now();
    let signature = sever::intake::webhook::sign(SECRET, &id, ts, &body).unwrap();
    client
        .post(url)
        .header("webhook-id", id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", signature)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

/// Asserts a signed event is accepted (acted on, or answered with its report).
async fn assert_event_served(client: &reqwest::Client, url: &str) {
    let r = signed_event(client, url).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert!(status.is_success(), "{status}: {body}");
    assert!(body["action_id"].is_string(), "{body}");
}

/// What became of a client that sends `head` at once and then one byte of `trickle` every
/// [`TRICKLE`] until the server closes the connection or the budget runs out.
struct Trickled {
    /// Bytes of `trickle` sent before the server closed the connection.
    sent: usize,
    /// `false`: the budget ran out with the connection still open.
    closed: bool,
    /// Everything the server sent back.
    received: Vec<u8>,
}

async fn trickle(addr: SocketAddr, head: &[u8], trickle: u8) -> Trickled {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    write.write_all(head).await.unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    let mut sent = 0;
    while sent < TRICKLE_BUDGET {
        tokio::select! {
            n = read.read(&mut buf) => match n {
                Ok(0) | Err(_) => return Trickled { sent, closed: true, received },
                Ok(n) => received.extend_from_slice(&buf[..n]),
            },
            () = tokio::time::sleep(TRICKLE) => {
                if write.write_all(&[trickle]).await.is_err() {
                    return Trickled { sent, closed: true, received };
                }
                sent += 1;
            }
        }
    }
    Trickled {
        sent,
        closed: false,
        received,
    }
}

#[tokio::test]
async fn slow_headers_are_cut_off_while_other_clients_are_served() {
    let ws = Workspace::new();
    // The request timeout is far beyond the trickle budget: only the header deadline can
    // end the slow client.
    let text = config(
        &ws,
        "header_read_timeout = \"1s\"\nrequest_timeout = \"60s\"",
    );
    let server = TestServer::start(&ws.write_config(&text)).await;

    // Headers that never end: one more byte of a header value every TRICKLE.
    let slow = tokio::spawn(trickle(
        server.addr,
        b"POST /v1/events HTTP/1.1\r\nhost: sever\r\nx-slow: ",
        b'a',
    ));
    // Meanwhile a well-behaved sender is served.
    assert_event_served(&server.client, &server.url("/v1/events")).await;

    let slow = slow.await.unwrap();
    assert!(
        slow.closed,
        "a client sending {} header bytes slowly was never disconnected",
        slow.sent
    );
    assert!(
        slow.received.is_empty() || slow.received.starts_with(b"HTTP/1.1 408"),
        "a request with unfinished headers got a response: {}",
        String::from_utf8_lossy(&slow.received)
    );
    // The server is unaffected.
    assert_event_served(&server.client, &server.url("/v1/events")).await;
    server.stop().await;
}

#[tokio::test]
async fn a_slow_body_is_cut_off_by_the_request_timeout() {
    let ws = Workspace::new();
    let text = config(
        &ws,
        "header_read_timeout = \"60s\"\nrequest_timeout = \"1s\"",
    );
    let server = TestServer::start(&ws.write_config(&text)).await;

    // Complete headers announcing a body the client then sends one byte at a time.
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: sever\r\ncontent-type: application/json\r\n\
         content-length: {TRICKLE_BUDGET}\r\n\r\n"
    );
    let slow = trickle(server.addr, head.as_bytes(), b' ').await;
    let response = String::from_utf8_lossy(&slow.received);
    assert!(
        slow.closed && slow.sent < TRICKLE_BUDGET,
        "the slow body was read to its end ({} bytes); response: {response}",
        slow.sent
    );
    assert!(
        response.starts_with("HTTP/1.1 503"),
        "expected a 503 timeout, got: {response}"
    );
    assert!(response.contains("\"timeout\""), "{response}");
    // The rest of the body is unread: the connection ends, and the response says so.
    assert!(
        response
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{response}"
    );
    assert_event_served(&server.client, &server.url("/v1/events")).await;
    server.stop().await;
}

#[tokio::test]
async fn a_refused_oversized_body_ends_its_connection_and_says_so() {
    let ws = Workspace::new();
    let text = config(&ws, "max_body_bytes = 1024");
    let server = TestServer::start(&ws.write_config(&text)).await;

    // A body over the limit, sent whole on a keep-alive connection. sever answers without
    // reading it, so the connection cannot carry another request; a client that is not
    // told so puts it back in its pool, and its next request there fails.
    let body = vec![b'x'; 64 * 1024];
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: sever\r\ncontent-type: application/json\r\n\
         content-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // The server may stop reading and close before all of it is sent.
    let _ = stream.write_all(&body).await;
    let mut response = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => response.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection stayed open after the 413");
    let response = String::from_utf8_lossy(&response).to_ascii_lowercase();
    assert!(response.starts_with("http/1.1 413"), "{response}");
    assert!(response.contains("\"body_too_large\""), "{response}");
    assert!(
        response.contains("\r\nconnection: close\r\n"),
        "the 413 does not announce that the connection closes: {response}"
    );
    // The service is unaffected.
    assert_event_served(&server.client, &server.url("/v1/events")).await;
    server.stop().await;
}

/// Sends a complete `GET /healthz` on `stream`, keeping the connection open.
async fn send_healthz(stream: &mut TcpStream) {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: sever\r\n\r\n")
        .await
        .unwrap();
}

/// Reads one response's head from `stream` and returns its status line.
async fn read_status(stream: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buf = [0u8; 1024];
    while !received.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed before a response");
        received.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&received);
    text.lines().next().unwrap_or_default().to_owned()
}

#[tokio::test]
async fn the_connection_cap_holds_and_releases() {
    const LIMIT: usize = 4;
    const EXTRA: usize = 3;
    let ws = Workspace::new();
    // Deadlines far beyond the test's length: only closing a connection frees its slot.
    let text = config(
        &ws,
        &format!("max_connections = {LIMIT}\nheader_read_timeout = \"60s\""),
    );
    let mut server = TestServer::start(&ws.write_config(&text)).await;
    // The start-up health poll left a pooled keep-alive connection holding a slot; a new
    // client closes it (if the server notices late, the first held connection just waits).
    server.client = reqwest::Client::new();

    // LIMIT + EXTRA keep-alive connections, in order, each with a request sent. The
    // kernel's accept queue is first in, first out: the first LIMIT get the slots.
    let mut streams = Vec::new();
    for _ in 0..LIMIT + EXTRA {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        send_healthz(&mut stream).await;
        streams.push(stream);
    }
    let (held, waiting) = streams.split_at_mut(LIMIT);
    for stream in held.iter_mut() {
        assert_eq!(read_status(stream).await, "HTTP/1.1 200 OK");
    }
    // Each waiting request was sent before the held ones were answered, so were they
    // accepted they would have been answered by now; at the cap they are not.
    for (i, stream) in waiting.iter().enumerate() {
        let mut buf = [0u8; 64];
        match stream.try_read(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            other => panic!(
                "connection {} past the cap was served: {other:?}",
                LIMIT + i
            ),
        }
    }

    // Closing the held connections frees their slots: the waiting ones are served.
    let mut waiting: Vec<TcpStream> = streams.drain(LIMIT..).collect();
    drop(streams);
    for stream in &mut waiting {
        assert_eq!(read_status(stream).await, "HTTP/1.1 200 OK");
    }
    drop(waiting);

    // A flood well past the cap, then gone: the service recovers.
    let mut flood = Vec::new();
    for _ in 0..LIMIT * 8 {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    drop(flood);
    assert_event_served(&server.client, &server.url("/v1/events")).await;
    server.stop().await;
}

#[tokio::test]
async fn shutdown_stops_accepting_and_finishes_requests_in_flight() {
    let ws = Workspace::new();
    let text = config(&ws, "request_timeout = \"60s\"");
    let server = TestServer::start(&ws.write_config(&text)).await;
    let addr = server.addr;

    // A request in flight: its handler has started reading the body (the server says
    // `100 Continue` only then) and half of it is sent.
    let body = br#"{"credential": "noop", "kind": "rotated"}"#;
    let (first, rest) = body.split_at(body.len() / 2);
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/events HTTP/1.1\r\nhost: sever\r\ncontent-type: application/json\r\n\
         expect: 100-continue\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(read_status(&mut stream).await, "HTTP/1.1 100 Continue");
    stream.write_all(first).await.unwrap();

    let stopping = tokio::spawn(server.stop());
    // New connections are refused once the listener is closed.
    let mut refused = false;
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_err() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(refused, "still accepting connections after shutdown began");
    assert!(!stopping.is_finished(), "stopped with a request in flight");

    // The request in flight completes (unsigned: refused, but answered in full).
    stream.write_all(rest).await.unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 401"), "{response}");
    assert!(response.contains("\"error\""), "{response}");
    stopping.await.unwrap();
}

#[tokio::test]
async fn operator_api_and_intake_listen_apart() {
    let pg = TestPostgres::start();
    create_admin(&pg).await;
    pg.create_login("leaked", "pw").await;
    let ws = Workspace::new();
    let text = ws
        .target_config(ws.config(), "main", &pg)
        .set("credentials.noop.policy", "none")
        .credential("noop", &[("main", "leaked")])
        .toml();
    let server = TestServer::start_split(&ws.write_config(&text)).await;
    let operator = server.operator_addr.expect("split listeners");
    assert_ne!(operator, server.addr);
    let client = &server.client;
    let revocation = json!({"login": "leaked", "targets": ["main"], "reason": "INC-9"});

    // The intake listener: events yes, operator API no.
    assert_event_served(client, &server.url("/v1/events")).await;
    let r = client
        .post(server.url("/v1/revocations"))
        .bearer_auth(TOKEN)
        .json(&revocation)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found", "{body}");
    let r = client
        .get(server.url("/v1/sessions"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // The operator listener: operator API yes, events no.
    let r = signed_event(client, &server.operator_url("/v1/events")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let r = client
        .post(server.operator_url("/v1/events/aws"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    let (_conn, victim) = pg.session("leaked", "pw", "postgres", "victim").await;
    let (status, report) = server.operator_post("/v1/revocations", &revocation).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(pids(&report, "main", "terminated"), vec![i64::from(victim)]);
    assert!(pg.wait_gone(victim, Duration::from_secs(5)).await);
    let (status, body) = server.operator_get("/v1/sessions").await;
    assert_eq!(status, StatusCode::OK, "{body}");

    // Health checks answer on both.
    for url in [server.url("/healthz"), server.operator_url("/readyz")] {
        let r = client.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{url}");
    }
    server.stop().await;
}
