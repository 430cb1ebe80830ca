//! Bearer tokens, checked the same way for an HTTP header and for gRPC metadata: the admin
//! token for management, the feedback token (or the admin token) for ground truth.

use subtle::ConstantTimeEq;

use super::{ApiError, AppState};

/// Checks an `Authorization` value (an HTTP header or gRPC metadata) against the admin token.
pub fn check_bearer(state: &AppState, value: Option<&[u8]>) -> Result<(), ApiError> {
    match &state.config.admin_token {
        None => Ok(()),
        Some(token) => bearer(value, &[token], "admin token"),
    }
}

/// Feedback needs the feedback token or the admin token when either is set: whoever sends
/// labels decides a canary with a live-quality criterion and what retraining learns from.
pub fn check_feedback(state: &AppState, value: Option<&[u8]>) -> Result<(), ApiError> {
    let tokens: Vec<&str> = [&state.config.feedback_token, &state.config.admin_token]
        .into_iter()
        .flatten()
        .map(String::as_str)
        .collect();
    if tokens.is_empty() {
        return Ok(());
    }
    bearer(value, &tokens, "feedback token or admin token")
}

/// Checks an `Authorization` value against `tokens` (`what` names them in errors): none given
/// is 401, another 403.
fn bearer(value: Option<&[u8]>, tokens: &[&str], what: &str) -> Result<(), ApiError> {
    let Some(value) = value else {
        return Err(ApiError::Unauthorized(format!(
            "this endpoint needs 'Authorization: Bearer <{what}>'"
        )));
    };
    // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
    let given = std::str::from_utf8(value)
        .ok()
        .map(str::trim)
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .unwrap_or("");
    // Compared in constant time, with every token, so timing does not reveal how much of a
    // guess was right, nor which token it was near.
    let matched = tokens.iter().fold(subtle::Choice::from(0), |any, token| {
        any | given.as_bytes().ct_eq(token.as_bytes())
    });
    if bool::from(matched) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "the bearer token is not the {what}"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn either_token_passes_in_constant_time_and_nothing_else() {
        let tokens = ["feed", "admin"];
        for (value, ok) in [
            ("Bearer feed", true),
            ("bearer admin", true),
            ("Bearer fee", false),
            ("Bearer feedadmin", false),
            ("Basic feed", false),
        ] {
            let got = bearer(
                Some(value.as_bytes()),
                &tokens,
                "feedback token or admin token",
            );
            assert_eq!(got.is_ok(), ok, "{value}");
        }
        let err = bearer(None, &tokens, "feedback token or admin token").unwrap_err();
        assert!(matches!(err, ApiError::Unauthorized(_)), "{err}");
    }
}
