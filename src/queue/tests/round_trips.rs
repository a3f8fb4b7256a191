//! Counts the store round trips of one rotation on a PostgreSQL store, through a counting TCP
//! proxy: in production the store is on another host, and each round trip is time a rotated
//! login's sessions live on.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use super::*;
use sever_testkit::pg::TestPostgres;

/// The most store round trips doing work one rotation may take (measured; see the README's
/// Performance section). A change that adds one fails here: say which promise it buys, then
/// raise this.
const MOST: u64 = 4;
/// The most pings: sqlx pings each connection as it goes back to the pool, after the
/// statement's answer (none before handing one out any more).
const MOST_PINGS: u64 = 4;

/// Client turns on every connection the proxy carried: each time the client sent bytes after
/// the server had answered (or first). Back-to-back chunks of one request, or requests sent
/// before reading, are one turn: one wait for the network. Pings (a turn that is only a
/// PostgreSQL `Sync`, which is how sqlx pings) are also counted apart.
#[derive(Default)]
struct Turns {
    all: AtomicU64,
    pings: AtomicU64,
}

/// A PostgreSQL `Sync` message alone: sqlx's ping.
const SYNC: [u8; 5] = [b'S', 0, 0, 0, 4];

/// A TCP proxy to `upstream` that counts [`Turns`]; serves until the test ends.
async fn counting_proxy(upstream: u16) -> (u16, Arc<Turns>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let turns = Arc::new(Turns::default());
    let counted = turns.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let turns = counted.clone();
            tokio::spawn(async move {
                let Ok(server) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await
                else {
                    return;
                };
                let _ = (client.set_nodelay(true), server.set_nodelay(true));
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                // Which way the connection's bytes last went: 1 to the server, 2 back.
                let last = Arc::new(AtomicU8::new(0));
                tokio::join!(
                    copy(client_read, server_write, 1, &last, Some(&turns)),
                    copy(server_read, client_write, 2, &last, None),
                );
            });
        }
    });
    (port, turns)
}

/// Copies one direction of a proxied connection, counting the client's turns.
async fn copy(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    way: u8,
    last: &AtomicU8,
    turns: Option<&Turns>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    // Whether the turn in progress is, so far, a ping.
    let mut in_ping = false;
    while let Ok(n @ 1..) = from.read(&mut buf).await {
        let new_turn = last.swap(way, Ordering::SeqCst) != way;
        if let Some(turns) = turns {
            if new_turn {
                turns.all.fetch_add(1, Ordering::SeqCst);
                in_ping = buf[..n] == SYNC;
                if in_ping {
                    turns.pings.fetch_add(1, Ordering::SeqCst);
                }
            } else if in_ping {
                // More followed the Sync in the same turn: a request, not a ping.
                turns.pings.fetch_sub(1, Ordering::SeqCst);
                in_ping = false;
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// The round trips so far, once every store connection is back in the pool: sqlx pings a
/// connection as it goes back (in the background), and those pings count too.
async fn settled(store: &Store, turns: &Turns) -> (u64, u64) {
    for _ in 0..10_000 {
        if store.pool().num_idle() == store.pool().size() as usize {
            return (
                turns.all.load(Ordering::SeqCst),
                turns.pings.load(Ordering::SeqCst),
            );
        }
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("a store connection never went back to the pool");
}

/// A throwaway PostgreSQL, a store reaching it through [`counting_proxy`], a queue and an
/// audit trail on that store.
async fn proxied_store(
    config: QueueConfig,
) -> (TestPostgres, Arc<Turns>, Store, Arc<Queue>, Audit) {
    let pg = TestPostgres::start();
    let (port, turns) = counting_proxy(pg.port()).await;
    let url = pg
        .superuser_url("postgres")
        .replace(&format!(":{}/", pg.port()), &format!(":{port}/"));
    let store = Store::connect(&SecretString::from(url)).await.unwrap();
    let q = Arc::new(
        Queue::new(store.clone(), "one".into(), config).with_notifier(no_channels(&store)),
    );
    let audit = Audit::new(store.clone());
    (pg, turns, store, q, audit)
}

/// A notifier with no channels, as the server has when none is configured: it always has
/// one, and the one-statement commits must not fall back because of it.
fn no_channels(store: &Store) -> Arc<crate::notify::Notifier> {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("intake");
    std::fs::write(&secret, "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
    let text = format!(
        "[webhooks]\nsecrets = [{{ file = \"{}\" }}]\n",
        secret.display()
    );
    let config = crate::config::Config::parse(&text).unwrap();
    Arc::new(crate::notify::Notifier::new(&config, store.clone()).unwrap())
}

/// One rotation's store work, as the server does it for a signed event with `?wait=true` on
/// one target whose sessions are ended: per phase, the round trips it took (all, and of
/// those the pings).
async fn rotation(
    store: &Store,
    audit: &Audit,
    q: &Arc<Queue>,
    turns: &Turns,
) -> Vec<(&'static str, (u64, u64))> {
    let mut phases = Phases {
        done: Vec::new(),
        before: settled(store, turns).await,
        store,
        turns,
    };
    // As the server's worker does.
    q.adopt_accepted(true);
    q.read_roles_ahead(["pg".to_owned()]);
    let mut s = submission(&["pg"], &[&format!("webhook:{}", Uuid::now_v7())]);
    let id = s.plan.action_id;
    s.before.push(Entry::new(
        crate::audit::Kind::EventAccepted,
        "webhook",
        Some(id),
        serde_json::json!({"event": "rotated"}),
    ));
    assert_eq!(q.submit(audit, &s).await.unwrap(), Submitted::Accepted(id));
    phases
        .end("accept: claims, action, step, records, commit; beside it, the roles")
        .await;

    // The handler waits for the report.
    let waiter = tokio::spawn({
        let q = q.clone();
        async move { q.wait(id, Duration::from_secs(60)).await }
    });
    tokio::task::yield_now().await;
    phases.end("wait: subscribe, look for the report").await;

    // Accepted here, so stored leased to this process, as the server's worker adopts it.
    let lease = q.take_adopted().pop().expect("the step is adopted");
    phases.end("worker: take the step accepted here").await;

    // The PostgreSQL engine reads the role oids it remembers for the logins and what it
    // learned about dropped roles: read beside the acceptance.
    assert!(lease.roles.is_some(), "the roles were read ahead");

    let sessions: Vec<Session> = (1..=3).map(session).collect();
    q.journal(&lease).record(&sessions).await.unwrap();
    phases.end("engine: journal before the signal").await;

    let mut report = done("pg");
    report.outcome.matched = sessions.clone();
    report.outcome.terminated = sessions;
    report.found = 3;
    assert!(q.finish(audit, &lease, &report).await.unwrap());
    // The waiter, woken as the finish commits, answers meanwhile (on another connection).
    let answered = waiter.await.unwrap().unwrap().expect("finished");
    assert_eq!(answered.status, Status::Completed);
    phases
        .end("worker: finish the step, complete the action; wait: the report")
        .await;
    phases.done
}

/// The round trips of each phase of a rotation, as they end.
struct Phases<'a> {
    done: Vec<(&'static str, (u64, u64))>,
    before: (u64, u64),
    store: &'a Store,
    turns: &'a Turns,
}

impl Phases<'_> {
    async fn end(&mut self, name: &'static str) {
        let now = settled(self.store, self.turns).await;
        self.done
            .push((name, (now.0 - self.before.0, now.1 - self.before.1)));
        self.before = now;
    }
}

#[tokio::test]
async fn one_rotation_on_a_postgres_store_stays_within_its_round_trip_count() {
    let (_pg, turns, store, q, audit) = proxied_store(QueueConfig {
        // The waiter polls only if it misses the broadcast, which would change the count.
        poll_interval: Duration::from_secs(3600),
        ..QueueConfig::default()
    })
    .await;
    // A first rotation fills the connections' statement caches, as a running server has.
    let cold: u64 = rotation(&store, &audit, &q, &turns)
        .await
        .iter()
        .map(|(_, (all, _))| all)
        .sum();
    for _ in 0..2 {
        rotation(&store, &audit, &q, &turns).await;
    }
    // The waiter's read overlaps the worker's last release, so the pool has grown to two or
    // three connections by now; one opened while counting would add its log-in.
    let connections = store.pool().size();
    let phases = rotation(&store, &audit, &q, &turns).await;
    let all: u64 = phases.iter().map(|(_, (all, _))| all).sum();
    let pings: u64 = phases.iter().map(|(_, (_, pings))| pings).sum();
    let work = all - pings;
    for (name, (all, pings)) in &phases {
        println!("{:>3} + {pings} ping(s)  {name}", all - pings);
    }
    println!(
        "{work:>3} + {pings} ping(s)  one rotation's store round trips ({cold} with pings on a \
         cold connection)"
    );
    assert_eq!(
        store.pool().size(),
        connections,
        "no connection was opened while counting"
    );
    assert!(audit.verify().await.unwrap().ok);
    assert!(work <= MOST, "{work} round trips, more than {MOST}");
    assert!(pings <= MOST_PINGS, "{pings} pings, more than {MOST_PINGS}");
}

/// Restarts the store once every connection is back in the pool (pinged as it went back),
/// so each idle one is then dead.
async fn restart(pg: &TestPostgres, store: &Store, turns: &Turns) {
    settled(store, turns).await;
    pg.restart();
}

/// The pool no longer pings a connection before handing it out, so after the store
/// restarts, every idle connection is dead until a statement finds out. Each statement of a
/// rotation's path, run right after a restart, still does its work: it runs again on
/// another connection (the direct statements) or its transaction does.
#[tokio::test]
async fn each_store_statement_of_a_rotation_runs_again_after_the_store_restarted() {
    let (pg, turns, store, q, audit) = proxied_store(QueueConfig::default()).await;
    // Several connections idle, as on a running server.
    for _ in 0..3 {
        rotation(&store, &audit, &q, &turns).await;
    }
    let idle = store.pool().num_idle();
    assert!(idle >= 2, "{idle} idle connections");

    // Claimed, not adopted, so the claim runs right after a restart too.
    q.adopt_accepted(false);
    let s = submission(&["pg"], &[&format!("webhook:{}", Uuid::now_v7())]);
    restart(&pg, &store, &turns).await;
    assert_eq!(
        q.submit(&audit, &s).await.unwrap(),
        Submitted::Accepted(s.plan.action_id)
    );
    restart(&pg, &store, &turns).await;
    let lease = q
        .claim_fair(1, &[("pg".to_owned(), 1)])
        .await
        .unwrap()
        .pop()
        .expect("the step is due");
    restart(&pg, &store, &turns).await;
    store.stored_roles(&["pg".to_owned()]).await.unwrap();
    restart(&pg, &store, &turns).await;
    q.journal(&lease).record(&[session(1)]).await.unwrap();
    restart(&pg, &store, &turns).await;
    assert!(q.finish(&audit, &lease, &done("pg")).await.unwrap());
    assert!(audit.verify().await.unwrap().ok);
}

/// The keeper hands each idle connection back to the pool, which pings it: after a store
/// restart the dead ones are closed before anyone needs one, so a statement run without
/// running again succeeds at once.
#[tokio::test]
async fn the_keeper_replaces_connections_that_died_while_idle() {
    let (pg, turns, store, q, audit) = proxied_store(QueueConfig::default()).await;
    for _ in 0..3 {
        rotation(&store, &audit, &q, &turns).await;
    }
    let one = || sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(store.pool());
    restart(&pg, &store, &turns).await;
    assert!(
        one().await.is_err(),
        "a connection that died while idle fails"
    );
    restart(&pg, &store, &turns).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let keeper = tokio::spawn(
        store
            .clone()
            .keep_warm(Duration::from_millis(20), stop.clone()),
    );
    // Two rounds of the keeper, then every connection is back (pinged).
    tokio::time::sleep(Duration::from_millis(200)).await;
    settled(&store, &turns).await;
    for _ in 0..store.pool().size() + 1 {
        assert_eq!(one().await.unwrap(), 1);
    }
    stop.cancel();
    keeper.await.unwrap();
}
