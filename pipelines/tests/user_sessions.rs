//! The refresh-token sessions of the user-cache processor through the real
//! topology.yaml: starting a family, rotating it, reuse of a rotated token revoking
//! the whole family (also when two rotations of one token arrive together), revoked,
//! expired and unknown families, logout, revocation by deletion and by a password
//! change, replayed request ids, forgetting dead families, and a crash restored from
//! the changelogs.

use std::collections::BTreeMap;

use anyhow::{Context as _, Result};
use orderflow_pipelines::catalog;
use orderflow_pipelines::records::{
    AuthCommand, DeleteUser, EndSession, RegisterUser, Reply, Role, RotateSession, StartSession,
    UpdateProfile, topics,
};
use orderflow_pipelines::user_cache::{
    SESSIONS_STORE, SessionFamily, codes, session_key, user_id_for,
};
use orderflow_runtime::TestDriver;

const T0: i64 = 1_704_067_200_000;
const MINUTE: i64 = 60_000;
const HOUR: i64 = 60 * MINUTE;
const DAY: i64 = 24 * HOUR;
/// The refresh TTL the edge uses by default.
const TTL: i64 = 14 * DAY;
/// The `forget-session` delay in topology.yaml.
const RETENTION: i64 = DAY;

const ANN: &str = "ann@example.com";
const BOB: &str = "bob@example.com";

fn driver() -> Result<TestDriver> {
    Ok(TestDriver::from_file(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../topology.yaml"),
        &catalog(),
    )?)
}

fn email_of(command: &AuthCommand) -> &str {
    match command {
        AuthCommand::RegisterUser(c) => &c.email,
        AuthCommand::UpdateProfile(c) => &c.email,
        AuthCommand::DeleteUser(c) => &c.email,
        AuthCommand::StartSession(c) => &c.email,
        AuthCommand::RotateSession(c) => &c.email,
        AuthCommand::EndSession(c) => &c.email,
    }
}

/// Pipes a command keyed by its email, as the HTTP edge does.
fn send(driver: &mut TestDriver, command: &AuthCommand, at: i64) -> Result<()> {
    Ok(driver.pipe_at(topics::AUTH_COMMANDS, email_of(command), command, at)?)
}

fn replies(driver: &mut TestDriver) -> Result<Vec<Reply>> {
    driver
        .read_output::<Reply>(topics::EDGE_REPLIES)?
        .into_iter()
        .map(|r| r.value.context("a reply is never a tombstone"))
        .collect()
}

fn one(driver: &mut TestDriver) -> Result<Reply> {
    let mut answers = replies(driver)?;
    anyhow::ensure!(
        answers.len() == 1,
        "expected exactly one reply, got {answers:?}"
    );
    answers.pop().context("one reply")
}

/// Sends a command and returns its one reply.
fn ask(driver: &mut TestDriver, command: &AuthCommand, at: i64) -> Result<Reply> {
    send(driver, command, at)?;
    one(driver)
}

/// Registers `email` and returns the new account's id.
fn account(driver: &mut TestDriver, email: &str, at: i64) -> Result<String> {
    let request_id = format!("reg-{email}");
    let reply = ask(
        driver,
        &AuthCommand::RegisterUser(RegisterUser {
            request_id: request_id.clone(),
            email: email.to_string(),
            password_hash: "$argon2id$old".to_string(),
            role: Role::Buyer,
            display_name: "Someone".to_string(),
        }),
        at,
    )?;
    assert!(reply.ok, "{reply:?}");
    Ok(user_id_for(&request_id, email))
}

fn start(
    request_id: &str,
    email: &str,
    user_id: &str,
    family: &str,
    token: &str,
    expires_at: i64,
) -> AuthCommand {
    AuthCommand::StartSession(StartSession {
        request_id: request_id.to_string(),
        email: email.to_string(),
        user_id: user_id.to_string(),
        family_id: family.to_string(),
        token_id: token.to_string(),
        expires_at,
    })
}

fn rotate(
    request_id: &str,
    email: &str,
    family: &str,
    token: &str,
    next: &str,
    expires_at: i64,
) -> AuthCommand {
    AuthCommand::RotateSession(RotateSession {
        request_id: request_id.to_string(),
        email: email.to_string(),
        family_id: family.to_string(),
        token_id: token.to_string(),
        next_token_id: next.to_string(),
        expires_at,
    })
}

fn end(request_id: &str, email: &str, family: &str) -> AuthCommand {
    AuthCommand::EndSession(EndSession {
        request_id: request_id.to_string(),
        email: email.to_string(),
        family_id: family.to_string(),
    })
}

fn family(driver: &TestDriver, email: &str, family: &str) -> Result<Option<SessionFamily>> {
    Ok(driver
        .store(SESSIONS_STORE)
        .get::<SessionFamily>(&session_key(email, family))?)
}

fn assert_ok(reply: &Reply, request_id: &str, user_id: Option<&str>) {
    assert_eq!(reply.request_id, request_id, "{reply:?}");
    assert!(reply.ok, "{reply:?}");
    assert_eq!(reply.code, None);
    assert_eq!(reply.entity_id.as_deref(), user_id, "{reply:?}");
}

fn assert_refused(reply: &Reply, request_id: &str, code: &str) {
    assert_eq!(reply.request_id, request_id, "{reply:?}");
    assert!(!reply.ok, "{reply:?}");
    assert_eq!(reply.code.as_deref(), Some(code), "{reply:?}");
    assert!(reply.message.is_some(), "a refusal says why");
    assert_eq!(reply.entity_id, None);
}

/// Ann's account with one started family `f1` whose current token is `t1`.
fn started() -> Result<(TestDriver, String)> {
    let mut driver = driver()?;
    let ann = account(&mut driver, ANN, T0)?;
    let reply = ask(
        &mut driver,
        &start("s1", ANN, &ann, "f1", "t1", T0 + TTL),
        T0,
    )?;
    assert_ok(&reply, "s1", Some(&ann));
    Ok((driver, ann))
}

#[test]
fn a_login_starts_a_family_whose_first_token_is_current() -> Result<()> {
    let (driver, ann) = started()?;
    assert_eq!(
        family(&driver, ANN, "f1")?,
        Some(SessionFamily {
            user_id: ann,
            token_id: "t1".to_string(),
            expires_at: T0 + TTL,
            revoked: false,
        })
    );
    assert_eq!(
        driver.pending_timers("user-cache"),
        3,
        "two forget-request timers and the family's forget-session timer"
    );
    Ok(())
}

#[test]
fn a_start_needs_the_active_account_of_the_email() -> Result<()> {
    let mut driver = driver()?;
    let ann = account(&mut driver, ANN, T0)?;
    let bob = account(&mut driver, BOB, T0)?;

    // No account, another account's id, an unknown id.
    let reply = ask(
        &mut driver,
        &start("s1", "cat@example.com", &ann, "f1", "t1", T0 + TTL),
        T0,
    )?;
    assert_refused(&reply, "s1", codes::USER_NOT_FOUND);
    let reply = ask(
        &mut driver,
        &start("s2", ANN, &bob, "f2", "t1", T0 + TTL),
        T0,
    )?;
    assert_refused(&reply, "s2", codes::USER_NOT_FOUND);
    let reply = ask(
        &mut driver,
        &start("s3", ANN, "not-an-id", "f3", "t1", T0 + TTL),
        T0,
    )?;
    assert_refused(&reply, "s3", codes::USER_NOT_FOUND);

    // A deleted account.
    let deleted = ask(
        &mut driver,
        &AuthCommand::DeleteUser(DeleteUser {
            request_id: "d1".to_string(),
            email: BOB.to_string(),
        }),
        T0 + 1,
    )?;
    assert!(deleted.ok);
    let reply = ask(
        &mut driver,
        &start("s4", BOB, &bob, "f4", "t1", T0 + TTL),
        T0 + 2,
    )?;
    assert_refused(&reply, "s4", codes::USER_NOT_FOUND);

    assert!(driver.store(SESSIONS_STORE).is_empty());
    Ok(())
}

#[test]
fn session_fields_that_break_their_rule_are_answered_invalid() -> Result<()> {
    let (mut driver, ann) = started()?;
    let bad = [
        // Already expired, an empty family id, a control character in a token id.
        start("i1", ANN, &ann, "f2", "t1", T0),
        start("i2", ANN, &ann, "", "t1", T0 + TTL),
        start("i3", ANN, &ann, "f3", "t\u{7}", T0 + TTL),
        // A family that exists: starting it again would bring its first token back.
        start("i4", ANN, &ann, "f1", "t1", T0 + TTL),
        // A rotation to the same token, to an expiry in the past, to an empty token.
        rotate("i5", ANN, "f1", "t1", "t1", T0 + TTL),
        rotate("i6", ANN, "f1", "t1", "t2", T0 - 1),
        rotate("i7", ANN, "f1", "t1", "", T0 + TTL),
        end("i8", ANN, ""),
    ];
    for command in &bad {
        send(&mut driver, command, T0)?;
    }
    let answers = replies(&mut driver)?;
    assert_eq!(answers.len(), bad.len());
    for (reply, expected) in answers
        .iter()
        .zip(["i1", "i2", "i3", "i4", "i5", "i6", "i7", "i8"])
    {
        assert_refused(reply, expected, codes::INVALID);
    }
    assert!(driver.dead_letters("user-cache")?.is_empty());

    // None of it touched the family: its first token still rotates.
    let reply = ask(
        &mut driver,
        &rotate("r1", ANN, "f1", "t1", "t2", T0 + TTL),
        T0,
    )?;
    assert_ok(&reply, "r1", Some(&ann));
    assert_eq!(driver.store(SESSIONS_STORE).len(), 1);
    Ok(())
}

#[test]
fn a_rotation_makes_the_next_token_current() -> Result<()> {
    let (mut driver, ann) = started()?;
    let at = T0 + 10 * MINUTE;
    let reply = ask(
        &mut driver,
        &rotate("r1", ANN, "f1", "t1", "t2", at + TTL),
        at,
    )?;
    assert_ok(&reply, "r1", Some(&ann));
    assert_eq!(reply.at, at);
    assert_eq!(
        family(&driver, ANN, "f1")?,
        Some(SessionFamily {
            user_id: ann,
            token_id: "t2".to_string(),
            expires_at: at + TTL,
            revoked: false,
        })
    );
    Ok(())
}

#[test]
fn rotations_chain_each_token_once() -> Result<()> {
    let (mut driver, ann) = started()?;
    let reply = ask(
        &mut driver,
        &rotate("r1", ANN, "f1", "t1", "t2", T0 + TTL + 1),
        T0 + 1,
    )?;
    assert_ok(&reply, "r1", Some(&ann));
    let reply = ask(
        &mut driver,
        &rotate("r2", ANN, "f1", "t2", "t3", T0 + TTL + 2),
        T0 + 2,
    )?;
    assert_ok(&reply, "r2", Some(&ann));
    let current = family(&driver, ANN, "f1")?.context("the family")?;
    assert_eq!(current.token_id, "t3");
    assert_eq!(current.expires_at, T0 + TTL + 2);
    assert!(!current.revoked);
    Ok(())
}

#[test]
fn reuse_of_a_rotated_token_revokes_the_whole_family() -> Result<()> {
    let (mut driver, ann) = started()?;
    // The legitimate holder rotates t1 -> t2.
    let reply = ask(
        &mut driver,
        &rotate("r1", ANN, "f1", "t1", "t2", T0 + TTL),
        T0 + 1,
    )?;
    assert_ok(&reply, "r1", Some(&ann));

    // Someone who copied t1 presents it again.
    let reply = ask(
        &mut driver,
        &rotate("r2", ANN, "f1", "t1", "tx", T0 + TTL),
        T0 + 2,
    )?;
    assert_refused(&reply, "r2", codes::REFRESH_REUSED);
    let dead = family(&driver, ANN, "f1")?.context("a revoked family is kept a while")?;
    assert!(dead.revoked);
    assert_eq!(
        dead.token_id, "t2",
        "the attacker's token never became current"
    );

    // The legitimate holder's t2 dies with the family.
    let reply = ask(
        &mut driver,
        &rotate("r3", ANN, "f1", "t2", "t3", T0 + TTL),
        T0 + 3,
    )?;
    assert_refused(&reply, "r3", codes::SESSION_REVOKED);
    Ok(())
}

#[test]
fn of_two_rotations_of_one_token_together_only_the_first_wins() -> Result<()> {
    let (mut driver, ann) = started()?;
    // Two edges take the same refresh token at the same moment: both commands are
    // piped before either reply is read.
    let at = T0 + HOUR;
    send(
        &mut driver,
        &rotate("ra", ANN, "f1", "t1", "ta", at + TTL),
        at,
    )?;
    send(
        &mut driver,
        &rotate("rb", ANN, "f1", "t1", "tb", at + TTL),
        at,
    )?;
    let answers = replies(&mut driver)?;
    assert_eq!(answers.len(), 2);
    assert_ok(&answers[0], "ra", Some(&ann));
    assert_refused(&answers[1], "rb", codes::REFRESH_REUSED);

    // The loser's attempt revoked the family, so the winner's token is dead too.
    let dead = family(&driver, ANN, "f1")?.context("the family")?;
    assert!(dead.revoked);
    assert_eq!(dead.token_id, "ta");
    let reply = ask(
        &mut driver,
        &rotate("rc", ANN, "f1", "ta", "tc", at + TTL),
        at + 1,
    )?;
    assert_refused(&reply, "rc", codes::SESSION_REVOKED);
    let reply = ask(
        &mut driver,
        &rotate("rd", ANN, "f1", "tb", "td", at + TTL),
        at + 1,
    )?;
    assert_refused(&reply, "rd", codes::SESSION_REVOKED);
    Ok(())
}

#[test]
fn unknown_and_expired_families_are_refused() -> Result<()> {
    let (mut driver, ann) = started()?;
    let reply = ask(
        &mut driver,
        &rotate("r1", ANN, "nope", "t1", "t2", T0 + TTL),
        T0,
    )?;
    assert_refused(&reply, "r1", codes::SESSION_NOT_FOUND);
    // A family of one email is not found under another.
    account(&mut driver, BOB, T0)?;
    let reply = ask(
        &mut driver,
        &rotate("r2", BOB, "f1", "t1", "t2", T0 + TTL),
        T0,
    )?;
    assert_refused(&reply, "r2", codes::SESSION_NOT_FOUND);

    // At its expiry the token still rotates; a moment after, it does not.
    let late = T0 + TTL + 1;
    let reply = ask(
        &mut driver,
        &rotate("r3", ANN, "f1", "t1", "t2", late + TTL),
        late,
    )?;
    assert_refused(&reply, "r3", codes::SESSION_EXPIRED);
    let expired = family(&driver, ANN, "f1")?.context("the family")?;
    assert!(!expired.revoked, "expiry is not revocation");
    assert_eq!(expired.token_id, "t1");

    let (mut driver, _) = started()?;
    let reply = ask(
        &mut driver,
        &rotate("r4", ANN, "f1", "t1", "t2", T0 + 2 * TTL),
        T0 + TTL,
    )?;
    assert_ok(&reply, "r4", Some(&ann));
    Ok(())
}

#[test]
fn logout_revokes_the_family_and_is_idempotent() -> Result<()> {
    let (mut driver, ann) = started()?;
    let reply = ask(&mut driver, &end("e1", ANN, "f1"), T0 + 1)?;
    assert_ok(&reply, "e1", Some(&ann));
    assert!(family(&driver, ANN, "f1")?.context("the family")?.revoked);

    let reply = ask(
        &mut driver,
        &rotate("r1", ANN, "f1", "t1", "t2", T0 + TTL),
        T0 + 2,
    )?;
    assert_refused(&reply, "r1", codes::SESSION_REVOKED);

    // Ending it again, or a family nobody knows, is fine.
    let reply = ask(&mut driver, &end("e2", ANN, "f1"), T0 + 3)?;
    assert_ok(&reply, "e2", Some(&ann));
    let reply = ask(&mut driver, &end("e3", ANN, "never-started"), T0 + 3)?;
    assert_ok(&reply, "e3", None);
    assert_eq!(
        family(&driver, ANN, "never-started")?,
        None,
        "no family is created by ending one"
    );
    Ok(())
}

#[test]
fn deleting_the_account_revokes_every_family_of_its_email() -> Result<()> {
    let (mut driver, ann) = started()?;
    let bob = account(&mut driver, BOB, T0)?;
    let reply = ask(
        &mut driver,
        &start("s2", ANN, &ann, "f2", "u1", T0 + TTL),
        T0,
    )?;
    assert_ok(&reply, "s2", Some(&ann));
    let reply = ask(
        &mut driver,
        &start("s3", BOB, &bob, "f1", "v1", T0 + TTL),
        T0,
    )?;
    assert_ok(&reply, "s3", Some(&bob));

    let reply = ask(
        &mut driver,
        &AuthCommand::DeleteUser(DeleteUser {
            request_id: "d1".to_string(),
            email: ANN.to_string(),
        }),
        T0 + HOUR,
    )?;
    assert_ok(&reply, "d1", Some(&ann));
    for f in ["f1", "f2"] {
        assert!(family(&driver, ANN, f)?.context("ann's family")?.revoked);
    }
    assert!(
        !family(&driver, BOB, "f1")?.context("bob's family")?.revoked,
        "another email's family with the same id is untouched"
    );

    let reply = ask(
        &mut driver,
        &rotate("r1", ANN, "f2", "u1", "u2", T0 + TTL),
        T0 + HOUR,
    )?;
    assert_refused(&reply, "r1", codes::SESSION_REVOKED);
    let reply = ask(
        &mut driver,
        &rotate("r2", BOB, "f1", "v1", "v2", T0 + TTL),
        T0 + HOUR,
    )?;
    assert_ok(&reply, "r2", Some(&bob));
    Ok(())
}

#[test]
fn a_password_change_revokes_every_family_and_a_rename_does_not() -> Result<()> {
    let (mut driver, ann) = started()?;
    let update = |request_id: &str, name: Option<&str>, hash: Option<&str>| {
        AuthCommand::UpdateProfile(UpdateProfile {
            request_id: request_id.to_string(),
            email: ANN.to_string(),
            display_name: name.map(str::to_string),
            password_hash: hash.map(str::to_string),
        })
    };

    // A new display name, or the same hash again, is not a password change.
    let reply = ask(&mut driver, &update("u1", Some("Annie"), None), T0 + 1)?;
    assert_ok(&reply, "u1", Some(&ann));
    let reply = ask(
        &mut driver,
        &update("u2", None, Some("$argon2id$old")),
        T0 + 2,
    )?;
    assert_ok(&reply, "u2", Some(&ann));
    assert!(!family(&driver, ANN, "f1")?.context("the family")?.revoked);

    let reply = ask(
        &mut driver,
        &update("u3", None, Some("$argon2id$new")),
        T0 + 3,
    )?;
    assert_ok(&reply, "u3", Some(&ann));
    assert!(family(&driver, ANN, "f1")?.context("the family")?.revoked);
    let reply = ask(
        &mut driver,
        &rotate("r1", ANN, "f1", "t1", "t2", T0 + TTL),
        T0 + 4,
    )?;
    assert_refused(&reply, "r1", codes::SESSION_REVOKED);

    // A login after the change starts a family that works.
    let reply = ask(
        &mut driver,
        &start("s2", ANN, &ann, "f2", "u1", T0 + TTL),
        T0 + 5,
    )?;
    assert_ok(&reply, "s2", Some(&ann));
    let reply = ask(
        &mut driver,
        &rotate("r2", ANN, "f2", "u1", "u2", T0 + TTL),
        T0 + 6,
    )?;
    assert_ok(&reply, "r2", Some(&ann));
    Ok(())
}

#[test]
fn a_replayed_request_id_gets_the_same_reply_and_changes_nothing() -> Result<()> {
    let (mut driver, ann) = started()?;
    let first = ask(
        &mut driver,
        &rotate("r1", ANN, "f1", "t1", "t2", T0 + TTL),
        T0 + 1,
    )?;
    assert_ok(&first, "r1", Some(&ann));

    // The edge retries the very same rotation: the same reply, `at` included, and it is
    // not taken for a reuse of t1.
    let again = ask(
        &mut driver,
        &rotate("r1", ANN, "f1", "t1", "t2", T0 + TTL),
        T0 + 5,
    )?;
    assert_eq!(again, first);
    let current = family(&driver, ANN, "f1")?.context("the family")?;
    assert!(!current.revoked);
    assert_eq!(current.token_id, "t2");

    // A refusal is replayed as the same refusal.
    let refused = ask(
        &mut driver,
        &rotate("r2", ANN, "nope", "t1", "t2", T0 + TTL),
        T0 + 6,
    )?;
    assert_refused(&refused, "r2", codes::SESSION_NOT_FOUND);
    assert_eq!(
        ask(
            &mut driver,
            &rotate("r2", ANN, "nope", "t1", "t2", T0 + TTL),
            T0 + 7
        )?,
        refused
    );

    // So is a start and a logout.
    let started = ask(
        &mut driver,
        &start("s1", ANN, &ann, "f1", "t1", T0 + TTL),
        T0 + 8,
    )?;
    assert_ok(&started, "s1", Some(&ann));
    assert_eq!(started.at, T0, "the first answer, not a new one");
    assert_eq!(
        family(&driver, ANN, "f1")?.context("the family")?.token_id,
        "t2",
        "a replayed start does not bring the first token back"
    );
    let ended = ask(&mut driver, &end("e1", ANN, "f1"), T0 + 9)?;
    assert_eq!(ask(&mut driver, &end("e1", ANN, "f1"), T0 + 10)?, ended);
    Ok(())
}

#[test]
fn dead_families_are_forgotten_after_the_retention() -> Result<()> {
    let (mut driver, ann) = started()?;
    // f2 is revoked at T0 + 1h; f3 is left to expire at T0 + 2h; f1 lives on (T0 + TTL).
    let reply = ask(
        &mut driver,
        &start("s2", ANN, &ann, "f2", "u1", T0 + TTL),
        T0,
    )?;
    assert_ok(&reply, "s2", Some(&ann));
    let reply = ask(
        &mut driver,
        &start("s3", ANN, &ann, "f3", "v1", T0 + 2 * HOUR),
        T0,
    )?;
    assert_ok(&reply, "s3", Some(&ann));
    let reply = ask(&mut driver, &end("e2", ANN, "f2"), T0 + HOUR)?;
    assert_ok(&reply, "e2", Some(&ann));

    // Stream time moves with the records of the email's task. Just before f2's
    // retention is over, everything is still there.
    let reply = ask(
        &mut driver,
        &end("e-none", ANN, "x"),
        T0 + HOUR + RETENTION - 1,
    )?;
    assert_ok(&reply, "e-none", None);
    assert!(family(&driver, ANN, "f2")?.is_some());
    assert!(family(&driver, ANN, "f3")?.is_some());

    let reply = ask(
        &mut driver,
        &end("e-none2", ANN, "x"),
        T0 + HOUR + RETENTION,
    )?;
    assert_ok(&reply, "e-none2", None);
    assert_eq!(
        family(&driver, ANN, "f2")?,
        None,
        "revoked an hour, forgotten a day later"
    );
    assert!(family(&driver, ANN, "f3")?.is_some());

    let reply = ask(
        &mut driver,
        &end("e-none3", ANN, "x"),
        T0 + 2 * HOUR + RETENTION,
    )?;
    assert_ok(&reply, "e-none3", None);
    assert_eq!(
        family(&driver, ANN, "f3")?,
        None,
        "expired, forgotten a day later"
    );
    assert!(family(&driver, ANN, "f1")?.is_some(), "a live family stays");

    // A forgotten family is unknown from then on.
    let at = T0 + 3 * HOUR + RETENTION;
    let reply = ask(
        &mut driver,
        &rotate("r1", ANN, "f2", "u1", "u2", at + TTL),
        at,
    )?;
    assert_refused(&reply, "r1", codes::SESSION_NOT_FOUND);

    // A rotation moves the live family's timer with its new expiry.
    let reply = ask(
        &mut driver,
        &rotate("r2", ANN, "f1", "t1", "t2", at + TTL),
        at,
    )?;
    assert_ok(&reply, "r2", Some(&ann));
    let reply = ask(&mut driver, &end("e-none4", ANN, "x"), T0 + TTL + RETENTION)?;
    assert_ok(&reply, "e-none4", None);
    assert!(
        family(&driver, ANN, "f1")?.is_some(),
        "the first token's expiry no longer counts"
    );
    let reply = ask(&mut driver, &end("e-none5", ANN, "x"), at + TTL + RETENTION)?;
    assert_ok(&reply, "e-none5", None);
    assert_eq!(family(&driver, ANN, "f1")?, None);
    Ok(())
}

fn session_script(ann: &str) -> Vec<(AuthCommand, i64)> {
    vec![
        (start("s1", ANN, ann, "f1", "t1", T0 + TTL), T0 + 1),
        (start("s2", ANN, ann, "f2", "u1", T0 + TTL), T0 + 2),
        (rotate("r1", ANN, "f1", "t1", "t2", T0 + TTL), T0 + 3),
        (end("e1", ANN, "f2"), T0 + 4),
        // After the crash point: commands that need the restored families.
        (rotate("r1", ANN, "f1", "t1", "t2", T0 + TTL), T0 + 5),
        (rotate("r2", ANN, "f1", "t2", "t3", T0 + TTL), T0 + 6),
        (rotate("r3", ANN, "f2", "u1", "u2", T0 + TTL), T0 + 7),
        (rotate("r4", ANN, "f1", "t2", "t9", T0 + TTL), T0 + 8),
        (rotate("r5", ANN, "f1", "t3", "t4", T0 + TTL), T0 + 9),
        (end("e2", ANN, "x"), T0 + 4 + RETENTION),
    ]
}

#[test]
fn a_crash_and_restore_from_the_changelogs_changes_nothing() -> Result<()> {
    let mut steady = driver()?;
    let ann = account(&mut steady, ANN, T0)?;
    let script = session_script(&ann);
    for (command, at) in &script {
        send(&mut steady, command, *at)?;
    }

    let mut crashing = driver()?;
    account(&mut crashing, ANN, T0)?;
    for (i, (command, at)) in script.iter().enumerate() {
        if i == 4 {
            let timers = crashing.pending_timers("user-cache");
            crashing.restart()?;
            assert_eq!(
                crashing.pending_timers("user-cache"),
                timers,
                "timers come back too"
            );
        }
        send(&mut crashing, command, *at)?;
    }

    let expected = replies(&mut steady)?;
    assert_eq!(replies(&mut crashing)?, expected);
    let live: BTreeMap<String, serde_json::Value> = crashing.store(SESSIONS_STORE).entries()?;
    let want: BTreeMap<String, serde_json::Value> = steady.store(SESSIONS_STORE).entries()?;
    assert_eq!(live, want);

    let codes: Vec<(&str, Option<&str>)> = expected
        .iter()
        .map(|r| (r.request_id.as_str(), r.code.as_deref()))
        .collect();
    assert_eq!(
        codes,
        [
            ("s1", None),
            ("s2", None),
            ("r1", None),
            ("e1", None),
            ("r1", None),
            ("r2", None),
            ("r3", Some(codes::SESSION_REVOKED)),
            ("r4", Some(codes::REFRESH_REUSED)),
            ("r5", Some(codes::SESSION_REVOKED)),
            ("e2", None),
        ]
    );
    // f2 was revoked at T0 + 4 and is forgotten by the last command; f1 was revoked
    // by the reuse at T0 + 8 and is still there.
    assert_eq!(family(&crashing, ANN, "f2")?, None);
    assert!(family(&crashing, ANN, "f1")?.context("f1")?.revoked);
    Ok(())
}
