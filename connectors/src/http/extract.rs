//! What the handlers take from a request, with the contract's errors when it is not
//! there: a JSON body ([`ApiJson`], [`OptionalJson`]: 400 for a wrong content type or
//! malformed JSON, 413 over the body limit, 422 naming the field whose value does not
//! fit) and the signed-in caller ([`Caller`], [`BuyerCaller`]: 401 with
//! `WWW-Authenticate: Bearer` for a missing or refused access token, 403 for the
//! wrong role). The caller's role comes from the verified token's claims only.

use axum::body::Bytes;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use orderflow_pipelines::records::{Role, UserStatus};
use serde::de::DeserializeOwned;

use super::HttpState;
use super::error::ApiError;

/// A JSON request body of type `T`.
#[derive(Debug, Clone)]
pub struct ApiJson<T>(pub T);

/// A JSON request body of type `T` that may be left out (an empty body).
#[derive(Debug, Clone)]
pub struct OptionalJson<T>(pub Option<T>);

fn is_json(headers: &HeaderMap) -> bool {
    let Some(value) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence == "application/json"
        || (essence.starts_with("application/") && essence.ends_with("+json"))
}

async fn body_bytes(req: Request, state: &HttpState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "PAYLOAD_TOO_LARGE",
                format!(
                    "the request body is larger than the limit of {} bytes",
                    state.settings.body_limit
                ),
            )
        } else {
            ApiError::malformed(format!("the request body could not be read: {rejection}"))
        }
    })
}

/// Parses a JSON document into `T`, telling a document that is not JSON (400) from
/// one whose values do not fit (422, with the path of the field).
pub(crate) fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(value) => value,
        Err(error) => {
            let path = error.path().to_string();
            let inner = error.into_inner();
            return Err(match inner.classify() {
                serde_json::error::Category::Data => {
                    let message = strip_position(&inner.to_string());
                    let field = match missing_field(&message) {
                        Some(name) if path == "." => name.to_string(),
                        Some(name) => format!("{path}.{name}"),
                        None if path == "." => "body".to_string(),
                        None => path,
                    };
                    ApiError::invalid_field(field, message)
                }
                _ => ApiError::malformed(format!("the request body is not valid JSON: {inner}")),
            });
        }
    };
    de.end()
        .map_err(|e| ApiError::malformed(format!("the request body is not valid JSON: {e}")))?;
    Ok(value)
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.split('`').next())
}

impl<T: DeserializeOwned> FromRequest<HttpState> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &HttpState) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers()) {
            return Err(ApiError::content_type());
        }
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(ApiJson)
    }
}

impl<T: DeserializeOwned> FromRequest<HttpState> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &HttpState) -> Result<Self, Self::Rejection> {
        let json = is_json(req.headers());
        let bytes = body_bytes(req, state).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(None));
        }
        if !json {
            return Err(ApiError::content_type());
        }
        parse_json(&bytes).map(|v| OptionalJson(Some(v)))
    }
}

/// The one id in a route's path (`{userId}`, `{orderId}`); 400 when it cannot be
/// read (not UTF-8 once percent-decoded).
#[derive(Debug, Clone)]
pub struct PathId(pub String);

impl FromRequestParts<HttpState> for PathId {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<String>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(id)| PathId(id))
            .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "BAD_PATH", e.body_text()))
    }
}

/// The signed-in user, from a verified access token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user's id (`sub`).
    pub user_id: String,
    /// The user's lower-case email.
    pub email: String,
    /// The role the token was issued with.
    pub role: Role,
    /// The login's token family (`sid`).
    pub session_id: String,
}

/// The bearer token of `Authorization`, if the header has one.
pub(crate) fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let missing = || {
        ApiError::unauthenticated(
            "UNAUTHENTICATED",
            "sign in first: send Authorization: Bearer <access token>",
        )
    };
    let value = parts
        .headers
        .get(header::AUTHORIZATION)
        .ok_or_else(missing)?
        .to_str()
        .map_err(|_| missing())?;
    let (scheme, token) = value.trim().split_once(' ').ok_or_else(missing)?;
    if !scheme.eq_ignore_ascii_case("bearer") || token.trim().is_empty() {
        return Err(missing());
    }
    Ok(token.trim())
}

impl FromRequestParts<HttpState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer(parts)?;
        let claims = state
            .tokens
            .verify_access(token)
            .map_err(|e| ApiError::invalid_token(e.code(), e.to_string()))?;
        // A token outlives nothing: an account deleted since it was issued is refused
        // at once rather than when the token expires. An account the directory does
        // not know yet (another instance registered it a moment ago) is let through.
        match state.streams.directory().user(&claims.sub).await {
            Ok(Some(user)) if user.status == UserStatus::Deleted => {
                return Err(ApiError::invalid_token(
                    "ACCOUNT_DELETED",
                    "the account of this token has been deleted",
                ));
            }
            Ok(_) => {}
            Err(error) => {
                tracing::warn!(error = %error, "http: directory unavailable while checking a token");
            }
        }
        Ok(Caller {
            user_id: claims.sub,
            email: claims.email,
            role: claims.role,
            session_id: claims.sid,
        })
    }
}

/// A signed-in BUYER; anyone else gets 403.
#[derive(Debug, Clone)]
pub struct BuyerCaller(pub Caller);

impl FromRequestParts<HttpState> for BuyerCaller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &HttpState,
    ) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.role != Role::Buyer {
            return Err(ApiError::forbidden("only a BUYER may do this"));
        }
        Ok(BuyerCaller(caller))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Item {
        quantity: i32,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        items: Vec<Item>,
    }

    #[test]
    fn names_the_field_that_does_not_fit() {
        let e = parse_json::<Body>(br#"{"name":"a","items":[{"quantity":"x"}]}"#).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body = axum::response::IntoResponse::into_response(e);
        assert_eq!(body.status(), StatusCode::UNPROCESSABLE_ENTITY);

        let e = parse_json::<Body>(br#"{"items":[]}"#).unwrap_err();
        assert_eq!(e.code(), "INVALID_FIELD");
        assert!(format!("{e:?}").contains("Some(\"name\")"), "{e:?}");

        let e = parse_json::<Body>(br#"{"name":"a","items":[{}]}"#).unwrap_err();
        assert!(
            format!("{e:?}").contains("Some(\"items[0].quantity\")"),
            "{e:?}"
        );
    }

    #[test]
    fn tells_malformed_json_apart() {
        for bad in [
            &b"{"[..],
            b"nope",
            b"{\"name\":\"a\",\"items\":[]} trailing",
        ] {
            let e = parse_json::<Body>(bad).unwrap_err();
            assert_eq!(e.code(), "MALFORMED_JSON", "{bad:?}");
            assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn accepts_json_content_types_only() {
        let mut h = HeaderMap::new();
        assert!(!is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/json; charset=utf-8".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(
            header::CONTENT_TYPE,
            "application/merge-patch+json".parse().unwrap(),
        );
        assert!(is_json(&h));
        h.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(!is_json(&h));
    }
}
