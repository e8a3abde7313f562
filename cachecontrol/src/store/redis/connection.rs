//! The store's link to Redis: one managed connection (a single node) or one cluster
//! connection, made on first use, shared by every operation, and released by
//! `close()`.
//!
//! Every operation works in a [`Session`]: a clone of the connection and a read
//! permit on the link. `close()` takes the write side: it waits until no session is
//! open, then has the server close the connection (QUIT) and drops it, so that
//! nothing can use it afterwards. A session cannot be opened once closing has begun.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{
    MultipleNodeRoutingInfo, ResponsePolicy, RoutingInfo, SingleNodeRoutingInfo,
};
use redis::{
    Cmd, FromRedisValue, Pipeline, RedisError, RedisFuture, RedisResult, ScriptInvocation, Value,
};
use tokio::sync::{OnceCell, OwnedRwLockReadGuard, RwLock};
use tokio_util::sync::CancellationToken;

use crate::store::StoreError;

/// How to reach Redis.
pub(super) enum Target {
    /// One server, through a connection manager that reconnects by itself.
    Single {
        client: redis::Client,
        config: ConnectionManagerConfig,
    },
    /// A Redis Cluster.
    Cluster(ClusterClient),
}

impl Target {
    async fn connect(&self) -> RedisResult<Connection> {
        match self {
            Target::Single { client, config } => {
                ConnectionManager::new_with_config(client.clone(), config.clone())
                    .await
                    .map(Connection::Single)
            }
            Target::Cluster(client) => client.get_async_connection().await.map(Connection::Cluster),
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Target::Cluster(_))
    }
}

/// A connection to a single node or to a cluster; cloning it shares it.
#[derive(Clone)]
pub(super) enum Connection {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
            Connection::Cluster(connection) => {
                connection.req_packed_commands(pipeline, offset, count)
            }
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

impl Connection {
    /// Asks the server (every node of a cluster) to close the connection; best
    /// effort, within [`QUIT_TIMEOUT`].
    async fn quit(&mut self) {
        let quit = redis::cmd("QUIT");
        let sent = async {
            match self {
                Connection::Single(connection) => quit.query_async::<()>(connection).await,
                Connection::Cluster(connection) => {
                    let every_node = RoutingInfo::MultiNode((
                        MultipleNodeRoutingInfo::AllNodes,
                        Some(ResponsePolicy::AllSucceeded),
                    ));
                    connection.route_command(quit, every_node).await.map(drop)
                }
            }
        };
        match tokio::time::timeout(QUIT_TIMEOUT, sent).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "QUIT failed; the connection is dropped"),
            Err(_) => tracing::debug!("QUIT timed out; the connection is dropped"),
        }
    }
}

/// How long close() waits for Redis to acknowledge QUIT.
const QUIT_TIMEOUT: Duration = Duration::from_secs(1);

/// A server to SCAN: the only one, or one master of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Node {
    /// The single server.
    Only,
    /// A cluster master.
    Master { host: String, port: u16 },
}

/// The link: the connection (made on first use), its name, and the closing state.
pub(super) struct Link {
    target: Target,
    name: String,
    /// `None` once closed. The `OnceCell` is filled by the first session.
    connection: Arc<RwLock<Option<OnceCell<Connection>>>>,
    closing: AtomicBool,
    /// Whether the connection has been named since it was last seen failing (a
    /// failure may mean the connection was replaced by a new, unnamed one).
    named: Arc<AtomicBool>,
    /// When naming may be tried again.
    next_naming: Mutex<Instant>,
    /// Cancelled when writes still in flight after the close grace must stop.
    abandon: CancellationToken,
}

/// How long after an attempt to name the connection the next one may be made.
const NAMING_RETRY: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("cluster", &self.target.is_cluster())
            .field("name", &self.name)
            .field("closing", &self.closing.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

impl Link {
    pub(super) fn new(target: Target, name: String) -> Link {
        Link {
            target,
            name,
            connection: Arc::new(RwLock::new(Some(OnceCell::new()))),
            closing: AtomicBool::new(false),
            named: Arc::new(AtomicBool::new(false)),
            next_naming: Mutex::new(Instant::now()),
            abandon: CancellationToken::new(),
        }
    }

    /// Whether the store is closing or closed.
    pub(super) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Cancelled when writes in flight must give up (the close grace is over).
    pub(super) fn abandoned(&self) -> &CancellationToken {
        &self.abandon
    }

    /// Opens a session: [`StoreError::Closed`] at once when closing has begun;
    /// connects (and names the connection) when that has not been done yet.
    pub(super) async fn session(&self) -> Result<Session, StoreError> {
        if self.is_closing() {
            return Err(StoreError::Closed);
        }
        // Fails only while close() waits for the sessions to end, or has ended them.
        let permit = Arc::clone(&self.connection)
            .try_read_owned()
            .map_err(|_| StoreError::Closed)?;
        let connection = match permit.as_ref() {
            None => return Err(StoreError::Closed),
            Some(cell) => cell
                .get_or_try_init(|| self.target.connect())
                .await
                .map_err(|error| StoreError::Backend(format!("cannot connect to Redis: {error}")))?
                .clone(),
        };
        let mut session = Session {
            connection,
            named: Arc::clone(&self.named),
            _permit: permit,
        };
        if self.naming_is_due() {
            self.name(&mut session).await;
        }
        Ok(session)
    }

    /// Whether the connection should be named now: it is not, and the last attempt
    /// was long enough ago (naming is tried at most once per [`NAMING_RETRY`], so
    /// that a node that is down does not slow every operation with it).
    fn naming_is_due(&self) -> bool {
        if self.named.load(Ordering::Acquire) {
            return false;
        }
        let mut next = self.next_naming.lock();
        let now = Instant::now();
        if now < *next {
            return false;
        }
        *next = now + NAMING_RETRY;
        true
    }

    /// Gives the connection its name: a client name lets an operator (and the tests)
    /// tell our connections in CLIENT LIST; in a cluster, the command goes to every
    /// node. Best effort: an operation never fails for want of a name.
    async fn name(&self, session: &mut Session) {
        let mut setname = redis::cmd("CLIENT");
        setname.arg("SETNAME").arg(&self.name);
        match session.query::<()>(&setname).await {
            Ok(()) => self.named.store(true, Ordering::Release),
            Err(error) if error.is_io_error() || error.is_timeout() => {
                tracing::debug!(%error, "could not name the Redis connection yet");
            }
            Err(error) => {
                // Refused (an ACL, a proxy): asking again would not help.
                self.named.store(true, Ordering::Release);
                tracing::warn!(%error, "Redis refused CLIENT SETNAME; the connections stay unnamed");
            }
        }
    }

    /// Refuses new sessions, waits for those open (writes in flight get `grace` to
    /// finish, then are told to give up), and drops the connection.
    pub(super) async fn close(&self, grace: Duration) {
        self.closing.store(true, Ordering::Release);
        let write = Arc::clone(&self.connection).write_owned();
        tokio::pin!(write);
        let mut guard = tokio::select! {
            guard = &mut write => guard,
            () = tokio::time::sleep(grace) => {
                tracing::debug!(?grace, "writes still in flight after the close grace; abandoning them");
                self.abandon.cancel();
                write.await
            }
        };
        let connection = guard.take().and_then(OnceCell::into_inner);
        drop(guard);
        if let Some(mut connection) = connection {
            // The server closes a connection that says QUIT once it has answered, so
            // when close() returns, Redis lists none of ours. Dropping the handles
            // alone would close the sockets a little later, from the connections'
            // own tasks.
            connection.quit().await;
        }
    }
}

/// An open session: a connection that stays usable until it is dropped.
pub(super) struct Session {
    connection: Connection,
    named: Arc<AtomicBool>,
    _permit: OwnedRwLockReadGuard<Option<OnceCell<Connection>>>,
}

impl Session {
    /// Runs a command.
    pub(super) async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        let result = cmd.query_async(&mut self.connection).await;
        self.observe(result)
    }

    /// Runs a pipeline (all its keys in one slot).
    pub(super) async fn pipeline<T: FromRedisValue>(
        &mut self,
        pipeline: &Pipeline,
    ) -> RedisResult<T> {
        let result = pipeline.query_async(&mut self.connection).await;
        self.observe(result)
    }

    /// Runs a script.
    pub(super) async fn script<T: FromRedisValue>(
        &mut self,
        invocation: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        let result = invocation.invoke_async(&mut self.connection).await;
        self.observe(result)
    }

    /// The servers whose keys a SCAN must visit: the one server, or every master.
    pub(super) async fn nodes(&mut self) -> RedisResult<Vec<Node>> {
        if let Connection::Single(_) = self.connection {
            return Ok(vec![Node::Only]);
        }
        let nodes: String = self.query(redis::cmd("CLUSTER").arg("NODES")).await?;
        let masters = parse_cluster_nodes(&nodes);
        if masters.is_empty() {
            return Err(RedisError::from((
                redis::ErrorKind::Client,
                "CLUSTER NODES lists no master",
            )));
        }
        Ok(masters)
    }

    /// One SCAN step on `node`: the next cursor (0 at the end) and the keys found.
    pub(super) async fn scan(
        &mut self,
        node: &Node,
        cursor: u64,
        pattern: &str,
    ) -> RedisResult<(u64, Vec<Vec<u8>>)> {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let result = match (node, &mut self.connection) {
            (Node::Master { host, port }, Connection::Cluster(cluster)) => {
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.clone(),
                    port: *port,
                });
                match cluster.route_command(scan, routing).await {
                    Ok(value) => redis::from_redis_value(value).map_err(RedisError::from),
                    Err(error) => Err(error),
                }
            }
            _ => scan.query_async(&mut self.connection).await,
        };
        let (cursor, keys): (String, Vec<Vec<u8>>) = self.observe(result)?;
        let cursor = cursor.parse().map_err(|_| {
            RedisError::from((
                redis::ErrorKind::Parse,
                "SCAN returned a cursor that is not a number",
            ))
        })?;
        Ok((cursor, keys))
    }

    fn observe<T>(&self, result: RedisResult<T>) -> RedisResult<T> {
        if let Err(error) = &result
            && (error.is_io_error() || error.is_unrecoverable_error() || error.is_timeout())
        {
            // The connection may be replaced: name the next one.
            self.named.store(false, Ordering::Release);
        }
        result
    }
}

/// How many keys a SCAN step looks at.
const SCAN_COUNT: usize = 1000;

/// The masters listed by CLUSTER NODES: `<id> <ip:port@cport[,hostname]> <flags> ...`.
fn parse_cluster_nodes(text: &str) -> Vec<Node> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let _id = fields.next()?;
            let address = fields.next()?;
            let flags = fields.next()?;
            let flags: Vec<&str> = flags.split(',').collect();
            if !flags.contains(&"master")
                || flags
                    .iter()
                    .any(|f| f.starts_with("fail") || *f == "noaddr")
            {
                return None;
            }
            let address = address.split([',', '@']).next()?;
            let (host, port) = address.rsplit_once(':')?;
            let port = port.parse().ok()?;
            (!host.is_empty() && port != 0).then(|| Node::Master {
                host: host.to_owned(),
                port,
            })
        })
        .collect()
}

/// A Redis failure as a store error that says what was being done.
pub(super) fn failed(what: &str, error: RedisError) -> StoreError {
    StoreError::Backend(format!("Redis: {what}: {error}"))
}

/// Whether Redis refused a command because the key holds another type of value.
pub(super) fn is_wrong_type(error: &RedisError) -> bool {
    error.code() == Some("WRONGTYPE")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_nodes_lists_the_reachable_masters() {
        let text = "\
07c3 127.0.0.1:30004@31004,host-a slave e7d1 0 1426238317239 4 connected
67ed 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f 127.0.0.1:30003@31003 master,fail - 0 1426238318243 3 connected 10923-16383
e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460
aaaa :0@0 master,noaddr - 0 0 1 connected
";
        assert_eq!(
            parse_cluster_nodes(text),
            [
                Node::Master {
                    host: "127.0.0.1".into(),
                    port: 30002
                },
                Node::Master {
                    host: "127.0.0.1".into(),
                    port: 30001
                },
            ]
        );
        assert!(parse_cluster_nodes("garbage\n\n").is_empty());
    }
}
