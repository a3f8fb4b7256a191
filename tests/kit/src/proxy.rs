//! A real TCP proxy that can stall: it forwards to an upstream port until `stall()`, then
//! accepts connections and keeps every connection open without forwarding a byte either way,
//! like a network partition or a hung proxy in front of a database.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// A proxy on 127.0.0.1 in front of an upstream port; stops (closing everything) on drop.
pub struct StallingProxy {
    /// The port to connect to instead of the upstream's.
    pub port: u16,
    stalled: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl StallingProxy {
    /// A proxy forwarding to `127.0.0.1:upstream`.
    pub async fn start(upstream: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (stalled, watching) = watch::channel(false);
        let upstream = SocketAddr::from(([127, 0, 0, 1], upstream));
        let task = tokio::spawn(async move {
            // Owned here, so dropping the proxy (aborting this task) closes every connection.
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                connections.spawn(connection(client, upstream, watching.clone()));
                while connections.try_join_next().is_some() {}
            }
        });
        Self {
            port,
            stalled,
            task,
        }
    }

    /// From now on nothing is forwarded, on open connections and new ones, none is closed.
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }
}

impl Drop for StallingProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn connection(client: TcpStream, upstream: SocketAddr, stalled: watch::Receiver<bool>) {
    if *stalled.borrow() {
        return hold(client).await;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::join!(
        pipe(client_read, server_write, stalled.clone()),
        pipe(server_read, client_write, stalled),
    );
}

/// Keeps `socket` open, answering nothing, until the proxy is dropped.
async fn hold<T>(socket: T) {
    std::future::pending::<()>().await;
    drop(socket);
}

/// Copies `from` to `to` until either closes; once stalled, holds both open and copies nothing.
async fn pipe(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut stalled: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            // (The guard `wait_for` returns is dropped at once: it must not live across an await.)
            () = async { let _ = stalled.wait_for(|s| *s).await; } => {
                return hold((from, to)).await;
            }
        };
        if *stalled.borrow() {
            return hold((from, to)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
