//! The user directory in Redis ([`RedisDirectory`]), shared by every edge instance
//! and written by the `cache` sink; built with the `redis` feature.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{
    DEFAULT_PREFIX, Directory, DirectoryError, DirectoryFuture, DirectoryUpdate, DirectoryWriter,
    pick_active, relation_key,
};
use orderflow_pipelines::records::{User, UserStatus};

impl From<redis::RedisError> for DirectoryError {
    fn from(error: redis::RedisError) -> Self {
        Self::Unavailable(error.to_string())
    }
}

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
