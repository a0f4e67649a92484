//! The test driver running the sample counter: state, both timer clocks, dead letters,
//! rollback of a failed call, crash and restore, and determinism.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{Click, Count, catalog, counter_yaml, fixtures};
use orderflow_runtime::TestDriver;
use orderflow_runtime::driver::{START_WALL_TIME, dlq_headers};

fn driver() -> TestDriver {
    TestDriver::from_yaml(&counter_yaml(), fixtures(), &catalog()).expect("topology compiles")
}

fn click(user: &str, page: &str) -> Click {
    Click {
        user: user.into(),
        page: page.into(),
    }
}

fn counts(d: &mut TestDriver) -> Vec<(String, i64, bool)> {
    d.read_output::<Count>("counts")
        .unwrap()
        .into_iter()
        .map(|r| {
            let v = r.value.unwrap();
            (r.key, v.count, v.closed)
        })
        .collect()
}

#[test]
fn counts_per_key_in_a_store() {
    let mut d = driver();
    for user in ["ann", "bob", "ann", "ann"] {
        d.pipe("clicks", user, &click(user, "/")).unwrap();
    }
    assert_eq!(
        counts(&mut d),
        [
            ("ann".to_string(), 1, false),
            ("bob".to_string(), 1, false),
            ("ann".to_string(), 2, false),
            ("ann".to_string(), 3, false),
        ]
    );
    assert_eq!(d.store("counts").get::<i64>("ann").unwrap(), Some(3));
    assert_eq!(d.store("counts").get::<i64>("bob").unwrap(), Some(1));
    let raw = d.store("counts").raw_entries();
    assert_eq!(raw.keys().collect::<Vec<_>>(), ["ann", "bob"]);
    assert_eq!(
        raw["ann"],
        orderflow_runtime::store::encode_value(&3_i64).unwrap()
    );
    // Read is incremental: nothing new since the last read.
    assert!(counts(&mut d).is_empty());
}

#[test]
fn wall_clock_timer_fires_only_after_its_delay() {
    let mut d = driver();
    d.pipe("clicks", "ann", &click("ann", "/")).unwrap();
    counts(&mut d);
    d.advance_wall_clock(Duration::from_secs(59)).unwrap();
    assert!(counts(&mut d).is_empty());
    // A click moves the idle timer.
    d.pipe("clicks", "ann", &click("ann", "/a")).unwrap();
    d.advance_wall_clock(Duration::from_secs(59)).unwrap();
    // The second click (stamped with the wall clock) also moved stream time past the
    // 30 s session timer, which fired right after it.
    assert_eq!(
        counts(&mut d),
        [
            ("ann".to_string(), 2, false),
            ("ann".to_string(), -2, false)
        ]
    );
    d.advance_wall_clock(Duration::from_secs(1)).unwrap();
    assert_eq!(counts(&mut d), [("ann".to_string(), 2, true)]);
    assert_eq!(d.store("counts").get::<i64>("ann").unwrap(), None);
    assert_eq!(d.pending_timers("counter"), 0);
    let last = d.records::<Count>("counts").unwrap().pop().unwrap();
    assert_eq!(
        last.timestamp,
        START_WALL_TIME + 59_000 + 60_000,
        "a timer's output carries its due time"
    );
}

#[test]
fn stream_time_timer_fires_when_records_move_stream_time() {
    let mut d = driver();
    let t0 = START_WALL_TIME;
    d.pipe_at("clicks", "ann", &click("ann", "/"), t0).unwrap();
    // Wall time alone never moves stream time.
    d.advance_wall_clock(Duration::from_secs(40)).unwrap();
    let out = counts(&mut d);
    assert!(out.iter().all(|(_, c, _)| *c >= 0), "{out:?}");
    // A later record on the same task moves stream time past the session timer.
    let partition = orderflow_runtime::partition::partition_for(b"ann", 2);
    let other = (0..100)
        .map(|i| format!("user{i}"))
        .find(|u| orderflow_runtime::partition::partition_for(u.as_bytes(), 2) == partition)
        .unwrap();
    d.pipe_at("clicks", &other, &click(&other, "/"), t0 + 31_000)
        .unwrap();
    let out = counts(&mut d);
    assert_eq!(
        out,
        [(other.clone(), 1, false), ("ann".to_string(), -1, false)]
    );
    assert_eq!(d.stream_time("counter", partition), Some(t0 + 31_000));
}

#[test]
fn corrupt_records_go_to_the_dead_letter_topic_and_processing_goes_on() {
    let mut d = driver();
    let good = d.serde().encode("clicks", &click("ann", "/")).unwrap();
    let mut bad_magic = good.clone();
    bad_magic[0] = 7;
    let truncated = good[..3].to_vec();
    let mut unknown_id = good.clone();
    unknown_id[1..5].copy_from_slice(&999u32.to_be_bytes());
    let garbage = [&good[..5], &[0xff, 0xff, 0xff, 0xff, 0xff, 0x01][..]].concat();
    let t = d.wall_time();
    for (key, bytes) in [
        ("ann", bad_magic),
        ("ann", truncated),
        ("ann", unknown_id),
        ("ann", garbage),
    ] {
        d.pipe_raw("clicks", key, Some(bytes), t).unwrap();
    }
    d.pipe("clicks", "ann", &click("ann", "/")).unwrap();
    d.pipe("clicks", "bob", &click("ann", "/")).unwrap(); // key mismatch: invalid
    assert_eq!(counts(&mut d), [("ann".to_string(), 1, false)]);
    let dead = d.dead_letters("counter").unwrap();
    let kinds: Vec<&str> = dead
        .iter()
        .map(|r| r.header(dlq_headers::ERROR_KIND).unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "bad_magic",
            "truncated",
            "unknown_schema",
            "bad_body",
            "invalid"
        ]
    );
    for r in &dead {
        assert_eq!(r.header(dlq_headers::SOURCE_TOPIC), Some("clicks"));
        assert_eq!(r.header(dlq_headers::PROCESSOR), Some("counter"));
        assert!(
            r.header(dlq_headers::SOURCE_PARTITION)
                .unwrap()
                .parse::<i32>()
                .is_ok()
        );
        assert!(
            r.header(dlq_headers::SOURCE_OFFSET)
                .unwrap()
                .parse::<i64>()
                .is_ok()
        );
        assert!(!r.header(dlq_headers::ERROR).unwrap().is_empty());
    }
    // The dead letter keeps the original bytes.
    assert_eq!(dead[0].value.as_ref().unwrap()[0], 7);
    assert!(
        dead[0]
            .header(dlq_headers::ERROR)
            .unwrap()
            .contains("magic byte")
    );
}

#[test]
fn a_failed_call_leaves_no_trace() {
    let mut d = driver();
    d.pipe("clicks", "ann", &click("ann", "/")).unwrap();
    d.pipe("clicks", "ann", &click("ann", "/boom")).unwrap();
    d.pipe("clicks", "ann", &click("ann", "/undeclared"))
        .unwrap();
    assert_eq!(d.store("counts").get::<i64>("ann").unwrap(), Some(1));
    let dead = d.dead_letters("counter").unwrap();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[1].header(dlq_headers::ERROR_KIND), Some("contract"));
    assert!(
        dead[1]
            .header(dlq_headers::ERROR)
            .unwrap()
            .contains("not among its outputs")
    );
    d.pipe("clicks", "ann", &click("ann", "/")).unwrap();
    assert_eq!(counts(&mut d).last(), Some(&("ann".to_string(), 2, false)));
}

#[test]
fn state_and_timers_survive_a_crash() {
    let mut d = driver();
    for user in ["ann", "bob", "ann"] {
        d.pipe("clicks", user, &click(user, "/")).unwrap();
    }
    counts(&mut d);
    d.restart().unwrap();
    assert_eq!(d.store("counts").get::<i64>("ann").unwrap(), Some(2));
    assert_eq!(d.pending_timers("counter"), 4);
    d.pipe("clicks", "ann", &click("ann", "/")).unwrap();
    assert_eq!(counts(&mut d), [("ann".to_string(), 3, false)]);
    // The idle timers set before the crash still fire.
    d.advance_wall_clock(Duration::from_secs(61)).unwrap();
    let mut closed: Vec<(String, i64, bool)> = counts(&mut d).into_iter().filter(|c| c.2).collect();
    closed.sort();
    assert_eq!(
        closed,
        [("ann".to_string(), 3, true), ("bob".to_string(), 1, true)]
    );
}

#[test]
fn the_same_inputs_give_the_same_outputs() {
    let run = || {
        let mut d = driver();
        for i in 0..200 {
            let user = format!("u{}", i % 17);
            d.pipe_at(
                "clicks",
                &user,
                &click(&user, "/"),
                START_WALL_TIME + i * 500,
            )
            .unwrap();
            if i % 50 == 0 {
                d.advance_wall_clock(Duration::from_secs(45)).unwrap();
            }
        }
        d.advance_wall_clock(Duration::from_secs(120)).unwrap();
        d.raw_records("counts").unwrap()
    };
    let first = run();
    assert!(first.len() > 200);
    assert_eq!(first, run());
}

#[test]
fn processor_config_is_read_from_the_topology() {
    let yaml = counter_yaml().replace(
        "    kind: counter\n",
        "    kind: counter\n    config:\n      ignore: [/skip]\n",
    );
    let mut d = TestDriver::from_yaml(&yaml, fixtures(), &catalog()).unwrap();
    d.pipe("clicks", "ann", &click("ann", "/skip")).unwrap();
    d.pipe("clicks", "ann", &click("ann", "/")).unwrap();
    assert_eq!(counts(&mut d), [("ann".to_string(), 1, false)]);
}

#[test]
fn a_deferred_job_ends_before_the_next_record_of_its_task() {
    let mut d = driver();
    d.pipe("clicks", "ann", &click("ann", "/slow:20")).unwrap();
    d.pipe("clicks", "ann", &click("ann", "/")).unwrap();
    d.pipe("clicks", "ann", &click("ann", "/slow:1")).unwrap();
    // The continuation's store write is journaled and changelogged like any call's,
    // and the record after it sees it.
    assert_eq!(
        counts(&mut d),
        [
            ("ann".to_string(), 1, false),
            ("ann".to_string(), 2, false),
            ("ann".to_string(), 3, false),
        ]
    );
    d.restart().unwrap();
    assert_eq!(d.store("counts").get::<i64>("ann").unwrap(), Some(3));
    // A bad /slow page fails before deferring: a dead letter, nothing counted.
    d.pipe("clicks", "ann", &click("ann", "/slow:x")).unwrap();
    assert_eq!(d.dead_letters("counter").unwrap().len(), 1);
    assert!(counts(&mut d).is_empty());
}
