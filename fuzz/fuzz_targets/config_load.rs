//! The config loader (`certkeeper serve`, `certkeeper config check`): arbitrary text through
//! `Config::parse`, the function `Config::load` calls on the file's contents. Seeds: the
//! shipped `config/certkeeper.toml` and `config/examples/*.toml`, and small files touching each
//! table.
//!
//! Properties: no panic; an error is one non-empty line that names where (a syntax error its
//! line and column inside the text, a value error its key); an accepted config keeps every
//! duration inside the range the README's "Limits" table gives, the socket is neither the
//! store nor the master key, and every ACME directory is a URL the HTTP client can request.
#![no_main]

use std::path::Path;

use certkeeper::config::{Config, ConfigError, Environment};
use certkeeper::span::{Bounds, Span, bounds};
use libfuzzer_sys::fuzz_target;

fn check_error(text: &str, err: &ConfigError) {
    let shown = err.to_string();
    assert!(!shown.trim().is_empty(), "{err:?}");
    assert!(!shown.contains('\n'), "a config error is one line: {shown:?}");
    match err {
        ConfigError::Syntax {
            line,
            column,
            message,
            ..
        } => {
            assert!(!message.trim().is_empty(), "{err:?}");
            assert!(*line >= 1 && *column >= 1, "{err:?}");
            assert!(*line <= text.lines().count() + 1, "line {line} past the text: {err:?}");
        }
        ConfigError::Invalid { key, message, .. } => {
            assert!(!key.trim().is_empty(), "an invalid value names its key: {err:?}");
            assert!(!message.trim().is_empty(), "{err:?}");
        }
        ConfigError::Read { .. } => panic!("parse read a file: {err:?}"),
    }
}

fn inside(what: &str, span: Span, bounds: Bounds) {
    assert!(
        bounds.check(span).is_ok(),
        "{what} = {span} is outside {}..={}",
        bounds.min,
        bounds.max
    );
}

fn check_config(config: &Config) {
    inside("renewal.renew-before", config.renewal.renew_before, bounds::RENEW_BEFORE);
    if let Some(window) = &config.renewal.window {
        let duration = Span::from_secs(window.duration.as_secs());
        inside("renewal.window-duration", duration, bounds::WINDOW_DURATION);
    }
    inside("daemon.shutdown-timeout", config.shutdown_timeout, bounds::TIMEOUT);
    inside("api.request-timeout", config.request_timeout, bounds::TIMEOUT);
    inside("api.audit-retention", config.audit_retention, bounds::AUDIT_RETENTION);
    inside("events.retention", config.events.retention, bounds::RETENTION);
    inside("validation.timeout", config.validation.timeout, bounds::VALIDATION_TIMEOUT);
    inside("defaults.validity", config.defaults.validity, bounds::VALIDITY);
    inside("defaults.minimum-validity", config.defaults.minimum_validity, bounds::VALIDITY);
    assert!(config.defaults.validity >= config.defaults.minimum_validity);
    for ca in &config.cas {
        inside("ca.validity", ca.validity, bounds::VALIDITY);
    }
    let days = config.events.days_before_expiry.get();
    assert!((1..=365).contains(&days), "events.days-before-expiry = {days}");
    for sink in &config.events.webhooks {
        inside("events.webhook.timeout", sink.timeout, bounds::TIMEOUT);
    }
    for sink in &config.events.commands {
        inside("events.command.timeout", sink.timeout, bounds::TIMEOUT);
    }
    assert_ne!(config.socket, config.store_path);
    assert_ne!(config.socket, config.master_key.path());
    assert_eq!(config.socket_mode & 0o002, 0, "the API socket is never world-writable");
    for issuer in &config.acme {
        // instant-acme `expect`s that it can build a request from it.
        let uri = issuer.directory.parse::<http::Uri>();
        assert!(uri.is_ok(), "acme directory {:?}: {uri:?}", issuer.directory);
    }
}

fuzz_target!(|data: &[u8]| {
    // The daemon reads the file with `read_to_string`: text that is not UTF-8 never gets here.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("fuzz.toml"), &Environment::default()) {
        Ok(config) => check_config(&config),
        Err(err) => check_error(text, &err),
    }
});
