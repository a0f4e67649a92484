//! Key-value state stores. A store is a sorted map from string keys to bytes, owned by
//! one task; every write is remembered as dirty so the engine can send the latest
//! value of each changed key to the store's changelog at commit, and journaled for
//! the duration of one processor call so a failed call leaves no trace.
//!
//! Typed values are encoded with a one-byte format tag in front (today only JSON), so
//! a changelog written by this version stays readable when the encoding changes.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::processor::ProcessError;

/// Format tag of a JSON-encoded store value.
const FORMAT_JSON: u8 = 1;

/// Encodes a typed store value.
pub fn encode_value<V: Serialize>(value: &V) -> Result<Vec<u8>, ProcessError> {
    let mut out = Vec::with_capacity(128);
    out.push(FORMAT_JSON);
    serde_json::to_writer(&mut out, value)
        .map_err(|e| ProcessError::Fatal(format!("cannot encode a store value: {e}")))?;
    // The store keeps this buffer for as long as the key lives: give back what the
    // writer's doubling left unused (up to half of it).
    out.shrink_to_fit();
    Ok(out)
}

/// Decodes a typed store value.
pub fn decode_value<V: DeserializeOwned>(
    store: &str,
    key: &str,
    bytes: &[u8],
) -> Result<V, ProcessError> {
    match bytes.split_first() {
        Some((&FORMAT_JSON, body)) => serde_json::from_slice(body).map_err(|e| {
            ProcessError::Fatal(format!(
                "store {store}: value of key {key:?} does not decode as the expected type: {e}"
            ))
        }),
        Some((tag, _)) => Err(ProcessError::Fatal(format!(
            "store {store}: value of key {key:?} has unknown format tag {tag}"
        ))),
        None => Err(ProcessError::Fatal(format!(
            "store {store}: value of key {key:?} is empty"
        ))),
    }
}

/// One key-value store of one task.
#[derive(Debug, Default, Clone)]
pub struct KeyValueStore {
    name: String,
    data: BTreeMap<String, Vec<u8>>,
    /// Keys changed since the last [`KeyValueStore::take_dirty`] (the changelog flush).
    dirty: BTreeSet<String>,
    /// Old values of the keys changed in the open call, to undo it.
    journal: Option<Vec<(String, Option<Vec<u8>>)>>,
}

impl KeyValueStore {
    /// An empty store.
    pub fn new(name: impl Into<String>) -> Self {
        KeyValueStore {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bytes under `key`.
    pub fn get_raw(&self, key: &str) -> Option<&[u8]> {
        self.data.get(key).map(Vec::as_slice)
    }

    /// Writes bytes under `key`.
    pub fn put_raw(&mut self, key: &str, value: Vec<u8>) {
        let old = self.data.insert(key.to_string(), value);
        self.note(key, old);
    }

    /// Removes `key`; returns whether it was there.
    pub fn delete(&mut self, key: &str) -> bool {
        let old = self.data.remove(key);
        let existed = old.is_some();
        self.note(key, old);
        existed
    }

    /// The typed value under `key`.
    pub fn get<V: DeserializeOwned>(&self, key: &str) -> Result<Option<V>, ProcessError> {
        self.get_raw(key)
            .map(|bytes| decode_value(&self.name, key, bytes))
            .transpose()
    }

    /// Writes a typed value under `key`.
    pub fn put<V: Serialize>(&mut self, key: &str, value: &V) -> Result<(), ProcessError> {
        let bytes = encode_value(value)?;
        self.put_raw(key, bytes);
        Ok(())
    }

    /// Entries whose key starts with `prefix`, in key order.
    pub fn prefix<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.data
            .range(prefix.to_string()..)
            .take_while(move |(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Entries with `from <= key < to`, in key order.
    pub fn range<'a>(
        &'a self,
        from: &str,
        to: &str,
    ) -> impl Iterator<Item = (&'a str, &'a [u8])> + 'a {
        self.data
            .range(from.to_string()..to.to_string())
            .map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Every entry, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        self.data.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.data.len()
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Applies a changelog record during restore: not dirty, not journaled.
    pub fn restore(&mut self, key: impl Into<String>, value: Option<Vec<u8>>) {
        let key = key.into();
        match value {
            Some(v) => {
                self.data.insert(key, v);
            }
            None => {
                self.data.remove(&key);
            }
        }
    }

    /// The changed keys with their current value (`None`: deleted), clearing the
    /// dirty set. What the engine writes to the changelog at commit.
    pub fn take_dirty(&mut self) -> Vec<(String, Option<Vec<u8>>)> {
        std::mem::take(&mut self.dirty)
            .into_iter()
            .map(|k| {
                let v = self.data.get(&k).cloned();
                (k, v)
            })
            .collect()
    }

    /// Starts journaling a processor call.
    pub fn begin(&mut self) {
        self.journal = Some(Vec::new());
    }

    /// Keeps the call's writes.
    pub fn commit_call(&mut self) {
        self.journal = None;
    }

    /// Undoes the call's writes, newest first.
    pub fn rollback_call(&mut self) {
        if let Some(journal) = self.journal.take() {
            for (key, old) in journal.into_iter().rev() {
                match old {
                    Some(v) => {
                        self.data.insert(key, v);
                    }
                    None => {
                        self.data.remove(&key);
                    }
                }
                // The key may still be dirty from before the call; a spurious entry only
                // rewrites the current value to the changelog, which is harmless.
            }
        }
    }

    fn note(&mut self, key: &str, old: Option<Vec<u8>>) {
        if let Some(journal) = &mut self.journal {
            journal.push((key.to_string(), old));
        }
        if !self.dirty.contains(key) {
            self.dirty.insert(key.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_round_trip_and_rollback() {
        let mut s = KeyValueStore::new("counts");
        s.put("a", &1u64).unwrap();
        s.begin();
        s.put("a", &2u64).unwrap();
        s.put("b", &3u64).unwrap();
        s.delete("a");
        s.rollback_call();
        assert_eq!(s.get::<u64>("a").unwrap(), Some(1));
        assert_eq!(s.get::<u64>("b").unwrap(), None);
        let dirty = s.take_dirty();
        assert!(dirty.contains(&("a".to_string(), Some(encode_value(&1u64).unwrap()))));
        assert!(s.take_dirty().is_empty());
    }

    #[test]
    fn prefix_scans_in_order() {
        let mut s = KeyValueStore::new("h");
        for k in ["room1/3", "room1/1", "room2/1", "room1/2"] {
            s.put(k, &k).unwrap();
        }
        let keys: Vec<&str> = s.prefix("room1/").map(|(k, _)| k).collect();
        assert_eq!(keys, ["room1/1", "room1/2", "room1/3"]);
    }

    #[test]
    fn unknown_format_is_an_error() {
        assert!(decode_value::<u64>("s", "k", &[9, 1]).is_err());
        assert!(decode_value::<u64>("s", "k", &[]).is_err());
    }
}
