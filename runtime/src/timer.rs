//! Keyed one-shot timers on stream time and wall-clock time (Kafka Streams'
//! punctuators, made per key, which is what saga timeouts need). Pending timers live
//! in the processor's timer store (`<processor>-timers`, changelogged like any store),
//! so they survive a crash and a task move; [`TimerIndex`] is the in-memory order of
//! due times, rebuilt from that store whenever the store is restored or rolled back.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::processor::ProcessError;
use crate::store::KeyValueStore;
pub use crate::topology::config::TimeDomain;

/// A due timer, as given to [`crate::processor::Processor::punctuate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timer {
    /// The timer's name in topology.yaml.
    pub name: String,
    /// The key it was set for.
    pub key: String,
    /// Its clock.
    pub domain: TimeDomain,
    /// When it was due (epoch milliseconds on its clock).
    pub due: i64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Pending {
    domain: TimeDomain,
    due: i64,
}

/// Store key of a timer: name, a NUL, then the key (names cannot hold NUL).
fn store_key(name: &str, key: &str) -> String {
    format!("{name}\u{0}{key}")
}

/// The due order of a task's pending timers.
#[derive(Debug, Default, Clone)]
pub struct TimerIndex {
    by_due: BTreeSet<(TimeDomain, i64, String, String)>,
}

impl TimerIndex {
    /// Rebuilds the index from the timer store.
    pub fn rebuild(store: &KeyValueStore) -> Result<Self, ProcessError> {
        let mut index = TimerIndex::default();
        for (k, _) in store.iter() {
            let Some((name, key)) = k.split_once('\u{0}') else {
                continue;
            };
            if let Some(p) = store.get::<Pending>(k)? {
                index
                    .by_due
                    .insert((p.domain, p.due, name.to_string(), key.to_string()));
            }
        }
        Ok(index)
    }

    /// Sets (or moves) the timer `name` for `key`.
    pub fn set(
        &mut self,
        store: &mut KeyValueStore,
        name: &str,
        key: &str,
        domain: TimeDomain,
        due: i64,
    ) -> Result<(), ProcessError> {
        self.cancel(store, name, key)?;
        store.put(&store_key(name, key), &Pending { domain, due })?;
        self.by_due
            .insert((domain, due, name.to_string(), key.to_string()));
        Ok(())
    }

    /// Cancels the timer `name` for `key`; returns whether one was pending.
    pub fn cancel(
        &mut self,
        store: &mut KeyValueStore,
        name: &str,
        key: &str,
    ) -> Result<bool, ProcessError> {
        let k = store_key(name, key);
        let Some(p) = store.get::<Pending>(&k)? else {
            return Ok(false);
        };
        store.delete(&k);
        self.by_due
            .remove(&(p.domain, p.due, name.to_string(), key.to_string()));
        Ok(true)
    }

    /// The earliest timer of `domain` due at or before `now`, removed from the index
    /// and the store.
    pub fn pop_due(
        &mut self,
        store: &mut KeyValueStore,
        domain: TimeDomain,
        now: i64,
    ) -> Option<Timer> {
        let first = self
            .by_due
            .range((domain, i64::MIN, String::new(), String::new())..)
            .next()
            .filter(|(d, due, _, _)| *d == domain && *due <= now)?
            .clone();
        self.by_due.remove(&first);
        let (domain, due, name, key) = first;
        store.delete(&store_key(&name, &key));
        Some(Timer {
            name,
            key,
            domain,
            due,
        })
    }

    /// The earliest due time of `domain`.
    pub fn next_due(&self, domain: TimeDomain) -> Option<i64> {
        self.by_due
            .range((domain, i64::MIN, String::new(), String::new())..)
            .next()
            .filter(|(d, ..)| *d == domain)
            .map(|(_, due, ..)| *due)
    }

    /// Number of pending timers.
    pub fn len(&self) -> usize {
        self.by_due.len()
    }

    /// Whether none are pending.
    pub fn is_empty(&self) -> bool {
        self.by_due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fires_in_due_order_and_survives_a_rebuild() {
        let mut store = KeyValueStore::new("p-timers");
        let mut index = TimerIndex::default();
        index
            .set(&mut store, "timeout", "o2", TimeDomain::WallClock, 200)
            .unwrap();
        index
            .set(&mut store, "timeout", "o1", TimeDomain::WallClock, 100)
            .unwrap();
        index
            .set(&mut store, "timeout", "o3", TimeDomain::StreamTime, 50)
            .unwrap();
        index
            .set(&mut store, "timeout", "o2", TimeDomain::WallClock, 300)
            .unwrap();
        assert!(index.cancel(&mut store, "timeout", "o3").unwrap());
        let mut rebuilt = TimerIndex::rebuild(&store).unwrap();
        assert_eq!(rebuilt.len(), 2);
        assert_eq!(
            rebuilt.pop_due(&mut store, TimeDomain::StreamTime, 1000),
            None
        );
        let first = rebuilt
            .pop_due(&mut store, TimeDomain::WallClock, 250)
            .unwrap();
        assert_eq!((first.key.as_str(), first.due), ("o1", 100));
        assert_eq!(
            rebuilt.pop_due(&mut store, TimeDomain::WallClock, 250),
            None
        );
        assert_eq!(rebuilt.next_due(TimeDomain::WallClock), Some(300));
        assert_eq!(store.len(), 1);
    }
}
