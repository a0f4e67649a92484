//! Password hashing for the edges: argon2id with a random salt per password, stored
//! as a PHC string (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`, OWASP's
//! recommended parameters), and the password policy.
//!
//! The edge hashes before anything is published, so the plain password never reaches
//! a topic. Hashing and verifying cost tens of milliseconds of CPU and 19 MiB of
//! memory each, on purpose: an async caller uses [`hash_password_async`] and
//! [`verify_password_async`], which run the work on tokio's blocking pool so the
//! edge's runtime keeps serving other requests, and at most one per CPU at a time, so
//! a burst of logins queues instead of eating the machine's memory.

use std::sync::OnceLock;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{Error as ArgonError, PasswordHasher, PasswordVerifier};
use tokio::sync::Semaphore;

/// The shortest password accepted, in characters.
pub const MIN_PASSWORD_CHARS: usize = 8;
/// The longest password accepted, in characters (hashing a megabyte of "password" is
/// a denial of service, not security).
pub const MAX_PASSWORD_CHARS: usize = 128;

/// Why a password could not be hashed or checked. None of these is "wrong password":
/// that is `Ok(false)` from the verify functions.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// argon2 failed to hash (out of memory, no randomness for the salt).
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// The stored hash is not an argon2 PHC string this code can check.
    #[error("the stored credential hash is not a valid argon2 PHC string")]
    BadHash,
    /// The blocking task running argon2 did not finish (the runtime is shutting down).
    #[error("the password task did not finish: {0}")]
    Task(String),
}

/// Checks the password policy: between [`MIN_PASSWORD_CHARS`] and
/// [`MAX_PASSWORD_CHARS`] characters. `Err` holds a message fit for the client.
pub fn check_password_policy(password: &str) -> Result<(), String> {
    let chars = password.chars().count();
    if chars < MIN_PASSWORD_CHARS {
        return Err(format!(
            "password must be at least {MIN_PASSWORD_CHARS} characters long"
        ));
    }
    if chars > MAX_PASSWORD_CHARS {
        return Err(format!(
            "password must be at most {MAX_PASSWORD_CHARS} characters long"
        ));
    }
    Ok(())
}

/// Hashes `password` with argon2id and a fresh random salt; returns the PHC string.
/// CPU-heavy: from async code use [`hash_password_async`].
pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash: PasswordHash| hash.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// Whether `password` matches the PHC string `phc`. An empty `phc` (a deleted
/// account keeps no credential) never matches. CPU-heavy: from async code use
/// [`verify_password_async`].
pub fn verify_password(password: &str, phc: &str) -> Result<bool, PasswordError> {
    if phc.is_empty() {
        return Ok(false);
    }
    let hash = PasswordHash::new(phc).map_err(|_| PasswordError::BadHash)?;
    if !hash.algorithm.as_str().starts_with("argon2") {
        return Err(PasswordError::BadHash);
    }
    match Argon2::default().verify_password(password.as_bytes(), &hash) {
        Ok(()) => Ok(true),
        Err(ArgonError::PasswordInvalid) => Ok(false),
        Err(ArgonError::OutOfMemory | ArgonError::Internal | ArgonError::RngFailure) => {
            Err(PasswordError::Hash("argon2 could not run".to_string()))
        }
        Err(_) => Err(PasswordError::BadHash),
    }
}

/// At most this many argon2 computations at once: one per CPU.
fn permits() -> &'static Semaphore {
    static PERMITS: OnceLock<Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| {
        Semaphore::new(std::thread::available_parallelism().map_or(2, std::num::NonZero::get))
    })
}

/// Runs `work` on the blocking pool once a permit is free.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
) -> Result<T, PasswordError> {
    let _permit = permits()
        .acquire()
        .await
        .map_err(|e| PasswordError::Task(e.to_string()))?;
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| PasswordError::Task(e.to_string()))?
}

/// [`hash_password`] on tokio's blocking pool.
pub async fn hash_password_async(password: String) -> Result<String, PasswordError> {
    off_runtime(move || hash_password(&password)).await
}

/// [`verify_password`] on tokio's blocking pool.
pub async fn verify_password_async(password: String, phc: String) -> Result<bool, PasswordError> {
    off_runtime(move || verify_password(&password, &phc)).await
}

/// Spends the time of one verification against a hash nobody has, always `false`: a
/// login for an email without an account then takes as long as one with a wrong
/// password, so response times do not tell which emails have accounts.
pub async fn verify_unknown_user_async(password: String) -> Result<bool, PasswordError> {
    static DECOY: OnceLock<String> = OnceLock::new();
    let decoy = match DECOY.get() {
        Some(decoy) => decoy.clone(),
        None => {
            let decoy = hash_password_async(uuid::Uuid::new_v4().to_string()).await?;
            DECOY.get_or_init(|| decoy).clone()
        }
    };
    verify_password_async(password, decoy).await.map(|_| false)
}
