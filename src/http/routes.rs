//! Path and method dispatch for the V2 API, Triton's extensions and `/metrics`.

use std::borrow::Cow;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;

use super::error::ApiError;
use super::{deployment, empty_response, infer, json_response, models, repository, AppState};

type Reply = Result<Response<Full<Bytes>>, ApiError>;

/// Routes one request. Returns a fixed endpoint label for the HTTP metrics with the outcome.
pub async fn dispatch(state: &AppState, req: Request<Incoming>) -> (&'static str, Reply) {
    let path = req.uri().path().to_string();
    let method = req.method().clone();
    let segments: Vec<Cow<'_, str>> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let seg: Vec<&str> = segments.iter().map(|s| s.as_ref()).collect();

    let not_allowed = |allowed: &'static str| ApiError::MethodNotAllowed {
        method: method.to_string(),
        path: path.clone(),
        allowed,
    };
    let get = |endpoint: &'static str, reply: fn(&AppState) -> Reply| -> (&'static str, Reply) {
        if method == Method::GET || method == Method::HEAD {
            (endpoint, reply(state))
        } else {
            (endpoint, Err(not_allowed("GET")))
        }
    };

    // Management endpoints, and inference when so configured, need the admin token.
    let guarded = match seg.as_slice() {
        ["v2", "repository", ..] => Some("repository"),
        ["v2", "deployments"] | ["v2", "models", _, "deployment", ..] => Some("deployment"),
        ["v2", "models", _, .., "infer"] if state.config.protect_inference => Some("infer"),
        _ => None,
    };
    if let Some(endpoint) = guarded {
        if let Err(e) = authorize(state, req.headers()) {
            return (endpoint, Err(e));
        }
    }
    match seg.as_slice() {
        ["v2"] => get("server_metadata", models::server_metadata),
        ["v2", "deployments"] => get("deployment", deployment::list),
        ["v2", "health", "live"] => get("health", |_| Ok(empty_response(StatusCode::OK))),
        ["v2", "health", "ready"] => get("health", |s| {
            if s.is_ready() {
                Ok(empty_response(StatusCode::OK))
            } else if s.stopping.load(std::sync::atomic::Ordering::Acquire) {
                Err(ApiError::Unready(
                    "the server is not ready: shutting down".into(),
                ))
            } else {
                Err(ApiError::Unready(
                    "the server is not ready: loading the model repository".into(),
                ))
            }
        }),
        ["metrics"] => get("metrics", |s| {
            Ok(Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, "text/plain; version=0.0.4")
                .body(Full::new(Bytes::from(s.metrics.render())))
                .expect("static headers are valid"))
        }),
        ["v2", "models", "stats"] => {
            if method != Method::GET {
                return ("stats", Err(not_allowed("GET")));
            }
            ("stats", models::stats(state, None, None))
        }
        ["v2", "models", model, rest @ ..] => {
            if let ["deployment", action @ ..] = rest {
                let model = model.to_string();
                return match (action, &method) {
                    ([], &Method::GET) => ("deployment", deployment::get(state, &model)),
                    ([], _) => ("deployment", Err(not_allowed("GET"))),
                    ([action], &Method::POST) => {
                        let action = action.to_string();
                        (
                            "deployment",
                            deployment::act(state, &model, &action, req).await,
                        )
                    }
                    ([_], _) => ("deployment", Err(not_allowed("POST"))),
                    _ => ("unknown", Err(no_endpoint(&method, &path))),
                };
            }
            let (version, action) = match rest {
                [] => (None, None),
                [action] => (None, Some(*action)),
                ["versions", v] => (Some(*v), None),
                ["versions", v, action] => (Some(*v), Some(*action)),
                _ => return ("unknown", Err(no_endpoint(&method, &path))),
            };
            let model = *model;
            match action {
                None | Some("ready" | "config" | "stats") => {
                    let endpoint = match action {
                        None => "model_metadata",
                        Some("ready") => "model_ready",
                        Some("config") => "model_config",
                        _ => "stats",
                    };
                    if method != Method::GET {
                        return (endpoint, Err(not_allowed("GET")));
                    }
                    let reply = match action {
                        None => models::metadata(state, model, version),
                        Some("ready") => models::ready(state, model, version),
                        Some("config") => models::config(state, model, version),
                        _ => models::stats(state, Some(model), version),
                    };
                    (endpoint, reply)
                }
                Some("infer") => {
                    if method != Method::POST {
                        return ("infer", Err(not_allowed("POST")));
                    }
                    let model = model.to_string();
                    let version = version.map(str::to_string);
                    (
                        "infer",
                        infer::infer(state, &model, version.as_deref(), req).await,
                    )
                }
                Some(_) => ("unknown", Err(no_endpoint(&method, &path))),
            }
        }
        ["v2", "repository", "index"] => {
            if method != Method::POST && method != Method::GET {
                return ("repository", Err(not_allowed("POST")));
            }
            ("repository", repository::index(state, req).await)
        }
        ["v2", "repository", "rescan"] => {
            if method != Method::POST {
                return ("repository", Err(not_allowed("POST")));
            }
            let acted = state.repository.rescan().await;
            (
                "repository",
                Ok(json_response(&serde_json::json!({ "changed": acted }))),
            )
        }
        ["v2", "repository", "models", model, action @ ("load" | "unload")] => {
            if method != Method::POST {
                return ("repository", Err(not_allowed("POST")));
            }
            let model = model.to_string();
            let reply = if *action == "load" {
                repository::load(state, &model, req).await
            } else {
                repository::unload(state, &model, req).await
            };
            ("repository", reply)
        }
        _ => ("unknown", Err(no_endpoint(&method, &path))),
    }
}

/// Management endpoints need the admin bearer token when one is configured: none given is 401,
/// a wrong one 403.
fn authorize(state: &AppState, headers: &http::HeaderMap) -> Result<(), ApiError> {
    let Some(token) = &state.config.admin_token else {
        return Ok(());
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized(
            "this endpoint needs 'Authorization: Bearer <admin token>'".into(),
        ));
    };
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
    let given = value
        .to_str()
        .ok()
        .map(str::trim)
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    if constant_time_eq(given.as_bytes(), token.as_bytes()) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "the bearer token is not the admin token".into(),
        ))
    }
}

/// Compares without an early exit, so timing does not reveal how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        diff |= (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

fn no_endpoint(method: &Method, path: &str) -> ApiError {
    ApiError::NoEndpoint {
        method: method.to_string(),
        path: path.to_string(),
    }
}

/// Decodes `%XX` escapes in one path segment (clients quote model names).
fn percent_decode(segment: &str) -> Cow<'_, str> {
    if !segment.contains('%') {
        return Cow::Borrowed(segment);
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    Cow::Owned(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn decodes_escapes() {
        assert_eq!(percent_decode("my%20model"), "my model");
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("plain"), "plain");
        assert_eq!(percent_decode("%41%"), "A%");
    }
}
