//! RFC 9457 problem details: every error response is `application/problem+json` with a precise
//! `detail`.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error response.
#[derive(Debug, Serialize)]
pub struct Problem {
    #[serde(rename = "type")]
    kind: &'static str,
    title: &'static str,
    status: u16,
    detail: String,
    /// The ids of events that were stored although the request as a whole failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    stored_ids: Option<Vec<String>>,
    #[serde(skip)]
    headers: HeaderMap,
}

impl Problem {
    /// A problem with this status, a stable type slug and a precise detail.
    pub fn new(
        status: StatusCode,
        slug: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Problem {
            kind: slug,
            title,
            status: status.as_u16(),
            detail: detail.into(),
            stored_ids: None,
            headers: HeaderMap::new(),
        }
    }

    /// `400`.
    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "https://floodway.dev/problems/bad-request",
            "Bad request",
            detail,
        )
    }

    /// `404`.
    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "https://floodway.dev/problems/not-found",
            "Not found",
            detail,
        )
    }

    /// `408`.
    pub fn timeout(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "https://floodway.dev/problems/timeout",
            "Request timeout",
            detail,
        )
    }

    /// `413`.
    pub fn too_large(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "https://floodway.dev/problems/too-large",
            "Payload too large",
            detail,
        )
    }

    /// `415`.
    pub fn unsupported(detail: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "https://floodway.dev/problems/unsupported-media-type",
            "Unsupported media type",
            detail,
        )
    }

    /// `429` with `Retry-After`.
    pub fn slow_down(detail: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "https://floodway.dev/problems/slow-down",
            "Too many requests",
            detail,
        )
        .retry_after(retry_after)
    }

    /// `503` with `Retry-After`.
    pub fn unavailable(detail: impl Into<String>, retry_after: Duration) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "https://floodway.dev/problems/unavailable",
            "Service unavailable",
            detail,
        )
        .retry_after(retry_after)
    }

    /// Adds `Retry-After` in whole seconds, rounded up (never 0: "retry now" would be a lie).
    pub fn retry_after(mut self, after: Duration) -> Self {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.headers
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        self
    }

    /// Lists events that were stored although the request failed.
    pub fn stored_ids(mut self, ids: Vec<String>) -> Self {
        self.stored_ids = Some(ids);
        self
    }

    /// Adds all of `headers`.
    pub fn headers(mut self, headers: HeaderMap) -> Self {
        self.headers.extend(headers);
        self
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        resp.headers_mut().extend(self.headers);
        resp
    }
}
