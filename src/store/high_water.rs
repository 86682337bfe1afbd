//! The high-water mark: the number of the last acknowledged commit, kept outside the database.
//!
//! Why: SQLite cannot see its own end go missing. A WAL that lost its last frames (a truncated
//! copy, a disk that dropped a write it had acknowledged) or an older database put in place
//! opens as a perfectly consistent, older database, and certkeeper would carry on without the
//! certificates it had answered for. The database counts its commits (`commits.count`, bumped
//! in every write transaction); after each commit, and before anyone hears of it, the writer
//! records that number in `<database>.last-commit`. At start, a database holding fewer commits than the mark
//! has lost acknowledged changes: the daemon refuses to start, and says how to accept the
//! state when it is meant (deleting the mark). A database ahead of the mark is normal: a crash
//! between a commit and its mark.
//!
//! With `store.synchronous = normal` commits are not fsync'd, so a power cut may take the last
//! ones legitimately: no mark is kept, and the check is off.
//!
//! The mark costs no fsync. It is one fixed-width number overwritten in place (a single small
//! write inside one sector, so a reader sees the old number or the new one), and the page cache
//! keeps it through a crash or `kill -9`, which is when a damaged or swapped database is found.
//! A power cut can leave the mark behind the database, never ahead of it: it is written only
//! after SQLite's own fsync of the commit returned. So it can miss a loss after a power cut,
//! never report one that did not happen. Replacing the file fsync'd would add two fsyncs
//! (file and directory) to every commit, and a lone client waits for each.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::StoreError;

/// Width of the number in the file: every u64 fits, so each write covers the last whole.
const WIDTH: usize = 20;

/// `<database>.last-commit`.
pub(super) struct HighWater {
    path: PathBuf,
    /// Opened at the first record and kept, so a commit costs one `pwrite`.
    file: OnceLock<File>,
}

impl HighWater {
    /// The mark of the database at `db`.
    pub(super) fn beside(db: &Path) -> Self {
        let mut path = db.as_os_str().to_owned();
        path.push(".last-commit");
        Self {
            path: path.into(),
            file: OnceLock::new(),
        }
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// The recorded commit number; `None` when there is no mark yet (a new database, a first
    /// start of a certkeeper that keeps one, or an operator who accepted a rollback).
    pub(super) fn read(&self) -> Result<Option<u64>, StoreError> {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => text.trim().parse().map(Some).map_err(|_| {
                self.error(format!(
                    "holds {:?}, not a commit number; delete it to start a new mark",
                    text.trim()
                ))
            }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(self.error(format!("cannot read: {err}"))),
        }
    }

    /// Records `commit` as the last acknowledged one (see the module comment: in place, no
    /// fsync).
    pub(super) fn record(&self, commit: u64) -> Result<(), StoreError> {
        self.file()
            .and_then(|file| file.write_all_at(format!("{commit:0WIDTH$}\n").as_bytes(), 0))
            .map_err(|err| self.error(format!("cannot write: {err}")))
    }

    fn file(&self) -> std::io::Result<&File> {
        if let Some(file) = self.file.get() {
            return Ok(file);
        }
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.path)?;
        Ok(self.file.get_or_init(|| file))
    }

    /// Checks the database at `db`, holding `found` commits, against the mark; starts the mark
    /// when there is none.
    pub(super) fn verify(&self, db: &Path, found: u64) -> Result<Verified, StoreError> {
        match self.read()? {
            Some(recorded) if recorded > found => Err(StoreError::RolledBack {
                path: db.display().to_string(),
                mark: self.path.display().to_string(),
                found,
                recorded,
            }),
            Some(_) => Ok(Verified::Checked),
            None => {
                self.record(found)?;
                Ok(Verified::Started)
            }
        }
    }

    fn error(&self, reason: String) -> StoreError {
        StoreError::HighWater {
            path: self.path.display().to_string(),
            reason,
        }
    }
}

/// What [`HighWater::verify`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Verified {
    /// The database holds every commit the mark recorded.
    Checked,
    /// There was no mark: one starts now, from the database as it is.
    Started,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_behind_its_mark_is_refused_and_deleting_the_mark_accepts_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("certkeeper.db");
        let mark = HighWater::beside(&db);
        assert_eq!(mark.verify(&db, 3).unwrap(), Verified::Started);
        mark.record(7).unwrap();
        assert_eq!(mark.verify(&db, 7).unwrap(), Verified::Checked);
        // Ahead of the mark: a crash between a commit and its mark.
        assert_eq!(mark.verify(&db, 8).unwrap(), Verified::Checked);
        let err = mark.verify(&db, 6).unwrap_err().to_string();
        assert!(
            err.contains("holds 6 commits") && err.contains("recorded 7"),
            "{err}"
        );
        assert!(err.contains(&mark.path().display().to_string()), "{err}");
        std::fs::remove_file(mark.path()).unwrap();
        assert_eq!(mark.verify(&db, 6).unwrap(), Verified::Started);
        std::fs::write(mark.path(), "garbage").unwrap();
        let err = mark.verify(&db, 6).unwrap_err().to_string();
        assert!(err.contains("not a commit number"), "{err}");
    }
}
