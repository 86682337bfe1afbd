-- certkeeper inventory, schema version 1.
-- Times are Unix seconds (UTC). JSON columns hold arrays written by the daemon only.
-- Private keys are never stored in plaintext: *_blob columns hold store::seal envelopes and
-- *_kid the id of the master key that wraps them (for rotation).
-- Every index costs a page write per issuance: only what a hot path or a large-inventory
-- query needs is indexed (rotation scans versions once; origin filters stop early in id order).

CREATE TABLE cas (
    name            TEXT PRIMARY KEY,
    parent          TEXT REFERENCES cas(name),   -- signing certkeeper CA; NULL for roots and external
    external        INTEGER NOT NULL DEFAULT 0,  -- signed by a CA outside certkeeper
    state           TEXT NOT NULL,               -- 'active' | 'pending-certificate'
    common_name     TEXT NOT NULL,
    key_algorithm   TEXT NOT NULL,
    validity        INTEGER NOT NULL,            -- requested lifetime, seconds
    path_length     INTEGER,
    permitted_dns   TEXT NOT NULL DEFAULT '[]',
    cert_pem        TEXT,                        -- NULL while pending-certificate
    chain_pem       TEXT NOT NULL DEFAULT '',    -- the issuers above this CA, nearest first
    csr_pem         TEXT,                        -- external CAs: the request to take to the root
    serial          TEXT,
    not_before      INTEGER,
    not_after       INTEGER,
    key_kid         TEXT NOT NULL,
    key_blob        BLOB NOT NULL,
    crl_number      INTEGER NOT NULL DEFAULT 0,
    crl_der         BLOB,
    crl_next_update INTEGER,
    created_at      INTEGER NOT NULL
);

CREATE TABLE certificates (
    id                TEXT PRIMARY KEY,          -- ck-<uuidv7>
    name              TEXT NOT NULL UNIQUE,
    origin            TEXT NOT NULL,             -- public | private | imported
    status            TEXT NOT NULL,
    issuer            TEXT NOT NULL,             -- CA name, ACME issuer, or issuer DN (imported)
    domains           TEXT NOT NULL,             -- JSON array; the first is the common name
    key_algorithm     TEXT NOT NULL,
    validity          INTEGER,                   -- requested lifetime, seconds (issued by us)
    client_auth       INTEGER NOT NULL DEFAULT 0,
    current_version   INTEGER NOT NULL,          -- 0 until the first version exists (public, pending)
    serial            TEXT,                      -- of the current version; NULL before the first
    not_before        INTEGER,
    not_after         INTEGER,
    created_at        INTEGER NOT NULL,
    updated_at        INTEGER NOT NULL,
    revoked_at        INTEGER,
    revocation_reason TEXT
);
CREATE INDEX certificates_not_after ON certificates (not_after);
CREATE INDEX certificates_status ON certificates (status, id);

CREATE TABLE versions (
    certificate_id TEXT NOT NULL REFERENCES certificates(id) ON DELETE CASCADE,
    version        INTEGER NOT NULL,
    serial         TEXT NOT NULL,
    issuer_ca      TEXT,                         -- the certkeeper CA that signed it, if any
    not_before     INTEGER NOT NULL,
    not_after      INTEGER NOT NULL,
    cert_pem       TEXT NOT NULL,
    chain_pem      TEXT NOT NULL,                -- issuers, nearest first
    key_kid        TEXT,                         -- NULL when the key is not ours (sign)
    key_blob       BLOB,
    created_at     INTEGER NOT NULL,
    PRIMARY KEY (certificate_id, version)
);
CREATE INDEX versions_serial ON versions (serial);

CREATE TABLE tags (
    certificate_id TEXT NOT NULL REFERENCES certificates(id) ON DELETE CASCADE,
    key            TEXT NOT NULL,
    value          TEXT NOT NULL,
    PRIMARY KEY (certificate_id, key)
);
CREATE INDEX tags_key_value ON tags (key, value);

-- Revocations outlive deleted certificates: a CRL must keep listing them.
CREATE TABLE revocations (
    ca             TEXT NOT NULL REFERENCES cas(name),
    serial         TEXT NOT NULL,
    revoked_at     INTEGER NOT NULL,
    reason         TEXT NOT NULL,
    certificate_id TEXT,
    PRIMARY KEY (ca, serial)
);

-- The event outbox: rows are written in the same transaction as the change they describe.
CREATE TABLE events (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    id             TEXT NOT NULL,                -- UUIDv7: unique by construction
    time           INTEGER NOT NULL,
    detail_type    TEXT NOT NULL,
    certificate_id TEXT,
    body           TEXT NOT NULL                 -- the whole event as JSON
);
