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
//! Updating or deleting an email with no ACTIVE account is refused with
//! `USER_NOT_FOUND`. A command that breaks a field rule (email lower-case with a local
//! part, an `@` and a domain; display name and credential hash non-empty) is refused
//! with `INVALID`: the edge waits for a reply, so it gets one rather than a dead
//! letter. What cannot be answered at all is a [`ProcessError::Invalid`] and goes to
//! the dead-letter topic: a value that does not decode, a record key that is not the
//! command's email (the record sits on the wrong partition, so the email rule would
//! not be race-free), and an empty request id or one with control characters.
//!
//! # Stores
//!
//! | store | key | value |
//! | --- | --- | --- |
//! | `users-by-email` | lower-case email | the [`User`], DELETED ones included |
//! | `user-requests` | `<email>` NUL `<requestId>` | the [`Reply`] that answered it |
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
use serde::Deserialize;

use crate::ids::derived_uuid;
use crate::records::{
    AuthCommand, DeleteUser, RegisterUser, Reply, UpdateProfile, User, UserStatus, topics,
};

/// The user table: lower-case email → [`User`].
pub const USERS_STORE: &str = "users-by-email";

/// The answered requests: `<email>` NUL `<requestId>` → [`Reply`].
pub const REQUESTS_STORE: &str = "user-requests";

/// The stream-time timer that forgets an answered request.
pub const FORGET_REQUEST_TIMER: &str = "forget-request";

/// The `code` of a refused request's [`Reply`].
pub mod codes {
    /// A registration for an email that has an ACTIVE account.
    pub const EMAIL_TAKEN: &str = "EMAIL_TAKEN";
    /// An update or deletion for an email without an ACTIVE account.
    pub const USER_NOT_FOUND: &str = "USER_NOT_FOUND";
    /// A field breaks its rule; the reply's message says which.
    pub const INVALID: &str = "INVALID";
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
    /// Carried out: the account's id, and the user to publish if it changed.
    Done {
        user_id: String,
        changed: Option<User>,
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
}

fn command_ids(command: &AuthCommand) -> (&str, &str) {
    match command {
        AuthCommand::RegisterUser(c) => (&c.request_id, &c.email),
        AuthCommand::UpdateProfile(c) => (&c.request_id, &c.email),
        AuthCommand::DeleteUser(c) => (&c.request_id, &c.email),
    }
}

/// The field rules; `Err` holds the message of the `INVALID` reply.
fn validate(command: &AuthCommand) -> Result<(), String> {
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
    }
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
        Some(existing) if existing.id == id => Ok(Outcome::Done {
            user_id: id,
            changed: None,
        }),
        Some(existing) if existing.status == UserStatus::Active => Ok(Outcome::refused(
            codes::EMAIL_TAKEN,
            "an account with this email exists",
        )),
        _ => Ok(Outcome::Done {
            user_id: id.clone(),
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
    if let Some(hash) = &command.password_hash
        && *hash != user.password_hash
    {
        user.password_hash.clone_from(hash);
        changed = true;
    }
    // A producer's clock may lag: updated_at never goes back.
    user.updated_at = user.updated_at.max(now);
    Ok(Outcome::Done {
        user_id: user.id.clone(),
        changed: changed.then_some(user),
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
        user_id: user.id.clone(),
        changed: Some(user),
    })
}

impl Processor for UserCache {
    fn stores(&self) -> &'static [&'static str] {
        &[USERS_STORE, REQUESTS_STORE]
    }

    fn timers(&self) -> &'static [&'static str] {
        &[FORGET_REQUEST_TIMER]
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
        let outcome = match validate(&command) {
            Err(message) => Outcome::refused(codes::INVALID, message),
            Ok(()) => {
                let users = ctx.store(USERS_STORE)?;
                match &command {
                    AuthCommand::RegisterUser(c) => register(users, c, now)?,
                    AuthCommand::UpdateProfile(c) => update(users, c, now)?,
                    AuthCommand::DeleteUser(c) => delete(users, c, now)?,
                }
            }
        };
        let reply = match outcome {
            Outcome::Done { user_id, changed } => {
                if let Some(user) = changed {
                    ctx.store(USERS_STORE)?.put(email, &user)?;
                    ctx.forward(topics::AUTH_USERS, &user.id, &user)?;
                }
                Reply {
                    request_id: request_id.to_string(),
                    ok: true,
                    code: None,
                    message: None,
                    entity_id: Some(user_id),
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
        if timer.name == FORGET_REQUEST_TIMER {
            ctx.store(REQUESTS_STORE)?.delete(&timer.key);
        }
        Ok(())
    }
}
