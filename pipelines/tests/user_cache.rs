//! The user-cache processor through the real topology.yaml: registration, the
//! EMAIL_TAKEN race, replayed request ids, profile updates, deletion and
//! re-registration, field rules answered with INVALID, records that cannot be answered
//! sent to the dead-letter topic, request retention, and a crash restored from the
//! changelogs.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use orderflow_pipelines::catalog;
use orderflow_pipelines::records::{
    AuthCommand, DeleteUser, RegisterUser, Reply, Role, UpdateProfile, User, UserStatus, topics,
};
use orderflow_pipelines::user_cache::{REQUESTS_STORE, USERS_STORE, user_id_for};
use orderflow_runtime::TestDriver;
use orderflow_runtime::driver::dlq_headers;

const T0: i64 = 1_704_067_200_000;
const HOUR: i64 = 3_600_000;

fn driver() -> Result<TestDriver> {
    Ok(TestDriver::from_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../topology.yaml"),
        &catalog(),
    )?)
}

fn register(request_id: &str, email: &str, name: &str) -> AuthCommand {
    AuthCommand::RegisterUser(RegisterUser {
        request_id: request_id.to_string(),
        email: email.to_string(),
        password_hash: format!("hash-of-{name}"),
        role: Role::Buyer,
        display_name: name.to_string(),
    })
}

fn update(request_id: &str, email: &str, name: Option<&str>, hash: Option<&str>) -> AuthCommand {
    AuthCommand::UpdateProfile(UpdateProfile {
        request_id: request_id.to_string(),
        email: email.to_string(),
        display_name: name.map(str::to_string),
        password_hash: hash.map(str::to_string),
    })
}

fn delete(request_id: &str, email: &str) -> AuthCommand {
    AuthCommand::DeleteUser(DeleteUser {
        request_id: request_id.to_string(),
        email: email.to_string(),
    })
}

/// Pipes a command keyed by its email, as the HTTP edge does.
fn send(driver: &mut TestDriver, command: &AuthCommand, at: i64) -> Result<()> {
    let email = match command {
        AuthCommand::RegisterUser(c) => &c.email,
        AuthCommand::UpdateProfile(c) => &c.email,
        AuthCommand::DeleteUser(c) => &c.email,
        AuthCommand::StartSession(c) => &c.email,
        AuthCommand::RotateSession(c) => &c.email,
        AuthCommand::EndSession(c) => &c.email,
    };
    Ok(driver.pipe_at(topics::AUTH_COMMANDS, email, command, at)?)
}

fn replies(driver: &mut TestDriver) -> Result<Vec<Reply>> {
    driver
        .read_output::<Reply>(topics::EDGE_REPLIES)?
        .into_iter()
        .map(|r| {
            let reply = r.value.context("a reply is never a tombstone")?;
            assert_eq!(r.key, reply.request_id, "replies are keyed by request id");
            Ok(reply)
        })
        .collect()
}

fn users(driver: &mut TestDriver) -> Result<Vec<User>> {
    driver
        .read_output::<User>(topics::AUTH_USERS)?
        .into_iter()
        .map(|r| {
            let user = r.value.context("a user is never a tombstone")?;
            assert_eq!(r.key, user.id, "users are keyed by id");
            Ok(user)
        })
        .collect()
}

fn one<T>(mut items: Vec<T>) -> Result<T> {
    anyhow::ensure!(
        items.len() == 1,
        "expected exactly one record, got {}",
        items.len()
    );
    items.pop().context("one record")
}

fn ok_reply(request_id: &str, user_id: &str, at: i64) -> Reply {
    Reply {
        request_id: request_id.to_string(),
        ok: true,
        code: None,
        message: None,
        entity_id: Some(user_id.to_string()),
        at,
    }
}

fn assert_refused(reply: &Reply, request_id: &str, code: &str) {
    assert_eq!(reply.request_id, request_id);
    assert!(!reply.ok, "{reply:?}");
    assert_eq!(reply.code.as_deref(), Some(code), "{reply:?}");
    assert!(reply.message.is_some(), "a refusal says why");
    assert_eq!(reply.entity_id, None);
}

#[test]
fn a_registration_creates_an_active_user_and_answers_with_its_id() -> Result<()> {
    let mut driver = driver()?;
    send(&mut driver, &register("r1", "ann@example.com", "Ann"), T0)?;

    let user = one(users(&mut driver)?)?;
    let id = user_id_for("r1", "ann@example.com");
    assert_eq!(
        user,
        User {
            id: id.clone(),
            email: "ann@example.com".to_string(),
            role: Role::Buyer,
            display_name: "Ann".to_string(),
            status: UserStatus::Active,
            created_at: T0,
            updated_at: T0,
            password_hash: "hash-of-Ann".to_string(),
        }
    );
    assert_eq!(one(replies(&mut driver)?)?, ok_reply("r1", &id, T0));
    assert_eq!(
        driver.store(USERS_STORE).get::<User>("ann@example.com")?,
        Some(user)
    );
    Ok(())
}

#[test]
fn user_ids_are_uuid_shaped_deterministic_and_distinct() {
    let id = user_id_for("r1", "ann@example.com");
    assert_eq!(id.len(), 36);
    for (i, c) in id.char_indices() {
        if [8, 13, 18, 23].contains(&i) {
            assert_eq!(c, '-', "{id}");
        } else {
            assert!(c.is_ascii_hexdigit() && !c.is_ascii_uppercase(), "{id}");
        }
    }
    assert_eq!(&id[14..15], "8", "version 8 (custom): {id}");
    assert!("89ab".contains(&id[19..20]), "RFC variant: {id}");
    assert_eq!(id, user_id_for("r1", "ann@example.com"));
    // Shifting bytes between the two parts must not give the same id.
    assert_ne!(id, user_id_for("r1a", "nn@example.com"));
    assert_ne!(id, user_id_for("r2", "ann@example.com"));
    assert_ne!(id, user_id_for("r1", "ann@example.con"));
}

#[test]
fn two_registrations_of_one_email_give_one_user_and_one_email_taken() -> Result<()> {
    let mut driver = driver()?;
    send(&mut driver, &register("r1", "ann@example.com", "Ann"), T0)?;
    send(
        &mut driver,
        &register("r2", "ann@example.com", "Impostor"),
        T0,
    )?;

    let user = one(users(&mut driver)?)?;
    assert_eq!(user.display_name, "Ann");
    let answers = replies(&mut driver)?;
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], ok_reply("r1", &user.id, T0));
    assert_refused(&answers[1], "r2", "EMAIL_TAKEN");
    assert_eq!(driver.store(USERS_STORE).len(), 1);
    Ok(())
}

#[test]
fn a_replayed_request_id_gets_the_same_reply_and_changes_nothing() -> Result<()> {
    let mut driver = driver()?;
    send(&mut driver, &register("r1", "ann@example.com", "Ann"), T0)?;
    send(
        &mut driver,
        &register("r2", "ann@example.com", "Ann"),
        T0 + 1,
    )?;
    let first = replies(&mut driver)?;
    let created = users(&mut driver)?;
    assert_eq!(created.len(), 1);

    // The edge retries both, later; a producer retry may even change nothing else.
    send(
        &mut driver,
        &register("r1", "ann@example.com", "Ann"),
        T0 + 10,
    )?;
    send(
        &mut driver,
        &register("r2", "ann@example.com", "Ann"),
        T0 + 11,
    )?;
    assert_eq!(
        replies(&mut driver)?,
        first,
        "the very same replies, `at` included"
    );
    assert!(users(&mut driver)?.is_empty(), "no second user");

    // An update replayed is not applied twice either.
    send(
        &mut driver,
        &update("u1", "ann@example.com", Some("Annie"), None),
        T0 + 20,
    )?;
    send(
        &mut driver,
        &update("u1", "ann@example.com", Some("Annie"), None),
        T0 + 30,
    )?;
    let answers = replies(&mut driver)?;
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0], answers[1]);
    let updated = one(users(&mut driver)?)?;
    assert_eq!(updated.updated_at, T0 + 20);
    Ok(())
}

#[test]
fn an_update_changes_the_profile_of_an_active_user() -> Result<()> {
    let mut driver = driver()?;
    send(&mut driver, &register("r1", "ann@example.com", "Ann"), T0)?;
    let created = one(users(&mut driver)?)?;
    replies(&mut driver)?;

    send(
        &mut driver,
        &update("u1", "ann@example.com", Some("Annie"), None),
        T0 + HOUR,
    )?;
    let renamed = one(users(&mut driver)?)?;
    assert_eq!(
        renamed,
        User {
            display_name: "Annie".to_string(),
            updated_at: T0 + HOUR,
            ..created.clone()
        }
    );
    assert_eq!(
        one(replies(&mut driver)?)?,
        ok_reply("u1", &created.id, T0 + HOUR)
    );

    send(
        &mut driver,
        &update("u2", "ann@example.com", None, Some("new-hash")),
        T0 + 2 * HOUR,
    )?;
    let rehashed = one(users(&mut driver)?)?;
    assert_eq!(rehashed.password_hash, "new-hash");
    assert_eq!(rehashed.display_name, "Annie");
    assert_eq!(rehashed.created_at, T0);
    replies(&mut driver)?;

    // Nothing to change: answered ok, nothing published.
    send(
        &mut driver,
        &update("u3", "ann@example.com", Some("Annie"), None),
        T0 + 3 * HOUR,
    )?;
    assert!(users(&mut driver)?.is_empty());
    assert_eq!(
        one(replies(&mut driver)?)?,
        ok_reply("u3", &created.id, T0 + 3 * HOUR)
    );

    // A producer clock behind the last change does not move updated_at back.
    send(
        &mut driver,
        &update("u4", "ann@example.com", Some("Ann B."), None),
        T0,
    )?;
    assert_eq!(one(users(&mut driver)?)?.updated_at, T0 + 2 * HOUR);
    replies(&mut driver)?;

    send(
        &mut driver,
        &update("u5", "bob@example.com", Some("Bob"), None),
        T0,
    )?;
    assert!(users(&mut driver)?.is_empty());
    assert_refused(&one(replies(&mut driver)?)?, "u5", "USER_NOT_FOUND");
    Ok(())
}

#[test]
fn a_deletion_marks_the_user_deleted_and_frees_the_email() -> Result<()> {
    let mut driver = driver()?;
    send(&mut driver, &register("r1", "ann@example.com", "Ann"), T0)?;
    let created = one(users(&mut driver)?)?;
    replies(&mut driver)?;

    send(&mut driver, &delete("d1", "ann@example.com"), T0 + HOUR)?;
    let deleted = one(users(&mut driver)?)?;
    assert_eq!(
        deleted,
        User {
            status: UserStatus::Deleted,
            updated_at: T0 + HOUR,
            password_hash: String::new(),
            ..created.clone()
        }
    );
    assert_eq!(
        one(replies(&mut driver)?)?,
        ok_reply("d1", &created.id, T0 + HOUR)
    );

    // Gone for updates and deletes.
    send(
        &mut driver,
        &update("u1", "ann@example.com", Some("Ghost"), None),
        T0 + 2 * HOUR,
    )?;
    send(&mut driver, &delete("d2", "ann@example.com"), T0 + 2 * HOUR)?;
    assert!(users(&mut driver)?.is_empty());
    let answers = replies(&mut driver)?;
    assert_refused(&answers[0], "u1", "USER_NOT_FOUND");
    assert_refused(&answers[1], "d2", "USER_NOT_FOUND");

    // The email can be registered again: a new account with a new id.
    send(
        &mut driver,
        &register("r2", "ann@example.com", "Ann Again"),
        T0 + 3 * HOUR,
    )?;
    let again = one(users(&mut driver)?)?;
    assert_ne!(again.id, created.id);
    assert_eq!(again.status, UserStatus::Active);
    assert_eq!(again.created_at, T0 + 3 * HOUR);
    assert_eq!(
        one(replies(&mut driver)?)?,
        ok_reply("r2", &again.id, T0 + 3 * HOUR)
    );
    Ok(())
}

#[test]
fn a_field_that_breaks_its_rule_is_answered_invalid() -> Result<()> {
    let mut driver = driver()?;
    let bad = [
        register("i1", "Ann@Example.com", "Ann"),
        register("i2", "ann.example.com", "Ann"),
        register("i3", "@example.com", "Ann"),
        register("i4", "ann@", "Ann"),
        register("i5", "ann smith@example.com", "Ann"),
        register("i6", "ann@example.com", "  "),
        AuthCommand::RegisterUser(RegisterUser {
            request_id: "i7".to_string(),
            email: "ann@example.com".to_string(),
            password_hash: String::new(),
            role: Role::Seller,
            display_name: "Ann".to_string(),
        }),
    ];
    for command in &bad {
        send(&mut driver, command, T0)?;
    }
    send(&mut driver, &register("r1", "ann@example.com", "Ann"), T0)?;
    users(&mut driver)?;
    send(
        &mut driver,
        &update("i8", "ann@example.com", Some(""), None),
        T0,
    )?;
    send(
        &mut driver,
        &update("i9", "ann@example.com", None, Some("")),
        T0,
    )?;

    assert!(
        users(&mut driver)?.is_empty(),
        "no invalid command changes a user"
    );
    let answers = replies(&mut driver)?;
    let refused: Vec<&Reply> = answers.iter().filter(|r| r.request_id != "r1").collect();
    assert_eq!(refused.len(), 9);
    for (reply, expected) in refused
        .iter()
        .zip(["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8", "i9"])
    {
        assert_refused(reply, expected, "INVALID");
    }
    assert!(
        refused[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("lower-case"))
    );
    assert!(
        refused[5]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("display_name"))
    );
    assert!(
        refused[6]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("password_hash"))
    );
    assert!(
        driver.dead_letters("user-cache")?.is_empty(),
        "the edge gets a reply, not a dead letter"
    );
    Ok(())
}

#[test]
fn what_cannot_be_answered_is_a_dead_letter() -> Result<()> {
    let mut driver = driver()?;
    // Keyed by another email: on the wrong partition for the email rule.
    driver.pipe_at(
        topics::AUTH_COMMANDS,
        "bob@example.com",
        &register("r1", "ann@example.com", "Ann"),
        T0,
    )?;
    // No request id to answer.
    send(&mut driver, &register("", "ann@example.com", "Ann"), T0)?;
    // Not a command, and a tombstone.
    driver.pipe_raw(
        topics::AUTH_COMMANDS,
        "ann@example.com",
        Some(vec![0, 0, 0, 0, 1, 7]),
        T0,
    )?;
    driver.pipe_raw(topics::AUTH_COMMANDS, "ann@example.com", None, T0)?;

    assert!(users(&mut driver)?.is_empty());
    assert!(replies(&mut driver)?.is_empty());
    let dead = driver.dead_letters("user-cache")?;
    assert_eq!(dead.len(), 4);
    let first = &dead[0];
    assert_eq!(first.key, "bob@example.com");
    assert_eq!(first.header(dlq_headers::ERROR_KIND), Some("invalid"));
    assert_eq!(first.header(dlq_headers::PROCESSOR), Some("user-cache"));
    assert_eq!(
        first.header(dlq_headers::SOURCE_TOPIC),
        Some(topics::AUTH_COMMANDS)
    );
    assert!(first.header(dlq_headers::SOURCE_PARTITION).is_some());
    assert!(first.header(dlq_headers::SOURCE_OFFSET).is_some());
    assert!(
        first
            .header(dlq_headers::ERROR)
            .is_some_and(|e| e.contains("is not the command's email"))
    );
    assert!(
        dead[1]
            .header(dlq_headers::ERROR)
            .is_some_and(|e| e.contains("request id"))
    );

    // Nothing stuck: the email still registers.
    send(&mut driver, &register("r2", "ann@example.com", "Ann"), T0)?;
    assert_eq!(users(&mut driver)?.len(), 1);
    Ok(())
}

#[test]
fn answered_requests_are_forgotten_after_a_day_of_stream_time() -> Result<()> {
    let mut driver = driver()?;
    let email = "ann@example.com";
    send(&mut driver, &register("r1", email, "Ann"), T0)?;
    let created = one(users(&mut driver)?)?;
    replies(&mut driver)?;
    let key = format!("{email}\u{0}r1");
    assert!(driver.store(REQUESTS_STORE).get::<Reply>(&key)?.is_some());
    assert_eq!(driver.pending_timers("user-cache"), 1);

    // Stream time moves with records of the same task: the same email.
    send(
        &mut driver,
        &update("u1", email, Some("Annie"), None),
        T0 + 25 * HOUR,
    )?;
    assert!(driver.store(REQUESTS_STORE).get::<Reply>(&key)?.is_none());
    assert!(
        driver
            .store(REQUESTS_STORE)
            .get::<Reply>(&format!("{email}\u{0}u1"))?
            .is_some()
    );
    assert_eq!(driver.pending_timers("user-cache"), 1);
    users(&mut driver)?;
    replies(&mut driver)?;

    // A registration replayed after that is still recognised by its derived id.
    send(&mut driver, &register("r1", email, "Ann"), T0 + 26 * HOUR)?;
    assert!(users(&mut driver)?.is_empty(), "no second user");
    assert_eq!(
        one(replies(&mut driver)?)?,
        ok_reply("r1", &created.id, T0 + 26 * HOUR)
    );
    Ok(())
}

fn auth_script() -> Vec<(AuthCommand, i64)> {
    vec![
        (register("r1", "ann@example.com", "Ann"), T0),
        (register("r2", "bob@example.com", "Bob"), T0 + 1),
        (register("r3", "ann@example.com", "Other Ann"), T0 + 2),
        (update("u1", "ann@example.com", Some("Annie"), None), T0 + 3),
        (delete("d1", "bob@example.com"), T0 + 4),
        // After the crash point: replays and commands that need the restored state.
        (register("r1", "ann@example.com", "Ann"), T0 + 5),
        (register("r4", "ann@example.com", "Yet Another Ann"), T0 + 6),
        (update("u1", "ann@example.com", Some("Annie"), None), T0 + 7),
        (update("u2", "bob@example.com", Some("Bobby"), None), T0 + 8),
        (register("r5", "bob@example.com", "Bob Again"), T0 + 9),
        (
            update("u3", "ann@example.com", None, Some("rotated")),
            T0 + 10,
        ),
    ]
}

#[test]
fn a_crash_and_restore_from_the_changelogs_changes_nothing() -> Result<()> {
    let script = auth_script();

    let mut steady = driver()?;
    for (command, at) in &script {
        send(&mut steady, command, *at)?;
    }

    let mut crashing = driver()?;
    for (i, (command, at)) in script.iter().enumerate() {
        if i == 5 {
            crashing.restart()?;
            assert_eq!(
                crashing.pending_timers("user-cache"),
                5,
                "timers come back too"
            );
        }
        send(&mut crashing, command, *at)?;
    }

    let expected_replies = replies(&mut steady)?;
    assert_eq!(replies(&mut crashing)?, expected_replies);
    assert_eq!(users(&mut crashing)?, users(&mut steady)?);
    for store in [USERS_STORE, REQUESTS_STORE] {
        let live: BTreeMap<String, serde_json::Value> = crashing.store(store).entries()?;
        let want: BTreeMap<String, serde_json::Value> = steady.store(store).entries()?;
        assert_eq!(live, want, "store {store}");
    }

    // And what it came to.
    let codes: Vec<(&str, Option<&str>)> = expected_replies
        .iter()
        .map(|r| (r.request_id.as_str(), r.code.as_deref()))
        .collect();
    assert_eq!(
        codes,
        [
            ("r1", None),
            ("r2", None),
            ("r3", Some("EMAIL_TAKEN")),
            ("u1", None),
            ("d1", None),
            ("r1", None),
            ("r4", Some("EMAIL_TAKEN")),
            ("u1", None),
            ("u2", Some("USER_NOT_FOUND")),
            ("r5", None),
            ("u3", None),
        ]
    );
    let ann: User = crashing
        .store(USERS_STORE)
        .get("ann@example.com")?
        .context("ann is in the table")?;
    assert_eq!(ann.display_name, "Annie");
    assert_eq!(ann.password_hash, "rotated");
    assert_eq!(ann.id, user_id_for("r1", "ann@example.com"));
    let bob: User = crashing
        .store(USERS_STORE)
        .get("bob@example.com")?
        .context("bob is in the table")?;
    assert_eq!(bob.id, user_id_for("r5", "bob@example.com"));
    assert_eq!(bob.status, UserStatus::Active);
    Ok(())
}
