//! The user-cache processor: applies the account commands of `auth.commands` (keyed by
//! lower-case email) to the user table, publishes every changed `User` on `auth.users`
//! (keyed by user id) and answers each command with a `Reply` on `edge.replies`
//! (keyed by request id), which the HTTP edge is waiting for.
//!
//! Keying the commands by email puts every command of one email on one task, one at a
//! time: of two registrations of one email, however close together, the first creates
//! the user and the second gets `EMAIL_TAKEN`.
//!
//! # Commands
//!
//! - `RegisterUser`: a new email (or the email of a DELETED account) gets a new ACTIVE
//!   user whose id is [`user_id_for`] the command, so a replay computes the same id;
//!   the email of an ACTIVE account is refused with `EMAIL_TAKEN`. Registering again
//!   after a deletion creates a *new* account with a new id; the old id stays DELETED
//!   on `auth.users`, so nothing attached to it (orders, buyer relations, chat rooms)
//!   passes to whoever takes the email next.
//! - `UpdateProfile`: changes the display name and/or credential hash of an ACTIVE
//!   account; a command that changes nothing is answered ok and publishes nothing.
//! - `DeleteUser`: marks an ACTIVE account DELETED, clears its credential hash (a
//!   deleted account keeps no credential), and publishes it. `auth.users` gets the
//!   DELETED user, not a tombstone: readers learn the id is gone.
//!
//! - `StartSession`: opens a refresh-token family (see *Sessions* below) for the ACTIVE
//!   account of the email; a `user_id` that is not that account's id, or an email
//!   without an ACTIVE account, is refused with `USER_NOT_FOUND`.
//! - `RotateSession`: trades the family's current refresh token for the next one.
//! - `EndSession`: revokes a family (logout); ok even for an unknown family.
//!
//! Updating or deleting an email with no ACTIVE account is refused with
//! `USER_NOT_FOUND`. A command that breaks a field rule (email lower-case with a local
//! part, an `@` and a domain; display name and credential hash non-empty) is refused
//! with `INVALID`: the edge waits for a reply, so it gets one rather than a dead
//! letter. What cannot be answered at all is a [`ProcessError::Invalid`] and goes to
//! the dead-letter topic: a value that does not decode, a record key that is not the
//! command's email (the record sits on the wrong partition, so the email rule would
//! not be race-free), and an empty request id or one with control characters.
//!
//! # Sessions
//!
//! A login starts a *token family*: the refresh token the edge hands out, and every
//! token that replaces it by rotation. The family's state lives here, in a store of
//! this processor, rather than in one edge's memory, so every edge instance agrees;
//! and since every command of one email is processed on one task, one at a time,
//! rotation is race-free: of two rotations presenting the same refresh token, however
//! close together and through whichever edges, exactly one finds it current.
//!
//! A `RotateSession` is answered, in this order: an unknown family `SESSION_NOT_FOUND`;
//! a revoked one `SESSION_REVOKED`; one whose current token expired before the
//! command's record time `SESSION_EXPIRED`; a presented token that is not the current
//! one `REFRESH_REUSED`, and the whole family is revoked (a rotated token presented
//! again means two parties hold the family, and there is no telling which is the
//! legitimate one, so both lose it: the holder of the newest token is refused at its
//! next rotation too and has to log in again). Otherwise the next token becomes the
//! current one with its expiry, ok. A rotation's or start's `next_token_id`/`token_id`
//! and `expires_at` are the edge's (it signs the token); `expires_at` must lie after
//! the record time, and a rotation must name a new token, else `INVALID`.
//!
//! `DeleteUser`, and an `UpdateProfile` that changes the credential hash (a password
//! change), revoke every family of the email, so no refresh token issued before keeps
//! working. Ok replies to `StartSession` and `RotateSession` carry the account's id in
//! `entity_id` (as does `EndSession` when the family was known).
//!
//! A family is dropped by the stream-time timer `forget-session` once it has been
//! expired or revoked for that timer's delay (topology.yaml): the refresh tokens are
//! dead by then anyway, and until then a late refresh gets the precise code rather
//! than `SESSION_NOT_FOUND`.
//!
//! # Stores
//!
//! | store | key | value |
//! | --- | --- | --- |
//! | `users-by-email` | lower-case email | the [`User`], DELETED ones included |
//! | `user-requests` | `<email>` NUL `<requestId>` | the [`Reply`] that answered it |
//! | `sessions` | `<email>` NUL `<familyId>` | the [`SessionFamily`] |
//!
//! Every answered request is remembered with its reply, so a replayed request id
//! (an edge retry, a producer retry) gets the very same reply again and changes
//! nothing. Request ids are remembered per email because the email picks the task: no
//! task could see the same request id under another email anyway. The stream-time
//! timer `forget-request` (its delay is in topology.yaml) drops a remembered request
//! once stream time has passed it by that long, so the store does not grow forever.
//! A registration replayed after that is still recognised (the account's id is the
//! one the command derives) and answered ok with the same id.

use orderflow_runtime::processor::{BuildError, ProcessorSpec};
use orderflow_runtime::store::KeyValueStore;
use orderflow_runtime::timer::Timer;
use orderflow_runtime::{Context, ProcessError, Processor, Record};
use serde::{Deserialize, Serialize};

use crate::ids::derived_uuid;
use crate::records::{
    AuthCommand, DeleteUser, EndSession, RegisterUser, Reply, RotateSession, StartSession,
    UpdateProfile, User, UserStatus, topics,
};

/// The user table: lower-case email → [`User`].
pub const USERS_STORE: &str = "users-by-email";

/// The answered requests: `<email>` NUL `<requestId>` → [`Reply`].
pub const REQUESTS_STORE: &str = "user-requests";

/// The refresh-token families: `<email>` NUL `<familyId>` → [`SessionFamily`].
pub const SESSIONS_STORE: &str = "sessions";

/// The stream-time timer that forgets an answered request.
pub const FORGET_REQUEST_TIMER: &str = "forget-request";

/// The stream-time timer that drops a token family some time after it expired or was
/// revoked.
pub const FORGET_SESSION_TIMER: &str = "forget-session";

/// The `code` of a refused request's [`Reply`].
pub mod codes {
    /// A registration for an email that has an ACTIVE account.
    pub const EMAIL_TAKEN: &str = "EMAIL_TAKEN";
    /// An update or deletion for an email without an ACTIVE account.
    pub const USER_NOT_FOUND: &str = "USER_NOT_FOUND";
    /// A field breaks its rule; the reply's message says which.
    pub const INVALID: &str = "INVALID";
    /// A rotation of a token family this processor does not know (never started, or
    /// forgotten after it expired or was revoked).
    pub const SESSION_NOT_FOUND: &str = "SESSION_NOT_FOUND";
    /// A rotation of a revoked token family (logout, reuse, deletion, password change).
    pub const SESSION_REVOKED: &str = "SESSION_REVOKED";
    /// A rotation after the family's current refresh token expired.
    pub const SESSION_EXPIRED: &str = "SESSION_EXPIRED";
    /// A rotation presenting a refresh token that was already rotated away: the whole
    /// family has been revoked.
    pub const REFRESH_REUSED: &str = "REFRESH_REUSED";
}

/// One refresh-token family in the `sessions` store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionFamily {
    /// The account the family belongs to.
    pub user_id: String,
    /// Id (`jti`) of the current refresh token: the only one a rotation may present.
    pub token_id: String,
    /// When the current refresh token expires, epoch milliseconds.
    pub expires_at: i64,
    /// Whether the family was revoked; a revoked family never comes back.
    pub revoked: bool,
}

/// The `sessions` key of a token family. Emails hold no control characters (checked
/// before this is used), so every family of one email shares the prefix
/// `<email>` NUL and no other email's family does.
pub fn session_key(email: &str, family_id: &str) -> String {
    format!("{email}\u{0}{family_id}")
}

/// The `config:` block of a `user-cache` processor: it takes no settings (the request
/// retention is the `forget-request` timer's delay), and a misspelt one is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserCacheConfig {}

/// The user table materializer. See the module docs.
#[derive(Debug, Default)]
pub struct UserCache;

impl UserCache {
    /// The builder registered in the catalog under `user-cache`.
    pub fn build(spec: &ProcessorSpec) -> Result<Box<dyn Processor>, BuildError> {
        let UserCacheConfig {} = spec.config()?;
        Ok(Box::new(UserCache))
    }
}

/// The id of the user a `RegisterUser` creates: a UUID-formatted string derived
/// ([`derived_uuid`]) from the request id and the email, so a replay of the command
/// derives the same id and never a second account.
pub fn user_id_for(request_id: &str, email: &str) -> String {
    derived_uuid("orderflow.user-id.v1", &[request_id, email])
}

/// The `user-requests` key of a request. Request ids hold no control characters
/// (checked before this is used), so the NUL separates the two parts unambiguously.
fn request_key(email: &str, request_id: &str) -> String {
    format!("{email}\u{0}{request_id}")
}

/// What applying a command came to.
#[derive(Debug)]
enum Outcome {
    /// Carried out: the account's id (the reply's `entity_id`), the user to publish if
    /// it changed, and whether every token family of the email is to be revoked.
    Done {
        user_id: Option<String>,
        changed: Option<User>,
        revoke_sessions: bool,
    },
    /// Refused with a code and a message.
    Refused { code: &'static str, message: String },
}

impl Outcome {
    fn refused(code: &'static str, message: impl Into<String>) -> Self {
        Outcome::Refused {
            code,
            message: message.into(),
        }
    }

    fn done(user_id: impl Into<String>) -> Self {
        Outcome::Done {
            user_id: Some(user_id.into()),
            changed: None,
            revoke_sessions: false,
        }
    }
}

fn command_ids(command: &AuthCommand) -> (&str, &str) {
    match command {
        AuthCommand::RegisterUser(c) => (&c.request_id, &c.email),
        AuthCommand::UpdateProfile(c) => (&c.request_id, &c.email),
        AuthCommand::DeleteUser(c) => (&c.request_id, &c.email),
        AuthCommand::StartSession(c) => (&c.request_id, &c.email),
        AuthCommand::RotateSession(c) => (&c.request_id, &c.email),
        AuthCommand::EndSession(c) => (&c.request_id, &c.email),
    }
}

/// The field rules; `Err` holds the message of the `INVALID` reply. `now` is the
/// record time, which a new refresh token's expiry must lie after.
fn validate(command: &AuthCommand, now: i64) -> Result<(), String> {
    let (_, email) = command_ids(command);
    check_email(email)?;
    match command {
        AuthCommand::RegisterUser(c) => {
            check_display_name(&c.display_name)?;
            check_password_hash(&c.password_hash)
        }
        AuthCommand::UpdateProfile(c) => {
            if let Some(name) = &c.display_name {
                check_display_name(name)?;
            }
            if let Some(hash) = &c.password_hash {
                check_password_hash(hash)?;
            }
            Ok(())
        }
        AuthCommand::DeleteUser(_) => Ok(()),
        AuthCommand::StartSession(c) => {
            check_id("user_id", &c.user_id)?;
            check_id("family_id", &c.family_id)?;
            check_id("token_id", &c.token_id)?;
            check_expiry(c.expires_at, now)
        }
        AuthCommand::RotateSession(c) => {
            check_id("family_id", &c.family_id)?;
            check_id("token_id", &c.token_id)?;
            check_id("next_token_id", &c.next_token_id)?;
            if c.next_token_id == c.token_id {
                return Err("next_token_id must differ from token_id".to_string());
            }
            check_expiry(c.expires_at, now)
        }
        AuthCommand::EndSession(c) => check_id("family_id", &c.family_id),
    }
}

fn check_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() || id.chars().any(char::is_control) {
        return Err(format!(
            "{field} must be non-empty, without control characters"
        ));
    }
    Ok(())
}

fn check_expiry(expires_at: i64, now: i64) -> Result<(), String> {
    if expires_at <= now {
        return Err("expires_at must lie after the command's record time".to_string());
    }
    Ok(())
}

fn check_email(email: &str) -> Result<(), String> {
    if email.to_lowercase() != email {
        return Err("email must be lower-case".to_string());
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("email must not contain spaces or control characters".to_string());
    }
    match email.rsplit_once('@') {
        Some((local, domain)) if !local.is_empty() && !domain.is_empty() => Ok(()),
        _ => Err("email must be <local part>@<domain>".to_string()),
    }
}

fn check_display_name(name: &str) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err("display_name must not be empty".to_string());
    }
    Ok(())
}

fn check_password_hash(hash: &str) -> Result<(), String> {
    if hash.is_empty() {
        return Err("password_hash must not be empty".to_string());
    }
    Ok(())
}

fn active_user(users: &KeyValueStore, email: &str) -> Result<Option<User>, ProcessError> {
    Ok(users
        .get::<User>(email)?
        .filter(|u| u.status == UserStatus::Active))
}

fn register(
    users: &KeyValueStore,
    command: &RegisterUser,
    now: i64,
) -> Result<Outcome, ProcessError> {
    let id = user_id_for(&command.request_id, &command.email);
    match users.get::<User>(&command.email)? {
        // This very registration, replayed after its request was forgotten: the
        // account it created answers it, whatever became of it since.
        Some(existing) if existing.id == id => Ok(Outcome::done(id)),
        Some(existing) if existing.status == UserStatus::Active => Ok(Outcome::refused(
            codes::EMAIL_TAKEN,
            "an account with this email exists",
        )),
        _ => Ok(Outcome::Done {
            user_id: Some(id.clone()),
            revoke_sessions: false,
            changed: Some(User {
                id,
                email: command.email.clone(),
                role: command.role,
                display_name: command.display_name.clone(),
                status: UserStatus::Active,
                created_at: now,
                updated_at: now,
                password_hash: command.password_hash.clone(),
            }),
        }),
    }
}

fn update(
    users: &KeyValueStore,
    command: &UpdateProfile,
    now: i64,
) -> Result<Outcome, ProcessError> {
    let Some(mut user) = active_user(users, &command.email)? else {
        return Ok(Outcome::refused(
            codes::USER_NOT_FOUND,
            "no account with this email",
        ));
    };
    let mut changed = false;
    if let Some(name) = &command.display_name
        && *name != user.display_name
    {
        user.display_name.clone_from(name);
        changed = true;
    }
    let mut password_changed = false;
    if let Some(hash) = &command.password_hash
        && *hash != user.password_hash
    {
        user.password_hash.clone_from(hash);
        changed = true;
        password_changed = true;
    }
    // A producer's clock may lag: updated_at never goes back.
    user.updated_at = user.updated_at.max(now);
    Ok(Outcome::Done {
        user_id: Some(user.id.clone()),
        changed: changed.then_some(user),
        // Whoever held a refresh token may have held it because they knew the old
        // password: a password change ends every session.
        revoke_sessions: password_changed,
    })
}

fn delete(users: &KeyValueStore, command: &DeleteUser, now: i64) -> Result<Outcome, ProcessError> {
    let Some(mut user) = active_user(users, &command.email)? else {
        return Ok(Outcome::refused(
            codes::USER_NOT_FOUND,
            "no account with this email",
        ));
    };
    user.status = UserStatus::Deleted;
    user.password_hash.clear();
    user.updated_at = user.updated_at.max(now);
    Ok(Outcome::Done {
        user_id: Some(user.id.clone()),
        changed: Some(user),
        revoke_sessions: true,
    })
}

/// When the `forget-session` timer drops a family: `retention` after it died, which is
/// when its current token expires or, for a revoked family, the revocation time
/// `revoked_at` if that came first.
fn forget_due(family: &SessionFamily, revoked_at: Option<i64>, retention: i64) -> i64 {
    let dead_at = match revoked_at {
        Some(at) => at.min(family.expires_at),
        None => family.expires_at,
    };
    dead_at.saturating_add(retention)
}

fn retention_ms(ctx: &Context<'_>) -> Result<i64, ProcessError> {
    let delay = ctx.timer_delay(FORGET_SESSION_TIMER)?;
    Ok(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX))
}

/// Writes a family and moves its `forget-session` timer to match.
fn put_family(
    ctx: &mut Context<'_>,
    key: &str,
    family: &SessionFamily,
    revoked_at: Option<i64>,
) -> Result<(), ProcessError> {
    let due = forget_due(family, revoked_at, retention_ms(ctx)?);
    ctx.store(SESSIONS_STORE)?.put(key, family)?;
    ctx.set_timer_at(FORGET_SESSION_TIMER, key, due)
}

/// Revokes a family at `now`, unless it already is.
fn revoke(
    ctx: &mut Context<'_>,
    key: &str,
    mut family: SessionFamily,
    now: i64,
) -> Result<(), ProcessError> {
    if family.revoked {
        return Ok(());
    }
    family.revoked = true;
    put_family(ctx, key, &family, Some(now))
}

/// Revokes every family of `email` (deletion, password change).
fn revoke_all(ctx: &mut Context<'_>, email: &str, now: i64) -> Result<usize, ProcessError> {
    let prefix = session_key(email, "");
    let families = {
        let sessions = ctx.store(SESSIONS_STORE)?;
        let keys: Vec<String> = sessions
            .prefix(&prefix)
            .map(|(k, _)| k.to_string())
            .collect();
        let mut families = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(family) = sessions.get::<SessionFamily>(&key)?
                && !family.revoked
            {
                families.push((key, family));
            }
        }
        families
    };
    let revoked = families.len();
    for (key, family) in families {
        revoke(ctx, &key, family, now)?;
    }
    Ok(revoked)
}

fn start_session(ctx: &mut Context<'_>, command: &StartSession) -> Result<Outcome, ProcessError> {
    let account = active_user(ctx.store(USERS_STORE)?, &command.email)?;
    if account.is_none_or(|u| u.id != command.user_id) {
        return Ok(Outcome::refused(
            codes::USER_NOT_FOUND,
            "no active account with this email and id",
        ));
    }
    let key = session_key(&command.email, &command.family_id);
    if ctx.store(SESSIONS_STORE)?.get_raw(&key).is_some() {
        // Family ids are fresh random ids: one that exists is a start replayed after
        // its request was forgotten, or a bug. Starting it again would bring back its
        // first token (or a revoked family), so it is refused.
        return Ok(Outcome::refused(
            codes::INVALID,
            "family_id names an existing session",
        ));
    }
    let family = SessionFamily {
        user_id: command.user_id.clone(),
        token_id: command.token_id.clone(),
        expires_at: command.expires_at,
        revoked: false,
    };
    put_family(ctx, &key, &family, None)?;
    tracing::debug!(family_id = %command.family_id, "session started");
    Ok(Outcome::done(family.user_id))
}

fn rotate_session(
    ctx: &mut Context<'_>,
    command: &RotateSession,
    now: i64,
) -> Result<Outcome, ProcessError> {
    let key = session_key(&command.email, &command.family_id);
    let Some(mut family) = ctx.store(SESSIONS_STORE)?.get::<SessionFamily>(&key)? else {
        return Ok(Outcome::refused(
            codes::SESSION_NOT_FOUND,
            "no such session",
        ));
    };
    if family.revoked {
        return Ok(Outcome::refused(
            codes::SESSION_REVOKED,
            "the session was revoked",
        ));
    }
    if now > family.expires_at {
        return Ok(Outcome::refused(
            codes::SESSION_EXPIRED,
            "the refresh token expired",
        ));
    }
    if command.token_id != family.token_id {
        tracing::warn!(family_id = %command.family_id, "a rotated refresh token was presented again; its session is revoked");
        revoke(ctx, &key, family, now)?;
        return Ok(Outcome::refused(
            codes::REFRESH_REUSED,
            "the refresh token was already used; the session is revoked",
        ));
    }
    family.token_id.clone_from(&command.next_token_id);
    family.expires_at = command.expires_at;
    put_family(ctx, &key, &family, None)?;
    Ok(Outcome::done(family.user_id))
}

fn end_session(
    ctx: &mut Context<'_>,
    command: &EndSession,
    now: i64,
) -> Result<Outcome, ProcessError> {
    let key = session_key(&command.email, &command.family_id);
    let Some(family) = ctx.store(SESSIONS_STORE)?.get::<SessionFamily>(&key)? else {
        return Ok(Outcome::Done {
            user_id: None,
            changed: None,
            revoke_sessions: false,
        });
    };
    let user_id = family.user_id.clone();
    revoke(ctx, &key, family, now)?;
    Ok(Outcome::done(user_id))
}

impl Processor for UserCache {
    fn stores(&self) -> &'static [&'static str] {
        &[USERS_STORE, REQUESTS_STORE, SESSIONS_STORE]
    }

    fn timers(&self) -> &'static [&'static str] {
        &[FORGET_REQUEST_TIMER, FORGET_SESSION_TIMER]
    }

    fn process(&mut self, record: &Record, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        let command: AuthCommand = record.value()?;
        let (request_id, email) = command_ids(&command);
        if email != record.key {
            return Err(ProcessError::invalid(format!(
                "record key {:?} is not the command's email {email:?}: auth.commands is keyed by lower-case email",
                record.key
            )));
        }
        if request_id.is_empty() || request_id.chars().any(char::is_control) {
            return Err(ProcessError::invalid(format!(
                "request id {request_id:?} cannot be answered (empty or with control characters)"
            )));
        }
        let key = request_key(email, request_id);
        if let Some(reply) = ctx.store(REQUESTS_STORE)?.get::<Reply>(&key)? {
            tracing::debug!(request_id, "replayed request answered again");
            return ctx.forward(topics::EDGE_REPLIES, request_id, &reply);
        }

        let now = ctx.timestamp();
        let outcome = match validate(&command, now) {
            Err(message) => Outcome::refused(codes::INVALID, message),
            Ok(()) => match &command {
                AuthCommand::RegisterUser(c) => register(ctx.store(USERS_STORE)?, c, now)?,
                AuthCommand::UpdateProfile(c) => update(ctx.store(USERS_STORE)?, c, now)?,
                AuthCommand::DeleteUser(c) => delete(ctx.store(USERS_STORE)?, c, now)?,
                AuthCommand::StartSession(c) => start_session(ctx, c)?,
                AuthCommand::RotateSession(c) => rotate_session(ctx, c, now)?,
                AuthCommand::EndSession(c) => end_session(ctx, c, now)?,
            },
        };
        let reply = match outcome {
            Outcome::Done {
                user_id,
                changed,
                revoke_sessions,
            } => {
                if let Some(user) = changed {
                    ctx.store(USERS_STORE)?.put(email, &user)?;
                    ctx.forward(topics::AUTH_USERS, &user.id, &user)?;
                }
                if revoke_sessions {
                    let revoked = revoke_all(ctx, email, now)?;
                    tracing::debug!(revoked, "sessions of the account revoked");
                }
                Reply {
                    request_id: request_id.to_string(),
                    ok: true,
                    code: None,
                    message: None,
                    entity_id: user_id,
                    at: now,
                }
            }
            Outcome::Refused { code, message } => Reply {
                request_id: request_id.to_string(),
                ok: false,
                code: Some(code.to_string()),
                message: Some(message),
                entity_id: None,
                at: now,
            },
        };
        ctx.store(REQUESTS_STORE)?.put(&key, &reply)?;
        ctx.set_timer(FORGET_REQUEST_TIMER, &key)?;
        ctx.forward(topics::EDGE_REPLIES, request_id, &reply)
    }

    fn punctuate(&mut self, timer: &Timer, ctx: &mut Context<'_>) -> Result<(), ProcessError> {
        match timer.name.as_str() {
            FORGET_REQUEST_TIMER => {
                ctx.store(REQUESTS_STORE)?.delete(&timer.key);
            }
            FORGET_SESSION_TIMER => {
                // Every write of a family moves its timer, so a family found here has
                // been dead for the retention. A live one can only come from a timer
                // that missed a move; it is kept and its timer set right.
                let family = ctx
                    .store(SESSIONS_STORE)?
                    .get::<SessionFamily>(&timer.key)?;
                if let Some(family) = family {
                    let live_until = forget_due(&family, None, retention_ms(ctx)?);
                    if !family.revoked && live_until > timer.due {
                        ctx.set_timer_at(FORGET_SESSION_TIMER, &timer.key, live_until)?;
                    } else {
                        ctx.store(SESSIONS_STORE)?.delete(&timer.key);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
