//! The delaying proxy: a network distance between sever (or the floor's client) and a
//! database, with the round trips it counts on each connection.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::trace::{self, Wire};

/// The run with the median critical-path round trips (`sequential`).
pub fn median_rt(samples: &mut [RoundTrips]) -> RoundTrips {
    samples.sort_by_key(|r| r.sequential);
    let m = &samples[samples.len() / 2];
    RoundTrips { ..*m }
}

/// A PostgreSQL `Sync` message alone: what sqlx sends to ping a connection (before handing
/// it out, if asked, and always as it goes back to the pool). A request that is only this
/// is counted as a ping, apart from the round trips that do work.
const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

/// What a delaying proxy saw: the request/response exchanges on each connection it carried,
/// and the delay it really added per hop (Tokio's timer rounds a sleep up to the next
/// millisecond tick, so a 1 ms hop costs more than 1 ms).
#[derive(Default)]
pub struct Traffic {
    /// The connections it carried, in accept order.
    conns: Mutex<Vec<Arc<Conn>>>,
    /// Sum of the delays added, in nanoseconds, and how many hops they were.
    delay_nanos: AtomicU64,
    hops: AtomicU64,
}

/// One proxied connection's count, and with `SEVER_BENCH_TRACE=1` its decoded messages.
struct Conn {
    /// The client's turns, i.e. the times the client sent bytes after the server had (or
    /// first). Back-to-back chunks of one request, or requests pipelined before reading, are
    /// one exchange: one wait for the network. Pings included.
    turns: AtomicU64,
    /// The turns that were a ping ([`SYNC`] alone).
    pings: AtomicU64,
    /// Whether the turn in progress is, so far, a ping.
    in_ping: AtomicBool,
    /// Each turn's wait: when its request passed the proxy, when the answer's first bytes
    /// did, and whether it was a ping.
    spans: Mutex<Vec<Span>>,
    /// The client's messages per round trip; `None` unless tracing.
    wire: Option<Mutex<Wire>>,
}

/// One turn's wait for the network, as the proxy saw it pass.
#[derive(Clone, Copy)]
struct Span {
    asked: Instant,
    answered: Option<Instant>,
    ping: bool,
}

/// Round trips between two snapshots of a proxy's [`Traffic`]: those that did work, and
/// pings apart (sqlx's ping as a connection goes back to its pool runs after the statement's
/// answer, in the background, so it holds up no one unless every connection is busy).
#[derive(Clone, Copy)]
pub struct RoundTrips {
    /// Exchanges doing work on all connections together.
    pub total: u64,
    /// Connections that carried any.
    pub connections: usize,
    /// Pings on all connections together.
    pub pings: u64,
    /// The round trips doing work one after another: those of all connections, where two
    /// that were in flight at once count once. What the answer waits for when the work is
    /// spread over several connections (a store's pool, 16 targets at once).
    pub sequential: u64,
}

/// Each connection's turns and pings at one moment, to count from.
pub struct Snapshot {
    turns: Vec<u64>,
    pings: Vec<u64>,
}

impl RoundTrips {
    /// The round trips of each connection since a snapshot: (turns, of which pings).
    fn of(diffs: impl Iterator<Item = (u64, u64)>) -> Self {
        let mut rt = Self {
            total: 0,
            connections: 0,
            pings: 0,
            sequential: 0,
        };
        for (turns, pings) in diffs.filter(|(turns, _)| *turns > 0) {
            let work = turns - pings;
            rt.total += work;
            rt.pings += pings;
            rt.connections += 1;
        }
        rt
    }

    /// The exchanges on several proxies (one per target) since their snapshots, taken in
    /// the same order.
    pub fn since_all(traffics: &[Arc<Traffic>], befores: &[Snapshot]) -> Self {
        let mut rt = Self::of(
            traffics
                .iter()
                .zip(befores)
                .flat_map(|(t, before)| t.diffs(before)),
        );
        rt.sequential = sequential(traffics.iter().map(|t| &**t).zip(befores));
        rt
    }

    pub fn show(&self) -> String {
        let pings = match self.pings {
            0 => String::new(),
            1 => " + 1 ping".to_owned(),
            n => format!(" + {n} pings"),
        };
        format!(
            "{} RT ({} over {} conn){pings}",
            self.sequential, self.total, self.connections
        )
    }
}

impl Traffic {
    /// Each connection's exchanges so far, to count from.
    pub fn snapshot(&self) -> Snapshot {
        let conns = self.conns.lock().unwrap();
        Snapshot {
            turns: conns
                .iter()
                .map(|c| c.turns.load(Ordering::Relaxed))
                .collect(),
            pings: conns
                .iter()
                .map(|c| c.pings.load(Ordering::Relaxed))
                .collect(),
        }
    }

    /// Each connection's exchanges and pings since `before`; new connections count from
    /// zero.
    fn diffs(&self, before: &Snapshot) -> Vec<(u64, u64)> {
        let now = self.snapshot();
        let since = |now: &[u64], before: &[u64]| -> Vec<u64> {
            now.iter()
                .enumerate()
                .map(|(i, n)| n - before.get(i).copied().unwrap_or(0))
                .collect()
        };
        since(&now.turns, &before.turns)
            .into_iter()
            .zip(since(&now.pings, &before.pings))
            .collect()
    }

    /// The exchanges since `before` (a [`Self::snapshot`]).
    pub fn since(&self, before: &Snapshot) -> RoundTrips {
        let mut rt = RoundTrips::of(self.diffs(before).into_iter());
        rt.sequential = sequential([(self, before)]);
        rt
    }

    /// The waits (turns doing work) of every connection since `before`.
    fn spans_since(&self, before: &Snapshot) -> Vec<Span> {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .enumerate()
            .flat_map(|(i, c)| {
                let from = before.turns.get(i).copied().unwrap_or(0) as usize;
                let spans = c.spans.lock().unwrap();
                spans.get(from..).unwrap_or_default().to_vec()
            })
            .filter(|s| !s.ping)
            .collect()
    }

    /// With tracing on, each connection that carried exchanges since `before`: its number
    /// and the messages of each of its round trips since.
    pub fn traced_since(&self, before: &Snapshot) -> Vec<(usize, Vec<Vec<String>>)> {
        let conns = self.conns.lock().unwrap();
        conns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| {
                let from = before.turns.get(i).copied().unwrap_or(0) as usize;
                let wire = c.wire.as_ref()?.lock().unwrap();
                let rts = wire.round_trips_from(from);
                (!rts.is_empty()).then(|| (i, rts.to_vec()))
            })
            .collect()
    }

    /// The mean delay the proxy really added per hop (one direction).
    pub fn mean_hop(&self) -> Duration {
        let hops = self.hops.load(Ordering::Relaxed).max(1);
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed) / hops)
    }
}

/// The round trips doing work on several proxies' connections since their snapshots, one
/// after another: waits that overlapped in time (two connections each waiting for an answer
/// at once) count once.
pub fn sequential<'a>(of: impl IntoIterator<Item = (&'a Traffic, &'a Snapshot)>) -> u64 {
    let now = Instant::now();
    let mut spans: Vec<(Instant, Instant)> = of
        .into_iter()
        .flat_map(|(traffic, before)| traffic.spans_since(before))
        .map(|s| (s.asked, s.answered.unwrap_or(now)))
        .collect();
    spans.sort();
    let mut count = 0;
    let mut until: Option<Instant> = None;
    for (asked, answered) in spans {
        match until {
            Some(end) if asked <= end => until = Some(end.max(answered)),
            _ => {
                count += 1;
                until = Some(answered);
            }
        }
    }
    count
}

/// Which way a connection's bytes last went.
pub const TO_SERVER: u8 = 1;
pub const TO_CLIENT: u8 = 2;

/// A TCP proxy to `upstream` (a port on 127.0.0.1) that holds every chunk of bytes for
/// `delay` in each direction, as a network between sever and a database host would, and
/// counts the exchanges on each connection ([`Traffic`]). Returns its port; it serves until
/// the benchmark exits. Written here because the kernel on these machines has no netem qdisc
/// to delay loopback traffic with.
pub async fn delaying_proxy(upstream: u16, delay: Duration) -> (u16, Arc<Traffic>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let traffic = Arc::new(Traffic::default());
    let seen = traffic.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let conn = Arc::new(Conn {
                turns: AtomicU64::new(0),
                pings: AtomicU64::new(0),
                in_ping: AtomicBool::new(false),
                spans: Mutex::default(),
                wire: trace::enabled().then(|| Mutex::new(Wire::default())),
            });
            seen.conns.lock().unwrap().push(conn.clone());
            let traffic = seen.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let last = Arc::new(AtomicU8::new(0));
                let to_server = Direction {
                    to: TO_SERVER,
                    last: last.clone(),
                    conn: Some(conn.clone()),
                    answers: None,
                };
                let to_client = Direction {
                    to: TO_CLIENT,
                    last,
                    conn: None,
                    answers: Some(conn.clone()),
                };
                tokio::join!(
                    delayed_copy(client_read, server_write, delay, to_server, &traffic),
                    delayed_copy(server_read, client_write, delay, to_client, &traffic),
                );
            });
        }
    });
    (port, traffic)
}

/// One direction of a proxied connection, for counting exchanges.
pub struct Direction {
    to: u8,
    /// Shared by both directions of the connection.
    last: Arc<AtomicU8>,
    /// Counted (and traced) on the client-to-server side only.
    conn: Option<Arc<Conn>>,
    /// On the server-to-client side: the connection whose turns its answers end.
    answers: Option<Arc<Conn>>,
}

/// Copies `from` to `to`, each chunk written `delay` after it was read, in order.
pub async fn delayed_copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
    direction: Direction,
    traffic: &Traffic,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n @ 1..) = from.read(&mut buf).await {
            let before = direction.last.swap(direction.to, Ordering::Relaxed);
            if let Some(conn) = &direction.conn {
                let turn = before != direction.to;
                if turn {
                    let ping = buf[..n] == SYNC;
                    // The span first, so a snapshot never counts a turn without one.
                    conn.spans.lock().unwrap().push(Span {
                        asked: Instant::now(),
                        answered: None,
                        ping,
                    });
                    conn.turns.fetch_add(1, Ordering::Relaxed);
                    if ping {
                        conn.pings.fetch_add(1, Ordering::Relaxed);
                    }
                    conn.in_ping.store(ping, Ordering::Relaxed);
                } else if conn.in_ping.swap(false, Ordering::Relaxed) {
                    // More followed the Sync in the same turn: a request, not a ping.
                    conn.pings.fetch_sub(1, Ordering::Relaxed);
                    if let Some(last) = conn.spans.lock().unwrap().last_mut() {
                        last.ping = false;
                    }
                }
                if let Some(wire) = &conn.wire {
                    let mut wire = wire.lock().unwrap();
                    if turn {
                        wire.turn();
                    }
                    wire.feed(&buf[..n]);
                }
            }
            if let (Some(conn), true) = (&direction.answers, before != direction.to)
                && let Some(last) = conn.spans.lock().unwrap().last_mut()
                && last.answered.is_none()
            {
                last.answered = Some(Instant::now());
            }
            if tx
                .send((tokio::time::Instant::now(), buf[..n].to_vec()))
                .is_err()
            {
                break;
            }
        }
    };
    let write = async move {
        while let Some((read_at, chunk)) = rx.recv().await {
            tokio::time::sleep_until(read_at + delay).await;
            let held = read_at.elapsed();
            traffic
                .delay_nanos
                .fetch_add(held.as_nanos() as u64, Ordering::Relaxed);
            traffic.hops.fetch_add(1, Ordering::Relaxed);
            if to.write_all(&chunk).await.is_err() {
                break;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}
