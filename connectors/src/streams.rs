//! What the edges read and write: one publisher for the ingress topics and the
//! views the edges answer from, each kept by a topic reader over every partition —
//! replies to pending requests (`edge.replies`, live), orders (`orders.events`, as a
//! table), the user directory (`auth.users` + `auth.relations`, as a table, unless
//! Redis holds it), chat deliveries (`chat.deliveries`, live, to the connections of
//! each recipient on this instance) and chat history (the chat fan-out's
//! `chat-history` changelog, as a table). Ready once every table has been read to
//! the end it had at start.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use orderflow_pipelines::chat_fanout::{ChatHistoryEntry, history_prefix, room_history};
use orderflow_pipelines::records::{BuyerSeller, ChatDelivery, OrderEvent, Reply, User, topics};
use orderflow_runtime::publish::{PublishError, Publisher};
use orderflow_runtime::reader::{ReadTopic, ReaderConfig, ReaderError, RecordDecoder, TopicReader};
use orderflow_runtime::registry::RegistryClient;
use orderflow_runtime::topology::Topology;
use orderflow_runtime::wire::TopicSerde;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::directory::{
    Directory, DirectoryRecord, DirectoryUpdate, DirectoryWriter, MemoryDirectory,
};

/// The chat fan-out's history store, whose changelog the chat edge reads.
pub const CHAT_HISTORY_STORE: &str = "chat-history";

/// How the edges reach the streams.
#[derive(Debug, Clone)]
pub struct StreamsConfig {
    /// `bootstrap.servers`.
    pub bootstrap: String,
    /// Extra librdkafka settings for every client.
    pub overrides: Vec<(String, String)>,
    /// The topology (topic names, the app that names the history changelog).
    pub topology: Arc<Topology>,
    /// The registered schemas.
    pub serde: Arc<TopicSerde>,
    /// The registry, for writer schemas not seen yet.
    pub registry: Arc<RegistryClient>,
    /// The user directory when it is kept elsewhere (Redis, filled by the `cache`
    /// sink); `None` keeps it in this process, read from the topics.
    pub directory: Option<Arc<dyn Directory>>,
    /// How many deliveries may wait for one slow connection before it is dropped.
    pub delivery_buffer: usize,
}

/// Why the edges could not reach the streams.
#[derive(Debug, thiserror::Error)]
pub enum StreamsError {
    /// A reader could not start.
    #[error("{0}")]
    Reader(#[from] ReaderError),
    /// The publisher could not start.
    #[error("{0}")]
    Publish(#[from] PublishError),
}

/// The edges' handle on the streams. Shared by every request and connection.
#[derive(Debug)]
pub struct EdgeStreams {
    publisher: Publisher,
    replies: Arc<Replies>,
    orders: Arc<OrdersView>,
    directory: Arc<dyn Directory>,
    chat: Arc<ChatView>,
    readers: Vec<TopicReader>,
}

impl EdgeStreams {
    /// Starts the publisher and the readers. Returns at once; [`EdgeStreams::is_ready`]
    /// turns true when the tables have caught up.
    pub fn start(config: &StreamsConfig) -> Result<Arc<EdgeStreams>, StreamsError> {
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let reader = |what: &str| {
            let mut c = ReaderConfig::new(&config.bootstrap, format!("{what}-{instance}"));
            c.overrides = config.overrides.clone();
            c
        };
        let decoder = RecordDecoder::new(
            config.serde.clone(),
            config.registry.clone(),
            tokio::runtime::Handle::current(),
        );
        let publisher = Publisher::new(&config.bootstrap, &config.overrides, config.serde.clone())?;
        let replies = Arc::new(Replies::default());
        let orders = Arc::new(OrdersView::default());
        let chat = Arc::new(ChatView::new(config.delivery_buffer));
        let mut readers = Vec::new();

        let (r, d) = (replies.clone(), decoder.clone());
        readers.push(TopicReader::spawn(
            &reader("replies"),
            &[ReadTopic::live(topics::EDGE_REPLIES)],
            move |batch| {
                for record in batch {
                    match d.decode::<Reply>(&record) {
                        Ok(Some(reply)) => r.deliver(reply),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "edge: skipped a reply"),
                    }
                }
            },
        )?);

        let (o, d) = (orders.clone(), decoder.clone());
        readers.push(TopicReader::spawn(
            &reader("orders"),
            &[ReadTopic::table(topics::ORDERS_EVENTS)],
            move |batch| {
                for record in batch {
                    match d.decode::<OrderEvent>(&record) {
                        Ok(Some(event)) => o.apply(event),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "edge: skipped an order event"),
                    }
                }
                o.changed.notify_waiters();
            },
        )?);

        let directory: Arc<dyn Directory> = match &config.directory {
            Some(directory) => directory.clone(),
            None => {
                let memory = Arc::new(MemoryDirectory::new());
                let (m, d) = (memory.clone(), decoder.clone());
                let runtime = tokio::runtime::Handle::current();
                readers.push(TopicReader::spawn(
                    &reader("users"),
                    &[
                        ReadTopic::table(topics::AUTH_USERS),
                        ReadTopic::table(topics::AUTH_RELATIONS),
                    ],
                    move |batch| {
                        let mut records = Vec::with_capacity(batch.len());
                        for record in batch {
                            let decoded = if record.topic == topics::AUTH_USERS {
                                d.decode::<User>(&record)
                                    .map(|user| DirectoryRecord::User(record.key, user))
                            } else {
                                d.decode::<BuyerSeller>(&record)
                                    .map(|rel| DirectoryRecord::Relation(record.key, rel))
                            };
                            match decoded {
                                Ok(r) => records.push(r),
                                Err(e) => {
                                    tracing::warn!(error = %e, "edge: skipped a user or relation")
                                }
                            }
                        }
                        let updates: Vec<DirectoryUpdate<'_>> =
                            records.iter().map(DirectoryRecord::update).collect();
                        // In memory: the future is ready at once.
                        if let Err(e) = runtime.block_on(m.apply_batch(&updates)) {
                            tracing::warn!(error = %e, "edge: user directory update failed");
                        }
                    },
                )?);
                memory
            }
        };

        let (c, d) = (chat.clone(), decoder);
        readers.push(TopicReader::spawn(
            &reader("deliveries"),
            &[ReadTopic::live(topics::CHAT_DELIVERIES)],
            move |batch| {
                for record in batch {
                    match d.decode::<ChatDelivery>(&record) {
                        Ok(Some(delivery)) => c.deliver(delivery),
                        Ok(None) => {}
                        Err(e) => tracing::warn!(error = %e, "edge: skipped a delivery"),
                    }
                }
            },
        )?);

        let changelog = Topology::changelog_topic(&config.topology.app, CHAT_HISTORY_STORE);
        let c = chat.clone();
        readers.push(TopicReader::spawn(
            &reader("history"),
            &[ReadTopic::table(changelog)],
            move |batch| {
                if let Ok(mut entries) = c.history.write() {
                    for record in batch {
                        match record.value {
                            Some(bytes) => entries.insert(record.key, bytes),
                            None => entries.remove(&record.key),
                        };
                    }
                }
            },
        )?);

        Ok(Arc::new(EdgeStreams {
            publisher,
            replies,
            orders,
            directory,
            chat,
            readers,
        }))
    }

    /// The publisher for the ingress topics.
    pub fn publisher(&self) -> &Publisher {
        &self.publisher
    }

    /// Replies to pending requests.
    pub fn replies(&self) -> &Replies {
        &self.replies
    }

    /// The orders.
    pub fn orders(&self) -> &OrdersView {
        &self.orders
    }

    /// The user directory.
    pub fn directory(&self) -> &Arc<dyn Directory> {
        &self.directory
    }

    /// Chat deliveries and history.
    pub fn chat(&self) -> &ChatView {
        &self.chat
    }

    /// Whether every table has been read to the end it had at start.
    pub fn is_ready(&self) -> bool {
        self.readers.iter().all(TopicReader::is_caught_up)
    }

    /// Waits until [`EdgeStreams::is_ready`].
    pub async fn ready(&self) {
        for reader in &self.readers {
            reader.caught_up().await;
        }
    }
}

/// Requests waiting for their reply on `edge.replies`.
#[derive(Debug, Default)]
pub struct Replies {
    waiting: Mutex<HashMap<String, oneshot::Sender<Reply>>>,
}

/// One request's wait for its reply; dropping it stops waiting.
#[derive(Debug)]
pub struct ReplyWaiter<'a> {
    replies: &'a Replies,
    request_id: String,
    rx: Option<oneshot::Receiver<Reply>>,
}

impl Replies {
    /// Starts waiting for the reply to `request_id`. Call before publishing the
    /// request, so a quick reply cannot come before anyone waits for it.
    pub fn expect(&self, request_id: &str) -> ReplyWaiter<'_> {
        let (tx, rx) = oneshot::channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(request_id.to_string(), tx);
        }
        ReplyWaiter {
            replies: self,
            request_id: request_id.to_string(),
            rx: Some(rx),
        }
    }

    fn deliver(&self, reply: Reply) {
        let waiter = self
            .waiting
            .lock()
            .ok()
            .and_then(|mut w| w.remove(&reply.request_id));
        if let Some(tx) = waiter {
            let _ = tx.send(reply);
        }
    }
}

impl ReplyWaiter<'_> {
    /// The reply, or `None` when none came within `timeout`.
    pub async fn wait(mut self, timeout: Duration) -> Option<Reply> {
        let rx = self.rx.take()?;
        tokio::time::timeout(timeout, rx).await.ok()?.ok()
    }
}

impl Drop for ReplyWaiter<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.replies.waiting.lock() {
            waiting.remove(&self.request_id);
        }
    }
}

/// Every order's latest event, by order id, buyer and seller.
#[derive(Debug, Default)]
pub struct OrdersView {
    inner: RwLock<OrdersInner>,
    changed: Notify,
}

#[derive(Debug, Default)]
struct OrdersInner {
    by_id: HashMap<String, OrderEvent>,
    by_buyer: HashMap<String, BTreeSet<String>>,
    by_seller: HashMap<String, BTreeSet<String>>,
}

impl OrdersView {
    fn apply(&self, event: OrderEvent) {
        let Ok(mut inner) = self.inner.write() else {
            return;
        };
        if inner
            .by_id
            .get(&event.order_id)
            .is_some_and(|known| known.version >= event.version)
        {
            return;
        }
        inner
            .by_buyer
            .entry(event.buyer_id.clone())
            .or_default()
            .insert(event.order_id.clone());
        inner
            .by_seller
            .entry(event.seller_id.clone())
            .or_default()
            .insert(event.order_id.clone());
        inner.by_id.insert(event.order_id.clone(), event);
    }

    /// The latest event of an order.
    pub fn get(&self, order_id: &str) -> Option<OrderEvent> {
        self.inner.read().ok()?.by_id.get(order_id).cloned()
    }

    /// The orders a user bought, latest event each, most recently changed first.
    pub fn of_buyer(&self, user_id: &str) -> Vec<OrderEvent> {
        self.list(user_id, |i| &i.by_buyer)
    }

    /// The orders a user sold, latest event each, most recently changed first.
    pub fn of_seller(&self, user_id: &str) -> Vec<OrderEvent> {
        self.list(user_id, |i| &i.by_seller)
    }

    fn list(
        &self,
        user_id: &str,
        index: impl Fn(&OrdersInner) -> &HashMap<String, BTreeSet<String>>,
    ) -> Vec<OrderEvent> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        let mut out: Vec<OrderEvent> = index(&inner)
            .get(user_id)
            .into_iter()
            .flatten()
            .filter_map(|id| inner.by_id.get(id).cloned())
            .collect();
        out.sort_by(|a, b| b.at.cmp(&a.at).then_with(|| a.order_id.cmp(&b.order_id)));
        out
    }

    /// Waits up to `timeout` for the order to have an event of at least
    /// `min_version`; the latest event then, or whatever is known at the timeout.
    pub async fn wait_for(
        &self,
        order_id: &str,
        min_version: i64,
        timeout: Duration,
    ) -> Option<OrderEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let known = self.get(order_id);
            if known.as_ref().is_some_and(|e| e.version >= min_version) {
                return known;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return self.get(order_id);
            }
        }
    }
}

/// Identifies one subscribed connection.
pub type ConnectionId = u64;

/// Chat deliveries to this instance's connections, and each room's history.
#[derive(Debug)]
pub struct ChatView {
    buffer: usize,
    next_id: AtomicU64,
    connections: RwLock<HashMap<String, BTreeMap<ConnectionId, mpsc::Sender<ChatDelivery>>>>,
    history: RwLock<BTreeMap<String, Vec<u8>>>,
}

impl ChatView {
    fn new(buffer: usize) -> Self {
        ChatView {
            buffer: buffer.max(1),
            next_id: AtomicU64::new(1),
            connections: RwLock::default(),
            history: RwLock::default(),
        }
    }

    /// Subscribes a connection of `user_id` to its deliveries. The channel is
    /// bounded: a connection that falls that far behind is dropped (its receiver
    /// ends), so one slow reader never holds up the others.
    pub fn subscribe(&self, user_id: &str) -> (ConnectionId, mpsc::Receiver<ChatDelivery>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(self.buffer);
        if let Ok(mut connections) = self.connections.write() {
            connections
                .entry(user_id.to_string())
                .or_default()
                .insert(id, tx);
        }
        (id, rx)
    }

    /// Ends a subscription.
    pub fn unsubscribe(&self, user_id: &str, id: ConnectionId) {
        if let Ok(mut connections) = self.connections.write()
            && let Some(of_user) = connections.get_mut(user_id)
        {
            of_user.remove(&id);
            if of_user.is_empty() {
                connections.remove(user_id);
            }
        }
    }

    /// How many connections are subscribed.
    pub fn connection_count(&self) -> usize {
        self.connections
            .read()
            .map(|c| c.values().map(BTreeMap::len).sum())
            .unwrap_or(0)
    }

    fn deliver(&self, delivery: ChatDelivery) {
        let Ok(mut connections) = self.connections.write() else {
            return;
        };
        let Some(of_user) = connections.get_mut(&delivery.recipient_id) else {
            return;
        };
        of_user.retain(|id, tx| match tx.try_send(delivery.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                tracing::info!(connection = id, user = %delivery.recipient_id, "chat: dropping a connection that does not keep up");
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
        if of_user.is_empty() {
            connections.remove(&delivery.recipient_id);
        }
    }

    /// The last `limit` messages of a room, oldest first.
    pub fn history(&self, room_id: &str, limit: usize) -> Vec<ChatHistoryEntry> {
        let Ok(entries) = self.history.read() else {
            return Vec::new();
        };
        let prefix = history_prefix(room_id);
        let in_room = entries
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, v)| (k.as_str(), v.as_slice()));
        room_history(in_room, room_id, limit).unwrap_or_else(|e| {
            tracing::warn!(error = %e, room = room_id, "chat: unreadable history");
            Vec::new()
        })
    }
}
