//! The delaying proxy: a network distance between sever (or the floor's client) and a
//! database, with the round trips it counts on each connection.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The run with the median critical-path round trips (`max`).
pub fn median_rt(samples: &mut [RoundTrips]) -> RoundTrips {
    samples.sort_by_key(|r| r.max);
    let m = &samples[samples.len() / 2];
    RoundTrips {
        max: m.max,
        total: m.total,
        connections: m.connections,
    }
}

/// What a delaying proxy saw: the request/response exchanges on each connection it carried,
/// and the delay it really added per hop (Tokio's timer rounds a sleep up to the next
/// millisecond tick, so a 1 ms hop costs more than 1 ms).
#[derive(Default)]
pub struct Traffic {
    /// One counter per connection, in accept order: the client's turns, i.e. the times the
    /// client sent bytes after the server had (or first). Back-to-back chunks of one request,
    /// or requests pipelined before reading, are one exchange: one wait for the network.
    turns: Mutex<Vec<Arc<AtomicU64>>>,
    /// Sum of the delays added, in nanoseconds, and how many hops they were.
    delay_nanos: AtomicU64,
    hops: AtomicU64,
}

/// Round trips between two snapshots of a proxy's [`Traffic`].
pub struct RoundTrips {
    /// Exchanges on the connection that had the most: the round trips on the critical path
    /// when one connection carries the work.
    pub max: u64,
    /// Exchanges on all connections together.
    pub total: u64,
    /// Connections that carried any.
    pub connections: usize,
}

impl RoundTrips {
    pub fn show(&self) -> String {
        format!(
            "{} RT ({} over {} conn)",
            self.max, self.total, self.connections
        )
    }
}

impl Traffic {
    pub fn snapshot(&self) -> Vec<u64> {
        let turns = self.turns.lock().unwrap();
        turns.iter().map(|t| t.load(Ordering::Relaxed)).collect()
    }

    /// The exchanges since `before` (a [`Self::snapshot`]); new connections count from zero.
    pub fn since(&self, before: &[u64]) -> RoundTrips {
        let now = self.snapshot();
        let diffs: Vec<u64> = now
            .iter()
            .enumerate()
            .map(|(i, n)| n - before.get(i).copied().unwrap_or(0))
            .collect();
        RoundTrips {
            max: diffs.iter().copied().max().unwrap_or(0),
            total: diffs.iter().sum(),
            connections: diffs.iter().filter(|d| **d > 0).count(),
        }
    }

    /// The mean delay the proxy really added per hop (one direction).
    pub fn mean_hop(&self) -> Duration {
        let hops = self.hops.load(Ordering::Relaxed).max(1);
        Duration::from_nanos(self.delay_nanos.load(Ordering::Relaxed) / hops)
    }
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
            let turns = Arc::new(AtomicU64::new(0));
            seen.turns.lock().unwrap().push(turns.clone());
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
                    turns: Some(turns),
                };
                let to_client = Direction {
                    to: TO_CLIENT,
                    last,
                    turns: None,
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
    /// Counted on the client-to-server side only.
    turns: Option<Arc<AtomicU64>>,
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
            if let Some(turns) = &direction.turns
                && before != direction.to
            {
                turns.fetch_add(1, Ordering::Relaxed);
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
