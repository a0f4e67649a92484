//! Authentication building blocks the edges share: JWT access and refresh tokens
//! ([`token`]) and argon2id password hashing with the password policy ([`password`]).
//! The state of refresh-token sessions (rotation, revocation, reuse detection) is not
//! here but in the streams: the user-cache processor's `sessions` store, driven by the
//! `StartSession`, `RotateSession` and `EndSession` commands on `auth.commands`.

pub mod password;
pub mod token;

pub use password::{
    PasswordError, check_password_policy, hash_password, hash_password_async, verify_password,
    verify_password_async, verify_unknown_user_async,
};
pub use token::{
    AccessClaims, AccessSubject, JwtAlgorithm, JwtConfig, JwtConfigError, JwtKey, RefreshClaims,
    TokenError, TokenType, Tokens,
};
