//! The daemon's lifecycle through the real binary: start on the built-in default, restart,
//! master key handling, signals, crash safety, and the API's error shape.

mod common;

use common::{Daemon, id};

#[test]
fn built_in_default_serves_and_survives_restart() {
    let mut daemon = Daemon::start();
    let cert = daemon.json(&[
        "request",
        "app.internal",
        "www.app.internal",
        "--validity",
        "90d",
    ]);
    assert_eq!(cert["status"], "issued");
    assert_eq!(cert["origin"], "private");
    let before = daemon.ok(&["get", &id(&cert)]);

    let (status, _) = daemon.stop();
    assert!(status.success(), "SIGTERM must exit 0: {status}");
    daemon.spawn();
    assert_eq!(daemon.ok(&["get", &id(&cert)]), before);
    assert_eq!(daemon.count(), 1);
}
