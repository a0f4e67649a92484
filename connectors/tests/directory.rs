//! The user directory: one behaviour suite run against [`MemoryDirectory`] and against
//! [`RedisDirectory`] on a real Redis named by `TEST_REDIS_URL` (each test under its
//! own key prefix), plus Redis-only tests of the key layout, corrupt entries, a
//! flushed script cache and a Redis restart.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use orderflow_connectors::directory::{
    Directory, DirectoryError, DirectoryUpdate, DirectoryWriter, MemoryDirectory, RedisDirectory,
    relation_key,
};
use orderflow_pipelines::records::{BuyerSeller, Role, User, UserStatus};

// ---------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------

fn user(id: &str, email: &str, status: UserStatus, created_at: i64, updated_at: i64) -> User {
    User {
        id: id.to_owned(),
        email: email.to_owned(),
        role: Role::Buyer,
        display_name: format!("name of {id} at {updated_at}"),
        status,
        created_at,
        updated_at,
        password_hash: format!("$argon2id$v=19$m=19456,t=2,p=1$salt-{id}${updated_at}"),
    }
}

fn active(id: &str, email: &str, created_at: i64) -> User {
    user(id, email, UserStatus::Active, created_at, created_at)
}

fn relation(buyer: &str, seller: &str) -> BuyerSeller {
    BuyerSeller {
        buyer_id: buyer.to_owned(),
        seller_id: seller.to_owned(),
        first_paid_order_id: format!("order-{buyer}-{seller}"),
        since: 1_700_000_000_000,
    }
}

// ---------------------------------------------------------------------------------
// The behaviour suite: every case runs against both implementations
// ---------------------------------------------------------------------------------

mod behaviour {
    use super::*;

    /// Register, read by id and by email; unknown ids and emails are absent.
    pub async fn register(dir: &dyn DirectoryWriter) {
        let ann = active("ann", "ann@example.com", 1_000);
        dir.apply_user("ann", Some(&ann)).await.unwrap();

        assert_eq!(dir.user("ann").await.unwrap(), Some(ann.clone()));
        let by_email = dir.user_by_email("ann@example.com").await.unwrap();
        assert_eq!(by_email, Some(ann.clone()));
        // The credential hash is kept for the login check.
        assert_eq!(by_email.unwrap().password_hash, ann.password_hash);
        assert_eq!(dir.user("nobody").await.unwrap(), None);
        assert_eq!(dir.user_by_email("nobody@example.com").await.unwrap(), None);
    }

    /// A newer record of the same id replaces the old one; an email change moves the
    /// index entry.
    pub async fn update(dir: &dyn DirectoryWriter) {
        let ann = active("ann", "ann@example.com", 1_000);
        dir.apply_user("ann", Some(&ann)).await.unwrap();
        let mut renamed = ann.clone();
        renamed.display_name = "Ann B.".to_owned();
        renamed.password_hash = "$argon2id$new".to_owned();
        renamed.updated_at = 2_000;
        dir.apply_user("ann", Some(&renamed)).await.unwrap();
        assert_eq!(dir.user("ann").await.unwrap(), Some(renamed.clone()));
        assert_eq!(
            dir.user_by_email("ann@example.com").await.unwrap(),
            Some(renamed.clone())
        );

        let mut moved = renamed.clone();
        moved.email = "ann@elsewhere.example".to_owned();
        moved.updated_at = 3_000;
        dir.apply_user("ann", Some(&moved)).await.unwrap();
        assert_eq!(dir.user_by_email("ann@example.com").await.unwrap(), None);
        assert_eq!(
            dir.user_by_email("ann@elsewhere.example").await.unwrap(),
            Some(moved)
        );
    }

    /// A DELETED user stays readable by id and leaves the email index.
    pub async fn delete(dir: &dyn DirectoryWriter) {
        let ann = active("ann", "ann@example.com", 1_000);
        let deleted = user("ann", "ann@example.com", UserStatus::Deleted, 1_000, 2_000);
        dir.apply_user("ann", Some(&ann)).await.unwrap();
        dir.apply_user("ann", Some(&deleted)).await.unwrap();

        assert_eq!(dir.user("ann").await.unwrap(), Some(deleted));
        assert_eq!(dir.user_by_email("ann@example.com").await.unwrap(), None);
    }

    /// The email registered again under a new id maps to the new, ACTIVE user only;
    /// the deleted one keeps its record.
    pub async fn reregister_same_email(dir: &dyn DirectoryWriter) {
        let old = active("old", "bob@example.com", 1_000);
        let old_deleted = user("old", "bob@example.com", UserStatus::Deleted, 1_000, 2_000);
        let new = active("new", "bob@example.com", 3_000);
        dir.apply_user("old", Some(&old)).await.unwrap();
        dir.apply_user("old", Some(&old_deleted)).await.unwrap();
        dir.apply_user("new", Some(&new)).await.unwrap();

        assert_eq!(
            dir.user_by_email("bob@example.com").await.unwrap(),
            Some(new.clone())
        );
        assert_eq!(dir.user("old").await.unwrap(), Some(old_deleted));
        assert_eq!(dir.user("new").await.unwrap(), Some(new));
    }

    /// The two ids may sit on different partitions of `auth.users`, so a reader can
    /// see the new account first and the old account's records after it: the email
    /// must end up on the new account, and never on the old one in between.
    pub async fn reregister_across_partitions(dir: &dyn DirectoryWriter) {
        let old = active("old", "bob@example.com", 1_000);
        let old_deleted = user("old", "bob@example.com", UserStatus::Deleted, 1_000, 2_000);
        let new = active("new", "bob@example.com", 3_000);
        dir.apply_user("new", Some(&new)).await.unwrap();
        dir.apply_user("old", Some(&old)).await.unwrap();
        // Both look ACTIVE for a moment; the one registered last wins.
        assert_eq!(
            dir.user_by_email("bob@example.com").await.unwrap(),
            Some(new.clone())
        );
        dir.apply_user("old", Some(&old_deleted)).await.unwrap();
        assert_eq!(
            dir.user_by_email("bob@example.com").await.unwrap(),
            Some(new)
        );
    }

    /// A tombstone removes the user and its email entry; a tombstone for a key never
    /// seen is harmless.
    pub async fn tombstone(dir: &dyn DirectoryWriter) {
        let ann = active("ann", "ann@example.com", 1_000);
        dir.apply_user("ann", Some(&ann)).await.unwrap();
        dir.apply_user("ann", None).await.unwrap();
        assert_eq!(dir.user("ann").await.unwrap(), None);
        assert_eq!(dir.user_by_email("ann@example.com").await.unwrap(), None);

        dir.apply_user("never-seen", None).await.unwrap();
        dir.apply_relation("never:seen", None).await.unwrap();
        assert_eq!(dir.user("never-seen").await.unwrap(), None);

        // Registering after a tombstone works like the first time.
        dir.apply_user("ann", Some(&ann)).await.unwrap();
        assert_eq!(
            dir.user_by_email("ann@example.com").await.unwrap(),
            Some(ann)
        );
    }

    /// A relation is directed (buyer → seller), exists once applied and goes with a
    /// tombstone.
    pub async fn relations(dir: &dyn DirectoryWriter) {
        assert!(!dir.has_bought_from("b1", "s1").await.unwrap());
        let rel = relation("b1", "s1");
        dir.apply_relation(&relation_key("b1", "s1"), Some(&rel))
            .await
            .unwrap();
        assert!(dir.has_bought_from("b1", "s1").await.unwrap());
        assert!(!dir.has_bought_from("s1", "b1").await.unwrap());
        assert!(!dir.has_bought_from("b1", "s2").await.unwrap());
        assert!(!dir.has_bought_from("b2", "s1").await.unwrap());

        // A second PAID order re-publishes the relation: still there.
        dir.apply_relation("b1:s1", Some(&rel)).await.unwrap();
        assert!(dir.has_bought_from("b1", "s1").await.unwrap());

        dir.apply_relation("b1:s1", None).await.unwrap();
        assert!(!dir.has_bought_from("b1", "s1").await.unwrap());
    }

    /// A batch holding a whole history, applied, then replayed whole and from its
    /// middle, always ends in the same state; an empty batch is fine.
    pub async fn replayed_batches(dir: &dyn DirectoryWriter) {
        let old = active("old", "carl@example.com", 1_000);
        let mut old_renamed = old.clone();
        old_renamed.display_name = "Carl".to_owned();
        old_renamed.updated_at = 1_500;
        let old_deleted = user("old", "carl@example.com", UserStatus::Deleted, 1_000, 2_000);
        let new = active("new", "carl@example.com", 3_000);
        let dora = active("dora", "dora@example.com", 1_200);
        let rel_kept = relation("new", "dora");
        let rel_gone = relation("old", "dora");
        let history = [
            DirectoryUpdate::User {
                key: "old",
                user: Some(&old),
            },
            DirectoryUpdate::User {
                key: "dora",
                user: Some(&dora),
            },
            DirectoryUpdate::Relation {
                key: "old:dora",
                relation: Some(&rel_gone),
            },
            DirectoryUpdate::User {
                key: "old",
                user: Some(&old_renamed),
            },
            DirectoryUpdate::User {
                key: "old",
                user: Some(&old_deleted),
            },
            DirectoryUpdate::User {
                key: "new",
                user: Some(&new),
            },
            DirectoryUpdate::Relation {
                key: "new:dora",
                relation: Some(&rel_kept),
            },
            DirectoryUpdate::Relation {
                key: "old:dora",
                relation: None,
            },
        ];

        let check = async || {
            assert_eq!(dir.user("old").await.unwrap(), Some(old_deleted.clone()));
            assert_eq!(dir.user("new").await.unwrap(), Some(new.clone()));
            assert_eq!(dir.user("dora").await.unwrap(), Some(dora.clone()));
            assert_eq!(
                dir.user_by_email("carl@example.com").await.unwrap(),
                Some(new.clone())
            );
            assert_eq!(
                dir.user_by_email("dora@example.com").await.unwrap(),
                Some(dora.clone())
            );
            assert!(dir.has_bought_from("new", "dora").await.unwrap());
            assert!(!dir.has_bought_from("old", "dora").await.unwrap());
        };

        dir.apply_batch(&history).await.unwrap();
        check().await;
        dir.apply_batch(&history).await.unwrap();
        check().await;
        for start in 0..history.len() {
            dir.apply_batch(&history[start..]).await.unwrap();
            check().await;
        }
        dir.apply_batch(&[]).await.unwrap();
        check().await;
    }

    /// Random histories over a few ids, emails and relations, interleaved across keys
    /// in random order (as partitions are), applied in random batches and replayed
    /// from random offsets: after every batch, what the directory answers is exactly
    /// what the latest applied record of each key says.
    pub async fn random_histories(dir: &dyn DirectoryWriter) {
        for seed in 1..=4u64 {
            // Each round under its own ids, so rounds do not see each other.
            random_history(dir, seed, &format!("r{seed}-")).await;
        }
    }

    async fn random_history(dir: &dyn DirectoryWriter, seed: u64, ns: &str) {
        let mut rng = Rng(seed);
        let ids: Vec<String> = (0..6).map(|i| format!("{ns}u{i}")).collect();
        let emails: Vec<String> = (0..3).map(|i| format!("{ns}e{i}@example.com")).collect();
        let rel_keys: Vec<String> = (0..4)
            .map(|i| relation_key(&format!("{ns}b{}", i / 2), &format!("{ns}s{}", i % 2)))
            .collect();

        // Per key, its records in offset order.
        let mut histories: Vec<(Key, Vec<Value>)> = Vec::new();
        for (n, id) in ids.iter().enumerate() {
            let created_at = 1_000 * (n as i64 + 1);
            let records = (0..1 + rng.below(6))
                .map(|step| {
                    if rng.below(10) == 0 {
                        return Value::User(None);
                    }
                    let email = &emails[rng.below(emails.len())];
                    let status = if rng.below(10) < 6 {
                        UserStatus::Active
                    } else {
                        UserStatus::Deleted
                    };
                    Value::User(Some(user(
                        id,
                        email,
                        status,
                        created_at,
                        created_at + step as i64,
                    )))
                })
                .collect();
            histories.push((Key::User(id.clone()), records));
        }
        for key in &rel_keys {
            let (buyer, seller) = key.split_once(':').unwrap();
            let records = (0..1 + rng.below(4))
                .map(|_| Value::Relation((rng.below(3) > 0).then(|| relation(buyer, seller))))
                .collect();
            histories.push((Key::Relation(key.clone()), records));
        }

        // A first pass over every record, then a replay of a random suffix of each
        // key's history, each pass in its own interleaving.
        let first = interleave(&mut rng, &histories, |_| 0);
        let mut starts = Vec::new();
        for (_, records) in &histories {
            starts.push(rng.below(records.len() + 1));
        }
        let replay = interleave(&mut rng, &histories, |k| starts[k]);

        let mut latest: BTreeMap<Key, Value> = BTreeMap::new();
        for pass in [first, replay] {
            let mut rest = &pass[..];
            while !rest.is_empty() {
                let size = (1 + rng.below(8)).min(rest.len());
                let (batch, tail) = rest.split_at(size);
                rest = tail;
                let updates: Vec<DirectoryUpdate<'_>> = batch
                    .iter()
                    .map(|(key, value)| match (key, value) {
                        (Key::User(key), Value::User(user)) => DirectoryUpdate::User {
                            key,
                            user: user.as_ref(),
                        },
                        (Key::Relation(key), Value::Relation(relation)) => {
                            DirectoryUpdate::Relation {
                                key,
                                relation: relation.as_ref(),
                            }
                        }
                        _ => unreachable!("keys and values are generated in pairs"),
                    })
                    .collect();
                dir.apply_batch(&updates).await.unwrap();
                for (key, value) in batch {
                    latest.insert(key.clone(), value.clone());
                }
                check_against(dir, &latest, &ids, &emails, &rel_keys, seed).await;
            }
        }
    }

    async fn check_against(
        dir: &dyn DirectoryWriter,
        latest: &BTreeMap<Key, Value>,
        ids: &[String],
        emails: &[String],
        rel_keys: &[String],
        seed: u64,
    ) {
        let current = |id: &String| match latest.get(&Key::User(id.clone())) {
            Some(Value::User(Some(user))) => Some(user.clone()),
            _ => None,
        };
        for id in ids {
            assert_eq!(
                dir.user(id).await.unwrap(),
                current(id),
                "seed {seed}, id {id}"
            );
        }
        for email in emails {
            // The model of the rule: among ids whose latest record is ACTIVE with this
            // email, the one created last (created_at differs per id here).
            let expected = ids
                .iter()
                .filter_map(current)
                .filter(|u| u.status == UserStatus::Active && &u.email == email)
                .max_by_key(|u| u.created_at);
            assert_eq!(
                dir.user_by_email(email).await.unwrap(),
                expected,
                "seed {seed}, email {email}"
            );
        }
        for key in rel_keys {
            let expected = matches!(
                latest.get(&Key::Relation(key.clone())),
                Some(Value::Relation(Some(_)))
            );
            let (buyer, seller) = key.split_once(':').unwrap();
            assert_eq!(
                dir.has_bought_from(buyer, seller).await.unwrap(),
                expected,
                "seed {seed}, relation {key}"
            );
        }
    }

    #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
    enum Key {
        User(String),
        Relation(String),
    }

    #[derive(Debug, Clone)]
    enum Value {
        User(Option<User>),
        Relation(Option<BuyerSeller>),
    }

    /// The records of every key from its `start(key index)`, merged in a random order
    /// that keeps each key's own order.
    fn interleave(
        rng: &mut Rng,
        histories: &[(Key, Vec<Value>)],
        start: impl Fn(usize) -> usize,
    ) -> Vec<(Key, Value)> {
        let mut next: Vec<usize> = (0..histories.len()).map(start).collect();
        let mut out = Vec::new();
        loop {
            let open: Vec<usize> = (0..histories.len())
                .filter(|&k| next[k] < histories[k].1.len())
                .collect();
            if open.is_empty() {
                return out;
            }
            let k = open[rng.below(open.len())];
            out.push((histories[k].0.clone(), histories[k].1[next[k]].clone()));
            next[k] += 1;
        }
    }

    /// SplitMix64: deterministic, so a failure names its seed and reproduces.
    struct Rng(u64);

    impl Rng {
        fn below(&mut self, n: usize) -> usize {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            (z % n as u64) as usize
        }
    }
}

/// One test per behaviour case and implementation, so a failure names both.
macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod in_memory {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = super::MemoryDirectory::new();
                    super::behaviour::$case(&dir).await;
                }
            )*
        }

        mod in_redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let dir = super::redis_directory().await;
                    super::behaviour::$case(&dir).await;
                    super::remove_prefix(&dir).await;
                }
            )*
        }
    };
}

suite!(
    register,
    update,
    delete,
    reregister_same_email,
    reregister_across_partitions,
    tombstone,
    relations,
    replayed_batches,
    random_histories,
);

// ---------------------------------------------------------------------------------
// Redis
// ---------------------------------------------------------------------------------

/// The test Redis; a missing `TEST_REDIS_URL` fails the test (never a silent pass).
fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_REDIS_URL is not set: the Redis directory tests need a real Redis \
             (scripts/services.sh starts one and exports TEST_REDIS_URL, \
             e.g. redis://127.0.0.1:6379)"
        )
    })
}

fn unique_prefix() -> String {
    format!("test-directory-{}:", uuid::Uuid::new_v4())
}

async fn redis_directory() -> RedisDirectory {
    let url = redis_url();
    RedisDirectory::connect_with_prefix(&url, &unique_prefix())
        .await
        .unwrap_or_else(|error| panic!("cannot reach the test Redis at {url}: {error}"))
}

/// A plain connection to the test Redis, to look at and damage keys directly.
async fn raw() -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

/// Every key under the directory's prefix.
async fn keys_of(dir: &RedisDirectory) -> BTreeSet<String> {
    let mut connection = raw().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", dir.prefix()))
        .query_async(&mut connection)
        .await
        .unwrap();
    keys.into_iter().collect()
}

/// Leaves the shared test Redis as it was.
async fn remove_prefix(dir: &RedisDirectory) {
    let keys = keys_of(dir).await;
    if !keys.is_empty() {
        let mut connection = raw().await;
        redis::cmd("DEL")
            .arg(keys.into_iter().collect::<Vec<_>>())
            .query_async::<i64>(&mut connection)
            .await
            .unwrap();
    }
}

/// The documented key layout: `user:<id>` JSON with the credential hash, `email:<email>`
/// the set of ACTIVE ids, `rel:<buyer>:<seller>` the relation.
#[tokio::test]
async fn redis_key_layout() {
    let dir = redis_directory().await;
    let p = dir.prefix().to_owned();
    let ann = active("ann", "ann@example.com", 1_000);
    let gone = user(
        "gone",
        "gone@example.com",
        UserStatus::Deleted,
        1_000,
        2_000,
    );
    let rel = relation("ann", "sam");
    dir.apply_batch(&[
        DirectoryUpdate::User {
            key: "ann",
            user: Some(&ann),
        },
        DirectoryUpdate::User {
            key: "gone",
            user: Some(&gone),
        },
        DirectoryUpdate::Relation {
            key: "ann:sam",
            relation: Some(&rel),
        },
    ])
    .await
    .unwrap();

    let expected: BTreeSet<String> = [
        format!("{p}user:ann"),
        format!("{p}user:gone"),
        format!("{p}email:ann@example.com"),
        format!("{p}rel:ann:sam"),
    ]
    .into_iter()
    .collect();
    assert_eq!(keys_of(&dir).await, expected);

    let mut connection = raw().await;
    let json: String = redis::cmd("GET")
        .arg(format!("{p}user:ann"))
        .query_async(&mut connection)
        .await
        .unwrap();
    let stored: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(stored["password_hash"], ann.password_hash.as_str());
    assert_eq!(stored["status"], "ACTIVE");
    let members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{p}email:ann@example.com"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(members, vec!["ann".to_owned()]);
    let json: String = redis::cmd("GET")
        .arg(format!("{p}rel:ann:sam"))
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(serde_json::from_str::<BuyerSeller>(&json).unwrap(), rel);

    // No stale index entries: an email change, a delete and a tombstone take the id
    // out of its old email set (and an empty set is gone), also when an old account's
    // records arrive after the new account's.
    let mut moved = ann.clone();
    moved.email = "ann@new.example".to_owned();
    moved.updated_at = 2_000;
    let old = active("old", "gone@example.com", 500);
    let old_deleted = user("old", "gone@example.com", UserStatus::Deleted, 500, 600);
    let back = active("gone", "gone@example.com", 1_000);
    dir.apply_user("ann", Some(&moved)).await.unwrap();
    dir.apply_user("gone", Some(&back)).await.unwrap();
    dir.apply_user("old", Some(&old)).await.unwrap();
    assert_eq!(
        members_of(&dir, "gone@example.com").await,
        vec!["gone".to_owned(), "old".to_owned()]
    );
    dir.apply_user("old", Some(&old_deleted)).await.unwrap();
    assert_eq!(
        members_of(&dir, "gone@example.com").await,
        vec!["gone".to_owned()]
    );
    assert_eq!(
        members_of(&dir, "ann@new.example").await,
        vec!["ann".to_owned()]
    );
    dir.apply_user("gone", None).await.unwrap();
    let expected: BTreeSet<String> = [
        format!("{p}user:ann"),
        format!("{p}user:old"),
        format!("{p}email:ann@new.example"),
        format!("{p}rel:ann:sam"),
    ]
    .into_iter()
    .collect();
    assert_eq!(keys_of(&dir).await, expected);

    remove_prefix(&dir).await;
}

/// The ids in an email's index set, sorted.
async fn members_of(dir: &RedisDirectory, email: &str) -> Vec<String> {
    let mut connection = raw().await;
    let mut members: Vec<String> = redis::cmd("SMEMBERS")
        .arg(format!("{}email:{email}", dir.prefix()))
        .query_async(&mut connection)
        .await
        .unwrap();
    members.sort();
    members
}

/// An entry that is not a User reads as Corrupt naming its key, not as absent.
#[tokio::test]
async fn redis_corrupt_entry() {
    let dir = redis_directory().await;
    let key = format!("{}user:broken", dir.prefix());
    let mut connection = raw().await;
    redis::cmd("SET")
        .arg(&key)
        .arg("{not json")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    match dir.user("broken").await {
        Err(error @ DirectoryError::Corrupt { .. }) => {
            assert!(!error.is_retriable());
            let DirectoryError::Corrupt { key: named, .. } = error else {
                unreachable!()
            };
            assert_eq!(named, key);
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    // Applying the topic's record for the key repairs it.
    let fixed = active("broken", "fixed@example.com", 1_000);
    dir.apply_user("broken", Some(&fixed)).await.unwrap();
    assert_eq!(dir.user("broken").await.unwrap(), Some(fixed.clone()));
    assert_eq!(
        dir.user_by_email("fixed@example.com").await.unwrap(),
        Some(fixed)
    );
    remove_prefix(&dir).await;
}

/// After SCRIPT FLUSH (what a Redis restart does to the script cache) both scripts
/// are loaded again transparently.
#[tokio::test]
async fn redis_script_cache_flushed() {
    let dir = redis_directory().await;
    let ann = active("ann", "ann@example.com", 1_000);
    dir.apply_user("ann", Some(&ann)).await.unwrap();
    let mut connection = raw().await;
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    let bea = active("bea", "bea@example.com", 2_000);
    dir.apply_user("bea", Some(&bea)).await.unwrap();
    assert_eq!(dir.user("bea").await.unwrap(), Some(bea));
    redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async::<()>(&mut connection)
        .await
        .unwrap();
    assert_eq!(
        dir.user_by_email("ann@example.com").await.unwrap(),
        Some(ann)
    );
    remove_prefix(&dir).await;
}

/// Nothing listening: connecting fails as Unavailable, promptly.
#[tokio::test]
async fn redis_unreachable_is_unavailable() {
    let port = free_port();
    let started = Instant::now();
    let error = RedisDirectory::connect(&format!("redis://127.0.0.1:{port}"))
        .await
        .expect_err("nothing listens there");
    assert!(matches!(error, DirectoryError::Unavailable(_)), "{error:?}");
    assert!(error.is_retriable());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(
        RedisDirectory::connect("not a url").await,
        Err(DirectoryError::Unavailable(_))
    ));
}

/// A Redis of this test's own (the `redis-server` binary the test Redis comes from),
/// stopped and started again on the same port: reads fail as Unavailable while it is
/// down, and the directory reconnects by itself (its scripts reloaded) once it is back.
#[tokio::test]
async fn redis_restart_reconnects() {
    // Same binary as the test Redis; the URL check keeps the rule that a Redis test
    // never passes without one.
    redis_url();
    let port = free_port();
    let url = format!("redis://127.0.0.1:{port}");
    let mut server = OwnRedis::start(port);
    let dir = RedisDirectory::connect(&url).await.unwrap();
    let ann = active("ann", "ann@example.com", 1_000);
    dir.apply_user("ann", Some(&ann)).await.unwrap();
    assert_eq!(dir.user("ann").await.unwrap(), Some(ann.clone()));

    server.stop();
    let down = dir.user("ann").await;
    assert!(
        matches!(down, Err(DirectoryError::Unavailable(_))),
        "{down:?}"
    );

    let _server = OwnRedis::start(port);
    // Nothing persisted: the directory is empty until its feeder replays the topics.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match dir.apply_user("ann", Some(&ann)).await {
            Ok(()) => break,
            Err(error) if Instant::now() < deadline => {
                assert!(error.is_retriable(), "{error:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => panic!("no reconnect within 20s: {error}"),
        }
    }
    assert_eq!(
        dir.user_by_email("ann@example.com").await.unwrap(),
        Some(ann)
    );
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `redis-server` child, killed when dropped.
struct OwnRedis(Option<Child>);

impl OwnRedis {
    fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("redis-server (from the redis-server package) starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        OwnRedis(Some(child))
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.0.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
