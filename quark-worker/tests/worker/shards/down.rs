//! One shard down (cut off behind a proxy, or its server stopped and started again): the others
//! go on, its own instances wait and resume.

use super::*;

/// A TCP proxy in front of one PostgreSQL server: the shard is "down" when the proxy cuts every
/// connection and refuses new ones, as a network partition or a stopped server would.
struct Proxy {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn to(target: std::net::SocketAddr) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (up, links) = (Arc::clone(&up), Arc::clone(&links));
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(Ordering::Acquire) {
                        continue; // dropped: the connection is refused
                    }
                    let link = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    links.lock().unwrap().push(link);
                }
            })
        };
        Proxy {
            port,
            up,
            links,
            accept,
        }
    }

    fn down(&self) {
        self.up.store(false, std::sync::atomic::Ordering::Release);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    fn up(&self) {
        self.up.store(true, std::sync::atomic::Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.down();
    }
}

/// The first ids `prefix-N` whose shard is `shard`.
fn ids_on(shards: &Shards, prefix: &str, shard: usize, n: usize) -> Vec<String> {
    (0..)
        .map(|k| format!("{prefix}-{k}"))
        .filter(|id| shards.shard_of(id) == shard)
        .take(n)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_that_goes_down_stalls_only_its_own_instances_and_resumes() {
    let Some(dbs) = ClusterDatabases::create(3).await else {
        return;
    };
    // s2 is reached through the proxy.
    let url: url_parts::Url = url_parts::parse(&dbs.urls[2]);
    let proxy = Proxy::to(format!("127.0.0.1:{}", url.port).parse().unwrap()).await;
    let s2 = url.with_port(proxy.port);
    let shards = with_s2(&dbs, &s2).await;
    s2_down_and_back(&shards, async || proxy.down(), async || proxy.up()).await;
    drop(shards);
    drop(proxy);
    dbs.cleanup().await;
}

/// The same with s2's server itself stopped (`pg_ctlcluster stop -m fast`: every session cut,
/// the wake-up listener and the map's lock with them) and started again; afterwards the
/// deployment's lock on its map is held on s2 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_whose_server_is_stopped_and_started_again_loses_nothing() {
    let Some(cluster) = quark_history::testing::StoppableCluster::get() else {
        return;
    };
    let Some(dbs) = ClusterDatabases::create(2).await else {
        return;
    };
    let own = cluster.database().await;
    let s2 = own.urls[0].clone();
    let shards = with_s2(&dbs, &s2).await;
    let map_locks = async || {
        let Ok(pool) = quark_history::sqlx::PgPool::connect(&s2).await else {
            return 0;
        };
        let held: i64 = quark_history::sqlx::query_scalar(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_one(&pool)
        .await
        .unwrap_or(0);
        pool.close().await;
        held
    };
    assert!(map_locks().await >= 1, "the map's lock is held on s2");
    s2_down_and_back(
        &shards,
        async || cluster.stop(),
        async || cluster.start().await,
    )
    .await;
    // The session that held the map's lock died with the server; it is taken again.
    eventually("the map's lock is held on s2 again", async || {
        map_locks().await >= 1
    })
    .await;
    assert!(
        shards.locate("anything").await.is_ok(),
        "the hold is not stale"
    );
    drop(shards);
    dbs.cleanup().await;
    own.cleanup().await;
}

/// Shards s0 and s1 on the first two databases of `dbs`, s2 at `s2`.
async fn with_s2(dbs: &ClusterDatabases, s2: &str) -> Shards {
    Shards::connect(
        [
            ("s0", dbs.urls[0].as_str()),
            ("s1", dbs.urls[1].as_str()),
            ("s2", s2),
        ],
        StoreConfig::default(),
    )
    .await
    .unwrap()
}

/// A shard down and back: gates on s2 wait for a signal; s2 goes `down`; pairs across s0 and
/// s1 complete meanwhile, and an instance on s0 opens the gates (its signals wait in s0's
/// outbox); s2 comes back `up`, and each gate opens, its signal received once.
async fn s2_down_and_back(shards: &Shards, down: impl AsyncFnOnce(), up: impl AsyncFnOnce()) {
    let client = ShardedClient::new(shards.clone());
    let workers = start_workers(shards).await;
    // Their first turns may run before s2 goes down or after it is back: either way the
    // signal opens them.
    let gates = ids_on(shards, "gate", 2, 4);
    let mut gate_handles = Vec::new();
    for id in &gates {
        gate_handles.push(gate::start(&client, id, ()).await.unwrap());
    }
    down().await;

    let (up0, up1) = (ids_on(shards, "a", 0, 6), ids_on(shards, "b", 1, 6));
    let mut staying = Vec::new();
    for (x, y) in up0.iter().zip(&up1) {
        staying.push(ping::start(&client, x, (y.clone(), 1)).await.unwrap());
        staying.push(ping::start(&client, y, (x.clone(), 2)).await.unwrap());
    }
    let opener_id = &ids_on(shards, "opener", 0, 1)[0];
    let opener = open_gates::start(&client, opener_id, gates.clone())
        .await
        .unwrap();
    for handle in staying {
        tokio::time::timeout(Duration::from_secs(60), handle.result())
            .await
            .expect("pairs on the shards that are up complete while s2 is down")
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), opener.result())
        .await
        .expect("the opener on s0 completes while s2 is down")
        .unwrap();
    let pending = shards
        .store(0)
        .list_outbox(
            quark_history::OutboxFilter::default().state(quark_history::MessageState::Pending),
        )
        .await
        .unwrap()
        .len();
    assert_eq!(
        pending,
        gates.len(),
        "the signals to s2 wait in s0's outbox"
    );
    assert!(
        client.describe(&gates[0]).await.is_err(),
        "s2 cannot be read"
    );

    up().await;
    for (id, handle) in gates.iter().zip(gate_handles) {
        tokio::time::timeout(Duration::from_secs(60), handle.result())
            .await
            .expect("s2's gates open once it is back")
            .unwrap();
        let history = shards
            .store(2)
            .read_history(id, HistoryRange::All)
            .await
            .unwrap();
        let signals = history
            .iter()
            .filter(|e| matches!(e.event, HistoryEvent::SignalReceived { .. }))
            .count();
        assert_eq!(signals, 1, "{id} received its signal once");
    }
    for worker in workers {
        worker.shutdown().await;
    }
}

/// The host's port of a test URL, and the URL with another port.
mod url_parts {
    pub(super) struct Url {
        pub(super) port: u16,
        text: String,
    }

    pub(super) fn parse(url: &str) -> Url {
        let port = url
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .and_then(|p| p.parse().ok())
            .expect("a test cluster URL on 127.0.0.1:PORT");
        Url {
            port,
            text: url.to_owned(),
        }
    }

    impl Url {
        pub(super) fn with_port(&self, port: u16) -> String {
            self.text.replacen(
                &format!("127.0.0.1:{}", self.port),
                &format!("127.0.0.1:{port}"),
                1,
            )
        }
    }
}
