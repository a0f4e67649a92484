//! The chat fan-out processor: one delivery per room participant, dead letters for
//! senders outside the room and malformed rooms, a bounded per-room history read back
//! the way the WebSocket edge will read it, duplicate message ids dropped, and all of
//! it surviving a crash.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use orderflow_pipelines::catalog;
use orderflow_pipelines::chat_fanout::{
    ChatHistoryEntry, DmRoom, HISTORY_STORE, history_prefix, room_history, store_history,
};
use orderflow_pipelines::records::{ChatDelivery, ChatMessage, topics};
use orderflow_runtime::TestDriver;
use orderflow_runtime::driver::dlq_headers;
use orderflow_runtime::store::KeyValueStore;

const WORKSPACE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

fn driver() -> Result<TestDriver> {
    Ok(TestDriver::from_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../topology.yaml"),
        &catalog(),
    )?)
}

/// A small topology around the fan-out alone, with the given `config:` lines.
fn small_yaml(config: &str) -> String {
    format!(
        r#"
app: test
topics:
  chat.messages:
    partitions: 2
    value: schemas/chat.messages.avsc
    ingress: true
  chat.deliveries:
    partitions: 2
    value: schemas/chat.deliveries.avsc
stores:
  chat-history:
    doc: history
processors:
  chat-fanout:
    kind: chat-fanout
    inputs: [chat.messages]
    outputs: [chat.deliveries]
    stores: [chat-history]
    config:
{config}
"#
    )
}

fn small_driver(history_limit: u64) -> Result<TestDriver> {
    let yaml = small_yaml(&format!("      history_limit: {history_limit}"));
    Ok(TestDriver::from_yaml(&yaml, WORKSPACE, &catalog())?)
}

fn message(id: &str, room: &str, sender: &str, body: &str, sent_at: i64) -> ChatMessage {
    ChatMessage {
        message_id: id.to_string(),
        room_id: room.to_string(),
        sender_id: sender.to_string(),
        body: body.to_string(),
        sent_at,
    }
}

fn send(driver: &mut TestDriver, m: &ChatMessage) -> Result<()> {
    Ok(driver.pipe_at(topics::CHAT_MESSAGES, &m.room_id, m, m.sent_at)?)
}

fn deliveries(driver: &mut TestDriver) -> Result<Vec<ChatDelivery>> {
    driver
        .read_output::<ChatDelivery>(topics::CHAT_DELIVERIES)?
        .into_iter()
        .map(|r| {
            let d = r.value.context("a delivery is never a tombstone")?;
            assert_eq!(r.key, d.recipient_id, "deliveries are keyed by recipient");
            Ok(d)
        })
        .collect()
}

/// The `chat-history` store rebuilt from its changelog topic: what the WebSocket edge
/// can do without a task of its own.
fn history_from_changelog(driver: &TestDriver) -> Result<BTreeMap<String, Vec<u8>>> {
    let changelog = driver
        .topology()
        .stores
        .get(HISTORY_STORE)
        .and_then(|s| s.changelog.clone())
        .context("chat-history has a changelog")?;
    let mut table = BTreeMap::new();
    for r in driver.raw_records(&changelog)? {
        match r.value {
            Some(bytes) => table.insert(r.key, bytes),
            None => table.remove(&r.key),
        };
    }
    Ok(table)
}

fn history(driver: &TestDriver, room: &str, limit: usize) -> Result<Vec<ChatHistoryEntry>> {
    let table = history_from_changelog(driver)?;
    Ok(room_history(
        table.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
        room,
        limit,
    )?)
}

fn ids(entries: &[ChatHistoryEntry]) -> Vec<&str> {
    entries.iter().map(|e| e.message_id.as_str()).collect()
}

#[test]
fn a_message_goes_to_both_participants_sender_included() -> Result<()> {
    let mut driver = driver()?;
    send(
        &mut driver,
        &message("m1", "dm:b1:s1", "b1", "hello", 1_000),
    )?;
    send(&mut driver, &message("m2", "dm:b1:s1", "s1", "hi", 2_000))?;

    let out = deliveries(&mut driver)?;
    let summary: Vec<(&str, &str, &str)> = out
        .iter()
        .map(|d| {
            (
                d.message_id.as_str(),
                d.sender_id.as_str(),
                d.recipient_id.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("m1", "b1", "b1"),
            ("m1", "b1", "s1"),
            ("m2", "s1", "b1"),
            ("m2", "s1", "s1")
        ]
    );
    assert_eq!(
        out[1],
        ChatDelivery {
            message_id: "m1".to_string(),
            room_id: "dm:b1:s1".to_string(),
            sender_id: "b1".to_string(),
            recipient_id: "s1".to_string(),
            body: "hello".to_string(),
            sent_at: 1_000,
        }
    );
    assert!(driver.dead_letters("chat-fanout")?.is_empty());
    Ok(())
}

#[test]
fn a_sender_outside_the_room_is_a_dead_letter_with_its_headers() -> Result<()> {
    let mut driver = driver()?;
    let intruder = message("m1", "dm:b1:s1", "x9", "let me in", 1_000);
    send(&mut driver, &intruder)?;

    assert!(deliveries(&mut driver)?.is_empty());
    assert!(history(&driver, "dm:b1:s1", 100)?.is_empty());
    let dead = driver.dead_letters("chat-fanout")?;
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    let original = driver.raw_records(topics::CHAT_MESSAGES)?;
    assert_eq!(letter.key, "dm:b1:s1");
    assert_eq!(
        letter.value, original[0].value,
        "the record is kept as it was"
    );
    assert_eq!(letter.header(dlq_headers::ERROR_KIND), Some("invalid"));
    assert_eq!(letter.header(dlq_headers::PROCESSOR), Some("chat-fanout"));
    assert_eq!(
        letter.header(dlq_headers::SOURCE_TOPIC),
        Some(topics::CHAT_MESSAGES)
    );
    assert_eq!(
        letter.header(dlq_headers::SOURCE_PARTITION),
        Some(original[0].partition.to_string().as_str())
    );
    assert_eq!(
        letter.header(dlq_headers::SOURCE_OFFSET),
        Some(original[0].offset.to_string().as_str())
    );
    let error = letter.header(dlq_headers::ERROR).context("error header")?;
    assert!(error.contains("not a participant"), "{error}");

    // Processing goes on.
    send(
        &mut driver,
        &message("m2", "dm:b1:s1", "b1", "still here", 2_000),
    )?;
    assert_eq!(deliveries(&mut driver)?.len(), 2);
    Ok(())
}

#[test]
fn malformed_rooms_and_keys_are_dead_letters() -> Result<()> {
    let mut driver = driver()?;
    let rooms = [
        "group:1",
        "dm:b1",
        "dm::s1",
        "dm:b1:",
        "dm:b1:s1:x",
        "dm:b1:b1",
        "dm:b/1:s1",
    ];
    for (i, room) in rooms.iter().enumerate() {
        send(
            &mut driver,
            &message(&format!("m{i}"), room, "b1", "x", 1_000),
        )?;
    }
    // A record keyed by something other than its room.
    let m = message("k1", "dm:b1:s1", "b1", "x", 1_000);
    driver.pipe(topics::CHAT_MESSAGES, "dm:b1:s2", &m)?;
    // An empty message id.
    send(&mut driver, &message("", "dm:b1:s1", "b1", "x", 1_000))?;
    // Bytes that are not a ChatMessage, and a tombstone.
    driver.pipe_raw(
        topics::CHAT_MESSAGES,
        "dm:b1:s1",
        Some(b"not avro".to_vec()),
        1_000,
    )?;
    driver.pipe_raw(topics::CHAT_MESSAGES, "dm:b1:s1", None, 1_000)?;

    assert!(deliveries(&mut driver)?.is_empty());
    let dead = driver.dead_letters("chat-fanout")?;
    assert_eq!(dead.len(), rooms.len() + 4);
    for letter in &dead[..rooms.len()] {
        let error = letter.header(dlq_headers::ERROR).context("error header")?;
        assert!(error.contains("malformed room id"), "{error}");
    }
    assert!(
        dead[rooms.len()]
            .header(dlq_headers::ERROR)
            .is_some_and(|e| e.contains("is not the message's room id"))
    );
    assert!(history_from_changelog(&driver)?.is_empty());
    Ok(())
}

#[test]
fn room_ids_parse_to_their_two_participants() {
    let room = DmRoom::parse("dm:b1:s1").expect("a good room id");
    assert_eq!(room.participants(), ["b1", "s1"]);
    assert!(room.is_participant("s1"));
    assert!(!room.is_participant("x"));
    assert!(DmRoom::parse("dm:b1:s1:s2").is_err());
    assert!(DmRoom::parse("room").is_err());
}

#[test]
fn history_keeps_the_last_messages_of_each_room_oldest_first() -> Result<()> {
    let mut driver = small_driver(3)?;
    for i in 1..=5 {
        send(
            &mut driver,
            &message(
                &format!("m{i}"),
                "dm:b1:s1",
                "b1",
                &format!("body {i}"),
                i * 1_000,
            ),
        )?;
    }
    send(
        &mut driver,
        &message("n1", "dm:b2:s1", "s1", "other room", 9_000),
    )?;
    assert_eq!(
        deliveries(&mut driver)?.len(),
        12,
        "the bound limits history, not deliveries"
    );

    let kept = history(&driver, "dm:b1:s1", 100)?;
    assert_eq!(ids(&kept), ["m3", "m4", "m5"]);
    assert_eq!(
        kept[0],
        ChatHistoryEntry {
            message_id: "m3".to_string(),
            sender_id: "b1".to_string(),
            body: "body 3".to_string(),
            sent_at: 3_000,
        }
    );
    assert_eq!(ids(&history(&driver, "dm:b1:s1", 2)?), ["m4", "m5"]);
    assert_eq!(ids(&history(&driver, "dm:b2:s1", 100)?), ["n1"]);

    // The same through a store restored from the changelog, as a task holds it.
    let mut restored = KeyValueStore::new(HISTORY_STORE);
    for (key, bytes) in history_from_changelog(&driver)? {
        restored.restore(&key, Some(bytes));
    }
    assert_eq!(store_history(&restored, "dm:b1:s1", 100)?, kept);
    assert_eq!(ids(&store_history(&restored, "dm:b1:s1", 1)?), ["m5"]);

    // The live store agrees with its changelog: three history keys for the room, in
    // sequence order, and no trace of the dropped messages' ids.
    let store: BTreeMap<String, serde_json::Value> = driver.store(HISTORY_STORE).entries()?;
    let prefix = history_prefix("dm:b1:s1");
    let history_keys: Vec<&String> = store.keys().filter(|k| k.starts_with(&prefix)).collect();
    assert_eq!(history_keys.len(), 3);
    assert!(history_keys.windows(2).all(|w| w[0] < w[1]));
    assert!(!store.contains_key("dm:b1:s1/id/m1"));
    assert!(!store.contains_key("dm:b1:s1/id/m2"));
    assert!(store.contains_key("dm:b1:s1/id/m5"));
    Ok(())
}

#[test]
fn history_survives_ten_plus_messages_in_key_order() -> Result<()> {
    // Zero-padded sequence numbers: message 10 sorts after message 9.
    let mut driver = small_driver(20)?;
    for i in 1..=12 {
        send(
            &mut driver,
            &message(&format!("m{i}"), "dm:b1:s1", "b1", "x", i * 1_000),
        )?;
    }
    let expected: Vec<String> = (1..=12).map(|i| format!("m{i}")).collect();
    assert_eq!(ids(&history(&driver, "dm:b1:s1", 100)?), expected);
    Ok(())
}

#[test]
fn a_duplicate_message_id_is_neither_delivered_nor_stored_twice() -> Result<()> {
    let mut driver = driver()?;
    let m = message("m1", "dm:b1:s1", "b1", "hello", 1_000);
    send(&mut driver, &m)?;
    send(&mut driver, &m)?;
    // A retry under the same id with a later timestamp is still the same message.
    send(
        &mut driver,
        &message("m1", "dm:b1:s1", "b1", "hello", 1_500),
    )?;

    let out = deliveries(&mut driver)?;
    assert_eq!(out.len(), 2);
    assert_eq!(ids(&history(&driver, "dm:b1:s1", 100)?), ["m1"]);
    assert!(driver.dead_letters("chat-fanout")?.is_empty());
    Ok(())
}

fn chat_script() -> Vec<ChatMessage> {
    vec![
        message("m1", "dm:b1:s1", "b1", "one", 1_000),
        message("m2", "dm:b1:s1", "s1", "two", 2_000),
        message("m3", "dm:b2:s1", "b2", "three", 3_000),
        message("m4", "dm:b1:s1", "b1", "four", 4_000),
        message("m2", "dm:b1:s1", "s1", "two", 2_000),
        message("m5", "dm:b1:s1", "b1", "five", 5_000),
        message("m6", "dm:b2:s1", "s1", "six", 6_000),
        message("m3", "dm:b2:s1", "b2", "three", 3_000),
    ]
}

#[test]
fn a_crash_and_restore_from_the_changelog_changes_nothing() -> Result<()> {
    let script = chat_script();

    let mut steady = small_driver(3)?;
    for m in &script {
        send(&mut steady, m)?;
    }

    let mut crashing = small_driver(3)?;
    for (i, m) in script.iter().enumerate() {
        if i == 4 {
            // Right before a duplicate: the ids must come back with the store.
            crashing.restart()?;
        }
        send(&mut crashing, m)?;
    }

    assert_eq!(deliveries(&mut crashing)?, deliveries(&mut steady)?);
    for room in ["dm:b1:s1", "dm:b2:s1"] {
        assert_eq!(history(&crashing, room, 100)?, history(&steady, room, 100)?);
    }
    assert_eq!(
        ids(&history(&crashing, "dm:b1:s1", 100)?),
        ["m2", "m4", "m5"]
    );
    let live: BTreeMap<String, serde_json::Value> = crashing.store(HISTORY_STORE).entries()?;
    let expected: BTreeMap<String, serde_json::Value> = steady.store(HISTORY_STORE).entries()?;
    assert_eq!(live, expected);
    Ok(())
}

#[test]
fn history_limit_comes_from_config_and_is_checked() -> Result<()> {
    // Absent: the default of 100.
    let yaml = small_yaml("      {}").replace("    config:\n      {}\n", "");
    let mut driver = TestDriver::from_yaml(&yaml, WORKSPACE, &catalog())?;
    for i in 0..105 {
        send(
            &mut driver,
            &message(&format!("m{i}"), "dm:b1:s1", "b1", "x", i),
        )?;
    }
    let kept = history(&driver, "dm:b1:s1", 1_000)?;
    assert_eq!(kept.len(), 100);
    assert_eq!(kept[0].message_id, "m5");

    let zero_yaml = small_yaml("      history_limit: 0");
    let zero = TestDriver::from_yaml(&zero_yaml, WORKSPACE, &catalog())
        .err()
        .context("history_limit 0 must be refused")?;
    let text = zero.to_string();
    let line = zero_yaml
        .lines()
        .position(|l| l.contains("history_limit: 0"))
        .context("the line")?
        + 1;
    assert!(
        text.starts_with(&format!(
            "topology.yaml:{line}:22 processors.chat-fanout.config.history_limit: history_limit must be at least 1"
        )),
        "{text}"
    );

    let typo = TestDriver::from_yaml(&small_yaml("      history_limt: 3"), WORKSPACE, &catalog())
        .err()
        .context("an unknown config field must be refused")?;
    assert!(typo.to_string().contains("history_limt"), "{typo}");
    Ok(())
}
