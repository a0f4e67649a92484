//! The OpenAPI 3 document of the HTTP edge, generated from the handlers' `#[utoipa::path]`
//! annotations and the request and response types, served on `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::error::{ErrorBody, ErrorDetail};
use super::{auth, ops, orders};

/// The document.
#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "orderflow HTTP API",
        description = "Accounts, sessions and orders over orderflow's streams. Errors are `{\"error\": {\"code\", \"message\"}}`; every response carries `x-request-id`.",
    ),
    paths(
        auth::register,
        auth::login,
        auth::refresh,
        auth::logout,
        auth::user,
        orders::place,
        orders::list,
        orders::get,
        orders::cancel,
        ops::health,
        ops::ready,
        ops::metrics,
        ops::openapi,
    ),
    components(schemas(
        ErrorBody,
        ErrorDetail,
        auth::ApiRole,
        auth::RegisterRequest,
        auth::RegisteredUser,
        auth::LoginRequest,
        auth::RefreshRequest,
        auth::TokenPair,
        auth::UserView,
        orders::ApiOrderStatus,
        orders::ApiItem,
        orders::PlaceOrderRequest,
        orders::PlacedOrder,
        orders::OrderView,
        orders::OrderList,
        orders::CancelRequest,
        ops::Status,
    )),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and sessions"),
        (name = "orders", description = "Orders"),
        (name = "ops", description = "Probes, metrics and this document"),
    ),
)]
pub struct ApiDoc;

/// Declares the `bearer` scheme the secured routes name: a JWT access token.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_documented() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let paths = doc["paths"].as_object().unwrap();
        for (path, method) in [
            ("/auth/register", "post"),
            ("/auth/login", "post"),
            ("/auth/refresh", "post"),
            ("/auth/logout", "post"),
            ("/auth/user/{userId}", "get"),
            ("/orders", "post"),
            ("/orders", "get"),
            ("/orders/{orderId}", "get"),
            ("/orders/{orderId}/cancel", "post"),
            ("/health", "get"),
            ("/ready", "get"),
            ("/metrics", "get"),
            ("/openapi.json", "get"),
        ] {
            assert!(paths[path][method].is_object(), "{method} {path} missing");
        }
        assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
        assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
    }
}
