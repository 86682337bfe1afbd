//! Inputs the fuzz targets (fuzz/, `fuzz/run`) found to misbehave, through the real binary and
//! its socket: each test fails without its fix. Findings in pure code have their test beside
//! the code instead (`schedule::tests::the_last_occurrence_of_a_dense_schedule_is_found_at_once`).
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

mod common;

use common::{Daemon, http};

/// `api_router`: a path segment whose percent-encoding is not UTF-8 (`%ea`) was refused by
/// axum's own rejection, a plain-text 400, not the `{"error": {"code", "message"}}` every other
/// error has (README, "API").
#[test]
fn a_path_segment_that_is_not_utf8_gets_a_json_error() {
    let d = Daemon::start();
    let requests = [
        ("POST", "/v1/cas/%eam/disable"),
        ("GET", "/v1/certificates/%ff"),
        ("GET", "/v1/certificates/%c3%28/explain"),
        ("POST", "/v1/acme/%80/key-rollover"),
    ];
    for (method, path) in requests {
        let (status, text) = http(&d.socket, method, path, None);
        let body: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{method} {path}: {status}, not JSON ({e}): {text:?}"));
        assert_eq!(status, 400, "{method} {path}: {body}");
        assert_eq!(
            body["error"]["code"], "invalid-input",
            "{method} {path}: {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains("UTF-8"), "{method} {path}: {message:?}");
    }
}
