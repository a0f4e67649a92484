//! Access and refresh tokens (JWT) for the edges: their configuration ([`JwtConfig`],
//! from code or from `JWT_*` environment variables), issuing and verifying them
//! ([`Tokens`]), and why a token was refused ([`TokenError`]).
//!
//! An access token is short-lived and says who the caller is (`sub`, `email`, `role`)
//! and which login it belongs to (`sid`, the refresh-token family). A refresh token
//! names its family and its own id (`jti`); whether it is still the family's current
//! token is not in the token but in the streams (the user-cache processor's `sessions`
//! store), so rotation and revocation hold across edge instances.
//!
//! Verification is strict on purpose:
//! - the algorithm is pinned: the header's `alg` must be exactly the configured one,
//!   checked before anything else, so `alg: none` and the HS256-signed-with-the-RSA-
//!   public-key trick are refused as [`TokenError::WrongAlgorithm`];
//! - `exp`, `nbf`, `iss`, `aud` (and `sub`) are required; `iss` and `aud` must be the
//!   configured ones, and `exp`/`nbf` are checked against the clock with a small
//!   leeway;
//! - the `typ` claim keeps the two kinds apart: an access token is never accepted
//!   where a refresh token is expected, nor the reverse.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use orderflow_pipelines::records::Role;
use orderflow_runtime::topology::config::parse_duration;
use serde::{Deserialize, Serialize};

/// The issuer (`iss`) and audience (`aud`) tokens get unless configured otherwise.
pub const DEFAULT_ISSUER: &str = "orderflow";
/// See [`DEFAULT_ISSUER`].
pub const DEFAULT_AUDIENCE: &str = "orderflow";
/// How long an access token lives by default: 15 minutes.
pub const DEFAULT_ACCESS_TTL: Duration = Duration::from_secs(15 * 60);
/// How long a refresh token lives by default: 14 days.
pub const DEFAULT_REFRESH_TTL: Duration = Duration::from_secs(14 * 24 * 3600);
/// The clock skew tolerated on `exp` and `nbf` by default.
pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(30);
/// The shortest HS256 secret accepted: 32 bytes, the size of the HMAC-SHA256 output
/// (RFC 7518 §3.2 asks for at least that much key).
pub const MIN_SECRET_LEN: usize = 32;

/// The signature algorithms orderflow accepts. One is configured, and only that one
/// is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum JwtAlgorithm {
    /// HMAC-SHA256 with a shared secret (the default).
    #[default]
    Hs256,
    /// RSA PKCS#1 v1.5 with SHA-256: a private key signs, the public key verifies.
    Rs256,
    /// ECDSA on P-256 with SHA-256: a private key signs, the public key verifies.
    Es256,
}

impl JwtAlgorithm {
    /// The JOSE name: `HS256`, `RS256` or `ES256`.
    pub fn name(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }

    fn jose(self) -> Algorithm {
        match self {
            JwtAlgorithm::Hs256 => Algorithm::HS256,
            JwtAlgorithm::Rs256 => Algorithm::RS256,
            JwtAlgorithm::Es256 => Algorithm::ES256,
        }
    }
}

impl std::fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for JwtAlgorithm {
    type Err = JwtConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "HS256" => Ok(JwtAlgorithm::Hs256),
            "RS256" => Ok(JwtAlgorithm::Rs256),
            "ES256" => Ok(JwtAlgorithm::Es256),
            other => Err(JwtConfigError::UnknownAlgorithm(other.to_string())),
        }
    }
}

/// The key material of a [`JwtConfig`]. Its `Debug` never shows the bytes.
#[derive(Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// The HS256 shared secret.
    Secret(Vec<u8>),
    /// PEM keys for RS256 or ES256: the private key (PKCS#8, or PKCS#1 for RSA) signs,
    /// the public key (SPKI) verifies.
    Pem {
        /// The private key, PEM.
        private_pem: Vec<u8>,
        /// The public key, PEM.
        public_pem: Vec<u8>,
    },
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            JwtKey::Secret(s) => write!(f, "Secret([{} bytes redacted])", s.len()),
            JwtKey::Pem { .. } => f.write_str("Pem { [redacted] }"),
        }
    }
}

/// How tokens are signed and checked. Build one with [`JwtConfig::hs256`],
/// [`JwtConfig::rs256`], [`JwtConfig::es256`] or [`JwtConfig::from_env`], adjust the
/// public fields, then make [`Tokens`] from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtConfig {
    /// The one algorithm tokens are signed with and accepted in.
    pub algorithm: JwtAlgorithm,
    /// Its key material; must fit `algorithm`.
    pub key: JwtKey,
    /// `iss` of issued tokens, and the only one accepted.
    pub issuer: String,
    /// `aud` of issued tokens, and the only one accepted.
    pub audience: String,
    /// Lifetime of an access token.
    pub access_ttl: Duration,
    /// Lifetime of a refresh token (each rotation issues a new one with a fresh TTL).
    pub refresh_ttl: Duration,
    /// Clock skew tolerated on `exp` and `nbf`.
    pub leeway: Duration,
}

/// Why a [`JwtConfig`] or the [`Tokens`] made from it cannot be used. Every message
/// names the setting to fix.
#[derive(Debug, thiserror::Error)]
pub enum JwtConfigError {
    /// `JWT_ALGORITHM` (or the algorithm asked for) is not one we support.
    #[error("JWT_ALGORITHM {0:?} is not supported: use HS256, RS256 or ES256")]
    UnknownAlgorithm(String),
    /// HS256 without a secret.
    #[error("JWT_SECRET is not set: HS256 needs a secret of at least {MIN_SECRET_LEN} bytes")]
    MissingSecret,
    /// An HS256 secret too short to resist guessing.
    #[error(
        "JWT_SECRET is {len} bytes long: HS256 needs at least {MIN_SECRET_LEN} (e.g. `openssl rand -base64 48`)"
    )]
    SecretTooShort {
        /// Its length in bytes.
        len: usize,
    },
    /// RS256/ES256 without one of its key files.
    #[error("{var} is not set: {algorithm} needs a PEM {what} key file")]
    MissingKeyFile {
        /// The variable to set.
        var: &'static str,
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
        /// `private` or `public`.
        what: &'static str,
    },
    /// A key file that cannot be read.
    #[error("{var} names {path:?}, which cannot be read: {source}")]
    KeyFile {
        /// The variable that named it.
        var: &'static str,
        /// The file.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// Key material that does not fit the algorithm (not PEM, the wrong kind of key,
    /// or a private and a public key that are not a pair).
    #[error("the {algorithm} {what} key is not usable: {message}")]
    BadKey {
        /// The configured algorithm.
        algorithm: JwtAlgorithm,
        /// Which key: `private`, `public`, `secret`, or `key pair`.
        what: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// A setting with a value that does not parse or is out of range.
    #[error("{var} {value:?} is not valid: {message}")]
    Invalid {
        /// The setting.
        var: &'static str,
        /// Its value.
        value: String,
        /// What is wrong.
        message: String,
    },
}

impl JwtConfig {
    fn with_key(algorithm: JwtAlgorithm, key: JwtKey) -> Self {
        JwtConfig {
            algorithm,
            key,
            issuer: DEFAULT_ISSUER.to_string(),
            audience: DEFAULT_AUDIENCE.to_string(),
            access_ttl: DEFAULT_ACCESS_TTL,
            refresh_ttl: DEFAULT_REFRESH_TTL,
            leeway: DEFAULT_LEEWAY,
        }
    }

    /// HS256 with `secret` and the defaults; a secret shorter than
    /// [`MIN_SECRET_LEN`] bytes is refused.
    pub fn hs256(secret: impl Into<Vec<u8>>) -> Result<Self, JwtConfigError> {
        let secret = secret.into();
        if secret.len() < MIN_SECRET_LEN {
            return Err(JwtConfigError::SecretTooShort { len: secret.len() });
        }
        Ok(Self::with_key(JwtAlgorithm::Hs256, JwtKey::Secret(secret)))
    }

    /// RS256 with PEM keys and the defaults (the keys are checked by [`Tokens::new`]).
    pub fn rs256(private_pem: impl Into<Vec<u8>>, public_pem: impl Into<Vec<u8>>) -> Self {
        Self::with_key(
            JwtAlgorithm::Rs256,
            JwtKey::Pem {
                private_pem: private_pem.into(),
                public_pem: public_pem.into(),
            },
        )
    }

    /// ES256 (P-256) with PEM keys and the defaults (the keys are checked by
    /// [`Tokens::new`]).
    pub fn es256(private_pem: impl Into<Vec<u8>>, public_pem: impl Into<Vec<u8>>) -> Self {
        Self::with_key(
            JwtAlgorithm::Es256,
            JwtKey::Pem {
                private_pem: private_pem.into(),
                public_pem: public_pem.into(),
            },
        )
    }

    /// Reads the configuration from the environment:
    ///
    /// | variable | meaning | default |
    /// | --- | --- | --- |
    /// | `JWT_ALGORITHM` | `HS256`, `RS256` or `ES256` | `HS256` |
    /// | `JWT_SECRET` | the HS256 secret, at least 32 bytes | (required for HS256) |
    /// | `JWT_PRIVATE_KEY_FILE` | PEM private key file (RS256/ES256) | (required for them) |
    /// | `JWT_PUBLIC_KEY_FILE` | PEM public key file (RS256/ES256) | (required for them) |
    /// | `JWT_ISSUER` | `iss` | `orderflow` |
    /// | `JWT_AUDIENCE` | `aud` | `orderflow` |
    /// | `JWT_ACCESS_TTL` | access token lifetime, e.g. `15m` | `15m` |
    /// | `JWT_REFRESH_TTL` | refresh token lifetime, e.g. `14d` | `14d` |
    ///
    /// Durations take a unit: `s`, `m`, `h` or `d` (`ms` too, but tokens count whole
    /// seconds). An empty variable counts as unset.
    pub fn from_env() -> Result<Self, JwtConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// [`JwtConfig::from_env`] with the variables taken from `lookup` (tests, or a
    /// configuration source other than the process environment).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, JwtConfigError> {
        let get = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        let algorithm: JwtAlgorithm = match get("JWT_ALGORITHM") {
            Some(name) => name.parse()?,
            None => JwtAlgorithm::Hs256,
        };
        let mut config = match algorithm {
            JwtAlgorithm::Hs256 => {
                let secret = get("JWT_SECRET").ok_or(JwtConfigError::MissingSecret)?;
                Self::hs256(secret.into_bytes())?
            }
            JwtAlgorithm::Rs256 | JwtAlgorithm::Es256 => {
                let private_pem =
                    read_key_file(&get, "JWT_PRIVATE_KEY_FILE", algorithm, "private")?;
                let public_pem = read_key_file(&get, "JWT_PUBLIC_KEY_FILE", algorithm, "public")?;
                Self::with_key(
                    algorithm,
                    JwtKey::Pem {
                        private_pem,
                        public_pem,
                    },
                )
            }
        };
        if let Some(issuer) = get("JWT_ISSUER") {
            config.issuer = issuer;
        }
        if let Some(audience) = get("JWT_AUDIENCE") {
            config.audience = audience;
        }
        if let Some(ttl) = get("JWT_ACCESS_TTL") {
            config.access_ttl = parse_ttl("JWT_ACCESS_TTL", &ttl)?;
        }
        if let Some(ttl) = get("JWT_REFRESH_TTL") {
            config.refresh_ttl = parse_ttl("JWT_REFRESH_TTL", &ttl)?;
        }
        Ok(config)
    }
}

fn read_key_file(
    get: &impl Fn(&str) -> Option<String>,
    var: &'static str,
    algorithm: JwtAlgorithm,
    what: &'static str,
) -> Result<Vec<u8>, JwtConfigError> {
    let path = PathBuf::from(get(var).ok_or(JwtConfigError::MissingKeyFile {
        var,
        algorithm,
        what,
    })?);
    std::fs::read(&path).map_err(|source| JwtConfigError::KeyFile { var, path, source })
}

fn parse_ttl(var: &'static str, value: &str) -> Result<Duration, JwtConfigError> {
    let invalid = |message: String| JwtConfigError::Invalid {
        var,
        value: value.to_string(),
        message,
    };
    if value.trim().chars().all(|c| c.is_ascii_digit()) {
        return Err(invalid(
            "give a unit: s, m, h or d (e.g. 15m, 14d)".to_string(),
        ));
    }
    let ttl = parse_duration(value).map_err(invalid)?;
    if ttl < Duration::from_secs(1) {
        return Err(invalid("must be at least 1s".to_string()));
    }
    Ok(ttl)
}

/// `typ` of a token: which kind it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// `"access"`: presented as `Authorization: Bearer` on every call.
    Access,
    /// `"refresh"`: presented only to `POST /auth/refresh` (and logout).
    Refresh,
}

impl TokenType {
    /// `"access"` or `"refresh"`.
    pub fn name(self) -> &'static str {
        match self {
            TokenType::Access => "access",
            TokenType::Refresh => "refresh",
        }
    }

    fn with_article(self) -> &'static str {
        match self {
            TokenType::Access => "an access",
            TokenType::Refresh => "a refresh",
        }
    }
}

/// Who an access token is issued to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessSubject {
    /// The account's id (`sub`).
    pub user_id: String,
    /// The account's lower-case email (`email`).
    pub email: String,
    /// Buyer or seller (`role`).
    pub role: Role,
    /// The login's refresh-token family id (`sid`), what logout revokes.
    pub session_id: String,
}

/// The claims of a verified access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// The account's id.
    pub sub: String,
    /// The account's lower-case email.
    pub email: String,
    /// Buyer or seller.
    pub role: Role,
    /// The refresh-token family (session) id.
    pub sid: String,
    /// This token's id (a random UUID).
    pub jti: String,
    /// Always [`TokenType::Access`].
    pub typ: TokenType,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Not before, seconds since the epoch.
    pub nbf: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

/// The claims of a verified refresh token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshClaims {
    /// The account's id.
    pub sub: String,
    /// The account's lower-case email (the key of its session commands).
    pub email: String,
    /// The token family id.
    pub sid: String,
    /// This token's id: what a rotation presents as `token_id`.
    pub jti: String,
    /// Always [`TokenType::Refresh`].
    pub typ: TokenType,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Not before, seconds since the epoch.
    pub nbf: i64,
    /// Expires at, seconds since the epoch.
    pub exp: i64,
}

impl RefreshClaims {
    /// `exp` in epoch milliseconds, as the session commands carry it.
    pub fn expires_at_ms(&self) -> i64 {
        self.exp.saturating_mul(1000)
    }
}

/// Why a token was refused. The `Display` text and [`TokenError::code`] are safe to
/// show a client: they say what kind of problem it is, never anything about keys.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// The signature does not match the header and claims.
    #[error("the token signature is invalid")]
    BadSignature,
    /// The header's `alg` is not the configured algorithm (`none` included).
    #[error("the token algorithm is not accepted")]
    WrongAlgorithm,
    /// Not a JWT, or a claim is missing or of the wrong shape.
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    /// An access token where a refresh token was expected, or the reverse.
    #[error("the token is not {} token", .expected.with_article())]
    WrongType {
        /// The kind that was expected.
        expected: TokenType,
    },
    /// `iss` is not the configured issuer.
    #[error("the token issuer is not accepted")]
    WrongIssuer,
    /// `aud` is not the configured audience.
    #[error("the token audience is not accepted")]
    WrongAudience,
}

impl TokenError {
    /// A stable code for the kind of refusal, e.g. for an error body or a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Expired => "TOKEN_EXPIRED",
            TokenError::NotYetValid => "TOKEN_NOT_YET_VALID",
            TokenError::BadSignature => "TOKEN_BAD_SIGNATURE",
            TokenError::WrongAlgorithm => "TOKEN_WRONG_ALGORITHM",
            TokenError::Malformed(_) => "TOKEN_MALFORMED",
            TokenError::WrongType { .. } => "TOKEN_WRONG_TYPE",
            TokenError::WrongIssuer => "TOKEN_WRONG_ISSUER",
            TokenError::WrongAudience => "TOKEN_WRONG_AUDIENCE",
        }
    }
}

/// What is signed into a token: the claims of both kinds (`role` only in access
/// tokens).
#[derive(Serialize)]
struct ClaimsOut<'a> {
    sub: &'a str,
    email: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    sid: &'a str,
    jti: &'a str,
    typ: TokenType,
    iss: &'a str,
    aud: &'a str,
    iat: i64,
    nbf: i64,
    exp: i64,
}

/// What is read from a token whose signature checked out, before the claims are
/// checked one by one: everything optional, so a missing claim is reported as such.
#[derive(Deserialize)]
struct ClaimsIn {
    sub: Option<String>,
    email: Option<String>,
    role: Option<Role>,
    sid: Option<String>,
    jti: Option<String>,
    typ: Option<String>,
    iss: Option<String>,
    aud: Option<String>,
    iat: Option<i64>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

/// Issues and verifies tokens with one [`JwtConfig`]. Cheap to clone; share one per
/// process.
#[derive(Clone)]
pub struct Tokens {
    algorithm: JwtAlgorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
    audience: String,
    access_ttl: i64,
    refresh_ttl: i64,
    leeway: i64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("algorithm", &self.algorithm)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("access_ttl_s", &self.access_ttl)
            .field("refresh_ttl_s", &self.refresh_ttl)
            .finish_non_exhaustive()
    }
}

fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn epoch_seconds(now: SystemTime) -> i64 {
    match now.duration_since(UNIX_EPOCH) {
        Ok(d) => seconds(d),
        Err(before) => -seconds(before.duration()),
    }
}

impl Tokens {
    /// Parses the keys and proves them: a probe token is signed and verified, so a
    /// private key that does not match its public key, or a key of the wrong kind,
    /// fails here, at start, rather than on the first login.
    pub fn new(config: &JwtConfig) -> Result<Self, JwtConfigError> {
        let algorithm = config.algorithm;
        let bad = |what: &'static str, message: String| JwtConfigError::BadKey {
            algorithm,
            what,
            message,
        };
        let (encoding, decoding) = match (&config.key, algorithm) {
            (JwtKey::Secret(secret), JwtAlgorithm::Hs256) => {
                if secret.len() < MIN_SECRET_LEN {
                    return Err(JwtConfigError::SecretTooShort { len: secret.len() });
                }
                (
                    EncodingKey::from_secret(secret),
                    DecodingKey::from_secret(secret),
                )
            }
            (
                JwtKey::Pem {
                    private_pem,
                    public_pem,
                },
                JwtAlgorithm::Rs256,
            ) => (
                EncodingKey::from_rsa_pem(private_pem)
                    .map_err(|e| bad("private", e.to_string()))?,
                DecodingKey::from_rsa_pem(public_pem).map_err(|e| bad("public", e.to_string()))?,
            ),
            (
                JwtKey::Pem {
                    private_pem,
                    public_pem,
                },
                JwtAlgorithm::Es256,
            ) => (
                EncodingKey::from_ec_pem(private_pem).map_err(|e| bad("private", e.to_string()))?,
                DecodingKey::from_ec_pem(public_pem).map_err(|e| bad("public", e.to_string()))?,
            ),
            (JwtKey::Secret(_), _) => {
                return Err(bad(
                    "key pair",
                    "a shared secret was given; RS256 and ES256 need PEM keys".to_string(),
                ));
            }
            (JwtKey::Pem { .. }, _) => {
                return Err(bad(
                    "secret",
                    "PEM keys were given; HS256 needs a shared secret".to_string(),
                ));
            }
        };
        for (var, value) in [
            ("JWT_ISSUER", &config.issuer),
            ("JWT_AUDIENCE", &config.audience),
        ] {
            if value.trim().is_empty() {
                return Err(JwtConfigError::Invalid {
                    var,
                    value: value.clone(),
                    message: "must not be empty".to_string(),
                });
            }
        }
        for (var, ttl) in [
            ("JWT_ACCESS_TTL", config.access_ttl),
            ("JWT_REFRESH_TTL", config.refresh_ttl),
        ] {
            if ttl < Duration::from_secs(1) {
                return Err(JwtConfigError::Invalid {
                    var,
                    value: format!("{ttl:?}"),
                    message: "must be at least 1s".to_string(),
                });
            }
        }

        let mut validation = Validation::new(algorithm.jose());
        // exp and nbf are checked by `check` against the caller's clock; jsonwebtoken
        // checks presence, signature, iss and aud.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.required_spec_claims = ["exp", "nbf", "iss", "aud", "sub"]
            .into_iter()
            .map(str::to_string)
            .collect::<HashSet<_>>();
        validation.set_issuer(&[&config.issuer]);
        validation.set_audience(&[&config.audience]);

        let tokens = Tokens {
            algorithm,
            encoding,
            decoding,
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            access_ttl: seconds(config.access_ttl),
            refresh_ttl: seconds(config.refresh_ttl),
            leeway: seconds(config.leeway),
        };
        let now = SystemTime::now();
        let probe = tokens
            .try_sign(&tokens.claims(
                "probe",
                "probe@orderflow",
                None,
                "probe",
                "probe",
                TokenType::Refresh,
                now,
                tokens.refresh_ttl,
            ))
            .map_err(|e| bad("private", e.to_string()))?;
        tokens.verify_refresh_at(&probe, now).map_err(|e| {
            bad(
                "key pair",
                format!(
                    "a token signed with the private key does not verify with the public key ({e})"
                ),
            )
        })?;
        Ok(tokens)
    }

    /// The configured algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// Lifetime of an access token.
    pub fn access_ttl(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.access_ttl).unwrap_or(0))
    }

    /// Lifetime of a refresh token.
    pub fn refresh_ttl(&self) -> Duration {
        Duration::from_secs(u64::try_from(self.refresh_ttl).unwrap_or(0))
    }

    #[allow(clippy::too_many_arguments)]
    fn claims<'a>(
        &'a self,
        sub: &'a str,
        email: &'a str,
        role: Option<Role>,
        sid: &'a str,
        jti: &'a str,
        typ: TokenType,
        now: SystemTime,
        ttl: i64,
    ) -> ClaimsOut<'a> {
        let iat = epoch_seconds(now);
        ClaimsOut {
            sub,
            email,
            role,
            sid,
            jti,
            typ,
            iss: &self.issuer,
            aud: &self.audience,
            iat,
            nbf: iat,
            exp: iat.saturating_add(ttl),
        }
    }

    fn try_sign(&self, claims: &ClaimsOut<'_>) -> Result<String, jsonwebtoken::errors::Error> {
        jsonwebtoken::encode(&Header::new(self.algorithm.jose()), claims, &self.encoding)
    }

    /// # Panics
    /// Never in practice: the key signed a probe token in [`Tokens::new`], and HS256,
    /// RS256 (PKCS#1 v1.5) and ES256 (RFC 6979) signing are deterministic, so a key
    /// that signed once signs again.
    fn sign(&self, claims: &ClaimsOut<'_>) -> String {
        self.try_sign(claims)
            .expect("a key that signed the probe token in Tokens::new signs again")
    }

    /// An access token for `subject`, valid from now for the access TTL, with a fresh
    /// random `jti`.
    pub fn issue_access(&self, subject: &AccessSubject) -> String {
        self.issue_access_at(subject, SystemTime::now())
    }

    /// [`Tokens::issue_access`] as of `now` (tests, and tokens issued in the past or
    /// the future to try the time checks).
    pub fn issue_access_at(&self, subject: &AccessSubject, now: SystemTime) -> String {
        let jti = uuid::Uuid::new_v4().to_string();
        self.sign(&self.claims(
            &subject.user_id,
            &subject.email,
            Some(subject.role),
            &subject.session_id,
            &jti,
            TokenType::Access,
            now,
            self.access_ttl,
        ))
    }

    /// A refresh token of the family `family_id` with the id `token_id`, valid from
    /// now for the refresh TTL; also returns its expiry in epoch milliseconds, which
    /// is the `expires_at` of the `StartSession`/`RotateSession` that registers it.
    pub fn issue_refresh(
        &self,
        user_id: &str,
        email: &str,
        family_id: &str,
        token_id: &str,
    ) -> (String, i64) {
        self.issue_refresh_at(user_id, email, family_id, token_id, SystemTime::now())
    }

    /// [`Tokens::issue_refresh`] as of `now`.
    pub fn issue_refresh_at(
        &self,
        user_id: &str,
        email: &str,
        family_id: &str,
        token_id: &str,
        now: SystemTime,
    ) -> (String, i64) {
        let claims = self.claims(
            user_id,
            email,
            None,
            family_id,
            token_id,
            TokenType::Refresh,
            now,
            self.refresh_ttl,
        );
        let expires_at_ms = claims.exp.saturating_mul(1000);
        (self.sign(&claims), expires_at_ms)
    }

    /// Verifies an access token against the clock.
    pub fn verify_access(&self, token: &str) -> Result<AccessClaims, TokenError> {
        self.verify_access_at(token, SystemTime::now())
    }

    /// [`Tokens::verify_access`] as of `now`.
    pub fn verify_access_at(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<AccessClaims, TokenError> {
        let c = self.check(token, TokenType::Access, now)?;
        Ok(AccessClaims {
            sub: c.sub,
            email: c.email,
            role: c
                .role
                .ok_or(TokenError::Malformed("the role claim is missing"))?,
            sid: c.sid,
            jti: c.jti,
            typ: TokenType::Access,
            iss: c.iss,
            aud: c.aud,
            iat: c.iat,
            nbf: c.nbf,
            exp: c.exp,
        })
    }

    /// Verifies a refresh token against the clock. That it is still its family's
    /// current token is for the streams to say (`RotateSession`).
    pub fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, TokenError> {
        self.verify_refresh_at(token, SystemTime::now())
    }

    /// [`Tokens::verify_refresh`] as of `now`.
    pub fn verify_refresh_at(
        &self,
        token: &str,
        now: SystemTime,
    ) -> Result<RefreshClaims, TokenError> {
        let c = self.check(token, TokenType::Refresh, now)?;
        Ok(RefreshClaims {
            sub: c.sub,
            email: c.email,
            sid: c.sid,
            jti: c.jti,
            typ: TokenType::Refresh,
            iss: c.iss,
            aud: c.aud,
            iat: c.iat,
            nbf: c.nbf,
            exp: c.exp,
        })
    }

    /// The checks both kinds share, in order: the pinned algorithm, the signature,
    /// required claims with `iss` and `aud`, the kind, then the time window.
    fn check(
        &self,
        token: &str,
        expected: TokenType,
        now: SystemTime,
    ) -> Result<Checked, TokenError> {
        self.check_algorithm(token)?;
        let data = jsonwebtoken::decode::<ClaimsIn>(token, &self.decoding, &self.validation)
            .map_err(|e| token_error(e.kind()))?;
        let c = data.claims;
        if c.typ.as_deref() != Some(expected.name()) {
            return Err(TokenError::WrongType { expected });
        }
        let missing = TokenError::Malformed;
        let checked = Checked {
            sub: c.sub.ok_or(missing("the sub claim is missing"))?,
            email: c.email.ok_or(missing("the email claim is missing"))?,
            role: c.role,
            sid: c.sid.ok_or(missing("the sid claim is missing"))?,
            jti: c.jti.ok_or(missing("the jti claim is missing"))?,
            iss: c.iss.ok_or(missing("the iss claim is missing"))?,
            aud: c.aud.ok_or(missing("the aud claim is missing"))?,
            iat: c.iat.ok_or(missing("the iat claim is missing"))?,
            nbf: c.nbf.ok_or(missing("the nbf claim is missing"))?,
            exp: c.exp.ok_or(missing("the exp claim is missing"))?,
        };
        let now = epoch_seconds(now);
        if now > checked.exp.saturating_add(self.leeway) {
            return Err(TokenError::Expired);
        }
        if checked.nbf > now.saturating_add(self.leeway) {
            return Err(TokenError::NotYetValid);
        }
        Ok(checked)
    }

    /// The header's `alg` must be exactly the configured algorithm. Read here rather
    /// than by jsonwebtoken so that an algorithm it does not know (`none`) is reported
    /// as a wrong algorithm, not as a malformed token.
    fn check_algorithm(&self, token: &str) -> Result<(), TokenError> {
        let mut parts = token.split('.');
        let (Some(header), Some(_), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed(
                "a token has three dot-separated parts",
            ));
        };
        let header = URL_SAFE_NO_PAD
            .decode(header)
            .map_err(|_| TokenError::Malformed("the header is not base64url"))?;
        #[derive(Deserialize)]
        struct Alg {
            alg: Option<serde_json::Value>,
        }
        let alg = serde_json::from_slice::<Alg>(&header)
            .map_err(|_| TokenError::Malformed("the header is not a JSON object"))?
            .alg;
        match alg {
            Some(serde_json::Value::String(name)) if name == self.algorithm.name() => Ok(()),
            _ => Err(TokenError::WrongAlgorithm),
        }
    }
}

/// The claims of a token that passed every check.
struct Checked {
    sub: String,
    email: String,
    role: Option<Role>,
    sid: String,
    jti: String,
    iss: String,
    aud: String,
    iat: i64,
    nbf: i64,
    exp: i64,
}

fn token_error(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::InvalidSignature => TokenError::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => TokenError::WrongAlgorithm,
        ErrorKind::InvalidIssuer => TokenError::WrongIssuer,
        ErrorKind::InvalidAudience => TokenError::WrongAudience,
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::Malformed(match claim.as_str() {
            "exp" => "the exp claim is missing",
            "nbf" => "the nbf claim is missing",
            "iss" => "the iss claim is missing",
            "aud" => "the aud claim is missing",
            "sub" => "the sub claim is missing",
            _ => "a required claim is missing",
        }),
        ErrorKind::InvalidClaimFormat(_) | ErrorKind::Json(_) => {
            TokenError::Malformed("a claim has the wrong type")
        }
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
            TokenError::Malformed("not a JWT")
        }
        // A signature the verifier cannot even parse (e.g. an ECDSA signature of the
        // wrong length) is a bad signature; anything else is about the token's shape.
        ErrorKind::InvalidEcdsaKey | ErrorKind::InvalidRsaKey(_) => TokenError::BadSignature,
        _ => TokenError::Malformed("the token cannot be verified"),
    }
}
