//! Who may ask what of the API. Health endpoints and cluster views are
//! open (load balancers and DNS checks call them); everything that changes
//! the cluster, or that another member acts on, needs the bearer token
//! shared by the members (`api.token_file`):
//!
//! | needs the token | why |
//! |---|---|
//! | `POST /switchover`, `/failover`, `/pause`, `/resume` | they move the primary |
//! | `POST /failsafe` | a "yes" lets a primary cut off from etcd keep writing |
//! | `GET /member?fresh=1` | the fresh look queries the database; without the token the answer is the loop's last record |
//!
//! The token is checked before the request body is read.

use crate::config::Config;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// Constant-time comparison (`subtle`): every byte of both, and a length
/// mismatch is a mismatch (a hand-written loop here once accepted the
/// right token followed by 256 more bytes).
fn token_matches(got: &[u8], want: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    !want.is_empty() && bool::from(got.ct_eq(want))
}

/// Why a request is not authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// No token is configured: the endpoints that need one are off.
    NoTokenConfigured,
    /// The request carries no token or the wrong one.
    WrongToken,
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Refused::NoTokenConfigured => {
                (StatusCode::FORBIDDEN, Json(json!({"error": "no api token configured (api.token_file); this endpoint is disabled"})))
                    .into_response()
            }
            Refused::WrongToken => (StatusCode::UNAUTHORIZED, Json(json!({"error": "missing or wrong bearer token"}))).into_response(),
        }
    }
}

/// Does the request carry the members' bearer token?
pub fn authorized(cfg: &Config, headers: &HeaderMap) -> Result<(), Refused> {
    let want = cfg.api.token.expose().as_bytes();
    if want.is_empty() {
        return Err(Refused::NoTokenConfigured);
    }
    let got = headers.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer ")).unwrap_or("").as_bytes();
    if token_matches(got, want) {
        Ok(())
    } else {
        Err(Refused::WrongToken)
    }
}

#[cfg(test)]
mod tests {
    use super::token_matches;

    #[test]
    fn the_token_must_match_exactly() {
        let want = b"s3cret-token";
        assert!(token_matches(want, want));
        for extra in [1usize, 255, 256, 512] {
            let mut longer = want.to_vec();
            longer.extend(std::iter::repeat_n(b'x', extra));
            assert!(!token_matches(&longer, want), "the token plus {extra} bytes was accepted");
        }
        assert!(!token_matches(b"s3cret-toke", want));
        assert!(!token_matches(b"", want));
        assert!(!token_matches(b"", b""), "no token configured accepts nothing");
    }
}
