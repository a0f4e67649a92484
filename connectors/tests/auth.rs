//! The edges' token and password code: JWT issuing and verification with HS256, RS256
//! and ES256, every token attack the HTTP edge must withstand (expired, not yet valid,
//! wrong signature, `alg: none`, HS256 signed with the RS256 public key, a tampered
//! role, wrong issuer and audience, the two token kinds swapped), the `JWT_*`
//! configuration, and argon2id password hashing.
//!
//! The RS256/ES256 keys are the test-only pairs in `tests/keys/` (see its README).

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use orderflow_connectors::auth::password::{MAX_PASSWORD_CHARS, MIN_PASSWORD_CHARS};
use orderflow_connectors::auth::token::{
    DEFAULT_ACCESS_TTL, DEFAULT_LEEWAY, DEFAULT_REFRESH_TTL, MIN_SECRET_LEN,
};
use orderflow_connectors::auth::{
    AccessSubject, JwtAlgorithm, JwtConfig, JwtConfigError, PasswordError, TokenError, TokenType,
    Tokens, check_password_policy, hash_password, hash_password_async, verify_password,
    verify_password_async, verify_unknown_user_async,
};
use orderflow_pipelines::records::Role;

const SECRET: &[u8] = b"test-only-hs256-secret-of-48-bytes-for-orderflow";
const HOUR: Duration = Duration::from_secs(3600);

fn key_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/keys")
        .join(name)
}

fn key(name: &str) -> Result<Vec<u8>> {
    let path = key_path(name);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

fn hs256() -> Result<Tokens> {
    Ok(Tokens::new(&JwtConfig::hs256(SECRET)?)?)
}

fn rs256() -> Result<Tokens> {
    Ok(Tokens::new(&JwtConfig::rs256(
        key("rs256-private.pem")?,
        key("rs256-public.pem")?,
    ))?)
}

fn es256() -> Result<Tokens> {
    Ok(Tokens::new(&JwtConfig::es256(
        key("es256-private.pem")?,
        key("es256-public.pem")?,
    ))?)
}

fn ann() -> AccessSubject {
    AccessSubject {
        user_id: "0b6f3d2c-1111-4000-8000-000000000001".to_string(),
        email: "ann@example.com".to_string(),
        role: Role::Buyer,
        session_id: "family-1".to_string(),
    }
}

fn epoch(t: SystemTime) -> Result<i64> {
    Ok(i64::try_from(
        t.duration_since(SystemTime::UNIX_EPOCH)?.as_secs(),
    )?)
}

/// The three parts of a compact JWT.
fn parts(token: &str) -> Result<[String; 3]> {
    let v: Vec<&str> = token.split('.').collect();
    ensure!(v.len() == 3, "not a JWT: {token}");
    Ok([v[0].to_string(), v[1].to_string(), v[2].to_string()])
}

fn b64_json(value: &serde_json::Value) -> Result<String> {
    Ok(URL_SAFE_NO_PAD.encode(serde_json::to_vec(value)?))
}

fn decode_part(part: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part)?)?)
}

// ---------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------

fn round_trip(tokens: &Tokens, alg: &str) -> Result<()> {
    let now = SystemTime::now();
    let access = tokens.issue_access_at(&ann(), now);
    let [header, _, _] = parts(&access)?;
    let header = decode_part(&header)?;
    assert_eq!(header["alg"], alg);
    assert_eq!(header["typ"], "JWT");

    let claims = tokens.verify_access(&access)?;
    assert_eq!(claims.sub, ann().user_id);
    assert_eq!(claims.email, "ann@example.com");
    assert_eq!(claims.role, Role::Buyer);
    assert_eq!(claims.sid, "family-1");
    assert_eq!(claims.typ, TokenType::Access);
    assert_eq!(claims.iss, "orderflow");
    assert_eq!(claims.aud, "orderflow");
    assert_eq!(claims.iat, epoch(now)?);
    assert_eq!(claims.nbf, claims.iat);
    assert_eq!(
        claims.exp,
        claims.iat + i64::try_from(DEFAULT_ACCESS_TTL.as_secs())?
    );
    assert_eq!(claims.jti.len(), 36, "a UUID: {}", claims.jti);
    let again = tokens.verify_access(&tokens.issue_access(&ann()))?;
    assert_ne!(again.jti, claims.jti, "every access token has its own id");

    let (refresh, expires_at_ms) = tokens.issue_refresh_at(
        &ann().user_id,
        "ann@example.com",
        "family-1",
        "token-1",
        now,
    );
    let claims = tokens.verify_refresh(&refresh)?;
    assert_eq!(claims.sub, ann().user_id);
    assert_eq!(claims.email, "ann@example.com");
    assert_eq!(claims.sid, "family-1");
    assert_eq!(claims.jti, "token-1");
    assert_eq!(claims.typ, TokenType::Refresh);
    assert_eq!(
        claims.exp,
        epoch(now)? + i64::try_from(DEFAULT_REFRESH_TTL.as_secs())?
    );
    assert_eq!(expires_at_ms, claims.exp * 1000);
    assert_eq!(claims.expires_at_ms(), expires_at_ms);
    let payload = decode_part(&parts(&refresh)?[1])?;
    assert!(
        payload.get("role").is_none(),
        "a refresh token carries no role: {payload}"
    );
    Ok(())
}

#[test]
fn hs256_tokens_round_trip() -> Result<()> {
    round_trip(&hs256()?, "HS256")
}

#[test]
fn rs256_tokens_round_trip() -> Result<()> {
    round_trip(&rs256()?, "RS256")
}

#[test]
fn es256_tokens_round_trip() -> Result<()> {
    round_trip(&es256()?, "ES256")
}

#[test]
fn a_seller_token_says_seller() -> Result<()> {
    let tokens = hs256()?;
    let seller = AccessSubject {
        role: Role::Seller,
        ..ann()
    };
    let token = tokens.issue_access(&seller);
    assert_eq!(decode_part(&parts(&token)?[1])?["role"], "SELLER");
    assert_eq!(tokens.verify_access(&token)?.role, Role::Seller);
    Ok(())
}

// ---------------------------------------------------------------------------------
// Attacks
// ---------------------------------------------------------------------------------

#[test]
fn an_expired_token_is_refused_after_the_leeway() -> Result<()> {
    let tokens = hs256()?;
    let now = SystemTime::now();
    let ttl = DEFAULT_ACCESS_TTL;
    let expired = tokens.issue_access_at(&ann(), now - ttl - HOUR);
    assert_eq!(tokens.verify_access(&expired), Err(TokenError::Expired));
    // Within the leeway it still passes; one second past it, it does not.
    let issued = now - ttl;
    let token = tokens.issue_access_at(&ann(), issued);
    assert!(
        tokens
            .verify_access_at(&token, now + DEFAULT_LEEWAY)
            .is_ok()
    );
    assert_eq!(
        tokens.verify_access_at(&token, now + DEFAULT_LEEWAY + Duration::from_secs(1)),
        Err(TokenError::Expired)
    );

    let (refresh, _) = tokens.issue_refresh_at("u", "ann@example.com", "f", "t", now);
    assert_eq!(
        tokens.verify_refresh_at(&refresh, now + DEFAULT_REFRESH_TTL + HOUR),
        Err(TokenError::Expired)
    );
    Ok(())
}

#[test]
fn a_token_whose_nbf_is_ahead_is_refused() -> Result<()> {
    let tokens = hs256()?;
    let future = tokens.issue_access_at(&ann(), SystemTime::now() + HOUR);
    assert_eq!(tokens.verify_access(&future), Err(TokenError::NotYetValid));
    let (refresh, _) =
        tokens.issue_refresh_at("u", "ann@example.com", "f", "t", SystemTime::now() + HOUR);
    assert_eq!(
        tokens.verify_refresh(&refresh),
        Err(TokenError::NotYetValid)
    );
    Ok(())
}

#[test]
fn a_token_signed_with_another_key_is_refused() -> Result<()> {
    let other_secret = Tokens::new(&JwtConfig::hs256(
        b"another-test-only-secret-also-over-32-bytes".to_vec(),
    )?)?;
    let forged = other_secret.issue_access(&ann());
    assert_eq!(
        hs256()?.verify_access(&forged),
        Err(TokenError::BadSignature)
    );

    let other_rsa = Tokens::new(&JwtConfig::rs256(
        key("other-rs256-private.pem")?,
        key("other-rs256-public.pem")?,
    ))?;
    let forged = other_rsa.issue_access(&ann());
    assert_eq!(
        rs256()?.verify_access(&forged),
        Err(TokenError::BadSignature)
    );

    // A signature with one character changed, cut short (by whole base64 groups, so
    // it still decodes), or of another token.
    let tokens = hs256()?;
    let [h, p, s] = parts(&tokens.issue_access(&ann()))?;
    let flipped: String = s
        .char_indices()
        .map(|(i, c)| match (i, c) {
            (10, 'A') => 'B',
            (10, _) => 'A',
            _ => c,
        })
        .collect();
    assert_ne!(flipped, s);
    assert_eq!(
        tokens.verify_access(&format!("{h}.{p}.{flipped}")),
        Err(TokenError::BadSignature)
    );
    assert_eq!(s.len(), 43, "32 bytes of HMAC-SHA256, base64url");
    assert_eq!(
        tokens.verify_access(&format!("{h}.{p}.{}", &s[..40])),
        Err(TokenError::BadSignature)
    );
    let [_, _, other_sig] = parts(&tokens.issue_access(&AccessSubject {
        user_id: "someone-else".to_string(),
        ..ann()
    }))?;
    assert_eq!(
        tokens.verify_access(&format!("{h}.{p}.{other_sig}")),
        Err(TokenError::BadSignature)
    );
    Ok(())
}

#[test]
fn alg_none_is_refused() -> Result<()> {
    for tokens in [hs256()?, rs256()?, es256()?] {
        let [_, payload, _] = parts(&tokens.issue_access(&ann()))?;
        for alg in ["none", "None", "NONE"] {
            let header = b64_json(&serde_json::json!({"alg": alg, "typ": "JWT"}))?;
            // With no signature, and with the original one left on.
            for token in [
                format!("{header}.{payload}."),
                format!("{header}.{payload}"),
            ] {
                let verdict = tokens.verify_access(&token);
                assert!(
                    matches!(
                        verdict,
                        Err(TokenError::WrongAlgorithm | TokenError::Malformed(_))
                    ),
                    "{alg}: {verdict:?}"
                );
            }
            assert_eq!(
                tokens.verify_access(&format!("{header}.{payload}.")),
                Err(TokenError::WrongAlgorithm)
            );
        }
        // No alg at all.
        let header = b64_json(&serde_json::json!({"typ": "JWT"}))?;
        assert_eq!(
            tokens.verify_access(&format!("{header}.{payload}.")),
            Err(TokenError::WrongAlgorithm)
        );
    }
    Ok(())
}

#[test]
fn hs256_signed_with_the_rs256_public_key_is_refused() -> Result<()> {
    let tokens = rs256()?;
    let public_pem = key("rs256-public.pem")?;
    let [_, payload, _] = parts(&tokens.issue_access(&ann()))?;
    let claims = decode_part(&payload)?;

    // The classic confusion attack: the public key (which anyone has) as HMAC secret.
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(&public_pem),
    )?;
    // It is a genuine HMAC over the public key: a verifier that let the header pick
    // the algorithm and used "the key" as given would accept it.
    let mut naive = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::HS256);
    naive.set_audience(&["orderflow"]);
    jsonwebtoken::decode::<serde_json::Value>(
        &forged,
        &jsonwebtoken::DecodingKey::from_secret(&public_pem),
        &naive,
    )
    .context("the forged token is a valid HS256 token under the public key")?;

    assert_eq!(
        tokens.verify_access(&forged),
        Err(TokenError::WrongAlgorithm)
    );

    // Any other algorithm than the configured one, however well signed, is refused too.
    let hs_token = hs256()?.issue_access(&ann());
    assert_eq!(
        tokens.verify_access(&hs_token),
        Err(TokenError::WrongAlgorithm)
    );
    assert_eq!(
        hs256()?.verify_access(&tokens.issue_access(&ann())),
        Err(TokenError::WrongAlgorithm)
    );
    assert_eq!(
        es256()?.verify_access(&tokens.issue_access(&ann())),
        Err(TokenError::WrongAlgorithm)
    );
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET),
    )?;
    assert_eq!(
        hs256()?.verify_access(&hs512),
        Err(TokenError::WrongAlgorithm)
    );
    Ok(())
}

#[test]
fn a_tampered_role_breaks_the_signature() -> Result<()> {
    for tokens in [hs256()?, rs256()?, es256()?] {
        let [header, payload, signature] = parts(&tokens.issue_access(&ann()))?;
        let mut claims = decode_part(&payload)?;
        assert_eq!(claims["role"], "BUYER");
        claims["role"] = serde_json::json!("SELLER");
        let tampered = format!("{header}.{}.{signature}", b64_json(&claims)?);
        assert_eq!(
            tokens.verify_access(&tampered),
            Err(TokenError::BadSignature)
        );

        // Nor may a refresh token be given a role, or another family.
        let (refresh, _) = tokens.issue_refresh("u", "ann@example.com", "f1", "t1");
        let [header, payload, signature] = parts(&refresh)?;
        let mut claims = decode_part(&payload)?;
        claims["sid"] = serde_json::json!("f2");
        let tampered = format!("{header}.{}.{signature}", b64_json(&claims)?);
        assert_eq!(
            tokens.verify_refresh(&tampered),
            Err(TokenError::BadSignature)
        );
    }
    Ok(())
}

#[test]
fn a_wrong_issuer_or_audience_is_refused() -> Result<()> {
    let tokens = hs256()?;
    let foreign_issuer = Tokens::new(&JwtConfig {
        issuer: "someone-else".to_string(),
        ..JwtConfig::hs256(SECRET)?
    })?;
    let token = foreign_issuer.issue_access(&ann());
    assert_eq!(tokens.verify_access(&token), Err(TokenError::WrongIssuer));
    assert!(foreign_issuer.verify_access(&token).is_ok());

    let foreign_audience = Tokens::new(&JwtConfig {
        audience: "another-service".to_string(),
        ..JwtConfig::hs256(SECRET)?
    })?;
    let token = foreign_audience.issue_access(&ann());
    assert_eq!(tokens.verify_access(&token), Err(TokenError::WrongAudience));
    let (refresh, _) = foreign_audience.issue_refresh("u", "ann@example.com", "f", "t");
    assert_eq!(
        tokens.verify_refresh(&refresh),
        Err(TokenError::WrongAudience)
    );
    Ok(())
}

#[test]
fn access_and_refresh_tokens_are_not_interchangeable() -> Result<()> {
    for tokens in [hs256()?, rs256()?, es256()?] {
        let access = tokens.issue_access(&ann());
        let (refresh, _) = tokens.issue_refresh("u", "ann@example.com", "f", "t");
        assert_eq!(
            tokens.verify_access(&refresh),
            Err(TokenError::WrongType {
                expected: TokenType::Access
            })
        );
        assert_eq!(
            tokens.verify_refresh(&access),
            Err(TokenError::WrongType {
                expected: TokenType::Refresh
            })
        );
    }
    Ok(())
}

#[test]
fn required_claims_must_be_there() -> Result<()> {
    let tokens = hs256()?;
    let [_, payload, _] = parts(&tokens.issue_access(&ann()))?;
    let full = decode_part(&payload)?;
    for claim in [
        "exp", "nbf", "iss", "aud", "sub", "sid", "jti", "role", "typ",
    ] {
        let mut claims = full.clone();
        claims
            .as_object_mut()
            .context("claims are an object")?
            .remove(claim);
        // Properly signed with the real secret: only the missing claim is wrong.
        let token = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET),
        )?;
        let verdict = tokens.verify_access(&token);
        if claim == "typ" {
            assert_eq!(
                verdict,
                Err(TokenError::WrongType {
                    expected: TokenType::Access
                })
            );
        } else {
            assert!(
                matches!(verdict, Err(TokenError::Malformed(_))),
                "without {claim}: {verdict:?}"
            );
        }
    }
    Ok(())
}

#[test]
fn what_is_not_a_jwt_is_malformed() -> Result<()> {
    let tokens = hs256()?;
    for junk in [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "!!!.e30.sig",
        "e30.e30.e30",
    ] {
        let verdict = tokens.verify_access(junk);
        assert!(
            matches!(
                verdict,
                Err(TokenError::Malformed(_) | TokenError::WrongAlgorithm)
            ),
            "{junk:?}: {verdict:?}"
        );
    }
    assert!(matches!(
        tokens.verify_access("abc"),
        Err(TokenError::Malformed(_))
    ));
    Ok(())
}

#[test]
fn refusals_have_client_safe_messages_and_stable_codes() {
    let cases = [
        (TokenError::Expired, "TOKEN_EXPIRED"),
        (TokenError::NotYetValid, "TOKEN_NOT_YET_VALID"),
        (TokenError::BadSignature, "TOKEN_BAD_SIGNATURE"),
        (TokenError::WrongAlgorithm, "TOKEN_WRONG_ALGORITHM"),
        (TokenError::Malformed("not a JWT"), "TOKEN_MALFORMED"),
        (
            TokenError::WrongType {
                expected: TokenType::Refresh,
            },
            "TOKEN_WRONG_TYPE",
        ),
        (TokenError::WrongIssuer, "TOKEN_WRONG_ISSUER"),
        (TokenError::WrongAudience, "TOKEN_WRONG_AUDIENCE"),
    ];
    for (error, code) in cases {
        assert_eq!(error.code(), code);
        let text = error.to_string();
        assert!(text.starts_with("the token"), "{text}");
        assert!(!text.to_lowercase().contains("key"), "{text}");
    }
    assert_eq!(
        TokenError::WrongType {
            expected: TokenType::Refresh
        }
        .to_string(),
        "the token is not a refresh token"
    );
}

// ---------------------------------------------------------------------------------
// Configuration
// ---------------------------------------------------------------------------------

fn lookup(vars: &[(&str, String)]) -> impl Fn(&str) -> Option<String> {
    let vars: Vec<(String, String)> = vars
        .iter()
        .map(|(k, v)| ((*k).to_string(), v.clone()))
        .collect();
    move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
}

fn secret_var() -> (&'static str, String) {
    ("JWT_SECRET", String::from_utf8_lossy(SECRET).into_owned())
}

#[test]
fn the_environment_defaults_to_hs256_with_the_documented_settings() -> Result<()> {
    let config = JwtConfig::from_lookup(lookup(&[secret_var()]))?;
    assert_eq!(config.algorithm, JwtAlgorithm::Hs256);
    assert_eq!(config.issuer, "orderflow");
    assert_eq!(config.audience, "orderflow");
    assert_eq!(config.access_ttl, Duration::from_secs(15 * 60));
    assert_eq!(config.refresh_ttl, Duration::from_secs(14 * 24 * 3600));
    assert!(config.leeway <= Duration::from_secs(60), "a small leeway");
    assert!(
        !format!("{config:?}").contains("test-only"),
        "Debug never shows the secret: {config:?}"
    );
    let tokens = Tokens::new(&config)?;
    assert_eq!(tokens.algorithm(), JwtAlgorithm::Hs256);
    tokens.verify_access(&hs256()?.issue_access(&ann()))?;
    Ok(())
}

#[test]
fn the_environment_sets_issuer_audience_and_lifetimes() -> Result<()> {
    let config = JwtConfig::from_lookup(lookup(&[
        ("JWT_ALGORITHM", "HS256".to_string()),
        secret_var(),
        ("JWT_ISSUER", "https://auth.example.com".to_string()),
        ("JWT_AUDIENCE", "shop".to_string()),
        ("JWT_ACCESS_TTL", "5m".to_string()),
        ("JWT_REFRESH_TTL", "2d".to_string()),
    ]))?;
    assert_eq!(config.issuer, "https://auth.example.com");
    assert_eq!(config.audience, "shop");
    assert_eq!(config.access_ttl, Duration::from_secs(300));
    assert_eq!(config.refresh_ttl, Duration::from_secs(2 * 24 * 3600));
    let tokens = Tokens::new(&config)?;
    let claims = tokens.verify_access(&tokens.issue_access(&ann()))?;
    assert_eq!(claims.iss, "https://auth.example.com");
    assert_eq!(claims.aud, "shop");
    assert_eq!(claims.exp - claims.iat, 300);
    Ok(())
}

#[test]
fn the_environment_reads_pem_key_files() -> Result<()> {
    for (alg, private, public) in [
        ("RS256", "rs256-private.pem", "rs256-public.pem"),
        ("ES256", "es256-private.pem", "es256-public.pem"),
    ] {
        let config = JwtConfig::from_lookup(lookup(&[
            ("JWT_ALGORITHM", alg.to_string()),
            (
                "JWT_PRIVATE_KEY_FILE",
                key_path(private).display().to_string(),
            ),
            (
                "JWT_PUBLIC_KEY_FILE",
                key_path(public).display().to_string(),
            ),
            // Irrelevant for a key-pair algorithm, and ignored.
            secret_var(),
        ]))?;
        assert_eq!(config.algorithm.name(), alg);
        let tokens = Tokens::new(&config)?;
        let (refresh, _) = tokens.issue_refresh("u", "ann@example.com", "f", "t");
        assert_eq!(tokens.verify_refresh(&refresh)?.jti, "t");
    }
    Ok(())
}

#[test]
fn bad_settings_are_refused_with_clear_errors() -> Result<()> {
    let err = |vars: &[(&str, String)]| -> Result<String> {
        match JwtConfig::from_lookup(lookup(vars)) {
            Ok(config) => match Tokens::new(&config) {
                Ok(_) => anyhow::bail!("{vars:?} was accepted"),
                Err(e) => Ok(e.to_string()),
            },
            Err(e) => Ok(e.to_string()),
        }
    };

    let missing = err(&[])?;
    assert!(missing.contains("JWT_SECRET is not set"), "{missing}");
    let short = err(&[("JWT_SECRET", "x".repeat(MIN_SECRET_LEN - 1))])?;
    assert!(
        short.contains("JWT_SECRET is 31 bytes") && short.contains("at least 32"),
        "{short}"
    );
    assert!(JwtConfig::hs256(vec![7u8; MIN_SECRET_LEN]).is_ok());
    assert!(matches!(
        JwtConfig::hs256(vec![7u8; 8]),
        Err(JwtConfigError::SecretTooShort { len: 8 })
    ));

    let unknown = err(&[("JWT_ALGORITHM", "none".to_string()), secret_var()])?;
    assert!(
        unknown.contains("\"none\"") && unknown.contains("HS256, RS256 or ES256"),
        "{unknown}"
    );
    let lower = err(&[("JWT_ALGORITHM", "hs512".to_string()), secret_var()])?;
    assert!(lower.contains("not supported"), "{lower}");

    let no_private = err(&[
        ("JWT_ALGORITHM", "RS256".to_string()),
        (
            "JWT_PUBLIC_KEY_FILE",
            key_path("rs256-public.pem").display().to_string(),
        ),
    ])?;
    assert!(
        no_private.contains("JWT_PRIVATE_KEY_FILE is not set"),
        "{no_private}"
    );
    let no_public = err(&[
        ("JWT_ALGORITHM", "ES256".to_string()),
        (
            "JWT_PRIVATE_KEY_FILE",
            key_path("es256-private.pem").display().to_string(),
        ),
    ])?;
    assert!(
        no_public.contains("JWT_PUBLIC_KEY_FILE is not set"),
        "{no_public}"
    );
    let absent = err(&[
        ("JWT_ALGORITHM", "RS256".to_string()),
        (
            "JWT_PRIVATE_KEY_FILE",
            "/nonexistent/orderflow-test/private.pem".to_string(),
        ),
        (
            "JWT_PUBLIC_KEY_FILE",
            key_path("rs256-public.pem").display().to_string(),
        ),
    ])?;
    assert!(
        absent.contains("JWT_PRIVATE_KEY_FILE")
            && absent.contains("/nonexistent/orderflow-test/private.pem"),
        "{absent}"
    );

    // Keys that do not fit: not a pair, the wrong kind, not PEM.
    let mismatched = err(&[
        ("JWT_ALGORITHM", "RS256".to_string()),
        (
            "JWT_PRIVATE_KEY_FILE",
            key_path("rs256-private.pem").display().to_string(),
        ),
        (
            "JWT_PUBLIC_KEY_FILE",
            key_path("other-rs256-public.pem").display().to_string(),
        ),
    ])?;
    assert!(
        mismatched.contains("key pair") && mismatched.contains("does not verify"),
        "{mismatched}"
    );
    let wrong_kind = err(&[
        ("JWT_ALGORITHM", "ES256".to_string()),
        (
            "JWT_PRIVATE_KEY_FILE",
            key_path("rs256-private.pem").display().to_string(),
        ),
        (
            "JWT_PUBLIC_KEY_FILE",
            key_path("rs256-public.pem").display().to_string(),
        ),
    ])?;
    assert!(wrong_kind.contains("ES256"), "{wrong_kind}");
    assert!(matches!(
        Tokens::new(&JwtConfig::rs256(
            b"not a key".to_vec(),
            b"nor this".to_vec()
        )),
        Err(JwtConfigError::BadKey {
            what: "private",
            ..
        })
    ));

    for (var, value, needle) in [
        ("JWT_ACCESS_TTL", "900", "give a unit"),
        ("JWT_ACCESS_TTL", "0s", "at least 1s"),
        ("JWT_REFRESH_TTL", "two weeks", "JWT_REFRESH_TTL"),
        ("JWT_REFRESH_TTL", "14w", "unit"),
    ] {
        let message = err(&[secret_var(), (var, value.to_string())])?;
        assert!(
            message.contains(var) && message.contains(needle),
            "{var}={value}: {message}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------
// Passwords
// ---------------------------------------------------------------------------------

#[test]
fn a_password_hashes_to_argon2id_and_verifies() -> Result<()> {
    let phc = hash_password("correct horse battery staple")?;
    assert!(
        phc.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "argon2id with OWASP's parameters: {phc}"
    );
    assert!(!phc.contains("correct horse"));
    assert!(verify_password("correct horse battery staple", &phc)?);
    assert!(!verify_password("correct horse battery stapler", &phc)?);
    assert!(!verify_password("", &phc)?);

    let again = hash_password("correct horse battery staple")?;
    assert_ne!(again, phc, "a fresh random salt every time");
    assert!(verify_password("correct horse battery staple", &again)?);
    Ok(())
}

#[test]
fn a_hash_that_is_not_argon2_is_an_error_and_no_hash_never_matches() -> Result<()> {
    assert!(
        !verify_password("anything", "")?,
        "a deleted account has no credential"
    );
    for junk in [
        "plaintext",
        "$argon2id$garbage",
        "$pbkdf2-sha256$i=1000$c2FsdA$aGFzaA",
    ] {
        assert!(
            matches!(
                verify_password("anything", junk),
                Err(PasswordError::BadHash)
            ),
            "{junk}"
        );
    }
    Ok(())
}

#[test]
fn the_password_policy_counts_characters() {
    assert_eq!(MIN_PASSWORD_CHARS, 8);
    assert_eq!(MAX_PASSWORD_CHARS, 128);
    let short = check_password_policy("1234567").expect_err("7 characters");
    assert!(short.contains("at least 8"), "{short}");
    assert!(check_password_policy("12345678").is_ok());
    assert!(check_password_policy(&"x".repeat(128)).is_ok());
    let long = check_password_policy(&"x".repeat(129)).expect_err("129 characters");
    assert!(long.contains("at most 128"), "{long}");
    // Characters, not bytes: 8 two-byte letters are enough, 4 are not.
    assert!(check_password_policy("ÄÖÜäöüßé").is_ok());
    assert!(check_password_policy("ÄÖÜä").is_err());
}

#[tokio::test]
async fn async_hashing_runs_off_the_runtime() -> Result<()> {
    // A current-thread runtime: if argon2 ran on it, the ticker could not tick until
    // the hash was done.
    let ticks = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let ticker = {
        let ticks = ticks.clone();
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(Duration::from_millis(1));
            loop {
                interval.tick().await;
                ticks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        })
    };
    tokio::task::yield_now().await;
    let before = ticks.load(std::sync::atomic::Ordering::Relaxed);
    let phc = hash_password_async("correct horse battery staple".to_string()).await?;
    let during = ticks.load(std::sync::atomic::Ordering::Relaxed) - before;
    ticker.abort();
    assert!(
        during >= 3,
        "the runtime kept running while hashing ({during} ticks)"
    );

    assert!(verify_password_async("correct horse battery staple".to_string(), phc.clone()).await?);
    assert!(!verify_password_async("wrong horse battery staple".to_string(), phc).await?);
    assert!(!verify_unknown_user_async("correct horse battery staple".to_string()).await?);
    Ok(())
}
