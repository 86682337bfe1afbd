-- The audit log: one row per API call that changed state or exported a key (src/audit.rs).
-- Appended by the writer in the caller's batch; read in seq order by `certkeeper audit`.
-- The oldest rows past `api.audit-retention` are dropped a few at a time as new ones come in.
CREATE TABLE audit (
    seq       INTEGER PRIMARY KEY AUTOINCREMENT,
    time      INTEGER NOT NULL,          -- Unix seconds
    operation TEXT NOT NULL,             -- "POST /v1/certificates/{id}/export"
    target    TEXT,                      -- the certificate, CA or issuer named
    body      TEXT NOT NULL              -- the whole record as JSON
);
