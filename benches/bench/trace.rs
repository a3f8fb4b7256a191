//! `SEVER_BENCH_TRACE=1`: the delaying proxy decodes the PostgreSQL frontend protocol on each
//! connection and keeps the messages of every round trip, so each round trip a figure counts
//! can be named (which statement, whose Sync). Off by default: the proxy then decodes nothing.

use std::collections::HashMap;
use std::sync::OnceLock;

use crate::proxy::{Snapshot, Traffic};

/// Whether `SEVER_BENCH_TRACE=1` asked for round-trip traces (read once).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("SEVER_BENCH_TRACE").is_ok_and(|v| v == "1"))
}

/// How much of a statement's SQL a trace shows.
const SQL_CHARS: usize = 80;

/// One connection's client-to-server bytes, decoded into frontend messages grouped by round
/// trip (a round trip starts each time the client sends after the server answered).
#[derive(Default)]
pub struct Wire {
    /// Bytes of a message not yet complete.
    buf: Vec<u8>,
    /// Past the startup packet: from here on every message starts with a type byte.
    typed: bool,
    /// Gave up decoding (bytes that are not the protocol, e.g. after TLS started).
    lost: bool,
    /// Each prepared statement's SQL by name ("" is the unnamed one), so a later Bind of a
    /// cached statement can show which statement it runs.
    statements: HashMap<String, String>,
    /// The messages of each round trip, in order.
    round_trips: Vec<Vec<String>>,
}

impl Wire {
    /// The client starts a new round trip.
    pub fn turn(&mut self) {
        self.round_trips.push(Vec::new());
    }

    /// Bytes the client sent; each message completed by them joins the current round trip.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.lost {
            return;
        }
        self.buf.extend_from_slice(bytes);
        loop {
            let header = usize::from(self.typed);
            let Some(len) = self.buf.get(header..header + 4) else {
                break;
            };
            let len = u32::from_be_bytes(len.try_into().unwrap()) as usize;
            if !(4..1 << 28).contains(&len) {
                self.lost = true;
                self.push("(not the PostgreSQL protocol: stopped decoding)".into());
                break;
            }
            if self.buf.len() < header + len {
                break;
            }
            let msg: Vec<u8> = self.buf.drain(..header + len).collect();
            let name = self.describe(&msg);
            self.push(name);
        }
    }

    /// The round trips from the `from`th on (0-based).
    pub fn round_trips_from(&self, from: usize) -> &[Vec<String>] {
        self.round_trips.get(from..).unwrap_or(&[])
    }

    fn push(&mut self, message: String) {
        if self.round_trips.is_empty() {
            self.turn();
        }
        self.round_trips.last_mut().unwrap().push(message);
    }

    fn describe(&mut self, msg: &[u8]) -> String {
        if !self.typed {
            let code = msg
                .get(4..8)
                .map_or(0, |c| u32::from_be_bytes(c.try_into().unwrap()));
            return match code {
                80877103 => "SSLRequest".into(),
                80877104 => "GSSENCRequest".into(),
                80877102 => "CancelRequest".into(),
                196608 => {
                    self.typed = true;
                    "StartupMessage".into()
                }
                other => format!("startup packet {other}"),
            };
        }
        let body = &msg[5..];
        match msg[0] {
            b'Q' => format!("Query {}", quote(cstr(body).0)),
            b'P' => {
                let (name, rest) = cstr(body);
                let (sql, _) = cstr(rest);
                self.statements.insert(name.into(), sql.into());
                format!("Parse {}", quote(sql))
            }
            b'B' => {
                let (_portal, rest) = cstr(body);
                let (statement, _) = cstr(rest);
                // A Bind right after its own Parse needs no repeat of the SQL.
                let parsed_here = self
                    .round_trips
                    .last()
                    .and_then(|rt| rt.iter().rev().find(|m| m.starts_with("Parse")))
                    .is_some();
                match self.statements.get(statement) {
                    Some(sql) if !parsed_here => format!("Bind {}", quote(sql)),
                    _ => "Bind".into(),
                }
            }
            b'E' => "Execute".into(),
            b'S' => "Sync".into(),
            b'D' => "Describe".into(),
            b'C' => "Close".into(),
            b'H' => "Flush".into(),
            b'X' => "Terminate".into(),
            b'p' => "Password/SASL".into(),
            b'd' => "CopyData".into(),
            b'c' => "CopyDone".into(),
            b'f' => "CopyFail".into(),
            b'F' => "FunctionCall".into(),
            other => format!("message {:?}", other as char),
        }
    }
}

/// A NUL-terminated string at the start of `bytes`, and what follows it.
fn cstr(bytes: &[u8]) -> (&str, &[u8]) {
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(bytes.len());
    let s = std::str::from_utf8(&bytes[..end]).unwrap_or("(not UTF-8)");
    (s, bytes.get(end + 1..).unwrap_or(&[]))
}

/// SQL on one line, cut to [`SQL_CHARS`].
fn quote(sql: &str) -> String {
    let one_line = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(SQL_CHARS) {
        Some((at, _)) => format!("\"{}…\"", &one_line[..at]),
        None => format!("\"{one_line}\""),
    }
}

/// Prints, under `label`, each connection's round trips on `traffic` since `before` (a
/// [`Traffic::snapshot`]), one line per round trip. Does nothing unless tracing is on.
pub fn print(label: &str, traffic: &Traffic, before: &Snapshot) {
    if !enabled() {
        return;
    }
    println!("trace: {label}");
    for (conn, round_trips) in traffic.traced_since(before) {
        for (i, rt) in round_trips.iter().enumerate() {
            println!("  conn {conn:>3} RT {:>2}: {}", i + 1, rt.join(", "));
        }
    }
}
