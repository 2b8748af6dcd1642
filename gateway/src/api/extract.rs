//! The JSON body extractor of the API: every way a body can be wrong gets a status that
//! `docs/API.md` names and a JSON `{"error": "..."}`, never axum's plain-text rejections.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequest, Request};
use axum::http::{StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::de::DeserializeOwned;

use super::ApiError;
use crate::node::Node;

/// A JSON request body, read within `http.body_timeout_ms` and `http.max_body_bytes`.
pub(crate) struct ApiJson<T>(pub(crate) T);

impl<T: DeserializeOwned> FromRequest<Arc<Node>> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, node: &Arc<Node>) -> Result<Self, ApiError> {
        let json = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "the body must be JSON with content-type: application/json".to_owned(),
            ));
        }
        let http = &node.cfg.http;
        let limit = http.max_body_bytes;
        let body = Limited::new(req.into_body(), limit);
        let collected =
            tokio::time::timeout(Duration::from_millis(http.body_timeout_ms), body.collect())
                .await
                .map_err(|_| {
                    ApiError(
                        StatusCode::REQUEST_TIMEOUT,
                        "the request body did not arrive in time".to_owned(),
                    )
                })?;
        let bytes = match collected {
            Ok(c) => c.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => {
                return Err(ApiError(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    format!("the request body exceeds {limit} bytes"),
                ));
            }
            Err(e) => {
                return Err(ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("cannot read the body: {e}"),
                ));
            }
        };
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            // Name the field: "user: invalid type: integer `5`, expected a string".
            let path = e.path().to_string();
            let inner = e.into_inner();
            let message = if path == "." { inner.to_string() } else { format!("{path}: {inner}") };
            ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {message}"))
        })?;
        de.end()
            .map_err(|e| ApiError(StatusCode::BAD_REQUEST, format!("invalid JSON body: {e}")))?;
        Ok(ApiJson(value))
    }
}
