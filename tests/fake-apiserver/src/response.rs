//! Response bodies: JSON objects and the `Status` objects the real server answers errors with
//! (kubectl prints their `message`).

use std::convert::Infallible;

use http_body_util::{combinators::UnsyncBoxBody, BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Response, StatusCode};
use serde_json::{json, Value};

pub type Body = UnsyncBoxBody<Bytes, Infallible>;

pub fn full(status: StatusCode, body: &Value) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())).boxed_unsync());
    *resp.status_mut() = status;
    let json = hyper::header::HeaderValue::from_static("application/json");
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, json);
    resp
}

pub fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *resp.status_mut() = status;
    let text = hyper::header::HeaderValue::from_static("text/plain; charset=utf-8");
    resp.headers_mut().insert(hyper::header::CONTENT_TYPE, text);
    resp
}

/// A failure `Status` object.
pub fn status(code: StatusCode, reason: &str, message: String) -> Value {
    json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    })
}

pub fn error(code: StatusCode, reason: &str, message: String) -> Response<Body> {
    full(code, &status(code, reason, message))
}

/// A failure `Status` naming the object (`details`), as NotFound, AlreadyExists and Conflict
/// carry.
pub fn error_about(
    code: StatusCode,
    reason: &str,
    message: String,
    group: &str,
    plural: &str,
    name: &str,
) -> Response<Body> {
    let mut body = status(code, reason, message);
    body["details"] = json!({ "name": name, "group": group, "kind": plural });
    full(code, &body)
}

pub fn bad_request(message: String) -> Response<Body> {
    error(StatusCode::BAD_REQUEST, "BadRequest", message)
}

/// What a real API server answers for a path no installed group serves.
pub fn page_not_found() -> Response<Body> {
    text(StatusCode::NOT_FOUND, "404 page not found\n")
}
