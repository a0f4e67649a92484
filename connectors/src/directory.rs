//! The user directory the edges read: the user table (`auth.users`, [`User`] keyed by
//! user id) and the buyer→seller relations (`auth.relations`, [`BuyerSeller`] keyed
//! `<buyerId>:<sellerId>`), kept in process ([`MemoryDirectory`]) or in Redis
//! ([`RedisDirectory`]).
//!
//! The edges only read ([`Directory`]); whatever follows the two compacted topics (a
//! topic reader in the edge's own process, or the `cache` sink writing Redis) applies
//! their records in offset order per key through [`DirectoryWriter`].
//!
//! # Why the email index is a set
//!
//! `auth.users` is keyed by user id, so the records of two accounts that shared an
//! email over time (one DELETED, then the email registered again under a new id) may
//! sit on different partitions, and a reader sees them in any interleaving: the new
//! account's ACTIVE record, then an old ACTIVE record of the deleted one, then its
//! DELETED record. A plain `email → id` map would end up pointing at the deleted id or
//! at nothing. Both implementations therefore keep, per email, the *set* of ids whose
//! latest record is ACTIVE with that email. Each applied record first removes its id
//! from the set of the email its previous record had, so the index depends only on the
//! latest record of each id and converges whatever the interleaving or replays. A
//! lookup returns the ACTIVE member; if a replay briefly leaves two, the one created
//! last wins (then the one updated last, then the greater id).

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{PoisonError, RwLock};
use std::time::Duration;

use orderflow_pipelines::records::{BuyerSeller, User, UserStatus};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// The env var the CLI reads for the Redis directory's URL (`redis://host:port/db`).
pub const REDIS_URL_ENV: &str = "REDIS_URL";

/// The key prefix [`RedisDirectory::connect`] uses.
pub const DEFAULT_PREFIX: &str = "orderflow:";

/// What a [`Directory`] call returns: a boxed future, so the trait is object safe and
/// the edge holds an `Arc<dyn Directory>`.
pub type DirectoryFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, DirectoryError>> + Send + 'a>>;

/// The read side the HTTP and WebSocket edges use.
pub trait Directory: Send + Sync + fmt::Debug {
    /// The user with this id (DELETED ones included).
    fn user(&self, id: &str) -> DirectoryFuture<'_, Option<User>>;
    /// The ACTIVE user with this lower-case email, if any.
    fn user_by_email(&self, email: &str) -> DirectoryFuture<'_, Option<User>>;
    /// Whether the buyer has a PAID order from the seller (a BuyerSeller relation exists).
    fn has_bought_from(&self, buyer_id: &str, seller_id: &str) -> DirectoryFuture<'_, bool>;
}

/// Why a directory call failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The store could not be reached or did not answer (Redis down, timeout, a
    /// refused command). Retry later; the edge answers 503.
    #[error("user directory unavailable: {0}")]
    Unavailable(String),
    /// An entry could not be decoded. Retrying does not help; re-applying the topic's
    /// record for that key (a replay) repairs it.
    #[error("user directory entry {key} is corrupt: {message}")]
    Corrupt {
        /// The entry (for Redis, the full key).
        key: String,
        /// What was wrong with it.
        message: String,
    },
}

impl DirectoryError {
    /// Whether the same call may succeed later.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<redis::RedisError> for DirectoryError {
    fn from(error: redis::RedisError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

/// One record of `auth.users` or `auth.relations`, as the writer applies it. A `None`
/// value is a tombstone: the key is gone from the compacted topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirectoryUpdate<'a> {
    /// A record of `auth.users`, keyed by user id.
    User {
        /// The record key (the user id).
        key: &'a str,
        /// The record value; `None` for a tombstone.
        user: Option<&'a User>,
    },
    /// A record of `auth.relations`, keyed `<buyerId>:<sellerId>`.
    Relation {
        /// The record key.
        key: &'a str,
        /// The record value; `None` for a tombstone.
        relation: Option<&'a BuyerSeller>,
    },
}

/// An owned record of `auth.users` or `auth.relations`, as a feeder decodes it; a
/// batch of them, kept in offset order, lends [`DirectoryUpdate`]s to
/// [`DirectoryWriter::apply_batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryRecord {
    /// A record of `auth.users`; `None` for a tombstone.
    User(String, Option<User>),
    /// A record of `auth.relations`; `None` for a tombstone.
    Relation(String, Option<BuyerSeller>),
}

impl DirectoryRecord {
    /// The update this record applies.
    pub fn update(&self) -> DirectoryUpdate<'_> {
        match self {
            DirectoryRecord::User(key, user) => DirectoryUpdate::User {
                key,
                user: user.as_ref(),
            },
            DirectoryRecord::Relation(key, relation) => DirectoryUpdate::Relation {
                key,
                relation: relation.as_ref(),
            },
        }
    }
}

/// The write side: applies records of `auth.users` and `auth.relations`. Records of
/// one key must be applied in offset order; records of different keys in any order.
/// Applying records again (a replay from an earlier offset) converges to the same
/// state once the replay has caught up.
pub trait DirectoryWriter: Directory {
    /// Applies the records in order. The Redis directory sends a batch in one round
    /// trip; each record is applied atomically, so no reader ever sees the email index
    /// point at an id whose record says otherwise. After an error part of the batch
    /// may be applied: apply the whole batch again (a replay, which converges) before
    /// committing the offsets it came from.
    fn apply_batch<'a>(&'a self, updates: &'a [DirectoryUpdate<'a>]) -> DirectoryFuture<'a, ()>;

    /// Applies one record of `auth.users`; `None` is a tombstone.
    fn apply_user<'a>(&'a self, key: &'a str, user: Option<&'a User>) -> DirectoryFuture<'a, ()> {
        Box::pin(async move {
            self.apply_batch(&[DirectoryUpdate::User { key, user }])
                .await
        })
    }

    /// Applies one record of `auth.relations`; `None` is a tombstone.
    fn apply_relation<'a>(
        &'a self,
        key: &'a str,
        relation: Option<&'a BuyerSeller>,
    ) -> DirectoryFuture<'a, ()> {
        Box::pin(async move {
            self.apply_batch(&[DirectoryUpdate::Relation { key, relation }])
                .await
        })
    }
}

/// The key of `auth.relations` for a buyer and a seller.
pub fn relation_key(buyer_id: &str, seller_id: &str) -> String {
    format!("{buyer_id}:{seller_id}")
}

/// Of the users an email index lists, the ACTIVE one with that email (see the module
/// docs for the tie rule). Members whose record says otherwise are ignored, so a stale
/// index entry can never return a wrong user.
fn pick_active(email: &str, candidates: impl IntoIterator<Item = User>) -> Option<User> {
    candidates
        .into_iter()
        .filter(|user| user.status == UserStatus::Active && user.email == email)
        .max_by(|a, b| {
            (a.created_at, a.updated_at, &a.id).cmp(&(b.created_at, b.updated_at, &b.id))
        })
}

// ---------------------------------------------------------------------------------
// In process
// ---------------------------------------------------------------------------------

/// The directory in process memory: for one edge process that follows the topics
/// itself, and for tests. Reads take a shared lock and clone one record.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    /// All three tables behind one lock, so a batch is applied atomically and a
    /// reader never sees the email index ahead of the user table.
    tables: RwLock<Tables>,
}

#[derive(Debug, Default)]
struct Tables {
    /// Every user by id, DELETED ones included.
    users: HashMap<String, User>,
    /// Email → ids whose current record is ACTIVE with that email (normally one).
    emails: HashMap<String, BTreeSet<String>>,
    /// Relation records by their key `<buyerId>:<sellerId>`.
    relations: HashMap<String, BuyerSeller>,
}

impl Tables {
    fn apply(&mut self, update: &DirectoryUpdate<'_>) {
        match *update {
            DirectoryUpdate::User { key, user } => {
                if let Some(previous) = self.users.get(key)
                    && let Some(ids) = self.emails.get_mut(&previous.email)
                {
                    ids.remove(key);
                    if ids.is_empty() {
                        self.emails.remove(&previous.email);
                    }
                }
                match user {
                    Some(user) => {
                        if user.status == UserStatus::Active {
                            self.emails
                                .entry(user.email.clone())
                                .or_default()
                                .insert(key.to_owned());
                        }
                        self.users.insert(key.to_owned(), user.clone());
                    }
                    None => {
                        self.users.remove(key);
                    }
                }
            }
            DirectoryUpdate::Relation { key, relation } => match relation {
                Some(relation) => {
                    self.relations.insert(key.to_owned(), relation.clone());
                }
                None => {
                    self.relations.remove(key);
                }
            },
        }
    }
}

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A writer can only panic on allocation failure, between whole-record steps,
    /// so a poisoned lock still guards usable tables.
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Tables> {
        self.tables.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Directory for MemoryDirectory {
    fn user(&self, id: &str) -> DirectoryFuture<'_, Option<User>> {
        let user = self.read().users.get(id).cloned();
        Box::pin(std::future::ready(Ok(user)))
    }

    fn user_by_email(&self, email: &str) -> DirectoryFuture<'_, Option<User>> {
        let tables = self.read();
        let candidates = tables
            .emails
            .get(email)
            .into_iter()
            .flatten()
            .filter_map(|id| tables.users.get(id).cloned());
        let user = pick_active(email, candidates);
        drop(tables);
        Box::pin(std::future::ready(Ok(user)))
    }

    fn has_bought_from(&self, buyer_id: &str, seller_id: &str) -> DirectoryFuture<'_, bool> {
        let found = self
            .read()
            .relations
            .contains_key(&relation_key(buyer_id, seller_id));
        Box::pin(std::future::ready(Ok(found)))
    }
}

impl DirectoryWriter for MemoryDirectory {
    fn apply_batch<'a>(&'a self, updates: &'a [DirectoryUpdate<'a>]) -> DirectoryFuture<'a, ()> {
        let mut tables = self.tables.write().unwrap_or_else(PoisonError::into_inner);
        // One lock for the whole batch: readers see it all or none of it.
        for update in updates {
            tables.apply(update);
        }
        drop(tables);
        Box::pin(std::future::ready(Ok(())))
    }
}

// ---------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------

/// Applies records in order, each atomically (a Lua script runs alone on the server).
/// `ARGV[1]` is the key prefix, then four arguments per record: the operation, the
/// record key, the JSON value (empty for tombstones) and, for users, the email.
///
/// The script reads keys it does not declare (the previous user's email set), so it
/// needs a standalone Redis (or one where every key hashes to one slot), not a cluster.
const APPLY_SCRIPT: &str = r"
local p = ARGV[1]
for i = 2, #ARGV, 4 do
  local op, key, value, email = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  if op == 'rel' then
    redis.call('SET', p .. 'rel:' .. key, value)
  elseif op == 'rel-' then
    redis.call('DEL', p .. 'rel:' .. key)
  else
    local ukey = p .. 'user:' .. key
    local previous = redis.call('GET', ukey)
    if previous then
      local ok, old = pcall(cjson.decode, previous)
      if ok and type(old) == 'table' and type(old.email) == 'string' then
        redis.call('SREM', p .. 'email:' .. old.email, key)
      end
    end
    if op == 'active' then
      redis.call('SET', ukey, value)
      redis.call('SADD', p .. 'email:' .. email, key)
    elseif op == 'inactive' then
      redis.call('SET', ukey, value)
    elseif op == 'user-' then
      redis.call('DEL', ukey)
    else
      return redis.error_reply('orderflow directory: unknown operation ' .. op)
    end
  end
end
return (#ARGV - 1) / 4
";

/// Reads an email's index set and the records of its members in one atomic call:
/// `KEYS[1]` is the email set, `ARGV[1]` the prefix; returns id, JSON, id, JSON, …
const BY_EMAIL_SCRIPT: &str = r"
local out = {}
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local value = redis.call('GET', ARGV[1] .. 'user:' .. id)
  if value then
    table.insert(out, id)
    table.insert(out, value)
  end
end
return out
";

/// Records per script call in a batch: bounds how long one call holds the server
/// (other clients run between calls); all calls of a batch still go in one pipeline.
const RECORDS_PER_CALL: usize = 500;

/// The directory in Redis, shared by every edge instance and written by the `cache`
/// sink. Connections go through a [`ConnectionManager`], which reconnects after Redis
/// restarts; a call made while it is down fails with [`DirectoryError::Unavailable`].
/// Its feeder commits topic offsets once records are applied, so the Redis should
/// persist its data (AOF), or the feeder must replay the topics when it comes back
/// empty.
///
/// Key layout, under a prefix `<p>` (default [`DEFAULT_PREFIX`], `orderflow:`):
///
/// | key | type | value |
/// | --- | --- | --- |
/// | `<p>user:<id>` | string | the [`User`] as JSON (DELETED ones kept; removed on a tombstone), including `password_hash`, which only the edge's login check reads |
/// | `<p>email:<email>` | set | ids whose current record is ACTIVE with this lower-case email: one, except briefly during a replay (see the module docs) |
/// | `<p>rel:<buyerId>:<sellerId>` | string | the [`BuyerSeller`] as JSON; its existence is the relation |
pub struct RedisDirectory {
    connection: ConnectionManager,
    prefix: String,
    apply: redis::Script,
    by_email: redis::Script,
}

impl fmt::Debug for RedisDirectory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisDirectory")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisDirectory {
    /// Connects to the Redis at `url` (`redis://[user:password@]host:port[/db]`) with
    /// the key prefix [`DEFAULT_PREFIX`]. Fails if it cannot be reached now.
    pub async fn connect(url: &str) -> Result<Self, DirectoryError> {
        Self::connect_with_prefix(url, DEFAULT_PREFIX).await
    }

    /// Like [`connect`](Self::connect), with every key under `prefix`: several
    /// deployments (or tests) can share one Redis.
    pub async fn connect_with_prefix(url: &str, prefix: &str) -> Result<Self, DirectoryError> {
        let client = redis::Client::open(url)
            .map_err(|error| DirectoryError::Unavailable(format!("REDIS_URL {url:?}: {error}")))?;
        // Bounded waits: a read behind a login must fail (503) rather than hang while
        // Redis is away; the manager keeps reconnecting in the background.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(Duration::from_secs(5)))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_secs(2));
        let connection = ConnectionManager::new_with_config(client, config).await?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            apply: redis::Script::new(APPLY_SCRIPT),
            by_email: redis::Script::new(BY_EMAIL_SCRIPT),
        })
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether Redis answers (for `/ready`).
    pub async fn ping(&self) -> Result<(), DirectoryError> {
        let mut connection = self.connection.clone();
        redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await?;
        Ok(())
    }

    fn decode_user(key: String, json: &str) -> Result<User, DirectoryError> {
        serde_json::from_str(json).map_err(|error| DirectoryError::Corrupt {
            key,
            message: error.to_string(),
        })
    }

    /// The pipeline of script calls for a batch, `EVALSHA` so only the script's hash
    /// travels; the caller loads the script and resends on NOSCRIPT.
    fn apply_pipeline(
        &self,
        updates: &[DirectoryUpdate<'_>],
    ) -> Result<redis::Pipeline, DirectoryError> {
        let mut pipeline = redis::pipe();
        for chunk in updates.chunks(RECORDS_PER_CALL) {
            let command = pipeline
                .cmd("EVALSHA")
                .arg(self.apply.get_hash())
                .arg(0)
                .arg(&self.prefix);
            for update in chunk {
                let (op, key, value, email) = match *update {
                    DirectoryUpdate::User { key, user: None } => ("user-", key, String::new(), ""),
                    DirectoryUpdate::User {
                        key,
                        user: Some(user),
                    } => {
                        let op = match user.status {
                            UserStatus::Active => "active",
                            UserStatus::Deleted => "inactive",
                        };
                        (op, key, to_json(key, user)?, user.email.as_str())
                    }
                    DirectoryUpdate::Relation {
                        key,
                        relation: None,
                    } => ("rel-", key, String::new(), ""),
                    DirectoryUpdate::Relation {
                        key,
                        relation: Some(relation),
                    } => ("rel", key, to_json(key, relation)?, ""),
                };
                command.arg(op).arg(key).arg(value).arg(email);
            }
            command.ignore();
        }
        Ok(pipeline)
    }
}

fn to_json(key: &str, value: &impl serde::Serialize) -> Result<String, DirectoryError> {
    serde_json::to_string(value).map_err(|error| DirectoryError::Corrupt {
        key: key.to_owned(),
        message: error.to_string(),
    })
}

impl Directory for RedisDirectory {
    fn user(&self, id: &str) -> DirectoryFuture<'_, Option<User>> {
        let key = format!("{}user:{id}", self.prefix);
        let mut connection = self.connection.clone();
        Box::pin(async move {
            let json: Option<String> = redis::cmd("GET")
                .arg(&key)
                .query_async(&mut connection)
                .await?;
            json.map(|json| Self::decode_user(key, &json)).transpose()
        })
    }

    fn user_by_email(&self, email: &str) -> DirectoryFuture<'_, Option<User>> {
        let email = email.to_owned();
        let mut connection = self.connection.clone();
        Box::pin(async move {
            let found: Vec<String> = self
                .by_email
                .key(format!("{}email:{email}", self.prefix))
                .arg(&self.prefix)
                .invoke_async(&mut connection)
                .await?;
            let mut candidates = Vec::with_capacity(found.len() / 2);
            for pair in found.chunks_exact(2) {
                let key = format!("{}user:{}", self.prefix, pair[0]);
                candidates.push(Self::decode_user(key, &pair[1])?);
            }
            Ok(pick_active(&email, candidates))
        })
    }

    fn has_bought_from(&self, buyer_id: &str, seller_id: &str) -> DirectoryFuture<'_, bool> {
        let key = format!("{}rel:{}", self.prefix, relation_key(buyer_id, seller_id));
        let mut connection = self.connection.clone();
        Box::pin(async move {
            let exists: bool = redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut connection)
                .await?;
            Ok(exists)
        })
    }
}

impl DirectoryWriter for RedisDirectory {
    fn apply_batch<'a>(&'a self, updates: &'a [DirectoryUpdate<'a>]) -> DirectoryFuture<'a, ()> {
        Box::pin(async move {
            if updates.is_empty() {
                return Ok(());
            }
            let pipeline = self.apply_pipeline(updates)?;
            let mut connection = self.connection.clone();
            match pipeline.exec_async(&mut connection).await {
                Ok(()) => Ok(()),
                // The script cache is empty after a Redis restart (or SCRIPT FLUSH):
                // load it and send the batch again. Calls that ran before the error
                // are applied twice, which converges like any replay.
                Err(error)
                    if error.kind()
                        == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
                {
                    self.apply.load_async(&mut connection).await?;
                    pipeline.exec_async(&mut connection).await?;
                    Ok(())
                }
                Err(error) => Err(error.into()),
            }
        })
    }
}
