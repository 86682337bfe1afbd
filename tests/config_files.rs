//! Every file under config/ must parse, and adding an unknown key to any of its tables must be
//! rejected with an error naming that key: the annotated config documents the real schema.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_certkeeper");
const UNKNOWN: &str = "certkeeper-test-unknown-key";

fn shipped_configs() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let mut files = Vec::new();
    let mut dirs = vec![root];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "toml") {
                files.push(path);
            }
        }
    }
    assert!(
        files.len() >= 2,
        "config/ should hold the annotated default and examples"
    );
    files
}

fn check(path: &Path) -> (Option<i32>, String) {
    let out = Command::new(BIN)
        .args(["config", "check", "--config"])
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Every table path in a document: the root, sub-tables, and each element of arrays of tables.
fn table_paths(table: &toml::Table, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    for (key, value) in table {
        match value {
            toml::Value::Table(sub) => {
                table_paths(sub, [prefix.clone(), vec![key.clone()]].concat(), out);
            }
            toml::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let toml::Value::Table(sub) = item {
                        table_paths(
                            sub,
                            [prefix.clone(), vec![format!("{key}[{i}]")]].concat(),
                            out,
                        );
                    }
                }
            }
            _ => {}
        }
    }
}

fn table_at<'a>(root: &'a mut toml::Table, path: &[String]) -> &'a mut toml::Table {
    let mut table = root;
    for part in path {
        table = match part.split_once('[') {
            Some((key, index)) => {
                let i: usize = index.trim_end_matches(']').parse().unwrap();
                table
                    .get_mut(key)
                    .and_then(|v| v.as_array_mut())
                    .and_then(|a| a[i].as_table_mut())
                    .unwrap()
            }
            None => table.get_mut(part).and_then(|v| v.as_table_mut()).unwrap(),
        };
    }
    table
}

#[test]
fn every_shipped_config_parses() {
    for file in shipped_configs() {
        let (code, stderr) = check(&file);
        assert_eq!(code, Some(0), "{}: {stderr}", file.display());
    }
}

#[test]
fn an_unknown_key_in_any_table_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut tried = 0;
    for file in shipped_configs() {
        let text = std::fs::read_to_string(&file).unwrap();
        let doc: toml::Table = toml::from_str(&text).unwrap();
        let mut paths = Vec::new();
        table_paths(&doc, Vec::new(), &mut paths);
        // The empty sections of the schema must be covered too, even if a file omits them.
        for section in [
            "daemon", "secrets", "store", "api", "defaults", "renewal", "events", "metrics",
        ] {
            if !paths.iter().any(|p| p.len() == 1 && p[0] == section) {
                paths.push(vec![section.to_owned()]);
            }
        }
        for path in paths {
            let mut doc = doc.clone();
            if !path.is_empty() && !doc.contains_key(&path[0]) {
                doc.insert(path[0].clone(), toml::Value::Table(toml::Table::new()));
            }
            table_at(&mut doc, &path).insert(UNKNOWN.to_owned(), toml::Value::Integer(1));
            let mutated = dir.path().join("mutated.toml");
            std::fs::write(&mutated, toml::to_string(&doc).unwrap()).unwrap();
            let (code, stderr) = check(&mutated);
            assert_eq!(
                code,
                Some(78),
                "{} with an unknown key in [{}] was accepted",
                file.display(),
                path.join(".")
            );
            assert!(
                stderr.contains(UNKNOWN) && stderr.contains("mutated.toml:"),
                "{stderr}"
            );
            tried += 1;
        }
    }
    assert!(tried >= 10, "only {tried} tables checked");
}

/// Security review L13: a value of the wrong type is often a secret in the wrong place. The
/// error names the file, line, key and expected type, never the value.
#[test]
fn a_type_error_names_the_key_but_not_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[validation.dns]\nzone = \"v.example\"\npublisher = \"command\"\ncommand = \"/usr/bin/dnsctl --token SUPERSECRETTOKEN123\"\n",
    )
    .unwrap();
    let (code, stderr) = check(&bad);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("bad.toml:4:")
            && stderr.contains("validation.dns.command: invalid type: string, expected a sequence"),
        "{stderr}"
    );
    assert!(!stderr.contains("SUPERSECRETTOKEN123"), "{stderr}");
}

/// Security review M2/L1: `events.retention = "5000000d"` stopped the lifecycle task with an
/// overflow panic; now it, and every duration out of its field's range, is refused at load.
#[test]
fn durations_out_of_range_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("long.toml");
    for (text, needle) in [
        ("[events]\nretention = \"5000000d\"\n", "100 years"),
        (
            "[events]\nretention = \"3651d\"\n",
            "events.retention: 3651d is outside 1s..=3650d",
        ),
        (
            "[renewal]\nrenew-before = \"3000000d\"\n",
            "renewal.renew-before",
        ),
        (
            "[validation]\ntimeout = \"31d\"\n",
            "validation.timeout: 31d is outside 10s..=30d",
        ),
    ] {
        std::fs::write(&bad, text).unwrap();
        let (code, stderr) = check(&bad);
        assert_eq!(code, Some(78), "{text}: {stderr}");
        assert!(
            stderr.contains("long.toml:") && stderr.contains(needle),
            "{text}: {stderr}"
        );
    }
    // The daemon refuses it the same way before it starts anything.
    std::fs::write(&bad, "[events]\nretention = \"5000000d\"\n").unwrap();
    let out = Command::new(BIN)
        .args(["serve", "--state-dir"])
        .arg(dir.path().join("state"))
        .arg("--config")
        .arg(&bad)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(stderr.contains("events.retention"), "{stderr}");
}
