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

use orderflow_pipelines::records::{BuyerSeller, User, UserStatus};

#[cfg(feature = "redis")]
mod redis;
#[cfg(feature = "redis")]
pub use self::redis::RedisDirectory;

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
