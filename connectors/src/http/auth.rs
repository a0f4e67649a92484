//! The account and session routes: register, login, refresh, logout, and reading a
//! user's record under the privacy rule (a BUYER's record is visible to the buyer
//! and to the SELLERs the buyer has a PAID order from).
//!
//! Passwords are hashed (argon2id) before anything is published, so the plain
//! password never reaches a topic. Refresh tokens are rotated and revoked by the
//! user-cache processor (`StartSession`, `RotateSession`, `EndSession`), so every edge
//! instance agrees on which one is current; a reused one revokes its whole family.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use orderflow_pipelines::records::{
    AuthCommand, EndSession, RegisterUser, Reply, Role, RotateSession, StartSession, User,
    UserStatus, topics,
};
use orderflow_pipelines::user_cache::{codes, user_id_for};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use utoipa::ToSchema;

use super::HttpState;
use super::command::{ask, new_id};
use super::error::{ApiError, ErrorBody};
use super::extract::{ApiJson, Caller, PathId};
use crate::auth::{
    AccessSubject, PasswordError, check_password_policy, hash_password_async,
    verify_password_async, verify_unknown_user_async,
};

/// What an account may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApiRole {
    /// Places orders.
    #[serde(alias = "buyer")]
    Buyer,
    /// Receives orders.
    #[serde(alias = "seller")]
    Seller,
}

impl From<Role> for ApiRole {
    fn from(role: Role) -> Self {
        match role {
            Role::Buyer => ApiRole::Buyer,
            Role::Seller => ApiRole::Seller,
        }
    }
}

impl From<ApiRole> for Role {
    fn from(role: ApiRole) -> Self {
        match role {
            ApiRole::Buyer => Role::Buyer,
            ApiRole::Seller => Role::Seller,
        }
    }
}

/// `POST /auth/register`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisterRequest {
    /// The account's email (compared without regard to case).
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// 8 to 128 characters.
    #[schema(example = "correct horse battery")]
    pub password: String,
    /// `BUYER` or `SELLER`.
    pub role: ApiRole,
    /// The name other users see (default: the part of the email before the `@`).
    #[schema(example = "Ada")]
    pub display_name: Option<String>,
}

/// A new account.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RegisteredUser {
    /// The account's id.
    pub id: String,
    /// Its lower-case email.
    pub email: String,
    /// Its role.
    pub role: ApiRole,
    /// Its display name.
    pub display_name: String,
}

/// `POST /auth/login`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoginRequest {
    /// The account's email.
    #[schema(example = "ada@example.com")]
    pub email: String,
    /// Its password.
    pub password: String,
}

/// `POST /auth/refresh`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RefreshRequest {
    /// The refresh token of the last login or refresh; it stops working once used.
    pub refresh_token: String,
}

/// An access token and the refresh token that gets the next one.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenPair {
    /// Send as `Authorization: Bearer <accessToken>`.
    pub access_token: String,
    /// Trade for a new pair at `POST /auth/refresh`; single use.
    pub refresh_token: String,
    /// Always `Bearer`.
    #[schema(example = "Bearer")]
    pub token_type: &'static str,
    /// Seconds the access token lives.
    #[schema(example = 900)]
    pub expires_in: u64,
}

/// A user's record as others may see it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UserView {
    /// The user's id.
    pub id: String,
    /// `BUYER` or `SELLER`.
    pub role: ApiRole,
    /// Lower-case email.
    pub email: String,
    /// Display name.
    pub display_name: String,
    /// Registration time, epoch milliseconds.
    pub created_at: i64,
}

impl From<User> for UserView {
    fn from(u: User) -> Self {
        UserView {
            id: u.id,
            role: u.role.into(),
            email: u.email,
            display_name: u.display_name,
            created_at: u.created_at,
        }
    }
}

/// A lower-cased, trimmed email, or 422 naming the field.
fn normalize_email(raw: &str) -> Result<String, ApiError> {
    let email = raw.trim().to_lowercase();
    let invalid = |why: &str| ApiError::invalid_field("email", format!("email {why}"));
    if email.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if email.len() > 254 {
        return Err(invalid("must be at most 254 characters"));
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid("must not contain spaces"));
    }
    match email.split_once('@') {
        Some((local, domain))
            if !local.is_empty()
                && !domain.is_empty()
                && !domain.contains('@')
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.') =>
        {
            Ok(email)
        }
        _ => Err(invalid("must look like name@example.com")),
    }
}

fn display_name(given: Option<&str>, email: &str) -> Result<String, ApiError> {
    let name = match given.map(str::trim) {
        Some(name) => name.to_string(),
        None => email.split('@').next().unwrap_or(email).to_string(),
    };
    if name.is_empty() {
        return Err(ApiError::invalid_field(
            "displayName",
            "displayName must not be empty",
        ));
    }
    if name.chars().count() > 100 {
        return Err(ApiError::invalid_field(
            "displayName",
            "displayName must be at most 100 characters",
        ));
    }
    if name.chars().any(char::is_control) {
        return Err(ApiError::invalid_field(
            "displayName",
            "displayName must not contain control characters",
        ));
    }
    Ok(name)
}

fn password_failure(error: &PasswordError) -> ApiError {
    tracing::error!(error = %error, "http: password hashing failed");
    ApiError::internal()
}

/// Waits up to `grace` for the directory to know `user_id`; the user then.
async fn wait_for_user(state: &HttpState, user_id: &str, grace: Duration) -> Option<User> {
    let deadline = Instant::now() + grace;
    loop {
        match state.streams.directory().user(user_id).await {
            Ok(Some(user)) => return Some(user),
            Ok(None) => {}
            Err(error) => tracing::warn!(error = %error, "http: directory unavailable"),
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

fn unexpected(reply: &Reply, what: &str) -> ApiError {
    tracing::error!(
        code = reply.code.as_deref().unwrap_or("-"),
        message = reply.message.as_deref().unwrap_or("-"),
        "http: unexpected refusal of {what}"
    );
    ApiError::internal()
}

/// Creates an account.
#[utoipa::path(post, path = "/auth/register", tag = "auth",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "The account was created", body = RegisteredUser),
        (status = 400, description = "Malformed JSON or not JSON", body = ErrorBody),
        (status = 409, description = "An account with this email exists (`EMAIL_TAKEN`)", body = ErrorBody),
        (status = 413, description = "Body over the limit", body = ErrorBody),
        (status = 422, description = "A field is invalid (`INVALID_FIELD`)", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address", body = ErrorBody),
        (status = 503, description = "Not ready, or no answer in time (`NO_REPLY`)", body = ErrorBody),
    ))]
pub async fn register(
    State(state): State<HttpState>,
    ApiJson(body): ApiJson<RegisterRequest>,
) -> Result<(StatusCode, Json<RegisteredUser>), ApiError> {
    let email = normalize_email(&body.email)?;
    check_password_policy(&body.password).map_err(|m| ApiError::invalid_field("password", m))?;
    let display_name = display_name(body.display_name.as_deref(), &email)?;
    let password_hash = hash_password_async(body.password)
        .await
        .map_err(|e| password_failure(&e))?;
    let request_id = new_id();
    let command = AuthCommand::RegisterUser(RegisterUser {
        request_id: request_id.clone(),
        email: email.clone(),
        password_hash,
        role: body.role.into(),
        display_name: display_name.clone(),
    });
    let reply = ask(
        &state,
        topics::AUTH_COMMANDS,
        &email,
        &request_id,
        &command,
        "the registration",
    )
    .await?;
    if !reply.ok {
        return Err(match reply.code.as_deref() {
            Some(codes::EMAIL_TAKEN) => ApiError::new(
                StatusCode::CONFLICT,
                "EMAIL_TAKEN",
                "an account with this email already exists",
            ),
            Some(codes::INVALID) => ApiError::invalid_field(
                "body",
                reply
                    .message
                    .clone()
                    .unwrap_or_else(|| "the registration is invalid".into()),
            ),
            _ => unexpected(&reply, "a registration"),
        });
    }
    let id = reply
        .entity_id
        .clone()
        .unwrap_or_else(|| user_id_for(&request_id, &email));
    // Read your own writes: a login right after this answer finds the account on
    // this instance.
    wait_for_user(&state, &id, state.settings.login_grace).await;
    tracing::info!(user = %id, "http: registered");
    Ok((
        StatusCode::CREATED,
        Json(RegisteredUser {
            id,
            email,
            role: body.role,
            display_name,
        }),
    ))
}

/// Signs in: a new session (refresh-token family) and its first token pair.
#[utoipa::path(post, path = "/auth/login", tag = "auth",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenPair),
        (status = 400, description = "Malformed JSON or not JSON", body = ErrorBody),
        (status = 401, description = "Wrong email or password (`INVALID_CREDENTIALS`)", body = ErrorBody),
        (status = 422, description = "A field is missing", body = ErrorBody),
        (status = 429, description = "Too many attempts from this address", body = ErrorBody),
        (status = 503, description = "Not ready, or no answer in time", body = ErrorBody),
    ))]
pub async fn login(
    State(state): State<HttpState>,
    ApiJson(body): ApiJson<LoginRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let started = Instant::now();
    let result = try_login(&state, body, started).await;
    if result
        .as_ref()
        .is_err_and(|e| e.status() == StatusCode::UNAUTHORIZED)
    {
        // Every failed login takes as long, whatever failed.
        tokio::time::sleep_until(started + state.settings.login_grace).await;
    }
    result
}

async fn try_login(
    state: &HttpState,
    body: LoginRequest,
    started: Instant,
) -> Result<Json<TokenPair>, ApiError> {
    let refused =
        || ApiError::unauthenticated("INVALID_CREDENTIALS", "the email or the password is wrong");
    let email = body.email.trim().to_lowercase();
    // Right after a registration on another instance the directory may not have the
    // account yet: look again for a moment before giving up.
    let deadline = started + state.settings.login_grace;
    let user = loop {
        let found = if email.is_empty() {
            None
        } else {
            state
                .streams
                .directory()
                .user_by_email(&email)
                .await
                .map_err(|error| {
                    tracing::warn!(error = %error, "http: directory unavailable at login");
                    ApiError::unavailable()
                })?
        };
        if found.is_some() || Instant::now() >= deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let Some(user) = user.filter(|u| u.status == UserStatus::Active) else {
        let _ = verify_unknown_user_async(body.password).await;
        return Err(refused());
    };
    match verify_password_async(body.password, user.password_hash.clone()).await {
        Ok(true) => {}
        Ok(false) => return Err(refused()),
        Err(PasswordError::BadHash) => {
            tracing::warn!(user = %user.id, "http: the stored credential hash is unusable");
            return Err(refused());
        }
        Err(error) => return Err(password_failure(&error)),
    }
    let family_id = new_id();
    let token_id = new_id();
    let (refresh_token, expires_at) = state
        .tokens
        .issue_refresh(&user.id, &email, &family_id, &token_id);
    let request_id = new_id();
    let command = AuthCommand::StartSession(StartSession {
        request_id: request_id.clone(),
        email: email.clone(),
        user_id: user.id.clone(),
        family_id: family_id.clone(),
        token_id,
        expires_at,
    });
    let reply = ask(
        state,
        topics::AUTH_COMMANDS,
        &email,
        &request_id,
        &command,
        "the login",
    )
    .await?;
    if !reply.ok {
        return Err(match reply.code.as_deref() {
            Some(codes::USER_NOT_FOUND) => refused(),
            _ => unexpected(&reply, "a login"),
        });
    }
    let access_token = state.tokens.issue_access(&AccessSubject {
        user_id: user.id.clone(),
        email,
        role: user.role,
        session_id: family_id,
    });
    tracing::info!(user = %user.id, "http: signed in");
    Ok(Json(TokenPair {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: state.tokens.access_ttl().as_secs(),
    }))
}

/// The code of a refused rotation, as the client sees it.
fn session_code(code: Option<&str>) -> &'static str {
    match code {
        Some(codes::SESSION_NOT_FOUND) => codes::SESSION_NOT_FOUND,
        Some(codes::SESSION_REVOKED) => codes::SESSION_REVOKED,
        Some(codes::SESSION_EXPIRED) => codes::SESSION_EXPIRED,
        Some(codes::REFRESH_REUSED) => codes::REFRESH_REUSED,
        Some(codes::USER_NOT_FOUND) => codes::USER_NOT_FOUND,
        _ => "SESSION_INVALID",
    }
}

/// Trades a refresh token for a new pair; the presented one stops working. Presenting
/// one that was already traded revokes the whole session.
#[utoipa::path(post, path = "/auth/refresh", tag = "auth",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new pair", body = TokenPair),
        (status = 400, description = "Malformed JSON or not JSON", body = ErrorBody),
        (status = 401, description = "The refresh token is invalid, expired, revoked or reused (`REFRESH_REUSED`, `SESSION_REVOKED`, `SESSION_EXPIRED`, `TOKEN_*`)", body = ErrorBody),
        (status = 503, description = "Not ready, or no answer in time", body = ErrorBody),
    ))]
pub async fn refresh(
    State(state): State<HttpState>,
    ApiJson(body): ApiJson<RefreshRequest>,
) -> Result<Json<TokenPair>, ApiError> {
    let claims = state
        .tokens
        .verify_refresh(body.refresh_token.trim())
        .map_err(|e| ApiError::invalid_token(e.code(), e.to_string()))?;
    let next_token_id = new_id();
    let (refresh_token, expires_at) =
        state
            .tokens
            .issue_refresh(&claims.sub, &claims.email, &claims.sid, &next_token_id);
    let request_id = new_id();
    let command = AuthCommand::RotateSession(RotateSession {
        request_id: request_id.clone(),
        email: claims.email.clone(),
        family_id: claims.sid.clone(),
        token_id: claims.jti.clone(),
        next_token_id,
        expires_at,
    });
    let reply = ask(
        &state,
        topics::AUTH_COMMANDS,
        &claims.email,
        &request_id,
        &command,
        "the token refresh",
    )
    .await?;
    if !reply.ok {
        let code = session_code(reply.code.as_deref());
        tracing::info!(user = %claims.sub, code, "http: refresh refused");
        return Err(ApiError::invalid_token(
            code,
            reply
                .message
                .clone()
                .unwrap_or_else(|| "the refresh token is no longer valid; sign in again".into()),
        ));
    }
    let user = wait_for_user(&state, &claims.sub, state.settings.login_grace)
        .await
        .filter(|u| u.status == UserStatus::Active)
        .ok_or_else(|| {
            ApiError::invalid_token(codes::USER_NOT_FOUND, "the account no longer exists")
        })?;
    let access_token = state.tokens.issue_access(&AccessSubject {
        user_id: user.id,
        email: claims.email,
        role: user.role,
        session_id: claims.sid,
    });
    Ok(Json(TokenPair {
        access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: state.tokens.access_ttl().as_secs(),
    }))
}

/// Signs out: revokes the session of the access token, so its refresh token stops
/// working. The access token itself lives until it expires.
#[utoipa::path(post, path = "/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Signed out"),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 503, description = "Not ready, or no answer in time", body = ErrorBody),
    ))]
pub async fn logout(
    State(state): State<HttpState>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    let request_id = new_id();
    let command = AuthCommand::EndSession(EndSession {
        request_id: request_id.clone(),
        email: caller.email.clone(),
        family_id: caller.session_id.clone(),
    });
    let reply = ask(
        &state,
        topics::AUTH_COMMANDS,
        &caller.email,
        &request_id,
        &command,
        "the logout",
    )
    .await?;
    // A session already ended (or forgotten) is as signed out as can be.
    if !reply.ok {
        tracing::info!(user = %caller.user_id, code = reply.code.as_deref().unwrap_or("-"), "http: logout of an ended session");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A user's record. Anyone signed in sees a SELLER's; a BUYER's is seen by the buyer
/// and by the SELLERs the buyer has a PAID order from.
#[utoipa::path(get, path = "/auth/user/{userId}", tag = "auth",
    security(("bearer" = [])),
    params(("userId" = String, Path, description = "The user's id")),
    responses(
        (status = 200, description = "The record", body = UserView),
        (status = 401, description = "No or bad access token", body = ErrorBody),
        (status = 403, description = "Not allowed to see this buyer", body = ErrorBody),
        (status = 404, description = "No such user", body = ErrorBody),
    ))]
pub async fn user(
    State(state): State<HttpState>,
    caller: Caller,
    PathId(user_id): PathId,
) -> Result<Json<UserView>, ApiError> {
    let directory = state.streams.directory();
    let unavailable = |error: crate::directory::DirectoryError| {
        tracing::warn!(error = %error, "http: directory unavailable");
        ApiError::unavailable()
    };
    let user = directory
        .user(&user_id)
        .await
        .map_err(unavailable)?
        .filter(|u| u.status == UserStatus::Active)
        .ok_or_else(|| ApiError::not_found("no such user"))?;
    let visible = user.id == caller.user_id
        || user.role == Role::Seller
        || (caller.role == Role::Seller
            && directory
                .has_bought_from(&user.id, &caller.user_id)
                .await
                .map_err(unavailable)?);
    if !visible {
        return Err(ApiError::forbidden(
            "a buyer's record is visible only to the buyer and to sellers the buyer has bought from",
        ));
    }
    Ok(Json(user.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_trimmed_lower_cased_and_checked() {
        assert_eq!(
            normalize_email("  Ada@Example.COM ").unwrap(),
            "ada@example.com"
        );
        for bad in [
            "",
            "ada",
            "ada@",
            "@example.com",
            "a b@example.com",
            "ada@localhost",
            "a@b@c.d",
            "ada@.com",
        ] {
            let e = normalize_email(bad).unwrap_err();
            assert_eq!(e.code(), "INVALID_FIELD", "{bad}");
        }
    }

    #[test]
    fn display_name_defaults_to_the_local_part() {
        assert_eq!(display_name(None, "ada@example.com").unwrap(), "ada");
        assert_eq!(display_name(Some(" Ada L "), "x@y.z").unwrap(), "Ada L");
        assert!(display_name(Some("  "), "x@y.z").is_err());
        assert!(display_name(Some(&"n".repeat(101)), "x@y.z").is_err());
    }
}
