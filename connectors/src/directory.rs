//! The user table and buyer relations as the edges read them (placeholder of the
//! lead's branch: the in-process directory only; replaced by the full module with
//! the Redis directory when that branch is merged).

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::RwLock;

use orderflow_pipelines::records::{BuyerSeller, User, UserStatus};

/// The future a [`Directory`] read returns.
pub type DirectoryFuture<'a, T> =
    Pin<Box<dyn Future<Output = Result<T, DirectoryError>> + Send + 'a>>;

/// Reads of the user table and the buyer relations.
pub trait Directory: Send + Sync + std::fmt::Debug {
    /// The user with this id (DELETED ones included).
    fn user(&self, id: &str) -> DirectoryFuture<'_, Option<User>>;
    /// The ACTIVE user with this lower-case email, if any.
    fn user_by_email(&self, email: &str) -> DirectoryFuture<'_, Option<User>>;
    /// Whether the buyer has a PAID order from the seller.
    fn has_bought_from(&self, buyer_id: &str, seller_id: &str) -> DirectoryFuture<'_, bool>;
}

/// Why a directory read failed.
#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    /// The backing store is unavailable.
    #[error("user directory unavailable: {0}")]
    Unavailable(String),
}

/// The directory in this process's memory.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    users: RwLock<HashMap<String, User>>,
    emails: RwLock<HashMap<String, String>>,
    relations: RwLock<BTreeSet<String>>,
}

impl MemoryDirectory {
    /// Applies a record of auth.users (None: a tombstone).
    pub fn apply_user(&self, key: &str, user: Option<&User>) {
        let (Ok(mut users), Ok(mut emails)) = (self.users.write(), self.emails.write()) else {
            return;
        };
        if let Some(old) = users.remove(key)
            && emails.get(&old.email).is_some_and(|id| id == key)
        {
            emails.remove(&old.email);
        }
        if let Some(user) = user {
            if user.status == UserStatus::Active {
                emails.insert(user.email.clone(), key.to_string());
            }
            users.insert(key.to_string(), user.clone());
        }
    }

    /// Applies a record of auth.relations (None: a tombstone).
    pub fn apply_relation(&self, key: &str, relation: Option<&BuyerSeller>) {
        if let Ok(mut relations) = self.relations.write() {
            match relation {
                Some(_) => relations.insert(key.to_string()),
                None => relations.remove(key),
            };
        }
    }
}

impl Directory for MemoryDirectory {
    fn user(&self, id: &str) -> DirectoryFuture<'_, Option<User>> {
        let found = self.users.read().ok().and_then(|u| u.get(id).cloned());
        Box::pin(async move { Ok(found) })
    }

    fn user_by_email(&self, email: &str) -> DirectoryFuture<'_, Option<User>> {
        let id = self.emails.read().ok().and_then(|e| e.get(email).cloned());
        let found = id.and_then(|id| self.users.read().ok().and_then(|u| u.get(&id).cloned()));
        Box::pin(async move { Ok(found) })
    }

    fn has_bought_from(&self, buyer_id: &str, seller_id: &str) -> DirectoryFuture<'_, bool> {
        let key = format!("{buyer_id}:{seller_id}");
        let found = self.relations.read().is_ok_and(|r| r.contains(&key));
        Box::pin(async move { Ok(found) })
    }
}
